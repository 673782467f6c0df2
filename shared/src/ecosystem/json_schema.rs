//! A JSON Schema of `ecosystem.toml`, for editors whose TOML language server checks and completes
//! files against one (`chatctl schema`). The Rust types are the source; this only adds the file's
//! outer shape (`[apps.NAME]`, `[apps.NAME.profiles.PROFILE]`, `[deploy.NAME]`), which the loader walks by hand.

use schemars::SchemaGenerator;
use serde_json::{Value, json};

use super::deploy::DeployConfig;
use super::schema::AppConfig;

/// The schema, as a JSON value.
pub fn ecosystem_schema() -> Value {
    let mut generator = SchemaGenerator::default();
    let app = generator.subschema_for::<AppConfig>().to_value();
    let deploy = generator.subschema_for::<DeployConfig>().to_value();
    let mut defs = serde_json::Map::new();
    for (name, schema) in generator.take_definitions(true) {
        defs.insert(name, schema);
    }
    // An app table is an app's keys plus its profiles, each of which has the app's keys.
    let mut table = defs.get("AppConfig").cloned().unwrap_or_else(|| json!({}));
    if let Some(properties) = table.get_mut("properties").and_then(Value::as_object_mut) {
        properties.insert(
            "profiles".into(),
            json!({
                "description": "Named overrides: `chatctl start PROFILE` applies them (env is merged key by key).",
                "type": "object",
                "additionalProperties": app,
            }),
        );
    }
    if let Some(required) = table.get_mut("required") {
        *required = json!([]);
    }
    defs.insert("AppTable".into(), table);
    // Optional in the Rust type so that every missing key is reported at once, with its location.
    if let Some(deploy) = defs.get_mut("DeployConfig").and_then(Value::as_object_mut) {
        deploy.insert("required".into(), json!(["host", "repo", "path"]));
    }
    json!({
        "$schema": "https://json-schema.org/draft/2020-12/schema",
        "title": "chatctl ecosystem.toml",
        "type": "object",
        "additionalProperties": false,
        "properties": {
            "apps": {
                "type": "object",
                "propertyNames": { "pattern": "^[A-Za-z0-9_-][A-Za-z0-9_.-]{0,63}$", "not": { "const": "all" } },
                "additionalProperties": { "$ref": "#/$defs/AppTable" }
            },
            "deploy": {
                "description": "Deploy targets: `chatctl deploy NAME [setup|revert|list|exec]`.",
                "type": "object",
                "propertyNames": { "pattern": "^[A-Za-z0-9_-][A-Za-z0-9_.-]{0,63}$" },
                "additionalProperties": deploy
            }
        },
        "anyOf": [{ "required": ["apps"] }, { "required": ["deploy"] }],
        "$defs": defs,
    })
}

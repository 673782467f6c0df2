//! Reading `ecosystem.toml`: syntax through `toml`'s recoverable parser, types and values through serde,
//! one key at a time, so that every problem in the file is reported at once with its own location
//! (serde alone stops at the first error).

use std::collections::BTreeMap;
use std::ops::Range;
use std::path::{Path, PathBuf};

use serde::de::DeserializeOwned;
use toml::Spanned;
use toml::de::{DeString, DeTable, DeValue};

use super::deploy::DeployConfig;
use super::issue::{ConfigErrors, ConfigIssue, Severity};
use super::model::{AppEntry, Ecosystem};
use super::schema::{AppConfig, EnvValue, HealthConfig};
use super::{deploy, names, validate};

impl Ecosystem {
    /// Reads and validates `path`. An unreadable file is reported like any other problem.
    pub fn load(path: &Path) -> Result<Ecosystem, ConfigErrors> {
        let text = std::fs::read_to_string(path).map_err(|err| ConfigErrors {
            issues: vec![ConfigIssue::at(
                Severity::Error,
                path,
                "",
                0..0,
                "",
                format!("cannot read the ecosystem file: {err}"),
            )],
        })?;
        Self::parse(&text, path)
    }

    /// Validates `text` as the content of `file`.
    pub fn parse(text: &str, file: &Path) -> Result<Ecosystem, ConfigErrors> {
        let (doc, syntax_errors) = DeTable::parse_recoverable(text);
        let mut walk = Walk { text, file, issues: Vec::new(), spans: BTreeMap::new() };
        if !syntax_errors.is_empty() {
            // Every syntax error, but no schema checks on a half-parsed document: they would report
            // the parser's recovery guesses, not the operator's mistakes.
            for err in syntax_errors {
                walk.error(err.span().unwrap_or(0..0), "", format!("TOML syntax: {}", err.message()));
            }
            return Err(ConfigErrors { issues: walk.issues });
        }
        let mut apps = Vec::new();
        let mut deploys = Vec::new();
        for (key, value) in doc.get_ref() {
            match key.get_ref().as_ref() {
                "apps" => apps = walk.apps(value),
                "deploy" => deploys = walk.deploys(value),
                other => walk.error(
                    key.span(),
                    other,
                    format!(
                        "unknown top-level key `{other}`: an ecosystem file holds `[apps.NAME]` and `[deploy.NAME]` tables"
                    ),
                ),
            }
        }
        // A file may describe only where to deploy (the machine deploying runs no app).
        if apps.is_empty() && deploys.is_empty() && walk.issues.is_empty() {
            walk.error(0..0, "apps", "no apps defined: add an `[apps.NAME]` table with a `script`".to_owned());
        }
        let deploy_problems = deploys.iter().flat_map(|(name, config)| deploy::problems(name, config));
        for problem in validate::all_profiles(&apps).into_iter().chain(deploy_problems) {
            let span = walk.locate(&problem.key_candidates);
            walk.error(span, &problem.key_candidates[0], problem.message);
        }
        if walk.issues.iter().any(|i| i.severity == Severity::Error) {
            return Err(ConfigErrors { issues: walk.issues });
        }
        let dir = file.parent().map(Path::to_owned).unwrap_or_default();
        let dir = if dir.as_os_str().is_empty() { PathBuf::from(".") } else { dir };
        Ok(Ecosystem { file: file.to_owned(), dir, apps, deploys, text: text.to_owned(), spans: walk.spans })
    }
}

/// State of one pass over the document: the problems found so far and where every key was.
struct Walk<'a> {
    text: &'a str,
    file: &'a Path,
    issues: Vec<ConfigIssue>,
    /// Dotted key path → span of the key, for semantic checks done after typing.
    spans: BTreeMap<String, Range<usize>>,
}

type Entry<'i> = (&'i Spanned<DeString<'i>>, &'i Spanned<DeValue<'i>>);

impl<'a> Walk<'a> {
    fn error(&mut self, span: Range<usize>, key: &str, message: String) {
        self.issues.push(ConfigIssue::at(Severity::Error, self.file, self.text, span, key, message));
    }

    /// The span of the first candidate key that exists (most specific first).
    fn locate(&self, candidates: &[String]) -> Range<usize> {
        candidates.iter().find_map(|key| self.spans.get(key).cloned()).unwrap_or(0..0)
    }

    fn apps<'i>(&mut self, value: &'i Spanned<DeValue<'i>>) -> Vec<AppEntry> {
        let Some(table) = self.table(value, "apps") else { return Vec::new() };
        let mut apps = Vec::new();
        for (name, app) in table {
            let path = format!("apps.{}", name.get_ref());
            self.spans.insert(path.clone(), name.span());
            if let Err(why) = names::app_name(name.get_ref()) {
                self.error(name.span(), &path, why);
            }
            if let Some(entry) = self.app(name.get_ref(), &path, app) {
                apps.push(entry);
            }
        }
        apps
    }

    fn app<'i>(&mut self, name: &str, path: &str, value: &'i Spanned<DeValue<'i>>) -> Option<AppEntry> {
        let table = self.table(value, path)?;
        let before = self.issues.len();
        let mut base = DeTable::new();
        let mut profiles = Vec::new();
        for (key, value) in table {
            if key.get_ref() == "profiles" {
                let profiles_path = format!("{path}.profiles");
                self.spans.insert(profiles_path.clone(), key.span());
                profiles = self.profiles(&profiles_path, value);
            } else {
                self.app_key(path, (key, value));
                base.insert(key.clone(), value.clone());
            }
        }
        if self.issues.len() > before {
            return None;
        }
        let base = typed::<AppConfig>(base, value.span()).ok()?;
        let profiles = profiles
            .into_iter()
            .map(|(name, table, span)| typed::<AppConfig>(table, span).ok().map(|config| (name, config)))
            .collect::<Option<Vec<_>>>()?;
        Some(AppEntry { name: name.to_owned(), base, profiles })
    }

    /// The `[deploy.NAME]` tables, each checked key by key like an app's.
    fn deploys<'i>(&mut self, value: &'i Spanned<DeValue<'i>>) -> Vec<(String, DeployConfig)> {
        let mut out = Vec::new();
        for (name, path, entries, span) in self.named_tables(value, "deploy", names::deploy_name) {
            let before = self.issues.len();
            for (key, value) in entries {
                let key_path = format!("{path}.{}", key.get_ref());
                self.spans.insert(key_path.clone(), key.span());
                match (key.get_ref().as_ref(), value.get_ref()) {
                    ("env", DeValue::Table(env)) => self.env_table(&key_path, env),
                    _ => self.typed_key::<DeployConfig>(&key_path, (key, value)),
                }
            }
            if self.issues.len() == before
                && let Ok(config) = typed::<DeployConfig>(entries.clone(), span)
            {
                out.push((name, config));
            }
        }
        out
    }

    fn profiles<'i>(
        &mut self,
        path: &str,
        value: &'i Spanned<DeValue<'i>>,
    ) -> Vec<(String, DeTable<'i>, Range<usize>)> {
        let mut out = Vec::new();
        for (name, profile_path, entries, span) in self.named_tables(value, path, names::profile_name) {
            for (key, value) in entries {
                self.app_key(&profile_path, (key, value));
            }
            out.push((name, entries.clone(), span));
        }
        out
    }

    /// The tables under `path` (`[deploy.NAME]`, `[apps.a.profiles.NAME]`), each name located and
    /// checked by `check`: (name, dotted path, table, span of the table).
    fn named_tables<'i>(
        &mut self,
        value: &'i Spanned<DeValue<'i>>,
        path: &str,
        check: fn(&str) -> Result<(), String>,
    ) -> Vec<(String, String, &'i DeTable<'i>, Range<usize>)> {
        let Some(table) = self.table(value, path) else { return Vec::new() };
        let mut out = Vec::new();
        for (name, entry) in table {
            let entry_path = format!("{path}.{}", name.get_ref());
            self.spans.insert(entry_path.clone(), name.span());
            if let Err(why) = check(name.get_ref()) {
                self.error(name.span(), &entry_path, why);
            }
            if let Some(entries) = self.table(entry, &entry_path) {
                out.push((name.get_ref().to_string(), entry_path, entries, entry.span()));
            }
        }
        out
    }

    /// Checks one key of an app (or profile) table, descending into the tables whose keys are known.
    fn app_key(&mut self, table_path: &str, (key, value): Entry<'_>) {
        let path = format!("{table_path}.{}", key.get_ref());
        self.spans.insert(path.clone(), key.span());
        match (key.get_ref().as_ref(), value.get_ref()) {
            ("health", DeValue::Table(health)) => {
                for (sub, sub_value) in health {
                    let sub_path = format!("{path}.{}", sub.get_ref());
                    self.spans.insert(sub_path.clone(), sub.span());
                    self.typed_key::<HealthConfig>(&sub_path, (sub, sub_value));
                }
            }
            ("env", DeValue::Table(env)) => self.env_table(&path, env),
            _ => self.typed_key::<AppConfig>(&path, (key, value)),
        }
    }

    /// An `env` table: each name one a process can have, each value a string, number or boolean.
    fn env_table(&mut self, path: &str, env: &DeTable<'_>) {
        for (var, var_value) in env {
            let var_path = format!("{path}.{}", var.get_ref());
            self.spans.insert(var_path.clone(), var.span());
            if let Err(why) = names::env_name(var.get_ref()) {
                self.error(var.span(), &var_path, why);
            }
            if let Err(err) = typed_value::<EnvValue>(var_value) {
                self.error(err.span().unwrap_or(var_value.span()), &var_path, err.message().to_owned());
            }
        }
    }

    /// Deserializes a table holding only this key into `T`: either fine, or the error names this key.
    fn typed_key<T: DeserializeOwned>(&mut self, path: &str, (key, value): Entry<'_>) {
        let mut single = DeTable::new();
        single.insert(key.clone(), value.clone());
        if let Err(err) = typed::<T>(single, key.span().start..value.span().end) {
            let message = err.message().to_owned();
            let span = if message.starts_with("unknown field") {
                key.span()
            } else {
                err.span().filter(|s| s.start >= key.span().start).unwrap_or(value.span())
            };
            self.error(span, path, message);
        }
    }

    fn table<'i>(&mut self, value: &'i Spanned<DeValue<'i>>, path: &str) -> Option<&'i DeTable<'i>> {
        match value.get_ref() {
            DeValue::Table(table) => Some(table),
            other => {
                self.error(value.span(), path, format!("expected a table, found {}", other.type_str()));
                None
            }
        }
    }
}

fn typed<T: DeserializeOwned>(table: DeTable<'_>, span: Range<usize>) -> Result<T, toml::de::Error> {
    T::deserialize(toml::de::Deserializer::from(Spanned::new(span, table)))
}

fn typed_value<T: DeserializeOwned>(value: &Spanned<DeValue<'_>>) -> Result<T, toml::de::Error> {
    T::deserialize(toml::de::ValueDeserializer::from(value.clone()))
}

//! The rules for names an operator chooses: apps, profiles, environment variables. A leaf, because
//! both the file's checks and the daemon's (`AppSpec::validate`) apply them.

/// Names are used in file names and as CLI targets, where `all` means every app.
pub(crate) fn app_name(name: &str) -> Result<(), String> {
    if name == "all" {
        return Err("`all` is reserved: `chatctl stop all` means every app".to_owned());
    }
    simple_name(name, "app")
}

pub(crate) fn profile_name(name: &str) -> Result<(), String> {
    simple_name(name, "profile")
}

/// A deploy target's name: `chatctl deploy NAME` (`setup`, `list`... are its verbs, not names).
pub(crate) fn deploy_name(name: &str) -> Result<(), String> {
    simple_name(name, "deploy target")
}

fn simple_name(name: &str, what: &str) -> Result<(), String> {
    let ok = !name.is_empty()
        && name.len() <= 64
        && name.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
        && !name.starts_with('.');
    if ok { Ok(()) } else { Err(format!("invalid {what} name {name:?}: use 1-64 letters, digits, '-', '_' or '.'")) }
}

pub(crate) fn env_name(name: &str) -> Result<(), String> {
    let ok = !name.is_empty() && !name.contains('=') && !name.contains('\0');
    if ok { Ok(()) } else { Err(format!("invalid environment variable name {name:?}")) }
}

//! From an ecosystem file to the specs a verb sends: read, validated, resolved for a profile, and
//! (unless a build may create it first) checked against the file system. Problems are printed as the
//! config errors are, and become the exit code.

use std::collections::BTreeMap;
use std::process::ExitCode;

use chat_shared::ecosystem::Ecosystem;
use chat_shared::spec::AppSpec;

use super::exit;

/// The specs of `config` for `profile`, after checking that every `cwd` and `script` exists and can
/// run; problems are printed as the config errors are.
pub(super) fn load(
    config: &std::path::Path,
    profile: Option<&str>,
    only: Option<&str>,
) -> Result<Vec<AppSpec>, ExitCode> {
    let specs = load_unchecked(config, profile, only)?;
    check_files(config, &specs)?;
    Ok(specs)
}

/// The specs without looking at the file system: `reload --build` may create the script first.
pub(super) fn load_unchecked(
    config: &std::path::Path,
    profile: Option<&str>,
    only: Option<&str>,
) -> Result<Vec<AppSpec>, ExitCode> {
    let eco = match Ecosystem::load(config) {
        Ok(eco) => eco,
        Err(errors) => {
            eprintln!("{errors}");
            return Err(ExitCode::from(exit::CONFIG));
        }
    };
    let env: BTreeMap<String, String> = std::env::vars().collect();
    eco.resolve(profile, only, &env).map_err(|e| {
        eprintln!("error: {e}");
        ExitCode::from(exit::CONFIG)
    })
}

/// Every `cwd` of `specs` is a directory and every `script` an executable, or the problems are
/// printed, located in `config`.
pub(super) fn check_files(config: &std::path::Path, specs: &[AppSpec]) -> Result<(), ExitCode> {
    let checked = Ecosystem::load(config).and_then(|eco| eco.check_files(specs));
    checked.map_err(|errors| {
        eprintln!("{errors}");
        ExitCode::from(exit::CONFIG)
    })
}

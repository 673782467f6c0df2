//! What a loaded file is: its apps and their profiles, still as written (no defaults applied). Kept
//! apart from `load`, which builds it, so that the checks and the resolution that read it need not
//! import the parser (and the parser can call the checks).

use std::collections::BTreeMap;
use std::ops::Range;
use std::path::PathBuf;

use super::deploy::DeployConfig;
use super::schema::AppConfig;

/// A loaded, fully validated ecosystem file.
#[derive(Clone, Debug)]
pub struct Ecosystem {
    pub file: PathBuf,
    /// Directory of the file: relative `cwd`, `script` and log paths are resolved against it.
    pub dir: PathBuf,
    /// In file order (the order apps start in).
    pub apps: Vec<AppEntry>,
    /// `[deploy.NAME]` tables, in file order, as written (`Ecosystem::deploy` resolves one).
    pub deploys: Vec<(String, DeployConfig)>,
    /// The file's text and where each key is, to locate the problems found after loading
    /// (`check_files`, which looks at the file system).
    pub(crate) text: String,
    pub(crate) spans: BTreeMap<String, Range<usize>>,
}

#[derive(Clone, Debug)]
pub struct AppEntry {
    pub name: String,
    pub base: AppConfig,
    /// In file order.
    pub profiles: Vec<(String, AppConfig)>,
}

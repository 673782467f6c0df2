//! Node programs run unmodified on the sockets chatctl passes: a preload (`preload.cjs`, shipped
//! inside this binary, written into the daemon's home, never fetched) loaded through `NODE_OPTIONS`
//! makes the program's listen on its port take the inherited socket, serves the admin socket
//! through the program's own handler, and drains on SIGTERM. See the file's header for exactly what
//! it changes.

use std::io;
use std::path::{Path, PathBuf};

/// The preload's text.
const PRELOAD: &str = include_str!("preload.cjs");

/// Where the preload lives in `home`: named by a hash of its text, so that a daemon of another
/// release writes its own file beside the one its predecessor's instances are still running with.
fn preload_path(home: &Path) -> PathBuf {
    // FNV-1a: a name, not a defence.
    let hash = PRELOAD.bytes().fold(0xcbf2_9ce4_8422_2325u64, |h, b| (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3));
    home.join("node").join(format!("chatctl-preload-{:08x}.cjs", hash as u32))
}

/// Writes the preload into `home` unless it is there (through a temporary file, so no program
/// reads half of it), and returns its path.
fn written(home: &Path) -> io::Result<PathBuf> {
    let path = preload_path(home);
    if path.exists() {
        return Ok(path);
    }
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)?;
    }
    let tmp = path.with_extension(format!("tmp{}", std::process::id()));
    std::fs::write(&tmp, PRELOAD)?;
    std::fs::rename(&tmp, &path)?;
    Ok(path)
}

/// `NODE_OPTIONS` with the preload required after whatever the app's environment already has.
pub(super) fn node_options(home: &Path, existing: Option<&str>) -> io::Result<String> {
    let path = written(home)?;
    // NODE_OPTIONS splits on spaces unless quoted; a home with a space or a quote in its path
    // would break it, so such a path is refused rather than passed half.
    let shown = path.display().to_string();
    if shown.contains('"') || shown.contains('\\') {
        return Err(io::Error::new(io::ErrorKind::InvalidInput, format!("{shown}: a path NODE_OPTIONS cannot carry")));
    }
    let require = format!("--require \"{shown}\"");
    Ok(match existing.map(str::trim).filter(|e| !e.is_empty()) {
        Some(existing) => format!("{existing} {require}"),
        None => require,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_preload_is_required_after_the_apps_own_options() {
        let home = tempfile::tempdir().expect("temp dir");
        let options = node_options(home.path(), Some("--max-old-space-size=512")).expect("written");
        let path = preload_path(home.path());
        assert_eq!(options, format!("--max-old-space-size=512 --require \"{}\"", path.display()));
        assert_eq!(std::fs::read_to_string(&path).expect("preload"), PRELOAD);
        assert_eq!(node_options(home.path(), None).expect("again"), format!("--require \"{}\"", path.display()));
    }
}

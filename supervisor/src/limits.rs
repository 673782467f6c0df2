//! The open-file limit, handled as systemd handles its own: the daemon raises its soft limit to the
//! hard one for itself, because it holds several descriptors per instance (two output pipes, a
//! listener, a notify socket) plus every control connection; each app gets the limit the daemon was
//! started with, exactly as if it had been started without chatctl.

use std::sync::OnceLock;

/// `RLIMIT_NOFILE` as the daemon found it; `None` until [`raise_nofile`] ran (then nothing is
/// restored in children, because nothing was changed).
static STARTED_WITH: OnceLock<libc::rlimit> = OnceLock::new();

/// Raises the daemon's soft `RLIMIT_NOFILE` to its hard limit, remembering the original for
/// [`nofile_for_children`]. Returns the (old, new) soft limits; failure only costs headroom.
pub(crate) fn raise_nofile() -> std::io::Result<(u64, u64)> {
    let mut limit = libc::rlimit { rlim_cur: 0, rlim_max: 0 };
    #[allow(unsafe_code)]
    // SAFETY: getrlimit writes into the struct we own and pass by pointer.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    let original = *STARTED_WITH.get_or_init(|| limit);
    if limit.rlim_cur < limit.rlim_max {
        let raised = libc::rlimit { rlim_cur: limit.rlim_max, rlim_max: limit.rlim_max };
        #[allow(unsafe_code)]
        // SAFETY: setrlimit reads the struct we pass; raising the soft limit up to the hard one
        // needs no privilege.
        if unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &raised) } != 0 {
            return Err(std::io::Error::last_os_error());
        }
    }
    Ok((original.rlim_cur, limit.rlim_max))
}

/// The limit to give a child before exec: the daemon's original, if the daemon changed its own.
pub(crate) fn nofile_for_children() -> Option<libc::rlimit> {
    STARTED_WITH.get().copied()
}

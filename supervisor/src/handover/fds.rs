//! Descriptors and signals across `execve`: which cross it, which are taken back, which signals
//! wait for the next image, and a process's start time (a pid is not enough to name a process).

use std::io;
use std::os::fd::{FromRawFd, OwnedFd, RawFd};

/// Whether `fd` closes at `execve` (`on`) or crosses it.
pub fn set_cloexec(fd: RawFd, on: bool) -> io::Result<()> {
    #[allow(unsafe_code)]
    // SAFETY: fcntl on a descriptor number; an invalid one is an error, not undefined behaviour.
    let done = unsafe { libc::fcntl(fd, libc::F_SETFD, if on { libc::FD_CLOEXEC } else { 0 }) };
    if done < 0 { Err(io::Error::last_os_error()) } else { Ok(()) }
}

/// Takes ownership of an inherited descriptor named in the state, and marks it close-on-exec
/// again (so that instances spawned from now on do not inherit it).
pub fn adopt_fd(fd: RawFd) -> io::Result<OwnedFd> {
    set_cloexec(fd, true)?;
    #[allow(unsafe_code)]
    // SAFETY: the previous image handed this descriptor to us alone (the state names it once), and
    // `set_cloexec` just proved it open.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// The signals that must reach whichever image serves: held (blocked) from the moment a daemon
/// starts handing over until the next image has its handlers (a signal arriving in between would
/// take its default action, which ends the daemon and every instance with it), or until the
/// hand-over is given up. Blocked signals stay pending across `execve`.
const HELD: [nix::sys::signal::Signal; 4] = [
    nix::sys::signal::Signal::SIGUSR2,
    nix::sys::signal::Signal::SIGTERM,
    nix::sys::signal::Signal::SIGINT,
    nix::sys::signal::Signal::SIGHUP,
];

pub fn hold_signals() -> io::Result<()> {
    mask(nix::sys::signal::SigmaskHow::SIG_BLOCK)
}

pub fn release_signals() -> io::Result<()> {
    mask(nix::sys::signal::SigmaskHow::SIG_UNBLOCK)
}

fn mask(how: nix::sys::signal::SigmaskHow) -> io::Result<()> {
    let mut set = nix::sys::signal::SigSet::empty();
    HELD.iter().for_each(|s| set.add(*s));
    nix::sys::signal::pthread_sigmask(how, Some(&set), None).map_err(io::Error::from)
}

/// Whether this kernel lets a process wait on a child through a pidfd (Linux 5.3 and later), which
/// the next image needs for the instances it did not spawn.
pub fn pidfd_supported() -> io::Result<()> {
    #[allow(unsafe_code)]
    // SAFETY: pidfd_open on our own pid; the descriptor is closed at once.
    let fd = unsafe { libc::syscall(libc::SYS_pidfd_open, std::process::id() as libc::pid_t, 0) };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    #[allow(unsafe_code)]
    // SAFETY: a descriptor pidfd_open just returned.
    drop(unsafe { OwnedFd::from_raw_fd(fd as RawFd) });
    Ok(())
}

/// A process's start time in clock ticks since boot (field 22 of `/proc/PID/stat`).
pub fn start_time(pid: u32) -> Option<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name (field 2) may hold spaces and parentheses: count from its closing one.
    stat.rsplit_once(')')?.1.split_whitespace().nth(19)?.parse().ok()
}

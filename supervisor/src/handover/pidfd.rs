//! Waiting on a child this image did not spawn: through a pidfd (Linux 5.3 and later).

use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};

use chat_shared::status::ExitKind;

/// A child of this process, waited on through a pidfd (one this image did not spawn).
pub struct Pidfd {
    pid: u32,
    fd: tokio::io::unix::AsyncFd<OwnedFd>,
}

impl Pidfd {
    /// `None` when `pid` is gone already or is no longer the process that started at `start_time`.
    pub fn open(pid: u32, start_time: Option<u64>) -> io::Result<Pidfd> {
        #[allow(unsafe_code)]
        // SAFETY: pidfd_open takes a pid and flags and returns a new descriptor or -1.
        let fd = unsafe { libc::syscall(libc::SYS_pidfd_open, pid as libc::pid_t, 0) };
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        #[allow(unsafe_code)]
        // SAFETY: a descriptor pidfd_open just returned, owned by nobody else.
        let fd = unsafe { OwnedFd::from_raw_fd(fd as RawFd) };
        if let Some(expected) = start_time
            && super::fds::start_time(pid).is_some_and(|now| now != expected)
        {
            return Err(io::Error::new(io::ErrorKind::NotFound, format!("pid {pid} is another process now")));
        }
        #[allow(unsafe_code)]
        // SAFETY: an OwnedFd: open, and the same descriptor for as long as the AsyncFd owns it.
        let fd = unsafe { tokio::io::unix::AsyncFd::register_with_interest(fd, tokio::io::Interest::READABLE) }
            .map_err(|e| e.into_parts().1)?;
        Ok(Pidfd { pid, fd })
    }

    pub fn pid(&self) -> u32 {
        self.pid
    }

    /// Waits for the process to exit and reaps it.
    pub async fn wait(&self) -> ExitKind {
        loop {
            match self.fd.readable().await {
                Ok(mut ready) => {
                    if let Some(kind) = self.try_reap() {
                        return kind;
                    }
                    ready.clear_ready();
                }
                Err(_) => return ExitKind::Unknown,
            }
        }
    }

    /// Reaps the process if it has exited.
    pub fn try_reap(&self) -> Option<ExitKind> {
        #[allow(unsafe_code)]
        // SAFETY: a zeroed siginfo_t is a valid value for waitid to fill in.
        let mut info: libc::siginfo_t = unsafe { std::mem::zeroed() };
        #[allow(unsafe_code)]
        // SAFETY: waitid on our own pidfd with a valid siginfo_t pointer.
        let done = unsafe {
            libc::waitid(libc::P_PIDFD, self.fd.as_raw_fd() as libc::id_t, &mut info, libc::WEXITED | libc::WNOHANG)
        };
        if done < 0 {
            // ECHILD: reaped by someone else already; nothing more to learn.
            return Some(ExitKind::Unknown);
        }
        #[allow(unsafe_code)]
        // SAFETY: waitid filled `info` (si_pid stays 0 while the process runs).
        let (pid, status) = unsafe { (info.si_pid(), info.si_status()) };
        if pid == 0 {
            return None;
        }
        Some(match info.si_code {
            libc::CLD_EXITED => ExitKind::Code(status),
            libc::CLD_KILLED | libc::CLD_DUMPED => ExitKind::Signal(status),
            _ => ExitKind::Unknown,
        })
    }

    /// SIGKILLs the process and reaps it.
    pub fn kill(&self) {
        #[allow(unsafe_code)]
        // SAFETY: pidfd_send_signal on our own pidfd.
        unsafe {
            libc::syscall(libc::SYS_pidfd_send_signal, self.fd.as_raw_fd(), libc::SIGKILL, std::ptr::null::<u8>(), 0);
        }
        for _ in 0..100 {
            if self.try_reap().is_some() {
                return;
            }
            std::thread::sleep(std::time::Duration::from_millis(5));
        }
    }
}

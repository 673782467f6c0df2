//! Process ids as they travel through the daemon (the instance machine, slots, messages, signals):
//! a type of their own, so a pid is not mixed up with a port, a count or an app id, and turned into
//! the kernel's signed `pid_t` in one place. The wire (`list`, reload steps) keeps plain numbers.

use std::fmt;

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub(crate) struct Pid(u32);

impl Pid {
    /// A process this daemon started (`Child::id`), or the daemon itself.
    pub(crate) const fn new(raw: u32) -> Pid {
        Pid(raw)
    }

    pub(crate) const fn raw(self) -> u32 {
        self.0
    }

    /// nix's pid for a signal; `None` past `i32::MAX`, which is never a real pid (the kernel's
    /// `pid_max` is at most 2^22).
    pub(crate) fn to_nix(self) -> Option<nix::unistd::Pid> {
        i32::try_from(self.0).ok().map(nix::unistd::Pid::from_raw)
    }
}

impl fmt::Display for Pid {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)
    }
}

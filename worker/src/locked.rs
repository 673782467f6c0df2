//! One way to take a `std::sync::Mutex` in this crate. No critical section here can panic half-way
//! through a change that would leave the data inconsistent for the next user (lookups, single
//! inserts and removes, token-bucket arithmetic, sweeps that only drop entries), so a poisoned
//! guard is recovered rather than the worker taken down, or the change silently skipped (as
//! `if let Ok(..)` did). Never held across an await.

use std::sync::{Mutex, MutexGuard, PoisonError};

pub trait Locked<T> {
    fn locked(&self) -> MutexGuard<'_, T>;
}

impl<T> Locked<T> for Mutex<T> {
    fn locked(&self) -> MutexGuard<'_, T> {
        self.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

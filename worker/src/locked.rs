//! One way to take a `std::sync::Mutex` in this crate. Every critical section here is a lookup or
//! a single insert, remove or assignment, so a panic while one was held cannot have left the data
//! half-changed: the guard is recovered rather than the worker taken down, or the change silently
//! skipped (as `if let Ok(..)` did). Never held across an await.

use std::sync::{Mutex, MutexGuard, PoisonError};

pub trait Locked<T> {
    fn locked(&self) -> MutexGuard<'_, T>;
}

impl<T> Locked<T> for Mutex<T> {
    fn locked(&self) -> MutexGuard<'_, T> {
        self.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

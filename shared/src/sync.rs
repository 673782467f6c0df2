//! Locks, held one way in both programs.

use std::sync::{Mutex, MutexGuard, PoisonError};

/// A mutex locked whether or not it is poisoned. A lock is poisoned when a thread panicked while
/// holding it; the values guarded in chatctl and the worker (a status note, a table of pending
/// replies) are valid between any two statements, so the value is used as it is: a panic in one
/// task must not turn every later lock into another panic, nor be silently skipped as an `Err`.
pub trait Locked<T> {
    fn locked(&self) -> MutexGuard<'_, T>;
}

impl<T> Locked<T> for Mutex<T> {
    fn locked(&self) -> MutexGuard<'_, T> {
        self.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_poisoned_lock_still_gives_its_value() {
        let mutex = std::sync::Arc::new(Mutex::new(1));
        let held = mutex.clone();
        let _ = std::thread::spawn(move || {
            let _guard = held.lock();
            panic!("poisons the lock");
        })
        .join();
        assert!(mutex.is_poisoned());
        *mutex.locked() += 1;
        assert_eq!(*mutex.locked(), 2);
    }
}

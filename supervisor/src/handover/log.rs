//! The detached daemon's log across `execve`: written out just before, opened again if `execve`
//! fails.

/// The detached daemon's log writer guard (its drop writes out the lines queued), kept here so
/// that the daemon can write its log out before it re-executes itself.
static LOG_GUARD: std::sync::Mutex<Option<Box<dyn std::any::Any + Send>>> = std::sync::Mutex::new(None);

pub fn keep_log_guard(guard: impl std::any::Any + Send) {
    *LOG_GUARD.lock().unwrap_or_else(std::sync::PoisonError::into_inner) = Some(Box::new(guard));
}

/// Writes out the daemon's log (nothing is logged to its file after this).
pub fn drop_log_guard() {
    drop(LOG_GUARD.lock().unwrap_or_else(std::sync::PoisonError::into_inner).take());
}

/// A hook that opens the daemon's log again (set by the detached daemon): the log is written out
/// and closed just before `execve`, and must come back if `execve` fails.
static LOG_REOPEN: std::sync::Mutex<Option<Box<dyn Fn() + Send>>> = std::sync::Mutex::new(None);

pub fn on_log_reopen(reopen: impl Fn() + Send + 'static) {
    *LOG_REOPEN.lock().unwrap_or_else(std::sync::PoisonError::into_inner) = Some(Box::new(reopen));
}

pub fn reopen_log() {
    if let Some(reopen) = LOG_REOPEN.lock().unwrap_or_else(std::sync::PoisonError::into_inner).as_ref() {
        reopen();
    }
}

//! `chat-worker` entry point: configuration and sockets first (synchronously, before any thread
//! exists), then the runtime.

use std::process::ExitCode;

use chat_worker::{Config, Listeners};
use tracing_subscriber::EnvFilter;

fn main() -> ExitCode {
    // JSON lines on stdout: the supervisor captures them into the app's log file.
    tracing_subscriber::fmt()
        .json()
        .with_current_span(false)
        .with_env_filter(EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info")))
        .init();
    // Before any descriptor is opened for a client (see `admission`).
    match chat_worker::admission::raise_fd_limit() {
        Ok((before, after)) if before < after => tracing::debug!(before, after, "raised the descriptor limit"),
        Ok(_) => {}
        Err(e) => tracing::warn!(error = %e, "cannot raise the descriptor limit"),
    }
    let config = match Config::from_env() {
        Ok(config) => config,
        Err(e) => {
            tracing::error!(error = %e, "bad configuration");
            eprintln!("chat-worker: {e}");
            return ExitCode::from(2);
        }
    };
    let listeners = match Listeners::from_env(&config) {
        Ok(listeners) => listeners,
        Err(e) => {
            let detail = std::error::Error::source(&e).map(|s| format!(": {s}")).unwrap_or_default();
            tracing::error!(error = %e, detail, "cannot listen");
            eprintln!("chat-worker: {e}{detail}");
            return ExitCode::from(2);
        }
    };
    let runtime = if config.threads == 1 {
        tokio::runtime::Builder::new_current_thread().enable_all().build()
    } else {
        tokio::runtime::Builder::new_multi_thread().worker_threads(config.threads).enable_all().build()
    };
    let runtime = match runtime {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("chat-worker: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let config = Config { shutdown_timeout: config.shutdown_timeout.min(chat_worker::MAX_SHUTDOWN), ..config };
    match runtime.block_on(chat_worker::serve(listeners, &config, chat_worker::shutdown_signal())) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!(error = %e, "worker failed");
            ExitCode::FAILURE
        }
    }
}

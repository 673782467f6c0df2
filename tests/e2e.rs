//! End-to-end tests: the real `chatctl` and `chat-worker` binaries, real sockets, the real npm
//! socket.io-client. Build first: `cargo build --workspace` (the README's test command does).

mod support;

mod adhoc;
mod balancer;
mod browser;
mod bus;
mod cluster;
mod config_errors;
mod deploy;
mod faults;
mod files;
mod fork;
mod health;
mod init;
mod lifecycle;
mod logs;
mod memory;
mod monit;
mod node_app;
mod redis;
mod redis_cluster;
mod reload;
mod update;
mod verbs;
mod watch;
mod worker;

//! Starting one instance: environment, working directory, captured output, its own process group,
//! inherited sockets, and death with the daemon.

use std::io;
use std::os::fd::{AsRawFd, RawFd};
use std::process::Stdio;

use chat_shared::ecosystem::ExecMode;
use chat_shared::spec::AppSpec;
use chat_shared::worker_env;
use tokio::process::{Child, Command};

mod node;

/// The local bus's socket inside the daemon's home.
pub(crate) const BUS_FILE: &str = "bus.sock";

/// The directory, inside the daemon's home, of each cluster-mode app's handoff sockets.
pub(crate) const HANDOFF_DIR: &str = "handoff";

/// Node's IPC channel: the fd, and how messages are written on it (JSON lines).
const NODE_CHANNEL_FD: &str = "NODE_CHANNEL_FD";
const NODE_CHANNEL_SERIALIZATION_MODE: &str = "NODE_CHANNEL_SERIALIZATION_MODE";

/// A socket passed to the child, in order from fd 3, with its `LISTEN_FDNAMES` name.
pub(crate) struct PassedFd<'a> {
    pub(crate) fd: &'a dyn AsRawFd,
    pub(crate) name: &'static str,
}

/// Everything that differs between two spawns of one app.
pub(crate) struct Launch<'a> {
    pub(crate) spec: &'a AppSpec,
    pub(crate) index: usize,
    pub(crate) port: Option<u16>,
    pub(crate) fds: &'a [PassedFd<'a>],
    /// The daemon's home, the mark of every instance (see `leftovers`).
    pub(crate) home: &'a std::path::Path,
    /// `NOTIFY_SOCKET` for instances that report readiness themselves.
    pub(crate) notify: Option<&'a std::path::Path>,
    /// The app's shared secret (`CHATCTL_APP_SECRET`).
    pub(crate) secret: &'a str,
    /// `CHATCTL_LAUNCH`, and the leaf cgroup to join (see `descendants`).
    pub(crate) tracking: &'a crate::descendants::Prepared,
    /// A Node program's IPC channel (the child's end of a socket pair), so that its
    /// `process.send('ready')` reaches the daemon: PM2's `wait_ready`.
    pub(crate) channel: Option<&'a dyn AsRawFd>,
}

/// In a child between fork and exec: be SIGKILLed when `parent` (the daemon's thread that forked)
/// ends. Only async-signal-safe calls (prctl, getppid, _exit).
pub(crate) fn die_with(parent: libc::pid_t) -> io::Result<()> {
    #[allow(unsafe_code)]
    // SAFETY: plain system calls on integers; nothing is allocated or shared.
    unsafe {
        if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL as libc::c_ulong, 0, 0, 0) != 0 {
            return Err(io::Error::last_os_error());
        }
        // The daemon may have died between fork and prctl; then nobody would ever stop us.
        if libc::getppid() != parent {
            libc::_exit(1);
        }
    }
    Ok(())
}

/// Spawns instance `index` of `spec`.
///
/// Must be called from the daemon's own thread (the runtime's only thread): `PR_SET_PDEATHSIG`
/// fires when the *thread* that forked exits, so a short-lived blocking-pool thread would kill the
/// child early.
pub(crate) fn spawn(launch: &Launch<'_>) -> io::Result<Child> {
    let tracking = launch.tracking;
    let mut command = Command::new(&launch.spec.script);
    let raw = environment(&mut command, launch)?;
    if raw.len() > 8 {
        return Err(io::Error::new(io::ErrorKind::InvalidInput, "at most 8 sockets can be passed"));
    }
    let parent = std::process::id() as libc::pid_t;
    // The daemon raised its own open-file limit; the app gets the one the daemon was started with.
    let nofile = crate::limits::nofile_for_children();
    // Cloned before the fork: the child only reads it.
    let cgroup_procs = tracking.leaf.as_ref().map(|leaf| leaf.procs.clone());
    #[allow(unsafe_code)]
    // SAFETY: the closure runs in the child between fork and exec and calls only async-signal-safe
    // functions (prctl, getppid, setrlimit, open, write, close, fcntl, dup2, _exit) on plain
    // integers, structs and a C string made before the fork; it allocates nothing (`raw` and the
    // path were allocated before the fork and are only read).
    unsafe {
        command.pre_exec(move || {
            die_with(parent)?;
            // Into the instance's own cgroup before exec, so every descendant is born in it. A
            // failure leaves it in the daemon's cgroup; the daemon checks and falls back.
            if let Some(path) = &cgroup_procs {
                let fd = libc::open(path.as_ptr(), libc::O_WRONLY | libc::O_CLOEXEC);
                if fd >= 0 {
                    libc::write(fd, b"0".as_ptr().cast(), 1);
                    libc::close(fd);
                }
            }
            if let Some(limit) = &nofile
                && libc::setrlimit(libc::RLIMIT_NOFILE, limit) != 0
            {
                return Err(io::Error::last_os_error());
            }
            // Move every fd above the target range first, so no dup2 overwrites a source that is
            // still to be copied; dup2 onto a different fd clears FD_CLOEXEC, as exec needs.
            let mut high = [0 as RawFd; 8];
            for (slot, fd) in high.iter_mut().zip(&raw) {
                *slot = libc::fcntl(*fd, libc::F_DUPFD_CLOEXEC, 16);
                if *slot < 0 {
                    return Err(io::Error::last_os_error());
                }
            }
            for (i, fd) in high.iter().take(raw.len()).enumerate() {
                if libc::dup2(*fd, worker_env::LISTEN_FDS_START + i as RawFd) < 0 {
                    return Err(io::Error::last_os_error());
                }
            }
            Ok(())
        });
    }
    command.spawn()
}

/// The instance's arguments, directory, stdio and environment (the app's, then what the supervisor
/// tells it: instance, port, sockets, notify socket, Node channel); returns the fds to pass, in order.
fn environment(command: &mut Command, launch: &Launch<'_>) -> io::Result<Vec<RawFd>> {
    let Launch { spec, index, port, fds, home, notify, secret, tracking, channel } = *launch;
    command
        .args(&spec.args)
        .current_dir(&spec.cwd)
        .env_clear()
        .envs(&spec.env)
        .env(&spec.instance_var, index.to_string())
        .env(worker_env::INSTANCE, index.to_string())
        .env(worker_env::APP_NAME, &spec.name)
        .env(worker_env::KILL_TIMEOUT_MS, spec.kill_timeout.0.as_millis().to_string())
        .env(worker_env::SUPERVISOR_MARK, home)
        .env(worker_env::APP_SECRET, secret)
        .env(worker_env::LAUNCH, &tracking.id)
        .env(worker_env::BUS, home.join(BUS_FILE))
        .env(worker_env::DATA_DIR, home.join("data").join(&spec.name))
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        // Its own group: a stop signals the whole group, grandchildren included.
        .process_group(0)
        .kill_on_drop(false);
    // What chatctl itself got from its service manager is not the instance's: it gets its own or
    // none (a `chatctl run` under systemd has NOTIFY_SOCKET, and the apps' env inherits it).
    for inherited in [
        worker_env::NOTIFY_SOCKET,
        worker_env::LISTEN_FDS,
        worker_env::LISTEN_FDNAMES,
        "LISTEN_PID",
        NODE_CHANNEL_FD,
        NODE_CHANNEL_SERIALIZATION_MODE,
    ] {
        command.env_remove(inherited);
    }
    // Instances sharing a port hand each other the connections of polling sessions.
    if spec.exec_mode == ExecMode::Cluster {
        command.env(worker_env::HANDOFF, home.join(HANDOFF_DIR).join(&spec.name));
    }
    if let Some(path) = notify {
        command.env(worker_env::NOTIFY_SOCKET, path);
    }
    if let Some(port) = port {
        command.env(&spec.increment_var, port.to_string()).env(worker_env::PORT, port.to_string());
    }
    // A Node program takes its inherited socket through the preload (nothing to take without one).
    if spec.node_preload && !fds.is_empty() {
        let options = node::node_options(home, spec.env.get("NODE_OPTIONS").map(String::as_str))?;
        command.env("NODE_OPTIONS", options);
    }
    if !fds.is_empty() {
        let names: Vec<&str> = fds.iter().map(|f| f.name).collect();
        command.env(worker_env::LISTEN_FDS, fds.len().to_string()).env(worker_env::LISTEN_FDNAMES, names.join(":"));
    }
    let mut raw: Vec<RawFd> = fds.iter().map(|f| f.fd.as_raw_fd()).collect();
    // After the sockets, outside LISTEN_FDS: Node finds its channel by NODE_CHANNEL_FD.
    if let Some(channel) = channel {
        raw.push(channel.as_raw_fd());
        let at = worker_env::LISTEN_FDS_START + raw.len() as RawFd - 1;
        command.env(NODE_CHANNEL_FD, at.to_string()).env(NODE_CHANNEL_SERIALIZATION_MODE, "json");
    }
    Ok(raw)
}

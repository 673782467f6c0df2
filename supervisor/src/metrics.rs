//! Memory and CPU of running instances: each instance counts its whole process tree (the worker and
//! everything it started), because that is what a memory limit must bound — PM2 looks at the main
//! process only, and a worker that forks helpers escapes it.
//!
//! The tree comes from the kernel's `/proc/PID/task/TID/children` lists; sysinfo then refreshes only
//! those pids (~0.2 ms for a handful, against ~3 ms for every process of the machine).

use std::collections::HashMap;

use sysinfo::{Pid, ProcessRefreshKind, ProcessesToUpdate, System};

#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub(crate) struct Usage {
    /// Resident memory of the whole tree.
    pub(crate) memory_bytes: u64,
    /// Share of one core used by the whole tree since the previous sample.
    pub(crate) cpu_percent: f32,
}

pub(crate) struct Sampler {
    /// `None` when the process table cannot be read here: `list` then shows no usage.
    system: Option<System>,
}

impl Sampler {
    pub(crate) fn new() -> Sampler {
        let system =
            System::new().inspect_err(|e| tracing::warn!(error = %e, "memory and CPU sampling unavailable")).ok();
        Sampler { system }
    }

    /// Usage of each root pid still alive, its descendants included.
    pub(crate) fn sample(&mut self, roots: &[u32]) -> HashMap<u32, Usage> {
        let Some(system) = self.system.as_mut() else { return HashMap::new() };
        let trees: Vec<(u32, Vec<u32>)> = roots.iter().map(|root| (*root, tree(*root))).collect();
        let targets: Vec<Pid> = trees.iter().flat_map(|(_, pids)| pids.iter().map(|p| Pid::from_u32(*p))).collect();
        system.refresh_processes_specifics(
            ProcessesToUpdate::Some(&targets),
            true,
            ProcessRefreshKind::nothing().with_memory().with_cpu(),
        );
        trees
            .into_iter()
            .filter(|(root, _)| system.process(Pid::from_u32(*root)).is_some())
            .map(|(root, pids)| {
                let usage =
                    pids.iter().filter_map(|p| system.process(Pid::from_u32(*p))).fold(Usage::default(), |acc, p| {
                        Usage {
                            memory_bytes: acc.memory_bytes + p.memory(),
                            cpu_percent: acc.cpu_percent + p.cpu_usage(),
                        }
                    });
                (root, usage)
            })
            .collect()
    }
}

impl Sampler {
    /// This process alone (not its tree, which holds every instance).
    pub(crate) fn sample_self(&mut self) -> Option<Usage> {
        let system = self.system.as_mut()?;
        let me = Pid::from_u32(std::process::id());
        system.refresh_processes_specifics(
            ProcessesToUpdate::Some(&[me]),
            false,
            ProcessRefreshKind::nothing().with_memory().with_cpu(),
        );
        system.process(me).map(|p| Usage { memory_bytes: p.memory(), cpu_percent: p.cpu_usage() })
    }
}

/// `root` and all its descendants, as the kernel lists children per thread.
fn tree(root: u32) -> Vec<u32> {
    let mut all = vec![root];
    let mut next = 0;
    // Bounded: a fork bomb under one instance must not stall the daemon's sample.
    while next < all.len() && all.len() < 4096 {
        let pid = all[next];
        next += 1;
        let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) else { continue };
        for task in tasks.flatten() {
            let Ok(children) = std::fs::read_to_string(task.path().join("children")) else { continue };
            all.extend(children.split_whitespace().filter_map(|c| c.parse::<u32>().ok()));
        }
    }
    all
}

//! Memory and CPU of running instances, sampled for `chatctl list`.
//!
//! sysinfo refreshing only the instances' pids costs ~0.2 ms a sample against 3.2 ms for every
//! process. This samples the instance's main process; the whole process group comes with memory
//! limits.

use std::collections::HashMap;

use sysinfo::{Pid, ProcessRefreshKind, ProcessesToUpdate, System};

#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub(crate) struct Usage {
    pub(crate) memory_bytes: u64,
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

    /// Usage of each pid still alive. CPU is the share of one core since the previous sample.
    pub(crate) fn sample(&mut self, pids: &[u32]) -> HashMap<u32, Usage> {
        let Some(system) = self.system.as_mut() else { return HashMap::new() };
        let targets: Vec<Pid> = pids.iter().map(|p| Pid::from_u32(*p)).collect();
        system.refresh_processes_specifics(
            ProcessesToUpdate::Some(&targets),
            true,
            ProcessRefreshKind::nothing().with_memory().with_cpu(),
        );
        targets
            .iter()
            .filter_map(|pid| {
                let p = system.process(*pid)?;
                Some((pid.as_u32(), Usage { memory_bytes: p.memory(), cpu_percent: p.cpu_usage() }))
            })
            .collect()
    }
}

//! The agent: loads every probe it can, and turns each interval's kernel
//! figures into a [`Report`].

use std::time::Instant;

use crate::{
    probes::{self, Interval, Options, Probe, ProbeStatus},
    procinfo::ProcCache,
    report::{self, Report},
};

pub struct Agent {
    probes: Vec<Box<dyn Probe>>,
    failed: Vec<ProbeStatus>,
    pub procs: ProcCache,
    devices: crate::probes::disk::DeviceNames,
    top: usize,
    /// Bound on the processes held per interval (`--max-processes`).
    pub max_processes: usize,
    host: String,
    last: Instant,
}

impl Agent {
    /// Loads and attaches every probe. One that cannot is logged with the
    /// kernel's reason and left out; the others run.
    /// `only` names the probes to run; empty means all. Reports name `host`.
    pub fn start(opts: &Options, only: &[&str], top: usize, cmdline: bool, host: String) -> Self {
        match crate::ebpf::ensure_tracefs() {
            Ok(crate::ebpf::TracefsState::MountedNow) => {
                log::info!("mounted tracefs at {}", crate::ebpf::TRACEFS)
            }
            Ok(_) => {}
            Err(e) => log::warn!("{e}"),
        }
        let mut loaded = Vec::new();
        let mut failed = Vec::new();
        for spec in probes::ALL.iter().filter(|s| only.is_empty() || only.contains(&s.name)) {
            match (spec.load)(opts) {
                Ok(p) => {
                    log::info!("probe {} attached", spec.name);
                    loaded.push(p);
                }
                Err(e) => {
                    log::error!("{e}; running without it");
                    failed.push(ProbeStatus::failed(spec.name, e.to_string()));
                }
            }
        }
        crate::ebpf::forget_kernel_types();
        Self {
            probes: loaded,
            failed,
            procs: ProcCache::new(cmdline),
            devices: Default::default(),
            top,
            max_processes: probes::MAX_PROCESSES,
            host,
            last: Instant::now(),
        }
    }

    /// Names of the probes that are running.
    pub fn active(&self) -> Vec<&'static str> {
        self.probes.iter().map(|p| p.name()).collect()
    }

    /// Reads every probe and reports the interval since the previous call.
    pub fn tick(&mut self) -> Report {
        let now = Instant::now();
        let interval_ns = now.duration_since(self.last).as_nanos() as u64;
        self.last = now;
        let mut interval = Interval::new(self.max_processes);
        let mut statuses = Vec::with_capacity(self.probes.len() + self.failed.len());
        for p in &mut self.probes {
            let mut status = match p.collect(&mut interval) {
                Ok(()) => p.status(),
                Err(e) => {
                    log::warn!("{e}");
                    let mut s = p.status();
                    s.error = Some(e.to_string());
                    s
                }
            };
            status.active = true;
            statuses.push(status);
        }
        statuses.extend(self.failed.iter().cloned());
        report::build(interval, self.top, &mut self.procs, &mut self.devices, interval_ns, &self.host, statuses)
    }
}

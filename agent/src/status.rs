//! What the agent says about its own health: each probe's state, its
//! kernel maps and programs, and its event counters. Plain data, shared by
//! the probes (which fill it), the report and the exporters (which only
//! read it): nothing here touches the kernel.

use std::collections::BTreeMap;

use serde::Serialize;

/// A probe's health, reported with every interval and by `check`.
#[derive(Debug, Clone, Serialize)]
pub struct ProbeStatus {
    pub name: &'static str,
    pub active: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    pub maps: Vec<MapStatus>,
    /// Cumulative run counts and times (with `sysctl kernel.bpf_stats_enabled=1`).
    pub programs: Vec<ProgramStatus>,
    /// Kernel memory charged for all of the probe's maps.
    pub memlock_bytes: u64,
    /// Event counters of the last interval (see each probe's `Counter`).
    pub counters: BTreeMap<&'static str, u64>,
    /// Events lost in the last interval (the counters that mean data loss).
    pub lost: u64,
}

impl ProbeStatus {
    /// A probe just attached, with its maps as the kernel sized them.
    pub fn active(name: &'static str, maps: Vec<MapStatus>) -> Self {
        let memlock_bytes = maps.iter().map(|m| m.memlock_bytes).sum();
        Self {
            name,
            active: true,
            error: None,
            maps,
            programs: Vec::new(),
            memlock_bytes,
            counters: BTreeMap::new(),
            lost: 0,
        }
    }

    /// Sets the entries in use of one of the probe's maps.
    pub fn set_entries(&mut self, map: &str, entries: u64) {
        if let Some(m) = self.maps.iter_mut().find(|m| m.name == map) {
            m.entries = Some(entries);
        }
    }

    pub fn failed(name: &'static str, error: String) -> Self {
        Self {
            name,
            active: false,
            error: Some(error),
            maps: Vec::new(),
            programs: Vec::new(),
            memlock_bytes: 0,
            counters: BTreeMap::new(),
            lost: 0,
        }
    }
}

/// A kernel map's size as the kernel accounts for it.
#[derive(Debug, Clone, Serialize)]
pub struct MapStatus {
    pub name: String,
    /// Entries in use at the last read, where counting them is cheap.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub entries: Option<u64>,
    pub max_entries: u32,
    /// Kernel memory charged for the map (`memlock` in its fdinfo).
    pub memlock_bytes: u64,
}

/// A program's run statistics from the kernel. `runs` and `run_time_ns`
/// count only while `kernel.bpf_stats_enabled` is 1 (it costs a little per
/// run), so they read 0 otherwise; `missed` always counts.
#[derive(Debug, Clone, Serialize)]
pub struct ProgramStatus {
    pub name: String,
    pub runs: u64,
    pub run_time_ns: u64,
    /// Events the kernel did not run the program for because a BPF program
    /// was already running on that CPU (`recursion_misses`): a classic
    /// tracepoint in softirq that interrupted another classic tracepoint's
    /// program, any program's, ours or not.
    pub missed: u64,
}

//! The probe framework. A probe is four files that read alike:
//! `agent-common/src/<probe>.rs` (shared types), `agent-ebpf/src/<probe>.rs`
//! (kernel side), `agent/src/probes/<probe>.rs` (this side: load, attach,
//! collect) and `tests/tests/<probe>.rs`. Adding one means adding it to
//! [`ALL`] and giving [`ProcessData`] a field for its figures.

pub mod disk;
pub mod offcpu;
pub mod syscall;
pub mod tcp;

use std::collections::{BTreeMap, HashMap, HashSet};

pub use crate::{
    ebpf::ProbeError,
    status::{MapStatus, ProbeStatus, ProgramStatus},
};

/// Settings every probe applies in the kernel.
#[derive(Debug, Clone, Default)]
pub struct Options {
    /// Only these processes (thread group ids), when not empty.
    pub pids: Vec<u32>,
    /// Only threads with this comm (NUL-padded, at most 15 bytes).
    pub comm: Option<[u8; 16]>,
    /// Only tasks in this cgroup (v2) or below it.
    pub cgroup: Option<CgroupFilter>,
    /// Size of the main per-process map, when not the probe's default.
    pub max_entries: Option<u32>,
    /// Off-CPU stacks of episodes at least this long (ns), for flame graphs.
    pub stacks_min_ns: Option<u64>,
}

#[derive(Debug, Clone)]
pub struct CgroupFilter {
    pub path: String,
    /// The cgroup's id: its inode number in the cgroup2 filesystem.
    pub id: u64,
    /// Its depth below the cgroup2 root (the root is 0).
    pub level: u32,
}

/// The filter globals of [`Options`], in the form `agent_ebpf::filters!`
/// reads. Held while loading, since the loader borrows them.
pub struct FilterGlobals {
    pids: u32,
    comm_on: u32,
    comm: [u8; 16],
    cgroup_id: u64,
    cgroup_level: u32,
}

impl FilterGlobals {
    pub fn new(opts: &Options) -> Self {
        let (cgroup_id, cgroup_level) = opts.cgroup.as_ref().map_or((0, 0), |c| (c.id, c.level));
        Self {
            pids: u32::from(!opts.pids.is_empty()),
            comm_on: u32::from(opts.comm.is_some()),
            comm: opts.comm.unwrap_or([0; 16]),
            cgroup_id,
            cgroup_level,
        }
    }

    /// Sets the globals on a loader, before the object is loaded.
    pub fn apply<'a>(&'a self, loader: &mut aya::EbpfLoader<'a>) {
        use agent_common::filter as f;
        loader
            .override_global(f::FILTER_PIDS, &self.pids, true)
            .override_global(f::FILTER_COMM, &self.comm_on, true)
            .override_global(f::FILTER_COMM_VALUE, &self.comm, true)
            .override_global(f::FILTER_CGROUP_ID, &self.cgroup_id, true)
            .override_global(f::FILTER_CGROUP_LEVEL, &self.cgroup_level, true);
    }
}

/// Fills a probe's pid map (`--pid`), after load and before attach.
pub fn fill_pids(bpf: &mut aya::Ebpf, probe: &'static str, map: &'static str, pids: &[u32]) -> Result<(), ProbeError> {
    use aya::maps::{HashMap, MapData};
    let err = |detail: String| ProbeError::Map { probe, map, detail };
    if pids.len() > agent_common::filter::MAX_PIDS as usize {
        return Err(ProbeError::Config {
            probe,
            detail: format!("at most {} --pid values", agent_common::filter::MAX_PIDS),
        });
    }
    let mut m: HashMap<&mut MapData, u32, u8> =
        HashMap::try_from(bpf.map_mut(map).ok_or_else(|| err("missing".into()))?).map_err(|e| err(e.to_string()))?;
    for pid in pids {
        m.insert(pid, 1, 0).map_err(|e| err(e.to_string()))?;
    }
    Ok(())
}

/// A probe that is loaded and attached.
pub trait Probe: Send {
    fn name(&self) -> &'static str;

    /// Adds what happened since the previous call to `out`. Also reclaims
    /// the kernel entries of processes that are gone, once their last
    /// figures are in `out`.
    fn collect(&mut self, out: &mut Interval) -> Result<(), ProbeError>;

    /// Map sizes and event counters as of the last `collect`.
    fn status(&self) -> ProbeStatus;
}

/// How to build a probe, for the registry.
pub struct Spec {
    pub name: &'static str,
    /// One line for `check` and `--help`.
    pub about: &'static str,
    pub load: fn(&Options) -> Result<Box<dyn Probe>, ProbeError>,
}

/// Every probe the agent knows, in the order they are loaded.
pub const ALL: &[Spec] = &[syscall::SPEC, disk::SPEC, offcpu::SPEC, tcp::SPEC];

/// The agent's default bound on the processes it holds per interval
/// (`--max-processes`).
pub const MAX_PROCESSES: usize = 8192;

/// What every probe measured in one interval, per process (thread group id).
/// It holds at most `max_processes` processes, so the agent's memory has a
/// bound whatever the host runs: the figures of any further process are
/// merged into `over_cap` (they reach the report's `other`, unranked, and
/// host totals stay whole). Pid 0 (work no process was seen doing) is
/// always kept apart.
#[derive(Debug)]
pub struct Interval {
    pub processes: HashMap<u32, ProcessData>,
    pub max_processes: usize,
    /// The processes past the cap, merged.
    pub over_cap: ProcessData,
    /// Which processes those were.
    pub over_cap_pids: HashSet<u32>,
}

impl Default for Interval {
    fn default() -> Self {
        Self::new(MAX_PROCESSES)
    }
}

impl Interval {
    pub fn new(max_processes: usize) -> Self {
        Self {
            processes: HashMap::new(),
            max_processes,
            over_cap: ProcessData::default(),
            over_cap_pids: HashSet::new(),
        }
    }

    /// Where a probe adds the figures of process `tgid`: its own record, or
    /// the merged one past the cap. Probes add (merge), never overwrite, so
    /// that several processes can share the merged record.
    pub fn process(&mut self, tgid: u32) -> &mut ProcessData {
        if tgid == 0 || self.processes.len() < self.max_processes || self.processes.contains_key(&tgid) {
            return self.processes.entry(tgid).or_default();
        }
        self.over_cap_pids.insert(tgid);
        &mut self.over_cap
    }
}

#[derive(Debug, Default)]
pub struct ProcessData {
    /// comm as the kernel saw it, for processes gone before `/proc` is read.
    pub kernel_comm: Option<String>,
    /// Per syscall number.
    pub syscalls: BTreeMap<u32, syscall::SyscallData>,
    /// Per (device dev_t, operation).
    pub disk: BTreeMap<(u32, agent_common::disk::Op), disk::DiskData>,
    /// Time on and off the CPU.
    pub offcpu: Option<offcpu::OffcpuData>,
    /// TCP connections with activity in the interval.
    pub tcp: Vec<tcp::ConnData>,
}

/// A probe's per-CPU event counters (map `<PROBE>_COUNTERS`, indexed by its
/// `Counter` enum), reported as differences per interval.
pub struct Counters {
    probe: &'static str,
    map_name: &'static str,
    map: aya::maps::PerCpuArray<aya::maps::MapData, u64>,
    /// (name, whether a count means lost data), by index.
    kinds: Vec<(&'static str, bool)>,
    prev: Vec<u64>,
    /// The programs' `missed` total at the last read.
    prev_missed: u64,
}

impl Counters {
    pub fn new(
        probe: &'static str,
        map_name: &'static str,
        map: aya::maps::Map,
        kinds: Vec<(&'static str, bool)>,
    ) -> Result<Self, ProbeError> {
        let map = aya::maps::PerCpuArray::try_from(map).map_err(|e| ProbeError::Map {
            probe,
            map: map_name,
            detail: e.to_string(),
        })?;
        let prev = vec![0; kinds.len()];
        Ok(Self { probe, map_name, map, kinds, prev, prev_missed: 0 })
    }

    /// Reads every counter into `status`, with the programs' run statistics:
    /// this interval's counts, `missed_events` (events the kernel skipped:
    /// see [`ProgramStatus::missed`]), and `lost` as the sum of those that
    /// mean lost data.
    pub fn read(&mut self, bpf: &aya::Ebpf, status: &mut ProbeStatus) -> Result<(), ProbeError> {
        status.programs = crate::ebpf::program_stats(bpf);
        let missed: u64 = status.programs.iter().map(|p| p.missed).sum();
        let mut lost = missed.wrapping_sub(self.prev_missed);
        self.prev_missed = missed;
        status.counters.insert("missed_events", lost);
        for (i, (name, is_error)) in self.kinds.iter().enumerate() {
            let total: u64 = self
                .map
                .get(&(i as u32), 0)
                .map_err(|e| ProbeError::Read { probe: self.probe, map: self.map_name, detail: e.to_string() })?
                .iter()
                .sum();
            let delta = total.wrapping_sub(self.prev[i]);
            self.prev[i] = total;
            status.counters.insert(name, delta);
            if *is_error {
                lost += delta;
            }
        }
        status.lost = lost;
        Ok(())
    }
}

/// CLOCK_MONOTONIC in ns: the clock of `bpf_ktime_get_ns`, which the
/// probes' timestamps use.
pub fn monotonic_ns() -> u64 {
    let mut ts = libc::timespec { tv_sec: 0, tv_nsec: 0 };
    // SAFETY: clock_gettime fills the timespec it is given.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}

/// Whether process `tgid` still exists (a zombie not yet reaped counts).
pub fn alive(tgid: u32) -> bool {
    std::path::Path::new(&format!("/proc/{tgid}")).exists()
}

/// Forgets every entry of the processes in `dead`, in the kernel map and in
/// the probe's copy of its previous read; returns how many entries went.
/// Call after the read that holds their final figures.
pub fn reclaim<K, V>(
    prev: &mut HashMap<K, V>,
    map: &mut aya::maps::HashMap<aya::maps::MapData, K, V>,
    dead: &std::collections::HashSet<u32>,
    tgid: impl Fn(&K) -> u32,
) -> u64
where
    K: aya::Pod + Eq + std::hash::Hash,
    V: aya::Pod,
{
    if dead.is_empty() {
        return 0;
    }
    let before = prev.len();
    prev.retain(|k, _| {
        if !dead.contains(&tgid(k)) {
            return true;
        }
        // Nothing else deletes entries; a failure only delays reclaim.
        let _ = map.remove(k);
        false
    });
    (before - prev.len()) as u64
}

/// NUL-padded comm (the kernel's TASK_COMM_LEN is 16) as text.
pub fn comm_str(comm: &[u8; 16]) -> String {
    let end = comm.iter().position(|b| *b == 0).unwrap_or(comm.len());
    String::from_utf8_lossy(&comm[..end]).into_owned()
}

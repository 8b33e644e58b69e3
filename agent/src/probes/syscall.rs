//! Syscall latency probe, user side: loads `agent-ebpf/src/syscall.rs`,
//! attaches it, and turns its cumulative per-(process, syscall) counters
//! into per-interval figures.

use std::collections::{BTreeMap, HashMap as StdHashMap, HashSet};

use agent_common::syscall::{self as common, globals, Counter, Key, Stats};
use aya::{
    maps::{HashMap, MapData, PerCpuArray},
    Ebpf, EbpfLoader,
};

use super::{Interval, Options, Probe, ProbeError, ProbeStatus, Spec};
use crate::{ebpf, hist::Histogram, syscalls};

pub const NAME: &str = "syscall";

pub const SPEC: Spec = Spec {
    name: NAME,
    about: "per-process syscall counts, errors and latency (raw tracepoints sys_enter/sys_exit)",
    load: |opts| Ok(Box::new(SyscallProbe::load(opts)?)),
};

static OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/syscall"));

/// Programs and where they attach, in attach order: `sys_enter` last, so
/// that no start time is written before everything that consumes one runs.
const PROGRAMS: [(&str, &str); 4] = [
    ("syscall_sys_exit", "sys_exit"),
    ("syscall_sched_switch", "sched_switch"),
    ("syscall_sched_process_exit", "sched_process_exit"),
    ("syscall_sys_enter", "sys_enter"),
];

/// One syscall of one process over one interval.
#[derive(Debug, Clone, Default)]
pub struct SyscallData {
    pub count: u64,
    pub errors: u64,
    pub total_ns: u64,
    /// Returns whose start was not seen (not timed).
    pub missed_starts: u64,
    /// Exact when this interval set a new record for the pair, else the top
    /// of the highest non-empty bucket (within 12.5%), never above the
    /// largest value ever seen.
    pub max_ns: u64,
    pub hist: Histogram,
}

impl SyscallData {
    fn between(now: &Stats, before: Option<&Stats>) -> Self {
        let before = before.unwrap_or(&Stats::ZERO);
        let hist = Histogram::delta_u32(&now.hist, &before.hist);
        let max_ns = if now.max_ns > before.max_ns {
            now.max_ns
        } else {
            hist.highest()
                .map(|b| (agent_common::hist::upper_bound(b) - 1).min(now.max_ns))
                .unwrap_or(0)
        };
        Self {
            count: hist.count(),
            errors: now.errors.wrapping_sub(before.errors),
            total_ns: now.total_ns.wrapping_sub(before.total_ns),
            missed_starts: now.missed_starts.wrapping_sub(before.missed_starts),
            max_ns,
            hist,
        }
    }

    pub fn merge(&mut self, o: &SyscallData) {
        self.count += o.count;
        self.errors += o.errors;
        self.total_ns += o.total_ns;
        self.missed_starts += o.missed_starts;
        self.max_ns = self.max_ns.max(o.max_ns);
        self.hist.merge(&o.hist);
    }
}

pub struct SyscallProbe {
    /// Owns the programs and their links: dropping it detaches everything.
    _ebpf: Ebpf,
    stats: HashMap<MapData, Key, Stats>,
    inflight: HashMap<MapData, u32, common::Inflight>,
    counters: PerCpuArray<MapData, u64>,
    /// The previous read of every stats entry.
    prev: StdHashMap<Key, Stats>,
    prev_counters: [u64; common::COUNTERS as usize],
    status: ProbeStatus,
}

fn map_err(map: &'static str, detail: impl ToString) -> ProbeError {
    ProbeError::Map { probe: NAME, map, detail: detail.to_string() }
}

impl SyscallProbe {
    pub fn load(opts: &Options) -> Result<Self, ProbeError> {
        let filter_pids = u32::from(!opts.pids.is_empty());
        let filter_comm = u32::from(opts.comm.is_some());
        let comm = opts.comm.unwrap_or([0; 16]);
        let (cgroup_id, cgroup_level) = opts.cgroup.as_ref().map_or((0, 0), |c| (c.id, c.level));
        let nr_offset = syscalls::PT_REGS_NR_OFFSET;
        let fork_nrs = syscalls::fork_like();
        if opts.pids.len() > common::MAX_PIDS as usize {
            return Err(ProbeError::Config {
                probe: NAME,
                detail: format!("at most {} --pid values", common::MAX_PIDS),
            });
        }

        let mut loader = EbpfLoader::new();
        loader
            .override_global(globals::FILTER_PIDS, &filter_pids, true)
            .override_global(globals::FILTER_COMM, &filter_comm, true)
            .override_global(globals::FILTER_COMM_VALUE, &comm, true)
            .override_global(globals::FILTER_CGROUP_ID, &cgroup_id, true)
            .override_global(globals::FILTER_CGROUP_LEVEL, &cgroup_level, true)
            .override_global(globals::PT_REGS_NR_OFFSET, &nr_offset, true)
            .override_global(globals::FORK_NRS, &fork_nrs, true);
        if let Some(n) = opts.max_entries {
            loader.map_max_entries(common::MAP_STATS, n);
        }
        let mut bpf = ebpf::load(NAME, OBJECT, &mut loader)?;

        {
            let mut pids: HashMap<&mut MapData, u32, u8> = HashMap::try_from(
                bpf.map_mut(common::MAP_PIDS).ok_or_else(|| map_err("SYSCALL_PIDS", "missing"))?,
            )
            .map_err(|e| map_err("SYSCALL_PIDS", e))?;
            for pid in &opts.pids {
                pids.insert(pid, 1, 0).map_err(|e| map_err("SYSCALL_PIDS", e))?;
            }
        }
        for (program, tracepoint) in PROGRAMS {
            ebpf::attach_raw_tracepoint(&mut bpf, NAME, program, tracepoint)?;
        }

        let maps = ebpf::map_sizes(&bpf);
        let mut take = |name: &'static str| bpf.take_map(name).ok_or_else(|| map_err(name, "missing"));
        let stats = HashMap::try_from(take(common::MAP_STATS)?).map_err(|e| map_err("SYSCALL_STATS", e))?;
        let inflight =
            HashMap::try_from(take(common::MAP_INFLIGHT)?).map_err(|e| map_err("SYSCALL_INFLIGHT", e))?;
        let counters =
            PerCpuArray::try_from(take(common::MAP_COUNTERS)?).map_err(|e| map_err("SYSCALL_COUNTERS", e))?;
        let memlock_bytes = maps.iter().map(|m| m.memlock_bytes).sum();
        Ok(Self {
            _ebpf: bpf,
            stats,
            inflight,
            counters,
            prev: StdHashMap::new(),
            prev_counters: [0; common::COUNTERS as usize],
            status: ProbeStatus {
                name: NAME,
                active: true,
                error: None,
                maps,
                memlock_bytes,
                counters: BTreeMap::new(),
                lost: 0,
            },
        })
    }

    fn read_counters(&mut self) -> Result<(), ProbeError> {
        let mut lost = 0;
        for c in Counter::ALL {
            let total: u64 = self
                .counters
                .get(&(c as u32), 0)
                .map_err(|source| ProbeError::Read { probe: NAME, map: "SYSCALL_COUNTERS", source })?
                .iter()
                .sum();
            let i = c as usize;
            let delta = total.wrapping_sub(self.prev_counters[i]);
            self.prev_counters[i] = total;
            self.status.counters.insert(c.name(), delta);
            if c.is_error() {
                lost += delta;
            }
        }
        self.status.lost = lost;
        Ok(())
    }

    fn set_entries(&mut self, map: &str, entries: u64) {
        if let Some(m) = self.status.maps.iter_mut().find(|m| m.name == map) {
            m.entries = Some(entries);
        }
    }
}

fn proc_exists(tgid: u32) -> bool {
    std::path::Path::new(&format!("/proc/{tgid}")).exists()
}

impl Probe for SyscallProbe {
    fn name(&self) -> &'static str {
        NAME
    }

    fn collect(&mut self, out: &mut Interval) -> Result<(), ProbeError> {
        let read_err = |source| ProbeError::Read { probe: NAME, map: "SYSCALL_STATS", source };
        // Processes already gone before this read: the read holds their
        // final counts, so their entries can go once it is taken.
        let known: HashSet<u32> = self.prev.keys().map(|k| k.tgid).collect();
        let dead: HashSet<u32> = known.into_iter().filter(|t| !proc_exists(*t)).collect();

        let mut now: StdHashMap<Key, Stats> = StdHashMap::with_capacity(self.prev.len() + 64);
        for item in self.stats.iter() {
            let (k, v) = item.map_err(read_err)?;
            now.insert(k, v);
        }
        let mut best_comm: StdHashMap<u32, (u64, [u8; 16])> = StdHashMap::new();
        for (k, v) in &now {
            let d = SyscallData::between(v, self.prev.get(k));
            let comm = best_comm.entry(k.tgid).or_insert((0, v.comm));
            if d.count > comm.0 {
                *comm = (d.count, v.comm);
            }
            if d.count == 0 && d.missed_starts == 0 {
                continue;
            }
            out.processes.entry(k.tgid).or_default().syscalls.insert(k.nr, d);
        }
        for (tgid, (_, comm)) in best_comm {
            if let Some(p) = out.processes.get_mut(&tgid) {
                p.kernel_comm = Some(super::comm_str(&comm));
            }
        }
        let gone: Vec<Key> = now.keys().filter(|k| dead.contains(&k.tgid)).copied().collect();
        for k in &gone {
            // Already gone is fine (nothing else deletes, but be tolerant).
            let _ = self.stats.remove(k);
            now.remove(k);
        }
        self.set_entries(common::MAP_STATS, now.len() as u64);
        self.prev = now;

        let inflight = self.inflight.keys().filter(|k| k.is_ok()).count() as u64;
        self.set_entries(common::MAP_INFLIGHT, inflight);
        self.read_counters()
    }

    fn status(&self) -> ProbeStatus {
        self.status.clone()
    }
}

//! Syscall latency probe, user side: loads `agent-ebpf/src/syscall.rs`,
//! attaches it, and turns its cumulative per-(process, syscall) counters
//! into per-interval figures.

use std::collections::{HashMap as StdHashMap, HashSet};

use agent_common::syscall::{self as common, globals, Counter, Key, Stats};
use aya::{
    maps::{HashMap, MapData},
    Ebpf,
};

use super::{FilterGlobals, Interval, Options, Probe, ProbeError, ProbeStatus, Spec};
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
const PROGRAMS: [(&str, &str); 5] = [
    ("syscall_sys_exit", "sys_exit"),
    ("syscall_sched_switch", "sched_switch"),
    ("syscall_sched_process_exit", "sched_process_exit"),
    ("syscall_sched_process_exec", "sched_process_exec"),
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
    /// The interval between two reads of the entry of latency range `group`
    /// of a pair: its share of the pair's figures (the pair's are the sum
    /// over its groups, and the largest max).
    fn between(group: u16, now: &Stats, before: &Stats) -> Self {
        let mut hist = Histogram::default();
        for (slot, (n, b)) in now.hist.iter().zip(&before.hist).enumerate() {
            let d = n.wrapping_sub(*b);
            if d > 0 {
                if let Some(bucket) = common::bucket_of(group, slot) {
                    // A u32 difference into an empty u64 bucket cannot overflow.
                    let _ = hist.add(bucket, u64::from(d));
                }
            }
        }
        let max_ns = hist.interval_max(now.max_ns, before.max_ns);
        Self {
            count: hist.count(),
            errors: u64::from(now.errors.wrapping_sub(before.errors)),
            total_ns: now.total_ns.wrapping_sub(before.total_ns),
            missed_starts: u64::from(now.missed_starts.wrapping_sub(before.missed_starts)),
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
    bpf: Ebpf,
    stats: HashMap<MapData, Key, Stats>,
    stats_reader: ebpf::BatchReader<Key, Stats>,
    exited: HashMap<MapData, u32, u8>,
    exited_reader: ebpf::BatchReader<u32, u8>,
    /// Processes whose leader exited but whose /proc entry still exists
    /// (other threads running, or a zombie not yet reaped).
    exiting: HashSet<u32>,
    counters: super::Counters,
    /// The previous read of every stats entry.
    prev: StdHashMap<Key, Stats>,
    intervals: u64,
    /// execve and execveat on this architecture.
    exec_nrs: [u32; 2],
    status: ProbeStatus,
}

fn map_err(map: &'static str, detail: impl ToString) -> ProbeError {
    ProbeError::Map { probe: NAME, map, detail: detail.to_string() }
}

impl SyscallProbe {
    pub fn load(opts: &Options) -> Result<Self, ProbeError> {
        let filters = FilterGlobals::new(opts);
        let nr_offset = syscalls::PT_REGS_NR_OFFSET;
        let fork_nrs = syscalls::fork_like();
        let mut loader = ebpf::loader();
        filters.apply(&mut loader);
        loader.override_global(globals::PT_REGS_NR_OFFSET, &nr_offset, true).override_global(
            globals::FORK_NRS,
            &fork_nrs,
            true,
        );
        loader.map_max_entries(common::MAP_STATS, opts.max_entries.unwrap_or_else(|| stats_size(processes_now())));
        let mut bpf = ebpf::load(NAME, OBJECT, &mut loader)?;

        super::fill_pids(&mut bpf, NAME, common::MAP_PIDS, &opts.pids)?;
        for (program, tracepoint) in PROGRAMS {
            ebpf::attach_raw_tracepoint(&mut bpf, NAME, program, tracepoint)?;
        }

        let maps = ebpf::map_sizes(&bpf);
        let mut take = |name: &'static str| bpf.take_map(name).ok_or_else(|| map_err(name, "missing"));
        let stats = take(common::MAP_STATS)?;
        let stats_reader = ebpf::BatchReader::new(&stats).map_err(|e| map_err("SYSCALL_STATS", e))?;
        let stats = HashMap::try_from(stats).map_err(|e| map_err("SYSCALL_STATS", e))?;
        let exited = take(common::MAP_EXITED)?;
        let exited_reader = ebpf::BatchReader::new(&exited).map_err(|e| map_err("SYSCALL_EXITED", e))?;
        let exited = HashMap::try_from(exited).map_err(|e| map_err("SYSCALL_EXITED", e))?;
        let counters = super::Counters::new(
            NAME,
            common::MAP_COUNTERS,
            take(common::MAP_COUNTERS)?,
            Counter::ALL.iter().map(|c| (c.name(), c.is_error())).collect(),
        )?;
        Ok(Self {
            bpf,
            stats,
            stats_reader,
            exited,
            exited_reader,
            exiting: HashSet::new(),
            counters,
            prev: StdHashMap::new(),
            intervals: 0,
            exec_nrs: [
                syscalls::number("execve").unwrap_or(u32::MAX),
                syscalls::number("execveat").unwrap_or(u32::MAX),
            ],
            status: ProbeStatus::active(NAME, maps),
        })
    }

    /// Processes already gone before this read: the read holds their final
    /// counts, so their entries can go once it is taken. The kernel queues
    /// leader exits; every [`SWEEP_EVERY`] intervals all known processes are
    /// checked too, in case that queue was full.
    fn gone(&mut self) -> Result<HashSet<u32>, ProbeError> {
        let exited: Vec<u32> = self
            .exited_reader
            .read()
            .map_err(|e| ProbeError::Read { probe: NAME, map: "SYSCALL_EXITED", detail: e.to_string() })?
            .map(|(k, _)| *k)
            .collect();
        for tgid in exited {
            let _ = self.exited.remove(&tgid);
            self.exiting.insert(tgid);
        }
        let mut dead: HashSet<u32> = self.exiting.iter().copied().filter(|t| !super::alive(*t)).collect();
        self.exiting.retain(|t| !dead.contains(t));
        if self.intervals % SWEEP_EVERY == SWEEP_EVERY - 1 {
            let known: HashSet<u32> = self.prev.keys().map(|k| k.tgid).collect();
            dead.extend(known.into_iter().filter(|t| !super::alive(*t)));
        }
        Ok(dead)
    }
}

/// The size of [`common::MAP_STATS`] for a host running `processes`:
/// [`common::STATS_PER_PROCESS`] entries each, with a floor (room for a host
/// that grows after the agent starts) and a cap.
pub fn stats_size(processes: u32) -> u32 {
    processes.saturating_mul(common::STATS_PER_PROCESS).clamp(common::DEFAULT_MAX_STATS, common::MAX_STATS_CAP)
}

/// Processes running now (the numeric entries of `/proc`); 0 if it cannot be read.
fn processes_now() -> u32 {
    let Ok(dir) = std::fs::read_dir("/proc") else { return 0 };
    dir.filter_map(Result::ok).filter(|e| e.file_name().to_str().is_some_and(|n| n.parse::<u32>().is_ok())).count()
        as u32
}

/// Intervals between full sweeps of `/proc` for processes that are gone.
const SWEEP_EVERY: u64 = 60;

impl Probe for SyscallProbe {
    fn name(&self) -> &'static str {
        NAME
    }

    fn collect(&mut self, out: &mut Interval) -> Result<(), ProbeError> {
        let read_err = |map, e: std::io::Error| ProbeError::Read { probe: NAME, map, detail: e.to_string() };
        let dead = self.gone()?;

        let mut entries = 0u64;
        let mut best_comm: StdHashMap<u32, (u64, [u8; 16])> = StdHashMap::new();
        for (k, v) in self.stats_reader.read().map_err(|e| read_err("SYSCALL_STATS", e))? {
            entries += 1;
            let prev = self.prev.entry(*k).or_insert(Stats::ZERO);
            let unchanged = prev.total_ns == v.total_ns
                && prev.errors == v.errors
                && prev.missed_starts == v.missed_starts
                && prev.hist == v.hist;
            if unchanged {
                continue;
            }
            let d = SyscallData::between(k.group, v, prev);
            *prev = *v;
            let nr = u32::from(k.nr);
            // The name of the image the process runs last: an exec's entry is
            // made after the exec, so its comm wins; else the busiest entry's.
            let weight = if self.exec_nrs.contains(&nr) { u64::MAX } else { d.count };
            let comm = best_comm.entry(k.tgid).or_insert((0, v.comm));
            if weight > comm.0 {
                *comm = (weight, v.comm);
            }
            out.process(k.tgid).syscalls.entry(nr).or_default().merge(&d);
        }
        for (tgid, (_, comm)) in best_comm {
            if let Some(p) = out.processes.get_mut(&tgid) {
                p.kernel_comm = Some(super::comm_str(&comm));
            }
        }
        entries -= super::reclaim(&mut self.prev, &mut self.stats, &dead, |k| k.tgid);
        self.status.set_entries(common::MAP_STATS, entries);

        self.intervals += 1;
        self.counters.read(&self.bpf, &mut self.status)
    }

    fn status(&self) -> ProbeStatus {
        self.status.clone()
    }
}

#[cfg(test)]
mod object_tests {
    use super::*;

    #[test]
    fn the_stats_map_is_sized_from_the_host_within_a_floor_and_a_cap() {
        assert_eq!(stats_size(0), common::DEFAULT_MAX_STATS);
        assert_eq!(stats_size(3_000), 96_000);
        assert_eq!(stats_size(1_000_000), common::MAX_STATS_CAP);
        assert!(processes_now() > 0, "this test runs in a process");
    }

    #[test]
    fn a_pairs_groups_add_up_to_its_calls() {
        // One pair's calls over three latency ranges (groups 0, 1 and 3),
        // after an earlier read that saw one of them.
        let lat = [100u64, 300, 600, 5_000, 5_000, 2_000_000];
        let groups = [0u16, 1, 3];
        let mut now = [Stats::ZERO; 3];
        for ns in lat {
            let (g, s) = common::group_of(agent_common::hist::bucket(ns));
            let e = &mut now[groups.iter().position(|x| *x == g).expect("a group of the test")];
            e.hist[s] += 1;
            e.total_ns += ns;
            e.max_ns = e.max_ns.max(ns);
        }
        let mut before = [Stats::ZERO; 3];
        let (g, s) = common::group_of(agent_common::hist::bucket(5_000));
        assert_eq!(g, 1);
        before[1].hist[s] = 1;
        before[1].total_ns = 5_000;
        before[1].max_ns = 5_000;
        now[1].hist[s] += 1;
        now[1].total_ns += 5_000;

        let mut pair = SyscallData::default();
        for (g, (n, b)) in groups.iter().zip(now.iter().zip(&before)) {
            pair.merge(&SyscallData::between(*g, n, b));
        }
        assert_eq!(pair.count, 6);
        assert_eq!(pair.total_ns, lat.iter().sum::<u64>());
        assert_eq!(pair.max_ns, 2_000_000);
        let mut want = Histogram::default();
        lat.iter().for_each(|ns| want.record(*ns));
        assert_eq!(pair.hist, want, "the pair's histogram is the full layout's, bucket by bucket");
    }

    #[test]
    fn the_object_has_every_name_this_side_uses() {
        let globals = [globals::PT_REGS_NR_OFFSET, globals::FORK_NRS];
        let maps = [
            common::MAP_STATS,
            common::MAP_INFLIGHT,
            common::MAP_SLOT,
            common::MAP_EXITED,
            common::MAP_PIDS,
            common::MAP_COUNTERS,
        ];
        let programs: Vec<&str> = PROGRAMS.iter().map(|p| p.0).collect();
        ebpf::assert_object_has(OBJECT, &maps, &programs, &[&globals[..], &ebpf::FILTER_GLOBALS].concat());
    }
}

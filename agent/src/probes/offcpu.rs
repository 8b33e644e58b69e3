//! Off-CPU probe, user side: loads `agent-ebpf/src/offcpu.rs`, attaches it
//! to the scheduler tracepoints, and turns its cumulative per-process
//! figures into per-interval ones.

use std::collections::{BTreeMap, HashMap as StdHashMap, HashSet};

use agent_common::offcpu::{self as common, globals, Counter, Sleep, SleepKey, Stats};
use aya::{
    maps::{HashMap, MapData},
    Ebpf, EbpfLoader,
};

use super::{FilterGlobals, Interval, Options, Probe, ProbeError, ProbeStatus, Spec};
use crate::{ebpf, hist::Dist, syscalls};

pub const NAME: &str = "offcpu";

pub const SPEC: Spec = Spec {
    name: NAME,
    about: "per-process on-CPU, run-queue, blocked (D) and sleep time, sleep per syscall (sched tracepoints)",
    load: |opts| Ok(Box::new(OffcpuProbe::load(opts)?)),
};

static OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/offcpu"));

const PROGRAMS: [(&str, &str); 2] = [("offcpu_sched_wakeup", "sched_wakeup"), ("offcpu_sched_switch", "sched_switch")];

/// One process's time over one interval.
#[derive(Debug, Clone, Default)]
pub struct OffcpuData {
    pub on_cpu_ns: u64,
    pub runqueue_ns: u64,
    /// Uninterruptible sleep (D): mostly disk I/O.
    pub blocked_ns: u64,
    /// Other sleep (S): timers, locks, network and event waits.
    pub sleep_ns: u64,
    /// Run-queue waits.
    pub runqueue: Dist,
    /// Whole episodes off the CPU.
    pub offcpu: Dist,
    /// Time asleep (S or D) per syscall number, and how many sleeps.
    pub sleep_by_syscall: BTreeMap<u32, (u64, u64)>,
}

/// Time off the CPU spent with one pair of stacks.
#[derive(Debug, Clone)]
pub struct OffcpuStack {
    pub tgid: u32,
    /// Kernel frames, innermost first.
    pub kernel: Vec<u64>,
    /// User frames, innermost first.
    pub user: Vec<u64>,
    pub ns: u64,
}

pub struct OffcpuProbe {
    bpf: Ebpf,
    stats: HashMap<MapData, u32, Stats>,
    stats_reader: ebpf::BatchReader<u32, Stats>,
    sleep: HashMap<MapData, SleepKey, Sleep>,
    sleep_reader: ebpf::BatchReader<SleepKey, Sleep>,
    counters: super::Counters,
    prev: StdHashMap<u32, Stats>,
    prev_sleep: StdHashMap<SleepKey, Sleep>,
    intervals: u64,
    status: ProbeStatus,
}

fn map_err(map: &'static str, detail: impl ToString) -> ProbeError {
    ProbeError::Map { probe: NAME, map, detail: detail.to_string() }
}

fn read_err(map: &'static str, e: std::io::Error) -> ProbeError {
    ProbeError::Read { probe: NAME, map, detail: e.to_string() }
}

/// Intervals between checks of `/proc` for processes that are gone.
const REAP_EVERY: u64 = 10;

impl OffcpuProbe {
    pub fn load(opts: &Options) -> Result<Self, ProbeError> {
        ebpf::expect_fields(NAME, "sched", "sched_switch", &common::SWITCH_FIELDS)?;
        ebpf::expect_fields(NAME, "sched", "sched_wakeup", &[("pid", common::WAKEUP_PID_OFFSET)])?;
        let filters = FilterGlobals::new(opts);
        let nr_offset = syscalls::PT_REGS_NR_OFFSET;
        let stacks_min_ns = opts.stacks_min_ns.map_or(0, |n| n.max(1));
        let mut loader = EbpfLoader::new();
        filters.apply(&mut loader);
        loader
            .override_global(globals::PT_REGS_NR_OFFSET, &nr_offset, true)
            .override_global(globals::STACKS_MIN_NS, &stacks_min_ns, true);
        if stacks_min_ns != 0 {
            loader.map_max_entries(common::MAP_STACKS, common::MAX_STACKS);
            loader.map_max_entries(common::MAP_STACK_TIME, common::MAX_STACKS);
        }
        let mut bpf = ebpf::load(NAME, OBJECT, &mut loader)?;
        super::fill_pids(&mut bpf, NAME, common::MAP_PIDS, &opts.pids)?;
        for (program, tracepoint) in PROGRAMS {
            ebpf::attach_tracepoint(&mut bpf, NAME, program, "sched", tracepoint)?;
        }
        let maps = ebpf::map_sizes(&bpf);
        let mut take = |name: &'static str| bpf.take_map(name).ok_or_else(|| map_err(name, "missing"));
        let stats = take(common::MAP_STATS)?;
        let stats_reader = ebpf::BatchReader::new(&stats).map_err(|e| map_err("OFFCPU_STATS", e))?;
        let stats = HashMap::try_from(stats).map_err(|e| map_err("OFFCPU_STATS", e))?;
        let sleep = take(common::MAP_SLEEP)?;
        let sleep_reader = ebpf::BatchReader::new(&sleep).map_err(|e| map_err("OFFCPU_SLEEP", e))?;
        let sleep = HashMap::try_from(sleep).map_err(|e| map_err("OFFCPU_SLEEP", e))?;
        let counters = super::Counters::new(NAME, common::MAP_COUNTERS, take(common::MAP_COUNTERS)?, Counter::ALL.iter().map(|c| (c.name(), c.is_error())).collect())?;
        Ok(Self {
            bpf,
            stats,
            stats_reader,
            sleep,
            sleep_reader,
            counters,
            prev: StdHashMap::new(),
            prev_sleep: StdHashMap::new(),
            intervals: 0,
            status: ProbeStatus::active(NAME, maps),
        })
    }

    /// Time off the CPU per (process, kernel stack, user stack) since load,
    /// with each stack's instruction pointers, innermost first (`--stacks`).
    pub fn stacks(&mut self) -> Result<Vec<OffcpuStack>, ProbeError> {
        let times: aya::maps::HashMap<&MapData, common::StackKey, u64> = aya::maps::HashMap::try_from(
            self.bpf.map(common::MAP_STACK_TIME).ok_or_else(|| map_err("OFFCPU_STACK_TIME", "missing"))?,
        )
        .map_err(|e| map_err("OFFCPU_STACK_TIME", e))?;
        let traces: aya::maps::StackTraceMap<&MapData> = aya::maps::StackTraceMap::try_from(
            self.bpf.map(common::MAP_STACKS).ok_or_else(|| map_err("OFFCPU_STACKS", "missing"))?,
        )
        .map_err(|e| map_err("OFFCPU_STACKS", e))?;
        let frames = |id: i32| -> Vec<u64> {
            if id < 0 {
                return Vec::new();
            }
            traces.get(&(id as u32), 0).map(|t| t.frames().iter().map(|f| f.ip).collect()).unwrap_or_default()
        };
        let mut out = Vec::new();
        for item in times.iter() {
            let (k, ns) = item.map_err(|e| ProbeError::Read { probe: NAME, map: "OFFCPU_STACK_TIME", detail: e.to_string() })?;
            out.push(OffcpuStack { tgid: k.tgid, kernel: frames(k.kstack), user: frames(k.ustack), ns });
        }
        Ok(out)
    }

}

impl Probe for OffcpuProbe {
    fn name(&self) -> &'static str {
        NAME
    }

    fn collect(&mut self, out: &mut Interval) -> Result<(), ProbeError> {
        // Every REAP_EVERY intervals, processes that are gone lose their
        // entries once this read has their final figures.
        let dead: HashSet<u32> = if self.intervals.is_multiple_of(REAP_EVERY) {
            self.prev.keys().copied().filter(|t| !super::alive(*t)).collect()
        } else {
            HashSet::new()
        };
        self.intervals += 1;

        let mut entries = 0u64;
        for (tgid, v) in self.stats_reader.read().map_err(|e| read_err("OFFCPU_STATS", e))? {
            entries += 1;
            let prev = self.prev.entry(*tgid).or_insert(Stats::ZERO);
            if prev == v {
                continue;
            }
            let d = OffcpuData {
                on_cpu_ns: v.on_cpu_ns.wrapping_sub(prev.on_cpu_ns),
                runqueue_ns: v.runqueue_ns.wrapping_sub(prev.runqueue_ns),
                blocked_ns: v.blocked_ns.wrapping_sub(prev.blocked_ns),
                sleep_ns: v.sleep_ns.wrapping_sub(prev.sleep_ns),
                runqueue: Dist::between(
                    &v.runqueue,
                    &prev.runqueue,
                    v.runqueue_max_ns,
                    prev.runqueue_max_ns,
                    v.runqueue_ns,
                    prev.runqueue_ns,
                ),
                // An episode off the CPU is its sleep (blocked or not) and
                // then its wait in the run queue, all charged as it ends.
                offcpu: Dist::between(
                    &v.offcpu,
                    &prev.offcpu,
                    v.offcpu_max_ns,
                    prev.offcpu_max_ns,
                    v.runqueue_ns.wrapping_add(v.blocked_ns).wrapping_add(v.sleep_ns),
                    prev.runqueue_ns.wrapping_add(prev.blocked_ns).wrapping_add(prev.sleep_ns),
                ),
                sleep_by_syscall: BTreeMap::new(),
            };
            *prev = *v;
            out.processes.entry(*tgid).or_default().offcpu = Some(d);
        }
        for (k, v) in self.sleep_reader.read().map_err(|e| read_err("OFFCPU_SLEEP", e))? {
            let prev = self.prev_sleep.entry(*k).or_default();
            if prev == v {
                continue;
            }
            let (ns, n) = (v.ns.wrapping_sub(prev.ns), v.count.wrapping_sub(prev.count));
            *prev = *v;
            let p = out.processes.entry(k.tgid).or_default();
            p.offcpu.get_or_insert_with(Default::default).sleep_by_syscall.insert(k.nr, (ns, n));
        }
        entries -= super::reclaim(&mut self.prev, &mut self.stats, &dead, |t| *t);
        super::reclaim(&mut self.prev_sleep, &mut self.sleep, &dead, |k| k.tgid);
        self.status.set_entries(common::MAP_STATS, entries);
        self.counters.read(&self.bpf, &mut self.status)
    }

    fn status(&self) -> ProbeStatus {
        self.status.clone()
    }
}

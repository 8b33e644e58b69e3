//! Off-CPU probe, user side: loads `agent-ebpf/src/offcpu.rs`, attaches it
//! to the scheduler tracepoints, and turns its cumulative per-thread and
//! per-process figures into per-interval ones.
//!
//! Time totals are read per thread and split at the read: each thread's
//! record has the time of the parts that ended, and the part in progress
//! (on a CPU, asleep, in the run queue) is added here up to the moment of
//! the read ([`Times::of`]), so an interval gets what passed in it and the
//! next interval the rest. Threads that exited or stopped being traced
//! leave their final record in `OFFCPU_RETIRED`, read once and deleted.
//! The sleep per syscall is split the same way ([`SleepSplit`]).
//! Histograms and their sums take each episode once, whole, in the interval
//! in which it ends.

use std::collections::{BTreeMap, HashMap as StdHashMap, HashSet};

use agent_common::offcpu::{
    self as common, globals, Counter, RetiredKey, Sleep, SleepKey, Stats, Thread, Times, PF_KTHREAD,
};
use aya::{
    maps::{HashMap, MapData},
    Ebpf,
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

/// (program, raw tracepoint, its first arguments, up to the last one read).
/// `sched_process_exec`: a non-leader thread's exec retires its old id.
const PROGRAMS: [(&str, &str, &[&str]); 3] = [
    ("offcpu_sched_wakeup", "sched_wakeup", &["struct task_struct *"]),
    ("offcpu_sched_switch", "sched_switch", &["bool", "struct task_struct *", "struct task_struct *", "unsigned int"]),
    ("offcpu_exec", "sched_process_exec", &["struct task_struct *", "pid_t"]),
];

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
    /// Time asleep (S or D) per syscall number, split at reads like the
    /// times above, and how many sleeps ended. Threads without syscalls
    /// (kernel threads, io_uring and vhost workers) have none.
    pub sleep_by_syscall: BTreeMap<u32, (u64, u64)>,
    /// A kernel thread: its sleep is in no syscall.
    pub kernel_thread: bool,
}

impl OffcpuData {
    /// Adds `o`: times and per-syscall sleep summed, histograms bucket by
    /// bucket (for `other`).
    pub fn merge(&mut self, o: &OffcpuData) {
        self.on_cpu_ns += o.on_cpu_ns;
        self.runqueue_ns += o.runqueue_ns;
        self.blocked_ns += o.blocked_ns;
        self.sleep_ns += o.sleep_ns;
        self.runqueue.merge(&o.runqueue);
        self.offcpu.merge(&o.offcpu);
        for (nr, (ns, count)) in &o.sleep_by_syscall {
            let e = self.sleep_by_syscall.entry(*nr).or_default();
            e.0 += ns;
            e.1 += count;
        }
    }
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
    threads: HashMap<MapData, u32, Thread>,
    threads_reader: ebpf::BatchReader<u32, Thread>,
    retired: HashMap<MapData, RetiredKey, Thread>,
    retired_reader: ebpf::BatchReader<RetiredKey, Thread>,
    /// Every thread's figures as last reported, by (id, first-seen stamp).
    seen: StdHashMap<(u32, u64), Times>,
    stats: HashMap<MapData, u32, Stats>,
    stats_reader: ebpf::BatchReader<u32, Stats>,
    sleep: HashMap<MapData, SleepKey, Sleep>,
    sleep_reader: ebpf::BatchReader<SleepKey, Sleep>,
    counters: super::Counters,
    prev: StdHashMap<u32, Stats>,
    prev_sleep: StdHashMap<SleepKey, Sleep>,
    sleep_split: SleepSplit,
    intervals: u64,
    status: ProbeStatus,
}

fn map_err(map: &'static str, detail: impl ToString) -> ProbeError {
    ProbeError::Map { probe: NAME, map, detail: detail.to_string() }
}

fn read_err(map: &'static str, e: std::io::Error) -> ProbeError {
    ProbeError::Read { probe: NAME, map, detail: e.to_string() }
}

/// The sleep per syscall, split at reads: the kernel adds a sleep to
/// `OFFCPU_SLEEP` whole when the thread gets a CPU back; a sleep still in
/// progress at a read is charged up to then from the thread's record, and
/// what was charged is taken back from the whole when it arrives.
#[derive(Default)]
struct SleepSplit {
    /// Per thread (id, first seen): the sleep in progress (its start, key)
    /// and how much of it was charged.
    charged: StdHashMap<(u32, u64), (u64, SleepKey, u64)>,
    /// Per (process, syscall): charged minus taken back, to settle against
    /// the kernel's figures at the next read. A negative rest waits for the
    /// next one: a sleep that ends between the read of the threads and the
    /// read of `OFFCPU_SLEEP` is taken back one interval late.
    owed: StdHashMap<SleepKey, i64>,
}

impl SleepSplit {
    /// Charges the sleeps in progress in `live` up to `now`; takes back
    /// what was charged to sleeps that have ended since the last read.
    fn charge(&mut self, live: &[(u32, Thread)], now: u64) {
        let mut charged = StdHashMap::new();
        for (tid, t) in live {
            let Some((key, ns)) = t.sleep_so_far(now) else { continue };
            let id = (*tid, t.born_ns);
            let before = match self.charged.remove(&id) {
                Some((start, _, before)) if start == t.off_ns => before,
                Some((_, k, before)) => {
                    *self.owed.entry(k).or_default() -= before as i64;
                    0
                }
                None => 0,
            };
            *self.owed.entry(key).or_default() += ns.saturating_sub(before) as i64;
            charged.insert(id, (t.off_ns, key, ns.max(before)));
        }
        for (_, (_, key, before)) in self.charged.drain() {
            *self.owed.entry(key).or_default() -= before as i64;
        }
        self.charged = charged;
    }

    /// The kernel's whole sleeps `ns` for `key` since the last read, net of
    /// what was charged and taken back.
    fn settle(&mut self, key: &SleepKey, ns: u64) -> u64 {
        let net = ns as i64 + self.owed.remove(key).unwrap_or(0);
        if net < 0 {
            self.owed.insert(*key, net);
        }
        net.max(0) as u64
    }
}

/// Whether thread `tid` of process `tgid` still exists.
fn thread_alive(tgid: u32, tid: u32) -> bool {
    std::path::Path::new(&format!("/proc/{tgid}/task/{tid}")).exists()
}

/// Intervals between checks of `/proc` for processes that are gone.
const REAP_EVERY: u64 = 10;

/// A thread record unchanged for this long is checked against `/proc` (at
/// reap time): one whose exit the probe missed would otherwise be charged
/// time forever.
const STALE_NS: u64 = 10_000_000_000;

impl OffcpuProbe {
    pub fn load(opts: &Options) -> Result<Self, ProbeError> {
        for (_, event, args) in PROGRAMS {
            ebpf::expect_raw_args(NAME, event, args)?;
        }
        let filters = FilterGlobals::new(opts);
        let nr_offset = syscalls::PT_REGS_NR_OFFSET;
        let stacks_min_ns = opts.stacks_min_ns.map_or(0, |n| n.max(1));
        let task_flags = ebpf::kernel_offset(NAME, "task_struct", "flags")?;
        let task_pid = ebpf::kernel_offset(NAME, "task_struct", "pid")?;
        let mut loader = ebpf::loader();
        filters.apply(&mut loader);
        loader
            .override_global(globals::PT_REGS_NR_OFFSET, &nr_offset, true)
            .override_global(globals::STACKS_MIN_NS, &stacks_min_ns, true)
            .override_global(globals::TASK_FLAGS_OFFSET, &task_flags, true)
            .override_global(globals::TASK_PID_OFFSET, &task_pid, true);
        if stacks_min_ns != 0 {
            loader.map_max_entries(common::MAP_STACKS, common::MAX_STACKS);
            loader.map_max_entries(common::MAP_STACK_TIME, common::MAX_STACKS);
        }
        let mut bpf = ebpf::load(NAME, OBJECT, &mut loader)?;
        super::fill_pids(&mut bpf, NAME, common::MAP_PIDS, &opts.pids)?;
        for (program, tracepoint, _) in PROGRAMS {
            ebpf::attach_raw_tracepoint(&mut bpf, NAME, program, tracepoint)?;
        }
        let maps = ebpf::map_sizes(&bpf);
        let mut take = |name: &'static str| bpf.take_map(name).ok_or_else(|| map_err(name, "missing"));
        let threads = take(common::MAP_THREADS)?;
        let threads_reader = ebpf::BatchReader::new(&threads).map_err(|e| map_err("OFFCPU_THREADS", e))?;
        let threads = HashMap::try_from(threads).map_err(|e| map_err("OFFCPU_THREADS", e))?;
        let retired = take(common::MAP_RETIRED)?;
        let retired_reader = ebpf::BatchReader::new(&retired).map_err(|e| map_err("OFFCPU_RETIRED", e))?;
        let retired = HashMap::try_from(retired).map_err(|e| map_err("OFFCPU_RETIRED", e))?;
        let stats = take(common::MAP_STATS)?;
        let stats_reader = ebpf::BatchReader::new(&stats).map_err(|e| map_err("OFFCPU_STATS", e))?;
        let stats = HashMap::try_from(stats).map_err(|e| map_err("OFFCPU_STATS", e))?;
        let sleep = take(common::MAP_SLEEP)?;
        let sleep_reader = ebpf::BatchReader::new(&sleep).map_err(|e| map_err("OFFCPU_SLEEP", e))?;
        let sleep = HashMap::try_from(sleep).map_err(|e| map_err("OFFCPU_SLEEP", e))?;
        let counters = super::Counters::new(
            NAME,
            common::MAP_COUNTERS,
            take(common::MAP_COUNTERS)?,
            Counter::ALL.iter().map(|c| (c.name(), c.is_error())).collect(),
        )?;
        Ok(Self {
            bpf,
            threads,
            threads_reader,
            retired,
            retired_reader,
            seen: StdHashMap::new(),
            stats,
            stats_reader,
            sleep,
            sleep_reader,
            counters,
            prev: StdHashMap::new(),
            prev_sleep: StdHashMap::new(),
            sleep_split: SleepSplit::default(),
            intervals: 0,
            status: ProbeStatus::active(NAME, maps),
        })
    }

    /// Each thread's time since the last read, summed per process, with
    /// which processes are kernel threads. Forgets retired records once
    /// read, and (when `sweep`) records of threads that are gone: returns
    /// how many of those there were.
    #[allow(clippy::type_complexity)]
    fn thread_times(&mut self, sweep: bool) -> Result<(StdHashMap<u32, (Times, bool)>, u64), ProbeError> {
        // Live records first, then retired ones: a thread that retires
        // between the two reads is seen in one or both, never in neither.
        let live: Vec<(u32, Thread)> =
            self.threads_reader.read().map_err(|e| read_err("OFFCPU_THREADS", e))?.map(|(k, v)| (*k, *v)).collect();
        let now = super::monotonic_ns();
        self.sleep_split.charge(&live, now);
        let retired: Vec<(RetiredKey, Thread)> =
            self.retired_reader.read().map_err(|e| read_err("OFFCPU_RETIRED", e))?.map(|(k, v)| (*k, *v)).collect();
        self.status.set_entries(common::MAP_THREADS, live.len() as u64);
        self.status.set_entries(common::MAP_RETIRED, retired.len() as u64);

        let mut now_seen: StdHashMap<(u32, u64), (u32, Times, bool)> = StdHashMap::with_capacity(live.len());
        let mut stale = Vec::new();
        for (tid, t) in &live {
            now_seen.insert((*tid, t.born_ns), (t.tgid, Times::of(t, now), t.flags & PF_KTHREAD != 0));
            if sweep && now.saturating_sub(t.off_ns.max(t.on_ns)) > STALE_NS && !thread_alive(t.tgid, *tid) {
                stale.push(*tid);
            }
        }
        for (k, t) in &retired {
            // A retired record's figures are final; a live copy read just
            // before it retired has at most a little more (counted to `now`).
            let times = Times::of(t, now);
            now_seen.entry((k.tid, k.born_ns)).and_modify(|e| e.1 = e.1.max(&times)).or_insert((
                t.tgid,
                times,
                t.flags & PF_KTHREAD != 0,
            ));
        }

        let mut per_process: StdHashMap<u32, (Times, bool)> = StdHashMap::new();
        let mut seen = StdHashMap::with_capacity(now_seen.len());
        for (key, (tgid, times, kernel)) in now_seen {
            // A thread not seen before was first seen since the last read:
            // all of its time is this interval's.
            let before = self.seen.get(&key).copied().unwrap_or_default();
            let p = per_process.entry(tgid).or_default();
            p.0.add(&times.since(&before));
            p.1 |= kernel;
            seen.insert(key, times.max(&before));
        }
        self.seen = seen;
        for (k, _) in &retired {
            self.seen.remove(&(k.tid, k.born_ns));
            // Only this userspace deletes retired records; a failure leaves
            // one to be read (and ignored: already reported) again.
            let _ = self.retired.remove(k);
        }
        for tid in &stale {
            let _ = self.threads.remove(tid);
        }
        Ok((per_process, stale.len() as u64))
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
            let (k, ns) =
                item.map_err(|e| ProbeError::Read { probe: NAME, map: "OFFCPU_STACK_TIME", detail: e.to_string() })?;
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
        let reap = self.intervals.is_multiple_of(REAP_EVERY);
        let dead: HashSet<u32> =
            if reap { self.prev.keys().copied().filter(|t| !super::alive(*t)).collect() } else { HashSet::new() };
        self.intervals += 1;

        let (times, stale) = self.thread_times(reap)?;
        for (tgid, (t, kernel)) in &times {
            if t.total() == 0 {
                continue;
            }
            let d = out.process(*tgid).offcpu.get_or_insert_with(Default::default);
            d.on_cpu_ns += t.on_cpu_ns;
            d.runqueue_ns += t.runqueue_ns;
            d.blocked_ns += t.blocked_ns;
            d.sleep_ns += t.sleep_ns;
            d.kernel_thread |= *kernel;
        }

        let mut entries = 0u64;
        for (tgid, v) in self.stats_reader.read().map_err(|e| read_err("OFFCPU_STATS", e))? {
            entries += 1;
            let prev = self.prev.entry(*tgid).or_insert(Stats::ZERO);
            if prev == v {
                continue;
            }
            let d = out.process(*tgid).offcpu.get_or_insert_with(Default::default);
            // The episodes that ended in the interval, whole; their sums
            // are the sums of what the histograms hold.
            d.runqueue.merge(&Dist::between(
                &v.runqueue,
                &prev.runqueue,
                v.runqueue_max_ns,
                prev.runqueue_max_ns,
                v.runqueue_ns,
                prev.runqueue_ns,
            ));
            d.offcpu.merge(&Dist::between(
                &v.offcpu,
                &prev.offcpu,
                v.offcpu_max_ns,
                prev.offcpu_max_ns,
                v.offcpu_ns,
                prev.offcpu_ns,
            ));
            *prev = *v;
        }
        // Whole sleeps that ended, per key; then the keys with only a sleep
        // in progress (charged, none ended).
        let mut slept: StdHashMap<SleepKey, (u64, u64)> = StdHashMap::new();
        for (k, v) in self.sleep_reader.read().map_err(|e| read_err("OFFCPU_SLEEP", e))? {
            let prev = self.prev_sleep.entry(*k).or_default();
            if prev != v {
                slept.insert(*k, (v.ns.wrapping_sub(prev.ns), v.count.wrapping_sub(prev.count)));
                *prev = *v;
            }
        }
        let split = &mut self.sleep_split;
        for (k, _) in split.owed.iter().filter(|(_, n)| **n > 0) {
            slept.entry(*k).or_default();
        }
        for (k, (ns, n)) in slept {
            let ns = split.settle(&k, ns);
            if ns != 0 || n != 0 {
                let p = out.process(k.tgid).offcpu.get_or_insert_with(Default::default);
                let e = p.sleep_by_syscall.entry(k.nr).or_default();
                (e.0, e.1) = (e.0 + ns, e.1 + n);
            }
        }
        entries -= super::reclaim(&mut self.prev, &mut self.stats, &dead, |t| *t);
        super::reclaim(&mut self.prev_sleep, &mut self.sleep, &dead, |k| k.tgid);
        self.sleep_split.owed.retain(|k, _| !dead.contains(&k.tgid));
        self.status.set_entries(common::MAP_STATS, entries);
        self.counters.read(&self.bpf, &mut self.status)?;
        // Records of threads gone without a seen exit (see STALE_NS).
        self.status.counters.insert("stale_threads", stale);
        Ok(())
    }

    fn status(&self) -> ProbeStatus {
        self.status.clone()
    }
}

#[cfg(test)]
mod tests {
    use agent_common::offcpu::Reason;

    use super::*;

    fn asleep_since(off_ns: u64) -> Thread {
        Thread { tgid: 7, nr: 35, reason: Reason::Sleep as u32, off_ns, born_ns: 1, ..Default::default() }
    }

    #[test]
    fn the_object_has_every_name_this_side_uses() {
        let maps = [
            common::MAP_THREADS,
            common::MAP_RETIRED,
            common::MAP_STATS,
            common::MAP_SLEEP,
            common::MAP_COUNTERS,
            common::MAP_ZERO,
            common::MAP_PIDS,
            common::MAP_STACKS,
            common::MAP_STACK_TIME,
        ];
        let programs: Vec<&str> = PROGRAMS.iter().map(|p| p.0).collect();
        let globals =
            [globals::PT_REGS_NR_OFFSET, globals::STACKS_MIN_NS, globals::TASK_FLAGS_OFFSET, globals::TASK_PID_OFFSET];
        ebpf::assert_object_has(OBJECT, &maps, &programs, &[&globals[..], &ebpf::FILTER_GLOBALS].concat());
    }

    #[test]
    fn a_sleep_across_reads_is_charged_to_each_and_counted_once() {
        let key = SleepKey { tgid: 7, nr: 35 };
        let mut split = SleepSplit::default();
        // Asleep since 100, read at 1000 and 2000: charged as it goes.
        split.charge(&[(9, asleep_since(100))], 1000);
        assert_eq!(split.settle(&key, 0), 900);
        split.charge(&[(9, asleep_since(100))], 2000);
        assert_eq!(split.settle(&key, 0), 1000);
        // Woken at 2500: the kernel adds the whole 2,400; the read at 3000
        // gets the 500 not yet charged.
        split.charge(&[(9, Thread { off_ns: 0, on_ns: 2500, ..asleep_since(0) })], 3000);
        assert_eq!(split.settle(&key, 2400), 500);
        // A sleep that ends between the two reads (from 3100, seen in
        // progress at 4000, whole 1,000 in the map already): counted twice
        // for one interval, given back at the next.
        split.charge(&[(9, asleep_since(3100))], 4000);
        assert_eq!(split.settle(&key, 1000), 1900);
        split.charge(&[], 5000);
        assert_eq!(split.settle(&key, 300), 0);
        assert_eq!(split.settle(&key, 700), 100);
        // In all: 900 + 1000 + 500 + 1900 + 100, the kernel's 2400 + 1000 + 300 + 700.
    }
}

//! Syscall latency, per process and per syscall, on the `sys_enter` and
//! `sys_exit` raw tracepoints (classic tracepoints cost twice as much here).
//!
//! Start times: `sys_enter` writes `{tid, nr, start}` into a per-CPU slot.
//! Most syscalls return on the CPU they entered on without a context switch,
//! so `sys_exit` finds its own tid in the slot: no map lookup on the hot
//! path. When a thread is switched out inside a syscall, `sched_switch` moves
//! the slot into the thread's own task storage, where `sys_exit` finds it
//! later on whatever CPU (a per-task cache read, not a hash: this is the
//! probe's cost at every context switch). The storage is freed with the
//! thread, so a thread that dies inside a syscall (exit, exit_group, a fatal
//! signal) leaves nothing behind, and it follows a thread whose id changes
//! (an `execve` by a thread other than the leader returns under the
//! leader's id). `sched_process_exit` and `sched_process_exec` only fix up
//! the per-CPU slot, which is keyed by thread id. Neither is on the hot path.
#![no_std]
#![no_main]

use agent_common::{
    hist,
    syscall::{group_of, Counter, Inflight, Key, Slot, Stats, COUNTERS, DEFAULT_MAX_STATS, MAX_EXITED},
};
use agent_ebpf::{atomic_add, global, TaskStorage};
use aya_ebpf::{
    bindings::BPF_NOEXIST,
    helpers::{bpf_get_current_comm, bpf_get_current_pid_tgid, bpf_ktime_get_ns, bpf_probe_read_kernel},
    macros::{btf_map, map, raw_tracepoint},
    maps::{HashMap, PerCpuArray},
    programs::RawTracePointContext,
};

agent_ebpf::filters!(SYSCALL_PIDS);

#[unsafe(no_mangle)]
static PT_REGS_NR_OFFSET: u32 = 120;
#[unsafe(no_mangle)]
static FORK_NRS: [u32; 4] = [u32::MAX; 4];

#[map]
static SYSCALL_STATS: HashMap<Key, Stats> = HashMap::with_max_entries(DEFAULT_MAX_STATS, 0);
#[btf_map]
static SYSCALL_INFLIGHT: TaskStorage<Inflight> = TaskStorage::new();
#[map]
static SYSCALL_SLOT: PerCpuArray<Slot> = PerCpuArray::with_max_entries(1, 0);
#[map]
static SYSCALL_EXITED: HashMap<u32, u8> = HashMap::with_max_entries(MAX_EXITED, 0);
agent_ebpf::counters!(SYSCALL_COUNTERS, Counter, COUNTERS);

#[raw_tracepoint(tracepoint = "sys_enter")]
pub fn syscall_sys_enter(ctx: RawTracePointContext) -> i32 {
    let pid_tgid = bpf_get_current_pid_tgid();
    if !traced(pid_tgid) {
        return 0;
    }
    let nr: u64 = ctx.arg(1);
    if let Some(slot) = SYSCALL_SLOT.get_ptr_mut(0) {
        // SAFETY: per-CPU value; programs do not nest on one CPU.
        unsafe {
            *slot = Slot { tid: pid_tgid as u32, nr: nr as u32, start_ns: bpf_ktime_get_ns() };
        }
    }
    0
}

#[raw_tracepoint(tracepoint = "sys_exit")]
pub fn syscall_sys_exit(ctx: RawTracePointContext) -> i32 {
    let pid_tgid = bpf_get_current_pid_tgid();
    let tid = pid_tgid as u32;
    let ret: i64 = ctx.arg(1);
    let Some(slot) = SYSCALL_SLOT.get_ptr_mut(0) else {
        return 0;
    };
    // SAFETY: per-CPU value; programs do not nest on one CPU.
    let s = unsafe { *slot };
    let (nr, start_ns) = if s.tid == tid && tid != 0 {
        // SAFETY: as above.
        unsafe { (*slot).tid = 0 };
        (s.nr, s.start_ns)
    } else if let Some(v) = inflight() {
        (v.nr, v.start_ns)
    } else {
        unmatched(&ctx, pid_tgid, ret);
        return 0;
    };
    // SAFETY: a helper call without arguments.
    let ns = unsafe { bpf_ktime_get_ns() }.saturating_sub(start_ns);
    record((pid_tgid >> 32) as u32, nr, ns, ret);
    0
}

/// The start the current thread's `sched_switch` kept, taken (`start_ns`
/// 0 marks it taken: cheaper than deleting the storage).
#[inline(always)]
fn inflight() -> Option<Inflight> {
    let p = SYSCALL_INFLIGHT.current()?;
    // SAFETY: the current thread's own storage; only its switches and
    // returns (one CPU at a time) use it.
    unsafe {
        let v = *p;
        if v.start_ns == 0 {
            return None;
        }
        (*p).start_ns = 0;
        Some(v)
    }
}

/// A `sys_exit` without a start: a clone/fork child's first return, a
/// filtered-out task, or a real miss (counted, also on the process's entry).
#[inline(never)]
fn unmatched(ctx: &RawTracePointContext, pid_tgid: u64, ret: i64) {
    if !traced(pid_tgid) {
        return;
    }
    let regs: *const u8 = ctx.arg(0);
    let at = regs.wrapping_add(global!(PT_REGS_NR_OFFSET) as usize) as *const u32;
    // SAFETY: bpf_probe_read_kernel checks the address.
    let Ok(nr) = (unsafe { bpf_probe_read_kernel(at) }) else {
        count(Counter::MissedStart);
        return;
    };
    if ret == 0 && global!(FORK_NRS).contains(&nr) {
        count(Counter::ChildReturns);
        return;
    }
    count(Counter::MissedStart);
    if let Some(stats) = entry(&Key { tgid: (pid_tgid >> 32) as u32, nr: nr as u16, group: 0 }) {
        // SAFETY: a map value; other CPUs only add atomically.
        unsafe { atomic_add(&raw mut (*stats).missed_starts, 1) };
    }
}

/// Counts one call in the entry of the latency range it took.
#[inline(always)]
fn record(tgid: u32, nr: u32, ns: u64, ret: i64) {
    let (group, slot) = group_of(hist::bucket(ns));
    let Some(stats) = entry(&Key { tgid, nr: nr as u16, group }) else {
        return;
    };
    // SAFETY: `stats` points into a map value; concurrent writers on other
    // CPUs only use atomic adds, and `max_ns` tolerates a lost race.
    unsafe {
        atomic_add(&raw mut (*stats).total_ns, ns);
        if ret < 0 {
            atomic_add(&raw mut (*stats).errors, 1);
        }
        if ns > (*stats).max_ns {
            (*stats).max_ns = ns;
        }
        if let Some(b) = (*stats).hist.get_mut(slot) {
            atomic_add(b as *mut u32, 1);
        }
    }
}

/// The stats entry of a (process, syscall, range), created on first use;
/// `None` (counted) when the map is full.
#[inline(always)]
fn entry(key: &Key) -> Option<*mut Stats> {
    match SYSCALL_STATS.get_ptr_mut(key) {
        Some(p) => Some(p),
        None => {
            let p = create(key);
            if p.is_none() {
                count(Counter::StatsFull);
            }
            p
        }
    }
}

#[inline(never)]
fn create(key: &Key) -> Option<*mut Stats> {
    let created = SYSCALL_STATS.insert(key, &Stats::ZERO, BPF_NOEXIST as u64).is_ok();
    let stats = SYSCALL_STATS.get_ptr_mut(key)?;
    if created {
        if let Ok(comm) = bpf_get_current_comm() {
            // SAFETY: the entry this call created.
            unsafe { (*stats).comm = comm };
        }
    }
    Some(stats)
}

#[raw_tracepoint(tracepoint = "sched_switch")]
pub fn syscall_sched_switch(_ctx: RawTracePointContext) -> i32 {
    let Some(slot) = SYSCALL_SLOT.get_ptr_mut(0) else {
        return 0;
    };
    // SAFETY: per-CPU value; the slot, when set, belongs to the task that is
    // switching out (no other task ran on this CPU since it entered).
    let s = unsafe { *slot };
    if s.tid == 0 {
        return 0;
    }
    // SAFETY: as above.
    unsafe { (*slot).tid = 0 };
    // The slot's task is the current one (`prev`), whose storage this is.
    match SYSCALL_INFLIGHT.current_or_create() {
        // SAFETY: the current thread's own storage.
        Some(p) => unsafe { *p = Inflight { nr: s.nr, _pad: 0, start_ns: s.start_ns } },
        None => count(Counter::InflightFull),
    }
    0
}

#[raw_tracepoint(tracepoint = "sched_process_exit")]
pub fn syscall_sched_process_exit(_ctx: RawTracePointContext) -> i32 {
    // Runs in the context of the exiting thread: it will never return from
    // the syscall it is in.
    let pid_tgid = bpf_get_current_pid_tgid();
    let tid = pid_tgid as u32;
    if let Some(slot) = SYSCALL_SLOT.get_ptr_mut(0) {
        // SAFETY: per-CPU value.
        unsafe {
            if (*slot).tid == tid {
                (*slot).tid = 0;
            }
        }
    }
    // The leader's exit tells userspace the process may be gone; it checks
    // /proc before reclaiming (other threads may still run).
    let tgid = (pid_tgid >> 32) as u32;
    if tid == tgid && SYSCALL_EXITED.insert(tgid, 1, 0).is_err() {
        count(Counter::ExitedFull);
    }
    0
}

/// `sched_process_exec(p, old_pid, bprm)`, in the exec'ing thread once the
/// exec cannot fail. A thread other than the leader that execs takes the
/// leader's id (`de_thread`), so its `execve` returns under an id other than
/// the one its start was recorded under. A start in the thread's storage
/// follows it; one in the per-CPU slot (no switch since the call entered)
/// is moved to the new id. Left behind, this `execve` would count as a
/// missed start.
#[raw_tracepoint(tracepoint = "sched_process_exec")]
pub fn syscall_sched_process_exec(ctx: RawTracePointContext) -> i32 {
    let old: u64 = ctx.arg(1);
    let old = old as u32;
    let tid = bpf_get_current_pid_tgid() as u32;
    if old == tid || old == 0 {
        return 0;
    }
    if let Some(slot) = SYSCALL_SLOT.get_ptr_mut(0) {
        // SAFETY: per-CPU value; programs do not nest on one CPU.
        unsafe {
            if (*slot).tid == old {
                (*slot).tid = tid;
            }
        }
    }
    0
}

agent_ebpf::panic_handler!();

//! Off-CPU time per process, by reason, on the scheduler's classic
//! tracepoints (`sched_switch` carries the leaving thread's state and both
//! thread ids as documented fields; see `agent_common::offcpu`).
#![no_std]
#![no_main]

use agent_common::{
    hist,
    offcpu::{
        Counter, Reason, Sleep, SleepKey, StackKey, Stats, SwitchRecord, Thread, COUNTERS, DEFAULT_MAX_STATS,
        MAX_SLEEP, MAX_THREADS, WAKEUP_PID_OFFSET,
    },
};
use agent_ebpf::{atomic_add, global};
use aya_ebpf::{
    bindings::BPF_NOEXIST,
    helpers::{
        bpf_get_current_pid_tgid, bpf_ktime_get_ns, bpf_probe_read_kernel,
        generated::{bpf_get_current_task_btf, bpf_task_pt_regs},
    },
    macros::{map, tracepoint},
    bindings::BPF_F_USER_STACK,
    maps::{HashMap, PerCpuArray, StackTrace},
    programs::{tracing::StackIdContext, TracePointContext},
};

agent_ebpf::filters!(OFFCPU_PIDS);

#[unsafe(no_mangle)]
static PT_REGS_NR_OFFSET: u32 = 120;
#[unsafe(no_mangle)]
static STACKS_MIN_NS: u64 = 0;

#[map]
// One entry each unless userspace asks for stacks (it sizes them at load).
static OFFCPU_STACKS: StackTrace = StackTrace::with_max_entries(1, 0);
#[map]
static OFFCPU_STACK_TIME: HashMap<StackKey, u64> = HashMap::with_max_entries(1, 0);

#[map]
static OFFCPU_THREADS: HashMap<u32, Thread> = HashMap::with_max_entries(MAX_THREADS, 0);
#[map]
static OFFCPU_STATS: HashMap<u32, Stats> = HashMap::with_max_entries(DEFAULT_MAX_STATS, 0);
#[map]
static OFFCPU_SLEEP: HashMap<SleepKey, Sleep> = HashMap::with_max_entries(MAX_SLEEP, 0);
agent_ebpf::counters!(OFFCPU_COUNTERS, Counter, COUNTERS);
#[map]
static OFFCPU_ZERO: PerCpuArray<Stats> = PerCpuArray::with_max_entries(1, 0);

/// The syscall the current thread is in, from its saved user registers;
/// `u32::MAX` outside a syscall (kernel threads, preemption in user mode).
#[inline(always)]
fn current_syscall() -> u32 {
    // SAFETY: helper calls; the register read goes through bpf_probe_read_kernel.
    unsafe {
        let task = bpf_get_current_task_btf();
        let regs = bpf_task_pt_regs(task) as *const u8;
        if regs.is_null() {
            return u32::MAX;
        }
        let at = regs.wrapping_add(global!(PT_REGS_NR_OFFSET) as usize) as *const i64;
        match bpf_probe_read_kernel(at) {
            Ok(nr) if (0..4096).contains(&nr) => nr as u32,
            _ => u32::MAX,
        }
    }
}

#[inline(always)]
fn stats(tgid: u32) -> Option<*mut Stats> {
    if let Some(p) = OFFCPU_STATS.get_ptr_mut(&tgid) {
        return Some(p);
    }
    let zero = OFFCPU_ZERO.get_ptr(0)?;
    // SAFETY: a map value never written to, so all zeroes.
    let _ = OFFCPU_STATS.insert(&tgid, unsafe { &*zero }, BPF_NOEXIST as u64);
    let p = OFFCPU_STATS.get_ptr_mut(&tgid);
    if p.is_none() {
        count(Counter::StatsFull);
    }
    p
}

#[inline(always)]
fn add_hist(h: &mut [u32; hist::BUCKETS], ns: u64) {
    if let Some(b) = h.get_mut(hist::bucket(ns)) {
        // SAFETY: a bucket of a map value.
        unsafe { atomic_add(b as *mut u32, 1) };
    }
}

#[tracepoint(category = "sched", name = "sched_switch")]
pub fn offcpu_sched_switch(ctx: TracePointContext) -> u32 {
    // SAFETY: a read of the tracepoint record through bpf_probe_read_kernel.
    let Ok(r) = (unsafe { ctx.read_at::<SwitchRecord>(0) }) else {
        return 0;
    };
    // SAFETY: a helper call without arguments.
    let now = unsafe { bpf_ktime_get_ns() };
    if r.prev_pid != 0 {
        leave(&ctx, &r, now);
    }
    if r.next_pid != 0 {
        arrive(r.next_pid as u32, now);
    }
    0
}

/// The current thread (`prev`) leaves its CPU.
#[inline(always)]
fn leave(ctx: &TracePointContext, r: &SwitchRecord, now: u64) {
    let pid_tgid = bpf_get_current_pid_tgid();
    if !traced(pid_tgid) {
        return;
    }
    let tid = r.prev_pid as u32;
    let tgid = (pid_tgid >> 32) as u32;
    let reason = Reason::from_prev_state(r.prev_state);
    let nr = if reason == Reason::Runnable { u32::MAX } else { current_syscall() };
    // Stacks cost two walks per switch: only when asked for.
    let (kstack, ustack) = if global!(STACKS_MIN_NS) != 0 {
        (
            ctx.get_stackid(&OFFCPU_STACKS, 0).map_or(-1, |id| id as i32),
            ctx.get_stackid(&OFFCPU_STACKS, u64::from(BPF_F_USER_STACK)).map_or(-1, |id| id as i32),
        )
    } else {
        (-1, -1)
    };
    let th = Thread { tgid, reason: reason as u32, off_ns: now, wake_ns: 0, on_ns: 0, nr, kstack, ustack, _pad: 0 };
    // A thread leaving for the last time (exit: X or Z in its state): count
    // its last run and forget it.
    let dying = r.prev_state & 0x30 != 0;
    match OFFCPU_THREADS.get_ptr_mut(&tid) {
        Some(t) if dying => {
            // SAFETY: a value of this map.
            let on = unsafe { (*t).on_ns };
            if on != 0 {
                if let Some(s) = stats(tgid) {
                    // SAFETY: a map value; other CPUs only add atomically.
                    unsafe { atomic_add(&raw mut (*s).on_cpu_ns, now.saturating_sub(on)) };
                }
            }
            let _ = OFFCPU_THREADS.remove(&tid);
        }
        None if dying => {}
        Some(t) => {
            // SAFETY: a value of this map; only switches of this thread touch it.
            unsafe {
                let on = (*t).on_ns;
                if on != 0 {
                    if let Some(s) = stats(tgid) {
                        atomic_add(&raw mut (*s).on_cpu_ns, now.saturating_sub(on));
                    }
                }
                *t = th;
            }
        }
        None => {
            if OFFCPU_THREADS.insert(&tid, &th, 0).is_err() {
                count(Counter::ThreadsFull);
            }
        }
    }
}

/// Thread `tid` gets a CPU: account the time it was off it.
#[inline(always)]
fn arrive(tid: u32, now: u64) {
    let Some(t) = OFFCPU_THREADS.get_ptr_mut(&tid) else {
        // Filtered out, or not seen leaving a CPU since the probe attached.
        return;
    };
    // SAFETY: a value of this map; only switches of this thread touch it.
    let th = unsafe { *t };
    unsafe { (*t).on_ns = now };
    if th.off_ns == 0 {
        return;
    }
    let Some(s) = stats(th.tgid) else {
        return;
    };
    let off = now.saturating_sub(th.off_ns);
    let (asleep, runq) = if th.reason == Reason::Runnable as u32 {
        (0, off)
    } else if th.wake_ns != 0 && th.wake_ns >= th.off_ns {
        (th.wake_ns - th.off_ns, now.saturating_sub(th.wake_ns))
    } else {
        (off, 0)
    };
    // SAFETY: `s` points into a map value; other CPUs only add atomically
    // (the maxima tolerate a lost race).
    unsafe {
        atomic_add(&raw mut (*s).runqueue_ns, runq);
        if th.reason == Reason::Blocked as u32 {
            atomic_add(&raw mut (*s).blocked_ns, asleep);
        } else if th.reason == Reason::Sleep as u32 {
            atomic_add(&raw mut (*s).sleep_ns, asleep);
        }
        add_hist(&mut (*s).offcpu, off);
        if off > (*s).offcpu_max_ns {
            (*s).offcpu_max_ns = off;
        }
        if th.reason == Reason::Runnable as u32 || th.wake_ns != 0 {
            add_hist(&mut (*s).runqueue, runq);
            if runq > (*s).runqueue_max_ns {
                (*s).runqueue_max_ns = runq;
            }
        }
    }
    if asleep != 0 && th.nr != u32::MAX {
        sleep_in(SleepKey { tgid: th.tgid, nr: th.nr }, asleep);
    }
    let min = global!(STACKS_MIN_NS);
    if min != 0 && off >= min && (th.kstack >= 0 || th.ustack >= 0) {
        stack_time(StackKey { tgid: th.tgid, kstack: th.kstack, ustack: th.ustack, _pad: 0 }, off);
    }
}

#[inline(never)]
fn sleep_in(key: SleepKey, ns: u64) {
    if OFFCPU_SLEEP.get_ptr_mut(&key).is_none() {
        let _ = OFFCPU_SLEEP.insert(&key, &Sleep::default(), BPF_NOEXIST as u64);
    }
    match OFFCPU_SLEEP.get_ptr_mut(&key) {
        // SAFETY: a map value; other CPUs only add atomically.
        Some(p) => unsafe {
            atomic_add(&raw mut (*p).ns, ns);
            atomic_add(&raw mut (*p).count, 1);
        },
        None => count(Counter::SleepFull),
    }
}

#[inline(never)]
fn stack_time(key: StackKey, ns: u64) {
    if OFFCPU_STACK_TIME.get_ptr_mut(&key).is_none() {
        let _ = OFFCPU_STACK_TIME.insert(&key, &0, BPF_NOEXIST as u64);
    }
    match OFFCPU_STACK_TIME.get_ptr_mut(&key) {
        // SAFETY: a map value; other CPUs only add atomically.
        Some(p) => unsafe { atomic_add(p, ns) },
        None => count(Counter::SleepFull),
    }
}

#[inline(always)]
fn woken(ctx: &TracePointContext) -> u32 {
    // SAFETY: a read of the tracepoint record through bpf_probe_read_kernel.
    let Ok(pid) = (unsafe { ctx.read_at::<i32>(WAKEUP_PID_OFFSET as usize) }) else {
        return 0;
    };
    let tid = pid as u32;
    if let Some(t) = OFFCPU_THREADS.get_ptr_mut(&tid) {
        // SAFETY: a value of this map. A wake-up of a thread that is not
        // asleep (already woken, or running) changes nothing.
        unsafe {
            if (*t).off_ns != 0 && (*t).wake_ns == 0 && (*t).reason != Reason::Runnable as u32 {
                (*t).wake_ns = bpf_ktime_get_ns();
            }
        }
    }
    0
}

#[tracepoint(category = "sched", name = "sched_wakeup")]
pub fn offcpu_sched_wakeup(ctx: TracePointContext) -> u32 {
    woken(&ctx)
}

agent_ebpf::panic_handler!();

//! Off-CPU time per thread and process, by reason, on the scheduler's raw
//! tracepoints (see `agent_common::offcpu`). Raw, not classic: a classic
//! tracepoint's program is skipped whenever any other classic or kprobe
//! program, or a map operation from userspace (`bpf_prog_active`), is in
//! progress on the CPU; a skipped switch loses a whole episode. Raw
//! tracepoint programs are skipped only if they would nest in themselves.
#![no_std]
#![no_main]

use agent_common::{
    hist,
    offcpu::{
        Counter, Reason, RetiredKey, Sleep, SleepKey, StackKey, Stats, Thread, COUNTERS, DEFAULT_MAX_STATS,
        MAX_RETIRED, MAX_SLEEP, MAX_THREADS, NO_SYSCALL_FLAGS, TASK_DEAD,
    },
};
use agent_ebpf::{atomic_add, global};
use aya_ebpf::{
    bindings::{BPF_F_USER_STACK, BPF_NOEXIST},
    helpers::{
        bpf_get_current_pid_tgid, bpf_ktime_get_ns, bpf_probe_read_kernel,
        generated::{bpf_get_current_task_btf, bpf_task_pt_regs},
    },
    macros::{map, raw_tracepoint},
    maps::{HashMap, PerCpuArray, StackTrace},
    programs::{tracing::StackIdContext, RawTracePointContext},
};

agent_ebpf::filters!(OFFCPU_PIDS);

#[unsafe(no_mangle)]
static PT_REGS_NR_OFFSET: u32 = 120;
#[unsafe(no_mangle)]
static STACKS_MIN_NS: u64 = 0;
#[unsafe(no_mangle)]
static TASK_FLAGS_OFFSET: u32 = 0;
#[unsafe(no_mangle)]
static TASK_PID_OFFSET: u32 = 0;

#[map]
// One entry each unless userspace asks for stacks (it sizes them at load).
static OFFCPU_STACKS: StackTrace = StackTrace::with_max_entries(1, 0);
#[map]
static OFFCPU_STACK_TIME: HashMap<StackKey, u64> = HashMap::with_max_entries(1, 0);

#[map]
static OFFCPU_THREADS: HashMap<u32, Thread> = HashMap::with_max_entries(MAX_THREADS, 0);
#[map]
static OFFCPU_RETIRED: HashMap<RetiredKey, Thread> = HashMap::with_max_entries(MAX_RETIRED, 0);
#[map]
static OFFCPU_STATS: HashMap<u32, Stats> = HashMap::with_max_entries(DEFAULT_MAX_STATS, 0);
#[map]
static OFFCPU_SLEEP: HashMap<SleepKey, Sleep> = HashMap::with_max_entries(MAX_SLEEP, 0);
agent_ebpf::counters!(OFFCPU_COUNTERS, Counter, COUNTERS);
#[map]
static OFFCPU_ZERO: PerCpuArray<Stats> = PerCpuArray::with_max_entries(1, 0);

/// The current task's [`NO_SYSCALL_FLAGS`] bits (kernel thread, io_uring or
/// vhost worker), at the offset userspace found in BTF.
#[inline(always)]
fn no_syscall_flags() -> u32 {
    // SAFETY: a helper call; the field read goes through bpf_probe_read_kernel.
    let flags = unsafe {
        let task = bpf_get_current_task_btf() as *const u8;
        bpf_probe_read_kernel(task.wrapping_add(global!(TASK_FLAGS_OFFSET) as usize) as *const u32)
    };
    match flags {
        Ok(f) => f & NO_SYSCALL_FLAGS,
        Err(_) => {
            count(Counter::TaskReadFailed);
            // Unknown: attribute the sleep to no syscall rather than a wrong one.
            NO_SYSCALL_FLAGS
        }
    }
}

/// The syscall the current thread is in, from its saved user registers;
/// `u32::MAX` outside a syscall (preemption in user mode). Not for threads
/// without user registers (see [`no_syscall_flags`]).
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

/// Thread `task`'s id, `u32::MAX` if it cannot be read.
#[inline(always)]
fn task_tid(task: *const u8) -> u32 {
    // SAFETY: the field read goes through bpf_probe_read_kernel.
    unsafe { bpf_probe_read_kernel(task.wrapping_add(global!(TASK_PID_OFFSET) as usize) as *const i32) }
        .map_or(u32::MAX, |pid| pid as u32)
}

/// `sched_switch(preempt, prev, next, prev_state)`, in `prev`'s context.
#[raw_tracepoint(tracepoint = "sched_switch")]
pub fn offcpu_sched_switch(ctx: RawTracePointContext) -> i32 {
    let preempt: u64 = ctx.arg(0);
    let next: *const u8 = ctx.arg(2);
    let prev_state: u64 = ctx.arg(3);
    // SAFETY: a helper call without arguments.
    let now = unsafe { bpf_ktime_get_ns() };
    let pid_tgid = bpf_get_current_pid_tgid();
    // Thread 0 is a CPU's idle task.
    if pid_tgid as u32 != 0 {
        leave(&ctx, pid_tgid, preempt as u8 != 0, prev_state as u32, now);
    }
    let next = task_tid(next);
    if next != 0 && next != u32::MAX {
        arrive(next, now);
    }
    0
}

/// Ends thread `tid`'s record: its last stint on a CPU (up to `now`, when
/// `charge`) goes into its totals, and the final record into
/// `OFFCPU_RETIRED` for userspace, which reads what it had not yet reported.
#[inline(never)]
fn retire(tid: u32, now: u64, charge: bool) {
    let Some(t) = OFFCPU_THREADS.get_ptr_mut(&tid) else {
        return;
    };
    // SAFETY: a value of this map; only switches of this thread write it.
    let mut th = unsafe { *t };
    if charge && th.on_ns != 0 {
        th.on_cpu_ns += now.saturating_sub(th.on_ns);
    }
    if charge && th.off_ns != 0 {
        count(Counter::RetiredOff);
    }
    (th.off_ns, th.wake_ns, th.on_ns) = (0, 0, 0);
    let key = RetiredKey { tid, _pad: 0, born_ns: th.born_ns };
    if OFFCPU_RETIRED.insert(&key, &th, 0).is_err() {
        count(Counter::RetiredFull);
    }
    let _ = OFFCPU_THREADS.remove(&tid);
}

/// The current thread (`prev`) leaves its CPU.
#[inline(always)]
fn leave(ctx: &RawTracePointContext, pid_tgid: u64, preempt: bool, state: u32, now: u64) {
    let tid = pid_tgid as u32;
    // Leaving for the last time (exit: TASK_DEAD), or no longer traced
    // (renamed, exec'd, moved out of the cgroup): its record ends here,
    // whatever the filters say, so that nothing is charged to it later and
    // no thread reusing the id inherits it. Untraced threads without a
    // record cost one lookup, and only when a filter is set.
    if state & TASK_DEAD != 0 || (filtering() && !traced(pid_tgid)) {
        retire(tid, now, true);
        return;
    }
    let tgid = (pid_tgid >> 32) as u32;
    let reason = Reason::from_switch(preempt, state);
    // The syscall it sleeps in, for threads that make syscalls.
    let nr = |flags: u32| if reason == Reason::Runnable || flags != 0 { u32::MAX } else { current_syscall() };
    // Stacks cost two walks per switch: only when asked for.
    let (kstack, ustack) = if global!(STACKS_MIN_NS) != 0 {
        (
            ctx.get_stackid(&OFFCPU_STACKS, 0).map_or(-1, |id| id as i32),
            ctx.get_stackid(&OFFCPU_STACKS, u64::from(BPF_F_USER_STACK)).map_or(-1, |id| id as i32),
        )
    } else {
        (-1, -1)
    };
    if let Some(t) = OFFCPU_THREADS.get_ptr_mut(&tid) {
        // SAFETY: a value of this map; only switches of this thread write it.
        unsafe {
            if (*t).tgid == tgid {
                let on = (*t).on_ns;
                if on != 0 {
                    (*t).on_cpu_ns += now.saturating_sub(on);
                }
                (*t).reason = reason as u32;
                (*t).off_ns = now;
                (*t).wake_ns = 0;
                (*t).on_ns = 0;
                // The flags are the thread's for life (set as it is made).
                (*t).nr = nr((*t).flags);
                (*t).kstack = kstack;
                (*t).ustack = ustack;
                return;
            }
        }
        // Another process's thread: a record whose exit was missed (or not
        // run: see `missed_events`), its id reused since. Its time stops at
        // its last known switch.
        retire(tid, now, false);
    }
    let flags = no_syscall_flags();
    let th = Thread {
        tgid,
        reason: reason as u32,
        off_ns: now,
        nr: nr(flags),
        kstack,
        ustack,
        flags,
        born_ns: now,
        ..Thread::default()
    };
    if OFFCPU_THREADS.insert(&tid, &th, 0).is_err() {
        count(Counter::ThreadsFull);
    } else {
        count(Counter::UnknownThread);
    }
}

/// Thread `tid` gets a CPU: its time off the CPU ends.
#[inline(always)]
fn arrive(tid: u32, now: u64) {
    let Some(t) = OFFCPU_THREADS.get_ptr_mut(&tid) else {
        // Filtered out, or not seen leaving a CPU since the probe attached.
        return;
    };
    // SAFETY: a value of this map; only switches of this thread write it.
    let (tgid, reason, off_ns, wake_ns, nr, kstack, ustack) =
        unsafe { ((*t).tgid, (*t).reason, (*t).off_ns, (*t).wake_ns, (*t).nr, (*t).kstack, (*t).ustack) };
    if off_ns == 0 {
        // Already on a CPU by its record: its leaving was not seen.
        count(Counter::ArrivalUnseenLeave);
        // SAFETY: as above.
        unsafe { (*t).on_ns = now };
        return;
    }
    let off = now.saturating_sub(off_ns);
    let (asleep, runq) = if reason == Reason::Runnable as u32 {
        (0, off)
    } else if wake_ns != 0 && wake_ns >= off_ns {
        (wake_ns - off_ns, now.saturating_sub(wake_ns))
    } else {
        count(Counter::WakeupUnseen);
        (off, 0)
    };
    // SAFETY: as above. The totals first, then the state: a reader that
    // catches the record half-written counts the episode twice (and the
    // next reads give it back, see `Times::max`) rather than not at all.
    unsafe {
        (*t).runqueue_ns += runq;
        if reason == Reason::Blocked as u32 {
            (*t).blocked_ns += asleep;
        } else {
            (*t).sleep_ns += asleep;
        }
        (*t).on_ns = now;
        (*t).off_ns = 0;
        (*t).wake_ns = 0;
    }
    let Some(s) = stats(tgid) else {
        return;
    };
    // SAFETY: `s` points into a map value; other CPUs only add atomically
    // (the maxima tolerate a lost race).
    unsafe {
        add_hist(&mut (*s).offcpu, off);
        atomic_add(&raw mut (*s).offcpu_ns, off);
        if off > (*s).offcpu_max_ns {
            (*s).offcpu_max_ns = off;
        }
        if reason == Reason::Runnable as u32 || wake_ns != 0 {
            add_hist(&mut (*s).runqueue, runq);
            atomic_add(&raw mut (*s).runqueue_ns, runq);
            if runq > (*s).runqueue_max_ns {
                (*s).runqueue_max_ns = runq;
            }
        }
    }
    if asleep != 0 && nr != u32::MAX {
        sleep_in(SleepKey { tgid, nr }, asleep);
    }
    let min = global!(STACKS_MIN_NS);
    if min != 0 && off >= min && (kstack >= 0 || ustack >= 0) {
        stack_time(StackKey { tgid, kstack, ustack, _pad: 0 }, off);
    }
}

/// `sched_process_exec(p, old_pid, bprm)`: a thread other than the leader
/// that calls exec takes the leader's id, so the record under its old id
/// would never see another switch.
#[raw_tracepoint(tracepoint = "sched_process_exec")]
pub fn offcpu_exec(ctx: RawTracePointContext) -> i32 {
    let old: u64 = ctx.arg(1);
    let old = old as u32;
    if old != bpf_get_current_pid_tgid() as u32 {
        // SAFETY: a helper call without arguments.
        retire(old, unsafe { bpf_ktime_get_ns() }, true);
    }
    0
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

/// `sched_wakeup(p)`: thread `p`'s sleep ends; it waits in the run queue
/// from here.
#[raw_tracepoint(tracepoint = "sched_wakeup")]
pub fn offcpu_sched_wakeup(ctx: RawTracePointContext) -> i32 {
    let tid = task_tid(ctx.arg(0));
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

agent_ebpf::panic_handler!();

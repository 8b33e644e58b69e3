//! Off-CPU probe: what `agent-ebpf/src/offcpu.rs` writes and
//! `agent/src/probes/offcpu.rs` reads.
//!
//! Every context switch ends one thread's time on a CPU and another's time
//! off it. A thread leaves the CPU either still runnable (preempted, or
//! yielding: it waits in the run queue) or blocked: in uninterruptible sleep
//! (`D`: mostly disk I/O, some locks) or in interruptible sleep (`S`: timers,
//! locks, network and event waits). A blocked thread's time off the CPU ends
//! in two parts: asleep until its wake-up, then in the run queue until it
//! runs. The syscall it blocked in is read from its registers as it leaves.

use crate::hist;

/// Per-thread state, keyed by thread id; dropped when the thread exits.
pub const MAP_THREADS: &str = "OFFCPU_THREADS";
/// Per-process totals and histograms, keyed by tgid.
pub const MAP_STATS: &str = "OFFCPU_STATS";
/// Sleep time per (process, syscall).
pub const MAP_SLEEP: &str = "OFFCPU_SLEEP";
pub const MAP_COUNTERS: &str = "OFFCPU_COUNTERS";
pub const MAP_ZERO: &str = "OFFCPU_ZERO";
pub const MAP_PIDS: &str = "OFFCPU_PIDS";
/// Stack traces (with `--stacks`).
pub const MAP_STACKS: &str = "OFFCPU_STACKS";
/// Time off the CPU per (process, kernel stack, user stack).
pub const MAP_STACK_TIME: &str = "OFFCPU_STACK_TIME";
pub const MAX_STACKS: u32 = 16_384;

pub const MAX_THREADS: u32 = 65_536;
pub const DEFAULT_MAX_STATS: u32 = 4_096;
pub const MAX_SLEEP: u32 = 16_384;

/// Globals set by userspace at load time.
pub mod globals {
    /// Offset of the syscall number in `struct pt_regs`.
    pub const PT_REGS_NR_OFFSET: &str = "PT_REGS_NR_OFFSET";
    /// Non-zero: record stacks of episodes off the CPU at least this long (ns).
    pub const STACKS_MIN_NS: &str = "STACKS_MIN_NS";
}

/// Why a thread left the CPU.
#[repr(u32)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Reason {
    /// Still runnable: preempted or yielded; all of its time off the CPU is
    /// run-queue time.
    Runnable = 0,
    /// Uninterruptible sleep (`D`).
    Blocked = 1,
    /// Any other sleep (`S`, `I`, stopped, traced).
    Sleep = 2,
}

impl Reason {
    /// From `prev_state` of the `sched_switch` record: bit 0x100 is
    /// "preempted", 0 is runnable, 0x2 is `D`, the rest sleeps.
    #[inline(always)]
    pub const fn from_prev_state(state: i64) -> Reason {
        if state & 0x100 != 0 || state == 0 {
            Reason::Runnable
        } else if state & 0x2 != 0 {
            Reason::Blocked
        } else {
            Reason::Sleep
        }
    }
}

/// `sched_switch` record fields the program reads, in one read. Userspace
/// checks the offsets against the kernel's `format` file before loading.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct SwitchRecord {
    pub common: [u8; 8],
    pub prev_comm: [u8; 16],
    pub prev_pid: i32,
    pub prev_prio: i32,
    pub prev_state: i64,
    pub next_comm: [u8; 16],
    pub next_pid: i32,
    pub next_prio: i32,
}
const _: () = assert!(core::mem::size_of::<SwitchRecord>() == 64);

/// Field offsets of [`SwitchRecord`] (and `pid` of the wake-up records).
pub const SWITCH_FIELDS: [(&str, u32); 3] = [("prev_pid", 24), ("prev_state", 32), ("next_pid", 56)];
pub const WAKEUP_PID_OFFSET: u32 = 24;

#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct Thread {
    pub tgid: u32,
    /// [`Reason`] it left the CPU with.
    pub reason: u32,
    /// When it left the CPU; 0 while it runs.
    pub off_ns: u64,
    /// When it was woken since; 0 if not.
    pub wake_ns: u64,
    /// When it last got a CPU; 0 when not seen.
    pub on_ns: u64,
    /// The syscall it left the CPU in; `u32::MAX` outside syscalls.
    pub nr: u32,
    /// Stack ids as it left (with `--stacks`; negative when not taken).
    pub kstack: i32,
    pub ustack: i32,
    pub _pad: u32,
}
const _: () = assert!(core::mem::size_of::<Thread>() == 48);

/// Key of [`MAP_STACK_TIME`].
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct StackKey {
    pub tgid: u32,
    pub kstack: i32,
    pub ustack: i32,
    pub _pad: u32,
}
const _: () = assert!(core::mem::size_of::<StackKey>() == 16);

/// Per process, cumulative.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Stats {
    pub on_cpu_ns: u64,
    pub runqueue_ns: u64,
    pub blocked_ns: u64,
    pub sleep_ns: u64,
    pub runqueue_max_ns: u64,
    pub offcpu_max_ns: u64,
    /// Run-queue waits (preemption to run, wake-up to run).
    pub runqueue: [u32; hist::BUCKETS],
    /// Whole episodes off the CPU (leaving it to getting it back).
    pub offcpu: [u32; hist::BUCKETS],
}
const _: () = assert!(core::mem::size_of::<Stats>() == 48 + 8 * hist::BUCKETS);

impl Stats {
    pub const ZERO: Stats = Stats {
        on_cpu_ns: 0,
        runqueue_ns: 0,
        blocked_ns: 0,
        sleep_ns: 0,
        runqueue_max_ns: 0,
        offcpu_max_ns: 0,
        runqueue: [0; hist::BUCKETS],
        offcpu: [0; hist::BUCKETS],
    };
}

/// Key of [`MAP_SLEEP`].
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct SleepKey {
    pub tgid: u32,
    pub nr: u32,
}
const _: () = assert!(core::mem::size_of::<SleepKey>() == 8);

/// Value of [`MAP_SLEEP`]: time asleep (S or D) in one syscall.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct Sleep {
    pub ns: u64,
    pub count: u64,
}
const _: () = assert!(core::mem::size_of::<Sleep>() == 16);

#[repr(u32)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Counter {
    /// A thread got a CPU without a record of leaving one (it existed before
    /// the probe attached, or is new): its time off the CPU is unknown.
    UnknownThread = 0,
    ThreadsFull = 1,
    StatsFull = 2,
    SleepFull = 3,
}

pub const COUNTERS: u32 = 4;

impl Counter {
    pub const ALL: [Counter; COUNTERS as usize] =
        [Counter::UnknownThread, Counter::ThreadsFull, Counter::StatsFull, Counter::SleepFull];

    pub const fn name(self) -> &'static str {
        match self {
            Counter::UnknownThread => "thread_first_seen",
            Counter::ThreadsFull => "threads_map_full",
            Counter::StatsFull => "stats_map_full",
            Counter::SleepFull => "sleep_map_full",
        }
    }

    pub const fn is_error(self) -> bool {
        !matches!(self, Counter::UnknownThread)
    }
}

crate::user_pod!(Thread, Stats, SleepKey, Sleep, StackKey);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reasons_from_prev_state() {
        assert_eq!(Reason::from_prev_state(0), Reason::Runnable);
        assert_eq!(Reason::from_prev_state(0x100), Reason::Runnable);
        assert_eq!(Reason::from_prev_state(0x1), Reason::Sleep);
        assert_eq!(Reason::from_prev_state(0x2), Reason::Blocked);
        assert_eq!(Reason::from_prev_state(0x80), Reason::Sleep);
        assert_eq!(Reason::from_prev_state(0x4), Reason::Sleep);
    }
}

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
//!
//! Time is kept per thread, in the thread's record: the parts that ended
//! (a stint on a CPU, a sleep, a wait in the run queue) are added to its
//! totals as they end, and userspace adds the part in progress when it
//! reads, from the record's timestamps. So a thread's figures at any read
//! are its whole time since it was first seen, split at the read: every
//! interval gets exactly the time that passed in it (see [`Thread`]). The
//! histograms (and the sleep per syscall) take each episode once, whole,
//! when it ends.

use crate::hist;

/// Per-thread state and time totals, keyed by thread id; moved to
/// [`MAP_RETIRED`] when the thread exits or stops being traced.
pub const MAP_THREADS: &str = "OFFCPU_THREADS";
/// Final records of threads that exited or stopped being traced, until
/// userspace has read them (it deletes them then).
pub const MAP_RETIRED: &str = "OFFCPU_RETIRED";
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
/// Threads retiring between two reads.
pub const MAX_RETIRED: u32 = 16_384;

/// Globals set by userspace at load time.
pub mod globals {
    /// Offset of the syscall number in `struct pt_regs`.
    pub const PT_REGS_NR_OFFSET: &str = "PT_REGS_NR_OFFSET";
    /// Non-zero: record stacks of episodes off the CPU at least this long (ns).
    pub const STACKS_MIN_NS: &str = "STACKS_MIN_NS";
    /// Offset of `flags` in `struct task_struct` (from BTF).
    pub const TASK_FLAGS_OFFSET: &str = "TASK_FLAGS_OFFSET";
    /// Offset of `pid` (the thread id) in `struct task_struct` (from BTF).
    pub const TASK_PID_OFFSET: &str = "TASK_PID_OFFSET";
}

/// `task_struct.flags` bits of threads that have no syscall to sleep in
/// (include/linux/sched.h, Linux 6.4 to 6.18; `PF_KTHREAD` unchanged since
/// 2.6.27). Their saved user registers are zeroes (kernel threads) or a
/// copy of their creator's (io_uring and vhost workers), not a syscall.
pub const PF_USER_WORKER: u32 = 0x0000_4000;
pub const PF_KTHREAD: u32 = 0x0020_0000;
/// What [`Thread::flags`] keeps of the task's flags.
pub const NO_SYSCALL_FLAGS: u32 = PF_USER_WORKER | PF_KTHREAD;

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

/// `task_struct.__state` bits that `sched_switch` passes raw as its last
/// argument (include/linux/sched.h, unchanged from Linux 5.14 to 6.18).
pub const TASK_UNINTERRUPTIBLE: u32 = 0x0002;
/// The thread's final switch: it exited.
pub const TASK_DEAD: u32 = 0x0080;
/// With `TASK_UNINTERRUPTIBLE`, an idle wait (`I`), not counted as load.
pub const TASK_NOLOAD: u32 = 0x0400;
/// A sleeping lock on PREEMPT_RT, shown as `D`.
pub const TASK_RTLOCK_WAIT: u32 = 0x1000;

impl Reason {
    /// From the raw `sched_switch(preempt, prev, next, prev_state)`
    /// arguments: a preempted thread, or one still runnable (0), waits in the
    /// run queue; `D` is uninterruptible and not an idle wait; anything else
    /// (interruptible, idle, stopped, traced, parked, frozen) sleeps.
    #[inline(always)]
    pub const fn from_switch(preempt: bool, state: u32) -> Reason {
        if preempt || state == 0 {
            Reason::Runnable
        } else if (state & TASK_UNINTERRUPTIBLE != 0 && state & TASK_NOLOAD == 0) || state & TASK_RTLOCK_WAIT != 0 {
            Reason::Blocked
        } else {
            Reason::Sleep
        }
    }
}

/// One thread, from the first time it left a CPU while traced.
///
/// It is always in one of two states: on a CPU since `on_ns` (`off_ns` is
/// 0), or off it since `off_ns` (`on_ns` is 0), woken at `wake_ns` if it
/// was. The totals hold the time of the parts that ended; the part in
/// progress at a read (now - `on_ns`, or the sleep and run-queue split of
/// now - `off_ns`) is the reader's to add. Only the switches of this thread
/// write it (and a wake-up, `wake_ns`), one CPU at a time.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct Thread {
    pub tgid: u32,
    /// [`Reason`] it left the CPU with.
    pub reason: u32,
    /// When it left the CPU; 0 while it runs.
    pub off_ns: u64,
    /// When it was woken since; 0 if not.
    pub wake_ns: u64,
    /// When it got a CPU; 0 while off it.
    pub on_ns: u64,
    /// The syscall it left the CPU in; `u32::MAX` outside syscalls and for
    /// threads without one ([`NO_SYSCALL_FLAGS`]).
    pub nr: u32,
    /// Stack ids as it left (with `--stacks`; negative when not taken).
    pub kstack: i32,
    pub ustack: i32,
    /// The task's [`NO_SYSCALL_FLAGS`] bits, read as the record is made
    /// (they are set as a thread is made and never change).
    pub flags: u32,
    /// When it was first seen: with the thread id, tells it from a later
    /// thread that reuses the id.
    pub born_ns: u64,
    /// Totals of the parts that ended.
    pub on_cpu_ns: u64,
    pub runqueue_ns: u64,
    pub blocked_ns: u64,
    pub sleep_ns: u64,
}
const _: () = assert!(core::mem::size_of::<Thread>() == 88);

/// Key of [`MAP_RETIRED`].
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct RetiredKey {
    pub tid: u32,
    pub _pad: u32,
    pub born_ns: u64,
}
const _: () = assert!(core::mem::size_of::<RetiredKey>() == 16);

impl Thread {
    /// The episode off the CPU in progress (`off_ns != 0`) up to `now`:
    /// (asleep, in the run queue since woken).
    fn off_so_far(&self, now: u64) -> (u64, u64) {
        let off = self.off_ns.min(now);
        if self.reason == Reason::Runnable as u32 {
            (0, now - off)
        } else if self.wake_ns >= off {
            let wake = self.wake_ns.min(now);
            (wake - off, now - wake)
        } else {
            (now - off, 0)
        }
    }

    /// The sleep in a syscall in progress up to `now`, as the kernel side
    /// will add it to [`MAP_SLEEP`] when the thread gets a CPU: its key and
    /// its length so far.
    pub fn sleep_so_far(&self, now: u64) -> Option<(SleepKey, u64)> {
        if self.off_ns == 0 || self.nr == u32::MAX || self.reason == Reason::Runnable as u32 {
            return None;
        }
        Some((SleepKey { tgid: self.tgid, nr: self.nr }, self.off_so_far(now).0))
    }
}

/// A thread's time since it was first seen, up to `now`: its totals and the
/// part in progress. Both sides' clock is CLOCK_MONOTONIC
/// (`bpf_ktime_get_ns`); stamps after `now` (written while the map was
/// read) count as `now`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Times {
    pub on_cpu_ns: u64,
    pub runqueue_ns: u64,
    pub blocked_ns: u64,
    pub sleep_ns: u64,
}

impl Times {
    pub fn of(t: &Thread, now: u64) -> Times {
        let mut x = Times {
            on_cpu_ns: t.on_cpu_ns,
            runqueue_ns: t.runqueue_ns,
            blocked_ns: t.blocked_ns,
            sleep_ns: t.sleep_ns,
        };
        if t.off_ns != 0 {
            let (asleep, runq) = t.off_so_far(now);
            x.runqueue_ns += runq;
            if t.reason == Reason::Blocked as u32 {
                x.blocked_ns += asleep;
            } else {
                x.sleep_ns += asleep;
            }
        } else if t.on_ns != 0 {
            x.on_cpu_ns += now.saturating_sub(t.on_ns);
        }
        x
    }

    /// Field by field, what `self` adds to `before` (never negative).
    pub fn since(&self, before: &Times) -> Times {
        Times {
            on_cpu_ns: self.on_cpu_ns.saturating_sub(before.on_cpu_ns),
            runqueue_ns: self.runqueue_ns.saturating_sub(before.runqueue_ns),
            blocked_ns: self.blocked_ns.saturating_sub(before.blocked_ns),
            sleep_ns: self.sleep_ns.saturating_sub(before.sleep_ns),
        }
    }

    /// Field by field, the larger.
    pub fn max(&self, o: &Times) -> Times {
        Times {
            on_cpu_ns: self.on_cpu_ns.max(o.on_cpu_ns),
            runqueue_ns: self.runqueue_ns.max(o.runqueue_ns),
            blocked_ns: self.blocked_ns.max(o.blocked_ns),
            sleep_ns: self.sleep_ns.max(o.sleep_ns),
        }
    }

    pub fn add(&mut self, o: &Times) {
        self.on_cpu_ns += o.on_cpu_ns;
        self.runqueue_ns += o.runqueue_ns;
        self.blocked_ns += o.blocked_ns;
        self.sleep_ns += o.sleep_ns;
    }

    pub fn total(&self) -> u64 {
        self.on_cpu_ns + self.runqueue_ns + self.blocked_ns + self.sleep_ns
    }
}

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

/// Per process, cumulative: episodes that ended. (The time totals are per
/// thread, in [`Thread`]; these sums are what the histograms hold.)
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Stats {
    /// Sum of the run-queue waits in `runqueue`.
    pub runqueue_ns: u64,
    /// Sum of the episodes in `offcpu`.
    pub offcpu_ns: u64,
    pub runqueue_max_ns: u64,
    pub offcpu_max_ns: u64,
    /// Run-queue waits (preemption to run, wake-up to run).
    pub runqueue: [u32; hist::BUCKETS],
    /// Whole episodes off the CPU (leaving it to getting it back).
    pub offcpu: [u32; hist::BUCKETS],
}
const _: () = assert!(core::mem::size_of::<Stats>() == 32 + 8 * hist::BUCKETS);

impl Stats {
    pub const ZERO: Stats = Stats {
        runqueue_ns: 0,
        offcpu_ns: 0,
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
    /// A thread seen for the first time (it existed before the probe
    /// attached, is new, or just became traced): its time before is unknown.
    UnknownThread = 0,
    ThreadsFull = 1,
    StatsFull = 2,
    SleepFull = 3,
    /// A retiring thread's final record did not fit in [`MAP_RETIRED`]:
    /// its time since the last read is lost.
    RetiredFull = 4,
    /// A read of the task's flags failed (its sleep is then not attributed
    /// to a syscall).
    TaskReadFailed = 5,
    /// A thread switched in while its record had it on a CPU: its leaving
    /// was not seen, and the time since is on-CPU time.
    ArrivalUnseenLeave = 6,
    /// A thread's record ended while it had it off the CPU: its return to
    /// a CPU was not seen, and the time off since is lost.
    RetiredOff = 7,
    /// A thread returned from a sleep whose wake-up was not seen: its wait
    /// in the run queue after it is counted as sleep.
    WakeupUnseen = 8,
}

pub const COUNTERS: u32 = 9;

impl Counter {
    pub const ALL: [Counter; COUNTERS as usize] = [
        Counter::UnknownThread,
        Counter::ThreadsFull,
        Counter::StatsFull,
        Counter::SleepFull,
        Counter::RetiredFull,
        Counter::TaskReadFailed,
        Counter::ArrivalUnseenLeave,
        Counter::RetiredOff,
        Counter::WakeupUnseen,
    ];

    pub const fn name(self) -> &'static str {
        match self {
            Counter::UnknownThread => "thread_first_seen",
            Counter::ThreadsFull => "threads_map_full",
            Counter::StatsFull => "stats_map_full",
            Counter::SleepFull => "sleep_map_full",
            Counter::RetiredFull => "retired_map_full",
            Counter::TaskReadFailed => "task_read_failed",
            Counter::ArrivalUnseenLeave => "leave_not_seen",
            Counter::RetiredOff => "arrival_not_seen",
            Counter::WakeupUnseen => "wakeup_not_seen",
        }
    }

    pub const fn is_error(self) -> bool {
        !matches!(self, Counter::UnknownThread)
    }
}

crate::user_pod!(Thread, RetiredKey, Stats, SleepKey, Sleep, StackKey);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reasons_from_raw_switch_arguments() {
        assert_eq!(Reason::from_switch(false, 0), Reason::Runnable);
        // Preempted while setting up a sleep: still on the run queue.
        assert_eq!(Reason::from_switch(true, 0x1), Reason::Runnable);
        assert_eq!(Reason::from_switch(false, 0x1), Reason::Sleep);
        assert_eq!(Reason::from_switch(false, TASK_UNINTERRUPTIBLE), Reason::Blocked);
        // TASK_KILLABLE (TASK_WAKEKILL | TASK_UNINTERRUPTIBLE) is `D` too.
        assert_eq!(Reason::from_switch(false, 0x100 | TASK_UNINTERRUPTIBLE), Reason::Blocked);
        // TASK_IDLE (`I`) is not.
        assert_eq!(Reason::from_switch(false, TASK_NOLOAD | TASK_UNINTERRUPTIBLE), Reason::Sleep);
        assert_eq!(Reason::from_switch(false, TASK_RTLOCK_WAIT), Reason::Blocked);
        // Stopped, parked, frozen (TASK_FROZEN 0x8000).
        assert_eq!(Reason::from_switch(false, 0x4), Reason::Sleep);
        assert_eq!(Reason::from_switch(false, 0x40), Reason::Sleep);
        assert_eq!(Reason::from_switch(false, 0x8000), Reason::Sleep);
    }

    fn thread(reason: Reason, off_ns: u64, wake_ns: u64, on_ns: u64) -> Thread {
        Thread {
            tgid: 1,
            reason: reason as u32,
            off_ns,
            wake_ns,
            on_ns,
            on_cpu_ns: 1,
            runqueue_ns: 10,
            blocked_ns: 100,
            sleep_ns: 1000,
            ..Default::default()
        }
    }

    #[test]
    fn times_add_the_part_in_progress() {
        // On a CPU since 500.
        let t = Times::of(&thread(Reason::Runnable, 0, 0, 500), 800);
        assert_eq!(t, Times { on_cpu_ns: 301, runqueue_ns: 10, blocked_ns: 100, sleep_ns: 1000 });
        // Preempted at 500: all run queue.
        let t = Times::of(&thread(Reason::Runnable, 500, 0, 0), 800);
        assert_eq!(t, Times { on_cpu_ns: 1, runqueue_ns: 310, blocked_ns: 100, sleep_ns: 1000 });
        // Asleep since 500, not woken yet.
        let t = Times::of(&thread(Reason::Sleep, 500, 0, 0), 800);
        assert_eq!(t, Times { on_cpu_ns: 1, runqueue_ns: 10, blocked_ns: 100, sleep_ns: 1300 });
        // Blocked (D) since 500, woken at 700: 200 blocked, then run queue.
        let t = Times::of(&thread(Reason::Blocked, 500, 700, 0), 800);
        assert_eq!(t, Times { on_cpu_ns: 1, runqueue_ns: 110, blocked_ns: 300, sleep_ns: 1000 });
        // Stamps written after `now` (during the read) count as `now`.
        let t = Times::of(&thread(Reason::Sleep, 500, 900, 0), 800);
        assert_eq!(t, Times { on_cpu_ns: 1, runqueue_ns: 10, blocked_ns: 100, sleep_ns: 1300 });
        let t = Times::of(&thread(Reason::Runnable, 0, 0, 900), 800);
        assert_eq!(t.total(), 1111);
        let t = Times::of(&thread(Reason::Sleep, 900, 0, 0), 800);
        assert_eq!(t.total(), 1111);
    }

    #[test]
    fn the_sleep_so_far_is_the_asleep_part_of_the_episode() {
        let mut t = Thread { nr: 35, ..thread(Reason::Sleep, 500, 0, 0) };
        assert_eq!(t.sleep_so_far(800), Some((SleepKey { tgid: 1, nr: 35 }, 300)));
        t.wake_ns = 700; // woken: the run-queue wait after it is not sleep
        assert_eq!(t.sleep_so_far(800), Some((SleepKey { tgid: 1, nr: 35 }, 200)));
        t.reason = Reason::Blocked as u32; // the kernel side adds D sleep too
        assert_eq!(t.sleep_so_far(800), Some((SleepKey { tgid: 1, nr: 35 }, 200)));
        assert_eq!(Thread { nr: u32::MAX, ..t }.sleep_so_far(800), None, "no syscall");
        assert_eq!(thread(Reason::Runnable, 500, 0, 0).sleep_so_far(800), None, "preempted");
        assert_eq!(Thread { nr: 35, ..thread(Reason::Sleep, 0, 0, 500) }.sleep_so_far(800), None, "running");
    }

    #[test]
    fn a_thread_across_reads_adds_up_to_the_time_between_them() {
        // Asleep 100..1800 (woken at 1790), read at 1000 and 2000: each read
        // adds exactly the time since the one before, whatever ended between.
        let mut t = thread(Reason::Sleep, 100, 0, 0);
        let first = Times::of(&t, 1000);
        t.wake_ns = 1790;
        let mid = Times::of(&t, 1795);
        assert_eq!(mid.since(&first).total(), 795);
        // Back on a CPU at 1800: the episode goes into the totals.
        t.sleep_ns += 1690;
        t.runqueue_ns += 10;
        (t.off_ns, t.wake_ns, t.on_ns) = (0, 0, 1800);
        let second = Times::of(&t, 2000);
        assert_eq!(second.since(&first).total(), 1000);
        assert_eq!(second.since(&first), Times { on_cpu_ns: 200, runqueue_ns: 10, blocked_ns: 0, sleep_ns: 790 });
    }
}

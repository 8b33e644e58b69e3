//! Syscall latency probe: what `agent-ebpf/src/syscall.rs` writes and
//! `agent/src/probes/syscall.rs` reads.

use crate::hist;

/// Per (process, syscall) statistics, cumulative since the entry was created.
pub const MAP_STATS: &str = "SYSCALL_STATS";
/// Start times of syscalls whose thread was switched out before returning,
/// keyed by thread id (LRU: it cannot fill with dead threads).
pub const MAP_INFLIGHT: &str = "SYSCALL_INFLIGHT";
/// The syscall in progress on each CPU (the fast path).
pub const MAP_SLOT: &str = "SYSCALL_SLOT";
/// Processes whose leader thread exited, keyed by tgid:
/// userspace reclaims their entries once their final figures are read.
pub const MAP_EXITED: &str = "SYSCALL_EXITED";
/// Process ids to trace when `--pid` is given.
pub const MAP_PIDS: &str = "SYSCALL_PIDS";
/// Per-CPU event counters, indexed by [`Counter`].
pub const MAP_COUNTERS: &str = "SYSCALL_COUNTERS";
/// Per-CPU zeroed scratch used to create new stats entries (too large for the
/// 512-byte BPF stack).
pub const MAP_ZERO: &str = "SYSCALL_ZERO";

/// Default size of [`MAP_STATS`]: distinct (process, syscall) pairs.
pub const DEFAULT_MAX_STATS: u32 = 16_384;
/// Default size of [`MAP_INFLIGHT`]: threads blocked in a syscall at once.
pub const DEFAULT_MAX_INFLIGHT: u32 = 65_536;
/// Size of [`MAP_EXITED`]: exits between two reads. When it is full,
/// userspace's periodic sweep of `/proc` still reclaims the entries.
pub const MAX_EXITED: u32 = 4_096;

/// Globals set by userspace at load time (`EbpfLoader::override_global`).
pub mod globals {
    /// Offset of the syscall number in `struct pt_regs`.
    pub const PT_REGS_NR_OFFSET: &str = "PT_REGS_NR_OFFSET";
    /// clone, clone3, fork, vfork on this architecture (`u32::MAX` if absent).
    pub const FORK_NRS: &str = "FORK_NRS";
}

/// Map key: one process (thread group) and one syscall number.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Key {
    pub tgid: u32,
    pub nr: u32,
}
const _: () = assert!(core::mem::size_of::<Key>() == 8);

/// Map value. Counters only grow (atomic adds from every CPU); userspace
/// reports differences between reads, so nothing is reset under the kernel.
/// The call count is the sum of the histogram: one atomic add fewer per call.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct Stats {
    /// Calls that returned a negative value (an errno).
    pub errors: u64,
    pub total_ns: u64,
    /// Largest latency ever seen for this key.
    pub max_ns: u64,
    /// Returns seen without their start (see [`Counter::MissedStart`]):
    /// counted here too, so a loss shows on the process it hit.
    pub missed_starts: u64,
    /// `comm` of the thread that created the entry, for processes that are
    /// gone before userspace can read `/proc`.
    pub comm: [u8; 16],
    /// Latency histogram in the [`hist`] layout. u32 counts wrap; userspace
    /// takes wrapping differences, exact unless one bucket sees 2^32 calls
    /// in one interval.
    pub hist: [u32; hist::BUCKETS],
}
const _: () = assert!(core::mem::size_of::<Stats>() == 48 + 4 * hist::BUCKETS);

impl Stats {
    pub const ZERO: Stats =
        Stats { errors: 0, total_ns: 0, max_ns: 0, missed_starts: 0, comm: [0; 16], hist: [0; hist::BUCKETS] };
}

/// The syscall a CPU is in: written at `sys_enter`, consumed at `sys_exit`,
/// moved to [`MAP_INFLIGHT`] when its thread is switched out.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct Slot {
    /// Thread id; 0 when the slot is empty.
    pub tid: u32,
    pub nr: u32,
    pub start_ns: u64,
}
const _: () = assert!(core::mem::size_of::<Slot>() == 16);

/// Value of [`MAP_INFLIGHT`].
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct Inflight {
    pub nr: u32,
    pub _pad: u32,
    pub start_ns: u64,
}
const _: () = assert!(core::mem::size_of::<Inflight>() == 16);

/// Per-CPU counters of events that are not syscall latencies.
#[repr(u32)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Counter {
    /// A syscall returned without a recorded start: it began before the
    /// probe attached, or its start was lost (an error after start-up).
    MissedStart = 0,
    /// A new (process, syscall) pair could not be recorded: stats map full.
    StatsFull = 1,
    /// A switched-out thread's start time could not be kept: inflight map
    /// full or failing (LRU eviction is not counted by the kernel; see the
    /// map fill reported by userspace).
    InflightFull = 2,
    /// Returns of new threads and processes from clone/fork: they never
    /// entered the call, so they are counted here and not timed.
    ChildReturns = 3,
    /// An exit could not be queued for reclaim (exit map full): its entries
    /// wait for the periodic `/proc` sweep instead. Nothing is lost.
    ExitedFull = 4,
}

/// Number of [`Counter`]s, the size of [`MAP_COUNTERS`].
pub const COUNTERS: u32 = 5;

impl Counter {
    pub const ALL: [Counter; COUNTERS as usize] =
        [Counter::MissedStart, Counter::StatsFull, Counter::InflightFull, Counter::ChildReturns, Counter::ExitedFull];

    /// Name in output.
    pub const fn name(self) -> &'static str {
        match self {
            Counter::MissedStart => "missed_start",
            Counter::StatsFull => "stats_map_full",
            Counter::InflightFull => "inflight_map_full",
            Counter::ChildReturns => "child_returns",
            Counter::ExitedFull => "exited_map_full",
        }
    }

    /// Whether a non-zero count means the probe dropped data it had.
    /// Missed starts are reported apart: most are calls already in progress
    /// when the probe attached (a thread blocked in `epoll_wait` since
    /// before), which no probe can time.
    pub const fn is_error(self) -> bool {
        matches!(self, Counter::StatsFull | Counter::InflightFull)
    }
}

crate::user_pod!(Key, Stats, Slot, Inflight);

//! Syscall latency probe: what `agent-ebpf/src/syscall.rs` writes and
//! `agent/src/probes/syscall.rs` reads.

use crate::hist;

/// Per (process, syscall, latency range) statistics, cumulative since the
/// entry was created: see [`Key`].
pub const MAP_STATS: &str = "SYSCALL_STATS";
/// Start times of syscalls whose thread was switched out before returning:
/// task storage, one [`Inflight`] per thread, freed with the thread (so it
/// cannot fill with dead threads). Not readable from userspace.
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

/// Size of [`MAP_STATS`] in the object, and the least userspace gives it:
/// room for about 3,000 processes of 15 syscalls (about 1.3 entries each)
/// whenever they start.
pub const DEFAULT_MAX_STATS: u32 = 65_536;
/// Entries of [`MAP_STATS`] per process running when the agent starts
/// (userspace sizes the map from the host: this times the processes, at
/// least [`DEFAULT_MAX_STATS`], at most [`MAX_STATS_CAP`]).
pub const STATS_PER_PROCESS: u32 = 32;
/// The most entries of [`MAP_STATS`] sizing from the host gives (112 MiB).
pub const MAX_STATS_CAP: u32 = 524_288;
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

/// Buckets of the shared [`hist`] layout in one [`MAP_STATS`] entry: four
/// powers of two at full resolution.
pub const GROUP_BUCKETS: usize = 32;
/// Latency ranges ("groups") the [`hist`] layout splits into: a (process,
/// syscall) pair has one entry per range its latencies fall in.
pub const GROUPS: usize = (hist::BUCKETS + GROUP_SHIFT).div_ceil(GROUP_BUCKETS);
/// Groups start on a power of two (bucket 1 is the first of 64 ns):
/// group 0 is `[0, 512]` ns, group 1 `(512 ns, 8 us]`, group 2 `(8, 131 us]`,
/// ... each 16 times the one before.
const GROUP_SHIFT: usize = GROUP_BUCKETS - 1 - 3 * (1 << hist::SUB_BITS);

/// (group, slot in the group) of bucket `b` of the [`hist`] layout.
#[inline(always)]
pub const fn group_of(b: usize) -> (u16, usize) {
    let i = b + GROUP_SHIFT;
    ((i / GROUP_BUCKETS) as u16, i % GROUP_BUCKETS)
}

/// The bucket of the [`hist`] layout that slot `slot` of group `group`
/// counts, if any (group 0 starts before bucket 0, the last ends past the
/// last bucket).
pub const fn bucket_of(group: u16, slot: usize) -> Option<usize> {
    let i = group as usize * GROUP_BUCKETS + slot;
    if i < GROUP_SHIFT || i - GROUP_SHIFT >= hist::BUCKETS || slot >= GROUP_BUCKETS {
        None
    } else {
        Some(i - GROUP_SHIFT)
    }
}

/// Map key: one process (thread group), one syscall number and one latency
/// range. A pair's calls are spread over the entries of the ranges they took,
/// so a pair costs an entry per range it uses (1 for calls that never
/// block, a few for calls that wait) rather than a whole histogram.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Key {
    pub tgid: u32,
    pub nr: u16,
    /// See [`group_of`].
    pub group: u16,
}
const _: () = assert!(core::mem::size_of::<Key>() == 8);

/// Map value. Counters only grow (atomic adds from every CPU); userspace
/// reports differences between reads, so nothing is reset under the kernel.
/// The call count is the sum of the histogram: one atomic add fewer per call.
/// A pair's figures are the sums over its entries (the largest `max_ns`).
/// u32 counts wrap; userspace takes wrapping differences, exact unless one
/// entry sees 2^32 in one interval.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Stats {
    pub total_ns: u64,
    /// Largest latency ever seen for this key.
    pub max_ns: u64,
    /// Calls that returned a negative value (an errno).
    pub errors: u32,
    /// Returns seen without their start (see [`Counter::MissedStart`]):
    /// counted here too (in group 0), so a loss shows on the process it hit.
    pub missed_starts: u32,
    /// `comm` of the thread that created the entry, for processes that are
    /// gone before userspace can read `/proc`.
    pub comm: [u8; 16],
    /// Counts of the group's buckets of the [`hist`] layout ([`bucket_of`]).
    pub hist: [u32; GROUP_BUCKETS],
}
const _: () = assert!(core::mem::size_of::<Stats>() == 40 + 4 * GROUP_BUCKETS);

impl Stats {
    pub const ZERO: Stats =
        Stats { total_ns: 0, max_ns: 0, errors: 0, missed_starts: 0, comm: [0; 16], hist: [0; GROUP_BUCKETS] };
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

/// Value of [`MAP_INFLIGHT`]; `start_ns` 0 when taken.
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
    /// A switched-out thread's start time could not be kept: the kernel
    /// could not allocate the thread's storage (out of memory). The name
    /// predates task storage, when this was a full map.
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

#[cfg(test)]
mod tests {
    extern crate std;
    use super::*;

    #[test]
    fn groups_cover_every_bucket_once_and_start_on_powers_of_two() {
        let mut seen = [0u32; hist::BUCKETS];
        for g in 0..GROUPS as u16 {
            for s in 0..GROUP_BUCKETS {
                if let Some(b) = bucket_of(g, s) {
                    assert_eq!(group_of(b), (g, s), "bucket {b}");
                    seen[b] += 1;
                }
            }
        }
        assert!(seen.iter().all(|n| *n == 1), "{seen:?}");
        assert_eq!(GROUPS, 9);
        // Group 0 ends at 512 ns, group 1 at 8 us: whole powers of two.
        assert_eq!(hist::upper_bound(bucket_of(0, GROUP_BUCKETS - 1).unwrap()), 512);
        assert_eq!(hist::upper_bound(bucket_of(1, GROUP_BUCKETS - 1).unwrap()), 8_192);
        assert_eq!(group_of(hist::bucket(512)).0, 0);
        assert_eq!(group_of(hist::bucket(513)).0, 1);
        assert_eq!(group_of(hist::BUCKETS - 1).0 as usize, GROUPS - 1);
    }
}

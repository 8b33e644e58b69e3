//! Disk I/O probe: what `agent-ebpf/src/disk.rs` writes and
//! `agent/src/probes/disk.rs` reads.
//!
//! A block request is followed by its (device, first sector) from
//! `block_bio_queue` (the submitting process, in its own context) through
//! `block_rq_issue` (handed to the driver) to `block_rq_complete`: queue time
//! is bio queued to issue, service time issue to completion.

use crate::hist;

/// Per (process, device, operation) statistics, cumulative.
pub const MAP_STATS: &str = "DISK_STATS";
/// Requests in flight, keyed by (device, sector). A plain hash (an LRU's
/// locking cost twice as much per I/O here); userspace sweeps out entries
/// whose completion never came (bios split or merged from the front).
pub const MAP_INFLIGHT: &str = "DISK_INFLIGHT";
/// Per-CPU event counters, indexed by [`Counter`].
pub const MAP_COUNTERS: &str = "DISK_COUNTERS";
/// Per-CPU zeroed scratch used to create new stats entries.
pub const MAP_ZERO: &str = "DISK_ZERO";
/// Process ids to trace when `--pid` is given.
pub const MAP_PIDS: &str = "DISK_PIDS";

pub const DEFAULT_MAX_STATS: u32 = 1_024;
pub const MAX_INFLIGHT: u32 = 16_384;

/// The start of the classic tracepoint records the programs read, in one
/// read each. Userspace checks every field's offset against the kernel's
/// own `format` files before loading, and refuses to load (saying which
/// field moved) on a kernel that lays them out differently.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct Record {
    /// `common_type`, `common_flags`, `common_preempt_count`, `common_pid`.
    pub common: [u8; 8],
    pub dev: u32,
    pub _pad: u32,
    pub sector: u64,
    pub nr_sector: u32,
    /// `error` in `block_rq_complete` (`bytes` in `block_rq_issue`).
    pub error: i32,
    pub ioprio: u16,
    /// `rwbs` of `block_rq_issue`/`block_rq_complete` (first 4 bytes).
    pub rwbs: [u8; 4],
    pub _rest: [u8; 6],
}
const _: () = assert!(core::mem::size_of::<Record>() == 48);

/// Field offsets of [`Record`], for the userspace check.
pub const RECORD_FIELDS: [(&str, u32); 5] =
    [("dev", 8), ("sector", 16), ("nr_sector", 24), ("error", 28), ("rwbs", 34)];

/// Block operations, from the tracepoints' `rwbs` string.
#[repr(u32)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Op {
    Read = 0,
    Write = 1,
    Flush = 2,
    Discard = 3,
    Other = 4,
}

impl Op {
    /// The operation an `rwbs` string names: an optional leading `F`
    /// (pre-flush) then `R`, `W`, `F` (flush), `D` (discard) or `N`.
    #[inline(always)]
    pub const fn from_rwbs(rwbs: &[u8; 4]) -> Op {
        let c = if rwbs[0] == b'F' && matches!(rwbs[1], b'R' | b'W' | b'D' | b'F' | b'N') {
            rwbs[1]
        } else {
            rwbs[0]
        };
        match c {
            b'R' => Op::Read,
            b'W' => Op::Write,
            b'F' => Op::Flush,
            b'D' => Op::Discard,
            _ => Op::Other,
        }
    }

    pub const fn from_u32(v: u32) -> Op {
        match v {
            0 => Op::Read,
            1 => Op::Write,
            2 => Op::Flush,
            3 => Op::Discard,
            _ => Op::Other,
        }
    }

    pub const fn name(self) -> &'static str {
        match self {
            Op::Read => "read",
            Op::Write => "write",
            Op::Flush => "flush",
            Op::Discard => "discard",
            Op::Other => "other",
        }
    }
}

/// A request in flight.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct ReqKey {
    /// Kernel `dev_t`: major << 20 | minor.
    pub dev: u32,
    pub _pad: u32,
    pub sector: u64,
}
const _: () = assert!(core::mem::size_of::<ReqKey>() == 16);

#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct Req {
    /// When its bio was queued; 0 when not seen.
    pub queued_ns: u64,
    /// When it was issued to the driver; 0 until then.
    pub issued_ns: u64,
    /// Submitting process; 0 when not seen. (Its comm is not taken here:
    /// `bpf_get_current_comm` cost 200 ns per I/O on our machines, a third
    /// of the probe; names come from /proc or the syscall probe.)
    pub tgid: u32,
    pub _pad: u32,
}
const _: () = assert!(core::mem::size_of::<Req>() == 24);

/// Map key: one process, device and operation. `tgid` 0 holds requests
/// whose submitter was not seen.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Key {
    pub tgid: u32,
    pub dev: u32,
    pub op: u32,
    pub _pad: u32,
}
const _: () = assert!(core::mem::size_of::<Key>() == 16);

/// Map value; counters only grow. The request count is the sum of
/// `service` (every completed request has a service time).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Stats {
    pub bytes: u64,
    /// Requests that completed with an error.
    pub errors: u64,
    pub queue_max_ns: u64,
    pub service_max_ns: u64,
    pub total_max_ns: u64,
    /// Queue time (bio queued to issue); only requests whose start was seen.
    pub queue: [u32; hist::BUCKETS],
    /// Service time (issue to completion); every request.
    pub service: [u32; hist::BUCKETS],
    /// Queue + service; only requests whose start was seen.
    pub total: [u32; hist::BUCKETS],
}
const _: () = assert!(core::mem::size_of::<Stats>() == 40 + 12 * hist::BUCKETS);

impl Stats {
    pub const ZERO: Stats = Stats {
        bytes: 0,
        errors: 0,
        queue_max_ns: 0,
        service_max_ns: 0,
        total_max_ns: 0,
        queue: [0; hist::BUCKETS],
        service: [0; hist::BUCKETS],
        total: [0; hist::BUCKETS],
    };
}

#[repr(u32)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Counter {
    /// Completed requests whose bio was not seen queued (in flight when the
    /// probe attached, built by the kernel itself such as flush sequences,
    /// or merged from the front): service time only, owner unknown.
    StartNotSeen = 0,
    /// Completions of requests never seen issued: not timed.
    IssueNotSeen = 1,
    /// Bios merged into a request already queued (counted in its bytes).
    BioMerged = 2,
    /// Requests put back by the driver to be issued again.
    Requeued = 3,
    /// A new (process, device, op) could not be recorded: stats map full.
    StatsFull = 4,
    /// A request could not be tracked: in-flight map failing.
    InflightFull = 5,
}

pub const COUNTERS: u32 = 6;

impl Counter {
    pub const ALL: [Counter; COUNTERS as usize] = [
        Counter::StartNotSeen,
        Counter::IssueNotSeen,
        Counter::BioMerged,
        Counter::Requeued,
        Counter::StatsFull,
        Counter::InflightFull,
    ];

    pub const fn name(self) -> &'static str {
        match self {
            Counter::StartNotSeen => "start_not_seen",
            Counter::IssueNotSeen => "issue_not_seen",
            Counter::BioMerged => "bio_merged",
            Counter::Requeued => "requeued",
            Counter::StatsFull => "stats_map_full",
            Counter::InflightFull => "inflight_map_full",
        }
    }

    /// Whether a non-zero count means the probe dropped data it had.
    pub const fn is_error(self) -> bool {
        matches!(self, Counter::StatsFull | Counter::InflightFull)
    }
}

crate::user_pod!(ReqKey, Req, Key, Stats);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ops_from_rwbs() {
        for (rwbs, op) in [
            (*b"R\0\0\0", Op::Read),
            (*b"RA\0\0", Op::Read),
            (*b"WS\0\0", Op::Write),
            (*b"FWFS", Op::Write),
            (*b"FWS\0", Op::Write),
            (*b"F\0\0\0", Op::Flush),
            (*b"FF\0\0", Op::Flush),
            (*b"FN\0\0", Op::Other),
            (*b"D\0\0\0", Op::Discard),
            (*b"N\0\0\0", Op::Other),
        ] {
            assert_eq!(Op::from_rwbs(&rwbs), op, "{rwbs:?}");
        }
    }
}

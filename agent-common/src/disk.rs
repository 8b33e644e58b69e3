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
/// Requests in flight, keyed by (device, sector) (LRU: lost completions
/// cannot fill it).
pub const MAP_INFLIGHT: &str = "DISK_INFLIGHT";
/// Per-CPU event counters, indexed by [`Counter`].
pub const MAP_COUNTERS: &str = "DISK_COUNTERS";
/// Per-CPU zeroed scratch used to create new stats entries.
pub const MAP_ZERO: &str = "DISK_ZERO";
/// Process ids to trace when `--pid` is given.
pub const MAP_PIDS: &str = "DISK_PIDS";

pub const DEFAULT_MAX_STATS: u32 = 1_024;
pub const MAX_INFLIGHT: u32 = 16_384;

/// Globals set by userspace at load time: field offsets in the classic
/// tracepoint records, read from their `format` files (so a kernel that
/// moves a field is followed, and one that drops it is refused by name).
pub mod globals {
    pub const OFF_DEV: &str = "OFF_DEV";
    pub const OFF_SECTOR: &str = "OFF_SECTOR";
    pub const OFF_NR_SECTOR: &str = "OFF_NR_SECTOR";
    /// `rwbs` in `block_bio_queue` and the bio merge events.
    pub const OFF_BIO_RWBS: &str = "OFF_BIO_RWBS";
    /// `rwbs` in `block_rq_issue` and `block_rq_complete`.
    pub const OFF_RQ_RWBS: &str = "OFF_RQ_RWBS";
    /// `error` in `block_rq_complete`.
    pub const OFF_RQ_ERROR: &str = "OFF_RQ_ERROR";
}

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
    /// Submitting process; 0 when not seen.
    pub tgid: u32,
    pub _pad: u32,
    /// Submitting thread's comm.
    pub comm: [u8; 16],
}
const _: () = assert!(core::mem::size_of::<Req>() == 40);

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
    /// comm of the submitter when the entry was made.
    pub comm: [u8; 16],
    /// Queue time (bio queued to issue); only requests whose start was seen.
    pub queue: [u32; hist::BUCKETS],
    /// Service time (issue to completion); every request.
    pub service: [u32; hist::BUCKETS],
    /// Queue + service; only requests whose start was seen.
    pub total: [u32; hist::BUCKETS],
}
const _: () = assert!(core::mem::size_of::<Stats>() == 56 + 12 * hist::BUCKETS);

impl Stats {
    pub const ZERO: Stats = Stats {
        bytes: 0,
        errors: 0,
        queue_max_ns: 0,
        service_max_ns: 0,
        total_max_ns: 0,
        comm: [0; 16],
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

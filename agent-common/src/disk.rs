//! Disk I/O probe: what `agent-ebpf/src/disk.rs` writes and
//! `agent/src/probes/disk.rs` reads.
//!
//! Every block request is followed by its `struct request` address, from
//! its creation in the submitter's context (`block_io_start`, raised once
//! per request, for each piece of a split bio too) through `block_rq_issue`
//! (handed to the driver) to `block_rq_complete`. Requests and bytes are
//! counted where requests are made (and bios merged into them), in process
//! context: exact whatever happens at completion, in interrupts; latency is
//! taken at completion. Queue time runs from the
//! submitting thread's `block_bio_queue` (before waiting for a request slot)
//! to issue, service time from issue to completion. Keys are request
//! addresses, so two requests for one sector, or two flushes, never share a
//! record, and a record whose completion never comes is overwritten when the
//! kernel reuses the request (requests come from fixed per-queue pools): the
//! in-flight map cannot fill with leaks. Bio-based (stacked) devices make no
//! requests and leave no records; their I/O is seen on the devices below.

use crate::hist;

/// Per (process, device, operation) statistics, cumulative.
pub const MAP_STATS: &str = "DISK_STATS";
/// Requests in flight, keyed by `struct request` address.
pub const MAP_INFLIGHT: &str = "DISK_INFLIGHT";
/// The bio each thread is submitting, in the thread's task storage (freed
/// with it; not readable from userspace), so a request created after a
/// wait for a request slot, or from a piece of a split bio, is timed from
/// its bio's submission.
pub const MAP_SUBMITS: &str = "DISK_SUBMITS";
/// Per-CPU event counters, indexed by [`Counter`].
pub const MAP_COUNTERS: &str = "DISK_COUNTERS";
/// Per-CPU zeroed scratch used to create new stats entries.
pub const MAP_ZERO: &str = "DISK_ZERO";
/// Process ids to trace when `--pid` is given.
pub const MAP_PIDS: &str = "DISK_PIDS";
/// Global with the kernel's struct offsets ([`Offsets`]).
pub const GLOBAL_OFFSETS: &str = "OFFSETS";

pub const DEFAULT_MAX_STATS: u32 = 1_024;
pub const MAX_INFLIGHT: u32 = 16_384;

/// What the programs read of kernel structs, located through this kernel's
/// BTF at start-up (userspace refuses to load, naming the field, if one is
/// missing). Raw tracepoints pass only the `struct request *` / `struct bio
/// *` arguments (their prototypes: `include/trace/events/block.h`).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct Offsets {
    /// `struct request`: `q`, `cmd_flags` (u32), `__data_len` (u32), `bio`.
    pub rq_q: u32,
    pub rq_cmd_flags: u32,
    pub rq_data_len: u32,
    pub rq_bio: u32,
    /// `struct request_queue`: `disk`.
    pub q_disk: u32,
    /// `struct bio`: `bi_bdev`, `bi_opf` (u32), `bi_iter.bi_size` (u32).
    pub bio_bdev: u32,
    pub bio_opf: u32,
    pub bio_size: u32,
    /// `struct block_device`: `bd_disk`.
    pub bdev_disk: u32,
    /// `struct gendisk`: `major`, `first_minor` (ints).
    pub disk_major: u32,
    pub disk_first_minor: u32,
    /// `REQ_PREFLUSH` (`1 << __REQ_PREFLUSH` of `enum req_flag_bits`).
    pub req_preflush: u32,
}
const _: () = assert!(core::mem::size_of::<Offsets>() == 48);

/// `REQ_OP_*` values (`enum req_op`, the low 8 bits of `cmd_flags`), stable
/// since 4.10; userspace checks them against BTF.
pub const REQ_OP_MASK: u32 = 0xff;
pub const REQ_OP_READ: u32 = 0;
pub const REQ_OP_WRITE: u32 = 1;
pub const REQ_OP_FLUSH: u32 = 2;
pub const REQ_OP_DISCARD: u32 = 3;

/// Block operations, as `/proc/diskstats` groups them, plus the two sides
/// of a flush: the flush request a process makes (`fsync`), and the flush the
/// device runs (the block layer may serve several processes' requests with
/// one).
#[repr(u32)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Op {
    Read = 0,
    /// Also write-zeroes and secure erase (diskstats counts them as writes).
    Write = 1,
    /// A process's flush request: an empty write with the preflush flag
    /// (what `fsync` and `fdatasync` send), timed from submission until the
    /// device flush that served it ends. It is never issued itself.
    Flush = 2,
    Discard = 3,
    Other = 4,
    /// A flush the device ran (the block layer's own request, issued from a
    /// kworker): what `/proc/diskstats` counts as flushes. Owner unknown by
    /// design; reported per device, as `flush`.
    DeviceFlush = 5,
}

impl Op {
    /// The operation of a request, from its `cmd_flags` and size, as it is
    /// created (before the flush machinery strips the preflush flag).
    #[inline(always)]
    pub const fn from_flags(cmd_flags: u32, data_len: u32, preflush: u32) -> Op {
        let op = cmd_flags & REQ_OP_MASK;
        if op == REQ_OP_FLUSH || (op == REQ_OP_WRITE && cmd_flags & preflush != 0 && data_len == 0) {
            Op::Flush
        } else if op == REQ_OP_READ {
            Op::Read
        } else if op == REQ_OP_DISCARD {
            Op::Discard
        } else if op & 1 == 1 {
            // op_is_write(): the kernel's data direction.
            Op::Write
        } else {
            Op::Other
        }
    }

    pub const fn from_u32(v: u32) -> Op {
        match v {
            0 => Op::Read,
            1 => Op::Write,
            2 => Op::Flush,
            3 => Op::Discard,
            5 => Op::DeviceFlush,
            _ => Op::Other,
        }
    }

    pub const fn name(self) -> &'static str {
        match self {
            Op::Read => "read",
            Op::Write => "write",
            Op::Flush | Op::DeviceFlush => "flush",
            Op::Discard => "discard",
            Op::Other => "other",
        }
    }
}

/// A request in flight, keyed by its `struct request` address.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct Req {
    /// When its bio was submitted (or the request made, when the bio was not
    /// seen); 0 for requests not seen made.
    pub queued_ns: u64,
    /// When it was (last) issued to the driver; 0 until then.
    pub issued_ns: u64,
    /// Submitting process; 0 when not seen. (Its comm is not taken here:
    /// `bpf_get_current_comm` cost 200 ns per I/O on our machines; names come
    /// from /proc or the syscall probe.)
    pub tgid: u32,
    /// Kernel `dev_t` of the disk: major << 20 | minor.
    pub dev: u32,
    /// [`Op`].
    pub op: u32,
    /// Its length when made (or issued, if not seen made).
    pub len: u32,
}
const _: () = assert!(core::mem::size_of::<Req>() == 32);

/// The bio a thread submitted last, and the first piece split from it.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct Submit {
    pub bio: u64,
    pub split: u64,
    pub queued_ns: u64,
}
const _: () = assert!(core::mem::size_of::<Submit>() == 24);

/// Map key: one process, device and operation. `tgid` 0 holds requests
/// whose submitter was not seen, and the device's own flushes.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Key {
    pub tgid: u32,
    pub dev: u32,
    pub op: u32,
    pub _pad: u32,
}
const _: () = assert!(core::mem::size_of::<Key>() == 16);

/// Map value; counters only grow.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Stats {
    /// I/Os made: requests (each piece of a split bio is one), and bios
    /// merged into a request already made.
    pub count: u64,
    /// Of those, how many joined another request: bios merged into one, and
    /// requests merged into another. `count - merged` is what
    /// `/proc/diskstats` counts.
    pub merged: u64,
    pub bytes: u64,
    /// Requests that completed with an error.
    pub errors: u64,
    pub queue_max_ns: u64,
    pub service_max_ns: u64,
    pub total_max_ns: u64,
    pub queue_sum_ns: u64,
    pub service_sum_ns: u64,
    pub total_sum_ns: u64,
    /// Queue time (bio submitted to issue); requests seen made and issued.
    pub queue: [u32; hist::BUCKETS],
    /// Service time (issue to completion); requests seen issued.
    pub service: [u32; hist::BUCKETS],
    /// Submission to completion; requests seen made.
    pub total: [u32; hist::BUCKETS],
}
const _: () = assert!(core::mem::size_of::<Stats>() == 80 + 12 * hist::BUCKETS);

impl Stats {
    pub const ZERO: Stats = Stats {
        count: 0,
        merged: 0,
        bytes: 0,
        errors: 0,
        queue_max_ns: 0,
        service_max_ns: 0,
        total_max_ns: 0,
        queue_sum_ns: 0,
        service_sum_ns: 0,
        total_sum_ns: 0,
        queue: [0; hist::BUCKETS],
        service: [0; hist::BUCKETS],
        total: [0; hist::BUCKETS],
    };
}

#[repr(u32)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Counter {
    /// Completed requests not seen made (in flight when the probe attached,
    /// or made by the kernel itself): service time only, owner unknown.
    StartNotSeen = 0,
    /// Completions of requests seen made but never issued (other than flush
    /// requests, which never are): no service time.
    IssueNotSeen = 1,
    /// Bios merged into a request already made: their bytes are counted for
    /// their submitter, the request for its maker.
    BioMerged = 2,
    /// Requests put back by the driver to be issued again.
    Requeued = 3,
    /// A new (process, device, op) could not be recorded: stats map full.
    StatsFull = 4,
    /// A request could not be tracked: in-flight map failing.
    InflightFull = 5,
    /// Requests made from a bio whose submission was not seen (re-submitted
    /// by a kworker, or submitted before attach): timed from the request's
    /// creation, without the wait for a request slot.
    BioNotSeen = 6,
    /// Requests merged into another request (their bytes complete with it).
    RequestMerged = 7,
    /// Completions that found no record: requests of processes the filters
    /// leave out, or in flight when the probe attached.
    Untracked = 8,
    /// Completions of part of a request (the rest completes later).
    Partial = 9,
    /// Requests whose completion no program saw before the kernel reused
    /// the request: counted (where made), but not timed. Seen here a few
    /// times in 30,000 requests under interrupt load, with no program run
    /// skipped by the kernel's own count.
    CompletionNotSeen = 10,
}

pub const COUNTERS: u32 = 11;

impl Counter {
    pub const ALL: [Counter; COUNTERS as usize] = [
        Counter::StartNotSeen,
        Counter::IssueNotSeen,
        Counter::BioMerged,
        Counter::Requeued,
        Counter::StatsFull,
        Counter::InflightFull,
        Counter::BioNotSeen,
        Counter::RequestMerged,
        Counter::Untracked,
        Counter::Partial,
        Counter::CompletionNotSeen,
    ];

    pub const fn name(self) -> &'static str {
        match self {
            Counter::StartNotSeen => "start_not_seen",
            Counter::IssueNotSeen => "issue_not_seen",
            Counter::BioMerged => "bio_merged",
            Counter::Requeued => "requeued",
            Counter::StatsFull => "stats_map_full",
            Counter::InflightFull => "inflight_map_full",
            Counter::BioNotSeen => "bio_not_seen",
            Counter::RequestMerged => "request_merged",
            Counter::Untracked => "untracked_completions",
            Counter::Partial => "partial_completions",
            Counter::CompletionNotSeen => "completion_not_seen",
        }
    }

    /// Whether a non-zero count means the probe dropped data it had.
    pub const fn is_error(self) -> bool {
        matches!(self, Counter::StatsFull | Counter::InflightFull)
    }
}

crate::user_pod!(Req, Submit, Key, Stats, Offsets);

#[cfg(test)]
mod tests {
    use super::*;

    const PREFLUSH: u32 = 1 << 18;

    #[test]
    fn ops_from_flags() {
        for (flags, len, op) in [
            (REQ_OP_READ, 4096, Op::Read),
            (REQ_OP_WRITE, 4096, Op::Write),
            (REQ_OP_WRITE | 1 << 11, 4096, Op::Write),
            // fsync's flush request: an empty write with the preflush flag.
            (REQ_OP_WRITE | PREFLUSH | 1 << 11, 0, Op::Flush),
            // A journal commit: data with a preflush is a write.
            (REQ_OP_WRITE | PREFLUSH, 4096, Op::Write),
            (REQ_OP_FLUSH | PREFLUSH, 0, Op::Flush),
            (REQ_OP_DISCARD, 1 << 20, Op::Discard),
            (5, 4096, Op::Write),  // secure erase
            (9, 4096, Op::Write),  // write zeroes
            (34, 4096, Op::Other), // driver in
        ] {
            assert_eq!(Op::from_flags(flags, len, PREFLUSH), op, "{flags:#x} {len}");
        }
        for op in [Op::Read, Op::Write, Op::Flush, Op::Discard, Op::Other, Op::DeviceFlush] {
            assert_eq!(Op::from_u32(op as u32), op);
        }
    }
}

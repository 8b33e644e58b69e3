//! Block I/O latency per process, device and operation, on the block raw
//! tracepoints: raw ones, because a classic tracepoint's program is skipped
//! whenever another BPF program is running on the CPU (a completion in an
//! interrupt over a traced syscall), and exact counts need every event.
//! Fields are read through the `struct request` the events pass, at offsets
//! userspace took from this kernel's BTF (see `agent_common::disk`).
//!
//! `block_bio_queue` notes when the current thread submitted its bio;
//! `block_split` notes the piece a bio too large for the device was split
//! into. `block_io_start` runs in the submitter's context for each request
//! made (each piece of a split bio included): it records who, which device
//! and operation, and when the bio was submitted, under the request's
//! address. `block_rq_issue` stamps the issue time, `block_rq_complete`
//! accounts the request.
#![no_std]
#![no_main]

use agent_common::{
    disk::{
        Counter, Key, Offsets, Op, Req, Stats, Submit, COUNTERS, DEFAULT_MAX_STATS, MAX_INFLIGHT, REQ_OP_FLUSH,
        REQ_OP_MASK,
    },
    hist,
};
use agent_ebpf::{atomic_add, global, TaskStorage};
use aya_ebpf::{
    bindings::BPF_NOEXIST,
    helpers::{bpf_get_current_pid_tgid, bpf_ktime_get_ns, bpf_probe_read_kernel},
    macros::{btf_map, map, raw_tracepoint},
    maps::{HashMap, PerCpuArray},
    programs::RawTracePointContext,
};

agent_ebpf::filters!(DISK_PIDS);
agent_ebpf::counters!(DISK_COUNTERS, Counter, COUNTERS);

#[unsafe(no_mangle)]
static OFFSETS: Offsets = Offsets {
    rq_q: 0,
    rq_cmd_flags: 0,
    rq_data_len: 0,
    rq_bio: 0,
    q_disk: 0,
    bio_bdev: 0,
    bio_opf: 0,
    bio_size: 0,
    bdev_disk: 0,
    disk_major: 0,
    disk_first_minor: 0,
    req_preflush: 0,
};

#[map]
static DISK_STATS: HashMap<Key, Stats> = HashMap::with_max_entries(DEFAULT_MAX_STATS, 0);
#[map]
static DISK_INFLIGHT: HashMap<u64, Req> = HashMap::with_max_entries(MAX_INFLIGHT, 0);
#[btf_map]
static DISK_SUBMITS: TaskStorage<Submit> = TaskStorage::new();
#[map]
static DISK_ZERO: PerCpuArray<Stats> = PerCpuArray::with_max_entries(1, 0);

/// A `T` at byte `off` of kernel object `base` (zero if unreadable).
#[inline(always)]
fn read<T: Copy + Default>(base: u64, off: u32) -> T {
    // SAFETY: bpf_probe_read_kernel checks the address.
    unsafe { bpf_probe_read_kernel((base as usize).wrapping_add(off as usize) as *const T) }.unwrap_or_default()
}

#[inline(always)]
fn now() -> u64 {
    // SAFETY: a helper call without arguments.
    unsafe { bpf_ktime_get_ns() }
}

/// The request's disk as a kernel `dev_t` (major << 20 | minor), as the
/// block tracepoints and `/proc/diskstats` name it.
#[inline(always)]
fn dev_of(rq: u64, o: &Offsets) -> u32 {
    let q: u64 = read(rq, o.rq_q);
    disk_dev(read(q, o.q_disk), o)
}

/// A `struct gendisk`'s `dev_t`.
#[inline(always)]
fn disk_dev(disk: u64, o: &Offsets) -> u32 {
    if disk == 0 {
        return 0;
    }
    // `major` and `first_minor` are adjacent ints (checked at load): one read.
    let both: u64 = read(disk, o.disk_major);
    (both as u32) << 20 | (both >> 32) as u32
}

#[raw_tracepoint(tracepoint = "block_bio_queue")]
pub fn disk_bio_queue(ctx: RawTracePointContext) -> i32 {
    let pid_tgid = bpf_get_current_pid_tgid();
    if !traced(pid_tgid) {
        return 0;
    }
    if let Some(s) = DISK_SUBMITS.current_or_create() {
        // SAFETY: the current thread's own storage.
        unsafe { *s = Submit { bio: ctx.arg(0), split: 0, queued_ns: now() } };
    }
    0
}

/// A bio larger than the device takes was cut: the piece (argument 0) is
/// made into a request now, the rest is submitted again without a new
/// `block_bio_queue`, under its old address.
#[raw_tracepoint(tracepoint = "block_split")]
pub fn disk_split(ctx: RawTracePointContext) -> i32 {
    if let Some(s) = DISK_SUBMITS.current() {
        // SAFETY: the current thread's own storage.
        unsafe { (*s).split = ctx.arg(0) };
    }
    0
}

#[raw_tracepoint(tracepoint = "block_io_start")]
pub fn disk_io_start(ctx: RawTracePointContext) -> i32 {
    let pid_tgid = bpf_get_current_pid_tgid();
    if !traced(pid_tgid) {
        return 0;
    }
    let rq: u64 = ctx.arg(0);
    let o = global!(OFFSETS);
    let t = now();
    // Timed from the bio's submission when this request holds the bio (or
    // the piece of it) the thread submitted last.
    let bio: u64 = read(rq, o.rq_bio);
    let queued_ns = match DISK_SUBMITS.current() {
        // SAFETY: the current thread's own storage.
        Some(s) if bio != 0 && unsafe { (*s).bio == bio || (*s).split == bio } => unsafe { (*s).queued_ns },
        _ => {
            count(Counter::BioNotSeen);
            t
        }
    };
    let flags: u32 = read(rq, o.rq_cmd_flags);
    let len: u32 = read(rq, o.rq_data_len);
    let req = Req {
        queued_ns,
        issued_ns: 0,
        tgid: (pid_tgid >> 32) as u32,
        dev: dev_of(rq, &o),
        op: Op::from_flags(flags, len, o.req_preflush) as u32,
        len,
    };
    made(&req);
    if DISK_INFLIGHT.insert(&rq, &req, BPF_NOEXIST as u64).is_err() {
        match DISK_INFLIGHT.get_ptr_mut(&rq) {
            // The record of an earlier request at this address, whose
            // completion was not seen: replaced.
            Some(old) => {
                count(Counter::CompletionNotSeen);
                // SAFETY: a value of this map; a request is made on one CPU.
                unsafe { *old = req };
            }
            None => count(Counter::InflightFull),
        }
    }
    0
}

#[raw_tracepoint(tracepoint = "block_rq_issue")]
pub fn disk_rq_issue(ctx: RawTracePointContext) -> i32 {
    let rq: u64 = ctx.arg(0);
    let t = now();
    if let Some(req) = DISK_INFLIGHT.get_ptr_mut(&rq) {
        // SAFETY: a value of this map; one request is issued on one CPU at a
        // time.
        unsafe { (*req).issued_ns = t };
        return 0;
    }
    // Not seen made. With a filter set it is someone else's request (or a
    // device flush, which has no owner to filter by).
    if filtering() {
        return 0;
    }
    let o = global!(OFFSETS);
    let flags: u32 = read(rq, o.rq_cmd_flags);
    let len: u32 = read(rq, o.rq_data_len);
    let op =
        if flags & REQ_OP_MASK == REQ_OP_FLUSH { Op::DeviceFlush } else { Op::from_flags(flags, len, o.req_preflush) };
    let req = Req { queued_ns: 0, issued_ns: t, tgid: 0, dev: dev_of(rq, &o), op: op as u32, len };
    made(&req);
    if DISK_INFLIGHT.insert(&rq, &req, 0).is_err() {
        count(Counter::InflightFull);
    }
    0
}

#[raw_tracepoint(tracepoint = "block_rq_requeue")]
pub fn disk_rq_requeue(_ctx: RawTracePointContext) -> i32 {
    count(Counter::Requeued);
    0
}

/// Request argument 0 was merged into another and will be freed without a
/// completion of its own.
#[raw_tracepoint(tracepoint = "block_rq_merge")]
pub fn disk_rq_merge(ctx: RawTracePointContext) -> i32 {
    let rq: u64 = ctx.arg(0);
    let Some(reqp) = DISK_INFLIGHT.get_ptr(&rq) else {
        return 0;
    };
    // SAFETY: a value of this map.
    let req = unsafe { *reqp };
    let _ = DISK_INFLIGHT.remove(&rq);
    count(Counter::RequestMerged);
    // Its bytes now complete with the other request: still an I/O its maker
    // made, no longer a request of its own.
    let k = Key { tgid: req.tgid, dev: req.dev, op: req.op, _pad: 0 };
    if let Some(stats) = DISK_STATS.get_ptr_mut(&k) {
        // SAFETY: a value of this map; other CPUs only add atomically.
        unsafe { atomic_add(&raw mut (*stats).merged, 1) };
    }
    0
}

/// A bio joined a request already made (in its submitter's context): an
/// I/O of its submitter's, merged, whose bytes the request carries.
#[raw_tracepoint(tracepoint = "block_bio_backmerge")]
pub fn disk_bio_backmerge(ctx: RawTracePointContext) -> i32 {
    bio_merged(ctx.arg(0))
}

#[raw_tracepoint(tracepoint = "block_bio_frontmerge")]
pub fn disk_bio_frontmerge(ctx: RawTracePointContext) -> i32 {
    bio_merged(ctx.arg(0))
}

#[inline(always)]
fn bio_merged(bio: u64) -> i32 {
    let pid_tgid = bpf_get_current_pid_tgid();
    if !traced(pid_tgid) {
        return 0;
    }
    count(Counter::BioMerged);
    let o = global!(OFFSETS);
    let bdev: u64 = read(bio, o.bio_bdev);
    let flags: u32 = read(bio, o.bio_opf);
    let size: u32 = read(bio, o.bio_size);
    let dev = disk_dev(read(bdev, o.bdev_disk), &o);
    let k = Key { tgid: (pid_tgid >> 32) as u32, dev, op: Op::from_flags(flags, size, o.req_preflush) as u32, _pad: 0 };
    if let Some(stats) = entry(&k) {
        // SAFETY: a value of this map; other CPUs only add atomically.
        unsafe {
            atomic_add(&raw mut (*stats).count, 1);
            atomic_add(&raw mut (*stats).merged, 1);
            atomic_add(&raw mut (*stats).bytes, u64::from(size));
        }
    }
    0
}

/// `block_rq_complete(struct request *rq, blk_status_t error, unsigned int
/// nr_bytes)`: raised for each part of a request that completes, before the
/// request's remaining length is reduced.
#[raw_tracepoint(tracepoint = "block_rq_complete")]
pub fn disk_rq_complete(ctx: RawTracePointContext) -> i32 {
    let rq: u64 = ctx.arg(0);
    let error = ctx.arg::<u64>(1) as u8;
    let nr_bytes = ctx.arg::<u64>(2) as u32;
    let Some(reqp) = DISK_INFLIGHT.get_ptr(&rq) else {
        count(Counter::Untracked);
        return 0;
    };
    let remaining: u32 = read(rq, global!(OFFSETS).rq_data_len);
    if nr_bytes < remaining {
        // Timed when its last part completes.
        count(Counter::Partial);
        return 0;
    }
    // SAFETY: a value of this map.
    let req = unsafe { *reqp };
    let _ = DISK_INFLIGHT.remove(&rq);
    account(&req, error != 0);
    0
}

/// Counts a request where it is made (in its submitter's context, where
/// no program is ever skipped): requests and bytes stay exact even when a
/// completion's program does not run.
#[inline(always)]
fn made(req: &Req) {
    let k = Key { tgid: req.tgid, dev: req.dev, op: req.op, _pad: 0 };
    if let Some(stats) = entry(&k) {
        // SAFETY: a value of this map; other CPUs only add atomically.
        unsafe {
            atomic_add(&raw mut (*stats).count, 1);
            atomic_add(&raw mut (*stats).bytes, u64::from(req.len));
        }
    }
}

/// Times a request that ended now.
#[inline(always)]
fn account(req: &Req, failed: bool) {
    let t = now();
    if req.queued_ns == 0 {
        count(Counter::StartNotSeen);
    } else if req.issued_ns == 0 && req.op != Op::Flush as u32 {
        count(Counter::IssueNotSeen);
    }
    let k = Key { tgid: req.tgid, dev: req.dev, op: req.op, _pad: 0 };
    let Some(stats) = entry(&k) else {
        return;
    };
    // SAFETY: `stats` points into a map value; other CPUs only add atomically
    // (the maxima tolerate a lost race).
    unsafe {
        if failed {
            atomic_add(&raw mut (*stats).errors, 1);
        }
        if req.issued_ns != 0 {
            let service = t.saturating_sub(req.issued_ns);
            add(&mut (*stats).service, &mut (*stats).service_max_ns, &raw mut (*stats).service_sum_ns, service);
            if req.queued_ns != 0 {
                let queue = req.issued_ns.saturating_sub(req.queued_ns);
                add(&mut (*stats).queue, &mut (*stats).queue_max_ns, &raw mut (*stats).queue_sum_ns, queue);
            }
        }
        if req.queued_ns != 0 {
            let total = t.saturating_sub(req.queued_ns);
            add(&mut (*stats).total, &mut (*stats).total_max_ns, &raw mut (*stats).total_sum_ns, total);
        }
    }
}

/// One value into a histogram, its maximum and its sum.
///
/// # Safety
/// All three point into one value of `DISK_STATS`.
#[inline(always)]
unsafe fn add(h: &mut [u32; hist::BUCKETS], max: &mut u64, sum: *mut u64, ns: u64) {
    if let Some(b) = h.get_mut(hist::bucket(ns)) {
        // SAFETY: guaranteed by the caller.
        unsafe { atomic_add(b as *mut u32, 1) };
    }
    if ns > *max {
        *max = ns;
    }
    // SAFETY: guaranteed by the caller.
    unsafe { atomic_add(sum, ns) };
}

#[inline(always)]
fn entry(key: &Key) -> Option<*mut Stats> {
    if let Some(p) = DISK_STATS.get_ptr_mut(key) {
        return Some(p);
    }
    let zero = DISK_ZERO.get_ptr(0)?;
    // SAFETY: a map value never written to, so all zeroes.
    let _ = DISK_STATS.insert(key, unsafe { &*zero }, BPF_NOEXIST as u64);
    let p = DISK_STATS.get_ptr_mut(key);
    if p.is_none() {
        count(Counter::StatsFull);
    }
    p
}

agent_ebpf::panic_handler!();

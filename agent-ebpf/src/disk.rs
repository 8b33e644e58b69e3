//! Block I/O latency per process, device and operation, on the classic
//! block tracepoints: their records carry device, sector and rwbs as
//! documented fields (read as `agent_common::disk::Record`), where raw
//! tracepoints would need `struct request` offsets from BTF.
//!
//! `block_bio_queue` runs in the submitter's context: it records who and
//! when under the bio's (device, sector). `block_rq_issue` stamps the issue
//! time on the request with that (device, sector); `block_rq_complete`
//! accounts queue, service and total time to the submitter. Bios merged into
//! a queued request drop their own record.
#![no_std]
#![no_main]

use agent_common::{
    disk::{Counter, Key, Op, Record, Req, ReqKey, Stats, COUNTERS, DEFAULT_MAX_STATS, MAX_INFLIGHT},
    hist,
};
use agent_ebpf::atomic_add;
use aya_ebpf::{
    bindings::BPF_NOEXIST,
    helpers::{bpf_get_current_pid_tgid, bpf_ktime_get_ns},
    macros::{map, tracepoint},
    maps::{HashMap, PerCpuArray},
    programs::TracePointContext,
};

agent_ebpf::filters!(DISK_PIDS);

#[map]
static DISK_STATS: HashMap<Key, Stats> = HashMap::with_max_entries(DEFAULT_MAX_STATS, 0);
#[map]
static DISK_INFLIGHT: HashMap<ReqKey, Req> = HashMap::with_max_entries(MAX_INFLIGHT, 0);
agent_ebpf::counters!(DISK_COUNTERS, Counter, COUNTERS);
#[map]
static DISK_ZERO: PerCpuArray<Stats> = PerCpuArray::with_max_entries(1, 0);

/// The record's fixed fields, in one read.
#[inline(always)]
fn record(ctx: &TracePointContext) -> Option<Record> {
    // SAFETY: a read of the tracepoint record through bpf_probe_read_kernel.
    unsafe { ctx.read_at::<Record>(0) }.ok()
}

/// (device, sector) of a record. Requests without data (flushes) have no
/// position, and the kernel reports 0 or -1 for it from one event to the
/// next: they all use the key sector `u64::MAX`.
#[inline(always)]
fn req_key(r: &Record) -> ReqKey {
    let sector = if r.nr_sector == 0 { u64::MAX } else { r.sector };
    ReqKey { dev: r.dev, _pad: 0, sector }
}

#[tracepoint(category = "block", name = "block_bio_queue")]
pub fn disk_bio_queue(ctx: TracePointContext) -> u32 {
    let pid_tgid = bpf_get_current_pid_tgid();
    if !traced(pid_tgid) {
        return 0;
    }
    let Some(r) = record(&ctx) else {
        return 0;
    };
    let key = req_key(&r);
    // SAFETY: a helper call without arguments.
    let req = Req {
        queued_ns: unsafe { bpf_ktime_get_ns() },
        issued_ns: 0,
        tgid: (pid_tgid >> 32) as u32,
        _pad: 0,
    };
    if DISK_INFLIGHT.insert(&key, &req, 0).is_err() {
        count(Counter::InflightFull);
    }
    0
}

/// A bio joined a request already queued: it will not be issued on its own.
#[tracepoint(category = "block", name = "block_bio_backmerge")]
pub fn disk_bio_backmerge(ctx: TracePointContext) -> u32 {
    merged(&ctx)
}

#[tracepoint(category = "block", name = "block_bio_frontmerge")]
pub fn disk_bio_frontmerge(ctx: TracePointContext) -> u32 {
    // The request now starts at this bio's sector, so its record stays:
    // the request is timed from this (later) bio.
    let _ = ctx;
    count(Counter::BioMerged);
    0
}

#[inline(always)]
fn merged(ctx: &TracePointContext) -> u32 {
    if let Some(r) = record(ctx) {
        if DISK_INFLIGHT.remove(&req_key(&r)).is_ok() {
            count(Counter::BioMerged);
        }
    }
    0
}

#[tracepoint(category = "block", name = "block_rq_issue")]
pub fn disk_rq_issue(ctx: TracePointContext) -> u32 {
    let Some(r) = record(&ctx) else {
        return 0;
    };
    let key = req_key(&r);
    // SAFETY: a helper call without arguments.
    let now = unsafe { bpf_ktime_get_ns() };
    if let Some(req) = DISK_INFLIGHT.get_ptr_mut(&key) {
        // SAFETY: a value of this map; requests with one key do not race.
        unsafe { (*req).issued_ns = now };
        return 0;
    }
    // Not seen queued. With a filter set it is someone else's request.
    if filtering() {
        return 0;
    }
    let req = Req { queued_ns: 0, issued_ns: now, tgid: 0, _pad: 0 };
    if DISK_INFLIGHT.insert(&key, &req, 0).is_err() {
        count(Counter::InflightFull);
    }
    0
}

#[tracepoint(category = "block", name = "block_rq_requeue")]
pub fn disk_rq_requeue(_ctx: TracePointContext) -> u32 {
    count(Counter::Requeued);
    0
}

#[tracepoint(category = "block", name = "block_rq_complete")]
pub fn disk_rq_complete(ctx: TracePointContext) -> u32 {
    let Some(r) = record(&ctx) else {
        return 0;
    };
    let key = req_key(&r);
    let Some(reqp) = DISK_INFLIGHT.get_ptr(&key) else {
        return 0;
    };
    // SAFETY: a value of this map.
    let req = unsafe { *reqp };
    let _ = DISK_INFLIGHT.remove(&key);
    if req.issued_ns == 0 {
        count(Counter::IssueNotSeen);
        return 0;
    }
    // SAFETY: a helper call without arguments.
    let now = unsafe { bpf_ktime_get_ns() };
    let (nr_sector, error, op) = (r.nr_sector, r.error, Op::from_rwbs(&r.rwbs));
    if req.queued_ns == 0 {
        count(Counter::StartNotSeen);
    }
    let k = Key { tgid: req.tgid, dev: key.dev, op: op as u32, _pad: 0 };
    let Some(stats) = entry(&k) else {
        return 0;
    };
    let service = now.saturating_sub(req.issued_ns);
    // SAFETY: `stats` points into a map value; other CPUs only add atomically
    // (the maxima tolerate a lost race).
    unsafe {
        atomic_add(&raw mut (*stats).bytes, u64::from(nr_sector) * 512);
        if error != 0 {
            atomic_add(&raw mut (*stats).errors, 1);
        }
        if let Some(b) = (*stats).service.get_mut(hist::bucket(service)) {
            atomic_add(b as *mut u32, 1);
        }
        if service > (*stats).service_max_ns {
            (*stats).service_max_ns = service;
        }
        if req.queued_ns != 0 {
            let queue = req.issued_ns.saturating_sub(req.queued_ns);
            let total = now.saturating_sub(req.queued_ns);
            if let Some(b) = (*stats).queue.get_mut(hist::bucket(queue)) {
                atomic_add(b as *mut u32, 1);
            }
            if let Some(b) = (*stats).total.get_mut(hist::bucket(total)) {
                atomic_add(b as *mut u32, 1);
            }
            if queue > (*stats).queue_max_ns {
                (*stats).queue_max_ns = queue;
            }
            if total > (*stats).total_max_ns {
                (*stats).total_max_ns = total;
            }
        }
    }
    0
}

#[inline(always)]
fn entry(key: &Key) -> Option<*mut Stats> {
    if let Some(p) = DISK_STATS.get_ptr_mut(key) {
        return Some(p);
    }
    let Some(zero) = DISK_ZERO.get_ptr(0) else {
        return None;
    };
    // SAFETY: a map value never written to, so all zeroes.
    let _ = DISK_STATS.insert(key, unsafe { &*zero }, BPF_NOEXIST as u64);
    let p = DISK_STATS.get_ptr_mut(key);
    if p.is_none() {
        count(Counter::StatsFull);
    }
    p
}

agent_ebpf::panic_handler!();

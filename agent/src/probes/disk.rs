//! Disk I/O probe, user side: loads `agent-ebpf/src/disk.rs`, attaches it
//! to the block tracepoints, and turns its cumulative per-(process, device,
//! operation) counters into per-interval figures.

use std::collections::{HashMap as StdHashMap, HashSet};

use agent_common::disk::{self as common, Counter, Key, Op, Stats};
use aya::{
    maps::{HashMap, MapData},
    Ebpf, EbpfLoader,
};

use super::{FilterGlobals, Interval, Options, Probe, ProbeError, ProbeStatus, Spec};
use crate::{ebpf, hist::Dist};

pub const NAME: &str = "disk";

pub const SPEC: Spec = Spec {
    name: NAME,
    about: "block I/O per process, device and operation: queue, service and total latency (block tracepoints)",
    load: |opts| Ok(Box::new(DiskProbe::load(opts)?)),
};

static OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/disk"));

/// Programs and their tracepoints, in attach order: completion and issue
/// first, so no request is recorded that nothing will consume.
const PROGRAMS: [(&str, &str); 6] = [
    ("disk_rq_complete", "block_rq_complete"),
    ("disk_rq_requeue", "block_rq_requeue"),
    ("disk_rq_issue", "block_rq_issue"),
    ("disk_bio_backmerge", "block_bio_backmerge"),
    ("disk_bio_frontmerge", "block_bio_frontmerge"),
    ("disk_bio_queue", "block_bio_queue"),
];

/// One process's I/O to one device with one operation over one interval.
#[derive(Debug, Clone, Default)]
pub struct DiskData {
    /// Completed requests.
    pub count: u64,
    pub bytes: u64,
    pub errors: u64,
    /// Bio queued to issue; only requests whose start was seen.
    pub queue: Dist,
    /// Issue to completion.
    pub service: Dist,
    /// Queue + service; only requests whose start was seen.
    pub total: Dist,
}

impl DiskData {
    fn between(now: &Stats, before: &Stats) -> Self {
        let service = Dist::between(&now.service, &before.service, now.service_max_ns, before.service_max_ns, 0, 0);
        Self {
            count: service.hist.count(),
            bytes: now.bytes.wrapping_sub(before.bytes),
            errors: now.errors.wrapping_sub(before.errors),
            queue: Dist::between(&now.queue, &before.queue, now.queue_max_ns, before.queue_max_ns, 0, 0),
            total: Dist::between(&now.total, &before.total, now.total_max_ns, before.total_max_ns, 0, 0),
            service,
        }
    }

    pub fn merge(&mut self, o: &DiskData) {
        self.count += o.count;
        self.bytes += o.bytes;
        self.errors += o.errors;
        self.queue.merge(&o.queue);
        self.service.merge(&o.service);
        self.total.merge(&o.total);
    }
}

pub struct DiskProbe {
    /// Owns the programs and their links: dropping it detaches everything.
    bpf: Ebpf,
    stats: HashMap<MapData, Key, Stats>,
    stats_reader: ebpf::BatchReader<Key, Stats>,
    inflight: HashMap<MapData, common::ReqKey, common::Req>,
    inflight_reader: ebpf::BatchReader<common::ReqKey, common::Req>,
    /// Intervals collected, and stale in-flight entries swept so far.
    intervals: u64,
    swept: u64,
    counters: super::Counters,
    prev: StdHashMap<Key, Stats>,
    status: ProbeStatus,
}

fn map_err(map: &'static str, detail: impl ToString) -> ProbeError {
    ProbeError::Map { probe: NAME, map, detail: detail.to_string() }
}

impl DiskProbe {
    pub fn load(opts: &Options) -> Result<Self, ProbeError> {
        // The programs read the records as `common::Record`: check that this
        // kernel lays them out so. Bio events share dev, sector and
        // nr_sector (the programs read nothing else of them); issue has no
        // error field.
        for event in ["block_rq_complete", "block_rq_issue", "block_bio_queue", "block_bio_backmerge"] {
            let unread: &[&str] = match event {
                "block_rq_complete" => &[],
                "block_rq_issue" => &["error"],
                _ => &["error", "rwbs"],
            };
            let fields: Vec<(&str, u32)> =
                common::RECORD_FIELDS.into_iter().filter(|(name, _)| !unread.contains(name)).collect();
            ebpf::expect_fields(NAME, "block", event, &fields)?;
        }

        let filters = FilterGlobals::new(opts);
        let mut loader = EbpfLoader::new();
        filters.apply(&mut loader);
        let mut bpf = ebpf::load(NAME, OBJECT, &mut loader)?;
        super::fill_pids(&mut bpf, NAME, common::MAP_PIDS, &opts.pids)?;
        for (program, tracepoint) in PROGRAMS {
            ebpf::attach_tracepoint(&mut bpf, NAME, program, "block", tracepoint)?;
        }

        let maps = ebpf::map_sizes(&bpf);
        let mut take = |name: &'static str| bpf.take_map(name).ok_or_else(|| map_err(name, "missing"));
        let stats = take(common::MAP_STATS)?;
        let stats_reader = ebpf::BatchReader::new(&stats).map_err(|e| map_err("DISK_STATS", e))?;
        let stats = HashMap::try_from(stats).map_err(|e| map_err("DISK_STATS", e))?;
        let inflight = take(common::MAP_INFLIGHT)?;
        let inflight_reader = ebpf::BatchReader::new(&inflight).map_err(|e| map_err("DISK_INFLIGHT", e))?;
        let inflight = HashMap::try_from(inflight).map_err(|e| map_err("DISK_INFLIGHT", e))?;
        let counters = super::Counters::new(NAME, common::MAP_COUNTERS, take(common::MAP_COUNTERS)?, Counter::ALL.iter().map(|c| (c.name(), c.is_error())).collect())?;
        Ok(Self {
            bpf,
            stats,
            stats_reader,
            inflight,
            inflight_reader,
            intervals: 0,
            swept: 0,
            counters,
            prev: StdHashMap::new(),
            status: ProbeStatus::active(NAME, maps),
        })
    }

}

/// Intervals between sweeps of the in-flight map.
const SWEEP_EVERY: u64 = 10;
/// A request in flight this long lost its completion (no device takes a
/// minute; the block layer times requests out long before).
const STALE_NS: u64 = 60_000_000_000;

impl DiskProbe {
    /// Deletes in-flight entries whose completion will never come (a bio
    /// split, or merged from the front, leaves its first record behind).
    fn sweep(&mut self) -> Result<(), ProbeError> {
        // bpf_ktime_get_ns is CLOCK_MONOTONIC.
        let mut ts = libc::timespec { tv_sec: 0, tv_nsec: 0 };
        // SAFETY: clock_gettime fills the timespec we pass.
        unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
        let now = ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64;
        let stale: Vec<common::ReqKey> = self
            .inflight_reader
            .read()
            .map_err(|e| ProbeError::Read { probe: NAME, map: "DISK_INFLIGHT", detail: e.to_string() })?
            .filter(|(_, r)| now.saturating_sub(r.queued_ns.max(r.issued_ns)) > STALE_NS)
            .map(|(k, _)| *k)
            .collect();
        for k in &stale {
            let _ = self.inflight.remove(k);
        }
        self.swept += stale.len() as u64;
        Ok(())
    }
}

impl Probe for DiskProbe {
    fn name(&self) -> &'static str {
        NAME
    }

    fn collect(&mut self, out: &mut Interval) -> Result<(), ProbeError> {
        // Processes already gone before this read: their entries are final
        // once read, and go (few processes do disk I/O, so checking /proc for
        // each of them every interval is cheap). Pid 0 holds requests whose
        // submitter was not seen.
        let known: HashSet<u32> = self.prev.keys().map(|k| k.tgid).filter(|t| *t != 0).collect();
        let dead: HashSet<u32> = known.into_iter().filter(|t| !super::alive(*t)).collect();

        let mut entries = 0u64;
        let reader = self
            .stats_reader
            .read()
            .map_err(|e| ProbeError::Read { probe: NAME, map: "DISK_STATS", detail: e.to_string() })?;
        for (k, v) in reader {
            entries += 1;
            let prev = self.prev.entry(*k).or_insert(Stats::ZERO);
            if prev == v {
                continue;
            }
            let d = DiskData::between(v, prev);
            *prev = *v;
            out.processes.entry(k.tgid).or_default().disk.insert((k.dev, Op::from_u32(k.op)), d);
        }
        entries -= super::reclaim(&mut self.prev, &mut self.stats, &dead, |k| k.tgid);
        self.status.set_entries(common::MAP_STATS, entries);
        if self.intervals.is_multiple_of(SWEEP_EVERY) {
            self.sweep()?;
        }
        self.intervals += 1;
        self.counters.read(&self.bpf, &mut self.status)
    }

    fn status(&self) -> ProbeStatus {
        self.status.clone()
    }
}

/// Block device names (`vda`, `loop3`) by kernel dev_t, from
/// `/sys/dev/block/MAJ:MIN/uevent`.
#[derive(Default)]
pub struct DeviceNames(StdHashMap<u32, String>);

impl DeviceNames {
    pub fn name(&mut self, dev: u32) -> String {
        self.0
            .entry(dev)
            .or_insert_with(|| {
                let (major, minor) = (dev >> 20, dev & 0xf_ffff);
                std::fs::read_to_string(format!("/sys/dev/block/{major}:{minor}/uevent"))
                    .ok()
                    .and_then(|u| u.lines().find_map(|l| l.strip_prefix("DEVNAME=")).map(str::to_string))
                    .unwrap_or_else(|| format!("{major}:{minor}"))
            })
            .clone()
    }
}

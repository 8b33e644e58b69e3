//! Disk I/O probe, user side: loads `agent-ebpf/src/disk.rs`, attaches it
//! to the block tracepoints, and turns its cumulative per-(process, device,
//! operation) counters into per-interval figures.

use std::collections::{BTreeMap, HashMap as StdHashMap, HashSet};

use agent_common::disk::{self as common, Counter, Key, Op, Stats};
use aya::{
    maps::{HashMap, MapData},
    Ebpf,
};

use super::{FilterGlobals, Interval, Options, Probe, ProbeError, ProbeStatus, Spec};
use crate::{ebpf, hist::Dist};

pub const NAME: &str = "disk";

pub const SPEC: Spec = Spec {
    name: NAME,
    about: "block I/O per process, device and operation: queue, service and total latency, split and flush requests included (block raw tracepoints)",
    load: |opts| Ok(Box::new(DiskProbe::load(opts)?)),
};

static OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/disk"));

/// Programs and their raw tracepoints, in attach order: completion, merge
/// and issue first, so no request is recorded that nothing will consume.
const PROGRAMS: [(&str, &str); 9] = [
    ("disk_rq_complete", "block_rq_complete"),
    ("disk_rq_merge", "block_rq_merge"),
    ("disk_rq_requeue", "block_rq_requeue"),
    ("disk_rq_issue", "block_rq_issue"),
    ("disk_bio_backmerge", "block_bio_backmerge"),
    ("disk_bio_frontmerge", "block_bio_frontmerge"),
    ("disk_io_start", "block_io_start"),
    ("disk_split", "block_split"),
    ("disk_bio_queue", "block_bio_queue"),
];

/// The kernel struct offsets and flag values the programs use, from BTF.
fn offsets() -> Result<common::Offsets, ProbeError> {
    let at = |ty, path| ebpf::kernel_offset(NAME, ty, path);
    // The operation codes the programs compare with are fixed since 4.10:
    // refuse a kernel where they moved rather than misfile every request.
    for (name, want) in [
        ("REQ_OP_READ", common::REQ_OP_READ),
        ("REQ_OP_WRITE", common::REQ_OP_WRITE),
        ("REQ_OP_FLUSH", common::REQ_OP_FLUSH),
        ("REQ_OP_DISCARD", common::REQ_OP_DISCARD),
    ] {
        let v = ebpf::kernel_enum_value(NAME, "req_op", name)?;
        if v != i64::from(want) {
            return Err(ProbeError::Config {
                probe: NAME,
                detail: format!("{name} is {v} on this kernel, hostprobe expects {want}; please report this with the kernel version"),
            });
        }
    }
    let preflush = ebpf::kernel_enum_value(NAME, "req_flag_bits", "__REQ_PREFLUSH")?;
    let req_preflush =
        u32::try_from(preflush).ok().and_then(|b| 1u32.checked_shl(b)).ok_or_else(|| ProbeError::Config {
            probe: NAME,
            detail: format!("__REQ_PREFLUSH is bit {preflush} on this kernel, outside the 32-bit request flags"),
        })?;
    let (disk_major, disk_first_minor) = (at("gendisk", "major")?, at("gendisk", "first_minor")?);
    if disk_first_minor != disk_major + 4 {
        return Err(ProbeError::Config {
            probe: NAME,
            detail: format!(
                "gendisk.first_minor is at {disk_first_minor}, not right after major ({disk_major}) as the disk \
                 probe reads them; please report this with the kernel version"
            ),
        });
    }
    Ok(common::Offsets {
        rq_q: at("request", "q")?,
        rq_cmd_flags: at("request", "cmd_flags")?,
        rq_data_len: at("request", "__data_len")?,
        rq_bio: at("request", "bio")?,
        q_disk: at("request_queue", "disk")?,
        bio_bdev: at("bio", "bi_bdev")?,
        bio_opf: at("bio", "bi_opf")?,
        bio_size: at("bio", "bi_iter.bi_size")?,
        bdev_disk: at("block_device", "bd_disk")?,
        disk_major,
        disk_first_minor,
        req_preflush,
    })
}

/// One process's I/O to one device with one operation over one interval.
#[derive(Debug, Clone, Default)]
pub struct DiskData {
    /// I/Os made: requests, and bios merged into a request already made.
    pub count: u64,
    /// Of `count`, those that joined another request (`count - merged` is
    /// what `/proc/diskstats` counts).
    pub merged: u64,
    pub bytes: u64,
    pub errors: u64,
    /// Bio submitted to issue; requests seen made and issued.
    pub queue: Dist,
    /// Issue to completion; requests seen issued.
    pub service: Dist,
    /// Bio submitted to completion; requests seen made.
    pub total: Dist,
}

impl DiskData {
    fn between(now: &Stats, before: &Stats) -> Self {
        let dist = |h: fn(&Stats) -> (&[u32; agent_common::hist::BUCKETS], u64, u64)| {
            let ((hn, mn, sn), (hb, mb, sb)) = (h(now), h(before));
            Dist::between(hn, hb, mn, mb, sn, sb)
        };
        Self {
            count: now.count.wrapping_sub(before.count),
            merged: now.merged.wrapping_sub(before.merged),
            bytes: now.bytes.wrapping_sub(before.bytes),
            errors: now.errors.wrapping_sub(before.errors),
            queue: dist(|s| (&s.queue, s.queue_max_ns, s.queue_sum_ns)),
            service: dist(|s| (&s.service, s.service_max_ns, s.service_sum_ns)),
            total: dist(|s| (&s.total, s.total_max_ns, s.total_sum_ns)),
        }
    }

    pub fn merge(&mut self, o: &DiskData) {
        self.count += o.count;
        self.merged += o.merged;
        self.bytes += o.bytes;
        self.errors += o.errors;
        self.queue.merge(&o.queue);
        self.service.merge(&o.service);
        self.total.merge(&o.total);
    }
}

/// Per-device totals of an interval, counted as `/proc/diskstats` counts
/// them: requests (`count` less `merged` of every process, and of those
/// whose submitter was not seen), with flushes as the flushes the device ran
/// (the block layer serves concurrent flush requests with one), and each
/// process's flush request (an empty write) counted in `write` (its latency
/// stays under the process's `flush`).
pub fn device_totals<'a>(
    processes: impl Iterator<Item = &'a BTreeMap<(u32, Op), DiskData>>,
) -> BTreeMap<(u32, Op), DiskData> {
    let mut out = BTreeMap::<(u32, Op), DiskData>::new();
    for disk in processes {
        for ((dev, op), d) in disk {
            match op {
                Op::Flush => out.entry((*dev, Op::Write)).or_default().count += d.count - d.merged,
                Op::DeviceFlush => out.entry((*dev, Op::Flush)).or_default().merge(d),
                op => out.entry((*dev, *op)).or_default().merge(d),
            }
        }
    }
    for d in out.values_mut() {
        d.count -= d.merged;
        d.merged = 0;
    }
    out
}

pub struct DiskProbe {
    /// Owns the programs and their links: dropping it detaches everything.
    bpf: Ebpf,
    stats: HashMap<MapData, Key, Stats>,
    stats_reader: ebpf::BatchReader<Key, Stats>,
    inflight: HashMap<MapData, u64, common::Req>,
    inflight_reader: ebpf::BatchReader<u64, common::Req>,
    /// Stale in-flight records swept so far, and at the last report.
    swept: u64,
    swept_reported: u64,
    counters: super::Counters,
    prev: StdHashMap<Key, Stats>,
    status: ProbeStatus,
}

fn map_err(map: &'static str, detail: impl ToString) -> ProbeError {
    ProbeError::Map { probe: NAME, map, detail: detail.to_string() }
}

impl DiskProbe {
    pub fn load(opts: &Options) -> Result<Self, ProbeError> {
        for (_, tracepoint) in PROGRAMS {
            ebpf::expect_event(NAME, "block", tracepoint, &[])?;
        }
        let offsets = offsets()?;

        let filters = FilterGlobals::new(opts);
        let mut loader = ebpf::loader();
        filters.apply(&mut loader);
        loader.override_global(common::GLOBAL_OFFSETS, &offsets, true);
        let mut bpf = ebpf::load(NAME, OBJECT, &mut loader)?;
        super::fill_pids(&mut bpf, NAME, common::MAP_PIDS, &opts.pids)?;
        for (program, tracepoint) in PROGRAMS {
            ebpf::attach_raw_tracepoint(&mut bpf, NAME, program, tracepoint)?;
        }

        let maps = ebpf::map_sizes(&bpf);
        let mut take = |name: &'static str| bpf.take_map(name).ok_or_else(|| map_err(name, "missing"));
        let stats = take(common::MAP_STATS)?;
        let stats_reader = ebpf::BatchReader::new(&stats).map_err(|e| map_err("DISK_STATS", e))?;
        let stats = HashMap::try_from(stats).map_err(|e| map_err("DISK_STATS", e))?;
        let inflight = take(common::MAP_INFLIGHT)?;
        let inflight_reader = ebpf::BatchReader::new(&inflight).map_err(|e| map_err("DISK_INFLIGHT", e))?;
        let inflight = HashMap::try_from(inflight).map_err(|e| map_err("DISK_INFLIGHT", e))?;
        let counters = super::Counters::new(
            NAME,
            common::MAP_COUNTERS,
            take(common::MAP_COUNTERS)?,
            Counter::ALL.iter().map(|c| (c.name(), c.is_error())).collect(),
        )?;
        Ok(Self {
            bpf,
            stats,
            stats_reader,
            inflight,
            inflight_reader,
            swept: 0,
            swept_reported: 0,
            counters,
            prev: StdHashMap::new(),
            status: ProbeStatus::active(NAME, maps),
        })
    }

    /// Deletes in-flight records older than [`STALE_NS`] at `now`
    /// (CLOCK_MONOTONIC ns, the clock of `bpf_ktime_get_ns`): requests whose
    /// completion will not come to us (lost to a full map or to the kernel
    /// freeing a request without completing it). Returns how many went.
    fn sweep(&mut self, now: u64) -> Result<u64, ProbeError> {
        let stale: Vec<u64> = self
            .inflight_reader
            .read()
            .map_err(|e| ProbeError::Read { probe: NAME, map: "DISK_INFLIGHT", detail: e.to_string() })?
            .filter(|(_, r)| now.saturating_sub(r.queued_ns.max(r.issued_ns)) > STALE_NS)
            .map(|(k, _)| *k)
            .collect();
        let mut swept = 0;
        for k in &stale {
            // Gone already: it completed between the read and now.
            if self.inflight.remove(k).is_ok() {
                swept += 1;
            }
        }
        self.swept += swept;
        Ok(swept)
    }
}

/// A request in flight this long lost its completion: the block layer times
/// requests out after 30 s (SCSI retries a few times), and a record is
/// reused anyway when its request is.
const STALE_NS: u64 = 300_000_000_000;

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
        let reader = self.stats_reader.read().map_err(|e| ProbeError::Read {
            probe: NAME,
            map: "DISK_STATS",
            detail: e.to_string(),
        })?;
        for (k, v) in reader {
            entries += 1;
            let prev = self.prev.entry(*k).or_insert(Stats::ZERO);
            if prev == v {
                continue;
            }
            let d = DiskData::between(v, prev);
            *prev = *v;
            out.process(k.tgid).disk.entry((k.dev, Op::from_u32(k.op))).or_default().merge(&d);
        }
        entries -= super::reclaim(&mut self.prev, &mut self.stats, &dead, |k| k.tgid);
        self.status.set_entries(common::MAP_STATS, entries);
        self.sweep(super::monotonic_ns())?;
        self.counters.read(&self.bpf, &mut self.status)?;
        let swept = self.swept - self.swept_reported;
        self.swept_reported = self.swept;
        self.status.counters.insert("stale_swept", swept);
        self.status.lost += swept;
        Ok(())
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

#[cfg(test)]
mod tests {
    use super::*;

    /// The sweep on the real kernel map: a record older than the limit goes
    /// and is counted, a fresh one stays. Needs root (loads the probe).
    #[test]
    fn stale_in_flight_records_are_swept_and_counted() {
        crate::ebpf::ensure_tracefs().expect("tracefs");
        let mut p = DiskProbe::load(&Options::default()).expect("load the disk probe (as root)");
        let now = crate::probes::monotonic_ns();
        let rec = |at: u64| common::Req { queued_ns: at, issued_ns: 0, tgid: 1, dev: 0, op: 0, len: 0 };
        // Addresses no kernel request has (not kernel space).
        let (old, fresh) = (0x1000u64, 0x2000u64);
        p.inflight.insert(old, rec(now - STALE_NS - 1_000_000_000), 0).unwrap();
        p.inflight.insert(fresh, rec(now), 0).unwrap();
        p.collect(&mut Interval::default()).unwrap();
        assert!(p.inflight.get(&old, 0).is_err(), "the stale record is still there");
        assert!(p.inflight.get(&fresh, 0).is_ok(), "the fresh record was swept");
        let status = p.status();
        assert_eq!(status.counters.get("stale_swept"), Some(&1), "{:?}", status.counters);
        assert!(status.lost >= 1);
        // Counted once: the next interval sweeps nothing.
        p.collect(&mut Interval::default()).unwrap();
        assert_eq!(p.status().counters.get("stale_swept"), Some(&0));
    }
}

#[cfg(test)]
mod object_tests {
    use super::*;

    #[test]
    fn the_object_has_every_name_this_side_uses() {
        let maps = [
            common::MAP_STATS,
            common::MAP_INFLIGHT,
            common::MAP_SUBMITS,
            common::MAP_PIDS,
            common::MAP_COUNTERS,
            common::MAP_ZERO,
        ];
        let programs: Vec<&str> = PROGRAMS.iter().map(|p| p.0).collect();
        ebpf::assert_object_has(
            OBJECT,
            &maps,
            &programs,
            &[&[common::GLOBAL_OFFSETS][..], &ebpf::FILTER_GLOBALS].concat(),
        );
    }
}

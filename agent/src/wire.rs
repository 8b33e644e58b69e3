//! The wire form of a report (`proto/hostprobe/v1`): generated types, and
//! the conversions between them and the agent's own.

use crate::{hist::Histogram, report};

#[allow(clippy::all, missing_docs)]
pub mod pb {
    tonic::include_proto!("hostprobe.v1");
}

/// `Histogram.layout` of the shared layout (agent-common/src/hist.rs).
pub const LAYOUT: u32 = 1;

/// A histogram on the wire; `sum_ns` is `None` where the probe keeps no
/// exact sum (receivers then publish none rather than a guess).
pub fn histogram(h: &Histogram, max_ns: u64, sum_ns: Option<u64>) -> pb::Histogram {
    let (bucket, count) = h.nonzero().map(|(i, c)| (i as u32, c)).unzip();
    pb::Histogram { layout: LAYOUT, bucket, count, max_ns, sum_ns }
}

/// Checks a histogram from the wire without building it (cheap enough for
/// every histogram of every report); the error names what is wrong.
pub fn check(h: &pb::Histogram) -> Result<(), String> {
    if h.layout != LAYOUT {
        return Err(format!("histogram layout {} (this collector knows layout {LAYOUT})", h.layout));
    }
    if h.bucket.len() != h.count.len() {
        return Err(format!("histogram with {} buckets but {} counts", h.bucket.len(), h.count.len()));
    }
    if let Some(b) = h.bucket.iter().find(|b| **b as usize >= agent_common::hist::BUCKETS) {
        return Err(format!("histogram bucket {b} out of range"));
    }
    if h.count.iter().try_fold(0u64, |t, c| t.checked_add(*c)).is_none() {
        return Err("histogram counts add up past 2^64".to_string());
    }
    Ok(())
}

/// Our histogram from the wire; an error names what is wrong with it.
pub fn from_wire(h: &pb::Histogram) -> Result<Histogram, String> {
    check(h)?;
    let mut out = Histogram::default();
    for (b, c) in h.bucket.iter().zip(&h.count) {
        if *b as usize >= agent_common::hist::BUCKETS {
            return Err(format!("histogram bucket {b} out of range"));
        }
        if !out.add(*b as usize, *c) {
            return Err("histogram count overflows".to_string());
        }
    }
    Ok(out)
}

fn latency(name: &str, nr: u32, l: &report::Latency) -> pb::SyscallStats {
    pb::SyscallStats {
        name: name.to_string(),
        nr,
        count: l.count,
        errors: l.errors,
        total_ns: l.total_ns,
        missed_starts: l.missed_starts,
        latency: Some(histogram(&l.hist, l.max_ns, Some(l.sum_ns))),
    }
}

fn dist(d: &report::DistReport) -> Option<pb::Histogram> {
    Some(histogram(&d.hist, d.max_ns, Some(d.sum_ns)))
}

fn disk(d: &report::DiskReport) -> pb::DiskStats {
    pb::DiskStats {
        device: d.device.clone(),
        op: d.op.to_string(),
        count: d.count,
        bytes: d.bytes,
        errors: d.errors,
        merged: d.merged,
        queue: dist(&d.queue),
        service: dist(&d.service),
        total: dist(&d.total),
    }
}

fn process(p: &report::ProcessReport) -> pb::Process {
    pb::Process {
        pid: p.pid,
        comm: p.meta.comm.clone(),
        exe: p.meta.exe.clone().unwrap_or_default(),
        cgroup: p.meta.cgroup.clone().unwrap_or_default(),
        container_id: p.meta.container_id.clone().unwrap_or_default(),
        cmdline: p.meta.cmdline.clone().unwrap_or_default(),
        exited: p.exited,
        merged: 1,
        syscalls: p.syscalls.iter().map(|s| latency(&s.name, s.nr, &s.latency)).collect(),
        disk: p.disk.iter().map(disk).collect(),
        offcpu: p.offcpu.as_ref().map(offcpu),
        tcp: p.tcp.iter().map(tcp).collect(),
        k8s_namespace_name: p.meta.k8s.as_ref().map(|k| k.namespace.clone()).unwrap_or_default(),
        k8s_pod_name: p.meta.k8s.as_ref().map(|k| k.pod.clone()).unwrap_or_default(),
        k8s_container_name: p.meta.k8s.as_ref().map(|k| k.container.clone()).unwrap_or_default(),
    }
}

fn offcpu(o: &report::OffcpuReport) -> pb::OffcpuStats {
    pb::OffcpuStats {
        on_cpu_ns: o.on_cpu_ns,
        runqueue_ns: o.runqueue_ns,
        blocked_io_ns: o.blocked_io_ns,
        sleep_ns: o.sleep_ns,
        runqueue: dist(&o.runqueue),
        offcpu: dist(&o.offcpu),
        sleep_by_syscall: o
            .sleep_by_syscall
            .iter()
            .map(|s| pb::SleepBySyscall { name: s.name.clone(), ns: s.ns, count: s.count })
            .collect(),
    }
}

fn tcp(t: &report::TcpReport) -> pb::TcpStats {
    pb::TcpStats {
        remote: t.remote.clone(),
        local: t.local.clone(),
        state: t.state.to_string(),
        direction: t.direction.to_string(),
        rtt: Some(histogram(&t.rtt.hist, t.rtt.max_ns, Some(t.rtt.sum_ns))),
        rtt_last_us: t.rtt_last_us,
        connect: Some(histogram(&t.connect.hist, t.connect.max_ns, Some(t.connect.sum_ns))),
        refused: t.refused,
        timeouts: t.timeouts,
        retransmits: t.retransmits,
        resets: t.resets,
        bytes_sent: t.bytes_sent,
        bytes_received: t.bytes_received,
        connections: t.connections,
    }
}

/// An interval's report on the wire (identity and sequence are the
/// exporter's to fill in).
pub fn report(r: &report::Report) -> pb::Report {
    let end = r.end_unix_ns;
    pb::Report {
        agent: None,
        sequence: 0,
        interval_start_unix_ns: end - r.interval_ns as i64,
        interval_end_unix_ns: end,
        processes: r.processes.iter().map(process).collect(),
        other: r.other.as_ref().map(|o| pb::Process {
            comm: "other".into(),
            merged: o.processes,
            syscalls: o.syscalls.iter().map(|s| latency(&s.name, s.nr, &s.latency)).collect(),
            disk: o.disk.iter().map(disk).collect(),
            offcpu: o.offcpu.as_ref().map(offcpu),
            tcp: o.tcp.iter().map(tcp).collect(),
            ..Default::default()
        }),
        devices: r.devices.iter().map(disk).collect(),
        probes: r
            .probes
            .iter()
            .map(|p| pb::ProbeHealth {
                name: p.name.to_string(),
                active: p.active,
                error: p.error.clone().unwrap_or_default(),
                lost: p.lost,
            })
            .collect(),
        dropped_reports: 0,
        tcp_unknown_owner: r.tcp_unknown_owner.iter().map(tcp).collect(),
    }
}

/// A report framed for a file (the collector's journal, the agent's spool):
/// `HPR1`, the payload's length (u32, little-endian), its CRC-32, then the
/// payload. The checksum tells a damaged record from a good one.
pub fn frame(payload: &[u8]) -> Vec<u8> {
    let mut r = Vec::with_capacity(FRAME_HEADER + payload.len());
    r.extend_from_slice(FRAME_MAGIC);
    r.extend_from_slice(&(payload.len() as u32).to_le_bytes());
    r.extend_from_slice(&crc32fast::hash(payload).to_le_bytes());
    r.extend_from_slice(payload);
    r
}

pub const FRAME_MAGIC: &[u8; 4] = b"HPR1";
pub const FRAME_HEADER: usize = 12;
/// Larger payloads are not records (messages are at most a few MiB).
const FRAME_MAX: usize = 256 << 20;

/// The payload of the record at the start of `data`, if it checks out.
pub fn unframe(data: &[u8]) -> Option<&[u8]> {
    if data.len() < FRAME_HEADER || &data[..4] != FRAME_MAGIC {
        return None;
    }
    let len = u32::from_le_bytes(data[4..8].try_into().ok()?) as usize;
    let crc = u32::from_le_bytes(data[8..12].try_into().ok()?);
    let payload = data.get(FRAME_HEADER..FRAME_HEADER + len).filter(|_| len <= FRAME_MAX)?;
    (crc32fast::hash(payload) == crc).then_some(payload)
}

/// What the fuzz properties (the `fuzz_*` tests; `cargo xtask fuzz` runs
/// them a million times each) share: their case count, realistic inputs
/// built by the real writers, and the damage done to them.
#[cfg(test)]
pub(crate) mod fuzzing {
    use std::ops::Range;

    use proptest::{prelude::*, sample::Index};

    use super::pb;

    /// `PROPTEST_CASES` when set (`cargo xtask fuzz`), else `smoke`: the
    /// count every `cargo test` runs (CI). No failure files: what a run
    /// finds is kept as a named regression test instead.
    pub fn config(smoke: u32) -> ProptestConfig {
        let cases = std::env::var("PROPTEST_CASES").ok().and_then(|v| v.parse().ok()).unwrap_or(smoke);
        ProptestConfig { cases, failure_persistence: None, ..ProptestConfig::default() }
    }

    /// A report as an agent sends it: the agent's own report model (every
    /// probe, three processes and `other`) through [`super::report`], with
    /// identity and sequence, ending `end_ns`.
    pub fn sample_report(sequence: u64, epoch: u64, end_ns: i64) -> pb::Report {
        let mut r = super::report(&crate::report::tests::sample());
        r.agent = Some(pb::AgentIdentity {
            agent_id: "fuzz-agent".into(),
            host_name: "fuzz-host".into(),
            epoch,
            ..Default::default()
        });
        r.sequence = sequence;
        let len = r.interval_end_unix_ns - r.interval_start_unix_ns;
        (r.interval_start_unix_ns, r.interval_end_unix_ns) = (end_ns - len, end_ns);
        r
    }

    /// One damage to a file or message.
    #[derive(Debug, Clone)]
    pub enum Damage {
        /// XOR of one byte with a non-zero mask.
        Flip(Index, u8),
        Insert(Index, Vec<u8>),
        Delete(Index, usize),
        /// Everything from here on lost (a torn write).
        Truncate(Index),
    }

    pub fn damage() -> impl Strategy<Value = Damage> {
        prop_oneof![
            (any::<Index>(), 1..=255u8).prop_map(|(i, m)| Damage::Flip(i, m)),
            (any::<Index>(), proptest::collection::vec(any::<u8>(), 1..16)).prop_map(|(i, b)| Damage::Insert(i, b)),
            (any::<Index>(), 1..16usize).prop_map(|(i, n)| Damage::Delete(i, n)),
            any::<Index>().prop_map(Damage::Truncate),
        ]
    }

    impl Damage {
        /// Damages `data` (not empty); returns the bytes of the original it
        /// changed or removed (an insertion: an empty range where it went).
        pub fn apply(&self, data: &mut Vec<u8>) -> Range<usize> {
            let len = data.len();
            match self {
                Damage::Flip(i, mask) => {
                    let at = i.index(len);
                    data[at] ^= mask;
                    at..at + 1
                }
                Damage::Insert(i, bytes) => {
                    let at = i.index(len + 1);
                    data.splice(at..at, bytes.iter().copied());
                    at..at
                }
                Damage::Delete(i, n) => {
                    let at = i.index(len);
                    let end = (at + n).min(len);
                    data.drain(at..end);
                    at..end
                }
                Damage::Truncate(i) => {
                    let at = i.index(len);
                    data.truncate(at);
                    at..len
                }
            }
        }
    }

    /// Whether damage `d` to a file reaches the record at `record`: it
    /// changes or removes bytes of it, or inserts bytes inside it.
    pub fn touches(d: &Range<usize>, record: &Range<usize>) -> bool {
        if d.is_empty() {
            record.start < d.start && d.start < record.end
        } else {
            d.start < record.end && record.start < d.end
        }
    }
}

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

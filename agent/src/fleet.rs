//! Fleet diagnosis: the rules of [`crate::diagnose`] over a collector's
//! window. Each agent's reports in the window are merged per process (times
//! and counts added, histograms bucket by bucket), turned back into the
//! report model, and diagnosed over the intervals' total length.

use std::collections::BTreeMap;

use crate::{
    diagnose,
    hist::Dist,
    probes::{disk::DiskData, offcpu::OffcpuData, syscall::SyscallData},
    procinfo::ProcMeta,
    report::{DiskReport, Latency, OffcpuReport, ProcessReport, Report, SyscallReport, TcpReport},
    status::ProbeStatus,
    wire::{self, pb},
};

/// A distribution from the wire (empty when absent or malformed: the
/// collector checked it on receipt).
fn dist(h: &Option<pb::Histogram>) -> Dist {
    let Some(h) = h else { return Dist::default() };
    let Ok(hist) = wire::from_wire(h) else { return Dist::default() };
    Dist { hist, max_ns: h.max_ns, sum_ns: h.sum_ns.unwrap_or(0) }
}

fn op_name(op: &str) -> &'static str {
    ["read", "write", "flush", "discard"].into_iter().find(|o| *o == op).unwrap_or("other")
}

#[derive(Default)]
struct Tcp {
    rtt: Dist,
    rtt_last_us: u64,
    refused: u64,
    timeouts: u64,
    retransmits: u64,
    resets: u64,
    bytes_sent: u64,
    bytes_received: u64,
    connections: u64,
}

/// One process's figures over several reports.
#[derive(Default)]
struct Process {
    comm: String,
    cgroup: String,
    container_id: String,
    exited: bool,
    syscalls: BTreeMap<(u32, String), SyscallData>,
    disk: BTreeMap<(String, &'static str), DiskData>,
    offcpu: Option<OffcpuData>,
    tcp: BTreeMap<(String, bool), Tcp>,
}

fn add_disk(into: &mut BTreeMap<(String, &'static str), DiskData>, d: &pb::DiskStats) {
    let data = DiskData {
        count: d.count,
        merged: 0,
        bytes: d.bytes,
        errors: d.errors,
        queue: dist(&d.queue),
        service: dist(&d.service),
        total: dist(&d.total),
    };
    into.entry((d.device.clone(), op_name(&d.op))).or_default().merge(&data);
}

impl Process {
    fn add(&mut self, p: &pb::Process) {
        self.comm.clone_from(&p.comm);
        self.cgroup.clone_from(&p.cgroup);
        self.container_id.clone_from(&p.container_id);
        self.exited |= p.exited;
        for s in &p.syscalls {
            let lat = s.latency.as_ref();
            let d = SyscallData {
                count: s.count,
                errors: s.errors,
                total_ns: s.total_ns,
                missed_starts: s.missed_starts,
                max_ns: lat.map_or(0, |h| h.max_ns),
                hist: dist(&s.latency).hist,
            };
            self.syscalls.entry((s.nr, s.name.clone())).or_default().merge(&d);
        }
        for d in &p.disk {
            add_disk(&mut self.disk, d);
        }
        if let Some(o) = &p.offcpu {
            let data = OffcpuData {
                on_cpu_ns: o.on_cpu_ns,
                runqueue_ns: o.runqueue_ns,
                blocked_ns: o.blocked_io_ns,
                sleep_ns: o.sleep_ns,
                runqueue: dist(&o.runqueue),
                offcpu: dist(&o.offcpu),
                sleep_by_syscall: o
                    .sleep_by_syscall
                    .iter()
                    .filter_map(|s| Some((crate::syscalls::number(&s.name)?, (s.ns, s.count))))
                    .collect(),
                kernel_thread: false,
            };
            self.offcpu.get_or_insert_with(Default::default).merge(&data);
        }
        for t in &p.tcp {
            let e = self.tcp.entry((t.remote.clone(), t.direction == "connect")).or_default();
            e.rtt.merge(&dist(&t.rtt));
            if t.rtt_last_us != 0 {
                e.rtt_last_us = t.rtt_last_us;
            }
            e.refused += t.refused;
            e.timeouts += t.timeouts;
            e.retransmits += t.retransmits;
            e.resets += t.resets;
            e.bytes_sent += t.bytes_sent;
            e.bytes_received += t.bytes_received;
            e.connections += t.connections;
        }
    }

    /// Back into the report model, for the rules.
    fn report(&self, pid: u32) -> ProcessReport {
        let mut total = SyscallData::default();
        let mut syscalls: Vec<SyscallReport> = self
            .syscalls
            .iter()
            .map(|((nr, name), d)| {
                total.merge(d);
                SyscallReport { name: name.clone(), nr: *nr, latency: d.into() }
            })
            .collect();
        syscalls.sort_by_key(|s| std::cmp::Reverse(s.latency.total_ns));
        let tcp = self
            .tcp
            .iter()
            .map(|((remote, connect), t)| {
                let us = |q| t.rtt.hist.quantile(q, t.rtt.max_ns).map_or(t.rtt_last_us, |ns| ns / 1_000);
                TcpReport {
                    remote: remote.clone(),
                    local: "*".into(),
                    state: "",
                    direction: if *connect { "connect" } else { "accept" },
                    rtt_p50_us: us(0.5),
                    rtt_p99_us: us(0.99),
                    rtt_last_us: t.rtt_last_us,
                    connect_p50_us: None,
                    connect_p99_us: None,
                    failed: None,
                    refused: t.refused,
                    timeouts: t.timeouts,
                    retransmits: t.retransmits,
                    resets: t.resets,
                    bytes_sent: t.bytes_sent,
                    bytes_received: t.bytes_received,
                    connections: t.connections,
                    rtt: t.rtt.clone(),
                    connect: Dist::default(),
                }
            })
            .collect();
        ProcessReport {
            pid,
            meta: ProcMeta {
                comm: self.comm.clone(),
                cgroup: Some(self.cgroup.clone()).filter(|c| !c.is_empty()),
                container_id: Some(self.container_id.clone()).filter(|c| !c.is_empty()),
                ..Default::default()
            },
            exited: self.exited,
            syscall_total: Latency::from(&total),
            syscalls,
            disk: disk_list(&self.disk),
            offcpu: self.offcpu.as_ref().map(OffcpuReport::from),
            tcp,
            verdict: None,
        }
    }
}

fn disk_list(disk: &BTreeMap<(String, &'static str), DiskData>) -> Vec<DiskReport> {
    disk.iter().map(|((device, op), d)| DiskReport::new(device.clone(), op, d)).collect()
}

/// One agent's reports in the window, merged.
#[derive(Default)]
pub struct AgentWindow {
    host_name: String,
    window_ns: u64,
    processes: BTreeMap<u32, Process>,
    devices: BTreeMap<(String, &'static str), DiskData>,
}

impl AgentWindow {
    pub fn add(&mut self, r: &pb::Report) {
        if let Some(a) = &r.agent {
            self.host_name.clone_from(&a.host_name);
        }
        self.window_ns += (r.interval_end_unix_ns - r.interval_start_unix_ns).max(0) as u64;
        for p in &r.processes {
            self.processes.entry(p.pid).or_default().add(p);
        }
        for d in &r.devices {
            add_disk(&mut self.devices, d);
        }
    }
}

/// One report back in the report model (its processes, devices and
/// probes' health): how `hostprobe record --collector` records a window
/// the collector holds as `hostprobe record` records the host.
pub fn interval_report(r: &pb::Report) -> Report {
    let mut w = AgentWindow::default();
    w.add(r);
    let probes = r
        .probes
        .iter()
        .map(|p| {
            let name = crate::probes::ALL.iter().map(|s| s.name).find(|n| *n == p.name).unwrap_or("unknown");
            let mut s = ProbeStatus::active(name, Vec::new());
            s.active = p.active;
            s.error = Some(p.error.clone()).filter(|e| !e.is_empty());
            s.lost = p.lost;
            s
        })
        .collect();
    Report {
        time: String::new(),
        interval_ns: w.window_ns,
        end_unix_ns: r.interval_end_unix_ns,
        host: w.host_name,
        processes: w.processes.iter().map(|(pid, p)| p.report(*pid)).collect(),
        other: None,
        devices: disk_list(&w.devices),
        tcp_unknown_owner: Vec::new(),
        processes_over_cap: 0,
        probes,
    }
}

/// Every agent's processes (named `comm`, unless empty), diagnosed over
/// its window, worst first; at most `limit`.
pub fn diagnose_fleet(agents: &BTreeMap<String, AgentWindow>, comm: &str, limit: usize) -> Vec<pb::Diagnosis> {
    let mut all: Vec<(diagnose::Diagnosis, &str, &AgentWindow)> = Vec::new();
    for (id, a) in agents {
        let devices = disk_list(&a.devices);
        for (pid, p) in a.processes.iter().filter(|(_, p)| comm.is_empty() || p.comm == comm) {
            if let Some(d) = diagnose::diagnose(&p.report(*pid), &devices, a.window_ns) {
                all.push((d, id, a));
            }
        }
    }
    all.sort_by_key(|(d, id, _)| (diagnose::rank_key(d), *id));
    all.truncate(limit);
    all.into_iter()
        .map(|(d, id, a)| pb::Diagnosis {
            agent_id: id.to_string(),
            host_name: a.host_name.clone(),
            pid: d.pid,
            comm: d.comm,
            kind: d.verdict.kind.name().into(),
            detail: d.verdict.detail,
            evidence: d.verdict.evidence,
            next: d.verdict.next,
            shares: Some(pb::Shares {
                on_cpu: d.shares.on_cpu,
                runqueue: d.shares.runqueue,
                disk: d.shares.disk,
                network: d.shares.network,
                lock: d.shares.lock,
                sleep: d.shares.sleep,
                other: d.shares.other,
            }),
            lost_ns: d.verdict.weight_ns,
            window_ns: a.window_ns,
        })
        .collect()
}

/// `hostprobe query --diagnose`'s answer: a table for people, or JSON.
pub fn render(resp: &pb::QueryResponse, json: bool) -> String {
    if json {
        let list: Vec<serde_json::Value> = resp
            .diagnoses
            .iter()
            .map(|d| {
                let s = d.shares.unwrap_or_default();
                serde_json::json!({
                    "host": d.host_name, "agent_id": d.agent_id, "pid": d.pid, "comm": d.comm,
                    "window_ns": d.window_ns, "lost_ns": d.lost_ns,
                    "shares": {"on_cpu": s.on_cpu, "runqueue": s.runqueue, "disk": s.disk, "network": s.network,
                               "lock": s.lock, "sleep": s.sleep, "other": s.other},
                    "verdict": {"kind": d.kind, "detail": d.detail, "evidence": d.evidence, "next": d.next},
                })
            })
            .collect();
        let v = serde_json::json!({"agents": resp.agents, "reports": resp.reports, "processes": list});
        return format!("{v}\n");
    }
    let mut out = format!("{} agents, {} reports in the window; worst first\n", resp.agents, resp.reports);
    out.push_str(&format!("{:<20} {:>8} {:<16} {:<14} {}\n", "HOST", "PID", "COMM", "VERDICT", "DETAIL"));
    for d in &resp.diagnoses {
        out.push_str(&format!("{:<20} {:>8} {:<16} {:<14} {}\n", d.host_name, d.pid, d.comm, d.kind, d.detail));
        for e in &d.evidence {
            out.push_str(&format!("{:>47} - {e}\n", ""));
        }
    }
    out
}

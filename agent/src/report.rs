//! One interval's report: what every output (terminal, JSON, and later the
//! exporters) is built from. The JSON form is an interface scripts depend on:
//! fields are only ever added.

use std::cmp::Reverse;

use serde::Serialize;

use std::collections::BTreeMap;

use agent_common::disk::Op;

use crate::{
    hist::{Dist, Histogram},
    probes::{
        disk::{DeviceNames, DiskData},
        offcpu::OffcpuData,
        syscall::SyscallData,
        Interval, ProbeStatus, ProcessData,
    },
    procinfo::{ProcCache, ProcMeta},
    syscalls,
};

#[derive(Debug, Serialize)]
pub struct Report {
    /// End of the interval, RFC 3339.
    pub time: String,
    /// Measured length of the interval.
    pub interval_ns: u64,
    /// End of the interval, ns since the Unix epoch (for exporters).
    #[serde(skip)]
    pub end_unix_ns: i64,
    pub host: String,
    /// The top processes by time spent in syscalls, largest first.
    pub processes: Vec<ProcessReport>,
    /// Everything below the top, merged: every probe's figures, so that
    /// `processes` plus `other` are the host's totals whatever `--top` is.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub other: Option<OtherReport>,
    /// Block I/O per device and operation, over all processes (including
    /// requests whose submitter was not seen).
    pub devices: Vec<DiskReport>,
    /// TCP connections no process was seen using (yet): accepted by the
    /// kernel, never read or written since the probe attached.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub tcp_unknown_owner: Vec<TcpReport>,
    /// Processes past `--max-processes` this interval: their figures are in
    /// `other` (counted in its `processes`), merged before ranking.
    #[serde(skip_serializing_if = "is_zero")]
    pub processes_over_cap: u64,
    pub probes: Vec<ProbeStatus>,
}

#[derive(Debug, Serialize)]
pub struct ProcessReport {
    pub pid: u32,
    #[serde(flatten)]
    pub meta: ProcMeta,
    /// The process had exited when the interval was read.
    pub exited: bool,
    /// All of the process's syscalls together.
    pub syscall_total: Latency,
    /// Per syscall, most time first.
    pub syscalls: Vec<SyscallReport>,
    /// Block I/O the process submitted, per device and operation (absent
    /// when none).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub disk: Vec<DiskReport>,
    /// Where the process's threads spent the interval (absent without the
    /// offcpu probe).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub offcpu: Option<OffcpuReport>,
    /// TCP activity of the interval: each open connection, and the
    /// connections that closed folded into one item per remote endpoint and
    /// direction; most bytes first, at most [`TCP_ITEMS`], the rest merged
    /// into one `other` item.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub tcp: Vec<TcpReport>,
    /// The process's bottleneck in this interval (made by `diagnose`);
    /// absent without the off-CPU probe's figures.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub verdict: Option<crate::verdict::Verdict>,
}

/// TCP items listed per process before the rest merge into `other`.
pub const TCP_ITEMS: usize = 32;

#[derive(Debug, Serialize)]
pub struct TcpReport {
    /// `address:port`, `[v6]:port`, or `other`.
    pub remote: String,
    /// `address:port` of an open connection; `*` for an endpoint's closed
    /// connections and `other`.
    pub local: String,
    /// The connection's TCP state; `CLOSED` for an endpoint's closed
    /// connections.
    pub state: &'static str,
    /// `connect` (active open) or `accept` (passive).
    pub direction: &'static str,
    pub rtt_p50_us: u64,
    pub rtt_p99_us: u64,
    pub rtt_last_us: u64,
    /// Handshake time: SYN sent to established for `connect`; SYN-ACK sent
    /// to the handshake's last ACK for `accept` (the kernel's first RTT
    /// sample of the connection).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub connect_p50_us: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub connect_p99_us: Option<u64>,
    /// `refused` or `timeout`: how the connect of a one-connection item failed.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub failed: Option<&'static str>,
    /// Connects that failed, by reason: refused (reset), timed out.
    #[serde(skip_serializing_if = "is_zero")]
    pub refused: u64,
    #[serde(skip_serializing_if = "is_zero")]
    pub timeouts: u64,
    pub retransmits: u64,
    pub resets: u64,
    pub bytes_sent: u64,
    pub bytes_received: u64,
    /// Connections in this item (1 for an open connection).
    pub connections: u64,
    /// RTT samples and handshake times (for exporters). The RTT's
    /// `sum_ns` is not known (the kernel keeps only the samples' histogram)
    /// and is never exported; the handshake times' sum is exact.
    #[serde(skip)]
    pub rtt: Dist,
    #[serde(skip)]
    pub connect: Dist,
}

fn is_zero(n: &u64) -> bool {
    *n == 0
}

fn tcp_state(s: i32) -> &'static str {
    match s {
        1 => "ESTABLISHED",
        2 => "SYN_SENT",
        3 => "SYN_RECV",
        4 => "FIN_WAIT1",
        5 => "FIN_WAIT2",
        6 => "TIME_WAIT",
        7 => "CLOSE",
        8 => "CLOSE_WAIT",
        9 => "LAST_ACK",
        10 => "LISTEN",
        11 => "CLOSING",
        _ => "UNKNOWN",
    }
}

/// One TCP item being summed: a connection, an endpoint's closed
/// connections, or `other`.
struct TcpItem {
    remote: String,
    local: String,
    state: &'static str,
    direction: &'static str,
    rtt: Dist,
    rtt_last_us: u64,
    connect: Dist,
    failed: Option<&'static str>,
    refused: u64,
    timeouts: u64,
    retransmits: u64,
    resets: u64,
    bytes_sent: u64,
    bytes_received: u64,
    connections: u64,
}

impl TcpItem {
    fn new(remote: String, local: String, state: &'static str, direction: &'static str) -> Self {
        Self {
            remote,
            local,
            state,
            direction,
            rtt: Dist::default(),
            rtt_last_us: 0,
            connect: Dist::default(),
            failed: None,
            refused: 0,
            timeouts: 0,
            retransmits: 0,
            resets: 0,
            bytes_sent: 0,
            bytes_received: 0,
            connections: 0,
        }
    }

    fn add(&mut self, c: &crate::probes::tcp::ConnData) {
        self.rtt.merge(&c.rtt);
        if c.rtt_last_us != 0 {
            self.rtt_last_us = c.rtt_last_us;
        }
        if let Some(ns) = c.connect_ns {
            self.connect.hist.record(ns);
            self.connect.max_ns = self.connect.max_ns.max(ns);
            self.connect.sum_ns += ns;
        }
        self.failed = c.failed;
        self.refused += u64::from(c.failed == Some("refused"));
        self.timeouts += u64::from(c.failed == Some("timeout"));
        self.retransmits += c.retransmits;
        self.resets += c.resets;
        self.bytes_sent += c.bytes_sent;
        self.bytes_received += c.bytes_received;
        self.connections += 1;
    }

    fn merge(&mut self, o: TcpItem) {
        self.rtt.merge(&o.rtt);
        self.connect.merge(&o.connect);
        self.refused += o.refused;
        self.timeouts += o.timeouts;
        self.retransmits += o.retransmits;
        self.resets += o.resets;
        self.bytes_sent += o.bytes_sent;
        self.bytes_received += o.bytes_received;
        self.connections += o.connections;
    }

    fn report(self) -> TcpReport {
        let us = |d: &Dist, q| d.hist.quantile(q, d.max_ns).map(|ns| ns / 1_000);
        let rtt = |q| us(&self.rtt, q).unwrap_or(self.rtt_last_us);
        TcpReport {
            rtt_p50_us: rtt(0.5),
            rtt_p99_us: rtt(0.99),
            rtt_last_us: self.rtt_last_us,
            connect_p50_us: us(&self.connect, 0.5),
            connect_p99_us: us(&self.connect, 0.99),
            failed: if self.connections == 1 { self.failed } else { None },
            remote: self.remote,
            local: self.local,
            state: self.state,
            direction: self.direction,
            refused: self.refused,
            timeouts: self.timeouts,
            retransmits: self.retransmits,
            resets: self.resets,
            bytes_sent: self.bytes_sent,
            bytes_received: self.bytes_received,
            connections: self.connections,
            rtt: self.rtt,
            connect: self.connect,
        }
    }
}

/// A process's TCP items: open connections one by one, closed ones folded
/// into their (remote endpoint, direction); cardinality bounded by
/// [`TCP_ITEMS`] plus `other`.
fn tcp_list(conns: &[crate::probes::tcp::ConnData]) -> Vec<TcpReport> {
    let show = |a: &Option<std::net::SocketAddr>| a.map_or_else(|| "?".to_string(), |a| a.to_string());
    let mut items: Vec<TcpItem> = Vec::new();
    let mut endpoints: BTreeMap<(String, bool), usize> = BTreeMap::new();
    for c in conns {
        let direction = if c.active { "connect" } else { "accept" };
        let at = if c.closed {
            *endpoints.entry((show(&c.remote), c.active)).or_insert_with(|| {
                items.push(TcpItem::new(show(&c.remote), "*".into(), "CLOSED", direction));
                items.len() - 1
            })
        } else {
            items.push(TcpItem::new(show(&c.remote), show(&c.local), tcp_state(c.state), direction));
            items.len() - 1
        };
        items[at].add(c);
    }
    items.sort_by_key(|i| Reverse(i.bytes_sent + i.bytes_received));
    let rest = items.split_off(items.len().min(TCP_ITEMS));
    let mut out: Vec<TcpReport> = items.into_iter().map(TcpItem::report).collect();
    if !rest.is_empty() {
        let mut other = TcpItem::new("other".into(), "*".into(), "", "");
        for i in rest {
            other.merge(i);
        }
        out.push(other.report());
    }
    out
}

/// Thread time of one process over one interval, summed over its threads:
/// on a CPU, waiting for one, blocked in D state, asleep.
#[derive(Debug, Serialize)]
pub struct OffcpuReport {
    /// A kernel thread (or io_uring/vhost worker): its sleep is in no
    /// syscall (absent for user threads).
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub kernel_thread: bool,
    pub on_cpu_ns: u64,
    pub runqueue_ns: u64,
    pub runqueue_p50_ns: u64,
    pub runqueue_p99_ns: u64,
    /// Uninterruptible sleep (D state): mostly disk I/O, some locks.
    pub blocked_io_ns: u64,
    /// Interruptible sleep (S): timers, locks, network and event waits.
    pub sleep_ns: u64,
    /// Episodes off the CPU (leaving it to running again).
    pub offcpu: DistReport,
    /// Run-queue waits: how many, their percentiles and exact sum.
    pub runqueue: DistReport,
    /// Time asleep (S or D) per syscall the threads slept in, most first.
    pub sleep_by_syscall: Vec<SleepReport>,
}

#[derive(Debug, Serialize)]
pub struct SleepReport {
    pub name: String,
    pub ns: u64,
    pub count: u64,
}

impl From<&crate::probes::offcpu::OffcpuData> for OffcpuReport {
    fn from(d: &crate::probes::offcpu::OffcpuData) -> Self {
        let rq: DistReport = (&d.runqueue).into();
        let mut sleep_by_syscall: Vec<SleepReport> = d
            .sleep_by_syscall
            .iter()
            .map(|(nr, (ns, count))| SleepReport { name: syscalls::name(*nr).into_owned(), ns: *ns, count: *count })
            .collect();
        sleep_by_syscall.sort_by_key(|s| Reverse(s.ns));
        Self {
            kernel_thread: d.kernel_thread,
            on_cpu_ns: d.on_cpu_ns,
            runqueue_ns: d.runqueue_ns,
            runqueue_p50_ns: rq.p50_ns,
            runqueue_p99_ns: rq.p99_ns,
            blocked_io_ns: d.blocked_ns,
            sleep_ns: d.sleep_ns,
            offcpu: (&d.offcpu).into(),
            runqueue: rq,
            sleep_by_syscall,
        }
    }
}

/// Block I/O to one device with one operation in one interval.
#[derive(Debug, Serialize)]
pub struct DiskReport {
    pub device: String,
    pub op: &'static str,
    /// I/Os made: requests (each piece of a split bio is one) and bios that
    /// joined a request already made. In `devices`: requests, as
    /// `/proc/diskstats` counts them.
    pub count: u64,
    /// Of `count`, the I/Os that joined another request (absent when none).
    #[serde(skip_serializing_if = "is_zero")]
    pub merged: u64,
    pub bytes: u64,
    pub errors: u64,
    /// Bio submitted to issued to the driver (requests seen made and issued).
    pub queue: DistReport,
    /// Issued to completed (requests seen issued).
    pub service: DistReport,
    /// Bio submitted to completed (requests seen made).
    pub total: DistReport,
}

#[derive(Debug, Clone, Serialize)]
pub struct DistReport {
    pub count: u64,
    pub p50_ns: u64,
    pub p90_ns: u64,
    pub p99_ns: u64,
    pub max_ns: u64,
    /// Exact sum of the values: `sum_ns / count` is the mean (what `iostat`
    /// calls await).
    pub sum_ns: u64,
    #[serde(skip)]
    pub hist: Histogram,
}

impl From<&Dist> for DistReport {
    fn from(d: &Dist) -> Self {
        let q = |q| d.hist.quantile(q, d.max_ns).unwrap_or(0);
        Self {
            count: d.hist.count(),
            p50_ns: q(0.5),
            p90_ns: q(0.9),
            p99_ns: q(0.99),
            max_ns: d.max_ns,
            sum_ns: d.sum_ns,
            hist: d.hist.clone(),
        }
    }
}

fn disk_list(data: &BTreeMap<(u32, Op), DiskData>, names: &mut DeviceNames) -> Vec<DiskReport> {
    data.iter().map(|((dev, op), d)| DiskReport::new(names.name(*dev), op.name(), d)).collect()
}

impl DiskReport {
    pub fn new(device: String, op: &'static str, d: &DiskData) -> DiskReport {
        DiskReport {
            device,
            op,
            count: d.count,
            merged: d.merged,
            bytes: d.bytes,
            errors: d.errors,
            queue: (&d.queue).into(),
            service: (&d.service).into(),
            total: (&d.total).into(),
        }
    }
}

/// The processes below the `--top` cut, merged: the same figures as a
/// process's, so that host totals never depend on `--top`.
#[derive(Debug, Serialize)]
pub struct OtherReport {
    /// How many processes are merged here.
    pub processes: u64,
    pub syscall_total: Latency,
    pub syscalls: Vec<SyscallReport>,
    /// Their block I/O per device and operation.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub disk: Vec<DiskReport>,
    /// Their thread time, summed (absent without the offcpu probe).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub offcpu: Option<OffcpuReport>,
    /// Their TCP connections, itemized as one process's would be (at most
    /// [`TCP_ITEMS`] plus `other`).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub tcp: Vec<TcpReport>,
}

#[derive(Debug, Serialize)]
pub struct SyscallReport {
    pub name: String,
    pub nr: u32,
    #[serde(flatten)]
    pub latency: Latency,
}

/// Counts and latency of a set of calls in one interval.
#[derive(Debug, Clone, Serialize)]
pub struct Latency {
    pub count: u64,
    pub errors: u64,
    /// Sum of the latencies.
    pub total_ns: u64,
    pub p50_ns: u64,
    pub p90_ns: u64,
    pub p99_ns: u64,
    pub max_ns: u64,
    /// The same as `total_ns`, under the name every latency object uses.
    pub sum_ns: u64,
    /// Returns whose start the probe did not see (it attached while the call
    /// was in progress, or lost it): not in `count` or the latencies.
    pub missed_starts: u64,
    /// Bucket counts in the shared layout, for exporters (not in JSON).
    #[serde(skip)]
    pub hist: Histogram,
}

impl From<&SyscallData> for Latency {
    fn from(d: &SyscallData) -> Self {
        let q = |q| d.hist.quantile(q, d.max_ns).unwrap_or(0);
        Self {
            count: d.count,
            errors: d.errors,
            total_ns: d.total_ns,
            p50_ns: q(0.5),
            p90_ns: q(0.9),
            p99_ns: q(0.99),
            max_ns: d.max_ns,
            sum_ns: d.total_ns,
            missed_starts: d.missed_starts,
            hist: d.hist.clone(),
        }
    }
}

fn syscall_list(data: &std::collections::BTreeMap<u32, SyscallData>) -> (Latency, Vec<SyscallReport>) {
    let mut total = SyscallData::default();
    let mut list: Vec<SyscallReport> = data
        .iter()
        .map(|(nr, d)| {
            total.merge(d);
            SyscallReport { name: syscalls::name(*nr).into_owned(), nr: *nr, latency: d.into() }
        })
        .collect();
    list.sort_by_key(|s| (Reverse(s.latency.total_ns), s.nr));
    ((&total).into(), list)
}

/// Rank: time spent in syscalls (which holds the wait for synchronous I/O),
/// then time waiting for a CPU or blocked, then block requests (kernel
/// threads doing writeback make no syscalls).
fn rank(p: &ProcessData) -> (u64, u64, u64) {
    let waiting = p.offcpu.as_ref().map_or(0, |o| o.runqueue_ns + o.blocked_ns);
    (p.syscalls.values().map(|s| s.total_ns).sum(), waiting, p.disk.values().map(|d| d.count).sum())
}

/// Ranks processes, keeps the top `top` with their `/proc` metadata, and
/// merges the rest into `other`.
pub fn build(
    mut interval: Interval,
    top: usize,
    procs: &mut ProcCache,
    devices: &mut DeviceNames,
    interval_ns: u64,
    host: &str,
    probes: Vec<ProbeStatus>,
) -> Report {
    // Device totals over every process, and the requests nobody was seen
    // submitting (pid 0), which belong to no process.
    let per_device =
        crate::probes::disk::device_totals(interval.processes.values().chain([&interval.over_cap]).map(|p| &p.disk));
    // TCP connections whose owner was never seen (accepted in softirq and
    // not yet read or written by a process): reported apart, not guessed.
    let tcp_unknown_owner = interval.processes.get(&0).map(|p| tcp_list(&p.tcp)).unwrap_or_default();
    interval.processes.remove(&0);
    let mut ranked: Vec<(u32, ProcessData)> = interval.processes.into_iter().collect();
    ranked.sort_by_key(|(pid, p)| (Reverse(rank(p)), *pid));
    let mut rest = if ranked.len() > top { ranked.split_off(top) } else { Vec::new() };
    let over_cap = interval.over_cap_pids.len();
    let rest_len = rest.len() + over_cap;
    if over_cap > 0 {
        rest.push((0, interval.over_cap));
    }

    let mut live = std::collections::HashSet::new();
    let processes: Vec<ProcessReport> = ranked
        .into_iter()
        .map(|(pid, p)| {
            let (meta, exited) = match procs.get(pid) {
                Some(m) => {
                    live.insert(pid);
                    (m, false)
                }
                None => (ProcMeta { comm: p.kernel_comm.clone().unwrap_or_default(), ..Default::default() }, true),
            };
            let (syscall_total, syscalls) = syscall_list(&p.syscalls);
            let disk = disk_list(&p.disk, devices);
            let offcpu = p.offcpu.as_ref().map(Into::into);
            let tcp = tcp_list(&p.tcp);
            ProcessReport { pid, meta, exited, syscall_total, syscalls, disk, offcpu, tcp, verdict: None }
        })
        .collect();
    procs.retain(&live);

    let other = (!rest.is_empty()).then(|| {
        let mut merged = BTreeMap::<u32, SyscallData>::new();
        let mut disk = BTreeMap::<(u32, Op), DiskData>::new();
        let mut offcpu: Option<OffcpuData> = None;
        let mut tcp = Vec::new();
        for (_, p) in rest {
            for (nr, d) in &p.syscalls {
                merged.entry(*nr).or_default().merge(d);
            }
            for (k, d) in &p.disk {
                disk.entry(*k).or_default().merge(d);
            }
            if let Some(o) = &p.offcpu {
                offcpu.get_or_insert_with(Default::default).merge(o);
            }
            tcp.extend(p.tcp);
        }
        let (syscall_total, syscalls) = syscall_list(&merged);
        OtherReport {
            processes: rest_len as u64,
            syscall_total,
            syscalls,
            disk: disk_list(&disk, devices),
            offcpu: offcpu.as_ref().map(Into::into),
            tcp: tcp_list(&tcp),
        }
    });

    if over_cap > 0 {
        log::warn!(
            "{over_cap} processes past --max-processes {}: their figures are in \"other\", unranked (raise it to see them)",
            interval.max_processes
        );
    }
    let device_list = disk_list(&per_device, devices);
    let now = std::time::SystemTime::now();
    Report {
        time: humantime::format_rfc3339_millis(now).to_string(),
        interval_ns,
        end_unix_ns: now.duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_nanos() as i64),
        host: host.to_string(),
        processes,
        other,
        devices: device_list,
        tcp_unknown_owner,
        processes_over_cap: over_cap as u64,
        probes,
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::probes::{offcpu::OffcpuData, tcp::ConnData};

    /// The report of [`every_probe`]`(10)` with the top 3 shown: the
    /// sample the exporters' tests fold in.
    pub(crate) fn sample() -> Report {
        build(every_probe(10), 3, &mut ProcCache::new(false), &mut DeviceNames::default(), 1_000_000_000, "h", vec![])
    }

    /// A distribution of `n` values of `ns` each, with its exact sum.
    fn dist(n: u64, ns: u64) -> Dist {
        let mut d = Dist { max_ns: ns, sum_ns: n * ns, ..Default::default() };
        (0..n).for_each(|_| d.hist.record(ns));
        d
    }

    /// `n` processes (pids that cannot exist) with figures from every probe,
    /// each different; plus one TCP connection with no known owner (pid 0).
    pub(crate) fn every_probe(n: u32) -> Interval {
        every_probe_capped(n, crate::probes::MAX_PROCESSES)
    }

    /// [`every_probe`] in an interval that holds at most `cap` processes,
    /// added as the probes add them.
    fn every_probe_capped(n: u32, cap: usize) -> Interval {
        let mut interval = Interval::new(cap);
        for i in 0..n {
            let k = u64::from(i) + 1;
            let p = interval.process(4_000_000 + i);
            p.kernel_comm = Some(format!("p{i}"));
            p.syscalls.entry(0).or_default().merge(&data(10, 1_000 * k));
            // Device 7:0 (a loop device's dev_t in the kernel's encoding).
            let disk = DiskData {
                count: k,
                merged: 0,
                bytes: 4096 * k,
                errors: 0,
                queue: dist(k, 1_000),
                service: dist(k, 50_000 * k),
                total: dist(k, 51_000 * k),
            };
            p.disk.entry((7 << 20, Op::Write)).or_default().merge(&disk);
            p.offcpu.get_or_insert_with(Default::default).merge(&OffcpuData {
                kernel_thread: false,
                on_cpu_ns: 1_000 * k,
                runqueue_ns: 2_000 * k,
                blocked_ns: 3_000 * k,
                sleep_ns: 20_000_000 * k,
                runqueue: dist(1, 2_000 * k),
                offcpu: dist(2, 10_001_500 * k),
                sleep_by_syscall: [(35, (20_000_000 * k, 1))].into_iter().collect(),
            });
            p.tcp.push(conn(1_000 * k, 500 * k, i % 2 == 0));
        }
        interval.process(0).tcp.push(conn(0, 0, true));
        interval
    }

    fn conn(sent: u64, received: u64, closed: bool) -> ConnData {
        ConnData {
            local: Some("127.0.0.1:40000".parse().unwrap()),
            remote: Some("127.0.0.1:80".parse().unwrap()),
            state: if closed { 7 } else { 1 },
            active: true,
            connect_ns: Some(30_000),
            failed: None,
            closed,
            bytes_sent: sent,
            bytes_received: received,
            retransmits: 1,
            resets: 0,
            rtt: dist(3, 40_000),
            rtt_last_us: 40,
        }
    }

    #[test]
    fn other_carries_every_probe_exactly() {
        other_carries_every_probe_exactly_with(crate::probes::MAX_PROCESSES);
    }

    #[test]
    fn processes_past_the_cap_are_in_other_exactly() {
        // 10 processes, room for 5: the first 5 ranked (3 shown, 2 in
        // other), the other 5 merged before ranking.
        let r = other_carries_every_probe_exactly_with(5);
        assert_eq!(r.processes_over_cap, 5);
        assert_eq!(r.processes.len(), 3);
    }

    /// Checks that the shown processes plus `other` are the figures of all
    /// 10 processes of [`every_probe`], with room for `cap` processes.
    fn other_carries_every_probe_exactly_with(cap: usize) -> Report {
        let all = every_probe(10);
        let r = build(
            every_probe_capped(10, cap),
            3,
            &mut ProcCache::new(false),
            &mut DeviceNames::default(),
            1_000_000_000,
            "h",
            vec![],
        );
        let other = r.other.as_ref().expect("other");
        assert_eq!(other.processes, 7);
        let procs = || all.processes.iter().filter(|(pid, _)| **pid != 0).map(|(_, p)| p);

        // Syscalls: counts and time.
        let shown_calls: Vec<&Latency> =
            r.processes.iter().map(|p| &p.syscall_total).chain([&other.syscall_total]).collect();
        assert_eq!(shown_calls.iter().map(|l| l.count).sum::<u64>(), 100);
        let want_ns: u64 = procs().flat_map(|p| p.syscalls.values()).map(|d| d.total_ns).sum();
        assert_eq!(shown_calls.iter().map(|l| l.total_ns).sum::<u64>(), want_ns);

        // Disk: counts, bytes and every histogram and sum, bucket by bucket.
        let shown_disk: Vec<&DiskReport> = r.processes.iter().flat_map(|p| &p.disk).chain(&other.disk).collect();
        let want = procs().flat_map(|p| p.disk.values()).fold(DiskData::default(), |mut a, d| {
            a.merge(d);
            a
        });
        assert_eq!(shown_disk.iter().map(|d| d.count).sum::<u64>(), want.count);
        assert_eq!(shown_disk.iter().map(|d| d.bytes).sum::<u64>(), want.bytes);
        let mut total = Histogram::default();
        shown_disk.iter().for_each(|d| total.merge(&d.total.hist));
        assert_eq!(total, want.total.hist, "histograms merged bucket by bucket");
        assert_eq!(shown_disk.iter().map(|d| d.total.sum_ns).sum::<u64>(), want.total.sum_ns);
        assert_eq!(r.devices.len(), 1);
        assert_eq!((r.devices[0].count, r.devices[0].bytes), (want.count, want.bytes), "devices[] agree");

        // Off-CPU: times, per-syscall sleep, histograms.
        let shown_off: Vec<&OffcpuReport> =
            r.processes.iter().filter_map(|p| p.offcpu.as_ref()).chain(other.offcpu.as_ref()).collect();
        let sum = |f: fn(&OffcpuData) -> u64| procs().filter_map(|p| p.offcpu.as_ref()).map(f).sum::<u64>();
        assert_eq!(shown_off.iter().map(|o| o.sleep_ns).sum::<u64>(), sum(|o| o.sleep_ns));
        assert_eq!(shown_off.iter().map(|o| o.on_cpu_ns).sum::<u64>(), sum(|o| o.on_cpu_ns));
        assert_eq!(shown_off.iter().map(|o| o.runqueue_ns).sum::<u64>(), sum(|o| o.runqueue_ns));
        assert_eq!(shown_off.iter().map(|o| o.blocked_io_ns).sum::<u64>(), sum(|o| o.blocked_ns));
        assert_eq!(shown_off.iter().map(|o| o.offcpu.count).sum::<u64>(), 20);
        assert_eq!(shown_off.iter().map(|o| o.offcpu.sum_ns).sum::<u64>(), sum(|o| o.offcpu.sum_ns));
        let nanosleep: u64 =
            shown_off.iter().flat_map(|o| &o.sleep_by_syscall).filter(|s| s.name == "nanosleep").map(|s| s.ns).sum();
        assert_eq!(nanosleep, sum(|o| o.sleep_ns));

        // TCP: bytes and connections; the unknown owner's apart.
        let shown_tcp: Vec<&TcpReport> = r.processes.iter().flat_map(|p| &p.tcp).chain(&other.tcp).collect();
        let tcp = |f: fn(&ConnData) -> u64| procs().flat_map(|p| &p.tcp).map(f).sum::<u64>();
        assert_eq!(shown_tcp.iter().map(|t| t.bytes_sent).sum::<u64>(), tcp(|c| c.bytes_sent));
        assert_eq!(shown_tcp.iter().map(|t| t.bytes_received).sum::<u64>(), tcp(|c| c.bytes_received));
        assert_eq!(shown_tcp.iter().map(|t| t.connections).sum::<u64>(), 10);
        assert_eq!(shown_tcp.iter().map(|t| t.connect.sum_ns).sum::<u64>(), 10 * 30_000, "handshake sums are exact");
        assert_eq!(r.tcp_unknown_owner.len(), 1);
        r
    }

    #[test]
    fn every_latency_object_has_its_sum_in_json() {
        let r = build(
            every_probe(4),
            2,
            &mut ProcCache::new(false),
            &mut DeviceNames::default(),
            1_000_000_000,
            "h",
            vec![],
        );
        let v = serde_json::to_value(&r).unwrap();
        let d = &v["other"]["disk"][0];
        // Shown: the two with the most syscall time (k = 4, 3); other: k = 1, 2.
        assert_eq!(d["total"]["sum_ns"], 51_000 + 51_000 * 2 * 2, "{d}");
        assert_eq!(d["queue"]["sum_ns"], 1_000 * (1 + 2), "{d}");
        let p = &v["processes"][0];
        assert_eq!(p["syscall_total"]["sum_ns"], p["syscall_total"]["total_ns"]);
        assert_eq!(p["syscalls"][0]["sum_ns"], p["syscalls"][0]["total_ns"]);
        assert_eq!(p["offcpu"]["offcpu"]["sum_ns"], 2 * 10_001_500 * 4, "{p}");
        assert_eq!(v["other"]["syscall_total"]["sum_ns"], v["other"]["syscall_total"]["total_ns"]);
        assert!(v["other"]["offcpu"]["sleep_ns"].as_u64().unwrap() > 0);
        // One open connection, and one closed folded into its endpoint's item.
        assert_eq!(v["other"]["tcp"].as_array().unwrap().len(), 2, "{}", v["other"]);
    }

    fn data(count: u64, ns_each: u64) -> SyscallData {
        let mut d = SyscallData { count, total_ns: count * ns_each, max_ns: ns_each, ..Default::default() };
        for _ in 0..count {
            d.hist.record(ns_each);
        }
        d
    }

    #[test]
    fn keeps_top_n_and_merges_the_rest_exactly() {
        let mut interval = Interval::default();
        // Pids that cannot exist, so /proc lookups fail and kernel comms are used.
        for i in 0..10u32 {
            let p = interval.processes.entry(4_000_000 + i).or_default();
            p.kernel_comm = Some(format!("p{i}"));
            p.syscalls.insert(0, data(10, 1_000 * u64::from(i + 1)));
            p.syscalls.insert(1, data(1, 100));
        }
        let r = build(interval, 3, &mut ProcCache::new(false), &mut DeviceNames::default(), 1_000_000_000, "h", vec![]);
        assert_eq!(r.processes.len(), 3);
        assert_eq!(r.processes[0].meta.comm, "p9");
        assert!(r.processes[0].exited);
        assert_eq!(r.processes[0].syscalls[0].nr, 0, "largest total first");
        let other = r.other.expect("other");
        assert_eq!(other.processes, 7);
        let read = other.syscalls.iter().find(|s| s.nr == 0).unwrap();
        assert_eq!(read.latency.count, 70);
        assert_eq!(other.syscall_total.count, 77);
        assert_eq!(other.syscall_total.hist.count(), 77);
    }
}

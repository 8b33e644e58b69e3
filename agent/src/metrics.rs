//! What the agent exports as metrics (Prometheus; OTLP builds on the same
//! state): cumulative figures per process group, built from each interval's
//! report. Cardinality is bounded: a group is a process name (and its
//! container), at most `max_groups` of them, the rest summed in `other`;
//! never one series per pid, since pids churn. Groups idle for
//! [`IDLE_EVICT`] go (their series end; if the name comes back it starts
//! again from zero, with a new start time).

use std::collections::BTreeMap;

use crate::{
    hist::Histogram,
    probes::ProbeStatus,
    report::{DiskReport, OffcpuReport, Report, SyscallReport, TcpReport},
};

/// A group unseen this long is forgotten.
pub const IDLE_EVICT: std::time::Duration = std::time::Duration::from_secs(600);

#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct GroupKey {
    /// The agent's host (on a collector; empty on an agent).
    pub host: String,
    /// Process name (comm), or `other`.
    pub process: String,
    /// Container id, or empty.
    pub container_id: String,
}

/// Process name of the group that holds TCP connections no process was
/// seen using (the report's `tcp_unknown_owner`). Longer than any comm (the
/// kernel keeps 15 bytes), so no process can be named so.
pub const UNKNOWN_OWNER: &str = "tcp_unknown_owner";

/// A latency distribution, cumulative: bucket counts in the shared layout
/// and the exact sum of the values, when every interval added came with one.
#[derive(Debug, Clone, Default)]
pub struct CumHist {
    pub hist: Histogram,
    pub sum_ns: u64,
    /// An interval came without its sum (TCP RTT samples, whose sum the
    /// probe does not keep; reports of agents older than sums): exporters
    /// then publish no sum, rather than a wrong one.
    pub sum_unknown: bool,
}

impl CumHist {
    fn add(&mut self, h: &Histogram, sum_ns: Option<u64>) {
        self.hist.merge(h);
        match sum_ns {
            Some(s) => self.sum_ns = self.sum_ns.saturating_add(s),
            None => self.sum_unknown |= h.count() > 0,
        }
    }

    /// The sum in seconds, when known.
    pub fn sum_seconds(&self) -> Option<f64> {
        (!self.sum_unknown).then(|| self.sum_ns as f64 / 1e9)
    }
}

#[derive(Debug, Clone, Default)]
pub struct DiskCum {
    pub count: u64,
    pub bytes: u64,
    pub errors: u64,
    pub latency: CumHist,
    /// Time requests spent queued (submitted to issued), summed; `None`
    /// once an interval came without it.
    pub queue_ns: Option<u64>,
}

/// Everything exported for one group, cumulative since `start_unix_ns`.
#[derive(Debug, Clone, Default)]
pub struct Group {
    /// When this group's series started (first seen, or re-seen after eviction).
    pub start_unix_ns: i64,
    pub last_seen_unix_ns: i64,
    /// The executable, and the pid when the group is one process (for OTLP
    /// resource attributes; Prometheus never labels by pid).
    pub exe: String,
    pub pid: Option<u32>,
    /// The Kubernetes pod, when the cgroup names one.
    pub pod_uid: Option<String>,
    /// Only with `--cmdline`.
    pub cmdline: Option<String>,
    /// Per syscall name: (calls, errors).
    pub syscalls: BTreeMap<String, (u64, u64)>,
    pub syscall_latency: CumHist,
    /// Per (device, op).
    pub disk: BTreeMap<(String, String), DiskCum>,
    pub on_cpu_ns: u64,
    pub runqueue_ns: u64,
    pub blocked_io_ns: u64,
    pub sleep_ns: u64,
    pub tcp_bytes_sent: u64,
    pub tcp_bytes_received: u64,
    pub tcp_retransmits: u64,
    pub tcp_connections: u64,
    /// Connects that failed: refused (reset), timed out.
    pub tcp_refused: u64,
    pub tcp_timeouts: u64,
    pub tcp_rtt: CumHist,
}

/// One interval's figures into a group: shared by the agent's reports and
/// the wire reports a collector folds in.
impl Group {
    fn add_syscall(&mut self, name: &str, count: u64, errors: u64, total_ns: u64, latency: Option<&Histogram>) {
        let e = self.syscalls.entry(name.to_string()).or_default();
        e.0 += count;
        e.1 += errors;
        if let Some(h) = latency {
            self.syscall_latency.add(h, Some(total_ns));
        }
    }

    /// `total`: the queued-to-completed latencies and their sum, if known;
    /// `queue_ns`: the time queued, if known.
    #[allow(clippy::too_many_arguments)]
    fn add_disk(
        &mut self,
        device: &str,
        op: &str,
        count: u64,
        bytes: u64,
        errors: u64,
        total: Option<(&Histogram, Option<u64>)>,
        queue_ns: Option<u64>,
    ) {
        let new = !self.disk.contains_key(&(device.to_string(), op.to_string()));
        let e = self.disk.entry((device.to_string(), op.to_string())).or_default();
        if new {
            e.queue_ns = Some(0);
        }
        e.queue_ns = e.queue_ns.zip(queue_ns).map(|(a, b)| a + b);
        e.count += count;
        e.bytes += bytes;
        e.errors += errors;
        if let Some((h, sum_ns)) = total {
            e.latency.add(h, sum_ns);
        }
    }

    fn add_thread_time(&mut self, on_cpu_ns: u64, runqueue_ns: u64, blocked_io_ns: u64, sleep_ns: u64) {
        self.on_cpu_ns += on_cpu_ns;
        self.runqueue_ns += runqueue_ns;
        self.blocked_io_ns += blocked_io_ns;
        self.sleep_ns += sleep_ns;
    }

    /// A TCP item; `connections` count once closed (state `CLOSED`).
    /// `failed`: connects refused and timed out. `rtt`: the RTT samples and
    /// their sum, if known.
    #[allow(clippy::too_many_arguments)]
    fn add_tcp(
        &mut self,
        state: &str,
        connections: u64,
        sent: u64,
        received: u64,
        retransmits: u64,
        failed: (u64, u64),
        rtt: Option<(&Histogram, Option<u64>)>,
    ) {
        self.tcp_refused += failed.0;
        self.tcp_timeouts += failed.1;
        self.tcp_bytes_sent += sent;
        self.tcp_bytes_received += received;
        self.tcp_retransmits += retransmits;
        if state == "CLOSED" {
            self.tcp_connections += connections;
        }
        if let Some((h, sum_ns)) = rtt {
            self.tcp_rtt.add(h, sum_ns);
        }
    }

    /// Everything a process (or `other`) of a report adds.
    fn add_report(
        &mut self,
        syscalls: &[SyscallReport],
        disk: &[DiskReport],
        offcpu: Option<&OffcpuReport>,
        tcp: &[TcpReport],
    ) {
        for s in syscalls {
            let l = &s.latency;
            self.add_syscall(&s.name, l.count, l.errors, l.total_ns, Some(&l.hist));
        }
        for d in disk {
            let total = Some((&d.total.hist, Some(d.total.sum_ns)));
            self.add_disk(&d.device, d.op, d.count, d.bytes, d.errors, total, Some(d.queue.sum_ns));
        }
        if let Some(o) = offcpu {
            self.add_thread_time(o.on_cpu_ns, o.runqueue_ns, o.blocked_io_ns, o.sleep_ns);
        }
        self.add_tcp_reports(tcp);
    }

    fn add_tcp_reports(&mut self, tcp: &[TcpReport]) {
        for t in tcp {
            let rtt = Some((&t.rtt.hist, Some(t.rtt.sum_ns)));
            let failed = (t.refused, t.timeouts);
            self.add_tcp(t.state, t.connections, t.bytes_sent, t.bytes_received, t.retransmits, failed, rtt);
        }
    }

    /// The wire form of [`Group::add_tcp_reports`]; histograms that do not
    /// parse are skipped (the collector checked them on receipt).
    fn add_tcp_wire(&mut self, tcp: &[crate::wire::pb::TcpStats]) {
        for t in tcp {
            let rtt = t.rtt.as_ref().and_then(|h| Some((crate::wire::from_wire(h).ok()?, h.sum_ns)));
            let rtt = rtt.as_ref().map(|(h, sum)| (h, *sum));
            let failed = (t.refused, t.timeouts);
            self.add_tcp(&t.state, t.connections, t.bytes_sent, t.bytes_received, t.retransmits, failed, rtt);
        }
    }
}

/// The agent's own health, as of the last interval.
#[derive(Debug, Clone, Default)]
pub struct Health {
    pub probes: Vec<ProbeStatus>,
    /// Events lost per probe, cumulative.
    pub lost: BTreeMap<String, u64>,
    pub export_queue: Option<u64>,
    pub export_errors: u64,
    pub export_last_error_unix: Option<i64>,
    pub otlp_errors: u64,
}

#[derive(Debug, Default)]
pub struct Metrics {
    pub groups: BTreeMap<GroupKey, Group>,
    pub other: Group,
    /// TCP connections no process was seen using, per agent host (one, `""`,
    /// on an agent): apart from `other`, since they belong to no process.
    pub unknown_owner: BTreeMap<String, Group>,
    pub health: Health,
    pub max_groups: usize,
    /// When the agent started counting (the `other` group's start).
    pub start_unix_ns: i64,
    /// Reports folded in so far.
    pub reports: u64,
}

impl Metrics {
    pub fn new(max_groups: usize) -> Self {
        let now = now_unix_ns();
        Self {
            max_groups,
            start_unix_ns: now,
            other: Group { start_unix_ns: now, ..Default::default() },
            ..Default::default()
        }
    }

    /// Folds one interval's report in.
    pub fn add(&mut self, r: &Report) {
        let now = r.end_unix_ns;
        // A new series began with the interval that first counted for it.
        let began = now - r.interval_ns as i64;
        self.reports += 1;
        for p in &r.processes {
            let key = GroupKey {
                host: String::new(),
                process: p.meta.comm.clone(),
                container_id: p.meta.container_id.clone().unwrap_or_default(),
            };
            let group = self.group(key, p.pid, p.meta.exe.as_deref().unwrap_or(""), began, now);
            if group.pod_uid.is_none() {
                group.pod_uid = p.meta.cgroup.as_deref().and_then(crate::procinfo::pod_uid);
            }
            if group.pid.is_some() && p.meta.cmdline.is_some() {
                group.cmdline.clone_from(&p.meta.cmdline);
            }
            group.add_report(&p.syscalls, &p.disk, p.offcpu.as_ref(), &p.tcp);
        }
        // Below the --top cut: every probe's figures, so the host's totals
        // hold whatever --top is.
        if let Some(o) = &r.other {
            self.other.last_seen_unix_ns = now;
            self.other.add_report(&o.syscalls, &o.disk, o.offcpu.as_ref(), &o.tcp);
        }
        if !r.tcp_unknown_owner.is_empty() {
            self.unknown_owner(String::new(), began, now).add_tcp_reports(&r.tcp_unknown_owner);
        }
        self.evict(now);
        for p in &r.probes {
            *self.health.lost.entry(p.name.to_string()).or_default() += p.lost;
        }
        self.health.probes = r.probes.clone();
    }

    /// The group of `key`, created while there is room, else `other`.
    fn group(&mut self, key: GroupKey, pid: u32, exe: &str, began: i64, now: i64) -> &mut Group {
        let group = if self.groups.contains_key(&key) || self.groups.len() < self.max_groups {
            let g = self.groups.entry(key).or_insert_with(|| Group { start_unix_ns: began, ..Default::default() });
            g.pid = match g.pid {
                None if g.last_seen_unix_ns == 0 => Some(pid),
                Some(p) if p == pid => Some(p),
                _ => None,
            };
            if g.exe.is_empty() {
                g.exe = exe.to_string();
            }
            g
        } else {
            &mut self.other
        };
        group.last_seen_unix_ns = now;
        group
    }

    /// The unknown-owner group of agent host `host`.
    fn unknown_owner(&mut self, host: String, began: i64, now: i64) -> &mut Group {
        let g = self.unknown_owner.entry(host).or_insert_with(|| Group { start_unix_ns: began, ..Default::default() });
        g.last_seen_unix_ns = now;
        g
    }

    fn evict(&mut self, now: i64) {
        let idle = now - IDLE_EVICT.as_nanos() as i64;
        self.groups.retain(|_, g| g.last_seen_unix_ns >= idle);
        self.unknown_owner.retain(|_, g| g.last_seen_unix_ns >= idle);
    }

    /// Folds in a report received from agent host `host` (a collector's
    /// fleet-wide metrics). Histograms that do not parse are skipped (the
    /// collector checked them on receipt).
    pub fn add_wire(&mut self, host: &str, r: &crate::wire::pb::Report) {
        use crate::wire::from_wire;
        let now = r.interval_end_unix_ns;
        let began = r.interval_start_unix_ns;
        self.reports += 1;
        let hist = |h: &Option<crate::wire::pb::Histogram>| h.as_ref().and_then(|h| from_wire(h).ok());
        for p in r.processes.iter().chain(&r.other) {
            let key =
                GroupKey { host: host.to_string(), process: p.comm.clone(), container_id: p.container_id.clone() };
            let group = if p.merged > 1 || p.pid == 0 {
                self.other.last_seen_unix_ns = now;
                &mut self.other
            } else {
                self.group(key, p.pid, &p.exe, began, now)
            };
            if group.pod_uid.is_none() {
                group.pod_uid = crate::procinfo::pod_uid(&p.cgroup);
            }
            for sc in &p.syscalls {
                group.add_syscall(&sc.name, sc.count, sc.errors, sc.total_ns, hist(&sc.latency).as_ref());
            }
            for d in &p.disk {
                let total = hist(&d.total);
                let sum_ns = d.total.as_ref().and_then(|h| h.sum_ns);
                let queue_ns = d.queue.as_ref().and_then(|h| h.sum_ns);
                let total = total.as_ref().map(|h| (h, sum_ns));
                group.add_disk(&d.device, &d.op, d.count, d.bytes, d.errors, total, queue_ns);
            }
            if let Some(o) = &p.offcpu {
                group.add_thread_time(o.on_cpu_ns, o.runqueue_ns, o.blocked_io_ns, o.sleep_ns);
            }
            group.add_tcp_wire(&p.tcp);
        }
        if !r.tcp_unknown_owner.is_empty() {
            self.unknown_owner(host.to_string(), began, now).add_tcp_wire(&r.tcp_unknown_owner);
        }
        self.evict(now);
    }

    /// Every group, then `other`, then the unknown-owner groups.
    pub fn all(&self) -> impl Iterator<Item = (GroupKey, &Group)> {
        let unknown = self.unknown_owner.iter().map(|(host, g)| {
            (GroupKey { host: host.clone(), process: UNKNOWN_OWNER.into(), container_id: String::new() }, g)
        });
        self.groups
            .iter()
            .map(|(k, g)| (k.clone(), g))
            .chain(std::iter::once((
                GroupKey { host: String::new(), process: "other".into(), container_id: String::new() },
                &self.other,
            )))
            .chain(unknown)
    }
}

pub fn now_unix_ns() -> i64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_nanos() as i64)
}

/// Cumulative counts at each power of two of the shared layout (every 8th
/// bucket edge: 64 ns, 128 ns, ... 2^38 ns), as Prometheus `le` buckets in
/// seconds; the caller adds `+Inf`. Exact: those edges are bucket edges.
pub fn octave_buckets(h: &Histogram) -> Vec<(f64, u64)> {
    let b = h.buckets();
    let per = 1usize << agent_common::hist::SUB_BITS;
    let mut out = Vec::new();
    let mut cum = 0u64;
    for (i, c) in b.iter().enumerate().take(agent_common::hist::BUCKETS - 1) {
        cum += c;
        if i % per == 0 {
            out.push((agent_common::hist::upper_bound(i) as f64 / 1e9, cum));
        }
    }
    out
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::{
        probes::disk::DeviceNames,
        procinfo::ProcCache,
        report::{build, tests::every_probe},
    };

    /// The report of [`every_probe`]`(10)` with the top 3 shown.
    pub(crate) fn report() -> Report {
        build(every_probe(10), 3, &mut ProcCache::new(false), &mut DeviceNames::default(), 1_000_000_000, "h", vec![])
    }

    /// Host totals over every group: (disk bytes, disk latency sum, TCP
    /// sent, TCP received, sleep ns, syscalls).
    fn totals(m: &Metrics) -> (u64, u64, u64, u64, u64, u64) {
        let mut t = (0, 0, 0, 0, 0, 0);
        for (_, g) in m.all() {
            t.0 += g.disk.values().map(|d| d.bytes).sum::<u64>();
            t.1 += g.disk.values().map(|d| d.latency.sum_ns).sum::<u64>();
            t.2 += g.tcp_bytes_sent;
            t.3 += g.tcp_bytes_received;
            t.4 += g.sleep_ns;
            t.5 += g.syscalls.values().map(|s| s.0).sum::<u64>();
        }
        t
    }

    /// What [`every_probe`]`(10)` adds up to (k = 1..=10).
    fn expected() -> (u64, u64, u64, u64, u64, u64) {
        let k = 1..=10u64;
        (4096 * 55, k.map(|k| 51_000 * k * k).sum(), 1_000 * 55, 500 * 55, 20_000_000 * 55, 100)
    }

    #[test]
    fn host_totals_do_not_depend_on_the_top_cut_or_the_group_cap() {
        let r = report();
        assert_eq!(r.other.as_ref().map(|o| o.processes), Some(7));
        // Two groups for three processes shown: the third goes to `other` too.
        let mut m = Metrics::new(2);
        m.add(&r);
        assert_eq!(totals(&m), expected());
        let unknown: Vec<_> = m.all().filter(|(k, _)| k.process == UNKNOWN_OWNER).collect();
        assert_eq!(unknown.len(), 1, "the unknown owner's connections are a group of their own");
        assert_eq!(unknown[0].1.tcp_connections, 1);
        assert!(m.other.disk.values().all(|d| !d.latency.sum_unknown), "disk sums are exact");
        assert!(!m.other.tcp_rtt.sum_unknown && m.other.tcp_rtt.sum_seconds().is_some(), "RTT sums are exact");
    }

    #[test]
    fn the_stream_carries_the_same_host_totals() {
        let wire = crate::wire::report(&report());
        let decoded =
            <crate::wire::pb::Report as prost::Message>::decode(prost::Message::encode_to_vec(&wire).as_slice())
                .unwrap();
        assert_eq!(decoded.tcp_unknown_owner.len(), 1);
        let other = decoded.other.as_ref().unwrap();
        assert!(!other.disk.is_empty() && other.offcpu.is_some() && !other.tcp.is_empty(), "{other:?}");
        // Three samples of 40 us per connection.
        assert!(
            other.tcp.iter().all(|t| t.rtt.as_ref().is_some_and(|h| h.sum_ns == Some(120_000 * t.connections))),
            "{other:?}"
        );
        assert!(other.disk.iter().all(|d| d.total.as_ref().is_some_and(|h| h.sum_ns.is_some())));
        let mut m = Metrics::new(2);
        m.add_wire("h1", &decoded);
        assert_eq!(totals(&m), expected());
        assert!(m.all().any(|(k, _)| k.process == UNKNOWN_OWNER && k.host == "h1"));
    }

    #[test]
    fn octave_buckets_are_cumulative_at_powers_of_two() {
        let mut h = Histogram::default();
        h.record(10); // < 64 ns
        h.record(100); // [64, 128)
        h.record(1_000); // [512, 1024)
        h.record(1 << 45); // the open-ended top bucket
        let b = octave_buckets(&h);
        assert_eq!(b[0], (64e-9, 1));
        assert_eq!(b[1], (128e-9, 2));
        assert_eq!(b[4], (1024e-9, 3));
        assert_eq!(b.last().unwrap().1, 3, "the top bucket is only in +Inf");
        assert_eq!(b.len(), 33);
    }
}

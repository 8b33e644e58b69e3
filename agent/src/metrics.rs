//! What the agent exports as metrics (Prometheus; OTLP builds on the same
//! state): cumulative figures per process group, built from each interval's
//! report. Cardinality is bounded: a group is a process name (and its
//! container), at most `max_groups` of them, the rest summed in `other`;
//! never one series per pid, since pids churn. Groups idle for
//! [`IDLE_EVICT`] go (their series end; if the name comes back it starts
//! again from zero, with a new start time).

use std::collections::BTreeMap;

use crate::{hist::Histogram, report::Report, status::ProbeStatus};

/// Remote endpoints per group with series of their own, by default.
pub const DEFAULT_MAX_REMOTES: usize = 5;

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
pub struct SyscallCum {
    pub calls: u64,
    pub errors: u64,
    /// Time inside the syscall, summed.
    pub time_ns: u64,
}

#[derive(Debug, Clone, Default)]
pub struct DiskCum {
    pub count: u64,
    pub bytes: u64,
    pub errors: u64,
    pub merged: u64,
    /// Submitted to completed, and its two parts.
    pub total: CumHist,
    pub queue: CumHist,
    pub service: CumHist,
}

/// Where the group's threads' time went.
#[derive(Debug, Clone, Default)]
pub struct ThreadCum {
    pub on_cpu_ns: u64,
    pub runqueue_ns: u64,
    pub blocked_io_ns: u64,
    pub sleep_ns: u64,
    pub runqueue: CumHist,
    /// Per syscall slept in: (ns, sleeps).
    pub sleep: BTreeMap<String, (u64, u64)>,
}

#[derive(Debug, Clone, Default)]
pub struct TcpCum {
    pub bytes_sent: u64,
    pub bytes_received: u64,
    pub retransmits: u64,
    pub resets: u64,
    /// Connections closed.
    pub connections: u64,
    pub refused: u64,
    pub timeouts: u64,
    pub rtt: CumHist,
    pub connect: CumHist,
}

/// Everything exported for one group, cumulative since `start_unix_ns`.
/// What identifies it never changes while it lives (series must not
/// change attributes), so it holds no pid or command line: a group is every
/// process of one name.
#[derive(Debug, Clone, Default)]
pub struct Group {
    /// When this group's series started (first seen, or re-seen after eviction).
    pub start_unix_ns: i64,
    pub last_seen_unix_ns: i64,
    /// The executable of the first process seen.
    pub exe: String,
    /// The agent that reported it (on a collector; empty on an agent).
    pub agent_id: String,
    /// The Kubernetes pod, when the cgroup names one.
    pub pod_uid: Option<String>,
    /// Pod, namespace and container names, when known.
    pub k8s: Option<crate::procinfo::K8sNames>,
    pub syscalls: BTreeMap<String, SyscallCum>,
    pub syscall_latency: CumHist,
    /// Per (device, op).
    pub disk: BTreeMap<(String, String), DiskCum>,
    pub threads: ThreadCum,
    /// Per remote endpoint (see [`remote_key`]): the first
    /// `Metrics::max_remotes` seen, the rest under [`OTHER_REMOTE`].
    pub tcp: BTreeMap<String, TcpCum>,
}

/// The remote of connections past a group's `max_remotes`.
pub const OTHER_REMOTE: &str = "other";

/// How a connection's remote is labelled: `ip:port` for connections made
/// (the server's port says which service), the address alone for accepted
/// ones (the client's port is ephemeral: one series per connection).
pub fn remote_key(t: &crate::wire::pb::TcpStats) -> String {
    if t.direction == "accept" {
        if let Some((ip, _)) = t.remote.rsplit_once(':') {
            return ip.trim_start_matches('[').trim_end_matches(']').to_string();
        }
    }
    t.remote.clone()
}

/// A histogram of the wire, if it parses (the collector checked it on
/// receipt), with its sum.
fn wire_hist(h: &Option<crate::wire::pb::Histogram>) -> Option<(crate::hist::Histogram, Option<u64>)> {
    let h = h.as_ref()?;
    Some((crate::wire::from_wire(h).ok()?, h.sum_ns))
}

impl CumHist {
    fn add_wire(&mut self, h: &Option<crate::wire::pb::Histogram>) {
        if let Some((h, sum)) = wire_hist(h) {
            self.add(&h, sum);
        }
    }
}

/// One interval's figures of a process (or `other`) into a group: the wire
/// form, which the agent's own reports are turned into too (one path).
impl Group {
    fn add_process(&mut self, p: &crate::wire::pb::Process, max_remotes: usize) {
        for sc in &p.syscalls {
            let e = self.syscalls.entry(sc.name.clone()).or_default();
            e.calls += sc.count;
            e.errors += sc.errors;
            e.time_ns += sc.total_ns;
            self.syscall_latency.add_wire(&sc.latency);
        }
        for d in &p.disk {
            let e = self.disk.entry((d.device.clone(), d.op.clone())).or_default();
            e.count += d.count;
            e.bytes += d.bytes;
            e.errors += d.errors;
            e.merged += d.merged;
            e.total.add_wire(&d.total);
            e.queue.add_wire(&d.queue);
            e.service.add_wire(&d.service);
        }
        if let Some(o) = &p.offcpu {
            let t = &mut self.threads;
            t.on_cpu_ns += o.on_cpu_ns;
            t.runqueue_ns += o.runqueue_ns;
            t.blocked_io_ns += o.blocked_io_ns;
            t.sleep_ns += o.sleep_ns;
            t.runqueue.add_wire(&o.runqueue);
            for s in &o.sleep_by_syscall {
                let e = t.sleep.entry(s.name.clone()).or_default();
                e.0 += s.ns;
                e.1 += s.count;
            }
        }
        self.add_tcp(&p.tcp, max_remotes);
    }

    /// TCP items; connections count once closed (state `CLOSED`).
    fn add_tcp(&mut self, tcp: &[crate::wire::pb::TcpStats], max_remotes: usize) {
        for t in tcp {
            let mut key = remote_key(t);
            if !self.tcp.contains_key(&key) && self.tcp.keys().filter(|k| *k != OTHER_REMOTE).count() >= max_remotes {
                key = OTHER_REMOTE.to_string();
            }
            let c = self.tcp.entry(key).or_default();
            c.bytes_sent += t.bytes_sent;
            c.bytes_received += t.bytes_received;
            c.retransmits += t.retransmits;
            c.resets += t.resets;
            c.refused += t.refused;
            c.timeouts += t.timeouts;
            if t.state == "CLOSED" {
                c.connections += t.connections;
            }
            c.rtt.add_wire(&t.rtt);
            c.connect.add_wire(&t.connect);
        }
    }
}

/// The agent's own health, as of the last interval.
#[derive(Debug, Clone, Default)]
pub struct Health {
    pub probes: Vec<ProbeStatus>,
    /// Events lost per probe, cumulative.
    pub lost: BTreeMap<String, u64>,
    /// Processes past `--max-processes` in the last interval.
    pub processes_over_cap: u64,
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
    /// Remote endpoints with series of their own, per group.
    pub max_remotes: usize,
    /// When the agent started counting (the `other` group's start).
    pub start_unix_ns: i64,
    /// Reports folded in so far.
    pub reports: u64,
    /// Who exports: this host's name, the agent's id (`service.instance.id`)
    /// and the machine id (`host.id`), where known.
    pub host: String,
    pub agent_id: String,
    pub host_id: String,
}

impl Metrics {
    pub fn new(max_groups: usize) -> Self {
        let now = now_unix_ns();
        Self {
            max_groups,
            max_remotes: DEFAULT_MAX_REMOTES,
            start_unix_ns: now,
            other: Group { start_unix_ns: now, ..Default::default() },
            ..Default::default()
        }
    }

    /// Folds one interval's report of this agent in.
    pub fn add(&mut self, r: &Report) {
        self.add_wire("", &crate::wire::report(r));
        for p in &r.probes {
            *self.health.lost.entry(p.name.to_string()).or_default() += p.lost;
        }
        self.health.probes = r.probes.clone();
        self.health.processes_over_cap = r.processes_over_cap;
    }

    /// The group of `key`, created while there is room, else `other`.
    fn group(
        &mut self,
        key: GroupKey,
        p: &crate::wire::pb::Process,
        agent_id: &str,
        began: i64,
        now: i64,
    ) -> &mut Group {
        let group = if self.groups.contains_key(&key) || self.groups.len() < self.max_groups {
            self.groups.entry(key).or_insert_with(|| Group {
                start_unix_ns: began,
                exe: p.exe.clone(),
                agent_id: agent_id.to_string(),
                pod_uid: crate::procinfo::pod_uid(&p.cgroup),
                k8s: (!p.k8s_pod_name.is_empty()).then(|| crate::procinfo::K8sNames {
                    namespace: p.k8s_namespace_name.clone(),
                    pod: p.k8s_pod_name.clone(),
                    container: p.k8s_container_name.clone(),
                }),
                ..Default::default()
            })
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

    /// Folds in a report of agent host `host` (`""` for this agent's own).
    pub fn add_wire(&mut self, host: &str, r: &crate::wire::pb::Report) {
        let now = r.interval_end_unix_ns;
        let began = r.interval_start_unix_ns;
        let agent_id = r.agent.as_ref().map_or("", |a| a.agent_id.as_str());
        self.reports += 1;
        let max_remotes = self.max_remotes;
        for p in r.processes.iter().chain(&r.other) {
            let group = if p.merged > 1 || p.pid == 0 {
                self.other.last_seen_unix_ns = now;
                &mut self.other
            } else {
                let key =
                    GroupKey { host: host.to_string(), process: p.comm.clone(), container_id: p.container_id.clone() };
                self.group(key, p, agent_id, began, now)
            };
            group.add_process(p, max_remotes);
        }
        if !r.tcp_unknown_owner.is_empty() {
            self.unknown_owner(host.to_string(), began, now).add_tcp(&r.tcp_unknown_owner, max_remotes);
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
    let per = 1usize << agent_common::hist::SUB_BITS;
    let mut out = Vec::new();
    let mut cum = 0u64;
    for (i, c) in h.every_bucket().enumerate().take(agent_common::hist::BUCKETS - 1) {
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
    use crate::report::tests::sample as report;

    /// Host totals over every group: (disk bytes, disk latency sum, TCP
    /// sent, TCP received, sleep ns, syscalls).
    fn totals(m: &Metrics) -> (u64, u64, u64, u64, u64, u64) {
        let mut t = (0, 0, 0, 0, 0, 0);
        for (_, g) in m.all() {
            t.0 += g.disk.values().map(|d| d.bytes).sum::<u64>();
            t.1 += g.disk.values().map(|d| d.total.sum_ns).sum::<u64>();
            t.2 += g.tcp.values().map(|c| c.bytes_sent).sum::<u64>();
            t.3 += g.tcp.values().map(|c| c.bytes_received).sum::<u64>();
            t.4 += g.threads.sleep_ns;
            t.5 += g.syscalls.values().map(|s| s.calls).sum::<u64>();
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
        assert_eq!(unknown[0].1.tcp.values().map(|c| c.connections).sum::<u64>(), 1);
        assert!(m.other.disk.values().all(|d| !d.total.sum_unknown), "disk sums are exact");
        assert!(m.other.tcp.values().all(|c| c.rtt.sum_seconds().is_some()), "RTT sums are exact");
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
    fn remotes_past_the_cap_are_summed_as_other_and_accepted_ones_lose_their_port() {
        let conn = |remote: String, direction: &str| crate::wire::pb::TcpStats {
            remote,
            direction: direction.into(),
            bytes_sent: 10,
            ..Default::default()
        };
        let mut tcp: Vec<_> = (0..12).map(|i| conn(format!("10.0.0.{i}:443"), "connect")).collect();
        tcp.extend((0..3).map(|p| conn(format!("[fd00::9]:{}", 40_000 + p), "accept")));
        let mut g = Group::default();
        g.add_tcp(&tcp, 5);
        g.add_tcp(&tcp, 5);
        let keys: Vec<&str> = g.tcp.keys().map(String::as_str).collect();
        assert_eq!(keys.len(), 6, "{keys:?}");
        assert!(keys.contains(&OTHER_REMOTE) && keys.contains(&"10.0.0.0:443"), "{keys:?}");
        assert_eq!(g.tcp.values().map(|c| c.bytes_sent).sum::<u64>(), 2 * 15 * 10, "nothing lost");
        let mut g = Group::default();
        g.add_tcp(&tcp[12..], 5);
        assert_eq!(
            g.tcp.keys().collect::<Vec<_>>(),
            ["fd00::9"],
            "one series for every accepted connection of a client"
        );
    }

    #[test]
    fn octave_buckets_are_cumulative_at_powers_of_two() {
        let mut h = Histogram::default();
        h.record(10); // < 64 ns
        h.record(100); // [64, 128)
        h.record(1_000); // (512, 1024]
        h.record(1_024); // exactly an edge: counted in le=1024 ns, as Prometheus means it
        h.record(1_025);
        h.record(1 << 45); // the open-ended top bucket
        let b = octave_buckets(&h);
        assert_eq!(b[0], (64e-9, 1));
        assert_eq!(b[1], (128e-9, 2));
        assert_eq!(b[4], (1024e-9, 4));
        assert_eq!(b[5], (2048e-9, 5));
        assert_eq!(b.last().unwrap().1, 5, "the top bucket is only in +Inf");
        assert_eq!(b.len(), 33);
    }
}

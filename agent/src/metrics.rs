//! What the agent exports as metrics (Prometheus; OTLP builds on the same
//! state): cumulative figures per process group, built from each interval's
//! report. Cardinality is bounded: a group is a process name (and its
//! container), at most `max_groups` of them, the rest summed in `other`;
//! never one series per pid, since pids churn. Groups idle for
//! [`IDLE_EVICT`] go (their series end; if the name comes back it starts
//! again from zero, with a new start time).

use std::collections::BTreeMap;

use crate::{hist::Histogram, probes::ProbeStatus, report::Report};

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

/// A latency distribution, cumulative: bucket counts in the shared layout
/// and the sum of the values (exact where the probe keeps one, else
/// estimated from bucket midpoints).
#[derive(Debug, Clone, Default)]
pub struct CumHist {
    pub hist: Histogram,
    pub sum_ns: f64,
}

impl CumHist {
    fn add(&mut self, h: &Histogram, exact_sum_ns: Option<u64>) {
        self.hist.merge(h);
        self.sum_ns += match exact_sum_ns {
            Some(s) => s as f64,
            None => h
                .nonzero()
                .map(|(b, c)| {
                    let lo = agent_common::hist::lower_bound(b) as f64;
                    let hi = agent_common::hist::upper_bound(b).min(1 << 40) as f64;
                    (lo + hi) / 2.0 * c as f64
                })
                .sum(),
        };
    }
}

#[derive(Debug, Clone, Default)]
pub struct DiskCum {
    pub count: u64,
    pub bytes: u64,
    pub errors: u64,
    pub latency: CumHist,
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

    fn add_disk(&mut self, device: &str, op: &str, count: u64, bytes: u64, errors: u64, total: Option<&Histogram>) {
        let e = self.disk.entry((device.to_string(), op.to_string())).or_default();
        e.count += count;
        e.bytes += bytes;
        e.errors += errors;
        if let Some(h) = total {
            e.latency.add(h, None);
        }
    }

    fn add_thread_time(&mut self, on_cpu_ns: u64, runqueue_ns: u64, blocked_io_ns: u64, sleep_ns: u64) {
        self.on_cpu_ns += on_cpu_ns;
        self.runqueue_ns += runqueue_ns;
        self.blocked_io_ns += blocked_io_ns;
        self.sleep_ns += sleep_ns;
    }

    /// A TCP item; `connections` count once closed (state `CLOSED`).
    fn add_tcp(&mut self, state: &str, connections: u64, sent: u64, received: u64, retransmits: u64, rtt: Option<&Histogram>) {
        self.tcp_bytes_sent += sent;
        self.tcp_bytes_received += received;
        self.tcp_retransmits += retransmits;
        if state == "CLOSED" {
            self.tcp_connections += connections;
        }
        if let Some(h) = rtt {
            self.tcp_rtt.add(h, None);
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
            for s in &p.syscalls {
                let l = &s.latency;
                group.add_syscall(&s.name, l.count, l.errors, l.total_ns, Some(&l.hist));
            }
            for d in &p.disk {
                group.add_disk(&d.device, d.op, d.count, d.bytes, d.errors, Some(&d.total.hist));
            }
            if let Some(o) = &p.offcpu {
                group.add_thread_time(o.on_cpu_ns, o.runqueue_ns, o.blocked_io_ns, o.sleep_ns);
            }
            for t in &p.tcp {
                group.add_tcp(t.state, t.connections, t.bytes_sent, t.bytes_received, t.retransmits, Some(&t.rtt.hist));
            }
        }
        if let Some(o) = &r.other {
            self.other.last_seen_unix_ns = now;
            for s in &o.syscalls {
                let l = &s.latency;
                self.other.add_syscall(&s.name, l.count, l.errors, l.total_ns, Some(&l.hist));
            }
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

    fn evict(&mut self, now: i64) {
        let idle = now - IDLE_EVICT.as_nanos() as i64;
        self.groups.retain(|_, g| g.last_seen_unix_ns >= idle);
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
            let key = GroupKey { host: host.to_string(), process: p.comm.clone(), container_id: p.container_id.clone() };
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
                group.add_disk(&d.device, &d.op, d.count, d.bytes, d.errors, hist(&d.total).as_ref());
            }
            if let Some(o) = &p.offcpu {
                group.add_thread_time(o.on_cpu_ns, o.runqueue_ns, o.blocked_io_ns, o.sleep_ns);
            }
            for t in &p.tcp {
                group.add_tcp(&t.state, t.connections, t.bytes_sent, t.bytes_received, t.retransmits, hist(&t.rtt).as_ref());
            }
        }
        self.evict(now);
    }

    /// Every group, `other` last.
    pub fn all(&self) -> impl Iterator<Item = (GroupKey, &Group)> {
        self.groups.iter().map(|(k, g)| (k.clone(), g)).chain(std::iter::once((
            GroupKey { host: String::new(), process: "other".into(), container_id: String::new() },
            &self.other,
        )))
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
mod tests {
    use super::*;

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

//! The one catalog of what hostprobe exports as metrics: every figure of
//! [`crate::metrics`], named once after the OpenTelemetry conventions, which
//! both exporters render: OTLP as it is ([`crate::otlp`]), Prometheus with
//! the names the OpenTelemetry Collector would give the same OTLP data
//! ([`crate::prom`]: `.` becomes `_`, the unit a suffix, `_total` on
//! counters). A dashboard or an alert written against one path reads the
//! other. A figure added here reaches both; the README's table of metrics
//! is checked against this list by a test.

use crate::metrics::{CumHist, Group, GroupKey, Metrics, UNKNOWN_OWNER};

/// Attribute key and value pairs, in order.
pub type Attrs = Vec<(&'static str, String)>;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// Monotonic: OTLP Sum, Prometheus counter.
    Counter,
    Gauge,
    /// Latency in seconds, in the shared bucket layout.
    Histogram,
}

#[derive(Debug, Clone, Copy)]
pub enum Value<'a> {
    Int(u64),
    Float(f64),
    Hist(&'a CumHist),
}

/// One series: its group (an index into [`Catalog::groups`]; `None` for
/// the agent's own figures), its attributes and its value.
#[derive(Debug)]
pub struct Series<'a> {
    pub group: Option<usize>,
    pub attrs: Attrs,
    pub value: Value<'a>,
}

/// A metric and its series.
#[derive(Debug)]
pub struct Family<'a> {
    /// OpenTelemetry name, e.g. `hostprobe.disk.io.duration`.
    pub name: &'static str,
    /// UCUM unit: `s`, `By`, `{call}`..., or empty.
    pub unit: &'static str,
    pub help: &'static str,
    pub kind: Kind,
    pub series: Vec<Series<'a>>,
}

/// A process group as exported: its identity in both forms, and when its
/// series began.
#[derive(Debug)]
pub struct GroupAttrs {
    /// OTLP resource attributes (semantic conventions), each constant for
    /// the life of the group.
    pub resource: Attrs,
    /// The identifying subset that Prometheus carries as labels (keys as
    /// OTLP's, `.` to `_` when rendered).
    pub labels: Attrs,
    pub start_unix_ns: i64,
}

/// Everything exported at one moment.
#[derive(Debug)]
pub struct Catalog<'a> {
    pub groups: Vec<GroupAttrs>,
    pub families: Vec<Family<'a>>,
}

/// One metric of the catalog.
#[derive(Debug)]
pub struct Metric {
    /// The OpenTelemetry name; [`prometheus_name`] gives the other.
    pub name: &'static str,
    /// UCUM unit, as OpenTelemetry writes it.
    pub unit: &'static str,
    pub kind: Kind,
    pub help: &'static str,
}

/// Every metric in the catalog: the one list of names, units, kinds and
/// help texts that every export renders (and the README's table is
/// checked against).
pub const NAMES: &[Metric] = &[
    Metric { name: "hostprobe.syscalls", unit: "{call}", kind: Kind::Counter, help: "Syscalls completed." },
    Metric {
        name: "hostprobe.syscall.errors",
        unit: "{call}",
        kind: Kind::Counter,
        help: "Syscalls that returned an error.",
    },
    Metric { name: "hostprobe.syscall.time", unit: "s", kind: Kind::Counter, help: "Time spent inside each syscall." },
    Metric {
        name: "hostprobe.syscall.duration",
        unit: "s",
        kind: Kind::Histogram,
        help: "Syscall latency, all syscalls of the process.",
    },
    Metric { name: "hostprobe.disk.ios", unit: "{request}", kind: Kind::Counter, help: "Block I/O requests made." },
    Metric { name: "hostprobe.disk.io", unit: "By", kind: Kind::Counter, help: "Bytes of block I/O." },
    Metric {
        name: "hostprobe.disk.errors",
        unit: "{request}",
        kind: Kind::Counter,
        help: "Block I/O requests that failed.",
    },
    Metric {
        name: "hostprobe.disk.merged",
        unit: "{request}",
        kind: Kind::Counter,
        help: "Block I/O requests merged into another (counted in ios too).",
    },
    Metric {
        name: "hostprobe.disk.io.duration",
        unit: "s",
        kind: Kind::Histogram,
        help: "Block I/O latency, bio submitted to completed.",
    },
    Metric {
        name: "hostprobe.disk.queue.duration",
        unit: "s",
        kind: Kind::Histogram,
        help: "Block I/O time queued: bio submitted to issued to the device.",
    },
    Metric {
        name: "hostprobe.disk.service.duration",
        unit: "s",
        kind: Kind::Histogram,
        help: "Block I/O time at the device: issued to completed.",
    },
    Metric {
        name: "hostprobe.thread.time",
        unit: "s",
        kind: Kind::Counter,
        help: "Thread time by state: on a CPU, waiting for one, blocked (D), asleep.",
    },
    Metric {
        name: "hostprobe.runqueue.duration",
        unit: "s",
        kind: Kind::Histogram,
        help: "Run-queue latency: woken (or preempted) to running.",
    },
    Metric {
        name: "hostprobe.sleep.time",
        unit: "s",
        kind: Kind::Counter,
        help: "Time asleep, by the syscall slept in.",
    },
    Metric { name: "hostprobe.sleeps", unit: "{sleep}", kind: Kind::Counter, help: "Sleeps, by the syscall slept in." },
    Metric { name: "hostprobe.tcp.io", unit: "By", kind: Kind::Counter, help: "TCP bytes." },
    Metric {
        name: "hostprobe.tcp.retransmits",
        unit: "{segment}",
        kind: Kind::Counter,
        help: "TCP segments retransmitted.",
    },
    Metric { name: "hostprobe.tcp.resets", unit: "{reset}", kind: Kind::Counter, help: "TCP resets sent or received." },
    Metric {
        name: "hostprobe.tcp.connections.closed",
        unit: "{connection}",
        kind: Kind::Counter,
        help: "TCP connections closed.",
    },
    Metric {
        name: "hostprobe.tcp.connect.failures",
        unit: "{connection}",
        kind: Kind::Counter,
        help: "TCP connects that failed, by why.",
    },
    Metric {
        name: "hostprobe.tcp.rtt",
        unit: "s",
        kind: Kind::Histogram,
        help: "TCP smoothed RTT samples (at most one per 10 ms per connection).",
    },
    Metric { name: "hostprobe.tcp.connect.duration", unit: "s", kind: Kind::Histogram, help: "TCP connect latency." },
    Metric { name: "hostprobe.build.info", unit: "", kind: Kind::Gauge, help: "Always 1; the version in a label." },
    Metric { name: "hostprobe.agent.cpu.time", unit: "s", kind: Kind::Counter, help: "CPU time of hostprobe itself." },
    Metric {
        name: "hostprobe.agent.memory.rss",
        unit: "By",
        kind: Kind::Gauge,
        help: "Resident memory of hostprobe itself.",
    },
    Metric { name: "hostprobe.probe.active", unit: "", kind: Kind::Gauge, help: "1 when the probe is attached." },
    Metric {
        name: "hostprobe.events.lost",
        unit: "{event}",
        kind: Kind::Counter,
        help: "Events lost: full maps, and events the kernel skipped.",
    },
    Metric {
        name: "hostprobe.map.entries",
        unit: "{entry}",
        kind: Kind::Gauge,
        help: "Entries in use in a kernel map (where counted).",
    },
    Metric { name: "hostprobe.map.max_entries", unit: "{entry}", kind: Kind::Gauge, help: "Size of a kernel map." },
    Metric {
        name: "hostprobe.metric.groups",
        unit: "{group}",
        kind: Kind::Gauge,
        help: "Process groups exported (at most --metrics-max-processes, plus other).",
    },
    Metric {
        name: "hostprobe.processes.over_cap",
        unit: "{process}",
        kind: Kind::Gauge,
        help: "Processes past --max-processes in the last interval: their figures are in other, merged before ranking.",
    },
    Metric {
        name: "hostprobe.export.queue.length",
        unit: "{report}",
        kind: Kind::Gauge,
        help: "Reports waiting for the collector's acknowledgement.",
    },
    Metric {
        name: "hostprobe.export.errors",
        unit: "{error}",
        kind: Kind::Counter,
        help: "Failed attempts to stream to the collector.",
    },
    Metric {
        name: "hostprobe.export.last_error.timestamp",
        unit: "s",
        kind: Kind::Gauge,
        help: "When streaming to the collector last failed.",
    },
];

/// The Prometheus name of a metric, as the OpenTelemetry Collector's
/// translation writes it (without the `_total` a counter's samples get).
pub fn prometheus_name(name: &str, unit: &str) -> String {
    let mut n = name.replace('.', "_");
    let suffix = match unit {
        "s" => "seconds",
        "By" => "bytes",
        _ => "",
    };
    if !suffix.is_empty() && !n.ends_with(suffix) {
        n.push('_');
        n.push_str(suffix);
    }
    n
}

/// A Prometheus label name for an attribute key.
pub fn prometheus_label(key: &str) -> String {
    key.replace('.', "_")
}

/// What one family's series are built from.
struct Builder<'a> {
    families: Vec<Family<'a>>,
}

impl<'a> Builder<'a> {
    fn push(&mut self, name: &'static str, group: Option<usize>, attrs: Attrs, value: Value<'a>) {
        if let Value::Hist(h) = value {
            if h.hist.count() == 0 {
                return;
            }
        }
        let i = match self.families.iter().position(|f| f.name == name) {
            Some(i) => i,
            None => {
                let m =
                    NAMES.iter().find(|m| m.name == name).unwrap_or_else(|| panic!("{name} is not in catalog::NAMES"));
                self.families.push(Family { name, unit: m.unit, help: m.help, kind: m.kind, series: Vec::new() });
                self.families.len() - 1
            }
        };
        self.families[i].series.push(Series { group, attrs, value });
    }
}

fn with(attrs: &[(&'static str, String)], extra: &[(&'static str, &str)]) -> Attrs {
    let mut a = attrs.to_vec();
    a.extend(extra.iter().map(|(k, v)| (*k, v.to_string())));
    a
}

/// A group's identity: OTLP resource attributes and Prometheus labels.
fn group_attrs(k: &GroupKey, g: &Group, m: &Metrics) -> GroupAttrs {
    let mut labels: Attrs = Vec::new();
    let mut resource: Attrs = Vec::new();
    // On a collector, groups come from many agents: theirs, not its own.
    let fleet = !k.host.is_empty();
    let (host, instance) = if fleet { (&k.host, &g.agent_id) } else { (&m.host, &m.agent_id) };
    if !host.is_empty() {
        resource.push(("host.name", host.clone()));
        // The series of many hosts meet at a collector: the host tells them apart.
        if fleet {
            labels.push(("host.name", host.clone()));
        }
    }
    if !fleet && !m.host_id.is_empty() {
        resource.push(("host.id", m.host_id.clone()));
    }
    if !instance.is_empty() {
        resource.push(("service.instance.id", instance.clone()));
    }
    labels.push(("process.executable.name", k.process.clone()));
    if !g.exe.is_empty() {
        resource.push(("process.executable.path", g.exe.clone()));
    }
    if !k.container_id.is_empty() {
        labels.push(("container.id", k.container_id.clone()));
    }
    if let Some(uid) = &g.pod_uid {
        resource.push(("k8s.pod.uid", uid.clone()));
    }
    if let Some(names) = &g.k8s {
        labels.push(("k8s.namespace.name", names.namespace.clone()));
        labels.push(("k8s.pod.name", names.pod.clone()));
        labels.push(("k8s.container.name", names.container.clone()));
    }
    resource.extend(labels.iter().cloned());
    GroupAttrs { resource, labels, start_unix_ns: g.start_unix_ns }
}

/// The agent's own CPU time (s) and resident memory (bytes), from /proc.
fn own_usage() -> Option<(f64, u64)> {
    let me = procfs::process::Process::myself().ok()?;
    let stat = me.stat().ok()?;
    let cpu = (stat.utime + stat.stime) as f64 / procfs::ticks_per_second() as f64;
    Some((cpu, stat.rss * procfs::page_size()))
}

/// The catalog of `m` now.
pub fn catalog(m: &Metrics) -> Catalog<'_> {
    let mut b = Builder { families: Vec::new() };
    let mut groups = Vec::new();
    for (k, g) in m.all() {
        let gi = Some(groups.len());
        groups.push(group_attrs(&k, g, m));
        add_group(&mut b, gi, g, k.process == UNKNOWN_OWNER);
    }
    add_agent(&mut b, m);
    Catalog { groups, families: b.families }
}

/// A group's series; their attributes are their own, the group's are in
/// [`Catalog::groups`].
fn add_group<'a>(b: &mut Builder<'a>, gi: Option<usize>, g: &'a Group, unknown_owner: bool) {
    use Value::{Float, Hist, Int};
    let l: &Attrs = &Vec::new();
    let secs = |ns: u64| Float(ns as f64 / 1e9);
    if !unknown_owner {
        for (name, s) in &g.syscalls {
            let a = with(l, &[("hostprobe.syscall", name)]);
            b.push("hostprobe.syscalls", gi, a.clone(), Int(s.calls));
            b.push("hostprobe.syscall.errors", gi, a.clone(), Int(s.errors));
            b.push("hostprobe.syscall.time", gi, a, secs(s.time_ns));
        }
        b.push("hostprobe.syscall.duration", gi, l.clone(), Hist(&g.syscall_latency));
        for ((dev, op), d) in &g.disk {
            let mut a = with(l, &[("system.device", dev), ("hostprobe.disk.op", op)]);
            // The convention's enum is read/write; flush, discard and the
            // rest are only in hostprobe.disk.op.
            if op == "read" || op == "write" {
                a.push(("disk.io.direction", op.clone()));
            }
            b.push("hostprobe.disk.ios", gi, a.clone(), Int(d.count));
            b.push("hostprobe.disk.io", gi, a.clone(), Int(d.bytes));
            b.push("hostprobe.disk.errors", gi, a.clone(), Int(d.errors));
            b.push("hostprobe.disk.merged", gi, a.clone(), Int(d.merged));
            b.push("hostprobe.disk.io.duration", gi, a.clone(), Hist(&d.total));
            b.push("hostprobe.disk.queue.duration", gi, a.clone(), Hist(&d.queue));
            b.push("hostprobe.disk.service.duration", gi, a, Hist(&d.service));
        }
        let t = &g.threads;
        if t.on_cpu_ns + t.runqueue_ns + t.blocked_io_ns + t.sleep_ns > 0 {
            for (state, ns) in [
                ("on_cpu", t.on_cpu_ns),
                ("runqueue", t.runqueue_ns),
                ("blocked_io", t.blocked_io_ns),
                ("sleep", t.sleep_ns),
            ] {
                let a = with(l, &[("hostprobe.thread.state", state)]);
                b.push("hostprobe.thread.time", gi, a, secs(ns));
            }
        }
        b.push("hostprobe.runqueue.duration", gi, l.clone(), Hist(&t.runqueue));
        for (name, (ns, count)) in &t.sleep {
            let a = with(l, &[("hostprobe.syscall", name)]);
            b.push("hostprobe.sleep.time", gi, a.clone(), secs(*ns));
            b.push("hostprobe.sleeps", gi, a, Int(*count));
        }
    }
    for (remote, c) in &g.tcp {
        let r = with(l, &[("hostprobe.tcp.remote", remote)]);
        if c.bytes_sent + c.bytes_received + c.connections + c.refused + c.timeouts > 0 {
            for (dir, v) in [("transmit", c.bytes_sent), ("receive", c.bytes_received)] {
                let a = with(&r, &[("network.io.direction", dir)]);
                b.push("hostprobe.tcp.io", gi, a, Int(v));
            }
            b.push("hostprobe.tcp.retransmits", gi, r.clone(), Int(c.retransmits));
            b.push("hostprobe.tcp.resets", gi, r.clone(), Int(c.resets));
            b.push("hostprobe.tcp.connections.closed", gi, r.clone(), Int(c.connections));
            for (why, v) in [("refused", c.refused), ("timeout", c.timeouts)] {
                let a = with(&r, &[("hostprobe.tcp.failure", why)]);
                b.push("hostprobe.tcp.connect.failures", gi, a, Int(v));
            }
        }
        b.push("hostprobe.tcp.rtt", gi, r.clone(), Hist(&c.rtt));
        b.push("hostprobe.tcp.connect.duration", gi, r, Hist(&c.connect));
    }
}

fn add_agent<'a>(b: &mut Builder<'a>, m: &'a Metrics) {
    use Value::{Float, Int};
    let build = vec![("hostprobe.version", env!("CARGO_PKG_VERSION").to_string())];
    b.push("hostprobe.build.info", None, build, Int(1));
    if let Some((cpu, rss)) = own_usage() {
        b.push("hostprobe.agent.cpu.time", None, vec![], Float(cpu));
        b.push("hostprobe.agent.memory.rss", None, vec![], Int(rss));
    }
    let h = &m.health;
    let probe = |name: &str| vec![("hostprobe.probe", name.to_string())];
    for p in &h.probes {
        b.push("hostprobe.probe.active", None, probe(p.name), Int(u64::from(p.active)));
    }
    for (p, n) in &h.lost {
        b.push("hostprobe.events.lost", None, probe(p), Int(*n));
    }
    for p in &h.probes {
        for map in &p.maps {
            let a = vec![("hostprobe.probe", p.name.to_string()), ("hostprobe.map", map.name.clone())];
            if let Some(n) = map.entries {
                b.push("hostprobe.map.entries", None, a.clone(), Int(n));
            }
            b.push("hostprobe.map.max_entries", None, a, Int(u64::from(map.max_entries)));
        }
    }
    b.push("hostprobe.metric.groups", None, vec![], Int(m.groups.len() as u64));
    b.push("hostprobe.processes.over_cap", None, vec![], Int(h.processes_over_cap));
    if let Some(q) = h.export_queue {
        b.push("hostprobe.export.queue.length", None, vec![], Int(q));
        b.push("hostprobe.export.errors", None, vec![], Int(h.export_errors));
        if let Some(t) = h.export_last_error_unix {
            b.push("hostprobe.export.last_error.timestamp", None, vec![], Int(t.max(0) as u64));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prometheus_names_follow_the_collectors_translation() {
        assert_eq!(prometheus_name("hostprobe.disk.io.duration", "s"), "hostprobe_disk_io_duration_seconds");
        assert_eq!(prometheus_name("hostprobe.tcp.io", "By"), "hostprobe_tcp_io_bytes");
        assert_eq!(prometheus_name("hostprobe.syscalls", "{call}"), "hostprobe_syscalls");
        assert_eq!(
            prometheus_name("hostprobe.export.last_error.timestamp", "s"),
            "hostprobe_export_last_error_timestamp_seconds"
        );
        assert_eq!(prometheus_label("process.executable.name"), "process_executable_name");
    }

    #[test]
    fn every_figure_of_the_sample_report_is_in_the_catalog() {
        let mut m = Metrics::new(2);
        m.add(&crate::report::tests::sample());
        let c = catalog(&m);
        let names: Vec<&str> = c.families.iter().map(|f| f.name).collect();
        for Metric { name, .. } in NAMES {
            // Probe and export health come from live probes and streams.
            if name.starts_with("hostprobe.export.")
                || name.starts_with("hostprobe.probe.")
                || name.starts_with("hostprobe.map.")
                || *name == "hostprobe.events.lost"
            {
                continue;
            }
            assert!(names.contains(name), "{name} missing from {names:?}");
        }
    }

    #[test]
    fn the_readme_lists_every_metric_on_both_paths() {
        let readme = include_str!("../../README.md");
        for Metric { name, unit, kind, .. } in NAMES {
            let mut prom = prometheus_name(name, unit);
            if *kind == Kind::Counter {
                prom.push_str("_total");
            }
            let row = readme.lines().find(|l| l.starts_with('|') && l.contains(&format!("`{name}`")));
            let row = row.unwrap_or_else(|| panic!("README: no row for {name}"));
            assert!(row.contains(&format!("`{prom}`")), "README row for {name} lacks `{prom}`: {row}");
        }
    }
}

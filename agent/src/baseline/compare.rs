//! `hostprobe compare BEFORE AFTER`: per process group (name and cgroup)
//! and per resource, what changed between two recordings, by the tests of
//! [`super::stats`], biggest first; `--fail-on` turns chosen changes into
//! exit status 1 for scripts and CI.

use std::collections::BTreeMap;

use serde::Serialize;

use super::{stats, Dist, Group, Recording};
use crate::units::duration;

#[derive(Debug, clap::Args)]
pub struct CompareArgs {
    /// The baseline: a file from `hostprobe record`.
    #[arg(value_name = "BEFORE")]
    pub before: String,
    /// The run to compare with it.
    #[arg(value_name = "AFTER")]
    pub after: String,
    /// text (for people) or json (one object: changes[], biggest first).
    #[arg(long, short, value_enum, default_value_t = CompareOutput::Text)]
    pub output: CompareOutput,
    /// Exit with status 1 when a reported change matches EXPR: terms
    /// `[RESOURCE:]STAT OP VALUE` separated by commas, any of which fails.
    /// STAT is p50, p90 or p99 (a latency quantile, VALUE in %), share
    /// (of thread time, VALUE in points), rate (events per second, in %),
    /// or `any` alone (every reported change). OP is > or <. RESOURCE is
    /// cpu, runqueue, disk, network, lock, sleep, other, syscall or offcpu.
    #[arg(long, value_name = "EXPR", value_parser = parse_fail_on)]
    pub fail_on: Option<FailOn>,
    /// Smallest relative change of a latency quantile that is reported, on
    /// top of the statistical test (default: one histogram bucket).
    #[arg(long, default_value = "12.5%", value_parser = parse_percent, value_name = "PERCENT")]
    pub min_change: f64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum CompareOutput {
    Text,
    Json,
}

fn parse_percent(s: &str) -> Result<f64, String> {
    let v: f64 =
        s.trim().trim_end_matches('%').parse().map_err(|_| format!("{s:?} is not a percentage, e.g. 12.5%"))?;
    if !(0.0..=1000.0).contains(&v) {
        return Err(format!("{s} is out of range (0% to 1000%)"));
    }
    Ok(v / 100.0)
}

/// One term of `--fail-on`.
#[derive(Debug, Clone, PartialEq)]
pub struct Term {
    pub resource: Option<String>,
    /// p50, p90, p99, share, rate, any.
    pub stat: String,
    /// `>` (true) or `<`.
    pub above: bool,
    /// A fraction: +0.2 for +20% or +20 points.
    pub value: f64,
}

#[derive(Debug, Clone, PartialEq)]
pub struct FailOn {
    pub text: String,
    pub terms: Vec<Term>,
}

const RESOURCES: [&str; 9] = ["cpu", "runqueue", "disk", "network", "lock", "sleep", "other", "syscall", "offcpu"];

pub fn parse_fail_on(s: &str) -> Result<FailOn, String> {
    let help = "write terms like 'p99 > +20%', 'disk:p50 > +50%', 'share > +10', 'network:rate > +100%' or 'any'";
    let mut terms = Vec::new();
    for raw in s.split(',').map(str::trim) {
        let (resource, rest) = match raw.split_once(':') {
            Some((r, rest)) => {
                let r = r.trim();
                if !RESOURCES.contains(&r) {
                    return Err(format!("unknown resource {r:?} in {raw:?}: use one of {}", RESOURCES.join(", ")));
                }
                (Some(r.to_string()), rest.trim())
            }
            None => (None, raw),
        };
        if rest == "any" {
            terms.push(Term { resource, stat: "any".into(), above: true, value: 0.0 });
            continue;
        }
        let (stat, above, value) = match (rest.split_once('>'), rest.split_once('<')) {
            (Some((l, r)), None) => (l.trim(), true, r.trim()),
            (None, Some((l, r))) => (l.trim(), false, r.trim()),
            _ => return Err(format!("{raw:?} has no single > or <: {help}")),
        };
        if !["p50", "p90", "p99", "share", "rate"].contains(&stat) {
            return Err(format!("unknown statistic {stat:?} in {raw:?}: {help}"));
        }
        let number = value.trim_end_matches('%').trim_end_matches("pts").trim();
        let v: f64 = number.parse().map_err(|_| format!("{value:?} in {raw:?} is not a number: {help}"))?;
        terms.push(Term { resource, stat: stat.into(), above, value: v / 100.0 });
    }
    if terms.is_empty() {
        return Err(help.into());
    }
    Ok(FailOn { text: s.to_string(), terms })
}

/// A quantile's change.
#[derive(Debug, Clone, Serialize)]
pub struct QuantileChange {
    pub q: &'static str,
    pub before_ns: u64,
    pub after_ns: u64,
    /// after / before.
    pub ratio: f64,
    /// The confidence intervals ([lo, hi] ns; hi null when unbounded).
    pub before_interval: [Option<f64>; 2],
    pub after_interval: [Option<f64>; 2],
    /// It passed the test (only these count as changes).
    pub significant: bool,
}

/// One change between the runs.
#[derive(Debug, Clone, Serialize)]
pub struct Change {
    /// Process name and cgroup; for a device, its name and an empty cgroup.
    pub comm: String,
    pub cgroup: String,
    /// cpu, runqueue, disk, network, lock, sleep, other, syscall, offcpu.
    pub resource: &'static str,
    /// What changed, e.g. `pwrite64 latency`, `loop0 write queue time`.
    pub what: String,
    /// latency (quantiles), share (of thread time), rate (events per
    /// second), new or gone (a syscall taking time in one run only).
    pub kind: &'static str,
    /// up or down.
    pub direction: &'static str,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub quantiles: Vec<QuantileChange>,
    /// Shares (fractions of thread time) or rates (per second), before and after.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub before: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub after: Option<f64>,
    /// The line people read.
    pub summary: String,
    /// 1: where the time went; 2: the resources' own figures (disk, TCP,
    /// run queue); 3: syscalls and sleeps, as the process sees them.
    pub tier: u8,
    #[serde(skip)]
    magnitude: f64,
}

#[derive(Debug, Serialize)]
pub struct RunInfo {
    pub file: String,
    pub host: String,
    pub kernel: String,
    pub hostprobe_version: String,
    pub started: String,
    pub duration_ns: u64,
    pub groups: usize,
}

#[derive(Debug, Serialize)]
pub struct Comparison {
    pub before: RunInfo,
    pub after: RunInfo,
    /// Reported changes, biggest first.
    pub changes: Vec<Change>,
    /// Process groups in both runs, and distributions compared in them.
    pub groups_compared: usize,
    pub distributions_compared: usize,
    /// `comm [cgroup]` of groups in one run only.
    pub only_before: Vec<String>,
    pub only_after: Vec<String>,
    /// Differences in how the runs were made (kernel, version, probes, filters).
    pub caveats: Vec<String>,
    /// With `--fail-on`: the changes (indexes into `changes`) that matched.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub failed_on: Option<Vec<usize>>,
}

fn info(file: &str, r: &Recording) -> RunInfo {
    RunInfo {
        file: file.into(),
        host: r.host.clone(),
        kernel: r.kernel.clone(),
        hostprobe_version: r.hostprobe_version.clone(),
        started: r.started.clone(),
        duration_ns: r.duration_ns,
        groups: r.groups.len(),
    }
}

/// What a share is called, and its resource.
fn share_name(name: &str) -> (&'static str, &'static str) {
    match name {
        "on_cpu" => ("cpu", "time on a CPU"),
        "runqueue" => ("runqueue", "time waiting for a CPU"),
        "disk" => ("disk", "time blocked (D state: disk)"),
        "network" => ("network", "time waiting on the network"),
        "lock" => ("lock", "time waiting for locks"),
        "sleep" => ("sleep", "time asleep waiting for work"),
        _ => ("other", "other time off the CPU"),
    }
}

/// Compares the runs: everything measured in both, per group.
struct Ctx<'a> {
    a: &'a Recording,
    b: &'a Recording,
    min_change: f64,
    changes: Vec<Change>,
    compared: usize,
}

impl Ctx<'_> {
    fn latency(&mut self, key: (&str, &str), resource: &'static str, what: String, tier: u8, da: &Dist, db: &Dist) {
        let (Some(ha), Some(hb)) = (da.histogram(), db.histogram()) else { return };
        if ha.count() == 0 || hb.count() == 0 {
            return;
        }
        self.compared += 1;
        let per_second =
            |h: &crate::hist::Histogram, r: &Recording| h.count() as f64 * 1e9 / r.duration_ns.max(1) as f64;
        let rate = per_second(&ha, self.a).max(per_second(&hb, self.b));
        let mut qs = Vec::new();
        for (name, q, col) in [("p50", 0.5, 2), ("p90", 0.9, 3), ("p99", 0.99, 4)] {
            let slices = |d: &Dist| d.slices.iter().map(|s| (s[1], s[col])).collect::<Vec<_>>();
            let (Some(ea), Some(eb)) =
                (stats::estimate(&ha, da.max_ns, q, &slices(da)), stats::estimate(&hb, db.max_ns, q, &slices(db)))
            else {
                continue;
            };
            let bound = |e: &stats::Estimate| [Some(e.lo), e.hi.is_finite().then_some(e.hi)];
            qs.push(QuantileChange {
                q: name,
                before_ns: ea.value as u64,
                after_ns: eb.value as u64,
                ratio: eb.value / ea.value.max(1.0),
                before_interval: bound(&ea),
                after_interval: bound(&eb),
                significant: stats::quantile_changed(&ea, &eb, self.min_change)
                    && stats::matters(eb.value - ea.value, rate),
            });
        }
        let sig: Vec<&QuantileChange> = qs.iter().filter(|q| q.significant).collect();
        let Some(top) = sig.iter().max_by(|x, y| x.ratio.ln().abs().total_cmp(&y.ratio.ln().abs())) else { return };
        let direction = if top.ratio > 1.0 { "up" } else { "down" };
        let magnitude = top.ratio.log2().abs();
        let parts: Vec<String> = sig
            .iter()
            .map(|q| format!("{} {} -> {} ({})", q.q, duration(q.before_ns), duration(q.after_ns), times(q.ratio)))
            .collect();
        let summary = format!("{what}: {} ({} samples before, {} after)", parts.join(", "), ha.count(), hb.count());
        let c = self.make(key, resource, what, "latency", direction, tier, magnitude, summary, qs);
        self.changes.push(c);
    }

    fn share(
        &mut self,
        key: (&str, &str),
        resource: &'static str,
        what: String,
        tier: u8,
        a: (&[u64], &[u64]),
        b: (&[u64], &[u64]),
    ) {
        let (Some(sa), Some(sb)) = (stats::share(a.0, a.1), stats::share(b.0, b.1)) else { return };
        self.compared += 1;
        if !stats::share_changed(sa, sb, stats::MIN_SHARE) {
            return;
        }
        let delta = sb.0 - sa.0;
        let summary = format!(
            "{what}: {:.0}% -> {:.0}% of its thread time ({:+.0} points)",
            sa.0 * 100.0,
            sb.0 * 100.0,
            delta * 100.0
        );
        let direction = if delta > 0.0 { "up" } else { "down" };
        let mut c = self.make(key, resource, what, "share", direction, tier, delta.abs() * 100.0, summary, vec![]);
        c.before = Some(sa.0);
        c.after = Some(sb.0);
        self.changes.push(c);
    }

    fn count(&mut self, key: (&str, &str), what: String, a: u64, b: u64) {
        let (ta, tb) = (self.a.duration_ns, self.b.duration_ns);
        if a + b == 0 {
            return;
        }
        self.compared += 1;
        if !stats::count_changed(a, ta, b, tb) {
            return;
        }
        let (ra, rb) = (a as f64 * 1e9 / ta.max(1) as f64, b as f64 * 1e9 / tb.max(1) as f64);
        let ratio = (rb + 0.5e9 / tb as f64) / (ra + 0.5e9 / ta as f64);
        let summary = format!("{what}: {ra:.1}/s -> {rb:.1}/s ({a} -> {b} events)");
        let direction = if rb > ra { "up" } else { "down" };
        let mut c = self.make(key, "network", what, "rate", direction, 2, ratio.log2().abs(), summary, vec![]);
        c.before = Some(ra);
        c.after = Some(rb);
        self.changes.push(c);
    }

    /// A change of group `key` (the caller keeps it).
    #[allow(clippy::too_many_arguments)]
    fn make(
        &self,
        key: (&str, &str),
        resource: &'static str,
        what: String,
        kind: &'static str,
        direction: &'static str,
        tier: u8,
        magnitude: f64,
        summary: String,
        quantiles: Vec<QuantileChange>,
    ) -> Change {
        Change {
            comm: key.0.to_string(),
            cgroup: key.1.to_string(),
            resource,
            what,
            kind,
            direction,
            quantiles,
            before: None,
            after: None,
            summary,
            tier,
            magnitude,
        }
    }

    fn group(&mut self, ga: &Group, gb: &Group) {
        let key = (ga.comm.as_str(), ga.cgroup.as_str());
        let names: std::collections::BTreeSet<&String> = ga.time_split.keys().chain(gb.time_split.keys()).collect();
        let empty = Vec::new();
        for name in names {
            let (resource, what) = share_name(name);
            let pa = ga.time_split.get(name).unwrap_or(&empty);
            let pb = gb.time_split.get(name).unwrap_or(&empty);
            self.share(key, resource, what.into(), 1, (pa, &ga.thread_ns), (pb, &gb.thread_ns));
        }
        self.latency(key, "runqueue", "run-queue wait".into(), 2, &ga.runqueue, &gb.runqueue);
        for da in &ga.disk {
            if let Some(db) = gb.disk.iter().find(|d| d.device == da.device && d.op == da.op) {
                let what = |t: &str| format!("{} {} {t} time", da.device, da.op);
                self.latency(key, "disk", what("queue"), 2, &da.queue, &db.queue);
                self.latency(key, "disk", what("service"), 2, &da.service, &db.service);
            }
        }
        for ta in &ga.tcp {
            let Some(tb) = gb.tcp.iter().find(|t| t.remote == ta.remote && t.direction == ta.direction) else {
                continue;
            };
            // Connections whose open the probe did not see count as
            // accepted: either way the RTT is to that remote.
            let to = "to";
            self.latency(key, "network", format!("TCP RTT {to} {}", ta.remote), 2, &ta.rtt, &tb.rtt);
            self.latency(key, "network", format!("TCP connect time {to} {}", ta.remote), 2, &ta.connect, &tb.connect);
            self.count(key, format!("TCP retransmits {to} {}", ta.remote), ta.retransmits, tb.retransmits);
            self.count(
                key,
                format!("failed connects to {}", ta.remote),
                ta.refused + ta.timeouts,
                tb.refused + tb.timeouts,
            );
        }
        let thread = |g: &Group| g.thread_ns.iter().sum::<u64>();
        let names: std::collections::BTreeSet<&String> = ga.syscalls.keys().chain(gb.syscalls.keys()).collect();
        for name in names {
            match (ga.syscalls.get(name), gb.syscalls.get(name)) {
                (Some(sa), Some(sb)) => {
                    self.latency(key, "syscall", format!("{name} latency"), 3, &sa.latency, &sb.latency)
                }
                (one_a, one_b) => {
                    // In one run only: a change when it took a share of the
                    // thread time that would be reported as a share.
                    let (s, g, new) = match (one_a, one_b) {
                        (Some(s), None) => (s, ga, false),
                        (None, Some(s)) => (s, gb, true),
                        _ => continue,
                    };
                    let spent = s.latency.sum_ns.unwrap_or(0) as f64 / thread(g).max(1) as f64;
                    if s.count < stats::MIN_COUNT || spent < stats::MIN_SHARE {
                        continue;
                    }
                    let p50 = s.latency.histogram().and_then(|h| h.quantile(0.5, s.latency.max_ns)).unwrap_or(0);
                    let (kind, direction, when) =
                        if new { ("new", "up", "only after") } else { ("gone", "down", "only before") };
                    let summary = format!(
                        "{name} ({when}): {} calls, p50 {}, {:.0}% of its thread time",
                        s.count,
                        duration(p50),
                        spent * 100.0
                    );
                    let c = self.make(
                        key,
                        "syscall",
                        format!("{name} latency"),
                        kind,
                        direction,
                        3,
                        f64::MAX,
                        summary,
                        vec![],
                    );
                    self.changes.push(c);
                }
            }
        }
        let names: std::collections::BTreeSet<&String> =
            ga.sleep_by_syscall.keys().chain(gb.sleep_by_syscall.keys()).collect();
        for name in names {
            let pa = ga.sleep_by_syscall.get(name).map_or(&empty, |s| &s.ns);
            let pb = gb.sleep_by_syscall.get(name).map_or(&empty, |s| &s.ns);
            self.share(key, "offcpu", format!("time asleep in {name}"), 3, (pa, &ga.thread_ns), (pb, &gb.thread_ns));
        }
    }
}

fn times(ratio: f64) -> String {
    if ratio >= 1.0 {
        format!("x{ratio:.1}")
    } else {
        format!("-{:.0}%", (1.0 - ratio) * 100.0)
    }
}

fn label(comm: &str, cgroup: &str) -> String {
    if cgroup.is_empty() {
        comm.to_string()
    } else {
        format!("{comm} [{cgroup}]")
    }
}

/// Compares two recordings.
pub fn compare(files: (&str, &str), a: &Recording, b: &Recording, min_change: f64) -> Comparison {
    let mut ctx = Ctx { a, b, min_change, changes: Vec::new(), compared: 0 };
    let by_key = |r: &Recording| -> BTreeMap<(String, String), usize> {
        r.groups.iter().enumerate().map(|(i, g)| ((g.comm.clone(), g.cgroup.clone()), i)).collect()
    };
    let (ka, kb) = (by_key(a), by_key(b));
    let mut groups = 0;
    for (k, ia) in &ka {
        if let Some(ib) = kb.get(k) {
            groups += 1;
            ctx.group(&a.groups[*ia], &b.groups[*ib]);
        }
    }
    for da in &a.devices {
        if let Some(db) = b.devices.iter().find(|d| d.device == da.device && d.op == da.op) {
            let key = (da.device.as_str(), "");
            ctx.latency(
                key,
                "disk",
                format!("{} {} queue time, all processes", da.device, da.op),
                2,
                &da.queue,
                &db.queue,
            );
            ctx.latency(
                key,
                "disk",
                format!("{} {} service time, all processes", da.device, da.op),
                2,
                &da.service,
                &db.service,
            );
        }
    }
    let mut changes = ctx.changes;
    // Where the time went first (what grew before what shrank: shares add
    // up to the thread time, so a growth shows again as a loss elsewhere),
    // then the resources' own figures, then what the syscalls saw; largest
    // within each.
    changes.sort_by(|x, y| {
        (x.tier, x.tier == 1 && x.direction == "down")
            .cmp(&(y.tier, y.tier == 1 && y.direction == "down"))
            .then(y.magnitude.total_cmp(&x.magnitude))
    });
    let only = |from: &BTreeMap<(String, String), usize>, other: &BTreeMap<(String, String), usize>| {
        from.keys().filter(|k| !other.contains_key(*k)).map(|(c, g)| label(c, g)).collect::<Vec<_>>()
    };
    let mut caveats = Vec::new();
    if a.kernel != b.kernel {
        caveats.push(format!("different kernels: {} vs {}", a.kernel, b.kernel));
    }
    if a.hostprobe_version != b.hostprobe_version {
        caveats.push(format!("different hostprobe versions: {} vs {}", a.hostprobe_version, b.hostprobe_version));
    }
    if a.host != b.host {
        caveats.push(format!("different hosts: {} vs {}", a.host, b.host));
    }
    if a.filters != b.filters {
        caveats.push(format!("different filters: {:?} vs {:?}", a.filters, b.filters));
    }
    let active = |r: &Recording| r.probes.iter().filter(|p| p.active).map(|p| p.name.clone()).collect::<Vec<_>>();
    if active(a) != active(b) {
        caveats.push(format!("different probes: {:?} vs {:?}", active(a), active(b)));
    }
    for (r, when) in [(a, "before"), (b, "after")] {
        for p in r.probes.iter().filter(|p| p.lost > 0) {
            caveats.push(format!("the {when} run's {} probe lost {} events", p.name, p.lost));
        }
    }
    Comparison {
        before: info(files.0, a),
        after: info(files.1, b),
        changes,
        groups_compared: groups,
        distributions_compared: ctx.compared,
        only_before: only(&ka, &kb),
        only_after: only(&kb, &ka),
        caveats,
        failed_on: None,
    }
}

/// Whether change `c` matches term `t`.
pub fn matches(t: &Term, c: &Change) -> bool {
    if t.resource.as_deref().is_some_and(|r| r != c.resource) {
        return false;
    }
    let beyond = |v: f64| if t.above { v > t.value } else { v < t.value };
    match (t.stat.as_str(), c.kind) {
        ("any", _) => true,
        // A syscall taking time in one run only is beyond any latency bound.
        (_, "new") => t.above && t.stat.starts_with('p'),
        (_, "gone") => !t.above && t.stat.starts_with('p'),
        (q, "latency") => c.quantiles.iter().any(|x| x.q == q && x.significant && beyond(x.ratio - 1.0)),
        ("share", "share") => beyond(c.after.unwrap_or(0.0) - c.before.unwrap_or(0.0)),
        ("rate", "rate") => {
            let (a, b) = (c.before.unwrap_or(0.0), c.after.unwrap_or(0.0));
            beyond(if a > 0.0 { b / a - 1.0 } else { f64::INFINITY })
        }
        _ => false,
    }
}

/// The comparison for people.
pub fn text(c: &Comparison) -> String {
    let run = |r: &RunInfo| format!("{} ({}, {}, {})", r.file, r.host, duration(r.duration_ns), r.started);
    let mut out = format!("hostprobe compare: {}\n               -> {}\n", run(&c.before), run(&c.after));
    for caveat in &c.caveats {
        out.push_str(&format!("note: {caveat}\n"));
    }
    if c.changes.is_empty() {
        out.push_str(&format!(
            "\nNo change: {} process groups and {} distributions and shares compared; none differs by more than its resolution and noise allow.\n",
            c.groups_compared, c.distributions_compared
        ));
    } else {
        out.push_str(&format!(
            "\n{} changes in {} process groups compared ({} distributions and shares), biggest first:\n\n",
            c.changes.len(),
            c.groups_compared,
            c.distributions_compared
        ));
        let failed: &[usize] = c.failed_on.as_deref().unwrap_or(&[]);
        for (i, ch) in c.changes.iter().enumerate() {
            let mark = if failed.contains(&i) { " [fail-on]" } else { "" };
            out.push_str(&format!(
                "{:>3}. {:<8} {:<4} {}\n     {}{mark}\n",
                i + 1,
                ch.resource,
                ch.direction,
                label(&ch.comm, &ch.cgroup),
                ch.summary
            ));
        }
    }
    if !c.only_before.is_empty() {
        out.push_str(&format!("\nOnly before: {}\n", c.only_before.join(", ")));
    }
    if !c.only_after.is_empty() {
        out.push_str(&format!("Only after: {}\n", c.only_after.join(", ")));
    }
    out
}

pub fn run(args: &CompareArgs) -> std::process::ExitCode {
    let read = |p: &str| super::read(p);
    let (a, b) = match (read(&args.before), read(&args.after)) {
        (Ok(a), Ok(b)) => (a, b),
        (Err(e), _) | (_, Err(e)) => {
            eprintln!("hostprobe: {e}");
            return std::process::ExitCode::from(2);
        }
    };
    let mut c = compare((&args.before, &args.after), &a, &b, args.min_change);
    if let Some(f) = &args.fail_on {
        let hit: Vec<usize> = c
            .changes
            .iter()
            .enumerate()
            .filter(|(_, ch)| f.terms.iter().any(|t| matches(t, ch)))
            .map(|(i, _)| i)
            .collect();
        c.failed_on = Some(hit);
    }
    let out = match args.output {
        CompareOutput::Json => serde_json::to_string(&c).unwrap_or_default() + "\n",
        CompareOutput::Text => text(&c),
    };
    print!("{out}");
    match (&args.fail_on, &c.failed_on) {
        (Some(f), Some(hit)) if !hit.is_empty() => {
            eprintln!("hostprobe: {} changes match --fail-on '{}'", hit.len(), f.text);
            std::process::ExitCode::from(1)
        }
        _ => std::process::ExitCode::SUCCESS,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fail_on_terms_parse_and_bad_ones_say_how() {
        let f = parse_fail_on("p99 > +20%, disk:p50 > 50%, share > +10, rate < -50%, any").unwrap();
        assert_eq!(f.terms.len(), 5);
        assert_eq!(f.terms[0], Term { resource: None, stat: "p99".into(), above: true, value: 0.2 });
        assert_eq!(f.terms[1].resource.as_deref(), Some("disk"));
        assert!((f.terms[2].value - 0.1).abs() < 1e-12);
        assert!(!f.terms[3].above && (f.terms[3].value + 0.5).abs() < 1e-12);
        for bad in ["p98 > 1%", "p99 >> 2", "p99 = 3%", "gpu:p99 > 1%", "p99 > lots", ""] {
            let e = parse_fail_on(bad).unwrap_err();
            assert!(e.contains("write terms like") || e.contains("use one of"), "{bad}: {e}");
        }
    }

    fn dist(values: &[(u64, u64)], slices: u32) -> Dist {
        // `values`: (ns, count), spread over `slices` slices.
        let mut h = crate::hist::Histogram::default();
        let mut max = 0;
        for (ns, n) in values {
            for _ in 0..*n {
                h.record(*ns);
            }
            max = max.max(*ns);
        }
        let q = |q| h.quantile(q, max).unwrap();
        Dist {
            count: h.count(),
            sum_ns: None,
            max_ns: max,
            buckets: h.nonzero().map(|(i, c)| [i as u64, c]).collect(),
            slices: (0..slices)
                .map(|s| [u64::from(s), h.count() / u64::from(slices), q(0.5), q(0.9), q(0.99)])
                .collect(),
        }
    }

    fn recording(write_ns: u64, disk_share: u64) -> Recording {
        let slices = 6;
        let mut g =
            Group { comm: "db".into(), cgroup: "/app".into(), thread_ns: vec![1_000; slices], ..Default::default() };
        g.time_split.insert("disk".into(), vec![disk_share; slices]);
        g.time_split.insert("on_cpu".into(), vec![1_000 - disk_share; slices]);
        let spread: Vec<(u64, u64)> = (0..100).map(|i| (write_ns + write_ns * i / 200, 100)).collect();
        g.syscalls.insert(
            "pwrite64".into(),
            super::super::Syscall { count: 10_000, errors: 0, missed_starts: 0, latency: dist(&spread, slices as u32) },
        );
        Recording {
            format: super::super::FORMAT.into(),
            version: super::super::VERSION,
            hostprobe_version: "t".into(),
            host: "h".into(),
            kernel: "k".into(),
            command: vec![],
            started: "s".into(),
            duration_ns: 3_000_000_000,
            slice_ns: 500_000_000,
            slices: slices as u32,
            filters: vec![],
            probes: vec![],
            histogram_layout: super::super::Layout::ours(),
            groups: vec![g],
            devices: vec![],
        }
    }

    #[test]
    fn the_time_split_comes_first_growth_before_loss_and_fail_on_matches() {
        let (a, b) = (recording(30_000, 600), recording(20_000_000, 990));
        let c = compare(("a", "b"), &a, &b, stats::MIN_CHANGE);
        let top: Vec<(&str, &str, &str)> = c.changes.iter().map(|c| (c.resource, c.kind, c.direction)).collect();
        assert_eq!(
            top,
            [("disk", "share", "up"), ("cpu", "share", "down"), ("syscall", "latency", "up")],
            "{}",
            text(&c)
        );
        let p99 = parse_fail_on("p99 > +20%").unwrap();
        assert!(matches(&p99.terms[0], &c.changes[2]));
        assert!(!matches(&p99.terms[0], &c.changes[0]));
        assert!(matches(&parse_fail_on("disk:share > +30").unwrap().terms[0], &c.changes[0]));
        assert!(!matches(&parse_fail_on("disk:share > +50").unwrap().terms[0], &c.changes[0]));
        // Reversed, it is an improvement: p99 went down.
        let back = compare(("b", "a"), &b, &a, stats::MIN_CHANGE);
        assert!(!back.changes.iter().any(|ch| matches(&p99.terms[0], ch)));
        assert!(back.changes.iter().any(|ch| matches(&parse_fail_on("p99 < -50%").unwrap().terms[0], ch)));
        // The same run twice: nothing.
        let same = compare(("a", "a"), &a, &recording(30_000, 600), stats::MIN_CHANGE);
        assert!(same.changes.is_empty(), "{}", text(&same));
        assert!(text(&same).contains("No change"));
    }
}

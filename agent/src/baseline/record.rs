//! `hostprobe record`: the agent's own probes for `--duration`, read every
//! slice, each process's figures merged exactly into its group (name and
//! cgroup), written as one [`Recording`].

use std::{
    collections::{BTreeMap, BTreeSet, HashMap},
    path::PathBuf,
    sync::atomic::{AtomicBool, Ordering::Relaxed},
    time::{Duration, Instant},
};

use super::{Disk, Group, Layout, ProbeInfo, Recording, Sleep, Syscall, Tcp};
use crate::{
    hist::Histogram,
    report::{DiskReport, DistReport, ProcessReport, Report, TcpReport},
    wire::pb,
};

#[derive(Debug, clap::Args)]
pub struct RecordArgs {
    /// How long to record.
    #[arg(long, default_value = "10s", value_parser = crate::units::parse_duration, value_name = "DURATION")]
    pub duration: Duration,
    /// Write the recording here (JSON, format in the README: "Baselines").
    #[arg(long, value_name = "FILE")]
    pub out: PathBuf,
    #[command(flatten)]
    pub filters: crate::filters::FilterArgs,
    /// Record from this collector's window instead of the probes here.
    #[command(flatten, next_help_heading = "From a collector")]
    pub client: crate::grpc::ClientArgs,
    /// With --collector: the host to record (its agent's host name).
    #[arg(long, value_name = "NAME", help_heading = "From a collector")]
    pub host: Option<String>,
    /// With --collector: the agent to record, by id (when a host name is
    /// not enough).
    #[arg(long, value_name = "ID", help_heading = "From a collector")]
    pub agent_id: Option<String>,
    /// With --collector: the window ends this long ago (and lasts --duration).
    #[arg(long, default_value = "0s", value_parser = crate::units::parse_window, value_name = "DURATION", help_heading = "From a collector")]
    pub ago: Duration,
}

/// Slices a run is read in (the noise within a run is measured between
/// them): 500 ms, or longer for runs over a minute (at most 120 slices).
pub fn slice_len(duration: Duration) -> Duration {
    Duration::from_millis(500).max(duration / 120)
}

static STOP: AtomicBool = AtomicBool::new(false);

extern "C" fn on_signal(_: libc::c_int) {
    STOP.store(true, Relaxed);
}

fn usage(e: &str) -> std::process::ExitCode {
    eprintln!("hostprobe: {e} (see `hostprobe record --help`)");
    std::process::ExitCode::from(2)
}

pub fn run(args: &RecordArgs) -> std::process::ExitCode {
    if !args.client.collectors.is_empty() {
        return from_collector(args);
    }
    if args.host.is_some() || args.agent_id.is_some() || !args.ago.is_zero() {
        return usage("--host, --agent-id and --ago are for recording from a collector: add --collector URL");
    }
    let opts = match args.filters.resolve(None) {
        Ok(o) => o,
        Err(e) => return usage(&e),
    };
    if let Some(pid) = args.filters.pids.iter().find(|p| !std::path::Path::new(&format!("/proc/{p}")).exists()) {
        return usage(&format!("--pid {pid}: no such process (see `ps -e`)"));
    }
    // Fail now, not after the run, if the file cannot be written.
    let tmp = args.out.with_extension("partial");
    if let Err(e) = std::fs::write(&tmp, b"") {
        return usage(&format!("--out {}: cannot write there ({e})", args.out.display()));
    }
    let host = crate::procinfo::hostname();
    let mut agent = crate::agent::Agent::start(&opts, &[], usize::MAX, false, host.clone());
    if agent.active().is_empty() {
        let _ = std::fs::remove_file(&tmp);
        eprintln!("hostprobe: no probe could attach; `hostprobe check` says why");
        return std::process::ExitCode::FAILURE;
    }
    // SAFETY: the handler only stores to an atomic.
    unsafe {
        libc::signal(libc::SIGINT, on_signal as *const () as libc::sighandler_t);
        libc::signal(libc::SIGTERM, on_signal as *const () as libc::sighandler_t);
    }
    let started = humantime::format_rfc3339_millis(std::time::SystemTime::now()).to_string();
    let slice = slice_len(args.duration);
    eprintln!("hostprobe: recording for {} (Ctrl-C to stop early)...", humantime::format_duration(args.duration));
    let mut rec = Recorder::new(std::process::id());
    let start = Instant::now();
    for k in 0u32.. {
        let end = (start + slice * (k + 1)).min(start + args.duration);
        while !STOP.load(Relaxed) {
            let left = end.saturating_duration_since(Instant::now());
            if left.is_zero() {
                break;
            }
            std::thread::sleep(left.min(Duration::from_millis(100)));
        }
        rec.add(&agent.tick(), k);
        if STOP.load(Relaxed) || end >= start + args.duration {
            break;
        }
    }
    let mut filters = Vec::new();
    filters.extend(args.filters.pids.iter().map(|p| format!("--pid {p}")));
    filters.extend(args.filters.comm.iter().map(|c| format!("--comm {c}")));
    filters.extend(args.filters.cgroup.iter().map(|c| format!("--cgroup {c}")));
    let recording = rec.finish(Header {
        host,
        started,
        slice_ns: slice.as_nanos() as u64,
        command: std::env::args().collect(),
        filters,
    });
    write(&recording, &tmp, &args.out)
}

/// Writes `recording` to `tmp`, then renames it to `out`.
fn write(recording: &Recording, tmp: &std::path::Path, out: &std::path::Path) -> std::process::ExitCode {
    let written = serde_json::to_vec(recording)
        .map_err(std::io::Error::other)
        .and_then(|bytes| std::fs::write(tmp, bytes))
        .and_then(|()| std::fs::rename(tmp, out));
    if let Err(e) = written {
        let _ = std::fs::remove_file(tmp);
        eprintln!("hostprobe: writing {}: {e}", out.display());
        return std::process::ExitCode::FAILURE;
    }
    eprintln!(
        "hostprobe: recorded {} process groups over {} to {}",
        recording.groups.len(),
        crate::units::duration(recording.duration_ns),
        out.display()
    );
    std::process::ExitCode::SUCCESS
}

/// The share of the window asked for that the reports must cover: less,
/// and the recording would compare a shorter run as if it were the whole.
const MIN_COVER: f64 = 0.9;

/// `hostprobe record --collector`: one agent's reports in the window,
/// each a slice, merged as the probes' intervals are.
fn from_collector(args: &RecordArgs) -> std::process::ExitCode {
    let (agent_id, host_name) = match (&args.agent_id, &args.host) {
        (Some(id), _) => (id.clone(), String::new()),
        (None, Some(h)) => (String::new(), h.clone()),
        (None, None) => return usage("--collector needs --host NAME or --agent-id ID: whose window to record"),
    };
    if !args.filters.pids.is_empty() {
        return usage("--pid names processes of this host: with --collector, use --comm or --cgroup");
    }
    let now = crate::metrics::now_unix_ns();
    let to = now - args.ago.as_nanos() as i64;
    let from = to - args.duration.as_nanos() as i64;
    let tmp = args.out.with_extension("partial");
    if let Err(e) = std::fs::write(&tmp, b"") {
        return usage(&format!("--out {}: cannot write there ({e})", args.out.display()));
    }
    let fetched = fetch(&args.client, pb::ReportsRequest { agent_id, host_name, from_unix_ns: from, to_unix_ns: to });
    let reports = match fetched {
        Ok(r) => r,
        Err(e) => {
            let _ = std::fs::remove_file(&tmp);
            eprintln!("hostprobe: {e:#}");
            return std::process::ExitCode::FAILURE;
        }
    };
    let who = args
        .agent_id
        .as_deref()
        .map_or_else(|| format!("host {}", args.host.as_deref().unwrap_or("")), |id| format!("agent {id}"));
    let when = |ns: i64| {
        humantime::format_rfc3339_seconds(std::time::UNIX_EPOCH + Duration::from_nanos(ns.max(0) as u64)).to_string()
    };
    // The part of [from, to) the reports' intervals cover.
    let covered: i64 =
        reports.iter().map(|r| (r.interval_end_unix_ns.min(to) - r.interval_start_unix_ns.max(from)).max(0)).sum();
    let asked = to - from;
    if (covered as f64) < MIN_COVER * asked as f64 {
        let _ = std::fs::remove_file(&tmp);
        let held = match (reports.first(), reports.last()) {
            (Some(a), Some(b)) => format!(
                "its reports cover {} of it ({} to {})",
                crate::units::duration(covered as u64),
                when(a.interval_start_unix_ns),
                when(b.interval_end_unix_ns)
            ),
            _ => "it holds no report of it".to_string(),
        };
        eprintln!(
            "hostprobe: the collector cannot answer for {who} from {} to {} ({}): {held}. Ask for a window it \
             still holds (later, or shorter; past its --full-resolution it holds whole minutes, and whole ten \
             minutes past ten minutes: windows on those boundaries), or keep more there (--retention, \
             --max-memory, --full-resolution)",
            when(from),
            when(to),
            crate::units::duration(asked as u64)
        );
        return std::process::ExitCode::FAILURE;
    }
    let comm = args.filters.comm.as_deref();
    let cgroup = args.filters.cgroup.as_deref();
    let mut rec = Recorder::new(u32::MAX);
    let mut host = String::new();
    for (slice, mut r) in reports.into_iter().enumerate() {
        r.processes.retain(|p| comm.is_none_or(|c| p.comm == c) && cgroup.is_none_or(|g| p.cgroup.starts_with(g)));
        let report = crate::fleet::interval_report(&r);
        host.clone_from(&report.host);
        rec.add(&report, slice as u32);
    }
    let mut filters = vec![format!("--collector {}", args.client.collectors[0]), format!("{who}")];
    filters.extend(args.filters.comm.iter().map(|c| format!("--comm {c}")));
    filters.extend(args.filters.cgroup.iter().map(|c| format!("--cgroup {c}")));
    let slices = rec.slices.max(1);
    let recording = rec.finish(Header {
        host,
        started: when(from),
        slice_ns: (covered / i64::from(slices)) as u64,
        command: std::env::args().collect(),
        filters,
    });
    write(&recording, &tmp, &args.out)
}

/// The collector's `Reports` answer, in order.
fn fetch(client: &crate::grpc::ClientArgs, q: pb::ReportsRequest) -> anyhow::Result<Vec<pb::Report>> {
    let url = client.collectors[0].clone();
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    rt.block_on(async {
        let channel = crate::grpc::channel(&url, client).await?;
        let mut c = pb::collector_client::CollectorClient::new(channel).max_decoding_message_size(64 << 20);
        let mut req = tonic::Request::new(q);
        if let Some(t) = crate::grpc::token(client)? {
            req.metadata_mut().insert("authorization", t);
        }
        let status = |s: tonic::Status| anyhow::anyhow!("{url}: {}", crate::grpc::status_message(&s));
        let mut stream = c.reports(req).await.map_err(status)?.into_inner();
        let mut out = Vec::new();
        while let Some(r) = stream.message().await.map_err(status)? {
            out.push(r);
        }
        Ok(out)
    })
}

/// What a recording says about how it was made.
pub struct Header {
    pub host: String,
    pub started: String,
    pub slice_ns: u64,
    pub command: Vec<String>,
    pub filters: Vec<String>,
}

/// A distribution being recorded: the run's total and the current slice.
#[derive(Default)]
struct DistAcc {
    total: crate::hist::Dist,
    sum_unknown: bool,
    cur: crate::hist::Dist,
    slices: Vec<[u64; 5]>,
}

impl DistAcc {
    fn add(&mut self, hist: &Histogram, max_ns: u64, sum_ns: Option<u64>) {
        if hist.count() == 0 {
            return;
        }
        self.cur.hist.merge(hist);
        self.cur.max_ns = self.cur.max_ns.max(max_ns);
        match sum_ns {
            Some(s) => self.cur.sum_ns += s,
            None => self.sum_unknown = true,
        }
    }

    fn report(&mut self, d: &DistReport) {
        self.add(&d.hist, d.max_ns, Some(d.sum_ns));
    }

    fn close(&mut self, slice: u32) {
        let n = self.cur.hist.count();
        if n > 0 {
            let q = |q| self.cur.hist.quantile(q, self.cur.max_ns).unwrap_or(0);
            self.slices.push([u64::from(slice), n, q(0.5), q(0.9), q(0.99)]);
            self.total.merge(&self.cur);
        }
        self.cur = Default::default();
    }

    fn finish(self) -> super::Dist {
        let h = &self.total.hist;
        super::Dist {
            count: h.count(),
            sum_ns: (!self.sum_unknown).then_some(self.total.sum_ns),
            max_ns: self.total.max_ns,
            buckets: h.nonzero().map(|(i, c)| [i as u64, c]).collect(),
            slices: self.slices,
        }
    }
}

#[derive(Default)]
struct DiskAcc {
    count: u64,
    bytes: u64,
    errors: u64,
    queue: DistAcc,
    service: DistAcc,
    total: DistAcc,
}

impl DiskAcc {
    fn add(&mut self, d: &DiskReport) {
        self.count += d.count;
        self.bytes += d.bytes;
        self.errors += d.errors;
        self.queue.report(&d.queue);
        self.service.report(&d.service);
        self.total.report(&d.total);
    }

    fn close(&mut self, slice: u32) {
        self.queue.close(slice);
        self.service.close(slice);
        self.total.close(slice);
    }

    fn finish(self, device: String, op: String) -> Disk {
        Disk {
            device,
            op,
            count: self.count,
            bytes: self.bytes,
            errors: self.errors,
            queue: self.queue.finish(),
            service: self.service.finish(),
            total: self.total.finish(),
        }
    }
}

#[derive(Default)]
struct TcpAcc {
    connections: u64,
    bytes_sent: u64,
    bytes_received: u64,
    retransmits: u64,
    resets: u64,
    refused: u64,
    timeouts: u64,
    rtt: DistAcc,
    connect: DistAcc,
}

#[derive(Default)]
struct GroupAcc {
    container_id: Option<String>,
    pids: BTreeSet<u32>,
    thread_ns: Vec<u64>,
    split: BTreeMap<String, Vec<u64>>,
    sleep: BTreeMap<String, (u64, Vec<u64>)>,
    runqueue: DistAcc,
    syscalls: BTreeMap<String, (u64, u64, u64, DistAcc)>,
    disk: BTreeMap<(String, String), DiskAcc>,
    tcp: BTreeMap<(String, String), TcpAcc>,
}

/// Adds `v` to slot `slice` of a per-slice series.
fn add_at(series: &mut Vec<u64>, slice: u32, v: u64) {
    let i = slice as usize;
    if series.len() <= i {
        series.resize(i + 1, 0);
    }
    series[i] += v;
}

/// The key a TCP item is matched by across runs: the remote endpoint of a
/// connection made; the remote address alone of one accepted (its port
/// is the client's, new every time).
fn tcp_key(t: &TcpReport) -> (String, String) {
    let remote = match (t.direction, t.remote.rsplit_once(':')) {
        ("accept", Some((addr, _))) => format!("{addr}:*"),
        _ => t.remote.clone(),
    };
    (remote, t.direction.to_string())
}

impl GroupAcc {
    fn add(&mut self, p: &ProcessReport, slice: u32) {
        self.pids.insert(p.pid);
        if self.container_id.is_none() {
            self.container_id.clone_from(&p.meta.container_id);
        }
        if let (Some(o), Some(s)) = (&p.offcpu, crate::diagnose::shares(p)) {
            let total = o.on_cpu_ns + o.runqueue_ns + o.blocked_io_ns + o.sleep_ns;
            add_at(&mut self.thread_ns, slice, total);
            for (name, share) in [
                ("on_cpu", s.on_cpu),
                ("runqueue", s.runqueue),
                ("disk", s.disk),
                ("network", s.network),
                ("lock", s.lock),
                ("sleep", s.sleep),
                ("other", s.other),
            ] {
                add_at(self.split.entry(name.into()).or_default(), slice, (share * total as f64).round() as u64);
            }
            for x in &o.sleep_by_syscall {
                let e = self.sleep.entry(x.name.clone()).or_default();
                e.0 += x.count;
                add_at(&mut e.1, slice, x.ns);
            }
            self.runqueue.report(&o.runqueue);
        }
        for s in &p.syscalls {
            let l = &s.latency;
            let e = self.syscalls.entry(s.name.clone()).or_default();
            e.0 += l.count;
            e.1 += l.errors;
            e.2 += l.missed_starts;
            e.3.add(&l.hist, l.max_ns, Some(l.sum_ns));
        }
        for d in &p.disk {
            self.disk.entry((d.device.clone(), d.op.to_string())).or_default().add(d);
        }
        for t in &p.tcp {
            let e = self.tcp.entry(tcp_key(t)).or_default();
            e.connections += t.connections;
            e.bytes_sent += t.bytes_sent;
            e.bytes_received += t.bytes_received;
            e.retransmits += t.retransmits;
            e.resets += t.resets;
            e.refused += t.refused;
            e.timeouts += t.timeouts;
            // The kernel keeps no RTT sum.
            e.rtt.add(&t.rtt.hist, t.rtt.max_ns, None);
            e.connect.add(&t.connect.hist, t.connect.max_ns, Some(t.connect.sum_ns));
        }
    }

    fn close(&mut self, slice: u32) {
        self.runqueue.close(slice);
        self.syscalls.values_mut().for_each(|s| s.3.close(slice));
        self.disk.values_mut().for_each(|d| d.close(slice));
        for t in self.tcp.values_mut() {
            t.rtt.close(slice);
            t.connect.close(slice);
        }
    }

    fn finish(self, comm: String, cgroup: String, slices: u32) -> Group {
        let n = slices as usize;
        let pad = |mut v: Vec<u64>| {
            v.resize(n.max(v.len()), 0);
            v
        };
        Group {
            comm,
            cgroup,
            container_id: self.container_id,
            pids: self.pids.into_iter().take(100).collect(),
            thread_ns: pad(self.thread_ns),
            time_split: self.split.into_iter().map(|(k, v)| (k, pad(v))).collect(),
            sleep_by_syscall: self
                .sleep
                .into_iter()
                .map(|(k, (count, ns))| (k, Sleep { count, ns: pad(ns) }))
                .collect(),
            runqueue: self.runqueue.finish(),
            syscalls: self
                .syscalls
                .into_iter()
                .map(|(k, (count, errors, missed_starts, l))| {
                    (k, Syscall { count, errors, missed_starts, latency: l.finish() })
                })
                .collect(),
            disk: self.disk.into_iter().map(|((dev, op), d)| d.finish(dev, op)).collect(),
            tcp: self
                .tcp
                .into_iter()
                .map(|((remote, direction), t)| Tcp {
                    remote,
                    direction,
                    connections: t.connections,
                    bytes_sent: t.bytes_sent,
                    bytes_received: t.bytes_received,
                    retransmits: t.retransmits,
                    resets: t.resets,
                    refused: t.refused,
                    timeouts: t.timeouts,
                    rtt: t.rtt.finish(),
                    connect: t.connect.finish(),
                })
                .collect(),
        }
    }
}

/// Merges reports, slice by slice, into a recording.
pub struct Recorder {
    me: u32,
    /// Each pid's group, as first seen alive (a process reported after it
    /// exited has no cgroup left to read).
    owners: HashMap<u32, (String, String)>,
    groups: BTreeMap<(String, String), GroupAcc>,
    devices: BTreeMap<(String, String), DiskAcc>,
    probes: BTreeMap<String, ProbeInfo>,
    duration_ns: u64,
    slices: u32,
}

impl Recorder {
    /// A recorder that leaves out process `me` (the recording agent).
    pub fn new(me: u32) -> Self {
        Self {
            me,
            owners: HashMap::new(),
            groups: BTreeMap::new(),
            devices: BTreeMap::new(),
            probes: BTreeMap::new(),
            duration_ns: 0,
            slices: 0,
        }
    }

    /// Folds in the report of slice `slice` (0, 1, ...).
    pub fn add(&mut self, r: &Report, slice: u32) {
        self.duration_ns += r.interval_ns;
        self.slices = self.slices.max(slice + 1);
        for p in r.processes.iter().filter(|p| p.pid != self.me) {
            let key = match (&p.meta.cgroup, self.owners.get(&p.pid)) {
                (_, Some(k)) if p.exited => k.clone(),
                (cgroup, _) => (p.meta.comm.clone(), cgroup.clone().unwrap_or_default()),
            };
            if !p.exited {
                self.owners.insert(p.pid, key.clone());
            }
            self.groups.entry(key).or_default().add(p, slice);
        }
        // Exited pids are reported once, in their last interval.
        let gone: BTreeSet<u32> = r.processes.iter().filter(|p| p.exited).map(|p| p.pid).collect();
        self.owners.retain(|pid, _| !gone.contains(pid));
        for d in &r.devices {
            self.devices.entry((d.device.clone(), d.op.to_string())).or_default().add(d);
        }
        for g in self.groups.values_mut() {
            g.close(slice);
        }
        for d in self.devices.values_mut() {
            d.close(slice);
        }
        for p in &r.probes {
            let e = self.probes.entry(p.name.to_string()).or_insert_with(|| ProbeInfo {
                name: p.name.to_string(),
                active: p.active,
                error: p.error.clone(),
                lost: 0,
            });
            e.lost += p.lost;
        }
    }

    pub fn finish(self, h: Header) -> Recording {
        let slices = self.slices;
        let mut groups: Vec<Group> =
            self.groups.into_iter().map(|((comm, cgroup), g)| g.finish(comm, cgroup, slices)).collect();
        groups.sort_by_key(|g| std::cmp::Reverse(g.thread_ns.iter().sum::<u64>()));
        let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
        Recording {
            format: super::FORMAT.into(),
            version: super::VERSION,
            hostprobe_version: env!("CARGO_PKG_VERSION").into(),
            host: h.host,
            kernel: format!("{} {}", kernel.trim(), std::env::consts::ARCH),
            command: h.command,
            started: h.started,
            duration_ns: self.duration_ns,
            slice_ns: h.slice_ns,
            slices,
            filters: h.filters,
            probes: self.probes.into_values().collect(),
            histogram_layout: Layout::ours(),
            groups,
            devices: self.devices.into_iter().map(|((dev, op), d)| d.finish(dev, op)).collect(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{probes::disk::DeviceNames, procinfo::ProcCache, report::build};

    #[test]
    fn groups_merge_every_interval_exactly_and_survive_a_round_trip() {
        // Ten processes (pids that cannot exist: exited, so grouped by
        // their kernel comm p0..p9), three slices of the same figures.
        let mut rec = Recorder::new(1);
        let mut want = Histogram::default();
        for slice in 0..3 {
            let interval = crate::report::tests::every_probe(10);
            want.merge(&interval.processes[&4_000_003].syscalls[&0].hist);
            let r = build(
                interval,
                usize::MAX,
                &mut ProcCache::new(false),
                &mut DeviceNames::default(),
                1_000_000_000,
                "h",
                vec![],
            );
            rec.add(&r, slice);
        }
        let header = Header { host: "h".into(), started: "t".into(), slice_ns: 1, command: vec![], filters: vec![] };
        let r = rec.finish(header);
        assert_eq!((r.slices, r.duration_ns), (3, 3_000_000_000));
        let g = r.groups.iter().find(|g| g.comm == "p3").expect("group p3");
        let read = &g.syscalls["read"];
        assert_eq!(read.count, 30);
        assert_eq!(read.latency.histogram().unwrap(), want, "bucket by bucket");
        assert_eq!(read.latency.slices.len(), 3, "{:?}", read.latency.slices);
        assert_eq!(read.latency.sum_ns, Some(3 * 10 * 4_000));
        assert_eq!(g.disk[0].count, 3 * 4);
        assert_eq!(g.thread_ns.len(), 3);
        let split: u64 = g.time_split.values().map(|v| v.iter().sum::<u64>()).sum();
        assert!(split.abs_diff(g.thread_ns.iter().sum()) <= 7 * 3, "shares add up to the thread time");
        assert_eq!(g.tcp[0].remote, "127.0.0.1:80");
        assert!(g.tcp[0].rtt.sum_ns.is_none(), "no RTT sum is invented");
        let path = std::env::temp_dir().join(format!("hostprobe-rec-test-{}.json", std::process::id()));
        std::fs::write(&path, serde_json::to_vec(&r).unwrap()).unwrap();
        let back = super::super::read(path.to_str().unwrap()).unwrap();
        assert_eq!(back.groups[0].syscalls["read"].latency.buckets, r.groups[0].syscalls["read"].latency.buckets);
        let _ = std::fs::remove_file(&path);
    }

    #[test]
    fn reading_refuses_what_is_not_a_recording_of_this_version() {
        let dir = std::env::temp_dir();
        let write = |name: &str, body: &str| {
            let p = dir.join(format!("hostprobe-rec-{name}-{}.json", std::process::id()));
            std::fs::write(&p, body).unwrap();
            p.to_str().unwrap().to_string()
        };
        let e = super::super::read(&write("notjson", "hello")).unwrap_err().to_string();
        assert!(e.contains("not a hostprobe recording"), "{e}");
        let e = super::super::read(&write("other", r#"{"format":"x"}"#)).unwrap_err().to_string();
        assert!(e.contains("not a hostprobe recording"), "{e}");
        let e = super::super::read(&write(
            "v9",
            r#"{"format":"hostprobe-recording","version":9,"hostprobe_version":"9.0"}"#,
        ))
        .unwrap_err()
        .to_string();
        assert!(e.contains("version 9") && e.contains("9.0"), "{e}");
        let e = super::super::read("/nonexistent/rec.json").unwrap_err().to_string();
        assert!(e.contains("/nonexistent/rec.json"), "{e}");
    }
}

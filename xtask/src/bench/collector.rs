//! Collector: ingest of 1,000 synthetic agents (loadgen), plain against
//! durable acks (`--data-dir`: fdatasync'ed, group commit) and against a
//! heavy query loop, side by side in the same rounds; then the agent's
//! export cost.

use std::{
    fmt::Write as _,
    path::PathBuf,
    process::{Child, Command, Stdio},
    sync::{
        atomic::{AtomicBool, Ordering},
        Arc,
    },
    time::{Duration, Instant},
};

use anyhow::{bail, Context as _, Result};

use super::{agent, cores, cpu_seconds, goal, median, per_round, rotate, status_mib, step, Config};
use crate::root;

const AGENTS: u32 = 1_000;
const PROCESSES: u32 = 50;

/// How the collector runs while the synthetic agents stream to it.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Setup {
    /// `--plaintext`, reports kept in memory only.
    Plain,
    /// `--data-dir`: each report fdatasync'ed to the journal before its ack.
    Durable,
    /// Plain, with `hostprobe query --window 0s` run back to back meanwhile.
    Queried,
}

impl Config for Setup {
    fn name(self) -> &'static str {
        match self {
            Setup::Plain => "collector, in memory (no --data-dir)",
            Setup::Durable => "collector --data-dir (ack after fdatasync, group commit)",
            Setup::Queried => "collector, in memory, with a query loop running",
        }
    }
}

/// One ingest run.
#[derive(Clone)]
struct Ingest {
    sent: u64,
    acked: u64,
    /// Acknowledged reports per second of the load generator's run.
    rate: f64,
    /// Collector CPU (user + system) over the run's wall time, in cores.
    cpu_cores: f64,
    peak_mib: f64,
    report_bytes: u64,
    /// Median and 99th percentile of the time from send to acknowledgement
    /// of one more agent's reports, in ms (`workload ack-latency`).
    ack_p50_ms: f64,
    ack_p99_ms: f64,
    /// Queries completed during the run, and their median duration.
    queries: usize,
    query_s: f64,
}

pub struct CollectorBench {
    seconds: u64,
    rounds: usize,
    setups: Vec<Setup>,
    runs: Vec<Vec<Ingest>>,
    data_fs: String,
    /// Main-thread ms per interval without and with --collector, per round.
    export: Vec<(f64, f64)>,
}

const DATA_DIR: &str = "/var/tmp/hostprobe-bench-collector";

pub fn bench(rounds: usize, seconds: u64) -> Result<CollectorBench> {
    let rounds = rounds.min(3);
    let setups = vec![Setup::Plain, Setup::Durable, Setup::Queried];
    step(&format!(
        "collector ingest: {AGENTS} synthetic agents x {PROCESSES} processes, 1 report/s each, {seconds} s per run"
    ));
    let runs = rotate("collector ingest", rounds, &setups, |s| ingest(s, seconds))?;
    let data_fs = Command::new("stat")
        .args(["-f", "-c", "%T", "/var/tmp"])
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
        .unwrap_or_default();

    // Agent side: the main thread (output and export) with and without a
    // collector to stream to, alternating.
    let collector = CollectorProcess::start(Setup::Plain)?;
    let mut export = Vec::new();
    for round in 0..rounds {
        step(&format!("agent export cost: round {}/{rounds}", round + 1));
        let without = agent::measure(100, 10, &[])?.main_thread_ms_per_interval;
        let with =
            agent::measure(100, 10, &["--collector", &collector.url, "--plaintext"])?.main_thread_ms_per_interval;
        export.push((without, with));
    }
    Ok(CollectorBench { seconds, rounds, setups, runs, data_fs, export })
}

fn ingest(setup: Setup, seconds: u64) -> Result<Ingest> {
    let collector = CollectorProcess::start(setup)?;
    let pid = collector.child.id();
    let stop = Arc::new(AtomicBool::new(false));
    let queries = (setup == Setup::Queried).then(|| {
        let (stop, url) = (stop.clone(), collector.url.clone());
        std::thread::spawn(move || query_loop(&url, &stop))
    });
    let cpu0 = cpu_seconds(pid).unwrap_or(0.0);
    let started = Instant::now();
    let probe = Command::new(root().join("target/release/workload"))
        .args(["ack-latency", &collector.url, &seconds.to_string()])
        .stdout(Stdio::piped())
        .spawn()
        .context("starting the ack-latency agent")?;
    let out = Command::new(root().join("target/release/loadgen"))
        .args([&collector.url, &AGENTS.to_string(), &PROCESSES.to_string(), &seconds.to_string()])
        .output()
        .context("running the load generator")?;
    let wall = started.elapsed().as_secs_f64();
    let cpu1 = cpu_seconds(pid).unwrap_or(0.0);
    let peak_mib = status_mib(pid, "VmHWM").unwrap_or(0.0);
    let acks = probe.wait_with_output().context("the ack-latency agent")?;
    let acks: serde_json::Value = serde_json::from_slice(&acks.stdout).context("ack-latency output")?;
    stop.store(true, Ordering::SeqCst);
    let durations = match queries {
        Some(q) => q.join().map_err(|_| anyhow::anyhow!("query loop panicked"))??,
        None => Vec::new(),
    };
    drop(collector);
    if !out.status.success() {
        bail!("load generator failed: {}", String::from_utf8_lossy(&out.stderr));
    }
    let load: serde_json::Value = serde_json::from_slice(&out.stdout).context("load generator output")?;
    let acked = load["acked"].as_u64().unwrap_or(0);
    Ok(Ingest {
        sent: load["sent"].as_u64().unwrap_or(0),
        acked,
        rate: acked as f64 / load["elapsed_s"].as_f64().unwrap_or(f64::NAN),
        cpu_cores: (cpu1 - cpu0) / wall,
        peak_mib,
        report_bytes: load["report_bytes"].as_u64().unwrap_or(0),
        ack_p50_ms: acks["p50_ms"].as_f64().unwrap_or(f64::NAN),
        ack_p99_ms: acks["p99_ms"].as_f64().unwrap_or(f64::NAN),
        queries: durations.len(),
        query_s: median(&durations),
    })
}

/// `hostprobe query --window 0s` (every report the collector keeps), back
/// to back until `stop`; the duration of each.
fn query_loop(url: &str, stop: &AtomicBool) -> Result<Vec<f64>> {
    let mut durations = Vec::new();
    while !stop.load(Ordering::SeqCst) {
        let t = Instant::now();
        let status = Command::new(root().join("target/release/hostprobe"))
            .args(["query", "--collector", url, "--plaintext", "--window", "0s", "--json"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .context("running hostprobe query")?;
        if status.success() {
            durations.push(t.elapsed().as_secs_f64());
        } else {
            // Before the first report arrives there is nothing to rank.
            std::thread::sleep(Duration::from_millis(100));
        }
    }
    Ok(durations)
}

/// A `hostprobe collector` on a free loopback port, killed on drop (with
/// its journal, if it keeps one).
pub(super) struct CollectorProcess {
    pub(super) child: Child,
    pub(super) url: String,
    data_dir: Option<PathBuf>,
}

impl CollectorProcess {
    fn start(setup: Setup) -> Result<Self> {
        Self::start_with(&[], (setup == Setup::Durable).then(|| PathBuf::from(DATA_DIR)))
    }

    /// `hostprobe collector --plaintext` with `args`, journaling to a fresh
    /// `data_dir` if given.
    pub(super) fn start_with(args: &[&str], data_dir: Option<PathBuf>) -> Result<Self> {
        let port = std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?.port();
        let mut extra: Vec<std::ffi::OsString> = args.iter().map(Into::into).collect();
        if let Some(d) = &data_dir {
            let _ = std::fs::remove_dir_all(d);
            extra.extend(["--data-dir".into(), d.clone().into_os_string()]);
        }
        let child = spawn_collector(port, &extra, Stdio::null())?;
        Ok(Self { child, url: format!("http://127.0.0.1:{port}"), data_dir })
    }
}

/// Starts `hostprobe collector --plaintext` on `127.0.0.1:port` with
/// `extra` arguments, its stderr to `stderr`; returns once it listens.
pub(crate) fn spawn_collector(port: u16, extra: &[std::ffi::OsString], stderr: Stdio) -> Result<Child> {
    let mut cmd = Command::new(root().join("target/release/hostprobe"));
    cmd.args(["collector", "--plaintext", "--listen", &format!("127.0.0.1:{port}")]).args(extra);
    // Without a token file, open: the bench's agents carry no credentials.
    if !extra.iter().any(|a| a == "--token-file") {
        cmd.arg("--no-auth");
    }
    let mut child = cmd.stdout(Stdio::null()).stderr(stderr).spawn().context("starting the collector")?;
    let end = Instant::now() + Duration::from_secs(10);
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        if Instant::now() > end || child.try_wait()?.is_some() {
            let _ = child.kill();
            let _ = child.wait();
            bail!("the collector did not start listening on port {port}");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    Ok(child)
}

impl Drop for CollectorProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        if let Some(d) = &self.data_dir {
            let _ = std::fs::remove_dir_all(d);
        }
    }
}

impl CollectorBench {
    fn runs_of(&self, s: Setup) -> Option<&[Ingest]> {
        self.setups.iter().position(|x| *x == s).map(|i| self.runs[i].as_slice())
    }

    pub fn write(&self, md: &mut String) -> Result<()> {
        writeln!(md, "\n## Collector: ingest, durable acks, queries; agent export\n")?;
        let bytes = self.runs.first().and_then(|r| r.first()).map(|i| i.report_bytes).unwrap_or(0);
        writeln!(
            md,
            "`loadgen` (tests/src/bin/loadgen.rs) opens {AGENTS} gRPC streams to a `hostprobe collector \
             --plaintext` on loopback, one per synthetic agent, and sends one report per agent per \
             second for {} s (an offered load of {AGENTS} reports/s), spread over each second, \
             gzip-compressed as the agent sends them; each report has {PROCESSES} processes (12 syscall \
             histograms, a disk item, off-CPU figures, two TCP connections each), {} KiB of protobuf \
             before gzip. The load generator runs on the same {} cores. Three set-ups in turn, {} rounds, \
             order rotated: in memory; with `--data-dir` on {} under /var/tmp (a report is acknowledged \
             only once fdatasync'ed to the journal, one write and one fdatasync per group of reports); \
             in memory while `hostprobe query --window 0s` (every kept report decoded and ranked) runs \
             back to back. Ingest rate: acknowledged reports over the load generator's run time. \
             Collector CPU: user + system from `/proc/<pid>/stat` over the run's wall time; memory: \
             its `VmHWM`. Ack latency: one more agent (`workload ack-latency`) streams a small report \
             every 50 ms through each run and times each from its send to its acknowledgement; \
             the median over rounds of each run's p50 and p99.\n",
            self.seconds,
            bytes / 1024,
            cores(),
            self.rounds,
            self.data_fs
        )?;
        writeln!(
            md,
            "| set-up | acked / sent | ingest reports/s (median) | vs in memory | collector CPU, cores | \
             CPU us per report | ack latency p50 / p99, ms | peak RSS MiB | queries (median s each) | \
             rates per round |"
        )?;
        writeln!(md, "|---|---|---|---|---|---|---|---|---|---|")?;
        let rate = |runs: &[Ingest]| runs.iter().map(|i| i.rate).collect::<Vec<f64>>();
        let base = self.runs.first().map(|r| rate(r)).unwrap_or_default();
        for (s, runs) in self.setups.iter().zip(&self.runs) {
            let rates = rate(runs);
            let acked: u64 = runs.iter().map(|i| i.acked).sum();
            let sent: u64 = runs.iter().map(|i| i.sent).sum();
            let cpu: Vec<f64> = runs.iter().map(|i| i.cpu_cores).collect();
            let us: Vec<f64> = runs.iter().map(|i| i.cpu_cores * 1e6 / i.rate).collect();
            let peak = runs.iter().map(|i| i.peak_mib).fold(0.0, f64::max);
            let queries = if *s == Setup::Queried {
                let q: Vec<f64> = runs.iter().map(|i| i.query_s).collect();
                format!("{} ({:.2} s)", runs.iter().map(|i| i.queries).sum::<usize>(), median(&q))
            } else {
                "-".into()
            };
            let raw: Vec<String> = rates.iter().map(|v| format!("{v:.0}")).collect();
            writeln!(
                md,
                "| {} | {acked} / {sent} | {:.0} | {:+.1}% | {:.2} | {:.0} | {:.1} / {:.1} | {peak:.0} | {queries} | {} |",
                s.name(),
                median(&rates),
                (per_round(&rates, &base, |x, b| x / b) - 1.0) * 100.0,
                median(&cpu),
                median(&us),
                median(&runs.iter().map(|i| i.ack_p50_ms).collect::<Vec<f64>>()),
                median(&runs.iter().map(|i| i.ack_p99_ms).collect::<Vec<f64>>()),
                raw.join(", ")
            )?;
        }
        writeln!(md)?;
        let all_acked = self.runs.iter().flatten().all(|i| i.sent > 0 && i.acked == i.sent);
        goal(
            md,
            "the collector acknowledges every report of 1,000 agents at 1 s, in memory and durable",
            if all_acked { "every run" } else { "some runs short" },
            all_acked,
        )?;
        if let Some(q) = self.runs_of(Setup::Queried) {
            let ratio = per_round(&rate(q), &base, |x, b| x / b);
            goal(
                md,
                "collector ingest while a heavy query loop runs within 10% of ingest alone",
                &format!("{:+.1}% (median of per-round ratios)", (ratio - 1.0) * 100.0),
                ratio >= 0.9,
            )?;
        }
        writeln!(
            md,
            "\nThe rate is bounded by the offered load ({AGENTS} reports/s): a collector that keeps up \
             shows the same rate in every set-up, and the cost of a set-up is then its CPU per report and the latency of its acks."
        )?;
        writeln!(
            md,
            "\nAgent side: `hostprobe run --output json --interval 1s` among 100 busy processes for 10 s, \
             without and with `--collector` (alternating); CPU of the agent's main thread, which \
             writes the output and runs the exporter (conversion, protobuf, gzip, HTTP/2), from its \
             `schedstat` (ns resolution). The difference is the export cost per interval.\n"
        )?;
        writeln!(md, "| round | main thread ms/interval, no collector | with --collector | export cost |")?;
        writeln!(md, "|---|---|---|---|")?;
        for (i, (a, b)) in self.export.iter().enumerate() {
            writeln!(md, "| {} | {a:.3} | {b:.3} | {:+.3} ms |", i + 1, b - a)?;
        }
        let d: Vec<f64> = self.export.iter().map(|(a, b)| b - a).collect();
        let export = median(&d);
        writeln!(md, "\nMedian export cost: {export:.3} ms of CPU per interval.\n")?;
        goal(md, "agent export under 1 ms of CPU per interval (median)", &format!("{export:.3} ms"), export < 1.0)
    }
}

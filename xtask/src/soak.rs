//! `cargo xtask soak`: the agent and the collector left running for a long
//! while under churn, to see whether anything grows that should not.
//!
//! For `--minutes`, all at once: `workload churn-pool` keeps `--processes`
//! short-lived processes alive (each lives 1-5 s and is replaced, so pids
//! are reused), `workload conn-churn` opens and closes loopback TCP
//! connections, and `hostprobe run` (every probe, JSON on stdout) streams to
//! a durable `hostprobe collector --data-dir`, which is restarted every
//! `--restart-secs` (SIGTERM, once SIGKILL); the agent spools to disk, so
//! nothing is lost over the restarts. Every `--sample-secs` it samples the
//! agent's and the collector's VmRSS and the entries of the agent's kernel
//! maps (from its latest report), and fits a least-squares slope over the
//! second half of the run (after warm-up). Two marked processes check that
//! counts stay exact: `soak-marked` lives the whole run and its nanosleep
//! count, summed over the agent's reports, must be what it counted itself;
//! `soak-late` lives over the last collector restart, and the collector's
//! count for it (`hostprobe query --comm soak-late`) must be what the agent
//! reported. Writes the `soak` block of BENCHMARKS.md.

use std::{
    collections::BTreeMap,
    fmt::Write as _,
    fs::File,
    io::BufRead as _,
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use anyhow::{ensure, Context as _, Result};

use crate::{
    bench::{collector::spawn_collector, date, machine, status_mib, write_block},
    root, step,
};

#[derive(clap::Args)]
pub struct Args {
    /// How long the soak runs.
    #[arg(long, default_value_t = 30)]
    minutes: u64,
    /// Short-lived processes kept alive at once.
    #[arg(long, default_value_t = 1000)]
    processes: u64,
    /// The collector is restarted this often.
    #[arg(long, default_value_t = 300)]
    restart_secs: u64,
    /// Sampling period of memory and map entries.
    #[arg(long, default_value_t = 10)]
    sample_secs: u64,
    /// Print the results only; leave BENCHMARKS.md alone.
    #[arg(long)]
    no_write: bool,
}

const DIR: &str = "/var/tmp/hostprobe-soak";
/// nanosleep length of the marked processes.
const MARK_MS: u64 = 10;
const TOP: &str = "50";

/// One sample: seconds since the start, agent and collector VmRSS (MiB),
/// entries per kernel map ("probe/MAP").
struct Sample {
    t: f64,
    agent_mib: f64,
    collector_mib: f64,
    maps: BTreeMap<String, u64>,
}

impl Sample {
    fn entries(&self) -> u64 {
        self.maps.values().sum()
    }
}

/// What the agent's JSON reports add up to.
#[derive(Default)]
struct Reports {
    count: u64,
    /// Entries per kernel map in the latest report.
    maps: BTreeMap<String, u64>,
    /// Events lost per probe, summed over the reports.
    lost: BTreeMap<String, u64>,
    /// Counters of data lost or not tracked (full maps, missed events), summed.
    loss_counters: BTreeMap<String, u64>,
    /// Per pid: nanosleep calls and all calls (syscall_total), summed.
    nanosleeps: BTreeMap<u64, u64>,
    calls: BTreeMap<u64, u64>,
    processes_over_cap: u64,
}

impl Reports {
    fn add(&mut self, line: &str) {
        let Ok(v) = serde_json::from_str::<serde_json::Value>(line) else { return };
        self.count += 1;
        self.processes_over_cap += v["processes_over_cap"].as_u64().unwrap_or(0);
        self.maps.clear();
        for p in v["probes"].as_array().into_iter().flatten() {
            let probe = p["name"].as_str().unwrap_or("?");
            *self.lost.entry(probe.to_string()).or_default() += p["lost"].as_u64().unwrap_or(0);
            for (name, n) in p["counters"].as_object().into_iter().flatten() {
                if name.contains("full") || name == "missed_events" || name == "stale_swept" {
                    *self.loss_counters.entry(format!("{probe}/{name}")).or_default() += n.as_u64().unwrap_or(0);
                }
            }
            for m in p["maps"].as_array().into_iter().flatten() {
                let name = format!("{probe}/{}", m["name"].as_str().unwrap_or("?"));
                self.maps.insert(name, m["entries"].as_u64().unwrap_or(0));
            }
        }
        for p in v["processes"].as_array().into_iter().flatten() {
            let comm = p["comm"].as_str().unwrap_or("");
            if !comm.starts_with("soak-") {
                continue;
            }
            let pid = p["pid"].as_u64().unwrap_or(0);
            *self.calls.entry(pid).or_default() += p["syscall_total"]["count"].as_u64().unwrap_or(0);
            let n: u64 = p["syscalls"]
                .as_array()
                .into_iter()
                .flatten()
                .filter(|s| s["name"] == "nanosleep")
                .filter_map(|s| s["count"].as_u64())
                .sum();
            *self.nanosleeps.entry(pid).or_default() += n;
        }
    }
}

/// The collector, restarted in place: same port, same journal.
struct Collector {
    child: Child,
    port: u16,
    retention_s: u64,
    log: PathBuf,
}

impl Collector {
    fn start(port: u16, retention_s: u64, log: &Path) -> Result<Self> {
        let extra: Vec<std::ffi::OsString> = vec![
            "--data-dir".into(),
            Path::new(DIR).join("collector").into(),
            "--retention".into(),
            format!("{retention_s}s").into(),
        ];
        let stderr = File::options().create(true).append(true).open(log)?;
        let child = spawn_collector(port, &extra, stderr.into())?;
        Ok(Self { child, port, retention_s, log: log.to_path_buf() })
    }

    fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// Stops it (SIGTERM, or SIGKILL when `kill`), then starts it again.
    fn restart(&mut self, kill: bool) -> Result<Restart> {
        let t = Instant::now();
        let rss_before = status_mib(self.child.id(), "VmRSS").unwrap_or(f64::NAN);
        let how = self.stop(kill)?;
        *self = Self::start(self.port, self.retention_s, &self.log)?;
        Ok(Restart { at: 0.0, how, down_s: t.elapsed().as_secs_f64(), rss_before })
    }

    /// SIGTERM (SIGKILL after 15 s), or SIGKILL at once when `kill`; how it ended.
    fn stop(&mut self, kill: bool) -> Result<&'static str> {
        let mut how = "SIGKILL";
        if !kill {
            how = "SIGTERM";
            signal("TERM", self.child.id())?;
            let end = Instant::now() + Duration::from_secs(15);
            while self.child.try_wait()?.is_none() && Instant::now() < end {
                std::thread::sleep(Duration::from_millis(50));
            }
        }
        if self.child.try_wait()?.is_none() {
            if !kill {
                how = "SIGTERM, not stopped after 15 s: SIGKILL";
            }
            self.child.kill()?;
        }
        self.child.wait()?;
        Ok(how)
    }
}

struct Restart {
    /// Seconds into the run.
    at: f64,
    how: &'static str,
    down_s: f64,
    /// The collector's VmRSS just before it was stopped, MiB.
    rss_before: f64,
}

fn signal(sig: &str, pid: u32) -> Result<()> {
    crate::run(Command::new("kill").arg(format!("-{sig}")).arg(pid.to_string()))
}

/// A started workload, with its stdout to read at the end.
fn workload(args: &[&str]) -> Result<Child> {
    Command::new(root().join("target/release/workload"))
        .args(args)
        .stdout(Stdio::piped())
        .spawn()
        .with_context(|| format!("starting workload {args:?}"))
}

fn output_of(child: Child, what: &str) -> Result<String> {
    let out = child.wait_with_output().with_context(|| what.to_string())?;
    ensure!(out.status.success(), "{what} failed: {}", out.status);
    Ok(String::from_utf8_lossy(&out.stdout).trim().to_string())
}

struct Check {
    name: &'static str,
    pid: u64,
    own: u64,
    agent_nanosleeps: u64,
    agent_calls: u64,
    collector_calls: Option<u64>,
}

impl Check {
    fn ok(&self) -> bool {
        self.own == self.agent_nanosleeps && self.collector_calls.is_none_or(|c| c == self.agent_calls)
    }
}

pub fn run(args: Args) -> Result<()> {
    let mut spawned = Vec::new();
    let result = soak(&args, &mut spawned);
    if result.is_err() {
        // Leave nothing behind: the agent's probes stay loaded while it runs.
        for pid in spawned.into_iter().filter(|p| is_our_child(*p)) {
            let _ = signal("KILL", pid);
        }
    }
    result
}

/// Whether `pid` is still a child of this process (and not a pid reused since).
fn is_our_child(pid: u32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .ok()
        .and_then(|s| s.rsplit(')').next()?.split_whitespace().nth(1)?.parse::<u32>().ok())
        == Some(std::process::id())
}

fn soak(args: &Args, spawned: &mut Vec<u32>) -> Result<()> {
    let total = Duration::from_secs(args.minutes * 60);
    let secs = total.as_secs();
    ensure!(secs >= 60, "--minutes must be at least 1");
    // soak-late lives from 75% to 95% of the run; the collector keeps
    // every report of its life (and a margin) for the final query.
    let (late_at, late_secs) = (secs * 3 / 4, secs / 5);
    let retention_s = (secs - late_at + 120).max(600);
    let _ = std::fs::remove_dir_all(DIR);
    std::fs::create_dir_all(DIR)?;
    let log = Path::new(DIR).join("collector.log");
    let port = std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?.port();
    step(&format!(
        "soak: {} min, {} churning processes, connection churn, collector restarted every {} s",
        args.minutes, args.processes, args.restart_secs
    ));
    let mut collector = Collector::start(port, retention_s, &log)?;
    spawned.push(collector.child.id());
    let mut agent = Command::new(root().join("target/release/hostprobe"))
        .args(["run", "--output", "json", "--interval", "1s", "--top", TOP])
        .args(["--collector", &collector.url(), "--plaintext", "--spool-dir"])
        .arg(Path::new(DIR).join("spool"))
        .stdout(Stdio::piped())
        .stderr(File::create(Path::new(DIR).join("agent.log"))?)
        .spawn()
        .context("starting the agent")?;
    let agent_pid = agent.id();
    spawned.push(agent_pid);
    let reports = Arc::new(Mutex::new(Reports::default()));
    let reader = {
        let stdout = agent.stdout.take().context("agent stdout")?;
        let reports = reports.clone();
        std::thread::spawn(move || {
            for l in std::io::BufReader::new(stdout).lines().map_while(Result::ok) {
                if let Ok(mut r) = reports.lock() {
                    r.add(&l);
                }
            }
        })
    };
    let first = Instant::now();
    while reports.lock().map(|r| r.count).unwrap_or(0) == 0 {
        ensure!(first.elapsed() < Duration::from_secs(60), "the agent printed no report within 60 s");
        ensure!(agent.try_wait()?.is_none(), "the agent exited at start (see {DIR}/agent.log)");
        std::thread::sleep(Duration::from_millis(100));
    }

    let secs_s = secs.to_string();
    let churn = workload(&["churn-pool", &args.processes.to_string(), &secs_s])?;
    let conns = workload(&["conn-churn", &secs_s])?;
    let marked = workload(&["marked", "soak-marked", &MARK_MS.to_string(), &(secs - 10).to_string()])?;
    spawned.extend([churn.id(), conns.id(), marked.id()]);
    let mut late: Option<Child> = None;
    let mut samples = Vec::new();
    let mut restarts = Vec::new();
    let started = Instant::now();
    let mut next_sample = Duration::ZERO;
    let mut next_restart = Duration::from_secs(args.restart_secs);
    let mut next_step = Duration::from_secs(60);
    while started.elapsed() < total {
        let now = started.elapsed();
        if late.is_none() && now >= Duration::from_secs(late_at) {
            let child = workload(&["marked", "soak-late", &MARK_MS.to_string(), &late_secs.to_string()])?;
            spawned.push(child.id());
            late = Some(child);
        }
        if now >= next_restart {
            // The second restart is a crash: nothing acknowledged may be lost.
            let restart = collector.restart(restarts.len() == 1)?;
            spawned.push(collector.child.id());
            restarts.push(Restart { at: now.as_secs_f64(), ..restart });
            next_restart += Duration::from_secs(args.restart_secs);
        }
        if now >= next_sample {
            let maps = reports.lock().map(|r| r.maps.clone()).unwrap_or_default();
            samples.push(Sample {
                t: now.as_secs_f64(),
                agent_mib: status_mib(agent_pid, "VmRSS").context("agent VmRSS: has the agent exited?")?,
                collector_mib: status_mib(collector.child.id(), "VmRSS").unwrap_or(f64::NAN),
                maps,
            });
            next_sample += Duration::from_secs(args.sample_secs);
        }
        if now >= next_step {
            if let Some(s) = samples.last() {
                step(&format!(
                    "soak: {:.0}/{} min: agent {:.1} MiB, collector {:.1} MiB, {} map entries, {} restarts",
                    now.as_secs_f64() / 60.0,
                    args.minutes,
                    s.agent_mib,
                    s.collector_mib,
                    s.entries(),
                    restarts.len()
                ));
            }
            next_step += Duration::from_secs(60);
        }
        ensure!(agent.try_wait()?.is_none(), "the agent exited during the soak (see {DIR}/agent.log)");
        std::thread::sleep(Duration::from_millis(200));
    }

    step("soak: waiting for the workloads to finish, then for the agent's last reports");
    let forks = output_of(churn, "churn-pool")?;
    let connections = output_of(conns, "conn-churn")?;
    let marked_pid = marked.id() as u64;
    let marked_own: u64 = output_of(marked, "marked")?.parse()?;
    let late = late.context("soak-late never started")?;
    let late_pid = late.id() as u64;
    let late_own: u64 = output_of(late, "soak-late")?.parse()?;
    // Two more intervals: the exits are reported.
    std::thread::sleep(Duration::from_secs(3));
    signal("TERM", agent_pid)?;
    agent.wait()?;
    reader.join().map_err(|_| anyhow::anyhow!("report reader panicked"))?;
    let collector_calls = query_calls(&collector.url(), "soak-late");
    collector.stop(false)?;
    let reports = std::mem::take(&mut *reports.lock().map_err(|_| anyhow::anyhow!("poisoned"))?);
    let checks = [
        Check {
            name: "soak-marked",
            pid: marked_pid,
            own: marked_own,
            agent_nanosleeps: reports.nanosleeps.get(&marked_pid).copied().unwrap_or(0),
            agent_calls: reports.calls.get(&marked_pid).copied().unwrap_or(0),
            collector_calls: None,
        },
        Check {
            name: "soak-late",
            pid: late_pid,
            own: late_own,
            agent_nanosleeps: reports.nanosleeps.get(&late_pid).copied().unwrap_or(0),
            agent_calls: reports.calls.get(&late_pid).copied().unwrap_or(0),
            collector_calls: Some(collector_calls?),
        },
    ];
    let md =
        write(args, &samples, &restarts, &reports, &checks, &forks, &connections, retention_s, (late_at, late_secs))?;
    println!("{md}");
    if !args.no_write {
        write_block("soak", &md)?;
        step("wrote the soak block of BENCHMARKS.md");
    }
    // The journal and the spool go; the logs stay for a look.
    let _ = std::fs::remove_dir_all(Path::new(DIR).join("collector"));
    let _ = std::fs::remove_dir_all(Path::new(DIR).join("spool"));
    ensure!(checks.iter().all(Check::ok), "a marked process's count is not exact (see above)");
    Ok(())
}

/// The collector's count of every syscall of `comm` over all it keeps.
fn query_calls(url: &str, comm: &str) -> Result<u64> {
    let out = Command::new(root().join("target/release/hostprobe"))
        .args(["query", "--collector", url, "--plaintext", "--window", "0s", "--json", "--comm", comm])
        .output()
        .context("running hostprobe query")?;
    ensure!(out.status.success(), "hostprobe query failed: {}", String::from_utf8_lossy(&out.stderr));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).context("query output")?;
    Ok(v["rows"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|r| r["comm"] == comm)
        .filter_map(|r| r["count"].as_u64())
        .sum())
}

/// Least-squares slope of (t seconds, y), per hour.
fn slope_per_hour(points: &[(f64, f64)]) -> f64 {
    let n = points.len() as f64;
    let (mt, my) = (points.iter().map(|p| p.0).sum::<f64>() / n, points.iter().map(|p| p.1).sum::<f64>() / n);
    let cov: f64 = points.iter().map(|(t, y)| (t - mt) * (y - my)).sum();
    let var: f64 = points.iter().map(|(t, _)| (t - mt).powi(2)).sum();
    cov / var * 3600.0
}

/// `name | slope | min | max` over the second half, and over the whole run.
fn series_row(md: &mut String, name: &str, unit: &str, all: &[(f64, f64)], half_from: f64) -> Result<()> {
    let half: Vec<(f64, f64)> = all.iter().copied().filter(|p| p.0 >= half_from && p.1.is_finite()).collect();
    let range = |v: &[(f64, f64)]| {
        let min = v.iter().map(|p| p.1).fold(f64::INFINITY, f64::min);
        let max = v.iter().map(|p| p.1).fold(f64::NEG_INFINITY, f64::max);
        (min, max)
    };
    let (hmin, hmax) = range(&half);
    let (amin, amax) = range(all);
    writeln!(
        md,
        "| {name} | {:+.2} {unit}/h | {hmin:.1} - {hmax:.1} | {amin:.1} - {amax:.1} |",
        slope_per_hour(&half)
    )?;
    Ok(())
}

#[allow(clippy::too_many_arguments)]
fn write(
    args: &Args,
    samples: &[Sample],
    restarts: &[Restart],
    reports: &Reports,
    checks: &[Check],
    forks: &str,
    connections: &str,
    retention_s: u64,
    (late_at, late_secs): (u64, u64),
) -> Result<String> {
    let mut md = String::new();
    let half_from = (args.minutes * 60 / 2) as f64;
    writeln!(md, "\n## Soak: {} minutes of churn\n", args.minutes)?;
    writeln!(
        md,
        "Written by `cargo xtask soak --minutes {} --processes {}` on {} ({}). For {} minutes at once: \
         `workload churn-pool` kept {} short-lived processes alive (each makes rounds of 14 syscalls and a \
         100 ms nanosleep for 1-5 s, exits, and is replaced: {forks}; pid_max {}, so pids are reused), \
         `workload conn-churn` opened and closed loopback TCP connections ({connections}), and \
         `hostprobe run --output json --interval 1s --top {TOP}` (every probe) streamed to a \
         `hostprobe collector --data-dir` (durable journal, `--retention {retention_s}s`) with \
         `--spool-dir`; the collector was restarted every {} s (SIGTERM, the second time SIGKILL; one \
         that has not stopped 15 s after SIGTERM is killed, as the list of restarts says). \
         Every {} s: the agent's and the collector's `VmRSS` (`/proc/<pid>/status`) and the entries of \
         every kernel map of the agent (from its latest report's `probes[].maps[]`). Slopes are \
         least-squares fits over the second half of the run (after warm-up), per hour. One run.\n",
        args.minutes,
        args.processes,
        machine(),
        date(),
        args.minutes,
        args.processes,
        std::fs::read_to_string("/proc/sys/kernel/pid_max").unwrap_or_default().trim(),
        args.restart_secs,
        args.sample_secs
    )?;
    writeln!(md, "| series | slope, second half | range, second half | range, whole run |")?;
    writeln!(md, "|---|---|---|---|")?;
    let series = |f: &dyn Fn(&Sample) -> f64| samples.iter().map(|s| (s.t, f(s))).collect::<Vec<_>>();
    series_row(&mut md, "agent VmRSS, MiB", "MiB", &series(&|s| s.agent_mib), half_from)?;
    series_row(&mut md, "collector VmRSS, MiB", "MiB", &series(&|s| s.collector_mib), half_from)?;
    series_row(&mut md, "agent kernel map entries, all maps", "entries", &series(&|s| s.entries() as f64), half_from)?;
    let names: Vec<&String> = samples.last().map(|s| s.maps.keys().collect()).unwrap_or_default();
    for name in names {
        let points = series(&|s| s.maps.get(name).copied().unwrap_or(0) as f64);
        if points.iter().any(|p| p.1 > 0.0) {
            series_row(&mut md, &format!("`{name}` entries"), "entries", &points, half_from)?;
        }
    }
    writeln!(md, "\nSamples every 5 minutes:\n")?;
    writeln!(md, "| minute | agent VmRSS MiB | collector VmRSS MiB | kernel map entries |")?;
    writeln!(md, "|---|---|---|---|")?;
    let mut next = 0.0;
    for s in samples {
        if s.t >= next {
            writeln!(md, "| {:.0} | {:.1} | {:.1} | {} |", s.t / 60.0, s.agent_mib, s.collector_mib, s.entries())?;
            next += 300.0;
        }
    }
    if let Some(s) = samples.last() {
        writeln!(md, "| {:.1} (last) | {:.1} | {:.1} | {} |", s.t / 60.0, s.agent_mib, s.collector_mib, s.entries())?;
    }
    let restarts: Vec<String> = restarts
        .iter()
        .map(|r| {
            format!("{:.1} min ({}, VmRSS before {:.1} MiB, down {:.1} s)", r.at / 60.0, r.how, r.rss_before, r.down_s)
        })
        .collect();
    writeln!(md, "\nCollector restarts: {}.\n", restarts.join("; "))?;
    writeln!(
        md,
        "Exact counts: each marked process counts its own `nanosleep({MARK_MS} ms)` calls; the agent's are \
         summed over all {} of its reports (its pid, `syscalls[]`). `soak-late` lived from minute {:.1} to {:.1}, over the \
         last restart; the collector's count of all its syscalls (`hostprobe query --comm soak-late --window 0s`, \
         from the journal replayed after each restart) is compared with the agent's `syscall_total` for it.\n",
        reports.count,
        late_at as f64 / 60.0,
        (late_at + late_secs) as f64 / 60.0
    )?;
    writeln!(
        md,
        "| process | pid | its own count | agent's nanosleep count | agent's calls | collector's calls | exact |"
    )?;
    writeln!(md, "|---|---|---|---|---|---|---|")?;
    for c in checks {
        writeln!(
            md,
            "| {} | {} | {} | {} | {} | {} | {} |",
            c.name,
            c.pid,
            c.own,
            c.agent_nanosleeps,
            c.agent_calls,
            c.collector_calls.map_or("-".into(), |n| n.to_string()),
            if c.ok() { "yes" } else { "**no**" }
        )?;
    }
    let lost: Vec<String> = reports.lost.iter().map(|(p, n)| format!("{p} {n}")).collect();
    writeln!(
        md,
        "\nEvents lost over the run (`probes[].lost` summed): {}. Processes past `--max-processes`: {}.",
        lost.join(", "),
        reports.processes_over_cap
    )?;
    let counters: Vec<String> =
        reports.loss_counters.iter().filter(|(_, n)| **n > 0).map(|(c, n)| format!("`{c}` {n}")).collect();
    if !counters.is_empty() {
        writeln!(md, "Their counters (full maps, missed events), summed: {}.", counters.join(", "))?;
    }
    Ok(md)
}

//! `cargo xtask fleet`: the collector's window under a 1,000-host fleet
//! for minutes on end. `loadgen` streams 1,000 synthetic agents (50
//! processes each, one report a second) to `hostprobe collector` with its
//! defaults; the collector's memory is sampled through the run; at the end
//! `hostprobe query --window` must merge every acknowledged report, a
//! marked process's count exact. Written to BENCHMARKS.md as its own block.

use std::{
    fmt::Write as _,
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use anyhow::{bail, Context as _, Result};

use super::{collector::spawn_collector, cpu_seconds, status_mib, step};
use crate::root;

#[derive(clap::Args)]
pub struct Args {
    /// Synthetic agents.
    #[arg(long, default_value_t = 1_000)]
    agents: u32,
    /// Processes per report.
    #[arg(long, default_value_t = 50)]
    processes: u32,
    /// Minutes of streaming (the query's window).
    #[arg(long, default_value_t = 10)]
    minutes: u64,
    /// Print the results only; leave BENCHMARKS.md alone.
    #[arg(long)]
    no_write: bool,
}

/// The collector's `--max-memory` default, which the window must fit.
const MAX_MEMORY_MIB: f64 = 1024.0;

/// The collector's own account of its window (its debug log line).
#[derive(Default)]
struct Window {
    reports: u64,
    buckets: u64,
    closed_bytes: u64,
    open: u64,
    open_bytes: u64,
    raw: u64,
    raw_bytes: u64,
    evicted: u64,
}

fn parse_window(log: &str) -> Option<Window> {
    let line = log.lines().rev().find(|l| l.contains("window: "))?;
    let n: Vec<u64> =
        line.split(|c: char| !c.is_ascii_digit()).filter(|w| !w.is_empty()).filter_map(|w| w.parse().ok()).collect();
    // "window: A agents, R reports kept in B closed buckets (C bytes
    // deflated) and O open minutes (E bytes encoded), and N as received (X
    // bytes snappy), T bytes in all; D reports dropped ..., Y too old",
    // after the log's time stamp.
    let n = &n[n.len().checked_sub(11)?..];
    Some(Window {
        reports: n[1],
        buckets: n[2],
        closed_bytes: n[3],
        open: n[4],
        open_bytes: n[5],
        raw: n[6],
        raw_bytes: n[7],
        evicted: n[9],
    })
}

pub fn run(args: Args) -> Result<()> {
    let seconds = args.minutes * 60;
    step(&format!(
        "fleet window: {} agents x {} processes, 1 report/s each, for {} min, against `hostprobe collector` with its defaults",
        args.agents, args.processes, args.minutes
    ));
    let log_path = std::env::temp_dir().join("hostprobe-bench-fleet.log");
    let log = std::fs::File::create(&log_path)?;
    // The window's own account, every 10 s, in the collector's debug log.
    std::env::set_var("RUST_LOG", "info,hostprobe::collector=debug");
    let port = std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?.port();
    let mut collector = spawn_collector(port, &[], Stdio::from(log))?;
    let url = format!("http://127.0.0.1:{port}");
    let pid = collector.id();
    let cpu0 = cpu_seconds(pid).unwrap_or(0.0);
    let started = Instant::now();
    let mut loadgen = Command::new(root().join("target/release/loadgen"))
        .args([&url, &args.agents.to_string(), &args.processes.to_string(), &seconds.to_string()])
        .stdout(Stdio::piped())
        .spawn()
        .context("starting the load generator")?;
    // RSS every 10 s; progress every minute.
    let mut rss: Vec<(u64, f64)> = Vec::new();
    while loadgen.try_wait()?.is_none() {
        std::thread::sleep(Duration::from_secs(10));
        let t = started.elapsed().as_secs();
        rss.push((t, status_mib(pid, "VmRSS").unwrap_or(0.0)));
        if t % 60 < 10 {
            step(&format!(
                "fleet window: {} of {} min, collector RSS {:.0} MiB",
                t / 60,
                args.minutes,
                rss[rss.len() - 1].1
            ));
        }
    }
    let wall = started.elapsed().as_secs_f64();
    let cpu_cores = (cpu_seconds(pid).unwrap_or(0.0) - cpu0) / wall;
    let out = loadgen.wait_with_output()?;
    if !out.status.success() {
        bail!("load generator failed: {}", String::from_utf8_lossy(&out.stderr));
    }
    let load: serde_json::Value = serde_json::from_slice(&out.stdout).context("load generator output")?;
    let (sent, acked) = (load["sent"].as_u64().unwrap_or(0), load["acked"].as_u64().unwrap_or(0));
    // The window as it stood when the fleet stopped (open minutes and all).
    let w = parse_window(&std::fs::read_to_string(&log_path)?).context("the collector logged no window line")?;
    let marked = load["marked"]["comm"].as_str().context("loadgen names no marked process")?.to_string();
    let per_report = load["marked"]["calls_per_report"].as_u64().unwrap_or(0);

    // The run's whole span, as a user asking for "the last N minutes"
    // after an N-minute run would (the load generator can take a little
    // longer than asked on a busy host).
    let window = format!("{}s", started.elapsed().as_secs() + 1);
    let q_started = Instant::now();
    let q = Command::new(root().join("target/release/hostprobe"))
        .args(["query", "--collector", &url, "--plaintext", "--window", &window, "--comm", &marked, "--json"])
        .output()
        .context("running hostprobe query")?;
    let query_s = q_started.elapsed().as_secs_f64();
    if !q.status.success() {
        bail!("query failed: {}", String::from_utf8_lossy(&q.stderr));
    }
    let v: serde_json::Value = serde_json::from_slice(&q.stdout).context("query output")?;
    let peak_mib = status_mib(pid, "VmHWM").unwrap_or(0.0);
    let end_mib = status_mib(pid, "VmRSS").unwrap_or(0.0);
    let _ = collector.kill();
    let _ = collector.wait();

    let merged = v["reports"].as_u64().unwrap_or(0);
    let count = v["rows"][0]["count"].as_u64().unwrap_or(0);
    let span_s = (v["to_unix_ns"].as_i64().unwrap_or(0) - v["from_unix_ns"].as_i64().unwrap_or(0)) as f64 / 1e9;
    // Every acknowledged report is in the window and nothing that was not
    // sent; a report stored whose acknowledgement the load generator never
    // read (it stops reading when its run ends) counts too, as a real agent
    // would send it again and the collector drop the duplicate. The count:
    // exactly the reports merged times the marked count of one.
    let exact = acked <= merged && merged <= sent && count == merged * per_report;

    // An hour: each agent holds its open minute, 10 closed minutes and 5
    // ten-minute buckets (a ten-minute bucket of these reports deflates to
    // the size of a minute's: their processes and buckets are the same).
    let agents = f64::from(args.agents);
    let bucket_kib = w.closed_bytes as f64 / w.buckets.max(1) as f64 / 1024.0;
    let open_kib = w.open_bytes as f64 / w.open.max(1) as f64 / 1024.0;
    let closed_now = w.buckets as f64 / agents;
    let hour_extra_mib = (15.0 - closed_now).max(0.0) * bucket_kib * agents / 1024.0;
    let hour_mib = peak_mib + hour_extra_mib;

    let mut md = String::new();
    writeln!(md, "## The collector's window under a 1,000-host fleet\n")?;
    writeln!(
        md,
        "Written by `cargo xtask fleet` on {} ({}). `loadgen` (tests/src/bin/loadgen.rs) streams {} synthetic agents to `hostprobe collector --plaintext --no-auth` with its defaults (`--retention 1h`, `--max-memory 1G`, no `--data-dir`) on loopback, each sending one report of {} processes a second ({} KiB of protobuf) for {} min; the load generator runs on the same 2 cores. Then `hostprobe query --window {window} --comm {marked} --json`. Collector memory: `VmRSS` every 10 s, `VmHWM` at the end; CPU: user + system from `/proc/<pid>/stat` over the run; the window's own account from the collector's debug log (`window: ...`, every 10 s).\n",
        super::machine(),
        super::date(),
        args.agents,
        args.processes,
        load["report_bytes"].as_u64().unwrap_or(0) / 1024,
        args.minutes
    )?;
    writeln!(md, "| figure | value |\n|---|---|")?;
    writeln!(md, "| reports acked / sent (offered: {}) | {acked} / {sent} |", u64::from(args.agents) * seconds)?;
    writeln!(
        md,
        "| reports the query merged (at least the acked, at most the sent) | {merged} (span {span_s:.0} s) |"
    )?;
    writeln!(
        md,
        "| `{marked}` syscalls: query / reports merged x {per_report} per report | {count} / {} ({}) |",
        merged * per_report,
        if exact { "exact" } else { "NOT exact" }
    )?;
    writeln!(md, "| query time (every kept bucket inflated, decoded, merged) | {query_s:.1} s |")?;
    writeln!(md, "| collector CPU | {cpu_cores:.2} cores |")?;
    writeln!(md, "| collector RSS at the end / peak | {end_mib:.0} / {peak_mib:.0} MiB |")?;
    writeln!(
        md,
        "| window when the fleet stopped (collector's account) | {} reports in {} closed buckets ({:.1} KiB each, deflated) and {} open minutes ({:.0} KiB each, encoded); the last {} reports also as received ({:.0} MiB, snappy, --full-resolution 2m); {} dropped for memory |",
        w.reports,
        w.buckets,
        bucket_kib,
        w.open,
        open_kib,
        w.raw,
        w.raw_bytes as f64 / 1048576.0,
        w.evicted
    )?;
    let samples: Vec<String> =
        rss.iter().filter(|(t, _)| t % 60 < 10).map(|(t, m)| format!("{}:{m:.0}", t / 60)).collect();
    writeln!(md, "| RSS by minute (min:MiB) | {} |\n", samples.join(", "))?;
    writeln!(
        md,
        "- Goal: `query --window {window}` merges every acknowledged report of the run, the marked process's count exact. Measured: {}.",
        if exact {
            "met".to_string()
        } else {
            format!("NOT met ({merged} merged, {acked} acked, {sent} sent; {count} calls for {} expected)", merged * per_report)
        }
    )?;
    writeln!(
        md,
        "- Goal: a 1,000-host fleet's last hour within the default `--max-memory` ({MAX_MEMORY_MIB:.0} MiB). Not run for an hour: estimated from this run as the peak RSS plus the buckets an hour adds ({:.1} closed buckets per agent now, 15 after an hour: {:.0} MiB more): {hour_mib:.0} MiB, {}. Per host-hour: {:.0} KiB kept (the open minute, encoded, and 15 buckets) and {:.2} MiB of collector RSS.",
        closed_now,
        hour_extra_mib,
        if hour_mib <= MAX_MEMORY_MIB { "met" } else { "NOT met" },
        open_kib + 15.0 * bucket_kib,
        hour_mib / agents
    )?;
    writeln!(
        md,
        "\nThese reports are synthetic: every agent sends the same processes with the same histograms, so they deflate far better than real ones, and the buckets and reports kept as received are small here. Of the peak RSS, {:.0} MiB is what the collector accounts as kept; the rest is the open minutes decoded (their account counts them encoded), the 1,000 HTTP/2 streams' buffers and the allocator's.",
        (w.closed_bytes + w.open_bytes + w.raw_bytes) as f64 / 1048576.0
    )?;
    println!("{md}");
    if !args.no_write {
        super::write_block("fleet-window", &md)?;
        step("wrote the fleet-window block of BENCHMARKS.md");
    }
    if !exact {
        bail!("the window is not exact: {merged} reports merged, {acked} acked, {sent} sent; {count} calls");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    #[test]
    fn the_collectors_window_line_is_read() {
        let w = super::parse_window(
            "[2026-12-02T05:40:00Z DEBUG hostprobe::collector] window: 1000 agents, 600000 reports kept in 9000 closed \
             buckets (9000000 bytes deflated) and 1000 open minutes (41000000 bytes encoded), and 120000 as received \
             (180000000 bytes snappy), 230000000 bytes in all; 3 reports dropped for --max-memory, 0 too old",
        )
        .unwrap();
        assert_eq!(
            (w.reports, w.buckets, w.closed_bytes, w.open, w.open_bytes, w.raw, w.raw_bytes, w.evicted),
            (600000, 9000, 9000000, 1000, 41000000, 120000, 180000000, 3)
        );
    }
}

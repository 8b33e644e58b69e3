//! `cargo xtask bench`: what the probes cost, measured side by side in one
//! run against a baseline, an empty-program floor where one applies, and
//! the peers people compare us with, and written to BENCHMARKS.md. The
//! machine is shared and noisy, so configurations alternate round by round,
//! and every comparison is the median of per-round paired ratios.
//!
//! One file per benchmark; each measures (`bench`) and writes its section
//! (`write`), so that every figure in BENCHMARKS.md comes from this run.

mod agent;
pub(crate) mod collector;
mod disk;
pub mod fleet;
pub mod hostile;
mod switch;
mod syscall;
mod tcp;
mod tracer;
mod view;

use std::{fmt::Write as _, process::Command};

use anyhow::{Context as _, Result};

use crate::{root, step};
use tracer::Tracer;

#[derive(clap::Args)]
pub struct Args {
    /// Rounds per configuration (medians of per-round ratios are reported; the collector's at most 3).
    #[arg(long, default_value_t = 7)]
    rounds: usize,
    /// getppid() calls per measurement.
    #[arg(long, default_value_t = 3_000_000)]
    calls: u64,
    /// Busy processes for the agent-cost measurement.
    #[arg(long, default_value_t = 500)]
    processes: usize,
    /// Seconds the agent runs among them.
    #[arg(long, default_value_t = 20)]
    seconds: u64,
    /// Seconds of synthetic-agent load per collector measurement.
    #[arg(long, default_value_t = 20)]
    collector_seconds: u64,
    /// Print the results only; leave BENCHMARKS.md alone.
    #[arg(long)]
    no_write: bool,
    /// Only the syscall measurement (implies --no-write; several `--*-only` flags run those parts).
    #[arg(long)]
    syscall_only: bool,
    /// Only the agent-cost measurement (implies --no-write; several `--*-only` flags run those parts).
    #[arg(long)]
    agent_only: bool,
    /// Only the interactive view's cost, `hostprobe top` (implies --no-write; several `--*-only` flags run those parts).
    #[arg(long)]
    view_only: bool,
    /// Only the disk measurement (implies --no-write; several `--*-only` flags run those parts).
    #[arg(long)]
    disk_only: bool,
    /// Only the context-switch measurement (implies --no-write; several `--*-only` flags run those parts).
    #[arg(long)]
    switch_only: bool,
    /// Only the TCP measurement (implies --no-write; several `--*-only` flags run those parts).
    #[arg(long)]
    tcp_only: bool,
    /// Only the collector measurement (implies --no-write; several `--*-only` flags run those parts).
    #[arg(long)]
    collector_only: bool,
}

pub fn run(args: Args) -> Result<()> {
    let only = [
        args.syscall_only,
        args.agent_only,
        args.view_only,
        args.disk_only,
        args.switch_only,
        args.tcp_only,
        args.collector_only,
    ];
    let all = !only.contains(&true);
    let mut md = String::new();
    if all || args.syscall_only {
        syscall::bench(args.rounds, args.calls)?.write(&mut md)?;
    }
    if all || args.switch_only {
        switch::bench(args.rounds)?.write(&mut md)?;
    }
    if all || args.agent_only {
        agent::bench(args.processes, args.seconds)?.write(&mut md)?;
    }
    if all || args.view_only {
        view::bench(args.processes, args.seconds)?.write(&mut md)?;
    }
    if all || args.disk_only {
        disk::bench(args.rounds)?.write(&mut md)?;
    }
    if all || args.tcp_only {
        tcp::bench(args.rounds)?.write(&mut md)?;
    }
    if all || args.collector_only {
        collector::bench(args.rounds, args.collector_seconds)?.write(&mut md)?;
    }
    if !all {
        println!("{md}");
        return Ok(());
    }
    let date = date();
    let goals: Vec<&str> = md.lines().filter(|l| l.starts_with("- Goal:")).collect();
    let mut file = String::new();
    writeln!(file, "# Benchmarks\n")?;
    writeln!(
        file,
        "Written by `cargo xtask bench` on {} ({date}); every table and sentence below comes from that run. \
         The host is shared and noisy: configurations alternate round by round (the order rotated each \
         round), and each comparison is the median of per-round ratios to the baseline measured in the \
         same round, raw samples beside it. The long runs at the end (soak, fuzzing, a misbehaving fleet, the collector's window) \
         are written by their own commands, each block naming its run.\n",
        machine()
    )?;
    writeln!(file, "## Goals\n\nEach is repeated below beside the baseline, floor and peers measured with it.\n")?;
    writeln!(file, "{}", goals.join("\n"))?;
    file.push_str(&md);
    let old = std::fs::read_to_string(root().join("BENCHMARKS.md")).unwrap_or_default();
    for block in blocks(&old) {
        write!(file, "\n{block}\n")?;
    }
    println!("{file}");
    if !args.no_write {
        std::fs::write(root().join("BENCHMARKS.md"), &file)?;
        readme_goals(&goals, &date)?;
        step("wrote BENCHMARKS.md and the README's goal lines");
    }
    Ok(())
}

/// The blocks of BENCHMARKS.md written by other commands (`<!-- begin NAME -->`
/// to `<!-- end NAME -->`, markers included), which a bench run keeps.
fn blocks(text: &str) -> Vec<&str> {
    let mut out = Vec::new();
    let mut rest = text;
    while let Some(a) = rest.find("<!-- begin ") {
        let name = rest[a + 11..].split_whitespace().next().unwrap_or("");
        let end = format!("<!-- end {name} -->");
        let Some(b) = rest[a..].find(&end) else { break };
        out.push(&rest[a..a + b + end.len()]);
        rest = &rest[a + b + end.len()..];
    }
    out
}

/// Writes `body` into BENCHMARKS.md as the block `name` (replacing the
/// block of that name if there is one, else appending it): how the long
/// runs (`cargo xtask soak`, `fuzz`, ...) record their figures beside the
/// bench's, each in a block that names its own run.
pub fn write_block(name: &str, body: &str) -> Result<()> {
    let path = root().join("BENCHMARKS.md");
    let text = std::fs::read_to_string(&path).unwrap_or_default();
    let (start, end) = (format!("<!-- begin {name} -->"), format!("<!-- end {name} -->"));
    let block = format!("{start}\n{}\n{end}", body.trim_end());
    let new = match (text.find(&start), text.find(&end)) {
        (Some(a), Some(b)) if a < b => format!("{}{block}{}", &text[..a], &text[b + end.len()..]),
        _ => format!("{}\n{block}\n", text.trim_end()),
    };
    std::fs::write(&path, new)?;
    Ok(())
}

/// Replaces the README's goal lines (between its two markers) with this
/// run's, so that the README quotes BENCHMARKS.md and nothing else.
fn readme_goals(goals: &[&str], date: &str) -> Result<()> {
    const START: &str = "<!-- goals: written by `cargo xtask bench` -->";
    const END: &str = "<!-- /goals -->";
    let path = root().join("README.md");
    let readme = std::fs::read_to_string(&path)?;
    std::fs::write(
        &path,
        splice(&readme, START, END, &format!("From the run of {date} (BENCHMARKS.md):\n\n{}", goals.join("\n")))?,
    )?;
    Ok(())
}

/// `text` with what lies between the lines `start` and `end` replaced by `block`.
fn splice(text: &str, start: &str, end: &str, block: &str) -> Result<String> {
    let (Some(a), Some(b)) = (text.find(start), text.find(end)) else {
        anyhow::bail!("README.md has no {start} ... {end} block for the goal lines");
    };
    if b < a {
        anyhow::bail!("README.md: {end} comes before {start}");
    }
    Ok(format!("{}{start}\n{block}\n{}", &text[..a], &text[b..]))
}

/// Something measured in turn with others: a tracer, a collector set-up.
trait Config: Copy {
    fn name(self) -> &'static str;
}

impl Config for Tracer {
    fn name(self) -> &'static str {
        Tracer::name(self)
    }
}

/// Measures every configuration once per round, the order rotated each
/// round so the host's drift spreads evenly over them; samples per
/// configuration, one per round, so that `samples[i][r]` and `samples[0][r]`
/// are a pair.
fn rotate<C: Config, M: Clone>(
    what: &str,
    rounds: usize,
    configs: &[C],
    mut measure: impl FnMut(C) -> Result<M>,
) -> Result<Vec<Vec<M>>> {
    let mut samples: Vec<Vec<M>> = vec![Vec::with_capacity(rounds); configs.len()];
    for round in 0..rounds {
        step(&format!("{what}: round {}/{rounds}", round + 1));
        for k in 0..configs.len() {
            let i = (k + round) % configs.len();
            samples[i].push(measure(configs[i]).with_context(|| format!("{what}: {}", configs[i].name()))?);
        }
    }
    Ok(samples)
}

/// One configuration's samples and how it compares with the baseline (the
/// first configuration) measured in the same rounds.
struct Row {
    tracer: Tracer,
    median: f64,
    /// Median of the per-round ratios sample / baseline sample.
    ratio: f64,
    samples: Vec<f64>,
}

fn paired(tracers: &[Tracer], samples: &[Vec<f64>]) -> Vec<Row> {
    tracers
        .iter()
        .zip(samples)
        .map(|(t, s)| Row {
            tracer: *t,
            median: median(s),
            ratio: per_round(s, &samples[0], |x, b| x / b),
            samples: s.clone(),
        })
        .collect()
}

/// The row of `t`, if it was measured.
fn row(rows: &[Row], t: Tracer) -> Option<&Row> {
    rows.iter().find(|r| r.tracer == t)
}

/// Median over rounds of `f(a[r], b[r])`.
fn per_round(a: &[f64], b: &[f64], f: impl Fn(f64, f64) -> f64) -> f64 {
    let v: Vec<f64> = a.iter().zip(b).map(|(x, y)| f(*x, *y)).collect();
    median(&v)
}

/// Writes a table of rows: median, change against the baseline, samples.
fn write_rows(md: &mut String, unit: &str, decimals: usize, rows: &[Row]) -> Result<()> {
    writeln!(md, "| attached | {unit} (median) | vs nothing (median of per-round ratios) | samples |")?;
    writeln!(md, "|---|---|---|---|")?;
    for r in rows {
        let raw: Vec<String> = r.samples.iter().map(|v| format!("{v:.decimals$}")).collect();
        writeln!(
            md,
            "| {} | {:.decimals$} | {:+.1}% | {} |",
            r.tracer.name(),
            r.median,
            (r.ratio - 1.0) * 100.0,
            raw.join(", ")
        )?;
    }
    Ok(())
}

/// Runs `f` with the kernel's per-program statistics on
/// (`kernel.bpf_stats_enabled`), restoring the setting after, also on error.
fn with_bpf_stats<T>(f: impl FnOnce() -> Result<T>) -> Result<T> {
    const SYSCTL: &str = "/proc/sys/kernel/bpf_stats_enabled";
    let before = std::fs::read_to_string(SYSCTL).context("reading bpf_stats_enabled")?;
    std::fs::write(SYSCTL, "1").context("enabling kernel.bpf_stats_enabled")?;
    let result = f();
    std::fs::write(SYSCTL, before.trim()).context("restoring bpf_stats_enabled")?;
    result
}

pub(crate) fn median(v: &[f64]) -> f64 {
    let mut v = v.to_vec();
    v.sort_by(|a, b| a.total_cmp(b));
    match v.len() {
        0 => f64::NAN,
        n if n % 2 == 1 => v[n / 2],
        n => (v[n / 2 - 1] + v[n / 2]) / 2.0,
    }
}

/// A goal line, with the floor measured in the same run beside it where
/// one applies.
fn goal(md: &mut String, goal: &str, measured: &str, met: bool) -> Result<()> {
    let verdict = if met { "met" } else { "**not met**" };
    writeln!(md, "- Goal: {goal}. Measured {measured}: {verdict}.")?;
    Ok(())
}

/// User + system CPU seconds of a process so far, from /proc/<pid>/stat.
fn cpu_seconds(pid: u32) -> Option<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let f: Vec<&str> = stat.rsplit(')').next()?.split_whitespace().collect();
    // utime and stime: fields 14 and 15 of stat, the 12th and 13th after the
    // comm; clock ticks are 100 Hz on Linux.
    Some((f.get(11)?.parse::<u64>().ok()? + f.get(12)?.parse::<u64>().ok()?) as f64 / 100.0)
}

/// A `/proc/<pid>/status` field in kB (VmRSS, VmHWM), as MiB.
pub(crate) fn status_mib(pid: u32, field: &str) -> Option<f64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let v = status.lines().find_map(|l| l.strip_prefix(field)?.strip_prefix(':'))?;
    Some(v.trim().trim_end_matches("kB").trim().parse::<f64>().ok()? / 1024.0)
}

fn cores() -> usize {
    std::thread::available_parallelism().map(|n| n.get()).unwrap_or(0)
}

pub fn machine() -> String {
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|c| {
            c.lines()
                .find_map(|l| l.strip_prefix("model name"))
                .map(|m| m.trim_start_matches([' ', '\t', ':']).to_string())
        })
        .unwrap_or_default();
    let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
    format!("{cpu}, {} cores, Linux {}", cores(), kernel.trim())
}

pub fn date() -> String {
    Command::new("date")
        .arg("-u")
        .arg("+%Y-%m-%d %H:%M UTC")
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    #[test]
    fn splice_replaces_only_the_block() {
        let text = "a\n<!-- s -->\nold\nlines\n<!-- /s -->\nb\n";
        let out = super::splice(text, "<!-- s -->", "<!-- /s -->", "- Goal: x").unwrap();
        assert_eq!(out, "a\n<!-- s -->\n- Goal: x\n<!-- /s -->\nb\n");
        // Run twice, the same.
        assert_eq!(super::splice(&out, "<!-- s -->", "<!-- /s -->", "- Goal: x").unwrap(), out);
        assert!(super::splice("no markers", "<!-- s -->", "<!-- /s -->", "x").is_err());
    }

    #[test]
    fn blocks_written_by_other_commands_are_found_whole() {
        let text =
            "# B\n\n## x\n<!-- begin soak -->\nA\n<!-- end soak -->\nmid\n<!-- begin fuzz -->\nB\n<!-- end fuzz -->\n";
        assert_eq!(
            super::blocks(text),
            ["<!-- begin soak -->\nA\n<!-- end soak -->", "<!-- begin fuzz -->\nB\n<!-- end fuzz -->"]
        );
        assert!(super::blocks("<!-- begin soak -->\nunterminated").is_empty());
    }
}

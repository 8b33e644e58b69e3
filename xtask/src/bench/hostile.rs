//! `cargo xtask hostile`: the collector under a fleet of which a share
//! misbehaves (floods, malformed and oversized messages, a wrong token),
//! side by side with the same well-behaved agents alone, round by round.
//! Written to BENCHMARKS.md as its own block.

use std::{
    collections::BTreeMap,
    fmt::Write as _,
    process::{Command, Stdio},
    time::Instant,
};

use anyhow::{bail, Context as _, Result};

use super::{collector::CollectorProcess, cpu_seconds, median, rotate, status_mib, step, Config};
use crate::root;

#[derive(clap::Args)]
pub struct Args {
    /// Agents in the hostile runs (the clean runs have only their well-behaved ones).
    #[arg(long, default_value_t = 1_000)]
    agents: u32,
    /// Share of them that misbehave, in percent.
    #[arg(long, default_value_t = 10)]
    bad_percent: u32,
    /// Seconds per run.
    #[arg(long, default_value_t = 30)]
    seconds: u64,
    /// Processes per well-behaved report. Fewer than the collector bench's 50:
    /// at 50, 1,000 agents and the load generators beside the collector take
    /// this 2-core host to the collector's limit, and ack latency would
    /// measure that backlog rather than the misbehaving agents.
    #[arg(long, default_value_t = 10)]
    processes: u32,
    /// Rounds (one clean and one hostile run each, the order rotated).
    #[arg(long, default_value_t = 2)]
    rounds: usize,
    /// Print the results only; leave BENCHMARKS.md alone.
    #[arg(long)]
    no_write: bool,
}

const TOKEN: &str = "well-behaved-agents-token";

#[derive(Clone, Copy, PartialEq, Eq)]
enum Fleet {
    Clean,
    Hostile,
}

impl Config for Fleet {
    fn name(self) -> &'static str {
        match self {
            Fleet::Clean => "well-behaved agents alone",
            Fleet::Hostile => "the same, with the misbehaving agents",
        }
    }
}

#[derive(Clone)]
struct Run {
    good_agents: u64,
    sent: u64,
    acked: u64,
    ack_p50_ms: f64,
    ack_p99_ms: f64,
    cpu_cores: f64,
    peak_mib: f64,
    /// Per kind of misbehaviour: (agents, status code -> streams).
    refused: BTreeMap<String, (u64, BTreeMap<String, u64>)>,
}

pub fn run(args: Args) -> Result<()> {
    let good = args.agents - args.agents * args.bad_percent.min(100) / 100;
    step(&format!(
        "a misbehaving fleet: {} agents, {}% misbehaving, against {good} well-behaved agents alone; {} s per run, {} rounds",
        args.agents, args.bad_percent, args.seconds, args.rounds
    ));
    let fleets = [Fleet::Clean, Fleet::Hostile];
    let runs = rotate("misbehaving fleet", args.rounds, &fleets, |f| match f {
        Fleet::Clean => measure(good, 0, args.processes, args.seconds),
        Fleet::Hostile => measure(good, args.agents - good, args.processes, args.seconds),
    })?;
    let md = write(&args, &fleets, &runs)?;
    println!("{md}");
    if !args.no_write {
        super::write_block("hostile-fleet", &md)?;
        step("wrote the hostile-fleet block of BENCHMARKS.md");
    }
    let lost: u64 = runs.iter().flatten().map(|r| r.sent - r.acked.min(r.sent)).sum();
    if lost > 0 {
        bail!("well-behaved agents lost {lost} reports");
    }
    Ok(())
}

/// `good` well-behaved agents and `bad` misbehaving ones (two load
/// generators, so that the misbehaving agents' CPU is not the well-behaved
/// ones' queue), and one light agent timing its acks.
fn measure(good: u32, bad: u32, processes: u32, seconds: u64) -> Result<Run> {
    let token = std::env::temp_dir().join("hostprobe-bench-hostile.token");
    std::fs::write(&token, TOKEN)?;
    // In memory, for the same reason as --processes.
    let collector = CollectorProcess::start_with(&["--token-file", token.to_str().context("temp dir path")?], None)?;
    let pid = collector.child.id();
    let cpu0 = cpu_seconds(pid).unwrap_or(0.0);
    let started = Instant::now();
    let secs = seconds.to_string();
    let loadgen = |agents: u32, percent: &str| {
        Command::new(root().join("target/release/loadgen"))
            .args([&collector.url, &agents.to_string(), &processes.to_string(), &secs, percent, TOKEN])
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .context("starting the load generator")
    };
    let probe = Command::new(root().join("target/release/workload"))
        .args(["ack-latency", &collector.url, &secs, TOKEN])
        .stdout(Stdio::piped())
        .spawn()
        .context("starting the ack-latency agent")?;
    let misbehaving = (bad > 0).then(|| loadgen(bad, "100")).transpose()?;
    let out = loadgen(good, "0")?.wait_with_output()?;
    let bad_out = misbehaving.map(|c| c.wait_with_output()).transpose()?;
    let acks = probe.wait_with_output().context("the ack-latency agent")?;
    let cpu_cores = (cpu_seconds(pid).unwrap_or(0.0) - cpu0) / started.elapsed().as_secs_f64();
    let peak_mib = status_mib(pid, "VmHWM").unwrap_or(0.0);
    drop(collector);
    for o in std::iter::once(&out).chain(&bad_out) {
        if !o.status.success() {
            bail!("load generator failed: {}", String::from_utf8_lossy(&o.stderr));
        }
    }
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).context("load generator output")?;
    let acks: serde_json::Value = serde_json::from_slice(&acks.stdout).context("ack-latency output")?;
    let mut refused = BTreeMap::new();
    if let Some(b) = &bad_out {
        let b: serde_json::Value = serde_json::from_slice(&b.stdout).context("load generator output")?;
        for (kind, k) in b["misbehaving"].as_object().into_iter().flatten() {
            let codes = k["codes"]
                .as_object()
                .into_iter()
                .flatten()
                .map(|(c, n)| (c.clone(), n.as_u64().unwrap_or(0)))
                .collect();
            refused.insert(kind.clone(), (k["agents"].as_u64().unwrap_or(0), codes));
        }
    }
    Ok(Run {
        good_agents: v["good_agents"].as_u64().unwrap_or(0),
        sent: v["sent"].as_u64().unwrap_or(0),
        acked: v["acked"].as_u64().unwrap_or(0),
        ack_p50_ms: acks["p50_ms"].as_f64().unwrap_or(f64::NAN),
        ack_p99_ms: acks["p99_ms"].as_f64().unwrap_or(f64::NAN),
        cpu_cores,
        peak_mib,
        refused,
    })
}

fn write(args: &Args, fleets: &[Fleet], runs: &[Vec<Run>]) -> Result<String> {
    let mut md = String::new();
    writeln!(md, "## The collector under a misbehaving fleet\n")?;
    writeln!(
        md,
        "Written by `cargo xtask hostile` on {} ({}). `loadgen` (tests/src/bin/loadgen.rs) streams to a \
         `hostprobe collector --plaintext --token-file F` (in memory) on loopback: {} agents for {} s, \
         each well-behaved one sending a report of {} processes a second (fewer than the collector \
         table's 50 and no `--data-dir`: with those, 1,000 agents alone and the load generators \
         beside them take this 2-core host to the collector's limit, and ack latency measures that \
         backlog, not the misbehaving agents) \
         with the right token, and {}% of them misbehaving for the whole run, in four kinds taken in \
         turn, each retrying as soon as it is refused: a flood (3,000 reports back to back per stream), \
         64 bytes of garbage (every 100 ms), a 5 MiB message (past the 4 MiB `--max-message`, every \
         second) and a wrong token (every 100 ms). Side by side, in rotated order, {} rounds: the \
         same well-behaved agents alone. Acked: acknowledgements each well-behaved agent received, \
         against the reports it sent; ack latency: from each report's send to its acknowledgement, \
         of one more well-behaved agent (`workload ack-latency`) that sends a small report every 50 ms \
         through each run (the load generators run on the same cores: two of them, one for the \
         well-behaved agents and one for the misbehaving ones). Collector CPU from `/proc/<pid>/stat`, memory its `VmHWM`.\n",
        super::machine(),
        super::date(),
        args.agents,
        args.seconds,
        args.processes,
        args.bad_percent,
        args.rounds
    )?;
    writeln!(
        md,
        "| fleet | round | well-behaved agents | acked / sent | ack latency p50 / p99, ms | collector CPU, cores | peak RSS MiB |"
    )?;
    writeln!(md, "|---|---|---|---|---|---|---|")?;
    for (f, rs) in fleets.iter().zip(runs) {
        for (i, r) in rs.iter().enumerate() {
            writeln!(
                md,
                "| {} | {} | {} | {} / {} | {:.1} / {:.1} | {:.2} | {:.0} |",
                f.name(),
                i + 1,
                r.good_agents,
                r.acked,
                r.sent,
                r.ack_p50_ms,
                r.ack_p99_ms,
                r.cpu_cores,
                r.peak_mib
            )?;
        }
    }
    writeln!(
        md,
        "\nWhat the misbehaving agents got, over every hostile run (streams, by the status that ended them):\n"
    )?;
    writeln!(md, "| kind | agents per run | streams refused, by status |")?;
    writeln!(md, "|---|---|---|")?;
    let hostile = fleets.iter().position(|f| *f == Fleet::Hostile).map(|i| &runs[i]);
    let mut kinds: BTreeMap<&str, (u64, BTreeMap<&str, u64>)> = BTreeMap::new();
    for r in hostile.into_iter().flatten() {
        for (kind, (agents, codes)) in &r.refused {
            let e = kinds.entry(kind).or_default();
            e.0 = *agents;
            for (c, n) in codes {
                *e.1.entry(c).or_default() += n;
            }
        }
    }
    for (kind, (agents, codes)) in &kinds {
        let codes: Vec<String> = codes.iter().map(|(c, n)| format!("{c} {n}")).collect();
        writeln!(md, "| {kind} | {agents} | {} |", codes.join(", "))?;
    }
    let (mut sent, mut acked) = (0, 0);
    for r in runs.iter().flatten() {
        (sent, acked) = (sent + r.sent, acked + r.acked);
    }
    let p99 = |f: Fleet| {
        let i = fleets.iter().position(|x| *x == f).unwrap_or(0);
        median(&runs[i].iter().map(|r| r.ack_p99_ms).collect::<Vec<f64>>())
    };
    writeln!(
        md,
        "\nWell-behaved agents, every run: {acked} of {sent} reports acknowledged{}. Median ack p99: {:.1} ms \
         alone, {:.1} ms among the misbehaving agents.",
        if acked == sent { ", none lost" } else { ": **some lost**" },
        p99(Fleet::Clean),
        p99(Fleet::Hostile)
    )?;
    Ok(md)
}

//! Context switches: a pipe ping-pong pinned to one CPU, with the off-CPU
//! probe alone, the syscall probe alone (its `sched_switch` path), every
//! probe, the empty-program floor on the off-CPU probe's tracepoints, and
//! the peers; then stacks of one process, hostprobe against `offcputime`.

use std::{
    fmt::Write as _,
    io::{Read as _, Write as _},
    process::{Command, Stdio},
};

use anyhow::{Context as _, Result};

use super::{goal, paired, per_round, rotate, row, tracer::Tracer, write_rows, Row};
use crate::root;

const SECONDS: u64 = 3;

pub struct SwitchBench {
    rows: Vec<Row>,
    stacks: Vec<Row>,
    rounds: usize,
}

pub fn bench(rounds: usize) -> Result<SwitchBench> {
    let tracers: Vec<Tracer> = [
        Tracer::Nothing,
        Tracer::SwitchFloor,
        Tracer::HostprobeProbe("offcpu"),
        Tracer::HostprobeProbe("syscall"),
        Tracer::Hostprobe,
        Tracer::Runqlat,
    ]
    .into_iter()
    .filter(|t| t.available())
    .collect();
    let samples = rotate("context switches", rounds, &tracers, pingpong)?;
    let stack_tracers: Vec<Tracer> = [Tracer::Nothing, Tracer::HostprobeStacks(0), Tracer::Offcputime(0)]
        .into_iter()
        .filter(|t| t.available())
        .collect();
    let stacks = rotate("context switches, stacks of one process", rounds, &stack_tracers, pingpong)?;
    Ok(SwitchBench { rows: paired(&tracers, &samples), stacks: paired(&stack_tracers, &stacks), rounds })
}

/// Round trips per second of the pipe ping-pong, both processes on CPU 1,
/// with `tracer` attached (started once the workload exists, so that a
/// tracer of one process can be aimed at it).
fn pingpong(tracer: Tracer) -> Result<f64> {
    let mut w = Command::new("taskset")
        .args(["-c", "1"])
        .arg(root().join("target/release/workload"))
        .args(["pingpong", &(SECONDS * 1000).to_string()])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()?;
    let child = tracer.aimed_at(w.id()).start()?;
    w.stdin.take().context("stdin")?.write_all(b"go\n")?;
    let mut out = String::new();
    w.stdout.take().context("stdout")?.read_to_string(&mut out)?;
    let _ = w.wait();
    super::tracer::stop(child);
    out.trim().parse().context("parsing round trips per second")
}

/// Per round, the fraction of the baseline's rate that `a` costs over what
/// `b` costs (1.0: the same cost).
fn cost_ratio(rows: &[Row], a: Tracer, b: Tracer) -> Option<f64> {
    let (base, a, b) = (&rows.first()?.samples, row(rows, a)?, row(rows, b)?);
    let cost = |s: &[f64]| -> Vec<f64> { s.iter().zip(base).map(|(x, b)| 1.0 - x / b).collect() };
    Some(per_round(&cost(&a.samples), &cost(&b.samples), |x, y| x / y))
}

impl SwitchBench {
    pub fn write(&self, md: &mut String) -> Result<()> {
        writeln!(md, "\n## Context switches: off-CPU probe, the syscall probe's switch path, every probe\n")?;
        writeln!(
            md,
            "Two processes bounce a byte over a pair of pipes for {SECONDS} s, both pinned to CPU 1, so \
             every round trip is two context switches, two wake-ups and four syscalls (a read and a \
             write on each side). The floor is the least any program on the off-CPU probe's hooks \
             costs: programs that do nothing, on the same raw tracepoints of the same two events \
             (`sched_switch`, `sched_wakeup`). `--probes syscall` shows the \
             syscall probe's cost on a workload that blocks (its `sched_switch` program runs at every \
             switch, besides `sys_enter`/`sys_exit`). {} rounds, order rotated.\n",
            self.rounds
        )?;
        write_rows(md, "round trips/s", 0, &self.rows)?;
        writeln!(md)?;
        let floor = row(&self.rows, Tracer::SwitchFloor).map(|r| (1.0 - r.ratio) * 100.0);
        let offcpu = Tracer::HostprobeProbe("offcpu");
        if let (Some(ratio), Some(floor)) = (cost_ratio(&self.rows, offcpu, Tracer::SwitchFloor), floor) {
            goal(
                md,
                "on the pipe ping-pong, the off-CPU probe alone costs at most 2x the floor",
                &format!("{ratio:.2}x the floor (the floor costs {floor:.1}% of the switch rate)"),
                ratio <= 2.0,
            )?;
        }
        if let Some(ratio) = cost_ratio(&self.rows, Tracer::Hostprobe, Tracer::Runqlat) {
            let floor = floor.map(|f| format!("; the floor: {f:.1}%")).unwrap_or_default();
            let cost = |t| row(&self.rows, t).map(|r| (1.0 - r.ratio) * 100.0).unwrap_or(f64::NAN);
            goal(
                md,
                "on the pipe ping-pong, the default agent (every probe) costs no more than `runqlat` alone",
                &format!(
                    "{ratio:.2}x what runqlat costs ({:.1}% vs {:.1}% of the switch rate{floor})",
                    cost(Tracer::Hostprobe),
                    cost(Tracer::Runqlat)
                ),
                ratio <= 1.0,
            )?;
        }
        writeln!(md, "\n### Stacks at every switch of one process\n")?;
        writeln!(
            md,
            "The same ping-pong; both tracers aimed at the parent of the two processes by pid, both \
             keeping blocks of at least 1 us (`hostprobe offcpu --pid P --min 1us --folded /dev/null`; \
             `offcputime -p P`, whose default is `-m 1`), both walking kernel and user stacks. What \
             differs: hostprobe walks them when a thread leaves the CPU, `offcputime` when it comes \
             back and only for blocks past the minimum. {} rounds, order rotated.\n",
            self.rounds
        )?;
        write_rows(md, "round trips/s", 0, &self.stacks)?;
        Ok(())
    }
}

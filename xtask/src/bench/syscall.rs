//! Syscall probe: added cost per getppid(), against nothing, `syscount -L`
//! and a bpftrace one-liner, and the kernel's own CPU per program run.

use std::{
    fmt::Write as _,
    process::{Command, Stdio},
    sync::mpsc,
    time::{Duration, Instant},
};

use anyhow::{bail, Context as _, Result};

use super::{goal, median, per_round, rotate, step, tracer::attached, with_bpf_stats, Tracer};
use crate::root;

pub struct SyscallBench {
    calls: u64,
    rounds: usize,
    tracers: Vec<Tracer>,
    /// ns per call, per tracer, one per round.
    samples: Vec<Vec<f64>>,
    kernel: KernelCost,
}

pub fn bench(rounds: usize, calls: u64) -> Result<SyscallBench> {
    let tracers: Vec<Tracer> = [
        Tracer::Nothing,
        Tracer::SyscallFloor,
        Tracer::HostprobeProbe("syscall"),
        Tracer::SyscountL,
        Tracer::BpftraceHist,
    ]
    .into_iter()
    .filter(|t| t.available())
    .collect();
    let samples = rotate("syscall overhead (getppid loop)", rounds, &tracers, |t| attached(t, || time_getppid(calls)))?;
    step("syscall: kernel CPU per program run (kernel.bpf_stats_enabled)");
    let kernel = kernel_cost(calls)?;
    Ok(SyscallBench { calls, rounds, tracers, samples, kernel })
}

/// Mean ns per getppid() of one pinned run.
fn time_getppid(calls: u64) -> Result<f64> {
    let out = Command::new("taskset")
        .args(["-c", "1"])
        .arg(root().join("target/release/workload"))
        .args(["time-getppid", &calls.to_string()])
        .output()
        .context("running the getppid loop")?;
    if !out.status.success() {
        bail!("getppid loop failed: {}", String::from_utf8_lossy(&out.stderr));
    }
    String::from_utf8_lossy(&out.stdout).trim().parse().context("parsing ns per call")
}

struct KernelCost {
    /// (program, runs, ns per run) over the window.
    programs: Vec<(String, u64, f64)>,
    window_s: f64,
}

/// Kernel CPU per run of each of the syscall probe's programs, from the
/// kernel's own BPF statistics as the agent reports them, over a window
/// that opens before the getppid loop starts and closes after it ends.
fn kernel_cost(calls: u64) -> Result<KernelCost> {
    with_bpf_stats(|| {
        let mut agent = Command::new(root().join("target/release/hostprobe"))
            .args(["run", "--output", "json", "--interval", "1s", "--probes", "syscall"])
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()?;
        let stdout = agent.stdout.take().context("agent stdout")?;
        // Lines are read as they come, so a line's arrival is (within a
        // scheduling delay) when the agent wrote it.
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            for l in std::io::BufRead::lines(std::io::BufReader::new(stdout)).map_while(Result::ok) {
                if tx.send(l).is_err() {
                    break;
                }
            }
        });
        let next = || rx.recv_timeout(Duration::from_secs(10)).context("no report from the agent");
        let opened = Instant::now();
        let first = syscall_status(&next()?).context("no syscall probe status")?;
        time_getppid(calls)?;
        // Whatever is queued may have been written before the loop ended:
        // skip it, then take the second report after that (a whole interval
        // later), which counts every call of the loop.
        while rx.try_recv().is_ok() {}
        next()?;
        let last = syscall_status(&next()?).context("no syscall probe status")?;
        let window_s = opened.elapsed().as_secs_f64();
        super::tracer::stop(Some(agent));
        let counter = |s: &serde_json::Value, name: &str, field: &str| -> u64 {
            s["programs"]
                .as_array()
                .and_then(|ps| ps.iter().find(|p| p["name"] == name))
                .and_then(|p| p[field].as_u64())
                .unwrap_or(0)
        };
        let mut programs = Vec::new();
        for p in last["programs"].as_array().into_iter().flatten() {
            let name = p["name"].as_str().unwrap_or("").to_string();
            let runs = counter(&last, &name, "runs") - counter(&first, &name, "runs");
            let ns = counter(&last, &name, "run_time_ns") - counter(&first, &name, "run_time_ns");
            programs.push((name, runs, if runs == 0 { 0.0 } else { ns as f64 / runs as f64 }));
        }
        let enters = programs.iter().find(|p| p.0.ends_with("sys_enter")).map(|p| p.1).unwrap_or(0);
        if enters < calls {
            bail!("the window counted {enters} sys_enter runs for a loop of {calls} calls: it missed part of the loop");
        }
        Ok(KernelCost { programs, window_s })
    })
}

/// The syscall probe's status object in a JSON report line.
pub fn syscall_status(line: &str) -> Option<serde_json::Value> {
    let v: serde_json::Value = serde_json::from_str(line).ok()?;
    v["probes"].as_array()?.iter().find(|p| p["name"] == "syscall").cloned()
}

impl SyscallBench {
    fn samples_of(&self, t: Tracer) -> Option<&[f64]> {
        self.tracers.iter().position(|x| *x == t).map(|i| self.samples[i].as_slice())
    }

    pub fn write(&self, md: &mut String) -> Result<()> {
        writeln!(md, "\n## Syscall probe: added cost per syscall\n")?;
        writeln!(
            md,
            "A pinned (`taskset -c 1`) loop of {} `getppid()` calls, timed from userspace, with each \
             configuration attached in turn; {} rounds, the order rotated every round. Every tracer \
             traces all processes (no filter). \"Added\" is the median of per-round differences to \
             the baseline of the same round. Raw samples (ns/call, in round order) in the last column.\n",
            self.calls, self.rounds
        )?;
        writeln!(md, "| attached | ns per syscall (median) | added ns (median of per-round differences) | samples |")?;
        writeln!(md, "|---|---|---|---|")?;
        let base = &self.samples[0];
        for (t, s) in self.tracers.iter().zip(&self.samples) {
            let raw: Vec<String> = s.iter().map(|v| format!("{v:.1}")).collect();
            let added = per_round(s, base, |x, b| x - b);
            writeln!(md, "| {} | {:.1} | {added:+.1} | {} |", t.name(), median(s), raw.join(", "))?;
        }
        // Per round, what `t` adds to a call over that round's baseline.
        let added_by =
            |t| -> Option<Vec<f64>> { Some(self.samples_of(t)?.iter().zip(base).map(|(x, b)| x - b).collect()) };
        if let Some(added) = added_by(Tracer::HostprobeProbe("syscall")) {
            writeln!(md)?;
            // Per round: what hostprobe adds over what the peer adds.
            for (peer, label) in
                [(Tracer::SyscountL, "`syscount -L`"), (Tracer::BpftraceHist, "the bpftrace one-liner")]
            {
                let Some(theirs) = added_by(peer) else { continue };
                let ratio = per_round(&added, &theirs, |a, b| a / b);
                writeln!(md, "- hostprobe adds {ratio:.2}x what {label} adds (median of per-round ratios).")?;
                if peer == Tracer::SyscountL {
                    // What any program on the same two hooks adds: the part
                    // of both that no probe can shed.
                    let floor = added_by(Tracer::SyscallFloor).map(|f| {
                        format!(
                            " (the floor adds {:.1} ns, hostprobe {:.1} ns, `syscount -L` {:.1} ns: medians of per-round differences)",
                            median(&f),
                            median(&added),
                            median(&theirs)
                        )
                    });
                    let measured = format!("{ratio:.2}x{}", floor.unwrap_or_default());
                    goal(
                        md,
                        "the syscall probe adds at most 0.65x what `syscount -L` adds per getppid",
                        &measured,
                        ratio <= 0.65,
                    )?;
                }
            }
        }
        writeln!(md, "\n### Kernel CPU per program run\n")?;
        writeln!(
            md,
            "From the kernel's own BPF statistics (`kernel.bpf_stats_enabled=1`, run count and run time \
             per program, as `hostprobe run --probes syscall` reports them) over a {:.1} s window that \
             opens before one more loop of {} getppid() calls and closes a whole interval after it ends; \
             runs include every process's syscalls in the window. These exclude the tracepoint dispatch \
             itself, which the table above includes. `sched_switch` is the probe's path for syscalls that \
             block: getppid never does, so see the context-switch section for its cost.\n",
            self.kernel.window_s, self.calls
        )?;
        writeln!(md, "| program | runs | ns per run |")?;
        writeln!(md, "|---|---|---|")?;
        for (name, runs, ns) in &self.kernel.programs {
            writeln!(md, "| {name} | {runs} | {ns:.1} |")?;
        }
        Ok(())
    }
}

//! The agent's own cost with every probe among many busy processes: CPU per
//! interval, resident memory at its peak and at the end.

use std::{
    fmt::Write as _,
    io::BufRead as _,
    process::{Command, Stdio},
    sync::{
        atomic::{AtomicUsize, Ordering},
        Arc,
    },
    time::{Duration, Instant},
};

use anyhow::{bail, Context as _, Result};

use super::{cpu_seconds, goal, status_mib, step, syscall::syscall_status};
use crate::root;

pub struct AgentCost {
    processes: usize,
    seconds: u64,
    cpu_ms_per_interval: f64,
    /// CPU of the agent's main thread (output and export; collection runs
    /// on its own thread), from its schedstat (ns resolution).
    pub main_thread_ms_per_interval: f64,
    peak_mib: f64,
    /// VmRSS at the last sample before the agent exits.
    end_mib: f64,
    entries: u64,
    intervals: usize,
}

pub fn bench(processes: usize, seconds: u64) -> Result<AgentCost> {
    step(&format!("agent cost: every probe among {processes} busy processes for {seconds} s"));
    measure(processes, seconds, &[])
}

/// Runs `hostprobe run ARGS` (every probe) among `processes` busy processes
/// for `seconds`, sampling its CPU and memory.
pub fn measure(processes: usize, seconds: u64, extra: &[&str]) -> Result<AgentCost> {
    let workload = root().join("target/release/workload");
    let busy_for = (seconds + 6).to_string();
    let mut busy = Vec::with_capacity(processes);
    for _ in 0..processes {
        busy.push(Command::new(&workload).args(["busy", &busy_for]).spawn().context("spawning busy processes")?);
    }
    std::thread::sleep(Duration::from_secs(1));
    let mut agent = Command::new(root().join("target/release/hostprobe"))
        .args(["run", "--output", "json", "--interval", "1s", "--top", "20"])
        .args(["--duration", &format!("{seconds}s")])
        .args(extra)
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()?;
    let pid = agent.id();
    let stdout = agent.stdout.take().context("agent stdout")?;
    let seen = Arc::new(AtomicUsize::new(0));
    let counter = seen.clone();
    let reader = std::thread::spawn(move || {
        let mut last = None;
        for l in std::io::BufReader::new(stdout).lines().map_while(Result::ok) {
            last = Some(l);
            counter.fetch_add(1, Ordering::SeqCst);
        }
        last
    });
    let main_ns = || -> Option<u64> {
        std::fs::read_to_string(format!("/proc/{pid}/task/{pid}/schedstat"))
            .ok()?
            .split_whitespace()
            .next()?
            .parse()
            .ok()
    };
    // Steady state: CPU from the first report (start-up, which reads the
    // kernel's BTF, is not an interval's cost) to the last one.
    let mut first: Option<(usize, f64, u64)> = None;
    let mut last: Option<(usize, f64, u64)> = None;
    let (mut peak_mib, mut end_mib) = (0.0, 0.0);
    let started = Instant::now();
    while started.elapsed() < Duration::from_secs(seconds + 5) {
        let n = seen.load(Ordering::SeqCst);
        if let (Some(t), Some(m)) = (cpu_seconds(pid), main_ns()) {
            if n >= 1 {
                first.get_or_insert((n, t, m));
                last = Some((n, t, m));
            }
        }
        peak_mib = status_mib(pid, "VmHWM").unwrap_or(peak_mib);
        end_mib = status_mib(pid, "VmRSS").unwrap_or(end_mib);
        if agent.try_wait()?.is_some() {
            break;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let _ = agent.kill();
    let _ = agent.wait();
    let last_line = reader.join().map_err(|_| anyhow::anyhow!("reader thread"))?;
    for mut b in busy {
        let _ = b.kill();
        let _ = b.wait();
    }
    let entries = last_line.as_deref().and_then(map_entries).unwrap_or(0);
    let (Some((n0, t0, m0)), Some((n1, t1, m1))) = (first, last) else {
        bail!("the agent printed no reports");
    };
    let intervals = n1.saturating_sub(n0);
    if intervals == 0 {
        bail!("too few intervals to measure");
    }
    Ok(AgentCost {
        processes,
        seconds,
        cpu_ms_per_interval: (t1 - t0) * 1000.0 / intervals as f64,
        main_thread_ms_per_interval: (m1 - m0) as f64 / 1e6 / intervals as f64,
        peak_mib,
        end_mib,
        entries,
        intervals,
    })
}

/// SYSCALL_STATS entries from a JSON report line.
fn map_entries(line: &str) -> Option<u64> {
    let s = syscall_status(line)?;
    s["maps"].as_array()?.iter().find(|m| m["name"] == "SYSCALL_STATS")?["entries"].as_u64()
}

impl AgentCost {
    pub fn write(&self, md: &mut String) -> Result<()> {
        writeln!(md, "\n## Agent cost: CPU and memory\n")?;
        writeln!(
            md,
            "{} processes each making ~80 syscalls (4 kinds) then sleeping 5 ms, in a loop; \
             `hostprobe run --output json --interval 1s` (every probe) among them for {} s. CPU from \
             `/proc/<pid>/stat` (user + system) between the first and the last report (steady \
             state; start-up is left out); memory from `/proc/<pid>/status`, sampled every 20 ms: \
             the peak (`VmHWM`, start-up included) and the resident size at the last sample before \
             the agent exits (`VmRSS`). One run.\n",
            self.processes, self.seconds
        )?;
        writeln!(md, "| measure | value |")?;
        writeln!(md, "|---|---|")?;
        writeln!(
            md,
            "| agent CPU per 1 s interval | {:.1} ms ({:.2}% of one core) |",
            self.cpu_ms_per_interval,
            self.cpu_ms_per_interval / 10.0
        )?;
        writeln!(md, "| agent peak resident memory (VmHWM) | {:.1} MiB |", self.peak_mib)?;
        writeln!(md, "| agent resident memory at the end (VmRSS) | {:.1} MiB |", self.end_mib)?;
        writeln!(md, "| (process, syscall, latency range) entries in the kernel map | {} |", self.entries)?;
        writeln!(md, "| intervals measured | {} |", self.intervals)?;
        writeln!(md)?;
        goal(
            md,
            &format!(
                "agent memory under 30 MiB resident with every probe and {} busy processes, peak included",
                self.processes
            ),
            &format!("{:.1} MiB peak, {:.1} MiB at the end", self.peak_mib, self.end_mib),
            self.peak_mib < 30.0,
        )
    }
}

//! The interactive view's own cost (`hostprobe top`) among many busy
//! processes: the CPU of the thread that sorts, filters and draws, per
//! refresh, in a real terminal (tmux, 200x50).

use std::{
    fmt::Write as _,
    process::Command,
    time::{Duration, Instant},
};

use anyhow::{bail, Context as _, Result};

use super::{cpu_seconds, goal, step};
use crate::root;

pub struct ViewCost {
    processes: usize,
    seconds: u64,
    refreshes: f64,
    /// CPU of the view's thread per refresh.
    view_ms_per_refresh: f64,
    /// CPU of the whole agent per interval with the view on (it reports
    /// every process: the view needs them all to sort and filter).
    process_ms_per_interval: f64,
    /// Processes in the view's last refresh.
    shown: usize,
}

/// A named thread's CPU time (ns, from its schedstat).
fn thread_ns(pid: u32, name: &str) -> Option<u64> {
    std::fs::read_dir(format!("/proc/{pid}/task")).ok()?.flatten().find_map(|t| {
        let comm = std::fs::read_to_string(t.path().join("comm")).ok()?;
        (comm.trim() == name).then_some(())?;
        std::fs::read_to_string(t.path().join("schedstat")).ok()?.split_whitespace().next()?.parse().ok()
    })
}

fn tmux(args: &[&str]) -> Result<String> {
    let out = Command::new("tmux").args(["-L", "hostprobe-bench-view", "-f", "/dev/null"]).args(args).output()?;
    if !out.status.success() {
        bail!("tmux {args:?}: {}", String::from_utf8_lossy(&out.stderr));
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

pub fn bench(processes: usize, seconds: u64) -> Result<ViewCost> {
    step(&format!("view cost: hostprobe top among {processes} busy processes for {seconds} s"));
    let workload = root().join("target/release/workload");
    let busy_for = (seconds + 8).to_string();
    let mut busy = Vec::with_capacity(processes);
    for _ in 0..processes {
        busy.push(Command::new(&workload).args(["busy", &busy_for]).spawn().context("spawning busy processes")?);
    }
    std::thread::sleep(Duration::from_secs(1));
    let result = measure(processes, seconds);
    let _ = tmux(&["kill-server"]);
    for mut b in busy {
        let _ = b.kill();
        let _ = b.wait();
    }
    result
}

fn measure(processes: usize, seconds: u64) -> Result<ViewCost> {
    let bin = root().join("target/release/hostprobe");
    let cmd = format!("exec {} top --interval 1s --duration {}s", bin.display(), seconds + 4);
    tmux(&["new-session", "-d", "-x", "200", "-y", "50", "-s", "v", &cmd])?;
    let pid: u32 = tmux(&["display-message", "-p", "-t", "v", "#{pane_pid}"])?.trim().parse()?;
    // From the first report on screen (start-up is not a refresh's cost).
    let started = Instant::now();
    while !tmux(&["capture-pane", "-p", "-t", "v"])?.contains(" processes  sort ") {
        if started.elapsed() > Duration::from_secs(30) {
            bail!("hostprobe top showed no report within 30 s");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let sample =
        || -> Option<(Instant, u64, f64)> { Some((Instant::now(), thread_ns(pid, "view")?, cpu_seconds(pid)?)) };
    let (t0, v0, c0) = sample().context("the view's thread")?;
    std::thread::sleep(Duration::from_secs(seconds));
    let (t1, v1, c1) = sample().context("the view's thread at the end")?;
    let screen = tmux(&["capture-pane", "-p", "-t", "v"])?;
    let shown = screen
        .lines()
        .next()
        .and_then(|l| l.split("  ").find_map(|w| w.strip_suffix(" processes")?.trim().parse().ok()))
        .unwrap_or(0);
    // One refresh per 1 s interval.
    let refreshes = (t1 - t0).as_secs_f64();
    Ok(ViewCost {
        processes,
        seconds,
        refreshes,
        view_ms_per_refresh: (v1 - v0) as f64 / 1e6 / refreshes,
        process_ms_per_interval: (c1 - c0) * 1000.0 / refreshes,
        shown,
    })
}

impl ViewCost {
    pub fn write(&self, md: &mut String) -> Result<()> {
        writeln!(md, "\n## Interactive view cost: `hostprobe top`\n")?;
        writeln!(
            md,
            "`hostprobe top --interval 1s` (every probe) in a 200x50 tmux terminal among {} busy processes \
             (as above) for {} s. The view's thread (rows from the report, sort, filter, draw; it also \
             wakes every 100 ms for keys) from its schedstat (ns); the whole agent from `/proc/<pid>/stat`, \
             from the first report on screen to the end. With the view on, the agent reports every process \
             (the view sorts and filters them all), not the top 20. One run.\n",
            self.processes, self.seconds
        )?;
        writeln!(md, "| measure | value |")?;
        writeln!(md, "|---|---|")?;
        writeln!(md, "| view thread CPU per refresh | {:.2} ms |", self.view_ms_per_refresh)?;
        writeln!(md, "| whole agent CPU per 1 s interval, view on | {:.1} ms |", self.process_ms_per_interval)?;
        writeln!(md, "| processes in the last refresh | {} |", self.shown)?;
        writeln!(md, "| refreshes measured | {:.0} |", self.refreshes)?;
        writeln!(md)?;
        goal(
            md,
            &format!("the interactive view's own CPU under 5 ms per refresh among {} busy processes", self.processes),
            &format!("{:.2} ms", self.view_ms_per_refresh),
            self.view_ms_per_refresh < 5.0,
        )
    }
}

//! `cargo xtask bench`: what the probes cost, measured side by side in one
//! run against a baseline and the peers people compare us with, and written
//! to BENCHMARKS.md. The machine is shared and noisy, so configurations
//! alternate round by round and medians are reported.

use std::{
    fmt::Write as _,
    path::Path,
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use anyhow::{bail, Context as _, Result};

use crate::{root, step};

#[derive(clap::Args)]
pub struct Args {
    /// Rounds per configuration (medians are reported).
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
    /// Print the results only; leave BENCHMARKS.md alone.
    #[arg(long)]
    no_write: bool,
    /// Only the agent-cost measurement (implies --no-write).
    #[arg(long)]
    agent_only: bool,
    /// Only the disk measurement (implies --no-write).
    #[arg(long)]
    disk_only: bool,
    /// Only the context-switch measurement (implies --no-write).
    #[arg(long)]
    switch_only: bool,
    /// Only the TCP measurement (implies --no-write).
    #[arg(long)]
    tcp_only: bool,
    /// Only the collector measurement (implies --no-write).
    #[arg(long)]
    collector_only: bool,
}

const BPFTRACE_SCRIPT: &str = "tracepoint:raw_syscalls:sys_enter { @start[tid] = nsecs; } \
    tracepoint:raw_syscalls:sys_exit /@start[tid]/ { @[pid, args->id] = hist(nsecs - @start[tid]); delete(@start[tid]); }";

/// What is attached while the loop runs.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Tracer {
    Nothing,
    Hostprobe,
    SyscountL,
    Bpftrace,
    HostprobeDisk,
    Biolatency,
    HostprobeOffcpu,
    /// `hostprobe offcpu --pid P`: stacks of the process being measured.
    HostprobeStacks(u32),
    Runqlat,
    Offcputime,
    HostprobeTcp,
}

impl Tracer {
    fn name(self) -> &'static str {
        match self {
            Tracer::Nothing => "nothing attached",
            Tracer::Hostprobe => "hostprobe (syscall probe, all processes, per-process per-syscall histograms)",
            Tracer::SyscountL => "libbpf-tools `syscount -L` (latency totals per syscall, no histograms)",
            Tracer::Bpftrace => "bpftrace `@[pid, args->id] = hist(nsecs - @start[tid])`",
            Tracer::HostprobeDisk => {
                "hostprobe (disk probe: per process, device and op; queue, service and total histograms)"
            }
            Tracer::Biolatency => "libbpf-tools `biolatency` (one histogram of issue-to-completion time)",
            Tracer::HostprobeOffcpu => "hostprobe (offcpu probe, all processes, no stacks)",
            Tracer::HostprobeStacks(_) => {
                "hostprobe offcpu --pid (kernel + user stacks at every switch of the process)"
            }
            Tracer::Runqlat => "libbpf-tools `runqlat` (one run-queue latency histogram)",
            Tracer::Offcputime => "libbpf-tools `offcputime` (stacks, all processes)",
            Tracer::HostprobeTcp => "hostprobe (tcp probe: every connection's bytes, RTT, retransmits)",
        }
    }

    fn available(self) -> bool {
        match self {
            Tracer::Nothing
            | Tracer::Hostprobe
            | Tracer::HostprobeDisk
            | Tracer::HostprobeOffcpu
            | Tracer::HostprobeStacks(_)
            | Tracer::HostprobeTcp => true,
            Tracer::SyscountL => Path::new("/usr/sbin/syscount").exists(),
            Tracer::Bpftrace => Path::new("/usr/bin/bpftrace").exists(),
            Tracer::Biolatency => Path::new("/usr/sbin/biolatency").exists(),
            Tracer::Runqlat => Path::new("/usr/sbin/runqlat").exists(),
            Tracer::Offcputime => Path::new("/usr/sbin/offcputime").exists(),
        }
    }

    /// Starts the tracer and waits until it is attached.
    fn start(self) -> Result<Option<Child>> {
        let mut cmd = match self {
            Tracer::Nothing => return Ok(None),
            Tracer::Hostprobe => {
                let mut c = Command::new(root().join("target/release/hostprobe"));
                c.args(["run", "--output", "json", "--interval", "1s", "--probes", "syscall"]);
                c
            }
            Tracer::HostprobeDisk => {
                let mut c = Command::new(root().join("target/release/hostprobe"));
                c.args(["run", "--output", "json", "--interval", "1s", "--probes", "disk"]);
                c
            }
            Tracer::HostprobeTcp => {
                let mut c = Command::new(root().join("target/release/hostprobe"));
                c.args(["run", "--output", "json", "--interval", "1s", "--probes", "tcp"]);
                c
            }
            Tracer::Biolatency => Command::new("/usr/sbin/biolatency"),
            Tracer::Runqlat => Command::new("/usr/sbin/runqlat"),
            Tracer::Offcputime => Command::new("/usr/sbin/offcputime"),
            Tracer::HostprobeOffcpu => {
                let mut c = Command::new(root().join("target/release/hostprobe"));
                c.args(["run", "--output", "json", "--interval", "1s", "--probes", "offcpu"]);
                c
            }
            Tracer::HostprobeStacks(pid) => {
                let mut c = Command::new(root().join("target/release/hostprobe"));
                c.args(["offcpu", "--pid", &pid.to_string(), "--duration", "60s", "--folded", "/dev/null"]);
                c
            }
            Tracer::SyscountL => {
                let mut c = Command::new("/usr/sbin/syscount");
                c.arg("-L");
                c
            }
            Tracer::Bpftrace => {
                let mut c = Command::new("/usr/bin/bpftrace");
                c.args(["-e", BPFTRACE_SCRIPT]);
                c
            }
        };
        let mut child = cmd.stdout(Stdio::null()).stderr(Stdio::null()).spawn().context("starting a tracer")?;
        // All three print when attached, but buffer it; two seconds is ample
        // here (each attaches in well under one).
        std::thread::sleep(Duration::from_secs(2));
        if let Some(status) = child.try_wait()? {
            bail!("{} exited at start: {status}", self.name());
        }
        Ok(Some(child))
    }
}

fn stop(child: Option<Child>) {
    if let Some(mut c) = child {
        // SAFETY: signalling our own child.
        unsafe { libc_kill(c.id() as i32, 2) };
        let _ = c.wait();
    }
}

extern "C" {
    #[link_name = "kill"]
    fn libc_kill(pid: i32, sig: i32) -> i32;
}

/// Measures every tracer once per round, the order rotated each round so
/// the host's drift spreads evenly over them; samples per tracer.
fn rotate(
    what: &str,
    rounds: usize,
    tracers: &[Tracer],
    mut measure: impl FnMut(Tracer) -> Result<f64>,
) -> Result<Vec<Vec<f64>>> {
    let mut samples: Vec<Vec<f64>> = vec![Vec::new(); tracers.len()];
    for round in 0..rounds {
        step(&format!("{what}: round {}/{rounds}", round + 1));
        for k in 0..tracers.len() {
            let i = (k + round) % tracers.len();
            samples[i].push(measure(tracers[i])?);
        }
    }
    Ok(samples)
}

/// Per tracer: (tracer, median, median of its per-round ratios to the first
/// tracer's sample of the same round, samples). Paired ratios cancel the
/// host's slow drift.
fn paired(tracers: &[Tracer], samples: Vec<Vec<f64>>) -> Vec<(Tracer, f64, f64, Vec<f64>)> {
    tracers
        .iter()
        .zip(&samples)
        .map(|(t, s)| {
            let mut ratios: Vec<f64> = s.iter().zip(&samples[0]).map(|(x, b)| x / b).collect();
            (*t, median(&mut s.clone()), median(&mut ratios), s.clone())
        })
        .collect()
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

fn median(v: &mut [f64]) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    let n = v.len();
    if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2.0
    }
}

/// Mean ns per getppid() of one pinned run.
fn time_getppid(calls: u64) -> Result<f64> {
    let workload = root().join("target/release/workload");
    let out = Command::new("taskset")
        .args(["-c", "1"])
        .arg(&workload)
        .args(["time-getppid", &calls.to_string()])
        .output()
        .context("running the getppid loop")?;
    if !out.status.success() {
        bail!("getppid loop failed: {}", String::from_utf8_lossy(&out.stderr));
    }
    String::from_utf8_lossy(&out.stdout).trim().parse().context("parsing ns per call")
}

pub fn run(args: Args) -> Result<()> {
    if args.collector_only {
        let mut md = String::new();
        collector_bench(args.rounds)?.write(&mut md)?;
        println!("{md}");
        return Ok(());
    }
    if args.tcp_only {
        let mut md = String::new();
        tcp_bench(args.rounds)?.write(&mut md)?;
        println!("{md}");
        return Ok(());
    }
    if args.switch_only {
        let mut md = String::new();
        switch_bench(args.rounds)?.write(&mut md)?;
        println!("{md}");
        return Ok(());
    }
    if args.disk_only {
        let mut md = String::new();
        disk_bench(args.rounds)?.write(&mut md)?;
        println!("{md}");
        return Ok(());
    }
    if args.agent_only {
        let c = agent_cost(args.processes, args.seconds, &[])?;
        println!(
            "agent CPU per interval {:.1} ms, peak RSS {:.1} MiB, {} entries, {} intervals",
            c.cpu_ms_per_interval, c.rss_mib, c.entries, c.intervals
        );
        return Ok(());
    }
    let tracers: Vec<Tracer> = [Tracer::Nothing, Tracer::Hostprobe, Tracer::SyscountL, Tracer::Bpftrace]
        .into_iter()
        .filter(|t| t.available())
        .collect();
    let mut samples = rotate("syscall overhead", args.rounds, &tracers, |t| {
        let child = t.start()?;
        let r = time_getppid(args.calls);
        stop(child);
        r
    })?;
    let medians: Vec<f64> = samples.iter_mut().map(|s| median(s)).collect();
    let base = medians[0];
    let added = |t: Tracer| tracers.iter().position(|x| *x == t).map(|i| medians[i] - base);

    step("kernel CPU per program run (kernel.bpf_stats_enabled)");
    let kernel = kernel_cost(args.calls)?;

    step(&format!("agent cost: {} busy processes for {} s", args.processes, args.seconds));
    let cost = agent_cost(args.processes, args.seconds, &[])?;

    let disk = disk_bench(args.rounds)?;
    let switches = switch_bench(args.rounds)?;
    let tcp = tcp_bench(args.rounds)?;
    let collector = collector_bench(args.rounds)?;

    let mut md = String::new();
    writeln!(md, "# Benchmarks\n")?;
    writeln!(md, "Written by `cargo xtask bench` on {} ({}).\n", machine(), date())?;
    writeln!(md, "## Syscall probe: added cost per syscall\n")?;
    writeln!(
        md,
        "A pinned (`taskset -c 1`) loop of {} `getppid()` calls, timed from userspace, with each \
         configuration attached in turn; {} rounds, the order rotated every round, medians shown. \
         Every tracer traces all processes (no filter). Raw samples (ns/call) in the last column.\n",
        args.calls, args.rounds
    )?;
    writeln!(md, "| attached | ns per syscall (median) | added ns | samples |")?;
    writeln!(md, "|---|---|---|---|")?;
    for (i, t) in tracers.iter().enumerate() {
        let raw: Vec<String> = samples[i].iter().map(|s| format!("{s:.1}")).collect();
        writeln!(md, "| {} | {:.1} | {:+.1} | {} |", t.name(), medians[i], medians[i] - base, raw.join(", "))?;
    }
    if let Some(ours) = added(Tracer::Hostprobe) {
        writeln!(md)?;
        for (peer, label) in [(Tracer::SyscountL, "`syscount -L`"), (Tracer::Bpftrace, "bpftrace")] {
            if let Some(theirs) = added(peer) {
                writeln!(
                    md,
                    "- hostprobe adds {:.2}x what {label} adds ({ours:.1} vs {theirs:.1} ns).",
                    ours / theirs
                )?;
            }
        }
    }
    writeln!(md, "\n### Kernel CPU per program run\n")?;
    writeln!(
        md,
        "From the kernel's own BPF statistics (`sysctl kernel.bpf_stats_enabled=1`, run count and \
         run time per program) over one more getppid loop with hostprobe attached. These exclude \
         the tracepoint dispatch itself, which the table above includes.\n"
    )?;
    writeln!(md, "| program | runs | ns per run |")?;
    writeln!(md, "|---|---|---|")?;
    for (name, runs, ns) in &kernel {
        writeln!(md, "| {name} | {runs} | {ns:.1} |")?;
    }
    writeln!(
        md,
        "\nThis machine is slower today than when `../shared/toolchain.md` was measured (its \
         baseline was 76 ns per getppid and `syscount -L` added 154 ns); absolute figures move \
         with the host, ratios measured side by side do not."
    )?;
    writeln!(md, "\n## Agent cost\n")?;
    writeln!(
        md,
        "{} processes each making ~80 syscalls (4 kinds) then sleeping 5 ms, in a loop; \
         `hostprobe run --output json --interval 1s` among them for {} s. CPU from \
         `/proc/<pid>/stat` (user + system) between the first and the last report (steady \
         state; start-up, which parses the kernel's BTF, is left out), peak RSS from `VmHWM`.\n",
        args.processes, args.seconds
    )?;
    writeln!(md, "| measure | value |")?;
    writeln!(md, "|---|---|")?;
    writeln!(
        md,
        "| agent CPU per 1 s interval | {:.1} ms ({:.2}% of one core) |",
        cost.cpu_ms_per_interval,
        cost.cpu_ms_per_interval / 10.0
    )?;
    writeln!(md, "| agent peak RSS | {:.1} MiB |", cost.rss_mib)?;
    writeln!(md, "| (process, syscall) entries in the kernel map | {} |", cost.entries)?;
    writeln!(md, "| intervals measured | {} |", cost.intervals)?;

    disk.write(&mut md)?;
    switches.write(&mut md)?;
    tcp.write(&mut md)?;
    collector.write(&mut md)?;

    println!("{md}");
    if !args.no_write {
        std::fs::write(root().join("BENCHMARKS.md"), &md)?;
        step("wrote BENCHMARKS.md");
    }
    Ok(())
}

struct AgentCost {
    cpu_ms_per_interval: f64,
    /// CPU of the agent's main thread (output and export; collection runs
    /// on its own thread), from its schedstat (ns resolution).
    main_thread_ms_per_interval: f64,
    rss_mib: f64,
    entries: u64,
    intervals: usize,
}

fn agent_cost(processes: usize, seconds: u64, extra: &[&str]) -> Result<AgentCost> {
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
    let started = Instant::now();
    let seen = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let counter = seen.clone();
    let reader = std::thread::spawn(move || {
        use std::io::BufRead;
        let mut lines = Vec::new();
        for l in std::io::BufReader::new(stdout).lines().map_while(Result::ok) {
            lines.push(l);
            counter.store(lines.len(), std::sync::atomic::Ordering::SeqCst);
        }
        lines
    });
    // Steady state: CPU from the first report (start-up, which parses the
    // kernel's BTF, is not an interval's cost) to the last full one.
    let ticks = || -> Option<u64> {
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
        let fields: Vec<&str> = stat.rsplit(')').next()?.split_whitespace().collect();
        // utime and stime: fields 14 and 15 of stat, 12th and 13th after the comm.
        Some(fields.get(11)?.parse::<u64>().ok()? + fields.get(12)?.parse::<u64>().ok()?)
    };
    let main_ns = || -> Option<u64> {
        std::fs::read_to_string(format!("/proc/{pid}/task/{pid}/schedstat"))
            .ok()?
            .split_whitespace()
            .next()?
            .parse()
            .ok()
    };
    let mut first: Option<(usize, u64, u64)> = None;
    let mut last: Option<(usize, u64, u64)> = None;
    let mut hwm_kib = 0u64;
    while started.elapsed() < Duration::from_secs(seconds + 5) {
        let n = seen.load(std::sync::atomic::Ordering::SeqCst);
        if let (Some(t), Some(m)) = (ticks(), main_ns()) {
            if n >= 1 && first.is_none() {
                first = Some((n, t, m));
            }
            if n >= 1 {
                last = Some((n, t, m));
            }
        }
        if let Ok(status) = std::fs::read_to_string(format!("/proc/{pid}/status")) {
            if let Some(v) = status.lines().find_map(|l| l.strip_prefix("VmHWM:")) {
                hwm_kib = v.trim().trim_end_matches("kB").trim().parse().unwrap_or(hwm_kib);
            }
        }
        if agent.try_wait()?.is_some() {
            break;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let _ = agent.wait();
    let lines = reader.join().map_err(|_| anyhow::anyhow!("reader thread"))?;
    for mut b in busy {
        let _ = b.kill();
        let _ = b.wait();
    }
    let entries = lines.last().and_then(|l| serde_json_entries(l)).unwrap_or(0);
    let (Some((n0, t0, m0)), Some((n1, t1, m1))) = (first, last) else {
        bail!("the agent printed no reports");
    };
    let intervals = n1.saturating_sub(n0);
    if intervals == 0 {
        bail!("too few intervals to measure");
    }
    let cpu_ticks = t1 - t0;
    // Clock ticks are 100 Hz on Linux.
    let cpu_ms = cpu_ticks as f64 * 10.0;
    Ok(AgentCost {
        cpu_ms_per_interval: cpu_ms / intervals as f64,
        main_thread_ms_per_interval: (m1 - m0) as f64 / 1e6 / intervals as f64,
        rss_mib: hwm_kib as f64 / 1024.0,
        entries,
        intervals,
    })
}

/// The syscall probe's status object in a JSON report line.
fn syscall_status(line: &str) -> Option<serde_json::Value> {
    let v: serde_json::Value = serde_json::from_str(line).ok()?;
    v["probes"].as_array()?.iter().find(|p| p["name"] == "syscall").cloned()
}

/// SYSCALL_STATS entries from a JSON report line.
fn serde_json_entries(line: &str) -> Option<u64> {
    let s = syscall_status(line)?;
    s["maps"].as_array()?.iter().find(|m| m["name"] == "SYSCALL_STATS")?["entries"].as_u64()
}

/// Kernel CPU per run of each of hostprobe's programs, from the kernel's own
/// BPF statistics, while the getppid loop runs.
fn kernel_cost(calls: u64) -> Result<Vec<(String, u64, f64)>> {
    with_bpf_stats(|| {
        let mut agent = Command::new(root().join("target/release/hostprobe"))
            .args(["run", "--output", "json", "--interval", "1s"])
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()?;
        let stdout = agent.stdout.take().context("agent stdout")?;
        let mut lines = std::io::BufRead::lines(std::io::BufReader::new(stdout));
        let _first = lines.next().context("no first report")??;
        let base = syscall_status(&_first).context("no syscall probe status")?;
        time_getppid(calls)?;
        let _ = lines.next();
        let last = lines.next().context("no later report")??;
        stop(Some(agent));
        let now = syscall_status(&last).context("no syscall probe status")?;
        let runs = |s: &serde_json::Value, name: &str, field: &str| -> u64 {
            s["programs"]
                .as_array()
                .and_then(|ps| ps.iter().find(|p| p["name"] == name))
                .and_then(|p| p[field].as_u64())
                .unwrap_or(0)
        };
        let mut out = Vec::new();
        for p in now["programs"].as_array().into_iter().flatten() {
            let name = p["name"].as_str().unwrap_or("").to_string();
            let n = runs(&now, &name, "runs") - runs(&base, &name, "runs");
            let t = runs(&now, &name, "run_time_ns") - runs(&base, &name, "run_time_ns");
            out.push((name, n, if n == 0 { 0.0 } else { t as f64 / n as f64 }));
        }
        Ok(out)
    })
}

fn machine() -> String {
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|c| {
            c.lines()
                .find_map(|l| l.strip_prefix("model name"))
                .map(|m| m.trim_start_matches([' ', '\t', ':']).to_string())
        })
        .unwrap_or_default();
    let cores = std::thread::available_parallelism().map(|n| n.get()).unwrap_or(0);
    let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
    format!("{cpu}, {cores} cores, Linux {}", kernel.trim())
}

fn date() -> String {
    Command::new("date")
        .arg("-u")
        .arg("+%Y-%m-%d %H:%M UTC")
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
        .unwrap_or_default()
}

/// A loop device over a sparse file: reads of holes never reach a disk, so
/// each I/O is short (~20 us here) and per-I/O overhead shows most.
struct BenchLoop {
    path: String,
    backing: std::path::PathBuf,
}

impl BenchLoop {
    fn new() -> Result<Self> {
        let backing = std::path::PathBuf::from("/var/tmp/hostprobe-bench.img");
        std::fs::File::create(&backing)?.set_len(1 << 30)?;
        let out = Command::new("losetup").args(["--find", "--show"]).arg(&backing).output()?;
        if !out.status.success() {
            bail!("losetup: {}", String::from_utf8_lossy(&out.stderr));
        }
        Ok(Self { path: String::from_utf8_lossy(&out.stdout).trim().to_string(), backing })
    }
}

impl Drop for BenchLoop {
    fn drop(&mut self) {
        let _ = Command::new("losetup").arg("--detach").arg(&self.path).status();
        let _ = std::fs::remove_file(&self.backing);
    }
}

/// (IOPS, I/Os completed) of a 3 s fio random 4 KiB direct read run.
fn fio_iops(dev: &str) -> Result<(f64, u64)> {
    let out = Command::new("fio")
        .args([
            "--name=bench",
            "--rw=randread",
            "--bs=4k",
            "--direct=1",
            "--ioengine=psync",
            "--time_based",
            "--runtime=3",
        ])
        .arg(format!("--filename={dev}"))
        .arg("--output-format=json")
        .output()
        .context("running fio")?;
    if !out.status.success() {
        bail!("fio failed: {}", String::from_utf8_lossy(&out.stderr));
    }
    let text = String::from_utf8_lossy(&out.stdout);
    let v: serde_json::Value = serde_json::from_str(&text[text.find('{').context("fio JSON")?..])?;
    let read = &v["jobs"][0]["read"];
    Ok((read["iops"].as_f64().unwrap_or(0.0), read["total_ios"].as_u64().unwrap_or(0)))
}

/// Run time and run count summed over every BPF program a process holds,
/// from /proc/<pid>/fdinfo (counted while kernel.bpf_stats_enabled is 1).
fn prog_stats(pid: u32) -> (u64, u64) {
    let mut total = (0, 0);
    let Ok(dir) = std::fs::read_dir(format!("/proc/{pid}/fdinfo")) else {
        return total;
    };
    for e in dir.flatten() {
        let Ok(info) = std::fs::read_to_string(e.path()) else { continue };
        if !info.contains("prog_type:") {
            continue;
        }
        let field = |name: &str| {
            info.lines().find_map(|l| l.strip_prefix(name)).and_then(|v| v.trim().parse::<u64>().ok()).unwrap_or(0)
        };
        total.0 += field("run_time_ns:");
        total.1 += field("run_cnt:");
    }
    total
}

struct DiskBench {
    /// (tracer, median IOPS, median per-round ratio to the baseline, samples)
    rows: Vec<(Tracer, f64, f64, Vec<f64>)>,
    per_io: Vec<(Tracer, f64)>,
    rounds: usize,
}

fn disk_bench(rounds: usize) -> Result<DiskBench> {
    if !Path::new("/usr/bin/fio").exists() {
        bail!("fio is missing: `cargo xtask setup --bench` installs it");
    }
    let dev = BenchLoop::new()?;
    let tracers: Vec<Tracer> =
        [Tracer::Nothing, Tracer::HostprobeDisk, Tracer::Biolatency].into_iter().filter(|t| t.available()).collect();
    let samples = rotate("disk overhead", rounds, &tracers, |t| {
        let child = t.start()?;
        let r = fio_iops(&dev.path);
        stop(child);
        Ok(r?.0)
    })?;
    step("disk: kernel CPU per I/O (kernel.bpf_stats_enabled)");
    let per_io = with_bpf_stats(|| {
        let mut per_io = Vec::new();
        for t in tracers.iter().copied().filter(|t| *t != Tracer::Nothing) {
            let child = t.start()?;
            let pid = child.as_ref().map(|c| c.id()).unwrap_or(0);
            let (start_ns, _) = prog_stats(pid);
            let ios = fio_iops(&dev.path).map(|r| r.1);
            let (end_ns, _) = prog_stats(pid);
            stop(child);
            per_io.push((t, (end_ns - start_ns) as f64 / ios?.max(1) as f64));
        }
        Ok(per_io)
    })?;
    Ok(DiskBench { rows: paired(&tracers, samples), per_io, rounds })
}

impl DiskBench {
    fn write(&self, md: &mut String) -> Result<()> {
        writeln!(md, "\n## Disk probe: I/O rate and CPU per I/O\n")?;
        writeln!(
            md,
            "fio random 4 KiB reads, `--direct=1 --ioengine=psync`, 3 s per sample, on a loop \
             device over a sparse 1 GiB file (holes never reach a disk: ~20 us per read, so per-I/O \
             overhead shows most). {} rounds, order rotated, medians.\n",
            self.rounds
        )?;
        writeln!(md, "| attached | IOPS (median) | vs nothing (median of per-round ratios) | samples |")?;
        writeln!(md, "|---|---|---|---|")?;
        for (t, m, ratio, s) in &self.rows {
            let raw: Vec<String> = s.iter().map(|v| format!("{v:.0}")).collect();
            writeln!(md, "| {} | {m:.0} | {:+.1}% | {} |", t.name(), (ratio - 1.0) * 100.0, raw.join(", "))?;
        }
        if let Some((_, _, _, base)) = self.rows.first() {
            let lo = base.iter().copied().fold(f64::INFINITY, f64::min);
            let hi = base.iter().copied().fold(0.0, f64::max);
            writeln!(
                md,
                "\nThe baseline alone spread from {lo:.0} to {hi:.0} IOPS in this run: differences \
                 smaller than that spread are noise, not cost. The CPU per I/O below does not \
                 depend on the host's load and is the figure to compare."
            )?;
        }
        writeln!(
            md,
            "\nKernel CPU per I/O: the tracer's BPF programs' run time (kernel.bpf_stats_enabled, from the \
            tracer's /proc/<pid>/fdinfo) over one more fio run, divided by fio's I/O count.\n"
        )?;
        writeln!(md, "| tracer | ns of BPF program time per I/O |")?;
        writeln!(md, "|---|---|")?;
        for (t, ns) in &self.per_io {
            writeln!(md, "| {} | {ns:.0} |", t.name())?;
        }
        let ours = self.per_io.iter().find(|p| p.0 == Tracer::HostprobeDisk).map(|p| p.1);
        let theirs = self.per_io.iter().find(|p| p.0 == Tracer::Biolatency).map(|p| p.1);
        if let (Some(o), Some(t)) = (ours, theirs) {
            writeln!(md, "\n- hostprobe's disk probe costs {:.2}x biolatency's CPU per I/O.", o / t)?;
            goal(md, "1.5x biolatency's CPU per I/O", &format!("{:.2}x", o / t), o / t <= 1.5)?;
            if o / t > 1.5 {
                writeln!(
                    md,
                    "\nWhy more than biolatency's issue/complete pair: the probe counts each request where it is \
                     made (in the submitter's context, so split pieces and merged bios are charged exactly), reads \
                     the request's device, operation and length at BTF offsets, keeps each thread's last bio so \
                     queue time includes waits for a request slot, and fills three histograms."
                )?;
            }
        }
        Ok(())
    }
}

/// Round trips per second of the pipe ping-pong, both processes on CPU 1,
/// with `tracer` attached (started once the workload exists, so that
/// `hostprobe offcpu --pid` can name it).
fn pingpong(tracer: Tracer) -> Result<f64> {
    use std::io::{Read as _, Write as _};
    let mut w = Command::new("taskset")
        .args(["-c", "1"])
        .arg(root().join("target/release/workload"))
        .args(["pingpong", "3000"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()?;
    let tracer = match tracer {
        Tracer::HostprobeStacks(_) => Tracer::HostprobeStacks(w.id()),
        t => t,
    };
    let child = tracer.start()?;
    w.stdin.take().context("stdin")?.write_all(b"go\n")?;
    let mut out = String::new();
    w.stdout.take().context("stdout")?.read_to_string(&mut out)?;
    let _ = w.wait();
    stop(child);
    out.trim().parse().context("parsing round trips per second")
}

struct SwitchBench {
    rows: Vec<(Tracer, f64, f64, Vec<f64>)>,
    rounds: usize,
}

fn switch_bench(rounds: usize) -> Result<SwitchBench> {
    let tracers: Vec<Tracer> =
        [Tracer::Nothing, Tracer::HostprobeOffcpu, Tracer::Runqlat, Tracer::HostprobeStacks(0), Tracer::Offcputime]
            .into_iter()
            .filter(|t| t.available())
            .collect();
    let samples = rotate("context switches", rounds, &tracers, pingpong)?;
    Ok(SwitchBench { rows: paired(&tracers, samples), rounds })
}

impl SwitchBench {
    fn write(&self, md: &mut String) -> Result<()> {
        writeln!(md, "\n## Off-CPU probe: context switches\n")?;
        writeln!(
            md,
            "Two processes bounce a byte over a pair of pipes for 3 s, both pinned to CPU 1, so \
             every round trip is two context switches (and two wake-ups). {} rounds, order \
             rotated; the ratio column is the median of per-round ratios to the baseline.\n",
            self.rounds
        )?;
        writeln!(md, "| attached | round trips/s (median) | vs nothing | samples |")?;
        writeln!(md, "|---|---|---|---|")?;
        for (t, m, ratio, s) in &self.rows {
            let raw: Vec<String> = s.iter().map(|v| format!("{v:.0}")).collect();
            writeln!(md, "| {} | {m:.0} | {:+.1}% | {} |", t.name(), (ratio - 1.0) * 100.0, raw.join(", "))?;
        }
        Ok(())
    }
}

/// Round trips per second of the one-byte loopback request/response, both
/// ends on CPU 1.
fn tcp_rr() -> Result<f64> {
    let out = Command::new("taskset")
        .args(["-c", "1"])
        .arg(root().join("target/release/workload"))
        .args(["tcp-rr", "3000"])
        .output()
        .context("running the request/response loop")?;
    if !out.status.success() {
        bail!("request/response loop failed: {}", String::from_utf8_lossy(&out.stderr));
    }
    String::from_utf8_lossy(&out.stdout).trim().parse().context("parsing round trips per second")
}

/// Gbit/s of a 3 s `iperf3` transfer over loopback to the server on `port`.
fn iperf3(port: u16) -> Result<f64> {
    let out = Command::new("iperf3")
        .args(["-c", "127.0.0.1", "-p", &port.to_string(), "-t", "3", "-J"])
        .output()
        .context("running iperf3 (cargo xtask setup --bench installs it)")?;
    let json: serde_json::Value = serde_json::from_slice(&out.stdout).context("parsing iperf3 -J output")?;
    if let Some(e) = json["error"].as_str() {
        bail!("iperf3: {e}");
    }
    json["end"]["sum_received"]["bits_per_second"].as_f64().map(|b| b / 1e9).context("no throughput in iperf3 output")
}

struct TcpBench {
    rr: Vec<(Tracer, f64, f64, Vec<f64>)>,
    bulk: Vec<(Tracer, f64, f64, Vec<f64>)>,
    rounds: usize,
}

fn tcp_bench(rounds: usize) -> Result<TcpBench> {
    const PORT: u16 = 5299;
    let tracers = [Tracer::Nothing, Tracer::HostprobeTcp];
    let rr = rotate("TCP request/response", rounds, &tracers, |t| {
        let child = t.start()?;
        let r = tcp_rr();
        stop(child);
        r
    })?;
    let mut server = Command::new("iperf3")
        .args(["-s", "-p", &PORT.to_string()])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .context("starting iperf3 -s (cargo xtask setup --bench installs it)")?;
    std::thread::sleep(Duration::from_millis(500));
    let bulk = rotate("TCP bulk (iperf3)", rounds, &tracers, |t| {
        let child = t.start()?;
        let r = iperf3(PORT);
        stop(child);
        r
    });
    let _ = server.kill();
    let _ = server.wait();
    Ok(TcpBench { rr: paired(&tracers, rr), bulk: paired(&tracers, bulk?), rounds })
}

impl TcpBench {
    fn write(&self, md: &mut String) -> Result<()> {
        writeln!(md, "\n## TCP probe: request/response and bulk throughput\n")?;
        writeln!(
            md,
            "Request/response: a client and an echo server (two threads of one process, both \
             pinned to CPU 1) bounce one byte over loopback TCP with TCP_NODELAY for 3 s; every \
             round trip is two sends, two receives and two segments in. Bulk: `iperf3 -c \
             127.0.0.1 -t 3` against `iperf3 -s`. {} rounds, order rotated; the ratio column is \
             the median of per-round ratios to the baseline (for request/response, latency per \
             request is the inverse of the rate).\n",
            self.rounds
        )?;
        writeln!(md, "| attached | round trips/s (median) | vs nothing | samples |")?;
        writeln!(md, "|---|---|---|---|")?;
        for (t, m, ratio, s) in &self.rr {
            let raw: Vec<String> = s.iter().map(|v| format!("{v:.0}")).collect();
            writeln!(md, "| {} | {m:.0} | {:+.1}% | {} |", t.name(), (ratio - 1.0) * 100.0, raw.join(", "))?;
        }
        writeln!(md, "\n| attached | iperf3 Gbit/s (median) | vs nothing | samples |")?;
        writeln!(md, "|---|---|---|---|")?;
        for (t, m, ratio, s) in &self.bulk {
            let raw: Vec<String> = s.iter().map(|v| format!("{v:.2}")).collect();
            writeln!(md, "| {} | {m:.2} | {:+.1}% | {} |", t.name(), (ratio - 1.0) * 100.0, raw.join(", "))?;
        }
        for (what, rows) in [("request/response", &self.rr), ("bulk", &self.bulk)] {
            if let Some((_, _, ratio, _)) = rows.iter().find(|r| r.0 == Tracer::HostprobeTcp) {
                let cost = (1.0 - ratio) * 100.0;
                goal(md, &format!("under 3% of {what}"), &format!("{cost:.1}%"), cost < 3.0)?;
            }
        }
        Ok(())
    }
}

/// A `hostprobe collector` on a free loopback port, killed on drop.
struct CollectorProcess {
    child: Child,
    url: String,
}

impl CollectorProcess {
    fn start() -> Result<Self> {
        let port = std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?.port();
        let child = Command::new(root().join("target/release/hostprobe"))
            .args(["collector", "--plaintext", "--listen", &format!("127.0.0.1:{port}")])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .context("starting the collector")?;
        let end = Instant::now() + Duration::from_secs(10);
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            if Instant::now() > end {
                bail!("the collector did not start listening");
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        Ok(Self { child, url: format!("http://127.0.0.1:{port}") })
    }

    /// (user + system CPU seconds, peak RSS MiB) so far.
    fn usage(&self) -> (f64, f64) {
        let pid = self.child.id();
        let cpu = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok().and_then(|s| {
            let f: Vec<&str> = s.rsplit(')').next()?.split_whitespace().collect();
            Some((f.get(11)?.parse::<u64>().ok()? + f.get(12)?.parse::<u64>().ok()?) as f64 / 100.0)
        });
        let hwm = std::fs::read_to_string(format!("/proc/{pid}/status")).ok().and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("VmHWM:"))
                .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<f64>().ok())
        });
        (cpu.unwrap_or(0.0), hwm.unwrap_or(0.0) / 1024.0)
    }
}

impl Drop for CollectorProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

struct CollectorBench {
    agents: u32,
    processes: u32,
    seconds: u64,
    load: serde_json::Value,
    cpu_cores: f64,
    rss_mib: f64,
    /// Main-thread ms per interval without and with --collector, per round.
    export: Vec<(f64, f64)>,
}

fn collector_bench(rounds: usize) -> Result<CollectorBench> {
    let (agents, processes, seconds) = (1_000u32, 50u32, 20u64);
    step(&format!("collector ingest: {agents} synthetic agents x {processes} processes, 1 report/s each, {seconds} s"));
    let collector = CollectorProcess::start()?;
    let (cpu0, _) = collector.usage();
    let started = Instant::now();
    let out = Command::new(root().join("target/release/loadgen"))
        .args([&collector.url, &agents.to_string(), &processes.to_string(), &seconds.to_string()])
        .output()
        .context("running the load generator")?;
    if !out.status.success() {
        bail!("load generator failed: {}", String::from_utf8_lossy(&out.stderr));
    }
    let wall = started.elapsed().as_secs_f64();
    let (cpu1, rss_mib) = collector.usage();
    let load: serde_json::Value = serde_json::from_slice(&out.stdout).context("load generator output")?;
    drop(collector);

    // Agent side: the main thread (output and export) with and without a
    // collector to stream to, alternating.
    let collector = CollectorProcess::start()?;
    let mut export = Vec::new();
    for round in 0..rounds.min(3) {
        step(&format!("agent export cost: round {}/{}", round + 1, rounds.min(3)));
        let without = agent_cost(100, 10, &[])?.main_thread_ms_per_interval;
        let with = agent_cost(100, 10, &["--collector", &collector.url, "--plaintext"])?.main_thread_ms_per_interval;
        export.push((without, with));
    }
    Ok(CollectorBench { agents, processes, seconds, load, cpu_cores: (cpu1 - cpu0) / wall, rss_mib, export })
}

impl CollectorBench {
    fn write(&self, md: &mut String) -> Result<()> {
        writeln!(md, "\n## Collector ingest and agent export\n")?;
        writeln!(
            md,
            "`loadgen` (tests/src/bin/loadgen.rs) opens {} gRPC streams to a `hostprobe collector \
             --plaintext` on loopback, one per synthetic agent, and sends one report per agent per \
             second for {} s, spread over each second, gzip-compressed as the agent sends them; each \
             report has {} processes (12 syscall histograms, a disk item, off-CPU figures, two TCP \
             connections each). The load generator runs on the same 2 cores. Collector CPU is \
             user + system time from `/proc/<pid>/stat` over the run's wall time, memory its `VmHWM`.\n",
            self.agents, self.seconds, self.processes
        )?;
        let sent = self.load["sent"].as_u64().unwrap_or(0);
        let acked = self.load["acked"].as_u64().unwrap_or(0);
        let elapsed = self.load["elapsed_s"].as_f64().unwrap_or(0.0);
        writeln!(md, "| measure | value |")?;
        writeln!(md, "|---|---|")?;
        writeln!(md, "| reports sent / acknowledged | {sent} / {acked} |")?;
        writeln!(
            md,
            "| report size (protobuf, before gzip) | {} KiB |",
            self.load["report_bytes"].as_u64().unwrap_or(0) / 1024
        )?;
        writeln!(md, "| ingest rate | {:.0} reports/s |", acked as f64 / elapsed.max(1e-9))?;
        writeln!(md, "| collector CPU | {:.2} cores of 2 |", self.cpu_cores)?;
        writeln!(
            md,
            "| collector peak RSS | {:.0} MiB (reports kept encoded; `--max-memory` 1 GiB by default) |",
            self.rss_mib
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
        let mut d: Vec<f64> = self.export.iter().map(|(a, b)| b - a).collect();
        let export = median(&mut d);
        writeln!(md, "\nMedian export cost: {export:.3} ms of CPU per interval.")?;
        goal(
            md,
            "every report of 1,000 agents at 1 s acknowledged, with CPU to spare on 2 cores",
            &format!("{acked} of {sent}, {:.2} cores", self.cpu_cores),
            acked == sent && sent > 0 && self.cpu_cores < 1.5,
        )?;
        goal(md, "agent export under 1 ms of CPU per interval (median)", &format!("{export:.3} ms"), export < 1.0)?;
        Ok(())
    }
}

/// A goal line beside the figure measured in the same run.
fn goal(md: &mut String, goal: &str, measured: &str, met: bool) -> Result<()> {
    let verdict = if met { "met" } else { "**not met**" };
    writeln!(md, "- Goal: {goal}. Measured {measured}: {verdict}.")?;
    Ok(())
}

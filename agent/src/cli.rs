//! Command line: flags, their validation, and turning them into probe
//! options. Bad input is a one-line error and exit code 2.

use std::{path::Path, time::Duration};

use clap::{Args, CommandFactory as _, FromArgMatches as _, Parser, Subcommand, ValueEnum};

use crate::probes::{CgroupFilter, Options};

#[derive(Debug, Parser)]
#[command(
    name = "hostprobe",
    version,
    about = "Per-process syscall latency, disk I/O, off-CPU time and TCP, measured in the kernel with eBPF",
    long_about = "hostprobe measures, per process and without touching applications: syscall counts, \
errors and latency; disk I/O with queue and service time; where threads wait off the CPU (run queue, \
disk, locks, timers); and TCP connections (bytes, RTT, connect latency, retransmits). It aggregates in \
the kernel, shows a live view or JSON, streams to a `hostprobe collector`, and serves Prometheus and \
OTLP metrics.\n\n\
Start with `hostprobe check` to see what this host supports, then `hostprobe run`.",
    after_help = "Examples:\n  hostprobe run                          live view of the busiest processes\n  \
hostprobe run --pid 1234 --interval 5s  one process, every 5 s\n  \
hostprobe run --output json --duration 1m > out.jsonl\n  \
hostprobe run --prometheus-listen 127.0.0.1:9464 --collector https://c:7700 --ca-file ca.pem\n  \
hostprobe offcpu --pid 1234 --svg wait.svg  where one process waits, as a flame graph\n  \
hostprobe check                        what works on this host, and how to fix what does not\n\n\
Every flag can also come from the environment: --spool-dir from HOSTPROBE_SPOOL_DIR, --plaintext from \
HOSTPROBE_PLAINTEXT=true, and so on (shown as [env: ...] in each command's --help); the command line wins."
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
    /// More log output on stderr (-v: debug, -vv: trace). RUST_LOG also works.
    #[arg(short, long, global = true, action = clap::ArgAction::Count)]
    pub verbose: u8,
}

/// The command line, with every long flag also read from `HOSTPROBE_<FLAG>`
/// (`--spool-dir` from `HOSTPROBE_SPOOL_DIR`) in every subcommand; a flag
/// given on the command line wins. Flags that name their own variable
/// (none yet) keep it.
pub fn command() -> clap::Command {
    fn with_env(cmd: clap::Command) -> clap::Command {
        cmd.mut_args(|a| match a.get_long() {
            Some(long) if a.get_env().is_none() && long != "verbose" => {
                let var = format!("HOSTPROBE_{}", long.to_uppercase().replace('-', "_"));
                a.env(var)
            }
            _ => a,
        })
        .mut_subcommands(with_env)
    }
    with_env(Cli::command())
}

/// Parses `args` (the program name first) with [`command`].
pub fn parse_from<I, T>(args: I) -> Result<Cli, clap::Error>
where
    I: IntoIterator<Item = T>,
    T: Into<std::ffi::OsString> + Clone,
{
    let mut cmd = command();
    Cli::from_arg_matches_mut(&mut cmd.try_get_matches_from_mut(args)?).map_err(|e| e.format(&mut cmd))
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Attach the probes and report per-process figures every interval.
    ///
    /// On a terminal this is a live view refreshed every interval; piped, it
    /// prints plain text tables; with `--output json`, one JSON object per
    /// interval per line. Stops on Ctrl-C/SIGTERM (after printing the last
    /// interval) or after --duration.
    Run(RunArgs),
    /// Check that this host can run the probes: kernel, BTF, tracefs,
    /// privileges, and each probe actually loaded and attached.
    ///
    /// Exits 1 when no probe can run (or a --tracepoint cannot be attached).
    Check(CheckArgs),
    /// Record where one process's threads wait off the CPU, with their
    /// kernel and user stacks: folded stacks and a flame graph SVG.
    ///
    /// Example: hostprobe offcpu --pid 1234 --duration 10s --svg out.svg
    Offcpu(OffcpuArgs),
    /// Name each process's bottleneck: watch for a while, then say where
    /// its threads' time went, one verdict (cpu-bound, cpu-starved, disk,
    /// network, lock, syscall-heavy, idle) and the figures that decided it.
    ///
    /// Without --pid, lists the --top processes that lose the most time,
    /// worst first (idle ones last). The rules and their thresholds are in
    /// the README (section "What is each process waiting for?").
    #[command(after_help = "Examples:\n  \
hostprobe diagnose                                the whole host for 10 s: the 10 worst processes\n  \
hostprobe diagnose --pid 1234 --duration 30s      one process, with the figures that decided\n  \
hostprobe diagnose --comm postgres --output json  every thread named postgres, as JSON\n  \
hostprobe query --collector URL --diagnose        the same rules over a collector's fleet")]
    Diagnose(DiagnoseArgs),
    /// Receive reports from agents (`hostprobe run --collector`), keep a
    /// window of them, and answer fleet queries.
    ///
    /// Example: hostprobe collector --listen 0.0.0.0:7700 --tls-cert c.pem --tls-key k.pem --token-file t
    Collector(crate::collector::CollectorArgs),
    /// Ask a collector about the fleet: the top processes across all hosts
    /// by syscall time, disk p99, off-CPU time, or TCP RTT to an endpoint.
    ///
    /// Example: hostprobe query --collector https://c:7700 --ca-file ca.pem --by disk
    Query(crate::collector::QueryArgs),
}

#[derive(Debug, Args)]
pub struct OffcpuArgs {
    /// The process to record.
    #[arg(long, value_parser = clap::value_parser!(u32).range(1..))]
    pub pid: u32,
    /// How long to record.
    #[arg(long, default_value = "10s", value_parser = parse_duration, value_name = "DURATION")]
    pub duration: Duration,
    /// Only episodes off the CPU at least this long (keeps the cost down).
    #[arg(long, default_value = "1ms", value_parser = parse_duration, value_name = "DURATION")]
    pub min: Duration,
    /// Write an interactive flame graph here.
    #[arg(long, value_name = "FILE")]
    pub svg: Option<std::path::PathBuf>,
    /// Write folded stacks here (`frame;frame;... microseconds`), the
    /// format flamegraph.pl and inferno read. Default without --svg: stdout.
    #[arg(long, value_name = "FILE")]
    pub folded: Option<std::path::PathBuf>,
}

#[derive(Debug, Args)]
pub struct DiagnoseArgs {
    /// How long to watch.
    #[arg(long, default_value = "10s", value_parser = parse_duration, value_name = "DURATION")]
    pub duration: Duration,
    /// Processes listed when none is named with --pid, worst first (each --pid is always listed).
    #[arg(long, default_value_t = 10, value_parser = clap::value_parser!(u32).range(1..=100_000))]
    pub top: u32,
    /// text (for people) or json (one object: duration_ns, processes[]).
    #[arg(long, short, value_enum, default_value_t = DiagnoseOutput::Text)]
    pub output: DiagnoseOutput,
    #[command(flatten)]
    pub filters: FilterArgs,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum DiagnoseOutput {
    Text,
    Json,
}

#[derive(Debug, Args)]
pub struct RunArgs {
    /// Reporting interval, e.g. 500ms, 1s, 1m (at least 10ms).
    #[arg(long, default_value = "1s", value_parser = parse_interval, value_name = "DURATION")]
    pub interval: Duration,
    /// Stop after this long (the last interval may be shorter). Default: run until stopped.
    #[arg(long, value_parser = parse_duration, value_name = "DURATION")]
    pub duration: Option<Duration>,
    /// Show this many processes (by time spent in syscalls); the rest are merged into "other".
    #[arg(long, default_value_t = 20, value_parser = clap::value_parser!(u32).range(1..=100_000))]
    pub top: u32,
    /// Output format. auto: live view on a terminal, text otherwise; none:
    /// nothing on stdout (for a service: logs only, on stderr).
    #[arg(long, short, value_enum, default_value_t = OutputFormat::Auto)]
    pub output: OutputFormat,
    /// Include each process's command line (off by default: command lines can hold secrets).
    #[arg(long)]
    pub cmdline: bool,
    /// Where the kubelet links container logs, named
    /// `<pod>_<namespace>_<container>-<container id>.log`: the source of
    /// pod, namespace and container names (no API access needed; mount it
    /// read-only in a DaemonSet). Missing: no Kubernetes names.
    #[arg(long, default_value = "/var/log/containers", value_name = "DIR")]
    pub pod_log_dir: std::path::PathBuf,
    /// Size of the syscall probe's kernel map, in (process, syscall, latency
    /// range) entries of 224 bytes (default: 32 per process running at start,
    /// 65536 to 524288); new entries past it are counted as lost, not recorded.
    #[arg(long, value_parser = clap::value_parser!(u32).range(64..=4_194_304), value_name = "N")]
    pub max_entries: Option<u32>,
    /// Probes to run (comma-separated): syscall, disk, offcpu, tcp. Default: all.
    #[arg(long, value_delimiter = ',', value_parser = parse_probe, value_name = "NAME")]
    pub probes: Vec<&'static str>,
    /// The host name on reports and metrics (default: $NODE_NAME when set,
    /// as Kubernetes' downward API gives it; else the kernel's host name).
    #[arg(long, value_name = "NAME")]
    pub hostname: Option<String>,
    #[command(flatten)]
    pub filters: FilterArgs,
    #[command(flatten)]
    pub export: crate::export::ExportArgs,
    /// Serve Prometheus metrics on this address, e.g. 127.0.0.1:9464 (off by default).
    #[arg(long, value_name = "ADDR", help_heading = "Metrics")]
    pub prometheus_listen: Option<std::net::SocketAddr>,
    /// Serve /healthz (alive) and /readyz (probes attached and, with
    /// --collector, connected to one) here, e.g. 0.0.0.0:9465. They are
    /// also on --prometheus-listen.
    #[arg(long, value_name = "ADDR", help_heading = "Metrics")]
    pub health_listen: Option<std::net::SocketAddr>,
    /// Process names exported as series of their own; the rest are summed
    /// as `other` (pids are never labels: they churn).
    #[arg(long, default_value_t = 20, value_parser = clap::value_parser!(u32).range(1..=10_000), value_name = "N", help_heading = "Metrics")]
    pub metrics_max_processes: u32,
    #[command(flatten)]
    pub otlp: crate::otlp::OtlpArgs,
}

fn parse_probe(s: &str) -> Result<&'static str, String> {
    crate::probes::ALL.iter().find(|p| p.name == s).map(|p| p.name).ok_or_else(|| {
        let names: Vec<&str> = crate::probes::ALL.iter().map(|p| p.name).collect();
        format!("no probe named {s:?}; the probes are {}", names.join(", "))
    })
}

/// Filters, applied in the kernel (filtered-out tasks cost one check per syscall).
#[derive(Debug, Args, Default)]
pub struct FilterArgs {
    /// Only these processes (repeat, or separate with commas). Threads count toward their process.
    #[arg(long = "pid", value_name = "PID", value_delimiter = ',',
          value_parser = clap::value_parser!(u32).range(1..))]
    pub pids: Vec<u32>,
    /// Only threads whose name (comm, at most 15 bytes) is exactly this, like bcc's --comm.
    #[arg(long, value_parser = parse_comm)]
    pub comm: Option<String>,
    /// Only tasks in this cgroup (v2) or below it: a path under the cgroup2 mount, or as shown in /proc/PID/cgroup.
    #[arg(long, value_name = "PATH")]
    pub cgroup: Option<String>,
}

#[derive(Debug, Args)]
pub struct CheckArgs {
    /// Also check that this raw tracepoint exists and accepts a BPF program (repeatable), e.g. sched_switch.
    #[arg(long, value_name = "NAME")]
    pub tracepoint: Vec<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum OutputFormat {
    Auto,
    Live,
    Text,
    Json,
    None,
}

pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let d = humantime::parse_duration(s).map_err(|e| format!("{e} (use e.g. 500ms, 1s, 2m)"))?;
    if d.is_zero() {
        return Err("must be more than zero".into());
    }
    Ok(d)
}

/// A query window: any duration, and `0s` for everything the collector keeps.
pub fn parse_window(s: &str) -> Result<Duration, String> {
    humantime::parse_duration(s).map_err(|e| format!("{e} (use e.g. 30s, 5m, or 0s for everything kept)"))
}

fn parse_interval(s: &str) -> Result<Duration, String> {
    let d = parse_duration(s)?;
    if d < Duration::from_millis(10) {
        return Err("must be at least 10ms".into());
    }
    Ok(d)
}

fn parse_comm(s: &str) -> Result<String, String> {
    if s.is_empty() || s.len() > 15 {
        return Err("must be 1 to 15 bytes (the kernel keeps 15 bytes of a thread name)".into());
    }
    Ok(s.to_string())
}

impl FilterArgs {
    /// The probe options these filters mean on this host.
    pub fn resolve(&self, max_entries: Option<u32>) -> Result<Options, String> {
        let comm = self.comm.as_ref().map(|c| {
            let mut v = [0u8; 16];
            v[..c.len()].copy_from_slice(c.as_bytes());
            v
        });
        let cgroup = self.cgroup.as_deref().map(resolve_cgroup).transpose()?;
        Ok(Options { pids: self.pids.clone(), comm, cgroup, max_entries, stacks_min_ns: None })
    }
}

/// Where the cgroup2 filesystem is mounted (`/sys/fs/cgroup` on unified
/// hosts, `/sys/fs/cgroup/unified` on hybrid ones).
pub fn cgroup2_mount() -> Option<String> {
    let mounts = std::fs::read_to_string("/proc/self/mountinfo").ok()?;
    mounts.lines().find_map(|l| {
        let (left, right) = l.split_once(" - ")?;
        (right.split(' ').next()? == "cgroup2").then(|| left.split(' ').nth(4).map(str::to_string))?
    })
}

fn resolve_cgroup(path: &str) -> Result<CgroupFilter, String> {
    use std::os::unix::fs::MetadataExt;
    let root = cgroup2_mount().ok_or("--cgroup: no cgroup2 filesystem is mounted on this host")?;
    let rel = path.strip_prefix(root.as_str()).unwrap_or(path).trim_matches('/');
    let full = Path::new(&root).join(rel);
    let meta =
        std::fs::metadata(&full).map_err(|e| format!("--cgroup {path}: {} is not a cgroup ({e})", full.display()))?;
    let level = rel.split('/').filter(|c| !c.is_empty()).count() as u32;
    Ok(CgroupFilter { path: full.display().to_string(), id: meta.ino(), level })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(args: &[&str]) -> Result<Cli, clap::Error> {
        parse_from(std::iter::once("hostprobe").chain(args.iter().copied()))
    }

    #[test]
    fn every_flag_has_its_variable() {
        let cmd = command();
        let run = cmd.find_subcommand("run").unwrap();
        for a in run.get_arguments().filter(|a| a.get_long().is_some_and(|l| l != "verbose")) {
            let want = format!("HOSTPROBE_{}", a.get_long().unwrap().to_uppercase().replace('-', "_"));
            assert_eq!(a.get_env(), Some(std::ffi::OsStr::new(&want)), "--{}", a.get_long().unwrap());
        }
    }

    #[test]
    fn defaults() {
        let Command::Run(r) = parse(&["run"]).unwrap().command else { panic!() };
        assert_eq!(r.interval, Duration::from_secs(1));
        assert_eq!(r.top, 20);
        assert_eq!(r.output, OutputFormat::Auto);
        assert!(r.duration.is_none() && !r.cmdline);
    }

    #[test]
    fn bad_values_are_refused() {
        for bad in [
            &["run", "--interval", "0"][..],
            &["run", "--interval", "5ms"],
            &["run", "--interval", "soon"],
            &["run", "--pid", "notanumber"],
            &["run", "--pid", "0"],
            &["run", "--top", "0"],
            &["run", "--comm", "a-name-longer-than-15"],
            &["run", "--output", "xml"],
            &["run", "--bogus"],
            &["run", "--probes", "syscall,nosuch"],
        ] {
            assert!(parse(bad).is_err(), "{bad:?} accepted");
        }
    }

    #[test]
    fn query_window_zero_means_everything() {
        let Command::Query(q) = parse(&["query", "--collector", "http://c:7700", "--window", "0s"]).unwrap().command
        else {
            panic!()
        };
        assert!(q.window.is_zero());
        let Command::Query(q) = parse(&["query", "--collector", "http://c:7700"]).unwrap().command else { panic!() };
        assert_eq!(q.window, Duration::from_secs(60));
        assert!(parse(&["query", "--window", "soon"]).is_err());
    }

    #[test]
    fn pids_repeat_or_split_on_commas() {
        let Command::Run(r) = parse(&["run", "--pid", "1,2", "--pid", "3"]).unwrap().command else { panic!() };
        assert_eq!(r.filters.pids, vec![1, 2, 3]);
    }

    #[test]
    fn comm_is_nul_padded() {
        let f = FilterArgs { comm: Some("bash".into()), ..Default::default() };
        let o = f.resolve(None).unwrap();
        assert_eq!(&o.comm.unwrap()[..5], b"bash\0");
    }

    #[test]
    fn cgroup_root_and_missing_paths() {
        if let Some(root) = cgroup2_mount() {
            let c = resolve_cgroup(&root).unwrap();
            assert_eq!(c.level, 0);
            let c = resolve_cgroup("/").unwrap();
            assert_eq!(c.level, 0);
            assert!(resolve_cgroup("/no/such/group").unwrap_err().contains("not a cgroup"));
        }
    }
}

#[cfg(test)]
mod diagnose_tests {
    use super::*;

    #[test]
    fn diagnose_defaults_and_bad_values() {
        let parse = |args: &[&str]| Cli::try_parse_from(std::iter::once("hostprobe").chain(args.iter().copied()));
        let Command::Diagnose(d) = parse(&["diagnose"]).unwrap().command else { panic!() };
        assert_eq!((d.duration, d.top, d.output), (Duration::from_secs(10), 10, DiagnoseOutput::Text));
        let Command::Diagnose(d) = parse(&["diagnose", "--pid", "1,2", "--duration", "3s"]).unwrap().command else {
            panic!()
        };
        assert_eq!((d.filters.pids, d.duration), (vec![1, 2], Duration::from_secs(3)));
        for bad in [
            &["diagnose", "--duration", "0"][..],
            &["diagnose", "--duration", "soon"],
            &["diagnose", "--top", "0"],
            &["diagnose", "--output", "xml"],
            &["diagnose", "--pid", "0"],
            &["diagnose", "--comm", "a-name-longer-than-15"],
        ] {
            assert!(parse(bad).is_err(), "{bad:?} accepted");
        }
    }
}

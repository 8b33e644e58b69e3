//! Command line: flags, their validation, and turning them into probe
//! options. Bad input is a one-line error and exit code 2.

use std::time::Duration;

use clap::{Args, CommandFactory as _, FromArgMatches as _, Parser, Subcommand, ValueEnum};

pub use crate::filters::{cgroup2_mount, FilterArgs};
use crate::units::{parse_duration, parse_interval};

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
Start with `hostprobe check` to see what this host supports, then `hostprobe top`.",
    after_help = "Examples:\n  hostprobe top                          interactive view: what is slow first\n  \
hostprobe run                          the same on a terminal; plain tables when piped\n  \
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
    /// On a terminal this is the interactive view (`hostprobe top`); piped,
    /// it prints plain text tables; with `--output json`, one JSON object per
    /// interval per line. Stops on Ctrl-C/SIGTERM (after printing the last
    /// interval) or after --duration.
    Run(RunArgs),
    /// An interactive view of what is slow: the processes that are busy or
    /// waiting (for a CPU, the disk, the network, a lock) first, idle ones
    /// last; sort by any column, filter by name, open a process.
    ///
    /// `run` with the interactive view, on a terminal (piped, use `run`);
    /// it takes the same flags (--top does not cut the view: it keeps every
    /// process).
    /// Keys: ? help, / filter, Enter open, Esc back, p pause, q quit; each
    /// column sorts with its key (a active, c cpu, r run queue, d disk,
    /// n network, l lock, s syscalls/s, e errors/s, t syscall p99, o I/O
    /// per second, i pid, m name, v verdict; again: reverse).
    #[command(after_help = "Examples:\n  \
hostprobe top                          every process, busiest first\n  \
hostprobe top --interval 2s            refresh every 2 s\n  \
hostprobe top --cgroup /system.slice   only a cgroup's processes")]
    Top(RunArgs),
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
    /// Record a baseline: the whole run's figures per process group (name
    /// and cgroup), with exact histograms, in one file for `compare`.
    ///
    /// With --collector, records a window the collector still holds for one
    /// host instead of running the probes here: now against an hour ago,
    /// without having recorded then.
    #[command(after_help = "Examples:\n  \
hostprobe record --duration 30s --out before.json                the whole host\n  \
hostprobe record --duration 30s --cgroup /system.slice/db.service --out after.json\n  \
hostprobe compare before.json after.json --fail-on 'p99 > +20%'\n\n\
From a collector (the query token; the window must be one it still holds, see --retention):\n  \
hostprobe record --collector URL --host web-3 --ago 1h --duration 10m --out then.json\n  \
hostprobe record --collector URL --host web-3 --duration 10m --out now.json\n  \
hostprobe compare then.json now.json")]
    Record(crate::baseline::record::RecordArgs),
    /// Say what changed between two recordings: per process group and
    /// resource, only changes larger than the histograms' resolution and
    /// the runs' noise allow, biggest first.
    ///
    /// Exit status: 0, or 1 when a change matches --fail-on, 2 when a file
    /// cannot be read. How it decides is in the README ("Baselines").
    #[command(after_help = "Examples:\n  \
hostprobe compare before.json after.json\n  \
hostprobe compare before.json after.json --output json\n  \
hostprobe compare before.json after.json --fail-on 'p99 > +20%, share > +10'   for CI\n  \
hostprobe compare before.json after.json --fail-on 'disk:p50 > +50%, network:rate > +100%'")]
    Compare(crate::baseline::compare::CompareArgs),
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
    /// Output format. auto: the interactive view (`hostprobe top`) on a
    /// terminal, text otherwise; live: the interactive view; none: nothing
    /// on stdout (for a service: logs only, on stderr).
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
    /// The agent's bound on the processes it holds per interval, to bound
    /// its own memory (a few KiB per process: see the README's "Agent
    /// memory"). Past it, further processes' figures are merged into
    /// "other" before ranking (host totals stay whole), counted in
    /// `processes_over_cap` and logged.
    #[arg(long, default_value_t = crate::probes::MAX_PROCESSES as u32, value_parser = clap::value_parser!(u32).range(1..=1_000_000), value_name = "N")]
    pub max_processes: u32,
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
    /// TLS and basic auth for the metrics and health endpoints: a YAML
    /// file in the Prometheus exporter-toolkit format
    /// (tls_server_config: cert_file, key_file, client_ca_file;
    /// basic_auth_users: user -> bcrypt hash). Basic auth guards /metrics.
    #[arg(long, value_name = "FILE", help_heading = "Metrics")]
    pub web_config_file: Option<std::path::PathBuf>,
    /// Serve /healthz (alive) and /readyz (probes attached and, with
    /// --collector, connected to one) here, e.g. 0.0.0.0:9465. They are
    /// also on --prometheus-listen.
    #[arg(long, value_name = "ADDR", help_heading = "Metrics")]
    pub health_listen: Option<std::net::SocketAddr>,
    /// Process names exported as series of their own; the rest are summed
    /// as `other` (pids are never labels: they churn).
    #[arg(long, default_value_t = 20, value_parser = clap::value_parser!(u32).range(1..=10_000), value_name = "N", help_heading = "Metrics")]
    pub metrics_max_processes: u32,
    /// TCP remote endpoints per process exported as series of their own
    /// (`ip:port` for connections made, the address for accepted ones); the
    /// rest are summed as `other`.
    #[arg(long, default_value_t = 5, value_parser = clap::value_parser!(u32).range(0..=1_000), value_name = "N", help_heading = "Metrics")]
    pub metrics_max_remotes: u32,
    #[command(flatten)]
    pub otlp: crate::otlp::OtlpArgs,
}

fn parse_probe(s: &str) -> Result<&'static str, String> {
    crate::probes::ALL.iter().find(|p| p.name == s).map(|p| p.name).ok_or_else(|| {
        let names: Vec<&str> = crate::probes::ALL.iter().map(|p| p.name).collect();
        format!("no probe named {s:?}; the probes are {}", names.join(", "))
    })
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

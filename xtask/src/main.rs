//! Developer tasks: what a newcomer types.
//!
//! ```text
//! cargo xtask run [-- ARGS]   set up, build, run `hostprobe run ARGS` as root
//! cargo xtask test [-- ARGS]  set up, build, run every test (ARGS go to cargo test)
//! cargo xtask bench           set up (with the peers), measure, write BENCHMARKS.md
//! cargo xtask soak            set up, build, 30 minutes of churn: memory and map slopes to BENCHMARKS.md
//! cargo xtask image           set up, build the container image (static binary, FROM scratch)
//! cargo xtask setup           only install what is missing (idempotent)
//! ```

mod bench;
mod fuzz;
mod image;
mod setup;
mod soak;

use std::{
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{bail, Context as _, Result};
use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(name = "cargo xtask", about = "hostprobe's set-up, run, test and bench tasks")]
struct Cli {
    #[command(subcommand)]
    task: Task,
}

#[derive(Subcommand)]
enum Task {
    /// Install what is missing: nightly rust-src, bpf-linker (and, with --bench, the peers measured against).
    Setup {
        /// Also install the tools `bench` compares with (bpftrace, libbpf-tools).
        #[arg(long)]
        bench: bool,
    },
    /// Set up, build (release), and run `hostprobe run ARGS` as root (through sudo when not root).
    Run {
        /// Arguments for `hostprobe run`, after `--`; e.g. `cargo xtask run -- --pid 1234`.
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        args: Vec<String>,
    },
    /// Set up, build, and run every test: host unit tests and the privileged end-to-end tests.
    Test {
        /// Extra arguments for `cargo test`, e.g. a test name filter.
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        args: Vec<String>,
    },
    /// Measure the probes' overhead against a baseline and the peers; writes BENCHMARKS.md.
    Bench(bench::Args),
    /// The collector under 1,000 agents of which 10% misbehave (floods, malformed and oversized
    /// messages, a wrong token), beside the well-behaved ones alone; writes its block of BENCHMARKS.md.
    Hostile(bench::hostile::Args),
    /// The collector's window under 1,000 synthetic agents for 10 minutes: a query over the
    /// window must merge every report exactly; memory through the run; writes its block of BENCHMARKS.md.
    Fleet(bench::fleet::Args),
    /// Run the agent and the collector for a long while under process and connection churn,
    /// the collector restarted meanwhile; writes the memory and map-entry slopes to BENCHMARKS.md.
    Soak(soak::Args),
    /// Run the fuzz properties (collector decoding and checks, journal and spool readers) a million times each.
    Fuzz(fuzz::Args),
    /// Build the container image with podman: the static (musl) binary alone, FROM scratch
    /// (deploy/container/Containerfile). No base image is downloaded.
    Image {
        #[arg(long, default_value = image::DEFAULT_TAG)]
        tag: String,
    },
}

fn main() -> Result<()> {
    let cli = Cli::parse();
    match cli.task {
        Task::Setup { bench } => setup::all(bench),
        Task::Run { args } => {
            setup::all(false)?;
            build()?;
            let bin = root().join("target/release/hostprobe");
            let status = as_root(&bin).arg("run").args(&args).status().context("running hostprobe")?;
            std::process::exit(status.code().unwrap_or(1));
        }
        Task::Test { args } => {
            step("checking formatting (cargo fmt --check)");
            run(cargo().args(["fmt", "--all", "--check"]))
                .context("the code is not formatted: run `cargo fmt --all`, then commit")?;
            setup::all(false)?;
            lint()?;
            build()?;
            // tests/tests/deploy.rs runs it.
            image::build(image::DEFAULT_TAG)?;
            step("running the tests (unit tests, then the end-to-end tests that load the probes)");
            let mut cmd = cargo();
            cmd.args(["test", "--release"]).args(&args).args(["--", "--test-threads=1"]);
            if !is_root() {
                // Test binaries load eBPF programs: run them through sudo.
                cmd.env(format!("CARGO_TARGET_{}_RUNNER", host_triple()?.to_uppercase().replace('-', "_")), "sudo -E");
            }
            run(&mut cmd)
        }
        Task::Image { tag } => {
            setup::all(false)?;
            image::build(&tag)
        }
        Task::Soak(args) => {
            setup::all(false)?;
            build()?;
            soak::run(args)
        }
        Task::Bench(args) => {
            setup::all(true)?;
            build()?;
            bench::run(args)
        }
        Task::Hostile(args) => {
            build()?;
            bench::hostile::run(args)
        }
        Task::Fleet(args) => {
            build()?;
            bench::fleet::run(args)
        }
        Task::Fuzz(args) => fuzz::run(args),
    }
}

/// The workspace root.
pub fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().expect("workspace root").to_path_buf()
}

pub fn cargo() -> Command {
    let mut c = Command::new(std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into()));
    c.current_dir(root());
    // `cargo xtask` runs us with xtask's own package variables
    // (CARGO_PKG_NAME, ...); passed on, they differ from a plain `cargo
    // build`'s environment and make ring's build script run again,
    // rebuilding everything above it.
    for (k, _) in std::env::vars_os() {
        let k = k.to_string_lossy();
        if k.starts_with("CARGO_PKG_")
            || [
                "CARGO_MANIFEST_DIR",
                "CARGO_MANIFEST_PATH",
                "CARGO_CRATE_NAME",
                "CARGO_BIN_NAME",
                "CARGO_PRIMARY_PACKAGE",
            ]
            .contains(&&*k)
        {
            c.env_remove(&*k);
        }
    }
    c
}

/// Clippy with warnings as errors: the agent, the tests and xtask, then
/// the eBPF programs for their own target (nightly, core built from
/// source, in a target directory of their own so the build's is kept).
fn lint() -> Result<()> {
    step("linting (cargo clippy, warnings are errors)");
    let fix = "clippy found problems: fix them (or, where clippy is wrong, allow the lint where it \
               fires, with the reason beside it), then commit";
    run(cargo()
        .args(["clippy", "--release", "--workspace", "--exclude", "agent-ebpf", "--all-targets"])
        .args(["--", "-D", "warnings"]))
    .context(fix)?;
    run(Command::new("rustup")
        .args(["run", "nightly", "cargo", "clippy", "--release", "-p", "agent-ebpf", "--target", "bpfel-unknown-none"])
        .args(["-Z", "build-std=core", "--", "-D", "warnings"])
        .current_dir(root())
        .env("CARGO_TARGET_DIR", root().join("target/ebpf-clippy")))
    .context(fix)
}

fn build() -> Result<()> {
    step("building (release): the eBPF objects, hostprobe, test workloads");
    run(cargo().args(["build", "--release", "--bins"]))
}

/// Prints a progress line for a step that may take a while.
pub fn step(what: &str) {
    eprintln!("==> {what}");
}

/// Runs a command, failing with its name if it fails.
pub fn run(cmd: &mut Command) -> Result<()> {
    let status = cmd.status().with_context(|| format!("running {cmd:?}"))?;
    if !status.success() {
        bail!("{cmd:?} failed: {status}");
    }
    Ok(())
}

pub fn is_root() -> bool {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| s.lines().find_map(|l| l.strip_prefix("Uid:")).map(|l| l.split_whitespace().nth(1) == Some("0")))
        .unwrap_or(false)
}

/// `program`, through sudo when we are not root.
pub fn as_root(program: &Path) -> Command {
    if is_root() {
        Command::new(program)
    } else {
        let mut c = Command::new("sudo");
        c.arg(program);
        c
    }
}

fn host_triple() -> Result<String> {
    let out = Command::new("rustc").arg("-vV").output().context("running rustc -vV")?;
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .find_map(|l| l.strip_prefix("host: ").map(str::to_string))
        .context("no host in rustc -vV")
}

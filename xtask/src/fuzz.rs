//! `cargo xtask fuzz`: the fuzz properties of the agent's library (its
//! `fuzz_*` tests: the collector's decoding and checks of a report, the
//! journal reader, the spool reader), each run for `--cases` generated
//! inputs instead of the few thousand of every `cargo test`; writes the
//! `fuzz` block of BENCHMARKS.md. CPU only: no probe is loaded.

use std::{fmt::Write as _, process::Command, time::Instant};

use anyhow::{bail, Context as _, Result};

use crate::{bench, cargo, step};

#[derive(clap::Args)]
pub struct Args {
    /// Generated inputs per property.
    #[arg(long, default_value_t = 1_000_000)]
    cases: u64,
}

/// `cargo test` of the agent's unit tests (release), with `args` after it.
fn unit_tests(args: &[&str]) -> Command {
    let mut c = cargo();
    c.args(["test", "--release", "-p", "hostprobe", "--lib"]).args(args);
    c
}

pub fn run(args: Args) -> Result<()> {
    step("building the agent's unit tests (release)");
    crate::run(&mut unit_tests(&["--no-run"]))?;
    let list = unit_tests(&["fuzz_", "--", "--list"]).output().context("listing the fuzz properties")?;
    let names: Vec<String> = String::from_utf8_lossy(&list.stdout)
        .lines()
        .filter_map(|l| l.strip_suffix(": test"))
        .map(str::to_string)
        .collect();
    if names.is_empty() {
        bail!("no fuzz_ tests found in the agent's library");
    }
    let mut table = String::from("| property | cases | wall time | cases/s | failures |\n|---|---:|---:|---:|---|\n");
    let mut failed = Vec::new();
    for name in &names {
        step(&format!("fuzzing {name}: {} cases", args.cases));
        let start = Instant::now();
        let out = unit_tests(&[name.as_str(), "--", "--exact"])
            .env("PROPTEST_CASES", args.cases.to_string())
            .output()
            .with_context(|| format!("running {name}"))?;
        let secs = start.elapsed().as_secs_f64();
        let failures = if out.status.success() {
            "0".to_string()
        } else {
            // proptest's panic names the smallest failing input it found.
            let text = String::from_utf8_lossy(&out.stdout);
            eprintln!("{text}{}", String::from_utf8_lossy(&out.stderr));
            let why = text.lines().find(|l| l.contains("minimal failing input")).unwrap_or("see the output");
            failed.push(name.clone());
            let why: String = why.trim().replace('`', "'").replace('|', "\\|").chars().take(300).collect();
            format!("1: `{why}`")
        };
        eprintln!("    {secs:.1} s, failures: {failures}");
        writeln!(table, "| `{name}` | {} | {secs:.1} s | {:.0} | {failures} |", args.cases, args.cases as f64 / secs)?;
    }
    let body = format!(
        "## Fuzzing\n\n\
         `cargo xtask fuzz --cases {cases}`, {date}, on {machine}. Each property (a `fuzz_*` proptest of the \
         agent's library; README 'Fuzzing') ran {cases} generated inputs (`PROPTEST_CASES`) as \
         `cargo test --release -p hostprobe --lib NAME -- --exact`, one at a time; the wall time is that \
         command's, the build done before. A property stops at its first failure (then shrunk to the \
         smallest failing input, shown here).\n\n{table}",
        cases = args.cases,
        date = bench::date(),
        machine = bench::machine(),
    );
    bench::write_block("fuzz", &body)?;
    step("BENCHMARKS.md: fuzz block written");
    if !failed.is_empty() {
        bail!("fuzz properties failed: {}", failed.join(", "));
    }
    Ok(())
}

//! `hostprobe offcpu`: where one process's threads wait, as folded stacks
//! (one line per stack: `comm;outer;...;inner microseconds`) and as an
//! interactive flame graph SVG.

use std::{
    collections::BTreeMap,
    io::Write as _,
    process::ExitCode,
    time::{Duration, Instant},
};

use crate::{
    cli::OffcpuArgs,
    probes::{offcpu::OffcpuProbe, Options},
    symbols::Symbolizer,
};

pub fn run(args: &OffcpuArgs) -> ExitCode {
    match record(args) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("hostprobe: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn record(args: &OffcpuArgs) -> anyhow::Result<()> {
    use anyhow::Context as _;
    let pid = args.pid;
    let comm = std::fs::read_to_string(format!("/proc/{pid}/comm"))
        .with_context(|| format!("no process {pid} (reading /proc/{pid}/comm)"))?
        .trim()
        .to_string();
    if let Err(e) = crate::ebpf::ensure_tracefs() {
        anyhow::bail!(e);
    }
    let min_ns = args.min.as_nanos() as u64;
    let opts = Options { pids: vec![pid], stacks_min_ns: Some(min_ns), ..Default::default() };
    let mut probe = OffcpuProbe::load(&opts)?;
    let mut symbols = Symbolizer::default();
    symbols.snapshot(pid);
    eprintln!(
        "hostprobe: recording off-CPU stacks of pid {pid} ({comm}) for {} (episodes of {} or more)...",
        humantime::format_duration(args.duration),
        humantime::format_duration(args.min)
    );
    let start = Instant::now();
    let mut next_note = Duration::from_secs(5);
    while start.elapsed() < args.duration {
        std::thread::sleep(Duration::from_millis(200).min(args.duration.saturating_sub(start.elapsed())));
        // Libraries loaded meanwhile: keep the newest view of its mappings.
        symbols.snapshot(pid);
        if start.elapsed() >= next_note {
            eprintln!("hostprobe: {}s of {}...", next_note.as_secs(), humantime::format_duration(args.duration));
            next_note += Duration::from_secs(5);
        }
    }

    let stacks = probe.stacks()?;
    let mut folded: BTreeMap<String, u64> = BTreeMap::new();
    let mut total_ns = 0;
    for s in &stacks {
        let mut frames = vec![comm.clone()];
        frames.extend(s.user.iter().rev().map(|ip| symbols.user(s.tgid, *ip)));
        frames.extend(s.kernel.iter().rev().map(|ip| symbols.kernel(*ip)));
        // `;` separates frames in the folded format.
        let line = frames.iter().map(|f| f.replace(';', ":")).collect::<Vec<_>>().join(";");
        *folded.entry(line).or_default() += s.ns;
        total_ns += s.ns;
    }
    let lines: Vec<String> = folded.iter().map(|(stack, ns)| format!("{stack} {}", ns / 1_000)).collect();
    eprintln!(
        "hostprobe: {} of off-CPU time in {} distinct stacks",
        humantime::format_duration(Duration::from_micros(total_ns / 1_000)),
        lines.len()
    );

    if let Some(path) = &args.folded {
        let mut text = lines.join("\n");
        text.push('\n');
        std::fs::write(path, text).with_context(|| format!("writing {}", path.display()))?;
        eprintln!("hostprobe: wrote folded stacks to {}", path.display());
    }
    if let Some(path) = &args.svg {
        anyhow::ensure!(
            !lines.is_empty(),
            "no off-CPU episodes of {} or more to draw",
            humantime::format_duration(args.min)
        );
        let mut options = inferno::flamegraph::Options::default();
        options.title = format!("Off-CPU time: {comm} (pid {pid})");
        options.count_name = "us".into();
        let file = std::fs::File::create(path).with_context(|| format!("creating {}", path.display()))?;
        inferno::flamegraph::from_lines(&mut options, lines.iter().map(String::as_str), std::io::BufWriter::new(file))
            .context("drawing the flame graph")?;
        eprintln!("hostprobe: wrote the flame graph to {}", path.display());
    }
    if args.folded.is_none() && args.svg.is_none() {
        let mut out = std::io::stdout().lock();
        for l in &lines {
            writeln!(out, "{l}")?;
        }
    }
    Ok(())
}

//! `hostprobe run`: the agent loop. Collection runs on its own thread
//! (map reads are blocking syscalls); the async side handles signals and
//! hands each report to the output.

use std::{
    process::ExitCode,
    sync::{
        atomic::{AtomicBool, Ordering::Relaxed},
        mpsc as std_mpsc, Arc,
    },
    time::{Duration, Instant},
};

use anyhow::Context as _;
use std::io::IsTerminal as _;

use crate::{
    agent::Agent,
    cli::{OutputFormat, RunArgs},
    output::{Json, Sink, Text},
    prom::Readiness,
    report::Report,
};

/// `hostprobe top`: `run` with the interactive view (or, with `--output
/// text|json|none`, as `run` prints).
pub fn top(mut args: RunArgs) -> anyhow::Result<ExitCode> {
    if args.output == OutputFormat::Auto {
        if !std::io::stdout().is_terminal() {
            eprintln!(
                "hostprobe: top needs a terminal on stdout; piped, use `hostprobe run --output text` or `--output json`"
            );
            return Ok(ExitCode::from(2));
        }
        args.output = OutputFormat::Live;
    }
    run(args)
}

pub fn run(args: RunArgs) -> anyhow::Result<ExitCode> {
    // Errors of deployment exit 2 like bad flags: restarting cannot fix them
    // (the systemd unit's RestartPreventExitStatus=2).
    let refuse = |e: String| {
        eprintln!("hostprobe: {e}");
        Ok(ExitCode::from(2))
    };
    if let Err(e) = crate::procinfo::host_pid_namespace() {
        return refuse(e);
    }
    let opts = match args.filters.resolve(args.max_entries) {
        Ok(o) => o,
        Err(e) => return refuse(e),
    };
    for pid in &opts.pids {
        if !std::path::Path::new(&format!("/proc/{pid}")).exists() {
            log::warn!("--pid {pid}: no such process is running now; nothing is reported for it unless one starts");
        }
    }
    let web = match args.web_config_file.as_deref().map(crate::web::Web::load).transpose() {
        Ok(w) => w,
        Err(e) => return refuse(format!("{e:#}")),
    };
    let host = args.hostname.clone().or_else(node_name).unwrap_or_else(crate::procinfo::hostname);
    let export = args.export;
    let agent_id = match export.client.collectors.is_empty() {
        true => None,
        false => match crate::export::agent_id(export.agent_id.as_deref()) {
            Ok(id) => Some(id),
            Err(e) => return refuse(e),
        },
    };
    let (stop_tx, stop_rx) = std_mpsc::channel::<()>();
    let stdout = std::io::stdout();
    let interactive = match args.output {
        OutputFormat::Live => true,
        OutputFormat::Auto => stdout.is_terminal(),
        _ => false,
    };
    let mut sink: Option<Box<dyn Sink>> = match args.output {
        _ if interactive => {
            // `q` in the view ends the run as Ctrl-C would.
            let stop = stop_tx.clone();
            let view = crate::top::View::start(move || {
                let _ = stop.send(());
            });
            match view {
                Ok(v) => Some(Box::new(v)),
                Err(e) => return refuse(format!("{e}")),
            }
        }
        OutputFormat::None => None,
        OutputFormat::Json => Some(Box::new(Json(stdout))),
        _ => Some(Box::new(Text(stdout))),
    };
    let attached = Arc::new(AtomicBool::new(false));

    let (report_tx, mut report_rx) = tokio::sync::mpsc::channel::<Report>(4);
    // The view sorts and filters every process: none is merged into `other`.
    let top = if interactive { usize::MAX } else { args.top as usize };
    let (interval, limit, cmdline, max_processes) = (args.interval, args.duration, args.cmdline, args.max_processes);
    let only = args.probes.clone();
    let pod_log_dir = args.pod_log_dir.clone();
    let (worker_attached, worker_host) = (attached.clone(), host.clone());
    let worker = std::thread::Builder::new()
        .name("collect".into())
        .spawn(move || -> anyhow::Result<()> {
            let mut agent = Agent::start(&opts, &only, top, cmdline, worker_host);
            agent.procs.pod_logs = Some(crate::procinfo::PodLogs::new(pod_log_dir));
            agent.max_processes = max_processes as usize;
            let active = agent.active();
            if active.is_empty() {
                anyhow::bail!("no probe could be attached; `hostprobe check` says why and how to fix it");
            }
            log::info!("running probes: {}; reporting every {:?}", active.join(", "), interval);
            worker_attached.store(true, Relaxed);
            collect_loop(&mut agent, interval, limit, &stop_rx, &report_tx);
            Ok(())
        })
        .context("starting the collection thread")?;

    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    let otlp_endpoint = args.otlp.endpoint();
    let metrics = (args.prometheus_listen.is_some() || otlp_endpoint.is_some()).then(|| {
        let mut m = crate::metrics::Metrics::new(args.metrics_max_processes as usize);
        m.host.clone_from(&host);
        m.max_remotes = args.metrics_max_remotes as usize;
        m.agent_id = crate::export::agent_id(export.agent_id.as_deref()).unwrap_or_default();
        m.host_id = crate::export::machine_id().unwrap_or_default();
        std::sync::Arc::new(std::sync::Mutex::new(m))
    });
    let (prometheus_listen, health_listen) = (args.prometheus_listen, args.health_listen);
    let otlp_args = args.otlp;
    rt.block_on(async move {
        let exporter = match &agent_id {
            Some(id) => Some(crate::export::Exporter::start(&export, id, &host)?),
            None => None,
        };
        let mut otlp = match otlp_endpoint {
            Some((url, standard_plaintext)) => {
                let mut client = export.client.clone();
                client.plaintext |= standard_plaintext;
                Some(crate::otlp::Exporter::start(&otlp_args, &client, url, "hostprobe", &host)?)
            }
            None => None,
        };
        let mut exporters = Vec::new();
        if let Some(x) = &exporter {
            exporters.push(("the collector", x.connected()));
        }
        if let Some(o) = &otlp {
            exporters.push(("the OTLP endpoint", o.delivering()));
        }
        let ready = Arc::new(Readiness { attached, exporters });
        if let Some(addr) = prometheus_listen {
            crate::prom::serve(addr, "--prometheus-listen", metrics.clone(), ready.clone(), web.clone()).await?;
        }
        if let Some(addr) = health_listen {
            crate::prom::serve(addr, "--health-listen", None, ready, web).await?;
        }
        let mut sigterm = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
        let mut stopping = false;
        loop {
            tokio::select! {
                r = report_rx.recv() => match r {
                    Some(report) => {
                        if let Some(x) = &exporter {
                            x.push(&report);
                        }
                        if let Some(m) = &metrics {
                            let mut m = m.lock().unwrap_or_else(|p| p.into_inner());
                            m.add(&report);
                            if let Some(x) = &exporter {
                                (m.health.export_queue, m.health.export_errors, m.health.export_last_error_unix) = x.health();
                            }
                            if let Some(o) = &mut otlp {
                                o.export(&m, report.end_unix_ns);
                            }
                        }
                        if let Err(e) = sink.as_mut().map_or(Ok(()), |s| s.emit(report)) {
                            if e.kind() == std::io::ErrorKind::BrokenPipe {
                                let _ = stop_tx.send(());
                                break;
                            }
                            return Err(anyhow::Error::new(e).context("writing output"));
                        }
                    }
                    None => break,
                },
                _ = tokio::signal::ctrl_c(), if !stopping => {
                    log::info!("stopping after this interval");
                    stopping = true;
                    let _ = stop_tx.send(());
                }
                _ = sigterm.recv(), if !stopping => {
                    log::info!("SIGTERM: stopping after this interval");
                    stopping = true;
                    let _ = stop_tx.send(());
                }
            }
        }
        if let Some(x) = &exporter {
            x.flush(Duration::from_secs(5)).await;
        }
        if let Some(o) = &otlp {
            o.flush(Duration::from_secs(5)).await;
        }
        anyhow::Ok(())
    })?;
    match worker.join() {
        Ok(Ok(())) => Ok(ExitCode::SUCCESS),
        Ok(Err(e)) => {
            eprintln!("hostprobe: {e:#}");
            Ok(ExitCode::FAILURE)
        }
        Err(_) => anyhow::bail!("the collection thread panicked"),
    }
}

/// $NODE_NAME (Kubernetes' downward API: `spec.nodeName`), when set.
fn node_name() -> Option<String> {
    std::env::var("NODE_NAME").ok().map(|n| n.trim().to_string()).filter(|n| !n.is_empty())
}

/// Ticks every `interval` on a fixed schedule (no drift), until stopped or
/// `limit` has passed; always reports the last, possibly partial, interval.
fn collect_loop(
    agent: &mut Agent,
    interval: Duration,
    limit: Option<Duration>,
    stop: &std_mpsc::Receiver<()>,
    out: &tokio::sync::mpsc::Sender<Report>,
) {
    let start = Instant::now();
    let end = limit.map(|l| start + l);
    let mut next = start + interval;
    loop {
        let due = end.map_or(next, |e| next.min(e));
        let last = match stop.recv_timeout(due.saturating_duration_since(Instant::now())) {
            Ok(()) | Err(std_mpsc::RecvTimeoutError::Disconnected) => true,
            Err(std_mpsc::RecvTimeoutError::Timeout) => end.is_some_and(|e| due >= e),
        };
        let began = Instant::now();
        let mut report = agent.tick();
        crate::diagnose::judge(&mut report);
        log::debug!("interval collected in {:?}", began.elapsed());
        let sent = out.blocking_send(report);
        if sent.is_err() || last {
            return;
        }
        next += interval;
        // After a stall (a suspended VM, a slow read), skip missed ticks
        // rather than firing them back to back.
        while next < Instant::now() {
            next += interval;
        }
    }
}

static DIAGNOSE_STOP: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

extern "C" fn on_diagnose_signal(_: libc::c_int) {
    DIAGNOSE_STOP.store(true, std::sync::atomic::Ordering::Relaxed);
}

/// `hostprobe diagnose`: the agent's probes for `--duration` (Ctrl-C ends
/// the window early), one report over the window, the rules on it.
pub fn diagnose(args: &crate::cli::DiagnoseArgs) -> std::process::ExitCode {
    use std::io::IsTerminal as _;
    let opts = match args.filters.resolve(None) {
        Ok(o) => o,
        Err(e) => return diagnose_usage(&e),
    };
    if let Some(pid) = args.filters.pids.iter().find(|p| !std::path::Path::new(&format!("/proc/{p}")).exists()) {
        return diagnose_usage(&format!("--pid {pid}: no such process (see `ps -e`)"));
    }
    let mut agent = crate::agent::Agent::start(&opts, &[], usize::MAX, false, crate::procinfo::hostname());
    if !agent.active().contains(&crate::probes::offcpu::NAME) {
        eprintln!("hostprobe: diagnose needs the offcpu probe, which could not attach; `hostprobe check` says why");
        return std::process::ExitCode::FAILURE;
    }
    // SAFETY: the handler only stores to an atomic.
    unsafe {
        libc::signal(libc::SIGINT, on_diagnose_signal as *const () as libc::sighandler_t);
        libc::signal(libc::SIGTERM, on_diagnose_signal as *const () as libc::sighandler_t);
    }
    let terminal = std::io::stderr().is_terminal();
    let total = humantime::format_duration(args.duration);
    eprintln!("hostprobe: watching for {total} (Ctrl-C to stop early)...");
    let start = std::time::Instant::now();
    while start.elapsed() < args.duration && !DIAGNOSE_STOP.load(std::sync::atomic::Ordering::Relaxed) {
        std::thread::sleep(std::time::Duration::from_millis(100).min(args.duration.saturating_sub(start.elapsed())));
        if terminal {
            eprint!("\rhostprobe: {:.0}s of {total}  ", start.elapsed().as_secs_f64().floor());
        }
    }
    if terminal {
        eprintln!();
    }
    let report = agent.tick();
    let answer = crate::diagnose::answer(&report, &args.filters.pids, args.top as usize);
    let out = match args.output {
        crate::cli::DiagnoseOutput::Json => serde_json::to_string(&answer).unwrap_or_default() + "\n",
        crate::cli::DiagnoseOutput::Text => crate::diagnose::text(&answer),
    };
    print!("{out}");
    std::process::ExitCode::SUCCESS
}

fn diagnose_usage(e: &str) -> std::process::ExitCode {
    eprintln!("hostprobe: {e} (see `hostprobe diagnose --help`)");
    std::process::ExitCode::from(2)
}

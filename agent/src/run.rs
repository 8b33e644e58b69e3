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
    let host = args.hostname.clone().or_else(node_name).unwrap_or_else(crate::agent::hostname);
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
    let (interval, limit, cmdline) = (args.interval, args.duration, args.cmdline);
    let only = args.probes.clone();
    let (worker_attached, worker_host) = (attached.clone(), host.clone());
    let worker = std::thread::Builder::new()
        .name("collect".into())
        .spawn(move || -> anyhow::Result<()> {
            let mut agent = Agent::start(&opts, &only, top, cmdline, worker_host);
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
        std::sync::Arc::new(std::sync::Mutex::new(crate::metrics::Metrics::new(args.metrics_max_processes as usize)))
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
            crate::prom::serve(addr, "--prometheus-listen", metrics.clone(), ready.clone()).await?;
        }
        if let Some(addr) = health_listen {
            crate::prom::serve(addr, "--health-listen", None, ready).await?;
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
        let report = agent.tick();
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

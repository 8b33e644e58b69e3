//! `hostprobe run`: the agent loop. Collection runs on its own thread
//! (map reads are blocking syscalls); the async side handles signals and
//! hands each report to the output.

use std::{
    process::ExitCode,
    sync::mpsc as std_mpsc,
    time::{Duration, Instant},
};

use anyhow::Context as _;
use std::io::IsTerminal as _;

use crate::{
    agent::Agent,
    cli::{OutputFormat, RunArgs},
    output::{Json, Live, Sink, Text},
    report::Report,
};

pub fn run(args: RunArgs) -> anyhow::Result<ExitCode> {
    let opts = match args.filters.resolve(args.max_entries) {
        Ok(o) => o,
        Err(e) => {
            eprintln!("hostprobe: {e}");
            return Ok(ExitCode::from(2));
        }
    };
    let stdout = std::io::stdout();
    let mut sink: Box<dyn Sink> = match args.output {
        OutputFormat::Json => Box::new(Json(stdout)),
        OutputFormat::Text => Box::new(Text(stdout)),
        OutputFormat::Live => Box::new(Live(stdout)),
        OutputFormat::Auto if stdout.is_terminal() => Box::new(Live(stdout)),
        OutputFormat::Auto => Box::new(Text(stdout)),
    };

    let (report_tx, mut report_rx) = tokio::sync::mpsc::channel::<Report>(4);
    let (stop_tx, stop_rx) = std_mpsc::channel::<()>();
    let (interval, limit, top, cmdline) = (args.interval, args.duration, args.top as usize, args.cmdline);
    let only = args.probes.clone();
    let worker = std::thread::Builder::new()
        .name("collect".into())
        .spawn(move || -> anyhow::Result<()> {
            let mut agent = Agent::start(&opts, &only, top, cmdline);
            let active = agent.active();
            if active.is_empty() {
                anyhow::bail!("no probe could be attached; `hostprobe check` says why and how to fix it");
            }
            log::info!("running probes: {}; reporting every {:?}", active.join(", "), interval);
            collect_loop(&mut agent, interval, limit, &stop_rx, &report_tx);
            Ok(())
        })
        .context("starting the collection thread")?;

    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    let export = args.export;
    let metrics = (args.prometheus_listen.is_some() || args.otlp.otlp_endpoint.is_some()).then(|| {
        std::sync::Arc::new(std::sync::Mutex::new(crate::metrics::Metrics::new(args.metrics_max_processes as usize)))
    });
    let prometheus_listen = args.prometheus_listen;
    let otlp_args = args.otlp;
    rt.block_on(async move {
        let exporter = if export.client.collectors.is_empty() {
            None
        } else {
            Some(crate::export::Exporter::start(&export)?)
        };
        if let (Some(addr), Some(m)) = (prometheus_listen, &metrics) {
            crate::prom::serve(addr, m.clone()).await?;
        }
        let mut otlp = match &otlp_args.otlp_endpoint {
            Some(url) => Some(crate::otlp::Exporter::start(&otlp_args, &export.client, url.clone(), "hostprobe")?),
            None => None,
        };
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
                        if let Err(e) = sink.emit(&report) {
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

//! `--prometheus-listen ADDR`: the metrics of [`crate::metrics`] on
//! `GET /metrics`, in the Prometheus text format (prometheus-client):
//! counters with `_total`, classic histograms with `le` buckets in seconds
//! (the powers of two of the shared layout), labels bounded (process name
//! and container, never pid), and the agent's own health.

use std::{
    net::SocketAddr,
    sync::{
        atomic::{AtomicBool, Ordering::Relaxed},
        Arc, Mutex,
    },
};

use anyhow::Context as _;
use prometheus_client::{
    collector::Collector,
    encoding::{DescriptorEncoder, EncodeMetric as _},
    metrics::{counter::ConstCounter, gauge::ConstGauge, MetricType},
    registry::Registry,
};

use crate::metrics::{octave_buckets, CumHist, Metrics};

/// The scrape-time view of the shared metrics.
#[derive(Debug)]
struct View(Arc<Mutex<Metrics>>);

type Labels = Vec<(&'static str, String)>;

/// A counter family; values are counts (u64) or seconds (f64).
fn counter<N>(e: &mut DescriptorEncoder, name: &str, help: &str, rows: &[(Labels, N)]) -> std::fmt::Result
where
    N: prometheus_client::encoding::EncodeCounterValue + Clone + std::fmt::Debug,
{
    if rows.is_empty() {
        return Ok(());
    }
    let mut m = e.encode_descriptor(name, help, None, MetricType::Counter)?;
    for (labels, v) in rows {
        ConstCounter::new(v.clone()).encode(m.encode_family(labels)?)?;
    }
    Ok(())
}

fn gauge(e: &mut DescriptorEncoder, name: &str, help: &str, rows: &[(Labels, i64)]) -> std::fmt::Result {
    if rows.is_empty() {
        return Ok(());
    }
    let mut m = e.encode_descriptor(name, help, None, MetricType::Gauge)?;
    for (labels, v) in rows {
        ConstGauge::new(*v).encode(m.encode_family(labels)?)?;
    }
    Ok(())
}

fn histogram(e: &mut DescriptorEncoder, name: &str, help: &str, rows: &[(Labels, &CumHist)]) -> std::fmt::Result {
    let rows: Vec<_> = rows.iter().filter(|(_, h)| h.hist.count() > 0).collect();
    if rows.is_empty() {
        return Ok(());
    }
    let mut m = e.encode_descriptor(name, help, None, MetricType::Histogram)?;
    for (labels, h) in rows {
        let mut buckets = octave_buckets(&h.hist);
        let count = h.hist.count();
        buckets.push((f64::INFINITY, count));
        // prometheus-client takes per-bucket counts and accumulates them.
        let mut prev = 0;
        let per: Vec<(f64, u64)> = buckets
            .iter()
            .map(|(le, cum)| {
                let c = cum - prev;
                prev = *cum;
                (*le, c)
            })
            .collect();
        // prometheus-client always writes `_sum`: an unknown sum goes out as
        // NaN and `serve` drops that line (a histogram may lack `_sum`; a
        // wrong one would mislead every mean computed from it).
        m.encode_family(labels)?.encode_histogram::<prometheus_client::encoding::NoLabelSet>(
            h.sum_seconds().unwrap_or(f64::NAN),
            count,
            &per,
            None,
        )?;
    }
    Ok(())
}

impl Collector for View {
    fn encode(&self, mut e: DescriptorEncoder) -> std::fmt::Result {
        let m = self.0.lock().unwrap_or_else(|p| p.into_inner());
        let groups: Vec<_> = m.all().collect();
        // A collector's groups carry the agent's host.
        let fleet = m.groups.keys().any(|k| !k.host.is_empty());
        let base = |k: &crate::metrics::GroupKey| -> Labels {
            let mut l = vec![("process", k.process.clone()), ("container_id", k.container_id.clone())];
            if fleet {
                l.insert(0, ("host", k.host.clone()));
            }
            l
        };
        let with = |k: &crate::metrics::GroupKey, extra: &[(&'static str, String)]| {
            let mut l = base(k);
            l.extend_from_slice(extra);
            l
        };
        let mut calls = Vec::new();
        let mut errors = Vec::new();
        for (k, g) in &groups {
            for (name, (c, err)) in &g.syscalls {
                calls.push((with(k, &[("syscall", name.clone())]), *c));
                errors.push((with(k, &[("syscall", name.clone())]), *err));
            }
        }
        counter(&mut e, "hostprobe_syscalls", "Syscalls completed, per process name and syscall.", &calls)?;
        counter(&mut e, "hostprobe_syscall_errors", "Syscalls that returned an error.", &errors)?;
        let lat: Vec<_> = groups.iter().map(|(k, g)| (base(k), &g.syscall_latency)).collect();
        histogram(&mut e, "hostprobe_syscall_duration_seconds", "Syscall latency, all syscalls of the process.", &lat)?;

        let mut ios = Vec::new();
        let mut bytes = Vec::new();
        let mut io_lat = Vec::new();
        let mut queued = Vec::new();
        for (k, g) in &groups {
            for ((dev, op), d) in &g.disk {
                let l = with(k, &[("device", dev.clone()), ("op", op.clone())]);
                if let Some(ns) = d.queue_ns {
                    queued.push((l.clone(), ns as f64 / 1e9));
                }
                ios.push((l.clone(), d.count));
                bytes.push((l.clone(), d.bytes));
                io_lat.push((l, &d.latency));
            }
        }
        counter(&mut e, "hostprobe_disk_ios", "Block I/O requests completed.", &ios)?;
        counter(&mut e, "hostprobe_disk_bytes", "Bytes of block I/O completed.", &bytes)?;
        histogram(&mut e, "hostprobe_disk_io_duration_seconds", "Block I/O latency, queued to completed.", &io_lat)?;
        counter(
            &mut e,
            "hostprobe_disk_queue_seconds",
            "Time block I/O requests spent queued before the device took them (part of the I/O duration).",
            &queued,
        )?;

        let mut cpu = Vec::new();
        for (k, g) in &groups {
            for (state, ns) in [
                ("on_cpu", g.on_cpu_ns),
                ("runqueue", g.runqueue_ns),
                ("blocked_io", g.blocked_io_ns),
                ("sleep", g.sleep_ns),
            ] {
                if g.on_cpu_ns + g.runqueue_ns + g.blocked_io_ns + g.sleep_ns > 0 {
                    cpu.push((with(k, &[("state", state.to_string())]), ns as f64 / 1e9));
                }
            }
        }
        counter(
            &mut e,
            "hostprobe_thread_time_seconds",
            "Thread time by state: on a CPU, waiting for one, blocked (D), asleep.",
            &cpu,
        )?;

        let pick = |f: fn(&crate::metrics::Group) -> u64| -> Vec<(Labels, u64)> {
            groups
                .iter()
                .filter(|(_, g)| g.tcp_bytes_sent + g.tcp_bytes_received + g.tcp_connections > 0)
                .map(|(k, g)| (base(k), f(g)))
                .collect()
        };
        counter(&mut e, "hostprobe_tcp_sent_bytes", "TCP bytes sent.", &pick(|g| g.tcp_bytes_sent))?;
        counter(&mut e, "hostprobe_tcp_received_bytes", "TCP bytes received.", &pick(|g| g.tcp_bytes_received))?;
        counter(&mut e, "hostprobe_tcp_retransmits", "TCP segments retransmitted.", &pick(|g| g.tcp_retransmits))?;
        counter(&mut e, "hostprobe_tcp_connections_closed", "TCP connections closed.", &pick(|g| g.tcp_connections))?;
        let mut failures = Vec::new();
        for (k, g) in groups.iter().filter(|(_, g)| g.tcp_refused + g.tcp_timeouts > 0) {
            failures.push((with(k, &[("reason", "refused".into())]), g.tcp_refused));
            failures.push((with(k, &[("reason", "timeout".into())]), g.tcp_timeouts));
        }
        counter(
            &mut e,
            "hostprobe_tcp_connect_failures",
            "TCP connects that failed: refused (reset) or timed out.",
            &failures,
        )?;
        let rtt: Vec<_> = groups.iter().map(|(k, g)| (base(k), &g.tcp_rtt)).collect();
        histogram(
            &mut e,
            "hostprobe_tcp_rtt_seconds",
            "TCP smoothed RTT samples (at most one per 10 ms per connection); no _sum: the probe keeps none.",
            &rtt,
        )?;

        // The agent's own health.
        let h = &m.health;
        let probe = |name: &str| vec![("probe", name.to_string())];
        let active: Vec<_> = h.probes.iter().map(|p| (probe(p.name), i64::from(p.active))).collect();
        gauge(&mut e, "hostprobe_probe_active", "1 when the probe is attached.", &active)?;
        let lost: Vec<_> = h.lost.iter().map(|(p, n)| (probe(p), *n)).collect();
        counter(&mut e, "hostprobe_events_lost", "Events lost: full maps, and events the kernel skipped.", &lost)?;
        let mut fill = Vec::new();
        let mut size = Vec::new();
        for p in &h.probes {
            for map in &p.maps {
                let l = vec![("probe", p.name.to_string()), ("map", map.name.clone())];
                if let Some(n) = map.entries {
                    fill.push((l.clone(), n as i64));
                }
                size.push((l, i64::from(map.max_entries)));
            }
        }
        gauge(&mut e, "hostprobe_map_entries", "Entries in use in a kernel map (where counted).", &fill)?;
        gauge(&mut e, "hostprobe_map_max_entries", "Size of a kernel map.", &size)?;
        gauge(
            &mut e,
            "hostprobe_metric_groups",
            "Process groups exported (at most --metrics-max-processes, plus other).",
            &[(vec![], m.groups.len() as i64)],
        )?;
        if let Some(q) = h.export_queue {
            gauge(
                &mut e,
                "hostprobe_export_queue_length",
                "Reports waiting for the collector's acknowledgement.",
                &[(vec![], q as i64)],
            )?;
            counter(
                &mut e,
                "hostprobe_export_errors",
                "Failed attempts to stream to the collector.",
                &[(vec![], h.export_errors)],
            )?;
            if let Some(t) = h.export_last_error_unix {
                gauge(
                    &mut e,
                    "hostprobe_export_last_error_timestamp_seconds",
                    "When streaming to the collector last failed.",
                    &[(vec![], t)],
                )?;
            }
        }
        Ok(())
    }
}

/// The exposition without the `_sum` lines of histograms whose sum is not
/// known (written as NaN by [`histogram`]).
fn drop_unknown_sums(body: String) -> String {
    if !body.contains("_sum") {
        return body;
    }
    let unknown = |l: &str| l.ends_with(" NaN") && l.split(['{', ' ']).next().is_some_and(|n| n.ends_with("_sum"));
    let mut out = String::with_capacity(body.len());
    for line in body.lines().filter(|l| !unknown(l)) {
        out.push_str(line);
        out.push('\n');
    }
    out
}

fn registry(metrics: Arc<Mutex<Metrics>>) -> Registry {
    let mut registry = Registry::default();
    registry.register_collector(Box::new(View(metrics)));
    registry
}

/// The metrics in the Prometheus text format (what `GET /metrics` serves).
fn render(registry: &Registry) -> Result<String, std::fmt::Error> {
    let mut body = String::new();
    prometheus_client::encoding::prometheus_text::encode(&mut body, registry)?;
    Ok(drop_unknown_sums(body))
}

/// Serves `/metrics` on `addr` until the runtime stops.
/// What `/readyz` answers: ready once the probes are attached and while
/// every exporter set delivers.
#[derive(Debug, Default)]
pub struct Readiness {
    pub attached: Arc<AtomicBool>,
    /// Each exporter (what it sends to) and whether it delivers now.
    pub exporters: Vec<(&'static str, Arc<AtomicBool>)>,
}

impl Readiness {
    /// `Err(why)` while not ready.
    fn check(&self) -> Result<(), String> {
        if !self.attached.load(Relaxed) {
            return Err("probes not attached yet".into());
        }
        match self.exporters.iter().find(|(_, ok)| !ok.load(Relaxed)) {
            Some((to, _)) => Err(format!("not connected to {to}")),
            None => Ok(()),
        }
    }
}

/// Serves `GET /metrics` (when `metrics` is given), `/healthz` (200 while the
/// process serves) and `/readyz` (200 when `ready`, else 503 and why) on
/// `addr`; `flag` names where the address came from, for errors.
pub async fn serve(
    addr: SocketAddr,
    flag: &str,
    metrics: Option<Arc<Mutex<Metrics>>>,
    ready: Arc<Readiness>,
) -> anyhow::Result<()> {
    use http_body_util::Full;
    use hyper::{body::Bytes, service::service_fn, Response, StatusCode};

    let registry = metrics.map(|m| Arc::new(registry(m)));
    let listener =
        tokio::net::TcpListener::bind(addr).await.with_context(|| format!("{flag} {addr}: cannot listen there"))?;
    match registry {
        Some(_) => log::info!("Prometheus metrics on http://{addr}/metrics; health on /healthz and /readyz"),
        None => log::info!("health on http://{addr}/healthz and /readyz"),
    }
    tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else { continue };
            let (registry, ready) = (registry.clone(), ready.clone());
            tokio::spawn(async move {
                let service = service_fn(move |req: hyper::Request<hyper::body::Incoming>| {
                    let (registry, ready) = (registry.clone(), ready.clone());
                    async move {
                        let text = |status: StatusCode, body: String| {
                            Response::builder().status(status).body(Full::new(Bytes::from(body)))
                        };
                        match (req.uri().path(), &registry) {
                            ("/healthz", _) => text(StatusCode::OK, "ok\n".into()),
                            ("/readyz", _) => match ready.check() {
                                Ok(()) => text(StatusCode::OK, "ready\n".into()),
                                Err(why) => text(StatusCode::SERVICE_UNAVAILABLE, format!("not ready: {why}\n")),
                            },
                            ("/metrics", Some(registry)) => match render(registry) {
                                Ok(body) => Response::builder()
                                    .header("content-type", prometheus_client::encoding::prometheus_text::CONTENT_TYPE)
                                    .body(Full::new(Bytes::from(body))),
                                Err(e) => text(StatusCode::INTERNAL_SERVER_ERROR, format!("encoding failed: {e}\n")),
                            },
                            (_, Some(_)) => text(StatusCode::NOT_FOUND, "see /metrics, /healthz, /readyz\n".into()),
                            (_, None) => text(StatusCode::NOT_FOUND, "see /healthz, /readyz\n".into()),
                        }
                    }
                });
                let io = hyper_util::rt::TokioIo::new(stream);
                let _ = hyper::server::conn::http1::Builder::new().serve_connection(io, service).await;
            });
        }
    });
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn scrape(m: Metrics) -> String {
        render(&registry(Arc::new(Mutex::new(m)))).unwrap()
    }

    fn total(body: &str, family: &str) -> f64 {
        body.lines()
            .filter(|l| l.starts_with(&format!("{family}{{")))
            .map(|l| l.rsplit(' ').next().unwrap().parse::<f64>().unwrap())
            .sum()
    }

    #[test]
    fn other_unknown_owner_and_exact_sums_are_exported() {
        let mut m = Metrics::new(2);
        m.add(&crate::metrics::tests::report());
        let body = scrape(m);
        assert_eq!(total(&body, "hostprobe_disk_bytes_total"), (4096 * 55) as f64, "{body}");
        assert_eq!(total(&body, "hostprobe_tcp_sent_bytes_total"), 55_000.0);
        assert!(total(&body, "hostprobe_thread_time_seconds_total") > 0.0);
        let sum: u64 = (1..=10u64).map(|k| 51_000 * k * k).sum();
        assert!((total(&body, "hostprobe_disk_io_duration_seconds_sum") - sum as f64 / 1e9).abs() < 1e-12, "{body}");
        assert!(
            body.contains("hostprobe_tcp_connections_closed_total{process=\"tcp_unknown_owner\",container_id=\"\"} 1"),
            "{body}"
        );
        assert!(body.contains("hostprobe_tcp_rtt_seconds_count{"), "{body}");
        assert!((total(&body, "hostprobe_tcp_rtt_seconds_sum") - 11.0 * 120_000.0 / 1e9).abs() < 1e-12, "{body}");
        // Queued 1 us per request, k requests for process k = 1..=10.
        assert!((total(&body, "hostprobe_disk_queue_seconds_total") - 55_000e-9).abs() < 1e-12, "{body}");
        assert!(!body.contains("NaN"), "{body}");
    }

    #[test]
    fn only_unknown_sums_are_dropped() {
        let body = "a_sum{x=\"1\"} NaN\na_sum{x=\"2\"} 1.5\na_count{x=\"1\"} 3\nb_total NaN\nc_sum NaN\n".to_string();
        assert_eq!(drop_unknown_sums(body), "a_sum{x=\"2\"} 1.5\na_count{x=\"1\"} 3\nb_total NaN\n");
    }
}

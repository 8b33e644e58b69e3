//! `--prometheus-listen ADDR`: the metrics of [`crate::metrics`] on
//! `GET /metrics`, in the Prometheus text format (prometheus-client):
//! counters with `_total`, classic histograms with `le` buckets in seconds
//! (the powers of two of the shared layout), labels bounded (process name
//! and container, never pid), and the agent's own health.

use std::{
    net::SocketAddr,
    sync::{Arc, Mutex},
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
        m.encode_family(labels)?.encode_histogram::<prometheus_client::encoding::NoLabelSet>(
            h.sum_ns / 1e9,
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
        for (k, g) in &groups {
            for ((dev, op), d) in &g.disk {
                let l = with(k, &[("device", dev.clone()), ("op", op.clone())]);
                ios.push((l.clone(), d.count));
                bytes.push((l.clone(), d.bytes));
                io_lat.push((l, &d.latency));
            }
        }
        counter(&mut e, "hostprobe_disk_ios", "Block I/O requests completed.", &ios)?;
        counter(&mut e, "hostprobe_disk_bytes", "Bytes of block I/O completed.", &bytes)?;
        histogram(&mut e, "hostprobe_disk_io_duration_seconds", "Block I/O latency, queued to completed.", &io_lat)?;

        let mut cpu = Vec::new();
        for (k, g) in &groups {
            for (state, ns) in
                [("on_cpu", g.on_cpu_ns), ("runqueue", g.runqueue_ns), ("blocked_io", g.blocked_io_ns), ("sleep", g.sleep_ns)]
            {
                if g.on_cpu_ns + g.runqueue_ns + g.blocked_io_ns + g.sleep_ns > 0 {
                    cpu.push((with(k, &[("state", state.to_string())]), ns as f64 / 1e9));
                }
            }
        }
        counter(&mut e, "hostprobe_thread_time_seconds", "Thread time by state: on a CPU, waiting for one, blocked (D), asleep.", &cpu)?;

        let pick = |f: fn(&crate::metrics::Group) -> u64| -> Vec<(Labels, u64)> {
            groups.iter().filter(|(_, g)| g.tcp_bytes_sent + g.tcp_bytes_received + g.tcp_connections > 0).map(|(k, g)| (base(k), f(g))).collect()
        };
        counter(&mut e, "hostprobe_tcp_sent_bytes", "TCP bytes sent.", &pick(|g| g.tcp_bytes_sent))?;
        counter(&mut e, "hostprobe_tcp_received_bytes", "TCP bytes received.", &pick(|g| g.tcp_bytes_received))?;
        counter(&mut e, "hostprobe_tcp_retransmits", "TCP segments retransmitted.", &pick(|g| g.tcp_retransmits))?;
        counter(&mut e, "hostprobe_tcp_connections_closed", "TCP connections closed.", &pick(|g| g.tcp_connections))?;
        let rtt: Vec<_> = groups.iter().map(|(k, g)| (base(k), &g.tcp_rtt)).collect();
        histogram(&mut e, "hostprobe_tcp_rtt_seconds", "TCP smoothed RTT samples (at most one per 10 ms per connection).", &rtt)?;

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
        gauge(&mut e, "hostprobe_metric_groups", "Process groups exported (at most --metrics-max-processes, plus other).", &[(vec![], m.groups.len() as i64)])?;
        if let Some(q) = h.export_queue {
            gauge(&mut e, "hostprobe_export_queue_length", "Reports waiting for the collector's acknowledgement.", &[(vec![], q as i64)])?;
            counter(&mut e, "hostprobe_export_errors", "Failed attempts to stream to the collector.", &[(vec![], h.export_errors)])?;
            if let Some(t) = h.export_last_error_unix {
                gauge(&mut e, "hostprobe_export_last_error_timestamp_seconds", "When streaming to the collector last failed.", &[(vec![], t)])?;
            }
        }
        Ok(())
    }
}

/// Serves `/metrics` on `addr` until the runtime stops.
pub async fn serve(addr: SocketAddr, metrics: Arc<Mutex<Metrics>>) -> anyhow::Result<()> {
    use http_body_util::Full;
    use hyper::{body::Bytes, service::service_fn, Response, StatusCode};

    let mut registry = Registry::default();
    registry.register_collector(Box::new(View(metrics)));
    let registry = Arc::new(registry);
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .with_context(|| format!("--prometheus-listen {addr}: cannot listen there"))?;
    log::info!("Prometheus metrics on http://{addr}/metrics");
    tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else { continue };
            let registry = registry.clone();
            tokio::spawn(async move {
                let service = service_fn(move |req: hyper::Request<hyper::body::Incoming>| {
                    let registry = registry.clone();
                    async move {
                        let mut body = String::new();
                        let resp = if req.uri().path() != "/metrics" {
                            Response::builder().status(StatusCode::NOT_FOUND).body(Full::new(Bytes::from("see /metrics\n")))
                        } else if let Err(e) = prometheus_client::encoding::prometheus_text::encode(&mut body, &registry) {
                            Response::builder()
                                .status(StatusCode::INTERNAL_SERVER_ERROR)
                                .body(Full::new(Bytes::from(format!("encoding failed: {e}\n"))))
                        } else {
                            Response::builder()
                                .header("content-type", prometheus_client::encoding::prometheus_text::CONTENT_TYPE)
                                .body(Full::new(Bytes::from(body)))
                        };
                        resp
                    }
                });
                let io = hyper_util::rt::TokioIo::new(stream);
                let _ = hyper::server::conn::http1::Builder::new().serve_connection(io, service).await;
            });
        }
    });
    Ok(())
}

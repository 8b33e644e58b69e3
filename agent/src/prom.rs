//! `--prometheus-listen ADDR`: the metrics of [`crate::catalog`] on
//! `GET /metrics`, in the Prometheus text format (prometheus-client), named
//! as the OpenTelemetry Collector names the same OTLP data: counters with
//! `_total`, units as suffixes, classic histograms with `le` buckets in
//! seconds (the powers of two of the shared layout, upper edges included),
//! labels bounded (process name, container and pod, never pid).

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

use crate::{
    catalog::{self, Kind, Value},
    metrics::{octave_buckets, CumHist, Metrics},
};

/// The scrape-time view of the shared metrics.
#[derive(Debug)]
struct View(Arc<Mutex<Metrics>>);

type Labels = Vec<(String, String)>;

/// A counter family; values are counts (u64) or seconds (f64).
fn counter<N>(e: &mut DescriptorEncoder, name: &str, help: &str, rows: &[(Labels, N)]) -> std::fmt::Result
where
    N: prometheus_client::encoding::EncodeCounterValue + Clone + std::fmt::Debug,
{
    let mut m = e.encode_descriptor(name, help, None, MetricType::Counter)?;
    for (labels, v) in rows {
        ConstCounter::new(v.clone()).encode(m.encode_family(labels)?)?;
    }
    Ok(())
}

fn gauge<N>(e: &mut DescriptorEncoder, name: &str, help: &str, rows: &[(Labels, N)]) -> std::fmt::Result
where
    N: prometheus_client::encoding::EncodeGaugeValue + Clone + std::fmt::Debug,
{
    let mut m = e.encode_descriptor(name, help, None, MetricType::Gauge)?;
    for (labels, v) in rows {
        ConstGauge::new(v.clone()).encode(m.encode_family(labels)?)?;
    }
    Ok(())
}

fn histogram(e: &mut DescriptorEncoder, name: &str, help: &str, rows: &[(Labels, &CumHist)]) -> std::fmt::Result {
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
        let c = catalog::catalog(&m);
        for f in &c.families {
            let name = catalog::prometheus_name(f.name, f.unit);
            let labels = |s: &catalog::Series| -> Labels {
                let group = s.group.map(|g| c.groups[g].labels.as_slice()).unwrap_or_default();
                group.iter().chain(&s.attrs).map(|(k, v)| (catalog::prometheus_label(k), v.clone())).collect()
            };
            let ints = || {
                f.series.iter().filter_map(|s| match s.value {
                    Value::Int(v) => Some((labels(s), v)),
                    _ => None,
                })
            };
            let floats = || {
                f.series.iter().filter_map(|s| match s.value {
                    Value::Float(v) => Some((labels(s), v)),
                    _ => None,
                })
            };
            match f.kind {
                Kind::Counter if matches!(f.series.first().map(|s| s.value), Some(Value::Float(_))) => {
                    counter(&mut e, &name, f.help, &floats().collect::<Vec<_>>())?
                }
                Kind::Counter => counter(&mut e, &name, f.help, &ints().collect::<Vec<_>>())?,
                Kind::Gauge if matches!(f.series.first().map(|s| s.value), Some(Value::Float(_))) => {
                    gauge(&mut e, &name, f.help, &floats().collect::<Vec<_>>())?
                }
                Kind::Gauge => {
                    let rows: Vec<(Labels, i64)> = ints().map(|(l, v)| (l, v as i64)).collect();
                    gauge(&mut e, &name, f.help, &rows)?
                }
                Kind::Histogram => {
                    let rows: Vec<(Labels, &CumHist)> = f
                        .series
                        .iter()
                        .filter_map(|s| match s.value {
                            Value::Hist(h) => Some((labels(s), h)),
                            _ => None,
                        })
                        .collect();
                    histogram(&mut e, &name, f.help, &rows)?
                }
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

/// What `GET /metrics` would serve for `metrics` now (also what
/// [`crate::remote_write`] pushes, parsed back).
pub fn exposition(metrics: Arc<Mutex<Metrics>>) -> Result<String, std::fmt::Error> {
    render(&registry(metrics))
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

/// A connection's byte stream, plain or TLS.
trait Io: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send {}
impl<T: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send> Io for T {}

/// Serves `GET /metrics` (when `metrics` is given), `/healthz` (200 while the
/// process serves) and `/readyz` (200 when `ready`, else 503 and why) on
/// `addr`, with the TLS and basic auth of `web` if given; `flag` names where
/// the address came from, for errors.
pub async fn serve(
    addr: SocketAddr,
    flag: &str,
    metrics: Option<Arc<Mutex<Metrics>>>,
    ready: Arc<Readiness>,
    web: Option<crate::web::Web>,
) -> anyhow::Result<()> {
    use http_body_util::Full;
    use hyper::{body::Bytes, service::service_fn, Response, StatusCode};

    let registry = metrics.map(|m| Arc::new(registry(m)));
    let listener =
        tokio::net::TcpListener::bind(addr).await.with_context(|| format!("{flag} {addr}: cannot listen there"))?;
    let scheme = if web.as_ref().is_some_and(|w| w.tls.is_some()) { "https" } else { "http" };
    match registry {
        Some(_) => log::info!("Prometheus metrics on {scheme}://{addr}/metrics; health on /healthz and /readyz"),
        None => log::info!("health on {scheme}://{addr}/healthz and /readyz"),
    }
    let web = web.map(Arc::new);
    tokio::spawn(async move {
        loop {
            let Ok((tcp, peer)) = listener.accept().await else { continue };
            let (registry, ready, web) = (registry.clone(), ready.clone(), web.clone());
            tokio::spawn(async move {
                let stream: Box<dyn Io> = match web.as_ref().and_then(|w| w.tls.clone()) {
                    Some(acceptor) => match acceptor.accept(tcp).await {
                        Ok(s) => Box::new(s),
                        Err(e) => {
                            log::debug!("{peer}: TLS handshake failed: {e}");
                            return;
                        }
                    },
                    None => Box::new(tcp),
                };
                let service = service_fn(move |req: hyper::Request<hyper::body::Incoming>| {
                    let (registry, ready, web) = (registry.clone(), ready.clone(), web.clone());
                    async move {
                        let text = |status: StatusCode, body: String| {
                            Response::builder().status(status).body(Full::new(Bytes::from(body)))
                        };
                        let authorization =
                            req.headers().get(hyper::header::AUTHORIZATION).and_then(|v| v.to_str().ok());
                        match (req.uri().path(), &registry) {
                            ("/healthz", _) => text(StatusCode::OK, "ok\n".into()),
                            ("/readyz", _) => match ready.check() {
                                Ok(()) => text(StatusCode::OK, "ready\n".into()),
                                Err(why) => text(StatusCode::SERVICE_UNAVAILABLE, format!("not ready: {why}\n")),
                            },
                            ("/metrics", Some(_)) if !web.as_ref().is_none_or(|w| w.allows(authorization)) => {
                                Response::builder()
                                    .status(StatusCode::UNAUTHORIZED)
                                    .header(hyper::header::WWW_AUTHENTICATE, "Basic realm=\"hostprobe\"")
                                    .body(Full::new(Bytes::from("basic auth required (see --web-config-file)\n")))
                            }
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
        m.add(&crate::report::tests::sample());
        let body = scrape(m);
        assert_eq!(total(&body, "hostprobe_disk_io_bytes_total"), (4096 * 55) as f64, "{body}");
        let sent: f64 = body
            .lines()
            .filter(|l| {
                l.starts_with("hostprobe_tcp_io_bytes_total{") && l.contains("network_io_direction=\"transmit\"")
            })
            .map(|l| l.rsplit(' ').next().unwrap().parse::<f64>().unwrap())
            .sum();
        assert_eq!(sent, 55_000.0);
        assert!(total(&body, "hostprobe_thread_time_seconds_total") > 0.0);
        let sum: u64 = (1..=10u64).map(|k| 51_000 * k * k).sum();
        assert!((total(&body, "hostprobe_disk_io_duration_seconds_sum") - sum as f64 / 1e9).abs() < 1e-12, "{body}");
        assert!(
            body.contains(
                "hostprobe_tcp_connections_closed_total{process_executable_name=\"tcp_unknown_owner\",\
                 hostprobe_tcp_remote=\"127.0.0.1:80\"} 1"
            ),
            "{body}"
        );
        assert!(body.contains("hostprobe_tcp_rtt_seconds_count{"), "{body}");
        assert!((total(&body, "hostprobe_tcp_rtt_seconds_sum") - 11.0 * 120_000.0 / 1e9).abs() < 1e-12, "{body}");
        assert!(!body.contains("NaN"), "{body}");
        assert!(body.contains("hostprobe_build_info{hostprobe_version=\""), "{body}");
        // Every bucket edge is a power of two of nanoseconds.
        assert!(body.contains("le=\"6.4e-08\""), "{body}");
    }

    #[test]
    fn only_unknown_sums_are_dropped() {
        let body = "a_sum{x=\"1\"} NaN\na_sum{x=\"2\"} 1.5\na_count{x=\"1\"} 3\nb_total NaN\nc_sum NaN\n".to_string();
        assert_eq!(drop_unknown_sums(body), "a_sum{x=\"2\"} 1.5\na_count{x=\"1\"} 3\nb_total NaN\n");
    }
}

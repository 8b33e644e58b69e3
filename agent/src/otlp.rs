//! `--otlp-endpoint URL`: the metrics of [`crate::metrics`] to an
//! OpenTelemetry collector over OTLP/gRPC (messages and client from the
//! `opentelemetry-proto` crate), every interval.
//!
//! Latency distributions are OTLP histograms with explicit bounds that are
//! our layout's bucket edges, all of them, so nothing is re-bucketed.
//! Temporality by flag: cumulative (default; each group's start time is when
//! its series began, and changes when the agent restarts or the group was
//! evicted) or delta (differences between exports, contiguous in time).
//! Failed exports are retried with backoff on the codes the OTLP
//! specification calls retryable; cumulative data needs only the latest
//! state to be delivered (nothing lost, nothing counted twice), delta data
//! keeps a bounded queue of unsent requests.

use std::{collections::VecDeque, time::Duration};

use opentelemetry_proto::tonic::{
    collector::metrics::v1::{metrics_service_client::MetricsServiceClient, ExportMetricsServiceRequest},
    common::v1::{any_value, AnyValue, InstrumentationScope, KeyValue},
    metrics::v1::{
        metric::Data, number_data_point, AggregationTemporality, Gauge, Histogram as OtlpHistogram, HistogramDataPoint,
        Metric, NumberDataPoint, ResourceMetrics, ScopeMetrics, Sum,
    },
    resource::v1::Resource,
};
use tonic::{codec::CompressionEncoding, metadata::MetadataMap, Code};

use crate::{
    catalog::{self, Kind, Value},
    metrics::Metrics,
};

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum, Default)]
pub enum Temporality {
    #[default]
    Cumulative,
    Delta,
}

/// Which bucket edges OTLP histograms carry.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum, Default)]
pub enum Buckets {
    /// The powers of two (64 ns to 275 s): 34 buckets, as on /metrics.
    #[default]
    Octave,
    /// Every edge of the layout (8 per power of two): 258 buckets, 12.5%
    /// resolution, and 258 series per histogram once in Prometheus.
    Full,
}

#[derive(Debug, Clone, clap::Args, Default)]
#[command(next_help_heading = "OpenTelemetry (OTLP/gRPC) export")]
pub struct OtlpArgs {
    /// OTLP/gRPC endpoint, e.g. https://otel-collector:4317 (http:// with
    /// --plaintext). TLS settings are --ca-file/--client-cert/--client-key.
    /// Also from OTEL_EXPORTER_OTLP_ENDPOINT, where http:// means plaintext
    /// as in every OpenTelemetry SDK; OTEL_SERVICE_NAME and
    /// OTEL_RESOURCE_ATTRIBUTES (key=value,...) set the resource.
    #[arg(long, value_name = "URL")]
    pub otlp_endpoint: Option<String>,
    /// Header sent with every export, e.g. `api-key=SECRET` (repeatable).
    #[arg(long = "otlp-header", value_name = "KEY=VALUE", value_parser = parse_header)]
    pub otlp_headers: Vec<(String, String)>,
    /// cumulative (default): totals since each series began; delta:
    /// changes since the last export.
    #[arg(long, value_enum, default_value_t = Temporality::Cumulative)]
    pub otlp_temporality: Temporality,
    /// Histogram buckets: octave (default: the powers of two, the same `le`
    /// as /metrics) or full (every edge of the layout, 8 per power of two).
    #[arg(long, value_enum, default_value_t = Buckets::Octave)]
    pub otlp_buckets: Buckets,
    /// CA certificate(s) (PEM) for the OTLP endpoint (default: --ca-file, or the system's roots).
    #[arg(long, value_name = "FILE")]
    pub otlp_ca_file: Option<std::path::PathBuf>,
}

impl OtlpArgs {
    /// The endpoint, and whether plaintext was asked for by the standard
    /// variable: --otlp-endpoint (HOSTPROBE_OTLP_ENDPOINT) first, else
    /// OTEL_EXPORTER_OTLP_ENDPOINT.
    pub fn endpoint(&self) -> Option<(String, bool)> {
        if let Some(url) = &self.otlp_endpoint {
            return Some((url.clone(), false));
        }
        let url = std::env::var("OTEL_EXPORTER_OTLP_ENDPOINT").ok().filter(|u| !u.trim().is_empty())?;
        let plaintext = url.starts_with("http://");
        Some((url.trim().to_string(), plaintext))
    }
}

/// The resource: ours, then OTEL_RESOURCE_ATTRIBUTES over it, then
/// OTEL_SERVICE_NAME over `service.name` (the OpenTelemetry SDKs' order).
fn resource(service: &str, host: &str) -> Resource {
    let mut attrs =
        vec![s("service.name", service), s("service.version", env!("CARGO_PKG_VERSION")), s("host.name", host)];
    let mut set = |key: &str, value: &str| match attrs.iter_mut().find(|a| a.key == key) {
        Some(a) => *a = s(key, value),
        None => attrs.push(s(key, value)),
    };
    if let Ok(env) = std::env::var("OTEL_RESOURCE_ATTRIBUTES") {
        match parse_resource_attributes(&env) {
            Ok(pairs) => pairs.iter().for_each(|(k, v)| set(k, v)),
            Err(e) => log::warn!("OTEL_RESOURCE_ATTRIBUTES ignored: {e}"),
        }
    }
    if let Some(name) = std::env::var("OTEL_SERVICE_NAME").ok().filter(|n| !n.is_empty()) {
        set("service.name", &name);
    }
    Resource { attributes: attrs, ..Default::default() }
}

/// `key=value,key=value`, values percent-encoded (the specification's
/// format); one bad pair discards all, as the specification says.
fn parse_resource_attributes(s: &str) -> Result<Vec<(String, String)>, String> {
    let decode = |v: &str| -> Result<String, String> {
        let b = v.as_bytes();
        let mut out = Vec::with_capacity(b.len());
        let mut i = 0;
        while i < b.len() {
            if b[i] == b'%' {
                let hex = v.get(i + 1..i + 3).ok_or(format!("{v:?}: a % must start %XX"))?;
                out.push(u8::from_str_radix(hex, 16).map_err(|_| format!("{v:?}: bad %{hex}"))?);
                i += 3;
            } else {
                out.push(b[i]);
                i += 1;
            }
        }
        String::from_utf8(out).map_err(|_| format!("{v:?} is not UTF-8 once decoded"))
    };
    s.split(',')
        .filter(|p| !p.trim().is_empty())
        .map(|p| {
            let (k, v) = p.split_once('=').ok_or(format!("{p:?}: expected key=value"))?;
            let k = k.trim();
            if k.is_empty() {
                return Err(format!("{p:?}: empty key"));
            }
            Ok((k.to_string(), decode(v.trim())?))
        })
        .collect()
}

fn parse_header(s: &str) -> Result<(String, String), String> {
    let (k, v) = s.split_once('=').ok_or_else(|| format!("{s:?}: expected KEY=VALUE"))?;
    let key = k.trim().to_ascii_lowercase();
    if key.is_empty() || !key.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_') {
        return Err(format!("{k:?} is not a valid header name"));
    }
    Ok((key, v.trim().to_string()))
}

fn kv(key: &str, v: any_value::Value) -> KeyValue {
    KeyValue { key: key.to_string(), value: Some(AnyValue { value: Some(v) }), ..Default::default() }
}

fn s(key: &str, v: &str) -> KeyValue {
    kv(key, any_value::Value::StringValue(v.to_string()))
}

/// `attrs` as OTLP string attributes.
fn string_attrs(attrs: &[(&'static str, String)]) -> Vec<KeyValue> {
    attrs.iter().map(|(k, v)| s(k, v)).collect()
}

/// The explicit bounds (seconds) and per-bucket counts of a histogram:
/// every edge of the shared layout, or only its powers of two (as on
/// `/metrics`: 34 buckets rather than 258 downstream).
fn buckets(h: &crate::hist::Histogram, form: Buckets) -> (Vec<f64>, Vec<u64>) {
    use agent_common::hist::{upper_bound, BUCKETS, SUB_BITS};
    let every = match form {
        Buckets::Full => 1,
        Buckets::Octave => 1 << SUB_BITS,
    };
    let mut bounds = Vec::new();
    let mut counts = Vec::new();
    let mut acc = 0u64;
    for (i, c) in h.every_bucket().enumerate() {
        acc += c;
        if i == BUCKETS - 1 || i % every == 0 {
            if i < BUCKETS - 1 {
                bounds.push(upper_bound(i) as f64 / 1e9);
            }
            counts.push(acc);
            acc = 0;
        }
    }
    (bounds, counts)
}

/// A series' last exported cumulative value (delta temporality).
#[derive(Debug, Clone)]
enum Last {
    Int(u64),
    Float(f64),
    Hist(crate::hist::Histogram, u64),
}

/// `value` less `last`, and `value` to remember (delta temporality).
fn delta(value: &Value, last: Option<&Last>) -> (Last, Last) {
    let now = match value {
        Value::Int(v) => Last::Int(*v),
        Value::Float(v) => Last::Float(*v),
        Value::Hist(h) => Last::Hist(h.hist.clone(), h.sum_ns),
    };
    let d = match (&now, last) {
        (Last::Int(v), Some(Last::Int(p))) => Last::Int(v.saturating_sub(*p)),
        (Last::Float(v), Some(Last::Float(p))) => Last::Float((v - p).max(0.0)),
        (Last::Hist(h, sum), Some(Last::Hist(ph, psum))) => {
            let mut d = crate::hist::Histogram::default();
            for (i, (x, y)) in h.every_bucket().zip(ph.every_bucket()).enumerate() {
                let _ = d.add(i, x.saturating_sub(y));
            }
            Last::Hist(d, sum.saturating_sub(*psum))
        }
        _ => now.clone(),
    };
    (d, now)
}

/// The export request for the metrics' current state.
pub struct Exporter {
    temporality: Temporality,
    /// Histogram buckets: every edge, or powers of two.
    buckets: Buckets,
    /// Delta: each series' cumulative value at the last export, and when
    /// that was.
    last: std::collections::HashMap<String, Last>,
    last_time: u64,
    resource: Resource,
    tx: tokio::sync::watch::Sender<u64>,
    queue: std::sync::Arc<std::sync::Mutex<VecDeque<(u64, ExportMetricsServiceRequest)>>>,
    /// Whether the last export was accepted (for /readyz).
    delivering: std::sync::Arc<std::sync::atomic::AtomicBool>,
}

impl Exporter {
    /// `service` names the exporter in the resource (`hostprobe`, or
    /// `hostprobe-collector`) unless OTEL_SERVICE_NAME does; `host` is its
    /// `host.name`.
    pub fn start(
        args: &OtlpArgs,
        client: &crate::grpc::ClientArgs,
        url: String,
        service: &str,
        host: &str,
    ) -> anyhow::Result<Self> {
        if url.starts_with("http://") && !client.plaintext {
            anyhow::bail!("--otlp-endpoint {url} is plaintext (http://): use https://, or add --plaintext");
        }
        let resource = resource(service, host);
        let mut headers = MetadataMap::new();
        for (k, v) in &args.otlp_headers {
            let key: tonic::metadata::MetadataKey<tonic::metadata::Ascii> =
                k.parse().map_err(|_| anyhow::anyhow!("--otlp-header {k}: not a valid header name"))?;
            headers.insert(
                key,
                v.parse().map_err(|_| anyhow::anyhow!("--otlp-header {k}: the value must be printable ASCII"))?,
            );
        }
        let (tx, rx) = tokio::sync::watch::channel(0u64);
        let queue = std::sync::Arc::new(std::sync::Mutex::new(VecDeque::new()));
        let mut client = client.clone();
        if args.otlp_ca_file.is_some() {
            client.ca_file = args.otlp_ca_file.clone();
        }
        let delivering = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        tokio::spawn(sender(url, client, headers, queue.clone(), rx, delivering.clone()));
        Ok(Self {
            delivering,
            temporality: args.otlp_temporality,
            buckets: args.otlp_buckets,
            last: Default::default(),
            last_time: crate::metrics::now_unix_ns() as u64,
            resource,
            tx,
            queue,
        })
    }

    /// True while the last export was accepted (for /readyz).
    pub fn delivering(&self) -> std::sync::Arc<std::sync::atomic::AtomicBool> {
        self.delivering.clone()
    }

    /// Builds this interval's request and hands it to the sender: one
    /// resource per process group (its process, container and Kubernetes
    /// attributes), one for the agent's own figures.
    pub fn export(&mut self, m: &Metrics, time_unix_ns: i64) {
        let time = time_unix_ns as u64;
        let c = catalog::catalog(m);
        let resources: Vec<Vec<KeyValue>> = c
            .groups
            .iter()
            .map(|g| {
                let mut attrs = self.resource.attributes.clone();
                for kv in string_attrs(&g.resource) {
                    match attrs.iter_mut().find(|a| a.key == kv.key) {
                        Some(a) => *a = kv,
                        None => attrs.push(kv),
                    }
                }
                attrs
            })
            .collect();
        let temporality = match self.temporality {
            Temporality::Cumulative => AggregationTemporality::Cumulative,
            Temporality::Delta => AggregationTemporality::Delta,
        } as i32;
        // Metrics per resource: the groups', then the agent's.
        let mut per: Vec<Vec<Metric>> = vec![Vec::new(); c.groups.len() + 1];
        let mut last = std::collections::HashMap::new();
        for f in &c.families {
            let mut points: Vec<Vec<(&catalog::Series, u64)>> = vec![Vec::new(); c.groups.len() + 1];
            for series in &f.series {
                let (r, start) = match series.group {
                    Some(g) => (g, c.groups[g].start_unix_ns),
                    None => (c.groups.len(), m.start_unix_ns),
                };
                points[r].push((series, start as u64));
            }
            for (r, points) in points.into_iter().enumerate().filter(|(_, p)| !p.is_empty()) {
                let resource_key = resources.get(r).map(|a| format!("{a:?}")).unwrap_or_default();
                let mut sums = Vec::new();
                let mut gauges = Vec::new();
                let mut hists = Vec::new();
                for (series, group_start) in points {
                    let attributes = string_attrs(&series.attrs);
                    let (value, start) = if f.kind != Kind::Gauge && self.temporality == Temporality::Delta {
                        let key = format!("{}|{resource_key}|{:?}", f.name, series.attrs);
                        let seen = self.last.get(&key);
                        // A series new since the last export starts at its own start.
                        let start = if seen.is_some() { self.last_time } else { group_start.max(self.last_time) };
                        let (d, now) = delta(&series.value, seen);
                        last.insert(key, now);
                        (d, start)
                    } else {
                        (delta(&series.value, None).0, group_start)
                    };
                    match value {
                        Last::Hist(h, sum_ns) => {
                            let (explicit_bounds, bucket_counts) = buckets(&h, self.buckets);
                            let known = matches!(series.value, Value::Hist(c) if !c.sum_unknown);
                            hists.push(HistogramDataPoint {
                                attributes,
                                start_time_unix_nano: start,
                                time_unix_nano: time,
                                count: h.count(),
                                // Absent where not known: OTLP's sum is optional.
                                sum: known.then(|| sum_ns as f64 / 1e9),
                                bucket_counts,
                                explicit_bounds,
                                ..Default::default()
                            });
                        }
                        v => {
                            let value = Some(match v {
                                Last::Float(x) => number_data_point::Value::AsDouble(x),
                                Last::Int(x) => number_data_point::Value::AsInt(x as i64),
                                Last::Hist(..) => unreachable!(),
                            });
                            let point = NumberDataPoint {
                                attributes,
                                start_time_unix_nano: start,
                                time_unix_nano: time,
                                value,
                                ..Default::default()
                            };
                            if f.kind == Kind::Gauge {
                                gauges.push(NumberDataPoint { start_time_unix_nano: 0, ..point });
                            } else {
                                sums.push(point);
                            }
                        }
                    }
                }
                let data = match f.kind {
                    Kind::Counter => {
                        Data::Sum(Sum { data_points: sums, aggregation_temporality: temporality, is_monotonic: true })
                    }
                    Kind::Gauge => Data::Gauge(Gauge { data_points: gauges }),
                    Kind::Histogram => {
                        Data::Histogram(OtlpHistogram { data_points: hists, aggregation_temporality: temporality })
                    }
                };
                per[r].push(Metric {
                    name: f.name.into(),
                    unit: f.unit.into(),
                    description: f.help.into(),
                    data: Some(data),
                    ..Default::default()
                });
            }
        }
        self.last = last;
        self.last_time = time;
        let scope = InstrumentationScope {
            name: "hostprobe".into(),
            version: env!("CARGO_PKG_VERSION").into(),
            ..Default::default()
        };
        let resource_metrics = per
            .into_iter()
            .enumerate()
            .filter(|(_, metrics)| !metrics.is_empty())
            .map(|(r, metrics)| ResourceMetrics {
                resource: Some(match resources.get(r) {
                    Some(attributes) => Resource { attributes: attributes.clone(), ..Default::default() },
                    None => self.resource.clone(),
                }),
                scope_metrics: vec![ScopeMetrics { scope: Some(scope.clone()), metrics, ..Default::default() }],
                ..Default::default()
            })
            .collect();
        let request = ExportMetricsServiceRequest { resource_metrics };
        let mut q = self.queue.lock().unwrap_or_else(|p| p.into_inner());
        match self.temporality {
            // The latest cumulative state says everything the older ones did.
            Temporality::Cumulative => q.clear(),
            Temporality::Delta => {
                while q.len() >= DELTA_QUEUE {
                    q.pop_front();
                    log::warn!("OTLP: the endpoint has been failing too long; dropped the oldest delta export");
                }
            }
        }
        // Numbered by the export count, so the sender removes only what it
        // sent, not a newer state queued while it waited for the answer.
        let n = *self.tx.borrow() + 1;
        q.push_back((n, request));
        drop(q);
        self.tx.send_modify(|c| *c = n);
    }
}

impl Exporter {
    /// Waits up to `limit` for the last export to be accepted (at exit).
    pub async fn flush(&self, limit: Duration) {
        let end = tokio::time::Instant::now() + limit;
        let left = || self.queue.lock().unwrap_or_else(|p| p.into_inner()).len();
        while left() > 0 && tokio::time::Instant::now() < end {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        if left() > 0 {
            log::warn!("OTLP: {} exports not accepted at exit", left());
        }
    }
}

/// Delta exports kept while the endpoint fails (at 1 s, 10 minutes).
const DELTA_QUEUE: usize = 600;

/// The OTLP specification's retryable codes (RESOURCE_EXHAUSTED only with
/// retry information, which servers send when they mean "later").
fn retryable(s: &tonic::Status) -> bool {
    match s.code() {
        Code::Cancelled
        | Code::DeadlineExceeded
        | Code::Aborted
        | Code::OutOfRange
        | Code::Unavailable
        | Code::DataLoss => true,
        Code::ResourceExhausted => s.metadata().get_bin("grpc-status-details-bin").is_some(),
        _ => false,
    }
}

async fn sender(
    url: String,
    client_args: crate::grpc::ClientArgs,
    headers: MetadataMap,
    queue: std::sync::Arc<std::sync::Mutex<VecDeque<(u64, ExportMetricsServiceRequest)>>>,
    mut wake: tokio::sync::watch::Receiver<u64>,
    delivering: std::sync::Arc<std::sync::atomic::AtomicBool>,
) {
    let mut client = None;
    let mut failures = 0u32;
    loop {
        let next = queue.lock().unwrap_or_else(|p| p.into_inner()).front().cloned();
        let Some((seq, request)) = next else {
            if wake.changed().await.is_err() {
                return;
            }
            continue;
        };
        if client.is_none() {
            match crate::grpc::channel(&url, &client_args).await {
                Ok(ch) => {
                    client = Some(
                        MetricsServiceClient::new(ch)
                            .send_compressed(CompressionEncoding::Gzip)
                            .accept_compressed(CompressionEncoding::Gzip),
                    )
                }
                Err(e) => {
                    delivering.store(false, std::sync::atomic::Ordering::Relaxed);
                    failures += 1;
                    backoff(&url, &format!("{e:#}"), failures).await;
                    continue;
                }
            }
        }
        let mut req = tonic::Request::new(request);
        *req.metadata_mut() = headers.clone();
        req.set_timeout(Duration::from_secs(10));
        // Connected just above; without a client, go round and connect.
        let Some(c) = client.as_mut() else { continue };
        match c.export(req).await {
            Ok(resp) => {
                if failures > 0 {
                    log::info!("OTLP {url}: export accepted again after {failures} failed attempts");
                }
                failures = 0;
                delivering.store(true, std::sync::atomic::Ordering::Relaxed);
                if let Some(p) = resp.into_inner().partial_success {
                    if p.rejected_data_points > 0 {
                        log::warn!("OTLP {url}: {} data points rejected: {}", p.rejected_data_points, p.error_message);
                    }
                }
                sent(&queue, seq);
            }
            Err(s) if retryable(&s) => {
                delivering.store(false, std::sync::atomic::Ordering::Relaxed);
                failures += 1;
                backoff(&url, &format!("{:?}: {}", s.code(), s.message()), failures).await;
            }
            Err(s) => {
                delivering.store(false, std::sync::atomic::Ordering::Relaxed);
                log::error!(
                    "OTLP {url}: export refused ({:?}: {}); dropped it (not retryable; check --otlp-header and the endpoint)",
                    s.code(),
                    s.message()
                );
                sent(&queue, seq);
            }
        }
    }
}

/// Removes export `seq` from the front of the queue, if a newer cumulative
/// state has not replaced it meanwhile.
fn sent(queue: &std::sync::Mutex<VecDeque<(u64, ExportMetricsServiceRequest)>>, seq: u64) {
    let mut q = queue.lock().unwrap_or_else(|p| p.into_inner());
    if q.front().is_some_and(|(n, _)| *n == seq) {
        q.pop_front();
    }
}

async fn backoff(url: &str, why: &str, failures: u32) {
    let delay = crate::grpc::backoff(failures);
    log::warn!("OTLP {url}: export failed ({why}); retrying in {delay:.1?}");
    tokio::time::sleep(delay).await;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn resource_attributes_follow_the_specification() {
        let pairs = parse_resource_attributes("k8s.node.name=n1, deployment.environment=prod%2Ceu ,").unwrap();
        assert_eq!(pairs, [("k8s.node.name".into(), "n1".into()), ("deployment.environment".into(), "prod,eu".into())]);
        assert!(parse_resource_attributes("a=1,novalue").unwrap_err().contains("novalue"));
        assert!(parse_resource_attributes("a=%zz").is_err());
    }

    /// An exporter whose requests stay in its queue (no sender runs).
    fn exporter(temporality: Temporality) -> Exporter {
        Exporter {
            temporality,
            buckets: Buckets::Octave,
            last: Default::default(),
            last_time: 0,
            delivering: Default::default(),
            resource: Resource::default(),
            tx: tokio::sync::watch::channel(0u64).0,
            queue: Default::default(),
        }
    }

    fn points<'a>(r: &'a ExportMetricsServiceRequest, name: &str) -> Vec<&'a Data> {
        r.resource_metrics
            .iter()
            .flat_map(|rm| &rm.scope_metrics[0].metrics)
            .filter(|m| m.name == name)
            .filter_map(|m| m.data.as_ref())
            .collect()
    }

    /// The `process.executable.name` of each resource that has metric `name`.
    fn processes_with<'a>(r: &'a ExportMetricsServiceRequest, name: &str) -> Vec<&'a str> {
        r.resource_metrics
            .iter()
            .filter(|rm| rm.scope_metrics[0].metrics.iter().any(|m| m.name == name))
            .flat_map(|rm| &rm.resource.as_ref().unwrap().attributes)
            .filter(|a| a.key == "process.executable.name")
            .filter_map(|a| match a.value.as_ref()?.value.as_ref()? {
                any_value::Value::StringValue(s) => Some(s.as_str()),
                _ => None,
            })
            .collect()
    }

    fn int_total(r: &ExportMetricsServiceRequest, name: &str) -> i64 {
        points(r, name)
            .into_iter()
            .flat_map(|d| match d {
                Data::Sum(s) => s.data_points.iter().collect::<Vec<_>>(),
                _ => Vec::new(),
            })
            .map(|p| match p.value {
                Some(number_data_point::Value::AsInt(v)) => v,
                _ => 0,
            })
            .sum()
    }

    fn hist_points<'a>(r: &'a ExportMetricsServiceRequest, name: &str) -> Vec<&'a HistogramDataPoint> {
        points(r, name)
            .into_iter()
            .flat_map(|d| match d {
                Data::Histogram(h) => h.data_points.iter().collect::<Vec<_>>(),
                _ => Vec::new(),
            })
            .collect()
    }

    #[test]
    fn other_unknown_owner_and_exact_sums_are_exported() {
        let mut m = Metrics::new(2);
        m.add(&crate::report::tests::sample());
        for temporality in [Temporality::Cumulative, Temporality::Delta] {
            let mut e = exporter(temporality);
            e.export(&m, 2_000_000_000);
            let q = e.queue.lock().unwrap();
            let r = &q.back().unwrap().1;
            assert_eq!(int_total(r, "hostprobe.disk.io"), 4096 * 55, "{temporality:?}");
            assert_eq!(int_total(r, "hostprobe.tcp.io"), 55_000 + 27_500);
            let disk = hist_points(r, "hostprobe.disk.io.duration");
            let sum: u64 = (1..=10u64).map(|k| 51_000 * k * k).sum();
            let got: f64 = disk.iter().map(|p| p.sum.unwrap()).sum();
            assert!((got - sum as f64 / 1e9).abs() < 1e-12, "exact disk latency sum: {got}");
            let rtt = hist_points(r, "hostprobe.tcp.rtt");
            // Eleven connections (ten processes' and the unknown owner's), each
            // three RTT samples of 40 us.
            let got: f64 = rtt.iter().map(|p| p.sum.unwrap_or(f64::NAN)).sum();
            assert!((got - 11.0 * 120_000.0 / 1e9).abs() < 1e-12, "exact RTT sum: {got}");
            let owners = processes_with(r, "hostprobe.tcp.io");
            for d in hist_points(r, "hostprobe.syscall.duration") {
                assert_eq!((d.explicit_bounds.len(), d.bucket_counts.len()), (33, 34), "octave buckets");
                assert_eq!(d.bucket_counts.iter().sum::<u64>(), d.count);
            }
            assert!(owners.contains(&crate::metrics::UNKNOWN_OWNER), "{owners:?}");
            assert!(owners.contains(&"other"), "{owners:?}");
        }
    }
}

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
        metric::Data, number_data_point, AggregationTemporality, Histogram as OtlpHistogram, HistogramDataPoint,
        Metric, NumberDataPoint, ResourceMetrics, ScopeMetrics, Sum,
    },
    resource::v1::Resource,
};
use tonic::{codec::CompressionEncoding, metadata::MetadataMap, Code};

use crate::metrics::{CumHist, Group, GroupKey, Metrics};

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum, Default)]
pub enum Temporality {
    #[default]
    Cumulative,
    Delta,
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

/// A group's attributes, after the semantic conventions.
fn attributes(k: &GroupKey, g: &Group) -> Vec<KeyValue> {
    let mut a = vec![s("process.executable.name", &k.process)];
    if !k.host.is_empty() {
        a.push(s("host.name", &k.host));
    }
    if !g.exe.is_empty() {
        a.push(s("process.executable.path", &g.exe));
    }
    if let Some(pid) = g.pid {
        a.push(kv("process.pid", any_value::Value::IntValue(i64::from(pid))));
    }
    if !k.container_id.is_empty() {
        a.push(s("container.id", &k.container_id));
    }
    if let Some(uid) = &g.pod_uid {
        a.push(s("k8s.pod.uid", uid));
    }
    if let Some(c) = &g.cmdline {
        a.push(s("process.command_line", c));
    }
    a
}

/// Our layout's bucket edges in seconds: OTLP's explicit bounds.
fn bounds() -> Vec<f64> {
    (0..agent_common::hist::BUCKETS - 1).map(|b| agent_common::hist::upper_bound(b) as f64 / 1e9).collect()
}

/// What one export says: per metric, data points.
struct Builder {
    temporality: Temporality,
    time: u64,
    sums: Vec<(&'static str, &'static str, &'static str, Vec<NumberDataPoint>)>,
    hists: Vec<(&'static str, &'static str, Vec<HistogramDataPoint>)>,
}

impl Builder {
    fn sum(
        &mut self,
        name: &'static str,
        unit: &'static str,
        help: &'static str,
        attrs: Vec<KeyValue>,
        start: u64,
        v: u64,
    ) {
        self.sum_value(name, unit, help, attrs, start, number_data_point::Value::AsInt(v as i64));
    }

    fn sum_value(
        &mut self,
        name: &'static str,
        unit: &'static str,
        help: &'static str,
        attrs: Vec<KeyValue>,
        start: u64,
        value: number_data_point::Value,
    ) {
        let point = NumberDataPoint {
            attributes: attrs,
            start_time_unix_nano: start,
            time_unix_nano: self.time,
            value: Some(value),
            ..Default::default()
        };
        match self.sums.iter_mut().find(|m| m.0 == name) {
            Some(m) => m.3.push(point),
            None => self.sums.push((name, unit, help, vec![point])),
        }
    }

    fn hist(&mut self, name: &'static str, help: &'static str, attrs: Vec<KeyValue>, start: u64, h: &CumHist) {
        if h.hist.count() == 0 {
            return;
        }
        let point = HistogramDataPoint {
            attributes: attrs,
            start_time_unix_nano: start,
            time_unix_nano: self.time,
            count: h.hist.count(),
            // Absent where not known (TCP RTT): OTLP's sum is optional.
            sum: h.sum_seconds(),
            bucket_counts: h.hist.buckets().to_vec(),
            explicit_bounds: bounds(),
            ..Default::default()
        };
        match self.hists.iter_mut().find(|m| m.0 == name) {
            Some(m) => m.2.push(point),
            None => self.hists.push((name, help, vec![point])),
        }
    }

    fn metrics(self) -> Vec<Metric> {
        let t = match self.temporality {
            Temporality::Cumulative => AggregationTemporality::Cumulative,
            Temporality::Delta => AggregationTemporality::Delta,
        } as i32;
        let mut out: Vec<Metric> = self
            .sums
            .into_iter()
            .map(|(name, unit, help, points)| Metric {
                name: name.into(),
                unit: unit.into(),
                description: help.into(),
                data: Some(Data::Sum(Sum { data_points: points, aggregation_temporality: t, is_monotonic: true })),
                ..Default::default()
            })
            .collect();
        out.extend(self.hists.into_iter().map(|(name, help, points)| Metric {
            name: name.into(),
            unit: "s".into(),
            description: help.into(),
            data: Some(Data::Histogram(OtlpHistogram { data_points: points, aggregation_temporality: t })),
            ..Default::default()
        }));
        out
    }
}

/// `now` less `before` for every counter and bucket (delta temporality).
fn minus(now: &Group, before: Option<&Group>) -> Group {
    let Some(b) = before else { return now.clone() };
    let mut d = now.clone();
    for (name, v) in d.syscalls.iter_mut() {
        if let Some(p) = b.syscalls.get(name) {
            v.0 -= p.0.min(v.0);
            v.1 -= p.1.min(v.1);
        }
    }
    let sub = |a: &mut CumHist, p: &CumHist| {
        let mut h = crate::hist::Histogram::default();
        for (i, (x, y)) in a.hist.buckets().iter().zip(p.hist.buckets().iter()).enumerate() {
            let _ = h.add(i, x - y.min(x));
        }
        a.hist = h;
        a.sum_ns = a.sum_ns.saturating_sub(p.sum_ns);
    };
    sub(&mut d.syscall_latency, &b.syscall_latency);
    sub(&mut d.tcp_rtt, &b.tcp_rtt);
    for (k, v) in d.disk.iter_mut() {
        if let Some(p) = b.disk.get(k) {
            v.count -= p.count.min(v.count);
            v.bytes -= p.bytes.min(v.bytes);
            v.errors -= p.errors.min(v.errors);
            sub(&mut v.latency, &p.latency);
        }
    }
    d.on_cpu_ns -= b.on_cpu_ns.min(d.on_cpu_ns);
    d.runqueue_ns -= b.runqueue_ns.min(d.runqueue_ns);
    d.blocked_io_ns -= b.blocked_io_ns.min(d.blocked_io_ns);
    d.sleep_ns -= b.sleep_ns.min(d.sleep_ns);
    d.tcp_bytes_sent -= b.tcp_bytes_sent.min(d.tcp_bytes_sent);
    d.tcp_bytes_received -= b.tcp_bytes_received.min(d.tcp_bytes_received);
    d.tcp_retransmits -= b.tcp_retransmits.min(d.tcp_retransmits);
    d.tcp_connections -= b.tcp_connections.min(d.tcp_connections);
    d
}

/// The export request for the metrics' current state.
pub struct Exporter {
    temporality: Temporality,
    /// Delta: each group as of the last export, and when that was.
    last: std::collections::BTreeMap<GroupKey, Group>,
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
        client: &crate::export::ClientArgs,
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

    /// Builds this interval's request and hands it to the sender.
    pub fn export(&mut self, m: &Metrics, time_unix_ns: i64) {
        let time = time_unix_ns as u64;
        let mut b = Builder { temporality: self.temporality, time, sums: Vec::new(), hists: Vec::new() };
        for (k, g) in m.all() {
            let (g, start) = match self.temporality {
                Temporality::Cumulative => (g.clone(), g.start_unix_ns as u64),
                Temporality::Delta => {
                    let d = minus(g, self.last.get(&k));
                    // A group new since the last export starts at its own start.
                    let start = if self.last.contains_key(&k) {
                        self.last_time
                    } else {
                        (g.start_unix_ns as u64).max(self.last_time)
                    };
                    self.last.insert(k.clone(), g.clone());
                    (d, start)
                }
            };
            let a = attributes(&k, &g);
            for (name, (calls, errors)) in &g.syscalls {
                let mut attrs = a.clone();
                attrs.push(s("hostprobe.syscall", name));
                b.sum("hostprobe.syscalls", "{call}", "Syscalls completed.", attrs.clone(), start, *calls);
                b.sum("hostprobe.syscall.errors", "{call}", "Syscalls that returned an error.", attrs, start, *errors);
            }
            b.hist(
                "hostprobe.syscall.duration",
                "Syscall latency, all syscalls of the process.",
                a.clone(),
                start,
                &g.syscall_latency,
            );
            for ((dev, op), d) in &g.disk {
                let mut attrs = a.clone();
                attrs.push(s("disk.io.direction", op));
                attrs.push(s("system.device", dev));
                b.sum(
                    "hostprobe.disk.ios",
                    "{request}",
                    "Block I/O requests completed.",
                    attrs.clone(),
                    start,
                    d.count,
                );
                b.sum("hostprobe.disk.io", "By", "Bytes of block I/O completed.", attrs.clone(), start, d.bytes);
                b.hist(
                    "hostprobe.disk.io.duration",
                    "Block I/O latency, queued to completed.",
                    attrs,
                    start,
                    &d.latency,
                );
            }
            if g.on_cpu_ns + g.runqueue_ns + g.blocked_io_ns + g.sleep_ns > 0 {
                for (state, ns) in [
                    ("on_cpu", g.on_cpu_ns),
                    ("runqueue", g.runqueue_ns),
                    ("blocked_io", g.blocked_io_ns),
                    ("sleep", g.sleep_ns),
                ] {
                    let mut attrs = a.clone();
                    attrs.push(s("hostprobe.thread.state", state));
                    let secs = number_data_point::Value::AsDouble(ns as f64 / 1e9);
                    b.sum_value("hostprobe.thread.time", "s", "Thread time by state.", attrs, start, secs);
                }
            }
            if g.tcp_bytes_sent + g.tcp_bytes_received + g.tcp_connections > 0 {
                let mut sent = a.clone();
                sent.push(s("network.io.direction", "transmit"));
                let mut recv = a.clone();
                recv.push(s("network.io.direction", "receive"));
                b.sum("hostprobe.tcp.io", "By", "TCP bytes.", sent, start, g.tcp_bytes_sent);
                b.sum("hostprobe.tcp.io", "By", "TCP bytes.", recv, start, g.tcp_bytes_received);
                b.sum(
                    "hostprobe.tcp.retransmits",
                    "{segment}",
                    "TCP segments retransmitted.",
                    a.clone(),
                    start,
                    g.tcp_retransmits,
                );
            }
            b.hist("hostprobe.tcp.rtt", "TCP smoothed RTT samples.", a, start, &g.tcp_rtt);
        }
        self.last_time = time;
        let request = ExportMetricsServiceRequest {
            resource_metrics: vec![ResourceMetrics {
                resource: Some(self.resource.clone()),
                scope_metrics: vec![ScopeMetrics {
                    scope: Some(InstrumentationScope {
                        name: "hostprobe".into(),
                        version: env!("CARGO_PKG_VERSION").into(),
                        ..Default::default()
                    }),
                    metrics: b.metrics(),
                    ..Default::default()
                }],
                ..Default::default()
            }],
        };
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
    client_args: crate::export::ClientArgs,
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
            match crate::export::channel(&url, &client_args).await {
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
    let base = Duration::from_millis(250).saturating_mul(1 << failures.min(7)).min(Duration::from_secs(30));
    let delay = base.mul_f64(0.5 + fastrand::f64() * 0.5);
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
            last: Default::default(),
            last_time: 0,
            delivering: Default::default(),
            resource: Resource::default(),
            tx: tokio::sync::watch::channel(0u64).0,
            queue: Default::default(),
        }
    }

    fn points<'a>(r: &'a ExportMetricsServiceRequest, name: &str) -> Vec<&'a Data> {
        r.resource_metrics[0].scope_metrics[0]
            .metrics
            .iter()
            .filter(|m| m.name == name)
            .filter_map(|m| m.data.as_ref())
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
        m.add(&crate::metrics::tests::report());
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
            let owners: Vec<&str> = points(r, "hostprobe.tcp.io")
                .into_iter()
                .flat_map(|d| match d {
                    Data::Sum(s) => s.data_points.iter().collect::<Vec<_>>(),
                    _ => Vec::new(),
                })
                .flat_map(|p| &p.attributes)
                .filter(|a| a.key == "process.executable.name")
                .filter_map(|a| match a.value.as_ref()?.value.as_ref()? {
                    any_value::Value::StringValue(s) => Some(s.as_str()),
                    _ => None,
                })
                .collect();
            assert!(owners.contains(&crate::metrics::UNKNOWN_OWNER), "{owners:?}");
            assert!(owners.contains(&"other"), "{owners:?}");
        }
    }
}

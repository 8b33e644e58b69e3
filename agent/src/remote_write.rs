//! `hostprobe collector --remote-write URL`: the fleet's metrics pushed to
//! a Prometheus remote-write endpoint (Prometheus with
//! `--web.enable-remote-write-receiver`, Mimir, Cortex, Thanos Receive,
//! VictoriaMetrics) every `--remote-write-interval`, so that their history
//! lives in an engine made to keep it.
//!
//! One source of truth: a push is the very exposition `GET /metrics` would
//! serve at that moment ([`crate::prom::exposition`]), parsed back into
//! samples: the same names, labels and classic `le` buckets, with
//! `__name__` added, labels sorted by name and the push time as timestamp.
//! A series that was in the last push and is gone (an evicted process
//! group) gets a staleness marker, as a scrape would give it.
//!
//! Protocol 1.0: a protobuf `prometheus.WriteRequest` (the few messages of
//! Prometheus' `prompb` it needs are in [`pb`]), snappy block compressed,
//! POSTed over HTTP/1.1 (hyper), TLS by rustls for https://. Pushes never
//! wait on the endpoint: they go into a queue bounded in bytes, whose
//! oldest batches are dropped (and counted) when the endpoint has been down
//! too long; one sender delivers them in order, retrying 5xx, 429 and
//! connection failures with [`crate::grpc::backoff`], and dropping (counted,
//! logged once with what the endpoint said) a batch any other 4xx refuses:
//! sending it again would be refused again.

use std::{
    collections::{HashSet, VecDeque},
    path::{Path, PathBuf},
    sync::{
        atomic::{AtomicBool, AtomicU64, Ordering::Relaxed},
        Arc, Mutex,
    },
    time::Duration,
};

use anyhow::{bail, Context as _};
use bytes::Bytes;
use http_body_util::{BodyExt as _, Full, Limited};
use hyper::{
    header::{HeaderName, HeaderValue},
    StatusCode,
};
use prost::Message as _;

use crate::metrics::Metrics;

#[derive(Debug, Clone, clap::Args, Default)]
#[command(next_help_heading = "Prometheus remote write")]
pub struct RemoteWriteArgs {
    /// Push the fleet's metrics (the series of /metrics) to this Prometheus
    /// remote-write URL every --remote-write-interval, e.g.
    /// http://prometheus:9090/api/v1/write (Prometheus with
    /// --web.enable-remote-write-receiver), Mimir's /api/v1/push,
    /// VictoriaMetrics' /api/v1/write.
    #[arg(long, value_name = "URL")]
    pub remote_write: Option<String>,
    /// How often to push: each push is one sample of every series.
    #[arg(long, default_value = "15s", value_parser = crate::units::parse_duration, value_name = "DURATION", requires = "remote_write")]
    pub remote_write_interval: Duration,
    /// File holding a bearer token, sent as `Authorization: Bearer ...`.
    #[arg(long, value_name = "FILE", requires = "remote_write", conflicts_with = "remote_write_username")]
    pub remote_write_token_file: Option<PathBuf>,
    /// Basic auth user name; with --remote-write-password-file.
    #[arg(long, value_name = "USER", requires_all = ["remote_write", "remote_write_password_file"])]
    pub remote_write_username: Option<String>,
    /// File holding the basic auth password of --remote-write-username.
    #[arg(long, value_name = "FILE", requires = "remote_write_username")]
    pub remote_write_password_file: Option<PathBuf>,
    /// Header sent with every push, e.g. `X-Scope-OrgID=fleet` (the tenant,
    /// for Mimir and Cortex); repeatable.
    #[arg(long = "remote-write-header", value_name = "NAME=VALUE", value_parser = parse_header, requires = "remote_write")]
    pub remote_write_headers: Vec<(HeaderName, HeaderValue)>,
    /// CA certificate(s) (PEM) to verify an https:// endpoint with, instead
    /// of the system's roots.
    #[arg(long, value_name = "FILE", requires = "remote_write")]
    pub remote_write_ca_file: Option<PathBuf>,
}

fn parse_header(s: &str) -> Result<(HeaderName, HeaderValue), String> {
    let (k, v) = s.split_once('=').ok_or_else(|| format!("{s:?}: expected NAME=VALUE"))?;
    let name = HeaderName::from_bytes(k.trim().as_bytes()).map_err(|_| format!("{k:?} is not a valid header name"))?;
    let value = HeaderValue::from_str(v.trim()).map_err(|_| format!("the value of {k} must be printable ASCII"))?;
    Ok((name, value))
}

/// Where pushes go, and how: checked when the collector starts.
pub struct Config {
    /// The URL as given, for messages.
    url: String,
    host: String,
    port: u16,
    /// The `Host` header.
    authority: String,
    /// Path and query.
    path: String,
    /// For https://: the connector and the name the certificate must carry.
    tls: Option<(tokio_rustls::TlsConnector, tokio_rustls::rustls::pki_types::ServerName<'static>)>,
    /// Authorization and --remote-write-header.
    headers: Vec<(HeaderName, HeaderValue)>,
    interval: Duration,
}

const EXAMPLE: &str = "e.g. --remote-write http://prometheus:9090/api/v1/write";

impl RemoteWriteArgs {
    /// The checked configuration, if --remote-write is set: a bad URL, an
    /// unreadable credential or CA file is an error here, at start.
    pub fn config(&self) -> anyhow::Result<Option<Config>> {
        let Some(url) = self.remote_write.as_deref() else { return Ok(None) };
        let bad = |why: &str| anyhow::anyhow!("--remote-write {url:?}: {why} ({EXAMPLE})");
        let uri: hyper::Uri = url.parse().map_err(|e| bad(&format!("expected an http:// or https:// URL ({e})")))?;
        let tls = match uri.scheme_str() {
            Some("https") => true,
            Some("http") => false,
            _ => return Err(bad("expected an http:// or https:// URL")),
        };
        let authority = uri.authority().ok_or_else(|| bad("no host"))?;
        if authority.as_str().contains('@') {
            return Err(bad(
                "credentials in the URL are not sent; use --remote-write-username and --remote-write-password-file",
            ));
        }
        let host = authority.host().trim_start_matches('[').trim_end_matches(']').to_string();
        if host.is_empty() {
            return Err(bad("no host"));
        }
        let path = uri.path_and_query().map(|p| p.as_str()).unwrap_or("");
        if path.is_empty() || path == "/" {
            return Err(bad("no path: give the endpoint's write path, /api/v1/write on Prometheus"));
        }
        let mut headers = Vec::new();
        let read = |flag: &str, f: &Path| -> anyhow::Result<String> {
            let s = std::fs::read_to_string(f).with_context(|| format!("{flag} {}: cannot read it", f.display()))?;
            let s = s.trim().to_string();
            if s.is_empty() {
                bail!("{flag} {}: the file is empty", f.display());
            }
            Ok(s)
        };
        if let Some(f) = &self.remote_write_token_file {
            let token = read("--remote-write-token-file", f)?;
            let mut v = HeaderValue::from_str(&format!("Bearer {token}"))
                .context("--remote-write-token-file: the token must be printable ASCII")?;
            v.set_sensitive(true);
            headers.push((hyper::header::AUTHORIZATION, v));
        }
        if let (Some(user), Some(f)) = (&self.remote_write_username, &self.remote_write_password_file) {
            use base64::Engine as _;
            let password = read("--remote-write-password-file", f)?;
            let encoded = base64::engine::general_purpose::STANDARD.encode(format!("{user}:{password}"));
            let mut v = HeaderValue::from_str(&format!("Basic {encoded}")).context("basic auth header")?;
            v.set_sensitive(true);
            headers.push((hyper::header::AUTHORIZATION, v));
        }
        headers.extend(self.remote_write_headers.iter().cloned());
        let tls = match tls {
            true => {
                let name = tokio_rustls::rustls::pki_types::ServerName::try_from(host.clone())
                    .map_err(|_| bad("the host is not a valid TLS server name"))?;
                Some((connector(self.remote_write_ca_file.as_deref())?, name))
            }
            false => {
                if self.remote_write_ca_file.is_some() {
                    return Err(bad("--remote-write-ca-file is for https:// URLs"));
                }
                None
            }
        };
        Ok(Some(Config {
            url: url.to_string(),
            port: authority.port_u16().unwrap_or(if tls.is_some() { 443 } else { 80 }),
            host,
            authority: authority.as_str().to_string(),
            path: path.to_string(),
            tls,
            headers,
            interval: self.remote_write_interval,
        }))
    }
}

/// The system's CA bundle: $SSL_CERT_FILE, else where distributions keep it.
fn system_roots() -> Option<PathBuf> {
    let env = std::env::var_os("SSL_CERT_FILE").map(PathBuf::from);
    let known = [
        "/etc/ssl/certs/ca-certificates.crt",
        "/etc/pki/tls/certs/ca-bundle.crt",
        "/etc/ssl/ca-bundle.pem",
        "/etc/ssl/cert.pem",
    ];
    env.into_iter().chain(known.iter().map(PathBuf::from)).find(|p| p.is_file())
}

fn connector(ca_file: Option<&Path>) -> anyhow::Result<tokio_rustls::TlsConnector> {
    use tokio_rustls::rustls::{
        self,
        pki_types::{pem::PemObject as _, CertificateDer},
    };
    let (path, what) = match ca_file {
        Some(p) => (p.to_path_buf(), "--remote-write-ca-file"),
        None => (
            system_roots()
                .context("no system CA bundle found for the https:// endpoint: give --remote-write-ca-file")?,
            "the system CA bundle",
        ),
    };
    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(&path)
        .and_then(|i| i.collect::<Result<_, _>>())
        .with_context(|| format!("{what} {}: cannot read certificates (PEM) from it", path.display()))?;
    let mut roots = rustls::RootCertStore::empty();
    let (added, _) = roots.add_parsable_certificates(certs);
    if added == 0 {
        bail!("{what} {}: no usable CA certificate in it", path.display());
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .context("TLS versions")?
        .with_root_certificates(roots)
        .with_no_client_auth();
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(tokio_rustls::TlsConnector::from(Arc::new(config)))
}

/// The messages of Prometheus' `prompb/remote.proto` and `prompb/types.proto`
/// that protocol 1.0 uses, with their field numbers.
pub mod pb {
    #[derive(Clone, PartialEq, prost::Message)]
    pub struct WriteRequest {
        #[prost(message, repeated, tag = "1")]
        pub timeseries: Vec<TimeSeries>,
    }

    #[derive(Clone, PartialEq, prost::Message)]
    pub struct TimeSeries {
        /// Sorted by name, `__name__` among them.
        #[prost(message, repeated, tag = "1")]
        pub labels: Vec<Label>,
        #[prost(message, repeated, tag = "2")]
        pub samples: Vec<Sample>,
    }

    #[derive(Clone, PartialEq, Eq, Hash, prost::Message)]
    pub struct Label {
        #[prost(string, tag = "1")]
        pub name: String,
        #[prost(string, tag = "2")]
        pub value: String,
    }

    #[derive(Clone, PartialEq, prost::Message)]
    pub struct Sample {
        #[prost(double, tag = "1")]
        pub value: f64,
        /// Milliseconds since the Unix epoch.
        #[prost(int64, tag = "2")]
        pub timestamp: i64,
    }
}

/// Prometheus' staleness marker: a series that ended.
const STALE_NAN: u64 = 0x7ff0_0000_0000_0002;

/// Series per request: Prometheus' own default (`max_samples_per_send`),
/// well inside every receiver's size limit.
const SERIES_PER_REQUEST: usize = 2_000;

/// Compressed bytes kept while the endpoint fails; past it the oldest go.
const QUEUE_BYTES: usize = 64 << 20;

/// The samples of a text exposition: each one's labels (`__name__` with
/// them, sorted by name, empty values left out as Prometheus leaves them
/// out of a scrape) and value.
fn parse(text: &str) -> Result<Vec<(Vec<pb::Label>, f64)>, String> {
    text.lines()
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .map(|l| parse_line(l).map_err(|e| format!("{e} in {l:?}")))
        .collect()
}

fn parse_line(line: &str) -> Result<(Vec<pb::Label>, f64), String> {
    let end = line.find(['{', ' ']).ok_or("no value")?;
    let mut labels = vec![pb::Label { name: "__name__".into(), value: line[..end].into() }];
    let mut rest = &line[end..];
    if let Some(mut r) = rest.strip_prefix('{') {
        loop {
            if let Some(after) = r.strip_prefix('}') {
                rest = after;
                break;
            }
            let (name, after) = r.split_once("=\"").ok_or("a label without =\"")?;
            let mut value = String::new();
            let mut chars = after.char_indices();
            let close = loop {
                match chars.next() {
                    Some((i, '"')) => break i,
                    Some((_, '\\')) => match chars.next() {
                        Some((_, 'n')) => value.push('\n'),
                        Some((_, c)) => value.push(c),
                        None => return Err("an unterminated label value".into()),
                    },
                    Some((_, c)) => value.push(c),
                    None => return Err("an unterminated label value".into()),
                }
            };
            if !value.is_empty() {
                labels.push(pb::Label { name: name.into(), value });
            }
            r = &after[close + 1..];
            r = r.strip_prefix(',').unwrap_or(r);
        }
    }
    let value = rest.split_whitespace().next().ok_or("no value")?;
    let value = match value {
        "+Inf" => f64::INFINITY,
        "-Inf" => f64::NEG_INFINITY,
        "NaN" => f64::NAN,
        v => v.parse().map_err(|_| format!("bad value {v:?}"))?,
    };
    labels.sort_by(|a, b| a.name.cmp(&b.name));
    Ok((labels, value))
}

/// Builds pushes, remembering the last one's series for staleness markers.
#[derive(Default)]
struct Pusher {
    last: HashSet<Vec<pb::Label>>,
}

impl Pusher {
    /// The requests of one push of exposition `text` at `now_ms`.
    fn requests(&mut self, text: &str, now_ms: i64) -> Result<Vec<pb::WriteRequest>, String> {
        let samples = parse(text)?;
        let mut now = HashSet::with_capacity(samples.len());
        let mut series = Vec::with_capacity(samples.len());
        for (labels, value) in samples {
            now.insert(labels.clone());
            series.push(pb::TimeSeries { labels, samples: vec![pb::Sample { value, timestamp: now_ms }] });
        }
        for gone in self.last.difference(&now) {
            let stale = pb::Sample { value: f64::from_bits(STALE_NAN), timestamp: now_ms };
            series.push(pb::TimeSeries { labels: gone.clone(), samples: vec![stale] });
        }
        self.last = now;
        Ok(series.chunks(SERIES_PER_REQUEST).map(|c| pb::WriteRequest { timeseries: c.to_vec() }).collect())
    }
}

/// A request's body: protobuf, snappy block compressed.
fn encode(request: &pb::WriteRequest) -> Result<Bytes, snap::Error> {
    Ok(snap::raw::Encoder::new().compress_vec(&request.encode_to_vec())?.into())
}

/// One request waiting to be accepted.
#[derive(Clone)]
struct Batch {
    /// Numbered, so that the sender removes what it sent, not what took
    /// its place after a drop.
    seq: u64,
    body: Bytes,
    series: usize,
}

#[derive(Default)]
struct Queue {
    batches: VecDeque<Batch>,
    bytes: usize,
    next: u64,
}

impl Queue {
    /// Adds a batch, dropping the oldest while over `limit` bytes (the
    /// newest always stays): how many went.
    fn push(&mut self, body: Bytes, series: usize, limit: usize) -> u64 {
        self.next += 1;
        self.bytes += body.len();
        self.batches.push_back(Batch { seq: self.next, body, series });
        let mut dropped = 0;
        while self.bytes > limit && self.batches.len() > 1 {
            if let Some(b) = self.batches.pop_front() {
                self.bytes -= b.body.len();
                dropped += 1;
            }
        }
        dropped
    }

    /// Removes batch `seq` if it is still at the front.
    fn done(&mut self, seq: u64) {
        if self.batches.front().is_some_and(|b| b.seq == seq) {
            if let Some(b) = self.batches.pop_front() {
                self.bytes -= b.body.len();
            }
        }
    }
}

/// Batches (requests) by fate, since start.
#[derive(Debug, Default)]
pub struct Stats {
    /// Accepted by the endpoint.
    pub sent: AtomicU64,
    /// Attempts that failed and were retried (5xx, 429, connection).
    pub retried: AtomicU64,
    /// Refused with another 4xx: dropped, not retried.
    pub rejected: AtomicU64,
    /// Dropped unsent, the queue being full.
    pub dropped: AtomicU64,
}

struct Shared {
    queue: Mutex<Queue>,
    wake: tokio::sync::Notify,
    stats: Stats,
    /// Whether the current run of queue drops has been logged.
    dropping: AtomicBool,
}

impl Shared {
    fn queue(&self) -> std::sync::MutexGuard<'_, Queue> {
        self.queue.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// The running exporter.
pub struct RemoteWrite {
    url: String,
    shared: Arc<Shared>,
}

impl RemoteWrite {
    /// Starts pushing `metrics` as `config` says: one task builds a push
    /// every interval (off the executor threads), one delivers.
    pub fn start(config: Config, metrics: Arc<Mutex<Metrics>>) -> Self {
        let shared = Arc::new(Shared {
            queue: Default::default(),
            wake: Default::default(),
            stats: Default::default(),
            dropping: AtomicBool::new(false),
        });
        log::info!("remote write to {} every {:?}", config.url, config.interval);
        let url = config.url.clone();
        let (every, pushing) = (config.interval, shared.clone());
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(every);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            tick.tick().await;
            let mut pusher = Pusher::default();
            loop {
                tick.tick().await;
                let (m, shared, to) = (metrics.clone(), pushing.clone(), url.clone());
                let mut p = std::mem::take(&mut pusher);
                match tokio::task::spawn_blocking(move || {
                    push(&mut p, &m, &shared, &to);
                    p
                })
                .await
                {
                    Ok(p) => pusher = p,
                    Err(e) => log::error!("remote write {url}: building a push failed: {e}"),
                }
                pushing.wake.notify_one();
            }
        });
        let url = config.url.clone();
        tokio::spawn(sender(config, shared.clone()));
        Self { url, shared }
    }

    /// Logs what became of the batches (at exit).
    pub fn log_totals(&self) {
        let s = &self.shared.stats;
        log::info!(
            "remote write {}: {} batches sent, {} attempts retried, {} rejected, {} dropped unsent, {} waiting",
            self.url,
            s.sent.load(Relaxed),
            s.retried.load(Relaxed),
            s.rejected.load(Relaxed),
            s.dropped.load(Relaxed),
            self.shared.queue().batches.len()
        );
    }
}

/// Renders, parses, encodes and queues one push.
fn push(pusher: &mut Pusher, metrics: &Arc<Mutex<Metrics>>, shared: &Shared, url: &str) {
    let now_ms = crate::metrics::now_unix_ns() / 1_000_000;
    let requests = crate::prom::exposition(metrics.clone())
        .map_err(|e| format!("rendering the metrics: {e}"))
        .and_then(|text| pusher.requests(&text, now_ms));
    let requests = match requests {
        Ok(r) => r,
        Err(e) => return log::error!("remote write {url}: push skipped: {e}"),
    };
    for r in requests {
        let body = match encode(&r) {
            Ok(b) => b,
            Err(e) => return log::error!("remote write {url}: push skipped: compressing: {e}"),
        };
        let dropped = shared.queue().push(body, r.timeseries.len(), QUEUE_BYTES);
        if dropped > 0 {
            let total = shared.stats.dropped.fetch_add(dropped, Relaxed) + dropped;
            if !shared.dropping.swap(true, Relaxed) {
                log::warn!(
                    "remote write {url}: the endpoint has been failing too long: dropping the oldest unsent \
                     batches to keep the queue under {} MiB ({total} dropped so far)",
                    QUEUE_BYTES >> 20
                );
            }
        }
    }
}

/// How a request failed.
enum Failure {
    /// Worth trying again; whether the connection is still usable.
    Retry(String, bool),
    /// Refused for good: the status and what the endpoint said.
    Reject(StatusCode, String),
}

/// A connection's byte stream, plain or TLS.
trait Io: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send {}
impl<T: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send> Io for T {}

type Connection = hyper::client::conn::http1::SendRequest<Full<Bytes>>;

const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);

/// An error and its causes on one line, with a hint where one helps.
fn cause(e: &(dyn std::error::Error + 'static)) -> String {
    let mut s = crate::grpc::chain(e);
    let lower = s.to_lowercase();
    if lower.contains("certificate") || lower.contains("unknownissuer") {
        s.push_str(" (TLS: give --remote-write-ca-file with the CA that signed the endpoint's certificate)");
    } else if lower.contains("refused") {
        s.push_str(" (is the endpoint up and listening there?)");
    }
    s
}

async fn connect(c: &Config) -> Result<Connection, String> {
    let tcp = tokio::time::timeout(CONNECT_TIMEOUT, tokio::net::TcpStream::connect((c.host.as_str(), c.port)))
        .await
        .map_err(|_| format!("connecting to {}:{} timed out", c.host, c.port))?
        .map_err(|e| format!("connecting to {}:{}: {}", c.host, c.port, cause(&e)))?;
    let _ = tcp.set_nodelay(true);
    let io: Box<dyn Io> = match &c.tls {
        Some((tls, name)) => Box::new(
            tokio::time::timeout(CONNECT_TIMEOUT, tls.connect(name.clone(), tcp))
                .await
                .map_err(|_| "the TLS handshake timed out".to_string())?
                .map_err(|e| format!("TLS handshake: {}", cause(&e)))?,
        ),
        None => Box::new(tcp),
    };
    let (send, conn) = hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(io))
        .await
        .map_err(|e| format!("HTTP handshake: {}", cause(&e)))?;
    tokio::spawn(async move {
        let _ = conn.await;
    });
    Ok(send)
}

/// POSTs one batch on `conn` (connecting first if there is none).
async fn post(c: &Config, conn: &mut Option<Connection>, body: Bytes) -> Result<(), Failure> {
    if conn.as_ref().is_none_or(|s| s.is_closed()) {
        *conn = Some(connect(c).await.map_err(|e| Failure::Retry(e, false))?);
    }
    let Some(send) = conn.as_mut() else { return Err(Failure::Retry("no connection".into(), false)) };
    send.ready().await.map_err(|e| Failure::Retry(cause(&e), false))?;
    let mut req = hyper::Request::post(c.path.as_str())
        .header(hyper::header::HOST, c.authority.as_str())
        .header(hyper::header::CONTENT_ENCODING, "snappy")
        .header(hyper::header::CONTENT_TYPE, "application/x-protobuf")
        .header("x-prometheus-remote-write-version", "0.1.0")
        .header(hyper::header::USER_AGENT, concat!("hostprobe/", env!("CARGO_PKG_VERSION")))
        .body(Full::new(body))
        .map_err(|e| Failure::Retry(format!("building the request: {e}"), true))?;
    for (k, v) in &c.headers {
        req.headers_mut().insert(k.clone(), v.clone());
    }
    let resp = tokio::time::timeout(REQUEST_TIMEOUT, send.send_request(req))
        .await
        .map_err(|_| Failure::Retry(format!("no answer in {REQUEST_TIMEOUT:?}"), false))?
        .map_err(|e| Failure::Retry(cause(&e), false))?;
    let status = resp.status();
    // What the endpoint says, for the log; read whole so that the
    // connection can carry the next request.
    let said = tokio::time::timeout(REQUEST_TIMEOUT, Limited::new(resp.into_body(), 64 << 10).collect()).await;
    let (said, reusable) = match said {
        Ok(Ok(b)) => (String::from_utf8_lossy(&b.to_bytes()).trim().chars().take(500).collect(), true),
        _ => (String::new(), false),
    };
    if !reusable {
        *conn = None;
    }
    if status.is_success() {
        Ok(())
    } else if status.is_server_error() || status == StatusCode::TOO_MANY_REQUESTS {
        Err(Failure::Retry(format!("HTTP {status}: {said}"), reusable))
    } else {
        Err(Failure::Reject(status, said))
    }
}

/// What to do about a refusal.
fn hint(status: StatusCode) -> &'static str {
    match status.as_u16() {
        400 => "the endpoint refused these samples (out of order, too old, or over a limit)",
        401 | 403 => "check --remote-write-token-file, or --remote-write-username and --remote-write-password-file",
        404 | 405 => {
            "is that the write path? Prometheus: /api/v1/write, started with --web.enable-remote-write-receiver; \
             Mimir and Cortex: /api/v1/push; Thanos Receive: /api/v1/receive"
        }
        413 => "the request is over the endpoint's size limit",
        415 => "the endpoint does not take remote write 1.0 (protobuf, snappy)",
        _ => "see what the endpoint said",
    }
}

/// Delivers the queue in order, forever.
async fn sender(c: Config, shared: Arc<Shared>) {
    let mut conn = None;
    let mut failures = 0u32;
    // The refusal last logged: the same again is logged at debug level only.
    let mut refused: Option<StatusCode> = None;
    loop {
        let next = shared.queue().batches.front().cloned();
        let Some(batch) = next else {
            shared.wake.notified().await;
            continue;
        };
        match post(&c, &mut conn, batch.body.clone()).await {
            Ok(()) => {
                let s = &shared.stats;
                s.sent.fetch_add(1, Relaxed);
                if failures > 0 || refused.is_some() {
                    log::info!(
                        "remote write {}: accepted again ({} attempts retried, {} batches rejected, {} dropped \
                         unsent so far)",
                        c.url,
                        s.retried.load(Relaxed),
                        s.rejected.load(Relaxed),
                        s.dropped.load(Relaxed)
                    );
                }
                failures = 0;
                refused = None;
                shared.dropping.store(false, Relaxed);
                shared.queue().done(batch.seq);
            }
            Err(Failure::Retry(why, reusable)) => {
                if !reusable {
                    conn = None;
                }
                shared.stats.retried.fetch_add(1, Relaxed);
                failures += 1;
                let delay = crate::grpc::backoff(failures);
                let waiting = shared.queue().batches.len();
                log::warn!(
                    "remote write {}: push failed ({why}); retrying in {delay:.1?} ({waiting} batches waiting)",
                    c.url
                );
                tokio::time::sleep(delay).await;
            }
            Err(Failure::Reject(status, said)) => {
                let n = shared.stats.rejected.fetch_add(1, Relaxed) + 1;
                failures = 0;
                shared.queue().done(batch.seq);
                let said = if said.is_empty() { "nothing".to_string() } else { format!("{said:?}") };
                if refused != Some(status) {
                    log::error!(
                        "remote write {}: the endpoint rejected a batch of {} series: HTTP {status}, saying {said}. \
                         {}. Not retried: that batch is dropped ({n} rejected so far; the same refusal again is \
                         logged at debug level)",
                        c.url,
                        batch.series,
                        hint(status)
                    );
                } else {
                    log::debug!("remote write {}: rejected again: HTTP {status}: {said} ({n} so far)", c.url);
                }
                refused = Some(status);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(url: &str) -> RemoteWriteArgs {
        RemoteWriteArgs {
            remote_write: Some(url.into()),
            remote_write_interval: Duration::from_secs(15),
            ..Default::default()
        }
    }

    /// The exposition line of a remote-write series, labels in its order.
    fn line(ts: &pb::TimeSeries) -> String {
        let name = ts.labels.iter().find(|l| l.name == "__name__").map(|l| l.value.clone()).unwrap_or_default();
        let labels: Vec<String> = ts
            .labels
            .iter()
            .filter(|l| l.name != "__name__")
            .map(|l| {
                let v = l.value.replace('\\', "\\\\").replace('"', "\\\"").replace('\n', "\\n");
                format!("{}=\"{v}\"", l.name)
            })
            .collect();
        let v = ts.samples[0].value;
        let value = if v == f64::INFINITY { "+Inf".to_string() } else { v.to_string() };
        format!("{name}{{{}}} {value}", labels.join(","))
    }

    /// A scrape line with its labels sorted, by plain splitting (no label
    /// value of the sample holds `",`).
    fn sorted_line(l: &str) -> String {
        let (series, value) = l.rsplit_once(' ').unwrap();
        let value: f64 = match value {
            "+Inf" => f64::INFINITY,
            v => v.parse().unwrap(),
        };
        let value = if value == f64::INFINITY { "+Inf".to_string() } else { value.to_string() };
        let (name, labels) = match series.split_once('{') {
            Some((n, rest)) => (n, rest.strip_suffix('}').unwrap()),
            None => (series, ""),
        };
        let mut labels: Vec<String> = labels
            .split("\",")
            .filter(|p| !p.is_empty())
            .map(|p| if p.ends_with('"') { p.to_string() } else { format!("{p}\"") })
            .collect();
        labels.sort();
        format!("{name}{{{}}} {value}", labels.join(","))
    }

    fn decode(body: &Bytes) -> pb::WriteRequest {
        let raw = snap::raw::Decoder::new().decompress_vec(body).unwrap();
        pb::WriteRequest::decode(raw.as_slice()).unwrap()
    }

    /// What a push of `m` puts on the wire, decoded, and the scrape of the
    /// same moment.
    fn pushed(m: Metrics) -> (Vec<pb::TimeSeries>, String) {
        let m = Arc::new(Mutex::new(m));
        let text = crate::prom::exposition(m.clone()).unwrap();
        let shared = Shared {
            queue: Default::default(),
            wake: Default::default(),
            stats: Default::default(),
            dropping: AtomicBool::new(false),
        };
        push(&mut Pusher::default(), &m, &shared, "test");
        let q = shared.queue();
        (q.batches.iter().flat_map(|b| decode(&b.body).timeseries).collect(), text)
    }

    #[test]
    fn remote_write_samples_are_the_scrapes_series() {
        let mut m = Metrics::new(2);
        m.add(&crate::report::tests::sample());
        let before = crate::metrics::now_unix_ns() / 1_000_000;
        let (series, text) = pushed(m);
        let mut want: Vec<String> =
            text.lines().filter(|l| !l.is_empty() && !l.starts_with('#')).map(sorted_line).collect();
        let mut got: Vec<String> = series.iter().map(line).collect();
        // The process-dependent figures of the agent itself move between the
        // scrape and the push.
        let moving = |l: &String| l.starts_with("hostprobe_agent_");
        want.retain(|l| !moving(l));
        got.retain(|l| !moving(l));
        want.sort();
        got.sort();
        assert!(want.len() > 100, "{text}");
        assert_eq!(got, want);
        for ts in &series {
            let names: Vec<&str> = ts.labels.iter().map(|l| l.name.as_str()).collect();
            assert!(names.windows(2).all(|w| w[0] < w[1]), "labels sorted by name: {names:?}");
            assert!(names.contains(&"__name__"));
            assert_eq!(ts.samples.len(), 1);
            assert!(ts.samples[0].timestamp >= before, "the push time");
        }
        let sum = |name: &str| -> f64 {
            series.iter().filter(|s| s.labels[0].value == name).map(|s| s.samples[0].value).sum()
        };
        // The sample report's truth, as in prom's test.
        assert_eq!(sum("hostprobe_disk_io_bytes_total"), (4096 * 55) as f64);
        let disk_sum: u64 = (1..=10u64).map(|k| 51_000 * k * k).sum();
        assert!((sum("hostprobe_disk_io_duration_seconds_sum") - disk_sum as f64 / 1e9).abs() < 1e-12);
        assert!(series.iter().any(|s| s.labels.iter().any(|l| l.name == "le" && l.value == "+Inf")));
    }

    #[test]
    fn escaped_label_values_arrive_unescaped() {
        let (labels, v) = parse_line(r#"a_total{p="x\"y\\z\nw",q="",r="1"} 3"#).unwrap();
        let pairs: Vec<(&str, &str)> = labels.iter().map(|l| (l.name.as_str(), l.value.as_str())).collect();
        assert_eq!(pairs, [("__name__", "a_total"), ("p", "x\"y\\z\nw"), ("r", "1")]);
        assert_eq!(v, 3.0);
        assert_eq!(parse_line("b +Inf").unwrap().1, f64::INFINITY);
        assert!(parse_line("c{p=\"open} 1").is_err());
    }

    #[test]
    fn a_series_gone_since_the_last_push_gets_a_staleness_marker() {
        let mut p = Pusher::default();
        p.requests("a{g=\"1\"} 1\na{g=\"2\"} 2\n", 1_000).unwrap();
        let r = p.requests("a{g=\"1\"} 3\n", 2_000).unwrap();
        let ts = &r[0].timeseries;
        assert_eq!(ts.len(), 2);
        assert_eq!(ts[1].labels[1].value, "2");
        assert_eq!(ts[1].samples[0].value.to_bits(), STALE_NAN);
        assert_eq!(ts[1].samples[0].timestamp, 2_000);
        let r = p.requests("a{g=\"1\"} 4\n", 3_000).unwrap();
        assert_eq!(r[0].timeseries.len(), 1, "marked once");
    }

    #[test]
    fn a_large_push_is_split_into_requests() {
        let text: String = (0..SERIES_PER_REQUEST + 1).map(|i| format!("a{{i=\"{i}\"}} 1\n")).collect();
        let r = Pusher::default().requests(&text, 1).unwrap();
        assert_eq!(r.iter().map(|r| r.timeseries.len()).collect::<Vec<_>>(), [SERIES_PER_REQUEST, 1]);
    }

    #[test]
    fn a_full_queue_drops_the_oldest_and_counts_them() {
        let mut q = Queue::default();
        let b = |n: usize| Bytes::from(vec![0u8; n]);
        assert_eq!(q.push(b(40), 1, 100), 0);
        assert_eq!(q.push(b(40), 1, 100), 0);
        assert_eq!(q.push(b(40), 1, 100), 1);
        assert_eq!(q.batches.iter().map(|b| b.seq).collect::<Vec<_>>(), [2, 3]);
        assert_eq!(q.bytes, 80);
        // The sender's batch was dropped meanwhile: its answer removes nothing else.
        q.done(1);
        assert_eq!(q.batches.len(), 2);
        q.done(2);
        assert_eq!((q.batches.len(), q.bytes), (1, 40));
        assert_eq!(q.push(b(500), 1, 100), 1, "the newest stays, whatever its size");
        assert_eq!(q.batches.len(), 1);
    }

    #[test]
    fn bad_urls_are_refused_at_start_naming_the_flag() {
        for (url, why) in [
            ("prometheus:9090/api/v1/write", "http:// or https://"),
            ("ftp://p/api/v1/write", "http:// or https://"),
            ("http://prometheus:9090", "no path"),
            ("http://prometheus:9090/", "no path"),
            ("http://u:p@prometheus:9090/api/v1/write", "credentials"),
            ("http:///api/v1/write", "--remote-write"),
        ] {
            let e = args(url).config().err().map(|e| format!("{e:#}")).unwrap_or_default();
            assert!(e.contains("--remote-write") && e.contains(why) && e.contains("e.g."), "{url}: {e}");
        }
        let c = args("http://[::1]:9090/api/v1/write?tenant=a").config().unwrap().unwrap();
        assert_eq!((c.host.as_str(), c.port, c.path.as_str()), ("::1", 9090, "/api/v1/write?tenant=a"));
        let c = args("https://mimir.example/api/v1/push").config().unwrap().unwrap();
        assert_eq!((c.port, c.authority.as_str()), (443, "mimir.example"));
    }

    /// A receiver that answers each request with `status` and hands back
    /// what it got: a real socket, a real client.
    async fn receiver(status: u16) -> (u16, tokio::sync::mpsc::UnboundedReceiver<(hyper::HeaderMap, Bytes)>) {
        use hyper::service::service_fn;
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
        tokio::spawn(async move {
            loop {
                let (tcp, _) = listener.accept().await.unwrap();
                let tx = tx.clone();
                tokio::spawn(async move {
                    let service = service_fn(move |req: hyper::Request<hyper::body::Incoming>| {
                        let tx = tx.clone();
                        async move {
                            let headers = req.headers().clone();
                            let body = req.into_body().collect().await.unwrap().to_bytes();
                            let _ = tx.send((headers, body));
                            hyper::Response::builder()
                                .status(status)
                                .body(Full::new(Bytes::from_static(b"said the endpoint")))
                        }
                    });
                    let io = hyper_util::rt::TokioIo::new(tcp);
                    let _ = hyper::server::conn::http1::Builder::new().serve_connection(io, service).await;
                });
            }
        });
        (port, rx)
    }

    #[tokio::test]
    async fn a_push_carries_the_protocol_headers_and_the_token_and_only_5xx_is_retried() {
        for status in [204, 400, 503] {
            let (port, mut rx) = receiver(status).await;
            let mut a = args(&format!("http://127.0.0.1:{port}/api/v1/write"));
            a.remote_write_headers = vec![parse_header("X-Scope-OrgID=fleet").unwrap()];
            let token = std::env::temp_dir().join(format!("hostprobe-rw-token-{}", std::process::id()));
            std::fs::write(&token, "s3cret\n").unwrap();
            a.remote_write_token_file = Some(token.clone());
            let c = a.config().unwrap().unwrap();
            let _ = std::fs::remove_file(&token);
            let body = encode(&Pusher::default().requests("a{g=\"1\"} 1\n", 5).unwrap()[0]).unwrap();
            let mut conn = None;
            let got = post(&c, &mut conn, body).await;
            let (h, b) = rx.recv().await.unwrap();
            assert_eq!(h["content-encoding"], "snappy");
            assert_eq!(h["content-type"], "application/x-protobuf");
            assert_eq!(h["x-prometheus-remote-write-version"], "0.1.0");
            assert!(h["user-agent"].to_str().unwrap().starts_with("hostprobe/"));
            assert_eq!(h["x-scope-orgid"], "fleet");
            assert_eq!(h["authorization"], "Bearer s3cret");
            assert_eq!(decode(&b).timeseries[0].samples[0].timestamp, 5);
            match (status, got) {
                (204, Ok(())) => {}
                (400, Err(Failure::Reject(s, said))) => {
                    assert_eq!(s, StatusCode::BAD_REQUEST);
                    assert_eq!(said, "said the endpoint");
                }
                (503, Err(Failure::Retry(why, _))) => assert!(why.contains("503"), "{why}"),
                (s, Err(Failure::Retry(why, _))) => panic!("{s}: retried: {why}"),
                (s, _) => panic!("{s}: unexpected outcome"),
            }
        }
    }
}

//! `hostprobe collector`: receives agents' report streams
//! (`proto/hostprobe/v1`), deduplicates them by (agent, epoch, sequence),
//! keeps a recent window per agent, stored encoded, bounded in time and in
//! total memory (and, with `--data-dir`, a journal it replays at start), and answers fleet queries with histograms
//! merged exactly across hosts. `hostprobe query` is its client.
//!
//! Defences, each refused with a clear gRPC status and logged, without
//! disturbing other agents: bearer token and (m)TLS, a message size limit,
//! malformed protobuf, reports from the future or far past, a per-agent
//! rate limit, a cap on the number of agents, and a cap on the memory the
//! windows take (the oldest reports go first).

use std::{
    collections::{HashMap, VecDeque},
    io::Write as _,
    net::SocketAddr,
    path::{Path, PathBuf},
    pin::Pin,
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use anyhow::Context as _;
use prost::Message as _;
use tokio_stream::{Stream, StreamExt as _};
use tonic::{codec::CompressionEncoding, Request, Response, Status, Streaming};

use crate::{
    hist::Histogram,
    wire::{
        self,
        pb::{self, collector_server::CollectorServer, query_request::By},
    },
};

#[derive(Debug, clap::Args)]
pub struct CollectorArgs {
    /// Address to listen on.
    #[arg(long, default_value = "0.0.0.0:7700", value_name = "ADDR")]
    pub listen: SocketAddr,
    /// Server certificate (PEM); with --tls-key. Without them, --plaintext is required.
    #[arg(long, value_name = "FILE", requires = "tls_key")]
    pub tls_cert: Option<PathBuf>,
    #[arg(long, value_name = "FILE", requires = "tls_cert")]
    pub tls_key: Option<PathBuf>,
    /// Require client certificates signed by this CA (mTLS).
    #[arg(long, value_name = "FILE", requires = "tls_cert")]
    pub client_ca: Option<PathBuf>,
    /// Serve without TLS (reports and tokens in clear).
    #[arg(long, conflicts_with = "tls_cert")]
    pub plaintext: bool,
    /// File holding the bearer token agents must present (or set HOSTPROBE_TOKEN).
    #[arg(long, value_name = "FILE")]
    pub token_file: Option<PathBuf>,
    /// Keep a journal of accepted reports here; replayed at start, so that
    /// a restart loses nothing acknowledged and still drops duplicates.
    #[arg(long, value_name = "DIR")]
    pub data_dir: Option<PathBuf>,
    /// How long reports are kept for queries.
    #[arg(long, default_value = "5m", value_parser = crate::cli::parse_duration, value_name = "DURATION")]
    pub retention: Duration,
    /// Memory for kept reports (encoded) over all agents; past it the
    /// oldest go first.
    #[arg(long, default_value = "1G", value_parser = crate::export::parse_size, value_name = "SIZE")]
    pub max_memory: u64,
    /// Agents accepted at once; past it new agents are refused.
    #[arg(long, default_value_t = 10_000, value_parser = clap::value_parser!(u32).range(1..), value_name = "N")]
    pub max_agents: u32,
    /// Largest message accepted (e.g. 4M).
    #[arg(long, default_value = "4M", value_parser = crate::export::parse_size, value_name = "SIZE")]
    pub max_message: u64,
    /// Sustained reports per second per agent (bursts up to --burst, for
    /// catching up after an outage).
    #[arg(long, default_value_t = 50.0, value_name = "N")]
    pub rate: f64,
    #[arg(long, default_value_t = 2_000.0, value_name = "N")]
    pub burst: f64,
    /// Refuse reports older than this (by their interval's end).
    #[arg(long, default_value = "24h", value_parser = crate::cli::parse_duration, value_name = "DURATION")]
    pub max_age: Duration,
    /// Refuse reports whose interval ends further than this in the future.
    #[arg(long, default_value = "5m", value_parser = crate::cli::parse_duration, value_name = "DURATION")]
    pub max_future: Duration,
    /// Serve fleet-wide Prometheus metrics here (labels: host, process, container_id).
    #[arg(long, value_name = "ADDR", help_heading = "Metrics")]
    pub prometheus_listen: Option<SocketAddr>,
    /// (host, process name) groups exported; the rest are summed as `other`.
    #[arg(long, default_value_t = 1_000, value_parser = clap::value_parser!(u32).range(1..=1_000_000), value_name = "N", help_heading = "Metrics")]
    pub metrics_max_processes: u32,
    /// Forward the fleet's metrics to this OTLP/gRPC endpoint (an
    /// OpenTelemetry Collector, and through it any backend) every --otlp-interval.
    #[command(flatten)]
    pub otlp: crate::otlp::OtlpArgs,
    #[arg(long, default_value = "10s", value_parser = crate::cli::parse_duration, value_name = "DURATION", help_heading = "OpenTelemetry (OTLP/gRPC) export")]
    pub otlp_interval: Duration,
}

/// One agent as the collector knows it.
struct AgentState {
    /// Highest sequence stored, per epoch (a few recent epochs).
    acked: VecDeque<(u64, u64)>,
    /// Reports kept, oldest first, as received (encoded).
    window: VecDeque<Stored>,
    tokens: f64,
    refilled: Instant,
}

impl AgentState {
    fn new(burst: f64) -> Self {
        Self { acked: VecDeque::new(), window: VecDeque::new(), tokens: burst, refilled: Instant::now() }
    }

    fn acked(&self, epoch: u64) -> u64 {
        self.acked.iter().find(|(e, _)| *e == epoch).map_or(0, |(_, s)| *s)
    }

    fn set_acked(&mut self, epoch: u64, seq: u64) {
        match self.acked.iter_mut().find(|(e, _)| *e == epoch) {
            Some(a) => a.1 = seq,
            None => {
                self.acked.push_back((epoch, seq));
                if self.acked.len() > 8 {
                    self.acked.pop_front();
                }
            }
        }
    }
}

struct Stored {
    end_ns: i64,
    bytes: Vec<u8>,
}

struct Store {
    agents: HashMap<String, AgentState>,
    /// (agent, size) of every kept report in arrival order: each agent's
    /// entries are in the order of its window, so evicting from the front
    /// here is evicting from the front there.
    order: VecDeque<(String, usize)>,
    bytes: usize,
    journal: Option<Journal>,
    rejected: u64,
}

impl Store {
    fn keep(&mut self, id: &str, r: &pb::Report, bytes: Vec<u8>, limits: &Limits) {
        let Some(agent) = self.agents.get_mut(id) else { return };
        self.bytes += bytes.len();
        self.order.push_back((id.to_string(), bytes.len()));
        agent.window.push_back(Stored { end_ns: r.interval_end_unix_ns, bytes });
        let oldest = crate::metrics::now_unix_ns() - limits.retention.as_nanos() as i64;
        while let Some((id, len)) = self.order.front() {
            let agent = self.agents.get_mut(id).expect("agents are never removed");
            let old = agent.window.front().is_some_and(|s| s.end_ns < oldest);
            if self.bytes <= limits.max_memory && !old {
                break;
            }
            agent.window.pop_front();
            self.bytes -= len;
            self.order.pop_front();
        }
    }
}

struct Limits {
    retention: Duration,
    max_memory: usize,
    max_agents: usize,
    rate: f64,
    burst: f64,
    max_age: Duration,
    max_future: Duration,
}

#[derive(Clone)]
pub struct Service {
    store: Arc<Mutex<Store>>,
    limits: Arc<Limits>,
    /// Fleet-wide metrics, when exported.
    metrics: Option<Arc<Mutex<crate::metrics::Metrics>>>,
}

impl Service {
    fn lock(&self) -> std::sync::MutexGuard<'_, Store> {
        self.store.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Checks, deduplicates and stores one report; (epoch, sequence) to
    /// acknowledge (a duplicate is acknowledged again, not stored).
    fn accept(&self, r: pb::Report) -> Result<(u64, u64), Status> {
        let agent = r.agent.as_ref().ok_or_else(|| Status::invalid_argument("report without agent identity"))?;
        if agent.agent_id.is_empty() || agent.agent_id.len() > 128 {
            return Err(Status::invalid_argument("agent_id must be 1 to 128 bytes"));
        }
        if r.sequence == 0 {
            return Err(Status::invalid_argument("sequence numbers start at 1"));
        }
        let now = crate::metrics::now_unix_ns();
        let end = r.interval_end_unix_ns;
        if end > now + self.limits.max_future.as_nanos() as i64 {
            return Err(Status::invalid_argument(format!(
                "report {} ends {:.0} s in the future: is the agent's clock right?",
                r.sequence,
                (end - now) as f64 / 1e9
            )));
        }
        if end < now - self.limits.max_age.as_nanos() as i64 {
            return Err(Status::invalid_argument(format!(
                "report {} is older than --max-age ({:?})",
                r.sequence, self.limits.max_age
            )));
        }
        validate(&r).map_err(|e| Status::invalid_argument(format!("report {}: {e}", r.sequence)))?;
        let (id, epoch, seq) = (agent.agent_id.clone(), agent.epoch, r.sequence);
        let mut store = self.lock();
        let known = store.agents.len();
        if !store.agents.contains_key(&id) && known >= self.limits.max_agents {
            return Err(Status::resource_exhausted(format!(
                "this collector is at its cap of {} agents (--max-agents)",
                self.limits.max_agents
            )));
        }
        let state = store.agents.entry(id.clone()).or_insert_with(|| AgentState::new(self.limits.burst));
        // Token bucket: sustained --rate, bursts up to --burst.
        let t = Instant::now();
        state.tokens =
            (state.tokens + t.duration_since(state.refilled).as_secs_f64() * self.limits.rate).min(self.limits.burst);
        state.refilled = t;
        if state.tokens < 1.0 {
            return Err(Status::resource_exhausted(format!(
                "agent {id} sends more than {} reports/s (--rate); slow down",
                self.limits.rate
            )));
        }
        state.tokens -= 1.0;
        if seq <= state.acked(epoch) {
            return Ok((epoch, seq));
        }
        let bytes = r.encode_to_vec();
        if let Some(j) = &mut store.journal {
            j.append(&bytes).map_err(|e| Status::unavailable(format!("journal write failed: {e:#}")))?;
        }
        store.agents.get_mut(&id).expect("inserted above").set_acked(epoch, seq);
        store.keep(&id, &r, bytes, &self.limits);
        drop(store);
        if let Some(m) = &self.metrics {
            let host = r.agent.as_ref().map_or("", |a| a.host_name.as_str());
            m.lock().unwrap_or_else(|p| p.into_inner()).add_wire(host, &r);
        }
        Ok((epoch, seq))
    }

    fn reject(&self, peer: &str, s: &Status) {
        self.lock().rejected += 1;
        log::warn!("rejected {peer}: {:?}: {}", s.code(), s.message());
    }
}

/// What a decoder cannot check: the histograms' layout and ranges.
fn validate(r: &pb::Report) -> Result<(), String> {
    let hist = |h: &Option<pb::Histogram>| h.as_ref().map_or(Ok(()), wire::check);
    for p in r.processes.iter().chain(&r.other) {
        for s in &p.syscalls {
            hist(&s.latency)?;
        }
        for d in &p.disk {
            hist(&d.queue)?;
            hist(&d.service)?;
            hist(&d.total)?;
        }
        if let Some(o) = &p.offcpu {
            hist(&o.runqueue)?;
            hist(&o.offcpu)?;
        }
        for t in &p.tcp {
            hist(&t.rtt)?;
            hist(&t.connect)?;
        }
    }
    for t in &r.tcp_unknown_owner {
        hist(&t.rtt)?;
        hist(&t.connect)?;
    }
    Ok(())
}

type AckStream = Pin<Box<dyn Stream<Item = Result<pb::Ack, Status>> + Send>>;

#[tonic::async_trait]
impl pb::collector_server::Collector for Service {
    type StreamStream = AckStream;

    async fn stream(&self, request: Request<Streaming<pb::Report>>) -> Result<Response<AckStream>, Status> {
        let peer = request.remote_addr().map_or_else(|| "a client".to_string(), |a| a.to_string());
        let mut inbound = request.into_inner();
        let (tx, rx) = tokio::sync::mpsc::channel(64);
        let svc = self.clone();
        tokio::spawn(async move {
            let mut agent = String::new();
            loop {
                let msg = match inbound.next().await {
                    None => break,
                    Some(Ok(m)) => m,
                    Some(Err(s)) if s.code() == tonic::Code::Unknown || s.code() == tonic::Code::Cancelled => {
                        // The peer went away (reset, dropped connection).
                        log::info!("{peer} {agent}: disconnected ({})", s.message());
                        break;
                    }
                    Some(Err(s)) => {
                        // Malformed protobuf, an oversized message.
                        let code = match s.code() {
                            tonic::Code::Internal if s.message().contains("decode") => tonic::Code::InvalidArgument,
                            c => c,
                        };
                        let s = Status::new(code, format!("bad message: {}", s.message()));
                        svc.reject(&format!("{peer} {agent}"), &s);
                        let _ = tx.send(Err(s)).await;
                        break;
                    }
                };
                if agent.is_empty() {
                    if let Some(a) = &msg.agent {
                        agent = format!("(agent {})", a.agent_id);
                        log::info!("{peer}: agent {} ({}) streaming", a.agent_id, a.host_name);
                    }
                }
                match svc.accept(msg) {
                    Ok((epoch, sequence)) => {
                        if tx.send(Ok(pb::Ack { epoch, sequence })).await.is_err() {
                            break;
                        }
                    }
                    Err(s) => {
                        svc.reject(&format!("{peer} {agent}"), &s);
                        let _ = tx.send(Err(s)).await;
                        break;
                    }
                }
            }
        });
        Ok(Response::new(Box::pin(tokio_stream::wrappers::ReceiverStream::new(rx))))
    }

    async fn query(&self, request: Request<pb::QueryRequest>) -> Result<Response<pb::QueryResponse>, Status> {
        let q = request.into_inner();
        let store = self.lock();
        Ok(Response::new(query(&store, &q)))
    }
}

/// Per process name, figures merged over every agent's reports in the window.
#[derive(Default)]
struct Row {
    exe: String,
    agents: std::collections::BTreeSet<String>,
    hist: Histogram,
    max_ns: u64,
    total_ns: u64,
    /// Whether `total_ns` is the exact sum of `hist`: every contribution
    /// came with one.
    sum_unknown: bool,
}

fn query(store: &Store, q: &pb::QueryRequest) -> pb::QueryResponse {
    let by = By::try_from(q.by).unwrap_or(By::Syscalls);
    let now = crate::metrics::now_unix_ns();
    let since = if q.window_seconds == 0 { i64::MIN } else { now - i64::from(q.window_seconds) * 1_000_000_000 };
    if by == By::Diagnose {
        let mut agents = std::collections::BTreeMap::new();
        let mut reports = 0;
        for (id, agent) in &store.agents {
            for stored in agent.window.iter().filter(|r| r.end_ns >= since) {
                let Ok(r) = pb::Report::decode(stored.bytes.as_slice()) else { continue };
                reports += 1;
                agents.entry(id.clone()).or_insert_with(crate::fleet::AgentWindow::default).add(&r);
            }
        }
        let limit = if q.limit == 0 { 10 } else { q.limit as usize };
        let diagnoses = crate::fleet::diagnose_fleet(&agents, &q.comm, limit);
        return pb::QueryResponse { agents: store.agents.len() as u32, reports, diagnoses, ..Default::default() };
    }
    let mut rows: HashMap<String, Row> = HashMap::new();
    let mut reports = 0;
    for (id, agent) in &store.agents {
        for stored in agent.window.iter().filter(|r| r.end_ns >= since) {
            let Ok(r) = pb::Report::decode(stored.bytes.as_slice()) else { continue };
            reports += 1;
            for p in r.processes.iter().filter(|p| q.comm.is_empty() || p.comm == q.comm) {
                // `total`: the exact sum of the histogram's values, if known.
                let mut add = |h: &Option<pb::Histogram>, total: Option<u64>| {
                    let Some(h) = h else { return };
                    let Ok(parsed) = wire::from_wire(h) else { return };
                    let row = rows.entry(p.comm.clone()).or_default();
                    if row.exe.is_empty() {
                        row.exe = p.exe.clone();
                    }
                    row.agents.insert(id.clone());
                    row.hist.merge(&parsed);
                    row.max_ns = row.max_ns.max(h.max_ns);
                    row.total_ns += total.unwrap_or(0);
                    row.sum_unknown |= total.is_none();
                };
                match by {
                    By::Syscalls | By::Unspecified | By::Diagnose => {
                        p.syscalls.iter().for_each(|s| add(&s.latency, Some(s.total_ns)))
                    }
                    By::DiskP99 => p.disk.iter().for_each(|d| add(&d.total, d.total.as_ref().and_then(|h| h.sum_ns))),
                    By::Offcpu => {
                        if let Some(o) = &p.offcpu {
                            add(&o.offcpu, Some(o.runqueue_ns + o.blocked_io_ns + o.sleep_ns));
                        }
                    }
                    By::TcpRtt => p
                        .tcp
                        .iter()
                        .filter(|t| q.endpoint.is_empty() || t.remote == q.endpoint)
                        .for_each(|t| add(&t.rtt, t.rtt.as_ref().and_then(|h| h.sum_ns))),
                }
            }
        }
    }
    let mut out: Vec<pb::QueryRow> = rows
        .into_iter()
        .filter(|(_, r)| r.hist.count() > 0)
        .map(|(comm, r)| pb::QueryRow {
            comm,
            exe: r.exe,
            agents: r.agents.into_iter().collect(),
            count: r.hist.count(),
            total_ns: r.total_ns,
            p50_ns: r.hist.quantile(0.5, r.max_ns).unwrap_or(0),
            p99_ns: r.hist.quantile(0.99, r.max_ns).unwrap_or(0),
            histogram: Some(wire::histogram(&r.hist, r.max_ns, (!r.sum_unknown).then_some(r.total_ns))),
        })
        .collect();
    match by {
        By::DiskP99 | By::TcpRtt => out.sort_by(|a, b| b.p99_ns.cmp(&a.p99_ns).then(a.comm.cmp(&b.comm))),
        _ => out.sort_by(|a, b| b.total_ns.cmp(&a.total_ns).then(a.comm.cmp(&b.comm))),
    }
    out.truncate(if q.limit == 0 { 10 } else { q.limit as usize });
    pb::QueryResponse { rows: out, agents: store.agents.len() as u32, reports, diagnoses: Vec::new() }
}

/// Accepted reports, length-delimited protobuf, appended before each ack.
struct Journal {
    file: std::fs::File,
    path: PathBuf,
    bytes: u64,
    max_bytes: u64,
}

impl Journal {
    /// Appends one encoded report, length-delimited, in one write.
    fn append(&mut self, encoded: &[u8]) -> anyhow::Result<()> {
        let mut buf = Vec::with_capacity(encoded.len() + 10);
        prost::encoding::encode_varint(encoded.len() as u64, &mut buf);
        buf.extend_from_slice(encoded);
        self.file.write_all(&buf)?;
        self.bytes += buf.len() as u64;
        Ok(())
    }
}

/// Opens (creating) the journal in `dir` and replays it into `store`.
fn open_journal(dir: &Path, store: &mut Store, limits: &Limits) -> anyhow::Result<Journal> {
    std::fs::create_dir_all(dir).with_context(|| format!("creating --data-dir {}", dir.display()))?;
    let path = dir.join("journal.pb");
    let data = match std::fs::read(&path) {
        Ok(d) => d,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Vec::new(),
        Err(e) => return Err(e).with_context(|| format!("reading {}", path.display())),
    };
    let mut buf = data.as_slice();
    let mut good = 0usize;
    let mut replayed = 0u64;
    while !buf.is_empty() {
        match pb::Report::decode_length_delimited(&mut buf) {
            Ok(r) => {
                good = data.len() - buf.len();
                replayed += 1;
                let Some(a) = r.agent.clone() else { continue };
                let state = store.agents.entry(a.agent_id.clone()).or_insert_with(|| AgentState::new(limits.burst));
                if r.sequence > state.acked(a.epoch) {
                    state.set_acked(a.epoch, r.sequence);
                }
                let bytes = r.encode_to_vec();
                store.keep(&a.agent_id, &r, bytes, limits);
            }
            Err(_) => break,
        }
    }
    let file = std::fs::OpenOptions::new().create(true).append(true).open(&path)?;
    if good < data.len() {
        log::warn!("journal {}: {} bytes of a partial last write dropped", path.display(), data.len() - good);
        file.set_len(good as u64)?;
    }
    if replayed > 0 {
        log::info!("journal: replayed {replayed} reports from {} agents", store.agents.len());
    }
    // Compaction rewrites the windows once the journal outgrows them well.
    let max_bytes = (good as u64).max(256 << 20);
    Ok(Journal { file, path, bytes: good as u64, max_bytes })
}

fn compact(store: &mut Store) -> anyhow::Result<()> {
    let Some(j) = &store.journal else { return Ok(()) };
    if j.bytes < j.max_bytes {
        return Ok(());
    }
    let tmp = j.path.with_extension("tmp");
    let mut out = std::io::BufWriter::new(std::fs::File::create(&tmp)?);
    let mut bytes = 0u64;
    for a in store.agents.values() {
        for r in &a.window {
            let mut buf = Vec::with_capacity(10);
            prost::encoding::encode_varint(r.bytes.len() as u64, &mut buf);
            out.write_all(&buf)?;
            out.write_all(&r.bytes)?;
            bytes += (buf.len() + r.bytes.len()) as u64;
        }
    }
    out.into_inner()?.sync_all()?;
    let path = j.path.clone();
    std::fs::rename(&tmp, &path)?;
    let file = std::fs::OpenOptions::new().append(true).open(&path)?;
    store.journal = Some(Journal { file, path, bytes, max_bytes: (bytes * 2).max(256 << 20) });
    Ok(())
}

pub fn run(args: &CollectorArgs) -> anyhow::Result<()> {
    if args.tls_cert.is_none() && !args.plaintext {
        anyhow::bail!("give --tls-cert and --tls-key, or --plaintext to serve without TLS");
    }
    let token = match &args.token_file {
        Some(f) => Some(std::fs::read_to_string(f).with_context(|| format!("reading {}", f.display()))?),
        None => std::env::var("HOSTPROBE_TOKEN").ok(),
    }
    .map(|t| t.trim().to_string())
    .filter(|t| !t.is_empty());
    let limits = Limits {
        retention: args.retention,
        max_memory: usize::try_from(args.max_memory).unwrap_or(usize::MAX),
        max_agents: args.max_agents as usize,
        rate: args.rate,
        burst: args.burst,
        max_age: args.max_age,
        max_future: args.max_future,
    };
    raise_fd_limit();
    let mut store = Store { agents: HashMap::new(), order: VecDeque::new(), bytes: 0, journal: None, rejected: 0 };
    if let Some(dir) = &args.data_dir {
        store.journal = Some(open_journal(dir, &mut store, &limits)?);
    }
    let metrics = (args.prometheus_listen.is_some() || args.otlp.otlp_endpoint.is_some())
        .then(|| Arc::new(Mutex::new(crate::metrics::Metrics::new(args.metrics_max_processes as usize))));
    let svc = Service { store: Arc::new(Mutex::new(store)), limits: Arc::new(limits), metrics: metrics.clone() };
    let rt = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
    rt.block_on(async {
        let mut server = tonic::transport::Server::builder()
            .http2_keepalive_interval(Some(Duration::from_secs(20)))
            .http2_keepalive_timeout(Some(Duration::from_secs(10)));
        if let (Some(cert), Some(key)) = (&args.tls_cert, &args.tls_key) {
            let read = |p: &PathBuf| std::fs::read(p).with_context(|| format!("reading {}", p.display()));
            let mut tls = tonic::transport::ServerTlsConfig::new()
                .identity(tonic::transport::Identity::from_pem(read(cert)?, read(key)?));
            if let Some(ca) = &args.client_ca {
                tls = tls.client_ca_root(tonic::transport::Certificate::from_pem(read(ca)?));
            }
            server = server.tls_config(tls).context("TLS configuration")?;
        }
        let (health, health_svc) = tonic_health::server::health_reporter();
        health.set_serving::<CollectorServer<Service>>().await;
        let check = move |req: Request<()>| -> Result<Request<()>, Status> {
            let Some(want) = &token else { return Ok(req) };
            let got = req.metadata().get("authorization").and_then(|v| v.to_str().ok()).unwrap_or("");
            let want = format!("Bearer {want}");
            // Constant time in the token's length.
            let same = got.len() == want.len() && got.bytes().zip(want.bytes()).fold(0u8, |d, (a, b)| d | (a ^ b)) == 0;
            if same {
                Ok(req)
            } else {
                Err(Status::unauthenticated("missing or wrong bearer token"))
            }
        };
        let collector = CollectorServer::new(svc.clone())
            .max_decoding_message_size(args.max_message as usize)
            .accept_compressed(CompressionEncoding::Gzip)
            .send_compressed(CompressionEncoding::Gzip);
        let collector = tonic::service::interceptor::InterceptedService::new(collector, check);
        // Journal compaction, once a minute.
        let compacting = svc.clone();
        tokio::spawn(async move {
            loop {
                tokio::time::sleep(Duration::from_secs(60)).await;
                if let Err(e) = compact(&mut compacting.lock()) {
                    log::warn!("journal compaction failed: {e:#}");
                }
            }
        });
        if let (Some(addr), Some(m)) = (args.prometheus_listen, &metrics) {
            crate::prom::serve(addr, m.clone()).await?;
        }
        if let (Some(url), Some(m)) = (&args.otlp.otlp_endpoint, &metrics) {
            // The scheme is the ask: http:// forwards in clear.
            let client = crate::export::ClientArgs { plaintext: url.starts_with("http://"), ..Default::default() };
            let mut otlp = crate::otlp::Exporter::start(&args.otlp, &client, url.clone(), "hostprobe-collector")?;
            let (m, every) = (m.clone(), args.otlp_interval);
            tokio::spawn(async move {
                let mut tick = tokio::time::interval(every);
                tick.tick().await;
                loop {
                    tick.tick().await;
                    let m = m.lock().unwrap_or_else(|p| p.into_inner());
                    otlp.export(&m, crate::metrics::now_unix_ns());
                }
            });
        }
        log::info!(
            "collector listening on {} ({})",
            args.listen,
            if args.tls_cert.is_some() { "TLS" } else { "plaintext" }
        );
        let shutdown = async {
            let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
                .expect("installing a SIGTERM handler");
            tokio::select! {
                _ = tokio::signal::ctrl_c() => {}
                _ = term.recv() => {}
            }
            log::info!("shutting down");
        };
        server
            .add_service(health_svc)
            .add_service(collector)
            .serve_with_shutdown(args.listen, shutdown)
            .await
            .with_context(|| format!("serving on {}", args.listen))?;
        let store = svc.lock();
        log::info!("stopped: {} agents known, {} streams rejected", store.agents.len(), store.rejected);
        anyhow::Ok(())
    })
}

/// One connection per agent: raise the soft open-files limit to the hard one.
pub fn raise_fd_limit() {
    let mut l = libc::rlimit { rlim_cur: 0, rlim_max: 0 };
    // SAFETY: getrlimit/setrlimit with a valid struct.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut l) == 0 && l.rlim_cur < l.rlim_max {
            l.rlim_cur = l.rlim_max;
            libc::setrlimit(libc::RLIMIT_NOFILE, &l);
        }
    }
}

/// `hostprobe query`.
#[derive(Debug, clap::Args)]
pub struct QueryArgs {
    #[command(flatten)]
    pub client: crate::export::ClientArgs,
    /// What to rank processes by.
    #[arg(long, value_enum, default_value_t = QueryBy::Syscalls)]
    pub by: QueryBy,
    /// TCP: only connections to this remote (address:port).
    #[arg(long, value_name = "ADDR:PORT")]
    pub endpoint: Option<String>,
    /// Only processes with this name.
    #[arg(long)]
    pub comm: Option<String>,
    /// Only reports of the last DURATION ("0s": all the collector keeps).
    #[arg(long, default_value = "1m", value_parser = crate::cli::parse_window, value_name = "DURATION")]
    pub window: Duration,
    #[arg(long, default_value_t = 10)]
    pub limit: u32,
    /// Each process's bottleneck over the window, per host, worst first
    /// (the rules of `hostprobe diagnose`); --by does not apply.
    #[arg(long)]
    pub diagnose: bool,
    /// Print JSON instead of a table.
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Clone, Copy, clap::ValueEnum)]
pub enum QueryBy {
    /// Time in syscalls; the merged syscall latency histogram.
    Syscalls,
    /// p99 of disk I/O latency (queue to completion).
    Disk,
    /// Time off the CPU.
    Offcpu,
    /// p99 of TCP smoothed RTT (with --endpoint: to that remote).
    TcpRtt,
}

pub fn query_cmd(args: &QueryArgs) -> anyhow::Result<()> {
    let url = args.client.collectors.first().context("--collector URL is required")?.clone();
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    rt.block_on(async {
        let channel = crate::export::channel(&url, &args.client).await?;
        let mut client = pb::collector_client::CollectorClient::new(channel);
        let mut req = Request::new(pb::QueryRequest {
            by: match args.by {
                _ if args.diagnose => By::Diagnose,
                QueryBy::Syscalls => By::Syscalls,
                QueryBy::Disk => By::DiskP99,
                QueryBy::Offcpu => By::Offcpu,
                QueryBy::TcpRtt => By::TcpRtt,
            } as i32,
            limit: args.limit,
            endpoint: args.endpoint.clone().unwrap_or_default(),
            comm: args.comm.clone().unwrap_or_default(),
            window_seconds: if args.window.is_zero() { 0 } else { args.window.as_secs().max(1) as u32 },
        });
        if let Some(t) = crate::export::token(&args.client)? {
            req.metadata_mut().insert("authorization", t);
        }
        let resp =
            client.query(req).await.map_err(|s| anyhow::anyhow!("{}", crate::export::status_message(&s)))?.into_inner();
        if args.diagnose {
            // An older collector reads DIAGNOSE as unspecified (proto rule
            // 5) and ranks by syscalls instead.
            anyhow::ensure!(
                !resp.diagnoses.is_empty() || resp.rows.is_empty(),
                "this collector does not know --diagnose: upgrade it"
            );
            print!("{}", crate::fleet::render(&resp, args.json));
            return Ok(());
        }
        if args.json {
            let rows: Vec<serde_json::Value> = resp
                .rows
                .iter()
                .map(|r| {
                    serde_json::json!({"comm": r.comm, "exe": r.exe, "agents": r.agents, "count": r.count,
                        "total_ns": r.total_ns, "p50_ns": r.p50_ns, "p99_ns": r.p99_ns})
                })
                .collect();
            println!("{}", serde_json::json!({"agents": resp.agents, "reports": resp.reports, "rows": rows}));
            return Ok(());
        }
        println!("{} agents, {} reports in the window", resp.agents, resp.reports);
        println!("{:<16} {:>6} {:>12} {:>10} {:>10} {:>10}", "COMM", "AGENTS", "COUNT", "TOTAL", "p50", "p99");
        for r in &resp.rows {
            println!(
                "{:<16} {:>6} {:>12} {:>10} {:>10} {:>10}",
                r.comm,
                r.agents.len(),
                r.count,
                crate::output::duration(r.total_ns),
                crate::output::duration(r.p50_ns),
                crate::output::duration(r.p99_ns)
            );
        }
        Ok(())
    })
}

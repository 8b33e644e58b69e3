//! `hostprobe collector`: receives agents' report streams
//! (`proto/hostprobe/v1`), deduplicates them by (agent, epoch, sequence),
//! keeps a recent window per agent, bounded in time and in total memory,
//! and answers fleet queries with histograms merged exactly across hosts.
//! With `--data-dir`, a report is on stable storage before it is
//! acknowledged, and the journal is replayed at start.
//!
//! Parts: [`service`] (the gRPC service: checks, journals, keeps, acks),
//! [`store`] (the windows, deduplication, limits), [`rollup`] (reports
//! merged exactly, per minute then per ten minutes), [`journal`]
//! (segments, group commit, checksums), [`query`] (the engine and
//! `hostprobe query`, which merges several collectors' answers).
//!
//! Defences, each refused with a clear gRPC status and logged, without
//! disturbing other agents: bearer tokens (one for agents, which send, one
//! for readers, which query; no authentication only when asked for with
//! `--no-auth`) and (m)TLS, a message size limit,
//! malformed protobuf, reports from the future or far past, a per-agent
//! rate limit, a cap on the number of agents (idle ones make room), and a
//! cap on the memory the windows take (the oldest reports go first).

pub mod journal;
pub mod query;
mod rollup;
mod service;
mod store;

use std::{
    net::SocketAddr,
    path::PathBuf,
    sync::{Arc, Mutex},
    time::Duration,
};

use anyhow::Context as _;
use prost::Message as _;
pub use query::{query_cmd, QueryArgs};
use service::Service;
use store::{Limits, Store};
use tonic::codec::CompressionEncoding;

use crate::wire::pb::{self, collector_server::CollectorServer};

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
    /// File holding the bearer token agents must present to send reports
    /// (or set HOSTPROBE_TOKEN). It does not let them query.
    #[arg(long, value_name = "FILE")]
    pub token_file: Option<PathBuf>,
    /// File holding the bearer token readers (`hostprobe query`) must
    /// present (or set HOSTPROBE_QUERY_TOKEN). It does not let them send
    /// reports. Without it, with authentication on, queries are refused.
    #[arg(long, value_name = "FILE")]
    pub query_token_file: Option<PathBuf>,
    /// Run without authentication: anyone who can reach the collector may
    /// send reports and read the whole fleet's. Only on a network you trust.
    #[arg(long, conflicts_with_all = ["token_file", "query_token_file"])]
    pub no_auth: bool,
    /// Keep a journal of accepted reports here: each report is on stable
    /// storage before it is acknowledged, and the journal is replayed at
    /// start, so that a restart or a power loss loses nothing acknowledged
    /// and duplicates are still dropped.
    #[arg(long, value_name = "DIR")]
    pub data_dir: Option<PathBuf>,
    /// How long reports are kept for queries (merged per minute for the
    /// last 10 minutes, per 10 minutes before), and in the journal.
    #[arg(long, default_value = "1h", value_parser = crate::units::parse_duration, value_name = "DURATION")]
    pub retention: Duration,
    /// How long each report is also kept as received, memory allowing: a
    /// query whose window these cover whole is answered at the agents' own
    /// intervals rather than whole minutes ("0s": never).
    #[arg(long, default_value = "2m", value_parser = crate::units::parse_duration_or_zero, value_name = "DURATION")]
    pub full_resolution: Duration,
    /// Memory for kept reports over all agents (the current minute's
    /// merged reports, encoded; older minutes deflated); past it the oldest
    /// go first, and answers say from when the collector holds everything.
    #[arg(long, default_value = "1G", value_parser = crate::units::parse_size, value_name = "SIZE")]
    pub max_memory: u64,
    /// Agents accepted at once; past it new agents are refused.
    #[arg(long, default_value_t = 10_000, value_parser = clap::value_parser!(u32).range(1..), value_name = "N")]
    pub max_agents: u32,
    /// Largest message accepted (e.g. 4M).
    #[arg(long, default_value = "4M", value_parser = crate::units::parse_size, value_name = "SIZE")]
    pub max_message: u64,
    /// Sustained reports per second per agent (bursts up to --burst, for
    /// catching up after an outage).
    #[arg(long, default_value_t = 50.0, value_name = "N")]
    pub rate: f64,
    #[arg(long, default_value_t = 2_000.0, value_name = "N")]
    pub burst: f64,
    /// Refuse reports older than this (by their interval's end).
    #[arg(long, default_value = "24h", value_parser = crate::units::parse_duration, value_name = "DURATION")]
    pub max_age: Duration,
    /// Refuse reports whose interval ends further than this in the future.
    #[arg(long, default_value = "5m", value_parser = crate::units::parse_duration, value_name = "DURATION")]
    pub max_future: Duration,
    /// Serve fleet-wide Prometheus metrics here (labels: host_name,
    /// process_executable_name, container_id, ...).
    #[arg(long, value_name = "ADDR", help_heading = "Metrics")]
    pub prometheus_listen: Option<SocketAddr>,
    /// TLS and basic auth for the metrics and health endpoints: a YAML
    /// file in the Prometheus exporter-toolkit format
    /// (tls_server_config: cert_file, key_file, client_ca_file;
    /// basic_auth_users: user -> bcrypt hash). Basic auth guards /metrics.
    #[arg(long, value_name = "FILE", help_heading = "Metrics")]
    pub web_config_file: Option<std::path::PathBuf>,
    /// (host, process name) groups exported; the rest are summed as `other`.
    #[arg(long, default_value_t = 1_000, value_parser = clap::value_parser!(u32).range(1..=1_000_000), value_name = "N", help_heading = "Metrics")]
    pub metrics_max_processes: u32,
    /// Forward the fleet's metrics to this OTLP/gRPC endpoint (an
    /// OpenTelemetry Collector, and through it any backend) every --otlp-interval.
    #[command(flatten)]
    pub otlp: crate::otlp::OtlpArgs,
    #[arg(long, default_value = "10s", value_parser = crate::units::parse_duration, value_name = "DURATION", help_heading = "OpenTelemetry (OTLP/gRPC) export")]
    pub otlp_interval: Duration,
    /// Push the fleet's metrics to a Prometheus remote-write endpoint.
    #[command(flatten)]
    pub remote_write: crate::remote_write::RemoteWriteArgs,
}

pub fn run(args: &CollectorArgs) -> anyhow::Result<()> {
    if args.tls_cert.is_none() && !args.plaintext {
        anyhow::bail!("give --tls-cert and --tls-key, or --plaintext to serve without TLS");
    }
    let read_token = |file: &Option<PathBuf>, var: &str| -> anyhow::Result<Option<String>> {
        let raw = match file {
            Some(f) => Some(std::fs::read_to_string(f).with_context(|| format!("reading {}", f.display()))?),
            None => std::env::var(var).ok(),
        };
        Ok(raw.map(|t| t.trim().to_string()).filter(|t| !t.is_empty()))
    };
    let auth = service::Auth {
        write: read_token(&args.token_file, "HOSTPROBE_TOKEN")?,
        query: read_token(&args.query_token_file, "HOSTPROBE_QUERY_TOKEN")?,
        open: args.no_auth,
    };
    if !auth.open && auth.write.is_none() && args.client_ca.is_none() {
        anyhow::bail!(
            "no authentication: anyone who could reach this collector could send it reports and read the \
             whole fleet's. Give --token-file (agents) and --query-token-file (readers), or --client-ca \
             (agents with client certificates), or --no-auth to run open on a network you trust"
        );
    }
    if auth.open {
        log::warn!("--no-auth: anyone who can reach {} may send reports and query them", args.listen);
    }
    let limits = Limits {
        retention: args.retention,
        max_memory: usize::try_from(args.max_memory).unwrap_or(usize::MAX),
        max_agents: args.max_agents as usize,
        rate: args.rate,
        burst: args.burst,
        max_age: args.max_age,
        max_future: args.max_future,
        full_resolution: args.full_resolution,
    };
    // Checked before the journal's replay: a bad URL fails at once.
    let remote_write = args.remote_write.config()?;
    raise_fd_limit();
    let mut store = Store::new(crate::metrics::now_unix_ns());
    let journal = match &args.data_dir {
        Some(dir) => {
            // Each report decoded once, into the windows as it is read.
            let (journal, n) = journal::Journal::open(dir, limits.retention, |bytes| {
                let r = pb::Report::decode(bytes.as_slice()).ok()?;
                let a = r.agent.as_ref()?;
                store.keep(&a.agent_id, a.epoch, r.sequence, &r, &bytes, &limits);
                store.holding_since_ns = store.holding_since_ns.min(r.interval_start_unix_ns);
                Some(r.interval_end_unix_ns)
            })?;
            if n > 0 {
                log::info!("journal: replayed {n} reports from {} agents", store.agents.len());
            }
            Some(journal)
        }
        None => None,
    };
    let web = args.web_config_file.as_deref().map(crate::web::Web::load).transpose()?;
    let metrics =
        (args.prometheus_listen.is_some() || args.otlp.endpoint().is_some() || remote_write.is_some()).then(|| {
            let mut m = crate::metrics::Metrics::new(args.metrics_max_processes as usize);
            m.host = crate::procinfo::hostname();
            Arc::new(Mutex::new(m))
        });
    let (stop, stopping) = tokio::sync::watch::channel(false);
    let svc = Service {
        stopping,
        store: Arc::new(Mutex::new(store)),
        limits: Arc::new(limits),
        journal,
        metrics: metrics.clone(),
        auth: Arc::new(auth),
    };
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
        let collector = CollectorServer::new(svc.clone())
            .max_decoding_message_size(args.max_message as usize)
            .accept_compressed(CompressionEncoding::Gzip)
            .send_compressed(CompressionEncoding::Gzip);
        // Every 10 s: minutes whose agents went quiet are closed, old
        // minutes merged into ten, buckets past the retention dropped, one
        // agent at a time (ingest goes on between); agents gone for
        // longer than the retention are forgotten.
        let maintaining = svc.clone();
        tokio::spawn(async move {
            loop {
                tokio::time::sleep(Duration::from_secs(10)).await;
                let s = maintaining.clone();
                let _ = tokio::task::spawn_blocking(move || {
                    let ids: Vec<String> = s.lock().agents.keys().cloned().collect();
                    for id in ids {
                        s.lock().maintain(&id, crate::metrics::now_unix_ns(), &s.limits);
                    }
                    let mut store = s.lock();
                    store.evict_idle(s.limits.retention);
                    log::debug!("{}", store.summary());
                })
                .await;
            }
        });
        if let (Some(addr), Some(m)) = (args.prometheus_listen, &metrics) {
            // Ready as soon as it listens: a collector has nothing to attach.
            let ready = crate::prom::Readiness { attached: Arc::new(true.into()), exporters: Vec::new() };
            crate::prom::serve(addr, "--prometheus-listen", Some(m.clone()), Arc::new(ready), web).await?;
        }
        if let (Some((url, _)), Some(m)) = (args.otlp.endpoint(), &metrics) {
            // The scheme is the ask: http:// forwards in clear.
            let client = crate::grpc::ClientArgs { plaintext: url.starts_with("http://"), ..Default::default() };
            let mut otlp = crate::otlp::Exporter::start(
                &args.otlp,
                &client,
                url.clone(),
                "hostprobe-collector",
                &crate::procinfo::hostname(),
            )?;
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
        let remote_write = match (remote_write, &metrics) {
            (Some(config), Some(m)) => Some(crate::remote_write::RemoteWrite::start(config, m.clone())),
            _ => None,
        };
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
            // Agents' streams never end on their own: end them.
            let _ = stop.send(true);
        };
        server
            .add_service(health_svc)
            .add_service(collector)
            .serve_with_shutdown(args.listen, shutdown)
            .await
            .with_context(|| format!("serving on {}", args.listen))?;
        let store = svc.lock();
        log::info!(
            "stopped: {} agents known ({} idle ones forgotten), {} streams rejected",
            store.agents.len(),
            store.evicted_agents,
            store.rejected
        );
        if let Some(rw) = &remote_write {
            rw.log_totals();
        }
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

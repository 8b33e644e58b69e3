//! The gRPC service: checks each report, journals it, keeps it, and only
//! then acknowledges it.

use std::{
    pin::Pin,
    sync::{Arc, Mutex},
};

use prost::Message as _;
use tokio_stream::{Stream, StreamExt as _};
use tonic::{Request, Response, Status, Streaming};

use super::{
    journal::Journal,
    store::{Limits, Refused, Store},
};
use crate::wire::{self, pb};

/// Who may do what: agents present the write token to stream reports,
/// readers the query token to query; neither works for the other.
pub struct Auth {
    pub write: Option<String>,
    pub query: Option<String>,
    /// `--no-auth`: everything open.
    pub open: bool,
}

impl Auth {
    /// Whether `req` carries `want` as its bearer token.
    fn check<T>(&self, req: &Request<T>, want: &Option<String>, what: &str, flag: &str) -> Result<(), Status> {
        if self.open {
            return Ok(());
        }
        let Some(want) = want else {
            return Err(Status::permission_denied(format!("this collector takes no {what} (no {flag})")));
        };
        let got = req.metadata().get("authorization").and_then(|v| v.to_str().ok()).unwrap_or("");
        let want = format!("Bearer {want}");
        // Constant time in the token's length.
        let same = got.len() == want.len() && got.bytes().zip(want.bytes()).fold(0u8, |d, (a, b)| d | (a ^ b)) == 0;
        if same {
            Ok(())
        } else {
            Err(Status::unauthenticated(format!("missing or wrong bearer token for {what}")))
        }
    }
}

#[derive(Clone)]
pub struct Service {
    pub auth: Arc<Auth>,
    pub store: Arc<Mutex<Store>>,
    pub limits: Arc<Limits>,
    pub journal: Option<Journal>,
    /// Fleet-wide metrics, when exported.
    pub metrics: Option<Arc<Mutex<crate::metrics::Metrics>>>,
    /// Becomes true at shutdown: open streams end (the server waits for
    /// them), and their agents resend what was not acknowledged.
    pub stopping: tokio::sync::watch::Receiver<bool>,
}

impl Service {
    pub fn lock(&self) -> std::sync::MutexGuard<'_, Store> {
        self.store.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Checks, deduplicates, journals and keeps one report; (epoch,
    /// sequence) to acknowledge (a duplicate is acknowledged again, not
    /// stored).
    async fn accept(&self, r: pb::Report) -> Result<(u64, u64), Status> {
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
        match self.lock().admit(&id, epoch, seq, &self.limits) {
            Ok(()) => {}
            Err(Refused::Duplicate) => return Ok((epoch, seq)),
            Err(Refused::Full) => {
                return Err(Status::resource_exhausted(format!(
                    "this collector is at its cap of {} agents (--max-agents), none idle",
                    self.limits.max_agents
                )))
            }
            Err(Refused::Rate) => {
                return Err(Status::resource_exhausted(format!(
                    "agent {id} sends more than {} reports/s (--rate); slow down",
                    self.limits.rate
                )))
            }
        }
        let bytes: Arc<[u8]> = r.encode_to_vec().into();
        if let Some(j) = &self.journal {
            j.append(bytes.clone(), end).await.map_err(|e| {
                Status::unavailable(format!(
                    "cannot journal report {seq} ({e}); is --data-dir full? Nothing was acknowledged: \
                     the agent keeps its reports and sends them again"
                ))
            })?;
        }
        self.lock().keep(&id, epoch, seq, end, bytes, &self.limits);
        if let Some(m) = &self.metrics {
            let host = r.agent.as_ref().map_or("", |a| a.host_name.as_str());
            m.lock().unwrap_or_else(|p| p.into_inner()).add_wire(host, &r);
        }
        Ok((epoch, seq))
    }

    fn reject(&self, peer: &str, s: &Status) {
        let mut store = self.lock();
        store.rejected += 1;
        if let Some(suppressed) = store.reject_log.admit(std::time::Instant::now(), s.code()) {
            log::warn!("rejected {peer}: {:?}: {}", s.code(), s.message());
            if !suppressed.is_empty() {
                log::warn!("... and {} more rejected streams not logged one by one", summary(&suppressed));
            }
        }
    }
}

/// `12 (ResourceExhausted 10, InvalidArgument 2)`.
fn summary(by_code: &std::collections::BTreeMap<i32, u64>) -> String {
    let total: u64 = by_code.values().sum();
    let each: Vec<String> = by_code.iter().map(|(c, n)| format!("{:?} {n}", tonic::Code::from_i32(*c))).collect();
    format!("{total} ({})", each.join(", "))
}

/// Bounds the log a misbehaving fleet can cause: at most [`RejectLog::PER_WINDOW`]
/// rejections are logged one by one per [`RejectLog::WINDOW`]; the rest are
/// counted by status and summed up with the next one logged.
#[derive(Default)]
pub struct RejectLog {
    window_start: Option<std::time::Instant>,
    logged: u32,
    suppressed: std::collections::BTreeMap<i32, u64>,
}

impl RejectLog {
    const WINDOW: std::time::Duration = std::time::Duration::from_secs(10);
    const PER_WINDOW: u32 = 20;

    /// `Some(what was held back since the last line)` if this rejection
    /// is to be logged; `None` if it is only counted.
    pub fn admit(
        &mut self,
        now: std::time::Instant,
        code: tonic::Code,
    ) -> Option<std::collections::BTreeMap<i32, u64>> {
        if self.window_start.is_none_or(|t| now.duration_since(t) >= Self::WINDOW) {
            self.window_start = Some(now);
            self.logged = 0;
        }
        if self.logged < Self::PER_WINDOW {
            self.logged += 1;
            return Some(std::mem::take(&mut self.suppressed));
        }
        *self.suppressed.entry(code as i32).or_default() += 1;
        None
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
        // With client certificates and no token, the TLS handshake was the check.
        if self.auth.write.is_some() || !self.auth.open && request.peer_certs().is_none() {
            self.auth
                .check(&request, &self.auth.write, "reports", "--token-file")
                .inspect_err(|s| self.reject(&peer, s))?;
        }
        let mut inbound = request.into_inner();
        let (tx, rx) = tokio::sync::mpsc::channel(64);
        let svc = self.clone();
        let mut stopping = self.stopping.clone();
        tokio::spawn(async move {
            let mut agent = String::new();
            loop {
                let next = tokio::select! {
                    next = inbound.next() => next,
                    () = async { drop(stopping.wait_for(|s| *s).await) } => {
                        let s = Status::unavailable(
                            "the collector is shutting down; reports not acknowledged were not kept: send them again",
                        );
                        let _ = tx.send(Err(s)).await;
                        break;
                    }
                };
                let msg = match next {
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
                match svc.accept(msg).await {
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

    type ReportsStream = Pin<Box<dyn Stream<Item = Result<pb::Report, Status>> + Send>>;

    async fn reports(&self, request: Request<pb::ReportsRequest>) -> Result<Response<Self::ReportsStream>, Status> {
        self.auth.check(&request, &self.auth.query, "queries", "--query-token-file")?;
        let q = request.into_inner();
        let snapshot = self.lock().snapshot(q.from_unix_ns);
        let reports = tokio::task::spawn_blocking(move || super::query::reports(&snapshot, &q))
            .await
            .map_err(|e| Status::internal(format!("reports failed: {e}")))??;
        Ok(Response::new(Box::pin(tokio_stream::iter(reports.into_iter().map(Ok)))))
    }

    async fn query(&self, request: Request<pb::QueryRequest>) -> Result<Response<pb::QueryResponse>, Status> {
        self.auth.check(&request, &self.auth.query, "queries", "--query-token-file")?;
        let q = request.into_inner();
        let (snapshot, agents) = {
            let store = self.lock();
            (store.snapshot(super::query::since(&q)), store.agents.len())
        };
        // Decoding and merging take a while: off the async workers, and
        // without the store, so that ingest goes on meanwhile.
        let resp = tokio::task::spawn_blocking(move || super::query::answer(&snapshot, agents, &q))
            .await
            .map_err(|e| Status::internal(format!("query failed: {e}")))?;
        Ok(Response::new(resp))
    }
}

#[cfg(test)]
mod tests {
    use std::time::{Duration, Instant};

    use super::{summary, RejectLog};

    #[test]
    fn a_flood_of_rejections_logs_a_bounded_number_of_lines_and_loses_no_count() {
        let mut log = RejectLog::default();
        let t0 = Instant::now();
        let mut lines = 0;
        let mut summed = 0;
        // 10,000 rejections over 25 s: three windows of 10 s.
        for i in 0..10_000u64 {
            let now = t0 + Duration::from_micros(i * 2_500);
            let code = if i % 2 == 0 { tonic::Code::ResourceExhausted } else { tonic::Code::InvalidArgument };
            if let Some(held) = log.admit(now, code) {
                lines += 1;
                summed += held.values().sum::<u64>();
            }
        }
        assert_eq!(lines, 3 * RejectLog::PER_WINDOW as u64, "20 lines per 10 s window");
        let pending: u64 = log.suppressed.values().sum();
        assert_eq!(lines + summed + pending, 10_000, "every rejection is logged, summed or pending");
        let held = log.admit(t0 + Duration::from_secs(40), tonic::Code::Unauthenticated).unwrap();
        assert_eq!(held.values().sum::<u64>(), pending);
        assert!(summary(&held).contains("ResourceExhausted") && summary(&held).contains("InvalidArgument"));
    }
}

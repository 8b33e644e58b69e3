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
        let agent = admissible(&r, crate::metrics::now_unix_ns(), &self.limits)?;
        let end = r.interval_end_unix_ns;
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
        self.lock().keep(&id, epoch, seq, &r, &bytes, &self.limits);
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
                let n: u64 = suppressed.values().sum();
                log::warn!("... and {n} more rejected streams not logged one by one: {}", summary(&suppressed));
            }
        }
    }
}

/// `ResourceExhausted 10, InvalidArgument 2`.
fn summary(by_code: &std::collections::BTreeMap<i32, u64>) -> String {
    let each: Vec<String> = by_code.iter().map(|(c, n)| format!("{:?} {n}", tonic::Code::from_i32(*c))).collect();
    each.join(", ")
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

/// Everything the collector checks of a decoded report before it keeps
/// it, at time `now` (ns since the epoch): identity, sequence, interval,
/// histograms. Pure, so that the fuzz properties run the service's own
/// checks. Returns the report's agent.
pub(crate) fn admissible<'a>(r: &'a pb::Report, now: i64, limits: &Limits) -> Result<&'a pb::AgentIdentity, Status> {
    let agent = r.agent.as_ref().ok_or_else(|| Status::invalid_argument("report without agent identity"))?;
    if agent.agent_id.is_empty() || agent.agent_id.len() > 128 {
        return Err(Status::invalid_argument("agent_id must be 1 to 128 bytes"));
    }
    if r.sequence == 0 {
        return Err(Status::invalid_argument("sequence numbers start at 1"));
    }
    let end = r.interval_end_unix_ns;
    if end > now + limits.max_future.as_nanos() as i64 {
        return Err(Status::invalid_argument(format!(
            "report {} ends {:.0} s in the future: is the agent's clock right?",
            r.sequence,
            (end - now) as f64 / 1e9
        )));
    }
    if end < now - limits.max_age.as_nanos() as i64 {
        return Err(Status::invalid_argument(format!(
            "report {} is older than --max-age ({:?})",
            r.sequence, limits.max_age
        )));
    }
    validate(r).map_err(|e| Status::invalid_argument(format!("report {}: {e}", r.sequence)))?;
    Ok(agent)
}

/// What a decoder cannot check: the histograms' layout and ranges.
fn validate(r: &pb::Report) -> Result<(), String> {
    let hist = |h: &Option<pb::Histogram>| h.as_ref().map_or(Ok(()), wire::check);
    let disk = |d: &pb::DiskStats| [&d.queue, &d.service, &d.total].into_iter().try_for_each(hist);
    // The host's devices too: the fleet diagnosis reads them.
    r.devices.iter().try_for_each(disk)?;
    for p in r.processes.iter().chain(&r.other) {
        for s in &p.syscalls {
            hist(&s.latency)?;
        }
        p.disk.iter().try_for_each(disk)?;
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
                        // Once per agent: one that reconnects in a loop
                        // must not fill the log.
                        let level = if svc.lock().agents.contains_key(&a.agent_id) {
                            log::Level::Debug
                        } else {
                            log::Level::Info
                        };
                        log::log!(level, "{peer}: agent {} ({}) streaming", a.agent_id, a.host_name);
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
        let (snapshot, agents, complete_from, evicted, holding) = {
            let store = self.lock();
            let since = super::query::since(&q);
            (
                store.snapshot(since),
                store.agents.len(),
                store.complete_from(),
                store.evicted_reports,
                store.holding_since_ns,
            )
        };
        // Decoding and merging take a while: off the async workers, and
        // without the store, so that ingest goes on meanwhile.
        let mut resp = tokio::task::spawn_blocking(move || super::query::answer(&snapshot, agents, &q))
            .await
            .map_err(|e| Status::internal(format!("query failed: {e}")))?;
        (resp.complete_from_unix_ns, resp.evicted_reports, resp.holding_since_unix_ns) =
            (complete_from, evicted, holding);
        Ok(Response::new(resp))
    }
}

#[cfg(test)]
mod tests {
    use std::{sync::Arc, time::Duration};

    use proptest::{collection::vec, option, prelude::*};
    use prost::Message as _;

    use super::*;
    use crate::wire::{
        fuzzing::{self, damage},
        pb::query_request::By,
    };

    /// A fixed clock (2027-01-15), so that a failing case fails again.
    const NOW: i64 = 1_800_000_000_000_000_000;
    const HOUR: i64 = 3_600_000_000_000;

    fn limits() -> Limits {
        Limits {
            retention: Duration::from_secs(3600),
            max_memory: 1 << 30,
            max_agents: 10,
            rate: 50.0,
            burst: 2_000.0,
            max_age: Duration::from_secs(24 * 3600),
            max_future: Duration::from_secs(300),
            full_resolution: Duration::from_secs(120),
        }
    }

    /// Every histogram of a report.
    fn histograms(r: &pb::Report) -> Vec<&pb::Histogram> {
        fn disk(d: &pb::DiskStats) -> [&Option<pb::Histogram>; 3] {
            [&d.queue, &d.service, &d.total]
        }
        let mut out: Vec<&Option<pb::Histogram>> = Vec::new();
        for p in r.processes.iter().chain(&r.other) {
            out.extend(p.syscalls.iter().map(|s| &s.latency));
            out.extend(p.disk.iter().flat_map(disk));
            out.extend(p.offcpu.iter().flat_map(|o| [&o.runqueue, &o.offcpu]));
            out.extend(p.tcp.iter().flat_map(|t| [&t.rtt, &t.connect]));
        }
        out.extend(r.devices.iter().flat_map(disk));
        out.extend(r.tcp_unknown_owner.iter().flat_map(|t| [&t.rtt, &t.connect]));
        out.into_iter().flatten().collect()
    }

    /// What the collector does with a report it kept, twice over (two
    /// agents' worth): every kind of fleet query and the fleet metrics.
    /// None may panic, what was admitted must be usable (every histogram
    /// converts), and the syscall query's counts must add up exactly.
    fn consume(r: &pb::Report) -> Result<(), TestCaseError> {
        for h in histograms(r) {
            prop_assert!(wire::from_wire(h).is_ok(), "admitted, yet unusable: {h:?}: {:?}", wire::from_wire(h));
        }
        // Agent a sent it once; agent b twice, merged as the store merges.
        let mut twice = r.clone();
        crate::collector::rollup::merge(&mut twice, r);
        let part = |r: &pb::Report, reports| crate::collector::query::Part {
            reports,
            ..crate::collector::query::Part::whole(Arc::from(r.encode_to_vec()))
        };
        let snapshot = vec![("a".to_string(), vec![part(r, 1)]), ("b".to_string(), vec![part(&twice, 2)])];
        for by in [By::Syscalls, By::DiskP99, By::Offcpu, By::TcpRtt, By::Diagnose] {
            let q = pb::QueryRequest { by: by as i32, limit: u32::MAX, ..Default::default() };
            let answer = crate::collector::query::answer(&snapshot, 2, &q);
            prop_assert_eq!(answer.reports, 3);
            if by != By::Syscalls {
                continue;
            }
            for row in &answer.rows {
                let want: u128 = r
                    .processes
                    .iter()
                    .filter(|p| p.comm == row.comm)
                    .flat_map(|p| &p.syscalls)
                    .filter_map(|s| s.latency.as_ref())
                    .flat_map(|h| &h.count)
                    .map(|c| 3 * u128::from(*c))
                    .sum();
                prop_assert_eq!(u128::from(row.count), want.min(u128::from(u64::MAX)), "count of {}", row.comm);
            }
        }
        crate::metrics::Metrics::new(100).add_wire("h", r);
        Ok(())
    }

    fn count() -> impl Strategy<Value = u64> {
        prop_oneof![0..1_000u64, Just(u64::MAX), u64::MAX / 2..=u64::MAX, any::<u64>()]
    }

    fn histogram() -> impl Strategy<Value = pb::Histogram> {
        let bucket = prop_oneof![4 => 0..agent_common::hist::BUCKETS as u32, 1 => any::<u32>()];
        let pairs = prop_oneof![
            4 => vec((bucket.clone(), count()), 0..6).prop_map(|v| v.into_iter().unzip()),
            1 => (vec(bucket, 0..6), vec(count(), 0..6)),
        ];
        (prop_oneof![4 => Just(wire::LAYOUT), 1 => any::<u32>()], pairs, any::<u64>(), option::of(any::<u64>()))
            .prop_map(|(layout, (bucket, count), max_ns, sum_ns)| pb::Histogram {
                layout,
                bucket,
                count,
                max_ns,
                sum_ns,
            })
    }

    fn disk() -> impl Strategy<Value = pb::DiskStats> {
        (option::of(histogram()), option::of(histogram()), option::of(histogram()), count()).prop_map(
            |(queue, service, total, count)| pb::DiskStats {
                device: "sda".into(),
                op: "write".into(),
                count,
                queue,
                service,
                total,
                ..Default::default()
            },
        )
    }

    fn tcp() -> impl Strategy<Value = pb::TcpStats> {
        (option::of(histogram()), option::of(histogram()), count(), prop_oneof![Just("CLOSED"), Just("ESTABLISHED")])
            .prop_map(|(rtt, connect, bytes_sent, state)| pb::TcpStats {
                remote: "10.0.0.1:80".into(),
                state: state.into(),
                rtt,
                connect,
                bytes_sent,
                connections: 1,
                ..Default::default()
            })
    }

    fn process() -> impl Strategy<Value = pb::Process> {
        let syscall = (option::of(histogram()), count(), count()).prop_map(|(latency, count, total_ns)| {
            pb::SyscallStats { name: "read".into(), latency, count, total_ns, ..Default::default() }
        });
        let offcpu = (option::of(histogram()), option::of(histogram()), count(), count()).prop_map(
            |(runqueue, offcpu, runqueue_ns, sleep_ns)| pb::OffcpuStats {
                runqueue,
                offcpu,
                runqueue_ns,
                sleep_ns,
                ..Default::default()
            },
        );
        (
            any::<u32>(),
            prop_oneof![Just("a"), Just("b"), Just("")],
            prop_oneof![Just(1u64), any::<u64>()],
            vec(syscall, 0..3),
            vec(disk(), 0..2),
            option::of(offcpu),
            vec(tcp(), 0..2),
        )
            .prop_map(|(pid, comm, merged, syscalls, disk, offcpu, tcp)| pb::Process {
                pid,
                comm: comm.into(),
                merged,
                syscalls,
                disk,
                offcpu,
                tcp,
                ..Default::default()
            })
    }

    /// Reports with any field values: identities empty or too long, any
    /// sequence, intervals ending anywhere in time, histograms with any
    /// layout, buckets and counts.
    fn report() -> impl Strategy<Value = pb::Report> {
        let identity = ("[a-z]{0,3}|x{120,140}", any::<u64>()).prop_map(|(agent_id, epoch)| pb::AgentIdentity {
            agent_id,
            epoch,
            ..Default::default()
        });
        let end = prop_oneof![3 => NOW - 30 * HOUR..NOW + HOUR, 1 => any::<i64>()];
        (
            option::of(identity),
            prop_oneof![Just(0u64), 1..10u64, any::<u64>()],
            end,
            vec(process(), 0..4),
            option::of(process()),
            vec(disk(), 0..2),
            vec(tcp(), 0..2),
        )
            .prop_map(|(agent, sequence, end, processes, other, devices, tcp_unknown_owner)| pb::Report {
                agent,
                sequence,
                interval_start_unix_ns: end.saturating_sub(1_000_000_000),
                interval_end_unix_ns: end,
                processes,
                other,
                devices,
                tcp_unknown_owner,
                ..Default::default()
            })
    }

    /// The collector's path for a message: decoded as tonic's codec decodes
    /// it (prost), then checked, then used.
    fn receive(bytes: &[u8]) -> Result<(), TestCaseError> {
        if let Ok(r) = pb::Report::decode(bytes) {
            if admissible(&r, NOW, &limits()).is_ok() {
                consume(&r)?;
            }
        }
        Ok(())
    }

    #[test]
    fn the_sample_report_is_admitted_and_used() {
        let r = fuzzing::sample_report(1, 7, NOW);
        assert_eq!(admissible(&r, NOW, &limits()).map(|a| a.epoch).ok(), Some(7));
        assert!(histograms(&r).len() > 10, "the sample has histograms to damage");
        consume(&r).unwrap();
    }

    /// Found by `fuzz_collector_validate`: the host's devices[] histograms
    /// went unchecked, so a bucket out of range was admitted (and the fleet
    /// diagnosis silently read an empty distribution).
    #[test]
    fn a_device_histogram_out_of_range_is_refused() {
        let mut r = fuzzing::sample_report(1, 7, NOW);
        assert!(r.devices.iter().any(|d| d.total.is_some()), "the sample has devices");
        r.devices[0].total =
            Some(pb::Histogram { layout: wire::LAYOUT, bucket: vec![258], count: vec![0], ..Default::default() });
        let refused = admissible(&r, NOW, &limits()).unwrap_err();
        assert!(refused.message().contains("bucket 258 out of range"), "{}", refused.message());
    }

    /// Found by `fuzz_collector_validate`: a count of 2^64 - 1 in one
    /// bucket, from two agents, wrapped around to 2^64 - 2 in the query;
    /// counts that overflow within one histogram (which made a process's
    /// count 0 and dropped it from the answer) are refused.
    #[test]
    fn histogram_counts_do_not_wrap_around() {
        let mut r = fuzzing::sample_report(1, 7, NOW);
        let h = |count: Vec<u64>| {
            Some(pb::Histogram { layout: wire::LAYOUT, bucket: vec![0, 1], count, ..Default::default() })
        };
        r.processes[0].syscalls[0].latency = h(vec![u64::MAX, 0]);
        admissible(&r, NOW, &limits()).unwrap();
        consume(&r).unwrap();
        r.processes[0].syscalls[0].latency = h(vec![u64::MAX, 1]);
        let refused = admissible(&r, NOW, &limits()).unwrap_err();
        assert!(refused.message().contains("add up past 2^64"), "{}", refused.message());
    }

    proptest! {
        #![proptest_config(fuzzing::config(2_000))]

        /// Any bytes as a message: refused or admitted, never a panic.
        #[test]
        fn fuzz_collector_bytes(bytes in vec(any::<u8>(), 0..2048)) {
            receive(&bytes)?;
        }

        /// A real report's encoding, damaged a few times over.
        #[test]
        fn fuzz_collector_damaged(damages in vec(damage(), 1..4)) {
            let mut bytes = fuzzing::sample_report(1, 7, NOW).encode_to_vec();
            for d in &damages {
                if !bytes.is_empty() {
                    d.apply(&mut bytes);
                }
            }
            receive(&bytes)?;
        }

        /// Reports with hostile field values: whatever is admitted, the
        /// collector can use.
        #[test]
        fn fuzz_collector_validate(r in report()) {
            match admissible(&r, NOW, &limits()) {
                Ok(agent) => {
                    prop_assert!(!agent.agent_id.is_empty() && agent.agent_id.len() <= 128 && r.sequence > 0);
                    prop_assert!((NOW - 24 * HOUR..=NOW + 300_000_000_000).contains(&r.interval_end_unix_ns));
                    consume(&r)?;
                }
                Err(s) => prop_assert_eq!(s.code(), tonic::Code::InvalidArgument),
            }
        }
    }

    #[test]
    fn a_flood_of_rejections_logs_a_bounded_number_of_lines_and_loses_no_count() {
        let mut log = RejectLog::default();
        let t0 = std::time::Instant::now();
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

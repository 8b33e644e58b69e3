//! Fleet queries: the collector's answer (histograms merged exactly
//! across agents) and `hostprobe query`, its client.

use std::{collections::HashMap, sync::Arc, time::Duration};

use prost::Message as _;
use tonic::Request;

use crate::{
    hist::Histogram,
    wire::{
        self,
        pb::{self, query_request::By},
    },
};

/// How a part's encoded report is kept.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum Packing {
    /// As encoded: the open minute, encoded for a query.
    Plain,
    /// Deflated: closed buckets (small, kept long).
    Deflate,
    /// Snappy: reports as received (one per report: it has to be cheap).
    Snappy,
}

/// One agent's reports over a span, as the store holds them: a bucket of
/// merged reports, the open minute, or one report as received.
pub struct Part {
    pub bytes: Arc<[u8]>,
    pub packing: Packing,
    /// Reports merged in it.
    pub reports: u64,
    pub from_ns: i64,
    pub to_ns: i64,
}

impl Part {
    pub fn report(&self) -> Option<pb::Report> {
        match self.packing {
            Packing::Plain => pb::Report::decode(&self.bytes[..]).ok(),
            Packing::Deflate => {
                let raw = super::journal::inflate(&self.bytes, super::journal::REPORT_MAX)?;
                pb::Report::decode(&raw[..]).ok()
            }
            Packing::Snappy => {
                pb::Report::decode(&snap::raw::Decoder::new().decompress_vec(&self.bytes).ok()?[..]).ok()
            }
        }
    }

    /// One report, encoded.
    #[cfg(test)]
    pub fn whole(bytes: Arc<[u8]>) -> Part {
        let r = pb::Report::decode(&bytes[..]).expect("a report");
        Part {
            bytes,
            packing: Packing::Plain,
            reports: 1,
            from_ns: r.interval_start_unix_ns,
            to_ns: r.interval_end_unix_ns,
        }
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

impl Row {
    /// Adds histogram `h` of `agents`; `total`: the sum of its values, if
    /// known (else what is known of it).
    fn add<'a>(&mut self, exe: &str, agents: impl IntoIterator<Item = &'a str>, h: &pb::Histogram, total: (u64, bool)) {
        let Ok(parsed) = wire::from_wire(h) else { return };
        if self.exe.is_empty() {
            self.exe = exe.to_string();
        }
        for a in agents {
            if !self.agents.contains(a) {
                self.agents.insert(a.to_string());
            }
        }
        self.hist.merge(&parsed);
        self.max_ns = self.max_ns.max(h.max_ns);
        self.total_ns = self.total_ns.saturating_add(total.0);
        self.sum_unknown |= !total.1;
    }
}

/// The rows, ranked as `by` asks, at most `limit` (0: 10).
fn ranked(rows: HashMap<String, Row>, by: By, limit: u32) -> Vec<pb::QueryRow> {
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
    out.truncate(if limit == 0 { 10 } else { limit as usize });
    out
}

/// The oldest interval end a query covers.
pub fn since(q: &pb::QueryRequest) -> i64 {
    let now = crate::metrics::now_unix_ns();
    if q.window_seconds == 0 {
        i64::MIN
    } else {
        now - i64::from(q.window_seconds) * 1_000_000_000
    }
}

/// Answers `q` from `snapshot` (per agent, its parts in the window);
/// `agents`: how many the collector knows. The span merged is set here;
/// what the collector holds (`complete_from_unix_ns`, `evicted_reports`),
/// by the caller.
pub fn answer(snapshot: &[(String, Vec<Part>)], agents: usize, q: &pb::QueryRequest) -> pb::QueryResponse {
    let by = By::try_from(q.by).unwrap_or(By::Syscalls);
    let mut resp = pb::QueryResponse { agents: agents as u32, ..Default::default() };
    let (mut from, mut to) = (i64::MAX, i64::MIN);
    let mut windows = std::collections::BTreeMap::new();
    let mut rows: HashMap<String, Row> = HashMap::new();
    // One part decoded at a time, folded in, dropped: a window of a large
    // fleet decoded at once would take many times its kept size.
    for (id, parts) in snapshot {
        for part in parts {
            let Some(r) = part.report() else { continue };
            resp.reports += part.reports;
            from = from.min(part.from_ns);
            to = to.max(part.to_ns);
            if by == By::Diagnose {
                windows.entry(id.clone()).or_insert_with(crate::fleet::AgentWindow::default).add(&r);
            } else {
                add_rows(&mut rows, id, &r, by, q);
            }
        }
    }
    if resp.reports > 0 {
        (resp.from_unix_ns, resp.to_unix_ns) = (from, to);
    }
    if by == By::Diagnose {
        let limit = if q.limit == 0 { 10 } else { q.limit as usize };
        resp.diagnoses = crate::fleet::diagnose_fleet(&windows, &q.comm, limit);
    } else {
        resp.rows = ranked(rows, by, q.limit);
    }
    resp
}

/// Adds what `q` asks for in report `r` of agent `id` to `rows`.
fn add_rows(rows: &mut HashMap<String, Row>, id: &str, r: &pb::Report, by: By, q: &pb::QueryRequest) {
    for p in r.processes.iter().filter(|p| q.comm.is_empty() || p.comm == q.comm) {
        // `total`: the exact sum of the histogram's values, if known.
        let mut add = |h: &Option<pb::Histogram>, total: Option<u64>| {
            if let Some(h) = h {
                let total = (total.unwrap_or(0), total.is_some());
                rows.entry(p.comm.clone()).or_default().add(&p.exe, [id], h, total);
            }
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

/// The answers of several collectors (each for its agents) as one: rows
/// merged by process name (histograms bucket by bucket, so percentiles
/// are the fleet's), diagnoses worst first, counts added; complete from
/// the latest of their `complete_from`. For an exact merge, each answer
/// must hold every row (`limit` past the number of names).
pub fn merge_answers(answers: Vec<pb::QueryResponse>, by: By, limit: u32) -> pb::QueryResponse {
    let mut out = pb::QueryResponse::default();
    let mut rows: HashMap<String, Row> = HashMap::new();
    let (mut from, mut to) = (i64::MAX, i64::MIN);
    for a in answers {
        out.agents += a.agents;
        out.reports += a.reports;
        out.evicted_reports += a.evicted_reports;
        out.complete_from_unix_ns = out.complete_from_unix_ns.max(a.complete_from_unix_ns);
        out.holding_since_unix_ns = out.holding_since_unix_ns.max(a.holding_since_unix_ns);
        if a.reports > 0 {
            from = from.min(a.from_unix_ns);
            to = to.max(a.to_unix_ns);
        }
        for r in &a.rows {
            if let Some(h) = &r.histogram {
                let total = (r.total_ns, h.sum_ns.is_some());
                rows.entry(r.comm.clone()).or_default().add(&r.exe, r.agents.iter().map(String::as_str), h, total);
            }
        }
        out.diagnoses.extend(a.diagnoses);
    }
    if out.reports > 0 {
        (out.from_unix_ns, out.to_unix_ns) = (from, to);
    }
    out.rows = ranked(rows, by, limit);
    let idle = crate::verdict::Kind::Idle.name();
    out.diagnoses.sort_by_key(|d| (d.kind == idle, std::cmp::Reverse(d.lost_ns), d.pid));
    out.diagnoses.truncate(if limit == 0 { 10 } else { limit as usize });
    out
}

/// One agent's reports (by id, or by host name) whose interval ends in
/// `[from, to)`, oldest first, from `snapshot` (per agent, its parts
/// ending at or after `from`): as received, or past `--full-resolution`
/// merged per minute (per ten minutes past ten minutes), those that begin
/// in the window.
pub fn reports(snapshot: &[(String, Vec<Part>)], q: &pb::ReportsRequest) -> Result<Vec<pb::Report>, tonic::Status> {
    let mut found: std::collections::BTreeMap<&str, Vec<pb::Report>> = Default::default();
    for (id, window) in snapshot {
        if !q.agent_id.is_empty() && *id != q.agent_id {
            continue;
        }
        for part in window {
            // Merged reports only if they begin in the window (give or take
            // one of their intervals): none brings figures from before it.
            let interval = (part.to_ns - part.from_ns) / part.reports.max(1) as i64;
            if part.reports > 1 && part.from_ns < q.from_unix_ns - interval {
                continue;
            }
            let Some(r) = part.report() else { continue };
            let host = r.agent.as_ref().map_or("", |a| a.host_name.as_str());
            if q.agent_id.is_empty() && host != q.host_name {
                continue;
            }
            if r.interval_end_unix_ns >= q.from_unix_ns && r.interval_end_unix_ns < q.to_unix_ns {
                found.entry(id).or_default().push(r);
            }
        }
    }
    if found.len() > 1 {
        let ids: Vec<&str> = found.keys().copied().collect();
        return Err(tonic::Status::invalid_argument(format!(
            "host {} is {} agents ({}): name one with --agent-id",
            q.host_name,
            ids.len(),
            ids.join(", ")
        )));
    }
    let mut out = found.into_values().next().unwrap_or_default();
    out.sort_by_key(|r| r.interval_end_unix_ns);
    Ok(out)
}

/// `hostprobe query`.
#[derive(Debug, clap::Args)]
pub struct QueryArgs {
    #[command(flatten)]
    pub client: crate::grpc::ClientArgs,
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
    #[arg(long, default_value = "1m", value_parser = crate::units::parse_window, value_name = "DURATION")]
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

/// One collector's answer to `req`.
async fn ask(url: &str, args: &QueryArgs, req: pb::QueryRequest) -> anyhow::Result<pb::QueryResponse> {
    let channel = crate::grpc::channel(url, &args.client).await?;
    let mut client = pb::collector_client::CollectorClient::new(channel);
    let mut req = Request::new(req);
    if let Some(t) = crate::grpc::token(&args.client)? {
        req.metadata_mut().insert("authorization", t);
    }
    let resp = client.query(req).await.map_err(|s| anyhow::anyhow!("{url}: {}", crate::grpc::status_message(&s)))?;
    Ok(resp.into_inner())
}

fn utc(ns: i64) -> String {
    let t = std::time::UNIX_EPOCH + Duration::from_nanos(ns.max(0) as u64);
    humantime::format_rfc3339_seconds(t).to_string()
}

/// What the answer covers, against the window asked for (which began at
/// `asked_from`, or `None`: everything kept); a warning when the
/// collectors do not hold all of it.
fn coverage(resp: &pb::QueryResponse, asked_from: Option<i64>) -> (String, Option<String>) {
    let span = if resp.reports == 0 {
        "nothing in the window".to_string()
    } else {
        format!("{} to {}", utc(resp.from_unix_ns), utc(resp.to_unix_ns))
    };
    let short = match asked_from {
        Some(asked) if resp.complete_from_unix_ns > asked => Some(format!(
            "the window asked for begins at {}, but the collector holds every report only since {}{}: \
             this answer covers less than the window",
            utc(asked),
            utc(resp.complete_from_unix_ns),
            if resp.complete_from_unix_ns > resp.holding_since_unix_ns {
                format!(
                    " (it dropped older reports for --max-memory, {} so far; raise it, or ask for a shorter window)",
                    resp.evicted_reports
                )
            } else {
                " (it started then)".to_string()
            }
        )),
        _ => None,
    };
    (span, short)
}

pub fn query_cmd(args: &QueryArgs) -> anyhow::Result<()> {
    anyhow::ensure!(!args.client.collectors.is_empty(), "--collector URL is required");
    let by = match args.by {
        _ if args.diagnose => By::Diagnose,
        QueryBy::Syscalls => By::Syscalls,
        QueryBy::Disk => By::DiskP99,
        QueryBy::Offcpu => By::Offcpu,
        QueryBy::TcpRtt => By::TcpRtt,
    };
    let several = args.client.collectors.len() > 1;
    let req = pb::QueryRequest {
        by: by as i32,
        // Merged exactly only from every row of each.
        limit: if several { u32::MAX } else { args.limit },
        endpoint: args.endpoint.clone().unwrap_or_default(),
        comm: args.comm.clone().unwrap_or_default(),
        window_seconds: if args.window.is_zero() { 0 } else { args.window.as_secs().max(1) as u32 },
    };
    let asked_from = (!args.window.is_zero()).then(|| crate::metrics::now_unix_ns() - args.window.as_nanos() as i64);
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    let answers = rt.block_on(async {
        let mut answers = Vec::new();
        for url in &args.client.collectors {
            answers.push(ask(url, args, req.clone()).await?);
        }
        anyhow::Ok(answers)
    })?;
    let resp = if several { merge_answers(answers, by, args.limit) } else { answers.into_iter().next().expect("one") };
    let (span, short) = coverage(&resp, asked_from);
    if let Some(s) = &short {
        eprintln!("hostprobe query: {s}");
    }
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
        let json = serde_json::json!({
            "collectors": args.client.collectors.len(), "agents": resp.agents, "reports": resp.reports,
            "from_unix_ns": resp.from_unix_ns, "to_unix_ns": resp.to_unix_ns,
            "asked_from_unix_ns": asked_from, "complete_from_unix_ns": resp.complete_from_unix_ns,
            "evicted_reports": resp.evicted_reports, "complete": short.is_none(), "rows": rows});
        println!("{json}");
        return Ok(());
    }
    let collectors = if several { format!(" from {} collectors", args.client.collectors.len()) } else { String::new() };
    println!("{} agents, {} reports{collectors} in the window: {span}", resp.agents, resp.reports);
    println!("{:<16} {:>6} {:>12} {:>10} {:>10} {:>10}", "COMM", "AGENTS", "COUNT", "TOTAL", "p50", "p99");
    for r in &resp.rows {
        println!(
            "{:<16} {:>6} {:>12} {:>10} {:>10} {:>10}",
            r.comm,
            r.agents.len(),
            r.count,
            crate::units::duration(r.total_ns),
            crate::units::duration(r.p50_ns),
            crate::units::duration(r.p99_ns)
        );
    }
    Ok(())
}

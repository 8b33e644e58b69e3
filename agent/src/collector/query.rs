//! Fleet queries: the collector's answer (histograms merged exactly
//! across agents) and `hostprobe query`, its client.

use std::{collections::HashMap, sync::Arc, time::Duration};

use anyhow::Context as _;
use prost::Message as _;
use tonic::Request;

use crate::{
    hist::Histogram,
    wire::{
        self,
        pb::{self, query_request::By},
    },
};

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

/// The oldest interval end a query covers.
pub fn since(q: &pb::QueryRequest) -> i64 {
    let now = crate::metrics::now_unix_ns();
    if q.window_seconds == 0 {
        i64::MIN
    } else {
        now - i64::from(q.window_seconds) * 1_000_000_000
    }
}

/// Answers `q` from `snapshot` (per agent, its reports in the window);
/// `agents`: how many the collector knows.
pub fn answer(snapshot: &[(String, Vec<Arc<[u8]>>)], agents: usize, q: &pb::QueryRequest) -> pb::QueryResponse {
    let by = By::try_from(q.by).unwrap_or(By::Syscalls);
    if by == By::Diagnose {
        let mut windows = std::collections::BTreeMap::new();
        let mut reports = 0;
        for (id, window) in snapshot {
            for bytes in window {
                let Ok(r) = pb::Report::decode(&bytes[..]) else { continue };
                reports += 1;
                windows.entry(id.clone()).or_insert_with(crate::fleet::AgentWindow::default).add(&r);
            }
        }
        let limit = if q.limit == 0 { 10 } else { q.limit as usize };
        let diagnoses = crate::fleet::diagnose_fleet(&windows, &q.comm, limit);
        return pb::QueryResponse { agents: agents as u32, reports, diagnoses, ..Default::default() };
    }
    let mut rows: HashMap<String, Row> = HashMap::new();
    let mut reports = 0;
    for (id, window) in snapshot {
        for bytes in window {
            let Ok(r) = pb::Report::decode(&bytes[..]) else { continue };
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
    pb::QueryResponse { rows: out, agents: agents as u32, reports, diagnoses: Vec::new() }
}

/// One agent's reports (by id, or by host name) whose interval ends in
/// `[from, to)`, oldest first, from `snapshot` (per agent, its reports
/// ending at or after `from`).
pub fn reports(
    snapshot: &[(String, Vec<Arc<[u8]>>)],
    q: &pb::ReportsRequest,
) -> Result<Vec<pb::Report>, tonic::Status> {
    let mut found: std::collections::BTreeMap<&str, Vec<pb::Report>> = Default::default();
    for (id, window) in snapshot {
        if !q.agent_id.is_empty() && *id != q.agent_id {
            continue;
        }
        for bytes in window {
            let Ok(r) = pb::Report::decode(&bytes[..]) else { continue };
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

pub fn query_cmd(args: &QueryArgs) -> anyhow::Result<()> {
    let url = args.client.collectors.first().context("--collector URL is required")?.clone();
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    rt.block_on(async {
        let channel = crate::grpc::channel(&url, &args.client).await?;
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
        if let Some(t) = crate::grpc::token(&args.client)? {
            req.metadata_mut().insert("authorization", t);
        }
        let resp =
            client.query(req).await.map_err(|s| anyhow::anyhow!("{}", crate::grpc::status_message(&s)))?.into_inner();
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
                crate::units::duration(r.total_ns),
                crate::units::duration(r.p50_ns),
                crate::units::duration(r.p99_ns)
            );
        }
        Ok(())
    })
}

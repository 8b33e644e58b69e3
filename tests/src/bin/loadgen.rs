//! Synthetic agents for `cargo xtask bench` and `cargo xtask hostile`:
//! AGENTS concurrent streams to a collector, each sending one report with
//! PROCESSES processes per second for SECONDS (gzip, as the agent sends
//! them); prints one JSON line with what was sent and acknowledged.
//!
//! With BAD_PERCENT, that share of the agents misbehave for the whole run,
//! in four kinds taken in turn: a flood (reports back to back, as fast as
//! the collector takes them), malformed bytes, an oversized message (5 MiB)
//! and a wrong token, each retried as soon as the collector has refused it.
//! Well-behaved agents present TOKEN, if given. The JSON line then also has,
//! per kind, the streams tried and the status codes they ended with.
//!
//! ```text
//! loadgen URL AGENTS PROCESSES SECONDS [BAD_PERCENT [TOKEN]]
//! ```

use std::{
    collections::BTreeMap,
    time::{Duration, Instant},
};

use hostprobe::wire::pb::{self, collector_client::CollectorClient};
use hostprobe_tests::{hostile_stream, synthetic_report};
use prost::Message as _;
use tonic::codec::CompressionEncoding;

/// A plausible process: 12 syscalls, a disk item, off-CPU figures and two
/// TCP connections, each histogram with a handful of non-empty buckets.
fn process(pid: u32) -> pb::Process {
    let hist = |base: u32| pb::Histogram {
        layout: 1,
        bucket: (base..base + 6).collect(),
        count: vec![3, 40, 120, 60, 9, 1],
        max_ns: 1 << (base / 8 + 7),
        ..Default::default()
    };
    pb::Process {
        pid,
        comm: format!("svc-{}", pid % 40),
        exe: format!("/usr/bin/svc-{}", pid % 40),
        merged: 1,
        syscalls: (0..12)
            .map(|i| pb::SyscallStats {
                name: format!("sys_{i}"),
                nr: i,
                count: 233,
                total_ns: 233 * 900,
                latency: Some(hist(40 + i)),
                ..Default::default()
            })
            .collect(),
        disk: vec![pb::DiskStats {
            device: "vda".into(),
            op: "read".into(),
            count: 50,
            bytes: 50 * 4096,
            queue: Some(hist(60)),
            service: Some(hist(90)),
            total: Some(hist(92)),
            ..Default::default()
        }],
        offcpu: Some(pb::OffcpuStats {
            on_cpu_ns: 10_000_000,
            runqueue_ns: 200_000,
            sleep_ns: 900_000_000,
            runqueue: Some(hist(50)),
            offcpu: Some(hist(100)),
            ..Default::default()
        }),
        tcp: (0..2)
            .map(|i| pb::TcpStats {
                remote: format!("10.0.0.{i}:443"),
                local: "*".into(),
                state: "ESTABLISHED".into(),
                direction: "connect".into(),
                rtt: Some(hist(110)),
                bytes_sent: 10_000,
                bytes_received: 90_000,
                connections: 1,
                ..Default::default()
            })
            .collect(),
        ..Default::default()
    }
}

/// The process name whose count the fleet window bench checks.
const MARKED: &str = "svc-0";

/// Syscalls (histogram counts) of the processes named `comm` in one report.
fn calls_per_report(processes: &[pb::Process], comm: &str) -> u64 {
    processes
        .iter()
        .filter(|p| p.comm == comm)
        .flat_map(|p| &p.syscalls)
        .filter_map(|s| s.latency.as_ref())
        .flat_map(|h| &h.count)
        .sum()
}

/// What a misbehaving agent does, again and again, for the whole run.
#[derive(Clone, Copy, Debug)]
enum Bad {
    Flood,
    Malformed,
    Oversized,
    WrongToken,
}

impl Bad {
    const ALL: [Bad; 4] = [Bad::Flood, Bad::Malformed, Bad::Oversized, Bad::WrongToken];

    fn name(self) -> &'static str {
        match self {
            Bad::Flood => "flood",
            Bad::Malformed => "malformed",
            Bad::Oversized => "oversized",
            Bad::WrongToken => "wrong_token",
        }
    }
}

/// Misbehaves as `kind` until `end`; the status code of every stream tried.
async fn misbehave(url: String, id: String, kind: Bad, token: Option<String>, end: Instant) -> Vec<tonic::Code> {
    let mut codes = Vec::new();
    let mut seq = 0;
    while Instant::now() < end {
        let (messages, token) = match kind {
            Bad::Flood => {
                let batch =
                    (seq + 1..=seq + 3_000).map(|s| synthetic_report(&id, s, Vec::new()).encode_to_vec()).collect();
                seq += 3_000;
                (batch, token.clone())
            }
            Bad::Malformed => (vec![vec![0xff; 64]], token.clone()),
            Bad::Oversized => (vec![vec![0x0a; 5 << 20]], token.clone()),
            Bad::WrongToken => {
                seq += 1;
                (vec![synthetic_report(&id, seq, Vec::new()).encode_to_vec()], Some("not-the-token".into()))
            }
        };
        let status =
            tokio::time::timeout(Duration::from_secs(10), hostile_stream(&url, token.as_deref(), messages)).await;
        codes.push(status.map(|s| s.code()).unwrap_or(tonic::Code::DeadlineExceeded));
        // Refused: try again a moment later, as a broken agent's retry loop would.
        tokio::time::sleep(Duration::from_millis(if matches!(kind, Bad::Oversized) { 1_000 } else { 100 })).await;
    }
    codes
}

/// A well-behaved agent: one report a second; (sent, acked).
async fn behave(
    url: String,
    a: u32,
    agents: u32,
    seconds: u64,
    template: Vec<pb::Process>,
    token: Option<String>,
) -> (u64, u64) {
    let channel = tonic::transport::Endpoint::from_shared(url).unwrap().connect().await.expect("connect");
    let mut client = CollectorClient::new(channel)
        .send_compressed(CompressionEncoding::Gzip)
        .accept_compressed(CompressionEncoding::Gzip);
    let (tx, rx) = tokio::sync::mpsc::channel(4);
    let mut request = tonic::Request::new(tokio_stream::wrappers::ReceiverStream::new(rx));
    if let Some(t) = &token {
        request.metadata_mut().insert("authorization", format!("Bearer {t}").parse().unwrap());
    }
    let mut acks = client.stream(request).await.expect("stream").into_inner();
    let acked = tokio::spawn(async move {
        let mut n = 0u64;
        while let Ok(Some(_)) = acks.message().await {
            n += 1;
        }
        n
    });
    // Spread the agents over the second, as real ones are.
    tokio::time::sleep(Duration::from_millis(u64::from(a) * 1000 / u64::from(agents))).await;
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    let mut sent = 0;
    for seq in 1..=seconds {
        tick.tick().await;
        if tx.send(synthetic_report(&format!("synthetic-{a}"), seq, template.clone())).await.is_err() {
            break;
        }
        sent += 1;
    }
    drop(tx);
    (sent, acked.await.unwrap_or(0))
}

#[tokio::main(flavor = "multi_thread", worker_threads = 1)]
async fn main() {
    let args: Vec<String> = std::env::args().collect();
    let url = args[1].clone();
    let (agents, processes, seconds): (u32, u32, u64) =
        (args[2].parse().unwrap(), args[3].parse().unwrap(), args[4].parse().unwrap());
    let bad_percent: u32 = args.get(5).map_or(0, |p| p.parse().expect("BAD_PERCENT"));
    let token = args.get(6).cloned();
    hostprobe::collector::raise_fd_limit();
    let template: Vec<pb::Process> = (0..processes).map(|p| process(1000 + p)).collect();
    let size = prost::Message::encoded_len(&pb::Report { processes: template.clone(), ..Default::default() });
    let start = Instant::now();
    let end = start + Duration::from_secs(seconds);
    // Every (100 / BAD_PERCENT)th agent misbehaves, the kinds in turn.
    let every = 100u32.checked_div(bad_percent).map_or(u32::MAX, |e| e.max(1));
    let (mut good, mut bad) = (Vec::new(), Vec::new());
    for a in 0..agents {
        let (url, token) = (url.clone(), token.clone());
        if a % every == every - 1 {
            let kind = Bad::ALL[bad.len() % Bad::ALL.len()];
            bad.push((kind, tokio::spawn(misbehave(url, format!("misbehaving-{a}"), kind, token, end))));
        } else {
            good.push(tokio::spawn(behave(url, a, agents, seconds, template.clone(), token)));
        }
    }
    let (mut sent, mut acked) = (0, 0);
    let good_agents = good.len();
    for t in good {
        let (s, a) = t.await.unwrap_or_default();
        (sent, acked) = (sent + s, acked + a);
    }
    let elapsed = start.elapsed().as_secs_f64();
    let mut kinds: BTreeMap<&str, (u64, BTreeMap<String, u64>)> = BTreeMap::new();
    for (kind, t) in bad {
        let entry = kinds.entry(kind.name()).or_default();
        entry.0 += 1;
        for code in t.await.unwrap_or_default() {
            *entry.1.entry(format!("{code:?}")).or_default() += 1;
        }
    }
    let misbehaving: serde_json::Map<String, serde_json::Value> = kinds
        .into_iter()
        .map(|(k, (n, codes))| (k.to_string(), serde_json::json!({"agents": n, "codes": codes})))
        .collect();
    println!(
        "{}",
        serde_json::json!({
            "agents": agents,
            "good_agents": good_agents,
            "processes": processes,
            "seconds": seconds,
            "sent": sent,
            "acked": acked,
            "report_bytes": size,
            // A marked process name and its syscall count per report, for
            // checking a fleet query's count over a window exactly.
            "marked": {"comm": MARKED, "calls_per_report": calls_per_report(&template, MARKED)},
            "elapsed_s": elapsed,
            "misbehaving": misbehaving,
        })
    );
}

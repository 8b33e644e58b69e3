//! Synthetic agents for `cargo xtask bench`: AGENTS concurrent streams to a
//! collector, each sending one report with PROCESSES processes per second
//! for SECONDS (gzip, as the agent sends them); prints one JSON line with
//! what was sent and acknowledged.
//!
//! ```text
//! loadgen URL AGENTS PROCESSES SECONDS
//! ```

use std::time::{Duration, Instant};

use hostprobe::wire::pb::{self, collector_client::CollectorClient};
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

#[tokio::main(flavor = "multi_thread", worker_threads = 1)]
async fn main() {
    let args: Vec<String> = std::env::args().collect();
    let url = args[1].clone();
    let (agents, processes, seconds): (u32, u32, u64) =
        (args[2].parse().unwrap(), args[3].parse().unwrap(), args[4].parse().unwrap());
    hostprobe::collector::raise_fd_limit();
    let template: Vec<pb::Process> = (0..processes).map(|p| process(1000 + p)).collect();
    let size = prost::Message::encoded_len(&pb::Report { processes: template.clone(), ..Default::default() });
    let start = Instant::now();
    let mut tasks = Vec::new();
    for a in 0..agents {
        let (url, template) = (url.clone(), template.clone());
        tasks.push(tokio::spawn(async move {
            let channel = tonic::transport::Endpoint::from_shared(url).unwrap().connect().await.expect("connect");
            let mut client = CollectorClient::new(channel)
                .send_compressed(CompressionEncoding::Gzip)
                .accept_compressed(CompressionEncoding::Gzip);
            let (tx, rx) = tokio::sync::mpsc::channel(4);
            let mut acks =
                client.stream(tokio_stream::wrappers::ReceiverStream::new(rx)).await.expect("stream").into_inner();
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
            for seq in 1..=seconds {
                tick.tick().await;
                let now = hostprobe::metrics::now_unix_ns();
                let report = pb::Report {
                    agent: Some(pb::AgentIdentity {
                        agent_id: format!("synthetic-{a}"),
                        epoch: 1,
                        ..Default::default()
                    }),
                    sequence: seq,
                    interval_start_unix_ns: now - 1_000_000_000,
                    interval_end_unix_ns: now,
                    processes: template.clone(),
                    ..Default::default()
                };
                if tx.send(report).await.is_err() {
                    break;
                }
            }
            drop(tx);
            acked.await.unwrap_or(0)
        }));
    }
    let mut acked = 0;
    for t in tasks {
        acked += t.await.unwrap_or(0);
    }
    println!(
        "{{\"agents\":{agents},\"processes\":{processes},\"seconds\":{seconds},\"sent\":{},\"acked\":{acked},\"report_bytes\":{size},\"elapsed_s\":{:.2}}}",
        u64::from(agents) * seconds,
        start.elapsed().as_secs_f64()
    );
}

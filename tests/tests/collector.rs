//! Streaming to a collector: the real agent (probes in the kernel) and the
//! real `hostprobe collector` as processes, killed and restarted as the
//! tests say; what arrived is read back from the collector's own journal.

use std::{
    path::Path,
    time::{Duration, Instant},
};

use hostprobe::wire::pb;
use hostprobe_tests::{
    counted_report, free_port, hostile_stream, hostprobe, process_reports, send_reports, synthetic_report, Agent,
    Collector, Pki, TempDir, Workload,
};
use prost::Message as _;

/// (epoch, sequence) of every report of `agent` in the collector's journal,
/// in journal order.
fn journal(dir: &Path, agent: &str) -> Vec<(u64, u64)> {
    let replay = hostprobe::collector::journal::read_dir(dir).expect("journal");
    assert_eq!(replay.corrupt, 0, "damaged journal records");
    let mut out = Vec::new();
    for bytes in &replay.records {
        let r = pb::Report::decode(bytes.as_slice()).expect("journal entry");
        let a = r.agent.expect("identity");
        if a.agent_id == agent {
            out.push((a.epoch, r.sequence));
        }
    }
    out
}

/// Asserts the journal holds sequences 1..=n of one epoch, each once, in order.
fn assert_exactly_once(dir: &Path, agent: &str, n: usize) {
    let got = journal(dir, agent);
    let epochs: std::collections::BTreeSet<u64> = got.iter().map(|(e, _)| *e).collect();
    assert_eq!(epochs.len(), 1, "one epoch: {epochs:?}");
    let seqs: Vec<u64> = got.iter().map(|(_, s)| *s).collect();
    let want: Vec<u64> = (1..=n as u64).collect();
    assert_eq!(seqs, want, "every report exactly once, in order ({n} printed by the agent)");
}

/// Reads the agent's output until its log says `text`.
fn until_logged(agent: &mut Agent, text: &str, limit: Duration) {
    let end = Instant::now() + limit;
    while !agent.stderr().contains(text) {
        assert!(Instant::now() < end, "agent did not log {text:?}; stderr:\n{}", agent.stderr());
        agent.run_for(Duration::from_millis(100));
    }
}

fn agent_args<'a>(url: &'a str, id: &'a str, extra: &[&'a str]) -> Vec<&'a str> {
    let mut v = vec!["--probes", "syscall", "--collector", url, "--agent-id", id];
    v.extend_from_slice(extra);
    v
}

#[test]
fn a_collector_outage_loses_nothing_and_duplicates_nothing() {
    let data = TempDir::new("outage");
    let port = free_port();
    let url = format!("http://127.0.0.1:{port}");
    let collector = Collector::start(port, &["--plaintext", "--data-dir", data.path()]);
    let mut agent = Agent::start(&agent_args(&url, "outage", &["--plaintext"]));
    agent.run_for(Duration::from_secs(2));
    collector.kill();
    agent.run_for(Duration::from_secs(20));
    let collector = Collector::start(port, &["--plaintext", "--data-dir", data.path()]);
    until_logged(&mut agent, "caught up", Duration::from_secs(60));
    agent.run_for(Duration::from_secs(1));
    let (reports, log) = agent.stop_logged();
    let n = reports.len();
    drop(collector);
    assert!(log.contains("retrying in"), "the outage is logged: {log}");
    assert!(log.contains("connected after an outage"), "the reconnection is logged: {log}");
    assert!(n > 100, "{n} reports at 200 ms over ~25 s");
    assert_exactly_once(&data.0, "outage", n);
}

#[test]
fn sigterm_stops_a_collector_with_agents_streaming_and_nothing_is_lost() {
    // A stream never ends on its own: the collector ends its agents'
    // streams when told to stop (systemd's stop, a pod's termination), and
    // they resend what was not acknowledged to the next one.
    let data = TempDir::new("sigterm");
    let port = free_port();
    let url = format!("http://127.0.0.1:{port}");
    let mut collector = Collector::start(port, &["--plaintext", "--data-dir", data.path()]);
    let mut agent = Agent::start(&agent_args(&url, "sigterm", &["--plaintext"]));
    agent.run_for(Duration::from_secs(2));
    let t = Instant::now();
    assert!(collector.terminate(Duration::from_secs(5)), "still running 5 s after SIGTERM:\n{}", collector.log());
    eprintln!("stopped {} ms after SIGTERM", t.elapsed().as_millis());
    assert!(collector.log().contains("stopped:"), "{}", collector.log());
    agent.run_for(Duration::from_secs(3));
    let _collector = Collector::start(port, &["--plaintext", "--data-dir", data.path()]);
    until_logged(&mut agent, "caught up", Duration::from_secs(60));
    agent.run_for(Duration::from_secs(1));
    let (reports, log) = agent.stop_logged();
    assert!(log.contains("shutting down"), "the agent says why its stream ended: {log}");
    assert_exactly_once(&data.0, "sigterm", reports.len());
}

#[test]
fn with_a_spool_an_agent_restart_during_the_outage_loses_nothing() {
    let data = TempDir::new("spool-collector");
    let spool = TempDir::new("spool-agent");
    let port = free_port();
    let url = format!("http://127.0.0.1:{port}");
    let collector = Collector::start(port, &["--plaintext", "--data-dir", data.path()]);
    let args = agent_args(&url, "spooled", &["--plaintext", "--spool-dir", spool.path()]);
    let mut first = Agent::start(&args);
    first.run_for(Duration::from_secs(2));
    collector.kill();
    first.run_for(Duration::from_secs(3));
    let (reports, first_log) = first.stop_logged();
    let n1 = reports.len();
    assert!(first_log.contains("stay in the spool"), "{first_log}");
    let mut second = Agent::start(&args);
    assert!(second.stderr().contains("unacknowledged reports from before"), "{}", second.stderr());
    second.run_for(Duration::from_secs(3));
    let collector = Collector::start(port, &["--plaintext", "--data-dir", data.path()]);
    until_logged(&mut second, "caught up", Duration::from_secs(60));
    let n2 = second.stop().len();
    drop(collector);
    assert_exactly_once(&data.0, "spooled", n1 + n2);
    let left: Vec<_> = std::fs::read_dir(&spool.0).unwrap().filter_map(|e| e.ok()).map(|e| e.file_name()).collect();
    assert!(left.iter().all(|f| f == "state"), "the spool is empty once all is acknowledged: {left:?}");
}

/// Runs an agent for 3 s; returns its stderr.
fn agent_for_a_while(args: &[&str]) -> String {
    let out = hostprobe()
        .args(["run", "--output", "json", "--interval", "200ms", "--duration", "3s"])
        .args(args)
        .output()
        .expect("run agent");
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8_lossy(&out.stderr).into_owned()
}

#[test]
fn tls_token_and_client_certificates_are_enforced_with_clear_messages() {
    let pki = Pki::new();
    let data = TempDir::new("tls");
    let port = free_port();
    let (ca, cert, key, token) =
        (pki.file("ca.pem"), pki.file("server.pem"), pki.file("server.key"), pki.file("token"));
    let collector = Collector::start(
        port,
        &[
            "--tls-cert",
            &cert,
            "--tls-key",
            &key,
            "--client-ca",
            &ca,
            "--token-file",
            &token,
            "--data-dir",
            data.path(),
        ],
    );
    let url = format!("https://127.0.0.1:{port}");
    let (client_cert, client_key) = (pki.file("client.pem"), pki.file("client.key"));
    let good = ["--ca-file", ca.as_str(), "--client-cert", client_cert.as_str(), "--client-key", client_key.as_str()];

    // The well-configured agent gets through.
    let mut args = agent_args(&url, "tls-good", &good);
    args.extend(["--token-file", token.as_str()]);
    let log = agent_for_a_while(&args);
    assert!(log.contains("connected"), "{log}");
    assert!(!journal(&data.0, "tls-good").is_empty(), "reports arrived over mTLS");

    // A wrong token.
    let wrong = pki.file("wrong-token");
    let mut args = agent_args(&url, "tls-wrong-token", &good);
    args.extend(["--token-file", wrong.as_str()]);
    let log = agent_for_a_while(&args);
    assert!(log.contains("refused our credentials"), "wrong token: {log}");

    // No TLS at all.
    let plain = format!("http://127.0.0.1:{port}");
    let log = agent_for_a_while(&agent_args(&plain, "tls-none", &["--plaintext", "--token-file", &token]));
    assert!(log.contains("may require TLS"), "plaintext to a TLS collector: {log}");

    // A client certificate from a CA the collector does not trust.
    let (rogue_cert, rogue_key) = (pki.file("rogue.pem"), pki.file("rogue.key"));
    let mut args =
        agent_args(&url, "tls-rogue", &["--ca-file", &ca, "--client-cert", &rogue_cert, "--client-key", &rogue_key]);
    args.extend(["--token-file", token.as_str()]);
    let log = agent_for_a_while(&args);
    assert!(log.contains("TLS"), "untrusted client certificate: {log}");

    for refused in ["tls-wrong-token", "tls-none", "tls-rogue"] {
        assert!(journal(&data.0, refused).is_empty(), "{refused} got reports in");
    }
    drop(collector);
}

fn valid_report(agent: &str, seq: u64) -> Vec<u8> {
    synthetic_report(agent, seq, Vec::new()).encode_to_vec()
}

#[test]
fn hostile_input_is_refused_and_a_good_agent_loses_nothing() {
    let data = TempDir::new("hostile");
    let port = free_port();
    let url = format!("http://127.0.0.1:{port}");
    let mut collector =
        Collector::start(port, &["--plaintext", "--data-dir", data.path(), "--max-message", "1M", "--burst", "500"]);
    let mut agent = Agent::start(&agent_args(&url, "well-behaved", &["--plaintext"]));
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();

    let malformed = rt.block_on(hostile_stream(&url, None, vec![vec![0xff; 64]]));
    eprintln!("malformed: {malformed:?}");
    assert_eq!(malformed.code(), tonic::Code::InvalidArgument, "{malformed:?}");
    let oversized = rt.block_on(hostile_stream(&url, None, vec![vec![0x0a; 2 << 20]]));
    eprintln!("oversized: {oversized:?}");
    assert!(matches!(oversized.code(), tonic::Code::OutOfRange | tonic::Code::ResourceExhausted), "{oversized:?}");
    let flood = rt.block_on(hostile_stream(&url, None, (1..=5_000).map(|s| valid_report("flooder", s)).collect()));
    eprintln!("flood: {flood:?}");
    assert_eq!(flood.code(), tonic::Code::ResourceExhausted, "{flood:?}");
    let future = {
        let mut r = pb::Report::decode(valid_report("time-traveller", 1).as_slice()).unwrap();
        r.interval_end_unix_ns += 3_600_000_000_000;
        rt.block_on(hostile_stream(&url, None, vec![r.encode_to_vec()]))
    };
    assert_eq!(future.code(), tonic::Code::InvalidArgument, "{future:?}");

    agent.run_for(Duration::from_secs(1));
    let n = agent.stop().len();
    assert!(collector.alive(), "the collector is still up");
    let log = collector.log();
    assert!(log.matches("rejected").count() >= 4, "each rejection is logged: {log}");
    assert_exactly_once(&data.0, "well-behaved", n);
    let flooded = journal(&data.0, "flooder").len();
    assert!((400..=600).contains(&flooded), "the flood was cut at the burst: {flooded} stored");
}

#[test]
fn query_merges_one_process_seen_by_two_agents_exactly() {
    let port = free_port();
    let url = format!("http://127.0.0.1:{port}");
    let collector = Collector::start(port, &["--plaintext"]);
    let mut workload = Workload::spawn(&["getppid", "20000"]);
    let pid = workload.pid().to_string();
    let mut a1 = Agent::start(&agent_args(&url, "agent-one", &["--plaintext", "--pid", &pid]));
    let mut a2 = Agent::start(&agent_args(&url, "agent-two", &["--plaintext", "--pid", &pid]));
    workload.go();
    workload.wait();
    a1.run_for(Duration::from_millis(600));
    a2.run_for(Duration::from_millis(600));
    let (r1, r2) = (a1.stop(), a2.stop());
    let count = |reports: &[serde_json::Value]| -> u64 {
        process_reports(reports, pid.parse().unwrap())
            .iter()
            .map(|p| p["syscall_total"]["count"].as_u64().unwrap())
            .sum()
    };
    let (c1, c2) = (count(&r1), count(&r2));
    assert!(c1 >= 20_000 && c2 >= 20_000, "each agent saw the workload: {c1}, {c2}");

    let out = hostprobe()
        .args(["query", "--collector", &url, "--plaintext", "--comm", "workload", "--json"])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let row = &v["rows"][0];
    assert_eq!(row["comm"], "workload", "{v}");
    assert_eq!(row["agents"], serde_json::json!(["agent-one", "agent-two"]), "{v}");
    assert_eq!(row["count"].as_u64().unwrap(), c1 + c2, "merged exactly: {v}");

    let table = hostprobe().args(["query", "--collector", &url, "--plaintext"]).output().unwrap();
    let table = String::from_utf8_lossy(&table.stdout);
    assert!(table.contains("workload") && table.contains("COMM"), "{table}");
    drop(collector);
}

/// `hostprobe query --json` with `args`: (reports in the window, count of the first row).
fn query_json(url: &str, args: &[&str]) -> (u64, u64) {
    let out = hostprobe().args(["query", "--collector", url, "--plaintext", "--json"]).args(args).output().unwrap();
    assert!(out.status.success(), "query {args:?}: {}", String::from_utf8_lossy(&out.stderr));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    (v["reports"].as_u64().unwrap(), v["rows"][0]["count"].as_u64().unwrap_or(0))
}

#[test]
fn query_window_zero_means_everything_the_collector_keeps() {
    let port = free_port();
    let url = format!("http://127.0.0.1:{port}");
    let collector = Collector::start(port, &["--plaintext", "--retention", "10m"]);
    // One report from 3 minutes ago (outside a 1 m window, inside the
    // retention) and one from now.
    let reports = vec![
        counted_report("window-agent", 1, "oldtimer", 7, Duration::from_secs(180)),
        counted_report("window-agent", 2, "oldtimer", 5, Duration::ZERO),
    ];
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    let acked = rt.block_on(async {
        let mut client = pb::collector_client::CollectorClient::connect(url.clone()).await.unwrap();
        let mut acks = client.stream(tokio_stream::iter(reports)).await.unwrap().into_inner();
        let mut n = 0;
        while n < 2 {
            acks.message().await.unwrap().expect("an ack for each report");
            n += 1;
        }
        n
    });
    assert_eq!(acked, 2);

    assert_eq!(query_json(&url, &["--comm", "oldtimer", "--window", "1m"]), (1, 5), "the last minute");
    assert_eq!(query_json(&url, &["--comm", "oldtimer", "--window", "0s"]), (2, 12), "everything kept");
    drop(collector);
}

/// `hostprobe query --json ARGS` over the collectors `urls`.
fn query_value(urls: &[&str], args: &[&str]) -> serde_json::Value {
    let mut cmd = hostprobe();
    cmd.arg("query").arg("--plaintext").arg("--json");
    for u in urls {
        cmd.args(["--collector", u]);
    }
    let out = cmd.args(args).output().unwrap();
    assert!(out.status.success(), "query {args:?}: {}", String::from_utf8_lossy(&out.stderr));
    let mut v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    v["stderr"] = String::from_utf8_lossy(&out.stderr).into();
    v
}

#[test]
fn a_window_the_collector_no_longer_holds_is_said_and_what_is_left_is_exact() {
    let port = free_port();
    let url = format!("http://127.0.0.1:{port}");
    // Room for a few minutes of one small agent's window.
    let data = TempDir::new("window");
    let dir = data.path();
    let args = ["--plaintext", "--retention", "1h", "--max-memory", "1K", "--data-dir", dir];
    let collector = Collector::start(port, &args);
    // Just started: an hour asked for is more than it holds, and it says so.
    let v = query_value(&[&url], &["--window", "1h"]);
    assert_eq!(v["complete"], false, "{v}");
    assert!(v["stderr"].as_str().unwrap().contains("it started then"), "{v}");
    // One report in each of the last 30 minutes, each with its own count
    // (2^i calls), sent oldest first as an agent catching up would.
    let ages: Vec<u64> = (0..30).rev().collect();
    let reports: Vec<pb::Report> = ages
        .iter()
        .enumerate()
        .map(|(i, age)| {
            counted_report("catching-up", i as u64 + 1, "marked", 1 << i, Duration::from_secs(age * 60 + 1))
        })
        .collect();
    let ends: Vec<i64> = reports.iter().map(|r| r.interval_end_unix_ns).collect();
    assert_eq!(send_reports(&url, reports), (30, None));

    let v = query_value(&[&url], &["--comm", "marked", "--window", "40m"]);
    assert_eq!(v["complete"], false, "{v}");
    let stderr = v["stderr"].as_str().unwrap();
    assert!(stderr.contains("covers less than the window"), "{stderr}");
    let complete_from = v["complete_from_unix_ns"].as_i64().unwrap();
    let evicted = v["evicted_reports"].as_u64().unwrap();
    // Dropped: the oldest reports (complete only from the end of the
    // newest of them); what is left, exactly the rest (the sender's own
    // counts).
    assert!(evicted > 0 && evicted < 29, "a 1K cap keeps some, not all: {v}");
    let dropped = evicted as usize;
    assert!(complete_from >= ends[dropped - 1], "{v}");
    let kept: u64 = (dropped..30).map(|i| 1u64 << i).sum();
    assert_eq!(v["rows"][0]["count"].as_u64().unwrap(), kept, "{v}");
    assert_eq!(v["reports"].as_u64().unwrap(), 30 - evicted, "{v}");
    assert!(v["from_unix_ns"].as_i64().unwrap() > ends[dropped - 1], "{v}");
    // The same in words, as a person reads it.
    let out = hostprobe()
        .args(["query", "--collector", &url, "--plaintext", "--comm", "marked", "--window", "40m"])
        .output()
        .unwrap();
    let (text, warning) = (String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    eprintln!("{warning}{text}");
    // Started just now: that, not the drops, bounds what it holds.
    assert!(warning.contains("covers less than the window") && warning.contains("it started then"), "{warning}");
    assert!(text.starts_with(&format!("1 agents, {} reports in the window: ", 30 - evicted)), "{text}");
    // Restarted, it holds what its journal replayed, the drops aside:
    // now the drops bound it, and it says so; the rest is still exact.
    drop(collector);
    let collector = Collector::start(port, &args);
    let v = query_value(&[&url], &["--comm", "marked", "--window", "40m"]);
    let stderr = v["stderr"].as_str().unwrap();
    eprintln!("{stderr}");
    assert!(stderr.contains("it dropped older reports for --max-memory"), "{stderr}");
    let evicted = v["evicted_reports"].as_u64().unwrap() as usize;
    assert!(evicted > 0 && evicted < 29, "{v}");
    assert!(v["complete_from_unix_ns"].as_i64().unwrap() >= ends[evicted - 1], "{v}");
    assert!(v["complete_from_unix_ns"].as_i64().unwrap() < ends[evicted], "{v}");
    assert_eq!(v["rows"][0]["count"].as_u64().unwrap(), (evicted..30).map(|i| 1u64 << i).sum::<u64>(), "{v}");
    // A window inside what it holds is whole.
    let v = query_value(&[&url], &["--comm", "marked", "--window", "3m"]);
    assert_eq!(v["complete"], true, "{v}");
    assert!(v["stderr"].as_str().unwrap().is_empty(), "{v}");
    drop(collector);
}

#[test]
fn agents_spread_over_two_collectors_and_one_query_merges_both_exactly() {
    let (p1, p2) = (free_port(), free_port());
    let (c1, c2) = (Collector::start(p1, &["--plaintext"]), Collector::start(p2, &["--plaintext"]));
    let (u1, u2) = (c1.url(), c2.url());
    let both = format!("{u1},{u2}");
    // Two agents whose ids pick different collectors from one list.
    let ids: Vec<String> = (0..100).map(|i| format!("spread-{i}")).collect();
    let first = ids.iter().find(|id| hostprobe::export::home(id, 2) == 0).unwrap();
    let second = ids.iter().find(|id| hostprobe::export::home(id, 2) == 1).unwrap();
    let mut workload = Workload::spawn(&["getppid", "30000"]);
    let pid = workload.pid().to_string();
    let mut a1 = Agent::start(&agent_args(&both, first, &["--plaintext", "--pid", &pid]));
    let mut a2 = Agent::start(&agent_args(&both, second, &["--plaintext", "--pid", &pid]));
    workload.go();
    workload.wait();
    a1.run_for(Duration::from_millis(600));
    a2.run_for(Duration::from_millis(600));
    let (r1, r2) = (a1.stop(), a2.stop());
    let count = |reports: &[serde_json::Value]| -> u64 {
        process_reports(reports, pid.parse().unwrap())
            .iter()
            .map(|p| p["syscall_total"]["count"].as_u64().unwrap())
            .sum()
    };
    let (n1, n2) = (count(&r1), count(&r2));
    assert!(n1 >= 30_000 && n2 >= 30_000, "each agent saw the workload: {n1}, {n2}");

    // Each collector has its own agent.
    for (url, id, n) in [(&u1, first, n1), (&u2, second, n2)] {
        let v = query_value(&[url], &["--comm", "workload"]);
        assert_eq!(v["rows"][0]["agents"], serde_json::json!([id]), "{v}");
        assert_eq!(v["rows"][0]["count"].as_u64().unwrap(), n, "{v}");
    }
    let v = query_value(&[&u1, &u2], &["--comm", "workload"]);
    assert_eq!(v["collectors"], 2, "{v}");
    let mut agents = [first, second];
    agents.sort();
    assert_eq!(v["rows"][0]["agents"], serde_json::json!(agents), "{v}");
    assert_eq!(v["rows"][0]["count"].as_u64().unwrap(), n1 + n2, "merged exactly: {v}");
    // Percentiles from the merged histogram: between each side's.
    let p99 = |v: &serde_json::Value| v["rows"][0]["p99_ns"].as_u64().unwrap();
    let (s1, s2) =
        (p99(&query_value(&[&u1], &["--comm", "workload"])), p99(&query_value(&[&u2], &["--comm", "workload"])));
    assert!((s1.min(s2)..=s1.max(s2)).contains(&p99(&v)), "{s1} {s2} {v}");
    drop((c1, c2));
}

#[test]
fn a_damaged_journal_record_is_skipped_and_counted_and_the_rest_survive_a_restart() {
    // Ten reports whose getppid counts are 1..=10, journaled and acked; the
    // fifth record's payload is damaged on disk while the collector is
    // down. After a restart the collector holds the other nine: 9 reports,
    // 55 - 5 calls, exactly.
    let data = TempDir::new("damaged");
    let port = free_port();
    let url = format!("http://127.0.0.1:{port}");
    let args = ["--plaintext", "--data-dir", data.path(), "--retention", "10m"];
    let collector = Collector::start(port, &args);
    let reports = (1..=10).map(|s| counted_report("damaged", s, "journaled", s, Duration::ZERO)).collect();
    assert_eq!(send_reports(&url, reports), (10, None));
    collector.kill();
    let segment = std::fs::read_dir(&data.0)
        .unwrap()
        .filter_map(|e| e.ok().map(|e| e.path()))
        .find(|p| std::fs::metadata(p).is_ok_and(|m| m.len() > 0))
        .expect("a journal segment");
    let mut bytes = std::fs::read(&segment).unwrap();
    let fifth = (0..bytes.len())
        .filter(|i| bytes[*i..].starts_with(hostprobe::wire::FRAME_MAGIC))
        .nth(4)
        .expect("a fifth record");
    bytes[fifth + 12 + 20] ^= 0x55;
    std::fs::write(&segment, &bytes).unwrap();

    let collector = Collector::start(port, &args);
    collector.wait_for("collector listening", Duration::from_secs(10));
    assert_eq!(query_json(&url, &["--comm", "journaled", "--window", "0s"]), (9, 50));
    assert!(collector.log().contains("1 damaged stretches"), "{}", collector.log());
    // Still acknowledged as stored: sending them again stores nothing.
    let again = (1..=10).map(|s| counted_report("damaged", s, "journaled", s, Duration::ZERO)).collect();
    assert_eq!(send_reports(&url, again), (10, None));
    assert_eq!(query_json(&url, &["--comm", "journaled", "--window", "0s"]), (9, 50));
}

/// A tmpfs of `size` mounted on a fresh directory; unmounted on drop.
struct SmallDisk(TempDir);

impl SmallDisk {
    fn new(name: &str, size: &str) -> SmallDisk {
        let dir = TempDir::new(name);
        let ok = std::process::Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size},mode=0700"), "tmpfs", dir.path()])
            .status()
            .unwrap()
            .success();
        assert!(ok, "mount a tmpfs on {}", dir.path());
        SmallDisk(dir)
    }

    /// Fills what is left with a file; returns its path.
    fn fill(&self) -> std::path::PathBuf {
        use std::io::Write as _;
        let path = self.0 .0.join("filler");
        let mut f = std::fs::File::create(&path).unwrap();
        let chunk = vec![0u8; 4096];
        while f.write_all(&chunk).is_ok() {}
        let _ = f.sync_all();
        path
    }
}

impl Drop for SmallDisk {
    fn drop(&mut self) {
        let _ = std::process::Command::new("umount").arg(self.0.path()).status();
    }
}

#[test]
fn a_full_data_directory_refuses_clearly_then_loses_nothing_once_space_returns() {
    // The collector's --data-dir is a 1 MiB filesystem. A real agent
    // streams; the filesystem fills up: the collector refuses with a clear
    // status and acknowledges nothing it could not journal; the agent keeps
    // its reports. Space comes back: every report the agent printed is in
    // the journal exactly once, in order.
    let disk = SmallDisk::new("fulldisk", "1m");
    let data = disk.0.path().to_string();
    let port = free_port();
    let url = format!("http://127.0.0.1:{port}");
    let collector = Collector::start(port, &["--plaintext", "--data-dir", &data]);
    let mut agent = Agent::start(&agent_args(&url, "fulldisk", &["--plaintext"]));
    agent.run_for(Duration::from_secs(1));
    let filler = disk.fill();
    until_logged(&mut agent, "cannot journal", Duration::from_secs(20));
    agent.run_for(Duration::from_secs(2));
    std::fs::remove_file(filler).unwrap();
    until_logged(&mut agent, "caught up", Duration::from_secs(60));
    agent.run_for(Duration::from_secs(1));
    let (reports, log) = agent.stop_logged();
    assert!(log.contains("is --data-dir full?"), "the agent shows the collector's reason: {log}");
    assert!(collector.log().contains("No space left on device"), "{}", collector.log());
    drop(collector);
    assert_exactly_once(disk.0 .0.as_path(), "fulldisk", reports.len());
}

#[test]
fn an_open_collector_is_asked_for_and_agents_and_readers_have_their_own_tokens() {
    // Without credentials or --no-auth, the collector does not start.
    let out = hostprobe()
        .args(["collector", "--plaintext", "--listen", &format!("127.0.0.1:{}", free_port())])
        .env_remove("HOSTPROBE_TOKEN")
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success() && err.contains("--no-auth") && err.contains("--token-file"), "{err}");

    // An agent's token sends reports but does not query; a reader's token
    // queries but does not send.
    let data = TempDir::new("tokens");
    let (agent_token, reader_token) = (data.0.join("agent.token"), data.0.join("reader.token"));
    std::fs::write(&agent_token, "agent-secret\n").unwrap();
    std::fs::write(&reader_token, "reader-secret\n").unwrap();
    let (agent_token, reader_token) = (agent_token.to_str().unwrap(), reader_token.to_str().unwrap());
    let journal_dir = data.0.join("journal");
    let port = free_port();
    let url = format!("http://127.0.0.1:{port}");
    let collector = Collector::start(
        port,
        &[
            "--plaintext",
            "--token-file",
            agent_token,
            "--query-token-file",
            reader_token,
            "--data-dir",
            journal_dir.to_str().unwrap(),
        ],
    );
    let writer = agent_for_a_while(&agent_args(&url, "writer", &["--plaintext", "--token-file", agent_token]));
    assert!(writer.contains("connected"), "{writer}");
    let sent = journal(&journal_dir, "writer").len();
    assert!(sent > 0, "the agent's token sends reports");
    let reader = agent_for_a_while(&agent_args(&url, "reader", &["--plaintext", "--token-file", reader_token]));
    assert!(reader.contains("refused our credentials"), "{reader}");
    assert!(journal(&journal_dir, "reader").is_empty(), "a reader's token sends nothing");
    let query = |token: &str| {
        hostprobe()
            .args(["query", "--collector", &url, "--plaintext", "--json", "--token-file", token])
            .output()
            .unwrap()
    };
    let as_agent = query(agent_token);
    assert!(!as_agent.status.success(), "an agent's token must not read the fleet");
    assert!(String::from_utf8_lossy(&as_agent.stderr).contains("refused our credentials"));
    let as_reader = query(reader_token);
    assert!(as_reader.status.success(), "{}", String::from_utf8_lossy(&as_reader.stderr));
    let v: serde_json::Value = serde_json::from_slice(&as_reader.stdout).unwrap();
    assert!(v["reports"].as_u64().unwrap() >= sent as u64, "{v}");

    // Only the collector's user reads what it keeps.
    use std::os::unix::fs::PermissionsExt as _;
    assert_eq!(std::fs::metadata(&journal_dir).unwrap().permissions().mode() & 0o777, 0o700);
    for e in std::fs::read_dir(&journal_dir).unwrap() {
        let e = e.unwrap();
        assert_eq!(e.metadata().unwrap().permissions().mode() & 0o777, 0o600, "{:?}", e.path());
    }
    drop(collector);
}

/// The spool's report files, oldest first.
fn spooled(dir: &Path) -> Vec<std::path::PathBuf> {
    let mut v: Vec<_> = std::fs::read_dir(dir)
        .unwrap()
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|e| e == "hps"))
        .collect();
    v.sort();
    v
}

/// `dropped_reports` of the last report of `agent` in the journal.
fn last_dropped(dir: &Path, agent: &str) -> u64 {
    let replay = hostprobe::collector::journal::read_dir(dir).unwrap();
    replay
        .records
        .iter()
        .rev()
        .filter_map(|b| pb::Report::decode(b.as_slice()).ok())
        .find(|r| r.agent.as_ref().is_some_and(|a| a.agent_id == agent))
        .map_or(0, |r| r.dropped_reports)
}

#[test]
fn a_damaged_spool_file_is_skipped_and_counted_and_the_rest_arrive() {
    // The collector is down; the agent spools its reports and stops. One
    // spooled report is damaged on disk. The agent starts again with the
    // collector up: every other report arrives exactly once, and the
    // reports say one was lost.
    let (data, spool) = (TempDir::new("spool-damage-collector"), TempDir::new("spool-damage-agent"));
    let port = free_port();
    let url = format!("http://127.0.0.1:{port}");
    let args = agent_args(&url, "spool-damage", &["--plaintext", "--spool-dir", spool.path()]);
    let mut first = Agent::start(&args);
    first.run_for(Duration::from_secs(2));
    let n1 = first.stop().len();
    let files = spooled(&spool.0);
    assert_eq!(files.len(), n1, "every report spooled");
    let victim = &files[files.len() / 2];
    let mut bytes = std::fs::read(victim).unwrap();
    bytes[hostprobe::wire::FRAME_HEADER + 10] ^= 0x55;
    std::fs::write(victim, &bytes).unwrap();
    let lost: u64 = victim.file_stem().unwrap().to_str().unwrap().parse().unwrap();

    let collector = Collector::start(port, &["--plaintext", "--data-dir", data.path()]);
    let mut second = Agent::start(&args);
    assert!(second.stderr().contains("is damaged"), "{}", second.stderr());
    until_logged(&mut second, "caught up", Duration::from_secs(60));
    let n2 = second.stop().len();
    drop(collector);
    let got: Vec<u64> = journal(&data.0, "spool-damage").iter().map(|(_, s)| *s).collect();
    let want: Vec<u64> = (1..=(n1 + n2) as u64).filter(|s| *s != lost).collect();
    assert_eq!(got, want, "all but the damaged report {lost}, once each, in order");
    assert_eq!(last_dropped(&data.0, "spool-damage"), 1, "the reports count the one lost");
}

#[test]
fn a_full_spool_filesystem_drops_the_oldest_and_counts_them() {
    // The spool is a 64 KiB filesystem and the collector is down: the
    // agent keeps the newest reports that fit and drops the oldest, saying
    // so. Once the collector is up, what it gets plus what the reports say
    // was dropped is every report the agent printed, and what it gets is
    // the newest, contiguous.
    let spool = SmallDisk::new("fullspool", "64k");
    let data = TempDir::new("fullspool-collector");
    let port = free_port();
    let url = format!("http://127.0.0.1:{port}");
    let mut agent = Agent::start(&agent_args(&url, "fullspool", &["--plaintext", "--spool-dir", spool.0.path()]));
    until_logged(&mut agent, "the spool's filesystem is full", Duration::from_secs(60));
    agent.run_for(Duration::from_secs(1));
    let collector = Collector::start(port, &["--plaintext", "--data-dir", data.path()]);
    until_logged(&mut agent, "caught up", Duration::from_secs(60));
    agent.run_for(Duration::from_secs(1));
    let (reports, log) = agent.stop_logged();
    drop(collector);
    let n = reports.len() as u64;
    let got: Vec<u64> = journal(&data.0, "fullspool").iter().map(|(_, s)| *s).collect();
    let dropped = last_dropped(&data.0, "fullspool");
    assert!(dropped > 0 && log.contains("dropped report 1 "), "{log}");
    assert_eq!(got.len() as u64 + dropped, n, "{} arrived + {dropped} dropped = {n} printed", got.len());
    assert_eq!(got, (dropped + 1..=n).collect::<Vec<_>>(), "the newest arrived, once each, in order");
}

//! Prometheus remote write: the real `hostprobe collector` pushes to
//! Debian's real Prometheus (`--web.enable-remote-write-receiver`), which
//! decodes, stores and answers PromQL. Each host's counts must arrive
//! exact, the pushed series must be the ones Prometheus scrapes from
//! `/metrics`, and an endpoint that is down or refuses must block nothing.

use std::{
    collections::BTreeMap,
    time::{Duration, Instant},
};

use hostprobe::wire::pb;
use hostprobe_tests::{counted_report, free_port, send_reports, Collector, Prometheus};

/// A report of `host` (agent `host`) whose process `marked` made `calls`
/// getppid calls, each in the latency bucket of 1 us.
fn report(host: &str, seq: u64, calls: u64) -> pb::Report {
    counted_report(host, seq, "marked", calls, Duration::ZERO)
}

/// `promql`'s answer as (value of `label`) -> value, polled until it is
/// `want` or 30 s pass; the last answer.
fn by_label_until(p: &Prometheus, promql: &str, label: &str, want: &BTreeMap<String, f64>) -> BTreeMap<String, f64> {
    let end = Instant::now() + Duration::from_secs(30);
    loop {
        let got: BTreeMap<String, f64> = p
            .vector(promql)
            .unwrap_or_else(|e| panic!("PromQL {promql}: {e}"))
            .into_iter()
            .map(|(l, v)| (l.get(label).cloned().unwrap_or_default(), v.parse().unwrap_or(f64::NAN)))
            .collect();
        if &got == want || Instant::now() > end {
            return got;
        }
        std::thread::sleep(Duration::from_millis(250));
    }
}

fn expect(pairs: &[(&str, u64)]) -> BTreeMap<String, f64> {
    pairs.iter().map(|(h, v)| (h.to_string(), *v as f64)).collect()
}

#[test]
fn each_hosts_exact_syscall_count_arrives_by_remote_write() {
    let prometheus = Prometheus::receiver();
    let port = free_port();
    let url = format!("http://127.0.0.1:{port}");
    let collector = Collector::start(
        port,
        &["--plaintext", "--remote-write", &prometheus.write_url(), "--remote-write-interval", "1s"],
    );
    let calls = "sum by (host_name) (hostprobe_syscalls_total{process_executable_name=\"marked\",hostprobe_syscall=\"getppid\"})";
    let latencies = "sum by (host_name) (hostprobe_syscall_duration_seconds_count{process_executable_name=\"marked\"})";
    let in_inf_bucket =
        "sum by (host_name) (hostprobe_syscall_duration_seconds_bucket{process_executable_name=\"marked\",le=\"+Inf\"})";

    // First half: two reports per host; the pushes must carry their sums.
    assert_eq!(send_reports(&url, vec![report("host-a", 1, 3), report("host-a", 2, 5)]), (2, None));
    assert_eq!(send_reports(&url, vec![report("host-b", 1, 100), report("host-b", 2, 200)]), (2, None));
    let want = expect(&[("host-a", 8), ("host-b", 300)]);
    assert_eq!(by_label_until(&prometheus, calls, "host_name", &want), want, "{}", collector.log());

    // The rest: the counters go on from there, per host.
    assert_eq!(send_reports(&url, vec![report("host-a", 3, 7), report("host-a", 4, 11)]), (2, None));
    assert_eq!(send_reports(&url, vec![report("host-b", 3, 300)]), (1, None));
    let want = expect(&[("host-a", 3 + 5 + 7 + 11), ("host-b", 100 + 200 + 300)]);
    assert_eq!(by_label_until(&prometheus, calls, "host_name", &want), want, "{}", collector.log());
    // The classic histogram arrives as its _count and _bucket series.
    assert_eq!(by_label_until(&prometheus, latencies, "host_name", &want), want);
    assert_eq!(by_label_until(&prometheus, in_inf_bucket, "host_name", &want), want);
    assert!(!collector.log().contains("push failed"), "{}", collector.log());
}

/// Each series' labels (scrape's `job` and `instance` left out) and value.
type Series = BTreeMap<BTreeMap<String, String>, String>;

fn series(p: &Prometheus, promql: &str) -> Series {
    p.vector(promql)
        .unwrap_or_else(|e| panic!("PromQL {promql}: {e}"))
        .into_iter()
        .map(|(mut labels, value)| {
            labels.remove("job");
            labels.remove("instance");
            // The collector's own CPU time and memory move between a scrape
            // and a push: their series must match, not their values.
            let moving = labels.get("__name__").is_some_and(|n| n.starts_with("hostprobe_agent_"));
            (labels, if moving { String::new() } else { value })
        })
        .collect()
}

#[test]
fn remote_written_series_are_the_scraped_series() {
    let metrics = free_port();
    let prometheus = Prometheus::receiver_scraping(metrics);
    let port = free_port();
    let url = format!("http://127.0.0.1:{port}");
    let _collector = Collector::start(
        port,
        &[
            "--plaintext",
            "--prometheus-listen",
            &format!("127.0.0.1:{metrics}"),
            "--remote-write",
            &prometheus.write_url(),
            "--remote-write-interval",
            "1s",
        ],
    );
    assert_eq!(send_reports(&url, (1..=3).map(|s| report("host-a", s, 10 * s)).collect()), (3, None));
    assert_eq!(send_reports(&url, (1..=2).map(|s| report("host-b", s, 7 * s)).collect()), (2, None));
    let scraped = r#"{__name__=~"hostprobe_.+",job="hostprobe"}"#;
    let pushed = r#"{__name__=~"hostprobe_.+",job=""}"#;
    let end = Instant::now() + Duration::from_secs(30);
    let (a, b) = loop {
        let (a, b) = (series(&prometheus, scraped), series(&prometheus, pushed));
        let marked = a.keys().any(|l| l.get("process_executable_name").is_some_and(|p| p == "marked"));
        if (marked && a == b) || Instant::now() > end {
            break (a, b);
        }
        std::thread::sleep(Duration::from_millis(250));
    };
    let only_scraped: Vec<_> = a.iter().filter(|(k, v)| b.get(*k) != Some(v)).collect();
    let only_pushed: Vec<_> = b.iter().filter(|(k, v)| a.get(*k) != Some(v)).collect();
    assert!(
        only_scraped.is_empty() && only_pushed.is_empty(),
        "scraped, not pushed alike: {only_scraped:#?}\npushed, not scraped alike: {only_pushed:#?}"
    );
    let buckets = a.keys().filter(|l| l.get("__name__").is_some_and(|n| n.ends_with("_bucket"))).count();
    assert!(a.len() > 50 && buckets > 30, "{} series, {buckets} buckets: {a:#?}", a.len());
    let hosts: std::collections::BTreeSet<_> = a.keys().filter_map(|l| l.get("host_name")).collect();
    assert!(hosts.contains(&"host-a".to_string()) && hosts.contains(&"host-b".to_string()), "{hosts:?}");
}

/// Sends four streams of 25 reports; each must be acknowledged whole.
fn ingest_goes_on(url: &str, agent: &str) {
    for round in 0..4u64 {
        let reports = (1..=25).map(|s| report(agent, round * 25 + s, s)).collect();
        assert_eq!(send_reports(url, reports), (25, None), "round {round}");
    }
}

#[test]
fn a_dead_endpoint_blocks_no_ingest_and_is_logged() {
    let dead = free_port();
    let port = free_port();
    let url = format!("http://127.0.0.1:{port}");
    let write = format!("http://127.0.0.1:{dead}/api/v1/write");
    let mut collector =
        Collector::start(port, &["--plaintext", "--remote-write", &write, "--remote-write-interval", "1s"]);
    collector.wait_for("push failed", Duration::from_secs(30));
    ingest_goes_on(&url, "host-a");
    collector.wait_for("retrying in", Duration::from_secs(30));
    let log = collector.log();
    let failure = log.lines().find(|l| l.contains("push failed")).unwrap_or_default();
    assert!(
        failure.contains(&write) && failure.contains("refused") && failure.contains("is the endpoint up"),
        "says where, what and what to check: {failure}"
    );
    assert!(collector.terminate(Duration::from_secs(10)), "stops while the endpoint is down:\n{}", collector.log());
    assert!(collector.log().contains(&format!("remote write {write}: 0 batches sent")), "{}", collector.log());
}

#[test]
fn a_refusing_endpoint_is_logged_once_and_not_retried() {
    // Prometheus without --web.enable-remote-write-receiver answers every
    // write 404, saying how to enable it: a refusal that retrying cannot fix.
    let prometheus = Prometheus::scraping("");
    let port = free_port();
    let url = format!("http://127.0.0.1:{port}");
    let mut collector = Collector::start(
        port,
        &["--plaintext", "--remote-write", &prometheus.write_url(), "--remote-write-interval", "1s"],
    );
    ingest_goes_on(&url, "host-a");
    // Three pushes refused, by Prometheus' own count.
    let end = Instant::now() + Duration::from_secs(30);
    while prometheus.http_requests("/api/v1/write", 404) < 3 {
        assert!(Instant::now() < end, "no 3 pushes refused in 30 s:\n{}", collector.log());
        std::thread::sleep(Duration::from_millis(250));
    }
    assert!(collector.terminate(Duration::from_secs(10)), "{}", collector.log());
    let log = collector.log();
    let refusals: Vec<&str> = log.lines().filter(|l| l.contains("rejected a batch")).collect();
    assert_eq!(refusals.len(), 1, "logged once:\n{log}");
    assert!(
        refusals[0].contains("HTTP 404")
            && refusals[0].contains("remote write receiver needs to be enabled")
            && refusals[0].contains("Not retried"),
        "what the endpoint said and what happens: {}",
        refusals[0]
    );
    assert!(!log.contains("retrying in"), "a 404 is not retried:\n{log}");
    // Every refused batch counted; none retried.
    let totals = log.lines().find(|l| l.contains("batches sent,")).unwrap_or_else(|| panic!("no totals:\n{log}"));
    let rejected: u64 = totals
        .split(", ")
        .find_map(|p| p.strip_suffix(" rejected")?.parse().ok())
        .unwrap_or_else(|| panic!("{totals}"));
    assert!(totals.contains("0 batches sent, 0 attempts retried"), "{totals}");
    // At most what Prometheus answered: one may have been on its way at exit.
    assert!(rejected >= 3 && rejected <= prometheus.http_requests("/api/v1/write", 404), "{totals}");
}

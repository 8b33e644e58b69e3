//! OTLP/gRPC export, received by a Python receiver built on the official
//! generated classes (PyPI opentelemetry-proto + grpcio; `cargo xtask setup`
//! makes the environment): attributes, histograms, exact counts,
//! temporality and start times, and retries while the receiver refuses.

use std::time::Duration;

use hostprobe_tests::{
    free_port, otlp_attr as attr, otlp_num as num, otlp_points as points, Agent, Collector, OtlpReceiver as Receiver,
    Workload,
};
use serde_json::Value;

/// (value, start, time, temporality) of the workload's getppid count, request by request.
fn getppid_series(requests: &[Value], pid: u32) -> Vec<(u64, u64, u64, String)> {
    requests
        .iter()
        .flat_map(|r| points(r, "hostprobe.syscalls"))
        .filter(|(p, _)| {
            attr(&p["attributes"], "process.executable.name").and_then(|v| v["stringValue"].as_str())
                == Some("workload")
                && attr(&p["attributes"], "hostprobe.syscall").and_then(|v| v["stringValue"].as_str())
                    == Some("getppid")
        })
        .map(|(p, t)| {
            // A group is every process of a name: no pid, which would come
            // and go within the series.
            assert!(attr(&p["attributes"], "process.pid").is_none(), "process.pid on {p}");
            let _ = pid;
            (num(&p["asInt"]), num(&p["startTimeUnixNano"]), num(&p["timeUnixNano"]), t.to_string())
        })
        .collect()
}

/// Runs a 5,000-getppid workload under an agent exporting to `receiver`.
fn export(receiver: &Receiver, extra: &[&str]) -> (u32, String) {
    let mut workload = Workload::spawn(&["getppid", "5000"]);
    let pid = workload.pid();
    let pid_s = pid.to_string();
    let url = receiver.url();
    let mut args = vec!["--probes", "syscall", "--pid", &pid_s, "--otlp-endpoint", &url, "--plaintext"];
    args.extend_from_slice(extra);
    let mut agent = Agent::start(&args);
    workload.go();
    workload.wait();
    agent.run_for(Duration::from_secs(2));
    (pid, agent.stop_logged().1)
}

#[test]
fn cumulative_export_has_exact_counts_attributes_and_a_fixed_start() {
    let receiver = Receiver::start("cumulative", 0.0);
    let (pid, _) = export(&receiver, &[]);
    std::thread::sleep(Duration::from_millis(300));
    let requests = receiver.requests();
    assert!(requests.len() >= 3, "{} requests", requests.len());
    let resource = &requests[0]["resourceMetrics"][0]["resource"]["attributes"];
    assert_eq!(attr(resource, "service.name").unwrap()["stringValue"], "hostprobe");
    assert!(attr(resource, "host.name").unwrap()["stringValue"].as_str().is_some_and(|h| !h.is_empty()));

    let series = getppid_series(&requests, pid);
    assert!(!series.is_empty(), "no getppid data point for the workload");
    assert!(series.iter().all(|s| s.3 == "AGGREGATION_TEMPORALITY_CUMULATIVE"), "{series:?}");
    assert_eq!(series.last().unwrap().0, 5_000, "the final cumulative count is exact: {series:?}");
    assert!(series.windows(2).all(|w| w[0].0 <= w[1].0), "cumulative never goes down: {series:?}");
    let start = series[0].1;
    assert!(series.iter().all(|s| s.1 == start && s.1 < s.2), "one start time, before every point: {series:?}");

    // Histograms: the powers of two of our layout (the same `le` as
    // /metrics), and counts that add up.
    let last = requests.last().unwrap();
    let hists = points(last, "hostprobe.syscall.duration");
    assert!(!hists.is_empty());
    for (h, _) in hists {
        let buckets: Vec<u64> = h["bucketCounts"].as_array().unwrap().iter().map(num).collect();
        assert_eq!(buckets.len(), 34);
        let bounds = h["explicitBounds"].as_array().unwrap();
        assert_eq!(bounds.len(), 33);
        assert_eq!(bounds[0].as_f64(), Some(64e-9));
        assert_eq!(buckets.iter().sum::<u64>(), num(&h["count"]), "bucket counts sum to the count");
    }
}

#[test]
fn delta_export_is_contiguous_and_adds_up_exactly() {
    let receiver = Receiver::start("delta", 0.0);
    let (pid, _) = export(&receiver, &["--otlp-temporality", "delta"]);
    std::thread::sleep(Duration::from_millis(300));
    let series = getppid_series(&receiver.requests(), pid);
    assert!(series.iter().all(|s| s.3 == "AGGREGATION_TEMPORALITY_DELTA"), "{series:?}");
    assert_eq!(series.iter().map(|s| s.0).sum::<u64>(), 5_000, "deltas add up exactly: {series:?}");
    assert!(series.windows(2).all(|w| w[1].1 == w[0].2), "each delta starts where the last ended: {series:?}");
}

#[test]
fn an_unavailable_receiver_loses_and_duplicates_nothing() {
    // The receiver refuses (UNAVAILABLE) for its first 3 s, while the
    // workload makes its 5,000 calls; the agent retries.
    // Cumulative: a cumulative point sent again only repeats what it said,
    // so what can go wrong is the count itself: the final point is exactly
    // the workload's 5,000, never going down, under one start time.
    // Delta: a delta sent twice is counted twice and one dropped is lost: the
    // deltas add up to exactly 5,000, each starting where the one before ended.
    for temporality in ["cumulative", "delta"] {
        let receiver = Receiver::start(&format!("unavailable-{temporality}"), 3.0);
        let (pid, log) = export(&receiver, &["--otlp-temporality", temporality]);
        std::thread::sleep(Duration::from_millis(300));
        assert!(receiver.refused() > 0, "{temporality}: the receiver refused nothing");
        assert!(log.contains("retrying in"), "{temporality}: the agent logs its retries: {log}");
        let series = getppid_series(&receiver.requests(), pid);
        eprintln!("{temporality}: {} exports refused; getppid points {series:?}", receiver.refused());
        assert!(!series.is_empty(), "{temporality}: no getppid data point for the workload");
        if temporality == "cumulative" {
            assert_eq!(series.last().map(|s| s.0), Some(5_000), "nothing lost or counted twice: {series:?}");
            assert!(series.windows(2).all(|w| w[0].0 <= w[1].0), "cumulative never goes down: {series:?}");
            assert!(series.iter().all(|s| s.1 == series[0].1), "one start time: {series:?}");
        } else {
            assert!(series.iter().all(|s| s.3 == "AGGREGATION_TEMPORALITY_DELTA"), "{series:?}");
            assert_eq!(series.iter().map(|s| s.0).sum::<u64>(), 5_000, "deltas add up exactly: {series:?}");
            assert!(series.windows(2).all(|w| w[1].1 == w[0].2), "each delta starts where the last ended: {series:?}");
        }
    }
}

#[test]
fn the_collector_forwards_the_fleet_to_otlp() {
    let receiver = Receiver::start("forward", 0.0);
    let collector =
        Collector::start(free_port(), &["--plaintext", "--otlp-endpoint", &receiver.url(), "--otlp-interval", "500ms"]);
    let url = collector.url();
    let mut workload = Workload::spawn(&["getppid", "5000"]);
    let pid = workload.pid();
    let pid_s = pid.to_string();
    let mut agent = Agent::start(&["--probes", "syscall", "--pid", &pid_s, "--collector", &url, "--plaintext"]);
    workload.go();
    workload.wait();
    agent.run_for(Duration::from_secs(1));
    agent.stop();
    std::thread::sleep(Duration::from_millis(1500));
    collector.kill();
    let requests = receiver.requests();
    let series = getppid_series(&requests, pid);
    assert_eq!(series.last().map(|s| s.0), Some(5_000), "forwarded exactly: {series:?}");
    let service = attr(&requests[0]["resourceMetrics"][0]["resource"]["attributes"], "service.name").unwrap().clone();
    assert_eq!(service["stringValue"], "hostprobe-collector");
    let point = points(requests.last().unwrap(), "hostprobe.syscalls")[0].0.clone();
    assert!(attr(&point["attributes"], "host.name").is_some(), "each resource names its agent's host: {point}");
}

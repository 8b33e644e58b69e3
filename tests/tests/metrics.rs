//! Prometheus: a real Prometheus server (Debian's, started here on
//! loopback) scrapes the agent; PromQL must return exact counts, `promtool`
//! must find nothing wrong, and cardinality stays bounded under pid churn.

use std::time::{Duration, Instant};

use hostprobe_tests::{free_port, http_get, promtool_check, Agent, Collector, Prometheus, Workload};

#[test]
fn prometheus_scrapes_the_exact_syscall_count() {
    let port = free_port();
    let collector_metrics = free_port();
    let collector = Collector::start(
        free_port(),
        &["--plaintext", "--prometheus-listen", &format!("127.0.0.1:{collector_metrics}")],
    );
    let mut workload = Workload::spawn(&["getppid", "5000"]);
    let pid = workload.pid().to_string();
    let listen = format!("127.0.0.1:{port}");
    let mut agent = Agent::start(&[
        "--probes",
        "syscall",
        "--pid",
        &pid,
        "--prometheus-listen",
        &listen,
        "--collector",
        &collector.url(),
        "--plaintext",
    ]);
    let prometheus = Prometheus::start(port);
    workload.go();
    workload.wait();
    agent.run_for(Duration::from_millis(600));
    let promql = r#"hostprobe_syscalls_total{process_executable_name="workload",hostprobe_syscall="getppid"}"#;
    let end = Instant::now() + Duration::from_secs(30);
    let mut got = None;
    while Instant::now() < end {
        agent.run_for(Duration::from_millis(500));
        got = prometheus.query(promql);
        if got == Some(5000.0) {
            break;
        }
    }
    assert_eq!(got, Some(5000.0), "PromQL {promql}");
    let up = prometheus.query(r#"up{job="hostprobe"}"#);
    assert_eq!(up, Some(1.0), "the scrape target is up");

    let (status, body) = http_get(port, "/metrics");
    assert!(status.contains("200"), "{status}");
    assert!(body.contains("hostprobe_syscall_duration_seconds_bucket{"), "{body}");
    assert!(body.contains("hostprobe_probe_active{hostprobe_probe=\"syscall\"} 1"), "{body}");
    promtool_check(&body);
    drop(agent);

    // The collector's fleet-wide endpoint: the same count, under the agent's host.
    let (status, body) = http_get(collector_metrics, "/metrics");
    assert!(status.contains("200"), "{status}");
    let line = body
        .lines()
        .find(|l| {
            l.starts_with("hostprobe_syscalls_total{")
                && l.contains("process_executable_name=\"workload\"")
                && l.contains("hostprobe_syscall=\"getppid\"")
        })
        .unwrap_or_else(|| panic!("no workload getppid series at the collector: {body}"));
    assert!(line.contains("host_name=\""), "{line}");
    assert!(line.ends_with(" 5000"), "exact at the collector too: {line}");
    promtool_check(&body);
}

#[test]
fn five_thousand_short_lived_processes_do_not_make_five_thousand_series() {
    let port = free_port();
    let listen = format!("127.0.0.1:{port}");
    let mut agent = Agent::start(&["--probes", "syscall", "--top", "10000", "--prometheus-listen", &listen]);
    let churn = Workload::spawn(&["churn-named", "5000"]);
    churn.run();
    agent.run_for(Duration::from_millis(600));
    let (_, body) = http_get(port, "/metrics");
    let processes: std::collections::BTreeSet<&str> = body
        .lines()
        .filter(|l| l.starts_with("hostprobe_syscalls_total{"))
        .filter_map(|l| l.split("process_executable_name=\"").nth(1)?.split('"').next())
        .collect();
    assert!(processes.len() <= 21, "{} process label values: {processes:?}", processes.len());
    assert!(processes.contains("other"), "the churned processes are summed as other: {processes:?}");
    let series = body.lines().filter(|l| !l.starts_with('#')).count();
    assert!(series < 3_000, "{series} series");
    promtool_check(&body);
    drop(agent);
}

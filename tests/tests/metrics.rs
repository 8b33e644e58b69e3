//! Prometheus: a real Prometheus server (Debian's, started here on
//! loopback) scrapes the agent; PromQL must return exact counts, `promtool`
//! must find nothing wrong, and cardinality stays bounded under pid churn.

use std::time::Duration;

use hostprobe_tests::{free_port, http_get, promtool_check, Agent, Collector, Pki, Prometheus, Workload};

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
    let got = prometheus.query_until(promql, 5000.0, || agent.run_for(Duration::from_millis(500)));
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

#[test]
fn tls_and_basic_auth_guard_metrics_and_a_real_prometheus_scrapes_with_them() {
    // The exporter-toolkit web config that node_exporter reads: a
    // certificate from the test CA, and one user whose password is kept as
    // a bcrypt hash. Truth: the workload's own 3,000 calls, through a real
    // Prometheus that has the credentials; another job without the password
    // is refused, and plain HTTP gets nothing.
    let pki = Pki::new();
    let hash = bcrypt::hash("scrape-s3cret", 4).unwrap();
    let web = std::env::temp_dir().join(format!("hostprobe-web-{}.yml", std::process::id()));
    std::fs::write(
        &web,
        format!(
            "tls_server_config:\n  cert_file: {}\n  key_file: {}\nbasic_auth_users:\n  prometheus: '{hash}'\n",
            pki.file("server.pem"),
            pki.file("server.key")
        ),
    )
    .unwrap();
    let port = free_port();
    let mut workload = Workload::spawn(&["getppid", "3000"]);
    let pid = workload.pid().to_string();
    let listen = format!("127.0.0.1:{port}");
    let web_s = web.to_str().unwrap();
    let mut agent = Agent::start(&[
        "--probes",
        "syscall",
        "--pid",
        &pid,
        "--prometheus-listen",
        &listen,
        "--web-config-file",
        web_s,
    ]);
    let job = |name: &str, auth: &str| {
        format!(
            "  - job_name: {name}\n    scheme: https\n    tls_config:\n      ca_file: {}\n{auth}    static_configs:\n      \
             - targets: ['127.0.0.1:{port}']\n",
            pki.file("ca.pem")
        )
    };
    let prometheus = Prometheus::scraping(&format!(
        "{}{}",
        job("secure", "    basic_auth:\n      username: prometheus\n      password: scrape-s3cret\n"),
        job("no-password", "")
    ));
    workload.go();
    workload.wait();
    let promql =
        r#"hostprobe_syscalls_total{job="secure",process_executable_name="workload",hostprobe_syscall="getppid"}"#;
    let got = prometheus.query_until(promql, 3000.0, || agent.run_for(Duration::from_millis(500)));
    assert_eq!(got, Some(3000.0), "PromQL {promql}");
    // Each job's first scrape comes at its own offset in the interval:
    // wait for it (the CI run of 136f336 asked before the second job's).
    let mut run = || agent.run_for(Duration::from_millis(200));
    assert_eq!(prometheus.query_until(r#"up{job="secure"}"#, 1.0, &mut run), Some(1.0));
    assert_eq!(
        prometheus.query_until(r#"up{job="no-password"}"#, 0.0, &mut run),
        Some(0.0),
        "a scrape without the password is refused"
    );
    let plain = {
        use std::io::{Read as _, Write as _};
        let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
        let _ = write!(s, "GET /metrics HTTP/1.0\r\n\r\n");
        let mut out = Vec::new();
        let _ = s.read_to_end(&mut out);
        String::from_utf8_lossy(&out).into_owned()
    };
    assert!(!plain.contains("hostprobe_"), "plain HTTP must not be served: {plain}");
    drop(agent);
    let _ = std::fs::remove_file(web);

    // A password written as it is, not as a hash, is refused with what to do.
    let plain = std::env::temp_dir().join(format!("hostprobe-web-plain-{}.yml", std::process::id()));
    std::fs::write(&plain, "basic_auth_users:\n  prometheus: scrape-s3cret\n").unwrap();
    let out = hostprobe_tests::hostprobe()
        .args(["run", "--prometheus-listen", "127.0.0.1:0", "--web-config-file", plain.to_str().unwrap()])
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(err.contains("bcrypt") && err.contains("htpasswd"), "{err}");
    let _ = std::fs::remove_file(plain);
}

//! Prometheus: a real Prometheus server (Debian's, started here on
//! loopback) scrapes the agent; PromQL must return exact counts, `promtool`
//! must find nothing wrong, and cardinality stays bounded under pid churn.

use std::{
    io::{Read, Write},
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use hostprobe_tests::{free_port, Agent, Collector, Workload};

/// GET over HTTP/1.0: (status line, body).
fn http_get(port: u16, path: &str) -> (String, String) {
    let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).expect("connect");
    write!(s, "GET {path} HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n").unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).unwrap();
    let (head, body) = out.split_once("\r\n\r\n").unwrap_or((&out, ""));
    (head.lines().next().unwrap_or("").to_string(), body.to_string())
}

fn url_encode(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'a'..=b'z' | b'A'..=b'Z' | b'0'..=b'9' | b'_' | b'-' | b'.' => (b as char).to_string(),
            _ => format!("%{b:02X}"),
        })
        .collect()
}

/// A Prometheus server scraping `target` every second; killed on drop.
struct Prometheus {
    child: Child,
    port: u16,
    dir: std::path::PathBuf,
}

impl Prometheus {
    fn start(target: u16) -> Prometheus {
        let dir = std::env::temp_dir().join(format!("hostprobe-prometheus-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let config = dir.join("prometheus.yml");
        std::fs::write(
            &config,
            format!(
                "global:\n  scrape_interval: 1s\n  scrape_timeout: 1s\nscrape_configs:\n  - job_name: hostprobe\n    \
                 static_configs:\n      - targets: ['127.0.0.1:{target}']\n"
            ),
        )
        .unwrap();
        let port = free_port();
        let child = Command::new("prometheus")
            .arg(format!("--config.file={}", config.display()))
            .arg(format!("--storage.tsdb.path={}", dir.join("data").display()))
            .arg(format!("--web.listen-address=127.0.0.1:{port}"))
            .arg("--log.level=warn")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("prometheus (cargo xtask setup installs Debian's prometheus)");
        let p = Prometheus { child, port, dir };
        let end = Instant::now() + Duration::from_secs(30);
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() || !http_get(port, "/-/ready").0.contains("200") {
            assert!(Instant::now() < end, "prometheus did not become ready");
            std::thread::sleep(Duration::from_millis(200));
        }
        p
    }

    /// The value of an instant PromQL query with one result, if any.
    fn query(&self, promql: &str) -> Option<f64> {
        let (_, body) = http_get(self.port, &format!("/api/v1/query?query={}", url_encode(promql)));
        let v: serde_json::Value = serde_json::from_str(&body).ok()?;
        v["data"]["result"][0]["value"][1].as_str()?.parse().ok()
    }
}

impl Drop for Prometheus {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn promtool_check(body: &str) {
    let mut p = Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("promtool (Debian's prometheus package)");
    p.stdin.take().unwrap().write_all(body.as_bytes()).unwrap();
    let out = p.wait_with_output().unwrap();
    let said = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(out.status.success() && said.trim().is_empty(), "promtool check metrics: {said}");
}

#[test]
fn prometheus_scrapes_the_exact_syscall_count() {
    let port = free_port();
    let collector_metrics = free_port();
    let collector = Collector::start(free_port(), &["--plaintext", "--prometheus-listen", &format!("127.0.0.1:{collector_metrics}")]);
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
    let promql = r#"hostprobe_syscalls_total{process="workload",syscall="getppid"}"#;
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
    assert!(body.contains("hostprobe_probe_active{probe=\"syscall\"} 1"), "{body}");
    promtool_check(&body);
    drop(agent);

    // The collector's fleet-wide endpoint: the same count, under the agent's host.
    let (status, body) = http_get(collector_metrics, "/metrics");
    assert!(status.contains("200"), "{status}");
    let line = body
        .lines()
        .find(|l| l.starts_with("hostprobe_syscalls_total{") && l.contains("process=\"workload\"") && l.contains("syscall=\"getppid\""))
        .unwrap_or_else(|| panic!("no workload getppid series at the collector: {body}"));
    assert!(line.contains("host=\""), "{line}");
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
        .filter_map(|l| l.split("process=\"").nth(1)?.split('"').next())
        .collect();
    assert!(processes.len() <= 21, "{} process label values: {processes:?}", processes.len());
    assert!(processes.contains("other"), "the churned processes are summed as other: {processes:?}");
    let series = body.lines().filter(|l| !l.starts_with('#')).count();
    assert!(series < 3_000, "{series} series");
    promtool_check(&body);
    drop(agent);
}

//! Exports carry every figure with one set of names: the same known counts
//! in the JSON report, on /metrics scraped by a real Prometheus, and in
//! OTLP; Kubernetes names from a kubelet-like log directory; and every
//! expression of the Grafana dashboard answering against a real agent.

use std::time::{Duration, Instant};

use hostprobe_tests::{
    free_port, http_get, otlp_points, otlp_str, promtool_check, Agent, LoopDevice, OtlpReceiver, Prometheus, TempDir,
    Workload,
};
use serde_json::Value;

const POD: &str = "web-7d9f4";
const NAMESPACE: &str = "shop";
const CONTAINER: &str = "app";

/// A cgroup named as the kubelet's systemd driver names a pod's container,
/// removed on drop.
struct PodCgroup {
    leaf: std::path::PathBuf,
    dirs: Vec<std::path::PathBuf>,
    id: String,
}

impl PodCgroup {
    fn new() -> PodCgroup {
        let root = std::path::PathBuf::from(hostprobe::cli::cgroup2_mount().expect("a cgroup2 mount"));
        let id = format!("{:064x}", u128::from(std::process::id()) << 64 | 0xfeed);
        let uid = format!("0f1e2d3c_4b5a_6978_8796_{:012x}", std::process::id());
        let parts =
            ["kubepods.slice".to_string(), format!("kubepods-pod{uid}.slice"), format!("cri-containerd-{id}.scope")];
        let mut dirs = Vec::new();
        let mut at = root;
        for p in parts {
            at = at.join(p);
            if std::fs::create_dir(&at).is_ok() {
                dirs.push(at.clone());
            }
        }
        PodCgroup { leaf: at, dirs, id }
    }

    fn enter(&self, pid: u32) {
        std::fs::write(self.leaf.join("cgroup.procs"), pid.to_string()).expect("move the workload into the pod cgroup");
    }
}

impl Drop for PodCgroup {
    fn drop(&mut self) {
        for d in self.dirs.iter().rev() {
            let _ = std::fs::remove_dir(d);
        }
    }
}

/// The sum over /metrics lines of `family` that contain every one of `labels`.
fn scraped(body: &str, family: &str, labels: &[&str]) -> f64 {
    body.lines()
        .filter(|l| l.starts_with(&format!("{family}{{")) && labels.iter().all(|want| l.contains(want)))
        .map(|l| l.rsplit(' ').next().unwrap().parse::<f64>().unwrap())
        .sum()
}

/// An agent reporting on every path: JSON, `/metrics` and OTLP (to a
/// receiver of its own).
struct EveryPath {
    agent: Agent,
    port: u16,
    receiver: OtlpReceiver,
}

impl EveryPath {
    fn start(service: &str, args: &[&str]) -> EveryPath {
        let receiver = OtlpReceiver::start(service, 0.0);
        let (port, url) = (free_port(), receiver.url());
        let listen = format!("127.0.0.1:{port}");
        let mut all = args.to_vec();
        all.extend(["--prometheus-listen", &listen, "--otlp-endpoint", &url, "--plaintext"]);
        EveryPath { agent: Agent::start(&all), port, receiver }
    }

    /// Runs `ms` longer, then stops: the last `/metrics` page, the JSON
    /// reports, and the receiver, which holds the last export.
    fn finish(mut self, ms: u64) -> (String, Vec<Value>, OtlpReceiver) {
        self.agent.run_for(Duration::from_millis(ms));
        let (_, body) = http_get(self.port, "/metrics");
        let reports = self.agent.stop();
        std::thread::sleep(Duration::from_millis(300));
        (body, reports, self.receiver)
    }
}

#[test]
fn new_figures_agree_on_every_path_with_kubernetes_names() {
    // Truth: the workload's own count of refused connects (7), and a
    // container id the test chose, named by a kubelet-like log link.
    let cgroup = PodCgroup::new();
    let logs = TempDir::new("pod-logs");
    std::fs::write(logs.0.join(format!("{POD}_{NAMESPACE}_{CONTAINER}-{}.log", cgroup.id)), "").unwrap();
    let closed = free_port();
    let mut workload = Workload::spawn(&["connect-refused", &closed.to_string(), "7", "1500"]);
    let pid = workload.pid();
    cgroup.enter(pid);
    let (pid_s, dir) = (pid.to_string(), logs.0.to_str().unwrap());
    let agent = EveryPath::start(
        "exports",
        &["--probes", "tcp,offcpu", "--pid", &pid_s, "--pod-log-dir", dir, "--agent-id", "agent-exports"],
    );
    workload.go();
    assert_eq!(workload.wait().trim(), "7", "the workload's own count");
    let (body, reports, receiver) = agent.finish(1500);
    promtool_check(&body);

    // JSON.
    let mine: Vec<&Value> = reports
        .iter()
        .flat_map(|r| r["processes"].as_array().into_iter().flatten())
        .filter(|p| p["pid"] == pid)
        .collect();
    let refused: u64 = mine
        .iter()
        .flat_map(|p| p["tcp"].as_array().into_iter().flatten())
        .map(|t| t["refused"].as_u64().unwrap_or(0))
        .sum();
    assert_eq!(refused, 7, "JSON refused connects");
    let runqueue: u64 = mine.iter().filter_map(|p| p["offcpu"]["runqueue"]["count"].as_u64()).sum();
    assert!(runqueue > 0, "the workload waited for a CPU at least once");
    assert!(mine.iter().any(|p| p["k8s"]["pod"] == POD && p["k8s"]["namespace"] == NAMESPACE), "{mine:?}");

    // Prometheus: the same counts, with the pod's names as labels.
    let group = [
        "process_executable_name=\"workload\"".to_string(),
        format!("container_id=\"{}\"", cgroup.id),
        format!("k8s_pod_name=\"{POD}\""),
        format!("k8s_namespace_name=\"{NAMESPACE}\""),
        format!("k8s_container_name=\"{CONTAINER}\""),
    ];
    let mut labels: Vec<&str> = group.iter().map(String::as_str).collect();
    let remote = format!("hostprobe_tcp_remote=\"127.0.0.1:{closed}\"");
    labels.extend(["hostprobe_tcp_failure=\"refused\"", &remote]);
    assert_eq!(scraped(&body, "hostprobe_tcp_connect_failures_total", &labels), 7.0, "{body}");
    labels.truncate(group.len());
    assert_eq!(scraped(&body, "hostprobe_runqueue_duration_seconds_count", &labels), runqueue as f64, "{body}");

    // OTLP: the last cumulative export says the same, and the resource
    // carries the pod, the agent id and the host.
    let requests = receiver.requests();
    let last = requests.last().expect("OTLP exports");
    let workload_point = |p: &Value| otlp_str(p, "process.executable.name") == Some("workload");
    let failures: u64 = otlp_points(last, "hostprobe.tcp.connect.failures")
        .iter()
        .filter(|(p, _)| workload_point(p) && otlp_str(p, "hostprobe.tcp.failure") == Some("refused"))
        .map(|(p, _)| hostprobe_tests::otlp_num(&p["asInt"]))
        .sum();
    assert_eq!(failures, 7, "OTLP refused connects");
    let rq: Vec<(Value, String)> =
        otlp_points(last, "hostprobe.runqueue.duration").into_iter().filter(|(p, _)| workload_point(p)).collect();
    assert_eq!(rq.len(), 1);
    let p = &rq[0].0;
    assert_eq!(hostprobe_tests::otlp_num(&p["count"]), runqueue, "OTLP run-queue count");
    for (key, want) in [
        ("k8s.pod.name", POD),
        ("k8s.namespace.name", NAMESPACE),
        ("k8s.container.name", CONTAINER),
        ("container.id", cgroup.id.as_str()),
        ("service.instance.id", "agent-exports"),
    ] {
        assert_eq!(otlp_str(p, key), Some(want), "{key} on {p}");
    }
    assert!(otlp_str(p, "host.name").is_some_and(|h| !h.is_empty()), "host.name on {p}");
    assert!(otlp_str(p, "process.pid").is_none(), "no pid on a group's series");

    // The workload's resource never changes its attributes between exports.
    let resources: std::collections::BTreeSet<String> = requests
        .iter()
        .flat_map(|r| r["resourceMetrics"].as_array().cloned().unwrap_or_default())
        .map(|rm| rm["resource"]["attributes"].clone())
        .filter(|a| a.as_array().into_iter().flatten().any(|kv| kv["value"]["stringValue"] == "workload"))
        .map(|a| a.to_string())
        .collect();
    assert_eq!(resources.len(), 1, "one attribute set for the workload's series: {resources:?}");
}

#[test]
fn failed_disk_writes_are_counted_on_every_path() {
    // Truth: the workload's own count of writes that failed. The loop
    // device's backing file sits on a 1 MiB tmpfs: the first writes fit,
    // the rest fail in the loop driver (no space), as requests that
    // complete with an error.
    let dev = LoopDevice::on_full_tmpfs(16, 1024);
    std::thread::sleep(Duration::from_millis(200)); // let any probing of the new device finish
    let mut workload = Workload::spawn(&["dio-write-errors", &dev.path, "600"]);
    let pid_s = workload.pid().to_string();
    let agent = EveryPath::start("disk-errors", &["--probes", "disk", "--pid", &pid_s]);
    workload.go();
    let failed: u64 = workload.wait().trim().parse().unwrap();
    assert!(failed > 100 && failed < 600, "{failed} of 600 writes failed: some must fit, some not");
    let (body, reports, receiver) = agent.finish(1500);

    let name = dev.name();
    let json: u64 = reports
        .iter()
        .flat_map(|r| r["processes"].as_array().into_iter().flatten())
        .flat_map(|p| p["disk"].as_array().into_iter().flatten())
        .filter(|d| d["device"] == name && d["op"] == "write")
        .map(|d| d["errors"].as_u64().unwrap())
        .sum();
    assert_eq!(json, failed, "JSON errors");
    let labels = [&format!("system_device=\"{name}\"") as &str, "hostprobe_disk_op=\"write\""];
    assert_eq!(scraped(&body, "hostprobe_disk_errors_total", &labels), failed as f64, "{body}");
    let last = receiver.requests().pop().expect("OTLP exports");
    let otlp: u64 = otlp_points(&last, "hostprobe.disk.errors")
        .iter()
        .filter(|(p, _)| {
            otlp_str(p, "system.device") == Some(name) && otlp_str(p, "disk.io.direction") == Some("write")
        })
        .map(|(p, _)| hostprobe_tests::otlp_num(&p["asInt"]))
        .sum();
    assert_eq!(otlp, failed, "OTLP errors");
}

#[test]
fn every_dashboard_expression_returns_series_from_a_real_agent() {
    let dashboard: Value = serde_json::from_str(
        &std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../deploy/grafana/hostprobe.json")).unwrap(),
    )
    .expect("the dashboard is JSON");
    let exprs: Vec<String> = dashboard["panels"]
        .as_array()
        .unwrap()
        .iter()
        .flat_map(|p| p["targets"].as_array().cloned().unwrap_or_default())
        .map(|t| t["expr"].as_str().unwrap().to_string())
        .collect();
    assert!(exprs.len() >= 10, "{} expressions", exprs.len());

    // A host with disk I/O, connections and waits: the whole host is
    // watched (no filter), a loop device takes direct reads and writes, and
    // Prometheus's own scrapes are TCP.
    let port = free_port();
    let listen = format!("127.0.0.1:{port}");
    let mut agent = Agent::start(&["--prometheus-listen", &listen, "--top", "1000", "--metrics-max-processes", "1000"]);
    let prometheus = Prometheus::start(port);
    let dev = LoopDevice::new(64);
    let closed = free_port().to_string();
    let end = Instant::now() + Duration::from_secs(40);
    let mut missing = exprs.clone();
    while !missing.is_empty() && Instant::now() < end {
        Workload::spawn(&["dio", &dev.path, "200", "200"]).run();
        Workload::spawn(&["connect-refused", &closed, "3"]).run();
        agent.run_for(Duration::from_millis(1000));
        missing.retain(|e| {
            let q = e.replace("$__rate_interval", "1m").replace("$process", ".+").replace("$host", ".*");
            match prometheus.series(&q) {
                Ok(n) => n == 0,
                Err(why) => panic!("Prometheus refuses the dashboard's {e}: {why}"),
            }
        });
    }
    assert!(missing.is_empty(), "dashboard expressions with no series: {missing:#?}");
    drop(agent);
}

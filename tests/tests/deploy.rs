//! Deployment (issue 15): flags from the environment, the OpenTelemetry
//! variables, `--output none`, health endpoints, agent identity without a
//! machine id, and the refusal to run outside the host's PID namespace.

use std::{path::PathBuf, process::Command, time::Duration};

use hostprobe_tests::{
    free_port, hostprobe, hostprobe_bin, http_get, otlp_attr, otlp_num, otlp_points, probe_status, process_reports,
    sum, syscall_items, Agent, Collector, OtlpReceiver, TempDir, Workload,
};

/// One value for every flag of `hostprobe run` (files need not exist: flags
/// are compared as parsed).
const RUN_FLAGS: &[(&str, &str)] = &[
    ("interval", "250ms"),
    ("duration", "3s"),
    ("top", "7"),
    ("output", "json"),
    ("cmdline", "true"),
    ("pod-log-dir", "/host/var/log/containers"),
    ("max-entries", "4096"),
    ("max-processes", "300"),
    ("probes", "syscall,tcp"),
    ("hostname", "node-7"),
    ("pid", "1,2"),
    ("comm", "nginx"),
    ("cgroup", "/system.slice"),
    ("collector", "https://a:7700,https://b:7700"),
    ("plaintext", "true"),
    ("ca-file", "/etc/hostprobe/ca.pem"),
    ("client-cert", "/etc/hostprobe/c.pem"),
    ("client-key", "/etc/hostprobe/c.key"),
    ("token-file", "/etc/hostprobe/token"),
    ("agent-id", "agent-7"),
    ("queue", "99"),
    ("spool-dir", "/var/lib/hostprobe/spool"),
    ("spool-max", "64M"),
    ("prometheus-listen", "127.0.0.1:9464"),
    ("web-config-file", "/etc/hostprobe/web.yml"),
    ("health-listen", "127.0.0.1:9465"),
    ("metrics-max-processes", "5"),
    ("metrics-max-remotes", "3"),
    ("otlp-endpoint", "https://otel:4317"),
    ("otlp-header", "api-key=x"),
    ("otlp-temporality", "delta"),
    ("otlp-buckets", "full"),
    ("otlp-ca-file", "/etc/hostprobe/otel-ca.pem"),
];

fn var(flag: &str) -> String {
    format!("HOSTPROBE_{}", flag.to_uppercase().replace('-', "_"))
}

#[test]
fn flags_from_the_environment_equal_flags_on_the_command_line() {
    // The table covers every flag `run` has: a new flag without its
    // variable fails here.
    let cmd = hostprobe::cli::command();
    let run = cmd.find_subcommand("run").unwrap();
    let mut flags: Vec<&str> = run.get_arguments().filter_map(|a| a.get_long()).filter(|l| *l != "verbose").collect();
    let mut covered: Vec<&str> = RUN_FLAGS.iter().map(|(f, _)| *f).collect();
    flags.sort_unstable();
    covered.sort_unstable();
    assert_eq!(flags, covered, "RUN_FLAGS must list every flag of `run`");

    let mut args = vec!["hostprobe".to_string(), "run".to_string()];
    for (flag, value) in RUN_FLAGS {
        match *value {
            "true" => args.push(format!("--{flag}")),
            _ => args.extend([format!("--{flag}"), value.to_string()]),
        }
    }
    let from_args = format!("{:?}", hostprobe::cli::parse_from(&args).unwrap());
    for (flag, value) in RUN_FLAGS {
        std::env::set_var(var(flag), value);
    }
    let from_env = format!("{:?}", hostprobe::cli::parse_from(["hostprobe", "run"]).unwrap());
    // The command line wins over the environment.
    let both = hostprobe::cli::parse_from(["hostprobe", "run", "--interval", "2s"]).unwrap();
    for (flag, _) in RUN_FLAGS {
        std::env::remove_var(var(flag));
    }
    assert_eq!(from_env, from_args);
    let hostprobe::cli::Command::Run(both) = both.command else { panic!() };
    assert_eq!(both.interval, Duration::from_secs(2));
}

#[test]
fn otel_endpoint_alone_sends_otlp_and_output_none_prints_nothing() {
    let receiver = OtlpReceiver::start("deploy-env", 0.0);
    let health_port = free_port();
    let mut workload = Workload::spawn(&["getppid", "5000"]);
    let pid = workload.pid();
    // Everything from the environment, as a unit's EnvironmentFile or a pod's env gives it.
    let mut cmd = hostprobe();
    cmd.arg("run")
        .env("OTEL_EXPORTER_OTLP_ENDPOINT", receiver.url())
        .env("OTEL_SERVICE_NAME", "hostprobe-node")
        .env("OTEL_RESOURCE_ATTRIBUTES", "deployment.environment=test,k8s.cluster.name=c%2C1")
        .env("HOSTPROBE_OUTPUT", "none")
        .env("HOSTPROBE_PROBES", "syscall")
        .env("HOSTPROBE_PID", pid.to_string())
        .env("HOSTPROBE_INTERVAL", "200ms")
        .env("HOSTPROBE_HEALTH_LISTEN", format!("127.0.0.1:{health_port}"));
    let mut agent = Agent::spawn_command(cmd);
    agent.wait_attached();
    workload.go();
    workload.wait();
    agent.run_for(Duration::from_secs(2));
    // Ready: probes attached and the OTLP endpoint accepting exports.
    wait_status(health_port, "/readyz", "200");
    // Any line on stdout would be read as a report (or fail as bad JSON).
    let (reports, log) = agent.stop_logged();
    assert!(reports.is_empty(), "--output none printed {} reports", reports.len());
    std::thread::sleep(Duration::from_millis(300));

    let requests = receiver.requests();
    assert!(!requests.is_empty(), "nothing reached the OTLP receiver; agent log:\n{log}");
    let resource = &requests[0]["resourceMetrics"][0]["resource"]["attributes"];
    let attr = |k: &str| otlp_attr(resource, k).and_then(|v| v["stringValue"].as_str()).map(str::to_string);
    assert_eq!(attr("service.name").as_deref(), Some("hostprobe-node"));
    assert_eq!(attr("deployment.environment").as_deref(), Some("test"));
    assert_eq!(attr("k8s.cluster.name").as_deref(), Some("c,1"), "values are percent-decoded");
    let last = requests
        .iter()
        .flat_map(|r| otlp_points(r, "hostprobe.syscalls"))
        .filter(|(p, _)| {
            otlp_attr(&p["attributes"], "process.executable.name").and_then(|v| v["stringValue"].as_str())
                == Some("workload")
                && otlp_attr(&p["attributes"], "hostprobe.syscall").and_then(|v| v["stringValue"].as_str())
                    == Some("getppid")
        })
        .map(|(p, _)| otlp_num(&p["asInt"]))
        .next_back();
    assert_eq!(last, Some(5_000), "the workload's 5,000 getppid calls, exactly");
}

/// GET a health endpoint: `None` while nothing listens.
fn health(port: u16, path: &str) -> Option<(String, String)> {
    std::net::TcpStream::connect(("127.0.0.1", port)).ok()?;
    Some(http_get(port, path))
}

/// Polls `path` until its status line contains `want` (up to 60 s).
fn wait_status(port: u16, path: &str, want: &str) -> (String, String) {
    let end = std::time::Instant::now() + Duration::from_secs(60);
    loop {
        if let Some(r) = health(port, path).filter(|(status, _)| status.contains(want)) {
            return r;
        }
        assert!(std::time::Instant::now() < end, "{path} never answered {want}: {:?}", health(port, path));
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn readyz_fails_while_the_collector_is_down_and_passes_once_it_is_up() {
    let (port, health_port) = (free_port(), free_port());
    let url = format!("http://127.0.0.1:{port}");
    let hp = format!("127.0.0.1:{health_port}");
    let mut cmd = hostprobe();
    cmd.args(["run", "--output", "none", "--probes", "syscall", "--interval", "200ms"]).args([
        "--collector",
        &url,
        "--plaintext",
        "--agent-id",
        "readyz",
        "--health-listen",
        &hp,
    ]);
    let agent = Agent::spawn_command(cmd);
    wait_status(health_port, "/healthz", "200");
    agent.wait_attached();
    // Probes attached, no collector: not ready, and why.
    let (status, body) = health(health_port, "/readyz").unwrap();
    assert!(status.contains("503") && body.contains("collector"), "{status}: {body}");

    let collector = Collector::start(port, &["--plaintext"]);
    let (_, body) = wait_status(health_port, "/readyz", "200");
    assert_eq!(body.trim(), "ready");
    collector.kill();
    let (_, body) = wait_status(health_port, "/readyz", "503");
    assert!(body.contains("not connected to the collector"), "{body}");
    agent.stop();
}

/// `hostprobe run ARGS` with no machine id (empty /etc/machine-id and D-Bus's
/// copy, in a mount namespace of its own) and `NODE_NAME` as given.
fn without_machine_id(node_name: Option<&str>, args: &[&str]) -> Command {
    let mut cmd = Command::new("unshare");
    cmd.args(["--mount", "--propagation", "private", "sh", "-c"])
        .arg(
            "for f in /etc/machine-id /var/lib/dbus/machine-id; do \
               [ -e $f ] && mount --bind /dev/null $f; done; exec \"$@\"",
        )
        .arg("sh")
        .arg(hostprobe_bin())
        .arg("run")
        .args(args)
        .env_remove("NODE_NAME");
    if let Some(n) = node_name {
        cmd.env("NODE_NAME", n);
    }
    cmd
}

#[test]
fn two_agents_without_a_machine_id_are_told_apart_by_node_name() {
    let port = free_port();
    let url = format!("http://127.0.0.1:{port}");
    let collector = Collector::start(port, &["--plaintext"]);
    let mut workload = Workload::spawn(&["getppid", "20000"]);
    let pid = workload.pid().to_string();
    let args = ["--output", "json", "--interval", "200ms", "--probes", "syscall", "--pid", &pid];
    let streaming = [&args[..], &["--collector", &url, "--plaintext"]].concat();

    // Neither a machine id nor NODE_NAME: refused, not one more "hp-<hash of nothing>".
    let out = without_machine_id(None, &streaming).output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(stderr.contains("no agent id") && stderr.contains("NODE_NAME"), "{stderr}");

    let a = Agent::spawn_command(without_machine_id(Some("node-a"), &streaming));
    let b = Agent::spawn_command(without_machine_id(Some("node-b"), &streaming));
    a.wait_attached();
    b.wait_attached();
    workload.go();
    workload.wait();
    let mut counts = Vec::new();
    for (mut agent, node) in [(a, "node-a"), (b, "node-b")] {
        agent.run_for(Duration::from_millis(600));
        let reports = agent.stop();
        assert!(reports.iter().all(|r| r["host"] == node), "the host is NODE_NAME");
        let n: u64 = process_reports(&reports, pid.parse().unwrap())
            .iter()
            .map(|p| p["syscall_total"]["count"].as_u64().unwrap())
            .sum();
        assert!(n >= 20_000, "{node} saw the workload: {n}");
        counts.push(n);
    }

    let out = hostprobe()
        .args(["query", "--collector", &url, "--plaintext", "--comm", "workload", "--json"])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let row = &v["rows"][0];
    assert_eq!(row["agents"], serde_json::json!(["node-a", "node-b"]), "{v}");
    assert_eq!(row["count"].as_u64().unwrap(), counts.iter().sum::<u64>(), "nothing deduplicated across them: {v}");
    drop(collector);
}

#[test]
fn a_pid_namespace_other_than_the_hosts_is_refused() {
    let out = Command::new("unshare")
        .args(["--pid", "--fork", "--mount-proc"])
        .arg(hostprobe_bin())
        .args(["run", "--duration", "1s"])
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(stderr.contains("PID namespace") && stderr.contains("hostPID: true") && stderr.contains("--pid=host"));
    assert!(out.stdout.is_empty());
}

#[test]
fn a_pid_that_names_no_process_warns() {
    let mut gone = Command::new("true").spawn().unwrap();
    gone.wait().unwrap();
    let pid = gone.id().to_string();
    let out = hostprobe()
        .args(["run", "--output", "none", "--probes", "syscall", "--duration", "300ms", "--pid", &pid])
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    assert!(stderr.contains(&format!("--pid {pid}: no such process")), "{stderr}");
}

/// `deploy/` in the repository (canonical: checkov finds nothing under a
/// path with `..` in it, and says nothing).
fn deploy_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../deploy").canonicalize().unwrap()
}

/// The value of `key=` in a unit file (the last one, as systemd reads it).
fn unit_setting(unit: &str, key: &str) -> String {
    let text = std::fs::read_to_string(deploy_dir().join("systemd").join(unit)).unwrap();
    text.lines().filter_map(|l| l.strip_prefix(&format!("{key}="))).next_back().unwrap_or_default().to_string()
}

/// The agent unit's capabilities (`AmbientCapabilities=`, which must equal
/// its bounding set), e.g. `CAP_BPF`.
fn unit_capabilities() -> Vec<String> {
    let ambient = unit_setting("hostprobe.service", "AmbientCapabilities");
    assert_eq!(ambient, unit_setting("hostprobe.service", "CapabilityBoundingSet"), "ambient = bounding set");
    ambient.split_whitespace().map(str::to_string).collect()
}

/// `hostprobe ARGS` as user nobody holding exactly `caps` (ambient and
/// bounding set) with no_new_privs, as the unit runs it.
fn unprivileged(caps: &[String], args: &[&str]) -> Command {
    let list: Vec<String> = caps.iter().map(|c| format!("+{}", c.trim_start_matches("CAP_").to_lowercase())).collect();
    let list = list.join(",");
    let mut cmd = Command::new("setpriv");
    cmd.args(["--reuid=nobody", "--regid=nogroup", "--clear-groups", "--no-new-privs"])
        .arg(format!("--bounding-set=-all{}{list}", if list.is_empty() { "" } else { "," }))
        .arg(format!("--inh-caps=-all{}{list}", if list.is_empty() { "" } else { "," }))
        .arg(format!("--ambient-caps={}", if list.is_empty() { "-all" } else { &list }))
        .arg(hostprobe_bin())
        .args(args);
    cmd
}

#[test]
fn systemd_analyze_verify_accepts_the_units() {
    // The units name /usr/local/bin/hostprobe, which verify wants to exist:
    // check copies that name the binary under test instead.
    let dir = TempDir::new("units");
    let mut units = Vec::new();
    for unit in ["hostprobe.service", "hostprobe-collector.service"] {
        let text = std::fs::read_to_string(deploy_dir().join("systemd").join(unit)).unwrap();
        let path = dir.0.join(unit);
        std::fs::write(&path, text.replace("/usr/local/bin/hostprobe", hostprobe_bin().to_str().unwrap())).unwrap();
        units.push(path);
    }
    let out = Command::new("systemd-analyze").arg("verify").args(&units).output().unwrap();
    let said = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(out.status.success(), "systemd-analyze verify: {said}");
    assert!(!said.contains("hostprobe"), "systemd-analyze verify has something to say: {said}");
}

#[test]
fn the_units_capabilities_are_enough_and_each_is_needed() {
    let caps = unit_capabilities();
    let mut workload = Workload::spawn(&["getppid", "5000"]);
    let pid = workload.pid();
    let pid_s = pid.to_string();
    let run = ["run", "--output", "json", "--interval", "200ms", "--pid", &pid_s];
    let mut agent = Agent::spawn_command(unprivileged(&caps, &run));
    agent.wait_attached();
    workload.go();
    workload.wait();
    agent.run_for(Duration::from_millis(600));
    let (reports, log) = agent.stop_logged();
    for probe in ["syscall", "disk", "offcpu", "tcp"] {
        assert_eq!(
            probe_status(&reports[0], probe)["active"],
            true,
            "{probe} not attached as nobody with {caps:?}: {log}"
        );
    }
    assert_eq!(sum(&syscall_items(&reports, pid, "getppid"), "count"), 5_000, "exact as nobody");
    let exe = process_reports(&reports, pid).iter().find_map(|p| p["exe"].as_str().map(str::to_string));
    assert!(exe.is_some_and(|e| e.ends_with("/workload")), "root's workload's exe read as nobody");

    let check = |caps: &[String]| {
        let out = unprivileged(caps, &["check"]).output().unwrap();
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    let privileges = |out: &str| out.lines().find(|l| l.starts_with("privileges")).unwrap_or_default().to_string();
    let all = check(&caps);
    assert!(privileges(&all).contains(" ok "), "{all}");
    assert!(all.contains("4 of 4 probes can run here"), "{all}");
    for (i, cap) in caps.iter().enumerate() {
        let mut fewer = caps.clone();
        fewer.remove(i);
        let out = check(&fewer);
        let line = privileges(&out);
        assert!(line.contains("FAIL") && line.contains(&format!("lacks {cap}")), "without {cap}: {out}");
        // And it is needed: without it, something fails.
        if cap == "CAP_SYS_PTRACE" {
            let out = unprivileged(&fewer, &["run", "--output", "json", "--duration", "300ms", "--probes", "syscall"])
                .output()
                .unwrap();
            let reports: Vec<serde_json::Value> =
                String::from_utf8_lossy(&out.stdout).lines().map(|l| serde_json::from_str(l).unwrap()).collect();
            let me = hostprobe_bin();
            let others: Vec<&serde_json::Value> = reports
                .iter()
                .flat_map(|r| r["processes"].as_array().unwrap())
                .filter(|p| p["exe"].is_string() && p["exe"].as_str() != me.to_str())
                .collect();
            assert!(!reports.is_empty() && others.is_empty(), "without CAP_SYS_PTRACE: {others:?}");
        } else {
            assert!(!out.contains("4 of 4 probes can run here"), "without {cap} every probe still runs: {out}");
        }
    }
}

/// A file of `deploy/kubernetes`.
fn manifest(name: &str) -> String {
    std::fs::read_to_string(deploy_dir().join("kubernetes").join(name)).unwrap()
}

/// A tool of the Python environment `cargo xtask setup` makes for the manifests.
fn deploy_tool(name: &str) -> Command {
    let home = std::env::var_os("HOME").unwrap_or_else(|| "/root".into());
    let bin = PathBuf::from(home).join(".cache/hostprobe/deploy-venv/bin").join(name);
    assert!(bin.exists(), "{} is missing: run `cargo xtask setup`", bin.display());
    Command::new(bin)
}

#[test]
fn the_manifests_validate_and_every_policy_finding_is_fixed_or_justified() {
    let files = ["namespace.yaml", "agent.yaml", "collector.yaml"].map(|f| deploy_dir().join("kubernetes").join(f));
    let out = deploy_tool("kubernetes-validate").args(["--strict", "--quiet"]).args(&files).output().unwrap();
    let said = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(out.status.success() && said.trim().is_empty(), "kubernetes-validate: {said}");

    let out = deploy_tool("checkov")
        .args(["--framework", "kubernetes", "--skip-download", "--output", "json", "--directory"])
        .arg(deploy_dir().join("kubernetes"))
        .output()
        .unwrap();
    let v: serde_json::Value = serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|e| panic!("checkov: {e}: {}", String::from_utf8_lossy(&out.stderr)));
    let results = &v["results"];
    let failed: Vec<String> = results["failed_checks"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| format!("{} {} ({})", c["check_id"], c["resource"], c["check_name"]))
        .collect();
    assert!(failed.is_empty(), "checkov findings neither fixed nor justified: {failed:#?}");
    assert!(v["summary"]["passed"].as_u64().unwrap() > 100, "checkov checked little: {}", v["summary"]);
    for skipped in results["skipped_checks"].as_array().unwrap() {
        let why = skipped["check_result"]["suppress_comment"].as_str().unwrap_or_default();
        assert!(why.len() > 20, "{} on {} skipped without a reason", skipped["check_id"], skipped["resource"]);
    }
}

/// The image `cargo xtask test` builds with `cargo xtask image`.
const IMAGE: &str = "localhost/hostprobe:latest";

/// A podman container, removed on drop (also when a test fails).
struct Container(String);

impl Drop for Container {
    fn drop(&mut self) {
        let _ = podman().args(["rm", "--force", "--ignore", &self.0]).output();
    }
}

/// podman as `cargo xtask image` runs it (xtask/src/image.rs says why).
fn podman() -> Command {
    let mut c = Command::new("podman");
    c.args(["--runtime", "runc", "--cgroup-manager", "cgroupfs", "--storage-driver", "vfs"]);
    c
}

/// `podman run` of the image the way agent.yaml's DaemonSet runs it: its
/// capabilities, hostPath mounts (the spool in `spool`), read-only root,
/// memory limit, NODE_NAME; with the host's PID namespace when `host_pid`.
fn as_in_the_daemonset(name: &str, host_pid: bool, spool: &TempDir, args: &[&str]) -> Command {
    let yaml = manifest("agent.yaml");
    let list = |line: &str| -> Vec<String> {
        let (_, l) = line.split_once('[').unwrap();
        l.trim_end_matches(']').split(',').map(|c| c.trim().trim_matches('"').to_string()).collect()
    };
    let add = yaml.lines().find(|l| l.trim_start().starts_with("add: [")).expect("capabilities in agent.yaml");
    let caps = list(add);
    assert_eq!(
        caps.iter().map(|c| format!("CAP_{c}")).collect::<Vec<_>>(),
        unit_capabilities(),
        "the DaemonSet and the unit grant the same"
    );
    let lines: Vec<&str> = yaml.lines().map(str::trim).collect();
    let host_paths: Vec<&str> = lines
        .windows(2)
        .filter(|w| w[0] == "hostPath:")
        .map(|w| w[1].strip_prefix("path: ").expect("path after hostPath"))
        .collect();
    let memory = lines
        .windows(2)
        .find(|w| w[0] == "limits:" && w[1].starts_with("cpu:"))
        .and_then(|_| lines.iter().skip_while(|l| **l != "limits:").find_map(|l| l.strip_prefix("memory: ")))
        .expect("a memory limit in agent.yaml");
    let memory = memory.replace("Mi", "m").replace("Gi", "g");

    let mut cmd = podman();
    cmd.args(["run", "--rm", "--name", name, "--read-only", "--security-opt", "seccomp=unconfined"])
        .args(["--ulimit", "nofile=1024:1024", "--ulimit", "nproc=4096:4096"])
        .args(["--memory", &memory, "--memory-swap", &memory])
        .args(["--cap-drop", "all", "--cap-add", &caps.join(",")])
        .args(["--env", "NODE_NAME=test-node"]);
    if host_pid {
        cmd.arg("--pid=host");
    }
    for path in host_paths {
        match path.starts_with("/sys/") {
            true => cmd.args(["--volume", &format!("{path}:{path}:ro")]),
            false => cmd.args(["--volume", &format!("{}:{path}", spool.path())]),
        };
    }
    cmd.arg(IMAGE).args(args);
    cmd
}

#[test]
fn the_image_runs_as_the_daemonset_does_and_counts_a_host_process_exactly() {
    let spool = TempDir::new("image-spool");
    let name = format!("hostprobe-test-{}", std::process::id());
    let _container = Container(name.clone());
    let mut workload = Workload::spawn(&["getppid", "5000"]);
    let pid = workload.pid();
    let pid_s = pid.to_string();
    let run = ["run", "--output", "json", "--interval", "200ms", "--pid", &pid_s];
    let mut agent = Agent::spawn_command(as_in_the_daemonset(&name, true, &spool, &run));
    agent.wait_attached();
    workload.go();
    workload.wait();
    agent.run_for(Duration::from_millis(600));
    let (reports, log) = agent.stop_logged();
    for probe in ["syscall", "disk", "offcpu", "tcp"] {
        assert_eq!(probe_status(&reports[0], probe)["active"], true, "{probe} not attached in the container: {log}");
    }
    assert_eq!(sum(&syscall_items(&reports, pid, "getppid"), "count"), 5_000, "the host process's count, exactly");
    assert!(reports.iter().all(|r| r["host"] == "test-node"), "the host is NODE_NAME");
    let exe = process_reports(&reports, pid).iter().find_map(|p| p["exe"].as_str().map(str::to_string));
    assert!(exe.is_some_and(|e| e.ends_with("/workload")), "/proc of the host read from the container");

    // Without the host's PID namespace: the clear error, exit 2.
    let name = format!("hostprobe-test-nopid-{}", std::process::id());
    let _container = Container(name.clone());
    let out = as_in_the_daemonset(&name, false, &spool, &["run"]).output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(stderr.contains("not in the host's PID namespace") && stderr.contains("hostPID: true"), "{stderr}");
}

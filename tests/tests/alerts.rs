//! The Prometheus alerting rules in `deploy/prometheus/`: `promtool`
//! checks them and runs their unit tests (series that fire each alert and
//! series that do not); every metric they read is one the agent serves;
//! and a real Prometheus scraping a real agent fires the disk alert for a
//! process whose writes a cgroup limit throttles, and not before.

use std::{path::PathBuf, process::Command, time::Duration};

use hostprobe_tests::{Agent, BlkioGroup, Cgroup2, LoopDevice, Prometheus, TempDir, Workload};

fn rules_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../deploy/prometheus")
}

fn promtool(args: &[&str]) -> String {
    let out = Command::new("promtool")
        .args(args)
        .current_dir(rules_dir())
        .output()
        .expect("promtool (Debian's prometheus package)");
    let said = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(out.status.success(), "promtool {args:?}:\n{said}");
    said
}

/// The alert names in a rules file.
fn alerts_in(rules: &str) -> Vec<String> {
    rules.lines().filter_map(|l| l.trim().strip_prefix("- alert: ")).map(str::to_string).collect()
}

#[test]
fn promtool_checks_the_rules_and_their_unit_tests_pass() {
    let rules = std::fs::read_to_string(rules_dir().join("hostprobe-rules.yml")).unwrap();
    let tests = std::fs::read_to_string(rules_dir().join("hostprobe-rules.test.yml")).unwrap();
    let names = alerts_in(&rules);
    let said = promtool(&["check", "rules", "hostprobe-rules.yml"]);
    assert!(said.contains(&format!("SUCCESS: {} rules found", names.len())), "{said}");
    promtool(&["test", "rules", "hostprobe-rules.test.yml"]);
    // Each alert is tested firing (a non-empty exp_alerts) and not firing
    // (an empty one), and carries a summary and a runbook line.
    for name in &names {
        let evals: Vec<&str> =
            tests.split("- eval_time:").filter(|e| e.contains(&format!("alertname: {name}\n"))).collect();
        assert!(evals.iter().any(|e| e.contains("exp_alerts: []")), "{name} is never tested not firing");
        assert!(evals.iter().any(|e| e.contains("exp_labels:")), "{name} is never tested firing");
    }
    assert_eq!(rules.matches("\n          summary: ").count(), names.len(), "a summary for every alert");
    assert_eq!(rules.matches("\n          runbook: ").count(), names.len(), "a runbook line for every alert");
}

#[test]
fn the_rules_read_only_metrics_the_agent_serves() {
    // Metric families are named once, in the agent's catalog; `_total`
    // (counters) and `_sum`/`_count`/`_bucket` (histograms) are added when
    // they are served.
    let served: std::collections::BTreeSet<String> =
        hostprobe::catalog::NAMES.iter().map(|m| hostprobe::catalog::prometheus_name(m.name, m.unit)).collect();
    let rules = std::fs::read_to_string(rules_dir().join("hostprobe-rules.yml")).unwrap();
    let exprs: String = rules
        .split("expr: |")
        .skip(1)
        .map(|e| e.split("for:").next().unwrap_or("").split("labels:").next().unwrap_or(""))
        .collect();
    let mut used = std::collections::BTreeSet::new();
    let word_char = |c: char| c.is_ascii_alphanumeric() || c == '_';
    for (at, _) in exprs.match_indices("hostprobe_") {
        if exprs[..at].chars().next_back().is_some_and(word_char) {
            continue;
        }
        let word: String = exprs[at..].chars().take_while(|c| word_char(*c)).collect();
        // Label names (hostprobe_probe, hostprobe_thread_state...) are
        // followed by a matcher or sit in a `by (...)` list.
        let next = exprs[at + word.len()..].trim_start();
        let label = (next.starts_with('=') && !next.starts_with("==")) || next.starts_with(['!', ',', ')']);
        if !label {
            let rest = &word["hostprobe_".len()..];
            let base = ["_total", "_sum", "_count", "_bucket"].iter().fold(rest, |r, s| r.strip_suffix(s).unwrap_or(r));
            used.insert(format!("hostprobe_{base}"));
        }
    }
    assert!(used.len() >= 8, "{used:?}");
    for m in &used {
        assert!(served.contains(m), "the rules read {m}, which the agent does not serve");
    }
}

/// The alerts named `name` about process `process`.
fn alerts_for(p: &Prometheus, name: &str, process: &str) -> Vec<serde_json::Value> {
    p.alerts()
        .into_iter()
        .filter(|a| a["labels"]["alertname"] == name && a["labels"]["process_executable_name"] == process)
        .collect()
}

#[test]
fn a_real_prometheus_fires_the_disk_alert_for_a_throttled_process_and_not_before() {
    // The rules as shipped but with every `for:` at 0s: the wait they add
    // is promtool's to test (above); this test is about the expressions on
    // real scrapes. A paced writer (a 4 KiB O_DIRECT write, then 1 ms
    // asleep) spends little time blocked; limited to 50 writes a second by
    // its blkio cgroup, it is blocked nearly all the time.
    let dir = TempDir::new("alerts");
    let rules = std::fs::read_to_string(rules_dir().join("hostprobe-rules.yml")).unwrap();
    let quick: String = rules
        .lines()
        .map(|l| if l.trim_start().starts_with("for: ") { "        for: 0s\n".to_string() } else { format!("{l}\n") })
        .collect();
    let rules_file = dir.0.join("rules.yml");
    std::fs::write(&rules_file, quick).unwrap();
    let cg = Cgroup2::new(&format!("hostprobe-test-alerts-{}", std::process::id()));
    let dev = LoopDevice::in_memory(64);
    let mut writer = Workload::spawn(&["dio-loop", &dev.path, "90000", "1000"]);
    cg.add(writer.pid());
    let port = hostprobe_tests::free_port();
    let listen = format!("127.0.0.1:{port}");
    let agent = Agent::start(&["--cgroup", &cg.path(), "--prometheus-listen", &listen, "--interval", "500ms"]);
    let prometheus = Prometheus::with_rules(port, &[&rules_file]);
    writer.go();
    // Unthrottled for 10 s: the rule is evaluated on real data (the share
    // is known) and does not fire.
    let blocked_share =
        "sum(rate(hostprobe_thread_time_seconds_total{process_executable_name=\"workload\",hostprobe_thread_state=\"blocked_io\"}[1m])) \
                         / sum(rate(hostprobe_thread_time_seconds_total{process_executable_name=\"workload\"}[1m]))";
    let mut share = None;
    for _ in 0..10 {
        std::thread::sleep(Duration::from_secs(1));
        assert_eq!(
            alerts_for(&prometheus, "HostprobeProcessBlockedOnDisk", "workload"),
            Vec::<serde_json::Value>::new()
        );
        share = prometheus.query(blocked_share).or(share);
    }
    eprintln!("unthrottled: blocked share {share:?}");
    assert!(share.is_some_and(|s| s < 0.5), "blocked share {share:?}: the rule had no data, or the writer was blocked");
    // Throttled: it fires within a minute (the rule's 1-minute rate
    // forgets the unthrottled seconds).
    let before = dev.stats();
    let t0 = std::time::Instant::now();
    let limit = BlkioGroup::new("alerts", "blkio.throttle.write_iops_device", &format!("{} 50", dev.numbers()));
    limit.add(writer.pid());
    let fired = loop {
        let firing: Vec<_> = alerts_for(&prometheus, "HostprobeProcessBlockedOnDisk", "workload")
            .into_iter()
            .filter(|a| a["state"] == "firing")
            .collect();
        if !firing.is_empty() {
            break firing;
        }
        assert!(t0.elapsed() < Duration::from_secs(60), "no alert after 60 s; alerts: {:?}", prometheus.alerts());
        std::thread::sleep(Duration::from_secs(1));
    };
    let secs = t0.elapsed().as_secs_f64();
    let writes = (dev.stats() - before).writes;
    eprintln!("fired after {secs:.0} s throttled ({writes} writes meanwhile): {}", fired[0]);
    // The kernel's accounting: the limit held (50 a second, and the burst
    // the throttle allows at first: 19 writes over in one run).
    assert!((writes as f64) <= 50.0 * secs + 100.0, "{writes} writes in {secs:.0} s");
    let summary = fired[0]["annotations"]["summary"].as_str().unwrap_or_default();
    assert!(summary.starts_with("workload on 127.0.0.1:") && summary.contains("blocked on disk"), "{summary}");
    assert!(fired[0]["annotations"]["runbook"]
        .as_str()
        .is_some_and(|r| r.contains("hostprobe diagnose --comm workload")));
    drop(agent);
}

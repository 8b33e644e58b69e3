//! Conservation: whatever `--top` cuts, no figure is lost. 60 processes with
//! known disk bytes (O_DIRECT writes to a loop device made here), TCP bytes
//! (to a loopback server in this test) and sleep time run in a cgroup of
//! their own under `--top 5`. The processes shown plus `other` must add up
//! to what the workloads did, to `devices[]` and to /proc/diskstats; and
//! Prometheus (a real server's PromQL) and OTLP (the Python receiver) must
//! carry the same host totals as the JSON.
//!
//! Writes are 64 KiB and 4 KiB-aligned, so no block-layer split is involved;
//! each process writes its own region with gaps between regions, so
//! requests of different processes are never adjacent (nothing merges).

use std::{
    io::{Read, Write},
    time::{Duration, Instant},
};

use hostprobe_tests::{
    free_port, http_get, otlp_num, otlp_points, otlp_str, promtool_check, Agent, LoopDevice, OtlpReceiver, Prometheus,
    Workload,
};
use serde_json::Value;

/// The metrics' process group of TCP connections with no known owner.
const UNKNOWN_OWNER: &str = "tcp_unknown_owner";

const PROCS: u64 = 60;
const TOP: &str = "5";
const BLOCK: u64 = 64 << 10;
/// Each process's part of the device: room for its writes, then a gap.
const REGION: u64 = 512 << 10;
/// The loop device's size.
const DEVICE_MIB: u64 = 64;
const _: () = assert!(PROCS * REGION <= DEVICE_MIB << 20);

/// What process `i` is told to do: (64 KiB writes, bytes sent, sleep ms).
fn plan(i: u64) -> (u64, u64, u64) {
    (1 + i % 4, 1_000 + 997 * i, 20 + 10 * (i % 5))
}

/// What the workloads did, by their own count.
#[derive(Debug, Default)]
struct Known {
    writes: u64,
    written: u64,
    sent: u64,
    received: u64,
    asked_sleep_ns: u64,
    slept_ns: u64,
    asleep_ns: u64,
}

/// Sectors written to `dev` so far, from /proc/diskstats (field 10).
fn sectors_written(dev: &str) -> u64 {
    let stats = std::fs::read_to_string("/proc/diskstats").unwrap();
    let line =
        stats.lines().map(|l| l.split_whitespace().collect::<Vec<_>>()).find(|f| f.get(2) == Some(&dev)).unwrap();
    line[9].parse().unwrap()
}

/// Items of `list` (an array field) of every process shown and of `other`,
/// over all reports.
fn shown_and_other<'a>(reports: &'a [Value], list: &str) -> Vec<&'a Value> {
    reports
        .iter()
        .flat_map(|r| r["processes"].as_array().into_iter().flatten().chain(r.get("other")))
        .flat_map(|p| p[list].as_array().into_iter().flatten())
        .collect()
}

/// The items of device `dev`'s writes.
fn writes_to<'a>(items: Vec<&'a Value>, dev: &str) -> Vec<&'a Value> {
    items.into_iter().filter(|d| d["device"] == dev && d["op"] == "write").collect()
}

fn total(items: &[&Value], field: &str) -> u64 {
    items.iter().map(|v| v[field].as_u64().unwrap_or_else(|| panic!("{field} in {v}"))).sum()
}

/// The sum of a Prometheus text-format family's samples whose labels
/// include all of `labels` (`name="value"` pairs), but for the unknown
/// owner's.
fn scraped(body: &str, family: &str, labels: &[&str]) -> f64 {
    let unknown = format!("process_executable_name=\"{UNKNOWN_OWNER}\"");
    body.lines()
        .filter(|l| l.starts_with(&format!("{family}{{")) && !l.contains(&unknown))
        .filter(|l| labels.iter().all(|want| l.contains(want)))
        .map(|l| l.rsplit(' ').next().unwrap().parse::<f64>().unwrap())
        .sum()
}

#[test]
fn top_cut_conserves_disk_tcp_and_sleep_in_json_prometheus_and_otlp() {
    let root = hostprobe::cli::cgroup2_mount().expect("a cgroup2 mount");
    let cgroup = std::path::Path::new(&root).join(format!("hostprobe-test-conserve-{}", std::process::id()));
    std::fs::create_dir(&cgroup).expect("create a test cgroup");
    struct Remove(std::path::PathBuf);
    impl Drop for Remove {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir(&self.0);
        }
    }
    let _cleanup = Remove(cgroup.clone());
    let dev = LoopDevice::new(DEVICE_MIB);
    std::thread::sleep(Duration::from_millis(200)); // let any probing of the new device finish

    // The TCP peer: outside the cgroup, so only the workloads' side counts.
    // Each connection is read to EOF and answered with half as much plus 100.
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let tcp_port = listener.local_addr().unwrap().port().to_string();
    let server = std::thread::spawn(move || {
        let handlers: Vec<_> = (0..PROCS)
            .map(|_| {
                let (mut s, _) = listener.accept().expect("accept");
                std::thread::spawn(move || {
                    let mut got = Vec::new();
                    s.read_to_end(&mut got).expect("server read");
                    let answer = vec![5u8; got.len() / 2 + 100];
                    s.write_all(&answer).expect("server write");
                    (got.len() as u64, answer.len() as u64)
                })
            })
            .collect();
        handlers.into_iter().map(|h| h.join().unwrap()).fold((0, 0), |a, b| (a.0 + b.0, a.1 + b.1))
    });

    let mut workloads = Vec::new();
    let mut known = Known::default();
    for i in 0..PROCS {
        let (writes, sent, sleep_ms) = plan(i);
        let w = Workload::spawn(&[
            "conserve",
            &format!("cons-{i:02}"),
            &dev.path,
            &(i * REGION).to_string(),
            &writes.to_string(),
            "127.0.0.1",
            &tcp_port,
            &sent.to_string(),
            &sleep_ms.to_string(),
        ]);
        std::fs::write(cgroup.join("cgroup.procs"), w.pid().to_string()).expect("move the workload into the cgroup");
        known.asked_sleep_ns += sleep_ms * 1_000_000;
        workloads.push(w);
    }

    let metrics_port = free_port();
    let receiver = OtlpReceiver::start("conservation", 0.0);
    let otlp = receiver.url();
    let mut agent = Agent::start(&[
        "--cgroup",
        cgroup.to_str().unwrap(),
        "--top",
        TOP,
        "--prometheus-listen",
        &format!("127.0.0.1:{metrics_port}"),
        // Fewer groups than names: the rest of the names are summed as
        // `other` in the metrics too.
        "--metrics-max-processes",
        "3",
        "--otlp-endpoint",
        &otlp,
        "--plaintext",
    ]);
    let prometheus = Prometheus::start(metrics_port);
    let sectors_before = sectors_written(dev.name());
    let before = dev.diskstats();
    for w in &mut workloads {
        w.go();
    }
    for w in workloads {
        let out: Value = serde_json::from_str(w.wait().trim()).expect("the workload's counts");
        known.writes += out["writes"].as_u64().unwrap();
        known.written += out["written"].as_u64().unwrap();
        known.sent += out["sent"].as_u64().unwrap();
        known.received += out["received"].as_u64().unwrap();
        known.slept_ns += out["slept_ns"].as_u64().unwrap();
        known.asleep_ns += out["asleep_ns"].as_u64().unwrap();
    }
    let (server_got, server_answered) = server.join().unwrap();
    let after = dev.diskstats();
    let sectors_after = sectors_written(dev.name());
    eprintln!("known: {known:?}");
    // Truth, cross-checked: the kernel's accounting and the peer's agree
    // with the workloads' own counts.
    assert_eq!(known.written, (0..PROCS).map(|i| plan(i).0).sum::<u64>() * BLOCK);
    assert_eq!(after.1 - before.1, known.writes, "diskstats writes");
    assert_eq!((sectors_after - sectors_before) * 512, known.written, "diskstats bytes written");
    assert_eq!((server_got, server_answered), (known.sent, known.received), "the peer's counts");

    // The workloads are gone: let their last figures in, then wait until
    // Prometheus has scraped the settled state.
    agent.run_for(Duration::from_millis(1500));
    let loop_write = [&format!("system_device=\"{}\"", dev.name()) as &str, "hostprobe_disk_op=\"write\""];
    let queries = [
        (
            format!(
                r#"sum(hostprobe_disk_io_bytes_total{{system_device="{}",hostprobe_disk_op="write"}})"#,
                dev.name()
            ),
            "hostprobe_disk_io_bytes_total",
            &loop_write[..],
        ),
        (
            format!(r#"sum(hostprobe_disk_ios_total{{system_device="{}",hostprobe_disk_op="write"}})"#, dev.name()),
            "hostprobe_disk_ios_total",
            &loop_write[..],
        ),
        (
            format!(
                r#"sum(hostprobe_tcp_io_bytes_total{{network_io_direction="transmit",process_executable_name!="{UNKNOWN_OWNER}"}})"#
            ),
            "hostprobe_tcp_io_bytes_total",
            &["network_io_direction=\"transmit\""][..],
        ),
        (
            format!(
                r#"sum(hostprobe_tcp_io_bytes_total{{network_io_direction="receive",process_executable_name!="{UNKNOWN_OWNER}"}})"#
            ),
            "hostprobe_tcp_io_bytes_total",
            &["network_io_direction=\"receive\""][..],
        ),
        (
            r#"sum(hostprobe_thread_time_seconds_total{hostprobe_thread_state="sleep"})"#.to_string(),
            "hostprobe_thread_time_seconds_total",
            &["hostprobe_thread_state=\"sleep\""][..],
        ),
    ];
    let (_, body) = http_get(metrics_port, "/metrics");
    let direct: Vec<f64> = queries.iter().map(|(_, family, labels)| scraped(&body, family, labels)).collect();
    let mut promql = Vec::new();
    let end = Instant::now() + Duration::from_secs(30);
    while Instant::now() < end {
        agent.run_for(Duration::from_millis(500));
        promql = queries.iter().map(|(q, _, _)| prometheus.query(q).unwrap_or(-1.0)).collect();
        if promql.iter().zip(&direct).all(|(a, b)| (a - b).abs() <= 1e-9 * b.abs()) {
            break;
        }
    }
    promtool_check(&body);
    let reports = agent.stop();
    std::thread::sleep(Duration::from_millis(300));

    // JSON: the processes shown plus `other`.
    assert!(reports.iter().all(|r| r["processes"].as_array().unwrap().len() <= 5), "--top 5 holds");
    let cut = reports.iter().filter(|r| r["other"]["processes"].as_u64().unwrap_or(0) > 0).count();
    assert!(cut > 0, "the --top cut merged processes into other");
    let name = dev.name();
    let disk = writes_to(shown_and_other(&reports, "disk"), name);
    let other_disk: Vec<&Value> =
        writes_to(reports.iter().flat_map(|r| r["other"]["disk"].as_array().into_iter().flatten()).collect(), name);
    assert_eq!(total(&disk, "bytes"), known.written, "disk bytes: shown + other");
    assert_eq!(total(&disk, "count"), known.writes, "disk requests: shown + other");
    assert!(total(&other_disk, "bytes") > 0, "other carries disk figures");
    let devices: Vec<&Value> =
        writes_to(reports.iter().flat_map(|r| r["devices"].as_array().into_iter().flatten()).collect(), name);
    assert_eq!(total(&devices, "bytes"), known.written, "devices[]");
    assert_eq!(total(&devices, "count"), known.writes, "devices[]");
    for d in &disk {
        for dist in ["queue", "service", "total"] {
            assert!(d[dist]["sum_ns"].is_u64(), "sum_ns on every latency object: {d}");
        }
    }

    let tcp = shown_and_other(&reports, "tcp");
    assert_eq!(total(&tcp, "bytes_sent"), known.sent, "TCP bytes sent: shown + other");
    assert_eq!(total(&tcp, "bytes_received"), known.received, "TCP bytes received: shown + other");

    let offcpu: Vec<&Value> = reports
        .iter()
        .flat_map(|r| r["processes"].as_array().into_iter().flatten().chain(r.get("other")))
        .filter_map(|p| p.get("offcpu"))
        .collect();
    let nanosleep: u64 = offcpu
        .iter()
        .flat_map(|o| o["sleep_by_syscall"].as_array().into_iter().flatten())
        .filter(|s| s["name"] == "nanosleep")
        .map(|s| s["ns"].as_u64().unwrap())
        .sum();
    // No switch or wake-up skipped, by the kernel's count of skipped runs
    // (cumulative; the classic tracepoints' programs were skipped
    // while the agent read its maps: 2 or 3 wake-ups in each of 3 runs).
    let skipped: Vec<&Value> = reports
        .last()
        .into_iter()
        .flat_map(|r| r["probes"].as_array().into_iter().flatten())
        .filter(|p| p["name"] == "offcpu")
        .flat_map(|p| p["programs"].as_array().into_iter().flatten())
        .filter(|g| g["missed"].as_u64() != Some(0))
        .collect();
    assert!(skipped.is_empty(), "off-CPU programs skipped: {skipped:?}");
    // Asleep from leaving the CPU inside nanosleep to the timer's wake-up,
    // against the kernel's own accounting of each call (its wall time less
    // its on-CPU and run-queue time, read by the workload around it): within
    // 0.25%, less than any one sleep (20 ms of 2.4 s), and at most what the
    // workloads measured around their calls. Now and then (a few runs in 25
    // here, most often just after a build) a thread's return to a CPU or its
    // wake-up is not seen, for reasons not yet found: the agent says so in
    // its counters, and only a deviation it declared is allowed (a sleep of
    // at most 60 ms lost, or a wait for a CPU counted as sleep, each).
    let declared: u64 = reports
        .iter()
        .flat_map(|r| r["probes"].as_array().into_iter().flatten())
        .filter(|p| p["name"] == "offcpu")
        .map(|p| {
            ["arrival_not_seen", "wakeup_not_seen"].iter().map(|c| p["counters"][c].as_u64().unwrap()).sum::<u64>()
        })
        .sum();
    let allowed = known.asleep_ns as f64 * 0.0025 + declared as f64 * 70e6;
    eprintln!(
        "nanosleep sleep: agent {nanosleep} ns, the kernel's accounting {} ns; declared unseen returns and wake-ups: \
         {declared}",
        known.asleep_ns
    );
    assert!(
        (nanosleep as f64 - known.asleep_ns as f64).abs() <= allowed && nanosleep <= known.slept_ns,
        "nanosleep sleep {nanosleep} ns: asleep by the kernel's accounting {} ns, asked {} ns, measured around \
         the calls {} ns; {declared} unseen returns to a CPU and wake-ups declared",
        known.asleep_ns,
        known.asked_sleep_ns,
        known.slept_ns
    );

    // Totals in the JSON over every process shown and `other`, which the
    // exports must carry too. Connections with no known owner are left out:
    // under a filter they hold the traffic of processes outside it (this
    // test's server, Prometheus's scrapes, OTLP's exports), which goes on.
    let sleep_ns: u64 = offcpu.iter().map(|o| o["sleep_ns"].as_u64().unwrap()).sum();
    let json = [
        total(&disk, "bytes") as f64,
        total(&disk, "count") as f64,
        total(&tcp, "bytes_sent") as f64,
        total(&tcp, "bytes_received") as f64,
        sleep_ns as f64 / 1e9,
    ];
    for (((q, _, _), want), (got, direct)) in queries.iter().zip(json).zip(promql.iter().zip(&direct)) {
        assert!((want - direct).abs() <= 1e-9 * want, "/metrics: {q} is {direct}, the JSON says {want}");
        assert!((want - got).abs() <= 1e-9 * want, "PromQL {q} = {got}, the JSON says {want}");
    }

    // OTLP: the last (cumulative) export carries the same totals.
    let requests = receiver.requests();
    let last = requests.last().expect("OTLP exports");
    let owned = |p: &Value| otlp_str(p, "process.executable.name") != Some(UNKNOWN_OWNER);
    let ints = |metric: &str, keep: &dyn Fn(&Value) -> bool| -> f64 {
        otlp_points(last, metric)
            .into_iter()
            .filter(|(p, _)| owned(p) && keep(p))
            .map(|(p, _)| otlp_num(&p["asInt"]) as f64)
            .sum()
    };
    let on_loop = |p: &Value| {
        otlp_str(p, "system.device") == Some(dev.name()) && otlp_str(p, "disk.io.direction") == Some("write")
    };
    let otlp = [
        ints("hostprobe.disk.io", &on_loop),
        ints("hostprobe.disk.ios", &on_loop),
        ints("hostprobe.tcp.io", &|p| otlp_str(p, "network.io.direction") == Some("transmit")),
        ints("hostprobe.tcp.io", &|p| otlp_str(p, "network.io.direction") == Some("receive")),
        otlp_points(last, "hostprobe.thread.time")
            .into_iter()
            .filter(|(p, _)| otlp_str(p, "hostprobe.thread.state") == Some("sleep"))
            .map(|(p, _)| p["asDouble"].as_f64().unwrap_or(0.0))
            .sum(),
    ];
    for (((q, _, _), want), got) in queries.iter().zip(json).zip(otlp) {
        assert!((want - got).abs() <= 1e-9 * want, "OTLP for {q}: {got}, the JSON says {want}");
    }
}

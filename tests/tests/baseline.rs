//! `hostprobe record` and `hostprobe compare` on a lab whose changes the
//! test makes: three process groups in cgroups of their own (a TCP sender
//! through a token bucket between two network namespaces, paced `O_DIRECT`
//! writes to a loop device, four threads that each hold a mutex while they
//! sleep), recorded for 3 s at a time with `--cgroup`. The workloads are
//! started afresh for every pair of recordings, and the change is made to
//! them running, as in a tuning loop (the lock workload is restarted: a new
//! pid in the same group, matched by name and cgroup).
//!
//! - Unchanged, five pairs: `compare` reports nothing and exits 0.
//! - One thing changed (the bucket's rate halved, so the RTT of a full
//!   window doubles; a cgroup write limit of 50 IOPS; the four threads
//!   sharing one mutex): the first change reported is that one, in its
//!   group, with its resource and direction, and `--fail-on` exits 1.
//!
//! Truth is the change the test made, and outside evidence that it took:
//! `ss` for the RTT, `/proc/diskstats` for the write limit, and the
//! workload's own count of lock acquisitions.

use std::{
    io::{BufRead, BufReader, Write},
    process::Child,
    time::Duration,
};

use hostprobe_tests::{
    free_port, hostprobe, Agent, BlkioGroup, Cgroup2, Collector, LoopDevice, NetPair, TempDir, Workload,
};
use serde_json::Value;

const RECORD: &str = "3s";
/// Longer than warm-up, attaches and two recordings together.
const RUN_MS: &str = "25000";
const FAIL_ON: &str = "p50 > +25%, p99 > +25%, share > +10";

#[derive(Debug, Clone, Copy, PartialEq)]
enum Change {
    None,
    /// The token bucket at 8 instead of 16 Mbit/s.
    HalfRate,
    /// 50 writes a second (cgroup v1 blkio: this host's I/O controller).
    WriteLimit,
    /// The four threads share one mutex instead of one each.
    SharedLock,
}

struct Lab {
    net: NetPair,
    dev: LoopDevice,
    cg: Cgroup2,
    groups: [Cgroup2; 3],
    /// Where recordings go: `$HOSTPROBE_TEST_KEEP` (kept, to study them)
    /// or a temporary directory.
    dir: String,
    _tmp: TempDir,
}

/// The lab's workloads, running; stopped on drop.
struct Running {
    _client: Killed,
    _server: Killed,
    writer: Workload,
    lockers: Workload,
    limit: Option<BlkioGroup>,
    change: Change,
}

/// A child killed on drop.
struct Killed(Child);

impl Drop for Killed {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

impl Lab {
    fn new() -> Lab {
        let rel = format!("hostprobe-test-baseline-{}", std::process::id());
        let cg = Cgroup2::new(&rel);
        let groups = ["net", "disk", "lock"].map(|g| Cgroup2::new(&format!("{rel}/{g}")));
        let tmp = TempDir::new("baseline");
        let dir = std::env::var("HOSTPROBE_TEST_KEEP").unwrap_or_else(|_| tmp.path().to_string());
        // In memory: a real disk's writeback stalls would be the noise of
        // another workload, not of this one.
        Lab { net: NetPair::new(), dev: LoopDevice::in_memory(64), cg, groups, dir, _tmp: tmp }
    }

    fn tbf(&self, rate: &str) {
        let tbf =
            ["tc", "qdisc", "replace", "dev", "va", "root", "tbf", "rate", rate, "burst", "32kb", "latency", "400ms"];
        self.net.run(&self.net.a, &tbf);
    }

    /// Starts the workloads unchanged, past their warm-up.
    fn start(&self) -> Running {
        self.tbf("16mbit");
        // The receiver clamps its window to 48 KB: the sender keeps it
        // full, mostly queued in the bucket, so the RTT is about 48 KB
        // over the rate (24 ms at 16 Mbit/s).
        let mut server = self.net.spawn(&self.net.b, &["tcp-sink", "10.231.0.2", "5003", "49152"]);
        let mut line = String::new();
        BufReader::new(server.stdout.as_mut().unwrap()).read_line(&mut line).unwrap();
        assert_eq!(line.trim(), "listening");
        let mut client = self.net.spawn(&self.net.a, &["tcp-steady", "10.231.0.2", "5003", RUN_MS]);
        self.groups[0].add(client.id());
        client.stdin.as_mut().unwrap().write_all(b"go\n").unwrap();
        // A 4 KiB direct write every 10 ms or so. Its device, a loop
        // device in memory, serves in tens of microseconds of the loop
        // worker's CPU time: when the test's neighbours compile, the median
        // went from 19 to 69 us between two unchanged runs; at 870 writes a
        // second (every millisecond) that is 4% of a thread, near what
        // matters (5%); at 100 a second it is far from it.
        let mut writer = Workload::spawn(&["dio-loop", &self.dev.path, RUN_MS, "10000"]);
        self.groups[1].add(writer.pid());
        writer.go();
        let lockers = self.lockers("contend-apart");
        // Past the TCP slow start.
        std::thread::sleep(Duration::from_secs(1));
        Running { _client: Killed(client), _server: Killed(server), writer, lockers, limit: None, change: Change::None }
    }

    fn lockers(&self, mode: &str) -> Workload {
        let mut lockers = Workload::spawn(&[mode, "4", "5", RUN_MS]);
        self.groups[2].add(lockers.pid());
        lockers.go();
        lockers
    }

    /// Makes the change to the running workloads, as one would in a tuning
    /// loop: the rate of the bucket, a limit on the writer's cgroup, the
    /// lock workload restarted sharing its mutex (new pid, same group).
    fn change(&self, r: &mut Running, change: Change) {
        match change {
            Change::None => {}
            Change::HalfRate => self.tbf("8mbit"),
            Change::WriteLimit => {
                let g = BlkioGroup::new(
                    "baseline",
                    "blkio.throttle.write_iops_device",
                    &format!("{} 50", self.dev.numbers()),
                );
                g.add(r.writer.pid());
                r.limit = Some(g);
            }
            Change::SharedLock => r.lockers = self.lockers("contend"),
        }
        r.change = change;
        // The queue refills at the new rate; the limit's first writes drain.
        std::thread::sleep(Duration::from_secs(1));
    }

    /// Records the running lab into `name`; returns its path. Checks from
    /// outside the agent that the lab is in the state it should be.
    fn record(&self, r: &Running, name: &str) -> String {
        let out = format!("{}/{name}.json", self.dir);
        let (before, t0) = (self.dev.stats(), std::time::Instant::now());
        let rec = hostprobe()
            .args(["record", "--duration", RECORD, "--cgroup", &self.cg.path(), "--out", &out])
            .output()
            .expect("run hostprobe record");
        assert!(rec.status.success(), "hostprobe record: {}", String::from_utf8_lossy(&rec.stderr));
        let writes = (self.dev.stats() - before).writes;
        let per_s = writes as f64 / t0.elapsed().as_secs_f64();
        let ss = self.net.run(&self.net.a, &["ss", "-tin", "dst", "10.231.0.2:5003"]);
        let rtt = ss.split_whitespace().find_map(|w| w.strip_prefix("rtt:")).unwrap_or("?").to_string();
        let in_futex = futex_waiters(r.lockers.pid());
        let change = r.change;
        eprintln!(
            "{name} ({change:?}): diskstats {per_s:.0} writes/s; ss rtt {rtt} ms; lock threads in futex {in_futex:.2}"
        );
        match change {
            // 50 a second (the limit's first burst drained before).
            Change::WriteLimit => assert!(per_s <= 55.0, "the limit did not hold: {per_s:.0} writes/s"),
            // 100 a second, less the timer's slack and the write itself.
            _ => assert!(per_s > 75.0, "the writer was slow: {per_s:.0} writes/s"),
        }
        let rtt_ms: f64 = rtt.split('/').next().and_then(|v| v.parse().ok()).unwrap_or(0.0);
        match change {
            Change::HalfRate => assert!(rtt_ms > 35.0, "ss rtt {rtt}"),
            _ => assert!(rtt_ms > 12.0 && rtt_ms < 35.0, "ss rtt {rtt}"),
        }
        match change {
            // The main thread waits for the others (in futex) all along.
            Change::SharedLock => assert!(in_futex > 2.0, "{in_futex} threads waiting in futex"),
            _ => assert!(in_futex <= 1.0, "{in_futex} threads waiting in futex"),
        }
        out
    }
}

/// How many of the process's threads sleep in `futex`, on average over 20
/// looks at `/proc/<pid>/task/*/syscall` (the kernel's view), 10 ms apart.
fn futex_waiters(pid: u32) -> f64 {
    let mut n = 0;
    for _ in 0..20 {
        for t in std::fs::read_dir(format!("/proc/{pid}/task")).into_iter().flatten().flatten() {
            let sc = std::fs::read_to_string(t.path().join("syscall")).unwrap_or_default();
            n += usize::from(sc.split_whitespace().next() == Some(&libc::SYS_futex.to_string()));
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    n as f64 / 20.0
}

/// `hostprobe compare A B --output json --fail-on FAIL_ON`: (exit code, answer).
fn compare(a: &str, b: &str) -> (i32, Value) {
    let out = hostprobe()
        .args(["compare", a, b, "--output", "json", "--fail-on", FAIL_ON])
        .output()
        .expect("run hostprobe compare");
    let text = hostprobe().args(["compare", a, b]).output().expect("run hostprobe compare");
    eprintln!("{}", String::from_utf8_lossy(&text.stdout));
    let v: Value = serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|e| panic!("bad JSON ({e}): {}", String::from_utf8_lossy(&out.stdout)));
    (out.status.code().unwrap_or(-1), v)
}

#[test]
fn unchanged_runs_show_no_change_and_each_change_comes_first() {
    let lab = Lab::new();
    // Acceptance 1: five pairs of unchanged runs, each pair on workloads
    // started afresh.
    let mut noisy = Vec::new();
    for i in 0..5 {
        let running = lab.start();
        let a = lab.record(&running, &format!("same-{i}-a"));
        let b = lab.record(&running, &format!("same-{i}-b"));
        drop(running);
        let (code, v) = compare(&a, &b);
        assert_eq!(v["groups_compared"], 3, "{v}");
        if code != 0 || !v["changes"].as_array().unwrap().is_empty() {
            noisy.push(format!("pair {i}: exit {code}, {}", v["changes"]));
        }
    }
    // Acceptance 2: one thing changed.
    for (change, group, resource, what) in [
        (Change::HalfRate, "net", "network", "TCP RTT to 10.231.0.2:*"),
        (Change::WriteLimit, "disk", "disk", "time blocked (D state: disk)"),
        (Change::SharedLock, "lock", "lock", "time waiting for locks"),
    ] {
        let mut running = lab.start();
        let before = lab.record(&running, &format!("{change:?}-before"));
        lab.change(&mut running, change);
        let after = lab.record(&running, &format!("{change:?}-after"));
        drop(running);
        let (code, v) = compare(&before, &after);
        let first = &v["changes"][0];
        assert_eq!(first["cgroup"], format!("{}/{group}", lab.cg.path()), "{change:?}: {v}");
        assert_eq!(
            (first["resource"].as_str(), first["what"].as_str()),
            (Some(resource), Some(what)),
            "{change:?}: {v}"
        );
        assert_eq!(first["direction"], "up", "{change:?}: {v}");
        assert_eq!(code, 1, "{change:?}: --fail-on '{FAIL_ON}' did not fail");
        // Nothing is reported about the groups left alone (a device's
        // figures, all processes together, have no cgroup).
        for c in v["changes"].as_array().unwrap().iter().filter(|c| c["cgroup"] != "") {
            assert_eq!(c["cgroup"], first["cgroup"], "{change:?}: a change in a group left alone: {c}");
        }
    }
    // Checked last, so that a failure still shows the changed runs.
    assert!(noisy.is_empty(), "unchanged runs reported changes:\n{}", noisy.join("\n"));
}

/// `hostprobe record --collector URL --agent-id ID --ago AGO --duration
/// DUR --out DIR/NAME.json`: (exit status, stderr, path).
fn record_from(url: &str, dir: &str, name: &str, ago: Duration, dur: Duration) -> (bool, String, String) {
    let out = format!("{dir}/{name}.json");
    let ms = |d: Duration| format!("{}ms", d.as_millis());
    let rec = hostprobe()
        .args(["record", "--collector", url, "--plaintext", "--agent-id", "lab"])
        .args(["--ago", &ms(ago), "--duration", &ms(dur), "--out", &out])
        .output()
        .expect("run hostprobe record --collector");
    (rec.status.success(), String::from_utf8_lossy(&rec.stderr).to_string(), out)
}

#[test]
fn windows_a_collector_holds_compare_as_recordings_do() {
    // The lab streamed to a collector by an agent (intervals of 500 ms, as
    // a local recording's slices): two windows before a change (a write
    // limit on the writer's cgroup) and one after it, recorded afterwards
    // from the collector's window; truth from /proc/diskstats.
    let lab = Lab::new();
    let port = free_port();
    let url = format!("http://127.0.0.1:{port}");
    let _collector = Collector::start(port, &["--plaintext"]);
    let cg = lab.cg.path();
    let mut running = lab.start();
    let mut agent = Agent::start(&[
        "--collector",
        &url,
        "--plaintext",
        "--agent-id",
        "lab",
        "--interval",
        "500ms",
        "--cgroup",
        &cg,
    ]);
    let window = Duration::from_secs(3);
    let mut spans = Vec::new();
    for step in ["before-1", "before-2", "after"] {
        if step == "after" {
            lab.change(&mut running, Change::WriteLimit);
        }
        // The kernel's view of the lab while the window runs.
        let (before, t0) = (lab.dev.stats(), std::time::Instant::now());
        agent.run_for(window);
        let per_s = (lab.dev.stats() - before).writes as f64 / t0.elapsed().as_secs_f64();
        eprintln!("{step}: diskstats {per_s:.0} writes/s");
        if step == "after" {
            assert!(per_s <= 55.0, "the limit did not hold: {per_s:.0} writes/s");
        } else {
            assert!(per_s > 75.0, "the writer was slow: {per_s:.0} writes/s");
        }
        spans.push((step, t0, t0.elapsed()));
    }
    // The last reports reach the collector.
    agent.run_for(Duration::from_millis(1500));
    drop(running);
    let now = std::time::Instant::now();
    let files: Vec<String> = spans
        .iter()
        .map(|(step, t0, len)| {
            let ago = now.duration_since(*t0).saturating_sub(*len);
            let (ok, err, path) = record_from(&url, &lab.dir, step, ago, *len);
            assert!(ok, "record {step}: {err}");
            path
        })
        .collect();
    let (code, v) = compare(&files[0], &files[1]);
    assert_eq!(v["groups_compared"], 3, "{v}");
    assert!(code == 0 && v["changes"].as_array().unwrap().is_empty(), "unchanged windows differ: {v}");
    let (code, v) = compare(&files[1], &files[2]);
    let first = &v["changes"][0];
    assert_eq!(first["cgroup"], format!("{cg}/disk"), "{v}");
    assert_eq!(
        (first["resource"].as_str(), first["what"].as_str(), first["direction"].as_str()),
        (Some("disk"), Some("time blocked (D state: disk)"), Some("up")),
        "{v}"
    );
    assert_eq!(code, 1, "--fail-on '{FAIL_ON}' did not fail");

    // A window the collector does not hold (before it started): refused,
    // with what it holds, rather than recorded from less.
    let (ok, err, _) = record_from(&url, &lab.dir, "too-old", Duration::from_secs(3600), window);
    assert!(!ok && err.contains("cannot answer for agent lab") && err.contains("holds no report"), "{err}");
    // Half of it held: refused too, saying how much is there.
    let since_start = now.duration_since(spans[0].1);
    let (ok, err, _) = record_from(&url, &lab.dir, "half", Duration::ZERO, since_start * 2);
    assert!(!ok && err.contains("its reports cover"), "{err}");
}

#[test]
fn compare_refuses_what_is_not_a_recording_clearly() {
    let dir = TempDir::new("baseline-files");
    let junk = format!("{}/junk.json", dir.path());
    std::fs::write(&junk, "{\"format\": \"something-else\"}").unwrap();
    let out = hostprobe().args(["compare", &junk, &junk]).output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(err.contains("not a hostprobe recording") && err.contains("hostprobe record"), "{err}");
    let out = hostprobe().args(["compare", &junk, &junk, "--fail-on", "p99 >> 20%"]).output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(err.contains("write terms like"), "{err}");
    let out = hostprobe().args(["record", "--duration", "1s", "--out", "/nonexistent/dir/r.json"]).output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(err.contains("cannot write there"), "{err}");
}

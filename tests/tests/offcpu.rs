//! Off-CPU probe against threads whose waits are known, and against the
//! kernel's own per-task scheduler accounting (/proc/<pid>/schedstat).

use std::{
    io::{BufRead, BufReader, Write},
    process::{Command, Stdio},
    time::Duration,
};

use hostprobe_tests::{measure, process_reports, Agent, LoopDevice, Workload};
use serde_json::Value;

/// Sum of an `offcpu` field for `pid` over all reports.
fn offcpu_sum(reports: &[Value], pid: u32, field: &str) -> u64 {
    process_reports(reports, pid).iter().filter_map(|p| p["offcpu"][field].as_u64()).sum()
}

/// Sleep per syscall for `pid` over all reports, in ns.
fn slept_in(reports: &[Value], pid: u32, syscall: &str) -> u64 {
    process_reports(reports, pid)
        .iter()
        .flat_map(|p| p["offcpu"]["sleep_by_syscall"].as_array().into_iter().flatten())
        .filter(|s| s["name"] == syscall)
        .map(|s| s["ns"].as_u64().unwrap())
        .sum()
}

#[test]
fn sleeping_is_sleep_time_in_nanosleep() {
    // 20 x 50 ms: 1 s asleep, plus 50 us of timer slack per sleep at most.
    let w = Workload::spawn(&["nanosleep", "20", "50"]);
    let pid = w.pid();
    let reports = measure(w, &["--pid", &pid.to_string(), "--probes", "offcpu"]);
    let sleep = offcpu_sum(&reports, pid, "sleep_ns") as f64;
    assert!((sleep - 1e9).abs() <= 0.05e9, "sleep {sleep} ns, expected 1 s within 5%");
    let in_nanosleep = slept_in(&reports, pid, "nanosleep") as f64;
    assert!(in_nanosleep >= 0.95e9 && in_nanosleep <= sleep, "in nanosleep: {in_nanosleep} of {sleep} ns");
    assert_eq!(offcpu_sum(&reports, pid, "blocked_io_ns"), 0);
}

/// (on-CPU ns, run-queue ns) from /proc/<pid>/schedstat.
fn schedstat(pid: u32) -> (u64, u64) {
    let s = std::fs::read_to_string(format!("/proc/{pid}/schedstat")).expect("schedstat");
    let f: Vec<u64> = s.split_whitespace().map(|v| v.parse().unwrap()).collect();
    (f[0], f[1])
}

#[test]
fn run_queue_and_on_cpu_time_match_schedstat() {
    // Two CPU-bound processes pinned to one CPU take turns: each waits in
    // the run queue while the other runs. The kernel's own accounting per
    // task (/proc/<pid>/schedstat: time on the CPU, time waiting for it) is
    // the truth; bound: within 10%.
    let spin = |cpu: &str| {
        Command::new(hostprobe_tests::workload_bin())
            .args(["spin", "1500", cpu])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .expect("spawn spinner")
    };
    let mut a = spin("1");
    let mut b = spin("1");
    let pids = [a.id(), b.id()];
    let mut agent = Agent::start(&["--pid", &format!("{},{}", pids[0], pids[1]), "--probes", "offcpu"]);
    let before = pids.map(schedstat);
    for c in [&mut a, &mut b] {
        c.stdin.as_mut().unwrap().write_all(b"go\n").unwrap();
    }
    for c in [&mut a, &mut b] {
        let mut line = String::new();
        BufReader::new(c.stdout.as_mut().unwrap()).read_line(&mut line).unwrap();
        assert_eq!(line.trim(), "done");
    }
    std::thread::sleep(Duration::from_millis(100)); // both back asleep on stdin
    let after = pids.map(schedstat);
    agent.run_for(Duration::from_millis(500));
    let reports = agent.stop();
    for c in [&mut a, &mut b] {
        c.stdin.as_mut().unwrap().write_all(b"end\n").unwrap();
        assert!(c.wait().unwrap().success());
    }
    for (i, pid) in pids.into_iter().enumerate() {
        let (on, rq) = (after[i].0 - before[i].0, after[i].1 - before[i].1);
        let ours_on = offcpu_sum(&reports, pid, "on_cpu_ns");
        let ours_rq = offcpu_sum(&reports, pid, "runqueue_ns");
        eprintln!("pid {pid}: on-CPU {ours_on} vs schedstat {on}; run queue {ours_rq} vs {rq}");
        assert!(on > 300_000_000 && rq > 300_000_000, "the two did not share the CPU: on {on}, rq {rq}");
        assert!((ours_on as f64 - on as f64).abs() <= 0.10 * on as f64, "on-CPU {ours_on} vs {on}");
        assert!((ours_rq as f64 - rq as f64).abs() <= 0.10 * rq as f64, "run queue {ours_rq} vs {rq}");
    }
}

#[test]
fn direct_io_waits_are_blocked_time() {
    let dev = LoopDevice::new(64);
    let w = Workload::spawn(&["dio", &dev.path, "0", "2000"]);
    let pid = w.pid();
    let reports = measure(w, &["--pid", &pid.to_string()]);
    let blocked = offcpu_sum(&reports, pid, "blocked_io_ns");
    let in_pwrite = slept_in(&reports, pid, "pwrite64");
    // 2,000 synchronous writes wait for the device in D state each time.
    assert!(blocked > 10_000_000, "blocked {blocked} ns");
    assert!(in_pwrite * 10 >= blocked * 9, "D-state time in pwrite64: {in_pwrite} of {blocked} ns");
}

#[test]
fn a_contended_mutex_is_futex_sleep() {
    // The main thread blocks on a mutex another thread holds for 200 ms.
    let w = Workload::spawn(&["mutex", "200"]);
    let pid = w.pid();
    let reports = measure(w, &["--pid", &pid.to_string(), "--probes", "offcpu"]);
    let futex = slept_in(&reports, pid, "futex") as f64;
    assert!((futex - 200e6).abs() <= 0.15 * 200e6, "futex sleep {futex} ns, expected ~200 ms");
}

#[test]
fn stacks_show_the_sleeping_function_and_the_kernel_sleep() {
    let dir = std::env::temp_dir().join(format!("hostprobe-stacks-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let (folded, svg) = (dir.join("offcpu.folded"), dir.join("offcpu.svg"));
    let mut w = Workload::spawn(&["named-sleeper", "30", "50"]);
    let mut rec = Command::new(hostprobe_tests::hostprobe_bin())
        .args(["offcpu", "--pid", &w.pid().to_string(), "--duration", "1500ms", "--min", "1ms"])
        .arg("--folded")
        .arg(&folded)
        .arg("--svg")
        .arg(&svg)
        .stderr(Stdio::piped())
        .spawn()
        .expect("run hostprobe offcpu");
    let mut err = BufReader::new(rec.stderr.take().unwrap());
    let mut line = String::new();
    err.read_line(&mut line).unwrap();
    assert!(line.contains("recording"), "{line}");
    w.go();
    let mut rest = String::new();
    std::io::Read::read_to_string(&mut err, &mut rest).unwrap();
    assert!(rec.wait().unwrap().success(), "{line}{rest}");
    w.wait();

    let text = std::fs::read_to_string(&folded).unwrap();
    let hit = text
        .lines()
        .find(|l| l.contains("named_sleeper") && l.contains("do_nanosleep"))
        .unwrap_or_else(|| panic!("no stack with named_sleeper and do_nanosleep:\n{text}"));
    let us: u64 = hit.rsplit(' ').next().unwrap().parse().unwrap();
    assert!(us > 500_000, "only {us} us recorded in the sleeping stack");
    let svg_text = std::fs::read_to_string(&svg).unwrap();
    assert!(svg_text.contains("<svg") && svg_text.trim_end().ends_with("</svg>"), "not an SVG");
    assert!(svg_text.contains("named_sleeper") && svg_text.contains("do_nanosleep"));
    let _ = std::fs::remove_dir_all(&dir);
}

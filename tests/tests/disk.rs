//! Disk I/O probe against block I/O whose truth is known: exact O_DIRECT
//! transfers on a loop device the test makes, the kernel's /proc/diskstats
//! and its trace of each request, and fio's own latency percentiles.

use std::{process::Command, time::Duration};

use hostprobe_tests::{
    device_items, disk_items, exact_quantile, measure, probe_status, process_reports, sum, Agent, BlockTrace,
    LoopDevice, Workload,
};

#[test]
fn counts_direct_reads_and_writes_exactly() {
    const R: u64 = 300;
    const W: u64 = 200;
    let dev = LoopDevice::new(64);
    std::thread::sleep(Duration::from_millis(200)); // let any probing of the new device finish
    let w = Workload::spawn(&["dio", &dev.path, &R.to_string(), &W.to_string()]);
    let pid = w.pid();
    let before = dev.diskstats();
    let reports = measure(w, &["--pid", &pid.to_string()]);
    let after = dev.diskstats();

    let reads = disk_items(&reports, pid, dev.name(), "read");
    let writes = disk_items(&reports, pid, dev.name(), "write");
    assert_eq!(sum(&reads, "count"), R, "reads: {reads:?}");
    assert_eq!(sum(&writes, "count"), W, "writes: {writes:?}");
    assert_eq!(sum(&reads, "bytes"), R * 4096);
    assert_eq!(sum(&writes, "bytes"), W * 4096);
    assert_eq!(sum(&reads, "errors") + sum(&writes, "errors"), 0);
    // The kernel's own accounting for the device agrees.
    assert_eq!(after.0 - before.0, R, "diskstats reads");
    assert_eq!(after.1 - before.1, W, "diskstats writes");
    // Every request was seen from its start: all three latencies are there.
    for d in reads.iter().chain(&writes) {
        assert_eq!(d["total"]["count"], d["count"], "{d}");
        assert_eq!(d["queue"]["count"], d["count"], "{d}");
        assert!(d["service"]["p50_ns"].as_u64().unwrap() > 0, "{d}");
    }
}

/// fio's JSON for its first job, with `args` added to a random 4 KiB direct
/// read job on `dev` that runs as a thread of the fio process.
fn fio(dev: &LoopDevice, seconds: u64, args: &[&str]) -> (u32, std::process::Child) {
    let child = Command::new("fio")
        .args(["--name=hostprobe", "--rw=randread", "--bs=4k", "--direct=1", "--thread", "--time_based"])
        .arg(format!("--filename={}", dev.path))
        .arg(format!("--runtime={seconds}"))
        .args(["--output-format=json"])
        .args(args)
        .stdout(std::process::Stdio::piped())
        .spawn()
        .expect("run fio (cargo xtask setup installs it)");
    (child.id(), child)
}

/// fio's JSON for its first job's reads.
fn fio_read(child: std::process::Child) -> serde_json::Value {
    let out = child.wait_with_output().expect("fio");
    assert!(out.status.success(), "fio failed");
    let text = String::from_utf8_lossy(&out.stdout);
    // fio may print notes before its JSON.
    let json = &text[text.find('{').expect("fio JSON")..];
    let v: serde_json::Value = serde_json::from_str(json).expect("fio JSON");
    v["jobs"][0]["read"].clone()
}

#[test]
fn latency_percentiles_agree_with_the_kernels_trace() {
    // Truth: the kernel's own trace of every request on the device (an
    // ftrace instance, no BPF), from its bio's submission to its completion,
    // the span the agent times; exact percentiles from every request. On a
    // loop device whose reads reach the real disk the latencies spread over
    // many buckets. The agent's estimate lies within its bucket of the exact
    // value (a bucket is at most 12.5% wide), plus the trace's 1 us
    // resolution.
    //
    // Outside that, fio's own clock (total latency, from preparing each read
    // to reaping it) holds the agent's span and more: the agent may never
    // exceed it by more than the two histograms' widths (12.5% and ~3%).
    // fio's extra (its submission path, the completion's delivery and its
    // thread's wake-up) is 5-40 us and noisy on a shared VM: no lower bound.
    let dev = LoopDevice::on_disk(128);
    // One long interval holds the whole run; SIGTERM reports it.
    let agent = Agent::start_attached(&["--interval", "60s", "--comm", "fio"]);
    let trace = BlockTrace::start(&dev);
    let (pid, child) = fio(&dev, 3, &["--ioengine=io_uring", "--iodepth=1", "--lat_percentiles=1"]);
    let lat = fio_read(child)["lat_ns"].clone();
    let kernel = trace.latencies();
    std::thread::sleep(Duration::from_millis(200));
    let reports = agent.stop();

    let items = disk_items(&reports, pid, dev.name(), "read");
    assert_eq!(items.len(), 1, "one interval: {items:?}");
    let total = &items[0]["total"];
    // Every request is counted exactly. A few are not timed: their
    // completion's record was still there when the request was next made
    // (`completion_not_seen`), though the kernel's trace shows every
    // completion and the program's recursion_misses stays 0. 0 to 20 of
    // ~37,000 on a quiet machine, 34 of 33,365 with two compilers running
    // beside it: an open defect, bounded here at 0.5%, so that it stays
    // visible and cannot grow unseen.
    assert_eq!(items[0]["count"].as_u64().unwrap(), kernel.len() as u64, "requests vs the kernel's trace");
    let timed = total["count"].as_u64().unwrap();
    let status = &probe_status(reports.last().unwrap(), "disk")["counters"];
    assert!(timed * 1000 >= kernel.len() as u64 * 995, "timed {timed} of {} requests: {status}", kernel.len());
    let (lo, hi) = (exact_quantile(&kernel, 0.01), exact_quantile(&kernel, 0.99));
    assert!(hi > 2 * lo, "the latencies must spread over many buckets: p1 {lo} ns, p99 {hi} ns");
    for (ours, q, theirs) in [("p50_ns", 0.5, "50.000000"), ("p99_ns", 0.99, "99.000000")] {
        let a = total[ours].as_f64().unwrap();
        let k = exact_quantile(&kernel, q) as f64;
        let f = lat["percentile"][theirs].as_f64().expect("fio's lat percentiles");
        eprintln!("{ours}: agent {a} ns, kernel trace {k} ns, fio {f} ns");
        assert!((a - k).abs() <= 0.125 * k + 1_000.0, "{ours}: agent {a} ns, kernel trace {k} ns");
        assert!(a <= 1.15 * f, "{ours}: agent {a} ns above fio's {f} ns");
    }
}

#[test]
fn queue_time_is_the_wait_for_a_request_slot() {
    // The block layer may hold 4 requests for this device (mq-deadline,
    // nr_requests 4); eight synchronous readers at once: whenever more than
    // 4 are in, the rest wait for a slot after submitting their bio. Truth
    // from outside the agent, in means over 3 s of reads:
    // - fio's own clock: each read's latency (clat) holds the whole wait,
    //   slot and device, and more: the syscall's path to the bio and back,
    //   and the wait for a CPU once woken (8 readers, 2 CPUs);
    // - the kernel's accounting (/proc/diskstats, time spent reading): it
    //   times a request from its creation, once it has a slot, to its
    //   completion: the slot wait is not in it.
    // So the agent's queue + service lies between the kernel's and fio's;
    // its service time is within the kernel's; and its queue time holds
    // most of the slot wait, fio's latency minus the kernel's (at least
    // 60% of it: the rest is the CPU wait and the syscall's path).
    let dev = LoopDevice::on_disk(128);
    dev.set_queue("scheduler", "mq-deadline");
    dev.set_queue("nr_requests", "4");
    std::thread::sleep(Duration::from_millis(300));
    let agent = Agent::start_attached(&["--interval", "60s", "--comm", "fio", "--probes", "disk"]);
    let before = dev.stats();
    let (_, child) = fio(&dev, 3, &["--ioengine=psync", "--numjobs=8", "--group_reporting"]);
    let fio_ns = fio_read(child)["clat_ns"]["mean"].as_f64().expect("fio clat mean");
    let kernel = dev.stats() - before;
    let reports = agent.stop();
    let reads = all_disk_items(&reports, dev.name(), "read");
    let mean = |part: &str| {
        let (sum, n) = reads.iter().fold((0, 0), |(s, n), d| {
            (s + d[part]["sum_ns"].as_u64().expect("sum_ns"), n + d[part]["count"].as_u64().expect("count"))
        });
        assert!(n > 1_000, "{n} {part} samples");
        sum as f64 / n as f64
    };
    let (queue, service) = (mean("queue"), mean("service"));
    let kernel_ns = kernel.read_ms as f64 * 1e6 / kernel.reads as f64;
    let slot_wait = fio_ns - kernel_ns;
    eprintln!(
        "mean read: agent queue {queue:.0} + service {service:.0} ns; fio {fio_ns:.0} ns; kernel {kernel_ns:.0} ns"
    );
    assert!(slot_wait >= 0.3 * fio_ns, "no queue for slots built: fio {fio_ns:.0} ns, kernel {kernel_ns:.0} ns");
    let total = queue + service;
    assert!(
        total >= 0.95 * kernel_ns && total <= fio_ns,
        "agent {total:.0} ns, kernel {kernel_ns:.0}, fio {fio_ns:.0}"
    );
    assert!(service <= 1.05 * kernel_ns, "service {service:.0} ns, kernel {kernel_ns:.0} ns");
    assert!(queue >= 0.6 * slot_wait, "queue {queue:.0} ns, slot wait {slot_wait:.0} ns");
}

/// Every process's `disk` items for one device and operation, in every
/// report (fio runs its jobs as processes or threads of its own).
fn all_disk_items<'a>(reports: &'a [serde_json::Value], device: &str, op: &str) -> Vec<&'a serde_json::Value> {
    reports
        .iter()
        .flat_map(|r| r["processes"].as_array().into_iter().flatten())
        .flat_map(|p| p["disk"].as_array().into_iter().flatten())
        .filter(|d| d["device"] == device && d["op"] == op)
        .collect()
}

#[test]
fn fsync_is_reported_as_a_flush() {
    let dev = LoopDevice::new(64);
    let w = Workload::spawn(&["fsync", &dev.path]);
    let pid = w.pid();
    let before = dev.diskstats();
    let reports = measure(w, &[]);
    let after = dev.diskstats();
    assert!(after.2 > before.2, "the kernel counted no flush on {}", dev.name());
    // One fsync, one flush request of the process's own; the device ran the
    // flushes /proc/diskstats counts.
    let flushes = disk_items(&reports, pid, dev.name(), "flush");
    assert_eq!(sum(&flushes, "count"), 1, "the fsync's flush: {:?}", process_reports(&reports, pid));
    assert_eq!(sum(&device_items(&reports, dev.name(), "flush"), "count"), after.2 - before.2);
    let writes = disk_items(&reports, pid, dev.name(), "write");
    assert_eq!(sum(&writes, "bytes"), 1 << 20, "the fsync wrote the 1 MiB: {writes:?}");
    for r in &reports {
        assert_eq!(probe_status(r, "disk")["lost"], 0);
    }
}

/// (reads, writes) of `size` bytes each by a child, with O_DIRECT, on a
/// device whose requests are at most 64 KiB: the block layer splits each
/// into pieces, resubmitted without a new `block_bio_queue`.
fn split_child(dev: &LoopDevice, reads: u64, writes: u64, size: u64) {
    let w = Workload::spawn(&["dio", &dev.path, &reads.to_string(), &writes.to_string(), &size.to_string()]);
    let pid = w.pid();
    let before = dev.stats();
    let reports = measure(w, &["--pid", &pid.to_string()]);
    let kernel = dev.stats() - before;
    let (r, w) = (disk_items(&reports, pid, dev.name(), "read"), disk_items(&reports, pid, dev.name(), "write"));
    eprintln!("{size} B: agent reads {} writes {}, kernel {kernel:?}", sum(&r, "count"), sum(&w, "count"));
    // The workload's own count, and the kernel's.
    assert_eq!(kernel.read_sectors * 512, reads * size, "diskstats read bytes");
    assert_eq!(kernel.write_sectors * 512, writes * size, "diskstats write bytes");
    assert!(kernel.reads >= reads * size.div_ceil(64 << 10), "the kernel did not split: {kernel:?}");
    assert_eq!(sum(&r, "bytes"), reads * size, "read bytes: {r:?}");
    assert_eq!(sum(&w, "bytes"), writes * size, "write bytes: {w:?}");
    assert_eq!(sum(&r, "count"), kernel.reads, "read requests: {r:?}");
    assert_eq!(sum(&w, "count"), kernel.writes, "write requests: {w:?}");
    // Every piece was timed from its bio's submission.
    for d in r.iter().chain(&w) {
        assert_eq!(d["total"]["count"], d["count"], "{d}");
    }
}

#[test]
fn split_io_is_charged_to_its_submitter_exactly() {
    let dev = LoopDevice::new(64);
    dev.set_queue("max_sectors_kb", "64");
    std::thread::sleep(Duration::from_millis(300)); // let any probing of the new device finish
    split_child(&dev, 8, 8, 1 << 20);
    split_child(&dev, 12, 12, 192 << 10);
}

#[test]
fn counts_are_exact_at_rate_with_every_probe() {
    // 50,000 random 4 KiB direct reads (fio's psync engine: each read
    // submitted by fio itself, which the --comm filter keeps), five runs in a
    // row: the agent's count is the kernel's, exactly, every time.
    let dev = LoopDevice::new(256);
    std::thread::sleep(Duration::from_millis(300));
    for run in 0..5 {
        let agent = Agent::start_attached(&["--interval", "60s", "--comm", "fio"]);
        let before = dev.stats();
        let child = Command::new("fio")
            .args(["--name=hostprobe", "--rw=randread", "--bs=4k", "--direct=1", "--ioengine=psync"])
            .args(["--number_ios=50000", "--size=256m", "--output-format=terse"])
            .arg(format!("--filename={}", dev.path))
            .stdout(std::process::Stdio::null())
            .status()
            .expect("run fio (cargo xtask setup installs it)");
        assert!(child.success(), "fio failed");
        let kernel = dev.stats() - before;
        let reports = agent.stop();
        let reads = all_disk_items(&reports, dev.name(), "read");
        eprintln!("run {run}: agent {} reads, kernel {}", sum(&reads, "count"), kernel.reads);
        assert_eq!(kernel.reads, 50_000, "fio's count");
        assert_eq!(sum(&reads, "count"), kernel.reads, "run {run}");
        assert_eq!(sum(&reads, "bytes"), kernel.read_sectors * 512, "run {run}");
        for r in &reports {
            let status = probe_status(r, "disk");
            assert_eq!(status["counters"]["missed_events"], 0, "{status}");
            assert_eq!(status["lost"], 0, "{status}");
        }
    }
}

#[test]
fn concurrent_flushes_and_same_sector_reads_are_charged_to_their_makers() {
    // Eight processes each write their own block and fsync it, 40 times, all
    // at once (the block layer serves concurrent flush requests with shared
    // device flushes); four read the same 16 blocks 3,000 times each; one
    // makes no I/O at all.
    const FSYNCS: u64 = 40;
    const READS: u64 = 3_000;
    let dev = LoopDevice::new(64);
    std::thread::sleep(Duration::from_millis(300));
    let agent = Agent::start_attached(&["--interval", "60s", "--probes", "disk", "--top", "1000"]);
    let before = dev.stats();
    let mut syncers: Vec<Workload> = (0..8)
        .map(|i| Workload::spawn(&["fsync-loop", &dev.path, &(100 + i).to_string(), &FSYNCS.to_string()]))
        .collect();
    let mut readers: Vec<Workload> =
        (0..4).map(|_| Workload::spawn(&["dio-same", &dev.path, &READS.to_string()])).collect();
    let mut idle = Workload::spawn(&["getppid", "10"]);
    let pids = |ws: &[Workload]| ws.iter().map(Workload::pid).collect::<Vec<u32>>();
    let (syncer_pids, reader_pids, idle_pid) = (pids(&syncers), pids(&readers), idle.pid());
    for w in syncers.iter_mut().chain(readers.iter_mut()) {
        w.go();
    }
    idle.go();
    for w in syncers.into_iter().chain(readers).chain([idle]) {
        w.wait();
    }
    let kernel = dev.stats() - before;
    let reports = agent.stop();
    eprintln!("kernel: {kernel:?}");

    let count = |pid: u32, op: &str| sum(&disk_items(&reports, pid, dev.name(), op), "count");
    for pid in &syncer_pids {
        assert_eq!(count(*pid, "write"), FSYNCS, "pid {pid} writes: {:?}", process_reports(&reports, *pid));
        assert_eq!(count(*pid, "flush"), FSYNCS, "pid {pid} flush requests: {:?}", process_reports(&reports, *pid));
        assert_eq!(count(*pid, "read"), 0);
    }
    for pid in &reader_pids {
        assert_eq!(count(*pid, "read"), READS, "pid {pid} reads: {:?}", process_reports(&reports, *pid));
        assert_eq!(count(*pid, "write") + count(*pid, "flush"), 0);
    }
    for p in process_reports(&reports, idle_pid) {
        assert!(p["disk"].is_null(), "charged to a process that made no I/O: {p}");
    }
    // The device's totals are the kernel's: flushes as the device ran them
    // (fewer than the requests when they were shared), and writes counting
    // each flush request as an empty write, as /proc/diskstats does.
    let dev_count = |op: &str| sum(&device_items(&reports, dev.name(), op), "count");
    assert_eq!(dev_count("read"), kernel.reads, "device reads");
    assert_eq!(dev_count("write"), kernel.writes, "device writes");
    assert_eq!(dev_count("flush"), kernel.flushes, "device flushes");
    assert_eq!(sum(&device_items(&reports, dev.name(), "write"), "bytes"), kernel.write_sectors * 512);
    assert!(kernel.flushes >= 1 && kernel.flushes <= 8 * FSYNCS, "{kernel:?}");
}

#[test]
fn mean_latency_agrees_with_the_kernels() {
    // The kernel times each read from its request's creation to its end and
    // adds it to "time spent reading" (ms, /proc/diskstats); the probe times
    // it from the bio's submission (a few us earlier) to its completion.
    // Their means, over three seconds of reads that reach the real disk,
    // agree within 10%.
    let dev = LoopDevice::on_disk(128);
    std::thread::sleep(Duration::from_millis(300));
    let agent = Agent::start_attached(&["--interval", "60s", "--comm", "fio"]);
    let before = dev.stats();
    let (_, child) = fio(&dev, 3, &["--ioengine=psync"]);
    let _ = fio_read(child);
    let kernel = dev.stats() - before;
    let reports = agent.stop();
    let reads = all_disk_items(&reports, dev.name(), "read");
    let (sum_ns, timed) = reads.iter().fold((0u64, 0u64), |(s, n), d| {
        (s + d["total"]["sum_ns"].as_u64().expect("sum_ns"), n + d["total"]["count"].as_u64().unwrap())
    });
    assert!(timed > 1_000 && kernel.reads >= timed, "{timed} timed, kernel {kernel:?}");
    let ours = sum_ns as f64 / timed as f64;
    let theirs = kernel.read_ms as f64 * 1e6 / kernel.reads as f64;
    eprintln!("mean read: agent {ours:.0} ns, kernel {theirs:.0} ns ({} reads, {} ms)", kernel.reads, kernel.read_ms);
    assert!((ours - theirs).abs() <= 0.10 * theirs, "agent {ours:.0} ns, kernel {theirs:.0} ns");
}

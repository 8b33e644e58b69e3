//! Names each process's bottleneck from one report: where its threads'
//! wall-clock time went (shares), one verdict, the figures that decided it,
//! and the next step. The rules read only the report model, so a live
//! agent (`run`), `hostprobe diagnose` and a collector can all apply them.
//!
//! The rules, with their thresholds (also in the README):
//!
//! - Thread time `T` = on-CPU + run queue + blocked (D) + asleep (S),
//!   summed over the process's threads. Shares are fractions of `T`.
//! - `disk` = all D time. `runqueue` = waiting for a CPU.
//! - S sleep goes by the syscall it was in: `lock` for futex (only when its
//!   waits are short, mean under [`LOCK_MEAN_NS`]: contention; long ones are
//!   threads parked waiting for work), flock, semop; `network` for a
//!   `connect`; for another syscall that can wait on a socket, only when the
//!   process moved TCP data (or failed to connect) in the interval: receive-type calls only as
//!   the client of a connection (a server waiting to receive waits for
//!   requests), send-type calls with any connection; `sleep` (waiting for
//!   work) for the rest of the known waits: timers, epoll, accept, pipes
//!   and sockets without TCP. What is not known (the sleeps still in
//!   progress at the end, other syscalls) is `other`.
//! - Verdict: the largest of on-CPU, run queue, disk, network and lock,
//!   if it is at least [`MATTERS`] of one thread's wall time; else `idle`.
//!   An on-CPU verdict is `syscall-heavy` when the process made a syscall
//!   for every [`CHATTY_CPU_NS`] of CPU time or less, cheap ones (p50
//!   under [`CHEAP_NS`]); else `cpu-bound`.
//! - Disk detail: `above the device` when the process's own requests spent
//!   less than [`ABOVE_DEVICE`] of its D time in the block layer and the
//!   device (or it had none: throttled or written back by a kernel thread);
//!   else `saturated` when they waited longer queued than at the device,
//!   else `slow device`.

use serde::Serialize;

pub use crate::verdict::{Kind, Verdict};
use crate::{
    report::{DiskReport, ProcessReport, TcpReport},
    units::duration,
};

/// A bottleneck is named when it takes at least this much of one thread's
/// wall-clock time (0.2 = 200 ms a second).
pub const MATTERS: f64 = 0.2;
/// Futex waits shorter than this on average are lock contention; longer
/// ones are threads parked until there is work.
pub const LOCK_MEAN_NS: u64 = 20_000_000;
/// Syscall-heavy: a syscall for every this much CPU time or less (at
/// 0.1-1 us of fixed cost per call, entering the kernel is then a large
/// part of the work)...
pub const CHATTY_CPU_NS: u64 = 5_000;
/// ... and cheap ones: median under this.
pub const CHEAP_NS: u64 = 10_000;
/// Disk waits are above the device when the process's requests account for
/// less than this share of its D time.
pub const ABOVE_DEVICE: f64 = 0.5;

/// Where a process's thread time went, as fractions of it.
#[derive(Debug, Clone, Default, Serialize, PartialEq)]
pub struct Shares {
    pub on_cpu: f64,
    pub runqueue: f64,
    pub disk: f64,
    pub network: f64,
    pub lock: f64,
    pub sleep: f64,
    pub other: f64,
}

/// Sets each process's verdict in an interval's report.
pub fn judge(r: &mut crate::report::Report) {
    for p in &mut r.processes {
        p.verdict = diagnose(p, &r.devices, r.interval_ns).map(|d| d.verdict);
    }
}

/// One process's diagnosis.
#[derive(Debug, Clone, Serialize)]
pub struct Diagnosis {
    pub pid: u32,
    pub comm: String,
    pub shares: Shares,
    pub verdict: Verdict,
}

/// Time asleep in one syscall: (ns, sleeps).
fn slept(p: &ProcessReport, names: &[&str]) -> (u64, u64) {
    p.offcpu
        .iter()
        .flat_map(|o| &o.sleep_by_syscall)
        .filter(|s| names.contains(&s.name.as_str()))
        .fold((0, 0), |(ns, n), s| (ns + s.ns, n + s.count))
}

const LOCK_CALLS: &[&str] = &["futex", "futex_waitv", "flock", "semop", "semtimedop"];
/// Calls that wait for data to arrive on a socket (or a pipe, a terminal).
const RECEIVE_CALLS: &[&str] =
    &["read", "readv", "recvfrom", "recvmsg", "recvmmsg", "poll", "ppoll", "select", "pselect6"];
/// Calls that wait only on a remote: network with or without TCP figures
/// (a connect that has not finished has moved nothing yet).
const REMOTE_CALLS: &[&str] = &["connect"];
/// Calls that wait for room to send.
const SEND_CALLS: &[&str] = &["write", "writev", "sendto", "sendmsg", "sendmmsg", "sendfile", "splice"];
/// Waiting for work or for time: timers, event loops, children, signals.
const IDLE_CALLS: &[&str] = &[
    "nanosleep",
    "clock_nanosleep",
    "epoll_wait",
    "epoll_pwait",
    "epoll_pwait2",
    "accept",
    "accept4",
    "pause",
    "rt_sigsuspend",
    "rt_sigtimedwait",
    "wait4",
    "waitid",
];

fn moved(t: &TcpReport) -> bool {
    t.bytes_sent + t.bytes_received + t.refused + t.timeouts > 0
}

/// Shares of `p`'s thread time; `None` without off-CPU figures.
pub fn shares(p: &ProcessReport) -> Option<Shares> {
    let o = p.offcpu.as_ref()?;
    let total = o.on_cpu_ns + o.runqueue_ns + o.blocked_io_ns + o.sleep_ns;
    if total == 0 {
        return None;
    }
    let [network, lock, sleep] = sleep_split(p);
    // Sleep per syscall counts whole episodes where they end, S and D
    // alike: what is classified never exceeds the interval's S time.
    let known = network + lock + sleep;
    let scale = if known > o.sleep_ns { o.sleep_ns as f64 / known as f64 } else { 1.0 };
    let f = |ns: u64| ns as f64 / total as f64;
    let s = Shares {
        on_cpu: f(o.on_cpu_ns),
        runqueue: f(o.runqueue_ns),
        disk: f(o.blocked_io_ns),
        network: f(network) * scale,
        lock: f(lock) * scale,
        sleep: f(sleep) * scale,
        other: 0.0,
    };
    let other = 1.0 - (s.on_cpu + s.runqueue + s.disk + s.network + s.lock + s.sleep);
    Some(Shares { other: other.max(0.0), ..s })
}

/// S sleep by kind, in ns: [network, lock, waiting for work].
fn sleep_split(p: &ProcessReport) -> [u64; 3] {
    let client = p.tcp.iter().any(|t| t.direction == "connect" && moved(t));
    let any_tcp = p.tcp.iter().any(moved);
    let (futex_ns, futex_n) = slept(p, LOCK_CALLS);
    let lock_is_wait = futex_n > 0 && futex_ns / futex_n < LOCK_MEAN_NS;
    let (lock, mut idle) = if lock_is_wait { (futex_ns, 0) } else { (0, futex_ns) };
    let (receive, _) = slept(p, RECEIVE_CALLS);
    let (send, _) = slept(p, SEND_CALLS);
    let mut network = slept(p, REMOTE_CALLS).0;
    if client {
        network += receive;
    } else {
        idle += receive;
    }
    if any_tcp {
        network += send;
    } else {
        idle += send;
    }
    idle += slept(p, IDLE_CALLS).0;
    [network, lock, idle]
}

fn pct(x: f64) -> String {
    format!("{:.0}%", x * 100.0)
}

/// The verdict for `p` over an interval of `interval_ns`; `devices` are
/// the host's block devices in that interval (for disk waits).
pub fn diagnose(p: &ProcessReport, devices: &[DiskReport], interval_ns: u64) -> Option<Diagnosis> {
    let s = shares(p)?;
    let o = p.offcpu.as_ref()?;
    let total = o.on_cpu_ns + o.runqueue_ns + o.blocked_io_ns + o.sleep_ns;
    // Thread-equivalents: 1.0 = one thread all the interval.
    let threads = |share: f64| share * total as f64 / interval_ns.max(1) as f64;
    let candidates = [
        (Kind::CpuBound, s.on_cpu),
        (Kind::CpuStarved, s.runqueue),
        (Kind::Disk, s.disk),
        (Kind::Network, s.network),
        (Kind::Lock, s.lock),
    ];
    let (mut kind, share) = candidates.into_iter().fold((Kind::Idle, 0.0), |a, c| if c.1 > a.1 { c } else { a });
    if threads(share) < MATTERS {
        kind = Kind::Idle;
    }
    let time = |share: f64| {
        let t = threads(share);
        if t > 1.05 {
            format!("{} of its thread time ({t:.1} threads all the time)", pct(share))
        } else {
            format!("{} of its thread time", pct(share))
        }
    };
    let top_sleep = |n: usize| {
        o.sleep_by_syscall
            .iter()
            .take(n)
            .map(|x| format!("{} {}", x.name, duration(x.ns)))
            .collect::<Vec<_>>()
            .join(", ")
    };
    let pid = p.pid;
    let mut evidence = Vec::new();
    let (detail, next) = match kind {
        Kind::CpuBound => {
            let sc = &p.syscall_total;
            let per_s = sc.count as f64 * 1e9 / interval_ns.max(1) as f64;
            // CPU time between two syscalls, on average.
            let cpu_per_call = o.on_cpu_ns / sc.count.max(1);
            evidence.push(format!("on a CPU {}", time(s.on_cpu)));
            if cpu_per_call < CHATTY_CPU_NS && sc.p50_ns < CHEAP_NS {
                kind = Kind::SyscallHeavy;
                let top: Vec<String> =
                    p.syscalls.iter().take(2).map(|c| format!("{} {}", c.name, c.latency.count)).collect();
                evidence.push(format!(
                    "{per_s:.0} syscalls/s ({}), p50 {}: one per {} of its CPU time",
                    top.join(", "),
                    duration(sc.p50_ns),
                    duration(cpu_per_call)
                ));
                ("many cheap syscalls".into(), "batch the calls (larger buffers, writev, fewer flushes)".into())
            } else {
                evidence.push(format!("{per_s:.0} syscalls/s: its CPU time is its own code"));
                ("its own code".into(), format!("profile its CPU time: perf record -g -p {pid}"))
            }
        }
        Kind::CpuStarved => {
            evidence.push(format!(
                "waiting for a CPU {}, on one {}; run-queue wait p99 {}",
                time(s.runqueue),
                pct(s.on_cpu),
                duration(o.runqueue_p99_ns)
            ));
            (
                "waits for a CPU longer than it runs".into(),
                "see what else runs on its CPUs (hostprobe run; its affinity, cgroup CPU limits)".into(),
            )
        }
        Kind::Disk => {
            evidence.push(format!("blocked (D state) {}, in {}", time(s.disk), top_sleep(2)));
            let detail = disk_detail(p, devices, o.blocked_io_ns, &mut evidence);
            (detail, format!("hostprobe offcpu --pid {pid} (the kernel stacks of its D waits)"))
        }
        Kind::Network => {
            evidence.push(format!("waiting on sockets {}, in {}", time(s.network), top_sleep(2)));
            (network_detail(p, interval_ns, &mut evidence), format!("hostprobe run --pid {pid} (its connections)"))
        }
        Kind::Lock => {
            let (ns, n) = slept(p, LOCK_CALLS);
            evidence.push(format!("waiting for locks {}: {n} waits, mean {}", time(s.lock), duration(ns / n.max(1))));
            ("contended lock".into(), format!("hostprobe offcpu --pid {pid} (the stacks of the lock waits)"))
        }
        Kind::Idle | Kind::SyscallHeavy => {
            let busy = s.on_cpu + s.runqueue + s.disk + s.network + s.lock;
            evidence.push(format!(
                "running or waiting on something {} of the {} ({} of its thread time): under {} of one thread's",
                duration((busy * total as f64) as u64),
                duration(interval_ns),
                pct(busy),
                pct(MATTERS)
            ));
            if !o.sleep_by_syscall.is_empty() {
                evidence.push(format!("asleep in {}", top_sleep(3)));
            }
            ("waiting for work".into(), "nothing to do".into())
        }
    };
    let weight_ns = (share * total as f64) as u64;
    Some(Diagnosis {
        pid,
        comm: p.meta.comm.clone(),
        shares: s,
        verdict: Verdict { kind, detail, evidence, next, weight_ns },
    })
}

fn disk_detail(p: &ProcessReport, devices: &[DiskReport], blocked_ns: u64, evidence: &mut Vec<String>) -> String {
    let (count, queue, service) =
        p.disk.iter().fold((0, 0, 0), |(c, q, s), d| (c + d.count, q + d.queue.sum_ns, s + d.service.sum_ns));
    let describe = |d: &DiskReport| {
        format!(
            "{} {}s: {} requests, queue p99 {}, service p99 {}",
            d.device,
            d.op,
            d.count,
            duration(d.queue.p99_ns),
            duration(d.service.p99_ns)
        )
    };
    if count == 0 {
        // Its I/O, if any, reached the devices through a kernel thread.
        let mut busy: Vec<&DiskReport> = devices.iter().filter(|d| d.count > 0).collect();
        busy.sort_by_key(|d| std::cmp::Reverse(d.count));
        evidence.push("no block request of its own reached a device: the wait is above them".into());
        evidence.extend(busy.iter().take(2).map(|d| format!("on the host, {}", describe(d))));
        return "above the device".into();
    }
    let mut own: Vec<&DiskReport> = p.disk.iter().collect();
    own.sort_by_key(|d| std::cmp::Reverse(d.count));
    evidence.extend(own.iter().take(2).map(|d| describe(d)));
    let in_block_layer = (queue + service) as f64 / blocked_ns.max(1) as f64;
    if in_block_layer < ABOVE_DEVICE {
        evidence.push(format!(
            "its requests were queued or at the device for {} of its D time: the wait is above the device",
            pct(in_block_layer)
        ));
        "above the device".into()
    } else if queue >= service {
        evidence.push(format!(
            "mean queue time {} vs service {}: requests wait for the device",
            duration(queue / count),
            duration(service / count)
        ));
        "saturated".into()
    } else {
        evidence.push(format!(
            "mean service time {} vs queue {}: the device itself is slow",
            duration(service / count),
            duration(queue / count)
        ));
        "slow device".into()
    }
}

fn network_detail(p: &ProcessReport, interval_ns: u64, evidence: &mut Vec<String>) -> String {
    let mut conns: Vec<&TcpReport> = p.tcp.iter().filter(|t| moved(t)).collect();
    // Connections it made first (it waits on them), then most bytes.
    conns.sort_by_key(|t| (t.direction != "connect", std::cmp::Reverse(t.bytes_sent + t.bytes_received)));
    let mut names = Vec::new();
    for t in conns.iter().take(3) {
        let mbit = |b: u64| b as f64 * 8e3 / interval_ns.max(1) as f64;
        let mut e = format!(
            "{}: RTT p50 {} p99 {}, {} retransmits, {:.1} Mbit/s out, {:.1} Mbit/s in",
            t.remote,
            duration(t.rtt_p50_us * 1_000),
            duration(t.rtt_p99_us * 1_000),
            t.retransmits,
            mbit(t.bytes_sent),
            mbit(t.bytes_received)
        );
        if t.refused + t.timeouts > 0 {
            e.push_str(&format!(", failed connects: {} refused, {} timed out", t.refused, t.timeouts));
        }
        evidence.push(e);
        let mut what = Vec::new();
        if t.rtt_p50_us > 0 {
            what.push(format!("RTT {}", duration(t.rtt_p50_us * 1_000)));
        }
        if t.retransmits > 0 {
            what.push(format!("{} retransmits", t.retransmits));
        }
        if t.refused + t.timeouts > 0 {
            what.push(format!("{} connects failed", t.refused + t.timeouts));
        }
        names.push(format!("{} ({})", t.remote, what.join(", ")));
    }
    if names.is_empty() {
        return "no TCP figures: a connect in progress, or not TCP".into();
    }
    names.join(", ")
}

/// Worst first: the most thread time lost to a bottleneck; idle processes
/// (no bottleneck) after every other, by their busy time.
pub fn rank(list: &mut [Diagnosis]) {
    list.sort_by_key(rank_key);
}

/// The order of [`rank`]: sort by this, ascending.
pub fn rank_key(d: &Diagnosis) -> (bool, std::cmp::Reverse<u64>, u32) {
    (d.verdict.kind == Kind::Idle, std::cmp::Reverse(d.verdict.weight_ns), d.pid)
}

/// `hostprobe diagnose`'s answer.
#[derive(Debug, Serialize)]
pub struct Answer {
    pub duration_ns: u64,
    pub host: String,
    /// Processes seen in the window (before `--top`).
    pub seen: usize,
    pub processes: Vec<Diagnosis>,
}

/// The diagnoses of a report, worst first: the processes named in `pids`
/// (each, also when none of its threads ran), or else the `top` worst.
/// This process itself is left out.
pub fn answer(report: &crate::report::Report, pids: &[u32], top: usize) -> Answer {
    let me = std::process::id();
    let mut list: Vec<Diagnosis> = report
        .processes
        .iter()
        .filter(|p| p.pid != me && (pids.is_empty() || pids.contains(&p.pid)))
        .filter_map(|p| diagnose(p, &report.devices, report.interval_ns))
        .collect();
    let seen = list.len();
    let missing: Vec<u32> = pids.iter().copied().filter(|pid| !list.iter().any(|d| d.pid == *pid)).collect();
    list.extend(missing.into_iter().map(|pid| never_ran(pid, report.interval_ns)));
    rank(&mut list);
    if pids.is_empty() {
        list.truncate(top);
    }
    Answer { duration_ns: report.interval_ns, host: report.host.clone(), seen, processes: list }
}

/// A named process none of whose threads ran (or woke) in the window:
/// asleep all along, in the syscall /proc says.
fn never_ran(pid: u32, interval_ns: u64) -> Diagnosis {
    let comm = std::fs::read_to_string(format!("/proc/{pid}/comm")).unwrap_or_default().trim().to_string();
    let syscall = std::fs::read_to_string(format!("/proc/{pid}/syscall")).ok().and_then(|s| {
        let nr: u32 = s.split_whitespace().next()?.parse().ok()?;
        Some(crate::syscalls::name(nr).into_owned())
    });
    let mut evidence = vec![format!("none of its threads ran in the {}", duration(interval_ns))];
    evidence.extend(syscall.map(|s| format!("its main thread is asleep in {s} (/proc/{pid}/syscall)")));
    Diagnosis {
        pid,
        comm,
        shares: Shares { other: 1.0, ..Default::default() },
        verdict: Verdict {
            kind: Kind::Idle,
            detail: "asleep all along".into(),
            evidence,
            next: "nothing to do".into(),
            weight_ns: 0,
        },
    }
}

/// The answer for people.
pub fn text(a: &Answer) -> String {
    let mut out = format!(
        "hostprobe diagnose: {} on {}; {} processes seen, {} shown, worst first\n",
        duration(a.duration_ns),
        a.host,
        a.seen,
        a.processes.len()
    );
    for d in &a.processes {
        let s = &d.shares;
        out.push_str(&format!("\n{:>8} {:<16} {}: {}\n", d.pid, d.comm, d.verdict.kind.name(), d.verdict.detail));
        out.push_str(&format!(
            "{:>8} on-CPU {}  run queue {}  disk {}  network {}  lock {}  sleep {}  other {}\n",
            "",
            pct(s.on_cpu),
            pct(s.runqueue),
            pct(s.disk),
            pct(s.network),
            pct(s.lock),
            pct(s.sleep),
            pct(s.other)
        ));
        for e in &d.verdict.evidence {
            out.push_str(&format!("{:>8} - {e}\n", ""));
        }
        out.push_str(&format!("{:>8} next: {}\n", "", d.verdict.next));
    }
    if a.processes.is_empty() {
        out.push_str("\n(no process was seen: check the filters)\n");
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{
        probes::{offcpu::OffcpuData, tcp::ConnData, Interval},
        procinfo::ProcCache,
        report::build,
    };

    const SECOND: u64 = 1_000_000_000;

    /// A one-thread process (pid that cannot exist) that spent one second
    /// `on` ns on a CPU and the rest asleep in `syscall`, in `sleeps` sleeps.
    fn sleeper(syscall: &str, on: u64, sleeps: u64) -> OffcpuData {
        let nr = crate::syscalls::number(syscall).unwrap();
        OffcpuData {
            on_cpu_ns: on,
            sleep_ns: SECOND - on,
            sleep_by_syscall: [(nr, (SECOND - on, sleeps))].into_iter().collect(),
            ..Default::default()
        }
    }

    fn conn(active: bool, bytes: u64) -> ConnData {
        ConnData {
            local: Some("10.0.0.1:40000".parse().unwrap()),
            remote: Some("10.0.0.2:5432".parse().unwrap()),
            state: 1,
            active,
            connect_ns: None,
            failed: None,
            closed: false,
            bytes_sent: bytes,
            bytes_received: bytes,
            retransmits: 0,
            resets: 0,
            rtt: Default::default(),
            rtt_last_us: 30_000,
        }
    }

    /// The diagnoses of processes 4000000, 4000001, ... built from these
    /// figures over a one-second interval, worst first.
    fn diagnoses(procs: Vec<(OffcpuData, Vec<ConnData>)>) -> Vec<Diagnosis> {
        let mut interval = Interval::default();
        for (i, (o, tcp)) in procs.into_iter().enumerate() {
            let p = interval.processes.entry(4_000_000 + i as u32).or_default();
            p.offcpu = Some(o);
            p.tcp = tcp;
        }
        let r = build(interval, 100, &mut ProcCache::new(false), &mut Default::default(), SECOND, "h", vec![]);
        let mut out: Vec<Diagnosis> = r.processes.iter().filter_map(|p| diagnose(p, &r.devices, SECOND)).collect();
        rank(&mut out);
        out
    }

    #[test]
    fn a_read_is_network_only_for_the_client_of_a_connection_that_moved_data() {
        let pipe = &diagnoses(vec![(sleeper("read", 0, 50), vec![])])[0];
        assert_eq!(pipe.verdict.kind, Kind::Idle);
        assert!(pipe.shares.network == 0.0 && pipe.shares.sleep > 0.99, "{:?}", pipe.shares);
        let client = &diagnoses(vec![(sleeper("read", 0, 50), vec![conn(true, 1000)])])[0];
        assert_eq!(client.verdict.kind, Kind::Network);
        assert_eq!(client.verdict.detail, "10.0.0.2:5432 (RTT 30ms)");
        // A server waiting to read its clients' next requests waits for work.
        let server = &diagnoses(vec![(sleeper("recvfrom", 0, 50), vec![conn(false, 1000)])])[0];
        assert_eq!(server.verdict.kind, Kind::Idle);
        // ... but one that cannot send its answers fast enough is network-bound.
        let sender = &diagnoses(vec![(sleeper("write", 0, 50), vec![conn(false, 1000)])])[0];
        assert_eq!(sender.verdict.kind, Kind::Network);
        // An idle connection is no evidence.
        let idle_conn = &diagnoses(vec![(sleeper("read", 0, 50), vec![conn(true, 0)])])[0];
        assert_eq!(idle_conn.verdict.kind, Kind::Idle);
        // A connect still waiting for its handshake has moved nothing yet.
        let connecting = &diagnoses(vec![(sleeper("connect", 0, 1), vec![])])[0];
        assert_eq!(connecting.verdict.kind, Kind::Network);
        // Failed connects are evidence, and named.
        let mut refused = conn(true, 0);
        refused.failed = Some("refused");
        refused.rtt_last_us = 0;
        let d = &diagnoses(vec![(sleeper("poll", 0, 50), vec![refused])])[0];
        assert_eq!((d.verdict.kind, d.verdict.detail.as_str()), (Kind::Network, "10.0.0.2:5432 (1 connects failed)"));
    }

    #[test]
    fn short_futex_waits_are_lock_long_ones_are_parked_threads() {
        let contended = &diagnoses(vec![(sleeper("futex", 0, 500), vec![])])[0];
        assert_eq!(contended.verdict.kind, Kind::Lock);
        let parked = &diagnoses(vec![(sleeper("futex", 0, 20), vec![])])[0];
        assert_eq!(parked.verdict.kind, Kind::Idle, "50 ms timed waits");
    }

    #[test]
    fn shares_add_up_and_whole_episodes_never_exceed_the_sleep() {
        // Sleep per syscall counts episodes whole where they end: more than
        // the interval's sleep here.
        let mut o = sleeper("nanosleep", 400_000_000, 10);
        o.sleep_by_syscall.values_mut().for_each(|v| v.0 = 2 * SECOND);
        let d = &diagnoses(vec![(o, vec![])])[0];
        let s = &d.shares;
        let sum = s.on_cpu + s.runqueue + s.disk + s.network + s.lock + s.sleep + s.other;
        assert!((sum - 1.0).abs() < 1e-9, "{s:?}");
        assert!((s.sleep - 0.6).abs() < 1e-9, "{s:?}");
        assert_eq!(d.verdict.kind, Kind::CpuBound, "40% on a CPU");
    }

    #[test]
    fn idle_is_never_ranked_above_a_bottleneck() {
        // A busy but idle process (19% on a CPU), and one that waits 25% of
        // the time for a lock and sleeps the rest in a syscall not classified.
        let idle = sleeper("epoll_wait", 190_000_000, 10);
        let mut lock = sleeper("futex", 0, 500);
        lock.sleep_by_syscall.values_mut().for_each(|v| v.0 = 250_000_000);
        let kinds: Vec<Kind> = diagnoses(vec![(idle, vec![]), (lock, vec![])]).iter().map(|d| d.verdict.kind).collect();
        assert_eq!(kinds, [Kind::Lock, Kind::Idle]);
    }
}

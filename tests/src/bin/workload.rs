//! Programs whose syscalls are known exactly, for the end-to-end tests.
//!
//! Each waits for a line on stdin before it starts, so the test can attach
//! the agent (filtered to this pid) first, then makes exactly the calls its
//! name says, in two halves separated by a pause so that they straddle
//! reporting intervals.
//!
//! ```text
//! workload getppid N            N getppid()
//! workload nanosleep N MS       N nanosleep(MS ms), in one go; prints each call's
//!                               duration (ns, measured here) as a JSON array
//! workload openat-missing N     N openat() of a path that does not exist (ENOENT)
//! workload churn N              N short-lived children (/bin/true), one after another
//! workload churn-named N        N short-lived forked children, each with its own
//!                               name (c0, c1, ...), one after another
//! workload steady N MS          N rounds of getppid() + nanosleep(MS ms)
//! workload dio DEV R W          R reads then W writes of 4 KiB with O_DIRECT at
//!                               distinct 4 KiB-aligned offsets of DEV
//! workload fsync DEV            1 MiB of buffered writes to DEV, then fsync
//! workload spin MS CPU          pinned to CPU, burns MS ms of wall time, then
//!                               waits for a second line before exiting
//! workload mutex MS             a thread holds a mutex MS ms; the main thread
//!                               blocks on it meanwhile
//! workload dio-loop DEV MS [PAUSE_US]  4 KiB O_DIRECT writes to DEV, one at a
//!                               time (PAUSE_US apart), for MS ms; prints how many
//! workload chatty MS            one-byte writes to /dev/null for MS ms; prints how many
//! workload contend T HOLD MS    T threads take one mutex in turn for MS ms, each
//!                               holding it HOLD ms
//! workload contend-apart T HOLD MS  the same, each thread with a mutex of its own
//! workload epoll-idle MS        epoll_wait (100 ms timeout) on an idle eventfd for MS ms
//! workload pipe-read MS         reads a pipe a child writes a byte to every 20 ms
//! workload named-sleeper N MS   N nanosleep(MS ms) from a function named
//!                               `named_sleeper`, for stack tests
//! workload rename-sleep FROM TO N MS SECS  names itself FROM, then (after
//!                               stdin) N nanosleep(MS ms), renames itself TO,
//!                               prints "renamed", sleeps SECS s in 50 ms naps
//! workload spin-sleep ON OFF TOTAL CPU  pinned to CPU, for TOTAL ms: burns ON ms
//!                               of its own CPU time, sleeps OFF ms; then like spin
//! workload tcp-server IP PORT R [N [PORTS]] (starts at once) listens on PORTS
//!                               ports from PORT (default 1), prints "listening";
//!                               N times (default 1): accepts a connection on
//!                               the next port in turn, reads to EOF, answers
//!                               R bytes; prints the bytes it read in all
//! workload tcp-clients IP PORT N PORTS S  N connections one after another,
//!                               to the PORTS ports from PORT in turn, each
//!                               sending S bytes like tcp-client
//! workload tcp-client IP PORT S  connects, sends S bytes, shuts down its
//!                               sending side, reads to EOF; prints what it got
//!                               (or "refused")
//! workload tcp-accept-drop IP PORT prints "listening", accepts
//!                               one connection and closes it unread; prints "dropped"
//! workload tcp-connect IP PORT  connects, prints how long connect() took (us), closes
//! workload tcp-bulk IP PORT S   connects, sends S bytes, prints "sent", waits for
//!                               a line on stdin, then finishes like tcp-client
//! workload conserve NAME DEV OFFSET W IP PORT S MS  names itself NAME, writes W
//!                               64 KiB blocks with O_DIRECT to DEV from byte OFFSET,
//!                               sends S bytes to IP:PORT and reads the answer to
//!                               EOF, sleeps MS ms in one nanosleep; prints
//!                               {"writes","written","sent","received","slept_ns",
//!                               "asleep_ns"} (asleep: the call's wall time less its
//!                               on-CPU and run-queue time, from schedstat)
//! workload sleep-mix N SHORT LONG EVERY  N nanosleep()s, every EVERY-th of LONG ms,
//!                               the others of SHORT ms; prints each call's duration
//!                               (ns, measured here) as a JSON array, in call order
//! workload churn-getppid N K    N short-lived children, one after another: each forks,
//!                               makes K getppid() and execs /bin/true; prints the
//!                               children's pids as a JSON array
//! workload fleet N R MS         (starts at once) forks N children, prints "ready";
//!                               after stdin, each child makes R rounds of the 15
//!                               distinct syscalls of FLEET_SYSCALLS (the last a
//!                               nanosleep of MS ms) and exits; prints the
//!                               children's pids as a JSON array
//! workload exec-thread          a second thread execs this program as
//!                               `exec-leak-child` while the first waits for it
//!                               (the exec ends it); see exec-leak-child
//! workload exec-leak-child TID T0 (not for direct use) starts at once: forks a
//!                               child with thread id TID (clone3 set_tid, the id the
//!                               exec'ing thread had), which exits at once; prints
//!                               {"pid","child","exec_ns"}, exec_ns = the time since
//!                               T0 (CLOCK_MONOTONIC ns, read just before the exec)
//! ```
//!
//! For `cargo xtask bench` (these start at once, without waiting for stdin):
//!
//! ```text
//! workload time-getppid N       N getppid(); prints the mean ns per call
//! workload busy SECS            several syscalls then a 5 ms sleep, in a loop, for SECS
//! workload tcp-rr MS            a client and an echo server (threads) bounce one
//!                               byte over loopback TCP (TCP_NODELAY) for MS ms;
//!                               prints round trips per second
//! workload pingpong MS          (waits for stdin) two processes bounce a byte over
//!                               pipes for MS ms; prints round trips per second
//! workload ack-latency URL SECS one more agent streaming a small report every 50 ms
//!                               to the collector at URL (plaintext) for SECS;
//!                               prints {"acked","p50_ms","p99_ms"} of the time from
//!                               each send to its acknowledgement
//!
//! For `cargo xtask soak` (these also start at once):
//!
//! ```text
//! workload churn-pool N SECS    keeps N forked children alive for SECS: each makes
//!                               1-5 s of rounds (the 14 fleet syscalls, then a
//!                               100 ms nanosleep) and exits, and is replaced at
//!                               once; prints {"forks"}
//! workload conn-churn SECS      a loopback listener (thread) answers each connection
//!                               with one byte and closes it; the main thread
//!                               connects, reads to EOF and closes, 2 ms apart, for
//!                               SECS; prints {"connections"}
//! workload marked NAME MS SECS  names itself NAME, makes nanosleep(MS ms) calls
//!                               for SECS, then prints how many it made; 16 more
//!                               threads wait in poll() meanwhile (1 s timeouts)
//! ```
use std::{io::BufRead, time::Duration};

/// Argument `i`, or `default` when absent.
fn opt_arg(args: &[String], i: usize, default: u64) -> u64 {
    if args.len() > i {
        arg(args, i)
    } else {
        default
    }
}

fn arg(args: &[String], i: usize) -> u64 {
    args.get(i).and_then(|s| s.parse().ok()).unwrap_or_else(|| {
        eprintln!("usage: see the source of workload.rs");
        std::process::exit(2)
    })
}

fn getppid() {
    // SAFETY: a syscall without arguments. Called directly: libc wrappers may cache.
    unsafe { libc::syscall(libc::SYS_getppid) };
}

fn nanosleep(ms: u64) {
    let ts = libc::timespec { tv_sec: (ms / 1000) as libc::time_t, tv_nsec: ((ms % 1000) * 1_000_000) as libc::c_long };
    // SAFETY: valid timespec; no remainder wanted.
    unsafe { libc::syscall(libc::SYS_nanosleep, &ts, std::ptr::null_mut::<libc::timespec>()) };
}

/// This thread's time on a CPU so far, in ns: the scheduler's own
/// accounting, brought up to now (`CLOCK_THREAD_CPUTIME_ID`).
fn cpu_ns() -> u64 {
    let mut ts = libc::timespec { tv_sec: 0, tv_nsec: 0 };
    // SAFETY: a valid timespec to write into.
    let rc = unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut ts) };
    assert_eq!(rc, 0, "CLOCK_THREAD_CPUTIME_ID");
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}

/// This thread's time waiting in a run queue so far, in ns
/// (`/proc/thread-self/schedstat`; it grows only while the thread waits).
fn run_delay_ns() -> u64 {
    let s = std::fs::read_to_string("/proc/thread-self/schedstat").expect("/proc/thread-self/schedstat");
    s.split_whitespace().nth(1).and_then(|x| x.parse().ok()).expect("schedstat's run-queue time")
}

fn openat_missing() {
    let path = c"/nonexistent-hostprobe-test/file";
    // SAFETY: valid NUL-terminated path; the call fails with ENOENT.
    let fd = unsafe { libc::syscall(libc::SYS_openat, libc::AT_FDCWD, path.as_ptr(), libc::O_RDONLY) };
    assert!(fd < 0, "the missing path exists");
}

/// Round trips per second of one byte between this process and a child over
/// two pipes, for `ms` milliseconds: two context switches per round trip
/// when both run on one CPU.
/// Round trips per second of a one-byte request/response over loopback TCP.
fn tcp_rr(ms: u64) -> f64 {
    use std::io::{Read, Write};
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let addr = listener.local_addr().expect("address");
    let server = std::thread::spawn(move || {
        let (mut s, _) = listener.accept().expect("accept");
        s.set_nodelay(true).expect("nodelay");
        let mut b = [0u8; 1];
        while s.read_exact(&mut b).is_ok() {
            if s.write_all(&b).is_err() {
                break;
            }
        }
    });
    let mut c = std::net::TcpStream::connect(addr).expect("connect");
    c.set_nodelay(true).expect("nodelay");
    let (start, mut n, mut b) = (std::time::Instant::now(), 0u64, [1u8; 1]);
    let end = Duration::from_millis(ms);
    while n % 64 != 0 || start.elapsed() < end {
        c.write_all(&b).expect("write");
        c.read_exact(&mut b).expect("read");
        n += 1;
    }
    let rate = n as f64 / start.elapsed().as_secs_f64();
    drop(c);
    server.join().expect("server");
    rate
}

fn pingpong(ms: u64) -> f64 {
    let (mut ab, mut ba) = ([0i32; 2], [0i32; 2]);
    // SAFETY: pipe() fills the two-element arrays.
    unsafe {
        assert_eq!(libc::pipe(ab.as_mut_ptr()), 0);
        assert_eq!(libc::pipe(ba.as_mut_ptr()), 0);
    }
    let mut byte = [0u8; 1];
    // SAFETY: the child only uses async-signal-safe calls (read, write, _exit).
    let child = unsafe { libc::fork() };
    if child == 0 {
        // SAFETY: closing the ends this side does not use, so that the
        // parent closing its write end ends our reads.
        unsafe {
            libc::close(ab[1]);
            libc::close(ba[0]);
        }
        loop {
            // SAFETY: valid fds and a 1-byte buffer.
            unsafe {
                if libc::read(ab[0], byte.as_mut_ptr().cast(), 1) != 1 {
                    libc::_exit(0);
                }
                libc::write(ba[1], byte.as_ptr().cast(), 1);
            }
        }
    }
    // SAFETY: as above, for the parent's side.
    unsafe {
        libc::close(ab[0]);
        libc::close(ba[1]);
    }
    let start = std::time::Instant::now();
    let end = start + Duration::from_millis(ms);
    let mut trips = 0u64;
    while std::time::Instant::now() < end {
        for _ in 0..100 {
            // SAFETY: valid fds and a 1-byte buffer.
            unsafe {
                libc::write(ab[1], byte.as_ptr().cast(), 1);
                libc::read(ba[0], byte.as_mut_ptr().cast(), 1);
            }
        }
        trips += 100;
    }
    let rate = trips as f64 / start.elapsed().as_secs_f64();
    // SAFETY: closing our write end ends the child's loop; then reap it.
    unsafe {
        libc::close(ab[1]);
        libc::waitpid(child, std::ptr::null_mut(), 0);
    }
    rate
}

/// Sends a small report every 50 ms for `secs` over one stream and times
/// each acknowledgement (matched by sequence); sorted milliseconds.
async fn ack_latency(url: String, secs: u64, token: Option<String>) -> Vec<f64> {
    use hostprobe::wire::pb::collector_client::CollectorClient;
    let channel = tonic::transport::Endpoint::from_shared(url).expect("url").connect().await.expect("connect");
    let mut client = CollectorClient::new(channel);
    let (tx, rx) = tokio::sync::mpsc::channel(64);
    let mut request = tonic::Request::new(tokio_stream::wrappers::ReceiverStream::new(rx));
    if let Some(t) = token {
        request.metadata_mut().insert("authorization", format!("Bearer {t}").parse().expect("token"));
    }
    let mut acks = client.stream(request).await.expect("stream").into_inner();
    let sent = std::sync::Arc::new(std::sync::Mutex::new(std::collections::HashMap::new()));
    let times = sent.clone();
    let collect = tokio::spawn(async move {
        let mut ms = Vec::new();
        while let Ok(Some(ack)) = acks.message().await {
            if let Some(t) = times.lock().expect("lock").remove(&ack.sequence) {
                ms.push(std::time::Instant::elapsed(&t).as_secs_f64() * 1e3);
            }
        }
        ms
    });
    let mut tick = tokio::time::interval(Duration::from_millis(50));
    for seq in 1..=secs * 20 {
        tick.tick().await;
        let mut report = hostprobe_tests::synthetic_report("ack-latency", seq, Vec::new());
        report.interval_start_unix_ns = report.interval_end_unix_ns - 50_000_000;
        sent.lock().expect("lock").insert(seq, std::time::Instant::now());
        if tx.send(report).await.is_err() {
            break;
        }
    }
    drop(tx);
    let mut ms = collect.await.unwrap_or_default();
    ms.sort_by(|a, b| a.total_cmp(b));
    ms
}

/// `dev` opened for O_DIRECT reads and writes.
fn open_direct(dev: &str) -> std::fs::File {
    use std::os::unix::fs::OpenOptionsExt;
    std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .custom_flags(libc::O_DIRECT)
        .open(dev)
        .unwrap_or_else(|e| panic!("open {dev} with O_DIRECT: {e}"))
}

/// A zeroed buffer of `len` bytes aligned for O_DIRECT, never freed (the
/// process ends soon).
fn aligned_buffer(len: usize) -> &'static mut [u8] {
    let layout = std::alloc::Layout::from_size_align(len, 4096).expect("layout");
    // SAFETY: a non-zero-sized layout.
    let ptr = unsafe { std::alloc::alloc_zeroed(layout) };
    assert!(!ptr.is_null(), "out of memory");
    // SAFETY: ptr is valid for `len` zeroed bytes, owned by the slice alone.
    unsafe { std::slice::from_raw_parts_mut(ptr, len) }
}

/// `reads` then `writes` 4 KiB O_DIRECT transfers, each at its own offset
/// (so the block layer has nothing to merge).
fn direct_io(dev: &str, reads: u64, writes: u64, io: usize) {
    use std::os::unix::fs::FileExt;
    const BLOCK: usize = 4096;
    let f = open_direct(dev);
    let buf = aligned_buffer(io);
    let size = f.metadata().map(|m| m.len()).unwrap_or(0);
    let blocks = if size > 0 {
        size / BLOCK as u64
    } else {
        // Block devices report 0 length through metadata: ask the device.
        let mut bytes: u64 = 0;
        // SAFETY: BLKGETSIZE64 writes a u64.
        unsafe { libc::ioctl(std::os::fd::AsRawFd::as_raw_fd(&f), 0x80081272, &mut bytes) };
        bytes / BLOCK as u64
    };
    // I/O of `io` bytes at `io`-aligned places, spread over the device with
    // a stride coprime to the number of places.
    let places = blocks / (io / BLOCK) as u64;
    assert!(places >= reads + writes, "device too small");
    let at = |i: u64| (i * 7919 % places) * io as u64;
    for i in 0..reads {
        f.read_exact_at(buf, at(i)).expect("direct read");
    }
    for i in reads..reads + writes {
        f.write_all_at(buf, at(i)).expect("direct write");
    }
}

/// A function whose name the off-CPU stacks must show. Not inlined, and its
/// callee not either: glibc's syscall stub keeps no frame pointer, so a
/// frame-pointer walk from it starts at its caller's caller.
#[inline(never)]
fn named_sleeper(n: u64, ms: u64) {
    for _ in 0..n {
        sleep_once(ms);
    }
    std::hint::black_box(());
}

#[inline(never)]
fn sleep_once(ms: u64) {
    nanosleep(ms);
    std::hint::black_box(());
}

/// Runs `f` n times, pausing half-way so the calls span two intervals.
/// One round of `fleet`: each of `hostprobe_tests::FLEET_SYSCALLS` once, in
/// that order, raw (libc wrappers may cache or skip the call).
fn fleet_round(ms: u64) {
    // SAFETY: syscalls with integer arguments or a null pointer (times
    // accepts NULL), which change nothing (umask is set to what it was).
    unsafe {
        libc::syscall(libc::SYS_getppid);
        libc::syscall(libc::SYS_getpid);
        libc::syscall(libc::SYS_gettid);
        libc::syscall(libc::SYS_getuid);
        libc::syscall(libc::SYS_geteuid);
        libc::syscall(libc::SYS_getgid);
        libc::syscall(libc::SYS_getegid);
        libc::syscall(libc::SYS_getpgid, 0);
        libc::syscall(libc::SYS_getsid, 0);
        libc::syscall(libc::SYS_getpriority, libc::PRIO_PROCESS, 0);
        libc::syscall(libc::SYS_sched_getscheduler, 0);
        libc::syscall(libc::SYS_umask, 0o022);
        libc::syscall(libc::SYS_sched_yield);
        libc::syscall(libc::SYS_times, std::ptr::null_mut::<libc::tms>());
    }
    nanosleep(ms);
}

/// `fleet N R MS`: see the module's documentation.
fn fleet(args: &[String]) {
    let (n, rounds, ms) = (arg(args, 2), arg(args, 3), arg(args, 4));
    let mut go = [0i32; 2];
    // SAFETY: pipe() fills the two-element array.
    assert_eq!(unsafe { libc::pipe(go.as_mut_ptr()) }, 0, "pipe");
    let mut pids = Vec::new();
    for _ in 0..n {
        // SAFETY: the child makes raw syscalls only (async-signal safe) and
        // ends with _exit, without touching the parent's state.
        match unsafe { libc::fork() } {
            0 => unsafe {
                // One byte each from the parent means go (the only read).
                let mut b = 0u8;
                if libc::read(go[0], (&raw mut b).cast(), 1) != 1 {
                    libc::_exit(3);
                }
                for _ in 0..rounds {
                    fleet_round(ms);
                }
                libc::_exit(0);
            },
            pid if pid > 0 => pids.push(pid),
            _ => panic!("fork: {}", std::io::Error::last_os_error()),
        }
    }
    println!("ready");
    let mut line = String::new();
    std::io::stdin().lock().read_line(&mut line).expect("stdin");
    let bytes = vec![1u8; n as usize];
    // SAFETY: writing a buffer of n bytes (less than a pipe's capacity).
    assert_eq!(unsafe { libc::write(go[1], bytes.as_ptr().cast(), bytes.len()) }, n as isize, "write go");
    for pid in &pids {
        let mut status = 0;
        // SAFETY: reaps a child of this process.
        unsafe { libc::waitpid(*pid, &mut status, 0) };
        assert!(libc::WIFEXITED(status) && libc::WEXITSTATUS(status) == 0, "child {pid}: {status}");
    }
    println!("{pids:?}");
}

/// `churn-pool N SECS`: see the module's documentation. The children
/// make raw syscalls only, so pids are reused and processes come and go
/// as on a busy build host.
fn churn_pool(n: u64, secs: u64) {
    let end = std::time::Instant::now() + Duration::from_secs(secs);
    let spawn = || {
        // SAFETY: this process is single-threaded; the child makes raw
        // syscalls only (async-signal safe) and ends with _exit.
        match unsafe { libc::fork() } {
            0 => {
                // SAFETY: a syscall without arguments.
                let pid = unsafe { libc::syscall(libc::SYS_getpid) } as u64;
                for _ in 0..10 + pid % 41 {
                    fleet_round(100);
                }
                // SAFETY: ends the child without running the parent's destructors.
                unsafe { libc::_exit(0) }
            }
            pid if pid > 0 => {}
            _ => panic!("fork: {}", std::io::Error::last_os_error()),
        }
    };
    for _ in 0..n {
        spawn();
    }
    let (mut forks, mut alive) = (n, n);
    while alive > 0 {
        // SAFETY: reaps any child of this process.
        if unsafe { libc::waitpid(-1, std::ptr::null_mut(), 0) } <= 0 {
            break;
        }
        alive -= 1;
        if std::time::Instant::now() < end {
            spawn();
            forks += 1;
            alive += 1;
        }
    }
    println!("{{\"forks\":{forks}}}");
}

/// `conn-churn SECS`: see the module's documentation. The server closes
/// first, so TIME_WAIT sockets sit on its side and the client's ephemeral
/// ports are not used up.
fn conn_churn(secs: u64) {
    use std::io::{Read, Write};
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let addr = listener.local_addr().expect("address");
    std::thread::spawn(move || {
        for mut s in listener.incoming().map_while(Result::ok) {
            let _ = s.write_all(&[1]);
        }
    });
    let end = std::time::Instant::now() + Duration::from_secs(secs);
    let mut n = 0u64;
    while std::time::Instant::now() < end {
        let mut s = std::net::TcpStream::connect(addr).expect("connect");
        s.read_to_end(&mut Vec::new()).expect("read");
        n += 1;
        std::thread::sleep(Duration::from_millis(2));
    }
    println!("{{\"connections\":{n}}}");
}

/// `marked NAME MS SECS`: see the module's documentation.
fn marked(name: &str, ms: u64, secs: u64) {
    let name = std::ffi::CString::new(name).expect("name");
    // SAFETY: a NUL-terminated name (the kernel keeps its first 15 bytes).
    unsafe { libc::prctl(libc::PR_SET_NAME, name.as_ptr()) };
    // Threads that each spend a second per second in poll(): this process
    // then has more time in syscalls than any other, so it ranks first in
    // every report however many processes run (--top cuts by that time).
    for _ in 0..16 {
        std::thread::spawn(|| loop {
            // SAFETY: no descriptors; a 1 s timeout.
            unsafe { libc::poll(std::ptr::null_mut(), 0, 1000) };
        });
    }
    // Every interval with a nanosleep in it also has the threads' polls:
    // 2 s of them before the first and after the last (the sleeps here
    // are clock_nanosleep, not nanosleep).
    std::thread::sleep(Duration::from_secs(2));
    let end = std::time::Instant::now() + Duration::from_secs(secs);
    let mut n = 0u64;
    while std::time::Instant::now() < end {
        nanosleep(ms);
        n += 1;
    }
    std::thread::sleep(Duration::from_secs(2));
    println!("{n}");
}

fn halves(n: u64, f: impl Fn()) {
    for i in 0..n {
        if i == n / 2 {
            std::thread::sleep(Duration::from_millis(600));
        }
        f();
    }
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    match args.get(1).map(String::as_str) {
        Some("tcp-server") => {
            use std::io::{Read, Write};
            let ip: std::net::IpAddr = args[2].parse().expect("address");
            let (n, ports) = (opt_arg(&args, 5, 1), opt_arg(&args, 6, 1));
            let listeners: Vec<std::net::TcpListener> = (0..ports)
                .map(|i| std::net::TcpListener::bind((ip, (arg(&args, 3) + i) as u16)).expect("bind"))
                .collect();
            println!("listening");
            let mut total = 0;
            for i in 0..n {
                let (mut s, _) = listeners[(i % ports) as usize].accept().expect("accept");
                let mut got = Vec::new();
                s.read_to_end(&mut got).expect("read");
                s.write_all(&vec![7u8; arg(&args, 4) as usize]).expect("write");
                total += got.len();
            }
            println!("{total}");
            return;
        }
        Some("tcp-sink") => {
            // Accepts one connection with its receive window clamped to
            // CLAMP bytes (TCP_WINDOW_CLAMP, set on the listener so the
            // handshake already advertises it), reads to EOF, prints the
            // bytes. The sender then never has more than CLAMP in flight.
            use std::io::Read;
            use std::os::fd::AsRawFd;
            let ip: std::net::IpAddr = args[2].parse().expect("address");
            let listener = std::net::TcpListener::bind((ip, arg(&args, 3) as u16)).expect("bind");
            let clamp = arg(&args, 4) as libc::c_int;
            // SAFETY: setsockopt reads an int from a valid pointer.
            let rc = unsafe {
                libc::setsockopt(
                    listener.as_raw_fd(),
                    libc::IPPROTO_TCP,
                    libc::TCP_WINDOW_CLAMP,
                    (&raw const clamp).cast(),
                    std::mem::size_of::<libc::c_int>() as libc::socklen_t,
                )
            };
            assert_eq!(rc, 0, "TCP_WINDOW_CLAMP");
            println!("listening");
            let (mut s, _) = listener.accept().expect("accept");
            let mut got = Vec::new();
            s.read_to_end(&mut got).expect("read");
            println!("{}", got.len());
            return;
        }
        Some("tcp-peek-server") => {
            // Accepts one connection, peeks (MSG_PEEK) until bytes are
            // there, then reads to EOF; prints "PEEKED READ".
            use std::io::Read;
            let ip: std::net::IpAddr = args[2].parse().expect("address");
            let listener = std::net::TcpListener::bind((ip, arg(&args, 3) as u16)).expect("bind");
            println!("listening");
            let (mut s, _) = listener.accept().expect("accept");
            let mut buf = [0u8; 4096];
            let peeked = s.peek(&mut buf).expect("peek");
            let mut got = Vec::new();
            s.read_to_end(&mut got).expect("read");
            println!("{peeked} {}", got.len());
            return;
        }
        Some("time-getppid") => {
            let n = arg(&args, 2);
            let t = std::time::Instant::now();
            for _ in 0..n {
                getppid();
            }
            println!("{:.2}", t.elapsed().as_nanos() as f64 / n as f64);
            return;
        }
        Some("tcp-rr") => {
            println!("{:.0}", tcp_rr(arg(&args, 2)));
            return;
        }
        Some("floor") => {
            // Programs that do nothing on the raw tracepoints named, held
            // until this process is killed: the floor the benchmarks
            // measure a probe on those hooks against.
            let held: Vec<_> = args[2..]
                .iter()
                .map(|tp| hostprobe::check::attach_noop(tp).unwrap_or_else(|e| panic!("{tp}: {e}")))
                .collect();
            println!("attached {}", held.len());
            loop {
                std::thread::park();
            }
        }
        Some("pingpong") => {
            let mut line = String::new();
            std::io::stdin().lock().read_line(&mut line).expect("stdin");
            println!("{:.0}", pingpong(arg(&args, 2)));
            return;
        }
        Some("rename-sleep") => {
            // Named FROM before the test attaches (so `--comm FROM` traces
            // it), waits for stdin, sleeps N x MS ms under that name, renames
            // itself TO and says so, then sleeps SECS s in 50 ms naps.
            let set_name = |name: &str| {
                let name = std::ffi::CString::new(name).expect("name");
                // SAFETY: PR_SET_NAME reads a NUL-terminated string.
                unsafe { libc::prctl(libc::PR_SET_NAME, name.as_ptr()) };
            };
            set_name(&args[2]);
            let mut line = String::new();
            std::io::stdin().lock().read_line(&mut line).expect("stdin");
            for _ in 0..arg(&args, 4) {
                nanosleep(arg(&args, 5));
            }
            set_name(&args[3]);
            println!("renamed");
            let end = std::time::Instant::now() + Duration::from_secs(arg(&args, 6));
            while std::time::Instant::now() < end {
                nanosleep(50);
            }
            println!("done");
            return;
        }
        Some("exec-leak-child") => {
            // The image `exec-thread` exec'd, as the process's only thread
            // (it took the leader's id). First the time the exec took at
            // most; then a child under the id the exec'ing thread had.
            let mut ts = libc::timespec { tv_sec: 0, tv_nsec: 0 };
            // SAFETY: clock_gettime fills the timespec.
            unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
            let now = ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64;
            let (old_tid, t0) = (arg(&args, 2), arg(&args, 3));
            let tids = [old_tid as libc::pid_t];
            // struct clone_args (CLONE_ARGS_SIZE_VER1, 80 bytes): flags,
            // pidfd, child_tid, parent_tid, exit_signal, stack, stack_size,
            // tls, set_tid, set_tid_size.
            let mut ca = [0u64; 10];
            ca[4] = libc::SIGCHLD as u64;
            ca[8] = tids.as_ptr() as u64;
            ca[9] = 1;
            // SAFETY: a fork-like clone3 (no CLONE_VM) of a single-threaded
            // process; the child only calls _exit.
            let child = unsafe { libc::syscall(libc::SYS_clone3, ca.as_mut_ptr(), std::mem::size_of_val(&ca)) };
            if child == 0 {
                // SAFETY: ends the child without touching shared state.
                unsafe { libc::_exit(0) };
            }
            if child < 0 {
                eprintln!("clone3 with set_tid {old_tid}: {}", std::io::Error::last_os_error());
                std::process::exit(3);
            }
            let mut status = 0;
            // SAFETY: reaps the child just made.
            unsafe { libc::waitpid(child as libc::pid_t, &mut status, 0) };
            println!("{{\"pid\":{},\"child\":{child},\"exec_ns\":{}}}", std::process::id(), now.saturating_sub(t0));
            return;
        }
        Some("ack-latency") => {
            let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("tokio runtime");
            let ms = rt.block_on(ack_latency(args[2].clone(), arg(&args, 3), args.get(4).cloned()));
            let pct = |p: f64| ms.get(((ms.len() as f64 * p) as usize).min(ms.len().saturating_sub(1))).copied();
            let json = |v: Option<f64>| v.map_or("null".to_string(), |v| format!("{v:.2}"));
            println!("{{\"acked\":{},\"p50_ms\":{},\"p99_ms\":{}}}", ms.len(), json(pct(0.5)), json(pct(0.99)));
            return;
        }
        Some("fleet") => {
            fleet(&args);
            return;
        }
        Some("churn-pool") => {
            churn_pool(arg(&args, 2), arg(&args, 3));
            return;
        }
        Some("conn-churn") => {
            conn_churn(arg(&args, 2));
            return;
        }
        Some("marked") => {
            marked(&args[2], arg(&args, 3), arg(&args, 4));
            return;
        }
        Some("busy") => {
            let end = std::time::Instant::now() + Duration::from_secs(arg(&args, 2));
            while std::time::Instant::now() < end {
                for _ in 0..20 {
                    getppid();
                    // SAFETY: syscalls without pointer arguments.
                    unsafe {
                        libc::syscall(libc::SYS_getpid);
                        libc::syscall(libc::SYS_getuid);
                        libc::syscall(libc::SYS_sched_yield);
                    }
                }
                nanosleep(5);
            }
            return;
        }
        _ => {}
    }
    let mut line = String::new();
    std::io::stdin().lock().read_line(&mut line).expect("stdin");
    match args.get(1).map(String::as_str) {
        Some("getppid") => halves(arg(&args, 2), getppid),
        Some("nanosleep") => {
            let ms = arg(&args, 3);
            let took: Vec<u128> = (0..arg(&args, 2))
                .map(|_| {
                    let t = std::time::Instant::now();
                    nanosleep(ms);
                    t.elapsed().as_nanos()
                })
                .collect();
            println!("{took:?}");
        }
        Some("openat-missing") => halves(arg(&args, 2), openat_missing),
        Some("dio-loop") => {
            // 4 KiB O_DIRECT writes at successive offsets of DEV (wrapping)
            // for MS ms: synchronous, one at a time, PAUSE_US apart (default 0).
            use std::os::unix::fs::FileExt;
            let end = std::time::Instant::now() + Duration::from_millis(arg(&args, 3));
            let (f, buf) = (open_direct(&args[2]), aligned_buffer(4096));
            let pause = Duration::from_micros(opt_arg(&args, 4, 0));
            let mut i = 0u64;
            while std::time::Instant::now() < end {
                f.write_all_at(buf, (i % 4096) * 4096).expect("direct write");
                i += 1;
                if !pause.is_zero() {
                    std::thread::sleep(pause);
                }
            }
            println!("{i}");
        }
        Some("chatty") => {
            // One-byte writes to /dev/null for MS ms; prints how many.
            use std::io::Write;
            let mut f = std::fs::OpenOptions::new().write(true).open("/dev/null").expect("/dev/null");
            let end = std::time::Instant::now() + Duration::from_millis(arg(&args, 2));
            let mut n = 0u64;
            while std::time::Instant::now() < end {
                for _ in 0..1000 {
                    f.write_all(b"x").expect("write");
                }
                n += 1000;
            }
            println!("{n}");
        }
        Some(mode @ ("contend" | "contend-apart")) => {
            // THREADS threads take one mutex in turn for MS ms, each holding
            // it HOLD ms (asleep); the main thread waits for them. Apart:
            // each thread has a mutex of its own (the same work, no
            // contention).
            let (threads, hold, ms) = (arg(&args, 2), arg(&args, 3), arg(&args, 4));
            let lock = std::sync::Arc::new(std::sync::Mutex::new(0u64));
            let end = std::time::Instant::now() + Duration::from_millis(ms);
            let apart = mode == "contend-apart";
            let workers: Vec<_> = (0..threads)
                .map(|_| {
                    let lock = if apart { std::sync::Arc::new(std::sync::Mutex::new(0u64)) } else { lock.clone() };
                    std::thread::spawn(move || {
                        while std::time::Instant::now() < end {
                            let mut held = lock.lock().expect("lock");
                            *held += 1;
                            nanosleep(hold);
                        }
                    })
                })
                .collect();
            workers.into_iter().for_each(|w| w.join().expect("join"));
            println!("{}", lock.lock().expect("lock"));
        }
        Some("epoll-idle") => {
            // A daemon's event loop with nothing to do: epoll_wait on an
            // eventfd nobody signals, 100 ms timeout, for MS ms.
            // SAFETY: plain fd syscalls on descriptors made here.
            unsafe {
                let ep = libc::epoll_create1(0);
                let ev = libc::eventfd(0, 0);
                let mut e = libc::epoll_event { events: libc::EPOLLIN as u32, u64: 0 };
                assert_eq!(libc::epoll_ctl(ep, libc::EPOLL_CTL_ADD, ev, &mut e), 0, "epoll_ctl");
                let end = std::time::Instant::now() + Duration::from_millis(arg(&args, 2));
                while std::time::Instant::now() < end {
                    libc::epoll_wait(ep, &mut e, 1, 100);
                }
            }
        }
        Some("pipe-read") => {
            // Reads a pipe a child writes one byte to every 20 ms, for MS ms:
            // asleep in read almost all the time.
            let ms = arg(&args, 2);
            let mut fds = [0i32; 2];
            // SAFETY: pipe() fills the array; the child only writes, sleeps
            // and exits (async-signal-safe).
            unsafe {
                assert_eq!(libc::pipe(fds.as_mut_ptr()), 0);
                if libc::fork() == 0 {
                    libc::close(fds[0]);
                    for _ in 0..ms / 20 {
                        nanosleep(20);
                        libc::write(fds[1], b"x".as_ptr().cast(), 1);
                    }
                    libc::_exit(0);
                }
                libc::close(fds[1]);
                let mut b = [0u8; 1];
                let mut n = 0;
                while libc::read(fds[0], b.as_mut_ptr().cast(), 1) == 1 {
                    n += 1;
                }
                libc::wait(std::ptr::null_mut());
                println!("{n}");
            }
        }
        Some("churn") => {
            for _ in 0..arg(&args, 2) {
                let ok = std::process::Command::new("/bin/true").status().map(|s| s.success());
                assert!(matches!(ok, Ok(true)), "/bin/true failed: {ok:?}");
            }
        }
        Some("churn-named") => {
            for i in 0..arg(&args, 2) {
                // SAFETY: the child only renames itself, makes a syscall and
                // exits, without touching the parent's state.
                unsafe {
                    match libc::fork() {
                        0 => {
                            let name = std::ffi::CString::new(format!("c{i}")).expect("name");
                            libc::prctl(libc::PR_SET_NAME, name.as_ptr());
                            libc::syscall(libc::SYS_getppid);
                            libc::_exit(0);
                        }
                        pid if pid > 0 => {
                            let mut status = 0;
                            libc::waitpid(pid, &mut status, 0);
                        }
                        _ => panic!("fork failed"),
                    }
                }
            }
        }
        Some("dio") => {
            let dev = args.get(2).expect("device");
            direct_io(dev, arg(&args, 3), arg(&args, 4), opt_arg(&args, 5, 4096) as usize);
        }
        Some("fsync-loop") => {
            // N times: one 4 KiB O_DIRECT write to its own block, then fsync
            // (one flush request each: no page cache to write back).
            use std::os::unix::fs::FileExt;
            let (block, n) = (arg(&args, 3), arg(&args, 4));
            let (f, buf) = (open_direct(args.get(2).expect("device")), aligned_buffer(4096));
            for _ in 0..n {
                f.write_all_at(buf, block * 4096).expect("direct write");
                f.sync_all().expect("fsync");
            }
        }
        Some("dio-write-errors") => {
            // N direct 4 KiB writes to blocks 0..N in turn; prints how many
            // failed (e.g. with the device's backing store full).
            use std::os::unix::fs::FileExt;
            let n = arg(&args, 3);
            let (f, buf) = (open_direct(args.get(2).expect("device")), aligned_buffer(4096));
            let failed = (0..n).filter(|b| f.write_all_at(buf, b * 4096).is_err()).count();
            println!("{failed}");
        }
        Some("dio-same") => {
            // N direct 4 KiB reads of the device's first 16 blocks, in turn:
            // several of these at once read the same sectors concurrently.
            use std::os::unix::fs::FileExt;
            let n = arg(&args, 3);
            let (f, buf) = (open_direct(args.get(2).expect("device")), aligned_buffer(4096));
            for i in 0..n {
                f.read_exact_at(buf, (i % 16) * 4096).expect("direct read");
            }
        }
        Some("fsync") => {
            use std::io::Write as _;
            let mut f =
                std::fs::OpenOptions::new().write(true).open(args.get(2).expect("device")).expect("open device");
            f.write_all(&vec![0x5a; 1 << 20]).expect("write");
            f.sync_all().expect("fsync");
        }
        Some("spin") => {
            let (ms, cpu) = (arg(&args, 2), arg(&args, 3) as usize);
            // SAFETY: a zeroed cpu_set_t with one CPU set, for this thread.
            unsafe {
                let mut set: libc::cpu_set_t = std::mem::zeroed();
                libc::CPU_SET(cpu, &mut set);
                assert_eq!(libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &set), 0, "pin");
            }
            let end = std::time::Instant::now() + Duration::from_millis(ms);
            let mut x = 0u64;
            while std::time::Instant::now() < end {
                for i in 0..10_000u64 {
                    x = std::hint::black_box(x.wrapping_mul(31).wrapping_add(i));
                }
            }
            println!("done");
            let mut line = String::new();
            std::io::stdin().lock().read_line(&mut line).expect("stdin");
        }
        Some("mutex") => {
            let ms = arg(&args, 2);
            let lock = std::sync::Arc::new(std::sync::Mutex::new(()));
            let (tx, rx) = std::sync::mpsc::channel();
            let held = lock.clone();
            let holder = std::thread::spawn(move || {
                let _guard = held.lock().expect("lock");
                tx.send(()).expect("signal");
                std::thread::sleep(Duration::from_millis(ms));
            });
            rx.recv().expect("holder has the lock");
            drop(lock.lock().expect("lock"));
            holder.join().expect("join");
        }
        Some("tcp-client") => {
            use std::io::{Read, Write};
            let ip: std::net::IpAddr = args[2].parse().expect("address");
            match std::net::TcpStream::connect((ip, arg(&args, 3) as u16)) {
                Ok(mut s) => {
                    s.write_all(&vec![1u8; arg(&args, 4) as usize]).expect("write");
                    s.shutdown(std::net::Shutdown::Write).expect("shutdown");
                    let mut got = Vec::new();
                    s.read_to_end(&mut got).expect("read");
                    println!("{}", got.len());
                }
                Err(e) if e.kind() == std::io::ErrorKind::ConnectionRefused => println!("refused"),
                Err(e) => panic!("connect: {e}"),
            }
        }
        // `connect-refused PORT N [LINGER_MS]`: N connects to a closed
        // loopback port, each refused; prints how many were, then stays
        // LINGER_MS (so that its /proc entry is read while it lives).
        Some("connect-refused") => {
            let (port, n) = (arg(&args, 2) as u16, arg(&args, 3));
            let refused = (0..n)
                .filter(|_| {
                    matches!(std::net::TcpStream::connect(("127.0.0.1", port)),
                        Err(e) if e.kind() == std::io::ErrorKind::ConnectionRefused)
                })
                .count();
            println!("{refused}");
            std::thread::sleep(Duration::from_millis(args.get(4).map_or(0, |_| arg(&args, 4))));
        }
        Some("tcp-clients") => {
            use std::io::{Read, Write};
            let ip: std::net::IpAddr = args[2].parse().expect("address");
            let (port, n, ports, size) = (arg(&args, 3), arg(&args, 4), arg(&args, 5), arg(&args, 6));
            for i in 0..n {
                let mut s = std::net::TcpStream::connect((ip, (port + i % ports) as u16)).expect("connect");
                s.write_all(&vec![1u8; size as usize]).expect("write");
                s.shutdown(std::net::Shutdown::Write).expect("shutdown");
                s.read_to_end(&mut Vec::new()).expect("read");
            }
        }
        Some("tcp-accept-drop") => {
            let ip: std::net::IpAddr = args[2].parse().expect("address");
            let listener = std::net::TcpListener::bind((ip, arg(&args, 3) as u16)).expect("bind");
            println!("listening");
            let (s, _) = listener.accept().expect("accept");
            drop(s);
            println!("dropped");
        }
        Some("tcp-connect") => {
            let ip: std::net::IpAddr = args[2].parse().expect("address");
            let start = std::time::Instant::now();
            let s = std::net::TcpStream::connect((ip, arg(&args, 3) as u16)).expect("connect");
            println!("{}", start.elapsed().as_micros());
            drop(s);
        }
        Some("tcp-bulk") => {
            use std::io::{Read, Write};
            let ip: std::net::IpAddr = args[2].parse().expect("address");
            let mut s = std::net::TcpStream::connect((ip, arg(&args, 3) as u16)).expect("connect");
            s.write_all(&vec![1u8; arg(&args, 4) as usize]).expect("write");
            s.flush().expect("flush");
            println!("sent");
            let mut line = String::new();
            std::io::stdin().lock().read_line(&mut line).expect("stdin");
            s.shutdown(std::net::Shutdown::Write).expect("shutdown");
            let mut got = Vec::new();
            s.read_to_end(&mut got).expect("read");
        }
        Some("tcp-steady") => {
            // Sends for MS ms as fast as the connection takes it, then
            // finishes like tcp-client; prints the bytes sent. Cubic fills
            // the window it is given (BBR, the default on some hosts, paces
            // to keep queues empty).
            use std::io::{Read, Write};
            use std::os::fd::AsRawFd;
            let ip: std::net::IpAddr = args[2].parse().expect("address");
            let mut s = std::net::TcpStream::connect((ip, arg(&args, 3) as u16)).expect("connect");
            let cc = b"cubic";
            // SAFETY: setsockopt reads `cc.len()` bytes from a valid pointer.
            let rc = unsafe {
                libc::setsockopt(
                    s.as_raw_fd(),
                    libc::IPPROTO_TCP,
                    libc::TCP_CONGESTION,
                    cc.as_ptr().cast(),
                    cc.len() as libc::socklen_t,
                )
            };
            assert_eq!(rc, 0, "TCP_CONGESTION cubic: {}", std::io::Error::last_os_error());
            let end = std::time::Instant::now() + Duration::from_millis(arg(&args, 4));
            let chunk = vec![1u8; 16384];
            let mut sent = 0;
            while std::time::Instant::now() < end {
                s.write_all(&chunk).expect("write");
                sent += chunk.len();
            }
            s.shutdown(std::net::Shutdown::Write).expect("shutdown");
            s.read_to_end(&mut Vec::new()).expect("read");
            println!("{sent}");
        }
        Some("named-sleeper") => named_sleeper(arg(&args, 2), arg(&args, 3)),
        Some("steady") => {
            let ms = arg(&args, 3);
            for _ in 0..arg(&args, 2) {
                getppid();
                nanosleep(ms);
            }
        }
        Some("conserve") => {
            use std::io::{Read, Write};
            use std::os::unix::fs::FileExt;
            const BLOCK: usize = 64 << 10;
            let name = std::ffi::CString::new(args[2].as_str()).expect("name");
            // SAFETY: PR_SET_NAME reads a NUL-terminated string.
            unsafe { libc::prctl(libc::PR_SET_NAME, name.as_ptr()) };
            let (offset, writes) = (arg(&args, 4), arg(&args, 5));
            let (f, buf) = (open_direct(&args[3]), aligned_buffer(BLOCK));
            for k in 0..writes {
                f.write_all_at(buf, offset + k * BLOCK as u64).expect("direct write");
            }
            let ip: std::net::IpAddr = args[6].parse().expect("address");
            let sent = arg(&args, 8);
            let mut s = std::net::TcpStream::connect((ip, arg(&args, 7) as u16)).expect("connect");
            s.write_all(&vec![3u8; sent as usize]).expect("write");
            s.shutdown(std::net::Shutdown::Write).expect("shutdown");
            let mut got = Vec::new();
            s.read_to_end(&mut got).expect("read");
            drop(s);
            // The kernel's own accounting of the call: of the time between
            // the two readings of the clocks, the part neither on a CPU nor
            // waiting in the run queue was spent asleep. The second reading
            // of /proc is inside that time, so that a wait for a CPU while
            // reading it is on both sides.
            let (delay, cpu, t) = (run_delay_ns(), cpu_ns(), std::time::Instant::now());
            nanosleep(arg(&args, 9));
            let slept = t.elapsed().as_nanos() as u64;
            let delay = run_delay_ns() - delay;
            let (cpu, wall) = (cpu_ns() - cpu, t.elapsed().as_nanos() as u64);
            let asleep = wall - cpu - delay;
            println!(
                "{{\"writes\":{writes},\"written\":{},\"sent\":{sent},\"received\":{},\"slept_ns\":{slept},\"asleep_ns\":{asleep}}}",
                writes * BLOCK as u64,
                got.len()
            );
        }
        Some("spin-sleep") => {
            // Pinned to CPU, for TOTAL ms of wall time: burn ON ms of this
            // thread's CPU time, sleep OFF ms; then "done" and wait for a
            // second line, like spin.
            let (on, off, total, cpu) = (arg(&args, 2), arg(&args, 3), arg(&args, 4), arg(&args, 5) as usize);
            // SAFETY: a zeroed cpu_set_t with one CPU set, for this thread.
            unsafe {
                let mut set: libc::cpu_set_t = std::mem::zeroed();
                libc::CPU_SET(cpu, &mut set);
                assert_eq!(libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &set), 0, "pin");
            }
            let cpu_ns = || {
                let mut ts = libc::timespec { tv_sec: 0, tv_nsec: 0 };
                // SAFETY: clock_gettime fills the timespec.
                unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut ts) };
                ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
            };
            let end = std::time::Instant::now() + Duration::from_millis(total);
            let mut x = 0u64;
            while std::time::Instant::now() < end {
                let until = cpu_ns() + on * 1_000_000;
                while cpu_ns() < until {
                    for i in 0..1_000u64 {
                        x = std::hint::black_box(x.wrapping_mul(31).wrapping_add(i));
                    }
                }
                nanosleep(off);
            }
            println!("done");
            let mut line = String::new();
            std::io::stdin().lock().read_line(&mut line).expect("stdin");
        }
        Some("sleep-mix") => {
            let (n, short, long, every) = (arg(&args, 2), arg(&args, 3), arg(&args, 4), arg(&args, 5).max(1));
            let took: Vec<u128> = (0..n)
                .map(|i| {
                    let t = std::time::Instant::now();
                    nanosleep(if i % every == every - 1 { long } else { short });
                    t.elapsed().as_nanos()
                })
                .collect();
            println!("{took:?}");
        }
        Some("churn-getppid") => {
            let k = arg(&args, 3);
            let prog = c"/bin/true";
            let argv = [prog.as_ptr(), std::ptr::null()];
            let mut pids = Vec::new();
            for _ in 0..arg(&args, 2) {
                // SAFETY: the child makes raw syscalls and execs (async-signal
                // safe), without touching the parent's state.
                unsafe {
                    match libc::fork() {
                        0 => {
                            for _ in 0..k {
                                libc::syscall(libc::SYS_getppid);
                            }
                            libc::execv(prog.as_ptr(), argv.as_ptr());
                            libc::_exit(127);
                        }
                        pid if pid > 0 => {
                            let mut status = 0;
                            libc::waitpid(pid, &mut status, 0);
                            assert!(libc::WIFEXITED(status) && libc::WEXITSTATUS(status) == 0, "child {pid}: {status}");
                            pids.push(pid);
                        }
                        _ => panic!("fork failed"),
                    }
                }
            }
            println!("{pids:?}");
        }
        Some("exec-thread") => {
            use std::os::unix::ffi::OsStrExt;
            let exe = std::env::current_exe().expect("own path");
            let prog = std::ffi::CString::new(exe.as_os_str().as_bytes()).expect("path");
            let thread = std::thread::spawn(move || {
                // SAFETY: syscalls without pointer arguments / filling a timespec.
                let (tid, t0) = unsafe {
                    let mut ts = libc::timespec { tv_sec: 0, tv_nsec: 0 };
                    libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts);
                    (libc::syscall(libc::SYS_gettid), ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64)
                };
                let argv: Vec<std::ffi::CString> =
                    [prog.to_bytes(), b"exec-leak-child", tid.to_string().as_bytes(), t0.to_string().as_bytes()]
                        .iter()
                        .map(|a| std::ffi::CString::new(*a).expect("argument"))
                        .collect();
                let mut ptrs: Vec<*const libc::c_char> = argv.iter().map(|a| a.as_ptr()).collect();
                ptrs.push(std::ptr::null());
                // SAFETY: NUL-terminated strings and a null-terminated array.
                unsafe { libc::execv(prog.as_ptr(), ptrs.as_ptr()) };
                panic!("execv: {}", std::io::Error::last_os_error());
            });
            // The exec ends this thread while it waits here, in futex.
            let _ = thread.join();
            std::process::exit(1);
        }
        _ => {
            eprintln!("usage: see the source of workload.rs");
            std::process::exit(2)
        }
    }
}

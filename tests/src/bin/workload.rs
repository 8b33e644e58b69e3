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
//! workload steady N MS          N rounds of getppid() + nanosleep(MS ms)
//! ```
//!
//! For `cargo xtask bench` (these start at once, without waiting for stdin):
//!
//! ```text
//! workload time-getppid N       N getppid(); prints the mean ns per call
//! workload busy SECS            several syscalls then a 5 ms sleep, in a loop, for SECS
//! ```
use std::{io::BufRead, time::Duration};

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

fn openat_missing() {
    let path = c"/nonexistent-hostprobe-test/file";
    // SAFETY: valid NUL-terminated path; the call fails with ENOENT.
    let fd = unsafe { libc::syscall(libc::SYS_openat, libc::AT_FDCWD, path.as_ptr(), libc::O_RDONLY) };
    assert!(fd < 0, "the missing path exists");
}

/// Runs `f` n times, pausing half-way so the calls span two intervals.
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
        Some("time-getppid") => {
            let n = arg(&args, 2);
            let t = std::time::Instant::now();
            for _ in 0..n {
                getppid();
            }
            println!("{:.2}", t.elapsed().as_nanos() as f64 / n as f64);
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
        Some("churn") => {
            for _ in 0..arg(&args, 2) {
                let ok = std::process::Command::new("/bin/true").status().map(|s| s.success());
                assert!(matches!(ok, Ok(true)), "/bin/true failed: {ok:?}");
            }
        }
        Some("steady") => {
            let ms = arg(&args, 3);
            for _ in 0..arg(&args, 2) {
                getppid();
                nanosleep(ms);
            }
        }
        _ => {
            eprintln!("usage: see the source of workload.rs");
            std::process::exit(2)
        }
    }
}

//! What is attached while a workload runs: nothing, hostprobe with some of
//! its probes, a peer from libbpf-tools, or an empty-program floor.

use std::{
    path::Path,
    process::{Child, Command, Stdio},
    time::Duration,
};

use anyhow::{bail, Context as _, Result};

use crate::root;

const BPFTRACE_HIST: &str = "tracepoint:raw_syscalls:sys_enter { @start[tid] = nsecs; } \
    tracepoint:raw_syscalls:sys_exit /@start[tid]/ { @[pid, args->id] = hist(nsecs - @start[tid]); delete(@start[tid]); }";

/// The raw tracepoints the off-CPU probe's hot path hooks: the floor holds
/// programs that do nothing on them (`workload floor`).
const SWITCH_FLOOR: &[&str] = &["sched_switch", "sched_wakeup"];
/// The raw tracepoints every syscall passes.
const SYSCALL_FLOOR: &[&str] = &["sys_enter", "sys_exit"];
/// The raw tracepoints the TCP probe's programs run on for every send,
/// receive and segment in of an established connection.
const TCP_FLOOR: &[&str] = &["sock_send_length", "sock_recv_length", "tcp_probe"];
/// The raw tracepoints every I/O passes that the disk probe's programs run on.
const DISK_FLOOR: &[&str] = &["block_bio_queue", "block_io_start", "block_rq_issue", "block_rq_complete"];

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum Tracer {
    Nothing,
    /// `hostprobe run` with every probe (the default).
    Hostprobe,
    /// `hostprobe run --probes NAME`.
    HostprobeProbe(&'static str),
    /// `hostprobe offcpu --pid P`: stacks of the process being measured.
    HostprobeStacks(u32),
    SyscountL,
    BpftraceHist,
    /// bpftrace, empty programs on `sched:sched_switch` and `sched:sched_wakeup`.
    SwitchFloor,
    TcpFloor,
    DiskFloor,
    SyscallFloor,
    Biolatency,
    Runqlat,
    /// `offcputime -p P`: stacks of the process being measured.
    Offcputime(u32),
}

impl Tracer {
    pub fn name(self) -> &'static str {
        match self {
            Tracer::Nothing => "nothing attached",
            Tracer::Hostprobe => "`hostprobe run` (default: every probe)",
            Tracer::HostprobeProbe("syscall") => {
                "`hostprobe run --probes syscall` (per-process per-syscall histograms)"
            }
            Tracer::HostprobeProbe("disk") => {
                "`hostprobe run --probes disk` (per process, device and op; queue, service and total histograms)"
            }
            Tracer::HostprobeProbe("offcpu") => "`hostprobe run --probes offcpu` (all processes, no stacks)",
            Tracer::HostprobeProbe("tcp") => {
                "`hostprobe run --probes tcp` (every connection's bytes, RTT, retransmits)"
            }
            Tracer::HostprobeProbe(_) => "`hostprobe run --probes ...`",
            Tracer::HostprobeStacks(_) => {
                "`hostprobe offcpu --pid P --min 1us` (kernel + user stacks of one of the two processes)"
            }
            Tracer::SyscountL => "libbpf-tools `syscount -L` (latency totals per syscall, no histograms)",
            Tracer::BpftraceHist => "bpftrace `@[pid, args->id] = hist(nsecs - @start[tid])`",
            Tracer::SwitchFloor => "floor: programs that do nothing on raw tracepoints `sched_switch` + `sched_wakeup`",
            Tracer::SyscallFloor => "floor: programs that do nothing on raw tracepoints `sys_enter` + `sys_exit`",
            Tracer::DiskFloor => {
                "floor: programs that do nothing on raw tracepoints `block_bio_queue` + `block_io_start` + \
                 `block_rq_issue` + `block_rq_complete`"
            }
            Tracer::TcpFloor => {
                "floor: programs that do nothing on raw tracepoints `sock_send_length` + `sock_recv_length` + `tcp_probe`"
            }
            Tracer::Biolatency => "libbpf-tools `biolatency` (one histogram of issue-to-completion time)",
            Tracer::Runqlat => "libbpf-tools `runqlat` (one run-queue latency histogram)",
            Tracer::Offcputime(_) => "libbpf-tools `offcputime -p P` (kernel + user stacks of the same process)",
        }
    }

    pub fn available(self) -> bool {
        match self {
            Tracer::Nothing
            | Tracer::Hostprobe
            | Tracer::HostprobeProbe(_)
            | Tracer::HostprobeStacks(_)
            | Tracer::SwitchFloor
            | Tracer::TcpFloor
            | Tracer::DiskFloor
            | Tracer::SyscallFloor => true,
            Tracer::SyscountL => Path::new("/usr/sbin/syscount").exists(),
            Tracer::BpftraceHist => Path::new("/usr/bin/bpftrace").exists(),
            Tracer::Biolatency => Path::new("/usr/sbin/biolatency").exists(),
            Tracer::Runqlat => Path::new("/usr/sbin/runqlat").exists(),
            Tracer::Offcputime(_) => Path::new("/usr/sbin/offcputime").exists(),
        }
    }

    /// Starts the tracer and waits until it is attached.
    pub fn start(self) -> Result<Option<Child>> {
        let hostprobe = || {
            let mut c = Command::new(root().join("target/release/hostprobe"));
            c.args(["run", "--output", "json", "--interval", "1s"]);
            c
        };
        let mut cmd = match self {
            Tracer::Nothing => return Ok(None),
            Tracer::Hostprobe => hostprobe(),
            Tracer::HostprobeProbe(probe) => {
                let mut c = hostprobe();
                c.args(["--probes", probe]);
                c
            }
            Tracer::HostprobeStacks(pid) => {
                let mut c = Command::new(root().join("target/release/hostprobe"));
                // --min 1us: offcputime's default (`-m 1`), so that both keep the same blocks.
                c.args(["offcpu", "--pid", &pid.to_string(), "--min", "1us", "--duration", "60s"]);
                c.args(["--folded", "/dev/null"]);
                c
            }
            Tracer::SyscountL => {
                let mut c = Command::new("/usr/sbin/syscount");
                c.arg("-L");
                c
            }
            Tracer::BpftraceHist => {
                let mut c = Command::new("/usr/bin/bpftrace");
                c.args(["-e", BPFTRACE_HIST]);
                c
            }
            Tracer::SwitchFloor => floor(SWITCH_FLOOR),
            Tracer::TcpFloor => floor(TCP_FLOOR),
            Tracer::DiskFloor => floor(DISK_FLOOR),
            Tracer::SyscallFloor => floor(SYSCALL_FLOOR),
            Tracer::Biolatency => Command::new("/usr/sbin/biolatency"),
            Tracer::Runqlat => Command::new("/usr/sbin/runqlat"),
            Tracer::Offcputime(pid) => {
                let mut c = Command::new("/usr/sbin/offcputime");
                c.args(["-p", &pid.to_string()]);
                c
            }
        };
        let mut child = cmd.stdout(Stdio::null()).stderr(Stdio::null()).spawn().context("starting a tracer")?;
        // Each prints when attached, but buffers it; two seconds is ample
        // here (each attaches in well under one).
        std::thread::sleep(Duration::from_secs(2));
        if let Some(status) = child.try_wait()? {
            bail!("{} exited at start: {status}", self.name());
        }
        Ok(Some(child))
    }

    /// The same tracer aimed at process `pid` (for those that take one).
    pub fn aimed_at(self, pid: u32) -> Tracer {
        match self {
            Tracer::HostprobeStacks(_) => Tracer::HostprobeStacks(pid),
            Tracer::Offcputime(_) => Tracer::Offcputime(pid),
            t => t,
        }
    }
}

/// Programs that do nothing on raw tracepoints `tracepoints`, held by
/// `workload floor`: what any program on those hooks costs at least.
fn floor(tracepoints: &[&str]) -> Command {
    let mut c = Command::new(root().join("target/release/workload"));
    c.arg("floor").args(tracepoints);
    c
}

/// Stops a tracer with SIGINT (so that it detaches cleanly) and reaps it.
/// A SIGINT that lands while bpftrace is still attaching can be lost (it
/// then waits for events forever): it is sent again every 5 s, and after
/// 30 s the tracer is killed.
pub fn stop(child: Option<Child>) {
    let Some(mut c) = child else {
        return;
    };
    for tick in 0..300 {
        if tick % 50 == 0 {
            // SAFETY: signalling our own child.
            unsafe { libc_kill(c.id() as i32, 2) };
        }
        if !matches!(c.try_wait(), Ok(None)) {
            return;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    let _ = c.kill();
    let _ = c.wait();
}

extern "C" {
    #[link_name = "kill"]
    fn libc_kill(pid: i32, sig: i32) -> i32;
}

/// Runs `work` with `tracer` attached.
pub fn attached<T>(tracer: Tracer, work: impl FnOnce() -> Result<T>) -> Result<T> {
    let child = tracer.start()?;
    let r = work();
    stop(child);
    r
}

//! `hostprobe check`: what this host supports, by trying it.

use std::{path::Path, process::ExitCode};

use crate::{
    cli::CheckArgs,
    ebpf::{self, TracefsState, TRACEFS},
    probes::{self, Options},
};

static CHECK_OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/check"));

const CAP_DAC_OVERRIDE: u32 = 1;
const CAP_DAC_READ_SEARCH: u32 = 2;
const CAP_SYS_PTRACE: u32 = 19;
const CAP_SYS_ADMIN: u32 = 21;
const CAP_PERFMON: u32 = 38;
const CAP_BPF: u32 = 39;

/// The capabilities the agent needs without root (the systemd unit's and
/// the DaemonSet's set), each with one that also grants it, and what it is for.
const NEEDED: &[(u32, &str, u32, &str)] = &[
    (CAP_BPF, "CAP_BPF", CAP_SYS_ADMIN, "load BPF programs and maps"),
    (CAP_PERFMON, "CAP_PERFMON", CAP_SYS_ADMIN, "attach to tracepoints; read kernel memory and stacks in BPF"),
    (
        CAP_DAC_READ_SEARCH,
        "CAP_DAC_READ_SEARCH",
        CAP_DAC_OVERRIDE,
        "read the tracepoint formats under /sys/kernel/tracing, which only root may",
    ),
    (CAP_SYS_PTRACE, "CAP_SYS_PTRACE", CAP_SYS_PTRACE, "read other processes' /proc/PID/exe and maps"),
];

fn line(what: &str, ok: bool, detail: &str) {
    println!("{what:<22} {:<5} {detail}", if ok { "ok" } else { "FAIL" });
}

fn mib(bytes: u64) -> String {
    format!("{:.1} MiB", bytes as f64 / (1024.0 * 1024.0))
}

pub fn run(args: &CheckArgs) -> ExitCode {
    let uname = uname();
    line("kernel", true, &uname);

    let btf = Path::new("/sys/kernel/btf/vmlinux");
    match std::fs::metadata(btf) {
        Ok(m) => line("BTF", true, &format!("{} ({})", btf.display(), mib(m.len()))),
        Err(_) => line(
            "BTF",
            false,
            "no /sys/kernel/btf/vmlinux: the disk, tcp and offcpu probes read kernel field offsets from it \
             and will not load (syscall still works); use a kernel built with CONFIG_DEBUG_INFO_BTF=y",
        ),
    }

    match ebpf::ensure_tracefs() {
        Ok(TracefsState::Mounted) => line("tracefs", true, &format!("mounted at {TRACEFS}")),
        Ok(TracefsState::MountedNow) => line("tracefs", true, &format!("was not mounted; mounted it at {TRACEFS}")),
        Err(e) => line("tracefs", false, &e),
    }

    match crate::procinfo::host_pid_namespace() {
        Ok(()) => line("PID namespace", true, "the host's"),
        Err(e) => line("PID namespace", false, &e),
    }

    let caps = effective_caps();
    let has = |c: u32| caps.is_some_and(|v| v & (1u64 << c) != 0);
    // SAFETY: geteuid has no preconditions.
    let euid = unsafe { libc::geteuid() };
    let who = if euid == 0 { "root".to_string() } else { format!("uid {euid}") };
    let (held, missing): (Vec<_>, Vec<_>) = NEEDED.iter().partition(|(c, _, also, _)| has(*c) || has(*also));
    let names = |caps: &[&(u32, &str, u32, &str)]| caps.iter().map(|c| c.1).collect::<Vec<_>>().join(", ");
    if missing.is_empty() {
        line("privileges", true, &format!("{who} with {}", names(&held)));
    } else {
        let why: Vec<String> = missing.iter().map(|(_, name, _, what)| format!("{name} (to {what})")).collect();
        line(
            "privileges",
            false,
            &format!(
                "{who} lacks {}; has {}. Run as root, or grant them: AmbientCapabilities= in a systemd unit, \
                 securityContext.capabilities.add in a pod",
                why.join(", "),
                if held.is_empty() { "none of them".to_string() } else { names(&held) }
            ),
        );
    }

    let mut usable = 0;
    for spec in probes::ALL {
        match (spec.load)(&Options::default()) {
            Ok(p) => {
                usable += 1;
                let s = p.status();
                let maps: Vec<String> =
                    s.maps.iter().map(|m| format!("{} {} entries", m.name, m.max_entries)).collect();
                line(
                    &format!("probe {}", spec.name),
                    true,
                    &format!(
                        "loaded and attached; kernel maps {} ({}); {}",
                        mib(s.memlock_bytes),
                        maps.join(", "),
                        spec.about
                    ),
                );
            }
            Err(e) => line(&format!("probe {}", spec.name), false, &e.to_string()),
        }
    }

    let mut tracepoints_ok = true;
    for tp in &args.tracepoint {
        let result = check_tracepoint(tp);
        tracepoints_ok &= result.is_ok();
        match result {
            Ok(()) => line(&format!("tracepoint {tp}"), true, "exists and accepts a BPF program"),
            Err(e) => line(&format!("tracepoint {tp}"), false, &e),
        }
    }

    println!("\n{usable} of {} probes can run here.", probes::ALL.len());
    if usable == 0 || !tracepoints_ok {
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    }
}

fn check_tracepoint(name: &str) -> Result<(), String> {
    attach_noop(name).map(drop)
}

/// A program that does nothing, attached to raw tracepoint `name` until the
/// returned object is dropped: what any program on that hook costs at least
/// (the benchmarks' floor).
pub fn attach_noop(name: &str) -> Result<aya::Ebpf, String> {
    let mut bpf = ebpf::load("check", CHECK_OBJECT, &mut ebpf::loader()).map_err(|e| e.to_string())?;
    ebpf::attach_raw_tracepoint(&mut bpf, "check", "check_noop", name).map_err(|e| e.to_string())?;
    Ok(bpf)
}

/// `CapEff` of this process, from `/proc/self/status`.
fn effective_caps() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let hex = status.lines().find_map(|l| l.strip_prefix("CapEff:"))?;
    u64::from_str_radix(hex.trim(), 16).ok()
}

fn uname() -> String {
    // SAFETY: uname fills the zeroed struct we pass.
    let mut u: libc::utsname = unsafe { std::mem::zeroed() };
    if unsafe { libc::uname(&mut u) } != 0 {
        return "unknown".into();
    }
    let field = |f: &[libc::c_char]| {
        let bytes: Vec<u8> = f.iter().take_while(|c| **c != 0).map(|c| *c as u8).collect();
        String::from_utf8_lossy(&bytes).into_owned()
    };
    format!("{} {} ({})", field(&u.sysname), field(&u.release), field(&u.machine))
}

//! The command line: `check`, and bad input.

use hostprobe_tests::hostprobe;

#[test]
fn check_finds_the_syscall_probe_usable() {
    let processes = || {
        std::fs::read_dir("/proc")
            .unwrap()
            .filter(|e| e.as_ref().unwrap().file_name().to_str().unwrap().parse::<u32>().is_ok())
            .count() as u32
    };
    let before = processes();
    let out = hostprobe().arg("check").output().unwrap();
    let after = processes();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "check failed:\n{stdout}{}", String::from_utf8_lossy(&out.stderr));
    let line = stdout.lines().find(|l| l.starts_with("probe syscall")).expect("a line for the syscall probe");
    assert!(line.contains(" ok "), "{line}");
    // Sized from the processes running (the agent counts itself and what
    // started or ended meanwhile: a margin of 10).
    let size: u32 = line
        .split("SYSCALL_STATS ")
        .nth(1)
        .and_then(|s| s.split(' ').next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("map sizes reported: {line}"));
    let (lo, hi) = (before.min(after).saturating_sub(10), before.max(after) + 10);
    let (lo, hi) = (hostprobe::probes::syscall::stats_size(lo), hostprobe::probes::syscall::stats_size(hi));
    assert!((lo..=hi).contains(&size), "SYSCALL_STATS {size} entries for {before}..{after} processes: {line}");
}

#[test]
fn check_reports_a_made_up_tracepoint_clearly() {
    let out = hostprobe().args(["check", "--tracepoint", "hostprobe_made_up"]).output().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stdout}{stderr}");
    let line = stdout.lines().find(|l| l.starts_with("tracepoint hostprobe_made_up")).expect("a line for it");
    assert!(line.contains("FAIL") && line.contains("no tracepoint named"), "{line}");
    assert!(!stderr.contains("panicked"), "{stderr}");
    // The real probe is still reported usable next to it.
    assert!(stdout.lines().any(|l| l.starts_with("probe syscall") && l.contains(" ok ")), "{stdout}");
}

#[test]
fn bad_flags_give_one_line_and_exit_code_2() {
    for args in [
        &["run", "--interval", "0"][..],
        &["run", "--pid", "notanumber"],
        &["run", "--top", "0"],
        &["run", "--comm", "a-name-longer-than-15"],
        &["run", "--cgroup", "/no/such/cgroup"],
        &["run", "--no-such-flag"],
        &["frobnicate"],
    ] {
        let out = hostprobe().args(args).output().unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{args:?}: {stderr}");
        assert_eq!(stderr.trim_end().lines().count(), 1, "{args:?}: not one line: {stderr}");
        assert!(stderr.starts_with("hostprobe: "), "{args:?}: {stderr}");
        assert!(out.stdout.is_empty(), "{args:?}: printed on stdout");
    }
}

#[test]
fn help_teaches() {
    let out = hostprobe().args(["run", "--help"]).output().unwrap();
    assert!(out.status.success());
    let help = String::from_utf8_lossy(&out.stdout);
    for flag in ["--interval", "--duration", "--pid", "--comm", "--cgroup", "--top", "--output", "--cmdline"] {
        assert!(help.contains(flag), "--help lacks {flag}");
    }
}

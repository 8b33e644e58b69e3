//! The command line: `check`, and bad input.

use hostprobe_tests::hostprobe;

#[test]
fn check_finds_the_syscall_probe_usable() {
    let out = hostprobe().arg("check").output().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "check failed:\n{stdout}{}", String::from_utf8_lossy(&out.stderr));
    let line = stdout.lines().find(|l| l.starts_with("probe syscall")).expect("a line for the syscall probe");
    assert!(line.contains(" ok "), "{line}");
    assert!(line.contains("SYSCALL_STATS 16384 entries"), "map sizes reported: {line}");
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

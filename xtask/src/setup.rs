//! Installs what building and testing need, skipping what is present.
//! The recipe for bpf-linker is the verified one in `../shared/toolchain.md`:
//! built against the nightly toolchain's own libLLVM.

use std::{path::PathBuf, process::Command};

use anyhow::{bail, Context as _, Result};

use crate::{run, step};

const BPF_LINKER_VERSION: &str = "0.13.0";

/// Debian packages the tests use: fio (the disk probe's ground truth),
/// iproute2 (network namespaces, tc, ss and nstat for the TCP probe), nftables
/// (packet loss for the retransmit test), ethtool (offloads off there),
/// prometheus (a real server scraping the agent, and promtool); for the
/// deployment: musl-tools (C parts of the static build), podman and runc
/// (building and running the image; crun fails on hybrid cgroup hosts);
/// tmux (a real terminal for `hostprobe top`: keys in, the screen out).
const TEST_PACKAGES: &[&str] =
    &["fio", "iproute2", "nftables", "ethtool", "prometheus", "musl-tools", "podman", "runc", "tmux"];

/// The target of the static build in the container image.
pub const MUSL_TARGET: &str = "x86_64-unknown-linux-musl";
/// Debian packages `cargo xtask bench` compares against or loads with.
const BENCH_PACKAGES: &[&str] = &["bpftrace", "libbpf-tools", "fio", "iperf3"];

pub fn all(bench: bool) -> Result<()> {
    nightly()?;
    component("nightly", "rust-src", "to build core for the BPF target")?;
    component("nightly", "clippy", "to lint the eBPF programs")?;
    component("stable", "clippy", "to lint the agent")?;
    bpf_linker()?;
    debian_packages(TEST_PACKAGES)?;
    musl_target()?;
    venv(
        &otlp_venv_dir(),
        OTLP_PYTHON,
        "import grpc, opentelemetry.proto.collector.metrics.v1.metrics_service_pb2_grpc",
    )?;
    venv(&deploy_venv_dir(), DEPLOY_PYTHON, "import checkov, kubernetes_validate")?;
    if bench {
        debian_packages(BENCH_PACKAGES)?;
    }
    Ok(())
}

fn output(cmd: &mut Command) -> Option<String> {
    let out = cmd.output().ok()?;
    out.status.success().then(|| String::from_utf8_lossy(&out.stdout).into_owned())
}

fn nightly() -> Result<()> {
    if output(Command::new("rustc").args(["+nightly", "-vV"])).is_some() {
        return Ok(());
    }
    step("installing the nightly toolchain (the eBPF programs need it)");
    run(Command::new("rustup").args(["toolchain", "install", "nightly", "--profile", "minimal"]))
}

/// Installs rustup component `name` for `toolchain` unless it is there.
fn component(toolchain: &str, name: &str, why: &str) -> Result<()> {
    let installed = output(Command::new("rustup").args(["component", "list", "--installed", "--toolchain", toolchain]))
        .unwrap_or_default();
    if installed.lines().any(|l| l.starts_with(name)) {
        return Ok(());
    }
    step(&format!("installing {name} for the {toolchain} toolchain ({why})"));
    run(Command::new("rustup").args(["component", "add", name, "--toolchain", toolchain]))
}

fn bpf_linker() -> Result<()> {
    let want = format!("bpf-linker {BPF_LINKER_VERSION}");
    if output(Command::new("bpf-linker").arg("--version")).is_some_and(|v| v.trim() == want) {
        return Ok(());
    }
    step(&format!("building {want} against the nightly toolchain's libLLVM (about 3 minutes on 2 cores)"));
    let sysroot = output(Command::new("rustc").args(["+nightly", "--print", "sysroot"]))
        .context("rustc +nightly --print sysroot")?;
    let libdir = PathBuf::from(sysroot.trim()).join("lib");
    let lib = std::fs::read_dir(&libdir)
        .with_context(|| format!("reading {}", libdir.display()))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .find(|p| {
            p.file_name().and_then(|n| n.to_str()).is_some_and(|n| n.starts_with("libLLVM.so.") && n.contains("-rust-"))
        })
        .with_context(|| format!("no libLLVM.so.*-rust-* in {}", libdir.display()))?;
    let verbose = output(Command::new("rustc").args(["+nightly", "-vV"])).unwrap_or_default();
    let major = verbose
        .lines()
        .find_map(|l| l.strip_prefix("LLVM version: "))
        .and_then(|v| v.split('.').next())
        .context("no LLVM version in rustc +nightly -vV")?
        .to_string();

    // -lLLVM links against libLLVM.so; the soname is found at run time
    // through the RUNPATH that points here.
    let home = std::env::var_os("HOME").context("HOME is not set")?;
    let prefix = PathBuf::from(home).join(".cache/hostprobe/llvm");
    let prefix_lib = prefix.join("lib");
    std::fs::create_dir_all(&prefix_lib)?;
    let soname = lib.file_name().context("libLLVM file name")?;
    for link in [prefix_lib.join("libLLVM.so"), prefix_lib.join(soname)] {
        let _ = std::fs::remove_file(&link);
        std::os::unix::fs::symlink(&lib, &link).with_context(|| format!("symlink {}", link.display()))?;
    }
    run(Command::new("cargo")
        .args(["install", "bpf-linker", "--version", BPF_LINKER_VERSION, "--no-default-features"])
        .arg("--features")
        .arg(format!("llvm-{major}"))
        .env("LLVM_PREFIX", &prefix))?;
    if output(Command::new("bpf-linker").arg("--version")).is_none() {
        bail!("bpf-linker was installed but does not run; is ~/.cargo/bin on PATH?");
    }
    Ok(())
}

fn musl_target() -> Result<()> {
    let installed = output(Command::new("rustup").args(["target", "list", "--installed"])).unwrap_or_default();
    if installed.lines().any(|l| l.trim() == MUSL_TARGET) {
        return Ok(());
    }
    step(&format!("adding the {MUSL_TARGET} target (the static binary in the container image)"));
    run(Command::new("rustup").args(["target", "add", MUSL_TARGET]))
}

/// Python packages of the OTLP test receiver (tests/otlp_receiver.py): the
/// official generated classes and grpcio, in a virtual environment.
const OTLP_PYTHON: &[&str] = &["opentelemetry-proto", "grpcio"];

/// Python packages that check the Kubernetes manifests: a schema validator
/// that works offline, and a policy scanner.
const DEPLOY_PYTHON: &[&str] = &["kubernetes-validate", "checkov"];

fn cache_dir() -> PathBuf {
    let home = std::env::var_os("HOME").unwrap_or_else(|| "/root".into());
    PathBuf::from(home).join(".cache/hostprobe")
}

/// Where the OTLP receiver's environment lives (the tests look for it there too).
pub fn otlp_venv_dir() -> PathBuf {
    cache_dir().join("otlp-venv")
}

/// Where the manifest checkers' environment lives (the tests look there too).
pub fn deploy_venv_dir() -> PathBuf {
    cache_dir().join("deploy-venv")
}

/// Creates a virtual environment with `packages` unless `import` works in it already.
fn venv(dir: &std::path::Path, packages: &[&str], import: &str) -> Result<()> {
    let python = dir.join("bin/python");
    let works = || output(Command::new(&python).args(["-c", import])).is_some();
    if works() {
        return Ok(());
    }
    step(&format!("creating a Python environment with {}: {}", packages.join(", "), dir.display()));
    run(Command::new("python3").arg("-m").arg("venv").arg(dir))?;
    run(Command::new(dir.join("bin/pip")).args(["install", "--quiet"]).args(packages))?;
    if !works() {
        bail!("{} cannot `{import}` after installing {}", python.display(), packages.join(", "));
    }
    Ok(())
}

/// Installs missing Debian packages (apt-get, as root or through sudo).
pub fn debian_packages(packages: &[&str]) -> Result<()> {
    let missing: Vec<&str> = packages
        .iter()
        .copied()
        .filter(|p| {
            !output(Command::new("dpkg-query").args(["-W", "-f=${Status}", p]))
                .is_some_and(|s| s.contains("install ok installed"))
        })
        .collect();
    if missing.is_empty() {
        return Ok(());
    }
    step(&format!("installing Debian packages: {}", missing.join(" ")));
    let apt = |args: &[&str]| {
        let mut c = if crate::is_root() {
            Command::new("apt-get")
        } else {
            let mut c = Command::new("sudo");
            c.arg("apt-get");
            c
        };
        c.args(args).env("DEBIAN_FRONTEND", "noninteractive");
        c
    };
    let mut install = apt(&["install", "-y", "--no-install-recommends"]);
    install.args(&missing);
    if run(&mut install).is_err() {
        // A fresh machine may not have package lists yet.
        run(&mut apt(&["update"]))?;
        let mut install = apt(&["install", "-y", "--no-install-recommends"]);
        install.args(&missing);
        run(&mut install)?;
    }
    Ok(())
}

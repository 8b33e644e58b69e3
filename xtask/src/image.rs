//! `cargo xtask image`: the container image, built without downloading any
//! base image: the static (musl) binary alone in `FROM scratch`
//! (`deploy/container/Containerfile`), with Debian's podman.

use std::{path::Path, process::Command};

use anyhow::{bail, Context as _, Result};

use crate::{as_root, cargo, root, run, setup::MUSL_TARGET, step};

/// The tag `cargo xtask image` gives, and the tests run.
pub const DEFAULT_TAG: &str = "localhost/hostprobe:latest";

/// podman as it works on these hosts (tests/tests/deploy.rs runs it alike):
/// runc (crun fails on a hybrid cgroup layout), cgroupfs (systemd need not
/// be PID 1), vfs storage (no overlay filesystem needed).
pub fn podman() -> Command {
    let mut c = as_root(Path::new("podman"));
    c.args(["--runtime", "runc", "--cgroup-manager", "cgroupfs", "--storage-driver", "vfs"]);
    c
}

pub fn build(tag: &str) -> Result<()> {
    step(&format!("building the static binary ({MUSL_TARGET}) for the image"));
    run(cargo().args(["build", "--release", "--target", MUSL_TARGET, "-p", "hostprobe", "--bin", "hostprobe"]))?;
    let bin = root().join("target").join(MUSL_TARGET).join("release/hostprobe");
    if let Some(interp) = interpreter(&bin)? {
        bail!("{} needs the loader {interp}: a FROM scratch image has none", bin.display());
    }
    // A build context of its own: the repository (with target/) would be
    // gigabytes to copy.
    let context = root().join("target/image");
    let _ = std::fs::remove_dir_all(&context);
    std::fs::create_dir_all(&context).with_context(|| format!("creating {}", context.display()))?;
    std::fs::copy(root().join("deploy/container/Containerfile"), context.join("Containerfile"))?;
    std::fs::copy(&bin, context.join("hostprobe"))?;
    step(&format!("building the image {tag} (podman, FROM scratch)"));
    run(podman().args(["build", "--quiet", "--tag", tag]).arg(&context))
}

/// The ELF program interpreter (`PT_INTERP`) `path` asks for, if any.
fn interpreter(path: &Path) -> Result<Option<String>> {
    let elf = std::fs::read(path).with_context(|| format!("reading {}", path.display()))?;
    let u16_at = |o: usize| elf.get(o..o + 2).map(|b| u16::from_le_bytes([b[0], b[1]]) as usize);
    let u64_at = |o: usize| elf.get(o..o + 8).map(|b| u64::from_le_bytes(b.try_into().expect("8 bytes")) as usize);
    let header =
        (elf.get(..5) == Some(b"\x7fELF\x02")).then_some(()).and(u64_at(0x20).zip(u16_at(0x36)).zip(u16_at(0x38)));
    let Some(((phoff, phentsize), phnum)) = header else { bail!("{} is not a 64-bit ELF file", path.display()) };
    for i in 0..phnum {
        let ph = phoff + i * phentsize;
        if elf.get(ph..ph + 4) == Some(&3u32.to_le_bytes()[..]) {
            let (off, size) = (u64_at(ph + 8).unwrap_or(0), u64_at(ph + 32).unwrap_or(0));
            let name = elf.get(off..off + size).unwrap_or_default();
            return Ok(Some(String::from_utf8_lossy(name).trim_end_matches('\0').to_string()));
        }
    }
    Ok(None)
}

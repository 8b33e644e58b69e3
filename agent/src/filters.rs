//! The filters every probe applies in the kernel (`--pid`, `--comm`,
//! `--cgroup`): the flags, and what they resolve to on this host. Shared by
//! every command that attaches probes (`run`, `diagnose`, `record`).

use std::path::Path;

use clap::Args;

use crate::probes::{CgroupFilter, Options};

/// Filters, applied in the kernel (filtered-out tasks cost one check per syscall).
#[derive(Debug, Args, Default)]
pub struct FilterArgs {
    /// Only these processes (repeat, or separate with commas). Threads count toward their process.
    #[arg(long = "pid", value_name = "PID", value_delimiter = ',',
          value_parser = clap::value_parser!(u32).range(1..))]
    pub pids: Vec<u32>,
    /// Only threads whose name (comm, at most 15 bytes) is exactly this, like bcc's --comm.
    #[arg(long, value_parser = parse_comm)]
    pub comm: Option<String>,
    /// Only tasks in this cgroup (v2) or below it: a path under the cgroup2 mount, or as shown in /proc/PID/cgroup.
    #[arg(long, value_name = "PATH")]
    pub cgroup: Option<String>,
}

fn parse_comm(s: &str) -> Result<String, String> {
    if s.is_empty() || s.len() > 15 {
        return Err("must be 1 to 15 bytes (the kernel keeps 15 bytes of a thread name)".into());
    }
    Ok(s.to_string())
}

impl FilterArgs {
    /// The probe options these filters mean on this host.
    pub fn resolve(&self, max_entries: Option<u32>) -> Result<Options, String> {
        let comm = self.comm.as_ref().map(|c| {
            let mut v = [0u8; 16];
            v[..c.len()].copy_from_slice(c.as_bytes());
            v
        });
        let cgroup = self.cgroup.as_deref().map(resolve_cgroup).transpose()?;
        Ok(Options { pids: self.pids.clone(), comm, cgroup, max_entries, stacks_min_ns: None })
    }
}

/// Where the cgroup2 filesystem is mounted (`/sys/fs/cgroup` on unified
/// hosts, `/sys/fs/cgroup/unified` on hybrid ones).
pub fn cgroup2_mount() -> Option<String> {
    let mounts = std::fs::read_to_string("/proc/self/mountinfo").ok()?;
    mounts.lines().find_map(|l| {
        let (left, right) = l.split_once(" - ")?;
        (right.split(' ').next()? == "cgroup2").then(|| left.split(' ').nth(4).map(str::to_string))?
    })
}

fn resolve_cgroup(path: &str) -> Result<CgroupFilter, String> {
    use std::os::unix::fs::MetadataExt;
    let root = cgroup2_mount().ok_or("--cgroup: no cgroup2 filesystem is mounted on this host")?;
    let rel = path.strip_prefix(root.as_str()).unwrap_or(path).trim_matches('/');
    let full = Path::new(&root).join(rel);
    let meta =
        std::fs::metadata(&full).map_err(|e| format!("--cgroup {path}: {} is not a cgroup ({e})", full.display()))?;
    let level = rel.split('/').filter(|c| !c.is_empty()).count() as u32;
    Ok(CgroupFilter { path: full.display().to_string(), id: meta.ino(), level })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn comm_is_nul_padded() {
        let f = FilterArgs { comm: Some("bash".into()), ..Default::default() };
        let o = f.resolve(None).unwrap();
        assert_eq!(&o.comm.unwrap()[..5], b"bash\0");
    }

    #[test]
    fn cgroup_root_and_missing_paths() {
        if let Some(root) = cgroup2_mount() {
            let c = resolve_cgroup(&root).unwrap();
            assert_eq!(c.level, 0);
            let c = resolve_cgroup("/").unwrap();
            assert_eq!(c.level, 0);
            assert!(resolve_cgroup("/no/such/group").unwrap_err().contains("not a cgroup"));
        }
    }
}

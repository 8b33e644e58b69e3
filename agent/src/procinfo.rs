//! What `/proc` says about a process: name, executable, cgroup, container.

use std::collections::HashMap;

use serde::Serialize;

#[derive(Debug, Clone, Default, Serialize, PartialEq, Eq)]
pub struct ProcMeta {
    pub comm: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub exe: Option<String>,
    /// cgroup v2 path (the `0::` line of `/proc/<pid>/cgroup`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cgroup: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub container_id: Option<String>,
    /// Only with `--cmdline`: command lines can hold secrets.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cmdline: Option<String>,
    /// The Kubernetes names of its container, when the kubelet's log
    /// directory names it (see [`PodLogs`]).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub k8s: Option<K8sNames>,
}

/// A container's names in Kubernetes.
#[derive(Debug, Clone, Default, Serialize, PartialEq, Eq)]
pub struct K8sNames {
    pub namespace: String,
    pub pod: String,
    pub container: String,
}

/// Kubernetes names by container id, without access to the API: the
/// kubelet links each container's log as
/// `/var/log/containers/<pod>_<namespace>_<container>-<container id>.log`
/// (names cannot hold `_`). The directory is listed again when an unknown
/// id is asked for, at most every 10 s. Missing directory: no names.
#[derive(Debug)]
pub struct PodLogs {
    dir: std::path::PathBuf,
    names: HashMap<String, K8sNames>,
    listed: Option<std::time::Instant>,
}

impl PodLogs {
    pub fn new(dir: std::path::PathBuf) -> Self {
        Self { dir, names: HashMap::new(), listed: None }
    }

    pub fn get(&mut self, container_id: &str) -> Option<K8sNames> {
        let stale = self.listed.is_none_or(|t| t.elapsed() >= std::time::Duration::from_secs(10));
        if !self.names.contains_key(container_id) && stale {
            self.listed = Some(std::time::Instant::now());
            self.names = std::fs::read_dir(&self.dir)
                .into_iter()
                .flatten()
                .flatten()
                .filter_map(|e| Self::parse(e.file_name().to_str()?))
                .collect();
        }
        self.names.get(container_id).cloned()
    }

    /// `(container id, names)` of one log link's file name.
    fn parse(file: &str) -> Option<(String, K8sNames)> {
        let stem = file.strip_suffix(".log")?;
        let mut parts = stem.splitn(3, '_');
        let (pod, namespace, rest) = (parts.next()?, parts.next()?, parts.next()?);
        let (container, id) = rest.rsplit_once('-')?;
        let valid = id.len() == 64 && id.bytes().all(|b| b.is_ascii_hexdigit()) && !container.is_empty();
        valid.then(|| {
            let names = K8sNames { namespace: namespace.into(), pod: pod.into(), container: container.into() };
            (id.to_string(), names)
        })
    }
}

/// Remembers what does not change while a process lives (exe, cgroup,
/// command line), keyed by pid and checked against the process start time so
/// a reused pid is read afresh.
#[derive(Default)]
pub struct ProcCache {
    entries: HashMap<u32, (u64, ProcMeta)>,
    with_cmdline: bool,
    /// Where Kubernetes names come from, if anywhere.
    pub pod_logs: Option<PodLogs>,
}

impl ProcCache {
    pub fn new(with_cmdline: bool) -> Self {
        Self { entries: HashMap::new(), with_cmdline, pod_logs: None }
    }

    /// Metadata of a process; once it is gone, what was read while it
    /// lived (its last interval, with its exit, keeps its name), else `None`.
    pub fn get(&mut self, pid: u32) -> Option<ProcMeta> {
        let gone = |entries: &HashMap<u32, (u64, ProcMeta)>| entries.get(&pid).map(|(_, m)| m.clone());
        let Some(proc) = procfs::process::Process::new(pid as i32).ok() else { return gone(&self.entries) };
        let Some(stat) = proc.stat().ok() else { return gone(&self.entries) };
        if let Some((start, meta)) = self.entries.get_mut(&pid) {
            if *start == stat.starttime {
                meta.comm = stat.comm; // may change (exec, prctl)
                return Some(meta.clone());
            }
        }
        let cgroup =
            proc.cgroups().ok().and_then(|groups| groups.0.into_iter().find(|g| g.hierarchy == 0).map(|g| g.pathname));
        let container_id = cgroup.as_deref().and_then(container_id);
        let k8s = container_id.as_deref().zip(self.pod_logs.as_mut()).and_then(|(id, logs)| logs.get(id));
        let meta = ProcMeta {
            comm: stat.comm,
            exe: proc.exe().ok().map(|p| p.to_string_lossy().into_owned()),
            container_id,
            cgroup,
            cmdline: self.with_cmdline.then(|| proc.cmdline().ok().map(|a| a.join(" "))).flatten(),
            k8s,
        };
        self.entries.insert(pid, (stat.starttime, meta.clone()));
        Some(meta)
    }

    /// Forgets pids not in `live`, so the cache stays as small as the output.
    pub fn retain(&mut self, live: &std::collections::HashSet<u32>) {
        self.entries.retain(|pid, _| live.contains(pid));
    }
}

/// The container id a cgroup path names, for the runtimes people use:
/// docker (`/docker/<id>`, `docker-<id>.scope`), containerd
/// (`cri-containerd-<id>.scope`, `/kubepods/.../<id>`), cri-o
/// (`crio-<id>.scope`) and podman (`libpod-<id>.scope`). Ids are 64 hex
/// digits; the innermost one wins.
pub fn container_id(cgroup: &str) -> Option<String> {
    cgroup.rsplit('/').find_map(|part| {
        let part = part.strip_suffix(".scope").unwrap_or(part);
        let id = part.rsplit(['-', ':']).next().unwrap_or(part);
        (id.len() == 64 && id.bytes().all(|b| b.is_ascii_hexdigit())).then(|| id.to_string())
    })
}

/// The Kubernetes pod uid in a cgroup v2 path, when there is one: the
/// cgroupfs driver's `/kubepods/<qos>/pod<uid>/...` or the systemd driver's
/// `kubepods-<qos>-pod<uid with _ for ->.slice`.
pub fn pod_uid(cgroup: &str) -> Option<String> {
    if !cgroup.contains("kubepods") {
        return None;
    }
    cgroup.split('/').rev().find_map(|part| {
        let part = part.strip_suffix(".slice").unwrap_or(part);
        let uid = match part.strip_prefix("pod") {
            Some(u) => u.to_string(),
            None => part.rsplit_once("-pod")?.1.replace('_', "-"),
        };
        (uid.len() == 36 && uid.bytes().all(|b| b.is_ascii_hexdigit() || b == b'-')).then_some(uid)
    })
}

/// This host's name (the kernel's).
pub fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname").map(|s| s.trim().to_string()).unwrap_or_default()
}

/// The inode of the kernel's initial PID namespace, the host's: fixed
/// (`PROC_PID_INIT_INO`, include/linux/proc_ns.h, since Linux 3.8).
const INIT_PID_NS_INO: u64 = 0xEFFF_FFFC;

/// `Err` when this process is not in the host's PID namespace, saying what
/// to do. The probes report host pids; in another namespace /proc names
/// other processes (or none) by them, so every name, cgroup and --pid would
/// be wrong.
pub fn host_pid_namespace() -> Result<(), String> {
    use std::os::unix::fs::MetadataExt as _;
    let ns = std::fs::metadata("/proc/self/ns/pid").map_err(|e| format!("cannot read /proc/self/ns/pid: {e}"))?;
    if ns.ino() == INIT_PID_NS_INO {
        return Ok(());
    }
    Err(format!(
        "not in the host's PID namespace (this one is pid:[{}]): the kernel reports host pids, which this /proc \
         cannot resolve, so every process name, cgroup and --pid would be wrong. Run in the host's PID namespace: \
         `hostPID: true` in a Kubernetes pod spec, `--pid=host` for podman or docker",
        ns.ino()
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kubelet_log_links_name_pod_namespace_and_container() {
        let id = "ab".repeat(32);
        let (got, names) = PodLogs::parse(&format!("web-7d9f_shop_nginx-sidecar-{id}.log")).unwrap();
        assert_eq!(got, id);
        assert_eq!(
            names,
            K8sNames { namespace: "shop".into(), pod: "web-7d9f".into(), container: "nginx-sidecar".into() }
        );
        assert!(PodLogs::parse(&format!("web_shop_nginx-{id}.txt")).is_none());
        assert!(PodLogs::parse("web_shop_nginx-1234.log").is_none());
        assert!(PodLogs::parse(&format!("web_nginx-{id}.log")).is_none());
    }

    #[test]
    fn pod_uids_of_both_cgroup_drivers() {
        let uid = "0f1e2d3c-4b5a-6978-8796-a5b4c3d2e1f0";
        let systemd = format!(
            "/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod{}.slice/cri-containerd-{ID}.scope",
            uid.replace('-', "_")
        );
        assert_eq!(pod_uid(&systemd).as_deref(), Some(uid));
        assert_eq!(pod_uid(&format!("/kubepods/besteffort/pod{uid}/{ID}")).as_deref(), Some(uid));
        assert_eq!(pod_uid("/system.slice/docker-abc.scope"), None);
    }

    const ID: &str = "3f4e5d6c7b8a99887766554433221100ffeeddccbbaa00112233445566778899";

    #[test]
    fn ids_survive_a_path_relative_to_the_agents_cgroup_namespace() {
        // What an agent in a pod with a cgroup namespace of its own reads
        // for a process of another pod.
        let uid = "0f1e2d3c-4b5a-6978-8796-a5b4c3d2e1f0";
        let path = format!(
            "/../../../kubepods-burstable.slice/kubepods-burstable-pod{}.slice/cri-containerd-{ID}.scope",
            uid.replace('-', "_")
        );
        assert_eq!(container_id(&path).as_deref(), Some(ID));
        assert_eq!(pod_uid(&path).as_deref(), Some(uid));
    }

    #[test]
    fn container_ids_of_common_runtimes() {
        for path in [
            format!("/system.slice/docker-{ID}.scope"),
            format!("/docker/{ID}"),
            format!(
                "/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod1234.slice/cri-containerd-{ID}.scope"
            ),
            format!("/kubepods/besteffort/pod0c0d/{ID}"),
            format!("/machine.slice/libpod-{ID}.scope/container"),
            format!("/kubepods.slice/crio-{ID}.scope"),
        ] {
            assert_eq!(container_id(&path).as_deref(), Some(ID), "{path}");
        }
    }

    #[test]
    fn no_container_id_outside_containers() {
        for path in ["/", "/user.slice/user-0.slice/session-1.scope", "/system.slice/sshd.service"] {
            assert_eq!(container_id(path), None, "{path}");
        }
    }

    #[test]
    fn reads_this_process() {
        let me = std::process::id();
        let meta = ProcCache::new(true).get(me).expect("own /proc entry");
        assert!(!meta.comm.is_empty());
        assert!(meta.exe.is_some());
        assert!(meta.cmdline.is_some());
        assert!(ProcCache::new(false).get(me).unwrap().cmdline.is_none());
    }
}

//! The filters every probe applies in the kernel (`--pid`, `--comm`,
//! `--cgroup`): names of the globals and the pid map size. The kernel side is
//! `agent_ebpf::filters!`, the user side `hostprobe::probes::FilterGlobals`.

/// Non-zero: only processes in the probe's pid map are traced.
pub const FILTER_PIDS: &str = "FILTER_PIDS";
/// Non-zero: only threads whose comm equals [`FILTER_COMM_VALUE`].
pub const FILTER_COMM: &str = "FILTER_COMM";
pub const FILTER_COMM_VALUE: &str = "FILTER_COMM_VALUE";
/// Non-zero: only tasks in this cgroup (v2 id) or below it.
pub const FILTER_CGROUP_ID: &str = "FILTER_CGROUP_ID";
/// Depth of that cgroup below the root (for `bpf_get_current_ancestor_cgroup_id`).
pub const FILTER_CGROUP_LEVEL: &str = "FILTER_CGROUP_LEVEL";
/// Size of each probe's pid map.
pub const MAX_PIDS: u32 = 1_024;

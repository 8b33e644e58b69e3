//! Baselines: `hostprobe record` keeps a whole run's figures per process
//! group in one file ([`Recording`]), and `hostprobe compare` says what
//! changed between two of them, only where the change is larger than the
//! histograms' resolution and than what the samples allow
//! ([`stats`], [`compare`]).
//!
//! The file is JSON, versioned by `format` and `version`, and documented in
//! the README ("Baselines"). Fields are only ever added within a version; a
//! reader refuses a version it does not know.

pub mod compare;
pub mod record;
pub mod stats;

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::hist::Histogram;

/// `format` of every recording.
pub const FORMAT: &str = "hostprobe-recording";
/// The version this build writes and reads.
pub const VERSION: u32 = 1;

/// One recorded run.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Recording {
    /// Always [`FORMAT`].
    pub format: String,
    /// [`VERSION`].
    pub version: u32,
    /// The hostprobe that recorded it (its probes are built into it).
    pub hostprobe_version: String,
    pub host: String,
    /// `uname -r` and the machine, e.g. `6.18.44 x86_64`.
    pub kernel: String,
    /// The command line that made it.
    pub command: Vec<String>,
    /// Start of the run, RFC 3339.
    pub started: String,
    /// Measured length of the run.
    pub duration_ns: u64,
    /// Length of a slice (the run is read every slice; the last may be shorter).
    pub slice_ns: u64,
    /// How many slices the run had.
    pub slices: u32,
    /// The filters it ran with (`--pid`, `--comm`, `--cgroup`), as given.
    pub filters: Vec<String>,
    pub probes: Vec<ProbeInfo>,
    /// How histogram bucket indexes map to nanoseconds.
    pub histogram_layout: Layout,
    /// Per process group (name and cgroup), largest thread time first.
    pub groups: Vec<Group>,
    /// Block I/O per device and operation, every process together.
    pub devices: Vec<Disk>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ProbeInfo {
    pub name: String,
    pub active: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// Events it lost over the run (full maps): figures are short by these.
    pub lost: u64,
}

/// The shared histogram layout, spelled out so a reader needs no code of
/// ours: bucket 0 is `[0, first_split_ns)`; then each power of two from
/// `first_split_ns` up is split into `sub_buckets` equal buckets; the last
/// bucket (`buckets - 1`) is open-ended.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct Layout {
    pub kind: String,
    pub sub_buckets: u32,
    pub first_split_ns: u64,
    pub buckets: u32,
}

impl Layout {
    pub fn ours() -> Self {
        use agent_common::hist::{BUCKETS, MIN_EXP, SUB_BITS};
        Self {
            kind: "log-linear".into(),
            sub_buckets: 1 << SUB_BITS,
            first_split_ns: 1 << MIN_EXP,
            buckets: BUCKETS as u32,
        }
    }
}

/// A process group: every process with this name in this cgroup, over the
/// whole run. Pids are not part of it: they change from run to run.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Group {
    /// Process name (comm).
    pub comm: String,
    /// cgroup v2 path; empty when not known (a process gone before it was
    /// first read).
    pub cgroup: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub container_id: Option<String>,
    /// The pids seen (at most 100 listed).
    pub pids: Vec<u32>,
    /// Thread time (on a CPU, waiting for one, blocked, asleep: summed over
    /// threads) per slice: the denominator of every share.
    pub thread_ns: Vec<u64>,
    /// Thread time by where it went (the `diagnose` shares: on_cpu,
    /// runqueue, disk, network, lock, sleep, other), ns per slice.
    pub time_split: BTreeMap<String, Vec<u64>>,
    /// Time asleep per syscall the threads slept in (whole episodes, where
    /// they ended), ns per slice, and how many episodes in all.
    pub sleep_by_syscall: BTreeMap<String, Sleep>,
    /// Waits for a CPU, one sample per wait.
    pub runqueue: Dist,
    /// Per syscall name.
    pub syscalls: BTreeMap<String, Syscall>,
    /// Block I/O it submitted, per device and operation.
    pub disk: Vec<Disk>,
    /// TCP per remote endpoint and direction.
    pub tcp: Vec<Tcp>,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Sleep {
    pub count: u64,
    /// ns per slice.
    pub ns: Vec<u64>,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Syscall {
    pub count: u64,
    pub errors: u64,
    /// Returns whose start was not seen (not in the latency).
    pub missed_starts: u64,
    pub latency: Dist,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Disk {
    pub device: String,
    pub op: String,
    pub count: u64,
    pub bytes: u64,
    pub errors: u64,
    /// Bio submitted to issued to the driver.
    pub queue: Dist,
    /// Issued to completed.
    pub service: Dist,
    /// Submitted to completed.
    pub total: Dist,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Tcp {
    /// `address:port` for connections this group made; `address:*` for
    /// connections it accepted (the client's port changes every time).
    pub remote: String,
    /// `connect` or `accept`.
    pub direction: String,
    pub connections: u64,
    pub bytes_sent: u64,
    pub bytes_received: u64,
    pub retransmits: u64,
    pub resets: u64,
    /// Failed connects: refused (reset) and timed out.
    pub refused: u64,
    pub timeouts: u64,
    /// Smoothed RTT samples.
    pub rtt: Dist,
    /// Handshake times.
    pub connect: Dist,
}

/// A distribution over the whole run: its exact histogram, and its
/// quantiles in each slice that had samples (for the noise within a run).
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Dist {
    pub count: u64,
    /// Exact sum of the values, where the probe keeps one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sum_ns: Option<u64>,
    pub max_ns: u64,
    /// `[bucket index, count]` of the non-empty buckets, in order.
    pub buckets: Vec<[u64; 2]>,
    /// `[slice, count, p50, p90, p99]` of each slice with samples.
    pub slices: Vec<[u64; 5]>,
}

impl Dist {
    /// The histogram back from the file; `None` if an index is out of the layout.
    pub fn histogram(&self) -> Option<Histogram> {
        let mut h = Histogram::default();
        for [i, c] in &self.buckets {
            let i = usize::try_from(*i).ok().filter(|i| *i < agent_common::hist::BUCKETS)?;
            if !h.add(i, *c) {
                return None;
            }
        }
        Some(h)
    }
}

/// Why a recording cannot be read.
#[derive(Debug, thiserror::Error)]
pub enum ReadError {
    #[error("{path}: {source} (is it there, and readable?)")]
    Io { path: String, source: std::io::Error },
    #[error("{path}: not a hostprobe recording ({detail}); make one with `hostprobe record --out FILE`")]
    NotARecording { path: String, detail: String },
    #[error("{path}: recording format version {found}, this hostprobe reads version {VERSION}; compare it with the hostprobe that made it ({made_by})")]
    Version { path: String, found: u32, made_by: String },
    #[error("{path}: {detail}")]
    Damaged { path: String, detail: String },
}

/// Reads and checks a recording.
pub fn read(path: &str) -> Result<Recording, ReadError> {
    let text = std::fs::read(path).map_err(|source| ReadError::Io { path: path.into(), source })?;
    // The head first: a newer version may not parse as this one.
    #[derive(Deserialize)]
    struct Head {
        format: Option<String>,
        version: Option<u32>,
        hostprobe_version: Option<String>,
    }
    let head: Head = serde_json::from_slice(&text)
        .map_err(|e| ReadError::NotARecording { path: path.into(), detail: format!("not JSON: {e}") })?;
    if head.format.as_deref() != Some(FORMAT) {
        let detail = format!("its format is {:?}, not {FORMAT:?}", head.format.unwrap_or_default());
        return Err(ReadError::NotARecording { path: path.into(), detail });
    }
    if head.version != Some(VERSION) {
        return Err(ReadError::Version {
            path: path.into(),
            found: head.version.unwrap_or(0),
            made_by: head.hostprobe_version.unwrap_or_else(|| "unknown".into()),
        });
    }
    let r: Recording =
        serde_json::from_slice(&text).map_err(|e| ReadError::Damaged { path: path.into(), detail: e.to_string() })?;
    if r.histogram_layout != Layout::ours() {
        let detail = format!("histogram layout {:?} is not this build's {:?}", r.histogram_layout, Layout::ours());
        return Err(ReadError::Damaged { path: path.into(), detail });
    }
    Ok(r)
}

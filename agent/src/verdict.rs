//! A verdict on one process: its bottleneck, and the figures that decided
//! it. The types alone, shared by the report that carries verdicts and
//! [`crate::diagnose`], which makes them.

use serde::Serialize;

#[derive(Debug, Clone, Copy, Serialize, PartialEq, Eq)]
#[serde(rename_all = "kebab-case")]
pub enum Kind {
    CpuBound,
    CpuStarved,
    Disk,
    Network,
    Lock,
    SyscallHeavy,
    Idle,
}

impl Kind {
    pub fn name(self) -> &'static str {
        match self {
            Kind::CpuBound => "cpu-bound",
            Kind::CpuStarved => "cpu-starved",
            Kind::Disk => "disk",
            Kind::Network => "network",
            Kind::Lock => "lock",
            Kind::SyscallHeavy => "syscall-heavy",
            Kind::Idle => "idle",
        }
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct Verdict {
    pub kind: Kind,
    /// What kind of disk or network wait, where the evidence says.
    pub detail: String,
    /// The figures that decided it.
    pub evidence: Vec<String>,
    /// What to look at next.
    pub next: String,
    /// Thread time in the largest share (ns), for ranking.
    #[serde(skip)]
    pub weight_ns: u64,
}

//! hostprobe: a host-level performance agent on eBPF.
//!
//! Layout: [`probes`] (one module per probe, behind the [`probes::Probe`]
//! trait), [`agent`] (loads probes, collects each interval), [`report`] (what
//! an interval says), [`output`] (text and JSON), [`top`] (the interactive
//! view), [`cli`], [`check`],
//! [`run`].

pub mod agent;
pub mod btf;
pub mod check;
pub mod cli;
pub mod collector;
pub mod diagnose;
pub mod ebpf;
pub mod export;
pub mod fleet;
pub mod hist;
pub mod metrics;
pub mod otlp;
pub mod output;
pub mod probes;
pub mod procinfo;
pub mod prom;
pub mod report;
pub mod run;
pub mod stacks;
pub mod symbols;
pub mod syscalls;
pub mod top;
pub mod wire;

//! A program that does nothing, for `hostprobe check --tracepoint NAME`: it
//! proves that a raw tracepoint exists and accepts a BPF program here.
#![no_std]
#![no_main]

use aya_ebpf::{macros::raw_tracepoint, programs::RawTracePointContext};

#[raw_tracepoint]
pub fn check_noop(_ctx: RawTracePointContext) -> i32 {
    0
}

agent_ebpf::panic_handler!();

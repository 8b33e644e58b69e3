//! Types shared by hostprobe's eBPF programs (`agent-ebpf`) and its userspace
//! agent (`agent`): one module per probe, plus the histogram layout every
//! probe uses.
//!
//! Everything here is `#[repr(C)]`, `Copy`, free of `bool` and hidden padding,
//! and has its size pinned, because both sides read the same bytes.
#![no_std]

pub mod disk;
pub mod filter;
pub mod hist;
pub mod offcpu;
pub mod syscall;
pub mod tcp;

/// Implements `aya::Pod` for types that cross the kernel/user boundary, on the
/// userspace side only.
#[macro_export]
macro_rules! user_pod {
    ($($t:ty),* $(,)?) => {
        $(
            #[cfg(feature = "user")]
            // SAFETY: the type is #[repr(C)], Copy, has no padding (its size is
            // pinned by a const assertion) and every bit pattern is valid.
            unsafe impl aya::Pod for $t {}
        )*
    };
}

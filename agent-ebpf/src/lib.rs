//! Helpers shared by the eBPF programs. Each probe is its own binary (one
//! ELF object per probe, so one that fails to load does not take the others
//! down): see `src/<probe>.rs`.
#![no_std]
// The BPF target's `core` has no atomic read-modify-write types, but the
// instruction set has atomic adds: use them through the intrinsic.
#![cfg_attr(target_arch = "bpf", feature(core_intrinsics))]
#![cfg_attr(target_arch = "bpf", allow(internal_features))]

/// Adds `v` to a counter that other CPUs may update at the same time
/// (a BPF `lock add`; the result is unused, so no fetch variant is needed).
///
/// # Safety
/// `p` must point into a map value, aligned for `T`, that lives for the
/// duration of the call.
#[inline(always)]
pub unsafe fn atomic_add<T: Copy>(p: *mut T, v: T) {
    #[cfg(target_arch = "bpf")]
    // SAFETY: guaranteed by the caller.
    unsafe {
        core::intrinsics::atomic_xadd::<T, T, { core::intrinsics::AtomicOrdering::Relaxed }>(p, v);
    }
    // Host builds (cargo's build-dependency) only type-check this crate.
    #[cfg(not(target_arch = "bpf"))]
    let _ = (p, v);
}

/// Reads a global that userspace set at load time. The volatile read stops
/// the compiler from folding the placeholder value; the verifier then sees the
/// real (read-only) value and prunes the branches it makes dead.
#[macro_export]
macro_rules! global {
    ($g:ident) => {
        // SAFETY: a plain read of a static; userspace only writes it before load.
        unsafe { core::ptr::read_volatile(&$g) }
    };
}

/// The panic handler every probe binary needs; the verifier rejects programs
/// with reachable panics anyway, so this is never called.
#[macro_export]
macro_rules! panic_handler {
    () => {
        #[cfg(not(test))]
        #[panic_handler]
        fn panic(_info: &core::panic::PanicInfo) -> ! {
            loop {}
        }
    };
}

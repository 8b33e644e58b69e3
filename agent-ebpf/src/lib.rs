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

/// The `--pid`/`--comm`/`--cgroup` filters every probe applies: defines the
/// globals userspace sets (names in `agent_common::filter`), the pid map
/// `$pids`, and `fn traced(pid_tgid: u64) -> bool` for the current task.
#[macro_export]
macro_rules! filters {
    ($pids:ident) => {
        #[unsafe(no_mangle)]
        static FILTER_PIDS: u32 = 0;
        #[unsafe(no_mangle)]
        static FILTER_COMM: u32 = 0;
        #[unsafe(no_mangle)]
        static FILTER_COMM_VALUE: [u8; 16] = [0; 16];
        #[unsafe(no_mangle)]
        static FILTER_CGROUP_ID: u64 = 0;
        #[unsafe(no_mangle)]
        static FILTER_CGROUP_LEVEL: u32 = 0;

        #[aya_ebpf::macros::map]
        static $pids: aya_ebpf::maps::HashMap<u32, u8> =
            aya_ebpf::maps::HashMap::with_max_entries(agent_common::filter::MAX_PIDS, 0);

        /// Whether any filter is set (a constant after load).
        #[inline(always)]
        #[allow(dead_code)]
        fn filtering() -> bool {
            $crate::global!(FILTER_PIDS) != 0
                || $crate::global!(FILTER_COMM) != 0
                || $crate::global!(FILTER_CGROUP_ID) != 0
        }

        /// Whether the current task passes the filters.
        #[inline(always)]
        fn traced(pid_tgid: u64) -> bool {
            if $crate::global!(FILTER_PIDS) != 0 && $pids.get_ptr(&((pid_tgid >> 32) as u32)).is_none() {
                return false;
            }
            let cgroup = $crate::global!(FILTER_CGROUP_ID);
            if cgroup != 0 {
                let level = $crate::global!(FILTER_CGROUP_LEVEL) as i32;
                // SAFETY: a helper call without pointer arguments.
                if unsafe { aya_ebpf::helpers::generated::bpf_get_current_ancestor_cgroup_id(level) } != cgroup {
                    return false;
                }
            }
            if $crate::global!(FILTER_COMM) != 0 {
                let want = $crate::global!(FILTER_COMM_VALUE);
                match aya_ebpf::helpers::bpf_get_current_comm() {
                    Ok(comm) if comm == want => {}
                    _ => return false,
                }
            }
            true
        }
    };
}

/// A probe's per-CPU event counters: defines map `$map` with one u64 per
/// variant of `$counter` (`$n` of them) and `fn count(c: $counter)`.
#[macro_export]
macro_rules! counters {
    ($map:ident, $counter:ty, $n:expr) => {
        #[aya_ebpf::macros::map]
        static $map: aya_ebpf::maps::PerCpuArray<u64> = aya_ebpf::maps::PerCpuArray::with_max_entries($n, 0);

        #[inline(always)]
        fn count(c: $counter) {
            if let Some(p) = $map.get_ptr_mut(c as u32) {
                // SAFETY: a per-CPU value; programs do not nest on one CPU.
                unsafe { *p += 1 };
            }
        }
    };
}

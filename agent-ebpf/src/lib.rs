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

/// A task-local storage map (`BPF_MAP_TYPE_TASK_STORAGE`): one value per
/// thread, kept in its `task_struct` and freed with it, so it never fills
/// with dead threads and survives a thread id changing (exec by a thread
/// other than the leader). A lookup reads a per-task cache: no hash, no
/// lock. aya-ebpf 0.2 has no wrapper for it; the kernel needs BTF for the
/// key and value, so it is a BTF map: declare it with
/// `#[aya_ebpf::macros::btf_map]`. Userspace cannot list it (aya 0.14 calls
/// it unsupported: load with `allow_unsupported_maps`).
#[repr(C)]
pub struct TaskStorage<T> {
    // The layout libbpf and aya read map definitions from: each field's
    // type carries the value (an array length), the pointers stay null.
    r#type: *const [i32; 29],
    key: *const i32,
    value: *const T,
    max_entries: *const [i32; 0],
    // BPF_F_NO_PREALLOC: required for local storage.
    map_flags: *const [i32; 1],
}

// SAFETY: a placeholder definition that is never dereferenced; the kernel
// serialises access to the values it stands for.
unsafe impl<T> Sync for TaskStorage<T> {}

impl<T> TaskStorage<T> {
    #[allow(clippy::new_without_default)]
    pub const fn new() -> Self {
        Self {
            r#type: core::ptr::null(),
            key: core::ptr::null(),
            value: core::ptr::null(),
            max_entries: core::ptr::null(),
            map_flags: core::ptr::null(),
        }
    }

    #[inline(always)]
    fn get(&self, flags: u64) -> Option<*mut T> {
        // SAFETY: helper calls; the task is the current one (a trusted BTF
        // pointer), the map pointer is this definition, which the loader
        // relocates to the map.
        let p = unsafe {
            let task = aya_ebpf::helpers::generated::bpf_get_current_task_btf();
            aya_ebpf::helpers::generated::bpf_task_storage_get(
                core::ptr::from_ref(self).cast_mut().cast(),
                task,
                core::ptr::null_mut(),
                flags,
            )
        };
        (!p.is_null()).then_some(p.cast())
    }

    /// The current thread's value, if it has one.
    #[inline(always)]
    pub fn current(&self) -> Option<*mut T> {
        self.get(0)
    }

    /// The current thread's value, created zeroed if it has none; `None`
    /// when the kernel cannot allocate it.
    #[inline(always)]
    pub fn current_or_create(&self) -> Option<*mut T> {
        // BPF_LOCAL_STORAGE_GET_F_CREATE
        self.get(1)
    }
}

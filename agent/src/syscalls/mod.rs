//! Syscall numbers to names, for the architecture the agent runs on.
//!
//! The tables are generated from the Linux UAPI headers (`asm/unistd_64.h` for
//! x86_64, `asm-generic/unistd.h` for aarch64) with the syscalls added since
//! (up to Linux 6.18) appended by hand. Numbers without a name print as
//! `syscall_<nr>`, so a newer kernel is never misreported.
//!
//! Regenerate the x86_64 table's body (then append newer syscalls by hand):
//!
//! ```sh
//! awk '/^#define __NR_/ { sub("__NR_", "", $2); n[$3] = $2; if ($3 > max) max = $3 }
//!      END { for (i = 0; i <= max; i++) printf "    \"%s\",\n", n[i] }' \
//!     /usr/include/x86_64-linux-gnu/asm/unistd_64.h
//! ```

#[cfg(not(target_arch = "aarch64"))]
mod x86_64;
#[cfg(not(target_arch = "aarch64"))]
use x86_64::NAMES;

#[cfg(target_arch = "aarch64")]
mod aarch64;
#[cfg(target_arch = "aarch64")]
use aarch64::NAMES;

use std::borrow::Cow;

/// The syscall's name, or `syscall_<nr>` when this table does not know it.
pub fn name(nr: u32) -> Cow<'static, str> {
    match NAMES.get(nr as usize) {
        Some(n) if !n.is_empty() => Cow::Borrowed(n),
        _ => Cow::Owned(format!("syscall_{nr}")),
    }
}

/// The number of a syscall by name, for filters and tests.
pub fn number(name: &str) -> Option<u32> {
    NAMES.iter().position(|n| *n == name).map(|i| i as u32)
}

/// Numbers the kernel returns from twice: in the parent and, with 0, in a new
/// child (or thread) that never entered them. Their child-side exits are not
/// missed starts.
pub fn fork_like() -> [u32; 4] {
    let nr = |n| number(n).unwrap_or(u32::MAX);
    [nr("clone"), nr("clone3"), nr("fork"), nr("vfork")]
}

/// Offset of the syscall number in `struct pt_regs` (the first argument of the
/// `sys_exit` raw tracepoint): `orig_ax` on x86_64, `syscallno` on aarch64.
pub const PT_REGS_NR_OFFSET: u32 = if cfg!(target_arch = "aarch64") { 280 } else { 120 };

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip() {
        for n in ["read", "getppid", "nanosleep", "openat", "futex", "clone3"] {
            let nr = number(n).unwrap_or_else(|| panic!("{n} missing"));
            assert_eq!(name(nr), n);
        }
        assert_eq!(name(100_000), "syscall_100000");
    }

    #[cfg(target_arch = "x86_64")]
    #[test]
    fn x86_64_numbers_match_the_abi() {
        assert_eq!(number("read"), Some(0));
        assert_eq!(number("getppid"), Some(110));
        assert_eq!(number("openat"), Some(257));
        assert_eq!(number("clone3"), Some(435));
        assert_eq!(name(469), "file_setattr");
    }
}

//! Instruction pointers to function names: the kernel's from
//! `/proc/kallsyms`, a process's from the ELF symbol tables of the files
//! it has mapped (`/proc/<pid>/maps`), with Rust and C++ names demangled.

use std::{
    collections::HashMap,
    path::{Path, PathBuf},
};

use object::{Object, ObjectSegment, ObjectSymbol};

/// Sorted (address, name) pairs; a lookup finds the nearest symbol at or
/// below an address.
#[derive(Default)]
struct Table(Vec<(u64, String)>);

impl Table {
    fn sort(mut self) -> Self {
        self.0.sort_by_key(|(a, _)| *a);
        self
    }

    fn find(&self, addr: u64) -> Option<&str> {
        let i = self.0.partition_point(|(a, _)| *a <= addr);
        (i > 0).then(|| self.0[i - 1].1.as_str())
    }
}

/// One ELF file's function symbols and how file offsets map to addresses.
struct Elf {
    symbols: Table,
    /// (file offset, size, virtual address) of each loadable segment.
    segments: Vec<(u64, u64, u64)>,
}

impl Elf {
    fn load(path: &Path) -> Option<Elf> {
        let data = std::fs::read(path).ok()?;
        let file = object::File::parse(&*data).ok()?;
        let mut symbols = Table::default();
        for sym in file.symbols().chain(file.dynamic_symbols()) {
            if sym.kind() == object::SymbolKind::Text && sym.address() != 0 {
                if let Ok(name) = sym.name() {
                    symbols.0.push((sym.address(), demangle(name)));
                }
            }
        }
        let segments = file
            .segments()
            .map(|s| {
                let (offset, size) = s.file_range();
                (offset, size, s.address())
            })
            .collect();
        Some(Elf { symbols: symbols.sort(), segments })
    }

    fn name_at_offset(&self, offset: u64) -> Option<&str> {
        let (seg_off, _, vaddr) = self.segments.iter().find(|(o, size, _)| offset >= *o && offset < o + size)?;
        self.symbols.find(offset - seg_off + vaddr)
    }
}

fn demangle(name: &str) -> String {
    format!("{:#}", rustc_demangle::demangle(name))
}

/// A mapped file of a process: [start, end) at file `offset`.
struct Mapping {
    start: u64,
    end: u64,
    offset: u64,
    path: PathBuf,
}

#[derive(Default)]
pub struct Symbolizer {
    kernel: Option<Table>,
    elves: HashMap<PathBuf, Option<Elf>>,
    maps: HashMap<u32, Vec<Mapping>>,
}

impl Symbolizer {
    /// Remembers where `pid` has its files mapped now; call while it runs,
    /// since a process that has exited can no longer be read.
    pub fn snapshot(&mut self, pid: u32) {
        let Ok(text) = std::fs::read_to_string(format!("/proc/{pid}/maps")) else {
            return;
        };
        let mut maps = Vec::new();
        for line in text.lines() {
            let f: Vec<&str> = line.split_whitespace().collect();
            if f.len() < 6 || !f[1].contains('x') || !f[5].starts_with('/') {
                continue;
            }
            let Some((s, e)) = f[0].split_once('-') else { continue };
            let (Ok(start), Ok(end), Ok(offset)) =
                (u64::from_str_radix(s, 16), u64::from_str_radix(e, 16), u64::from_str_radix(f[2], 16))
            else {
                continue;
            };
            // Read the file through the process's root, so containers work.
            let path = PathBuf::from(format!("/proc/{pid}/root{}", f[5]));
            maps.push(Mapping { start, end, offset, path });
        }
        // Symbol tables now, while /proc/<pid>/root still leads to the
        // files: a process that exits before the end of a recording is
        // still symbolized.
        for m in &maps {
            self.elves.entry(m.path.clone()).or_insert_with(|| Elf::load(&m.path));
        }
        if !maps.is_empty() {
            self.maps.insert(pid, maps);
        }
    }

    /// A kernel address's function, or its address in hex.
    pub fn kernel(&mut self, ip: u64) -> String {
        let table = self.kernel.get_or_insert_with(read_kallsyms);
        table.find(ip).map(str::to_string).unwrap_or_else(|| format!("{ip:#x}"))
    }

    /// A user address's function in `pid`, `[file]` when the file has no
    /// symbol for it, or the address in hex when nothing is mapped there.
    pub fn user(&mut self, pid: u32, ip: u64) -> String {
        let Some(m) = self.maps.get(&pid).and_then(|ms| ms.iter().find(|m| ip >= m.start && ip < m.end)) else {
            return format!("{ip:#x}");
        };
        let offset = ip - m.start + m.offset;
        let path = m.path.clone();
        let elf = self.elves.entry(path.clone()).or_insert_with(|| Elf::load(&path));
        match elf.as_ref().and_then(|e| e.name_at_offset(offset)) {
            Some(name) => name.to_string(),
            None => {
                let file = path.file_name().map(|f| f.to_string_lossy().into_owned()).unwrap_or_default();
                format!("[{file}]")
            }
        }
    }
}

/// Function symbols of the running kernel (addresses read as 0 without
/// CAP_SYSLOG; then kernel frames print as addresses).
fn read_kallsyms() -> Table {
    let mut t = Table::default();
    if let Ok(text) = std::fs::read_to_string("/proc/kallsyms") {
        for line in text.lines() {
            let mut f = line.split_whitespace();
            let (Some(addr), Some(kind), Some(name)) = (f.next(), f.next(), f.next()) else { continue };
            if !matches!(kind, "t" | "T" | "w" | "W") {
                continue;
            }
            if let Ok(a) = u64::from_str_radix(addr, 16) {
                if a != 0 {
                    t.0.push((a, name.to_string()));
                }
            }
        }
    }
    t.sort()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[inline(never)]
    fn a_function_to_find() -> u64 {
        std::hint::black_box(42)
    }

    #[test]
    fn finds_a_function_of_this_process() {
        let mut s = Symbolizer::default();
        s.snapshot(std::process::id());
        let ip = a_function_to_find as *const () as u64 + 1;
        assert!(s.user(std::process::id(), ip).contains("a_function_to_find"), "{}", s.user(std::process::id(), ip));
        assert!(a_function_to_find() == 42);
    }

    #[test]
    fn finds_kernel_functions() {
        let t = read_kallsyms();
        assert!(t.0.iter().any(|(_, n)| n == "schedule"), "no schedule in kallsyms");
    }
}

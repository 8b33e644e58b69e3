//! Loading eBPF objects and attaching their programs, with errors that say
//! which probe failed, why (the kernel's own reason), and what to do.

use std::{
    io,
    os::fd::{AsFd, AsRawFd},
    path::Path,
};

use crate::status::{MapStatus, ProgramStatus};
use aya::{
    maps::{Map, MapData},
    programs::{ProgramError, RawTracePoint},
    Ebpf, EbpfError, EbpfLoader,
};

/// Where the kernel exposes tracing events.
pub const TRACEFS: &str = "/sys/kernel/tracing";

#[derive(Debug, thiserror::Error)]
pub enum ProbeError {
    #[error("probe {probe}: loading its eBPF object failed: {}", chain(.source.as_ref()))]
    Load { probe: &'static str, source: Box<EbpfError> },
    #[error("probe {probe}: program {program} is missing from its eBPF object (a build problem)")]
    MissingProgram { probe: &'static str, program: &'static str },
    #[error("probe {probe}: map {map} is missing or has the wrong type: {detail}")]
    Map { probe: &'static str, map: &'static str, detail: String },
    #[error("probe {probe}: the kernel rejected program {program}: {}", load_reason(.source.as_ref()))]
    ProgramLoad { probe: &'static str, program: &'static str, source: Box<ProgramError> },
    #[error("probe {probe}: attaching {program} to raw tracepoint {tracepoint} failed: {}", attach_reason(.tracepoint, .source.as_ref()))]
    Attach { probe: &'static str, program: &'static str, tracepoint: String, source: Box<ProgramError> },
    #[error("probe {probe}: reading map {map} failed: {detail}")]
    Read { probe: &'static str, map: &'static str, detail: String },
    #[error("probe {probe}: {detail}")]
    Config { probe: &'static str, detail: String },
}

/// An error and its causes on one line.
fn chain(e: &(dyn std::error::Error + 'static)) -> String {
    let mut s = e.to_string();
    let mut cur = e.source();
    while let Some(c) = cur {
        let cs = c.to_string();
        if !s.contains(&cs) {
            s.push_str(": ");
            s.push_str(&cs);
        }
        cur = c.source();
    }
    if let Some(hint) = errno_hint(e) {
        s.push_str(" (");
        s.push_str(hint);
        s.push(')');
    }
    s
}

/// The first OS error in a chain.
fn os_error<'a>(e: &'a (dyn std::error::Error + 'static)) -> Option<i32> {
    let mut cur = Some(e);
    while let Some(c) = cur {
        if let Some(io) = c.downcast_ref::<io::Error>() {
            if let Some(code) = io.raw_os_error() {
                return Some(code);
            }
        }
        cur = c.source();
    }
    None
}

fn errno_hint(e: &(dyn std::error::Error + 'static)) -> Option<&'static str> {
    match os_error(e)? {
        libc::EPERM | libc::EACCES => Some("run as root, or grant CAP_BPF, CAP_PERFMON and CAP_SYS_RESOURCE"),
        libc::ENOMEM => Some("the kernel could not allocate the maps; lower --max-entries"),
        _ => None,
    }
}

fn load_reason(e: &ProgramError) -> String {
    match e {
        ProgramError::LoadError { io_error, verifier_log } => {
            let log = verifier_log.to_string();
            let tail: Vec<&str> = log.lines().rev().take(6).collect::<Vec<_>>().into_iter().rev().collect();
            let hint = match io_error.raw_os_error() {
                Some(libc::EPERM | libc::EACCES) => "; run as root, or grant CAP_BPF, CAP_PERFMON and CAP_SYS_RESOURCE",
                _ => "; this kernel's verifier does not accept it: please report it with `hostprobe check` output",
            };
            format!("{io_error}{hint}; verifier says: {}", tail.join(" | "))
        }
        other => chain(other),
    }
}

fn attach_reason(tracepoint: &str, e: &ProgramError) -> String {
    match os_error(e) {
        Some(libc::ENOENT) => format!(
            "this kernel has no tracepoint named {tracepoint:?} (ENOENT); \
             list the ones it has with `ls {TRACEFS}/events/*/`"
        ),
        _ => chain(e),
    }
}

/// Mounts tracefs when it is missing. Raw tracepoints do not need it, but
/// classic tracepoints do, and so do `check`'s listings. Returns what it did.
pub fn ensure_tracefs() -> Result<TracefsState, String> {
    match std::fs::metadata(Path::new(TRACEFS).join("events")) {
        Ok(m) if m.is_dir() => return Ok(TracefsState::Mounted),
        Err(e) if e.kind() == io::ErrorKind::PermissionDenied => {
            return Err(format!("cannot read {TRACEFS} ({e}): only root may; run as root or with CAP_DAC_READ_SEARCH"))
        }
        _ => {}
    }
    let src = c"tracefs";
    let target = c"/sys/kernel/tracing";
    // SAFETY: all pointers are valid NUL-terminated strings; no data argument.
    let rc = unsafe { libc::mount(src.as_ptr(), target.as_ptr(), src.as_ptr(), 0, std::ptr::null()) };
    if rc == 0 {
        Ok(TracefsState::MountedNow)
    } else {
        Err(format!(
            "tracefs is not mounted at {TRACEFS} and mounting it failed: {}; \
             mount it with `mount -t tracefs tracefs {TRACEFS}`",
            io::Error::last_os_error()
        ))
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TracefsState {
    Mounted,
    MountedNow,
}

/// A loader for one probe's object. aya's loader parses the kernel's BTF
/// as it is made (about 20 MiB while it lives), so ours (about 8 MiB) is
/// dropped first: both at once were the agent's peak memory. A probe reads
/// its offsets from BTF before it makes its loader; the next probe parses
/// ours again (a few milliseconds).
/// Task storage maps (`agent_ebpf::TaskStorage`), which aya 0.14 calls
/// unsupported, are allowed: the kernel side alone uses them.
pub fn loader<'a>() -> EbpfLoader<'a> {
    forget_kernel_types();
    let mut loader = EbpfLoader::new();
    loader.allow_unsupported_maps();
    loader
}

/// Loads one probe's eBPF object.
pub fn load(probe: &'static str, object: &[u8], loader: &mut EbpfLoader) -> Result<Ebpf, ProbeError> {
    loader.load(object).map_err(|source| ProbeError::Load { probe, source: Box::new(source) })
}

/// Loads `program` and attaches it to raw tracepoint `tracepoint`. The link
/// lives as long as `ebpf`.
pub fn attach_raw_tracepoint(
    ebpf: &mut Ebpf,
    probe: &'static str,
    program: &'static str,
    tracepoint: &str,
) -> Result<(), ProbeError> {
    let prog: &mut RawTracePoint = ebpf
        .program_mut(program)
        .and_then(|p| p.try_into().ok())
        .ok_or(ProbeError::MissingProgram { probe, program })?;
    prog.load().map_err(|source| ProbeError::ProgramLoad { probe, program, source: Box::new(source) })?;
    prog.attach(tracepoint).map_err(|source| ProbeError::Attach {
        probe,
        program,
        tracepoint: tracepoint.to_string(),
        source: Box::new(source),
    })?;
    Ok(())
}

/// Checks that tracepoint `category/event` exists and its record has
/// `fields`: for a raw tracepoint, whose arguments the record's fields
/// mirror, this tells that the kernel passes the arguments a program reads.
pub fn expect_event(probe: &'static str, category: &str, event: &str, fields: &[&str]) -> Result<(), ProbeError> {
    let declared = declared_fields(probe, category, event)?;
    match fields.iter().find(|f| !declared.iter().any(|(name, _)| name == *f)) {
        Some(field) => Err(missing_field(probe, category, event, field)),
        None => Ok(()),
    }
}

fn missing_field(probe: &'static str, category: &str, event: &str, field: &str) -> ProbeError {
    ProbeError::Config {
        probe,
        detail: format!(
            "tracepoint {category}/{event} has no field {field:?} on this kernel \
             ({TRACEFS}/events/{category}/{event}/format): it is older or newer than hostprobe knows"
        ),
    }
}

/// (name, offset) of every field of a classic tracepoint's record.
fn declared_fields(probe: &'static str, category: &str, event: &str) -> Result<Vec<(String, u32)>, ProbeError> {
    let path = format!("{TRACEFS}/events/{category}/{event}/format");
    let format = std::fs::read_to_string(&path).map_err(|e| ProbeError::Config {
        probe,
        detail: format!(
            "cannot read {path} ({e}): this kernel lacks the tracepoint {category}/{event}, or tracefs is not mounted"
        ),
    })?;
    Ok(format
        .lines()
        .filter_map(|l| l.trim().strip_prefix("field:"))
        .filter_map(|l| {
            let mut parts = l.split(';');
            let name = parts.next()?.trim().rsplit(' ').next()?.split('[').next()?;
            let offset = parts.find_map(|p| p.trim().strip_prefix("offset:"))?.parse().ok()?;
            Some((name.to_string(), offset))
        })
        .collect())
}

/// The byte offset of `path` (`member.member...`, anonymous unions seen
/// through) in kernel struct `ty`, from the kernel's own BTF. For the few
/// fields a tracepoint record does not carry; the eBPF side reads them with
/// bpf_probe_read_kernel at the offset it is given.
pub fn kernel_offset(probe: &'static str, ty: &str, path: &str) -> Result<u32, ProbeError> {
    let config = |detail: String| ProbeError::Config { probe, detail };
    vmlinux().map_err(config)?.member_offset(ty, path).map_err(config)
}

/// Checks that raw tracepoint `event` passes its programs `args` first (C
/// types, as [`crate::btf::Btf::tracepoint_args`] spells them), from the
/// kernel's BTF: a program reads its arguments by position.
pub fn expect_raw_args(probe: &'static str, event: &str, args: &[&str]) -> Result<(), ProbeError> {
    let config = |detail: String| ProbeError::Config { probe, detail };
    let got = vmlinux().map_err(config)?.tracepoint_args(event).map_err(config)?;
    if got.len() < args.len() || got.iter().zip(args).any(|(g, a)| g != a) {
        return Err(config(format!(
            "tracepoint {event} passes ({}) on this kernel, hostprobe reads ({}): the kernel is older or newer \
             than hostprobe knows; please report this with the kernel version",
            got.join(", "),
            args.join(", ")
        )));
    }
    Ok(())
}

/// The value of enumerator `name` of kernel enum `ty`, from the kernel's
/// BTF: for flag bits and operation codes a program tests.
pub fn kernel_enum_value(probe: &'static str, ty: &str, name: &str) -> Result<i64, ProbeError> {
    let config = |detail: String| ProbeError::Config { probe, detail };
    vmlinux().map_err(config)?.enum_value(ty, name).map_err(config)
}

/// The kernel's BTF, read at the first use and kept until
/// [`forget_kernel_types`] or the next [`loader`].
fn vmlinux() -> Result<std::sync::Arc<crate::btf::Btf>, String> {
    let mut cached = VMLINUX.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
    if let Some(btf) = &*cached {
        return Ok(btf.clone());
    }
    let bytes = std::fs::read(BTF_VMLINUX)
        .map_err(|e| format!("cannot read {BTF_VMLINUX} ({e}): the kernel was built without CONFIG_DEBUG_INFO_BTF"))?;
    let btf = crate::btf::Btf::parse(bytes).map_err(|e| format!("cannot parse {BTF_VMLINUX}: {e}"))?;
    Ok(cached.insert(std::sync::Arc::new(btf)).clone())
}

static VMLINUX: std::sync::Mutex<Option<std::sync::Arc<crate::btf::Btf>>> = std::sync::Mutex::new(None);

/// Forgets the kernel's BTF (5 MiB) once the probes have their offsets.
pub fn forget_kernel_types() {
    VMLINUX.lock().unwrap_or_else(std::sync::PoisonError::into_inner).take();
}

const BTF_VMLINUX: &str = "/sys/kernel/btf/vmlinux";

/// Sizes of every map of a loaded object, read from the kernel.
pub fn map_sizes(ebpf: &Ebpf) -> Vec<MapStatus> {
    let mut out: Vec<MapStatus> = ebpf
        .maps()
        .filter(|(name, _)| !name.starts_with('.'))
        .filter_map(|(name, map)| {
            let data = map_data(map)?;
            let info = data.info().ok()?;
            Some(MapStatus {
                name: name.to_string(),
                entries: None,
                max_entries: info.max_entries(),
                memlock_bytes: memlock(data).unwrap_or(0),
            })
        })
        .collect();
    out.sort_by(|a, b| a.name.cmp(&b.name));
    out
}

fn map_data(map: &Map) -> Option<&MapData> {
    match map {
        Map::Array(d)
        | Map::HashMap(d)
        | Map::LruHashMap(d)
        | Map::PerCpuArray(d)
        | Map::PerCpuHashMap(d)
        | Map::PerCpuLruHashMap(d)
        | Map::RingBuf(d)
        | Map::StackTraceMap(d) => Some(d),
        _ => None,
    }
}

/// `memlock:` from `/proc/self/fdinfo/<fd>`: the kernel's charge for the map.
fn memlock(data: &MapData) -> Option<u64> {
    let fd = data.fd().as_fd().as_raw_fd();
    let info = std::fs::read_to_string(format!("/proc/self/fdinfo/{fd}")).ok()?;
    info.lines().find_map(|l| l.strip_prefix("memlock:")).and_then(|v| v.trim().parse().ok())
}

/// Reads a whole hash map with `BPF_MAP_LOOKUP_BATCH`: a handful of
/// syscalls instead of two per entry (aya 0.14 iterates entry by entry).
/// Entries added or removed during the read may or may not be seen.
pub struct BatchReader<K, V> {
    fd: std::os::fd::OwnedFd,
    keys: Vec<K>,
    values: Vec<V>,
}

/// Entries per `BPF_MAP_LOOKUP_BATCH` call; the kernel needs room for at
/// least one whole hash bucket, far less than this.
const BATCH: usize = 1024;

impl<K: aya::Pod, V: aya::Pod> BatchReader<K, V> {
    /// Takes its own duplicate of the map's descriptor.
    pub fn new(map: &Map) -> io::Result<Self> {
        let data = map_data(map).ok_or_else(|| io::Error::other("not a hash or array map"))?;
        let fd = data.fd().as_fd().try_clone_to_owned()?;
        Ok(Self { fd, keys: Vec::new(), values: Vec::new() })
    }

    /// Every (key, value) in the map, in the kernel's order.
    pub fn read(&mut self) -> io::Result<impl Iterator<Item = (&K, &V)>> {
        #[repr(C)]
        #[derive(Default)]
        struct BatchAttr {
            in_batch: u64,
            out_batch: u64,
            keys: u64,
            values: u64,
            count: u32,
            map_fd: u32,
            elem_flags: u64,
            flags: u64,
        }
        const BPF_MAP_LOOKUP_BATCH: libc::c_long = 24;

        self.keys.clear();
        self.values.clear();
        let mut token = [0u64; 2]; // opaque position (a u32 bucket for hash maps)
        let mut first = true;
        loop {
            let have = self.keys.len();
            self.keys.reserve(BATCH);
            self.values.reserve(BATCH);
            let mut attr = BatchAttr {
                in_batch: if first { 0 } else { token.as_ptr() as u64 },
                out_batch: token.as_mut_ptr() as u64,
                // SAFETY: reserve() made room for BATCH more elements past `have`.
                keys: unsafe { self.keys.as_mut_ptr().add(have) } as u64,
                values: unsafe { self.values.as_mut_ptr().add(have) } as u64,
                count: BATCH as u32,
                map_fd: self.fd.as_raw_fd() as u32,
                ..Default::default()
            };
            // SAFETY: attr points at buffers with room for `count` keys and
            // values and at a token buffer; the kernel writes only there.
            let rc = unsafe {
                libc::syscall(
                    libc::SYS_bpf,
                    BPF_MAP_LOOKUP_BATCH,
                    &mut attr as *mut BatchAttr,
                    std::mem::size_of::<BatchAttr>(),
                )
            };
            let err = (rc < 0).then(io::Error::last_os_error);
            let got = (attr.count as usize).min(BATCH);
            // SAFETY: the kernel initialised `got` elements of each buffer; K
            // and V are Pod (any bytes are valid).
            unsafe {
                self.keys.set_len(have + got);
                self.values.set_len(have + got);
            }
            match err {
                None => first = false,
                Some(e) if e.raw_os_error() == Some(libc::ENOENT) => break,
                Some(e) => return Err(e),
            }
        }
        Ok(self.keys.iter().zip(self.values.iter()))
    }
}

/// (`run_cnt`, `run_time_ns`, `recursion_misses`) of a loaded program, read
/// with one BPF_OBJ_GET_INFO_BY_FD (aya's own program info read 0 runs here
/// for raw tracepoint programs the kernel's fdinfo showed thousands for).
fn run_stats(fd: std::os::fd::BorrowedFd<'_>) -> (u64, u64, u64) {
    use std::os::fd::AsRawFd;
    #[repr(C)]
    struct InfoByFd {
        bpf_fd: u32,
        info_len: u32,
        info: u64,
    }
    // SAFETY: plain data, all-zero is valid.
    let mut info: aya_obj::generated::bpf_prog_info = unsafe { std::mem::zeroed() };
    let mut attr = InfoByFd {
        bpf_fd: fd.as_raw_fd() as u32,
        info_len: std::mem::size_of_val(&info) as u32,
        info: &raw mut info as u64,
    };
    // SAFETY: BPF_OBJ_GET_INFO_BY_FD writes at most info_len bytes to info.
    let r = unsafe {
        libc::syscall(
            libc::SYS_bpf,
            aya_obj::generated::bpf_cmd::BPF_OBJ_GET_INFO_BY_FD as libc::c_long,
            &raw mut attr,
            std::mem::size_of::<InfoByFd>(),
        )
    };
    if r == 0 {
        (info.run_cnt, info.run_time_ns, info.recursion_misses)
    } else {
        (0, 0, 0)
    }
}

/// Run statistics of every loaded program of an object.
pub fn program_stats(ebpf: &Ebpf) -> Vec<ProgramStatus> {
    let mut out: Vec<ProgramStatus> = ebpf
        .programs()
        .filter_map(|(name, p)| {
            let (runs, run_time_ns, missed) = run_stats(p.fd().ok()?.as_fd());
            Some(ProgramStatus { name: name.to_string(), runs, run_time_ns, missed })
        })
        .collect();
    out.sort_by(|a, b| a.name.cmp(&b.name));
    out
}

/// Panics unless eBPF object `object` has every map, program and global
/// named: what the user side of a probe reaches by name (a test for each
/// probe calls it; no root needed).
#[cfg(test)]
pub fn assert_object_has(object: &[u8], maps: &[&str], programs: &[&str], globals: &[&str]) {
    use object::{Object as _, ObjectSymbol as _};
    let obj = aya_obj::Object::parse(object).expect("parse the eBPF object");
    for m in maps {
        assert!(obj.maps.contains_key(*m), "no map {m}; the object has {:?}", obj.maps.keys().collect::<Vec<_>>());
    }
    for p in programs {
        assert!(obj.programs.contains_key(*p), "no program {p}; it has {:?}", obj.programs.keys().collect::<Vec<_>>());
    }
    let elf = object::File::parse(object).expect("parse the eBPF ELF");
    let symbols: Vec<&str> = elf.symbols().filter_map(|s| s.name().ok()).collect();
    for g in globals {
        assert!(symbols.contains(g), "no global {g}");
    }
}

/// The filter globals every probe has (`agent_ebpf::filters!`).
#[cfg(test)]
pub const FILTER_GLOBALS: [&str; 5] = [
    agent_common::filter::FILTER_PIDS,
    agent_common::filter::FILTER_COMM,
    agent_common::filter::FILTER_COMM_VALUE,
    agent_common::filter::FILTER_CGROUP_ID,
    agent_common::filter::FILTER_CGROUP_LEVEL,
];

#[cfg(test)]
mod tests {
    #[test]
    fn kernel_offsets_come_from_btf() {
        // Layouts stable for a decade on 64-bit kernels.
        assert_eq!(super::kernel_offset("test", "sk_buff", "cb").unwrap(), 40);
        let segs = super::kernel_offset("test", "tcp_skb_cb", "tcp_gso_segs").unwrap();
        eprintln!("tcp_gso_segs at {segs}");
        assert!(segs < 48);
        // Operation codes fixed since 4.10.
        assert_eq!(super::kernel_enum_value("test", "req_op", "REQ_OP_WRITE").unwrap(), 1);
        assert!(super::kernel_enum_value("test", "req_flag_bits", "__REQ_PREFLUSH").unwrap() > 8);
        assert!(super::kernel_enum_value("test", "req_op", "NO_SUCH").is_err());
        let e = super::kernel_offset("test", "sk_buff", "no_such_field").unwrap_err().to_string();
        assert!(e.contains("sk_buff.no_such_field"), "{e}");
    }

    /// Every offset and value the probes ask for, against an independent
    /// BTF parser (btfparse, a dev-dependency only: it holds about 60 MiB).
    #[test]
    fn every_offset_the_probes_use_agrees_with_btfparse() {
        struct Bytes(Vec<u8>);
        impl btfparse::Readable for Bytes {
            fn read(&self, offset: u64, buffer: &mut [u8]) -> btfparse::Result<()> {
                let at = offset as usize;
                let src =
                    self.0.get(at..at + buffer.len()).ok_or(std::io::Error::from(std::io::ErrorKind::UnexpectedEof))?;
                buffer.copy_from_slice(src);
                Ok(())
            }
        }
        let theirs = btfparse::TypeInformation::new(&Bytes(std::fs::read(super::BTF_VMLINUX).unwrap())).unwrap();
        let fields = [
            ("sock", "sk_protocol"),
            ("sock", "__sk_common.skc_family"),
            ("sock", "__sk_common.skc_num"),
            ("sock", "__sk_common.skc_dport"),
            ("sock", "__sk_common.skc_rcv_saddr"),
            ("sock", "__sk_common.skc_daddr"),
            ("sock", "__sk_common.skc_v6_rcv_saddr"),
            ("sock", "__sk_common.skc_v6_daddr"),
            ("sock", "__sk_common.skc_state"),
            ("tcp_sock", "srtt_us"),
            ("tcp_sock", "total_retrans"),
            ("sk_buff", "cb"),
            ("tcp_skb_cb", "tcp_gso_segs"),
            ("task_struct", "flags"),
            ("gendisk", "major"),
            ("gendisk", "first_minor"),
            ("request", "q"),
            ("request", "cmd_flags"),
            ("request", "__data_len"),
            ("request", "bio"),
            ("request_queue", "disk"),
            ("bio", "bi_bdev"),
            ("bio", "bi_opf"),
            ("bio", "bi_iter.bi_size"),
            ("block_device", "bd_disk"),
        ];
        for (ty, path) in fields {
            let ours = super::kernel_offset("test", ty, path).unwrap();
            let id = theirs.id_of(ty).unwrap();
            let Ok((_, btfparse::Offset::ByteOffset(at))) = theirs.offset_of(id, path) else { panic!("{ty}.{path}") };
            assert_eq!(ours, at, "{ty}.{path}");
        }
        for (ty, name) in [
            ("req_op", "REQ_OP_READ"),
            ("req_op", "REQ_OP_WRITE"),
            ("req_op", "REQ_OP_FLUSH"),
            ("req_op", "REQ_OP_DISCARD"),
            ("req_flag_bits", "__REQ_PREFLUSH"),
        ] {
            let Some(btfparse::TypeVariant::Enum(e)) = theirs.from_id(theirs.id_of(ty).unwrap()) else {
                panic!("{ty}")
            };
            let v = e.named_value_list().iter().find(|v| v.name == name).unwrap().value;
            let theirs = match v {
                btfparse::Integer32Value::Signed(v) => i64::from(v),
                btfparse::Integer32Value::Unsigned(v) => i64::from(v),
            };
            assert_eq!(super::kernel_enum_value("test", ty, name).unwrap(), theirs, "{ty}::{name}");
        }
    }
}

//! The few answers the probes need from the kernel's BTF
//! (`/sys/kernel/btf/vmlinux`): a struct member's byte offset, an
//! enumerator's value and a raw tracepoint's arguments.
//!
//! Read in place: the file stays as it is in memory (about 5 MiB) with one
//! index entry per type. A parser that builds every type as an object
//! (btfparse, which this replaced) holds about 60 MiB at start-up, which a
//! DaemonSet's memory limit has to cover. Format: the kernel's
//! Documentation/bpf/btf.rst.

/// A BTF blob and where each of its types starts.
pub struct Btf {
    data: Vec<u8>,
    /// Type id `i` (from 1) starts at `types[i - 1]`.
    types: Vec<usize>,
    strings: std::ops::Range<usize>,
}

// Kinds (btf.rst, "BTF Type Encoding").
const INT: u32 = 1;
const PTR: u32 = 2;
const ARRAY: u32 = 3;
const STRUCT: u32 = 4;
const UNION: u32 = 5;
const ENUM: u32 = 6;
const TYPEDEF: u32 = 8;
const VOLATILE: u32 = 9;
const CONST: u32 = 10;
const RESTRICT: u32 = 11;
const FUNC_PROTO: u32 = 13;
const VAR: u32 = 14;
const DATASEC: u32 = 15;
const DECL_TAG: u32 = 17;
const TYPE_TAG: u32 = 18;
const ENUM64: u32 = 19;

/// A type's common header: `name_off`, `info`, `size`/`type`.
#[derive(Clone, Copy)]
struct Type {
    name_off: u32,
    kind: u32,
    kind_flag: bool,
    vlen: usize,
    size_or_type: u32,
    /// Where the kind's own data (members, values) begins.
    body: usize,
}

impl Btf {
    pub fn parse(data: Vec<u8>) -> Result<Btf, String> {
        let word = |at: usize| -> Result<u32, String> {
            data.get(at..at + 4)
                .map(|b| u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
                .ok_or_else(|| format!("truncated at byte {at}"))
        };
        if data.get(0..2) != Some(&[0x9f, 0xeb]) {
            return Err("not little-endian BTF (bad magic)".into());
        }
        let hdr_len = word(4)? as usize;
        let (type_off, type_len) = (word(8)? as usize, word(12)? as usize);
        let (str_off, str_len) = (word(16)? as usize, word(20)? as usize);
        let (type_start, type_end) = (hdr_len + type_off, hdr_len + type_off + type_len);
        let strings = hdr_len + str_off..hdr_len + str_off + str_len;
        if type_end > data.len() || strings.end > data.len() {
            return Err("sections past the end of the file".into());
        }
        let mut types = Vec::with_capacity(type_len / 16);
        let mut at = type_start;
        while at < type_end {
            types.push(at);
            let info = word(at + 4)?;
            let (kind, vlen) = ((info >> 24) & 0x1f, (info & 0xffff) as usize);
            let body = match kind {
                INT | VAR | DECL_TAG => 4,
                ARRAY => 12,
                STRUCT | UNION | DATASEC | ENUM64 => 12 * vlen,
                ENUM | FUNC_PROTO => 8 * vlen,
                _ => 0,
            };
            at += 12 + body;
        }
        if at != type_end {
            return Err("the type section does not end on a type".into());
        }
        Ok(Btf { data, types, strings })
    }

    fn word(&self, at: usize) -> u32 {
        let b = &self.data[at..at + 4];
        u32::from_le_bytes([b[0], b[1], b[2], b[3]])
    }

    fn ty(&self, id: u32) -> Option<Type> {
        let at = *self.types.get((id as usize).checked_sub(1)?)?;
        let info = self.word(at + 4);
        Some(Type {
            name_off: self.word(at),
            kind: (info >> 24) & 0x1f,
            kind_flag: info >> 31 != 0,
            vlen: (info & 0xffff) as usize,
            size_or_type: self.word(at + 8),
            body: at + 12,
        })
    }

    fn name(&self, off: u32) -> &str {
        let start = self.strings.start + off as usize;
        let bytes = self.data.get(start..self.strings.end).unwrap_or_default();
        let end = bytes.iter().position(|b| *b == 0).unwrap_or(bytes.len());
        std::str::from_utf8(&bytes[..end]).unwrap_or("")
    }

    /// The first type named `name` of one of `kinds`.
    fn find(&self, name: &str, kinds: &[u32]) -> Option<Type> {
        (1..=self.types.len() as u32)
            .filter_map(|id| self.ty(id))
            .find(|t| kinds.contains(&t.kind) && self.name(t.name_off) == name)
    }

    /// `id` with typedefs and qualifiers looked through.
    fn resolve(&self, mut id: u32) -> Option<Type> {
        for _ in 0..32 {
            let t = self.ty(id)?;
            match t.kind {
                TYPEDEF | VOLATILE | CONST | RESTRICT | TYPE_TAG => id = t.size_or_type,
                _ => return Some(t),
            }
        }
        None
    }

    /// Member `name` of struct or union `t`, anonymous members looked
    /// through: (its type id, bit offset, bit-field size).
    fn member(&self, t: Type, name: &str) -> Option<(u32, u32, u32)> {
        for i in 0..t.vlen {
            let at = t.body + 12 * i;
            let (name_off, ty, offset) = (self.word(at), self.word(at + 4), self.word(at + 8));
            let (bits, size) = if t.kind_flag { (offset & 0xff_ffff, offset >> 24) } else { (offset, 0) };
            if name_off != 0 {
                if self.name(name_off) == name {
                    return Some((ty, bits, size));
                }
                continue;
            }
            if let Some(inner) = self.resolve(ty).filter(|x| matches!(x.kind, STRUCT | UNION)) {
                if let Some((ty, b, size)) = self.member(inner, name) {
                    return Some((ty, bits + b, size));
                }
            }
        }
        None
    }

    /// The byte offset of `path` (`member.member...`) in struct or union
    /// `ty`.
    pub fn member_offset(&self, ty: &str, path: &str) -> Result<u32, String> {
        let mut t = self.find(ty, &[STRUCT, UNION]).ok_or_else(|| format!("this kernel's BTF has no struct {ty}"))?;
        let mut bits = 0;
        for (i, name) in path.split('.').enumerate() {
            let (member, at, size) =
                self.member(t, name).ok_or_else(|| format!("{ty}.{path} not found in this kernel's BTF"))?;
            bits += at;
            if size != 0 || bits % 8 != 0 {
                return Err(format!("{ty}.{path} is a bit field; hostprobe reads whole bytes"));
            }
            if i + 1 < path.split('.').count() {
                t = self
                    .resolve(member)
                    .filter(|x| matches!(x.kind, STRUCT | UNION))
                    .ok_or_else(|| format!("{ty}.{path}: {name} is not a struct or union"))?;
            }
        }
        Ok(bits / 8)
    }

    /// The C types of raw tracepoint `event`'s arguments, as its programs
    /// get them (the tracepoint's `TP_PROTO`, from the kernel's
    /// `btf_trace_<event>` typedef, less the leading `void *`): e.g.
    /// `["bool", "struct task_struct *"]`.
    pub fn tracepoint_args(&self, event: &str) -> Result<Vec<String>, String> {
        let name = format!("btf_trace_{event}");
        let proto = self
            .find(&name, &[TYPEDEF])
            .and_then(|t| self.resolve(t.size_or_type))
            .filter(|t| t.kind == PTR)
            .and_then(|t| self.resolve(t.size_or_type))
            .filter(|t| t.kind == FUNC_PROTO)
            .ok_or_else(|| format!("this kernel's BTF has no tracepoint {event} ({name})"))?;
        Ok((0..proto.vlen).skip(1).map(|i| self.type_name(self.word(proto.body + 8 * i + 4))).collect())
    }

    /// Type `id` as C spells it, qualifiers left out.
    fn type_name(&self, id: u32) -> String {
        let Some(t) = self.ty(id) else { return "void".into() };
        let name = self.name(t.name_off);
        match t.kind {
            PTR => format!("{} *", self.type_name(t.size_or_type)),
            STRUCT => format!("struct {name}"),
            UNION => format!("union {name}"),
            ENUM | ENUM64 => format!("enum {name}"),
            VOLATILE | CONST | RESTRICT | TYPE_TAG => self.type_name(t.size_or_type),
            _ if name.is_empty() => "?".into(),
            _ => name.to_string(),
        }
    }

    /// The value of enumerator `name` of enum `ty`.
    pub fn enum_value(&self, ty: &str, name: &str) -> Result<i64, String> {
        let t = self.find(ty, &[ENUM, ENUM64]).ok_or_else(|| format!("this kernel's BTF has no enum {ty}"))?;
        let signed = t.kind_flag;
        let step = if t.kind == ENUM { 8 } else { 12 };
        (0..t.vlen)
            .map(|i| t.body + step * i)
            .find(|at| self.name(self.word(*at)) == name)
            .map(|at| {
                let lo = self.word(at + 4);
                match (t.kind, signed) {
                    (ENUM, true) => i64::from(lo as i32),
                    (ENUM, false) => i64::from(lo),
                    _ => (u64::from(self.word(at + 8)) << 32 | u64::from(lo)) as i64,
                }
            })
            .ok_or_else(|| format!("enum {ty} has no {name} in this kernel's BTF"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn vmlinux() -> Btf {
        Btf::parse(std::fs::read("/sys/kernel/btf/vmlinux").expect("this kernel's BTF")).expect("parse")
    }

    #[test]
    fn offsets_agree_with_the_kernels_own_layout() {
        let btf = vmlinux();
        // The first members of their structs, by definition at 0.
        assert_eq!(btf.member_offset("sock", "__sk_common").unwrap(), 0);
        assert_eq!(btf.member_offset("tcp_sock", "inet_conn").unwrap(), 0);
        // Through anonymous unions and structs: skc_daddr shares its union
        // with skc_addrpair (8 bytes: daddr, then rcv_saddr); skc_dport with
        // skc_portpair (dport, then num).
        let daddr = btf.member_offset("sock_common", "skc_daddr").unwrap();
        assert_eq!(btf.member_offset("sock_common", "skc_addrpair").unwrap(), daddr);
        assert_eq!(btf.member_offset("sock_common", "skc_rcv_saddr").unwrap(), daddr + 4);
        let dport = btf.member_offset("sock_common", "skc_dport").unwrap();
        assert_eq!(btf.member_offset("sock_common", "skc_portpair").unwrap(), dport);
        assert_eq!(btf.member_offset("sock_common", "skc_num").unwrap(), dport + 2);
        // A path through a nested struct adds up.
        assert_eq!(
            btf.member_offset("sock", "__sk_common.skc_daddr").unwrap(),
            btf.member_offset("sock", "__sk_common").unwrap() + daddr
        );
        let iter = btf.member_offset("bio", "bi_iter").unwrap();
        assert_eq!(
            btf.member_offset("bio", "bi_iter.bi_size").unwrap(),
            iter + btf.member_offset("bvec_iter", "bi_size").unwrap()
        );
        // Bit fields and missing members are refused, not guessed.
        assert!(btf.member_offset("sock", "sk_no_such_member").unwrap_err().contains("not found"));
        assert!(btf.member_offset("no_such_struct", "x").unwrap_err().contains("no struct"));
    }

    #[test]
    fn enum_values_agree_with_the_uapi() {
        let btf = vmlinux();
        // Fixed by the kernel's user ABI (include/uapi/linux/bpf.h).
        assert_eq!(btf.enum_value("bpf_map_type", "BPF_MAP_TYPE_HASH").unwrap(), 1);
        assert_eq!(btf.enum_value("bpf_prog_type", "BPF_PROG_TYPE_RAW_TRACEPOINT").unwrap(), 17);
        assert!(btf.enum_value("bpf_map_type", "BPF_MAP_TYPE_NONE").is_err());
    }

    #[test]
    fn tracepoint_arguments_are_the_kernels_tp_proto() {
        let btf = vmlinux();
        // include/trace/events/sched.h (prev_state since 5.18) and
        // include/trace/events/syscalls.h.
        assert_eq!(
            btf.tracepoint_args("sched_switch").unwrap(),
            ["bool", "struct task_struct *", "struct task_struct *", "unsigned int"]
        );
        assert_eq!(btf.tracepoint_args("sched_wakeup").unwrap(), ["struct task_struct *"]);
        assert_eq!(btf.tracepoint_args("sys_enter").unwrap(), ["struct pt_regs *", "long int"]);
        assert!(btf.tracepoint_args("no_such_event").unwrap_err().contains("no tracepoint"));
    }

    #[test]
    fn a_truncated_file_is_refused() {
        let data = std::fs::read("/sys/kernel/btf/vmlinux").unwrap();
        assert!(Btf::parse(data[..data.len() / 2].to_vec()).is_err());
        assert!(Btf::parse(b"not btf at all, not at all".to_vec()).is_err());
    }
}

//! TCP probe, user side: loads `agent-ebpf/src/tcp.rs` with the kernel
//! struct offsets it reads at (from BTF), attaches it, and
//! reports each connection's interval: bytes, RTT, retransmits, resets,
//! connect latency; closed connections are reported once more, then
//! dropped from the kernel map.

use std::{
    collections::{HashMap as StdHashMap, HashSet},
    net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr},
};

use agent_common::tcp::{self as common, ClosedKey, Conn, Counter};
use aya::{
    maps::{HashMap, MapData},
    Ebpf,
};

use super::{FilterGlobals, Interval, Options, Probe, ProbeError, ProbeStatus, Spec};
use crate::{ebpf, hist::Dist};

pub const NAME: &str = "tcp";

pub const SPEC: Spec = Spec {
    name: NAME,
    about:
        "TCP connections per process: bytes, smoothed RTT, connect latency, retransmits, resets (sock/tcp tracepoints)",
    load: |opts| Ok(Box::new(TcpProbe::load(opts)?)),
};

static OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/tcp"));

/// (program, category, tracepoint, fields its record must have), state
/// changes last.
const PROGRAMS: [(&str, &str, &str, &[&str]); 8] = [
    ("tcp_send_length", "sock", "sock_send_length", &common::LENGTH_FIELDS),
    ("tcp_recv_length", "sock", "sock_recv_length", &common::RECV_FIELDS),
    ("tcp_rtt", "tcp", "tcp_probe", &common::PROBE_FIELDS),
    ("tcp_retransmit", "tcp", "tcp_retransmit_skb", &common::RETRANSMIT_FIELDS),
    ("tcp_receive_reset", "tcp", "tcp_receive_reset", &common::RESET_FIELDS),
    ("tcp_send_reset", "tcp", "tcp_send_reset", &common::RESET_FIELDS),
    ("tcp_destroy", "tcp", "tcp_destroy_sock", &common::DESTROY_FIELDS),
    ("tcp_set_state", "sock", "inet_sock_set_state", &common::STATE_FIELDS),
];

/// The kernel struct offsets the programs read at, from BTF.
fn offsets() -> Result<common::Offsets, ProbeError> {
    let at = |ty, path| ebpf::kernel_offset(NAME, ty, path);
    Ok(common::Offsets {
        protocol: at("sock", "sk_protocol")?,
        family: at("sock", "__sk_common.skc_family")?,
        num: at("sock", "__sk_common.skc_num")?,
        dport: at("sock", "__sk_common.skc_dport")?,
        rcv_saddr: at("sock", "__sk_common.skc_rcv_saddr")?,
        daddr: at("sock", "__sk_common.skc_daddr")?,
        v6_rcv_saddr: at("sock", "__sk_common.skc_v6_rcv_saddr")?,
        v6_daddr: at("sock", "__sk_common.skc_v6_daddr")?,
        srtt_us: at("tcp_sock", "srtt_us")?,
        skb_gso_segs: at("sk_buff", "cb")? + at("tcp_skb_cb", "tcp_gso_segs")?,
        state: at("sock", "__sk_common.skc_state")?,
        total_retrans: at("tcp_sock", "total_retrans")?,
    })
}

/// One connection over one interval.
#[derive(Debug, Clone)]
pub struct ConnData {
    pub local: Option<SocketAddr>,
    pub remote: Option<SocketAddr>,
    pub state: i32,
    pub active: bool,
    /// Handshake time (see `Conn::connect_ns`).
    pub connect_ns: Option<u64>,
    /// "refused" or "timeout" for a connect that failed.
    pub failed: Option<&'static str>,
    pub closed: bool,
    pub bytes_sent: u64,
    pub bytes_received: u64,
    pub retransmits: u64,
    pub resets: u64,
    /// Smoothed-RTT samples of the interval, and the latest value.
    pub rtt: Dist,
    pub rtt_last_us: u64,
}

fn addr(family: u16, raw: &[u8; 16], port: u16) -> Option<SocketAddr> {
    let ip = match family {
        2 => IpAddr::V4(Ipv4Addr::new(raw[0], raw[1], raw[2], raw[3])),
        common::AF_INET6 => IpAddr::V6(Ipv6Addr::from(*raw)),
        _ => return None,
    };
    Some(SocketAddr::new(ip, port))
}

pub struct TcpProbe {
    bpf: Ebpf,
    reader: ebpf::BatchReader<u64, Conn>,
    closed: HashMap<MapData, ClosedKey, Conn>,
    closed_reader: ebpf::BatchReader<ClosedKey, Conn>,
    counters: super::Counters,
    /// Each connection's figures at the last read.
    prev: StdHashMap<ClosedKey, Conn>,
    status: ProbeStatus,
}

/// One connection's interval: its figures less those of the last read.
fn report(
    prev: &mut StdHashMap<ClosedKey, Conn>,
    seen: &mut HashSet<ClosedKey>,
    key: ClosedKey,
    c: &Conn,
    out: &mut Interval,
) {
    seen.insert(key);
    let prev = prev.entry(key).or_insert(Conn::ZERO);
    if prev == c {
        return;
    }
    // The kernel keeps no RTT maximum: the top of the highest non-empty
    // bucket stands for it. The sum is exact.
    let rtt = Dist::between(&c.rtt, &prev.rtt, u64::MAX, u64::MAX, c.rtt_sum_ns, prev.rtt_sum_ns);
    let d = ConnData {
        local: addr(c.family, &c.saddr, c.sport),
        remote: addr(c.family, &c.daddr, c.dport),
        state: c.state,
        active: c.active != 0,
        connect_ns: (c.connect_ns != 0).then_some(c.connect_ns),
        failed: match c.failed {
            common::FAILED_REFUSED => Some("refused"),
            common::FAILED_TIMEOUT => Some("timeout"),
            _ => None,
        },
        closed: c.closed != 0,
        bytes_sent: c.bytes_sent.wrapping_sub(prev.bytes_sent),
        bytes_received: c.bytes_received.wrapping_sub(prev.bytes_received),
        retransmits: c.retransmits.wrapping_sub(prev.retransmits),
        resets: c.resets.wrapping_sub(prev.resets),
        rtt,
        rtt_last_us: c.srtt_us,
    };
    *prev = *c;
    out.process(c.tgid).tcp.push(d);
}

fn map_err(map: &'static str, detail: impl ToString) -> ProbeError {
    ProbeError::Map { probe: NAME, map, detail: detail.to_string() }
}

impl TcpProbe {
    pub fn load(opts: &Options) -> Result<Self, ProbeError> {
        for (_, category, event, fields) in PROGRAMS {
            ebpf::expect_event(NAME, category, event, fields)?;
        }
        let offsets = offsets()?;

        let filters = FilterGlobals::new(opts);
        let mut loader = ebpf::loader();
        filters.apply(&mut loader);
        loader.override_global(common::GLOBAL_OFFSETS, &offsets, true);
        let mut bpf = ebpf::load(NAME, OBJECT, &mut loader)?;
        super::fill_pids(&mut bpf, NAME, common::MAP_PIDS, &opts.pids)?;
        for (program, _, tracepoint, _) in PROGRAMS {
            ebpf::attach_raw_tracepoint(&mut bpf, NAME, program, tracepoint)?;
        }
        let maps = ebpf::map_sizes(&bpf);
        let mut take = |name: &'static str| bpf.take_map(name).ok_or_else(|| map_err(name, "missing"));
        let conns = take(common::MAP_CONNS)?;
        let reader = ebpf::BatchReader::new(&conns).map_err(|e| map_err("TCP_CONNS", e))?;
        let closed = take(common::MAP_CLOSED)?;
        let closed_reader = ebpf::BatchReader::new(&closed).map_err(|e| map_err("TCP_CLOSED", e))?;
        let closed = HashMap::try_from(closed).map_err(|e| map_err("TCP_CLOSED", e))?;
        let counters = super::Counters::new(
            NAME,
            common::MAP_COUNTERS,
            take(common::MAP_COUNTERS)?,
            Counter::ALL.iter().map(|c| (c.name(), c.is_error())).collect(),
        )?;
        Ok(Self {
            bpf,
            reader,
            closed,
            closed_reader,
            counters,
            prev: StdHashMap::new(),
            status: ProbeStatus::active(NAME, maps),
        })
    }
}

impl Probe for TcpProbe {
    fn name(&self) -> &'static str {
        NAME
    }

    fn collect(&mut self, out: &mut Interval) -> Result<(), ProbeError> {
        let read_err = |map, e: std::io::Error| ProbeError::Read { probe: NAME, map, detail: e.to_string() };
        let mut seen = HashSet::new();
        // Live sockets' connections first, then those the kernel moved to
        // TCP_CLOSED: one moved between the two reads is seen in both, and
        // each delta is taken against the read before it (both keyed by
        // socket and first-seen stamp), so nothing counts twice.
        let mut entries = 0u64;
        for (sk, c) in self.reader.read().map_err(|e| read_err(common::MAP_CONNS, e))? {
            entries += 1;
            report(&mut self.prev, &mut seen, ClosedKey { sk: *sk, born_ns: c.born_ns }, c, out);
        }
        let mut moved = Vec::new();
        for (key, c) in self.closed_reader.read().map_err(|e| read_err(common::MAP_CLOSED, e))? {
            moved.push(*key);
            report(&mut self.prev, &mut seen, *key, c, out);
        }
        // Userspace deletes only from TCP_CLOSED, and only the entries just
        // read, by their exact key: the kernel never writes an entry there
        // again (its socket is destroyed), and a new connection on the same
        // memory has another first-seen stamp, so another key. TCP_CONNS is
        // left to the kernel (see `tcp_destroy`).
        for key in moved {
            let _ = self.closed.remove(&key);
            self.prev.remove(&key);
        }
        self.prev.retain(|k, _| seen.contains(k));
        self.status.set_entries(common::MAP_CONNS, entries);
        self.counters.read(&self.bpf, &mut self.status)
    }

    fn status(&self) -> ProbeStatus {
        self.status.clone()
    }
}

#[cfg(test)]
mod object_tests {
    use super::*;

    #[test]
    fn the_object_has_every_name_this_side_uses() {
        let maps = [
            common::MAP_CONNS,
            common::MAP_CLOSED,
            common::MAP_ACCEPTED,
            common::MAP_PIDS,
            common::MAP_COUNTERS,
            common::MAP_ZERO,
        ];
        let programs: Vec<&str> = PROGRAMS.iter().map(|p| p.0).collect();
        ebpf::assert_object_has(
            OBJECT,
            &maps,
            &programs,
            &[&[common::GLOBAL_OFFSETS][..], &ebpf::FILTER_GLOBALS].concat(),
        );
    }
}

//! TCP probe, user side: loads `agent-ebpf/src/tcp.rs`, attaches it, and
//! reports each connection's interval: bytes, RTT, retransmits, resets,
//! connect latency; closed connections are reported once more, then
//! dropped from the kernel map.

use std::{
    collections::HashMap as StdHashMap,
    net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr},
};

use agent_common::tcp::{self as common, Conn, Counter};
use aya::{
    maps::{HashMap, MapData},
    Ebpf, EbpfLoader,
};

use super::{FilterGlobals, Interval, Options, Probe, ProbeError, ProbeStatus, Spec};
use crate::{ebpf, hist::Dist};

pub const NAME: &str = "tcp";

pub const SPEC: Spec = Spec {
    name: NAME,
    about: "TCP connections per process: bytes, smoothed RTT, connect latency, retransmits, resets (sock/tcp tracepoints)",
    load: |opts| Ok(Box::new(TcpProbe::load(opts)?)),
};

static OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/tcp"));

/// (program, category, tracepoint), state changes last.
const PROGRAMS: [(&str, &str, &str); 7] = [
    ("tcp_send_length", "sock", "sock_send_length"),
    ("tcp_recv_length", "sock", "sock_recv_length"),
    ("tcp_rtt", "tcp", "tcp_probe"),
    ("tcp_retransmit", "tcp", "tcp_retransmit_skb"),
    ("tcp_receive_reset", "tcp", "tcp_receive_reset"),
    ("tcp_send_reset", "tcp", "tcp_send_reset"),
    ("tcp_set_state", "sock", "inet_sock_set_state"),
];

/// One connection over one interval.
#[derive(Debug, Clone)]
pub struct ConnData {
    pub local: Option<SocketAddr>,
    pub remote: Option<SocketAddr>,
    pub state: i32,
    pub active: bool,
    /// SYN sent to established (active opens).
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
    conns: HashMap<MapData, u64, Conn>,
    reader: ebpf::BatchReader<u64, Conn>,
    counters: super::Counters,
    prev: StdHashMap<u64, Conn>,
    status: ProbeStatus,
}

fn map_err(map: &'static str, detail: impl ToString) -> ProbeError {
    ProbeError::Map { probe: NAME, map, detail: detail.to_string() }
}

impl TcpProbe {
    pub fn load(opts: &Options) -> Result<Self, ProbeError> {
        let check = |cat, event, fields: &[(&str, u32)]| ebpf::expect_fields(NAME, cat, event, fields);
        check("sock", "inet_sock_set_state", &common::STATE_FIELDS)?;
        check("sock", "sock_send_length", &common::LENGTH_FIELDS)?;
        check("sock", "sock_recv_length", &common::LENGTH_FIELDS)?;
        check("tcp", "tcp_probe", &[("srtt", common::PROBE_SRTT), ("skaddr", common::PROBE_SKADDR)])?;
        check("tcp", "tcp_retransmit_skb", &[("skaddr", common::RETRANSMIT_SKADDR), ("err", common::RETRANSMIT_ERR)])?;
        check("tcp", "tcp_receive_reset", &[("skaddr", common::RECEIVE_RESET_SKADDR)])?;
        check("tcp", "tcp_send_reset", &[("skaddr", common::SEND_RESET_SKADDR)])?;

        let filters = FilterGlobals::new(opts);
        let mut loader = EbpfLoader::new();
        filters.apply(&mut loader);
        let mut bpf = ebpf::load(NAME, OBJECT, &mut loader)?;
        super::fill_pids(&mut bpf, NAME, common::MAP_PIDS, &opts.pids)?;
        for (program, category, tracepoint) in PROGRAMS {
            ebpf::attach_tracepoint(&mut bpf, NAME, program, category, tracepoint)?;
        }
        let maps = ebpf::map_sizes(&bpf);
        let mut take = |name: &'static str| bpf.take_map(name).ok_or_else(|| map_err(name, "missing"));
        let conns = take(common::MAP_CONNS)?;
        let reader = ebpf::BatchReader::new(&conns).map_err(|e| map_err("TCP_CONNS", e))?;
        let conns = HashMap::try_from(conns).map_err(|e| map_err("TCP_CONNS", e))?;
        let counters = super::Counters::new(
            NAME,
            common::MAP_COUNTERS,
            take(common::MAP_COUNTERS)?,
            Counter::ALL.iter().map(|c| (c.name(), c.is_error())).collect(),
        )?;
        Ok(Self { bpf, conns, reader, counters, prev: StdHashMap::new(), status: ProbeStatus::active(NAME, maps) })
    }
}

impl Probe for TcpProbe {
    fn name(&self) -> &'static str {
        NAME
    }

    fn collect(&mut self, out: &mut Interval) -> Result<(), ProbeError> {
        let mut closed = Vec::new();
        let mut entries = 0u64;
        let rows = self
            .reader
            .read()
            .map_err(|e| ProbeError::Read { probe: NAME, map: "TCP_CONNS", detail: e.to_string() })?;
        for (sk, c) in rows {
            entries += 1;
            let prev = self.prev.entry(*sk).or_insert(Conn::ZERO);
            if c.closed != 0 {
                closed.push(*sk);
            }
            if prev == c {
                continue;
            }
            // The kernel keeps no RTT maximum: the top of the highest
            // non-empty bucket stands for it.
            let rtt = Dist::between(&c.rtt, &prev.rtt, u64::MAX, u64::MAX);
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
            out.processes.entry(c.tgid).or_default().tcp.push(d);
        }
        // Closed connections were reported above for the last time.
        for sk in closed {
            let _ = self.conns.remove(&sk);
            self.prev.remove(&sk);
            entries -= 1;
        }
        self.status.set_entries(common::MAP_CONNS, entries);
        self.status.programs = ebpf::program_stats(&self.bpf);
        self.counters.read(&mut self.status)
    }

    fn status(&self) -> ProbeStatus {
        self.status.clone()
    }
}

//! TCP probe: what `agent-ebpf/src/tcp.rs` writes and
//! `agent/src/probes/tcp.rs` reads.
//!
//! Connections are followed by socket address from raw tracepoints (their
//! programs run even when another BPF program is running on the CPU, which
//! a classic tracepoint's would skip: a softirq's retransmit interrupting a
//! process's send, say): `inet_sock_set_state` (open, established, close;
//! an active open runs in the connecting process), `sock_send_length` and
//! `sock_recv_length` (process context: they name the owner and count
//! bytes), `tcp_probe` (smoothed RTT, in softirq), `tcp_retransmit_skb` and
//! `tcp_receive_reset`/`tcp_send_reset`. Raw tracepoints pass the kernel's
//! own pointers: the fields read through them are at [`Offsets`], which the
//! agent takes from the kernel's BTF. The classic records' format files
//! still tell the agent that each event exists with the arguments it
//! expects (the fields named in `*_FIELDS` mirror the arguments).

use crate::hist;

pub const MAP_CONNS: &str = "TCP_CONNS";
pub const MAP_CLOSED: &str = "TCP_CLOSED";
pub const MAP_COUNTERS: &str = "TCP_COUNTERS";
pub const MAP_ZERO: &str = "TCP_ZERO";
pub const MAP_PIDS: &str = "TCP_PIDS";
pub const MAP_ACCEPTED: &str = "TCP_ACCEPTED";

/// Connections whose socket lives (closed ones too, while a process still
/// holds the socket and may read what is queued); only the kernel adds and
/// deletes entries here.
pub const MAX_CONNS: u32 = 8_192;
/// Connections whose socket the kernel destroyed (no process holds it any
/// more), until userspace has read them: moved here by the kernel, keyed by
/// [`ClosedKey`], and deleted by userspace by that exact key.
pub const MAX_CLOSED: u32 = 8_192;
/// Accepted connections waiting for their first send or receive while a
/// filter is set (see [`Accepted`]).
pub const MAX_ACCEPTED: u32 = 8_192;
/// At most one RTT sample per connection this often (a bulk transfer acks
/// thousands of times a second; its RTT does not change that fast).
pub const RTT_SAMPLE_NS: u64 = 10_000_000;

/// Fields each classic record must have: its raw tracepoint passes the
/// arguments they come from (`err`: the third argument of
/// `tcp_retransmit_skb`, Linux 6.10+).
pub const STATE_FIELDS: [&str; 3] = ["skaddr", "oldstate", "newstate"];
pub const LENGTH_FIELDS: [&str; 2] = ["sk", "ret"];
pub const PROBE_FIELDS: [&str; 2] = ["skaddr", "srtt"];
pub const RETRANSMIT_FIELDS: [&str; 3] = ["skbaddr", "skaddr", "err"];
pub const RESET_FIELDS: [&str; 1] = ["skaddr"];
pub const DESTROY_FIELDS: [&str; 1] = ["skaddr"];
/// `sock_recv_length(sk, ret, flags)`: `flags` tells a peek apart.
pub const RECV_FIELDS: [&str; 3] = ["sk", "ret", "flags"];
/// `MSG_PEEK`: the bytes stay queued and are read (and counted) later.
pub const MSG_PEEK: u64 = 2;

/// Byte offsets in the kernel's structs (from its BTF) of what the programs
/// read through the pointers raw tracepoints pass.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct Offsets {
    /// `struct sock`: `sk_protocol` (u16).
    pub protocol: u32,
    /// `sock.__sk_common`: `skc_family` (u16), `skc_num` (local port, host
    /// order), `skc_dport` (network order), `skc_rcv_saddr`, `skc_daddr`
    /// (IPv4, network order), `skc_v6_rcv_saddr`, `skc_v6_daddr`.
    pub family: u32,
    pub num: u32,
    pub dport: u32,
    pub rcv_saddr: u32,
    pub daddr: u32,
    pub v6_rcv_saddr: u32,
    pub v6_daddr: u32,
    /// `struct tcp_sock`: `srtt_us` (u32, microseconds << 3).
    pub srtt_us: u32,
    /// `struct sk_buff` `cb` + `struct tcp_skb_cb` `tcp_gso_segs` (u16): the
    /// segments in a buffer, which TcpRetransSegs adds up.
    pub skb_gso_segs: u32,
    /// `sock.__sk_common.skc_state` (u8): the state of a socket first seen
    /// at a send or receive.
    pub state: u32,
    /// `struct tcp_sock`: `total_retrans` (u32). A passive open's child
    /// socket starts with its request's SYN-ACK retransmits there
    /// (`tcp_create_openreq_child`: `total_retrans = req->num_retrans`),
    /// which TcpRetransSegs counted (`tcp_rtx_synack`).
    pub total_retrans: u32,
}
const _: () = assert!(core::mem::size_of::<Offsets>() == 48);

/// Global set by userspace at load time.
pub const GLOBAL_OFFSETS: &str = "OFFSETS";

/// Errors `tcp_retransmit_skb` reports for attempts that
/// `__tcp_retransmit_skb` gave up before counting them in TcpRetransSegs:
/// -EBUSY (the original still queued), -EAGAIN (outside the peer's window),
/// -ENOMEM, -EHOSTUNREACH.
pub const RETRANSMIT_NOT_SENT: [i32; 4] = [-16, -11, -12, -113];

pub const TCP_ESTABLISHED: i32 = 1;
pub const TCP_SYN_SENT: i32 = 2;
pub const TCP_SYN_RECV: i32 = 3;
pub const TCP_CLOSE: i32 = 7;
pub const IPPROTO_TCP: u16 = 6;
pub const AF_INET6: u16 = 10;

/// How an active open ended without a connection.
pub const FAILED_NONE: u32 = 0;
/// Reset by the peer (refused: nothing listening).
pub const FAILED_REFUSED: u32 = 1;
/// Closed without an answer (timed out, or given up).
pub const FAILED_TIMEOUT: u32 = 2;

/// One connection.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Conn {
    /// Owning process; 0 until a process-context event names it.
    pub tgid: u32,
    pub family: u16,
    pub sport: u16,
    pub dport: u16,
    /// 1 once the socket closed: userspace reads it one last time, then
    /// deletes it.
    pub closed: u8,
    /// 1 for an active open (connect), 0 for a passive one (accept).
    pub active: u8,
    pub state: i32,
    /// `FAILED_*`.
    pub failed: u32,
    pub _pad: u32,
    /// When the probe first saw the connection: with the socket's address,
    /// it names this connection among all that socket's memory serves.
    pub born_ns: u64,
    pub saddr: [u8; 16],
    pub daddr: [u8; 16],
    pub syn_ns: u64,
    /// Handshake time: for an active open, SYN sent to established; for a
    /// passive one, the kernel's SYN-ACK round trip (its first RTT sample);
    /// 0 until then.
    pub connect_ns: u64,
    pub bytes_sent: u64,
    pub bytes_received: u64,
    /// Segments retransmitted (as TcpRetransSegs counts them).
    pub retransmits: u64,
    pub resets: u64,
    /// Latest smoothed RTT, microseconds.
    pub srtt_us: u64,
    pub rtt_sampled_ns: u64,
    /// Running sum of the samples in `rtt`, ns: their exact mean.
    pub rtt_sum_ns: u64,
    /// Smoothed RTT samples, ns, in the shared layout.
    pub rtt: [u32; hist::BUCKETS],
}
const _: () = assert!(core::mem::size_of::<Conn>() == 136 + 4 * hist::BUCKETS);

impl Conn {
    pub const ZERO: Conn = Conn {
        tgid: 0,
        family: 0,
        sport: 0,
        dport: 0,
        closed: 0,
        active: 0,
        state: 0,
        failed: 0,
        _pad: 0,
        born_ns: 0,
        saddr: [0; 16],
        daddr: [0; 16],
        syn_ns: 0,
        connect_ns: 0,
        bytes_sent: 0,
        bytes_received: 0,
        retransmits: 0,
        resets: 0,
        srtt_us: 0,
        rtt_sampled_ns: 0,
        rtt_sum_ns: 0,
        rtt: [0; hist::BUCKETS],
    };
}

/// An accepted connection while a filter is set, until a process uses it:
/// a traced one makes it a [`Conn`] with these figures; any other leaves
/// it untracked (counted as `accepts_not_traced`). So a busy server
/// outside the filter takes no `TCP_CONNS` slot.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct Accepted {
    pub born_ns: u64,
    pub connect_ns: u64,
    /// SYN-ACK retransmits of its handshake.
    pub retransmits: u64,
}
const _: () = assert!(core::mem::size_of::<Accepted>() == 24);

/// A connection: its socket's address and [`Conn::born_ns`].
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct ClosedKey {
    pub sk: u64,
    pub born_ns: u64,
}

#[repr(u32)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Counter {
    /// A connection could not be tracked: map full.
    ConnsFull = 0,
    /// Bytes on a TCP socket opened before the probe attached, or whose
    /// entry was gone (tracked from then on, without its handshake).
    Adopted = 1,
    /// A closed connection's last figures were lost: its socket served a
    /// new connection before userspace read them, and TCP_CLOSED was full.
    ClosedFull = 2,
    /// With a filter set: an accepted connection first used by a process
    /// outside it, or closed before any process used it; not tracked.
    AcceptsNotTraced = 3,
    /// With a filter set: an accepted connection not kept aside for its
    /// owner (TCP_ACCEPTED full); adopted without its handshake if a traced
    /// process uses it.
    AcceptedFull = 4,
}

pub const COUNTERS: u32 = 5;

impl Counter {
    pub const ALL: [Counter; COUNTERS as usize] =
        [Counter::ConnsFull, Counter::Adopted, Counter::ClosedFull, Counter::AcceptsNotTraced, Counter::AcceptedFull];

    pub const fn name(self) -> &'static str {
        match self {
            Counter::ConnsFull => "conns_map_full",
            Counter::Adopted => "adopted_sockets",
            Counter::ClosedFull => "closed_map_full",
            Counter::AcceptsNotTraced => "accepts_not_traced",
            Counter::AcceptedFull => "accepted_map_full",
        }
    }

    pub const fn is_error(self) -> bool {
        matches!(self, Counter::ConnsFull | Counter::ClosedFull | Counter::AcceptedFull)
    }
}

crate::user_pod!(Conn, Offsets, ClosedKey, Accepted);

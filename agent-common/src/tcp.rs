//! TCP probe: what `agent-ebpf/src/tcp.rs` writes and
//! `agent/src/probes/tcp.rs` reads.
//!
//! Connections are followed by socket address from the tracepoints that
//! carry it: `sock/inet_sock_set_state` (open, established, close; an
//! active open runs in the connecting process), `sock/sock_send_length` and
//! `sock_recv_length` (process context: they name the owner and count
//! bytes), `tcp/tcp_probe` (smoothed RTT, in softirq), `tcp/tcp_retransmit_skb`
//! and `tcp/tcp_receive_reset`/`tcp_send_reset`.

use crate::hist;

pub const MAP_CONNS: &str = "TCP_CONNS";
pub const MAP_COUNTERS: &str = "TCP_COUNTERS";
pub const MAP_ZERO: &str = "TCP_ZERO";
pub const MAP_PIDS: &str = "TCP_PIDS";

pub const MAX_CONNS: u32 = 8_192;
/// At most one RTT sample per connection this often (a bulk transfer acks
/// thousands of times a second; its RTT does not change that fast).
pub const RTT_SAMPLE_NS: u64 = 10_000_000;

/// `inet_sock_set_state` record, read whole.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct StateRecord {
    pub common: [u8; 8],
    pub skaddr: u64,
    pub oldstate: i32,
    pub newstate: i32,
    pub sport: u16,
    pub dport: u16,
    pub family: u16,
    pub protocol: u16,
    pub saddr: [u8; 4],
    pub daddr: [u8; 4],
    pub saddr_v6: [u8; 16],
    pub daddr_v6: [u8; 16],
}
const _: () = assert!(core::mem::size_of::<StateRecord>() == 72);
pub const STATE_FIELDS: [(&str, u32); 10] = [
    ("skaddr", 8),
    ("oldstate", 16),
    ("newstate", 20),
    ("sport", 24),
    ("dport", 26),
    ("family", 28),
    ("protocol", 30),
    ("saddr", 32),
    ("saddr_v6", 40),
    ("daddr_v6", 56),
];

/// `sock_send_length`/`sock_recv_length` record.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct LengthRecord {
    pub common: [u8; 8],
    pub sk: u64,
    pub family: u16,
    pub protocol: u16,
    pub ret: i32,
}
const _: () = assert!(core::mem::size_of::<LengthRecord>() == 24);
pub const LENGTH_FIELDS: [(&str, u32); 3] = [("sk", 8), ("protocol", 18), ("ret", 20)];

/// Offsets in `tcp_probe`, `tcp_retransmit_skb` and the reset events.
pub const PROBE_SRTT: u32 = 100;
pub const PROBE_SKADDR: u32 = 128;
pub const RETRANSMIT_SKADDR: u32 = 16;
/// `err` of `tcp_retransmit_skb`. Counted as the kernel counts
/// TcpRetransSegs: every retransmission handed to the stack, whatever then
/// became of it, but not the attempts `__tcp_retransmit_skb` gives up before
/// counting: [`RETRANSMIT_NOT_SENT`].
pub const RETRANSMIT_ERR: u32 = 76;
/// -EBUSY (the original still queued), -EAGAIN (outside the peer's window),
/// -ENOMEM, -EHOSTUNREACH.
pub const RETRANSMIT_NOT_SENT: [i32; 4] = [-16, -11, -12, -113];
pub const RECEIVE_RESET_SKADDR: u32 = 8;
pub const SEND_RESET_SKADDR: u32 = 16;

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
    pub saddr: [u8; 16],
    pub daddr: [u8; 16],
    pub syn_ns: u64,
    /// Active opens: SYN sent to established; 0 until then.
    pub connect_ns: u64,
    pub bytes_sent: u64,
    pub bytes_received: u64,
    pub retransmits: u64,
    pub resets: u64,
    /// Latest smoothed RTT, microseconds.
    pub srtt_us: u64,
    pub rtt_sampled_ns: u64,
    /// Smoothed RTT samples, ns, in the shared layout.
    pub rtt: [u32; hist::BUCKETS],
}
const _: () = assert!(core::mem::size_of::<Conn>() == 120 + 4 * hist::BUCKETS);

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
        rtt: [0; hist::BUCKETS],
    };
}

#[repr(u32)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Counter {
    /// A connection could not be tracked: map full.
    ConnsFull = 0,
    /// Bytes on a TCP socket opened before the probe attached (tracked from
    /// then on, without its addresses until an ack names them).
    Adopted = 1,
}

pub const COUNTERS: u32 = 2;

impl Counter {
    pub const ALL: [Counter; COUNTERS as usize] = [Counter::ConnsFull, Counter::Adopted];

    pub const fn name(self) -> &'static str {
        match self {
            Counter::ConnsFull => "conns_map_full",
            Counter::Adopted => "adopted_sockets",
        }
    }

    pub const fn is_error(self) -> bool {
        matches!(self, Counter::ConnsFull)
    }
}

crate::user_pod!(Conn);

//! TCP connections per process: bytes, connect latency, smoothed RTT,
//! retransmits and resets, on the sock and tcp raw tracepoints (see
//! `agent_common::tcp` for which carries what, in which context, and why
//! raw ones).
#![no_std]
#![no_main]

use agent_common::{
    hist,
    tcp::{
        Accepted, ClosedKey, Conn, Counter, Offsets, AF_INET6, COUNTERS, FAILED_REFUSED, FAILED_TIMEOUT, IPPROTO_TCP,
        MAX_ACCEPTED, MAX_CLOSED, MAX_CONNS, MSG_PEEK, RETRANSMIT_NOT_SENT, RTT_SAMPLE_NS, TCP_CLOSE, TCP_ESTABLISHED,
        TCP_SYN_RECV, TCP_SYN_SENT,
    },
};
use agent_ebpf::{atomic_add, global};
use aya_ebpf::{
    bindings::BPF_NOEXIST,
    helpers::{bpf_get_current_pid_tgid, bpf_ktime_get_ns, bpf_probe_read_kernel},
    macros::{map, raw_tracepoint},
    maps::{HashMap, PerCpuArray},
    programs::RawTracePointContext,
};

agent_ebpf::filters!(TCP_PIDS);
agent_ebpf::counters!(TCP_COUNTERS, Counter, COUNTERS);

#[unsafe(no_mangle)]
static OFFSETS: Offsets = Offsets {
    protocol: 0,
    family: 0,
    num: 0,
    dport: 0,
    rcv_saddr: 0,
    daddr: 0,
    v6_rcv_saddr: 0,
    v6_daddr: 0,
    srtt_us: 0,
    skb_gso_segs: 0,
    state: 0,
    total_retrans: 0,
};

#[map]
static TCP_CONNS: HashMap<u64, Conn> = HashMap::with_max_entries(MAX_CONNS, 0);
#[map]
static TCP_CLOSED: HashMap<ClosedKey, Conn> = HashMap::with_max_entries(MAX_CLOSED, 0);
#[map]
static TCP_ACCEPTED: HashMap<u64, Accepted> = HashMap::with_max_entries(MAX_ACCEPTED, 0);
#[map]
static TCP_ZERO: PerCpuArray<Conn> = PerCpuArray::with_max_entries(1, 0);

/// A `T` at byte `off` of kernel object `base` (zero if unreadable).
#[inline(always)]
fn read<T: Copy + Default>(base: u64, off: u32) -> T {
    // SAFETY: bpf_probe_read_kernel checks the address.
    unsafe { bpf_probe_read_kernel((base as usize).wrapping_add(off as usize) as *const T) }.unwrap_or_default()
}

/// Whether socket `sk` is a TCP one.
#[inline(always)]
fn is_tcp(sk: u64) -> bool {
    read::<u16>(sk, global!(OFFSETS).protocol) == IPPROTO_TCP
}

/// The connection of socket `sk`, created (zeroed) when missing.
#[inline(always)]
fn conn(sk: u64, now: u64) -> Option<*mut Conn> {
    if let Some(c) = TCP_CONNS.get_ptr_mut(&sk) {
        return Some(c);
    }
    let zero = TCP_ZERO.get_ptr(0)?;
    // SAFETY: a map value never written to, so all zeroes.
    let _ = TCP_CONNS.insert(&sk, unsafe { &*zero }, BPF_NOEXIST as u64);
    let Some(c) = TCP_CONNS.get_ptr_mut(&sk) else {
        count(Counter::ConnsFull);
        return None;
    };
    // SAFETY: a value of this map.
    unsafe { (*c).born_ns = now };
    Some(c)
}

/// A new connection on socket `sk`: a fresh entry. A closed one still there
/// (a socket connecting again after a failed connect, or one whose destroy
/// was missed) moves to TCP_CLOSED first.
#[inline(always)]
fn new_conn(sk: u64, now: u64) -> Option<*mut Conn> {
    if let Some(old) = TCP_CONNS.get_ptr_mut(&sk) {
        // SAFETY: a value of this map; the socket is locked by its new user.
        unsafe {
            if (*old).closed == 0 {
                return Some(old);
            }
            let key = ClosedKey { sk, born_ns: (*old).born_ns };
            if TCP_CLOSED.insert(&key, &*old, 0).is_err() {
                count(Counter::ClosedFull);
            }
        }
        let _ = TCP_CONNS.remove(&sk);
    }
    conn(sk, now)
}

/// The socket's addresses and ports, read from its `sock_common`.
#[inline(always)]
fn addresses(c: *mut Conn, sk: u64) {
    let o = global!(OFFSETS);
    let family: u16 = read(sk, o.family);
    // SAFETY: a value of TCP_CONNS; a socket's state changes are serialised
    // by its lock.
    unsafe {
        (*c).family = family;
        (*c).sport = read(sk, o.num);
        (*c).dport = u16::from_be(read(sk, o.dport));
        if family == AF_INET6 {
            (*c).saddr = read(sk, o.v6_rcv_saddr);
            (*c).daddr = read(sk, o.v6_daddr);
        } else {
            let (s, d): ([u8; 4], [u8; 4]) = (read(sk, o.rcv_saddr), read(sk, o.daddr));
            (*c).saddr = [s[0], s[1], s[2], s[3], 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0];
            (*c).daddr = [d[0], d[1], d[2], d[3], 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0];
        }
    }
}

/// `inet_sock_set_state(sk, oldstate, newstate)`.
#[raw_tracepoint(tracepoint = "inet_sock_set_state")]
pub fn tcp_set_state(ctx: RawTracePointContext) -> i32 {
    let sk: u64 = ctx.arg(0);
    let old: u64 = ctx.arg(1);
    let new: u64 = ctx.arg(2);
    let (old, new) = (old as i32, new as i32);
    if !is_tcp(sk) {
        return 0;
    }
    // SAFETY: a helper call without arguments.
    let now = unsafe { bpf_ktime_get_ns() };
    let c = match new {
        // connect(): in the connecting process.
        TCP_SYN_SENT => {
            let pid_tgid = bpf_get_current_pid_tgid();
            if !traced(pid_tgid) {
                return 0;
            }
            let Some(c) = new_conn(sk, now) else { return 0 };
            // SAFETY: a value of this map.
            unsafe {
                (*c).tgid = (pid_tgid >> 32) as u32;
                (*c).active = 1;
                (*c).syn_ns = now;
            }
            c
        }
        // accept side: the child socket appears (in softirq: owner unknown).
        TCP_ESTABLISHED if old == TCP_SYN_RECV => {
            let o = global!(OFFSETS);
            // A passive open: the kernel measured the SYN-ACK's round trip
            // just before (tcp_synack_rtt_meas), its first smoothed RTT
            // (<< 3); the child starts with its SYN-ACK retransmits.
            let connect_ns = u64::from(read::<u32>(sk, o.srtt_us) >> 3) * 1_000;
            let retransmits = u64::from(read::<u32>(sk, o.total_retrans));
            if filtering() {
                // Kept aside for its first user: tracked only if traced.
                let a = Accepted { born_ns: now, connect_ns, retransmits };
                if TCP_ACCEPTED.insert(&sk, &a, 0).is_err() {
                    count(Counter::AcceptedFull);
                }
                return 0;
            }
            let Some(c) = new_conn(sk, now) else { return 0 };
            // SAFETY: a value of this map.
            unsafe {
                (*c).connect_ns = connect_ns;
                (*c).retransmits = retransmits;
            }
            c
        }
        _ => match TCP_CONNS.get_ptr_mut(&sk) {
            Some(c) => c,
            None => return 0,
        },
    };
    // Addresses when first seen, and again once established: a connect
    // has no local port yet at SYN_SENT (it is bound just after).
    // SAFETY: a value of this map (see `addresses`).
    if unsafe { (*c).family } == 0 || new == TCP_ESTABLISHED {
        addresses(c, sk);
    }
    // SAFETY: as above.
    unsafe {
        if new == TCP_ESTABLISHED && old == TCP_SYN_SENT && (*c).syn_ns != 0 {
            (*c).connect_ns = now.saturating_sub((*c).syn_ns);
        }
        if new == TCP_CLOSE {
            if old == TCP_SYN_SENT && (*c).active == 1 {
                (*c).failed = if (*c).resets > 0 { FAILED_REFUSED } else { FAILED_TIMEOUT };
            }
            (*c).closed = 1;
        }
        (*c).state = new;
    }
    0
}

/// Bytes through a socket, in the process that sends or receives them:
/// `sock_send_length`/`sock_recv_length(sk, ret, flags)`, on every send and
/// receive, whatever it returned. A peek (`MSG_PEEK`) names the owner but
/// counts nothing: its bytes are counted when read.
#[inline(always)]
fn length(ctx: &RawTracePointContext, sent: bool) -> i32 {
    let sk: u64 = ctx.arg(0);
    let ret: u64 = ctx.arg(1);
    let mut ret = ret as i32;
    if !sent {
        let flags: u64 = ctx.arg(2);
        if flags & MSG_PEEK != 0 {
            ret = 0;
        }
    }
    let pid_tgid = bpf_get_current_pid_tgid();
    // Under a filter, what other processes do is not recorded, even on a
    // traced process's socket (a constant branch without one).
    if filtering() && !traced(pid_tgid) {
        if TCP_ACCEPTED.get_ptr(&sk).is_some() {
            // An accepted connection first used outside the filter.
            let _ = TCP_ACCEPTED.remove(&sk);
            count(Counter::AcceptsNotTraced);
        }
        return 0;
    }
    // Only TCP sockets are in the map: a hit needs no protocol check.
    let c = match TCP_CONNS.get_ptr_mut(&sk) {
        Some(c) => c,
        None => match first_use(sk, ret, pid_tgid) {
            Some(c) => c,
            None => return 0,
        },
    };
    // SAFETY: a value of this map; the byte counters take atomic adds (a
    // socket may be used from several threads).
    unsafe {
        // Any call names the owner: an end of file or an error too.
        if (*c).tgid == 0 && traced(pid_tgid) {
            (*c).tgid = (pid_tgid >> 32) as u32;
        }
        if ret <= 0 {
            return 0;
        }
        if sent {
            atomic_add(&raw mut (*c).bytes_sent, ret as u64);
        } else {
            atomic_add(&raw mut (*c).bytes_received, ret as u64);
        }
    }
    0
}

/// A socket with no entry, at a traced process's send or receive: an
/// accepted connection kept aside under a filter, or one from before the
/// probe attached (adopted once it moves bytes).
#[inline(always)]
fn first_use(sk: u64, ret: i32, pid_tgid: u64) -> Option<*mut Conn> {
    let accepted = if filtering() {
        // SAFETY: a plain copy out of the map value (24 bytes, no pointers).
        TCP_ACCEPTED.get_ptr(&sk).map(|a| unsafe { *a })
    } else {
        None
    };
    if accepted.is_none() && (ret <= 0 || !is_tcp(sk) || !traced(pid_tgid)) {
        return None;
    }
    // SAFETY: a helper call without arguments.
    let now = unsafe { bpf_ktime_get_ns() };
    let c = new_conn(sk, now)?;
    addresses(c, sk);
    // SAFETY: a value of this map, just made by this socket's user.
    unsafe {
        (*c).state = i32::from(read::<u8>(sk, global!(OFFSETS).state));
        if (*c).state == TCP_CLOSE {
            (*c).closed = 1;
        }
        if let Some(a) = accepted {
            let _ = TCP_ACCEPTED.remove(&sk);
            (*c).born_ns = a.born_ns;
            (*c).connect_ns = a.connect_ns;
            (*c).retransmits = a.retransmits;
        } else {
            count(Counter::Adopted);
        }
    }
    Some(c)
}

/// `tcp_destroy_sock(sk)`: no process holds the socket any more and its
/// memory is freed next. Its connection moves to TCP_CLOSED under (socket,
/// first seen), where userspace reads it and deletes that exact key: an
/// entry of TCP_CONNS is deleted only here, before the socket's memory can
/// serve another connection, so userspace never deletes one it did not read.
#[raw_tracepoint(tracepoint = "tcp_destroy_sock")]
pub fn tcp_destroy(ctx: RawTracePointContext) -> i32 {
    let sk: u64 = ctx.arg(0);
    if filtering() && TCP_ACCEPTED.get_ptr(&sk).is_some() {
        // Accepted and closed before any process used it.
        let _ = TCP_ACCEPTED.remove(&sk);
        count(Counter::AcceptsNotTraced);
    }
    let Some(c) = TCP_CONNS.get_ptr_mut(&sk) else {
        return 0;
    };
    // SAFETY: a value of this map; no other event can reach this socket now.
    unsafe {
        (*c).closed = 1;
        let key = ClosedKey { sk, born_ns: (*c).born_ns };
        if TCP_CLOSED.insert(&key, &*c, 0).is_err() {
            count(Counter::ClosedFull);
        }
    }
    let _ = TCP_CONNS.remove(&sk);
    0
}

#[raw_tracepoint(tracepoint = "sock_send_length")]
pub fn tcp_send_length(ctx: RawTracePointContext) -> i32 {
    length(&ctx, true)
}

#[raw_tracepoint(tracepoint = "sock_recv_length")]
pub fn tcp_recv_length(ctx: RawTracePointContext) -> i32 {
    length(&ctx, false)
}

/// `tcp_probe(sk, skb)`: an incoming segment on an established connection.
#[raw_tracepoint(tracepoint = "tcp_probe")]
pub fn tcp_rtt(ctx: RawTracePointContext) -> i32 {
    let sk: u64 = ctx.arg(0);
    let Some(c) = TCP_CONNS.get_ptr_mut(&sk) else {
        return 0;
    };
    // SAFETY: a helper call without arguments.
    let now = unsafe { bpf_ktime_get_ns() };
    let srtt_us = u64::from(read::<u32>(sk, global!(OFFSETS).srtt_us) >> 3);
    // SAFETY: a value of this map; the bucket takes an atomic add.
    unsafe {
        (*c).srtt_us = srtt_us;
        if now.saturating_sub((*c).rtt_sampled_ns) >= RTT_SAMPLE_NS {
            (*c).rtt_sampled_ns = now;
            if let Some(b) = (*c).rtt.get_mut(hist::bucket(srtt_us * 1_000)) {
                atomic_add(b as *mut u32, 1);
                atomic_add(&raw mut (*c).rtt_sum_ns, srtt_us * 1_000);
            }
        }
    }
    0
}

/// `tcp_retransmit_skb(sk, skb, err)`: counted as the kernel counts
/// TcpRetransSegs, segments handed to the stack whatever became of them.
#[raw_tracepoint(tracepoint = "tcp_retransmit_skb")]
pub fn tcp_retransmit(ctx: RawTracePointContext) -> i32 {
    let sk: u64 = ctx.arg(0);
    let skb: u64 = ctx.arg(1);
    let err: u64 = ctx.arg(2);
    if RETRANSMIT_NOT_SENT.contains(&(err as i32)) {
        return 0;
    }
    let Some(c) = TCP_CONNS.get_ptr_mut(&sk) else {
        return 0;
    };
    // The buffer's segments (tcp_skb_pcount).
    let segs = read::<u16>(skb, global!(OFFSETS).skb_gso_segs).max(1);
    // SAFETY: a map value; atomic add.
    unsafe { atomic_add(&raw mut (*c).retransmits, u64::from(segs)) };
    0
}

/// `tcp_receive_reset(sk)`.
#[raw_tracepoint(tracepoint = "tcp_receive_reset")]
pub fn tcp_receive_reset(ctx: RawTracePointContext) -> i32 {
    reset(ctx.arg(0))
}

/// `tcp_send_reset(sk, skb, reason)`; `sk` is NULL for a reset to a segment
/// of no socket.
#[raw_tracepoint(tracepoint = "tcp_send_reset")]
pub fn tcp_send_reset(ctx: RawTracePointContext) -> i32 {
    reset(ctx.arg(0))
}

#[inline(always)]
fn reset(sk: u64) -> i32 {
    if let Some(c) = TCP_CONNS.get_ptr_mut(&sk) {
        // SAFETY: a map value; atomic add.
        unsafe { atomic_add(&raw mut (*c).resets, 1) };
    }
    0
}

agent_ebpf::panic_handler!();

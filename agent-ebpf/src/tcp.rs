//! TCP connections per process: bytes, connect latency, smoothed RTT,
//! retransmits and resets, on the sock and tcp classic tracepoints (see
//! `agent_common::tcp` for which carries what, and in which context).
#![no_std]
#![no_main]

use agent_common::{
    hist,
    tcp::{
        Conn, Counter, LengthRecord, StateRecord, AF_INET6, COUNTERS, FAILED_REFUSED, FAILED_TIMEOUT, IPPROTO_TCP,
        MAX_CONNS, PROBE_SKADDR, PROBE_SRTT, RECEIVE_RESET_SKADDR, RETRANSMIT_ERR, RETRANSMIT_NOT_SENT, RETRANSMIT_SKADDR, SEND_RESET_SKADDR, RTT_SAMPLE_NS, TCP_CLOSE,
        TCP_ESTABLISHED, TCP_SYN_RECV, TCP_SYN_SENT,
    },
};
use agent_ebpf::atomic_add;
use aya_ebpf::{
    bindings::BPF_NOEXIST,
    helpers::{bpf_get_current_pid_tgid, bpf_ktime_get_ns},
    macros::{map, tracepoint},
    maps::{HashMap, PerCpuArray},
    programs::TracePointContext,
};

agent_ebpf::filters!(TCP_PIDS);
agent_ebpf::counters!(TCP_COUNTERS, Counter, COUNTERS);

#[map]
static TCP_CONNS: HashMap<u64, Conn> = HashMap::with_max_entries(MAX_CONNS, 0);
#[map]
static TCP_ZERO: PerCpuArray<Conn> = PerCpuArray::with_max_entries(1, 0);

/// The connection of socket `sk`, created (zeroed) when missing.
#[inline(always)]
fn conn(sk: u64) -> Option<*mut Conn> {
    if let Some(c) = TCP_CONNS.get_ptr_mut(&sk) {
        return Some(c);
    }
    let zero = TCP_ZERO.get_ptr(0)?;
    // SAFETY: a map value never written to, so all zeroes.
    let _ = TCP_CONNS.insert(&sk, unsafe { &*zero }, BPF_NOEXIST as u64);
    let c = TCP_CONNS.get_ptr_mut(&sk);
    if c.is_none() {
        count(Counter::ConnsFull);
    }
    c
}

#[tracepoint(category = "sock", name = "inet_sock_set_state")]
pub fn tcp_set_state(ctx: TracePointContext) -> u32 {
    // SAFETY: a read of the tracepoint record through bpf_probe_read_kernel.
    let Ok(r) = (unsafe { ctx.read_at::<StateRecord>(0) }) else {
        return 0;
    };
    if r.protocol != IPPROTO_TCP {
        return 0;
    }
    // SAFETY: a helper call without arguments.
    let now = unsafe { bpf_ktime_get_ns() };
    let c = match r.newstate {
        // connect(): in the connecting process.
        TCP_SYN_SENT => {
            let pid_tgid = bpf_get_current_pid_tgid();
            if !traced(pid_tgid) {
                return 0;
            }
            let Some(c) = conn(r.skaddr) else { return 0 };
            // SAFETY: a value of this map; a socket's events are serialised
            // by its lock.
            unsafe {
                (*c).tgid = (pid_tgid >> 32) as u32;
                (*c).active = 1;
                (*c).syn_ns = now;
            }
            c
        }
        // accept side: the child socket appears (in softirq: owner unknown).
        TCP_ESTABLISHED if r.oldstate == TCP_SYN_RECV => match conn(r.skaddr) {
            Some(c) => c,
            None => return 0,
        },
        _ => match TCP_CONNS.get_ptr_mut(&r.skaddr) {
            Some(c) => c,
            None => return 0,
        },
    };
    // SAFETY: as above.
    unsafe {
        if (*c).family == 0 {
            (*c).family = r.family;
            (*c).sport = r.sport;
            (*c).dport = r.dport;
            if r.family == AF_INET6 {
                (*c).saddr = r.saddr_v6;
                (*c).daddr = r.daddr_v6;
            } else {
                (*c).saddr = [r.saddr[0], r.saddr[1], r.saddr[2], r.saddr[3], 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0];
                (*c).daddr = [r.daddr[0], r.daddr[1], r.daddr[2], r.daddr[3], 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0];
            }
        }
        if r.newstate == TCP_ESTABLISHED && r.oldstate == TCP_SYN_SENT && (*c).syn_ns != 0 {
            (*c).connect_ns = now.saturating_sub((*c).syn_ns);
        }
        if r.newstate == TCP_CLOSE {
            if r.oldstate == TCP_SYN_SENT && (*c).active == 1 {
                (*c).failed = if (*c).resets > 0 { FAILED_REFUSED } else { FAILED_TIMEOUT };
            }
            (*c).closed = 1;
        }
        (*c).state = r.newstate;
    }
    0
}

/// Bytes through a socket, in the process that sends or receives them.
#[inline(always)]
fn length(ctx: &TracePointContext, sent: bool) -> u32 {
    // SAFETY: a read of the tracepoint record through bpf_probe_read_kernel.
    let Ok(r) = (unsafe { ctx.read_at::<LengthRecord>(0) }) else {
        return 0;
    };
    if r.protocol != IPPROTO_TCP || r.ret <= 0 {
        return 0;
    }
    let pid_tgid = bpf_get_current_pid_tgid();
    let c = match TCP_CONNS.get_ptr_mut(&r.sk) {
        Some(c) => c,
        None => {
            // A socket from before the probe attached: adopt it.
            if !traced(pid_tgid) {
                return 0;
            }
            count(Counter::Adopted);
            let Some(c) = conn(r.sk) else { return 0 };
            // SAFETY: a value of this map.
            unsafe { (*c).state = TCP_ESTABLISHED };
            c
        }
    };
    // SAFETY: a value of this map; the byte counters take atomic adds (a
    // socket may be used from several threads).
    unsafe {
        if (*c).tgid == 0 && traced(pid_tgid) {
            (*c).tgid = (pid_tgid >> 32) as u32;
        }
        if sent {
            atomic_add(&raw mut (*c).bytes_sent, r.ret as u64);
        } else {
            atomic_add(&raw mut (*c).bytes_received, r.ret as u64);
        }
    }
    0
}

#[tracepoint(category = "sock", name = "sock_send_length")]
pub fn tcp_send_length(ctx: TracePointContext) -> u32 {
    length(&ctx, true)
}

#[tracepoint(category = "sock", name = "sock_recv_length")]
pub fn tcp_recv_length(ctx: TracePointContext) -> u32 {
    length(&ctx, false)
}

#[inline(always)]
fn sk_at(ctx: &TracePointContext, off: u32) -> Option<*mut Conn> {
    // SAFETY: a read of the tracepoint record through bpf_probe_read_kernel.
    let sk: u64 = unsafe { ctx.read_at(off as usize) }.ok()?;
    TCP_CONNS.get_ptr_mut(&sk)
}

#[tracepoint(category = "tcp", name = "tcp_probe")]
pub fn tcp_rtt(ctx: TracePointContext) -> u32 {
    let Some(c) = sk_at(&ctx, PROBE_SKADDR) else {
        return 0;
    };
    // SAFETY: a read of the record; the map value as above.
    let Ok(srtt) = (unsafe { ctx.read_at::<u32>(PROBE_SRTT as usize) }) else {
        return 0;
    };
    // SAFETY: a helper call without arguments.
    let now = unsafe { bpf_ktime_get_ns() };
    unsafe {
        (*c).srtt_us = u64::from(srtt);
        if now.saturating_sub((*c).rtt_sampled_ns) >= RTT_SAMPLE_NS {
            (*c).rtt_sampled_ns = now;
            if let Some(b) = (*c).rtt.get_mut(hist::bucket(u64::from(srtt) * 1_000)) {
                atomic_add(b as *mut u32, 1);
            }
        }
    }
    0
}

#[tracepoint(category = "tcp", name = "tcp_retransmit_skb")]
pub fn tcp_retransmit(ctx: TracePointContext) -> u32 {
    // SAFETY: a read of the tracepoint record through bpf_probe_read_kernel.
    match unsafe { ctx.read_at::<i32>(RETRANSMIT_ERR as usize) } {
        Ok(e) if !RETRANSMIT_NOT_SENT.contains(&e) => {}
        _ => return 0,
    }
    if let Some(c) = sk_at(&ctx, RETRANSMIT_SKADDR) {
        // SAFETY: a map value; atomic add.
        unsafe { atomic_add(&raw mut (*c).retransmits, 1) };
    }
    0
}

#[tracepoint(category = "tcp", name = "tcp_receive_reset")]
pub fn tcp_receive_reset(ctx: TracePointContext) -> u32 {
    reset(&ctx, RECEIVE_RESET_SKADDR)
}

#[tracepoint(category = "tcp", name = "tcp_send_reset")]
pub fn tcp_send_reset(ctx: TracePointContext) -> u32 {
    reset(&ctx, SEND_RESET_SKADDR)
}

#[inline(always)]
fn reset(ctx: &TracePointContext, off: u32) -> u32 {
    if let Some(c) = sk_at(ctx, off) {
        // SAFETY: a map value; atomic add.
        unsafe { atomic_add(&raw mut (*c).resets, 1) };
    }
    0
}

agent_ebpf::panic_handler!();

//! Failed outgoing connections: `connect()` errors a client sees as
//! `cannot assign requested address` (EADDRNOTAVAIL), `connection refused`
//! or `connect timed out`.
//!
//! Hook: tracepoint `sock:inet_sock_set_state`
//!   TP_PROTO(const struct sock *sk, const int oldstate, const int newstate)
//! Linux 4.16+; no fallback needed. A connect that fails goes SYN_SENT →
//! CLOSE: inside connect() itself when `inet_hash_connect()` finds no free
//! local port (the record's `sport` is still 0: EADDRNOTAVAIL, and the
//! current task is the caller), or later from softirq/timer context with
//! `sk_err` set (ECONNREFUSED on a RST, ETIMEDOUT after the SYN retries).
//!
//! The same tracepoint marks when a server-side connection completed its
//! handshake (SYN_RECV → ESTABLISHED, right after the child joined the
//! accept queue): the start of its accept latency (see `latency`).
//!
//! Cost on the healthy path: this fires on every TCP state change; it reads
//! two ints and compares them, and once per accepted connection stores a
//! timestamp.

use aya_ebpf::{
    helpers::bpf_get_current_pid_tgid, macros::tracepoint, programs::TracePointContext,
};
use tcpq_common::{config::tcp_state, stats, EventKind};

use crate::{conf, emit::emit, sock};

const IPPROTO_TCP: u16 = 6;
const EADDRNOTAVAIL: u32 = 99;

#[tracepoint]
pub fn tcpq_sock_state(ctx: TracePointContext) -> u32 {
    try_sock_state(&ctx).unwrap_or(0)
}

#[inline(always)]
fn try_sock_state(ctx: &TracePointContext) -> Option<u32> {
    let old: i32 = unsafe { ctx.read_at(conf!(state_old) as usize) }.ok()?;
    let new: i32 = unsafe { ctx.read_at(conf!(state_new) as usize) }.ok()?;
    if old == tcp_state::SYN_RECV as i32 && new == tcp_state::ESTABLISHED as i32 {
        let sk: u64 = unsafe { ctx.read_at(conf!(state_skaddr) as usize) }.ok()?;
        crate::hooks::latency::established(sk);
        return Some(0);
    }
    if old != tcp_state::SYN_SENT as i32 || new != tcp_state::CLOSE as i32 {
        return Some(0);
    }
    let proto: u16 = unsafe { ctx.read_at(conf!(state_protocol) as usize) }.ok()?;
    if proto != IPPROTO_TCP {
        return Some(0);
    }
    let sk: u64 = unsafe { ctx.read_at(conf!(state_skaddr) as usize) }.ok()?;
    if sk == 0 || sock::filtered_out_either_port(sk) {
        return Some(0);
    }
    let sport: u16 = unsafe { ctx.read_at(conf!(state_sport) as usize) }.ok()?;
    let (errno, tgid) = if sport == 0 {
        (EADDRNOTAVAIL, (bpf_get_current_pid_tgid() >> 32) as u32)
    } else {
        (sock::read::<i32>(sk, conf!(sk_err)).unwrap_or(0) as u32, 0)
    };
    emit(
        stats::CONNECT_ERROR_SEEN,
        EventKind::ConnectError as u32,
        |ev| {
            sock::fill_socket(ev, sk);
            ev.detail = errno;
            ev.aux = tgid;
        },
    );
    Some(0)
}

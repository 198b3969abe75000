//! Failed outgoing connections: `connect()` errors a client sees as
//! `cannot assign requested address` (EADDRNOTAVAIL), `connection refused`
//! or `connect timed out`.
//!
//! Hook: raw tracepoint `inet_sock_set_state` (the `sock:` tracepoint's
//! arguments without the record the classic tracepoint builds on every
//! state change: cheaper on the healthy path)
//!   TP_PROTO(const struct sock *sk, const int oldstate, const int newstate)
//! Linux 4.17+ (raw tracepoints); no fallback needed. A connect that fails goes SYN_SENT →
//! CLOSE: inside connect() itself when `inet_hash_connect()` finds no free
//! local port (the local port is still 0: EADDRNOTAVAIL, and the
//! current task is the caller), or later from softirq/timer context with
//! `sk_err` set (ECONNREFUSED on a RST, ETIMEDOUT after the SYN retries).
//!
//! It also sees listeners open (CLOSE → LISTEN inside listen(): the current
//! task is the owner) and close, so owners of listeners born while tcpq
//! runs need no /proc scan, and closed ones are forgotten at once.
//!
//! The same tracepoint marks when a server-side connection completed its
//! handshake (SYN_RECV → ESTABLISHED, right after the child joined the
//! accept queue): the start of its accept latency (see `latency`).
//!
//! Where it runs in the caller's context (listen(), a connect() with no free
//! local port) it also keeps the caller's name (`names`), for a client that
//! exits before the agent reads /proc.
//!
//! Cost on the healthy path: this fires on every TCP state change (about 10
//! per connection); it reads two ints and compares them, and once per
//! accepted connection loads one array slot (accept latency is off unless
//! the agent switched it on for that port). Nothing reaches the ring buffer.

use aya_ebpf::{
    helpers::bpf_get_current_pid_tgid, macros::raw_tracepoint, programs::RawTracePointContext,
};
use tcpq_common::{config::tcp_state, protos::arg, stats, storm::StormKey, Event, EventKind};

use crate::{conf, emit::emit, names, sock, storm};

const IPPROTO_TCP: u16 = 6;
const EADDRNOTAVAIL: u32 = 99;

/// A listener opened (in listen(): the caller is its owner) or closed.
#[inline(always)]
fn listener(sk: u64, up: bool) {
    if sk == 0 || sock::filtered_out(sk) {
        return;
    }
    if sock::read::<u16>(sk, conf!(sk_protocol)) != Some(IPPROTO_TCP) {
        return;
    }
    let tgid = (bpf_get_current_pid_tgid() >> 32) as u32;
    if up {
        names::remember(tgid);
    }
    let kind = if up {
        EventKind::ListenerUp
    } else {
        EventKind::ListenerDown
    };
    let requested = if up { crate::hooks::backlog::take() } else { 0 };
    emit(stats::LISTENER_SEEN, kind as u32, |ev| {
        sock::fill_listener(ev, sk);
        ev.aux = if up { tgid } else { 0 };
        if requested & crate::hooks::backlog::TAKEN != 0 {
            ev.detail = requested as u32;
            ev.flags |= tcpq_common::event::flags::BACKLOG_REQUESTED;
        }
    });
}

#[raw_tracepoint(tracepoint = "inet_sock_set_state")]
pub fn tcpq_sock_state(ctx: RawTracePointContext) -> i32 {
    try_sock_state(&ctx);
    0
}

#[inline(always)]
fn try_sock_state(ctx: &RawTracePointContext) -> Option<()> {
    let old = ctx.arg::<u64>(arg::SOCK_STATE_OLD) as i32;
    let new = ctx.arg::<u64>(arg::SOCK_STATE_NEW) as i32;
    if old == tcp_state::SYN_RECV as i32 && new == tcp_state::ESTABLISHED as i32 {
        crate::hooks::latency::established(ctx.arg::<u64>(arg::SOCK_STATE_SK));
        return Some(());
    }
    // CLOSE → LISTEN in listen(), LISTEN → CLOSE when it closes. Every
    // child of a listener is cloned in state LISTEN and goes LISTEN →
    // SYN_RECV once per connection (`inet_csk_clone_lock`): not a listener
    // closing, and the healthy path must not send it anywhere.
    let close = tcp_state::CLOSE as i32;
    let listen = tcp_state::LISTEN as i32;
    if (old == close && new == listen) || (old == listen && new == close) {
        listener(ctx.arg::<u64>(arg::SOCK_STATE_SK), new == listen);
        return Some(());
    }
    if old != tcp_state::SYN_SENT as i32 || new != tcp_state::CLOSE as i32 {
        return Some(());
    }
    let sk = ctx.arg::<u64>(arg::SOCK_STATE_SK);
    if sk == 0 || sock::read::<u16>(sk, conf!(sk_protocol))? != IPPROTO_TCP {
        return Some(());
    }
    if sock::filtered_out_either_port(sk) {
        return Some(());
    }
    // No local port was ever given: inet_hash_connect() found none free.
    // (`inet_num` is already 0 here on every failure, the port released;
    // `inet_sport` keeps the one that was used.)
    let (errno, tgid) = if sock::read::<u16>(sk, conf!(inet_sport))? == 0 {
        let tgid = (bpf_get_current_pid_tgid() >> 32) as u32;
        names::remember(tgid);
        (EADDRNOTAVAIL, tgid)
    } else {
        (sock::read::<i32>(sk, conf!(sk_err)).unwrap_or(0) as u32, 0)
    };
    // No error: the application closed a socket that was still connecting.
    if errno == 0 {
        return Some(());
    }
    // Counted per (namespace, destination, errno, caller): a client
    // looping on EADDRNOTAVAIL costs a map update per failure.
    let mut dst = Event::default_zeroed();
    sock::fill_common(&mut dst, sk);
    let kind = EventKind::ConnectError as u32;
    let key = StormKey {
        kind,
        class: errno,
        who: tgid,
        netns: dst.netns,
        port: dst.rport,
        family: dst.family,
        addr: dst.raddr,
        ..StormKey::default()
    };
    storm::count(stats::CONNECT_ERROR_SEEN, &key, kind, |ev| {
        sock::fill_socket(ev, sk);
        ev.detail = errno;
        ev.aux = tgid;
    });
    Some(())
}

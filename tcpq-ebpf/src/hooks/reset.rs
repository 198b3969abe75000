//! RSTs that matter for listeners: sent by a listener (tcp_abort_on_overflow=1
//! answers the final ACK of an overflowing handshake with a RST, reason
//! INVALID_SYN) or sent for no socket at all (a closed port: NO_SOCKET).
//! RSTs of established connections are left to the kernel: they are normal.
//!
//! Hook: tracepoint `tcp:tcp_send_reset`
//!   TP_PROTO(const struct sock *sk, const struct sk_buff *skb,
//!            const enum sk_rst_reason reason)
//! Fires for socket-less resets and carries `reason` since Linux 6.10; on
//! older kernels it fires only with a full socket and the agent attaches it
//! without reasons. Cost: one load and compare of the socket state. Counted
//! per listener (or closed local endpoint) and reason in the `STORM` map.

use aya_ebpf::{macros::tracepoint, programs::TracePointContext};
use tcpq_common::{
    config::{tcp_state, AF_INET6},
    stats,
    storm::{class, StormKey},
    Event, EventKind,
};

use crate::{conf, emit::emit, sock, storm};

#[tracepoint]
pub fn tcpq_send_reset(ctx: TracePointContext) -> u32 {
    try_send_reset(&ctx).unwrap_or(0)
}

#[inline(always)]
fn try_send_reset(ctx: &TracePointContext) -> Option<u32> {
    let sk: u64 = unsafe { ctx.read_at(conf!(rst_skaddr) as usize) }.ok()?;
    let mut listener = 0u64;
    if sk != 0 {
        let state = sock::read::<u8>(sk, conf!(skc_state))? as u16;
        listener = match state {
            tcp_state::LISTEN => sk,
            tcp_state::NEW_SYN_RECV => sock::read::<u64>(sk, conf!(rsk_listener))?,
            _ => return Some(0),
        };
        if listener == 0 || sock::filtered_out(listener) {
            return Some(0);
        }
    }
    let reason: u32 = match conf!(rst_reason) {
        0 => u32::MAX,
        off => unsafe { ctx.read_at(off as usize) }.ok()?,
    };
    let saddr = conf!(rst_saddr) as usize;
    let daddr = conf!(rst_daddr) as usize;
    if sk == 0 {
        let want_port = conf!(filter_lport);
        if want_port != 0 {
            let port: u16 = unsafe { ctx.read_at(saddr + 2) }.ok()?;
            if u16::from_be(port) as u32 != want_port {
                return Some(0);
            }
        }
    }
    let kind = EventKind::ResetSent as u32;
    let mut key = StormKey {
        sk: listener,
        kind,
        class: reason,
        ..StormKey::default()
    };
    if listener != 0 {
        let backlog = sock::read::<u32>(listener, conf!(sk_ack_backlog)).unwrap_or(0);
        let max = sock::read::<u32>(listener, conf!(sk_max_ack_backlog)).unwrap_or(0);
        if backlog > max {
            key.class |= class::QUEUE_FULL;
        }
    } else {
        // Socket-less: counted per local endpoint (a closed port).
        let mut local = Event::default_zeroed();
        read_sockaddr(ctx, saddr, &mut local, true);
        key.family = local.family;
        key.port = local.lport;
        key.addr = local.laddr;
    }
    storm::count(stats::RESET_SEEN, &key, kind, |ev| {
        ev.detail = reason;
        if listener != 0 {
            // The record's addresses are the listener's own (wildcard, no
            // peer) when a socket is given: read the socket instead.
            sock::fill_listener(ev, listener);
        } else {
            // No socket: the record holds the offending packet's endpoints,
            // swapped so that `saddr` is our side (the RST's source).
            read_sockaddr(ctx, saddr, ev, true);
            read_sockaddr(ctx, daddr, ev, false);
        }
    });
    Some(0)
}

/// The tracepoint stores `sockaddr_in`/`sockaddr_in6` in 28-byte buffers.
#[inline(always)]
fn read_sockaddr(ctx: &TracePointContext, off: usize, ev: &mut Event, local: bool) {
    let family: u16 = unsafe { ctx.read_at(off) }.unwrap_or(0);
    let port = u16::from_be(unsafe { ctx.read_at::<u16>(off + 2) }.unwrap_or(0));
    let mut addr = [0u8; 16];
    if family == AF_INET6 {
        addr = unsafe { ctx.read_at(off + 8) }.unwrap_or([0; 16]);
    } else {
        let a: [u8; 4] = unsafe { ctx.read_at(off + 4) }.unwrap_or([0; 4]);
        addr[..4].copy_from_slice(&a);
    }
    ev.family = family;
    if local {
        ev.lport = port;
        ev.laddr = addr;
    } else {
        ev.rport = port;
        ev.raddr = addr;
    }
}

/// RSTs received: what a client sees as `connection reset by peer` (or
/// `connection refused` while connecting).
///
/// Hook: tracepoint `tcp:tcp_receive_reset`
///   TP_PROTO(struct sock *sk)
/// Called from `tcp_reset()` for a full socket in any state; Linux 4.16+,
/// no fallback needed. Cost: fires only when a RST arrives.
#[tracepoint]
pub fn tcpq_receive_reset(ctx: TracePointContext) -> u32 {
    try_receive_reset(&ctx).unwrap_or(0)
}

#[inline(always)]
fn try_receive_reset(ctx: &TracePointContext) -> Option<u32> {
    let sk: u64 = unsafe { ctx.read_at(conf!(recv_rst_skaddr) as usize) }.ok()?;
    if sk == 0 || sock::filtered_out_either_port(sk) {
        return Some(0);
    }
    emit(
        stats::RESET_RECEIVED_SEEN,
        EventKind::ResetReceived as u32,
        |ev| {
            sock::fill_socket(ev, sk);
            // A connection this host accepted: who accepted it.
            ev.aux = crate::accepted::by(ev);
        },
    );
    Some(0)
}

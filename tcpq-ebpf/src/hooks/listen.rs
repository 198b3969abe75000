//! ACK-time accept-queue overflow.
//!
//! Hook: raw tracepoint `kfree_skb` (the arguments, without the record the
//! classic `skb:kfree_skb` tracepoint builds for every dropped packet)
//!   TP_PROTO(struct sk_buff *skb, void *location,
//!            enum skb_drop_reason reason, struct sock *rx_sk)
//! The positions of `reason` and `rx_sk` come from BTF (`btf_trace_kfree_skb`).
//! Needs: `rx_sk` (Linux 6.11+) and SKB_DROP_REASON_TCP_LISTEN_OVERFLOW set by
//! `tcp_check_req` when `syn_recv_sock` returns NULL on a full accept queue
//! (Linux 6.15+). The kernel uses that reason for every NULL from
//! `syn_recv_sock`, overflow or not: the agent tells them apart by the queue
//! length recorded here. Attached only when the kernel-function hooks on
//! `tcp_v{4,6}_syn_recv_sock` (kfunc.rs) are not, so nothing counts twice.
//!
//! Cost on the healthy path: one load and one compare (`reason`); kfree_skb
//! fires only for dropped packets, never for consumed ones. A flood is
//! counted in the `STORM` map (see `storm`), not sent record by record.

use aya_ebpf::{macros::raw_tracepoint, programs::RawTracePointContext, EbpfContext};
use tcpq_common::{
    stats,
    storm::{class, StormKey},
    EventKind,
};

use crate::{conf, sock, storm};

#[raw_tracepoint(tracepoint = "kfree_skb")]
pub fn tcpq_kfree_skb(ctx: RawTracePointContext) -> i32 {
    try_kfree_skb(&ctx);
    0
}

/// Argument `i` of the four kfree_skb has (6.11+). The verifier takes only
/// constant context offsets, and a program may not read past the last
/// argument: each is read at its own offset (volatile, so the compiler
/// cannot merge the reads into one at a computed offset), then picked.
#[inline(always)]
fn arg(ctx: &RawTracePointContext, i: u32) -> u64 {
    let base = ctx.as_ptr() as *const u64;
    // SAFETY: a raw tracepoint's context is its arguments as u64s, and
    // kfree_skb is attached only where it has four (rx_sk, Linux 6.11+).
    let a = unsafe {
        [
            core::ptr::read_volatile(base),
            core::ptr::read_volatile(base.add(1)),
            core::ptr::read_volatile(base.add(2)),
            core::ptr::read_volatile(base.add(3)),
        ]
    };
    match i {
        0 => a[0],
        1 => a[1],
        2 => a[2],
        3 => a[3],
        _ => 0,
    }
}

#[inline(always)]
fn try_kfree_skb(ctx: &RawTracePointContext) -> Option<u32> {
    let reason = arg(ctx, conf!(kfree_reason)) as u32;
    if reason != conf!(drop_reason_listen_overflow) {
        return Some(0);
    }
    let sk = arg(ctx, conf!(kfree_rx_sk));
    if sk == 0 || sock::filtered_out(sk) {
        return Some(0);
    }
    // Counted under "queue full or not": the agent calls only a full
    // queue an overflow (the reason covers every failed child socket).
    let backlog = sock::read::<u32>(sk, conf!(sk_ack_backlog))?;
    let max = sock::read::<u32>(sk, conf!(sk_max_ack_backlog))?;
    let kind = EventKind::ListenOverflowAck as u32;
    let key = StormKey {
        sk,
        kind,
        class: if backlog > max { class::QUEUE_FULL } else { 0 },
        ..StormKey::default()
    };
    storm::count(stats::LISTEN_OVERFLOW_SEEN, &key, kind, |ev| {
        sock::fill_listener(ev, sk);
        ev.ack_backlog = backlog;
        ev.max_ack_backlog = max;
    });
    Some(0)
}

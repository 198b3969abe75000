//! ACK-time accept-queue overflow.
//!
//! Hook: tracepoint `skb:kfree_skb`
//!   TP_PROTO(struct sk_buff *skb, void *location,
//!            enum skb_drop_reason reason, struct sock *rx_sk)
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

use aya_ebpf::{macros::tracepoint, programs::TracePointContext};
use tcpq_common::{
    stats,
    storm::{class, StormKey},
    EventKind,
};

use crate::{conf, sock, storm};

#[tracepoint]
pub fn tcpq_kfree_skb(ctx: TracePointContext) -> u32 {
    try_kfree_skb(&ctx).unwrap_or(0)
}

#[inline(always)]
fn try_kfree_skb(ctx: &TracePointContext) -> Option<u32> {
    let reason: u32 = unsafe { ctx.read_at(conf!(kfree_reason) as usize) }.ok()?;
    if reason != conf!(drop_reason_listen_overflow) {
        return Some(0);
    }
    let sk: u64 = unsafe { ctx.read_at(conf!(kfree_rx_sk) as usize) }.ok()?;
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

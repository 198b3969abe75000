//! SYN-ACK retransmits: a pending connection whose final ACK did not arrive
//! or was dropped (the accept queue was full and tcp_abort_on_overflow=0).
//!
//! Hook: tracepoint `tcp:tcp_retransmit_synack`
//!   TP_PROTO(const struct sock *sk, const struct request_sock *req)
//! `sk` is the listener. Exists since Linux 4.16; no fallback needed.
//! Cost: fires only on a retransmit timer, never on a healthy handshake;
//! counted per listener in the `STORM` map.

use aya_ebpf::{macros::tracepoint, programs::TracePointContext};
use tcpq_common::{stats, storm::StormKey, EventKind};

use crate::{conf, sock, storm};

#[tracepoint]
pub fn tcpq_retransmit_synack(ctx: TracePointContext) -> u32 {
    try_retransmit_synack(&ctx).unwrap_or(0)
}

#[inline(always)]
fn try_retransmit_synack(ctx: &TracePointContext) -> Option<u32> {
    let sk: u64 = unsafe { ctx.read_at(conf!(synack_skaddr) as usize) }.ok()?;
    if sk == 0 || sock::filtered_out(sk) {
        return Some(0);
    }
    let kind = EventKind::SynackRetransmit as u32;
    let key = StormKey {
        sk,
        kind,
        ..StormKey::default()
    };
    storm::count(stats::SYNACK_RTX_SEEN, &key, kind, |ev| {
        sock::fill_listener(ev, sk)
    });
    Some(0)
}

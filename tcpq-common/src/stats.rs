//! Indices of the per-CPU counters the kernel programs keep (`STATS` map).
//! The agent sums them over CPUs; `seen - delivered` is what was lost.

/// `skb:kfree_skb` with reason TCP_LISTEN_OVERFLOW and a listener.
pub const LISTEN_OVERFLOW_SEEN: u32 = 0;
/// `tcp:tcp_retransmit_synack` on a listener.
pub const SYNACK_RTX_SEEN: u32 = 1;
/// `tcp:tcp_send_reset` of interest (listener, request sock or no socket).
pub const RESET_SEEN: u32 = 2;
/// Ring buffer full: the event was counted above but not delivered.
pub const RINGBUF_FULL: u32 = 3;
/// A kernel read (`bpf_probe_read_kernel`) failed; the event went out with
/// what could be read.
pub const READ_ERRORS: u32 = 4;

pub const COUNT: u32 = 5;

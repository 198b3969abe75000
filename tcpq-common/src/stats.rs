//! Indices of the per-CPU counters the kernel programs keep (`STATS` map).
//! The agent sums them over CPUs; `seen - delivered` is what was lost.

/// An ACK-time listener drop: `skb:kfree_skb` with reason
/// TCP_LISTEN_OVERFLOW, or `tcp_v{4,6}_syn_recv_sock` returning NULL.
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

/// `tcp_conn_request` dropped a SYN (kprobe/fentry).
pub const SYN_DROP_SEEN: u32 = 5;

/// `tcp_conn_request` answered a SYN with a syncookie (kprobe/fentry).
pub const SYNCOOKIE_SEEN: u32 = 6;
/// `tcp:tcp_receive_reset`.
pub const RESET_RECEIVED_SEEN: u32 = 7;
/// A connect() that failed (SYN_SENT → CLOSE).
pub const CONNECT_ERROR_SEEN: u32 = 8;

/// A listener opened or closed.
pub const LISTENER_SEEN: u32 = 9;

/// The most unconsumed bytes in the ring buffer seen right after a submit
/// (a per-CPU high-water mark the agent reads and resets: the fill gauge).
pub const RINGBUF_FILL_MAX: u32 = 10;

/// A counted kind's news record found the ring buffer full. Nothing is
/// lost: its count is in the `STORM` map, which the agent reads anyway.
pub const NEWS_DROPPED: u32 = 11;
/// The `STORM` map was full: the occurrence went out as a record of its
/// own (counted, so exact while the ring buffer has room).
pub const STORM_MAP_FULL: u32 = 12;
/// Records sent to the ring buffer (news and events): ≤ 1 per 1,000
/// healthy requests is the budget the healthy-path test holds tcpq to.
pub const RINGBUF_SENT: u32 = 13;

// Kernel-map losses: each map that can run out of room counts it here.
/// An accept() failure not counted: the `ACCEPT_ERRORS` hash was full
/// (not LRU: an evicted key would lose its count without a trace).
pub const ACCEPT_ERRORS_MAP_FULL: u32 = 14;
/// Listener keys created in the `ACCEPTS` LRU map. The agent never deletes
/// from it, so created − present = evicted (each eviction loses that
/// listener's accepts since the agent's last read).
pub const ACCEPTS_INSERTED: u32 = 15;
/// (netns, port) keys created in the `ACCEPT_LATENCY` LRU map: created −
/// present − removed by the agent = evicted (samples since the last read
/// lost).
pub const LATENCY_INSERTED: u32 = 16;
/// A kretprobe on `inet_csk_accept` found no entry from its kprobe in the
/// `ACCEPT_ENTRY` LRU map (evicted, or the call began between the
/// kretprobe's and the kprobe's attachment): that accept was not counted.
pub const ACCEPT_ENTRY_MISSING: u32 = 17;

pub const COUNT: u32 = 18;

//! Storms counted in the kernel: the `STORM` map.
//!
//! Every anomaly of a counted kind (SYN drops, SYN-queue drops, syncookies,
//! ACK-time overflows, resets sent, SYN-ACK retransmits, connect() errors)
//! adds 1 to a per-CPU value keyed by what it is about (the listener, or
//! for socket-less events the endpoint), its kind and its class (the reason
//! the agent would otherwise work out from each event). The value is the
//! latest [`Event`] of that key on that CPU with its running `count`.
//!
//! The ring buffer carries at most one news record per key and CPU per
//! interval (`Config::news_interval_ms`); the agent reads the map (every
//! sock_diag round, around each namespace's dump) and takes differences of
//! the per-CPU totals, so a flood of any size costs a few records and every
//! count stays exact, even when the ring buffer is full.

use crate::Event;

/// Keys the map holds; a full map sends each further occurrence as a record
/// of its own (`stats::STORM_MAP_FULL`), never drops it.
pub const MAX_KEYS: u32 = 4096;

/// What a count is about. 48 bytes, no padding.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct StormKey {
    /// The listener's kernel address; 0 for socket-less keys.
    pub sk: u64,
    /// An [`crate::EventKind`].
    pub kind: u32,
    /// Kind-specific class: [`class`] for SYN drops and ACK-time drops, the
    /// kernel's `sk_rst_reason` (+ [`class::QUEUE_FULL`]) for resets, the
    /// errno for connect() errors.
    pub class: u32,
    /// connect() errors inside connect(): the caller's thread-group id.
    pub who: u32,
    /// Socket-less keys: the netns (connect errors), address family, port
    /// and address of the endpoint (ours for resets, the destination for
    /// connect errors).
    pub netns: u32,
    pub port: u16,
    pub family: u16,
    pub _pad: u32,
    pub addr: [u8; 16],
}

const _: () = assert!(core::mem::size_of::<StormKey>() == 48);

/// One CPU's value: the latest event of the key (with its running count)
/// and when that CPU last sent news for it.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct StormValue {
    pub ev: Event,
    pub news_ns: u64,
}

impl StormValue {
    pub const fn zeroed() -> StormValue {
        StormValue {
            ev: Event::default_zeroed(),
            news_ns: 0,
        }
    }
}

#[cfg(feature = "user")]
unsafe impl aya::Pod for StormKey {}
#[cfg(feature = "user")]
unsafe impl aya::Pod for StormValue {}

/// Classes: the decision the agent's `classify_syn_drop` and ACK-drop code
/// make, taken in the kernel so each class counts under its own key.
pub mod class {
    /// SYN dropped: SYN queue full with syncookies off (TCPReqQFullDrop).
    pub const SYN_QUEUE_FULL: u32 = 1;
    /// SYN dropped: accept queue full (ListenOverflows).
    pub const ACCEPT_QUEUE_FULL: u32 = 2;
    /// SYN dropped: 3/4 of tcp_max_syn_backlog, syncookies off.
    pub const MAX_SYN_BACKLOG: u32 = 3;
    /// SYN dropped for another reason (memory, LSM, ...).
    pub const OTHER: u32 = 4;
    /// Set on ACK-time drops and resets whose listener's accept queue was
    /// full; an ACK-time drop's `outcome` is in the bits below it.
    pub const QUEUE_FULL: u32 = 1 << 31;
}

//! The one way out of the kernel: count, then write to the ring buffer.
//!
//! Wake-ups are batched: a record wakes the agent only when
//! `Config::ring_wake_bytes` wait unread (or for a counted key's first
//! news); otherwise it waits for the agent's next drain, which runs at every
//! sock_diag round (4 per second by default). A burst of records therefore
//! costs the agent one wake-up, not one per record.

use aya_ebpf::{
    bindings::{BPF_RB_AVAIL_DATA, BPF_RB_FORCE_WAKEUP, BPF_RB_NO_WAKEUP},
    helpers::bpf_ktime_get_ns,
    macros::map,
    maps::{PerCpuArray, RingBuf},
};
use tcpq_common::{stats, Event};

use crate::conf;

/// 1 MiB: about 10,000 records of backlog before anything is lost.
#[map]
static EVENTS: RingBuf = RingBuf::with_byte_size(1 << 20, 0);

/// Per-CPU counters, indexed by `tcpq_common::stats`.
#[map]
static STATS: PerCpuArray<u64> = PerCpuArray::with_max_entries(stats::COUNT, 0);

#[inline(always)]
pub fn bump(index: u32) {
    if let Some(v) = STATS.get_ptr_mut(index) {
        unsafe { *v += 1 };
    }
}

/// Raises the per-CPU high-water mark of unconsumed ring-buffer bytes
/// (`bpf_ringbuf_query`, 5.8+) and returns the bytes waiting.
#[inline(always)]
fn note_fill() -> u64 {
    let avail = EVENTS.query(BPF_RB_AVAIL_DATA as u64);
    if let Some(v) = STATS.get_ptr_mut(stats::RINGBUF_FILL_MAX) {
        unsafe {
            if avail > *v {
                *v = avail;
            }
        }
    }
    avail
}

/// Submit flags: wake the agent now only when asked or when enough waits.
#[inline(always)]
fn wake_flags(urgent: bool) -> u64 {
    if urgent || note_fill() >= conf!(ring_wake_bytes) as u64 {
        BPF_RB_FORCE_WAKEUP as u64
    } else {
        BPF_RB_NO_WAKEUP as u64
    }
}

/// Counts the event under `seen`, then reserves a ring-buffer slot and lets
/// `fill` write it. A full ring buffer is counted, never silent.
#[inline(always)]
pub fn emit(seen: u32, kind: u32, fill: impl FnOnce(&mut Event)) {
    bump(seen);
    match EVENTS.reserve::<Event>(0) {
        Some(mut slot) => {
            let ev = unsafe { &mut *slot.as_mut_ptr() };
            *ev = Event::default_zeroed();
            ev.ts_ns = unsafe { bpf_ktime_get_ns() };
            ev.kind = kind;
            ev.count = 1;
            fill(ev);
            bump(stats::RINGBUF_SENT);
            slot.submit(wake_flags(false));
        }
        None => bump(stats::RINGBUF_FULL),
    }
}

/// Sends a copy of an event that stands alone (a counted kind whose map
/// was full): lost only with a full ring buffer, and then counted.
#[inline(always)]
pub fn send(ev: &Event) {
    match EVENTS.reserve::<Event>(0) {
        Some(mut slot) => {
            unsafe { *slot.as_mut_ptr() = *ev };
            bump(stats::RINGBUF_SENT);
            slot.submit(wake_flags(false));
        }
        None => bump(stats::RINGBUF_FULL),
    }
}

/// Sends a copy of a counted key's latest event as news. Losing it loses
/// no count (the map holds it): counted apart from [`stats::RINGBUF_FULL`].
#[inline(always)]
pub fn news(ev: &Event, first: bool) {
    // Reserve + copy: `bpf_ringbuf_output` takes its flags before it knows
    // the fill, and a first news must not wait for the next drain.
    match EVENTS.reserve::<Event>(0) {
        Some(mut slot) => {
            unsafe { *slot.as_mut_ptr() = *ev };
            bump(stats::RINGBUF_SENT);
            slot.submit(wake_flags(first));
        }
        None => bump(stats::NEWS_DROPPED),
    }
}

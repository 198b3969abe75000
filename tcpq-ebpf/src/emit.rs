//! The one way out of the kernel: count, then write to the ring buffer.

use aya_ebpf::{
    bindings::BPF_RB_AVAIL_DATA,
    helpers::bpf_ktime_get_ns,
    macros::map,
    maps::{PerCpuArray, RingBuf},
};
use tcpq_common::{stats, Event};

/// 1 MiB: about 11,900 events of backlog before anything is lost.
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
/// (`bpf_ringbuf_query`, 5.8+). Runs only when an event was sent.
#[inline(always)]
fn note_fill() {
    let avail = EVENTS.query(BPF_RB_AVAIL_DATA as u64);
    if let Some(v) = STATS.get_ptr_mut(stats::RINGBUF_FILL_MAX) {
        unsafe {
            if avail > *v {
                *v = avail;
            }
        }
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
            fill(ev);
            slot.submit(0);
            note_fill();
        }
        None => bump(stats::RINGBUF_FULL),
    }
}

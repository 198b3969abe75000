//! Storms counted in the kernel (see `tcpq_common::storm`): each anomaly
//! of a counted kind adds 1 to its key's per-CPU value and refreshes the
//! latest event there; news goes to the ring buffer at most once per key,
//! CPU and interval. A flood of 100,000 SYN drops a second costs a map
//! update each, and a record or two a second.

use aya_ebpf::{
    bindings::BPF_NOEXIST,
    helpers::{bpf_get_smp_processor_id, bpf_ktime_get_ns},
    macros::map,
    maps::PerCpuHashMap,
};
use tcpq_common::{
    event::flags,
    stats,
    storm::{StormKey, StormValue, MAX_KEYS},
    Event,
};

use crate::{
    conf,
    emit::{bump, news, send},
};

/// Not LRU: an evicted key would lose its count without a trace. A full map
/// falls back to one record per occurrence (counted).
#[map]
static STORM: PerCpuHashMap<StormKey, StormValue> = PerCpuHashMap::with_max_entries(MAX_KEYS, 0);

/// Counts one occurrence of `kind` under `key` (and under `seen` in
/// `STATS`); `fill` writes the event's fields (not `count`, `ts_ns`,
/// `kind`).
#[inline(always)]
pub fn count(seen: u32, key: &StormKey, kind: u32, fill: impl FnOnce(&mut Event)) {
    // `fill` is called once, on the map's value or (map full) on this
    // scratch copy: a closure called from two places becomes a BPF
    // subprogram, which the verifier rejects for what it leaves in r0.
    let mut scratch = StormValue::zeroed();
    let mut counted = true;
    let v = match STORM.get_ptr_mut(key) {
        Some(v) => v,
        None => {
            // By reference: a copy would take another 112 bytes of the
            // 512-byte BPF stack.
            #[allow(clippy::needless_borrows_for_generic_args)]
            let _ = STORM.insert(key, &scratch, BPF_NOEXIST as u64);
            match STORM.get_ptr_mut(key) {
                Some(v) => v,
                None => {
                    counted = false;
                    &mut scratch as *mut StormValue
                }
            }
        }
    };
    bump(seen);
    let v = unsafe { &mut *v };
    let now = unsafe { bpf_ktime_get_ns() };
    fill(&mut v.ev);
    v.ev.kind = kind;
    v.ev.ts_ns = now;
    if !counted {
        // A record of its own, lost only with a full ring buffer (counted).
        bump(stats::STORM_MAP_FULL);
        v.ev.count = 1;
        return send(&v.ev);
    }
    v.ev.flags = flags::COUNTED;
    // Per CPU, so no other CPU writes here. A plain add: a key is only
    // ever counted from one context (listener drops, SYN-ACK timers and
    // socket-less resets in softirq; an EADDRNOTAVAIL inside connect() has
    // its caller in the key), so two updates of one key never nest.
    v.ev.count += 1;
    let first = v.news_ns == 0;
    let every = conf!(news_interval_ms) as u64 * 1_000_000;
    if first || now.wrapping_sub(v.news_ns) >= every {
        v.news_ns = now;
        v.ev.cpu = unsafe { bpf_get_smp_processor_id() };
        news(&v.ev, first);
    }
}

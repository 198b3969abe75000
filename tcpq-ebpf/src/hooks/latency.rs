//! Accept latency: how long a connection waited in the accept queue.
//!
//! Start: raw tracepoint `inet_sock_set_state` SYN_RECV → ESTABLISHED on the child
//! (`tcp_rcv_state_process`, right after `inet_csk_complete_hashdance` put
//! it in the accept queue), Linux 4.16+. End: `syscalls:sys_exit_accept{,4}`
//! returning an fd, followed to its socket through the task's fd table
//! (offsets from BTF). Both are tracepoints, so this works on kernels
//! without kprobes or fentry; accepts through io_uring are not seen.
//! Aggregated in the kernel: a histogram per (netns, port), read by the
//! agent; the per-connection start time lives in an LRU map, so
//! connections that are never accepted cost nothing lasting.
//!
//! Measured only for the listener ports the agent turns on in
//! `LATENCY_PORTS` (those whose accept queue it sees filling, or the one
//! `--port` names): on a healthy server both ends cost one array load.

use aya_ebpf::{
    bindings::BPF_NOEXIST,
    helpers::bpf_ktime_get_ns,
    macros::map,
    maps::{Array, HashMap, LruHashMap, LruPerCpuHashMap, PerCpuArray},
};
use tcpq_common::{
    latency::{bucket, LatencyHist, LAT_BUCKETS},
    stats,
};

use crate::{emit::bump, sock};

/// Child socket → when it completed its handshake.
/// BPF_F_NO_COMMON_LRU: per-CPU LRU lists, no global lock on insert.
/// LRU by design: connections that are never accepted (closed, or dropped
/// at overflow) leave a stamp that must not hold a slot. An evicted stamp
/// of a connection still waiting costs that one latency sample (not the
/// accept count); it takes 65,536 connections waiting host-wide, and
/// cannot be told apart from one established before measuring began.
#[map]
static ESTABLISHED_AT: LruHashMap<u64, u64> = LruHashMap::with_max_entries(65536, 2);

/// (netns << 16 | port) → histogram, per CPU. LRU; each key created is
/// counted (`stats::LATENCY_INSERTED`), so the agent can tell evictions
/// from the keys it removed itself.
#[map]
static ACCEPT_LATENCY: LruPerCpuHashMap<u64, LatencyHist> =
    LruPerCpuHashMap::with_max_entries(4096, 0);

/// (netns << 16 | port) of the listeners to measure.
#[map]
static LATENCY_PORTS: HashMap<u64, u8> = HashMap::with_max_entries(1024, 0);

/// [0] non-zero while `LATENCY_PORTS` has any entry.
#[map]
static LATENCY_ON: Array<u32> = Array::with_max_entries(1, 0);

#[inline(always)]
pub fn on() -> bool {
    LATENCY_ON.get(0).is_some_and(|v| *v != 0)
}

#[inline(always)]
fn key_of(sk: u64) -> u64 {
    (sock::netns(sk) as u64) << 16 | sock::lport(sk) as u64
}

/// A zeroed histogram to insert from (too big for the BPF stack).
#[map]
static ZERO: PerCpuArray<LatencyHist> = PerCpuArray::with_max_entries(1, 0);

#[inline(always)]
pub fn established(sk: u64) {
    if !on() || sk == 0 || sock::filtered_out(sk) {
        return;
    }
    // An exact (netns, port), or the port in any netns (netns 0).
    let key = key_of(sk);
    if unsafe { LATENCY_PORTS.get(key) }.is_none()
        && unsafe { LATENCY_PORTS.get(key & 0xffff) }.is_none()
    {
        return;
    }
    let now = unsafe { bpf_ktime_get_ns() };
    let _ = ESTABLISHED_AT.insert(sk, now, 0);
}

/// The current task accepted `sk` (the socket behind the fd the accept
/// syscall returned).
#[inline(always)]
pub fn accepted(sk: u64) {
    let Some(at) = ESTABLISHED_AT.get_ptr_mut(sk) else {
        return;
    };
    // SAFETY: a live entry; 0 marks it used (cheaper than a delete; the
    // LRU recycles it).
    let start = unsafe { core::mem::replace(&mut *at, 0) };
    if start == 0 {
        return;
    }
    let ns = unsafe { bpf_ktime_get_ns() }.saturating_sub(start);
    let key = key_of(sk);
    let h = match ACCEPT_LATENCY.get_ptr_mut(key) {
        Some(h) => h,
        None => {
            let Some(zero) = ZERO.get(0) else { return };
            // NOEXIST: created here, not by another CPU meanwhile.
            if ACCEPT_LATENCY.insert(key, zero, BPF_NOEXIST as u64).is_ok() {
                bump(stats::LATENCY_INSERTED);
            }
            match ACCEPT_LATENCY.get_ptr_mut(key) {
                Some(h) => h,
                None => return,
            }
        }
    };
    // SAFETY: this CPU's value of a live entry.
    let h = unsafe { &mut *h };
    h.count += 1;
    h.sum_ns += ns;
    if ns > h.max_ns {
        h.max_ns = ns;
    }
    // The mask is a no-op (bucket() < 128) the compiler cannot see
    // through: it gives the verifier a bound it can check on any kernel.
    let i = core::hint::black_box(bucket(ns)) & (LAT_BUCKETS - 1);
    h.buckets[i] += 1;
}

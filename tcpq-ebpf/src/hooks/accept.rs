//! Accepts per listener, aggregated in the kernel.
//!
//! struct sock *inet_csk_accept(struct sock *sk, int flags, int *err, bool kern);
//!     (Linux ≤ 6.9)
//! struct sock *inet_csk_accept(struct sock *sk, struct proto_accept_arg *arg);
//!     (Linux 6.10+)
//! `sk` (the listener) is the first argument in both. It runs in process
//! context and may sleep (a blocking accept), so the kprobe variant keeps
//! entry state per thread, not per CPU. Without fentry or kprobes there is
//! no accept hook; tcpq then reports no accept counts.

use aya_ebpf::{
    bindings::BPF_NOEXIST,
    helpers::bpf_get_current_pid_tgid,
    macros::{fexit, kprobe, kretprobe, map},
    maps::{LruHashMap, LruPerCpuHashMap},
    programs::{FExitContext, ProbeContext, RetProbeContext},
};
use tcpq_common::{protos::arg, stats, AcceptStats};

use crate::{conf, emit::bump, sock};

/// Per CPU, so concurrent accepts on one listener never race; the agent
/// sums the CPUs. LRU, so listeners that closed make room; each key created
/// is counted (`stats::ACCEPTS_INSERTED`) and the agent, which never
/// deletes here, reports created − present as evicted.
#[map]
static ACCEPTS: LruPerCpuHashMap<u64, AcceptStats> = LruPerCpuHashMap::with_max_entries(8192, 0);

/// kprobe entry → kretprobe: listener per thread. LRU: a thread that dies
/// inside a blocking accept() never reaches the kretprobe, and its entry
/// must not take a slot forever. A kretprobe that finds no entry is
/// counted (`stats::ACCEPT_ENTRY_MISSING`).
#[map]
static ACCEPT_ENTRY: LruHashMap<u64, u64> = LruHashMap::with_max_entries(8192, 0);

#[inline(always)]
fn accepted(sk: u64, child: u64) {
    if child == 0 || sk == 0 || sock::filtered_out(sk) {
        return;
    }
    crate::accepted::remember(child);
    // The queue has already given up the child: depth at accept is one more.
    let depth = sock::read::<u32>(sk, conf!(sk_ack_backlog)).unwrap_or(0) + 1;
    let mut p = ACCEPTS.get_ptr_mut(sk);
    if p.is_none() {
        let zero = AcceptStats {
            accepts: 0,
            depth_max: 0,
            netns: 0,
            sock_ino: 0,
            _pad: 0,
        };
        // NOEXIST: created here, not by another CPU meanwhile.
        if ACCEPTS.insert(sk, zero, BPF_NOEXIST as u64).is_ok() {
            bump(stats::ACCEPTS_INSERTED);
        }
        p = ACCEPTS.get_ptr_mut(sk);
    }
    let Some(s) = p else { return };
    // SAFETY: this CPU's value of a live entry. Created here or on another
    // CPU, it starts zeroed: fill in the listener's identity.
    let s = unsafe { &mut *s };
    s.accepts += 1;
    if depth > s.depth_max {
        s.depth_max = depth;
    }
    if s.sock_ino == 0 {
        let mut ev = tcpq_common::Event::default_zeroed();
        sock::fill_listener(&mut ev, sk);
        s.netns = ev.netns;
        s.sock_ino = ev.sock_ino;
    }
}

#[fexit(function = "inet_csk_accept")]
pub fn tcpq_accept_fexit(ctx: FExitContext) -> u32 {
    accepted(
        ctx.arg::<u64>(arg::CSK_ACCEPT_SK),
        ctx.ret::<u64>().unwrap_or(0),
    );
    0
}

#[kprobe]
pub fn tcpq_accept_kprobe(ctx: ProbeContext) -> u32 {
    let sk = ctx.arg::<u64>(arg::CSK_ACCEPT_SK).unwrap_or(0);
    let _ = ACCEPT_ENTRY.insert(bpf_get_current_pid_tgid(), sk, 0);
    0
}

#[kretprobe]
pub fn tcpq_accept_kretprobe(ctx: RetProbeContext) -> u32 {
    let tid = bpf_get_current_pid_tgid();
    match unsafe { ACCEPT_ENTRY.get(tid) }.copied() {
        Some(sk) => {
            let _ = ACCEPT_ENTRY.remove(tid);
            accepted(sk, ctx.ret::<u64>());
        }
        None => bump(stats::ACCEPT_ENTRY_MISSING),
    }
    0
}

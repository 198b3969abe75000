//! The backlog an application asked `listen()` for, before the kernel caps
//! it to `net.core.somaxconn` (the listener only keeps the capped value,
//! `sk_max_ack_backlog`, which sock_diag shows).
//!
//! Hook: fentry, else kprobe, on
//!   int __sys_listen(int fd, int backlog);
//! (every kernel since 4.17's syscall wrappers; where it is inlined into
//! `__x64_sys_listen` it has no symbol and is not hooked). Its entry stores
//! the backlog under the calling thread; the CLOSE → LISTEN state change
//! inside the same call (`connect`'s `inet_sock_set_state` hook) takes it
//! into the listener's `ListenerUp` event. listen() through io_uring
//! (`__sys_listen_socket`, 6.11+) is not seen. Kernels with neither kind of
//! hook: the requested value cannot be known, and the verdict says so.
//!
//! The prototype is checked against each kernel's BTF
//! (`tcpq_common::protos::KFUNCS`, `tcpq-agent doctor`).
//!
//! Cost: runs on listen() calls only, never on the connection path.

use aya_ebpf::{
    helpers::bpf_get_current_pid_tgid,
    macros::{fentry, kprobe, map},
    maps::LruHashMap,
    programs::{FEntryContext, ProbeContext},
};
use tcpq_common::protos::arg;

/// pid_tgid → the backlog its running listen() asked for. LRU: an entry
/// whose listen() failed before the state change is simply displaced.
#[map]
static REQUESTED_BACKLOG: LruHashMap<u64, i32> = LruHashMap::with_max_entries(1024, 0);

#[inline(always)]
fn requested(backlog: i32) {
    let _ = REQUESTED_BACKLOG.insert(bpf_get_current_pid_tgid(), backlog, 0);
}

/// The backlog the current thread's listen() asked for, taken: the value
/// in the low 32 bits and [`TAKEN`] set, or 0 when none was seen. A plain
/// integer, not an `Option`: the 6.1 verifier rejects the uninitialised
/// stack slot LLVM leaves behind for a `None` carried into a closure.
#[inline(always)]
pub fn take() -> u64 {
    let tid = bpf_get_current_pid_tgid();
    match unsafe { REQUESTED_BACKLOG.get(tid) } {
        Some(b) => {
            let v = TAKEN | u64::from(*b as u32);
            let _ = REQUESTED_BACKLOG.remove(tid);
            v
        }
        None => 0,
    }
}

/// Set in what [`take`] returns when a backlog was seen.
pub const TAKEN: u64 = 1 << 32;

#[fentry(function = "__sys_listen")]
pub fn tcpq_sys_listen_fentry(ctx: FEntryContext) -> u32 {
    requested(ctx.arg::<i32>(arg::SYS_LISTEN_BACKLOG));
    0
}

#[kprobe]
pub fn tcpq_sys_listen_kprobe(ctx: ProbeContext) -> u32 {
    if let Some(b) = ctx.arg::<i32>(arg::SYS_LISTEN_BACKLOG) {
        requested(b);
    }
    0
}

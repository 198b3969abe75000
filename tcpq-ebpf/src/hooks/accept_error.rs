//! accept() failures per process, counted in the kernel.
//!
//! Hooks: tracepoints `syscalls:sys_exit_accept4` and `syscalls:sys_exit_accept`
//!   (record: `long ret`). Every kernel with syscall tracepoints
//!   (CONFIG_FTRACE_SYSCALLS); no fallback.
//! EMFILE (no free fd under RLIMIT_NOFILE) and ENFILE (fs.file-max) happen
//! before `inet_csk_accept` runs: the connection stays queued, so only the
//! syscall sees them. An application in an EMFILE loop can fail millions
//! of times a second, so failures are counted in a map the agent reads,
//! never sent one by one; the first failure per process and errno also
//! keeps the process's name (`names::COMMS`). A successful accept is
//! followed to its socket only while accept latency is measured or
//! `inet_csk_accept` is not hooked (`accepted`). Cost on the healthy path:
//! one load, one compare, two array loads.

use aya_ebpf::{
    bindings::BPF_NOEXIST, helpers::bpf_get_current_pid_tgid, macros::map, macros::tracepoint,
    maps::PerCpuHashMap, programs::TracePointContext,
};
use tcpq_common::stats;

use crate::{conf, emit::bump, sock};

const EAGAIN: i64 = 11;

/// (tgid << 32 | errno) → failures since the entry was created, per CPU
/// (no cross-CPU races; the agent sums). Not LRU: an evicted key would
/// lose its count silently. The agent deletes the keys of processes that
/// exited (after reading them); a failure that finds the map full is
/// counted in `stats::ACCEPT_ERRORS_MAP_FULL`.
#[map]
static ACCEPT_ERRORS: PerCpuHashMap<u64, u64> = PerCpuHashMap::with_max_entries(4096, 0);

/// A successful accept: its socket, when the latency histograms or the
/// accepted-socket record want it (one walk of the fd table for both).
#[inline(always)]
fn accepted(fd: i64) {
    let latency = crate::hooks::latency::on();
    let follow = crate::accepted::by_fd();
    if !latency && !follow {
        return;
    }
    let Some(sk) = sock::of_fd(fd) else { return };
    if latency {
        crate::hooks::latency::accepted(sk);
    }
    if follow {
        crate::accepted::remember(sk);
    }
}

#[tracepoint]
pub fn tcpq_accept_exit(ctx: TracePointContext) -> u32 {
    let Ok(ret) = (unsafe { ctx.read_at::<i64>(conf!(accept_ret) as usize) }) else {
        return 0;
    };
    if ret >= 0 {
        accepted(ret);
        return 0;
    }
    // A non-blocking accept with nothing queued.
    if ret == -EAGAIN {
        return 0;
    }
    let tgid = bpf_get_current_pid_tgid() >> 32;
    let key = tgid << 32 | (-ret) as u64;
    let mut p = ACCEPT_ERRORS.get_ptr_mut(key);
    if p.is_none() {
        // NOEXIST: another CPU may have created it meanwhile (then this
        // CPU's value of it is 0, and found below).
        let _ = ACCEPT_ERRORS.insert(key, 0, BPF_NOEXIST as u64);
        // The first failure of this process and errno: its name, for a
        // process gone before the agent reads /proc.
        crate::names::remember(tgid as u32);
        p = ACCEPT_ERRORS.get_ptr_mut(key);
    }
    match p {
        // SAFETY: this CPU's value of a live entry.
        Some(p) => unsafe { *p += 1 },
        None => bump(stats::ACCEPT_ERRORS_MAP_FULL),
    }
    0
}

//! Process names taken in the kernel, where the event runs in the
//! process's own context (a `connect()` that found no free local port, a
//! `listen()`): the agent reads `/proc` a moment later, and a short-lived
//! client (a cron job, a script, a CGI worker) is gone by then.
//!
//! `COMMS` maps a tgid to `comm` as `bpf_get_current_comm` gives it (the
//! calling thread's name, which is the process's for a single-threaded
//! client). LRU: an evicted name is not a lost count, the line falls back to
//! `/proc`. Written on those rare events only, never on the healthy path.

use aya_ebpf::{helpers::bpf_get_current_comm, macros::map, maps::LruHashMap};

#[map]
static COMMS: LruHashMap<u32, [u8; 16]> = LruHashMap::with_max_entries(4096, 0);

/// Remembers the current task's name under `tgid`.
#[inline(always)]
pub fn remember(tgid: u32) {
    if let Ok(comm) = bpf_get_current_comm() {
        let _ = COMMS.insert(tgid, comm, 0);
    }
}

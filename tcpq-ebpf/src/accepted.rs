//! Accepted sockets followed from the kernel: which process accepted each
//! connection, so that a RST received on it, or a CLOSE_WAIT left behind
//! after its listener closed, names the process without a `/proc` walk,
//! even once the socket (and its inode) is gone.
//!
//! Written where an accept completes in the accepting process's context:
//! `inet_csk_accept` exit (fexit or kretprobe), else the accept syscall's
//! exit tracepoint while the syscall hooks are on (`BY_FD`), which follows
//! the returned fd to its socket. Read by the RST-received hook (rare) and
//! by the agent. Healthy-path cost: a few field reads and one LRU update
//! per accept; an evicted entry only sends that line back to `/proc`.

use aya_ebpf::{
    helpers::bpf_get_current_pid_tgid,
    macros::map,
    maps::{Array, LruHashMap},
};
use tcpq_common::{accepted::PeerKey, config::AF_INET6, Event};

use crate::{conf, sock};

/// Connection → tgid of the process that accepted it. BPF_F_NO_COMMON_LRU
/// (2): per-CPU LRU lists, no global lock on insert.
#[map]
static ACCEPTED_BY: LruHashMap<PeerKey, u32> = LruHashMap::with_max_entries(65536, 2);

/// [0] non-zero: the accept syscall exit records accepts (no
/// `inet_csk_accept` hook attached). Set by the agent.
#[map]
static BY_FD: Array<u32> = Array::with_max_entries(1, 0);

/// Whether the accept syscall exit should record accepts.
#[inline(always)]
pub fn by_fd() -> bool {
    BY_FD.get(0).is_some_and(|v| *v != 0)
}

/// The current process accepted `child`.
#[inline(always)]
pub fn remember(child: u64) {
    let family = sock::read::<u16>(child, conf!(skc_family)).unwrap_or(0);
    let mut key = PeerKey {
        netns: sock::netns(child),
        family,
        lport: sock::lport(child),
        rport: u16::from_be(sock::read::<u16>(child, conf!(skc_dport)).unwrap_or(0)),
        _pad: 0,
        raddr: [0; 16],
    };
    if family == AF_INET6 {
        key.raddr = sock::read::<[u8; 16]>(child, conf!(skc_v6_daddr)).unwrap_or([0; 16]);
    } else {
        let r = sock::read::<[u8; 4]>(child, conf!(skc_daddr)).unwrap_or([0; 4]);
        key.raddr[..4].copy_from_slice(&r);
    }
    let tgid = (bpf_get_current_pid_tgid() >> 32) as u32;
    let _ = ACCEPTED_BY.insert(key, tgid, 0);
}

/// The tgid that accepted the connection `ev` (filled by
/// `sock::fill_common`) describes; 0 when unknown.
#[inline(always)]
pub fn by(ev: &Event) -> u32 {
    let key = PeerKey {
        netns: ev.netns,
        family: ev.family,
        lport: ev.lport,
        rport: ev.rport,
        _pad: 0,
        raddr: ev.raddr,
    };
    unsafe { ACCEPTED_BY.get(key) }.copied().unwrap_or(0)
}

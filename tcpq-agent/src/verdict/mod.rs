//! Verdicts: turn the evidence gathered about a listener (or about the
//! outgoing connections of a network namespace) into one plain-English
//! sentence of cause and one of remedy, for the engineer on call.
//!
//! Pure: no I/O, no privileges, std only. The sentences quote the real
//! numbers and the sysctls the kernel applied in that network namespace, so
//! they can be pasted into an incident channel as they are.
//!
//! Kernel facts the wording relies on (Linux 6.x):
//! - The accept-queue limit is `min(backlog, net.core.somaxconn)`, computed
//!   once in `listen()`; a later change of the sysctl only applies after the
//!   application calls `listen()` again (or restarts). `listen(fd, N)` holds
//!   N+1 connections.
//! - When the accept queue is full a new SYN is dropped silently (the client
//!   retransmits it), and a handshake's final ACK is either dropped (the
//!   SYN-ACK is retransmitted up to `net.ipv4.tcp_synack_retries` times) or,
//!   with `net.ipv4.tcp_abort_on_overflow=1`, answered with a RST.
//! - The SYN (half-open) queue is full when it holds more than the listen
//!   limit; then syncookies are sent if `net.ipv4.tcp_syncookies` is on,
//!   else the SYN is dropped. Only with syncookies off, SYNs from unproven
//!   peers are also dropped once more than `max - max/4` of
//!   `net.ipv4.tcp_max_syn_backlog` are half-open.
//! - A syncookie keeps only a coarse MSS, and window scaling and SACK only
//!   when TCP timestamps are in use.
//! - `accept()` failing with EMFILE/ENFILE leaves the connection queued.
//! - Port counts for `ports` are host-local approximations: a local port may
//!   be shared by connections to different destinations, so "left" is exact
//!   only when most connections go to one destination.
//!
//! Each failure mode has its file (`fds`, `overflow`, `syn`,
//! `close_wait`, `slow`, `ports`); the remedy sentences are in
//! [`remedy`] (the alerting rules quote them), counted words in `words`.
//! The evidence a rule reads is built in one place, [`evidence`], from a
//! report line's facts (`trace`, through [`explain`]) or a status row's.

mod close_wait;
pub mod evidence;
pub mod explain;
mod fds;
mod overflow;
mod ports;
pub mod remedy;
mod slow;
pub mod status;
mod syn;
mod words;

pub use ports::ports;

/// The per-netns settings the kernel applied (None = unknown): what the
/// agent reads from each namespace.
pub use crate::source::netstat::Sysctls as Settings;

/// What is known about one listener over the reporting window (counts are
/// over the window; queue values are now).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ListenerEvidence {
    pub endpoint: String,               // e.g. "0.0.0.0:8080" or "[::]:443"
    pub process: Option<String>,        // e.g. "nginx (pid 123)"
    pub queue_len: u32,                 // accept queue now (ss Recv-Q)
    pub queue_limit: u32,               // min(backlog, somaxconn) (ss Send-Q)
    pub backlog_requested: Option<u32>, // what the app passed to listen(), if seen
    pub overflows: u64,                 // listen_overflow (accept queue full), SYN + ACK stage
    pub overflow_resets: u64,           // of which answered with RST (abort_on_overflow=1)
    pub syn_queue_drops: u64,           // SYN (half-open) queue full / 3/4 max_syn_backlog rule
    pub syncookies_sent: u64,
    pub syn_queue_len: u32,                // half-open (SYN_RECV) requests now
    pub close_wait: u32,                   // sockets accepted from this listener now in CLOSE_WAIT
    pub accept_errors: Vec<(String, u64)>, // e.g. ("EMFILE", 120) for the owning process
    pub open_fds: Option<u32>,
    pub fd_limit: Option<u64>, // RLIMIT_NOFILE soft limit of the owner
    pub accept_latency_p99_ms: Option<f64>,
    pub settings: Settings,
}

/// Outgoing connections of one network namespace.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct PortEvidence {
    pub addr_not_avail: u64,  // connect() EADDRNOTAVAIL in the window
    pub time_wait: u32,       // TIME_WAIT sockets in the netns now
    pub connected: u32,       // other sockets holding a local port now (ESTABLISHED etc.)
    pub tw_reuse: Option<u8>, // net.ipv4.tcp_tw_reuse
    pub settings: Settings,
}

/// One sentence of cause and one of remedy, each a single line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Verdict {
    pub cause: String,
    pub remedy: String,
}

/// The verdict for one listener, or None when nothing is wrong.
///
/// First match wins: accept() out of file descriptors, accept-queue
/// overflow, SYN-queue drops, syncookies, CLOSE_WAIT build-up, slow accept.
pub fn listener(e: &ListenerEvidence) -> Option<Verdict> {
    if let Some(v) = fds::fd_exhaustion(e) {
        return Some(v);
    }
    if e.overflows > 0 {
        return Some(overflow::accept_overflow(e));
    }
    if e.syn_queue_drops > 0 {
        return Some(syn::syn_queue_drops(e));
    }
    if e.syncookies_sent > 0 {
        return Some(syn::syncookies(e));
    }
    if e.close_wait > 0 {
        return Some(close_wait::close_wait(e));
    }
    if slow::slow_accept(e) {
        return Some(slow::slow(e));
    }
    None
}

#[cfg(test)]
mod testutil;

#[cfg(test)]
mod tests {
    use super::testutil::*;
    use super::*;

    #[test]
    fn healthy_listener_has_no_verdict() {
        assert_eq!(listener(&healthy()), None);
        // A slow p99 is a warning even when the queue has drained since.
        let e = ListenerEvidence {
            accept_latency_p99_ms: Some(900.0),
            ..healthy()
        };
        assert!(listener(&e)
            .unwrap()
            .cause
            .contains("waited 900 ms (p99) before accept() and none is queued now"));
        // Queued, but accepted quickly.
        let e = ListenerEvidence {
            queue_len: 30,
            accept_latency_p99_ms: Some(99.9),
            ..healthy()
        };
        assert_eq!(listener(&e), None);
        // Other errors than EMFILE/ENFILE are not a verdict by themselves.
        let e = ListenerEvidence {
            accept_errors: vec![("EMFILE".to_string(), 0), ("EAGAIN".to_string(), 9)],
            ..healthy()
        };
        assert_eq!(listener(&e), None);
    }

    #[test]
    fn overflow_wins_over_syn_queue_drops() {
        let e = ListenerEvidence {
            overflows: 5,
            syn_queue_drops: 9,
            syncookies_sent: 4,
            close_wait: 3,
            queue_len: 512,
            ..healthy()
        };
        let v = verdict(&e);
        assert!(v
            .cause
            .starts_with("The accept queue of 0.0.0.0:8080 overflowed 5 times"));
    }
}

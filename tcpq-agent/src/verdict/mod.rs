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

pub mod explain;

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

/// p99 accept latency (ms) from which a listener with a non-empty queue is
/// called slow even though nothing was dropped yet.
const SLOW_ACCEPT_MS: f64 = 100.0;

/// The verdict for one listener, or None when nothing is wrong.
///
/// First match wins: accept() out of file descriptors, accept-queue
/// overflow, SYN-queue drops, syncookies, CLOSE_WAIT build-up, slow accept.
pub fn listener(e: &ListenerEvidence) -> Option<Verdict> {
    if let Some(v) = fd_exhaustion(e) {
        return Some(v);
    }
    if e.overflows > 0 {
        return Some(accept_overflow(e));
    }
    if e.syn_queue_drops > 0 {
        return Some(syn_queue_drops(e));
    }
    if e.syncookies_sent > 0 {
        return Some(syncookies(e));
    }
    if e.close_wait > 0 {
        return Some(close_wait(e));
    }
    if slow_accept(e) {
        return Some(slow(e));
    }
    None
}

/// The verdict for the outgoing connections of one network namespace, or
/// None when local ports are not running out.
pub fn ports(e: &PortEvidence) -> Option<Verdict> {
    let range = e
        .settings
        .port_range
        .filter(|(lo, hi)| lo <= hi)
        .map(|(lo, hi)| (lo, hi, u64::from(hi) - u64::from(lo) + 1));
    let held = u64::from(e.time_wait) + u64::from(e.connected);
    let tw = e.time_wait;
    let conn = e.connected;
    let cause = match range {
        Some((lo, hi, size)) => {
            let left = size.saturating_sub(held);
            let low = left * 10 < size;
            if e.addr_not_avail == 0 && !low {
                return None;
            }
            let numbers = format!(
                "net.ipv4.ip_local_port_range {lo}–{hi} has {}, {tw} held in TIME_WAIT and {conn} by open connections",
                count(size, "port", "ports")
            );
            if e.addr_not_avail == 0 {
                format!(
                    "Local ports are nearly exhausted: {numbers}, {left} left; connect() fails with EADDRNOTAVAIL once none are."
                )
            } else if low {
                format!(
                    "connect() failed with EADDRNOTAVAIL {}: {numbers}, {left} left.",
                    times(e.addr_not_avail)
                )
            } else {
                format!(
                    "connect() failed with EADDRNOTAVAIL {}: {numbers}, {left} left now, so the shortage has eased or comes in bursts.",
                    times(e.addr_not_avail)
                )
            }
        }
        None => {
            if e.addr_not_avail == 0 {
                return None;
            }
            format!(
                "connect() failed with EADDRNOTAVAIL {} because no local port was free: {tw} held in TIME_WAIT and {conn} by open connections now (net.ipv4.ip_local_port_range unknown).",
                times(e.addr_not_avail)
            )
        }
    };
    let (reuse, already) = if e.time_wait == 0 {
        (String::new(), "")
    } else {
        match e.tw_reuse {
            Some(1) => (String::new(), " (net.ipv4.tcp_tw_reuse is already 1)"),
            Some(2) => (
                " or enabling net.ipv4.tcp_tw_reuse=1 (currently 2, loopback only)".to_string(),
                "",
            ),
            Some(v) => (
                format!(" or enabling net.ipv4.tcp_tw_reuse=1 (currently {v})"),
                "",
            ),
            None => (" or enabling net.ipv4.tcp_tw_reuse=1".to_string(), ""),
        }
    };
    let remedy = format!(
        "Reuse connections (keep-alive / connection pooling) — the durable fix; widening net.ipv4.ip_local_port_range{reuse} only buys headroom{already}."
    );
    Some(Verdict { cause, remedy })
}

/// Rule 1: accept() fails with EMFILE (per process) or ENFILE (host-wide).
fn fd_exhaustion(e: &ListenerEvidence) -> Option<Verdict> {
    let errors = |name: &str| -> u64 {
        e.accept_errors
            .iter()
            .filter(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, c)| *c)
            .sum()
    };
    let emfile = errors("EMFILE");
    let enfile = errors("ENFILE");
    let cw = e.close_wait;
    let leaking = if cw > 0 {
        format!(
            "{} in CLOSE_WAIT, so the application is not closing connections its peers have closed",
            count_sit(cw, "accepted connection")
        )
    } else {
        String::new()
    };
    let waiting = if e.overflows > 0 {
        format!(
            "; meanwhile the accept queue overflowed {} ({} queued now, limit {})",
            times(e.overflows),
            e.queue_len,
            e.queue_limit
        )
    } else if e.queue_len > 0 {
        format!(
            "; meanwhile {} in the accept queue (limit {})",
            count_wait(e.queue_len),
            e.queue_limit
        )
    } else {
        String::new()
    };
    if emfile > 0 {
        let who = e.process.as_deref().unwrap_or("the process");
        let fds = match (e.open_fds, e.fd_limit) {
            (Some(o), Some(l)) => format!("{who} has {o} of {l} file descriptors open"),
            (Some(o), None) => format!("{who} has {o} file descriptors open"),
            (None, Some(l)) => format!("{who} has used up its limit of {l} file descriptors"),
            (None, None) => format!("{who} has used up its file descriptors"),
        };
        let why = if cw > 0 {
            format!("{fds}, and {leaking}")
        } else {
            format!("{fds}, so its file-descriptor limit is too low for the load")
        };
        let cause = format!(
            "accept() is failing with EMFILE ({}): {why}{waiting}.",
            times(emfile)
        );
        let above = e
            .fd_limit
            .map(|l| format!(" above {l}"))
            .unwrap_or_default();
        let remedy = if cw > 0 {
            format!(
                "Fix the descriptor leak: close each socket when a read returns EOF or an error (the peer has closed it); raising LimitNOFILE= or ulimit -n{above} only buys time."
            )
        } else {
            format!(
                "Raise the file-descriptor limit{above} (LimitNOFILE= in the systemd unit, ulimit -n, or prlimit --nofile for the running process), and if the number of open descriptors keeps climbing, look for a descriptor leak."
            )
        };
        return Some(Verdict { cause, remedy });
    }
    if enfile > 0 {
        let here = if cw > 0 {
            format!(", and here {leaking}")
        } else {
            String::new()
        };
        let cause = format!(
            "accept() is failing with ENFILE ({}): the host-wide file table (fs.file-max) is exhausted, so no process can open new files or sockets{here}{waiting}.",
            times(enfile)
        );
        let remedy = if cw > 0 {
            "Stop the leak: close each socket when a read returns EOF or an error (the peer has closed it); raising fs.file-max (host-wide, not per container) only buys time.".to_string()
        } else {
            "Find which process holds the descriptors (/proc/sys/fs/file-nr, then ls /proc/PID/fd per process) and raise fs.file-max (host-wide, not per container) if the load is legitimate.".to_string()
        };
        return Some(Verdict { cause, remedy });
    }
    None
}

/// Why the accept-queue limit is what it is.
enum Limit {
    /// listen(b) was capped by the current somaxconn.
    Capped { b: u32, s: u32 },
    /// listen(b) was capped by the somaxconn of listen() time; it is now
    /// larger than the limit.
    Stale { b: u32, s: u32 },
    /// listen(b) was capped; somaxconn unknown (or lowered since).
    CappedUnknown { b: u32, s: Option<u32> },
    /// listen() backlog unknown, but the limit equals somaxconn.
    ProbablyCapped { s: u32 },
    /// The application's own backlog is the limit.
    Own { b: Option<u32>, s: Option<u32> },
}

fn limit_reason(e: &ListenerEvidence) -> Limit {
    let limit = e.queue_limit;
    match (e.backlog_requested, e.settings.somaxconn) {
        (Some(b), Some(s)) if b > limit && s == limit => Limit::Capped { b, s },
        (Some(b), Some(s)) if b > limit && s > limit => Limit::Stale { b, s },
        (Some(b), s) if b > limit => Limit::CappedUnknown { b, s },
        (None, Some(s)) if s == limit => Limit::ProbablyCapped { s },
        (b, s) => Limit::Own { b, s },
    }
}

/// Rule 2: the accept queue overflowed.
fn accept_overflow(e: &ListenerEvidence) -> Verdict {
    let limit = e.queue_limit;
    let why = match limit_reason(e) {
        Limit::Capped { b, s } => {
            format!(" because listen(…, {b}) was capped to net.core.somaxconn={s}")
        }
        Limit::Stale { b, s } => format!(
            " because listen(…, {b}) was capped to {limit} by the net.core.somaxconn in force at listen() time (it is {s} now)"
        ),
        Limit::CappedUnknown { b, s } => {
            let now = s.map(|s| format!(" (it is {s} now)")).unwrap_or_default();
            format!(
                " because listen(…, {b}) was capped to {limit} at listen() time, presumably by net.core.somaxconn{now}"
            )
        }
        Limit::ProbablyCapped { s } => format!(
            ", probably because the application's listen() backlog was capped to net.core.somaxconn={s} (the backlog it asked for is not known: tcpq sees it only in listen() calls made while it runs, on kernels with kprobes or fentry)"
        ),
        Limit::Own { b: Some(b), .. } => {
            format!(" because the application asked listen() for a backlog of only {b}")
        }
        Limit::Own { b: None, s: Some(s) } if s > limit => format!(
            " because the application's own listen() backlog of {limit} is below net.core.somaxconn={s}"
        ),
        Limit::Own { .. } => String::new(),
    };
    let mut clauses = Vec::new();
    if let Some(p) = e.accept_latency_p99_ms {
        clauses.push(format!(
            "connections waited {} (p99) to be accepted",
            millis(p)
        ));
    }
    clauses.push(overflow_effect(e));
    let cause = format!(
        "The accept queue of {} overflowed {} ({} queued now, limit {limit}){why}; {}.",
        e.endpoint,
        times(e.overflows),
        e.queue_len,
        clauses.join("; ")
    );
    let raise_somaxconn = |b: u32| {
        format!(
            "Raise net.core.somaxconn to at least {b} in this network namespace (sysctl -w net.core.somaxconn={b}, or the container's sysctls), then restart the service or make it call listen() again, because the limit is fixed at listen() time."
        )
    };
    let remedy = match limit_reason(e) {
        Limit::Capped { b, .. } | Limit::CappedUnknown { b, .. } => raise_somaxconn(b),
        Limit::Stale { b, s } if s >= b => format!(
            "Restart the service or make it call listen() again so the current net.core.somaxconn={s} applies, because the limit is fixed at listen() time."
        ),
        Limit::Stale { b, .. } => raise_somaxconn(b),
        Limit::ProbablyCapped { s } => format!(
            "Raise net.core.somaxconn above {s} in this network namespace (or the container's sysctls) together with the application's own backlog, then restart the service or make it call listen() again, because the limit is fixed at listen() time."
        ),
        Limit::Own { s, .. } => {
            let cap = match s {
                Some(s) if s > limit => format!(" up to net.core.somaxconn={s},"),
                Some(s) => format!(" together with net.core.somaxconn={s}, which caps it,"),
                None => ", check net.core.somaxconn, which caps it,".to_string(),
            };
            format!(
                "Raise the application's listen backlog (e.g. nginx `listen … backlog=`, redis `tcp-backlog`){cap} and make the application accept faster (more accept threads or workers, no blocking work in the accept loop)."
            )
        }
    };
    Verdict { cause, remedy }
}

/// What the clients of an overflowing accept queue experienced.
fn overflow_effect(e: &ListenerEvidence) -> String {
    let st = &e.settings;
    let resets = e.overflow_resets.min(e.overflows);
    let silent = e.overflows - resets;
    let retries = st
        .synack_retries
        .map(|r| format!(" (net.ipv4.tcp_synack_retries={r})"))
        .unwrap_or_default();
    if resets > 0 {
        let because = if st.abort_on_overflow == Some(0) {
            "net.ipv4.tcp_abort_on_overflow was 1 (it is 0 now)"
        } else {
            "net.ipv4.tcp_abort_on_overflow=1"
        };
        let rest = if silent > 0 {
            format!(
                ", and the other {silent} were dropped silently, so those clients saw connect delays or timeouts"
            )
        } else {
            String::new()
        };
        let which = if silent == 0 {
            format!("all {resets} were")
        } else if resets == 1 {
            "1 of them was".to_string()
        } else {
            format!("{resets} of them were")
        };
        return format!(
            "{which} answered with a RST because {because}, so clients saw \"connection reset by peer\"{rest}"
        );
    }
    match st.abort_on_overflow {
        Some(0) => format!(
            "with net.ipv4.tcp_abort_on_overflow=0 the kernel dropped the SYN or the final ACK and retransmitted the SYN-ACK{retries}, so clients saw connect delays or timeouts"
        ),
        Some(_) => "the kernel dropped the SYNs silently, so clients had to retransmit them and saw connect delays or timeouts".to_string(),
        None => format!(
            "the kernel dropped the SYN or the final ACK and waited for retransmits{retries}, so clients saw connect delays or timeouts"
        ),
    }
}

/// Rule 3: SYNs dropped because the SYN (half-open) queue was full.
fn syn_queue_drops(e: &ListenerEvidence) -> Verdict {
    let st = &e.settings;
    let limit = e.queue_limit;
    let head = format!(
        "SYNs to {} were dropped {} because the SYN (half-open) queue was full",
        e.endpoint,
        times(e.syn_queue_drops)
    );
    let cause = match st.syncookies {
        Some(0) => {
            let quarter = match st.max_syn_backlog {
                Some(m) => format!(
                    "more than {} (3/4 of net.ipv4.tcp_max_syn_backlog={m})",
                    m - (m >> 2)
                ),
                None => "about 3/4 of net.ipv4.tcp_max_syn_backlog".to_string(),
            };
            format!(
                "{head} ({} half-open now): with net.ipv4.tcp_syncookies=0 the kernel drops new SYNs once more than {limit} (the listen limit) or {quarter} requests are half-open, so those clients had to retransmit or timed out.",
                e.syn_queue_len
            )
        }
        Some(c) => format!(
            "{head} ({} half-open now, listen limit {limit}, net.ipv4.tcp_syncookies={c}), so those clients had to retransmit or timed out.",
            e.syn_queue_len
        ),
        None => format!(
            "{head} ({} half-open now, listen limit {limit}), so those clients had to retransmit or timed out.",
            e.syn_queue_len
        ),
    };
    let flood = "check for a SYN flood or clients that never complete the handshake (many SYN_RECV from few addresses)";
    let remedy = match st.syncookies {
        Some(0) => {
            let now = st
                .max_syn_backlog
                .map(|m| format!(" (now {m})"))
                .unwrap_or_default();
            format!(
                "Enable net.ipv4.tcp_syncookies=1, raise net.ipv4.tcp_max_syn_backlog{now} and the listen backlog (now {limit}), and {flood}."
            )
        }
        Some(c) => format!(
            "Raise the listen backlog (now {limit}), keep net.ipv4.tcp_syncookies={c}, and {flood}."
        ),
        None => format!(
            "Raise the listen backlog (now {limit}), make sure net.ipv4.tcp_syncookies=1, and {flood}."
        ),
    };
    Verdict { cause, remedy }
}

/// Rule 4: syncookies were sent (the SYN queue was full, nothing dropped).
fn syncookies(e: &ListenerEvidence) -> Verdict {
    let limit = e.queue_limit;
    let loss = "connections still work, but those without TCP timestamps lose window scaling and SACK, and all get a coarse MSS";
    if e.settings.syncookies == Some(2) {
        return Verdict {
            cause: format!(
                "net.ipv4.tcp_syncookies=2 makes the kernel answer every SYN to {} with a syncookie ({} sent, {} half-open now): {loss}.",
                e.endpoint, e.syncookies_sent, e.syn_queue_len
            ),
            remedy: "Set net.ipv4.tcp_syncookies=1 so syncookies are only used when the SYN queue is full.".to_string(),
        };
    }
    let cap = match e.settings.somaxconn {
        Some(s) => format!("; net.core.somaxconn={s} caps it"),
        None => "; net.core.somaxconn caps it".to_string(),
    };
    Verdict {
        cause: format!(
            "The SYN (half-open) queue of {} filled up and the kernel answered {} with syncookies ({} half-open now, listen limit {limit}): {loss}.",
            e.endpoint,
            count(e.syncookies_sent, "SYN", "SYNs"),
            e.syn_queue_len
        ),
        remedy: format!(
            "Raise the listen backlog above {limit} (with syncookies on it alone bounds the SYN queue{cap}), and check for a SYN flood or clients that never complete the handshake (many SYN_RECV from few addresses)."
        ),
    }
}

/// Rule 5: accepted connections left in CLOSE_WAIT.
fn close_wait(e: &ListenerEvidence) -> Verdict {
    let n = e.close_wait;
    let (them, sit) = if n == 1 {
        ("it", "sits")
    } else {
        ("them", "sit")
    };
    let fds = match (e.open_fds, e.fd_limit) {
        (Some(o), Some(l)) => {
            let who = e.process.as_deref().unwrap_or("the process");
            format!(" ({who} holds {o} of {l} file descriptors)")
        }
        _ => String::new(),
    };
    let also = if slow_accept(e) {
        format!(
            "; accept() is slow too: connections waited {} (p99), {} queued now (limit {})",
            millis(e.accept_latency_p99_ms.unwrap_or_default()),
            e.queue_len,
            e.queue_limit
        )
    } else {
        String::new()
    };
    Verdict {
        cause: format!(
            "{} accepted on {} {sit} in CLOSE_WAIT: the peer closed {them}, the application has not{fds}{also}.",
            count(u64::from(n), "connection", "connections"),
            e.endpoint
        ),
        remedy: "Close the socket when a read returns EOF (0 bytes) or an error, and review the code path that handles a peer's close (timeouts, error branches, workers blocked on a downstream such as a DB pool); each such socket holds a file descriptor until the application closes it.".to_string(),
    }
}

fn slow_accept(e: &ListenerEvidence) -> bool {
    e.accept_latency_p99_ms.is_some_and(|p| p >= SLOW_ACCEPT_MS)
}

/// Rule 6: the application is slow to accept; nothing dropped yet.
fn slow(e: &ListenerEvidence) -> Verdict {
    let cap = match e.settings.somaxconn {
        Some(s) => format!(" (net.core.somaxconn={s} caps it)"),
        None => " (net.core.somaxconn caps it)".to_string(),
    };
    Verdict {
        cause: format!(
            "{} is slow to accept: connections waited {} (p99) before accept() and {} queued now (limit {}); nothing has been dropped yet.",
            e.endpoint,
            millis(e.accept_latency_p99_ms.unwrap_or_default()),
            if e.queue_len == 0 {
                "none is".to_string()
            } else {
                count_verb(e.queue_len, "is", "are")
            },
            e.queue_limit
        ),
        remedy: format!(
            "Add accept threads or workers (or find what blocks the accept loop) and raise the listen backlog{cap} before the queue overflows."
        ),
    }
}

/// "1 time", "57 times".
fn times(n: u64) -> String {
    count(n, "time", "times")
}

fn count(n: u64, one: &str, many: &str) -> String {
    format!("{n} {}", if n == 1 { one } else { many })
}

/// "1 accepted connection sits", "340 accepted connections sit".
fn count_sit(n: u32, noun: &str) -> String {
    if n == 1 {
        format!("1 {noun} sits")
    } else {
        format!("{n} {noun}s sit")
    }
}

/// "1 connection waits", "12 connections wait".
fn count_wait(n: u32) -> String {
    if n == 1 {
        "1 connection waits".to_string()
    } else {
        format!("{n} connections wait")
    }
}

/// "1 is", "90 are".
fn count_verb(n: u32, one: &str, many: &str) -> String {
    format!("{n} {}", if n == 1 { one } else { many })
}

/// Milliseconds as a plain integer ("850 ms"); "under 1 ms" below that.
fn millis(ms: f64) -> String {
    if ms > 0.0 && ms < 1.0 {
        "under 1 ms".to_string()
    } else {
        format!("{:.0} ms", ms.max(0.0))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn settings() -> Settings {
        Settings {
            somaxconn: Some(4096),
            max_syn_backlog: Some(512),
            syncookies: Some(1),
            abort_on_overflow: Some(0),
            synack_retries: Some(5),
            port_range: Some((32768, 60999)),
            tw_reuse: None,
        }
    }

    fn healthy() -> ListenerEvidence {
        ListenerEvidence {
            endpoint: "0.0.0.0:8080".to_string(),
            process: Some("nginx (pid 123)".to_string()),
            queue_len: 0,
            queue_limit: 511,
            backlog_requested: Some(511),
            open_fds: Some(40),
            fd_limit: Some(1024),
            accept_latency_p99_ms: Some(0.2),
            settings: settings(),
            ..Default::default()
        }
    }

    fn one_line(v: &Verdict) {
        for s in [&v.cause, &v.remedy] {
            assert!(!s.contains('\n'), "{s}");
            assert_eq!(s.trim(), s, "{s}");
            assert!(!s.contains("  "), "{s}");
            assert!(s.ends_with('.'), "{s}");
        }
    }

    fn verdict(e: &ListenerEvidence) -> Verdict {
        let v = listener(e).expect("a verdict");
        one_line(&v);
        v
    }

    fn port_verdict(e: &PortEvidence) -> Verdict {
        let v = ports(e).expect("a verdict");
        one_line(&v);
        v
    }

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
    fn emfile_with_close_wait_is_a_leak() {
        let e = ListenerEvidence {
            accept_errors: vec![("EMFILE".to_string(), 120)],
            open_fds: Some(1024),
            fd_limit: Some(1024),
            close_wait: 340,
            queue_len: 12,
            ..healthy()
        };
        let v = verdict(&e);
        assert_eq!(
            v.cause,
            "accept() is failing with EMFILE (120 times): nginx (pid 123) has 1024 of 1024 file descriptors open, and 340 accepted connections sit in CLOSE_WAIT, so the application is not closing connections its peers have closed; meanwhile 12 connections wait in the accept queue (limit 511)."
        );
        assert_eq!(
            v.remedy,
            "Fix the descriptor leak: close each socket when a read returns EOF or an error (the peer has closed it); raising LimitNOFILE= or ulimit -n above 1024 only buys time."
        );
    }

    #[test]
    fn emfile_without_close_wait_means_limit_too_low() {
        let e = ListenerEvidence {
            process: None,
            accept_errors: vec![("EAGAIN".to_string(), 3), ("EMFILE".to_string(), 1)],
            open_fds: Some(10240),
            fd_limit: Some(10240),
            overflows: 55,
            queue_len: 512,
            ..healthy()
        };
        let v = verdict(&e);
        assert_eq!(
            v.cause,
            "accept() is failing with EMFILE (1 time): the process has 10240 of 10240 file descriptors open, so its file-descriptor limit is too low for the load; meanwhile the accept queue overflowed 55 times (512 queued now, limit 511)."
        );
        assert_eq!(
            v.remedy,
            "Raise the file-descriptor limit above 10240 (LimitNOFILE= in the systemd unit, ulimit -n, or prlimit --nofile for the running process), and if the number of open descriptors keeps climbing, look for a descriptor leak."
        );
    }

    #[test]
    fn emfile_with_unknown_fd_counts() {
        let e = ListenerEvidence {
            accept_errors: vec![("emfile".to_string(), 7)],
            open_fds: None,
            fd_limit: None,
            ..healthy()
        };
        let v = verdict(&e);
        assert_eq!(
            v.cause,
            "accept() is failing with EMFILE (7 times): nginx (pid 123) has used up its file descriptors, so its file-descriptor limit is too low for the load."
        );
        assert_eq!(
            v.remedy,
            "Raise the file-descriptor limit (LimitNOFILE= in the systemd unit, ulimit -n, or prlimit --nofile for the running process), and if the number of open descriptors keeps climbing, look for a descriptor leak."
        );
    }

    #[test]
    fn emfile_with_partial_fd_counts() {
        let e = ListenerEvidence {
            accept_errors: vec![("EMFILE".to_string(), 2), ("ENFILE".to_string(), 5)],
            open_fds: Some(1000),
            fd_limit: None,
            ..healthy()
        };
        // EMFILE (per process) is named first even when ENFILE is also seen.
        assert_eq!(
            verdict(&e).cause,
            "accept() is failing with EMFILE (2 times): nginx (pid 123) has 1000 file descriptors open, so its file-descriptor limit is too low for the load."
        );
        let e = ListenerEvidence {
            open_fds: None,
            fd_limit: Some(4096),
            close_wait: 2,
            ..e
        };
        let v = verdict(&e);
        assert_eq!(
            v.cause,
            "accept() is failing with EMFILE (2 times): nginx (pid 123) has used up its limit of 4096 file descriptors, and 2 accepted connections sit in CLOSE_WAIT, so the application is not closing connections its peers have closed."
        );
        assert_eq!(
            v.remedy,
            "Fix the descriptor leak: close each socket when a read returns EOF or an error (the peer has closed it); raising LimitNOFILE= or ulimit -n above 4096 only buys time."
        );
    }

    #[test]
    fn enfile_is_host_wide() {
        let e = ListenerEvidence {
            accept_errors: vec![("ENFILE".to_string(), 8)],
            ..healthy()
        };
        let v = verdict(&e);
        assert_eq!(
            v.cause,
            "accept() is failing with ENFILE (8 times): the host-wide file table (fs.file-max) is exhausted, so no process can open new files or sockets."
        );
        assert_eq!(
            v.remedy,
            "Find which process holds the descriptors (/proc/sys/fs/file-nr, then ls /proc/PID/fd per process) and raise fs.file-max (host-wide, not per container) if the load is legitimate."
        );

        let e = ListenerEvidence {
            close_wait: 1,
            queue_len: 1,
            ..e
        };
        let v = verdict(&e);
        assert_eq!(
            v.cause,
            "accept() is failing with ENFILE (8 times): the host-wide file table (fs.file-max) is exhausted, so no process can open new files or sockets, and here 1 accepted connection sits in CLOSE_WAIT, so the application is not closing connections its peers have closed; meanwhile 1 connection waits in the accept queue (limit 511)."
        );
        assert_eq!(
            v.remedy,
            "Stop the leak: close each socket when a read returns EOF or an error (the peer has closed it); raising fs.file-max (host-wide, not per container) only buys time."
        );
    }

    #[test]
    fn overflow_capped_by_somaxconn() {
        let e = ListenerEvidence {
            queue_len: 129,
            queue_limit: 128,
            backlog_requested: Some(8192),
            overflows: 340,
            accept_latency_p99_ms: Some(850.4),
            settings: Settings {
                somaxconn: Some(128),
                synack_retries: Some(2),
                ..settings()
            },
            ..healthy()
        };
        let v = verdict(&e);
        assert_eq!(
            v.cause,
            "The accept queue of 0.0.0.0:8080 overflowed 340 times (129 queued now, limit 128) because listen(…, 8192) was capped to net.core.somaxconn=128; connections waited 850 ms (p99) to be accepted; with net.ipv4.tcp_abort_on_overflow=0 the kernel dropped the SYN or the final ACK and retransmitted the SYN-ACK (net.ipv4.tcp_synack_retries=2), so clients saw connect delays or timeouts."
        );
        assert_eq!(
            v.remedy,
            "Raise net.core.somaxconn to at least 8192 in this network namespace (sysctl -w net.core.somaxconn=8192, or the container's sysctls), then restart the service or make it call listen() again, because the limit is fixed at listen() time."
        );
    }

    #[test]
    fn overflow_after_somaxconn_was_raised_needs_restart() {
        let e = ListenerEvidence {
            queue_len: 0,
            queue_limit: 128,
            backlog_requested: Some(4096),
            overflows: 12,
            accept_latency_p99_ms: None,
            settings: Settings {
                somaxconn: Some(4096),
                abort_on_overflow: None,
                synack_retries: None,
                ..settings()
            },
            ..healthy()
        };
        let v = verdict(&e);
        assert_eq!(
            v.cause,
            "The accept queue of 0.0.0.0:8080 overflowed 12 times (0 queued now, limit 128) because listen(…, 4096) was capped to 128 by the net.core.somaxconn in force at listen() time (it is 4096 now); the kernel dropped the SYN or the final ACK and waited for retransmits, so clients saw connect delays or timeouts."
        );
        assert_eq!(
            v.remedy,
            "Restart the service or make it call listen() again so the current net.core.somaxconn=4096 applies, because the limit is fixed at listen() time."
        );
    }

    #[test]
    fn overflow_capped_with_unknown_somaxconn() {
        let e = ListenerEvidence {
            queue_len: 4,
            queue_limit: 4,
            backlog_requested: Some(1024),
            overflows: 1,
            accept_latency_p99_ms: Some(0.3),
            settings: Settings::default(),
            ..healthy()
        };
        let v = verdict(&e);
        assert_eq!(
            v.cause,
            "The accept queue of 0.0.0.0:8080 overflowed 1 time (4 queued now, limit 4) because listen(…, 1024) was capped to 4 at listen() time, presumably by net.core.somaxconn; connections waited under 1 ms (p99) to be accepted; the kernel dropped the SYN or the final ACK and waited for retransmits, so clients saw connect delays or timeouts."
        );
        assert_eq!(
            v.remedy,
            "Raise net.core.somaxconn to at least 1024 in this network namespace (sysctl -w net.core.somaxconn=1024, or the container's sysctls), then restart the service or make it call listen() again, because the limit is fixed at listen() time."
        );
    }

    #[test]
    fn overflow_probably_capped_when_backlog_unknown() {
        let e = ListenerEvidence {
            endpoint: "[::]:443".to_string(),
            queue_len: 129,
            queue_limit: 128,
            backlog_requested: None,
            overflows: 667399,
            overflow_resets: 667399,
            accept_latency_p99_ms: None,
            settings: Settings {
                somaxconn: Some(128),
                abort_on_overflow: Some(1),
                ..settings()
            },
            ..healthy()
        };
        let v = verdict(&e);
        assert_eq!(
            v.cause,
            "The accept queue of [::]:443 overflowed 667399 times (129 queued now, limit 128), probably because the application's listen() backlog was capped to net.core.somaxconn=128 (the backlog it asked for is not known: tcpq sees it only in listen() calls made while it runs, on kernels with kprobes or fentry); all 667399 were answered with a RST because net.ipv4.tcp_abort_on_overflow=1, so clients saw \"connection reset by peer\"."
        );
        assert_eq!(
            v.remedy,
            "Raise net.core.somaxconn above 128 in this network namespace (or the container's sysctls) together with the application's own backlog, then restart the service or make it call listen() again, because the limit is fixed at listen() time."
        );
    }

    #[test]
    fn overflow_from_small_app_backlog_with_some_resets() {
        let e = ListenerEvidence {
            endpoint: "0.0.0.0:3306".to_string(),
            process: Some("java (pid 77)".to_string()),
            queue_len: 51,
            queue_limit: 50,
            backlog_requested: Some(50),
            overflows: 30,
            overflow_resets: 10,
            accept_latency_p99_ms: Some(1200.0),
            settings: Settings {
                abort_on_overflow: Some(1),
                ..settings()
            },
            ..healthy()
        };
        let v = verdict(&e);
        assert_eq!(
            v.cause,
            "The accept queue of 0.0.0.0:3306 overflowed 30 times (51 queued now, limit 50) because the application asked listen() for a backlog of only 50; connections waited 1200 ms (p99) to be accepted; 10 of them were answered with a RST because net.ipv4.tcp_abort_on_overflow=1, so clients saw \"connection reset by peer\", and the other 20 were dropped silently, so those clients saw connect delays or timeouts."
        );
        assert_eq!(
            v.remedy,
            "Raise the application's listen backlog (e.g. nginx `listen … backlog=`, redis `tcp-backlog`) up to net.core.somaxconn=4096, and make the application accept faster (more accept threads or workers, no blocking work in the accept loop)."
        );
    }

    #[test]
    fn overflow_own_backlog_inferred_and_abort_changed() {
        // Backlog not seen, somaxconn above the limit: the app chose it.
        // RSTs were sent although abort_on_overflow is 0 now.
        let e = ListenerEvidence {
            queue_len: 10,
            queue_limit: 10,
            backlog_requested: None,
            overflows: 3,
            overflow_resets: 1,
            accept_latency_p99_ms: None,
            settings: Settings {
                somaxconn: Some(4096),
                abort_on_overflow: Some(0),
                ..settings()
            },
            ..healthy()
        };
        let v = verdict(&e);
        assert_eq!(
            v.cause,
            "The accept queue of 0.0.0.0:8080 overflowed 3 times (10 queued now, limit 10) because the application's own listen() backlog of 10 is below net.core.somaxconn=4096; 1 of them was answered with a RST because net.ipv4.tcp_abort_on_overflow was 1 (it is 0 now), so clients saw \"connection reset by peer\", and the other 2 were dropped silently, so those clients saw connect delays or timeouts."
        );
    }

    #[test]
    fn overflow_with_abort_on_and_no_resets_means_syn_drops() {
        let e = ListenerEvidence {
            queue_len: 1,
            queue_limit: 0,
            backlog_requested: Some(0),
            overflows: 2,
            accept_latency_p99_ms: None,
            settings: Settings {
                somaxconn: Some(128),
                abort_on_overflow: Some(1),
                ..settings()
            },
            ..healthy()
        };
        let v = verdict(&e);
        assert_eq!(
            v.cause,
            "The accept queue of 0.0.0.0:8080 overflowed 2 times (1 queued now, limit 0) because the application asked listen() for a backlog of only 0; the kernel dropped the SYNs silently, so clients had to retransmit them and saw connect delays or timeouts."
        );
        assert_eq!(
            v.remedy,
            "Raise the application's listen backlog (e.g. nginx `listen … backlog=`, redis `tcp-backlog`) up to net.core.somaxconn=128, and make the application accept faster (more accept threads or workers, no blocking work in the accept loop)."
        );
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

    #[test]
    fn overflow_remedy_variants() {
        // somaxconn raised since listen(), but still below the requested backlog.
        let e = ListenerEvidence {
            queue_len: 129,
            queue_limit: 128,
            backlog_requested: Some(8192),
            overflows: 9,
            accept_latency_p99_ms: None,
            settings: Settings {
                somaxconn: Some(1024),
                ..settings()
            },
            ..healthy()
        };
        assert_eq!(
            verdict(&e).remedy,
            "Raise net.core.somaxconn to at least 8192 in this network namespace (sysctl -w net.core.somaxconn=8192, or the container's sysctls), then restart the service or make it call listen() again, because the limit is fixed at listen() time."
        );
        // somaxconn lowered since listen().
        let e = ListenerEvidence {
            settings: Settings {
                somaxconn: Some(64),
                ..settings()
            },
            ..e
        };
        assert!(verdict(&e).cause.contains(
            " because listen(…, 8192) was capped to 128 at listen() time, presumably by net.core.somaxconn (it is 64 now);"
        ));
        // The application asked for exactly somaxconn: raise both.
        let e = ListenerEvidence {
            backlog_requested: Some(128),
            settings: Settings {
                somaxconn: Some(128),
                ..settings()
            },
            ..e
        };
        let v = verdict(&e);
        assert_eq!(
            v.cause,
            "The accept queue of 0.0.0.0:8080 overflowed 9 times (129 queued now, limit 128) because the application asked listen() for a backlog of only 128; with net.ipv4.tcp_abort_on_overflow=0 the kernel dropped the SYN or the final ACK and retransmitted the SYN-ACK (net.ipv4.tcp_synack_retries=5), so clients saw connect delays or timeouts."
        );
        assert_eq!(
            v.remedy,
            "Raise the application's listen backlog (e.g. nginx `listen … backlog=`, redis `tcp-backlog`) together with net.core.somaxconn=128, which caps it, and make the application accept faster (more accept threads or workers, no blocking work in the accept loop)."
        );
        // Nothing known about backlog or somaxconn.
        let e = ListenerEvidence {
            backlog_requested: None,
            settings: Settings::default(),
            ..e
        };
        let v = verdict(&e);
        assert_eq!(
            v.cause,
            "The accept queue of 0.0.0.0:8080 overflowed 9 times (129 queued now, limit 128); the kernel dropped the SYN or the final ACK and waited for retransmits, so clients saw connect delays or timeouts."
        );
        assert_eq!(
            v.remedy,
            "Raise the application's listen backlog (e.g. nginx `listen … backlog=`, redis `tcp-backlog`), check net.core.somaxconn, which caps it, and make the application accept faster (more accept threads or workers, no blocking work in the accept loop)."
        );
    }

    #[test]
    fn syn_queue_drops_with_syncookies_on() {
        let e = ListenerEvidence {
            queue_limit: 128,
            syn_queue_drops: 4,
            syn_queue_len: 129,
            ..healthy()
        };
        let v = verdict(&e);
        assert_eq!(
            v.cause,
            "SYNs to 0.0.0.0:8080 were dropped 4 times because the SYN (half-open) queue was full (129 half-open now, listen limit 128, net.ipv4.tcp_syncookies=1), so those clients had to retransmit or timed out."
        );
        assert_eq!(
            v.remedy,
            "Raise the listen backlog (now 128), keep net.ipv4.tcp_syncookies=1, and check for a SYN flood or clients that never complete the handshake (many SYN_RECV from few addresses)."
        );
    }

    #[test]
    fn syn_queue_drops_with_syncookies_off() {
        let e = ListenerEvidence {
            queue_limit: 128,
            syn_queue_drops: 57,
            syn_queue_len: 9,
            settings: Settings {
                syncookies: Some(0),
                max_syn_backlog: Some(512),
                ..settings()
            },
            ..healthy()
        };
        let v = verdict(&e);
        assert_eq!(
            v.cause,
            "SYNs to 0.0.0.0:8080 were dropped 57 times because the SYN (half-open) queue was full (9 half-open now): with net.ipv4.tcp_syncookies=0 the kernel drops new SYNs once more than 128 (the listen limit) or more than 384 (3/4 of net.ipv4.tcp_max_syn_backlog=512) requests are half-open, so those clients had to retransmit or timed out."
        );
        assert_eq!(
            v.remedy,
            "Enable net.ipv4.tcp_syncookies=1, raise net.ipv4.tcp_max_syn_backlog (now 512) and the listen backlog (now 128), and check for a SYN flood or clients that never complete the handshake (many SYN_RECV from few addresses)."
        );
    }

    #[test]
    fn syn_queue_drops_with_syncookies_off_small_max_syn_backlog() {
        // The KERNEL.md reproduction: tcp_max_syn_backlog=8 admits 7.
        let e = ListenerEvidence {
            queue_limit: 100,
            syn_queue_drops: 3,
            syn_queue_len: 7,
            settings: Settings {
                syncookies: Some(0),
                max_syn_backlog: Some(8),
                ..settings()
            },
            ..healthy()
        };
        let v = verdict(&e);
        assert_eq!(
            v.cause,
            "SYNs to 0.0.0.0:8080 were dropped 3 times because the SYN (half-open) queue was full (7 half-open now): with net.ipv4.tcp_syncookies=0 the kernel drops new SYNs once more than 100 (the listen limit) or more than 6 (3/4 of net.ipv4.tcp_max_syn_backlog=8) requests are half-open, so those clients had to retransmit or timed out."
        );
    }

    #[test]
    fn syn_queue_drops_with_syncookies_unknown() {
        let e = ListenerEvidence {
            queue_limit: 2,
            syn_queue_drops: 1,
            syn_queue_len: 3,
            settings: Settings::default(),
            ..healthy()
        };
        let v = verdict(&e);
        assert_eq!(
            v.cause,
            "SYNs to 0.0.0.0:8080 were dropped 1 time because the SYN (half-open) queue was full (3 half-open now, listen limit 2), so those clients had to retransmit or timed out."
        );
        assert_eq!(
            v.remedy,
            "Raise the listen backlog (now 2), make sure net.ipv4.tcp_syncookies=1, and check for a SYN flood or clients that never complete the handshake (many SYN_RECV from few addresses)."
        );
    }

    #[test]
    fn syncookies_sent_when_syn_queue_full() {
        let e = ListenerEvidence {
            queue_limit: 128,
            syncookies_sent: 2,
            syn_queue_len: 129,
            close_wait: 4,
            ..healthy()
        };
        let v = verdict(&e);
        assert_eq!(
            v.cause,
            "The SYN (half-open) queue of 0.0.0.0:8080 filled up and the kernel answered 2 SYNs with syncookies (129 half-open now, listen limit 128): connections still work, but those without TCP timestamps lose window scaling and SACK, and all get a coarse MSS."
        );
        assert_eq!(
            v.remedy,
            "Raise the listen backlog above 128 (with syncookies on it alone bounds the SYN queue; net.core.somaxconn=4096 caps it), and check for a SYN flood or clients that never complete the handshake (many SYN_RECV from few addresses)."
        );
    }

    #[test]
    fn syncookies_always_on() {
        let e = ListenerEvidence {
            syncookies_sent: 1,
            settings: Settings {
                syncookies: Some(2),
                ..settings()
            },
            ..healthy()
        };
        let v = verdict(&e);
        assert_eq!(
            v.cause,
            "net.ipv4.tcp_syncookies=2 makes the kernel answer every SYN to 0.0.0.0:8080 with a syncookie (1 sent, 0 half-open now): connections still work, but those without TCP timestamps lose window scaling and SACK, and all get a coarse MSS."
        );
        assert_eq!(
            v.remedy,
            "Set net.ipv4.tcp_syncookies=1 so syncookies are only used when the SYN queue is full."
        );
    }

    #[test]
    fn close_wait_alone() {
        let e = ListenerEvidence {
            close_wait: 1570,
            open_fds: Some(1600),
            fd_limit: Some(65536),
            ..healthy()
        };
        let v = verdict(&e);
        assert_eq!(
            v.cause,
            "1570 connections accepted on 0.0.0.0:8080 sit in CLOSE_WAIT: the peer closed them, the application has not (nginx (pid 123) holds 1600 of 65536 file descriptors)."
        );
        assert_eq!(
            v.remedy,
            "Close the socket when a read returns EOF (0 bytes) or an error, and review the code path that handles a peer's close (timeouts, error branches, workers blocked on a downstream such as a DB pool); each such socket holds a file descriptor until the application closes it."
        );

        let e = ListenerEvidence {
            close_wait: 1,
            open_fds: None,
            ..e
        };
        assert_eq!(
            verdict(&e).cause,
            "1 connection accepted on 0.0.0.0:8080 sits in CLOSE_WAIT: the peer closed it, the application has not."
        );
    }

    #[test]
    fn close_wait_with_slow_accept() {
        let e = ListenerEvidence {
            close_wait: 20,
            open_fds: None,
            queue_len: 90,
            queue_limit: 128,
            accept_latency_p99_ms: Some(250.0),
            ..healthy()
        };
        assert_eq!(
            verdict(&e).cause,
            "20 connections accepted on 0.0.0.0:8080 sit in CLOSE_WAIT: the peer closed them, the application has not; accept() is slow too: connections waited 250 ms (p99), 90 queued now (limit 128)."
        );
    }

    #[test]
    fn slow_accept_before_overflow() {
        let e = ListenerEvidence {
            queue_len: 90,
            queue_limit: 128,
            accept_latency_p99_ms: Some(100.0),
            ..healthy()
        };
        let v = verdict(&e);
        assert_eq!(
            v.cause,
            "0.0.0.0:8080 is slow to accept: connections waited 100 ms (p99) before accept() and 90 are queued now (limit 128); nothing has been dropped yet."
        );
        assert_eq!(
            v.remedy,
            "Add accept threads or workers (or find what blocks the accept loop) and raise the listen backlog (net.core.somaxconn=4096 caps it) before the queue overflows."
        );

        let e = ListenerEvidence {
            queue_len: 1,
            settings: Settings::default(),
            ..e
        };
        let v = verdict(&e);
        assert_eq!(
            v.cause,
            "0.0.0.0:8080 is slow to accept: connections waited 100 ms (p99) before accept() and 1 is queued now (limit 128); nothing has been dropped yet."
        );
        assert_eq!(
            v.remedy,
            "Add accept threads or workers (or find what blocks the accept loop) and raise the listen backlog (net.core.somaxconn caps it) before the queue overflows."
        );
    }

    fn port_settings(range: Option<(u16, u16)>) -> Settings {
        Settings {
            port_range: range,
            ..settings()
        }
    }

    #[test]
    fn ports_exhausted_by_time_wait() {
        let e = PortEvidence {
            addr_not_avail: 57,
            time_wait: 4,
            connected: 0,
            tw_reuse: Some(0),
            settings: port_settings(Some((40000, 40003))),
        };
        let v = port_verdict(&e);
        assert_eq!(
            v.cause,
            "connect() failed with EADDRNOTAVAIL 57 times: net.ipv4.ip_local_port_range 40000–40003 has 4 ports, 4 held in TIME_WAIT and 0 by open connections, 0 left."
        );
        assert_eq!(
            v.remedy,
            "Reuse connections (keep-alive / connection pooling) — the durable fix; widening net.ipv4.ip_local_port_range or enabling net.ipv4.tcp_tw_reuse=1 (currently 0) only buys headroom."
        );
    }

    #[test]
    fn ports_nearly_exhausted_without_errors() {
        let e = PortEvidence {
            addr_not_avail: 0,
            time_wait: 27000,
            connected: 1000,
            tw_reuse: Some(2),
            settings: port_settings(Some((32768, 60999))),
        };
        let v = port_verdict(&e);
        assert_eq!(
            v.cause,
            "Local ports are nearly exhausted: net.ipv4.ip_local_port_range 32768–60999 has 28232 ports, 27000 held in TIME_WAIT and 1000 by open connections, 232 left; connect() fails with EADDRNOTAVAIL once none are."
        );
        assert_eq!(
            v.remedy,
            "Reuse connections (keep-alive / connection pooling) — the durable fix; widening net.ipv4.ip_local_port_range or enabling net.ipv4.tcp_tw_reuse=1 (currently 2, loopback only) only buys headroom."
        );
    }

    #[test]
    fn ports_held_by_open_connections_with_tw_reuse_on() {
        let e = PortEvidence {
            addr_not_avail: 3,
            time_wait: 0,
            connected: 4,
            tw_reuse: Some(0),
            settings: port_settings(Some((40000, 40003))),
        };
        let v = port_verdict(&e);
        assert_eq!(
            v.cause,
            "connect() failed with EADDRNOTAVAIL 3 times: net.ipv4.ip_local_port_range 40000–40003 has 4 ports, 0 held in TIME_WAIT and 4 by open connections, 0 left."
        );
        // No TIME_WAIT: tcp_tw_reuse would not help, so it is not offered.
        assert_eq!(
            v.remedy,
            "Reuse connections (keep-alive / connection pooling) — the durable fix; widening net.ipv4.ip_local_port_range only buys headroom."
        );

        let e = PortEvidence {
            time_wait: 2,
            connected: 2,
            tw_reuse: Some(1),
            ..e
        };
        assert_eq!(
            port_verdict(&e).remedy,
            "Reuse connections (keep-alive / connection pooling) — the durable fix; widening net.ipv4.ip_local_port_range only buys headroom (net.ipv4.tcp_tw_reuse is already 1)."
        );
    }

    #[test]
    fn ports_errors_but_ports_free_now() {
        let e = PortEvidence {
            addr_not_avail: 1,
            time_wait: 100,
            connected: 20,
            tw_reuse: None,
            settings: port_settings(Some((32768, 60999))),
        };
        let v = port_verdict(&e);
        assert_eq!(
            v.cause,
            "connect() failed with EADDRNOTAVAIL 1 time: net.ipv4.ip_local_port_range 32768–60999 has 28232 ports, 100 held in TIME_WAIT and 20 by open connections, 28112 left now, so the shortage has eased or comes in bursts."
        );
        assert_eq!(
            v.remedy,
            "Reuse connections (keep-alive / connection pooling) — the durable fix; widening net.ipv4.ip_local_port_range or enabling net.ipv4.tcp_tw_reuse=1 only buys headroom."
        );
    }

    #[test]
    fn ports_with_unknown_range() {
        let e = PortEvidence {
            addr_not_avail: 57,
            time_wait: 31927,
            connected: 40,
            tw_reuse: Some(0),
            settings: Settings::default(),
        };
        let v = port_verdict(&e);
        assert_eq!(
            v.cause,
            "connect() failed with EADDRNOTAVAIL 57 times because no local port was free: 31927 held in TIME_WAIT and 40 by open connections now (net.ipv4.ip_local_port_range unknown)."
        );
        assert_eq!(
            v.remedy,
            "Reuse connections (keep-alive / connection pooling) — the durable fix; widening net.ipv4.ip_local_port_range or enabling net.ipv4.tcp_tw_reuse=1 (currently 0) only buys headroom."
        );
        // Unknown range and no errors: nothing to say.
        let e = PortEvidence {
            addr_not_avail: 0,
            ..e
        };
        assert_eq!(ports(&e), None);
    }

    #[test]
    fn ports_healthy_has_no_verdict() {
        let mut e = PortEvidence {
            addr_not_avail: 0,
            time_wait: 25000,
            connected: 400,
            tw_reuse: Some(2),
            settings: port_settings(Some((32768, 60999))),
        };
        // 2832 of 28232 free: just above 10%.
        assert_eq!(ports(&e), None);
        // 2823 free is 9.999%: below 10%.
        e.time_wait += 9;
        assert!(ports(&e).is_some());
        // A bogus range (lo > hi) is treated as unknown.
        e.settings.port_range = Some((60999, 32768));
        assert_eq!(ports(&e), None);
        assert_eq!(ports(&PortEvidence::default()), None);
    }
}

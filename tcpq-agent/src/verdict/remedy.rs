//! The remedy sentences, one function per remedy, with the numbers the
//! rules pass in. The alerting rules' runbooks
//! (packaging/prometheus/tcpq-alerts.yml) quote these templates, and a test
//! (tests/tests/prometheus.rs) reads this file's string literals to check
//! it: keep each template on one line.

use crate::verdict::Settings;

/// Rule 1, EMFILE: a descriptor leak when accepted connections pile up in
/// CLOSE_WAIT (`leaking`), else a limit too low for the load.
pub fn emfile(leaking: bool, fd_limit: Option<u64>) -> String {
    let above = fd_limit.map(|l| format!(" above {l}")).unwrap_or_default();
    if leaking {
        format!("Fix the descriptor leak: close each socket when a read returns EOF or an error (the peer has closed it); raising LimitNOFILE= or ulimit -n{above} only buys time.")
    } else {
        format!("Raise the file-descriptor limit{above} (LimitNOFILE= in the systemd unit, ulimit -n, or prlimit --nofile for the running process), and if the number of open descriptors keeps climbing, look for a descriptor leak.")
    }
}

/// Rule 1, ENFILE: the host-wide file table.
pub fn enfile(leaking: bool) -> String {
    if leaking {
        "Stop the leak: close each socket when a read returns EOF or an error (the peer has closed it); raising fs.file-max (host-wide, not per container) only buys time.".to_string()
    } else {
        "Find which process holds the descriptors (/proc/sys/fs/file-nr, then ls /proc/PID/fd per process) and raise fs.file-max (host-wide, not per container) if the load is legitimate.".to_string()
    }
}

/// Rule 2: listen(…, `b`) was capped by somaxconn.
pub fn raise_somaxconn(b: u32) -> String {
    format!("Raise net.core.somaxconn to at least {b} in this network namespace (sysctl -w net.core.somaxconn={b}, or the container's sysctls), then restart the service or make it call listen() again, because the limit is fixed at listen() time.")
}

/// Rule 2: somaxconn has been raised to `s` since listen().
pub fn listen_again(s: u32) -> String {
    format!("Restart the service or make it call listen() again so the current net.core.somaxconn={s} applies, because the limit is fixed at listen() time.")
}

/// Rule 2: the limit equals somaxconn `s`, the backlog asked for unknown.
pub fn raise_somaxconn_above(s: u32) -> String {
    format!("Raise net.core.somaxconn above {s} in this network namespace (or the container's sysctls) together with the application's own backlog, then restart the service or make it call listen() again, because the limit is fixed at listen() time.")
}

/// Rule 2: the application's own backlog is the `limit`.
pub fn raise_app_backlog(limit: u32, somaxconn: Option<u32>) -> String {
    let cap = match somaxconn {
        Some(s) if s > limit => format!(" up to net.core.somaxconn={s},"),
        Some(s) => format!(" together with net.core.somaxconn={s}, which caps it,"),
        None => ", check net.core.somaxconn, which caps it,".to_string(),
    };
    format!("Raise the application's listen backlog (e.g. nginx `listen … backlog=`, redis `tcp-backlog`){cap} and make the application accept faster (more accept threads or workers, no blocking work in the accept loop).")
}

/// Rule 3: SYNs dropped to a full SYN queue (listen `limit`).
pub fn syn_queue_drops(st: &Settings, limit: u32) -> String {
    let flood = "check for a SYN flood or clients that never complete the handshake (many SYN_RECV from few addresses)";
    match st.syncookies {
        Some(0) => {
            let now = st
                .max_syn_backlog
                .map(|m| format!(" (now {m})"))
                .unwrap_or_default();
            format!("Enable net.ipv4.tcp_syncookies=1, raise net.ipv4.tcp_max_syn_backlog{now} and the listen backlog (now {limit}), and {flood}.")
        }
        Some(c) => format!("Raise the listen backlog (now {limit}), keep net.ipv4.tcp_syncookies={c}, and {flood}."),
        None => format!("Raise the listen backlog (now {limit}), make sure net.ipv4.tcp_syncookies=1, and {flood}."),
    }
}

/// Rule 4: syncookies sent because `tcp_syncookies=2` says always.
pub fn syncookies_always() -> String {
    "Set net.ipv4.tcp_syncookies=1 so syncookies are only used when the SYN queue is full."
        .to_string()
}

/// Rule 4: syncookies sent because the SYN queue (listen `limit`) filled.
pub fn syncookies(limit: u32, somaxconn: Option<u32>) -> String {
    let cap = match somaxconn {
        Some(s) => format!("; net.core.somaxconn={s} caps it"),
        None => "; net.core.somaxconn caps it".to_string(),
    };
    format!("Raise the listen backlog above {limit} (with syncookies on it alone bounds the SYN queue{cap}), and check for a SYN flood or clients that never complete the handshake (many SYN_RECV from few addresses).")
}

/// Rule 5: accepted connections left in CLOSE_WAIT.
pub fn close_wait() -> String {
    "Close the socket when a read returns EOF (0 bytes) or an error, and review the code path that handles a peer's close (timeouts, error branches, workers blocked on a downstream such as a DB pool); each such socket holds a file descriptor until the application closes it.".to_string()
}

/// Rule 6: slow to accept, nothing dropped yet.
pub fn slow(somaxconn: Option<u32>) -> String {
    let cap = match somaxconn {
        Some(s) => format!(" (net.core.somaxconn={s} caps it)"),
        None => " (net.core.somaxconn caps it)".to_string(),
    };
    format!("Add accept threads or workers (or find what blocks the accept loop) and raise the listen backlog{cap} before the queue overflows.")
}

/// Local ports running out: `tcp_tw_reuse` is offered only when ports sit
/// in TIME_WAIT.
pub fn ports(time_wait: u32, tw_reuse: Option<u8>) -> String {
    let (reuse, already) = if time_wait == 0 {
        (String::new(), "")
    } else {
        match tw_reuse {
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
    format!("Reuse connections (keep-alive / connection pooling) — the durable fix; widening net.ipv4.ip_local_port_range{reuse} only buys headroom{already}.")
}

//! Rule 2: the accept queue overflowed. Why its limit is what it is
//! (listen()'s backlog against net.core.somaxconn, then and now), and what
//! the clients saw (RSTs with tcp_abort_on_overflow, else silent drops).

use crate::verdict::{
    remedy,
    words::{millis, times},
    ListenerEvidence, Verdict,
};

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

/// The cause's clause naming why the limit is what it is ("" if unknown).
fn why(limit: u32, reason: &Limit) -> String {
    match *reason {
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
    }
}

/// Rule 2: the accept queue overflowed.
pub(super) fn accept_overflow(e: &ListenerEvidence) -> Verdict {
    let limit = e.queue_limit;
    let reason = limit_reason(e);
    let why = why(limit, &reason);
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
    let remedy = match reason {
        Limit::Capped { b, .. } | Limit::CappedUnknown { b, .. } => remedy::raise_somaxconn(b),
        Limit::Stale { b, s } if s >= b => remedy::listen_again(s),
        Limit::Stale { b, .. } => remedy::raise_somaxconn(b),
        Limit::ProbablyCapped { s } => remedy::raise_somaxconn_above(s),
        Limit::Own { s, .. } => remedy::raise_app_backlog(limit, s),
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

#[cfg(test)]
mod tests {
    use crate::verdict::{testutil::*, ListenerEvidence, Settings};

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
}

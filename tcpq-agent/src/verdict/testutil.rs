//! Test helpers shared by the verdict rules: a healthy listener to vary,
//! and checks that a verdict is one clean sentence each.

use crate::verdict::{listener, ports, ListenerEvidence, PortEvidence, Settings, Verdict};

pub fn settings() -> Settings {
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

pub fn healthy() -> ListenerEvidence {
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

pub fn one_line(v: &Verdict) {
    for s in [&v.cause, &v.remedy] {
        assert!(!s.contains('\n'), "{s}");
        assert_eq!(s.trim(), s, "{s}");
        assert!(!s.contains("  "), "{s}");
        assert!(s.ends_with('.'), "{s}");
    }
}

pub fn verdict(e: &ListenerEvidence) -> Verdict {
    let v = listener(e).expect("a verdict");
    one_line(&v);
    v
}

pub fn port_verdict(e: &PortEvidence) -> Verdict {
    let v = ports(e).expect("a verdict");
    one_line(&v);
    v
}

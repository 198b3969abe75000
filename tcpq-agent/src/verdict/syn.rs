//! Rules 3 and 4: the SYN (half-open) queue. SYNs dropped because it was
//! full (with syncookies off, also by the 3/4 `tcp_max_syn_backlog` rule),
//! or answered with syncookies, which cost window scaling and SACK.

use crate::verdict::{
    remedy,
    words::{count, times},
    ListenerEvidence, Verdict,
};

/// Rule 3: SYNs dropped because the SYN (half-open) queue was full.
pub(super) fn syn_queue_drops(e: &ListenerEvidence) -> Verdict {
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
    Verdict {
        cause,
        remedy: remedy::syn_queue_drops(st, limit),
    }
}

/// Rule 4: syncookies were sent (the SYN queue was full, nothing dropped).
pub(super) fn syncookies(e: &ListenerEvidence) -> Verdict {
    let limit = e.queue_limit;
    let loss = "connections still work, but those without TCP timestamps lose window scaling and SACK, and all get a coarse MSS";
    if e.settings.syncookies == Some(2) {
        return Verdict {
            cause: format!(
                "net.ipv4.tcp_syncookies=2 makes the kernel answer every SYN to {} with a syncookie ({} sent, {} half-open now): {loss}.",
                e.endpoint, e.syncookies_sent, e.syn_queue_len
            ),
            remedy: remedy::syncookies_always(),
        };
    }
    Verdict {
        cause: format!(
            "The SYN (half-open) queue of {} filled up and the kernel answered {} with syncookies ({} half-open now, listen limit {limit}): {loss}.",
            e.endpoint,
            count(e.syncookies_sent, "SYN", "SYNs"),
            e.syn_queue_len
        ),
        remedy: remedy::syncookies(limit, e.settings.somaxconn),
    }
}

#[cfg(test)]
mod tests {
    use crate::verdict::{testutil::*, ListenerEvidence, Settings};

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
}

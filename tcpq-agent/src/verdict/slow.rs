//! Rule 6: the application is slow to accept (a high p99 wait in the
//! accept queue) though nothing has been dropped yet.

use crate::verdict::{
    remedy,
    words::{count_verb, millis},
    ListenerEvidence, Verdict,
};

/// p99 accept latency (ms) from which a listener with a non-empty queue is
/// called slow even though nothing was dropped yet.
const SLOW_ACCEPT_MS: f64 = 100.0;

pub(super) fn slow_accept(e: &ListenerEvidence) -> bool {
    e.accept_latency_p99_ms.is_some_and(|p| p >= SLOW_ACCEPT_MS)
}

/// Rule 6: the application is slow to accept; nothing dropped yet.
pub(super) fn slow(e: &ListenerEvidence) -> Verdict {
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
        remedy: remedy::slow(e.settings.somaxconn),
    }
}

#[cfg(test)]
mod tests {
    use crate::verdict::{testutil::*, ListenerEvidence, Settings};

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
}

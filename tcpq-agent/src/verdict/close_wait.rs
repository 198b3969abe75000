//! Rule 5: accepted connections left in CLOSE_WAIT: the peer closed them,
//! the application has not.

use crate::verdict::{
    remedy,
    slow::slow_accept,
    words::{count, millis},
    ListenerEvidence, Verdict,
};

/// Rule 5: accepted connections left in CLOSE_WAIT.
pub(super) fn close_wait(e: &ListenerEvidence) -> Verdict {
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
        remedy: remedy::close_wait(),
    }
}

#[cfg(test)]
mod tests {
    use crate::verdict::{testutil::*, ListenerEvidence};

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
}

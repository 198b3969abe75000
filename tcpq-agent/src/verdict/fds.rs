//! Rule 1: accept() fails with EMFILE (per process) or ENFILE (host-wide),
//! with what holds the descriptors (CLOSE_WAIT) and what waits meanwhile.

use crate::verdict::{
    remedy,
    words::{count_sit, count_wait, times},
    ListenerEvidence, Verdict,
};

/// Rule 1: accept() fails with EMFILE (per process) or ENFILE (host-wide).
pub(super) fn fd_exhaustion(e: &ListenerEvidence) -> Option<Verdict> {
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
    let waiting = waiting(e);
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
        let remedy = remedy::emfile(cw > 0, e.fd_limit);
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
        let remedy = remedy::enfile(cw > 0);
        return Some(Verdict { cause, remedy });
    }
    None
}

/// What waits in the accept queue meanwhile ("" when nothing does).
fn waiting(e: &ListenerEvidence) -> String {
    if e.overflows > 0 {
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
    }
}

#[cfg(test)]
mod tests {
    use crate::verdict::{testutil::*, ListenerEvidence};

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
}

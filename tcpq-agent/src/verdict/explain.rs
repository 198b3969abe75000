//! A report line → its verdict: the line's own numbers plus the
//! namespace's settings, handed to the evidence builder. Pure.

use crate::{
    model::{Kind, Pending},
    owner::resolve::Owner,
    source::netstat::NetnsState,
    verdict::{
        self,
        evidence::{self, ListenerFacts},
        Verdict,
    },
};

pub fn line(p: &Pending, owner: Option<&Owner>, st: Option<&NetnsState>) -> Option<Verdict> {
    if let Kind::ConnectError { error } = &p.kind {
        if error != "EADDRNOTAVAIL" {
            return None;
        }
        return verdict::ports(&evidence::ports(p.count, st));
    }
    let settings = st.map(|s| s.sysctls.clone()).unwrap_or_default();
    evidence::listener_verdict(&ListenerFacts {
        info: &p.info,
        owner,
        settings: &settings,
        counts: &[(p.kind.clone(), p.count)],
        facts: &p.attrs,
        // A line does not carry the SYN queue's length.
        syn_queue_len: 0,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{
        model::{Fact, ListenerInfo, ListenerKey, Next, Source, Stage},
        source::netstat::Sysctls,
    };

    fn pending(kind: Kind, count: u64) -> Pending {
        Pending {
            kind,
            source: Source::SockDiag,
            key: Some(ListenerKey { netns: 1, inode: 2 }),
            netns: Some(1),
            info: ListenerInfo {
                addr: "0.0.0.0".parse().unwrap(),
                port: 8080,
                queue_len: 129,
                queue_limit: 128,
            },
            count,
            peer: None,
            pid: None,
            inode: None,
            attrs: Vec::new(),
        }
    }

    fn ns() -> NetnsState {
        NetnsState {
            time_wait: Some(4),
            sysctls: Sysctls {
                somaxconn: Some(128),
                syncookies: Some(0),
                port_range: Some((40000, 40003)),
                tw_reuse: Some(0),
                ..Default::default()
            },
            ..Default::default()
        }
    }

    #[test]
    fn overflow_lines_name_somaxconn() {
        let p = pending(Kind::ListenOverflow(Stage::Syn, Next::Unknown), 7);
        let v = line(&p, None, Some(&ns())).unwrap();
        assert!(v.cause.contains("128"), "{}", v.cause);
    }

    #[test]
    fn a_requested_backlog_names_both_numbers() {
        let mut p = pending(Kind::ListenOverflow(Stage::Syn, Next::Unknown), 7);
        p.attrs.push(Fact::BacklogRequested(8192));
        let v = line(&p, None, Some(&ns())).unwrap();
        assert!(
            v.cause
                .contains("because listen(…, 8192) was capped to net.core.somaxconn=128"),
            "{}",
            v.cause
        );
        assert!(v.remedy.contains("at least 8192"), "{}", v.remedy);
        // Unknown: said plainly.
        let p = pending(Kind::ListenOverflow(Stage::Syn, Next::Unknown), 7);
        let v = line(&p, None, Some(&ns())).unwrap();
        assert!(
            v.cause.contains("the backlog it asked for is not known"),
            "{}",
            v.cause
        );
    }

    #[test]
    fn emfile_lines_use_the_fd_numbers() {
        let mut p = pending(
            Kind::AcceptError {
                error: "EMFILE".into(),
            },
            5,
        );
        p.attrs = vec![Fact::OpenFds(9), Fact::FdLimit(9)];
        let v = line(&p, None, Some(&ns())).unwrap();
        assert!(
            v.cause.contains("EMFILE") && v.cause.contains('9'),
            "{}",
            v.cause
        );
    }

    #[test]
    fn port_exhaustion_uses_the_range() {
        let mut p = pending(
            Kind::ConnectError {
                error: "EADDRNOTAVAIL".into(),
            },
            3,
        );
        p.key = None;
        let v = line(&p, None, Some(&ns())).unwrap();
        assert!(v.cause.contains("40000"), "{}", v.cause);
        assert!(
            v.remedy.contains("pool") || v.remedy.contains("Reuse"),
            "{}",
            v.remedy
        );
        p.kind = Kind::ConnectError {
            error: "ECONNREFUSED".into(),
        };
        assert!(line(&p, None, Some(&ns())).is_none());
    }

    #[test]
    fn ack_overflows_under_abort_on_overflow_are_resets() {
        let mut st = ns();
        st.sysctls.abort_on_overflow = Some(1);
        let p = pending(Kind::ListenOverflow(Stage::Ack, Next::Unknown), 2);
        let v = line(&p, None, Some(&st)).unwrap();
        assert!(v.cause.contains("reset"), "{}", v.cause);
    }

    #[test]
    fn a_verdict_reads_the_exact_p99() {
        let mut p = pending(Kind::AcceptLatency, 10);
        // 851.46 ms: the line shows 851.5, the verdict rounds once.
        p.attrs = vec![Fact::AcceptLatency {
            p50_ns: 1_000_000,
            p99_ns: 851_460_000,
            max_ns: 900_000_000,
        }];
        let v = line(&p, None, Some(&ns())).unwrap();
        assert!(v.cause.contains("waited 851 ms (p99)"), "{}", v.cause);
    }

    #[test]
    fn retransmits_have_no_verdict_of_their_own() {
        assert!(line(&pending(Kind::SynackRetransmit, 3), None, Some(&ns())).is_none());
    }
}

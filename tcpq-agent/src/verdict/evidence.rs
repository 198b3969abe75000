//! The one evidence builder: what is known of a listener (or of a
//! namespace's outgoing connections), in the pipeline's own words, turned
//! into the evidence the verdict rules read. `trace` passes a report line's
//! facts (through [`crate::verdict::explain`]), `status` a row's; the same
//! facts give the same evidence, hence the same verdict.

use crate::{
    model::{Fact, Kind, ListenerInfo, Next, Stage},
    owner::resolve::Owner,
    source::netstat::NetnsState,
    verdict::{self, ListenerEvidence, PortEvidence, Settings, Verdict},
};

/// What a caller knows of one listener.
#[derive(Debug, Clone, Copy)]
pub struct ListenerFacts<'a> {
    /// Its address and port, and its accept queue now.
    pub info: &'a ListenerInfo,
    /// The process that owns it.
    pub owner: Option<&'a Owner>,
    /// Its namespace's settings.
    pub settings: &'a Settings,
    /// What was counted, by kind: a report line's one count, or what a
    /// status row's numbers say.
    pub counts: &'a [(Kind, u64)],
    /// What came with the counts: the backlog listen() asked for, the
    /// owner's descriptors, the accept latency.
    pub facts: &'a [Fact],
    /// Half-open (SYN_RECV) requests now, where a dump counted them.
    pub syn_queue_len: u32,
}

/// The evidence of a listener's facts; None when no count is of a kind a
/// listener verdict reads (retransmits, resets, plain listen drops, ...).
pub fn listener(f: &ListenerFacts) -> Option<ListenerEvidence> {
    let mut e = ListenerEvidence {
        endpoint: crate::model::endpoint(f.info.addr, f.info.port),
        process: f.owner.map(|o| format!("{} (pid {})", o.name, o.pid)),
        queue_len: f.info.queue_len,
        queue_limit: f.info.queue_limit,
        syn_queue_len: f.syn_queue_len,
        settings: f.settings.clone(),
        ..Default::default()
    };
    let mut read = false;
    for (kind, n) in f.counts {
        read |= count(&mut e, kind, *n);
    }
    if !read {
        return None;
    }
    for fact in f.facts {
        match *fact {
            // A negative listen() backlog means the largest (the kernel
            // caps it).
            Fact::BacklogRequested(b) if e.backlog_requested.is_none() => {
                e.backlog_requested = Some(u32::try_from(b).unwrap_or(u32::MAX));
            }
            Fact::OpenFds(n) => e.open_fds = Some(n as u32),
            Fact::FdLimit(n) => e.fd_limit = Some(n),
            _ => {}
        }
    }
    e.accept_latency_p99_ms = f.facts.iter().find_map(Fact::accept_latency_p99_ms);
    Some(e)
}

/// Adds `n` of `kind` to the evidence; false when no verdict reads it.
fn count(e: &mut ListenerEvidence, kind: &Kind, n: u64) -> bool {
    match kind {
        Kind::ListenOverflow(stage, next) => {
            e.overflows += n;
            // At the ACK stage the kernel answers with a RST exactly when
            // tcp_abort_on_overflow=1 (seen by the hook, or the setting).
            let reset = *next == Next::Reset
                || (*stage == Stage::Ack
                    && *next == Next::Unknown
                    && e.settings.abort_on_overflow == Some(1));
            if reset {
                e.overflow_resets += n;
            }
        }
        Kind::SynQueueDrop { .. } => e.syn_queue_drops += n,
        Kind::SyncookiesSent => e.syncookies_sent += n,
        Kind::CloseWait => e.close_wait += n as u32,
        Kind::AcceptLatency => {}
        Kind::AcceptError { error } => e.accept_errors.push((error.clone(), n)),
        _ => return false,
    }
    true
}

/// The verdict of a listener's facts, or None when nothing is wrong.
pub fn listener_verdict(f: &ListenerFacts) -> Option<Verdict> {
    verdict::listener(&listener(f)?)
}

/// The evidence of a namespace's outgoing connections: connect() failures
/// with EADDRNOTAVAIL over the window, and its latest reading.
pub fn ports(addr_not_avail: u64, st: Option<&NetnsState>) -> PortEvidence {
    PortEvidence {
        addr_not_avail,
        time_wait: st.and_then(|s| s.time_wait).unwrap_or(0),
        connected: 0,
        tw_reuse: st.and_then(|s| s.sysctls.tw_reuse),
        settings: st.map(|s| s.sysctls.clone()).unwrap_or_default(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn info() -> ListenerInfo {
        ListenerInfo {
            addr: "0.0.0.0".parse().unwrap(),
            port: 8080,
            queue_len: 3,
            queue_limit: 128,
        }
    }

    #[test]
    fn counts_and_facts_become_the_evidence() {
        let owner = Owner {
            pid: 9,
            name: "nginx".into(),
            ..Default::default()
        };
        let settings = Settings {
            abort_on_overflow: Some(1),
            ..Default::default()
        };
        let counts = [
            (Kind::ListenOverflow(Stage::Ack, Next::Unknown), 4),
            (Kind::ListenOverflow(Stage::Syn, Next::Unknown), 1),
            (Kind::CloseWait, 2),
            (
                Kind::AcceptError {
                    error: "EMFILE".into(),
                },
                7,
            ),
        ];
        let facts = [
            Fact::BacklogRequested(-1),
            Fact::OpenFds(1024),
            Fact::FdLimit(1024),
            Fact::AcceptLatency {
                p50_ns: 1,
                p99_ns: 250_000_000,
                max_ns: 300_000_000,
            },
        ];
        let e = listener(&ListenerFacts {
            info: &info(),
            owner: Some(&owner),
            settings: &settings,
            counts: &counts,
            facts: &facts,
            syn_queue_len: 5,
        })
        .unwrap();
        assert_eq!(
            e,
            ListenerEvidence {
                endpoint: "0.0.0.0:8080".into(),
                process: Some("nginx (pid 9)".into()),
                queue_len: 3,
                queue_limit: 128,
                backlog_requested: Some(u32::MAX),
                // The ACK-time ones were RSTs: tcp_abort_on_overflow=1.
                overflows: 5,
                overflow_resets: 4,
                syn_queue_len: 5,
                close_wait: 2,
                accept_errors: vec![("EMFILE".into(), 7)],
                open_fds: Some(1024),
                fd_limit: Some(1024),
                accept_latency_p99_ms: Some(250.0),
                settings,
                ..Default::default()
            }
        );
    }

    #[test]
    fn counts_no_verdict_reads_give_no_evidence() {
        let f = ListenerFacts {
            info: &info(),
            owner: None,
            settings: &Settings::default(),
            counts: &[(Kind::SynackRetransmit, 3)],
            facts: &[],
            syn_queue_len: 0,
        };
        assert_eq!(listener(&f), None);
        assert_eq!(listener(&ListenerFacts { counts: &[], ..f }), None);
    }
}

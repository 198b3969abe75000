//! The verdict of a row no report brought one for: the row's numbers, as
//! the listener facts the one evidence builder takes
//! ([`crate::verdict::evidence`], also behind `trace` and `status`).

use super::frame::Row;
use crate::{
    model::{Fact, Kind, ListenerInfo, Next, Stage},
    owner::resolve::Owner,
    verdict::{
        evidence::{self, ListenerFacts},
        Settings, Verdict,
    },
};

/// What a row says happened in about the last second (its rates, rounded
/// up), and the CLOSE_WAIT sockets now. Overflows of both stages are one
/// count, as `status` counts them: at the SYN stage, where no RST is
/// implied. Accept errors are left out (the rate has no error names).
fn counts(r: &Row) -> [(Kind, u64); 4] {
    let per_second = |rate: f64| rate.ceil() as u64;
    let syn_drop = Kind::SynQueueDrop {
        reason: "syn_queue_full",
    };
    [
        (
            Kind::ListenOverflow(Stage::Syn, Next::Unknown),
            per_second(r.rates.overflow_syn + r.rates.overflow_ack),
        ),
        (syn_drop, per_second(r.rates.syn_drops)),
        (Kind::SyncookiesSent, per_second(r.rates.cookies)),
        (Kind::CloseWait, u64::from(r.close_wait)),
    ]
}

/// The verdict of `row` (of the listener `info`, owned by `owner`, in a
/// namespace with `settings`), with the accept `latency` shown in it.
pub(super) fn listener(
    row: &Row,
    info: &ListenerInfo,
    owner: Option<&Owner>,
    settings: &Settings,
    latency: Option<&Fact>,
) -> Option<Verdict> {
    evidence::listener_verdict(&ListenerFacts {
        info,
        owner,
        settings,
        counts: &counts(row),
        facts: latency.map(std::slice::from_ref).unwrap_or_default(),
        // top does not dump the SYN queue.
        syn_queue_len: 0,
    })
}

#[cfg(test)]
mod tests {
    use super::super::frame::{tests::row, Counts};
    use super::*;
    use crate::{
        model::{ListenerKey, Pending, Source},
        source::netstat::NetnsState,
    };

    /// A report line of `count` of `kind` on `info`, with `attrs`.
    fn line(info: &ListenerInfo, kind: Kind, count: u64, attrs: Vec<Fact>) -> Pending {
        Pending {
            kind,
            source: Source::SockDiag,
            key: Some(ListenerKey {
                netns: 5,
                inode: 10,
            }),
            netns: Some(5),
            info: info.clone(),
            count,
            peer: None,
            pid: None,
            inode: None,
            attrs,
        }
    }

    /// Rows and lines with the same facts as `status`'s test of the same
    /// name (its listener: nginx on :8080, somaxconn 128, syncookies on).
    #[test]
    fn the_same_listener_facts_give_top_status_and_trace_the_same_verdict() {
        let owner = Owner {
            pid: 9,
            name: "nginx".into(),
            ..Default::default()
        };
        let st = NetnsState {
            sysctls: Settings {
                somaxconn: Some(128),
                syncookies: Some(1),
                max_syn_backlog: Some(128),
                abort_on_overflow: Some(0),
                ..Default::default()
            },
            ..Default::default()
        };
        let info = |queue_len| ListenerInfo {
            addr: "0.0.0.0".parse().unwrap(),
            port: 8080,
            queue_len,
            queue_limit: 128,
        };
        let latency = Fact::AcceptLatency {
            p50_ns: 1_000_000,
            p99_ns: 250_000_000,
            max_ns: 300_000_000,
        };
        let overflow = Kind::ListenOverflow(Stage::Syn, Next::Unknown);
        let syn_drop = Kind::SynQueueDrop {
            reason: "syn_queue_full",
        };
        // (queue now, rates, CLOSE_WAIT, latency; the line's kind, count).
        let rates = |overflow_syn, overflow_ack, syn_drops, cookies| Counts {
            overflow_syn,
            overflow_ack,
            syn_drops,
            cookies,
            ..Default::default()
        };
        let cases = [
            // 39.5 overflows a second at both stages: 40 in the last one.
            (
                129,
                rates(30.0, 9.5, 0.0, 0.0),
                0,
                None,
                overflow.clone(),
                40,
            ),
            (0, rates(0.0, 0.0, 0.0, 0.0), 7, None, Kind::CloseWait, 7),
            (
                129,
                rates(3.0, 0.0, 0.0, 0.0),
                0,
                Some(&latency),
                overflow,
                3,
            ),
            (0, rates(0.0, 0.0, 4.2, 0.0), 0, None, syn_drop, 5),
            (
                0,
                rates(0.0, 0.0, 0.0, 2.0),
                0,
                None,
                Kind::SyncookiesSent,
                2,
            ),
        ];
        for (queue_len, rates, close_wait, lat, kind, n) in cases {
            let info = info(queue_len);
            let mut r = row(8080, 0.0, 0.0, (queue_len, 128), "nginx");
            (r.rates, r.close_wait) = (rates, close_wait);
            let by_top = listener(&r, &info, Some(&owner), &st.sysctls, lat);
            let attrs = lat.cloned().into_iter().collect();
            let l = line(&info, kind, n, attrs);
            let by_trace = crate::verdict::explain::line(&l, Some(&owner), Some(&st));
            assert!(by_top.is_some(), "{l:?}");
            assert_eq!(by_top, by_trace, "{l:?}");
        }
    }

    #[test]
    fn a_quiet_row_has_no_verdict() {
        let info = ListenerInfo {
            addr: "0.0.0.0".parse().unwrap(),
            port: 8080,
            queue_len: 0,
            queue_limit: 128,
        };
        let r = row(8080, 0.0, 0.0, (0, 128), "nginx");
        assert_eq!(listener(&r, &info, None, &Settings::default(), None), None);
    }
}

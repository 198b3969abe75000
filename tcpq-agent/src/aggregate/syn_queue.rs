//! The SYN (half-open) queue: why a SYN was dropped, each listener's
//! SYN_RECV requests at a dump, and which listener the namespace's
//! syncookies went to.

use std::collections::HashMap;

use crate::{
    aggregate::{Aggregator, NetnsSnapshot},
    model::{Kind, ListenerInfo, Next, Source, Stage},
    source::{
        decode::SynArrival,
        sockdiag::{self, DiagSock},
    },
};

/// What dropped a SYN, in the order `tcp_conn_request` checks (6.1–6.18):
/// a full SYN queue without syncookies (TCPReqQFullDrop), a full accept
/// queue (ListenOverflows), then, with syncookies off, 3/4 of
/// `tcp_max_syn_backlog` in use by unproven peers, all as they were when
/// the SYN arrived.
pub fn classify_syn_drop(info: &ListenerInfo, syn: &SynArrival) -> Kind {
    let (qlen, syncookies, msb) = (syn.syn_queue_len, syn.syncookies, syn.max_syn_backlog);
    if syncookies == 0 && qlen > info.queue_limit {
        Kind::SynQueueDrop {
            reason: "syn_queue_full",
        }
    } else if info.queue_full() {
        Kind::ListenOverflow(Stage::Syn, Next::Unknown)
    } else if syncookies == 0 && three_quarters_full(qlen, msb) {
        Kind::SynQueueDrop {
            reason: "max_syn_backlog",
        }
    } else {
        Kind::ListenDrop(Stage::Syn)
    }
}

/// `max_syn_backlog - qlen < max_syn_backlog >> 2`, as the kernel computes it.
pub(super) fn three_quarters_full(qlen: u32, msb: u32) -> bool {
    (msb as i64 - qlen as i64) < (msb >> 2) as i64
}

/// SYN_RECV requests per local port.
fn per_port(others: &[DiagSock]) -> HashMap<u16, u32> {
    let mut out: HashMap<u16, u32> = HashMap::new();
    for o in others
        .iter()
        .filter(|o| o.state == sockdiag::STATE_SYN_RECV)
    {
        *out.entry(o.lport).or_default() += 1;
    }
    out
}

impl Aggregator {
    /// SYN_RECV requests per listener (matched by local port).
    pub(super) fn syn_queues(&mut self, snap: &NetnsSnapshot, others: &[DiagSock]) {
        let per_port = per_port(others);
        for l in &snap.listeners {
            if let Some(st) = self.listeners.get_mut(&snap.key(l)) {
                st.syn_queue = per_port.get(&l.lport).copied().unwrap_or(0);
            }
        }
    }

    /// Syncookies are counted per namespace only: they go to the listener
    /// with the fullest SYN queue (the only one, usually).
    pub(super) fn attribute_cookies(&mut self, snap: &NetnsSnapshot, n: u64) {
        let best = snap
            .listeners
            .iter()
            .filter(|l| self.port.is_none_or(|p| p == l.lport))
            .map(|l| {
                let key = snap.key(l);
                let q = self.listeners.get(&key).map_or(0, |st| st.syn_queue);
                (q, key, l)
            })
            .max_by_key(|(q, key, _)| (*q, std::cmp::Reverse(key.inode)));
        if let Some((_, key, l)) = best {
            let info = ListenerInfo::of(l);
            self.add(
                Some(key),
                Kind::SyncookiesSent,
                Source::SockDiag,
                info,
                n,
                None,
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::super::testutil::*;
    use super::*;

    #[test]
    fn syn_drops_are_classified_in_the_kernels_order() {
        let syn = |syn_queue_len, syncookies, max_syn_backlog| SynArrival {
            syn_queue_len,
            max_syn_backlog,
            syncookies,
        };
        let syn_q = |r| Kind::SynQueueDrop { reason: r };
        // SYN queue over the limit, cookies off: checked before the accept queue.
        assert_eq!(
            classify_syn_drop(&info(3, 2), &syn(3, 0, 128)),
            syn_q("syn_queue_full")
        );
        // With cookies, the same SYN can only be lost to a full accept queue.
        assert_eq!(
            classify_syn_drop(&info(3, 2), &syn(3, 1, 128)),
            Kind::ListenOverflow(Stage::Syn, Next::Unknown)
        );
        // 8 - 7 < 8 >> 2: the 3/4 rule.
        assert_eq!(
            classify_syn_drop(&info(0, 100), &syn(7, 0, 8)),
            syn_q("max_syn_backlog")
        );
        assert_eq!(
            classify_syn_drop(&info(0, 100), &syn(6, 0, 8)),
            Kind::ListenDrop(Stage::Syn)
        );
        assert_eq!(
            classify_syn_drop(&info(0, 100), &syn(7, 1, 8)),
            Kind::ListenDrop(Stage::Syn)
        );
    }

    #[test]
    fn syncookies_go_to_the_listener_with_the_deepest_syn_queue() {
        let mut a = Aggregator::default();
        let mut l2 = sock(2, 0, 0, 2);
        l2.lport = 9090;
        let mut s0 = snap(vec![sock(1, 0, 0, 2), l2.clone()], 100, true);
        s0.state = Some(state(0, 10, 0, 1));
        a.on_snapshot(&s0);
        let mut s1 = snap(vec![sock(1, 0, 0, 2), l2], 200, false);
        s1.state = Some(state(0, 14, 0, 1));
        let mut req = sock(0, 0, 0, 0);
        req.state = sockdiag::STATE_SYN_RECV;
        req.lport = 9090;
        s1.others = Some(vec![req.clone(), req]);
        a.on_snapshot(&s1);
        let p = a.take();
        assert_eq!(p.len(), 1);
        assert_eq!(
            (&p[0].kind, p[0].count, p[0].info.port),
            (&Kind::SyncookiesSent, 4, 9090)
        );
    }
}

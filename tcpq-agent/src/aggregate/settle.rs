//! Settling a listener's `sk_drops` against sock_diag snapshots.
//!
//! SYN-time drops of a listener between two snapshots are
//! `Δsk_drops − 2 × (ACK-time drops in between)`: each ACK-time drop adds 2
//! to `sk_drops` (once in `tcp_listendrop`, once when the ACK is freed). An
//! ACK-time event stamped *during* a dump may or may not be in that dump's
//! `sk_drops`, so a listener with such an event keeps its previous baseline
//! and is settled at the next snapshot: counts stay exact, one poll later.
//!
//! What is left is split by the namespace's counters: TCPDeferAcceptDrop
//! (bare ACKs a TCP_DEFER_ACCEPT listener ignores, no loss) and
//! TCPReqQFullDrop (a full SYN queue) first, the rest by the queues.

use std::collections::VecDeque;

use crate::{
    aggregate::{syn_queue::three_quarters_full, Aggregator, NetnsSnapshot},
    model::{Kind, ListenerInfo, ListenerKey, Next, Source, Stage},
    source::{netstat::Sysctls, sockdiag::DiagSock},
};

/// `sk_drops` added by one ACK-time drop (`tcp_listendrop` + the discard of
/// the ACK in `tcp_v{4,6}_rcv`).
pub const SK_DROPS_PER_ACK_DROP: u64 = 2;

/// Kernel events that added `weight` to a listener's `sk_drops`, all in the
/// time window `lo..=hi` (one event: `lo == hi`; a count read from the
/// kernel: since its previous reading).
#[derive(Debug, Clone, Copy)]
struct Explained {
    lo: u64,
    hi: u64,
    weight: u64,
}

impl Explained {
    /// May have happened while the dump `start..=end` ran.
    fn overlaps(&self, start: u64, end: u64) -> bool {
        self.lo <= end && self.hi >= start
    }
}

/// One listener's `sk_drops` as last settled, and the kernel events that
/// moved it since.
#[derive(Debug, Default)]
pub(super) struct DropLedger {
    last_drops: Option<u32>,
    /// Whether the accept queue was full at the previous snapshot.
    prev_full: bool,
    /// Kernel events that moved `sk_drops`, not yet matched to a snapshot.
    explained: VecDeque<Explained>,
}

/// The drops of a snapshot no kernel event explains.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct Unexplained {
    /// In drops of `stage` (ACK-time drops count 2 in `sk_drops`).
    pub left: u64,
    /// The queue was full at the previous snapshot.
    pub was_full: bool,
}

impl DropLedger {
    /// Kernel events added `weight` to `sk_drops` within `lo..=hi`.
    pub fn explain(&mut self, lo: u64, hi: u64, weight: u64) {
        self.explained.push_back(Explained { lo, hi, weight });
    }

    /// No kernel event is waiting for a snapshot.
    #[cfg(test)]
    pub fn is_settled(&self) -> bool {
        self.explained.is_empty()
    }

    /// A dump (`start..=end`) read `drops` with the queue `full_now`: what
    /// no event explains, in drops of `stage`. None when there is nothing
    /// to count: the agent's first dump (`baseline`: history), or an event
    /// that may or may not be in this dump (settled at the next).
    pub fn settle(
        &mut self,
        drops: u32,
        full_now: bool,
        (start, end): (u64, u64),
        baseline: bool,
        stage: Stage,
    ) -> Option<Unexplained> {
        let prev = match self.last_drops {
            Some(p) => p,
            None if baseline => {
                self.last_drops = Some(drops);
                self.prev_full = full_now;
                self.explained.retain(|e| e.hi >= start);
                return None;
            }
            // New since the agent started: every drop is news.
            None => 0,
        };
        if self.explained.iter().any(|e| e.overlaps(start, end)) {
            self.prev_full |= full_now;
            return None; // settle at the next snapshot
        }
        let explained: u64 = self
            .explained
            .iter()
            .filter(|e| e.hi < start)
            .map(|e| e.weight)
            .sum();
        self.explained.retain(|e| e.hi >= start);
        let delta = drops.wrapping_sub(prev) as u64;
        let mut left = delta.saturating_sub(explained);
        let mut settled = drops;
        if stage == Stage::Ack {
            // An odd drop is half of an ACK-time drop still in progress
            // (or another drop): leave it for the next snapshot.
            settled = drops.wrapping_sub((left % SK_DROPS_PER_ACK_DROP) as u32);
            left /= SK_DROPS_PER_ACK_DROP;
        }
        let was_full = self.prev_full;
        self.last_drops = Some(settled);
        self.prev_full = full_now;
        Some(Unexplained { left, was_full })
    }
}

/// What a namespace's counters moved by since its previous reading.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(super) struct Moved {
    /// TCPReqQFullDrop.
    pub reqq: u64,
    /// TCPReqQFullDoCookies.
    pub cookies: u64,
    /// TCPDeferAcceptDrop.
    pub deferred: u64,
}

/// Namespace counts not yet matched to a listener's `sk_drops`.
#[derive(Debug, Default)]
pub(super) struct Budgets {
    /// TCPReqQFullDrop.
    reqq: u64,
    /// TCPDeferAcceptDrop: bare ACKs a TCP_DEFER_ACCEPT listener ignores by
    /// design (+1 sk_drops each), not lost connections.
    defer: u64,
}

impl Budgets {
    /// What the namespace's latest reading moved, before its dump is
    /// settled.
    pub fn add(&mut self, moved: &Moved) {
        self.reqq += moved.reqq;
        self.defer += moved.deferred;
    }

    /// Keeps no more than the latest reading moved: older budget belongs to
    /// no listener we track.
    pub fn cap(&mut self, moved: &Moved) {
        self.reqq = self.reqq.min(moved.reqq);
        self.defer = self.defer.min(moved.deferred);
    }

    /// How many of `left` drops were deferred-accept ACKs.
    pub fn take_deferred(&mut self, left: u64) -> u64 {
        let d = left.min(self.defer);
        self.defer -= d;
        d
    }

    /// How many of `left` drops were to a full SYN queue.
    pub fn take_reqq(&mut self, left: u64) -> u64 {
        let q = left.min(self.reqq);
        self.reqq -= q;
        q
    }
}

/// What sock_diag drops no counter explains were: an overflow if the queue
/// was full at either snapshot, else at the SYN stage with syncookies off
/// the 3/4 `tcp_max_syn_backlog` rule, else a plain listen drop.
fn classify_left(stage: Stage, full: bool, sysctls: &Sysctls, syn_queue: u32) -> Kind {
    let msb = sysctls.max_syn_backlog.unwrap_or(0);
    if full {
        Kind::ListenOverflow(stage, Next::Unknown)
    } else if stage == Stage::Syn
        && sysctls.syncookies == Some(0)
        && msb > 0
        && three_quarters_full(syn_queue, msb)
    {
        Kind::SynQueueDrop {
            reason: "max_syn_backlog",
        }
    } else {
        Kind::ListenDrop(stage)
    }
}

impl Aggregator {
    /// Records that a kernel event added `weight` to a listener's
    /// `sk_drops`, for sock_diag to subtract; nothing when sock_diag does no
    /// counting (both stages hooked), so nothing piles up.
    pub(super) fn explain(&mut self, key: ListenerKey, (lo, hi): (u64, u64), weight: u64) {
        let st = self.listeners.entry(key).or_default();
        if !(self.hooked.syn && self.hooked.ack) {
            st.ledger.explain(lo, hi, weight);
        }
    }

    /// Stores the namespace's reading; returns how much its counters moved
    /// since the previous one (nothing on the first reading).
    pub(super) fn ns_counters(&mut self, snap: &NetnsSnapshot) -> Moved {
        let Some(now) = &snap.state else {
            return Moved::default();
        };
        let ns = self.ns.entry(snap.netns).or_default();
        let d = |name: &str| match &ns.last {
            Some(prev) => now.counter(name).saturating_sub(prev.counter(name)),
            None => 0,
        };
        let out = Moved {
            reqq: d("TcpExt.TCPReqQFullDrop"),
            cookies: d("TcpExt.TCPReqQFullDoCookies"),
            deferred: d("TcpExt.TCPDeferAcceptDrop"),
        };
        ns.last = Some(now.clone());
        ns.last_end_ns = snap.end_ns;
        out
    }

    /// One listener of a dump: tracks it, and counts the drops of the stage
    /// no hook reports that its `sk_drops` moved by.
    pub(super) fn settle_listener(
        &mut self,
        snap: &NetnsSnapshot,
        s: &DiagSock,
        sysctls: &Sysctls,
    ) {
        let Some(drops) = s.drops else { return };
        let key = snap.key(s);
        let info = ListenerInfo::of(s);
        let full_now = info.queue_full();
        let st = self.listeners.entry(key).or_default();
        st.present = true;
        st.info = Some(info.clone());
        let stage = match (self.hooked.syn, self.hooked.ack) {
            (true, true) => return,
            (false, _) => Stage::Syn,
            // Each ACK-time drop adds 2 to sk_drops.
            (true, false) => Stage::Ack,
        };
        let dump = (snap.start_ns, snap.end_ns);
        let Some(u) = st
            .ledger
            .settle(drops, full_now, dump, snap.baseline, stage)
        else {
            return;
        };
        let syn_queue = st.syn_queue;
        let mut left = u.left;
        if left > 0 && stage == Stage::Syn {
            let budgets = &mut self.ns.entry(snap.netns).or_default().budgets;
            left -= budgets.take_deferred(left);
            // The kernel checks the SYN queue first: as many drops as
            // the namespace's TCPReqQFullDrop moved are that.
            let q = budgets.take_reqq(left);
            if q > 0 {
                let kind = Kind::SynQueueDrop {
                    reason: "syn_queue_full",
                };
                self.add(Some(key), kind, Source::SockDiag, info.clone(), q, None);
            }
            left -= q;
        }
        if left > 0 {
            let kind = classify_left(stage, full_now || u.was_full, sysctls, syn_queue);
            self.add(Some(key), kind, Source::SockDiag, info, left, None);
        }
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use super::super::testutil::*;
    use super::*;
    use crate::{
        aggregate::Hooked,
        model::Pending,
        source::decode::{decode_event, tests::raw},
    };
    use tcpq_common::EventKind;

    #[test]
    fn history_before_start_is_not_reported() {
        let mut a = Aggregator::default();
        a.on_snapshot(&snap(vec![sock(1, 500, 1, 0)], 100, true));
        assert!(a.take().is_empty());
        a.on_snapshot(&snap(vec![sock(1, 503, 1, 0)], 200, false));
        assert_eq!(
            counts(&a.take()),
            vec![("listen_overflow", Some(Stage::Syn), Source::SockDiag, 3)]
        );
    }

    #[test]
    fn a_listener_born_after_start_counts_from_zero() {
        let mut a = Aggregator::default();
        a.on_snapshot(&snap(vec![], 100, true));
        a.on_snapshot(&snap(vec![sock(2, 4, 1, 0)], 200, false));
        assert_eq!(
            counts(&a.take()),
            vec![("listen_overflow", Some(Stage::Syn), Source::SockDiag, 4)]
        );
    }

    #[test]
    fn ack_drops_are_subtracted_from_sk_drops() {
        let mut a = Aggregator::default();
        a.on_snapshot(&snap(vec![sock(1, 10, 2, 1)], 100, true));
        // Two ACK-time overflows (4 sk_drops) and one SYN-time drop.
        a.on_event(&ack_event(150, 1, 2, 1));
        a.on_event(&ack_event(160, 1, 2, 1));
        a.on_snapshot(&snap(vec![sock(1, 15, 2, 1)], 200, false));
        assert_eq!(
            counts(&a.take()),
            vec![
                ("listen_overflow", Some(Stage::Syn), Source::SockDiag, 1),
                ("listen_overflow", Some(Stage::Ack), Source::Tracepoint, 2),
            ]
        );
    }

    #[test]
    fn an_ack_drop_during_a_dump_defers_that_listener_to_the_next_snapshot() {
        let mut a = Aggregator::default();
        a.on_snapshot(&snap(vec![sock(1, 0, 2, 1)], 100, true));
        a.on_event(&ack_event(205, 1, 2, 1)); // inside [200, 210]
        a.on_snapshot(&snap(vec![sock(1, 2, 2, 1)], 200, false));
        assert_eq!(
            counts(&a.take()),
            vec![("listen_overflow", Some(Stage::Ack), Source::Tracepoint, 1)]
        );
        a.on_snapshot(&snap(vec![sock(1, 2, 2, 1)], 300, false));
        assert!(
            a.take().is_empty(),
            "the 2 drops belong to the ACK event, none to SYNs"
        );
    }

    #[test]
    fn drops_with_room_in_the_queue_are_not_overflows() {
        let mut a = Aggregator::default();
        a.on_snapshot(&snap(vec![sock(1, 0, 0, 128)], 100, true));
        a.on_snapshot(&snap(vec![sock(1, 3, 0, 128)], 200, false));
        assert_eq!(
            counts(&a.take()),
            vec![("listen_drop", Some(Stage::Syn), Source::SockDiag, 3)]
        );
        a.on_event(&ack_event(250, 1, 0, 128));
        assert_eq!(
            counts(&a.take()),
            vec![("listen_drop", Some(Stage::Ack), Source::Tracepoint, 1)]
        );
    }

    #[test]
    fn a_queue_that_was_full_at_the_previous_snapshot_still_counts_as_overflow() {
        let mut a = Aggregator::default();
        a.on_snapshot(&snap(vec![sock(1, 0, 6, 5)], 100, true));
        a.on_snapshot(&snap(vec![sock(1, 7, 0, 5)], 200, false));
        assert_eq!(
            counts(&a.take()),
            vec![("listen_overflow", Some(Stage::Syn), Source::SockDiag, 7)]
        );
    }

    #[test]
    fn with_a_hook_on_tcp_conn_request_sock_diag_does_not_count() {
        let mut a = Aggregator::new(
            HashMap::new(),
            None,
            Hooked {
                syn: true,
                ack: true,
            },
        );
        a.on_snapshot(&snap(vec![sock(1, 0, 1, 0)], 100, false));
        a.on_snapshot(&snap(vec![sock(1, 9, 1, 0)], 200, false));
        assert!(a.take().is_empty());
        let mut e = raw(EventKind::SynDrop);
        e.source = 2;
        e.sock_ino = 1;
        a.on_event(&decode_event(&e).unwrap()); // queue 2/1 at entry: full
        e.ack_backlog = 0;
        a.on_event(&decode_event(&e).unwrap()); // room in the queue
        assert_eq!(
            counts(&a.take()),
            vec![
                ("listen_drop", Some(Stage::Syn), Source::Kprobe, 1),
                ("listen_overflow", Some(Stage::Syn), Source::Kprobe, 1),
            ]
        );
    }

    #[test]
    fn with_only_syn_hooked_sock_diag_counts_ack_time_drops() {
        // --attach fentry on Debian 6.1: tcp_conn_request has fentry, the
        // 7-argument syn_recv_sock does not, and 6.1 has no kfree_skb reason.
        let mut a = Aggregator::new(
            HashMap::new(),
            None,
            Hooked {
                syn: true,
                ack: false,
            },
        );
        a.on_snapshot(&snap(vec![sock(1, 0, 2, 1)], 100, true));
        let mut e = raw(EventKind::SynDrop);
        e.source = 1;
        e.sock_ino = 1;
        e.ts_ns = 150;
        a.on_event(&decode_event(&e).unwrap()); // 1 SYN drop (sk_drops +1)
                                                // +1 SYN, +2 per ACK-time drop × 2, +1 of a third ACK drop half done
        a.on_snapshot(&snap(vec![sock(1, 6, 2, 1)], 200, false));
        assert_eq!(
            counts(&a.take()),
            vec![
                ("listen_overflow", Some(Stage::Syn), Source::Fentry, 1),
                ("listen_overflow", Some(Stage::Ack), Source::SockDiag, 2),
            ]
        );
        a.on_snapshot(&snap(vec![sock(1, 7, 2, 1)], 300, false)); // its second half
        assert_eq!(
            counts(&a.take()),
            vec![("listen_overflow", Some(Stage::Ack), Source::SockDiag, 1)]
        );
    }

    #[test]
    fn with_both_stages_hooked_nothing_piles_up() {
        let mut a = Aggregator::new(
            HashMap::new(),
            None,
            Hooked {
                syn: true,
                ack: true,
            },
        );
        let mut e = raw(EventKind::SynDrop);
        e.source = 1;
        for ts in 0..1000 {
            e.ts_ns = ts;
            a.on_event(&decode_event(&e).unwrap());
        }
        assert!(a.listeners.values().all(|st| st.ledger.is_settled()));
        assert_eq!(
            counts(&a.take()),
            vec![("listen_overflow", Some(Stage::Syn), Source::Fentry, 1000)]
        );
    }

    #[test]
    fn sock_diag_drops_are_split_by_the_namespace_counters() {
        let mut a = Aggregator::default();
        let mut s0 = snap(vec![sock(1, 10, 0, 2)], 100, true);
        s0.state = Some(state(5, 0, 3, 0));
        a.on_snapshot(&s0);
        assert!(a.take().is_empty());
        // 6 drops: 2 deferred-accept ACKs (not losses), 3 SYN-queue-full,
        // 1 other.
        let mut s1 = snap(vec![sock(1, 16, 0, 2)], 200, false);
        s1.state = Some(state(8, 0, 5, 0));
        a.on_snapshot(&s1);
        let c: Vec<_> = a
            .take()
            .iter()
            .map(|p: &Pending| (p.kind.clone(), p.count))
            .collect();
        assert_eq!(
            c,
            vec![
                (Kind::ListenDrop(Stage::Syn), 1),
                (
                    Kind::SynQueueDrop {
                        reason: "syn_queue_full"
                    },
                    3
                ),
            ]
        );
    }

    #[test]
    fn a_ledger_subtracts_events_before_the_dump_and_waits_for_one_during_it() {
        let mut l = DropLedger::default();
        assert_eq!(l.settle(10, false, (100, 110), true, Stage::Syn), None);
        l.explain(150, 150, 2);
        l.explain(205, 205, 2); // inside the next dump
        assert_eq!(l.settle(15, true, (200, 210), false, Stage::Syn), None);
        // The next dump: both events are before it; 5 + 2 moved, 4 explained.
        let u = l.settle(17, false, (300, 310), false, Stage::Syn);
        assert_eq!(
            u,
            Some(Unexplained {
                left: 3,
                was_full: true
            })
        );
        assert!(l.is_settled());
        // At the ACK stage an odd drop waits for its other half.
        let u = l.settle(22, false, (400, 410), false, Stage::Ack);
        assert_eq!(
            u,
            Some(Unexplained {
                left: 2,
                was_full: false
            })
        );
        let u = l.settle(23, false, (500, 510), false, Stage::Ack);
        assert_eq!(u.map(|u| u.left), Some(1));
    }

    #[test]
    fn budgets_hand_out_what_the_counters_moved() {
        let mut b = Budgets::default();
        let moved = |reqq, deferred| Moved {
            reqq,
            cookies: 0,
            deferred,
        };
        b.add(&moved(3, 2));
        assert_eq!(b.take_deferred(5), 2);
        assert_eq!(b.take_reqq(1), 1);
        b.cap(&moved(1, 0));
        assert_eq!((b.take_reqq(9), b.take_deferred(9)), (1, 0));
    }
}

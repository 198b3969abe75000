//! Overflows the kernel counted that no hook reported.
//!
//! With both stages hooked, sock_diag counts nothing: every overflow line
//! comes from `tcp_conn_request` or `tcp_v{4,6}_syn_recv_sock`. A kprobe
//! can still miss a run: `trace_call_bpf` skips every kprobe program on a
//! CPU where another BPF program is running, which happens when a softirq
//! (a SYN retransmit timer, a packet) interrupts a tracepoint program in
//! process context. Linux 6.7+ counts those skips in the program's
//! `recursion_misses`; older kernels count them nowhere. So each reading
//! of a namespace compares its `TcpExt.ListenOverflows` with the overflows
//! the hooks reported there, and what the kernel counted beyond them is
//! reported too, from the counter (source `sock_diag`), on the listener
//! it most likely belongs to.
//!
//! Never more than the kernel counted: a shortfall is reported only once
//! two readings in a row show it (an overflow counted just before a
//! reading can reach the agent just after it), and hook reports the
//! counter does not show (before the namespace's first reading) only
//! make it report less.

use crate::{
    aggregate::{Aggregator, NetnsSnapshot},
    model::{Kind, ListenerInfo, ListenerKey, Next, Source, Stage},
};

/// Overflows the hooks missed, as the namespaces' counters showed them.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Missed {
    /// Reported on a listener.
    pub named: u64,
    /// No listener to name: counted only.
    pub unattributed: u64,
}

impl Missed {
    pub fn total(&self) -> u64 {
        self.named + self.unattributed
    }
}

/// The kernel counter this settles against.
pub const COUNTER: &str = "TcpExt.ListenOverflows";

/// One namespace's overflows: the kernel's and the hooks'.
#[derive(Debug, Default)]
pub(super) struct Shortfall {
    /// The counter at the namespace's first reading.
    base: Option<u64>,
    /// Overflows the hooks reported since the first reading.
    hooked: u64,
    /// Before the first reading: the hooks' overflows, and when the latest
    /// happened (all before that reading: they are in its base).
    early: (u64, u64),
    /// Overflows reported from the counter.
    reported: u64,
    /// The shortfall the previous reading showed, not reported yet.
    seen: u64,
    /// The listener and stage of the latest overflow a hook reported.
    last: Option<(ListenerKey, Stage)>,
}

impl Shortfall {
    /// A hook reported `n` overflows of `key` at `stage`, the latest at
    /// `hi` (CLOCK_MONOTONIC ns).
    pub fn hooked(&mut self, key: ListenerKey, stage: Stage, n: u64, hi: u64) {
        if self.base.is_some() {
            self.hooked += n;
        } else {
            self.early = (self.early.0 + n, self.early.1.max(hi));
        }
        self.last = Some((key, stage));
    }

    /// The namespace's counter, read in a dump that began at `start`: how
    /// many overflows to report from it.
    pub fn reading(&mut self, counter: u64, start: u64) -> u64 {
        if self.base.is_none() && self.early.1 >= start {
            // Some may be after the reading: count them all as the hooks'
            // (a shortfall too small, never too large).
            self.hooked = self.early.0;
        }
        let base = *self.base.get_or_insert(counter);
        let kernel = counter.saturating_sub(base);
        let short = kernel.saturating_sub(self.hooked + self.reported);
        let now = short.min(self.seen);
        self.reported += now;
        self.seen = short - now;
        now
    }

    /// Overflows reported from the counter so far.
    #[cfg(test)]
    pub fn reported(&self) -> u64 {
        self.reported
    }
}

impl Aggregator {
    /// Whether overflows are settled against the namespace counter: both
    /// stages hooked, and no `--port` (the kernel's filter leaves other
    /// ports' overflows unreported, and the counter has them all).
    fn settles_overflows(&self) -> bool {
        self.hooked.syn && self.hooked.ack && self.port.is_none()
    }

    /// A hook's line of `kind`: an overflow is remembered for settling.
    pub(super) fn note_hooked(&mut self, key: ListenerKey, kind: &Kind, n: u64, hi: u64) {
        if !self.settles_overflows() {
            return;
        }
        if let Kind::ListenOverflow(stage, _) = *kind {
            let ns = self.ns.entry(key.netns).or_default();
            ns.shortfall.hooked(key, stage, n, hi);
        }
    }

    /// A namespace's reading: what its counter has beyond the hooks'
    /// overflows becomes a line of the listener it most likely belongs
    /// to (the only one with a full queue now, else the one a hook last
    /// saw overflow), or is counted as unattributed.
    pub(super) fn settle_overflows(&mut self, snap: &NetnsSnapshot) {
        if !self.settles_overflows() {
            return;
        }
        let Some(state) = &snap.state else { return };
        let Some(counter) = state.counters.get(COUNTER).copied() else {
            return;
        };
        let ns = self.ns.entry(snap.netns).or_default();
        let n = ns.shortfall.reading(counter, snap.start_ns);
        if n == 0 {
            return;
        }
        let last = ns.shortfall.last;
        match self.likely_listener(snap, last) {
            Some((key, info, stage)) => {
                self.missed.named += n;
                let kind = Kind::ListenOverflow(stage, Next::Unknown);
                self.add(Some(key), kind, Source::SockDiag, info, n, None);
            }
            None => self.missed.unattributed += n,
        }
    }

    /// The only listener of the dump with a full accept queue; else the
    /// one a hook last reported an overflow of, if it is still tracked.
    fn likely_listener(
        &self,
        snap: &NetnsSnapshot,
        last: Option<(ListenerKey, Stage)>,
    ) -> Option<(ListenerKey, ListenerInfo, Stage)> {
        let stage_of = |key: ListenerKey| match last {
            Some((k, stage)) if k == key => stage,
            _ => Stage::Syn,
        };
        let mut full = snap
            .listeners
            .iter()
            .filter(|s| ListenerInfo::of(s).queue_full());
        if let (Some(s), None) = (full.next(), full.next()) {
            let key = snap.key(s);
            return Some((key, ListenerInfo::of(s), stage_of(key)));
        }
        let (key, stage) = last?;
        let info = self.listeners.get(&key)?.info.clone()?;
        Some((key, info, stage))
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use super::super::testutil::*;
    use super::*;
    use crate::aggregate::Hooked;

    const BOTH: Hooked = Hooked {
        syn: true,
        ack: true,
    };

    /// A dump of `socks` whose namespace counted `overflows` so far.
    fn reading(socks: Vec<DiagSock>, at: u64, overflows: u64) -> NetnsSnapshot {
        let mut s = snap(socks, at, at == 100);
        let mut st = state(0, 0, 0, 1);
        st.counters.insert(COUNTER.into(), overflows);
        s.state = Some(st);
        s
    }

    use crate::source::sockdiag::DiagSock;

    #[test]
    fn an_overflow_no_hook_reported_is_reported_from_the_counter_on_its_listener() {
        let mut a = Aggregator::new(HashMap::new(), None, BOTH);
        a.on_snapshot(&reading(vec![sock(1, 0, 2, 1), sock(2, 0, 0, 5)], 100, 10));
        a.on_event(&ack_event(150, 1, 2, 1));
        a.on_event(&ack_event(160, 1, 2, 1));
        // The kernel counted 3: one more than the hooks.
        a.on_snapshot(&reading(vec![sock(1, 0, 2, 1), sock(2, 0, 0, 5)], 200, 13));
        assert_eq!(
            counts(&a.take()),
            vec![("listen_overflow", Some(Stage::Ack), Source::Tracepoint, 2)]
        );
        a.on_snapshot(&reading(vec![sock(1, 0, 2, 1), sock(2, 0, 0, 5)], 300, 13));
        let lines = a.take();
        assert_eq!(
            counts(&lines),
            vec![("listen_overflow", Some(Stage::Ack), Source::SockDiag, 1)]
        );
        assert_eq!(lines[0].key.unwrap().inode, 1);
        assert_eq!(
            a.missed_overflows(),
            Missed {
                named: 1,
                unattributed: 0
            }
        );
        a.on_snapshot(&reading(vec![sock(1, 0, 2, 1), sock(2, 0, 0, 5)], 400, 13));
        assert!(a.take().is_empty(), "reported once");
    }

    #[test]
    fn with_no_full_queue_the_listener_a_hook_last_saw_overflow_is_named() {
        let mut a = Aggregator::new(HashMap::new(), None, BOTH);
        a.on_snapshot(&reading(vec![sock(1, 0, 2, 1), sock(2, 0, 0, 5)], 100, 0));
        a.on_event(&ack_event(150, 1, 2, 1));
        let drained = vec![sock(1, 0, 0, 1), sock(2, 0, 0, 5)];
        a.on_snapshot(&reading(drained.clone(), 200, 2));
        a.take();
        a.on_snapshot(&reading(drained, 300, 2));
        let lines = a.take();
        assert_eq!(lines.len(), 1);
        assert_eq!(lines[0].key.unwrap().inode, 1);
    }

    #[test]
    fn with_no_listener_to_name_the_overflows_are_counted() {
        let mut a = Aggregator::new(HashMap::new(), None, BOTH);
        let two_full = || vec![sock(1, 0, 2, 1), sock(2, 0, 6, 5)];
        a.on_snapshot(&reading(two_full(), 100, 0));
        a.on_snapshot(&reading(two_full(), 200, 4));
        a.on_snapshot(&reading(two_full(), 300, 4));
        assert!(a.take().is_empty());
        assert_eq!(
            a.missed_overflows(),
            Missed {
                named: 0,
                unattributed: 4
            }
        );
    }

    #[test]
    fn only_with_both_stages_hooked_and_no_port_filter() {
        for (hooked, port) in [(Hooked::default(), None), (BOTH, Some(8080))] {
            let mut a = Aggregator::new(HashMap::new(), port, hooked);
            for (at, n) in [(100, 0), (200, 4), (300, 4)] {
                a.on_snapshot(&reading(vec![sock(1, 0, 0, 5)], at, n));
            }
            assert!(a.take().is_empty(), "{hooked:?} {port:?}");
            assert_eq!(a.missed_overflows().total(), 0);
        }
    }

    fn key() -> ListenerKey {
        ListenerKey { netns: 1, inode: 7 }
    }

    #[test]
    fn the_first_reading_is_the_base() {
        let mut s = Shortfall::default();
        assert_eq!(s.reading(500, 0), 0);
        assert_eq!(s.reading(500, 0), 0);
        s.hooked(key(), Stage::Syn, 3, 0);
        assert_eq!(s.reading(503, 0), 0);
        assert_eq!(s.reading(503, 0), 0);
    }

    #[test]
    fn overflows_before_the_first_reading_are_in_its_base() {
        let mut s = Shortfall::default();
        s.hooked(key(), Stage::Syn, 2, 90); // before the reading at 100
        assert_eq!(s.reading(7, 100), 0);
        s.hooked(key(), Stage::Syn, 1, 150);
        assert_eq!(s.reading(9, 200), 0);
        assert_eq!(s.reading(9, 300), 1, "the 2 before are the base's");

        let mut s = Shortfall::default();
        s.hooked(key(), Stage::Syn, 2, 90);
        s.hooked(key(), Stage::Syn, 1, 105); // maybe after the reading
        assert_eq!(s.reading(7, 100), 0);
        // All 3 count as the hooks': one more by the kernel is no
        // shortfall (too small, never too large).
        assert_eq!(s.reading(8, 200), 0);
        assert_eq!(s.reading(8, 300), 0);
    }

    #[test]
    fn a_shortfall_is_reported_at_the_second_reading_that_shows_it() {
        let mut s = Shortfall::default();
        s.reading(10, 0);
        s.hooked(key(), Stage::Syn, 5, 0);
        // The kernel counted 6, the hooks 5: wait one reading.
        assert_eq!(s.reading(16, 0), 0);
        assert_eq!(s.reading(16, 0), 1);
        assert_eq!(s.reading(16, 0), 0, "reported once");
        assert_eq!(s.reported(), 1);
    }

    #[test]
    fn a_hook_report_that_arrives_late_is_no_shortfall() {
        let mut s = Shortfall::default();
        s.reading(0, 0);
        s.hooked(key(), Stage::Ack, 2, 0);
        // Counted by the kernel just before the reading, by the hook just
        // after it.
        assert_eq!(s.reading(3, 0), 0);
        s.hooked(key(), Stage::Ack, 1, 0);
        assert_eq!(s.reading(3, 0), 0);
        assert_eq!(s.reported(), 0);
    }

    #[test]
    fn a_shortfall_that_grows_is_reported_as_it_persists() {
        let mut s = Shortfall::default();
        s.reading(0, 0);
        assert_eq!(s.reading(2, 0), 0);
        assert_eq!(s.reading(5, 0), 2, "the 2 the previous reading showed");
        assert_eq!(s.reading(5, 0), 3);
        assert_eq!(s.reported(), 5);
    }

    #[test]
    fn hook_reports_beyond_the_counter_only_report_less() {
        let mut s = Shortfall::default();
        s.reading(0, 0);
        s.hooked(key(), Stage::Syn, 4, 0); // before the counter moved
        assert_eq!(s.reading(3, 0), 0);
        assert_eq!(s.reading(5, 0), 0);
        assert_eq!(s.reading(5, 0), 1);
    }
}

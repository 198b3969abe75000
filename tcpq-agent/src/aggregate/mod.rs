//! Per-listener accounting over an interval.
//!
//! Two sources feed it:
//! - kernel events (ACK-time overflows, SYN-ACK retransmits, resets), exact
//!   and timestamped (`events`);
//! - sock_diag snapshots of every listener, whose `sk_drops` also moves for
//!   SYN-time drops, which fire no tracepoint (`settle`).
//!
//! Each concern has its file: the pending counts (`pending`), sk_drops
//! settlement against snapshots (`settle`), SYN queues and syncookies
//! (`syn_queue`), CLOSE_WAIT (`close_wait`), accept() errors and
//! latency (`accept`) and SO_REUSEPORT groups (`reuseport`). This file
//! holds the `Aggregator`, what it keeps per listener and per namespace,
//! and its thin dispatch: a snapshot in, the interval's lines out.

mod accept;
mod close_wait;
mod events;
mod pending;
mod reuseport;
mod settle;
mod shortfall;
mod syn_queue;

use std::collections::HashMap;

pub use crate::source::{accepts::Accepter, poll::NetnsSnapshot};

use crate::{
    model::{Fact, ListenerInfo, ListenerKey, Pending},
    source::netstat::NetnsState,
    source::sockdiag::DiagSock,
};

pub use settle::SK_DROPS_PER_ACK_DROP;
pub use shortfall::Missed;
pub use syn_queue::classify_syn_drop;

/// Intervals without a sighting after which a listener is forgotten.
const FORGET_AFTER: u8 = 2;

impl ListenerInfo {
    /// A listener as a sock_diag dump reports it.
    fn of(s: &DiagSock) -> ListenerInfo {
        ListenerInfo {
            addr: s.local,
            port: s.lport,
            queue_len: s.rqueue,
            queue_limit: s.wqueue,
        }
    }
}

/// Which stages kernel hooks report exactly (the rest is sock_diag's).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Hooked {
    /// `tcp_conn_request` (fentry/kprobe).
    pub syn: bool,
    /// `tcp_v4/v6_syn_recv_sock` (fentry/kprobe) or `skb:kfree_skb`.
    pub ack: bool,
}

impl NetnsSnapshot {
    /// The key of one of its listeners.
    fn key(&self, l: &DiagSock) -> ListenerKey {
        ListenerKey {
            netns: self.netns,
            inode: l.inode,
        }
    }
}

#[derive(Debug, Default)]
struct ListenerState {
    info: Option<ListenerInfo>,
    /// What its `sk_drops` was settled at, and the kernel events not yet
    /// matched to a snapshot.
    ledger: settle::DropLedger,
    /// Seen by a snapshot since the last `take`.
    present: bool,
    /// SYN_RECV requests at the last dump that counted them.
    syn_queue: u32,
    /// `take`s in a row without a sighting; forgotten after a few.
    unseen: u8,
    /// What its listen() asked for, when the kernel saw the call.
    backlog_requested: Option<i32>,
}

/// What is kept per network namespace between snapshots.
#[derive(Debug, Default)]
struct NsState {
    last: Option<NetnsState>,
    /// When `last` was read (end of its round in that namespace).
    last_end_ns: u64,
    /// Namespace counters not yet matched to a listener's sk_drops.
    budgets: settle::Budgets,
    /// CLOSE_WAIT sockets and their groups.
    close_wait: close_wait::Tracker,
    /// Its overflows as the hooks and `TcpExt.ListenOverflows` saw them.
    shortfall: shortfall::Shortfall,
}

#[derive(Default)]
pub struct Aggregator {
    listeners: HashMap<ListenerKey, ListenerState>,
    pending: pending::Lines,
    /// Maps the kernel's `sk_rst_reason` values to names (from BTF).
    rst_reasons: HashMap<u32, String>,
    /// Only this local port (`--port`), applied to snapshots.
    port: Option<u16>,
    /// Which stages a kernel hook reports exactly. sock_diag counts what is
    /// left of `sk_drops` for the stage no hook covers; with both covered it
    /// only tracks listeners.
    hooked: Hooked,
    ns: HashMap<u32, NsState>,
    /// Who accepted a connection, from the kernel's record of accepts:
    /// names the owner of CLOSE_WAIT sockets no listener explains any more.
    accepter: Option<Accepter>,
    /// Overflows no hook reported, found in the namespaces' counters.
    missed: Missed,
}

impl Aggregator {
    /// Where to ask who accepted a connection.
    pub fn set_accepter(&mut self, accepter: Accepter) {
        self.accepter = Some(accepter);
    }

    pub fn new(rst_reasons: HashMap<u32, String>, port: Option<u16>, hooked: Hooked) -> Self {
        Self {
            rst_reasons,
            port,
            hooked,
            ..Default::default()
        }
    }

    /// Every tracked listener with its latest queue state.
    pub fn listener_infos(&self) -> impl Iterator<Item = (ListenerKey, &ListenerInfo)> {
        self.listeners
            .iter()
            .filter_map(|(k, st)| Some((*k, st.info.as_ref()?)))
    }

    /// The last reading of a namespace's counters and settings.
    pub fn netns_state(&self, netns: u32) -> Option<&NetnsState> {
        self.ns.get(&netns)?.last.as_ref()
    }

    /// One namespace's dump: settles its listeners' `sk_drops`, counts
    /// SYN queues, syncookies and CLOSE_WAIT.
    pub fn on_snapshot(&mut self, snap: &NetnsSnapshot) {
        let moved = self.ns_counters(snap);
        if let Some(others) = &snap.others {
            self.syn_queues(snap, others);
        }
        let sysctls = snap
            .state
            .as_ref()
            .map(|s| s.sysctls.clone())
            .unwrap_or_default();
        self.ns.entry(snap.netns).or_default().budgets.add(&moved);
        for s in &snap.listeners {
            if self.port.is_some_and(|p| p != s.lport) {
                continue;
            }
            self.settle_listener(snap, s, &sysctls);
        }
        // Counters are read after the dump: what they moved for a drop the
        // dump did not see yet waits one round; older budget belongs to no
        // listener we track.
        self.ns.entry(snap.netns).or_default().budgets.cap(&moved);
        if moved.cookies > 0 && !self.hooked.syn {
            self.attribute_cookies(snap, moved.cookies);
        }
        if let Some(others) = &snap.others {
            self.close_waits(snap, others);
        }
        self.settle_overflows(snap);
    }

    /// Overflows the hooks missed so far (the exit summary's).
    pub fn missed_overflows(&self) -> Missed {
        self.missed
    }

    /// After a full round: forgets namespaces the round did not see.
    /// Forgets namespaces that are gone (`alive`: every one still there,
    /// read this round or not).
    pub fn end_round(&mut self, alive: &[u32]) {
        self.ns.retain(|n, _| alive.contains(n));
    }

    /// Everything counted since the last call, and forgets listeners that
    /// closed.
    pub fn take(&mut self) -> Vec<Pending> {
        let ns = &self.ns;
        // Port exhaustion is explained by the TIME_WAIT count: wait for a
        // reading of the namespace taken after the failure.
        let fresh = |netns: Option<u32>, last_ts: u64| {
            netns
                .and_then(|n| ns.get(&n))
                .is_some_and(|ns| ns.last.is_some() && ns.last_end_ns >= last_ts)
        };
        let ready = self.pending.take_ready(fresh);
        let mut out: Vec<Pending> = ready
            .into_iter()
            .map(|(key, slot)| {
                let mut p = slot.into_pending(key);
                let requested = p
                    .key
                    .and_then(|k| self.listeners.get(&k))
                    .and_then(|st| st.backlog_requested);
                if let Some(b) = requested {
                    p.attrs.push(Fact::BacklogRequested(b));
                }
                if p.kind.error() == Some("EADDRNOTAVAIL") {
                    if let Some(st) = p.netns.and_then(|n| self.ns.get(&n)?.last.as_ref()) {
                        pending::port_headroom(st, &mut p.attrs);
                    }
                }
                p
            })
            .collect();
        self.group_totals(&mut out);
        self.age_listeners();
        out
    }

    /// Counts the `take`s each listener went unseen, and forgets those no
    /// snapshot has seen for a few intervals: they have closed.
    fn age_listeners(&mut self) {
        for st in self.listeners.values_mut() {
            st.unseen = if st.present {
                0
            } else {
                st.unseen.saturating_add(1)
            };
            st.present = false;
        }
        self.listeners.retain(|_, st| st.unseen <= FORGET_AFTER);
    }

    /// Whether anything is waiting for the next `take`.
    pub fn has_pending(&self) -> bool {
        !self.pending.is_empty()
    }

    /// Inodes of sockets (listeners, and others a line is about) with
    /// counts waiting for the next `take`: their owners are wanted.
    pub fn pending_inodes(&self) -> impl Iterator<Item = u32> + '_ {
        self.pending.inodes()
    }

    /// Whether a listener with this socket inode is still tracked.
    pub fn tracks_inode(&self, inode: u32) -> bool {
        self.listeners.keys().any(|k| k.inode == inode)
    }

    /// Listeners currently tracked.
    #[cfg(test)]
    fn tracked(&self) -> usize {
        self.listeners.len()
    }
}

#[cfg(test)]
mod testutil;

#[cfg(test)]
mod tests {
    use super::testutil::*;
    use super::*;

    #[test]
    fn port_filter_and_closed_listeners() {
        let mut a = Aggregator::new(HashMap::new(), Some(9999), Hooked::default());
        a.on_snapshot(&snap(vec![sock(1, 0, 1, 0)], 100, false));
        assert!(a.take().is_empty());
        assert_eq!(a.tracked(), 0);
        let mut b = Aggregator::default();
        b.on_snapshot(&snap(vec![sock(1, 0, 1, 0)], 100, true));
        assert_eq!(b.tracked(), 1);
        for t in 0..=FORGET_AFTER {
            b.take();
            b.on_snapshot(&snap(vec![], 200 + t as u64, false));
        }
        assert_eq!(b.tracked(), 1);
        b.take();
        assert_eq!(b.tracked(), 0, "a closed listener is forgotten");
    }
}

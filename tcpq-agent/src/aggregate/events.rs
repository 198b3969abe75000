//! Kernel events → pending counts: each ring-buffer (or kernel-counted)
//! event kind becomes a line of its listener, or of a local endpoint for
//! resets and connect() failures no listener explains. Events that move a
//! listener's `sk_drops` are also recorded for settlement.

use crate::{
    aggregate::{pending::Line, Aggregator, FORGET_AFTER},
    model::{self, Kind, ListenerInfo, ListenerKey, Next, Stage},
    source::decode::{Happened, KernelEvent, Outcome},
};

use super::{classify_syn_drop, SK_DROPS_PER_ACK_DROP};

/// An ACK-time failure of a listener's child socket: an overflow only with
/// a full queue (the kernel uses this path for every failed child socket),
/// with what became of the ACK when the hook saw it.
fn ack_time_kind(info: &ListenerInfo, outcome: Outcome) -> Kind {
    if !info.queue_full() {
        return Kind::ListenDrop(Stage::Ack);
    }
    let next = match outcome {
        Outcome::AckDropped => Next::AckDropped,
        Outcome::Reset => Next::Reset,
        Outcome::NotObserved => Next::Unknown,
    };
    Kind::ListenOverflow(Stage::Ack, next)
}

/// A local endpoint as a line's listener, with no queue known.
fn endpoint_info((addr, port): (std::net::IpAddr, u16)) -> ListenerInfo {
    ListenerInfo {
        addr,
        port,
        queue_len: 0,
        queue_limit: 0,
    }
}

impl Aggregator {
    /// One kernel event, as the ring buffer delivers it.
    pub fn on_event(&mut self, ev: &KernelEvent) {
        self.on_events(ev, 1, (ev.ts_ns, ev.ts_ns));
    }

    /// `n` events like `ev` (the latest of them), counted by the kernel,
    /// that happened within `window` (lo..=hi, CLOCK_MONOTONIC ns).
    pub fn on_events(&mut self, ev: &KernelEvent, n: u64, window: (u64, u64)) {
        match ev.what {
            Happened::ListenOverflowAck { outcome } => self.on_ack_failure(ev, outcome, n, window),
            Happened::SynDrop(syn) => {
                let Some((key, info)) = ev.listener.clone() else {
                    return;
                };
                self.explain(key, window, n);
                let kind = classify_syn_drop(&info, &syn);
                self.note_hooked(key, &kind, n, window.1);
                self.add(Some(key), kind, ev.source, info, n, None);
            }
            Happened::SyncookieSent(_) => self.on_listener_count(ev, Kind::SyncookiesSent, n),
            Happened::SynackRetransmit => self.on_listener_count(ev, Kind::SynackRetransmit, n),
            Happened::ResetReceived { state, accepter } => {
                self.on_reset_received(ev, state, accepter, n)
            }
            // Owners are the resolver's business; a closed listener is
            // forgotten at the next report instead of after a few polls.
            Happened::ListenerUp {
                backlog_requested, ..
            } => {
                if let Some(b) = backlog_requested {
                    let key = ListenerKey {
                        netns: ev.netns,
                        inode: ev.inode,
                    };
                    self.listeners.entry(key).or_default().backlog_requested = Some(b);
                }
            }
            Happened::ListenerDown => {
                if let Some(st) = self.listeners.get_mut(&ListenerKey {
                    netns: ev.netns,
                    inode: ev.inode,
                }) {
                    st.unseen = FORGET_AFTER;
                    st.present = false;
                }
            }
            Happened::ConnectError { errno, pid } => self.on_connect_error(ev, errno, pid, n),
            Happened::ResetSent { reason } => self.on_reset_sent(ev, reason, n),
        }
    }

    /// A count of `kind` for the event's listener (none: nothing).
    fn on_listener_count(&mut self, ev: &KernelEvent, kind: Kind, n: u64) {
        if let Some((key, info)) = ev.listener.clone() {
            self.add(Some(key), kind, ev.source, info, n, None);
        }
    }

    /// A handshake's final ACK the listener could not turn into a child.
    fn on_ack_failure(&mut self, ev: &KernelEvent, outcome: Outcome, n: u64, window: (u64, u64)) {
        let Some((key, info)) = ev.listener.clone() else {
            return;
        };
        let kind = ack_time_kind(&info, outcome);
        self.explain(key, window, SK_DROPS_PER_ACK_DROP * n);
        self.note_hooked(key, &kind, n, window.1);
        self.listeners.entry(key).or_default().info = Some(info.clone());
        self.add(Some(key), kind, ev.source, info, n, None);
    }

    /// A RST that arrived on a socket in `state`; `accepter`: who accepted
    /// the connection, when the kernel saw it.
    fn on_reset_received(&mut self, ev: &KernelEvent, state: u16, accepter: Option<u32>, n: u64) {
        self.add_line(Line {
            key: None,
            kind: Kind::ResetReceived {
                state: model::state_name(state),
            },
            source: ev.source,
            info: endpoint_info(ev.local),
            n,
            peer: Some(ev.peer),
            // A client's resets add up per server; a server's
            // per client address.
            group: Some(ev.peer),
            netns: Some(ev.netns),
            // A connection this host accepted: the kernel knows who.
            pid: accepter,
            inode: (accepter.is_none() && ev.inode != 0).then_some(ev.inode),
            attrs: Vec::new(),
            ts: ev.ts_ns,
        });
    }

    fn on_connect_error(&mut self, ev: &KernelEvent, errno: u32, pid: Option<u32>, n: u64) {
        self.add_line(Line {
            key: None,
            kind: Kind::ConnectError {
                error: model::errno_name(errno),
            },
            source: ev.source,
            // The destination is the line's server.
            info: endpoint_info(ev.peer),
            n,
            peer: None,
            group: Some(ev.peer),
            netns: Some(ev.netns),
            pid,
            inode: (pid.is_none() && ev.inode != 0).then_some(ev.inode),
            attrs: Vec::new(),
            ts: ev.ts_ns,
        });
    }

    /// A RST the host sent: of a listener with a full queue (an overflow
    /// answered), to a port nobody listens on, or something else.
    fn on_reset_sent(&mut self, ev: &KernelEvent, rst_reason: u32, n: u64) {
        let kernel_reason = self
            .rst_reasons
            .get(&rst_reason)
            .cloned()
            .unwrap_or_else(|| format!("{rst_reason}"));
        let (key, info, reason, peer) = match ev.listener.clone() {
            Some((key, info)) => {
                let reason = if info.queue_full() {
                    "listen_overflow"
                } else {
                    "other"
                };
                (Some(key), info, reason, None)
            }
            None => {
                let reason = if kernel_reason == "NO_SOCKET" {
                    "no_listener"
                } else {
                    "other"
                };
                (None, endpoint_info(ev.local), reason, Some(ev.peer))
            }
        };
        let kind = Kind::ResetSent {
            reason,
            kernel_reason,
        };
        self.add(key, kind, ev.source, info, n, peer);
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use super::super::testutil::*;
    use crate::{
        aggregate::{Aggregator, Hooked},
        model::{Kind, Source},
        source::decode::{decode_event, tests::raw},
    };
    use tcpq_common::EventKind;

    #[test]
    fn ack_overflow_outcome_is_kept_apart() {
        let mut a = Aggregator::default();
        let mut e = raw(EventKind::ListenOverflowAck);
        e.source = 1;
        e.aux = tcpq_common::event::outcome::RESET;
        a.on_event(&decode_event(&e).unwrap());
        e.aux = tcpq_common::event::outcome::ACK_DROPPED;
        a.on_event(&decode_event(&e).unwrap());
        a.on_event(&decode_event(&e).unwrap());
        let p = a.take();
        let mut got: Vec<_> = p
            .iter()
            .map(|p| (p.kind.next(), p.source, p.count))
            .collect();
        got.sort();
        assert_eq!(
            got,
            vec![
                (Some("ack_dropped"), Source::Fentry, 2),
                (Some("reset"), Source::Fentry, 1)
            ]
        );
    }

    #[test]
    fn resets_are_classified() {
        let mut reasons = HashMap::new();
        reasons.insert(1, "NO_SOCKET".to_string());
        reasons.insert(10, "INVALID_SYN".to_string());
        let mut a = Aggregator::new(reasons, None, Hooked::default());
        let mut e = raw(EventKind::ResetSent);
        e.detail = 10;
        a.on_event(&decode_event(&e).unwrap()); // listener with a full queue
        e.sk = 0;
        e.sock_ino = 0;
        e.detail = 1;
        e.rport = 5555;
        e.raddr = [127, 0, 0, 2, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0];
        a.on_event(&decode_event(&e).unwrap());
        a.on_event(&decode_event(&e).unwrap());
        let p = a.take();
        let kinds: Vec<_> = p.iter().map(|p| (p.kind.clone(), p.count)).collect();
        assert!(kinds.contains(&(
            Kind::ResetSent {
                reason: "listen_overflow",
                kernel_reason: "INVALID_SYN".into()
            },
            1
        )));
        assert!(kinds.contains(&(
            Kind::ResetSent {
                reason: "no_listener",
                kernel_reason: "NO_SOCKET".into()
            },
            2
        )));
    }

    #[test]
    fn a_reset_received_names_the_process_the_kernel_saw_accept() {
        let mut a = Aggregator::default();
        let mut e = raw(EventKind::ResetReceived);
        (e.state, e.rport, e.aux) = (1, 5555, 4242);
        a.on_event(&decode_event(&e).unwrap());
        e.aux = 0;
        a.on_event(&decode_event(&e).unwrap());
        let p = a.take();
        let by: Vec<_> = p.iter().map(|p| (p.pid, p.inode, p.count)).collect();
        assert!(by.contains(&(Some(4242), None, 1)), "{by:?}");
        assert!(by.contains(&(None, Some(777), 1)), "{by:?}");
    }

    #[test]
    fn an_ack_time_failure_is_an_overflow_only_with_a_full_queue() {
        use crate::model::{Next, Stage};
        use crate::source::decode::Outcome;
        let (full, room) = (info(3, 2), info(0, 128));
        let ack = |i, outcome| super::ack_time_kind(i, outcome);
        assert_eq!(
            ack(&full, Outcome::Reset),
            Kind::ListenOverflow(Stage::Ack, Next::Reset)
        );
        assert_eq!(
            ack(&full, Outcome::AckDropped),
            Kind::ListenOverflow(Stage::Ack, Next::AckDropped)
        );
        assert_eq!(
            ack(&full, Outcome::NotObserved),
            Kind::ListenOverflow(Stage::Ack, Next::Unknown)
        );
        assert_eq!(ack(&room, Outcome::Reset), Kind::ListenDrop(Stage::Ack));
    }
}

//! Per-listener accounting over an interval.
//!
//! Two sources feed it:
//! - kernel events (ACK-time overflows, SYN-ACK retransmits, resets), exact
//!   and timestamped;
//! - sock_diag snapshots of every listener, whose `sk_drops` also moves for
//!   SYN-time drops, which fire no tracepoint.
//!
//! SYN-time drops of a listener between two snapshots are
//! `Δsk_drops − 2 × (ACK-time drops in between)`: each ACK-time drop adds 2
//! to `sk_drops` (once in `tcp_listendrop`, once when the ACK is freed). An
//! ACK-time event stamped *during* a dump may or may not be in that dump's
//! `sk_drops`, so a listener with such an event keeps its previous baseline
//! and is settled at the next snapshot: counts stay exact, one poll later.

use std::collections::{BTreeMap, HashMap, VecDeque};

use tcpq_common::{event::outcome, EventKind};

use crate::{
    decode::KernelEvent,
    model::{Kind, ListenerInfo, ListenerKey, Next, Pending, Source, Stage},
    sockdiag::DiagSock,
};

/// `sk_drops` added by one ACK-time drop (`tcp_listendrop` + the discard of
/// the ACK in `tcp_v{4,6}_rcv`).
pub const SK_DROPS_PER_ACK_DROP: u64 = 2;

/// Intervals without a sighting after which a listener is forgotten.
const FORGET_AFTER: u8 = 2;

/// Which stages kernel hooks report exactly (the rest is sock_diag's).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Hooked {
    /// `tcp_conn_request` (fentry/kprobe).
    pub syn: bool,
    /// `tcp_v4/v6_syn_recv_sock` (fentry/kprobe) or `skb:kfree_skb`.
    pub ack: bool,
}

/// One netns' listeners as one dump saw them.
#[derive(Debug, Clone)]
pub struct NetnsSnapshot {
    pub netns: u32,
    pub listeners: Vec<DiagSock>,
    /// CLOCK_MONOTONIC (the clock of `bpf_ktime_get_ns`) around the dump.
    pub start_ns: u64,
    pub end_ns: u64,
    /// Taken when the agent started: what it holds is history, not news.
    pub baseline: bool,
}

#[derive(Debug, Default)]
struct ListenerState {
    info: Option<ListenerInfo>,
    last_drops: Option<u32>,
    /// Whether the accept queue was full at the previous snapshot.
    prev_full: bool,
    /// Kernel events that moved `sk_drops`, not yet matched to a snapshot:
    /// (timestamp, how much they added).
    explained: VecDeque<(u64, u64)>,
    /// Seen by a snapshot since the last `take`.
    present: bool,
    /// `take`s in a row without a sighting; forgotten after a few.
    unseen: u8,
}

type Endpoint = (std::net::IpAddr, u16);

/// Key of a pending count: listener (or none, for socket-less resets),
/// what, seen by which hook, and for socket-less resets the peer address.
type PendKey = (Option<ListenerKey>, Kind, Source, Option<Endpoint>);

/// A pending count with the latest listener state and peer.
struct Slot {
    info: ListenerInfo,
    count: u64,
    peer: Option<Endpoint>,
}

#[derive(Default)]
pub struct Aggregator {
    listeners: HashMap<ListenerKey, ListenerState>,
    pending: BTreeMap<PendKey, Slot>,
    /// Maps the kernel's `sk_rst_reason` values to names (from BTF).
    rst_reasons: HashMap<u32, String>,
    /// Only this local port (`--port`), applied to snapshots.
    port: Option<u16>,
    /// Which stages a kernel hook reports exactly. sock_diag counts what is
    /// left of `sk_drops` for the stage no hook covers; with both covered it
    /// only tracks listeners.
    hooked: Hooked,
}

impl Aggregator {
    pub fn new(rst_reasons: HashMap<u32, String>, port: Option<u16>, hooked: Hooked) -> Self {
        Self {
            rst_reasons,
            port,
            hooked,
            ..Default::default()
        }
    }

    fn add(
        &mut self,
        key: Option<ListenerKey>,
        kind: Kind,
        source: Source,
        info: ListenerInfo,
        n: u64,
        peer: Option<Endpoint>,
    ) {
        // Socket-less resets aggregate per local endpoint and peer address;
        // listener events per listener.
        let group_peer = if key.is_none() {
            peer.map(|(a, _)| (a, 0))
        } else {
            None
        };
        let slot = self
            .pending
            .entry((key, kind, source, group_peer))
            .or_insert(Slot {
                info: info.clone(),
                count: 0,
                peer,
            });
        slot.info = info;
        slot.count += n;
        if peer.is_some() {
            slot.peer = peer;
        }
    }

    /// Records that a kernel event added `weight` to a listener's
    /// `sk_drops`, for sock_diag to subtract; nothing when sock_diag does no
    /// counting (both stages hooked), so nothing piles up.
    fn explain(&mut self, key: ListenerKey, ts_ns: u64, weight: u64) {
        let st = self.listeners.entry(key).or_default();
        if !(self.hooked.syn && self.hooked.ack) {
            st.explained.push_back((ts_ns, weight));
        }
    }

    pub fn on_event(&mut self, ev: &KernelEvent) {
        match ev.kind {
            EventKind::ListenOverflowAck => {
                let Some((key, info)) = ev.listener.clone() else {
                    return;
                };
                // The kernel uses this path for every failed child socket;
                // only a full queue is an overflow.
                let kind = if info.queue_full() {
                    let next = match ev.aux {
                        outcome::ACK_DROPPED => Next::AckDropped,
                        outcome::RESET => Next::Reset,
                        _ => Next::Unknown,
                    };
                    Kind::ListenOverflow(Stage::Ack, next)
                } else {
                    Kind::ListenDrop(Stage::Ack)
                };
                self.explain(key, ev.ts_ns, SK_DROPS_PER_ACK_DROP);
                self.listeners.entry(key).or_default().info = Some(info.clone());
                self.add(Some(key), kind, ev.source, info, 1, None);
            }
            EventKind::SynDrop => {
                let Some((key, info)) = ev.listener.clone() else {
                    return;
                };
                self.explain(key, ev.ts_ns, 1);
                // Queue lengths are those at the SYN's arrival.
                let kind = if info.queue_full() {
                    Kind::ListenOverflow(Stage::Syn, Next::Unknown)
                } else {
                    Kind::ListenDrop(Stage::Syn)
                };
                self.add(Some(key), kind, ev.source, info, 1, None);
            }
            EventKind::SynackRetransmit => {
                let Some((key, info)) = ev.listener.clone() else {
                    return;
                };
                self.add(Some(key), Kind::SynackRetransmit, ev.source, info, 1, None);
            }
            EventKind::ResetSent => {
                let kernel_reason = self
                    .rst_reasons
                    .get(&ev.detail)
                    .cloned()
                    .unwrap_or_else(|| format!("{}", ev.detail));
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
                        let info = ListenerInfo {
                            addr: ev.local.0,
                            port: ev.local.1,
                            queue_len: 0,
                            queue_limit: 0,
                        };
                        let reason = if kernel_reason == "NO_SOCKET" {
                            "no_listener"
                        } else {
                            "other"
                        };
                        (None, info, reason, Some(ev.peer))
                    }
                };
                self.add(
                    key,
                    Kind::ResetSent {
                        reason,
                        kernel_reason,
                    },
                    ev.source,
                    info,
                    1,
                    peer,
                );
            }
        }
    }

    pub fn on_snapshot(&mut self, snap: &NetnsSnapshot) {
        for s in &snap.listeners {
            if self.port.is_some_and(|p| p != s.lport) {
                continue;
            }
            let Some(drops) = s.drops else { continue };
            let key = ListenerKey {
                netns: snap.netns,
                inode: s.inode,
            };
            let info = ListenerInfo {
                addr: s.local,
                port: s.lport,
                queue_len: s.rqueue,
                queue_limit: s.wqueue,
            };
            let full_now = info.queue_full();
            let st = self.listeners.entry(key).or_default();
            st.present = true;
            st.info = Some(info.clone());
            let stage = match (self.hooked.syn, self.hooked.ack) {
                (true, true) => continue,
                (false, _) => Stage::Syn,
                // Each ACK-time drop adds 2 to sk_drops.
                (true, false) => Stage::Ack,
            };
            let prev = match st.last_drops {
                Some(p) => p,
                None if snap.baseline => {
                    st.last_drops = Some(drops);
                    st.prev_full = full_now;
                    st.explained.retain(|&(t, _)| t >= snap.start_ns);
                    continue;
                }
                // New since the agent started: every drop is news.
                None => 0,
            };
            if st
                .explained
                .iter()
                .any(|&(t, _)| t >= snap.start_ns && t <= snap.end_ns)
            {
                st.prev_full |= full_now;
                continue; // settle at the next snapshot
            }
            let explained: u64 = st
                .explained
                .iter()
                .filter(|&&(t, _)| t < snap.start_ns)
                .map(|&(_, w)| w)
                .sum();
            st.explained.retain(|&(t, _)| t > snap.end_ns);
            let delta = drops.wrapping_sub(prev) as u64;
            let mut left = delta.saturating_sub(explained);
            let mut settled = drops;
            if stage == Stage::Ack {
                // An odd drop is half of an ACK-time drop still in progress
                // (or another drop): leave it for the next snapshot.
                settled = drops.wrapping_sub((left % SK_DROPS_PER_ACK_DROP) as u32);
                left /= SK_DROPS_PER_ACK_DROP;
            }
            let was_full = st.prev_full;
            st.last_drops = Some(settled);
            st.prev_full = full_now;
            if left > 0 {
                let kind = if full_now || was_full {
                    Kind::ListenOverflow(stage, Next::Unknown)
                } else {
                    Kind::ListenDrop(stage)
                };
                self.add(Some(key), kind, Source::SockDiag, info, left, None);
            }
        }
    }

    /// Everything counted since the last call, and forgets listeners that
    /// closed.
    pub fn take(&mut self) -> Vec<Pending> {
        let out = std::mem::take(&mut self.pending)
            .into_iter()
            .map(|((key, kind, source, _), s)| Pending {
                kind,
                source,
                key,
                info: s.info,
                count: s.count,
                peer: s.peer,
            })
            .collect();
        for st in self.listeners.values_mut() {
            st.unseen = if st.present {
                0
            } else {
                st.unseen.saturating_add(1)
            };
            st.present = false;
        }
        // A listener no snapshot has seen for a few intervals has closed.
        self.listeners.retain(|_, st| st.unseen <= FORGET_AFTER);
        out
    }

    /// Whether anything is waiting for the next `take`.
    pub fn has_pending(&self) -> bool {
        !self.pending.is_empty()
    }

    /// Inodes of listeners with counts waiting for the next `take`.
    pub fn pending_inodes(&self) -> impl Iterator<Item = u32> + '_ {
        self.pending.keys().filter_map(|(k, ..)| k.map(|k| k.inode))
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
mod tests {
    use super::*;
    use crate::decode::{decode_event, tests::raw};

    const NS: u32 = 4026531840;

    fn sock(inode: u32, drops: u32, rq: u32, wq: u32) -> DiagSock {
        DiagSock {
            family: 2,
            state: 10,
            local: "127.0.0.1".parse().unwrap(),
            lport: 8080,
            rqueue: rq,
            wqueue: wq,
            uid: 0,
            inode,
            cookie: 0,
            drops: Some(drops),
        }
    }

    fn snap(socks: Vec<DiagSock>, start: u64, baseline: bool) -> NetnsSnapshot {
        NetnsSnapshot {
            netns: NS,
            listeners: socks,
            start_ns: start,
            end_ns: start + 10,
            baseline,
        }
    }

    fn ack_event(ts: u64, inode: u32, q: u32, lim: u32) -> KernelEvent {
        let mut e = raw(EventKind::ListenOverflowAck);
        e.ts_ns = ts;
        e.netns = NS;
        e.sock_ino = inode;
        e.ack_backlog = q;
        e.max_ack_backlog = lim;
        decode_event(&e).unwrap()
    }

    /// (event, stage, source, count) per pending line, sorted.
    fn counts(p: &[Pending]) -> Vec<(&'static str, Option<Stage>, Source, u64)> {
        let mut c: Vec<_> = p
            .iter()
            .map(|p| (p.kind.event_name(), p.kind.stage(), p.source, p.count))
            .collect();
        c.sort();
        c
    }

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
        assert!(a.listeners.values().all(|st| st.explained.is_empty()));
        assert_eq!(
            counts(&a.take()),
            vec![("listen_overflow", Some(Stage::Syn), Source::Fentry, 1000)]
        );
    }

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
}

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

use tcpq_common::{accepted::PeerKey, event::outcome, EventKind};

use crate::{
    model::{self, Fact, Kind, ListenerInfo, ListenerKey, Next, Pending, Source, Stage},
    source::decode::KernelEvent,
    source::netstat::NetnsState,
    source::sockdiag::{self, DiagSock},
};

/// `sk_drops` added by one ACK-time drop (`tcp_listendrop` + the discard of
/// the ACK in `tcp_v{4,6}_rcv`).
pub const SK_DROPS_PER_ACK_DROP: u64 = 2;

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

/// What dropped a SYN, in the order `tcp_conn_request` checks (6.1–6.18):
/// a full SYN queue without syncookies (TCPReqQFullDrop), a full accept
/// queue (ListenOverflows), then, with syncookies off, 3/4 of
/// `tcp_max_syn_backlog` in use by unproven peers. `qlen` is the SYN-queue
/// length when the SYN arrived.
pub fn classify_syn_drop(info: &ListenerInfo, qlen: u32, syncookies: u8, msb: u32) -> Kind {
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

/// What is left of the namespace's local port range: its size and the
/// sockets in TIME_WAIT holding ports of it.
fn port_headroom(st: &NetnsState, attrs: &mut Vec<Fact>) {
    if let Some(tw) = st.time_wait {
        attrs.push(Fact::TimeWait(tw));
    }
    if let Some((lo, hi)) = st.sysctls.port_range {
        attrs.push(Fact::PortRange { lo, hi });
    }
}

/// `max_syn_backlog - qlen < max_syn_backlog >> 2`, as the kernel computes it.
fn three_quarters_full(qlen: u32, msb: u32) -> bool {
    (msb as i64 - qlen as i64) < (msb >> 2) as i64
}

/// Which stages kernel hooks report exactly (the rest is sock_diag's).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Hooked {
    /// `tcp_conn_request` (fentry/kprobe).
    pub syn: bool,
    /// `tcp_v4/v6_syn_recv_sock` (fentry/kprobe) or `skb:kfree_skb`.
    pub ack: bool,
}

/// One netns' listeners as one dump saw them.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct NetnsSnapshot {
    pub netns: u32,
    pub listeners: Vec<DiagSock>,
    /// CLOSE_WAIT and SYN_RECV sockets, on the rounds that dump them.
    pub others: Option<Vec<DiagSock>>,
    /// The namespace's counters and settings, read right after the dump.
    pub state: Option<NetnsState>,
    /// CLOCK_MONOTONIC (the clock of `bpf_ktime_get_ns`) around the dump.
    pub start_ns: u64,
    pub end_ns: u64,
    /// Taken when the agent started: what it holds is history, not news.
    pub baseline: bool,
    /// What the kernel's counts moved by, read just before this dump (only
    /// the round's first namespace) and just after it.
    pub storm_before: Vec<crate::source::storm::Delta>,
    pub storm_after: Vec<crate::source::storm::Delta>,
}

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

#[derive(Debug, Default)]
struct ListenerState {
    info: Option<ListenerInfo>,
    last_drops: Option<u32>,
    /// Whether the accept queue was full at the previous snapshot.
    prev_full: bool,
    /// Kernel events that moved `sk_drops`, not yet matched to a snapshot.
    explained: VecDeque<Explained>,
    /// Seen by a snapshot since the last `take`.
    present: bool,
    /// SYN_RECV requests at the last dump that counted them.
    syn_queue: u32,
    /// `take`s in a row without a sighting; forgotten after a few.
    unseen: u8,
    /// What its listen() asked for, when the kernel saw the call.
    backlog_requested: Option<i32>,
}

type Endpoint = (std::net::IpAddr, u16);

/// Key of a pending count: listener (or none, for socket-less resets),
/// what, seen by which hook, and for socket-less resets the peer address.
type PendKey = (
    Option<ListenerKey>,
    Kind,
    Source,
    Option<Endpoint>,
    Option<u32>,
    Option<u32>,
);

/// A pending count with the latest listener state and peer.
struct Slot {
    info: ListenerInfo,
    count: u64,
    peer: Option<Endpoint>,
    inode: Option<u32>,
    attrs: Vec<Fact>,
    /// Timestamp of the latest kernel event counted (0: none).
    last_ts: u64,
    /// `take`s this slot was held back for.
    held: u8,
}

/// One line to add to the pending counts.
struct Line {
    key: Option<ListenerKey>,
    kind: Kind,
    source: Source,
    info: ListenerInfo,
    n: u64,
    peer: Option<Endpoint>,
    /// Lines with the same group (and everything else) add up.
    group: Option<Endpoint>,
    netns: Option<u32>,
    pid: Option<u32>,
    inode: Option<u32>,
    attrs: Vec<Fact>,
    ts: u64,
}

/// What is kept per network namespace between snapshots.
#[derive(Debug, Default)]
struct NsState {
    last: Option<NetnsState>,
    /// When `last` was read (end of its round in that namespace).
    last_end_ns: u64,
    /// TCPReqQFullDrop not yet matched to a listener's sk_drops.
    reqq_budget: u64,
    /// TCPDeferAcceptDrop likewise: bare ACKs a TCP_DEFER_ACCEPT listener
    /// ignores by design (+1 sk_drops each), not lost connections.
    defer_budget: u64,
    /// CLOSE_WAIT sockets by cookie: (first seen, ns; local port; inode;
    /// the connection).
    close_wait: HashMap<u64, (u64, u16, u32, PeerKey)>,
    /// CLOSE_WAIT groups: count last reported, and (time, count) history
    /// over the last minute for the growth rate.
    cw_groups: HashMap<CwGroup, CwHistory>,
}

/// CLOSE_WAIT sockets are grouped by the listener they were accepted from
/// (same local port), or else by local port alone.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
enum CwGroup {
    Listener(ListenerKey),
    Port(u16),
}

#[derive(Debug, Default)]
struct CwHistory {
    reported: u32,
    history: VecDeque<(u64, u32)>,
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
    ns: HashMap<u32, NsState>,
    /// Who accepted a connection, from the kernel's record of accepts:
    /// names the owner of CLOSE_WAIT sockets no listener explains any more.
    accepter: Option<Accepter>,
}

/// Looks up the process that accepted a connection (tgid).
pub type Accepter = Box<dyn Fn(&PeerKey) -> Option<u32> + Send>;

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

    /// Adds a count for a listener (or, for socket-less resets, a local
    /// endpoint grouped by peer address).
    fn add(
        &mut self,
        key: Option<ListenerKey>,
        kind: Kind,
        source: Source,
        info: ListenerInfo,
        n: u64,
        peer: Option<Endpoint>,
    ) {
        let group = if key.is_none() {
            peer.map(|(a, _)| (a, 0))
        } else {
            None
        };
        self.add_line(Line {
            netns: key.map(|k| k.netns),
            key,
            kind,
            source,
            info,
            n,
            peer,
            group,
            pid: None,
            inode: None,
            attrs: Vec::new(),
            ts: 0,
        });
    }

    fn add_line(&mut self, l: Line) {
        let gauge = l.kind == Kind::CloseWait;
        let slot = self
            .pending
            .entry((l.key, l.kind, l.source, l.group, l.pid, l.netns))
            .or_insert(Slot {
                info: l.info.clone(),
                count: 0,
                peer: l.peer,
                inode: l.inode,
                attrs: Vec::new(),
                last_ts: 0,
                held: 0,
            });
        slot.last_ts = slot.last_ts.max(l.ts);
        slot.info = l.info;
        // A gauge (CLOSE_WAIT: how many now) takes the latest reading; the
        // rest are counts over the interval.
        if gauge {
            slot.count = l.n;
        } else {
            slot.count += l.n;
        }
        if l.peer.is_some() {
            slot.peer = l.peer;
        }
        if l.inode.is_some() {
            slot.inode = l.inode;
        }
        slot.attrs = l.attrs;
    }

    /// accept() failures of process `pid` counted by the kernel since the
    /// last call, with the listener whose queue backs up meanwhile.
    pub fn on_accept_errors(
        &mut self,
        pid: u32,
        errno: u32,
        n: u64,
        listener: Option<(ListenerKey, ListenerInfo)>,
        attrs: Vec<Fact>,
    ) {
        let (key, info) = match listener {
            Some((k, i)) => (Some(k), i),
            None => (None, ListenerInfo::unknown()),
        };
        self.add_line(Line {
            netns: key.map(|k| k.netns),
            key,
            kind: Kind::AcceptError {
                error: model::errno_name(errno),
            },
            source: Source::Tracepoint,
            info,
            n,
            peer: None,
            group: None,
            pid: Some(pid),
            inode: None,
            attrs,
            ts: 0,
        });
    }

    /// Accepts on a listener port over an interval that waited long.
    pub fn on_accept_latency(&mut self, s: &crate::source::latency::Summary) {
        let found = self
            .listeners
            .iter()
            .filter(|(k, st)| {
                k.netns == s.netns && st.info.as_ref().is_some_and(|i| i.port == s.port)
            })
            .filter_map(|(k, st)| Some((*k, st.info.clone()?)))
            .min_by_key(|(k, _)| k.inode);
        let Some((key, info)) = found else { return };
        self.add_line(Line {
            key: Some(key),
            kind: Kind::AcceptLatency,
            source: Source::Tracepoint,
            info,
            n: s.count,
            peer: None,
            group: None,
            netns: Some(s.netns),
            pid: None,
            inode: None,
            attrs: vec![Fact::AcceptLatency {
                p50_ns: s.p50_ns,
                p99_ns: s.p99_ns,
                max_ns: s.max_ns,
            }],
            ts: 0,
        });
    }

    /// The listener among `inodes` (a process's sockets) with the longest
    /// accept queue.
    pub fn busiest_listener(
        &self,
        inodes: &std::collections::HashSet<u32>,
    ) -> Option<(ListenerKey, ListenerInfo)> {
        self.listeners
            .iter()
            .filter(|(k, _)| inodes.contains(&k.inode))
            .filter_map(|(k, st)| Some((*k, st.info.clone()?)))
            .max_by_key(|(k, i)| (i.queue_len, std::cmp::Reverse(k.inode)))
    }

    /// SO_REUSEPORT groups (several listeners on one netns, address and
    /// port), each as its members' socket inodes.
    pub fn reuseport_groups(&self) -> Vec<Vec<u32>> {
        let mut groups: HashMap<(u32, std::net::IpAddr, u16), Vec<u32>> = HashMap::new();
        for (k, st) in &self.listeners {
            if let Some(i) = &st.info {
                groups
                    .entry((k.netns, i.addr, i.port))
                    .or_default()
                    .push(k.inode);
            }
        }
        groups.into_values().filter(|g| g.len() > 1).collect()
    }

    /// SO_REUSEPORT groups (several listeners on one netns, address and
    /// port): each member's line also carries the group's size and its
    /// total of that kind over the interval.
    fn group_totals(&self, lines: &mut [Pending]) {
        type G = (u32, std::net::IpAddr, u16);
        let mut size: HashMap<G, u32> = HashMap::new();
        for (k, st) in &self.listeners {
            if let Some(i) = &st.info {
                *size.entry((k.netns, i.addr, i.port)).or_default() += 1;
            }
        }
        let group = |p: &Pending| p.key.map(|k| (k.netns, p.info.addr, p.info.port));
        let mut totals: HashMap<(G, &'static str, Option<Stage>), u64> = HashMap::new();
        for p in lines.iter() {
            if let Some(g) = group(p) {
                *totals
                    .entry((g, p.kind.event_name(), p.kind.stage()))
                    .or_default() += p.count;
            }
        }
        for p in lines.iter_mut() {
            let Some(g) = group(p) else { continue };
            let n = size.get(&g).copied().unwrap_or(0);
            if n > 1 && p.kind != Kind::CloseWait {
                let t = totals[&(g, p.kind.event_name(), p.kind.stage())];
                p.attrs.push(Fact::Reuseport {
                    group_size: n,
                    group_count: t,
                });
            }
        }
    }

    /// A CLOSE_WAIT group's listener (with what is known of it), or its
    /// bare local port.
    fn cw_target(&self, g: CwGroup) -> (Option<ListenerKey>, ListenerInfo) {
        match g {
            CwGroup::Listener(k) => (
                Some(k),
                self.listeners
                    .get(&k)
                    .and_then(|s| s.info.clone())
                    .unwrap_or_else(ListenerInfo::unknown),
            ),
            CwGroup::Port(port) => (
                None,
                ListenerInfo {
                    port,
                    ..ListenerInfo::unknown()
                },
            ),
        }
    }

    /// CLOSE_WAIT sockets now, per group: the namespace, the listener they
    /// came from (if one is on their port) and that listener (or port), and
    /// how many. Gone namespaces and empty groups are not in it.
    pub fn close_wait_now(&self) -> Vec<(u32, Option<ListenerKey>, ListenerInfo, u32)> {
        let mut out = Vec::new();
        for (&netns, ns) in &self.ns {
            for (g, h) in &ns.cw_groups {
                if h.reported == 0 {
                    continue;
                }
                let (key, info) = self.cw_target(*g);
                out.push((netns, key, info, h.reported));
            }
        }
        out
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

    /// Records that a kernel event added `weight` to a listener's
    /// `sk_drops`, for sock_diag to subtract; nothing when sock_diag does no
    /// counting (both stages hooked), so nothing piles up.
    fn explain(&mut self, key: ListenerKey, (lo, hi): (u64, u64), weight: u64) {
        let st = self.listeners.entry(key).or_default();
        if !(self.hooked.syn && self.hooked.ack) {
            st.explained.push_back(Explained { lo, hi, weight });
        }
    }

    /// One kernel event, as the ring buffer delivers it.
    pub fn on_event(&mut self, ev: &KernelEvent) {
        self.on_events(ev, 1, (ev.ts_ns, ev.ts_ns));
    }

    /// `n` events like `ev` (the latest of them), counted by the kernel,
    /// that happened within `window` (lo..=hi, CLOCK_MONOTONIC ns).
    pub fn on_events(&mut self, ev: &KernelEvent, n: u64, window: (u64, u64)) {
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
                self.explain(key, window, SK_DROPS_PER_ACK_DROP * n);
                self.listeners.entry(key).or_default().info = Some(info.clone());
                self.add(Some(key), kind, ev.source, info, n, None);
            }
            EventKind::SynDrop => {
                let Some((key, info)) = ev.listener.clone() else {
                    return;
                };
                self.explain(key, window, n);
                let kind = classify_syn_drop(&info, ev.aux, ev.state as u8, ev.detail);
                self.add(Some(key), kind, ev.source, info, n, None);
            }
            EventKind::SyncookieSent => {
                let Some((key, info)) = ev.listener.clone() else {
                    return;
                };
                self.add(Some(key), Kind::SyncookiesSent, ev.source, info, n, None);
            }
            EventKind::ResetReceived => {
                let pid = (ev.aux != 0).then_some(ev.aux);
                let info = ListenerInfo {
                    addr: ev.local.0,
                    port: ev.local.1,
                    queue_len: 0,
                    queue_limit: 0,
                };
                self.add_line(Line {
                    key: None,
                    kind: Kind::ResetReceived {
                        state: model::state_name(ev.state),
                    },
                    source: ev.source,
                    info,
                    n,
                    peer: Some(ev.peer),
                    // A client's resets add up per server; a server's
                    // per client address.
                    group: Some(ev.peer),
                    netns: Some(ev.netns),
                    // A connection this host accepted: the kernel knows who.
                    pid,
                    inode: (pid.is_none() && ev.inode != 0).then_some(ev.inode),
                    attrs: Vec::new(),
                    ts: ev.ts_ns,
                });
            }
            // Owners are the resolver's business; a closed listener is
            // forgotten at the next report instead of after a few polls.
            EventKind::ListenerUp => {
                if let Some(b) = ev.backlog_requested {
                    let key = ListenerKey {
                        netns: ev.netns,
                        inode: ev.inode,
                    };
                    self.listeners.entry(key).or_default().backlog_requested = Some(b);
                }
            }
            EventKind::ListenerDown => {
                if let Some(st) = self.listeners.get_mut(&ListenerKey {
                    netns: ev.netns,
                    inode: ev.inode,
                }) {
                    st.unseen = FORGET_AFTER;
                    st.present = false;
                }
            }
            EventKind::ConnectError => {
                // The destination is the line's server.
                let info = ListenerInfo {
                    addr: ev.peer.0,
                    port: ev.peer.1,
                    queue_len: 0,
                    queue_limit: 0,
                };
                let pid = (ev.aux != 0).then_some(ev.aux);
                self.add_line(Line {
                    key: None,
                    kind: Kind::ConnectError {
                        error: model::errno_name(ev.detail),
                    },
                    source: ev.source,
                    info,
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
            EventKind::SynackRetransmit => {
                let Some((key, info)) = ev.listener.clone() else {
                    return;
                };
                self.add(Some(key), Kind::SynackRetransmit, ev.source, info, n, None);
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
                    n,
                    peer,
                );
            }
        }
    }

    pub fn on_snapshot(&mut self, snap: &NetnsSnapshot) {
        let (reqq, cookies, deferred) = self.ns_counters(snap);
        if let Some(others) = &snap.others {
            self.syn_queues(snap, others);
        }
        let sysctls = snap
            .state
            .as_ref()
            .map(|s| s.sysctls.clone())
            .unwrap_or_default();
        let ns = self.ns.entry(snap.netns).or_default();
        ns.reqq_budget += reqq;
        ns.defer_budget += deferred;
        for s in &snap.listeners {
            if self.port.is_some_and(|p| p != s.lport) {
                continue;
            }
            let Some(drops) = s.drops else { continue };
            let key = ListenerKey {
                netns: snap.netns,
                inode: s.inode,
            };
            let info = ListenerInfo::of(s);
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
                    st.explained.retain(|e| e.hi >= snap.start_ns);
                    continue;
                }
                // New since the agent started: every drop is news.
                None => 0,
            };
            if st
                .explained
                .iter()
                .any(|e| e.overlaps(snap.start_ns, snap.end_ns))
            {
                st.prev_full |= full_now;
                continue; // settle at the next snapshot
            }
            let explained: u64 = st
                .explained
                .iter()
                .filter(|e| e.hi < snap.start_ns)
                .map(|e| e.weight)
                .sum();
            st.explained.retain(|e| e.hi >= snap.start_ns);
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
            let syn_queue = st.syn_queue;
            if left > 0 && stage == Stage::Syn {
                let ns = self.ns.entry(snap.netns).or_default();
                let d = left.min(ns.defer_budget);
                ns.defer_budget -= d;
                left -= d;
            }
            if left > 0 && stage == Stage::Syn {
                // The kernel checks the SYN queue first: as many drops as
                // the namespace's TCPReqQFullDrop moved are that.
                let budget = &mut self.ns.entry(snap.netns).or_default().reqq_budget;
                let q = left.min(*budget);
                *budget -= q;
                if q > 0 {
                    let kind = Kind::SynQueueDrop {
                        reason: "syn_queue_full",
                    };
                    self.add(Some(key), kind, Source::SockDiag, info.clone(), q, None);
                }
                left -= q;
            }
            if left > 0 {
                let msb = sysctls.max_syn_backlog.unwrap_or(0);
                let kind = if full_now || was_full {
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
                };
                self.add(Some(key), kind, Source::SockDiag, info, left, None);
            }
        }
        // Counters are read after the dump: what they moved for a drop the
        // dump did not see yet waits one round; older budget belongs to no
        // listener we track.
        let ns = self.ns.entry(snap.netns).or_default();
        ns.reqq_budget = ns.reqq_budget.min(reqq);
        ns.defer_budget = ns.defer_budget.min(deferred);
        if cookies > 0 && !self.hooked.syn {
            self.attribute_cookies(snap, cookies);
        }
        if let Some(others) = &snap.others {
            self.close_waits(snap, others);
        }
    }

    /// After a full round: forgets namespaces the round did not see.
    /// Forgets namespaces that are gone (`alive`: every one still there,
    /// read this round or not).
    pub fn end_round(&mut self, alive: &[u32]) {
        self.ns.retain(|n, _| alive.contains(n));
    }

    /// Stores the namespace's reading; returns how much TCPReqQFullDrop,
    /// TCPReqQFullDoCookies and TCPDeferAcceptDrop moved since the
    /// previous one (nothing on the first reading).
    fn ns_counters(&mut self, snap: &NetnsSnapshot) -> (u64, u64, u64) {
        let Some(now) = &snap.state else {
            return (0, 0, 0);
        };
        let ns = self.ns.entry(snap.netns).or_default();
        let d = |name: &str| match &ns.last {
            Some(prev) => now.counter(name).saturating_sub(prev.counter(name)),
            None => 0,
        };
        let out = (
            d("TcpExt.TCPReqQFullDrop"),
            d("TcpExt.TCPReqQFullDoCookies"),
            d("TcpExt.TCPDeferAcceptDrop"),
        );
        ns.last = Some(now.clone());
        ns.last_end_ns = snap.end_ns;
        out
    }

    /// SYN_RECV requests per listener (matched by local port).
    fn syn_queues(&mut self, snap: &NetnsSnapshot, others: &[DiagSock]) {
        let mut per_port: HashMap<u16, u32> = HashMap::new();
        for o in others
            .iter()
            .filter(|o| o.state == sockdiag::STATE_SYN_RECV)
        {
            *per_port.entry(o.lport).or_default() += 1;
        }
        for l in &snap.listeners {
            let key = ListenerKey {
                netns: snap.netns,
                inode: l.inode,
            };
            if let Some(st) = self.listeners.get_mut(&key) {
                st.syn_queue = per_port.get(&l.lport).copied().unwrap_or(0);
            }
        }
    }

    /// Syncookies are counted per namespace only: they go to the listener
    /// with the fullest SYN queue (the only one, usually).
    fn attribute_cookies(&mut self, snap: &NetnsSnapshot, n: u64) {
        let best = snap
            .listeners
            .iter()
            .filter(|l| self.port.is_none_or(|p| p == l.lport))
            .map(|l| {
                let key = ListenerKey {
                    netns: snap.netns,
                    inode: l.inode,
                };
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

    /// CLOSE_WAIT sockets per listener (or local port): a line whenever
    /// the count changes, with the oldest one's age and the growth rate.
    fn close_waits(&mut self, snap: &NetnsSnapshot, others: &[DiagSock]) {
        let now = snap.end_ns;
        let ns = self.ns.entry(snap.netns).or_default();
        let mut seen = HashMap::new();
        for o in others
            .iter()
            .filter(|o| o.state == sockdiag::STATE_CLOSE_WAIT)
        {
            let first = ns.close_wait.get(&o.cookie).map_or(now, |e| e.0);
            seen.insert(o.cookie, (first, o.lport, o.inode, o.peer_key(snap.netns)));
        }
        ns.close_wait = seen;
        // Group: the listener on the same port, else the port.
        let mut groups: HashMap<CwGroup, (u32, u64, u32, PeerKey)> = HashMap::new();
        for &(first, lport, inode, conn) in ns.close_wait.values() {
            let listener = snap
                .listeners
                .iter()
                .filter(|l| l.lport == lport)
                .map(|l| ListenerKey {
                    netns: snap.netns,
                    inode: l.inode,
                })
                .min();
            let g = match listener {
                Some(k) => CwGroup::Listener(k),
                None => CwGroup::Port(lport),
            };
            let e = groups
                .entry(g)
                .or_insert((0, u64::MAX, 0, PeerKey::default()));
            e.0 += 1;
            // Ties (seen in the same reading): the lower inode, the older.
            if (first, inode) < (e.1, e.2) {
                e.1 = first;
                e.2 = inode;
                e.3 = conn;
            }
        }
        let mut lines = Vec::new();
        let keys: Vec<CwGroup> = ns
            .cw_groups
            .keys()
            .copied()
            .chain(groups.keys().copied())
            .collect();
        for g in keys {
            let (count, oldest, inode, conn) =
                groups
                    .get(&g)
                    .copied()
                    .unwrap_or((0, now, 0, PeerKey::default()));
            let h = ns.cw_groups.entry(g).or_default();
            h.history.push_back((now, count));
            while h.history.len() > 1 && now - h.history[0].0 > 60_000_000_000 {
                h.history.pop_front();
            }
            if count == h.reported {
                continue;
            }
            h.reported = count;
            let (t0, c0) = h.history[0];
            let span = (now - t0) as f64 / 60e9;
            let growth = if span > 0.0 {
                (count as f64 - c0 as f64) / span
            } else {
                0.0
            };
            lines.push((g, count, (now - oldest) as f64 / 1e9, growth, inode, conn));
        }
        ns.cw_groups.retain(|_, h| h.reported > 0);
        for (g, count, age, growth, inode, conn) in lines {
            let (key, info) = self.cw_target(g);
            // No listener to name the owner: the process that accepted the
            // oldest one, as the kernel recorded it, else its holder.
            let pid = match (key, &self.accepter) {
                (None, Some(by)) if count > 0 => by(&conn),
                _ => None,
            };
            let inode = (pid.is_none() && inode != 0).then_some(inode);
            // An unknown listener has port 0: never the `--port`.
            if self.port.is_some_and(|p| info.port != p) {
                continue;
            }
            self.add_line(Line {
                key,
                kind: Kind::CloseWait,
                source: Source::SockDiag,
                info,
                n: count as u64,
                peer: None,
                group: None,
                netns: Some(snap.netns),
                pid,
                inode,
                attrs: vec![Fact::CloseWait {
                    oldest_seconds: age,
                    growth_per_minute: growth,
                }],
                ts: 0,
            });
        }
    }

    /// Everything counted since the last call, and forgets listeners that
    /// closed.
    pub fn take(&mut self) -> Vec<Pending> {
        // Port exhaustion is explained by the TIME_WAIT count: wait for a
        // reading of the namespace taken after the failure.
        let (keep, out): (BTreeMap<_, _>, BTreeMap<_, _>) = std::mem::take(&mut self.pending)
            .into_iter()
            .partition(|((_, kind, _, _, _, netns), s)| {
                kind.error() == Some("EADDRNOTAVAIL")
                    && s.held < 3
                    && netns
                        .and_then(|n| self.ns.get(&n))
                        .is_none_or(|ns| ns.last.is_none() || ns.last_end_ns < s.last_ts)
            });
        self.pending = keep;
        for s in self.pending.values_mut() {
            s.held += 1;
        }
        let out: Vec<Pending> = out
            .into_iter()
            .map(|((key, kind, source, _, pid, netns), s)| {
                let mut attrs = s.attrs;
                let requested = key
                    .and_then(|k| self.listeners.get(&k))
                    .and_then(|st| st.backlog_requested);
                if let Some(b) = requested {
                    attrs.push(Fact::BacklogRequested(b));
                }
                if kind.error() == Some("EADDRNOTAVAIL") {
                    if let Some(st) = netns.and_then(|n| self.ns.get(&n)?.last.as_ref()) {
                        port_headroom(st, &mut attrs);
                    }
                }
                Pending {
                    kind,
                    source,
                    key,
                    netns,
                    info: s.info,
                    count: s.count,
                    peer: s.peer,
                    pid,
                    inode: s.inode,
                    attrs,
                }
            })
            .collect();
        let mut out = out;
        self.group_totals(&mut out);
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

    /// Inodes of sockets (listeners, and others a line is about) with
    /// counts waiting for the next `take`: their owners are wanted.
    pub fn pending_inodes(&self) -> impl Iterator<Item = u32> + '_ {
        self.pending
            .iter()
            // A line's owner is its listener's; only a line without one
            // (nor a process the kernel named) is owned by its socket's holder.
            .filter_map(|((k, ..), s)| k.map(|k| k.inode).or(s.inode))
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
    use crate::model::report::Field;
    use crate::source::decode::{decode_event, tests::raw};

    const NS: u32 = 4026531840;

    fn sock(inode: u32, drops: u32, rq: u32, wq: u32) -> DiagSock {
        DiagSock {
            family: 2,
            state: 10,
            local: "127.0.0.1".parse().unwrap(),
            lport: 8080,
            rport: 0,
            peer: [0; 16],
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
            others: None,
            state: None,
            start_ns: start,
            end_ns: start + 10,
            baseline,
            storm_before: Vec::new(),
            storm_after: Vec::new(),
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

    fn info(q: u32, lim: u32) -> ListenerInfo {
        ListenerInfo {
            addr: "127.0.0.1".parse().unwrap(),
            port: 8080,
            queue_len: q,
            queue_limit: lim,
        }
    }

    #[test]
    fn syn_drops_are_classified_in_the_kernels_order() {
        let syn_q = |r| Kind::SynQueueDrop { reason: r };
        // SYN queue over the limit, cookies off: checked before the accept queue.
        assert_eq!(
            classify_syn_drop(&info(3, 2), 3, 0, 128),
            syn_q("syn_queue_full")
        );
        // With cookies, the same SYN can only be lost to a full accept queue.
        assert_eq!(
            classify_syn_drop(&info(3, 2), 3, 1, 128),
            Kind::ListenOverflow(Stage::Syn, Next::Unknown)
        );
        // 8 - 7 < 8 >> 2: the 3/4 rule.
        assert_eq!(
            classify_syn_drop(&info(0, 100), 7, 0, 8),
            syn_q("max_syn_backlog")
        );
        assert_eq!(
            classify_syn_drop(&info(0, 100), 6, 0, 8),
            Kind::ListenDrop(Stage::Syn)
        );
        assert_eq!(
            classify_syn_drop(&info(0, 100), 7, 1, 8),
            Kind::ListenDrop(Stage::Syn)
        );
    }

    fn state(reqq: u64, cookies: u64, deferred: u64, syncookies: u8) -> NetnsState {
        let mut st = NetnsState::default();
        st.counters.insert("TcpExt.TCPReqQFullDrop".into(), reqq);
        st.counters
            .insert("TcpExt.TCPReqQFullDoCookies".into(), cookies);
        st.counters
            .insert("TcpExt.TCPDeferAcceptDrop".into(), deferred);
        st.sysctls.syncookies = Some(syncookies);
        st.sysctls.max_syn_backlog = Some(8);
        st
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
        let c: Vec<_> = a.take().iter().map(|p| (p.kind.clone(), p.count)).collect();
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
    fn reuseport_members_carry_the_group_total() {
        let mut a = Aggregator::default();
        a.on_snapshot(&snap(vec![sock(1, 0, 0, 1), sock(2, 0, 0, 1)], 100, true));
        a.on_snapshot(&snap(vec![sock(1, 3, 2, 1), sock(2, 5, 2, 1)], 200, false));
        let p = a.take();
        assert_eq!(p.len(), 2);
        for l in &p {
            assert!(
                l.attrs.contains(&Fact::Reuseport {
                    group_size: 2,
                    group_count: 8
                }),
                "{l:?}"
            );
        }
        let mut counts: Vec<u64> = p.iter().map(|l| l.count).collect();
        counts.sort();
        assert_eq!(counts, vec![3, 5], "each member on its own");
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

    #[test]
    fn close_wait_is_reported_when_it_changes_with_its_listener() {
        let mut a = Aggregator::default();
        let cw = |cookie| {
            let mut s = sock(50 + cookie as u32, 0, 0, 0);
            s.state = sockdiag::STATE_CLOSE_WAIT;
            s.cookie = cookie;
            s
        };
        let mut s0 = snap(vec![sock(1, 0, 0, 16)], 1_000_000_000, true);
        s0.others = Some(vec![cw(1), cw(2)]);
        a.on_snapshot(&s0);
        let p = a.take();
        assert_eq!((&p[0].kind, p[0].count), (&Kind::CloseWait, 2));
        assert_eq!(p[0].key.unwrap().inode, 1, "the listener on the same port");
        // Unchanged: no line. One more 30 s later: a line, growth 2/min.
        let mut s1 = snap(vec![sock(1, 0, 0, 16)], 2_000_000_000, false);
        s1.others = Some(vec![cw(1), cw(2)]);
        a.on_snapshot(&s1);
        assert!(a.take().is_empty());
        let mut s2 = snap(vec![sock(1, 0, 0, 16)], 31_000_000_000, false);
        s2.others = Some(vec![cw(1), cw(2), cw(3)]);
        a.on_snapshot(&s2);
        let p = a.take();
        assert_eq!(p[0].count, 3);
        let fields: Vec<_> = p[0].attrs.iter().flat_map(Fact::fields).collect();
        let attr = |k| fields.iter().find(|(n, _)| *n == k).unwrap().1.clone();
        assert_eq!(attr("close_wait.oldest_seconds"), Field::Float(30.0));
        assert_eq!(attr("close_wait.growth_per_minute"), Field::Float(2.0));
        assert_eq!(a.close_wait_now()[0].3, 3);
        // Two readings in one interval: the line has the latest (a gauge),
        // not their sum; down to none: a 0 line, and no group left.
        let mut s3 = snap(vec![sock(1, 0, 0, 16)], 32_000_000_000, false);
        s3.others = Some(vec![cw(1), cw(2)]);
        a.on_snapshot(&s3);
        let mut s4 = snap(vec![sock(1, 0, 0, 16)], 33_000_000_000, false);
        s4.others = Some(vec![]);
        a.on_snapshot(&s4);
        let p = a.take();
        assert_eq!((p.len(), p[0].count), (1, 0));
        assert!(a.close_wait_now().is_empty());
    }

    #[test]
    fn close_wait_without_a_listener_is_owned_by_who_accepted_it() {
        let mut a = Aggregator::default();
        let asked = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let log = asked.clone();
        a.set_accepter(Box::new(move |k: &PeerKey| {
            log.lock().unwrap().push(*k);
            (k.rport == 40001).then_some(4242)
        }));
        let cw = |cookie: u64, rport| {
            let mut s = sock(50 + cookie as u32, 0, 0, 0);
            (s.state, s.cookie, s.lport, s.rport) =
                (sockdiag::STATE_CLOSE_WAIT, cookie, 9000, rport);
            s.peer[..4].copy_from_slice(&[10, 0, 0, 9]);
            s
        };
        // On the listener's port: the listener's owner, nothing asked.
        let mut s0 = snap(vec![sock(1, 0, 0, 16)], 1_000_000_000, true);
        s0.others = Some(vec![{
            let mut c = cw(9, 40001);
            c.lport = 8080;
            c
        }]);
        a.on_snapshot(&s0);
        let p = a.take();
        assert_eq!((p[0].key.map(|k| k.inode), p[0].pid), (Some(1), None));
        assert!(asked.lock().unwrap().is_empty());
        // No listener on 9000: the oldest socket's accepter, no inode.
        let mut s1 = snap(vec![sock(1, 0, 0, 16)], 2_000_000_000, false);
        s1.others = Some(vec![cw(1, 40001)]);
        a.on_snapshot(&s1);
        let mut s2 = snap(vec![sock(1, 0, 0, 16)], 3_000_000_000, false);
        s2.others = Some(vec![cw(1, 40001), cw(2, 40002), cw(3, 40003)]);
        a.on_snapshot(&s2);
        let p: Vec<_> = a
            .take()
            .into_iter()
            .filter(|p| p.info.port == 9000)
            .collect();
        assert_eq!(
            (p.len(), p[0].count, p[0].pid, p[0].inode),
            (1, 3, Some(4242), None)
        );
        let k = asked.lock().unwrap()[0];
        assert_eq!((k.netns, k.lport, k.rport, k.family), (NS, 9000, 40001, 2));
        assert_eq!(k.raddr[..4], [10, 0, 0, 9]);
        // The kernel does not know (evicted): the socket's holder.
        let mut s3 = snap(vec![sock(1, 0, 0, 16)], 4_000_000_000, false);
        s3.others = Some(vec![cw(2, 40002), cw(3, 40003)]);
        a.on_snapshot(&s3);
        let p: Vec<_> = a
            .take()
            .into_iter()
            .filter(|p| p.info.port == 9000)
            .collect();
        assert_eq!((p[0].count, p[0].pid, p[0].inode), (2, None, Some(52)));
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
    fn port_exhaustion_waits_for_a_fresh_reading_of_its_namespace() {
        let mut a = Aggregator::default();
        let mut s0 = snap(vec![], 100, true);
        let mut st = state(0, 0, 0, 1);
        st.time_wait = Some(0);
        s0.state = Some(st.clone());
        a.on_snapshot(&s0);
        let mut e = raw(EventKind::ConnectError);
        e.ts_ns = 500;
        e.detail = libc::EADDRNOTAVAIL as u32;
        e.aux = 42;
        e.netns = NS;
        a.on_event(&decode_event(&e).unwrap());
        assert!(
            a.take().is_empty(),
            "held until the namespace is read again"
        );
        st.time_wait = Some(4);
        st.sysctls.port_range = Some((40000, 40003));
        let mut s1 = snap(vec![], 1000, false);
        s1.state = Some(st);
        a.on_snapshot(&s1);
        let p = a.take();
        assert_eq!((p[0].count, p[0].pid), (1, Some(42)));
        assert!(p[0].attrs.contains(&Fact::TimeWait(4)));
        let fields: Vec<_> = p[0].attrs.iter().flat_map(Fact::fields).collect();
        assert!(fields.contains(&("port_range.size", Field::Uint(4))));
    }
}

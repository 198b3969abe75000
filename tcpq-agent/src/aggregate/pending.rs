//! The counts waiting for the next report: one slot per listener (or
//! socket-less endpoint), kind, source, peer group, process and namespace.
//! Lines with the same key add up (a gauge takes the latest reading); port
//! exhaustion is held back until its namespace has been read again.

use std::collections::BTreeMap;

use crate::{
    aggregate::Aggregator,
    model::{Fact, Kind, ListenerInfo, ListenerKey, Pending, Source},
    source::netstat::NetnsState,
};

pub(super) type Endpoint = (std::net::IpAddr, u16);

/// Key of a pending count: listener (or none, for socket-less resets),
/// what, seen by which hook, the peer group, the process and the
/// namespace.
pub(super) type PendKey = (
    Option<ListenerKey>,
    Kind,
    Source,
    Option<Endpoint>,
    Option<u32>,
    Option<u32>,
);

/// `take`s a line of port exhaustion waits at most for a fresh reading of
/// its namespace.
const MAX_HELD: u8 = 3;

/// A pending count with the latest listener state and peer.
pub(super) struct Slot {
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

impl Slot {
    /// The report line of this slot.
    pub(super) fn into_pending(self, (key, kind, source, _, pid, netns): PendKey) -> Pending {
        Pending {
            kind,
            source,
            key,
            netns,
            info: self.info,
            count: self.count,
            peer: self.peer,
            pid,
            inode: self.inode,
            attrs: self.attrs,
        }
    }
}

/// One line to add to the pending counts.
pub(super) struct Line {
    pub key: Option<ListenerKey>,
    pub kind: Kind,
    pub source: Source,
    pub info: ListenerInfo,
    pub n: u64,
    pub peer: Option<Endpoint>,
    /// Lines with the same group (and everything else) add up.
    pub group: Option<Endpoint>,
    pub netns: Option<u32>,
    pub pid: Option<u32>,
    pub inode: Option<u32>,
    pub attrs: Vec<Fact>,
    pub ts: u64,
}

impl Line {
    /// A count of a listener's (or, for socket-less resets, of a local
    /// endpoint grouped by peer address), with nothing else known.
    pub fn new(
        key: Option<ListenerKey>,
        kind: Kind,
        source: Source,
        info: ListenerInfo,
        n: u64,
        peer: Option<Endpoint>,
    ) -> Line {
        let group = if key.is_none() {
            peer.map(|(a, _)| (a, 0))
        } else {
            None
        };
        Line {
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
        }
    }
}

/// The pending counts.
#[derive(Default)]
pub(super) struct Lines {
    slots: BTreeMap<PendKey, Slot>,
}

impl Lines {
    pub fn add(&mut self, l: Line) {
        let gauge = l.kind == Kind::CloseWait;
        let slot = self
            .slots
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

    /// Takes every slot but port exhaustion whose namespace has not been
    /// read since (`fresh(netns, last event)` is false), for a few `take`s
    /// at most.
    pub fn take_ready(
        &mut self,
        fresh: impl Fn(Option<u32>, u64) -> bool,
    ) -> BTreeMap<PendKey, Slot> {
        let (keep, out): (BTreeMap<_, _>, BTreeMap<_, _>) = std::mem::take(&mut self.slots)
            .into_iter()
            .partition(|((_, kind, _, _, _, netns), s)| {
                kind.error() == Some("EADDRNOTAVAIL")
                    && s.held < MAX_HELD
                    && !fresh(*netns, s.last_ts)
            });
        self.slots = keep;
        for s in self.slots.values_mut() {
            s.held += 1;
        }
        out
    }

    pub fn is_empty(&self) -> bool {
        self.slots.is_empty()
    }

    /// Inodes whose owners the waiting lines want.
    pub fn inodes(&self) -> impl Iterator<Item = u32> + '_ {
        self.slots
            .iter()
            // A line's owner is its listener's; only a line without one
            // (nor a process the kernel named) is owned by its socket's holder.
            .filter_map(|((k, ..), s)| k.map(|k| k.inode).or(s.inode))
    }
}

/// What is left of the namespace's local port range: its size and the
/// sockets in TIME_WAIT holding ports of it.
pub(super) fn port_headroom(st: &NetnsState, attrs: &mut Vec<Fact>) {
    if let Some(tw) = st.time_wait {
        attrs.push(Fact::TimeWait(tw));
    }
    if let Some((lo, hi)) = st.sysctls.port_range {
        attrs.push(Fact::PortRange { lo, hi });
    }
}

impl Aggregator {
    /// Adds a count for a listener (or, for socket-less resets, a local
    /// endpoint grouped by peer address).
    pub(super) fn add(
        &mut self,
        key: Option<ListenerKey>,
        kind: Kind,
        source: Source,
        info: ListenerInfo,
        n: u64,
        peer: Option<Endpoint>,
    ) {
        self.pending
            .add(Line::new(key, kind, source, info, n, peer));
    }

    pub(super) fn add_line(&mut self, l: Line) {
        self.pending.add(l);
    }
}

#[cfg(test)]
mod tests {
    use super::super::testutil::*;
    use crate::{
        aggregate::Aggregator,
        model::{report::Field, Fact},
        source::decode::{decode_event, tests::raw},
    };
    use tcpq_common::EventKind;

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

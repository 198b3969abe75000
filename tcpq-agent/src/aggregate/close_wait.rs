//! CLOSE_WAIT: connections the peer closed and the application has not.
//! Per namespace, sockets are remembered by cookie (to know the oldest one's
//! age) and grouped by the listener they were accepted from (same local
//! port), or else by local port alone; a group's line is written whenever
//! its count changes, with the growth rate over the last minute.

use std::collections::{HashMap, VecDeque};

use tcpq_common::accepted::PeerKey;

use crate::{
    aggregate::{pending::Line, Aggregator, NetnsSnapshot},
    model::{Fact, Kind, ListenerInfo, ListenerKey, Source},
    source::sockdiag::{self, DiagSock},
};

/// The window of the growth rate.
const GROWTH_WINDOW_NS: u64 = 60_000_000_000;

/// CLOSE_WAIT sockets are grouped by the listener they were accepted from
/// (same local port), or else by local port alone.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub(super) enum CwGroup {
    Listener(ListenerKey),
    Port(u16),
}

/// One CLOSE_WAIT socket: when it was first seen (ns), its local port, its
/// inode and the connection.
#[derive(Debug, Clone, Copy)]
struct Socket {
    first: u64,
    lport: u16,
    inode: u32,
    conn: PeerKey,
}

#[derive(Debug, Default)]
struct CwHistory {
    reported: u32,
    /// (time, count) over the last minute, for the growth rate.
    history: VecDeque<(u64, u32)>,
}

/// A group whose count changed.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(super) struct Change {
    pub group: CwGroup,
    pub count: u32,
    /// Age of the oldest socket, seconds.
    pub oldest_seconds: f64,
    pub growth_per_minute: f64,
    /// The oldest socket (ties: the lower inode) and its connection.
    pub inode: u32,
    pub conn: PeerKey,
}

/// One namespace's CLOSE_WAIT sockets and groups.
#[derive(Debug, Default)]
pub(super) struct Tracker {
    /// By socket cookie.
    sockets: HashMap<u64, Socket>,
    groups: HashMap<CwGroup, CwHistory>,
}

impl Tracker {
    /// A dump at `now` (ns) of namespace `netns`: its CLOSE_WAIT sockets
    /// among `others`, and its `listeners` (a socket's group is the lowest
    /// listener on its port). Returns the groups whose count changed.
    pub fn update(
        &mut self,
        now: u64,
        netns: u32,
        listeners: &[DiagSock],
        others: &[DiagSock],
    ) -> Vec<Change> {
        let mut seen = HashMap::new();
        for o in others
            .iter()
            .filter(|o| o.state == sockdiag::STATE_CLOSE_WAIT)
        {
            let first = self.sockets.get(&o.cookie).map_or(now, |e| e.first);
            let s = Socket {
                first,
                lport: o.lport,
                inode: o.inode,
                conn: o.peer_key(netns),
            };
            seen.insert(o.cookie, s);
        }
        self.sockets = seen;
        let groups = self.group(netns, listeners);
        let mut keys: Vec<CwGroup> = self.groups.keys().chain(groups.keys()).copied().collect();
        keys.sort_unstable();
        keys.dedup();
        let mut changes = Vec::new();
        for g in keys {
            let (count, oldest, inode, conn) =
                groups
                    .get(&g)
                    .copied()
                    .unwrap_or((0, now, 0, PeerKey::default()));
            let h = self.groups.entry(g).or_default();
            h.history.push_back((now, count));
            while h.history.len() > 1 && now - h.history[0].0 > GROWTH_WINDOW_NS {
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
            changes.push(Change {
                group: g,
                count,
                oldest_seconds: (now - oldest) as f64 / 1e9,
                growth_per_minute: growth,
                inode,
                conn,
            });
        }
        self.groups.retain(|_, h| h.reported > 0);
        changes
    }

    /// The sockets per group: (count, oldest first seen, its inode, its
    /// connection).
    fn group(
        &self,
        netns: u32,
        listeners: &[DiagSock],
    ) -> HashMap<CwGroup, (u32, u64, u32, PeerKey)> {
        let mut groups: HashMap<CwGroup, (u32, u64, u32, PeerKey)> = HashMap::new();
        for s in self.sockets.values() {
            let listener = listeners
                .iter()
                .filter(|l| l.lport == s.lport)
                .map(|l| ListenerKey {
                    netns,
                    inode: l.inode,
                })
                .min();
            let g = match listener {
                Some(k) => CwGroup::Listener(k),
                None => CwGroup::Port(s.lport),
            };
            let e = groups
                .entry(g)
                .or_insert((0, u64::MAX, 0, PeerKey::default()));
            e.0 += 1;
            // Ties (seen in the same reading): the lower inode, the older.
            if (s.first, s.inode) < (e.1, e.2) {
                e.1 = s.first;
                e.2 = s.inode;
                e.3 = s.conn;
            }
        }
        groups
    }

    /// The groups with sockets now, and how many, as last reported.
    pub fn now(&self) -> impl Iterator<Item = (CwGroup, u32)> + '_ {
        self.groups
            .iter()
            .filter(|(_, h)| h.reported > 0)
            .map(|(g, h)| (*g, h.reported))
    }
}

impl Aggregator {
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
            for (g, n) in ns.close_wait.now() {
                let (key, info) = self.cw_target(g);
                out.push((netns, key, info, n));
            }
        }
        out
    }

    /// CLOSE_WAIT sockets per listener (or local port): a line whenever
    /// the count changes, with the oldest one's age and the growth rate.
    pub(super) fn close_waits(&mut self, snap: &NetnsSnapshot, others: &[DiagSock]) {
        let ns = self.ns.entry(snap.netns).or_default();
        let changes = ns
            .close_wait
            .update(snap.end_ns, snap.netns, &snap.listeners, others);
        for c in changes {
            let (key, info) = self.cw_target(c.group);
            // No listener to name the owner: the process that accepted the
            // oldest one, as the kernel recorded it, else its holder.
            let pid = match (key, &self.accepter) {
                (None, Some(by)) if c.count > 0 => by(&c.conn),
                _ => None,
            };
            let inode = (pid.is_none() && c.inode != 0).then_some(c.inode);
            // An unknown listener has port 0: never the `--port`.
            if self.port.is_some_and(|p| info.port != p) {
                continue;
            }
            // No listener: each port is a line of its own.
            let group = key.is_none().then_some((info.addr, info.port));
            self.add_line(Line {
                key,
                kind: Kind::CloseWait,
                source: Source::SockDiag,
                info,
                n: c.count as u64,
                peer: None,
                group,
                netns: Some(snap.netns),
                pid,
                inode,
                attrs: vec![Fact::CloseWait {
                    oldest_seconds: c.oldest_seconds,
                    growth_per_minute: c.growth_per_minute,
                }],
                ts: 0,
            });
        }
    }
}

#[cfg(test)]
mod tests {
    use super::super::testutil::*;
    use super::*;
    use crate::model::report::Field;

    fn cw(cookie: u64) -> DiagSock {
        let mut s = sock(50 + cookie as u32, 0, 0, 0);
        s.state = sockdiag::STATE_CLOSE_WAIT;
        s.cookie = cookie;
        s
    }

    #[test]
    fn close_wait_is_reported_when_it_changes_with_its_listener() {
        let mut a = Aggregator::default();
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
    fn close_wait_on_two_ports_without_a_listener_is_a_line_per_port() {
        let mut a = Aggregator::default();
        let cw = |cookie: u64, lport| {
            let mut s = sock(50 + cookie as u32, 0, 0, 0);
            (s.state, s.cookie, s.lport) = (sockdiag::STATE_CLOSE_WAIT, cookie, lport);
            s
        };
        let mut s0 = snap(vec![], 1_000_000_000, true);
        s0.others = Some(vec![cw(1, 9000), cw(2, 9000), cw(3, 9001)]);
        a.on_snapshot(&s0);
        let mut got: Vec<(u16, u64)> = a.take().iter().map(|p| (p.info.port, p.count)).collect();
        got.sort();
        assert_eq!(got, vec![(9000, 2), (9001, 1)]);
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
    fn a_tracker_reports_changes_with_the_oldest_socket_and_the_growth() {
        let mut t = Tracker::default();
        let listeners = [sock(1, 0, 0, 16)];
        let c = t.update(1_000_000_000, NS, &listeners, &[cw(1)]);
        assert_eq!(c.len(), 1);
        let l = CwGroup::Listener(ListenerKey {
            netns: NS,
            inode: 1,
        });
        assert_eq!((c[0].group, c[0].count, c[0].inode), (l, 1, 51));
        // Unchanged: nothing. Doubled 30 s later: 2 per minute.
        assert!(t.update(2_000_000_000, NS, &listeners, &[cw(1)]).is_empty());
        let c = t.update(31_000_000_000, NS, &listeners, &[cw(1), cw(2)]);
        assert_eq!((c[0].count, c[0].growth_per_minute), (2, 2.0));
        assert_eq!(c[0].oldest_seconds, 30.0);
        // Its listener gone: the sockets move to a port group.
        let c = t.update(32_000_000_000, NS, &[], &[cw(1), cw(2)]);
        let mut got: Vec<_> = c.iter().map(|c| (c.group, c.count)).collect();
        got.sort_by_key(|g| g.1);
        assert_eq!(got, vec![(l, 0), (CwGroup::Port(8080), 2)]);
        assert_eq!(t.now().collect::<Vec<_>>(), vec![(CwGroup::Port(8080), 2)]);
    }
}

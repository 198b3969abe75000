//! The accept() side of a listener: failures of the process that accepts
//! (counted by the kernel per process and errno) and the time connections
//! waited in the accept queue (summarised per port).

use std::collections::HashSet;

use crate::{
    aggregate::{pending::Line, Aggregator},
    model::{self, Fact, Kind, ListenerInfo, ListenerKey, Source},
    source::latency::Summary,
};

impl Aggregator {
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
    pub fn on_accept_latency(&mut self, s: &Summary) {
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
    pub fn busiest_listener(&self, inodes: &HashSet<u32>) -> Option<(ListenerKey, ListenerInfo)> {
        self.listeners
            .iter()
            .filter(|(k, _)| inodes.contains(&k.inode))
            .filter_map(|(k, st)| Some((*k, st.info.clone()?)))
            .max_by_key(|(k, i)| (i.queue_len, std::cmp::Reverse(k.inode)))
    }
}

//! The pipeline: typed inputs in, report lines to a sink out. Decode →
//! aggregate → owner → verdict → sink, with `trace`'s filters. It reads
//! no kernel map and no clock: the live engine and a replay feed it the
//! same steps (see `engine::record`), and it asks the [`Host`] about
//! processes.

use std::{
    collections::{HashMap, HashSet},
    io,
    time::SystemTime,
};

use tcpq_common::{latency::LatencyHist, AcceptStats};

use crate::engine::record::Settings;
use crate::{
    aggregate::{Aggregator, Hooked},
    engine::host::Host,
    export::{
        self,
        sink::{AgentFilters, Health, Sink, View},
    },
    model::{Fact, ListenerKey, Pending},
    owner::{cgroup, resolve::Owner},
    source::{
        accept_errors::AcceptErrorDeltas,
        accepts::{AcceptCounter, Accepts},
        decode::{self, Happened},
        latency::LatencyTracker,
        poll::Round,
    },
};

/// What ended a report interval, read from the kernel right then.
#[derive(Debug)]
pub struct FlushInput {
    pub at: SystemTime,
    /// Events lost so far (ring buffer full).
    pub lost: u64,
    /// `ACCEPTS` (listener address, CPU-summed); None without the hook.
    pub accepts: Option<Vec<(u64, AcceptStats)>>,
    /// `ACCEPT_LATENCY` (netns/port key, CPU-summed); None when not measured.
    pub latency: Option<Vec<(u64, LatencyHist)>>,
}

/// `--pid`: the process and every socket it has been seen holding.
struct PidFilter {
    owner: Owner,
    sockets: HashSet<u32>,
}

pub struct Pipeline {
    pub settings: Settings,
    pub agg: Aggregator,
    pid_filter: Option<PidFilter>,
    accepts: Option<AcceptCounter>,
    accept_errors: AcceptErrorDeltas,
    latency: Option<LatencyTracker>,
    pub received: u64,
    pub undecodable: u64,
    lost_reported: u64,
}

impl Pipeline {
    pub fn new(settings: Settings, host: &mut dyn Host) -> Pipeline {
        let agg = Aggregator::new(
            settings.rst_reasons.clone(),
            settings.port,
            Hooked {
                syn: settings.hooked_syn,
                ack: settings.hooked_ack,
            },
        );
        Pipeline {
            pid_filter: settings.pid.map(|pid| PidFilter {
                owner: host.owner(pid),
                sockets: host.sockets_of(pid),
            }),
            accepts: settings.accepts.then(AcceptCounter::default),
            latency: settings.latency.then(LatencyTracker::default),
            accept_errors: AcceptErrorDeltas::default(),
            agg,
            settings,
            received: 0,
            undecodable: 0,
            lost_reported: 0,
        }
    }

    /// Ring-buffer records. True when one was news of a counted kind (its
    /// counts come with the next sock_diag round: worth asking for one).
    pub fn records<'a>(
        &mut self,
        host: &mut dyn Host,
        records: impl IntoIterator<Item = &'a [u8]>,
    ) -> bool {
        let mut news = false;
        for r in records {
            match decode::decode(r) {
                Ok(ev) if ev.counted => {
                    self.received += 1;
                    news = true;
                }
                Ok(ev) => {
                    self.received += 1;
                    if let Happened::ListenerUp { pid: Some(pid), .. } = ev.what {
                        host.seed(ev.inode, pid);
                    }
                    self.agg.on_event(&ev);
                }
                Err(_) => self.undecodable += 1,
            }
        }
        news
    }

    /// One sock_diag round. The kernel's counts first, each before the dump
    /// it came with: a namespace filtered out below may carry another
    /// one's counts.
    pub fn round(&mut self, round: Round) {
        let Round { mut snaps, alive } = round;
        for snap in &snaps {
            for d in snap.storm_before.iter().chain(&snap.storm_after) {
                match decode::decode_event(&d.ev) {
                    Ok(ev) => self.agg.on_events(&ev, d.n, (d.lo, d.hi)),
                    Err(_) => self.undecodable += 1,
                }
            }
        }
        let netns = self.settings.netns;
        if netns != 0 {
            snaps.retain(|s| s.netns == netns);
        }
        for snap in &snaps {
            self.agg.on_snapshot(snap);
        }
        self.agg.end_round(&alive);
    }

    /// accept() failures: `counts` is the kernel map's every key and total.
    /// Returns the keys of processes gone, to delete from the map (the map
    /// is not LRU; a dead process fails no more accepts, so nothing is
    /// lost by deleting after the read).
    pub fn accept_errors(&mut self, host: &mut dyn Host, counts: &[(u64, u64)]) -> Vec<u64> {
        for f in self.accept_errors.update(counts) {
            if self
                .pid_filter
                .as_ref()
                .is_some_and(|p| p.owner.pid != f.pid)
            {
                continue;
            }
            let listener = self.agg.busiest_listener(&host.sockets_of(f.pid));
            let (open, limit) = host.fds(f.pid);
            let mut attrs = Vec::new();
            if let Some(n) = open {
                attrs.push(Fact::OpenFds(n as u64));
            }
            if let Some(n) = limit {
                attrs.push(Fact::FdLimit(n));
            }
            self.agg
                .on_accept_errors(f.pid, f.errno, f.n, listener, attrs);
        }
        let gone: Vec<u64> = self
            .accept_errors
            .keys()
            .into_iter()
            .filter(|k| !host.alive((k >> 32) as u32))
            .collect();
        for k in &gone {
            self.accept_errors.forget(*k);
        }
        gone
    }

    /// Learns the owners of listeners that just showed up, while their
    /// processes are still there to ask.
    pub fn learn(&mut self, host: &mut dyn Host) {
        let inodes: Vec<u32> = self.agg.pending_inodes().collect();
        if let Some(f) = &mut self.pid_filter {
            f.sockets.extend(host.sockets_of(f.owner.pid));
        }
        host.learn(inodes, self.agg.reuseport_groups());
    }

    /// The end of a report interval: lines to the sink, then `flushed`.
    pub fn flush(
        &mut self,
        host: &mut dyn Host,
        input: FlushInput,
        health: Health,
        sink: &mut dyn Sink,
    ) -> io::Result<()> {
        if input.lost > self.lost_reported {
            sink.lost(input.at, input.lost - self.lost_reported)?;
            self.lost_reported = input.lost;
        }
        let accepts = match (self.accepts.as_mut(), input.accepts) {
            (Some(c), Some(entries)) => Some(c.update(entries)),
            _ => None,
        };
        self.latency(input.latency, sink);
        // Every line about to be written wants its owner, even if a scan
        // ran a moment ago (lines added just now, e.g. latency, too).
        let inodes: Vec<u32> = self.agg.pending_inodes().collect();
        host.learn_now(inodes);
        let pending = self.agg.take();
        let written = self.write_lines(host, &pending, accepts, input.at, sink);
        let view = View {
            agg: &self.agg,
            resolver: host.resolver(),
            health: Health {
                received: self.received,
                undecodable: self.undecodable,
                owners_cached: host.resolver().len(),
                tracked_listeners: self.agg.listener_infos().count(),
                overflows_missed_by_hooks: self.agg.missed_overflows().total(),
                ..health
            },
        };
        let done = written.and_then(|()| sink.flushed(&view));
        // Owners of sockets no longer tracked go, whether or not anything
        // was printed.
        let agg = &self.agg;
        host.retain(&|ino| agg.tracks_inode(ino));
        if let Some(f) = &mut self.pid_filter {
            f.sockets.retain(|ino| agg.tracks_inode(*ino));
        }
        done
    }

    /// Accept latency since the last flush: a line for listeners whose
    /// p99 reached `--accept-latency-ms`.
    fn latency(&mut self, now: Option<Vec<(u64, LatencyHist)>>, sink: &mut dyn Sink) {
        let (Some(tracker), Some(now)) = (self.latency.as_mut(), now) else {
            return;
        };
        let threshold = (self.settings.accept_latency_ms * 1e6) as u64;
        for s in tracker.update(now) {
            sink.latency(&s);
            if s.p99_ns >= threshold {
                self.agg.on_accept_latency(&s);
            }
        }
    }

    /// A reloaded configuration's filters.
    pub fn set_filters(&mut self, f: AgentFilters) {
        let s = &mut self.settings;
        s.comm = f.comm;
        s.cgroup = f.cgroup;
        s.container = f.container;
        s.accept_latency_ms = f.accept_latency_ms;
    }

    fn write_lines(
        &self,
        host: &mut dyn Host,
        pending: &[Pending],
        accepts: Option<HashMap<ListenerKey, Accepts>>,
        at: SystemTime,
        sink: &mut dyn Sink,
    ) -> io::Result<()> {
        let mut failed = None;
        for p in pending {
            let Some(owner) = self.line_owner(host, p) else {
                continue;
            };
            let owner = owner.as_ref();
            let written = sink.report(&export::Report {
                at,
                pending: p,
                owner,
                accepts: p.key.and_then(|k| {
                    accepts
                        .as_ref()
                        .map(|a| a.get(&k).copied().unwrap_or_default())
                }),
                verdict: crate::verdict::explain::line(
                    p,
                    owner,
                    p.netns.and_then(|n| self.agg.netns_state(n)),
                ),
            });
            // Every line is tried (and counted by the sink if lost); the
            // first error is the answer.
            if let Err(e) = written {
                failed.get_or_insert(e);
            }
        }
        failed.map_or(Ok(()), Err)
    }

    /// A line's owner: the process the kernel named, else the holder of
    /// the listener, else the holder of the socket the line is about.
    /// None when the line is filtered out.
    fn line_owner(&self, host: &mut dyn Host, p: &Pending) -> Option<Option<Owner>> {
        let owner = match p.pid {
            Some(pid) => Some(host.owner(pid)),
            None => p
                .key
                .map(|k| k.inode)
                .or(p.inode)
                .and_then(|i| host.socket_owner(i)),
        };
        let netns = self.settings.netns;
        if netns != 0
            && p.netns
                .or(p.key.map(|k| k.netns))
                .is_some_and(|n| n != netns)
        {
            return None;
        }
        if !self.owner_wanted(owner.as_ref()) {
            return None;
        }
        let Some(f) = &self.pid_filter else {
            return Some(owner);
        };
        let mine = match (p.pid, p.key) {
            (Some(pid), _) => pid == f.owner.pid,
            // A socket it holds; of an SO_REUSEPORT group whose every
            // member it holds (an nginx worker), its own.
            (None, Some(k)) => {
                f.sockets.contains(&k.inode)
                    && (!host.in_group(k.inode)
                        || owner.as_ref().is_none_or(|o| o.pid == f.owner.pid))
            }
            (None, None) => owner.as_ref().is_some_and(|o| o.pid == f.owner.pid),
        };
        match (mine, p.key) {
            (false, _) => None,
            (true, Some(k)) if p.pid.is_none() && f.sockets.contains(&k.inode) => {
                Some(Some(f.owner.clone()))
            }
            (true, _) => Some(owner),
        }
    }

    /// `--comm`, `--cgroup`, `--container`: whether a line's owner passes
    /// (a line without a known owner does not, when any is set).
    fn owner_wanted(&self, owner: Option<&Owner>) -> bool {
        let a = &self.settings;
        if a.comm.is_none() && a.cgroup.is_none() && a.container.is_none() {
            return true;
        }
        let Some(o) = owner else { return false };
        if a.comm.as_deref().is_some_and(|c| !o.has_comm(c)) {
            return false;
        }
        let pl = o.placement.clone().unwrap_or_default();
        if a.cgroup
            .as_deref()
            .is_some_and(|c| !cgroup::cgroup_matches(&pl, c))
        {
            return false;
        }
        a.container
            .as_deref()
            .is_none_or(|c| cgroup::container_matches(&pl, c))
    }
}

//! The sink of `top`: tallies the engine's reports per listener and per
//! client process on the engine's thread, and at every flush publishes a
//! [`Frame`] built from them and from the aggregator's listeners.

use std::{
    collections::{HashMap, VecDeque},
    io,
    sync::{Arc, Mutex},
    time::{Duration, Instant, SystemTime},
};

use super::{
    clients::{self, ClientTally},
    filter::OwnerFilter,
    frame::{Counts, Frame, Row, RATE_WINDOW},
    verdict,
};
use crate::{
    export::sink::{Sink, View},
    export::{self, Report},
    model::{Fact, Kind, ListenerInfo, ListenerKey, Stage},
    owner::resolve::Owner,
    source::latency::Summary,
    source::netstat::Sysctls,
    verdict::Verdict,
};

/// CLOSE_WAIT growth is measured over this window.
const GROWTH_WINDOW: Duration = Duration::from_secs(60);
/// A report's verdict is shown this long after the report.
const VERDICT_KEEP: Duration = Duration::from_secs(15);

#[derive(Default)]
struct ListenerTally {
    totals: Counts,
    /// (when, totals then, CLOSE_WAIT then), oldest first.
    history: VecDeque<(Instant, Counts, u32)>,
    /// The last report verdict per rank (`rank`): the gravest recent one
    /// is shown.
    verdicts: HashMap<u8, (Instant, Verdict)>,
    /// The accept latency of the last report that had one.
    latency: Option<(Instant, Fact)>,
}

impl ListenerTally {
    /// Records a sample at `now` with `cw` sockets in CLOSE_WAIT; returns
    /// the rates per second over the last `RATE_WINDOW` and the CLOSE_WAIT
    /// change over the last `GROWTH_WINDOW` (or since the first sample).
    fn sample(&mut self, now: Instant, cw: u32) -> (Counts, i64) {
        if self.history.is_empty() {
            self.history.push_back((now, Counts::default(), cw));
        }
        self.history.push_back((now, self.totals, cw));
        // Keep one sample at or before each window's start.
        while self.history.len() > 2 && now - self.history[1].0 >= GROWTH_WINDOW {
            self.history.pop_front();
        }
        let base = self
            .history
            .iter()
            .rev()
            .find(|(at, ..)| now - *at >= RATE_WINDOW)
            .or(self.history.front())
            .copied()
            .unwrap_or((now, Counts::default(), cw));
        let secs = (now - base.0).as_secs_f64().max(0.5);
        let mut rates = self.totals;
        rates.add(&base.1, -1.0);
        let growth_base = self.history.front().map_or(cw, |h| h.2);
        (rates.scaled(1.0 / secs), cw as i64 - growth_base as i64)
    }

    /// The accept latency of a recent report, else of a recent `summary`
    /// of the listener's port.
    fn latency<'a>(
        &'a self,
        now: Instant,
        summary: Option<&'a (Instant, Fact)>,
    ) -> Option<&'a Fact> {
        let recent = |l: &'a (Instant, Fact)| (now - l.0 < VERDICT_KEEP).then_some(&l.1);
        self.latency
            .as_ref()
            .and_then(recent)
            .or_else(|| summary.and_then(recent))
    }

    /// The gravest verdict reported recently (older ones are forgotten).
    fn reported(&mut self, now: Instant) -> Option<Verdict> {
        self.verdicts.retain(|_, (at, _)| now - *at < VERDICT_KEEP);
        self.verdicts
            .iter()
            .min_by_key(|(rank, _)| **rank)
            .map(|(_, (_, v))| v.clone())
    }

    /// The listener's row at `now` (with the accept `latency` in force),
    /// without a verdict.
    fn row(
        &mut self,
        key: ListenerKey,
        info: &ListenerInfo,
        owner: Option<&Owner>,
        cw: u32,
        latency: Option<&Fact>,
        now: Instant,
    ) -> Row {
        let (rates, growth) = self.sample(now, cw);
        Row {
            key,
            endpoint: export::endpoint(info.addr, info.port),
            port: info.port,
            queue_len: info.queue_len,
            queue_limit: info.queue_limit,
            rates,
            totals: self.totals,
            p99_ms: latency.and_then(Fact::accept_latency_p99_ms),
            close_wait: cw,
            close_wait_growth: growth,
            process: owner.map(|o| o.name.clone()),
            pid: owner.map(|o| o.pid),
            container: owner
                .and_then(|o| o.placement.as_ref())
                .and_then(|p| p.container_id.clone()),
            verdict: None,
        }
    }
}

/// Verdicts in `verdict::listener`'s order: accept() failing, overflows,
/// SYN-queue drops, syncookies, CLOSE_WAIT, slow accepts.
fn rank(kind: &Kind) -> u8 {
    match kind {
        Kind::AcceptError { .. } => 0,
        Kind::ListenOverflow(..) => 1,
        Kind::SynQueueDrop { .. } => 2,
        Kind::SyncookiesSent => 3,
        Kind::CloseWait => 4,
        _ => 5,
    }
}

/// CLOSE_WAIT sockets per listener (those of no known listener left out).
fn close_wait_by_listener(
    groups: impl IntoIterator<Item = (Option<ListenerKey>, u32)>,
) -> HashMap<ListenerKey, u32> {
    let mut close_wait: HashMap<ListenerKey, u32> = HashMap::new();
    for (key, n) in groups {
        if let Some(k) = key {
            *close_wait.entry(k).or_default() += n;
        }
    }
    close_wait
}

/// Listener inodes to look up, and the SO_REUSEPORT groups among them.
pub type Wanted = (Vec<u32>, Vec<Vec<u32>>);

/// The sink: tallies reports, publishes a frame at every flush.
pub struct Tally {
    pub frame: Arc<Mutex<Frame>>,
    /// Owners found by the owner thread, by socket inode.
    pub owners: Arc<Mutex<HashMap<u32, Owner>>>,
    /// Listener inodes the owner thread should look up, and the
    /// SO_REUSEPORT groups (a member's owner is its worker).
    pub wanted: Arc<Mutex<Wanted>>,
    pub filter: OwnerFilter,
    pub port: Option<u16>,
    listeners: HashMap<ListenerKey, ListenerTally>,
    clients: HashMap<(u32, u32), ClientTally>,
    /// (netns, port) → the last accept-latency summary of the listeners
    /// there.
    latency: HashMap<(u32, u16), (Instant, Fact)>,
    generation: u64,
}

impl Tally {
    pub fn new(filter: OwnerFilter, port: Option<u16>) -> Tally {
        Tally {
            frame: Arc::default(),
            owners: Arc::default(),
            wanted: Arc::default(),
            filter,
            port,
            listeners: HashMap::new(),
            clients: HashMap::new(),
            latency: HashMap::new(),
            generation: 0,
        }
    }

    fn count(&mut self, r: &Report) {
        let p = r.pending;
        let n = p.count as f64;
        if let Kind::ConnectError { error } = &p.kind {
            let Some(pid) = p.pid else { return };
            let netns = p.netns.unwrap_or(0);
            let c = self.clients.entry((netns, pid)).or_default();
            c.process = r
                .owner
                .map(|o| o.name.clone())
                .unwrap_or_else(|| crate::owner::resolve::process_name(pid).unwrap_or("?".into()));
            *c.errors.entry(error.clone()).or_default() += p.count;
            c.destination = export::endpoint(p.info.addr, p.info.port);
            return;
        }
        let Some(key) = p.key else { return };
        let t = self.listeners.entry(key).or_default();
        let now = Instant::now();
        match &p.kind {
            Kind::ListenOverflow(Stage::Syn, _) => t.totals.overflow_syn += n,
            Kind::ListenOverflow(Stage::Ack, _) => t.totals.overflow_ack += n,
            Kind::SynQueueDrop { .. } => t.totals.syn_drops += n,
            Kind::SyncookiesSent => t.totals.cookies += n,
            Kind::ResetSent { .. } => t.totals.resets += n,
            Kind::AcceptError { .. } => t.totals.accept_errors += n,
            Kind::AcceptLatency => {
                let latency = p.attrs.iter().find(|f| f.accept_latency_p99_ms().is_some());
                if let Some(f) = latency {
                    t.latency = Some((now, f.clone()));
                }
            }
            _ => {}
        }
        if let Some(v) = &r.verdict {
            t.verdicts.insert(rank(&p.kind), (now, v.clone()));
        }
    }

    /// Builds and publishes the frame.
    fn publish(&mut self, view: &View) {
        let now = Instant::now();
        let mut sysctls = HashMap::new();
        let (rows, wanted) = self.listener_rows(view, now, &mut sysctls);
        let clients = clients::rows(&mut self.clients, now);
        let netns = clients::namespaces(rows.iter().map(|r| r.key.netns), &clients);
        let ports = clients::ports(view, netns, &clients, &mut sysctls);
        *self.wanted.lock().unwrap_or_else(|e| e.into_inner()) =
            (wanted, view.agg.reuseport_groups());
        self.generation += 1;
        let frame = Frame {
            at: Some(SystemTime::now()),
            rows,
            clients,
            ports,
            sysctls,
            health: view.health.clone(),
            generation: self.generation,
        };
        *self.frame.lock().unwrap_or_else(|e| e.into_inner()) = frame;
    }

    /// The rows of the listeners that pass the filters (their namespaces'
    /// settings go into `sysctls`), and the inodes of every listener on
    /// the port, for the owner thread. Tallies of listeners gone are
    /// dropped.
    fn listener_rows(
        &mut self,
        view: &View,
        now: Instant,
        sysctls: &mut HashMap<u32, Sysctls>,
    ) -> (Vec<Row>, Vec<u32>) {
        let owners = self
            .owners
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone();
        let close_wait = close_wait_by_listener(
            view.agg
                .close_wait_now()
                .into_iter()
                .map(|(_, key, _, n)| (key, n)),
        );
        let mut rows = Vec::new();
        let mut live = Vec::new();
        for (key, info) in view.agg.listener_infos() {
            if self.port.is_some_and(|p| p != info.port) {
                continue;
            }
            live.push(key);
            let owner = view
                .resolver
                .get(key.inode)
                .or_else(|| owners.get(&key.inode));
            if !self.filter.wants(owner) {
                continue;
            }
            let settings = view.agg.netns_state(key.netns).map(|st| st.sysctls.clone());
            if let Some(s) = &settings {
                sysctls.insert(key.netns, s.clone());
            }
            let cw = close_wait.get(&key).copied().unwrap_or(0);
            let summary = self.latency.get(&(key.netns, info.port));
            let t = self.listeners.entry(key).or_default();
            let latency = t.latency(now, summary).cloned();
            let mut row = t.row(key, info, owner, cw, latency.as_ref(), now);
            row.verdict = t.reported(now).or_else(|| {
                let settings = settings.unwrap_or_default();
                verdict::listener(&row, info, owner, &settings, latency.as_ref())
            });
            rows.push(row);
        }
        self.listeners.retain(|k, _| live.contains(k));
        let wanted = live.iter().map(|k| k.inode).collect();
        (rows, wanted)
    }
}

impl Sink for Tally {
    fn report(&mut self, r: &Report) -> io::Result<()> {
        self.count(r);
        Ok(())
    }

    fn lost(&mut self, _at: SystemTime, _n: u64) -> io::Result<()> {
        // The health line shows the total (View::health).
        Ok(())
    }

    fn latency(&mut self, s: &Summary) {
        if s.count > 0 {
            let f = Fact::AcceptLatency {
                p50_ns: s.p50_ns,
                p99_ns: s.p99_ns,
                max_ns: s.max_ns,
            };
            self.latency.insert((s.netns, s.port), (Instant::now(), f));
        }
    }

    fn flushed(&mut self, view: &View) -> io::Result<()> {
        self.publish(view);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn verdict(cause: &str) -> Verdict {
        Verdict {
            cause: cause.into(),
            remedy: String::new(),
        }
    }

    #[test]
    fn rates_over_the_window_and_close_wait_growth() {
        let t0 = Instant::now();
        let mut t = ListenerTally::default();
        t.totals.overflow_syn = 1.0;
        // The first sample: against zero, over at least half a second.
        let (rates, growth) = t.sample(t0, 5);
        assert_eq!((rates.overflow_syn, growth), (2.0, 0));
        t.totals.overflow_syn = 5.0;
        t.totals.resets = 8.0;
        // Against the last sample at or before the window's start.
        let (rates, growth) = t.sample(t0 + Duration::from_secs(4), 9);
        assert_eq!((rates.overflow_syn, rates.resets, growth), (1.0, 2.0, 4));
        // Growth over a minute: the samples before it go.
        let (_, growth) = t.sample(t0 + Duration::from_secs(70), 20);
        assert_eq!(growth, 11);
    }

    #[test]
    fn a_recent_report_p99_before_a_recent_summary() {
        let t0 = Instant::now();
        let later = t0 + VERDICT_KEEP;
        let ms = |ms: u64| Fact::AcceptLatency {
            p50_ns: 0,
            p99_ns: ms * 1_000_000,
            max_ns: ms * 1_000_000,
        };
        let mut t = ListenerTally::default();
        let p99 = |t: &ListenerTally, now, summary| {
            t.latency(now, summary)
                .and_then(Fact::accept_latency_p99_ms)
        };
        let summary = (t0, ms(3));
        assert_eq!(p99(&t, t0, Some(&summary)), Some(3.0));
        assert_eq!(p99(&t, later, Some(&summary)), None);
        t.latency = Some((t0, ms(7)));
        assert_eq!(p99(&t, t0, Some(&summary)), Some(7.0));
        assert_eq!(p99(&t, later, Some(&(later, ms(4)))), Some(4.0));
    }

    #[test]
    fn the_gravest_recent_verdict_is_shown() {
        let t0 = Instant::now();
        let mut t = ListenerTally::default();
        assert_eq!(t.reported(t0), None);
        let close_wait = rank(&Kind::CloseWait);
        let cookies = rank(&Kind::SyncookiesSent);
        t.verdicts.insert(cookies, (t0, verdict("cookies")));
        t.verdicts.insert(
            close_wait,
            (t0 + Duration::from_secs(10), verdict("close wait")),
        );
        assert_eq!(t.reported(t0), Some(verdict("cookies")));
        // The graver one is too old now: forgotten.
        let later = t0 + Duration::from_secs(20);
        assert_eq!(t.reported(later), Some(verdict("close wait")));
        assert_eq!(t.verdicts.len(), 1);
    }

    #[test]
    fn close_wait_adds_up_per_listener() {
        let a = ListenerKey {
            netns: 1,
            inode: 10,
        };
        let b = ListenerKey {
            netns: 1,
            inode: 11,
        };
        let m = close_wait_by_listener([(Some(a), 2), (None, 9), (Some(b), 1), (Some(a), 3)]);
        assert_eq!(m, HashMap::from([(a, 5), (b, 1)]));
    }
}

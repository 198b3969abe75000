//! What `top` shows, built from the engine's reports: per-listener totals
//! and rates, the queue state of every listener, client-side errors and
//! port headroom per namespace. The sink side (`Tally`) runs on the engine's
//! thread and publishes a `Frame`; the screen only reads frames.
//! Sorting and filtering are pure functions of a frame.

use std::{
    collections::{HashMap, VecDeque},
    io,
    sync::{Arc, Mutex},
    time::{Duration, Instant, SystemTime},
};

use crate::{
    export::sink::{Health, Sink, View},
    export::{self, Report},
    model::{Kind, ListenerKey, Stage},
    owner::resolve::Owner,
    source::latency::Summary,
    source::netstat::Sysctls,
    verdict::{self, ListenerEvidence, PortEvidence, Verdict},
};

/// Rates are averaged over this window.
pub const RATE_WINDOW: Duration = Duration::from_secs(3);
/// CLOSE_WAIT growth is measured over this window.
const GROWTH_WINDOW: Duration = Duration::from_secs(60);
/// A report's verdict is shown this long after the report.
const VERDICT_KEEP: Duration = Duration::from_secs(15);

/// Counts of the kinds `top` has columns for.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Counts {
    pub overflow_syn: f64,
    pub overflow_ack: f64,
    pub syn_drops: f64,
    pub cookies: f64,
    pub resets: f64,
    pub accept_errors: f64,
}

impl Counts {
    fn add(&mut self, o: &Counts, sign: f64) {
        self.overflow_syn += sign * o.overflow_syn;
        self.overflow_ack += sign * o.overflow_ack;
        self.syn_drops += sign * o.syn_drops;
        self.cookies += sign * o.cookies;
        self.resets += sign * o.resets;
        self.accept_errors += sign * o.accept_errors;
    }

    fn scaled(self, f: f64) -> Counts {
        Counts {
            overflow_syn: self.overflow_syn * f,
            overflow_ack: self.overflow_ack * f,
            syn_drops: self.syn_drops * f,
            cookies: self.cookies * f,
            resets: self.resets * f,
            accept_errors: self.accept_errors * f,
        }
    }

    /// Everything that lost or refused a connection.
    pub fn trouble(&self) -> f64 {
        self.overflow_syn
            + self.overflow_ack
            + self.syn_drops
            + self.cookies
            + self.resets
            + self.accept_errors
    }
}

/// One listener's row.
#[derive(Debug, Clone, PartialEq)]
pub struct Row {
    pub key: ListenerKey,
    pub endpoint: String,
    pub port: u16,
    pub queue_len: u32,
    pub queue_limit: u32,
    /// Per second over the last `RATE_WINDOW`.
    pub rates: Counts,
    /// Since `top` started.
    pub totals: Counts,
    pub p99_ms: Option<f64>,
    pub close_wait: u32,
    /// Change over the last minute (or since start, when shorter).
    pub close_wait_growth: i64,
    pub process: Option<String>,
    pub pid: Option<u32>,
    pub container: Option<String>,
    pub verdict: Option<Verdict>,
}

impl Row {
    /// Accept-queue fill, 0..1 (a full queue holds limit + 1).
    pub fn fill(&self) -> f64 {
        if self.queue_limit == 0 {
            return if self.queue_len > 0 { 1.0 } else { 0.0 };
        }
        (self.queue_len as f64 / (self.queue_limit + 1) as f64).min(1.0)
    }
}

/// Client-side trouble of one process (connect() failures).
#[derive(Debug, Clone, PartialEq)]
pub struct Client {
    pub netns: u32,
    pub pid: u32,
    pub process: String,
    /// errno name → (total since start, per second now).
    pub errors: Vec<(String, u64, f64)>,
    pub last_destination: String,
}

/// Local ports of one namespace.
#[derive(Debug, Clone, PartialEq)]
pub struct Ports {
    pub netns: u32,
    pub range: Option<(u16, u16)>,
    pub time_wait: u32,
    pub verdict: Option<Verdict>,
}

impl Ports {
    pub fn size(&self) -> u32 {
        self.range
            .filter(|(lo, hi)| lo <= hi)
            .map_or(0, |(lo, hi)| u32::from(hi) - u32::from(lo) + 1)
    }

    /// Ports not held by TIME_WAIT sockets (open connections may hold
    /// some of them).
    pub fn left(&self) -> u32 {
        self.size().saturating_sub(self.time_wait)
    }
}

/// Everything on one screen.
#[derive(Debug, Clone, Default)]
pub struct Frame {
    pub at: Option<SystemTime>,
    pub rows: Vec<Row>,
    pub clients: Vec<Client>,
    pub ports: Vec<Ports>,
    pub sysctls: HashMap<u32, Sysctls>,
    pub health: Health,
    /// Bumped on every publish.
    pub generation: u64,
}

/// The filters of `trace` applied to rows by owner (`--pid`, `--comm`,
/// `--cgroup`, `--container`; port and namespace are applied by the
/// engine).
#[derive(Debug, Clone, Default)]
pub struct OwnerFilter {
    pub pid: Option<u32>,
    pub comm: Option<String>,
    pub cgroup: Option<String>,
    pub container: Option<String>,
}

impl OwnerFilter {
    fn is_empty(&self) -> bool {
        self.pid.is_none()
            && self.comm.is_none()
            && self.cgroup.is_none()
            && self.container.is_none()
    }

    pub fn wants(&self, owner: Option<&Owner>) -> bool {
        if self.is_empty() {
            return true;
        }
        let Some(o) = owner else { return false };
        if self
            .pid
            .is_some_and(|p| !o.holders.contains(&p) && o.pid != p)
        {
            return false;
        }
        if self.comm.as_deref().is_some_and(|c| !o.has_comm(c)) {
            return false;
        }
        let pl = o.placement.clone().unwrap_or_default();
        if self
            .cgroup
            .as_deref()
            .is_some_and(|c| !crate::owner::cgroup::cgroup_matches(&pl, c))
        {
            return false;
        }
        self.container
            .as_deref()
            .is_none_or(|c| crate::owner::cgroup::container_matches(&pl, c))
    }
}

#[derive(Default)]
struct ListenerTally {
    totals: Counts,
    /// (when, totals then, CLOSE_WAIT then), oldest first.
    history: VecDeque<(Instant, Counts, u32)>,
    /// The last report verdict per rank (`rank`): the gravest recent one
    /// is shown.
    verdicts: HashMap<u8, (Instant, Verdict)>,
    p99: Option<(Instant, f64)>,
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

#[derive(Default)]
struct ClientTally {
    process: String,
    errors: HashMap<String, u64>,
    history: VecDeque<(Instant, HashMap<String, u64>)>,
    destination: String,
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
    /// (netns, port) → listeners there, for accept-latency summaries.
    latency: HashMap<(u32, u16), (Instant, f64)>,
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
                if let Some(v) = p.attrs.iter().find_map(|f| f.accept_latency_p99_ms()) {
                    t.p99 = Some((now, v));
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
        let owners = self
            .owners
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone();
        let mut close_wait: HashMap<ListenerKey, u32> = HashMap::new();
        for (_, key, _, n) in view.agg.close_wait_now() {
            if let Some(k) = key {
                *close_wait.entry(k).or_default() += n;
            }
        }
        let mut rows = Vec::new();
        let mut sysctls = HashMap::new();
        let mut wanted = Vec::new();
        let mut live = Vec::new();
        for (key, info) in view.agg.listener_infos() {
            if self.port.is_some_and(|p| p != info.port) {
                continue;
            }
            live.push(key);
            wanted.push(key.inode);
            let owner = view
                .resolver
                .get(key.inode)
                .or_else(|| owners.get(&key.inode));
            if !self.filter.wants(owner) {
                continue;
            }
            let st = view.agg.netns_state(key.netns);
            if let Some(st) = st {
                sysctls.insert(key.netns, st.sysctls.clone());
            }
            let cw = close_wait.get(&key).copied().unwrap_or(0);
            let t = self.listeners.entry(key).or_default();
            if t.history.is_empty() {
                t.history.push_back((now, Counts::default(), cw));
            }
            t.history.push_back((now, t.totals, cw));
            // Keep one sample at or before each window's start.
            while t.history.len() > 2 && now - t.history[1].0 >= GROWTH_WINDOW {
                t.history.pop_front();
            }
            let base = t
                .history
                .iter()
                .rev()
                .find(|(at, ..)| now - *at >= RATE_WINDOW)
                .or(t.history.front())
                .copied()
                .unwrap_or((now, Counts::default(), cw));
            let secs = (now - base.0).as_secs_f64().max(0.5);
            let mut rates = t.totals;
            rates.add(&base.1, -1.0);
            let rates = rates.scaled(1.0 / secs);
            let growth_base = t.history.front().map_or(cw, |h| h.2);
            let p99 = t
                .p99
                .filter(|(at, _)| now - *at < VERDICT_KEEP)
                .map(|(_, v)| v)
                .or_else(|| {
                    self.latency
                        .get(&(key.netns, info.port))
                        .filter(|(at, _)| now - *at < VERDICT_KEEP)
                        .map(|(_, v)| *v)
                });
            let mut row = Row {
                key,
                endpoint: export::endpoint(info.addr, info.port),
                port: info.port,
                queue_len: info.queue_len,
                queue_limit: info.queue_limit,
                rates,
                totals: t.totals,
                p99_ms: p99,
                close_wait: cw,
                close_wait_growth: cw as i64 - growth_base as i64,
                process: owner.map(|o| o.name.clone()),
                pid: owner.map(|o| o.pid),
                container: owner
                    .and_then(|o| o.placement.as_ref())
                    .and_then(|p| p.container_id.clone()),
                verdict: None,
            };
            t.verdicts.retain(|_, (at, _)| now - *at < VERDICT_KEEP);
            let reported = t
                .verdicts
                .iter()
                .min_by_key(|(rank, _)| **rank)
                .map(|(_, (_, v))| v.clone());
            row.verdict = reported
                .or_else(|| verdict::listener(&evidence(&row, st.map(|s| s.sysctls.clone()))));
            rows.push(row);
        }
        self.listeners.retain(|k, _| live.contains(k));
        let mut clients = Vec::new();
        let mut client_netns: Vec<u32> = Vec::new();
        for (&(netns, pid), c) in &mut self.clients {
            c.history.push_back((now, c.errors.clone()));
            while c.history.len() > 2 && now - c.history[1].0 >= RATE_WINDOW {
                c.history.pop_front();
            }
            let (t0, base) = c.history.front().cloned().unwrap_or((now, HashMap::new()));
            let secs = (now - t0).as_secs_f64().max(0.5);
            let mut errors: Vec<(String, u64, f64)> = c
                .errors
                .iter()
                .map(|(e, n)| {
                    let before = base.get(e).copied().unwrap_or(0);
                    (e.clone(), *n, (n - before) as f64 / secs)
                })
                .collect();
            errors.sort_by(|a, b| a.0.cmp(&b.0));
            clients.push(Client {
                netns,
                pid,
                process: c.process.clone(),
                errors,
                last_destination: c.destination.clone(),
            });
            client_netns.push(netns);
        }
        clients.sort_by(|a, b| {
            let ta: u64 = a.errors.iter().map(|e| e.1).sum();
            let tb: u64 = b.errors.iter().map(|e| e.1).sum();
            tb.cmp(&ta).then(a.pid.cmp(&b.pid))
        });
        let mut netns: Vec<u32> = rows.iter().map(|r| r.key.netns).collect();
        netns.extend(client_netns.iter().copied());
        netns.sort_unstable();
        netns.dedup();
        let mut ports = Vec::new();
        for ns in netns {
            let Some(st) = view.agg.netns_state(ns) else {
                continue;
            };
            sysctls.entry(ns).or_insert_with(|| st.sysctls.clone());
            let errors: u64 = self
                .clients
                .iter()
                .filter(|((n, _), _)| *n == ns)
                .map(|(_, c)| c.errors.get("EADDRNOTAVAIL").copied().unwrap_or(0))
                .sum();
            let p = Ports {
                netns: ns,
                range: st.sysctls.port_range,
                time_wait: st.time_wait.unwrap_or(0),
                verdict: verdict::ports(&PortEvidence {
                    addr_not_avail: errors,
                    time_wait: st.time_wait.unwrap_or(0),
                    connected: 0,
                    tw_reuse: st.sysctls.tw_reuse,
                    settings: st.sysctls.clone(),
                }),
            };
            ports.push(p);
        }
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
}

/// The evidence a row's own numbers give, for a verdict when no report
/// brought one.
fn evidence(r: &Row, settings: Option<Sysctls>) -> ListenerEvidence {
    ListenerEvidence {
        endpoint: r.endpoint.clone(),
        process: r
            .process
            .as_ref()
            .map(|n| format!("{n} (pid {})", r.pid.unwrap_or(0))),
        queue_len: r.queue_len,
        queue_limit: r.queue_limit,
        overflows: (r.rates.overflow_syn + r.rates.overflow_ack).ceil() as u64,
        syn_queue_drops: r.rates.syn_drops.ceil() as u64,
        syncookies_sent: r.rates.cookies.ceil() as u64,
        close_wait: r.close_wait,
        accept_latency_p99_ms: r.p99_ms,
        settings: settings.unwrap_or_default(),
        ..Default::default()
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
            self.latency
                .insert((s.netns, s.port), (Instant::now(), s.p99_ns as f64 / 1e6));
        }
    }

    fn flushed(&mut self, view: &View) -> io::Result<()> {
        self.publish(view);
        Ok(())
    }
}

/// How rows are ordered.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SortBy {
    /// Drops, resets and errors per second, then queue fill, then totals.
    Trouble,
    Queue,
    Total,
    Port,
    Process,
}

impl SortBy {
    pub fn next(self) -> SortBy {
        match self {
            SortBy::Trouble => SortBy::Queue,
            SortBy::Queue => SortBy::Total,
            SortBy::Total => SortBy::Port,
            SortBy::Port => SortBy::Process,
            SortBy::Process => SortBy::Trouble,
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            SortBy::Trouble => "trouble",
            SortBy::Queue => "queue fill",
            SortBy::Total => "total drops",
            SortBy::Port => "port",
            SortBy::Process => "process",
        }
    }
}

/// Rows that pass `filter` (a port number, or part of a process name or
/// a container id; empty = all), in `sort` order.
pub fn arrange(rows: &[Row], sort: SortBy, filter: &str) -> Vec<Row> {
    let f = filter.trim().to_ascii_lowercase();
    let mut out: Vec<Row> = rows
        .iter()
        .filter(|r| {
            if f.is_empty() {
                return true;
            }
            if let Ok(port) = f.parse::<u16>() {
                if r.port == port {
                    return true;
                }
            }
            r.process
                .as_deref()
                .is_some_and(|p| p.to_ascii_lowercase().contains(&f))
                || r.container.as_deref().is_some_and(|c| c.starts_with(&f))
        })
        .cloned()
        .collect();
    let cmp_f = |a: f64, b: f64| b.partial_cmp(&a).unwrap_or(std::cmp::Ordering::Equal);
    out.sort_by(|a, b| {
        let tie = a.port.cmp(&b.port).then(a.key.cmp(&b.key));
        match sort {
            SortBy::Trouble => cmp_f(a.rates.trouble(), b.rates.trouble())
                .then(cmp_f(a.fill(), b.fill()))
                .then(cmp_f(a.totals.trouble(), b.totals.trouble()))
                .then(b.close_wait.cmp(&a.close_wait))
                .then(tie),
            SortBy::Queue => cmp_f(a.fill(), b.fill()).then(tie),
            SortBy::Total => cmp_f(a.totals.trouble(), b.totals.trouble()).then(tie),
            SortBy::Port => tie,
            SortBy::Process => a.process.cmp(&b.process).then(tie),
        }
    });
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row(port: u16, rate: f64, total: f64, fill: (u32, u32), process: &str) -> Row {
        Row {
            key: ListenerKey {
                netns: 1,
                inode: port as u32,
            },
            endpoint: format!("127.0.0.1:{port}"),
            port,
            queue_len: fill.0,
            queue_limit: fill.1,
            rates: Counts {
                overflow_syn: rate,
                ..Default::default()
            },
            totals: Counts {
                overflow_syn: total,
                ..Default::default()
            },
            p99_ms: None,
            close_wait: 0,
            close_wait_growth: 0,
            process: Some(process.into()),
            pid: Some(1),
            container: Some("abcdef12".into()),
            verdict: None,
        }
    }

    #[test]
    fn trouble_first_then_fill_then_port() {
        let rows = vec![
            row(80, 0.0, 0.0, (0, 128), "nginx"),
            row(6379, 0.0, 9.0, (2, 1), "redis-server"),
            row(9000, 4.0, 4.0, (0, 4), "myserver"),
        ];
        let ports: Vec<u16> = arrange(&rows, SortBy::Trouble, "")
            .iter()
            .map(|r| r.port)
            .collect();
        assert_eq!(ports, [9000, 6379, 80]);
        let ports: Vec<u16> = arrange(&rows, SortBy::Port, "")
            .iter()
            .map(|r| r.port)
            .collect();
        assert_eq!(ports, [80, 6379, 9000]);
        let ports: Vec<u16> = arrange(&rows, SortBy::Total, "")
            .iter()
            .map(|r| r.port)
            .collect();
        assert_eq!(ports, [6379, 9000, 80]);
    }

    #[test]
    fn filter_by_port_process_or_container() {
        let rows = vec![
            row(80, 0.0, 0.0, (0, 128), "nginx"),
            row(6379, 0.0, 0.0, (0, 1), "redis-server"),
        ];
        let only = |f: &str| -> Vec<u16> {
            arrange(&rows, SortBy::Port, f)
                .iter()
                .map(|r| r.port)
                .collect()
        };
        assert_eq!(only("6379"), [6379]);
        assert_eq!(only("REDIS"), [6379]);
        assert_eq!(only("abcd"), [80, 6379]);
        assert_eq!(only("nothing"), Vec::<u16>::new());
        assert_eq!(only(""), [80, 6379]);
    }

    #[test]
    fn fill_counts_the_extra_slot() {
        assert_eq!(row(1, 0.0, 0.0, (2, 1), "x").fill(), 1.0);
        assert_eq!(row(1, 0.0, 0.0, (1, 0), "x").fill(), 1.0);
        assert_eq!(row(1, 0.0, 0.0, (0, 0), "x").fill(), 0.0);
        assert!((row(1, 0.0, 0.0, (64, 127), "x").fill() - 0.5).abs() < 1e-9);
    }

    #[test]
    fn port_headroom() {
        let p = Ports {
            netns: 1,
            range: Some((40000, 40003)),
            time_wait: 3,
            verdict: None,
        };
        assert_eq!((p.size(), p.left()), (4, 1));
    }
}

//! Prometheus metrics: a small registry, the text exposition format 0.0.4
//! and the HTTP server for `GET /metrics` (hyper, hardened against idle
//! connections and slow clients: see the constants below).
//!
//! The registry is hand-written rather than a crate: families are dynamic (a new event kind
//! shows up as a new family without code changes), memory must stay bounded
//! on an agent that runs for weeks while label sets churn, and the format is
//! small.
//!
//! Bounds, per family:
//! - at most `max_series` real series; a NEW label set beyond that is folded
//!   into one overflow series (same label names, every value `"overflow"`,
//!   not counted in `max_series`), so family sums stay exact for `inc`,
//!   `observe` and `replace_gauges` (the sum of folded values). `set` and
//!   `set_counter` cannot be exact there: the overflow gauge holds the last
//!   folded value, the overflow counter the largest. A lowered limit applies
//!   to new label sets; existing series stay until they expire or are replaced.
//! - counter and histogram series (the overflow one too, same rule) not
//!   updated for `ttl` are dropped by [`Registry::expire`]; a label set that
//!   comes back restarts at zero, which Prometheus reads as a counter reset.
//!   Gauges do not expire: `replace_gauges` replaces them whole.

use std::collections::{BTreeMap, HashMap};
use std::convert::Infallible;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use anyhow::anyhow;
use bytes::Bytes;
use http_body_util::Full;
use hyper::body::{Body, Frame, Incoming, SizeHint};
use hyper::header::{self, HeaderValue};
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Notify;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Type {
    Counter,
    Gauge,
    Histogram,
}

/// Label names and values in a fixed order (names are static, valid Prometheus label names).
pub type Labels = Vec<(&'static str, String)>;

enum Value {
    Counter(u64),
    Gauge(f64),
    /// Per-bucket counts (not cumulative), the last one above the last bound.
    Histogram(Vec<u64>, f64),
}

struct Series {
    value: Value,
    touched: Instant,
    /// Not scraped yet: a counter or histogram shows 0 at its first scrape,
    /// so `rate()`/`increase()` see its first events (a series appearing
    /// with N already in it would hide them).
    fresh: bool,
}

struct Family {
    help: String,
    ty: Type,
    /// Histograms: upper bounds without +Inf, fixed at the first `observe`.
    bounds: Option<Vec<f64>>,
    series: BTreeMap<Labels, Series>,
    overflow: Option<(Labels, Series)>,
}

fn new_series(ty: Type, bounds: &Option<Vec<f64>>, touched: Instant) -> Series {
    let value = match ty {
        Type::Counter => Value::Counter(0),
        Type::Gauge => Value::Gauge(0.0),
        Type::Histogram => Value::Histogram(vec![0; bounds.as_ref().map_or(0, Vec::len) + 1], 0.0),
    };
    Series {
        value,
        touched,
        fresh: ty != Type::Gauge,
    }
}

type Families = BTreeMap<String, Family>;

pub struct Registry {
    families: Families,
    max_series: usize,
    ttl: Duration,
    overflowed: u64,
}

fn overflow_labels(labels: &Labels) -> Labels {
    labels
        .iter()
        .map(|(n, _)| (*n, "overflow".to_string()))
        .collect()
}

/// `[a-zA-Z_:][a-zA-Z0-9_:]*`, without ':' for label names.
fn valid_name(name: &str, colon: bool) -> bool {
    let ok = |c: char| c.is_ascii_alphanumeric() || c == '_' || (colon && c == ':');
    !name.starts_with(|c: char| c.is_ascii_digit()) && !name.is_empty() && name.chars().all(ok)
}

/// The family `name` if it was described as `ty` (else a debug assertion).
fn family<'a>(fams: &'a mut Families, name: &str, ty: Type) -> Option<&'a mut Family> {
    let fam = fams.get_mut(name).filter(|f| f.ty == ty);
    debug_assert!(fam.is_some(), "metric {name} is not described as a {ty:?}");
    fam
}

/// One series' value, for exporters other than the text format.
pub enum Sample<'a> {
    Counter(u64),
    Gauge(f64),
    /// Per-bucket counts (not cumulative; the last above every bound).
    Histogram {
        bounds: &'a [f64],
        counts: &'a [u64],
        sum: f64,
    },
}

impl Registry {
    /// Every family in name order: once with `None` (the family itself,
    /// also when it has no series), then once per series, overflow series
    /// included.
    pub fn visit(&self, mut f: impl FnMut(&str, &str, Type, Option<&Labels>, Sample)) {
        for (name, fam) in &self.families {
            f(name, &fam.help, fam.ty, None, Sample::Gauge(0.0));
            let overflow = fam.overflow.iter().map(|(l, s)| (l, s));
            for (labels, s) in fam.series.iter().chain(overflow) {
                let sample = match &s.value {
                    Value::Counter(c) => Sample::Counter(*c),
                    Value::Gauge(g) => Sample::Gauge(*g),
                    Value::Histogram(counts, sum) => Sample::Histogram {
                        bounds: fam.bounds.as_deref().unwrap_or(&[]),
                        counts,
                        sum: *sum,
                    },
                };
                f(name, &fam.help, fam.ty, Some(labels), sample);
            }
        }
    }

    /// `max_series` real series per family, `ttl` for counters and histograms.
    pub fn new(max_series: usize, ttl: Duration) -> Self {
        Registry {
            families: BTreeMap::new(),
            max_series,
            ttl,
            overflowed: 0,
        }
    }

    /// Config reload; see the module doc for how a lowered cap applies.
    pub fn set_limits(&mut self, max_series: usize, ttl: Duration) {
        (self.max_series, self.ttl) = (max_series, ttl);
    }

    /// Declares a family; families render in name order. Counters end in
    /// `_total`. Idempotent (the first help/type stay); an invalid name is a
    /// debug assertion, ignored in release.
    pub fn describe(&mut self, name: &str, help: &str, ty: Type) {
        let ok = valid_name(name, true) && (ty != Type::Counter || name.ends_with("_total"));
        debug_assert!(ok, "bad metric name {name:?} for a {ty:?}");
        if ok && !self.families.contains_key(name) {
            let fam = Family {
                help: help.into(),
                ty,
                bounds: None,
                series: BTreeMap::new(),
                overflow: None,
            };
            self.families.insert(name.into(), fam);
        }
    }

    /// The value of series `labels`: the existing one, a new one while under
    /// the cap, else the family's overflow series.
    fn slot(&mut self, name: &str, ty: Type, labels: &Labels) -> Option<&mut Value> {
        let fam = family(&mut self.families, name, ty)?;
        let label_ok = |(n, _): &(&str, String)| valid_name(n, false) && *n != "le";
        debug_assert!(labels.iter().all(label_ok), "{name}: bad label name");
        let now = Instant::now();
        if !fam.series.contains_key(labels) && fam.series.len() < self.max_series {
            let fresh = new_series(fam.ty, &fam.bounds, now);
            fam.series.insert(labels.clone(), fresh);
        }
        let series = match fam.series.get_mut(labels) {
            Some(s) => s,
            None => {
                self.overflowed += 1;
                let fresh = new_series(fam.ty, &fam.bounds, now);
                let overflow = fam
                    .overflow
                    .get_or_insert_with(|| (overflow_labels(labels), fresh));
                &mut overflow.1
            }
        };
        series.touched = now;
        Some(&mut series.value)
    }

    /// Counter += v. Undescribed names: debug assertion, ignored in release.
    pub fn inc(&mut self, name: &str, labels: &Labels, v: u64) {
        if let Some(Value::Counter(c)) = self.slot(name, Type::Counter, labels) {
            *c = c.saturating_add(v);
        }
    }

    /// Counter set from an absolute total elsewhere; never goes down.
    pub fn set_counter(&mut self, name: &str, labels: &Labels, v: u64) {
        if let Some(Value::Counter(c)) = self.slot(name, Type::Counter, labels) {
            *c = (*c).max(v);
        }
    }

    /// Gauge value for one series.
    pub fn set(&mut self, name: &str, labels: &Labels, v: f64) {
        if let Some(g) = self.slot(name, Type::Gauge, labels) {
            *g = Value::Gauge(v);
        }
    }

    /// Replaces every series of a gauge family (capped; the overflow series
    /// holds the sum of the folded values). Label sets that exist already
    /// keep their real series first, so a listener does not flip between
    /// real and overflow from round to round.
    pub fn replace_gauges(&mut self, name: &str, series: Vec<(Labels, f64)>) {
        let Some(fam) = family(&mut self.families, name, Type::Gauge) else {
            return;
        };
        let touched = Instant::now();
        let gauge = |v| Series {
            value: Value::Gauge(v),
            touched,
            fresh: false,
        };
        let old = std::mem::take(&mut fam.series);
        let (known, new): (Vec<_>, Vec<_>) =
            series.into_iter().partition(|(l, _)| old.contains_key(l));
        let mut overflow: Option<(Labels, f64)> = None;
        for (labels, v) in known.into_iter().chain(new) {
            if fam.series.len() < self.max_series || fam.series.contains_key(&labels) {
                fam.series.insert(labels, gauge(v));
            } else {
                self.overflowed += 1;
                let sum = overflow.get_or_insert_with(|| (overflow_labels(&labels), 0.0));
                sum.1 += v;
            }
        }
        fam.overflow = overflow.map(|(l, v)| (l, gauge(v)));
    }

    /// `bounds`: upper bounds without +Inf, fixed at first use; `counts`: per
    /// bucket (not cumulative), bounds.len() + 1 of them; `sum` adds to _sum.
    /// Bounds or counts that do not fit: debug assertion, ignored in release.
    pub fn observe(
        &mut self,
        name: &str,
        labels: &Labels,
        bounds: &[f64],
        counts: &[u64],
        sum: f64,
    ) {
        let Some(fam) = family(&mut self.families, name, Type::Histogram) else {
            return;
        };
        let ascending = bounds.windows(2).all(|w| w[0] < w[1]);
        let fixed = fam.bounds.get_or_insert_with(|| bounds.to_vec());
        let ok = ascending && fixed == bounds && counts.len() == bounds.len() + 1;
        debug_assert!(
            ok,
            "{name}: bounds not ascending or changed, or bad counts.len()"
        );
        if !ok {
            return;
        }
        if let Some(Value::Histogram(have, s)) = self.slot(name, Type::Histogram, labels) {
            for (h, c) in have.iter_mut().zip(counts) {
                *h = h.saturating_add(*c);
            }
            *s += sum;
        }
    }

    /// Drops counter and histogram series not updated for `ttl` (ttl 0: all).
    pub fn expire(&mut self, now: Instant) {
        let fresh = |s: &Series| now.saturating_duration_since(s.touched) < self.ttl;
        for fam in self.families.values_mut().filter(|f| f.ty != Type::Gauge) {
            fam.series.retain(|_, s| fresh(s));
            fam.overflow = fam.overflow.take().filter(|(_, s)| fresh(s));
        }
    }

    /// Series in all families, overflow series included.
    pub fn series(&self) -> usize {
        let per_family = |f: &Family| f.series.len() + usize::from(f.overflow.is_some());
        self.families.values().map(per_family).sum()
    }

    /// Updates (and replaced gauge values) folded into overflow series so far.
    pub fn overflowed(&self) -> u64 {
        self.overflowed
    }

    /// Text exposition format 0.0.4.
    /// The values as they are (tests).
    #[cfg(test)]
    pub fn render(&self) -> String {
        self.render_with(false)
    }

    /// What a scrape gets: new counter and histogram series at 0 (see
    /// `Series::fresh`), with their values from the next scrape on.
    pub fn render_scrape(&mut self) -> String {
        let text = self.render_with(true);
        for fam in self.families.values_mut() {
            let overflow = fam.overflow.iter_mut().map(|(_, s)| s);
            for s in fam.series.values_mut().chain(overflow) {
                s.fresh = false;
            }
        }
        text
    }

    fn render_with(&self, zero_fresh: bool) -> String {
        let mut out = String::with_capacity(4096);
        for (name, fam) in &self.families {
            let ty = match fam.ty {
                Type::Counter => "counter",
                Type::Gauge => "gauge",
                Type::Histogram => "histogram",
            };
            let help = escape(&fam.help, false);
            out += &format!("# HELP {name} {help}\n# TYPE {name} {ty}\n");
            let overflow = fam.overflow.iter().map(|(l, s)| (l, s));
            for (labels, s) in fam.series.iter().chain(overflow) {
                let mut line = |suffix, le: Option<&str>, value: &str| {
                    sample(&mut out, name, suffix, labels, le, value)
                };
                let zero = zero_fresh && s.fresh;
                match &s.value {
                    Value::Counter(_) if zero => line("", None, "0"),
                    Value::Counter(c) => line("", None, &c.to_string()),
                    Value::Gauge(g) => line("", None, &fmt_f64(*g)),
                    Value::Histogram(counts, sum) => {
                        let mut cum = 0u64;
                        let sum = if zero { 0.0 } else { *sum };
                        for (i, c) in counts.iter().enumerate() {
                            cum = cum.saturating_add(if zero { 0 } else { *c });
                            let le = fam.bounds.iter().flatten().nth(i);
                            let le = le.map_or("+Inf".into(), |b| fmt_f64(*b));
                            line("_bucket", Some(&le), &cum.to_string());
                        }
                        line("_sum", None, &fmt_f64(sum));
                        line("_count", None, &cum.to_string());
                    }
                }
            }
        }
        out
    }
}

/// Escapes `\` and newline, and `"` too in label values.
fn escape(s: &str, quote: bool) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '"' if quote => out.push_str("\\\""),
            c => out.push(c),
        }
    }
    out
}

/// One sample line; labels with an empty value are left out.
fn sample(out: &mut String, name: &str, suffix: &str, labels: &Labels, le: Option<&str>, v: &str) {
    let le = le.map(|le| ("le", le.to_string()));
    let mut pairs = labels.iter().chain(&le).filter(|(_, v)| !v.is_empty());
    let mut line = format!("{name}{suffix}");
    if let Some((n, v)) = pairs.next() {
        line += &format!("{{{n}=\"{}\"", escape(v, true));
        pairs.for_each(|(n, v)| line += &format!(",{n}=\"{}\"", escape(v, true)));
        line.push('}');
    }
    *out += &format!("{line} {v}\n");
}

fn fmt_f64(v: f64) -> String {
    match v {
        _ if v.is_nan() => "NaN".into(),
        f64::INFINITY => "+Inf".into(),
        f64::NEG_INFINITY => "-Inf".into(),
        _ if v.fract() == 0.0 && v.abs() < 1e15 => (v as i64).to_string(),
        _ => format!("{v:?}"), // shortest round-trip repr, exponent when very large/small
    }
}

/// A request header larger than this gets 431.
const MAX_HEAD: usize = 8 * 1024;
/// A request header must arrive whole within this (a slowloris is cut here).
const HEADER_TIMEOUT: Duration = Duration::from_secs(2);
/// A connection with no request in progress and nothing written for this
/// long is closed: an idle keep-alive, or a header that never completes.
const IDLE_TIMEOUT: Duration = Duration::from_secs(2);
/// Every connection is asked to close after this (the request in progress
/// is finished), and closed [`CLOSE_GRACE`] later whatever it is doing: a
/// client that reads its response slowly cannot keep a slot either.
const MAX_LIFETIME: Duration = Duration::from_secs(10);
const CLOSE_GRACE: Duration = Duration::from_secs(5);
/// Open connections at most (fewer when the descriptor limit is low: half
/// of it, the rest stays for the agent's own work). A new connection beyond
/// this closes the oldest idle one, so a fresh scrape always gets in.
const MAX_CONNECTIONS: usize = 4096;
const CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

/// One open connection, as the accept loop sees it.
struct Slot {
    /// In order of arrival.
    id: u64,
    /// Milliseconds from `Conns::epoch` to the last request start, request
    /// end or successful write.
    last: AtomicU64,
    /// Requests whose response has not been sent whole yet.
    in_flight: AtomicU32,
    close: Notify,
}

struct Conns {
    epoch: Instant,
    max: usize,
    next_id: u64,
    open: HashMap<u64, Arc<Slot>>,
}

impl Conns {
    fn new(max: usize) -> Self {
        let (epoch, next_id, open) = (Instant::now(), 0, HashMap::new());
        Conns {
            epoch,
            max,
            next_id,
            open,
        }
    }

    fn now_ms(epoch: Instant) -> u64 {
        epoch.elapsed().as_millis() as u64
    }

    /// Tracks a new connection, closing the oldest idle ones first while
    /// at the cap (else the oldest ones: the newest always gets in).
    fn admit(&mut self) -> Arc<Slot> {
        while self.open.len() >= self.max.max(1) && self.evict() {}
        self.next_id += 1;
        let slot = Arc::new(Slot {
            id: self.next_id,
            last: AtomicU64::new(Self::now_ms(self.epoch)),
            in_flight: AtomicU32::new(0),
            close: Notify::new(),
        });
        self.open.insert(slot.id, slot.clone());
        slot
    }

    /// Closes the connection idle the longest, or if every one is busy,
    /// the oldest. False when none is open.
    fn evict(&mut self) -> bool {
        let idle = self
            .open
            .values()
            .filter(|s| s.in_flight.load(Relaxed) == 0)
            .min_by_key(|s| (s.last.load(Relaxed), s.id));
        let victim = idle.or_else(|| self.open.values().min_by_key(|s| s.id));
        let Some(id) = victim.map(|s| s.id) else {
            return false;
        };
        if let Some(s) = self.open.remove(&id) {
            s.close.notify_one();
        }
        true
    }
}

fn lock(conns: &Mutex<Conns>) -> std::sync::MutexGuard<'_, Conns> {
    conns.lock().unwrap_or_else(|p| p.into_inner())
}

/// The soft RLIMIT_NOFILE.
fn fd_limit() -> u64 {
    let mut r = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit writes into the struct we pass.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut r) } != 0 {
        return 1024;
    }
    r.rlim_cur
}

/// Raises the soft RLIMIT_NOFILE to the hard one, so the /metrics server
/// can hold its connections beside the agent's own descriptors.
pub fn raise_fd_limit() {
    let mut r = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit/setrlimit read and write the struct we pass.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut r) == 0 && r.rlim_cur < r.rlim_max {
            r.rlim_cur = r.rlim_max;
            libc::setrlimit(libc::RLIMIT_NOFILE, &r);
        }
    }
}

/// Serves GET/HEAD `/metrics` and `/` over HTTP/1.x (hyper), keep-alive
/// included. Each connection runs in its own task; the accept loop does
/// nothing else, so the listener's queue never backs up. Never returns:
/// abort its task to stop it (open connections close within
/// `MAX_LIFETIME + CLOSE_GRACE`).
pub async fn serve(listener: TcpListener, registry: Arc<Mutex<Registry>>) {
    let limits = Limits {
        max: MAX_CONNECTIONS.min((fd_limit() / 2) as usize).max(16),
        lifetime: MAX_LIFETIME,
        grace: CLOSE_GRACE,
    };
    serve_with(listener, registry, limits).await
}

/// The /metrics server's own families: whoever scrapes sees a flood.
const OPEN: &str = "tcpq_http_connections";
const CLOSED: &str = "tcpq_http_connections_closed_total";
const ACCEPT_ERRORS: &str = "tcpq_http_accept_errors_total";

/// The reasons of `CLOSED`, and their indices.
const REASONS: [&str; 3] = ["timeout", "evicted", "lifetime"];
const TIMEOUT: usize = 0;
const EVICTED: usize = 1;
const LIFETIME: usize = 2;

/// What every connection task shares.
struct Server {
    conns: Mutex<Conns>,
    registry: Arc<Mutex<Registry>>,
    http: http1::Builder,
    /// Per `REASONS`; into the registry at each scrape (a flood's closes
    /// do not contend for its lock).
    closed: [AtomicU64; 3],
    accept_errors: AtomicU64,
    limits: Limits,
}

/// What a connection may hold: `max` of them at once, each for `lifetime`
/// (+ `grace` to finish).
#[derive(Clone, Copy)]
struct Limits {
    max: usize,
    lifetime: Duration,
    grace: Duration,
}

async fn serve_with(listener: TcpListener, registry: Arc<Mutex<Registry>>, limits: Limits) {
    {
        let mut r = registry.lock().unwrap_or_else(|p| p.into_inner());
        let help = "Connections open to the /metrics server.";
        r.describe(OPEN, help, Type::Gauge);
        let help = "Connections the /metrics server closed on its own, by reason: timeout (no whole request header within 2 s, or idle 2 s), evicted (the oldest idle one, for a new connection at the cap), lifetime (open 10 s).";
        r.describe(CLOSED, help, Type::Counter);
        let help = "accept() failures of the /metrics listener (EMFILE: out of file descriptors; the oldest idle connection is closed to make room).";
        r.describe(ACCEPT_ERRORS, help, Type::Counter);
    }
    let mut http = http1::Builder::new();
    http.timer(TokioTimer::new())
        .header_read_timeout(HEADER_TIMEOUT)
        .max_buf_size(2 * MAX_HEAD)
        .max_header_size(MAX_HEAD)
        // A client may shut down its side after the request (`printf ... | nc`).
        .half_close(true);
    let server = Arc::new(Server {
        conns: Mutex::new(Conns::new(limits.max)),
        registry,
        http,
        closed: Default::default(),
        accept_errors: AtomicU64::new(0),
        limits,
    });
    loop {
        let stream = match listener.accept().await {
            Ok((stream, _)) => stream,
            Err(e) => {
                server.accept_errors.fetch_add(1, Relaxed);
                // Out of descriptors: free one by closing the oldest idle
                // connection (its task runs before the retry). Else, or
                // another transient error: retry soon, without spinning.
                let emfile = matches!(e.raw_os_error(), Some(libc::EMFILE | libc::ENFILE));
                if emfile && lock(&server.conns).evict() {
                    tokio::task::yield_now().await;
                } else {
                    tokio::time::sleep(Duration::from_millis(10)).await;
                }
                continue;
            }
        };
        let _ = stream.set_nodelay(true);
        let slot = {
            let mut conns = lock(&server.conns);
            // The descriptor limit may be lowered under the agent (prlimit):
            // the cap follows it.
            conns.max = limits.max.min((fd_limit() / 2) as usize);
            conns.admit()
        };
        tokio::spawn(connection(stream, slot, server.clone()));
    }
}

async fn connection(stream: TcpStream, slot: Arc<Slot>, server: Arc<Server>) {
    // Until its first byte a connection costs its task and socket only
    // (hyper's buffers, 16 KiB, come with the request): a flood of idle
    // connections stays small.
    let mut byte = [0u8; 1];
    let first = tokio::select! {
        // (readable() returns at once on a new socket; peek waits for data.)
        r = stream.peek(&mut byte) => matches!(r, Ok(1..)),
        _ = slot.close.notified() => return closed(&server, &slot, Some(EVICTED)),
        _ = tokio::time::sleep(IDLE_TIMEOUT) => return closed(&server, &slot, Some(TIMEOUT)),
    };
    if !first {
        return closed(&server, &slot, None); // EOF or an error before a byte
    }
    let reason = http(stream, &slot, &server).await;
    closed(&server, &slot, reason);
}

/// Forgets a closed connection; `reason`: why the server closed it (an
/// index into `REASONS`), None when the client did.
fn closed(server: &Server, slot: &Slot, reason: Option<usize>) {
    lock(&server.conns).open.remove(&slot.id);
    if let Some(reason) = reason {
        server.closed[reason].fetch_add(1, Relaxed);
    }
}

/// Serves HTTP on the connection until it ends; why the server closed
/// it, if it did.
async fn http(stream: TcpStream, slot: &Arc<Slot>, server: &Arc<Server>) -> Option<usize> {
    let epoch = lock(&server.conns).epoch;
    let io = TokioIo::new(Tracked {
        stream,
        slot: slot.clone(),
        epoch,
    });
    let (svc_slot, svc_server) = (slot.clone(), server.clone());
    let svc = service_fn(move |req: Request<Incoming>| {
        svc_slot.in_flight.fetch_add(1, Relaxed);
        svc_slot.last.store(Conns::now_ms(epoch), Relaxed);
        let body = Done {
            inner: Full::new(Bytes::new()),
            slot: svc_slot.clone(),
            epoch,
        };
        let resp = route(&req, &svc_server, body);
        std::future::ready(Ok::<_, Infallible>(resp))
    });
    let conn = server.http.serve_connection(io, svc);
    tokio::pin!(conn);
    let lifetime = tokio::time::sleep(server.limits.lifetime);
    tokio::pin!(lifetime);
    loop {
        // While a request is in progress there is nothing to check until
        // it ends; then IDLE_TIMEOUT from its end.
        let idle_at = match slot.in_flight.load(Relaxed) {
            0 => epoch + Duration::from_millis(slot.last.load(Relaxed)) + IDLE_TIMEOUT,
            _ => Instant::now() + IDLE_TIMEOUT,
        };
        let idle_at = tokio::time::Instant::from_std(idle_at);
        tokio::select! {
            done = &mut conn => break done.err().filter(|e| e.is_timeout()).map(|_| TIMEOUT),
            _ = slot.close.notified() => break Some(EVICTED),
            _ = tokio::time::sleep_until(idle_at) => {
                let last = Duration::from_millis(slot.last.load(Relaxed));
                let idle = slot.in_flight.load(Relaxed) == 0;
                if idle && epoch.elapsed() >= last + IDLE_TIMEOUT {
                    break Some(TIMEOUT);
                }
            }
            _ = &mut lifetime => {
                conn.as_mut().graceful_shutdown();
                let _ = tokio::time::timeout(server.limits.grace, &mut conn).await;
                break Some(LIFETIME);
            }
        }
    }
}

/// The socket, marking every successful write as activity (a slow but
/// live reader of a large response is not idle).
struct Tracked {
    stream: TcpStream,
    slot: Arc<Slot>,
    epoch: Instant,
}

impl Tracked {
    fn wrote<T>(&self, r: Poll<io::Result<T>>) -> Poll<io::Result<T>> {
        if let Poll::Ready(Ok(_)) = r {
            self.slot.last.store(Conns::now_ms(self.epoch), Relaxed);
        }
        r
    }
}

impl AsyncRead for Tracked {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.stream).poll_read(cx, buf)
    }
}

impl AsyncWrite for Tracked {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let r = Pin::new(&mut self.stream).poll_write(cx, buf);
        self.wrote(r)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let r = Pin::new(&mut self.stream).poll_write_vectored(cx, bufs);
        self.wrote(r)
    }

    fn is_write_vectored(&self) -> bool {
        self.stream.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.stream).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.stream).poll_shutdown(cx)
    }
}

/// A response body that marks its request done when hyper drops it (sent
/// whole, or the connection went away).
struct Done {
    inner: Full<Bytes>,
    slot: Arc<Slot>,
    epoch: Instant,
}

impl Drop for Done {
    fn drop(&mut self) {
        self.slot.last.store(Conns::now_ms(self.epoch), Relaxed);
        self.slot.in_flight.fetch_sub(1, Relaxed);
    }
}

impl Body for Done {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        Pin::new(&mut self.inner).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

fn route(req: &Request<Incoming>, server: &Server, body: Done) -> Response<Done> {
    let reply = |status: StatusCode, ctype: &'static str, text: String, mut body: Done| {
        body.inner = Full::new(Bytes::from(text));
        let mut resp = Response::new(body);
        *resp.status_mut() = status;
        resp.headers_mut()
            .insert(header::CONTENT_TYPE, HeaderValue::from_static(ctype));
        resp
    };
    let plain = |status: StatusCode, body| {
        let text = format!("{status}\n");
        reply(status, "text/plain", text, body)
    };
    let (get, head) = (req.method() == Method::GET, req.method() == Method::HEAD);
    match req.uri().path() {
        "/metrics" | "/" if !get && !head => {
            let mut resp = plain(StatusCode::METHOD_NOT_ALLOWED, body);
            let allow = HeaderValue::from_static("GET, HEAD");
            resp.headers_mut().insert(header::ALLOW, allow);
            resp
        }
        "/metrics" => {
            let open = lock(&server.conns).open.len();
            let mut r = server.registry.lock().unwrap_or_else(|p| p.into_inner());
            r.set(OPEN, &vec![], open as f64);
            for (reason, n) in REASONS.iter().zip(&server.closed) {
                let labels = vec![("reason", reason.to_string())];
                r.set_counter(CLOSED, &labels, n.load(Relaxed));
            }
            r.set_counter(ACCEPT_ERRORS, &vec![], server.accept_errors.load(Relaxed));
            let text = r.render_scrape();
            drop(r);
            reply(StatusCode::OK, CONTENT_TYPE, text, body)
        }
        "/" => {
            let text = "<html><body>tcpq-agent: <a href=\"/metrics\">/metrics</a></body></html>\n";
            reply(
                StatusCode::OK,
                "text/html; charset=utf-8",
                text.into(),
                body,
            )
        }
        _ => plain(StatusCode::NOT_FOUND, body),
    }
}

/// The listen backlog (the kernel caps it at net.core.somaxconn): a burst
/// of connections waits for accept() instead of being dropped (the
/// default, 128, overflowed under a reconnecting flood).
const BACKLOG: u32 = 4096;

/// Listens on the first address that works, like `TcpListener::bind`, with
/// a longer backlog.
fn listen(addrs: Vec<SocketAddr>) -> io::Result<TcpListener> {
    let mut last = io::Error::new(
        io::ErrorKind::InvalidInput,
        "could not resolve to any address",
    );
    for sa in addrs {
        let socket = match sa {
            SocketAddr::V4(_) => tokio::net::TcpSocket::new_v4(),
            SocketAddr::V6(_) => tokio::net::TcpSocket::new_v6(),
        };
        let listener = socket.and_then(|s| {
            s.set_reuseaddr(true)?;
            s.bind(sa)?;
            s.listen(BACKLOG)
        });
        match listener {
            Ok(l) => return Ok(l),
            Err(e) => last = e,
        }
    }
    Err(last)
}

/// Binds IP:PORT, [IPv6]:PORT or NAME:PORT (resolved); errors are one line
/// naming the address.
pub async fn bind(addr: &str) -> anyhow::Result<TcpListener> {
    let (host, port) = addr.rsplit_once(':').unwrap_or_default();
    let port = port.parse::<u16>().ok();
    let name = |c: char| c.is_ascii_alphanumeric() || c == '-' || c == '.';
    let bound = match addr.parse::<SocketAddr>() {
        Ok(sa) => listen(vec![sa]),
        Err(_) if port.is_some() && !host.is_empty() && host.chars().all(name) => {
            match tokio::net::lookup_host(addr).await {
                Ok(addrs) => listen(addrs.collect()),
                Err(e) => Err(e),
            }
        }
        Err(_) => return Err(anyhow!("metrics address `{addr}`: expected HOST:PORT")),
    };
    bound.map_err(|e| {
        let reason = match e.kind() {
            io::ErrorKind::AddrInUse => "address already in use".to_string(),
            io::ErrorKind::AddrNotAvailable => "address not available on this host".to_string(),
            io::ErrorKind::PermissionDenied if port.is_some_and(|p| p < 1024) => {
                "permission denied (ports below 1024 need CAP_NET_BIND_SERVICE)".to_string()
            }
            _ => e.to_string().to_lowercase(),
        };
        anyhow!("metrics address {addr}: {reason}")
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const DROPS: &str = "tcpq_drops_total";
    const LAT: &str = "tcpq_accept_latency_seconds";
    const BOUNDS: &[f64] = &[0.001, 0.1, 1.0];

    fn port(p: &str) -> Labels {
        vec![("port", p.into())]
    }

    fn drop_labels(p: &str, reason: &str) -> Labels {
        vec![("port", p.into()), ("reason", reason.into())]
    }

    fn sample_registry() -> Registry {
        let mut r = Registry::new(10, Duration::from_secs(60));
        r.describe(DROPS, "Dropped SYNs.\nBy \\reason", Type::Counter);
        r.describe("tcpq_backlog", "Accept queue length.", Type::Gauge);
        r.describe(LAT, "Accept latency.", Type::Histogram);
        r.describe("tcpq_empty_total", "Nothing yet.", Type::Counter);
        r.describe("tcpq_up", "Agent running.", Type::Gauge);
        r.describe("tcpq_up", "ignored", Type::Gauge);
        r.inc(DROPS, &drop_labels("80", "full"), 2);
        r.inc(DROPS, &drop_labels("443", "a\"b\\c\nd"), 1);
        r.inc(DROPS, &drop_labels("80", "full"), 3);
        let no_comm = vec![("port", "22".into()), ("comm", "".into())];
        r.set("tcpq_backlog", &no_comm, 1.5);
        r.observe(LAT, &port("80"), BOUNDS, &[1, 2, 0, 4], 9.5);
        r.observe(LAT, &port("80"), BOUNDS, &[0, 1, 0, 0], 0.25);
        r.set("tcpq_up", &vec![], 1.0);
        r
    }

    #[test]
    fn render_exact() {
        let want = r#"# HELP tcpq_accept_latency_seconds Accept latency.
# TYPE tcpq_accept_latency_seconds histogram
tcpq_accept_latency_seconds_bucket{port="80",le="0.001"} 1
tcpq_accept_latency_seconds_bucket{port="80",le="0.1"} 4
tcpq_accept_latency_seconds_bucket{port="80",le="1"} 4
tcpq_accept_latency_seconds_bucket{port="80",le="+Inf"} 8
tcpq_accept_latency_seconds_sum{port="80"} 9.75
tcpq_accept_latency_seconds_count{port="80"} 8
# HELP tcpq_backlog Accept queue length.
# TYPE tcpq_backlog gauge
tcpq_backlog{port="22"} 1.5
# HELP tcpq_drops_total Dropped SYNs.\nBy \\reason
# TYPE tcpq_drops_total counter
tcpq_drops_total{port="443",reason="a\"b\\c\nd"} 1
tcpq_drops_total{port="80",reason="full"} 5
# HELP tcpq_empty_total Nothing yet.
# TYPE tcpq_empty_total counter
# HELP tcpq_up Agent running.
# TYPE tcpq_up gauge
tcpq_up 1
"#;
        assert_eq!(sample_registry().render(), want);
        const INF: f64 = f64::INFINITY;
        let floats = [5.0, -0.0, 0.25, 1e20, 1e-7, f64::NAN, INF, -INF];
        let want = ["5", "0", "0.25", "1e20", "1e-7", "NaN", "+Inf", "-Inf"];
        assert_eq!(floats.map(fmt_f64), want);
    }

    #[test]
    fn cap_folds_into_overflow() {
        let mut r = Registry::new(2, Duration::from_secs(60));
        r.describe("x_total", "x", Type::Counter);
        for (i, p) in ["1", "2", "3", "1", "3"].iter().enumerate() {
            r.inc("x_total", &drop_labels(p, "k"), i as u64 + 1);
        }
        assert_eq!((r.series(), r.overflowed()), (3, 2));
        let text = r.render();
        assert!(text.contains("x_total{port=\"overflow\",reason=\"overflow\"} 8\n"));
        let value = |s: &str| s.rsplit(' ').next().unwrap().parse::<u64>().unwrap();
        let sum: u64 = text
            .lines()
            .filter(|s| !s.starts_with('#'))
            .map(value)
            .sum();
        assert_eq!(sum, 1 + 2 + 3 + 4 + 5);

        r.describe("g", "g", Type::Gauge);
        r.replace_gauges("g", ["a", "b", "c", "d"].map(|p| (port(p), 1.5)).into());
        assert!(r.render().contains("g{port=\"overflow\"} 3\n"));
        assert_eq!(r.overflowed(), 4);
        // Label sets seen before keep their real series.
        r.replace_gauges("g", vec![(port("z"), 1.0), (port("b"), 2.0)]);
        let text = r.render();
        assert!(text.contains("gauge\ng{port=\"b\"} 2\ng{port=\"z\"} 1\n# HELP"));
    }

    #[test]
    fn expire_replace_set_counter() {
        let mut r = sample_registry();
        r.expire(Instant::now());
        assert_eq!(r.series(), 5);
        r.expire(Instant::now() + Duration::from_secs(61));
        assert_eq!(r.series(), 2); // gauges stay
        r.set_limits(10, Duration::ZERO);
        r.inc(DROPS, &port("1"), 1);
        r.expire(Instant::now());
        assert_eq!(r.series(), 2);
        r.replace_gauges("tcpq_backlog", vec![]);
        assert_eq!(r.series(), 1);
        assert!(r.render().contains("# TYPE tcpq_backlog gauge\n# HELP"));
        for v in [5, 3, 7, 6] {
            r.set_counter("tcpq_empty_total", &vec![], v);
        }
        assert!(r.render().contains("\ntcpq_empty_total 7\n"));
    }

    async fn get(addr: SocketAddr, req: &[u8]) -> String {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let mut s = TcpStream::connect(addr).await.unwrap();
        s.write_all(req).await.unwrap();
        s.shutdown().await.unwrap(); // the server sees EOF after the request
        let mut out = Vec::new();
        s.read_to_end(&mut out).await.unwrap();
        String::from_utf8(out).unwrap()
    }

    #[tokio::test]
    async fn serves_metrics() {
        let listener = bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let mut fresh = sample_registry();
        let first = fresh.render_scrape();
        let series = format!("{DROPS}{{port=\"80\",reason=\"full\"}}");
        assert!(first.contains(&format!("{series} 0\n")), "{first}");
        assert!(fresh.render().contains(&format!("{series} 5\n")));
        assert_eq!(
            fresh.render_scrape(),
            fresh.render(),
            "values from the second scrape on"
        );
        let reg = Arc::new(Mutex::new(sample_registry()));
        reg.lock().unwrap().render_scrape();
        let task = tokio::spawn(serve(listener, reg.clone()));
        let resp = get(addr, b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n").await;
        let (head, body) = resp.split_once("\r\n\r\n").unwrap();
        assert!(head.starts_with("HTTP/1.1 200 OK\r\n"), "{head}");
        let head = head.to_ascii_lowercase();
        assert!(head.contains("\r\ncontent-type: text/plain; version=0.0.4; charset=utf-8\r\n"));
        assert!(head.contains(&format!("\r\ncontent-length: {}\r\n", body.len())));
        assert_eq!(body, reg.lock().unwrap().render());
        let big = [b"GET /metrics HTTP/1.1\r\nX: ".as_slice(), &[b'a'; 9000]].concat();
        for (req, want) in [
            (b"GET /nope HTTP/1.1\r\n\r\n".as_slice(), "404 Not Found"),
            (b"GET /?x HTTP/1.0\n\n", "200 OK"),
            (b"POST /metrics HTTP/1.1\r\n\r\n", "405 Method Not Allowed"),
            (b"\x16\x03\x01\x00\xffgarbage\r\n\r\n", "400 Bad Request"),
            (&big, "431 Request Header Fields Too Large"),
        ] {
            let resp = get(addr, req).await;
            let status = resp.split("\r\n").next().unwrap();
            assert!(
                status.starts_with("HTTP/1.") && status.ends_with(want),
                "{req:?}: {resp}"
            );
        }
        // A request cut short by EOF gets no answer, only the close.
        assert_eq!(get(addr, b"GET /metrics").await, "");
        let post = get(addr, b"POST / HTTP/1.1\r\n\r\n")
            .await
            .to_ascii_lowercase();
        assert!(post.contains("\r\nallow: get, head\r\n"), "{post}");
        let head_only = get(addr, b"HEAD /metrics HTTP/1.1\r\n\r\n").await;
        let len = format!("content-length: {}\r\n", body.len());
        assert!(head_only.ends_with("\r\n\r\n"), "{head_only}");
        assert!(head_only.to_ascii_lowercase().contains(&len), "{head_only}");
        assert!(!task.is_finished());
        task.abort();
    }

    /// Reads until EOF or `within`; None on timeout.
    async fn read_until_close(s: &mut TcpStream, within: Duration) -> Option<Vec<u8>> {
        use tokio::io::AsyncReadExt;
        let mut out = Vec::new();
        let read = tokio::time::timeout(within, s.read_to_end(&mut out)).await;
        // A reset (unread input at close) counts as closed too.
        read.ok().map(|_| out)
    }

    /// Keep-alive, and what frees a connection: idle time, a header that
    /// never completes (slowloris), and a newer connection at the cap.
    #[tokio::test]
    async fn keep_alive_timeouts_and_eviction() {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let listener = bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let reg = Arc::new(Mutex::new(sample_registry()));
        let limits = Limits {
            max: 3,
            lifetime: MAX_LIFETIME,
            grace: CLOSE_GRACE,
        };
        let task = tokio::spawn(serve_with(listener, reg.clone(), limits));

        // Two requests on one connection, then closed once idle.
        let mut s = TcpStream::connect(addr).await.unwrap();
        for _ in 0..2 {
            s.write_all(b"GET /nope HTTP/1.1\r\nHost: x\r\n\r\n")
                .await
                .unwrap();
            let mut buf = [0u8; 512];
            let n = s.read(&mut buf).await.unwrap();
            let resp = String::from_utf8_lossy(&buf[..n]).to_string();
            assert!(resp.starts_with("HTTP/1.1 404 Not Found\r\n"), "{resp}");
            assert!(resp.ends_with("\r\n\r\n404 Not Found\n"), "{resp}");
        }
        let t = Instant::now();
        assert!(read_until_close(&mut s, Duration::from_secs(4))
            .await
            .is_some());
        let idle = t.elapsed();
        assert!(
            idle >= IDLE_TIMEOUT - Duration::from_millis(100),
            "{idle:?}"
        );

        // A slowloris: one header byte every 300 ms is cut at about 2 s.
        let mut slow = TcpStream::connect(addr).await.unwrap();
        let t = Instant::now();
        let dripped = async {
            for b in b"GET /metrics HTTP/1.1\r\nX-Slow: aaaaaaaaaaaaaaaaaaaaaaaaaaaaaa" {
                if slow.write_all(&[*b]).await.is_err() {
                    break;
                }
                tokio::time::sleep(Duration::from_millis(300)).await;
            }
        };
        let _ = tokio::time::timeout(Duration::from_secs(5), dripped).await;
        assert!(read_until_close(&mut slow, Duration::from_secs(1))
            .await
            .is_some());
        assert!(t.elapsed() < Duration::from_secs(4), "{:?}", t.elapsed());

        // At the cap (3), each new connection closes the oldest idle one,
        // and the newest is served.
        let mut idle = Vec::new();
        for _ in 0..5 {
            idle.push(TcpStream::connect(addr).await.unwrap());
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let resp = get(addr, b"GET /metrics HTTP/1.0\r\n\r\n").await;
        assert!(resp.starts_with("HTTP/1.0 200 OK\r\n"), "{resp}");
        let short = Duration::from_millis(200);
        for (i, s) in idle.iter_mut().enumerate() {
            let closed = read_until_close(s, short).await.is_some();
            assert_eq!(closed, i < 3, "idle connection {i} of 5, cap 3");
        }
        // Counted (on /metrics from the next scrape on): the idle
        // keep-alive and the slowloris, the 3 evicted.
        get(addr, b"GET /metrics HTTP/1.0\r\n\r\n").await;
        let text = reg.lock().unwrap().render();
        let count = |reason: &str| {
            let key = format!("{CLOSED}{{reason=\"{reason}\"}} ");
            let line = text.lines().find_map(|l| l.strip_prefix(&key));
            line.map_or(0, |v| v.parse::<u64>().unwrap())
        };
        assert_eq!(count("evicted"), 3, "{text}");
        assert!(count("timeout") >= 2, "{text}");
        let open = text
            .lines()
            .find_map(|l| l.strip_prefix(&format!("{OPEN} ")));
        assert!(matches!(open, Some("1" | "2" | "3")), "{text}");
        task.abort();
    }

    /// A client that never lets its connection go idle is let go after
    /// the lifetime: the request in progress answered, then closed.
    #[tokio::test]
    async fn lifetime_ends_a_busy_keep_alive() {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let listener = bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let reg = Arc::new(Mutex::new(sample_registry()));
        let limits = Limits {
            max: 16,
            lifetime: Duration::from_secs(1),
            grace: Duration::from_millis(500),
        };
        let task = tokio::spawn(serve_with(listener, reg.clone(), limits));
        let mut s = TcpStream::connect(addr).await.unwrap();
        let t = Instant::now();
        let mut answered = 0;
        while t.elapsed() < Duration::from_secs(4) {
            let sent = s.write_all(b"GET /nope HTTP/1.1\r\nHost: x\r\n\r\n").await;
            let mut buf = [0u8; 512];
            match (sent, s.read(&mut buf).await) {
                (Ok(()), Ok(n @ 1..)) => {
                    let resp = String::from_utf8_lossy(&buf[..n]).to_string();
                    assert!(resp.starts_with("HTTP/1.1 404 Not Found\r\n"), "{resp}");
                    answered += 1;
                }
                _ => break,
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        let took = t.elapsed();
        assert!(
            took >= Duration::from_secs(1) && took < Duration::from_secs(2),
            "{took:?}"
        );
        assert!(answered >= 4, "{answered}");
        get(addr, b"GET /metrics HTTP/1.0\r\n\r\n").await;
        let text = reg.lock().unwrap().render();
        assert!(
            text.contains(&format!("{CLOSED}{{reason=\"lifetime\"}} 1\n")),
            "{text}"
        );
        task.abort();
    }

    #[test]
    fn evicts_oldest_idle_then_oldest() {
        let mut c = Conns::new(2);
        let a = c.admit();
        let b = c.admit();
        a.last.store(10, Relaxed);
        b.last.store(5, Relaxed);
        let d = c.admit(); // b idle the longest
        assert!(c.open.contains_key(&a.id) && !c.open.contains_key(&b.id));
        a.in_flight.store(1, Relaxed);
        d.in_flight.store(1, Relaxed);
        let _e = c.admit(); // all busy: the oldest, a
        assert!(!c.open.contains_key(&a.id) && c.open.contains_key(&d.id));
        assert_eq!(c.open.len(), 2);
        // A lowered cap (the descriptor limit went down): down to it at
        // the next connection, idle ones first (d is busy).
        c.max = 4;
        for _ in 0..2 {
            c.admit();
        }
        assert_eq!(c.open.len(), 4);
        c.max = 2;
        let f = c.admit();
        assert_eq!(c.open.len(), 2);
        assert!(c.open.contains_key(&f.id) && c.open.contains_key(&d.id));
    }

    #[tokio::test]
    async fn bind_errors() {
        let taken = bind("127.0.0.1:0").await.unwrap();
        let addr = taken.local_addr().unwrap().to_string();
        let e = bind(&addr).await.unwrap_err().to_string();
        assert_eq!(e, format!("metrics address {addr}: address already in use"));
        for bad in "foo,127.0.0.1,1.2.3.4:99999,:9465,::1:9465,a b:80,".split(',') {
            let e = bind(bad).await.unwrap_err().to_string();
            assert_eq!(e, format!("metrics address `{bad}`: expected HOST:PORT"));
        }
    }

    #[test]
    fn promtool_accepts_output() {
        use std::process::{Command, Stdio};
        let mut r = sample_registry();
        r.set_limits(1, Duration::from_secs(60));
        r.inc(DROPS, &drop_labels("8080", "full"), 1);
        r.observe(LAT, &port("81"), BOUNDS, &[0, 0, 0, 1], 3.0);
        r.replace_gauges("tcpq_backlog", vec![(port("1"), 1.0), (port("2"), 2.0)]);
        assert_eq!(r.overflowed(), 3);
        let text = r.render();
        let mut cmd = Command::new("promtool");
        cmd.args(["check", "metrics"])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped());
        let mut child = match cmd.stderr(Stdio::piped()).spawn() {
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                return eprintln!("no promtool: skipped")
            }
            r => r.unwrap(),
        };
        io::Write::write_all(&mut child.stdin.take().unwrap(), text.as_bytes()).unwrap();
        let out = child.wait_with_output().unwrap();
        let msg = String::from_utf8_lossy(&out.stdout) + String::from_utf8_lossy(&out.stderr);
        assert!(out.status.success(), "{msg}\n{text}");
    }
}

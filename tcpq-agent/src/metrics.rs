//! Prometheus metrics: a small registry, the text exposition format 0.0.4
//! and a minimal HTTP server for `GET /metrics`.
//!
//! Hand-written rather than a crate: families are dynamic (a new event kind
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

use std::collections::BTreeMap;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::anyhow;
use tokio::net::{TcpListener, TcpStream};
use tokio::time::timeout;

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

const MAX_HEAD: usize = 8 * 1024;
const READ_TIMEOUT: Duration = Duration::from_secs(5);
const WRITE_TIMEOUT: Duration = Duration::from_secs(10);
/// Connections beyond this are closed at once, so a flood cannot pile up tasks.
const MAX_CONNECTIONS: usize = 64;
const CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

/// Serves GET/HEAD `/metrics` and `/`, one request per connection, each in
/// its own task. Never returns: abort its task to stop it.
pub async fn serve(listener: TcpListener, registry: Arc<Mutex<Registry>>) {
    let slots = Arc::new(tokio::sync::Semaphore::new(MAX_CONNECTIONS));
    loop {
        let Ok((stream, _)) = listener.accept().await else {
            // EMFILE and friends: back off instead of spinning.
            tokio::time::sleep(Duration::from_millis(100)).await;
            continue;
        };
        let (Ok(permit), registry) = (slots.clone().try_acquire_owned(), registry.clone()) else {
            continue;
        };
        tokio::spawn(async move {
            handle(stream, &registry).await;
            drop(permit);
        });
    }
}

/// Status line, content type, body, and whether to send the head only.
type Reply = (&'static str, &'static str, String, bool);

fn plain(status: &'static str) -> Reply {
    (status, "text/plain", format!("{status}\n"), false)
}

async fn handle(stream: TcpStream, registry: &Mutex<Registry>) {
    let (status, ctype, body, head_only) = match timeout(READ_TIMEOUT, read_head(&stream)).await {
        Err(_) => plain("408 Request Timeout"),
        Ok(Err(_)) => return,
        Ok(Ok(None)) => plain("431 Request Header Fields Too Large"),
        Ok(Ok(Some(req))) => route(&req, registry),
    };
    let allow = if status.starts_with("405") {
        "Allow: GET, HEAD\r\n"
    } else {
        ""
    };
    let len = body.len();
    let mut resp =
        format!("HTTP/1.1 {status}\r\nContent-Type: {ctype}\r\nContent-Length: {len}\r\n");
    resp += &format!("{allow}Connection: close\r\n\r\n");
    if !head_only {
        resp += &body;
    }
    if let Ok(Ok(())) = timeout(WRITE_TIMEOUT, write_all(&stream, resp.as_bytes())).await {
        // Half-close, then drain briefly: closing with unread input would
        // reset the connection, and the client could lose the response.
        let mut s = stream;
        if shutdown(&mut s).await.is_ok() {
            let mut buf = [0u8; 4096];
            let drain = async { while let Ok(1..) = read_some(&s, &mut buf).await {} };
            let _ = timeout(Duration::from_secs(1), drain).await;
        }
    }
}

fn route(req: &[u8], registry: &Mutex<Registry>) -> Reply {
    let line = req.split(|&b| b == b'\n').next().unwrap_or_default();
    let line = std::str::from_utf8(line).unwrap_or_default();
    let line = line.trim_end_matches('\r');
    let parts: Vec<&str> = line.split(' ').collect();
    let [method, target, version] = parts[..] else {
        return plain("400 Bad Request");
    };
    let method_ok = !method.is_empty() && method.bytes().all(|b| b.is_ascii_uppercase());
    if !method_ok || !version.starts_with("HTTP/1.") || !target.starts_with('/') {
        return plain("400 Bad Request");
    }
    let head = method == "HEAD";
    match target.split('?').next().unwrap_or_default() {
        "/metrics" | "/" if method != "GET" && !head => plain("405 Method Not Allowed"),
        "/metrics" => {
            let body = registry
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .render_scrape();
            ("200 OK", CONTENT_TYPE, body, head)
        }
        "/" => {
            let body = "<html><body>tcpq-agent: <a href=\"/metrics\">/metrics</a></body></html>\n";
            ("200 OK", "text/html; charset=utf-8", body.into(), head)
        }
        _ => plain("404 Not Found"),
    }
}

/// The request header without its blank line; None when it exceeds MAX_HEAD.
/// EOF mid-header returns what came, EOF before anything is an error.
async fn read_head(stream: &TcpStream) -> io::Result<Option<Vec<u8>>> {
    let (mut buf, mut chunk) = (Vec::with_capacity(1024), [0u8; 1024]);
    loop {
        let crlf = buf.windows(4).position(|w| w == b"\r\n\r\n");
        if let Some(end) = crlf.or_else(|| buf.windows(2).position(|w| w == b"\n\n")) {
            buf.truncate(end);
            return Ok(Some(buf));
        }
        if buf.len() >= MAX_HEAD {
            return Ok(None);
        }
        let want = (MAX_HEAD - buf.len()).min(chunk.len());
        match read_some(stream, &mut chunk[..want]).await? {
            0 if buf.is_empty() => return Err(io::ErrorKind::UnexpectedEof.into()),
            0 => return Ok(Some(buf)),
            n => buf.extend_from_slice(&chunk[..n]),
        }
    }
}

async fn read_some(stream: &TcpStream, buf: &mut [u8]) -> io::Result<usize> {
    loop {
        stream.readable().await?;
        match stream.try_read(buf) {
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
            r => return r,
        }
    }
}

async fn shutdown(stream: &mut TcpStream) -> io::Result<()> {
    std::future::poll_fn(|cx| tokio::io::AsyncWrite::poll_shutdown(Pin::new(&mut *stream), cx))
        .await
}

async fn write_all(stream: &TcpStream, mut buf: &[u8]) -> io::Result<()> {
    while !buf.is_empty() {
        stream.writable().await?;
        match stream.try_write(buf) {
            Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
            Ok(n) => buf = &buf[n..],
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

/// Binds IP:PORT, [IPv6]:PORT or NAME:PORT (resolved); errors are one line
/// naming the address.
pub async fn bind(addr: &str) -> anyhow::Result<TcpListener> {
    let (host, port) = addr.rsplit_once(':').unwrap_or_default();
    let port = port.parse::<u16>().ok();
    let name = |c: char| c.is_ascii_alphanumeric() || c == '-' || c == '.';
    let bound = match addr.parse::<SocketAddr>() {
        Ok(sa) => TcpListener::bind(sa).await,
        Err(_) if port.is_some() && !host.is_empty() && host.chars().all(name) => {
            TcpListener::bind(addr).await
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
        let mut s = TcpStream::connect(addr).await.unwrap();
        write_all(&s, req).await.unwrap();
        shutdown(&mut s).await.unwrap(); // the server sees EOF after the request
        let (mut out, mut buf) = (Vec::new(), [0u8; 4096]);
        while let n @ 1.. = read_some(&s, &mut buf).await.unwrap() {
            out.extend_from_slice(&buf[..n]);
        }
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
        assert!(head.contains("\r\nContent-Type: text/plain; version=0.0.4; charset=utf-8\r\n"));
        assert!(head.contains(&format!("\r\nContent-Length: {}\r\n", body.len())));
        assert!(head.ends_with("\r\nConnection: close"));
        assert_eq!(body, reg.lock().unwrap().render());
        let big = [b"GET /metrics HTTP/1.1\r\nX: ".as_slice(), &[b'a'; 9000]].concat();
        for (req, want) in [
            (b"GET /nope HTTP/1.1\r\n\r\n".as_slice(), "404 Not Found"),
            (b"GET /?x HTTP/1.0\n\n", "200 OK"),
            (b"POST /metrics HTTP/1.1\r\n\r\n", "405 Method Not Allowed"),
            (b"\x16\x03\x01\x00\xffgarbage\r\n\r\n", "400 Bad Request"),
            (b"GET /metrics", "400 Bad Request"),
            (&big, "431 Request Header Fields Too Large"),
        ] {
            let resp = get(addr, req).await;
            assert!(resp.starts_with(&format!("HTTP/1.1 {want}\r\n")), "{resp}");
        }
        let head_only = get(addr, b"HEAD /metrics HTTP/1.1\r\n\r\n").await;
        assert!(head_only.ends_with("\r\n\r\n") && head_only.contains("Content-Length: "));
        assert!(!task.is_finished());
        task.abort();
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

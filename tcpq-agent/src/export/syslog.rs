//! Syslog exporter: every event as one RFC 5424 message.
//!
//! Format (RFC 5424 §6): `<PRI>1 TIMESTAMP HOSTNAME APP-NAME PROCID MSGID [SD] MSG`,
//! with one SD element `[tcpq@32473 …]` holding the event's key facts (32473 is
//! the documentation enterprise number, RFC 5612) and, as MSG, the whole event
//! JSON on one line (UTF-8 without BOM).
//!
//! Transports:
//! - `unix:///PATH`: a datagram socket (rsyslog imuxsock, `/dev/log`, journald)
//!   gets one message per datagram, no framing. If the path is a stream socket
//!   (connect gives EPROTOTYPE), messages are newline-terminated, as syslog-ng's
//!   `unix-stream()` source expects (MSG is one-line JSON: never a raw newline).
//! - `udp://HOST:PORT`: one message per datagram (RFC 5426), cut to 65000 bytes.
//! - `tcp://HOST:PORT`: RFC 6587 octet counting, `LEN SP MSG`.
//!
//! A task owns the connection and a bounded queue. On a write error the message
//! stays at the head of the queue and the task reconnects with backoff; a peer
//! that closed a stream is noticed (EOF) before writing to it. Plain TCP has no
//! acknowledgements, so what the kernel accepted just before a peer vanished
//! can still be lost (that would take RELP).

use std::io;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{anyhow, bail, Result};
use serde_json::Value;
use tokio::io::AsyncWrite;
use tokio::net::{TcpStream, UdpSocket, UnixDatagram, UnixStream};
use tokio::sync::{mpsc, oneshot};
use tokio::time::{sleep, timeout};

pub use crate::export::head::{Head, Severity};

const QUEUE: usize = 10_000;
const CONNECT_TIMEOUT: Duration = Duration::from_secs(3);
const BACKOFF_MIN: Duration = Duration::from_millis(200);
const BACKOFF_MAX: Duration = Duration::from_secs(5);
/// Datagram limit, below UDP's 65507-byte maximum payload.
const MAX_DATAGRAM: usize = 65_000;
const SD_ID: &str = "tcpq@32473";
/// Event keys copied into the SD element, with their SD-PARAM names.
const SD_PARAMS: [(&str, &str); 6] = [
    ("event", "event"),
    ("server.address", "server_address"),
    ("server.port", "server_port"),
    ("network.netns", "netns"),
    ("process.executable.name", "process"),
    ("count", "count"),
];

/// Where to send: parsed from a URL-ish string.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Target {
    Unix(PathBuf),
    Udp(String),
    Tcp(String),
}

impl Target {
    /// `unix:///dev/log`, `unix:/run/x.sock`, `udp://127.0.0.1:514`, `tcp://logs.example:601`.
    pub fn parse(s: &str) -> Result<Target> {
        let err = |why: &str| anyhow!("syslog target `{s}`: {why}");
        if let Some(rest) = s.strip_prefix("unix:") {
            let path = rest.strip_prefix("//").unwrap_or(rest);
            if !path.starts_with('/') || path.len() < 2 {
                return Err(err("expected unix:///PATH with an absolute socket path"));
            }
            return Ok(Target::Unix(path.into()));
        }
        let (scheme, rest) = s.split_once("://").unwrap_or_default();
        if scheme != "udp" && scheme != "tcp" {
            let want = "expected unix:///PATH, udp://HOST:PORT or tcp://HOST:PORT";
            return Err(err(want));
        }
        let Some((host, port)) = rest.rsplit_once(':') else {
            return Err(err("expected HOST:PORT"));
        };
        let v6 = host.len() > 2 && host.starts_with('[') && host.ends_with(']');
        if host.is_empty() || (host.contains(':') && !v6) || host.contains(['/', ' ']) {
            return Err(err("bad host (write IPv6 addresses as [ADDR])"));
        }
        if !matches!(port.parse::<u16>(), Ok(p) if p != 0) {
            return Err(err("the port must be a number from 1 to 65535"));
        }
        let make = if scheme == "udp" {
            Target::Udp
        } else {
            Target::Tcp
        };
        Ok(make(rest.into()))
    }
}

impl std::fmt::Display for Target {
    fn fmt(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        match self {
            Target::Unix(p) => write!(f, "unix://{}", p.display()),
            Target::Udp(hp) => write!(f, "udp://{hp}"),
            Target::Tcp(hp) => write!(f, "tcp://{hp}"),
        }
    }
}

/// Syslog facility (RFC 5424 §6.2.1); the discriminant is the code.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Facility {
    Kern = 0,
    User = 1,
    #[default]
    Daemon = 3,
    Local0 = 16,
    Local1,
    Local2,
    Local3,
    Local4,
    Local5,
    Local6,
    Local7,
}

impl std::str::FromStr for Facility {
    type Err = anyhow::Error;
    /// "daemon", "local0"… (any case); the names are the variants'.
    fn from_str(s: &str) -> Result<Facility> {
        use Facility::*;
        let locals = [
            Local0, Local1, Local2, Local3, Local4, Local5, Local6, Local7,
        ];
        let mut all = [Kern, User, Daemon].into_iter().chain(locals);
        let f = all.find(|f| format!("{f:?}").eq_ignore_ascii_case(s));
        let want = "expected kern, user, daemon or local0..local7";
        f.ok_or_else(|| anyhow!("syslog facility `{s}`: {want}"))
    }
}

/// Printable ASCII only (so no spaces), at most `max` bytes; "-" if nothing is left.
fn header_field(s: &str, max: usize) -> String {
    let f: String = s.chars().filter(char::is_ascii_graphic).take(max).collect();
    if f.is_empty() {
        return "-".into();
    }
    f
}

/// The longest prefix of `s` of at most `max` bytes that is still valid UTF-8.
fn truncate_utf8(s: &str, max: usize) -> &str {
    let mut end = s.len().min(max);
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    &s[..end]
}

/// One RFC 5424 message, without transport framing (see the module doc).
/// The header's time, event and severity come from `head`; SD and MSG from
/// the event's JSON line.
pub fn format(
    head: &Head,
    event: &Value,
    facility: Facility,
    hostname: &str,
    app_name: &str,
    pid: u32,
) -> String {
    let name = head.event;
    let timestamp = humantime::format_rfc3339_millis(head.at);
    let graphic = !name.is_empty() && name.bytes().all(|b| b.is_ascii_graphic());
    let msgid = if graphic {
        &name[..name.len().min(32)]
    } else {
        "-"
    };
    let mut sd = String::new();
    for (key, param) in SD_PARAMS {
        let value = match event.get(key) {
            None | Some(Value::Null) => continue,
            Some(Value::String(s)) => s.clone(),
            Some(v) => v.to_string(),
        };
        sd += &format!(" {param}=\"{}\"", sd_param_value(&value));
    }
    let sd = if sd.is_empty() {
        "-".into()
    } else {
        format!("[{SD_ID}{sd}]")
    };
    format!(
        "<{}>1 {timestamp} {} {} {} {msgid} {sd} {}",
        facility as u8 * 8 + head.severity as u8,
        header_field(hostname, 255),
        header_field(app_name, 48),
        header_field(&pid.to_string(), 128),
        crate::export::json::line(event),
    )
}

/// An SD-PARAM value (RFC 5424 §6.3.3): `"`, `\` and `]` escaped with a
/// backslash; control characters (C0, DEL, C1) and the Unicode line
/// separators replaced by U+FFFD, so no value can end the message, start a
/// forged one on a newline-framed transport, or close the SD element. The
/// exact value is in MSG's JSON.
pub fn sd_param_value(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 4);
    for c in s.chars() {
        match c {
            '"' | '\\' | ']' => {
                out.push('\\');
                out.push(c);
            }
            c if c.is_control() || matches!(c, '\u{2028}' | '\u{2029}') => out.push('\u{fffd}'),
            c => out.push(c),
        }
    }
    out
}

/// Sender configuration.
#[derive(Debug, Clone, PartialEq)]
pub struct Config {
    pub target: Target,
    pub facility: Facility,
    pub app_name: String,
}

/// Health counters, exported as metrics. One `Stats` may outlive senders:
/// a reload that changes the target keeps it (the counters never go back).
#[derive(Debug, Default)]
pub struct Stats {
    /// Messages written to the socket.
    pub sent: AtomicU64,
    /// Messages lost: the queue was full, a datagram the socket refused as
    /// too big (EMSGSIZE), or still queued when the sender was stopped
    /// (exit, or syslog removed by a reload, after a 5 s drain).
    pub dropped: AtomicU64,
    /// Messages sent cut to fit a datagram (see [`fit`]).
    pub truncated: AtomicU64,
    /// Messages queued and not yet written or dropped.
    pub queued: AtomicU64,
    /// Successful reconnections after a lost connection.
    pub reconnects: AtomicU64,
    pub connected: AtomicBool,
}

/// One formatted message, and the form cut to fit a datagram when the
/// whole one does not (made at once: the target may change before it is
/// sent).
#[derive(Debug)]
struct Msg {
    whole: String,
    cut: Option<String>,
}

#[derive(Debug)]
enum Item {
    Msg(Msg),
    /// Answered once everything queued before it was written.
    Flush(oneshot::Sender<()>),
}

/// A connection to a target, made before a sender takes it over
/// ([`Syslog::retarget`]).
pub struct Connection(Conn);

impl std::fmt::Debug for Connection {
    fn fmt(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        f.write_str("Connection")
    }
}

enum Conn {
    UnixDgram(UnixDatagram),
    UnixStream(UnixStream),
    Udp(UdpSocket),
    Tcp(TcpStream),
}

impl Conn {
    fn is_datagram(&self) -> bool {
        matches!(self, Conn::UnixDgram(_) | Conn::Udp(_))
    }
}

async fn connect(target: &Target) -> io::Result<Conn> {
    match target {
        Target::Unix(path) => {
            let sock = UnixDatagram::unbound()?;
            match sock.connect(path) {
                Ok(()) => Ok(Conn::UnixDgram(sock)),
                Err(e) if e.raw_os_error() == Some(libc::EPROTOTYPE) => {
                    Ok(Conn::UnixStream(UnixStream::connect(path).await?))
                }
                Err(e) => Err(e),
            }
        }
        Target::Udp(hp) => {
            let addr = tokio::net::lookup_host(hp.as_str()).await?.next();
            let addr = addr.ok_or_else(|| io::Error::other("no address found"))?;
            let unspecified = if addr.is_ipv4() {
                "0.0.0.0:0"
            } else {
                "[::]:0"
            };
            let sock = UdpSocket::bind(unspecified).await?;
            sock.connect(addr).await?;
            Ok(Conn::Udp(sock))
        }
        Target::Tcp(hp) => Ok(Conn::Tcp(TcpStream::connect(hp.as_str()).await?)),
    }
}

/// Connects to `target` within 3 s, or says why not in a few words
/// ("syslog target tcp://…: connection refused").
pub async fn connect_to(target: &Target) -> Result<Connection> {
    match timeout(CONNECT_TIMEOUT, connect(target)).await {
        Ok(Ok(c)) => Ok(Connection(c)),
        Ok(Err(e)) => {
            // "Connection refused (os error 111)" -> "connection refused"
            let e = e.to_string().to_lowercase();
            let e = e.split(" (os error").next().unwrap_or_default();
            bail!("syslog target {target}: {e}")
        }
        Err(_) => bail!("syslog target {target}: no connection within 3 s"),
    }
}

/// Writes one message with the transport's framing. A datagram gets the
/// cut form when there is one (counted in `truncated`).
async fn write(conn: &mut Conn, msg: &Msg, stats: &Stats) -> io::Result<()> {
    if peer_gone(conn) {
        return Err(io::ErrorKind::BrokenPipe.into());
    }
    let dgram = match (&msg.cut, conn.is_datagram()) {
        (Some(cut), true) => cut,
        _ => &msg.whole,
    };
    let dgram = truncate_utf8(dgram, MAX_DATAGRAM).as_bytes();
    let r = match conn {
        Conn::UnixDgram(s) => s.send(dgram).await.map(drop),
        Conn::Udp(s) => s.send(dgram).await.map(drop),
        // `format` writes no newline; this stays true whatever it becomes.
        Conn::UnixStream(s) => {
            let line = msg.whole.replace('\n', " ") + "\n";
            write_all(s, line.as_bytes()).await
        }
        Conn::Tcp(s) => {
            let frame = format!("{} {}", msg.whole.len(), msg.whole);
            write_all(s, frame.as_bytes()).await
        }
    };
    if r.is_ok() && conn.is_datagram() && msg.cut.is_some() {
        stats.truncated.fetch_add(1, Relaxed);
    }
    r
}

/// `AsyncWriteExt::write_all` without tokio's "io-util" feature.
async fn write_all<W: AsyncWrite + Unpin>(w: &mut W, mut buf: &[u8]) -> io::Result<()> {
    while !buf.is_empty() {
        match std::future::poll_fn(|cx| std::pin::Pin::new(&mut *w).poll_write(cx, buf)).await? {
            0 => return Err(io::ErrorKind::WriteZero.into()),
            n => buf = &buf[n..],
        }
    }
    Ok(())
}

/// Whether a stream's peer has closed (EOF or error), without blocking.
/// Receivers never talk back; anything they send is discarded.
fn peer_gone(conn: &Conn) -> bool {
    let mut buf = [0u8; 256];
    let r = match conn {
        Conn::Tcp(s) => s.try_read(&mut buf),
        Conn::UnixStream(s) => s.try_read(&mut buf),
        _ => return false,
    };
    matches!(r, Ok(0)) || r.is_err_and(|e| e.kind() != io::ErrorKind::WouldBlock)
}

/// Resolves once a stream's peer has closed; never for datagram sockets.
async fn closed(conn: &Conn) {
    loop {
        let ready = match conn {
            Conn::Tcp(s) => s.readable().await,
            Conn::UnixStream(s) => s.readable().await,
            _ => std::future::pending().await,
        };
        if ready.is_err() || peer_gone(conn) {
            return;
        }
    }
}

/// Counts what is still queued as dropped when the sender task ends
/// (aborted with its handle, or the handle gone).
struct Leftover(Arc<Stats>);

impl Drop for Leftover {
    fn drop(&mut self) {
        let n = self.0.queued.swap(0, Relaxed);
        self.0.dropped.fetch_add(n, Relaxed);
        self.0.connected.store(false, Relaxed);
    }
}

/// A message done with (written or dropped): no longer queued.
fn done(stats: &Stats) {
    let _ = stats
        .queued
        .fetch_update(Relaxed, Relaxed, |n| Some(n.saturating_sub(1)));
}

/// The sender task: owns the connection and the receiving end of the
/// queue. A new target (a reload) arrives with its connection made; what
/// is queued, and a message a write to the old target was interrupted in,
/// go to it.
async fn run(
    target: Target,
    conn: Conn,
    mut rx: mpsc::Receiver<Item>,
    mut retarget: mpsc::Receiver<(Target, Conn)>,
    stats: Arc<Stats>,
) {
    let _leftover = Leftover(stats.clone());
    let mut target = target;
    let mut conn = Some(conn);
    let mut head = None; // taken from the queue, not yet written
    let mut backoff = BACKOFF_MIN;
    let mut retarget_open = true;
    loop {
        let new = async {
            if retarget_open {
                retarget.recv().await
            } else {
                std::future::pending().await
            }
        };
        let step = async {
            let Some(c) = conn.as_mut() else {
                sleep(backoff).await;
                backoff = (backoff * 2).min(BACKOFF_MAX);
                if let Ok(Ok(c)) = timeout(CONNECT_TIMEOUT, connect(&target)).await {
                    conn = Some(c);
                    stats.reconnects.fetch_add(1, Relaxed);
                    stats.connected.store(true, Relaxed);
                }
                return true;
            };
            let item = match head.take() {
                Some(msg) => Item::Msg(msg),
                None => tokio::select! {
                    item = rx.recv() => match item {
                        Some(item) => item,
                        None => return false, // the handle is gone
                    },
                    () = closed(c) => {
                        conn = None;
                        stats.connected.store(false, Relaxed);
                        return true;
                    }
                },
            };
            let msg = match item {
                Item::Msg(msg) => msg,
                Item::Flush(done) => {
                    let _ = done.send(());
                    return true;
                }
            };
            // Kept as the head while being written: a retarget that
            // interrupts the write sends it again, whole, to the new target.
            head = Some(msg);
            let r = write(c, head.as_ref().expect("just set"), &stats).await;
            match r {
                Ok(()) => {
                    head = None;
                    stats.sent.fetch_add(1, Relaxed);
                    done(&stats);
                    // Reset only once a write worked: connecting a UDP socket
                    // always works, refusals show up on a later send.
                    backoff = BACKOFF_MIN;
                }
                // Too big for this socket: retrying would block the queue forever.
                Err(e) if e.raw_os_error() == Some(libc::EMSGSIZE) => {
                    head = None;
                    stats.dropped.fetch_add(1, Relaxed);
                    done(&stats);
                }
                // Also ECONNREFUSED/ENOENT on datagrams: nobody listens right now.
                Err(_) => {
                    conn = None;
                    stats.connected.store(false, Relaxed);
                }
            }
            true
        };
        tokio::select! {
            biased;
            new = new => match new {
                Some((t, c)) => {
                    target = t;
                    conn = Some(c);
                    backoff = BACKOFF_MIN;
                    stats.connected.store(true, Relaxed);
                }
                None => retarget_open = false,
            },
            go_on = step => if !go_on { return },
        }
    }
}

fn local_hostname() -> String {
    let mut buf = [0u8; 256];
    // SAFETY: buf is writable for buf.len() bytes.
    if unsafe { libc::gethostname(buf.as_mut_ptr().cast(), buf.len()) } != 0 {
        return String::new();
    }
    let end = buf.iter().position(|&b| b == 0).unwrap_or(buf.len());
    String::from_utf8_lossy(&buf[..end]).into_owned()
}

/// Keys a cut never removes or shortens: what the event is, when, where.
const KEPT_WHOLE: [&str; 9] = [
    "timestamp",
    "schema.version",
    "event",
    "count",
    "server.address",
    "server.port",
    "network.netns",
    "source",
    "truncated",
];

/// The message for `event`, made to fit `limit` bytes by `format`: as it
/// is if it fits; else with `"truncated": true` and, until it fits, the
/// largest field (other than [`KEPT_WHOLE`]) shortened (a string, by what
/// is too much, at a character boundary) or removed, its key listed in
/// `"truncated.keys"`. The MSG stays one valid JSON object. Pure.
pub fn fit(event: &Value, limit: usize, format: impl Fn(&Value) -> String) -> String {
    let whole = format(event);
    if whole.len() <= limit {
        return whole;
    }
    let Value::Object(orig) = event else {
        return format(&serde_json::json!({"truncated": true}));
    };
    let mut m = orig.clone();
    m.insert("truncated".into(), Value::Bool(true));
    let mut keys: Vec<String> = Vec::new();
    loop {
        let mut v = Value::Object(m.clone());
        if !keys.is_empty() {
            v["truncated.keys"] = serde_json::json!(keys);
        }
        let msg = format(&v);
        if msg.len() <= limit {
            return msg;
        }
        let over = msg.len() - limit;
        let largest = m
            .iter()
            .filter(|(k, _)| !KEPT_WHOLE.contains(&k.as_str()))
            .map(|(k, v)| (k.clone(), v.to_string().len()))
            .max_by_key(|(_, n)| *n);
        let Some((key, _)) = largest else {
            // Only the kept keys, and still too big (a tiny limit).
            let mut min = serde_json::Map::new();
            for k in ["timestamp", "event", "truncated"] {
                if let Some(v) = m.get(k) {
                    min.insert(k.into(), v.clone());
                }
            }
            return truncate_utf8(&format(&Value::Object(min)), limit).to_string();
        };
        // Room for the key's name in "truncated.keys" too.
        let cut = over + key.len() + 64;
        if !keys.contains(&key) {
            keys.push(key.clone());
        }
        match m.get_mut(&key) {
            // Each byte cut takes at least one byte out of the message.
            Some(Value::String(s)) if s.len() > cut + 64 => {
                let keep = truncate_utf8(s, s.len() - cut).len();
                s.truncate(keep);
            }
            _ => {
                m.remove(&key);
            }
        }
    }
}

/// Handle on the sender task; dropping it ends the task (flush first):
/// what is still queued then is counted as dropped.
#[derive(Debug)]
pub struct Syslog {
    cfg: Config,
    hostname: String,
    tx: mpsc::Sender<Item>,
    retarget: mpsc::Sender<(Target, Conn)>,
    stats: Arc<Stats>,
    task: tokio::task::JoinHandle<()>,
}

impl std::fmt::Debug for Conn {
    fn fmt(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        f.write_str(match self {
            Conn::UnixDgram(_) => "UnixDgram",
            Conn::UnixStream(_) => "UnixStream",
            Conn::Udp(_) => "Udp",
            Conn::Tcp(_) => "Tcp",
        })
    }
}

impl Syslog {
    /// Connects once (within 3 s), then spawns the sender task on the current runtime.
    pub async fn start(cfg: Config) -> Result<Syslog> {
        let conn = connect_to(&cfg.target).await?;
        Ok(Syslog::with(cfg, conn, Arc::default()))
    }

    /// A sender for `cfg` over a connection already made, counting in
    /// `stats` (those of a sender it replaces, or new ones). Spawns on the
    /// current runtime.
    pub fn with(cfg: Config, conn: Connection, stats: Arc<Stats>) -> Syslog {
        stats.connected.store(true, Relaxed);
        let (tx, rx) = mpsc::channel(QUEUE);
        let (retarget, retarget_rx) = mpsc::channel(4);
        let task = tokio::spawn(run(
            cfg.target.clone(),
            conn.0,
            rx,
            retarget_rx,
            stats.clone(),
        ));
        let hostname = local_hostname();
        Syslog {
            cfg,
            hostname,
            tx,
            retarget,
            stats,
            task,
        }
    }

    /// A new target (a reload), connected: the queue, and a message being
    /// written to the old target, go to it; nothing is dropped. Messages
    /// already queued keep the facility and app name they were formatted
    /// with.
    /// False (and nothing changes) if the task has not taken the last
    /// few retargets yet; it takes each at once, so this is rare.
    pub fn retarget(&mut self, cfg: Config, conn: Connection) -> bool {
        let ok = self.retarget.try_send((cfg.target.clone(), conn.0)).is_ok();
        if ok {
            self.cfg = cfg;
        }
        ok
    }

    /// Queues one event without blocking; counts it as dropped if the queue is full.
    pub fn send(&self, head: &Head, event: &Value) {
        let (c, pid) = (&self.cfg, std::process::id());
        let fmt = |v: &Value| format(head, v, c.facility, &self.hostname, &c.app_name, pid);
        let whole = fmt(event);
        let cut = (whole.len() > MAX_DATAGRAM).then(|| fit(event, MAX_DATAGRAM, fmt));
        self.stats.queued.fetch_add(1, Relaxed);
        if self.tx.try_send(Item::Msg(Msg { whole, cut })).is_err() {
            done(&self.stats);
            self.stats.dropped.fetch_add(1, Relaxed);
        }
    }

    pub fn stats(&self) -> Arc<Stats> {
        self.stats.clone()
    }

    /// Waits (up to `timeout`) until everything queued so far was written.
    pub async fn flush(&self, timeout: Duration) {
        let (done, written) = oneshot::channel();
        let queued = async {
            if self.tx.send(Item::Flush(done)).await.is_ok() {
                let _ = written.await;
            }
        };
        let _ = tokio::time::timeout(timeout, queued).await;
    }

    pub fn target(&self) -> &Target {
        &self.cfg.target
    }

    pub fn config(&self) -> &Config {
        &self.cfg
    }
}

impl Drop for Syslog {
    fn drop(&mut self) {
        self.task.abort();
        self.stats.connected.store(false, Relaxed);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;
    use std::pin::Pin;
    use std::time::SystemTime;
    use tokio::io::{AsyncRead, ReadBuf};
    use tokio::net::TcpListener;

    fn event() -> Value {
        json!({
            "timestamp": "2025-11-21T01:20:00.123Z",
            "event": "listen_overflow",
            "count": 5,
            "server.address": "::1",
            "server.port": 6379,
            "network.netns": 4026532000u64,
            "process.executable.name": "redis-server",
            "verdict.cause": "accept_slow",
        })
    }

    /// The head the line `v` has in the agent: its time, event and
    /// severity (a verdict is a Warning, lost events an Error, state Info).
    fn head_of(v: &Value) -> Head<'_> {
        let event = v.get("event").and_then(Value::as_str).unwrap_or("");
        let at = v.get("timestamp").and_then(Value::as_str);
        Head {
            at: at.map_or_else(SystemTime::now, |t| humantime::parse_rfc3339(t).unwrap()),
            event,
            severity: match event {
                "events_lost" => Severity::Err,
                "listener_snapshot" | "agent_health" => Severity::Info,
                _ if v.get("verdict.cause").is_some() => Severity::Warning,
                _ => Severity::Notice,
            },
        }
    }

    fn send(log: &Syslog, v: &Value) {
        log.send(&head_of(v), v);
    }

    /// What the sender in this process makes of `event()`.
    fn expected() -> String {
        let (host, pid) = (local_hostname(), std::process::id());
        format(
            &head_of(&event()),
            &event(),
            Facility::Daemon,
            &host,
            "tcpq",
            pid,
        )
    }

    fn cfg(target: &str) -> Config {
        let target = Target::parse(target).unwrap();
        Config {
            target,
            facility: Facility::Daemon,
            app_name: "tcpq".into(),
        }
    }

    /// Appends what one read gives; 0 at EOF.
    async fn read_some<R: AsyncRead + Unpin>(r: &mut R, to: &mut Vec<u8>) -> usize {
        let mut buf = [0u8; 4096];
        let mut rb = ReadBuf::new(&mut buf);
        let res = std::future::poll_fn(|cx| Pin::new(&mut *r).poll_read(cx, &mut rb)).await;
        res.unwrap();
        to.extend_from_slice(rb.filled());
        rb.filled().len()
    }

    /// Reads one RFC 6587 octet-counted frame; `buf` keeps what came after it.
    async fn read_frame(s: &mut TcpStream, buf: &mut Vec<u8>) -> String {
        loop {
            if let Some(sp) = buf.iter().position(|&b| b == b' ') {
                let len: usize = String::from_utf8_lossy(&buf[..sp]).parse().unwrap();
                if buf.len() > sp + len {
                    let frame: Vec<u8> = buf.drain(..=sp + len).skip(sp + 1).collect();
                    return String::from_utf8(frame).unwrap();
                }
            }
            assert!(read_some(s, buf).await > 0, "EOF");
        }
    }

    /// `format` with placeholder header values.
    fn short(ev: Value) -> String {
        format(
            &head_of(&ev),
            &ev,
            Facility::Local7,
            &"h".repeat(300),
            "a",
            1,
        )
    }

    #[test]
    fn parse_targets_and_facilities() {
        let ok = |s: &str| Target::parse(s).unwrap();
        assert_eq!(ok("unix:///dev/log"), Target::Unix("/dev/log".into()));
        assert_eq!(ok("unix:/run/x.sock").to_string(), "unix:///run/x.sock");
        assert_eq!(ok("udp://[::1]:514"), Target::Udp("[::1]:514".into()));
        assert_eq!(ok("udp://127.0.0.1:514").to_string(), "udp://127.0.0.1:514");
        assert_eq!(
            ok("tcp://logs.example:601").to_string(),
            "tcp://logs.example:601"
        );
        let err = |s: &str| Target::parse(s).unwrap_err().to_string();
        let want = "expected unix:///PATH, udp://HOST:PORT or tcp://HOST:PORT";
        assert_eq!(err("ftp://x"), format!("syslog target `ftp://x`: {want}"));
        assert!(err("unix://dev/log").ends_with("an absolute socket path"));
        assert_eq!(
            err("udp://h"),
            "syslog target `udp://h`: expected HOST:PORT"
        );
        assert!(err("tcp://h:0").ends_with("the port must be a number from 1 to 65535"));
        assert!(err("tcp://h:99999").contains("port"));
        assert!(err("tcp://::1:514").contains("IPv6"));
        assert!(err("tcp://:514").contains("bad host"));

        assert_eq!("local3".parse::<Facility>().unwrap() as u8, 19);
        assert_eq!("Daemon".parse::<Facility>().unwrap(), Facility::default());
        let e = "mail".parse::<Facility>().unwrap_err().to_string();
        assert!(
            e.starts_with("syslog facility `mail`: expected kern, user"),
            "{e}"
        );
    }

    #[test]
    fn format_fixture_and_severities() {
        let json = serde_json::to_string(&event()).unwrap();
        let want = format!(
            "<28>1 2025-11-21T01:20:00.123Z host1 tcpq 42 listen_overflow [tcpq@32473 \
             event=\"listen_overflow\" server_address=\"::1\" server_port=\"6379\" \
             netns=\"4026532000\" process=\"redis-server\" count=\"5\"] {json}"
        );
        assert_eq!(
            format(
                &head_of(&event()),
                &event(),
                Facility::Daemon,
                "host1",
                "tcpq",
                42
            ),
            want
        );
        let health = json!({"event": "agent_health", "verdict.cause": "x"});
        assert!(short(health).starts_with("<190>1 ")); // Info: 23 * 8 + 6
        assert!(short(json!({"event": "listen_drop"})).starts_with("<189>1 ")); // Notice
        assert!(short(json!({"event": "events_lost"})).starts_with("<187>1 ")); // Err
        for (_, name) in SD_PARAMS {
            let bad = |c: char| !c.is_ascii_graphic() || "= ]\"".contains(c);
            assert!(name.len() <= 32 && !name.contains(bad), "{name}");
        }
    }

    #[test]
    fn format_escaping_and_fallbacks() {
        let ev =
            json!({"timestamp": "2025-11-21T01:20:00Z", "process.executable.name": "a\"b\\c]d"});
        let json = serde_json::to_string(&ev).unwrap();
        let sd = r#"[tcpq@32473 process="a\"b\\c\]d"]"#;
        let want = format!("<13>1 2025-11-21T01:20:00.000Z - myapp 7 - {sd} {json}");
        assert_eq!(
            format(&head_of(&ev), &ev, Facility::User, "", "my app", 7),
            want
        );
        // No SD params and no event: "-" twice; no timestamp: now; long fields cut.
        let s = short(json!({"other": 1}));
        let f: Vec<&str> = s.splitn(8, ' ').collect();
        assert!(humantime::parse_rfc3339(f[1]).is_ok(), "{s}");
        assert_eq!((f[2].len(), f[5], f[6]), (255, "-", "-"));
        let s = short(json!({"event": "two words"}));
        assert!(s.contains(" 1 - [tcpq@32473 event=\"two words\"] {"), "{s}");
        let s = short(json!({"event": "x".repeat(40)}));
        assert_eq!(s.split(' ').nth(5), Some(&*"x".repeat(32)));
        assert_eq!(truncate_utf8("aé", 2), "a");
    }

    #[tokio::test(flavor = "current_thread")]
    async fn udp_and_tcp_round_trips() {
        let rx = UdpSocket::bind("127.0.0.1:0").await.unwrap();
        let udp = Syslog::start(cfg(&format!("udp://{}", rx.local_addr().unwrap()))).await;
        let udp = udp.unwrap(); // kept: dropping the handle ends the task
        send(&udp, &event());
        let mut buf = vec![0; 70_000];
        let n = rx.recv(&mut buf).await.unwrap();
        assert_eq!(std::str::from_utf8(&buf[..n]).unwrap(), expected());

        let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let tcp = Syslog::start(cfg(&format!("tcp://{}", l.local_addr().unwrap()))).await;
        let tcp = tcp.unwrap();
        let (mut s, _) = l.accept().await.unwrap();
        send(&tcp, &event());
        send(&tcp, &json!({"event": "second"}));
        let mut buf = Vec::new();
        assert_eq!(read_frame(&mut s, &mut buf).await, expected());
        let second = read_frame(&mut s, &mut buf).await;
        assert!(second.contains(" second [tcpq@32473 event=\"second\"] {"));
        tcp.flush(Duration::from_secs(1)).await;
        assert_eq!(tcp.stats().sent.load(Relaxed), 2);
    }

    #[tokio::test(flavor = "current_thread")]
    async fn unix_round_trips() {
        let t = SystemTime::now()
            .duration_since(SystemTime::UNIX_EPOCH)
            .unwrap();
        let name = format!("tcpq-syslog-{}-{}", std::process::id(), t.as_nanos());
        let base = std::env::temp_dir().join(name);
        let (dgram, stream) = (base.with_extension("dgram"), base.with_extension("stream"));
        let rx = UnixDatagram::bind(&dgram).unwrap();
        let log = Syslog::start(cfg(&format!("unix://{}", dgram.display()))).await;
        let log = log.unwrap();
        send(&log, &event());
        let mut buf = vec![0; 70_000];
        let n = rx.recv(&mut buf).await.unwrap();
        assert_eq!(std::str::from_utf8(&buf[..n]).unwrap(), expected());
        // The receiver restarts (as rsyslog does): the message waits for it.
        drop(rx);
        std::fs::remove_file(&dgram).unwrap();
        send(&log, &json!({"event": "later"}));
        sleep(Duration::from_millis(300)).await;
        let rx = UnixDatagram::bind(&dgram).unwrap();
        let n = rx.recv(&mut buf).await.unwrap();
        assert!(std::str::from_utf8(&buf[..n]).unwrap().contains(" later "));
        assert_eq!(log.stats().reconnects.load(Relaxed), 1);
        // A stream socket: EPROTOTYPE, then newline-terminated messages.
        let l = tokio::net::UnixListener::bind(&stream).unwrap();
        let log = Syslog::start(cfg(&format!("unix:{}", stream.display()))).await;
        let log = log.unwrap();
        let (mut s, _) = l.accept().await.unwrap();
        send(&log, &event());
        log.flush(Duration::from_secs(1)).await;
        drop(log);
        let mut got = Vec::new();
        while read_some(&mut s, &mut got).await > 0 {}
        assert_eq!(String::from_utf8(got).unwrap(), expected() + "\n");
        let _ = (std::fs::remove_file(&dgram), std::fs::remove_file(&stream));
    }

    #[tokio::test(flavor = "current_thread")]
    async fn tcp_reconnects_without_loss() {
        let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = l.local_addr().unwrap();
        let log = Syslog::start(cfg(&format!("tcp://{addr}"))).await.unwrap();
        let stats = log.stats();
        let (mut s, _) = l.accept().await.unwrap();
        let mut buf = Vec::new();
        send(&log, &json!({"event": "e0"}));
        assert!(read_frame(&mut s, &mut buf).await.contains(" e0 "));
        drop((s, l));
        // The task notices the close while idle.
        for _ in 0..200 {
            if !stats.connected.load(Relaxed) {
                break;
            }
            sleep(Duration::from_millis(10)).await;
        }
        assert!(!stats.connected.load(Relaxed));
        for i in 1..=4 {
            send(&log, &json!({"event": format!("e{i}")}));
        }
        sleep(Duration::from_millis(500)).await; // a retry or two get refused
        let l = TcpListener::bind(addr).await.unwrap();
        let (mut s, _) = l.accept().await.unwrap();
        for i in 1..=4 {
            let frame = read_frame(&mut s, &mut buf).await;
            assert!(frame.contains(&format!(" e{i} ")), "{frame}");
        }
        log.flush(Duration::from_secs(1)).await;
        assert!(stats.connected.load(Relaxed) && stats.reconnects.load(Relaxed) >= 1);
        assert_eq!(
            (stats.sent.load(Relaxed), stats.dropped.load(Relaxed)),
            (5, 0)
        );
    }

    #[tokio::test(flavor = "current_thread")]
    async fn start_fails_on_closed_port() {
        let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = l.local_addr().unwrap().port();
        drop(l);
        let e = Syslog::start(cfg(&format!("tcp://127.0.0.1:{port}")))
            .await
            .unwrap_err();
        let want = format!("syslog target tcp://127.0.0.1:{port}: connection refused");
        assert_eq!(e.to_string(), want);
    }

    const FORGED: &str = "x\n<0>1 FORGED\r\"]\\\t\u{1b}\u{7f}\u{85}\u{2028}y";

    #[test]
    fn sd_param_values_are_escaped_and_controls_replaced() {
        assert_eq!(sd_param_value(r#"a"b\c]d"#), r#"a\"b\\c\]d"#);
        assert_eq!(sd_param_value("plain name"), "plain name");
        assert_eq!(
            sd_param_value(FORGED),
            "x\u{fffd}<0>1 FORGED\u{fffd}\\\"\\]\\\\\u{fffd}\u{fffd}\u{fffd}\u{fffd}\u{fffd}y"
        );
    }

    /// RFC 5424 §6.3.3 PARAM-VALUEs of one SD element, unescaped: what a
    /// receiver makes of them.
    fn sd_values(msg: &str) -> (Vec<(String, String)>, &str) {
        let start = msg.find(&format!("[{SD_ID} ")).expect("an SD element");
        let mut it = msg[start + SD_ID.len() + 2..].char_indices();
        let mut out = Vec::new();
        let (mut name, mut value, mut in_value) = (String::new(), String::new(), false);
        while let Some((i, c)) = it.next() {
            match (in_value, c) {
                (false, ']') => return (out, &msg[start + SD_ID.len() + 3 + i..]),
                (false, '=') => {
                    assert_eq!(it.next().map(|(_, c)| c), Some('"'));
                    in_value = true;
                }
                (false, ' ') => {}
                (false, c) => name.push(c),
                (true, '\\') => {
                    let (_, n) = it.next().unwrap();
                    if !matches!(n, '"' | '\\' | ']') {
                        value.push('\\');
                    }
                    value.push(n);
                }
                (true, '"') => {
                    out.push((std::mem::take(&mut name), std::mem::take(&mut value)));
                    in_value = false;
                }
                (true, ']') => panic!("unescaped ] in a PARAM-VALUE: {msg}"),
                (true, c) => value.push(c),
            }
        }
        panic!("unterminated SD element: {msg}")
    }

    #[test]
    fn a_forged_process_name_makes_one_message_with_our_pri() {
        let mut ev = event();
        ev["process.executable.name"] = json!(FORGED);
        ev["process.command_line"] = json!(format!("{FORGED} --flag"));
        let msg = format(&head_of(&ev), &ev, Facility::Daemon, "host1", "tcpq", 42);
        assert!(!msg.chars().any(|c| c.is_control()), "{msg:?}");
        assert!(!msg.contains('\u{2028}'));
        assert!(msg.starts_with("<28>1 ") && msg.matches("<0>").count() == 3); // in SD, and twice in MSG
        let (params, rest) = sd_values(&msg);
        let process = params.iter().find(|(n, _)| n == "process").unwrap();
        assert_eq!(
            process.1,
            "x\u{fffd}<0>1 FORGED\u{fffd}\"]\\\u{fffd}\u{fffd}\u{fffd}\u{fffd}\u{fffd}y"
        );
        // MSG: the exact event.
        let json: Value = serde_json::from_str(rest.trim_start()).unwrap();
        assert_eq!(json["process.executable.name"], FORGED);
        assert_eq!(json, ev);
    }

    #[test]
    fn fit_cuts_at_field_boundaries_into_valid_json() {
        let fmt = |v: &Value| format(&head_of(v), v, Facility::Daemon, "h", "tcpq", 1);
        let small = event();
        assert_eq!(fit(&small, 1000, fmt), fmt(&small));
        let mut big = event();
        big["process.command_line"] = json!("a".repeat(100_000));
        big["cgroup.path"] = json!(format!("/{}", "é".repeat(20_000)));
        big["process.holders"] = json!((0..3000).collect::<Vec<u32>>());
        for limit in [65_000, 20_000, 2_000, 600] {
            let msg = fit(&big, limit, fmt);
            assert!(msg.len() <= limit, "{limit}: {}", msg.len());
            let json: Value = serde_json::from_str(&msg[msg.find("] {").unwrap() + 2..]).unwrap();
            assert_eq!(json["truncated"], true);
            for k in [
                "timestamp",
                "event",
                "count",
                "server.port",
                "network.netns",
            ] {
                assert_eq!(json[k], big[k], "{limit}: {k}");
            }
            let keys = json["truncated.keys"].as_array().unwrap();
            assert!(keys.contains(&json!("process.command_line")), "{limit}");
            // What is left of a shortened string is a prefix of it.
            if let Some(c) = json["process.command_line"].as_str() {
                assert!(big["process.command_line"].as_str().unwrap().starts_with(c));
            }
            if let Some(c) = json["cgroup.path"].as_str() {
                assert!(big["cgroup.path"].as_str().unwrap().starts_with(c));
            }
            assert!(
                msg.starts_with("<29>1 ") || msg.starts_with("<28>1 "),
                "{msg:.40}"
            );
        }
        // At 65 000 only the largest field, the command line, is
        // shortened (not dropped), by what was too much.
        let msg = fit(&big, 65_000, fmt);
        let json: Value = serde_json::from_str(&msg[msg.find("] {").unwrap() + 2..]).unwrap();
        assert!(json["process.command_line"].as_str().unwrap().len() > 5_000);
        assert!(
            json["cgroup.path"] == big["cgroup.path"],
            "cgroup.path was cut"
        );
        assert!(
            json["process.holders"] == big["process.holders"],
            "holders were cut"
        );
        assert_eq!(json["truncated.keys"], json!(["process.command_line"]));
        assert!(msg.len() > 64_000, "{}", msg.len());
        // Not an object, or a limit nothing fits: still a message, cut.
        assert!(fit(&json!("x".repeat(100)), 50, fmt).len() <= 120);
        assert!(fit(&big, 10, fmt).len() <= 10);
    }

    #[tokio::test(flavor = "current_thread")]
    async fn udp_cuts_big_messages_and_counts_them() {
        let rx = UdpSocket::bind("127.0.0.1:0").await.unwrap();
        let log = Syslog::start(cfg(&format!("udp://{}", rx.local_addr().unwrap())))
            .await
            .unwrap();
        let mut big = event();
        big["process.command_line"] = json!("c".repeat(80_000));
        send(&log, &big);
        send(&log, &event());
        let mut buf = vec![0; 70_000];
        let n = rx.recv(&mut buf).await.unwrap();
        assert!(n <= MAX_DATAGRAM, "{n}");
        let msg = std::str::from_utf8(&buf[..n]).unwrap();
        let json: Value = serde_json::from_str(&msg[msg.find("] {").unwrap() + 2..]).unwrap();
        assert_eq!(json["truncated"], true);
        assert_eq!(json["truncated.keys"], json!(["process.command_line"]));
        let n = rx.recv(&mut buf).await.unwrap();
        assert_eq!(std::str::from_utf8(&buf[..n]).unwrap(), expected());
        log.flush(Duration::from_secs(1)).await;
        let st = log.stats();
        assert_eq!(
            (
                st.sent.load(Relaxed),
                st.truncated.load(Relaxed),
                st.dropped.load(Relaxed)
            ),
            (2, 1, 0)
        );
        assert_eq!(st.queued.load(Relaxed), 0);
    }

    #[tokio::test(flavor = "current_thread")]
    async fn a_new_target_gets_the_old_queue() {
        // The old target goes away; messages queue for it.
        let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let mut log = Syslog::start(cfg(&format!("tcp://{}", l.local_addr().unwrap())))
            .await
            .unwrap();
        let stats = log.stats();
        let (s, _) = l.accept().await.unwrap();
        drop((s, l));
        for _ in 0..200 {
            if !stats.connected.load(Relaxed) {
                break;
            }
            sleep(Duration::from_millis(10)).await;
        }
        for i in 0..14 {
            send(&log, &json!({"event": format!("q{i}")}));
        }
        sleep(Duration::from_millis(500)).await; // retries refused meanwhile
        assert_eq!(stats.queued.load(Relaxed), 14);
        // A reload names a new target.
        let l2 = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let c2 = cfg(&format!("tcp://{}", l2.local_addr().unwrap()));
        let conn = connect_to(&c2.target).await.unwrap();
        assert!(log.retarget(c2.clone(), conn));
        assert_eq!(log.target(), &c2.target);
        let (mut s2, _) = l2.accept().await.unwrap();
        let mut buf = Vec::new();
        for i in 0..14 {
            let frame = read_frame(&mut s2, &mut buf).await;
            assert!(frame.contains(&format!(" q{i} ")), "{frame}");
        }
        send(&log, &json!({"event": "after"}));
        assert!(read_frame(&mut s2, &mut buf).await.contains(" after "));
        log.flush(Duration::from_secs(1)).await;
        assert_eq!(
            (
                stats.sent.load(Relaxed),
                stats.dropped.load(Relaxed),
                stats.queued.load(Relaxed)
            ),
            (15, 0, 0)
        );
        // Stopped with messages still queued (target gone): counted as dropped.
        drop((s2, l2));
        for _ in 0..200 {
            if !stats.connected.load(Relaxed) {
                break;
            }
            sleep(Duration::from_millis(10)).await;
        }
        send(&log, &json!({"event": "never"}));
        send(&log, &json!({"event": "never"}));
        sleep(Duration::from_millis(50)).await;
        drop(log);
        sleep(Duration::from_millis(50)).await; // the aborted task is dropped
        assert_eq!(
            (stats.dropped.load(Relaxed), stats.queued.load(Relaxed)),
            (2, 0)
        );
    }

    #[tokio::test(flavor = "current_thread")]
    async fn unix_stream_gets_one_line_per_message_whatever_the_name() {
        let t = SystemTime::now()
            .duration_since(SystemTime::UNIX_EPOCH)
            .unwrap();
        let path = std::env::temp_dir().join(format!(
            "tcpq-syslog-forged-{}-{}.stream",
            std::process::id(),
            t.as_nanos()
        ));
        let l = tokio::net::UnixListener::bind(&path).unwrap();
        let log = Syslog::start(cfg(&format!("unix://{}", path.display())))
            .await
            .unwrap();
        let (mut s, _) = l.accept().await.unwrap();
        for i in 0..45 {
            let mut ev = event();
            ev["process.executable.name"] = json!(format!("{FORGED}{i}"));
            send(&log, &ev);
        }
        log.flush(Duration::from_secs(2)).await;
        drop(log);
        let mut got = Vec::new();
        while read_some(&mut s, &mut got).await > 0 {}
        let text = String::from_utf8(got).unwrap();
        let records: Vec<&str> = text.lines().collect();
        assert_eq!(records.len(), 45);
        for (i, r) in records.iter().enumerate() {
            assert!(r.starts_with("<28>1 "), "{r}");
            let (_, rest) = sd_values(r);
            let json: Value = serde_json::from_str(rest.trim_start()).unwrap();
            assert_eq!(json["process.executable.name"], format!("{FORGED}{i}"));
        }
        let _ = std::fs::remove_file(&path);
    }
}

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
use std::time::{Duration, SystemTime};

use anyhow::{anyhow, bail, Result};
use serde_json::Value;
use tokio::io::AsyncWrite;
use tokio::net::{TcpStream, UdpSocket, UnixDatagram, UnixStream};
use tokio::sync::{mpsc, oneshot};
use tokio::time::{sleep, timeout};

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

/// Severity (RFC 5424 §6.2.1) of a JSON line: periodic state is Info even
/// when it carries a verdict; a verdict marks trouble (Warning); lost
/// events are an Error; other events are Notice.
pub fn severity(event: &Value) -> u8 {
    match event.get("event").and_then(Value::as_str) {
        Some("events_lost") => 3,
        Some("listener_snapshot" | "agent_health") => 6,
        _ if event.get("verdict.cause").is_some() => 4,
        _ => 5,
    }
}

/// One RFC 5424 message, without transport framing (see the module doc).
pub fn format(
    event: &Value,
    facility: Facility,
    hostname: &str,
    app_name: &str,
    pid: u32,
) -> String {
    let name = event.get("event").and_then(Value::as_str);
    let severity = severity(event);
    let at = event.get("timestamp").and_then(Value::as_str);
    let at = at.and_then(|t| humantime::parse_rfc3339(t).ok());
    let timestamp = humantime::format_rfc3339_millis(at.unwrap_or_else(SystemTime::now));
    let msgid = name.filter(|n| !n.is_empty() && n.bytes().all(|b| b.is_ascii_graphic()));
    let msgid = msgid.map_or("-", |n| &n[..n.len().min(32)]);
    let mut sd = String::new();
    for (key, param) in SD_PARAMS {
        let value = match event.get(key) {
            None | Some(Value::Null) => continue,
            Some(Value::String(s)) => s.clone(),
            Some(v) => v.to_string(),
        };
        // PARAM-VALUE escaping (§6.3.3).
        let value = value
            .replace('\\', r"\\")
            .replace('"', r#"\""#)
            .replace(']', r"\]");
        sd += &format!(" {param}=\"{value}\"");
    }
    let sd = if sd.is_empty() {
        "-".into()
    } else {
        format!("[{SD_ID}{sd}]")
    };
    format!(
        "<{}>1 {timestamp} {} {} {} {msgid} {sd} {}",
        facility as u8 * 8 + severity,
        header_field(hostname, 255),
        header_field(app_name, 48),
        header_field(&pid.to_string(), 128),
        serde_json::to_string(event).unwrap_or_default(),
    )
}

/// Sender configuration.
#[derive(Debug, Clone, PartialEq)]
pub struct Config {
    pub target: Target,
    pub facility: Facility,
    pub app_name: String,
}

/// Health counters, exported as metrics.
#[derive(Debug, Default)]
pub struct Stats {
    /// Messages written to the socket.
    pub sent: AtomicU64,
    /// Queue full, or a datagram the socket refused as too big (EMSGSIZE).
    pub dropped: AtomicU64,
    /// Successful reconnections after a lost connection.
    pub reconnects: AtomicU64,
    pub connected: AtomicBool,
}

#[derive(Debug)]
enum Item {
    Msg(String),
    /// Answered once everything queued before it was written.
    Flush(oneshot::Sender<()>),
}

enum Conn {
    UnixDgram(UnixDatagram),
    UnixStream(UnixStream),
    Udp(UdpSocket),
    Tcp(TcpStream),
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

/// Writes one message with the transport's framing.
async fn write(conn: &mut Conn, msg: &str) -> io::Result<()> {
    if peer_gone(conn) {
        return Err(io::ErrorKind::BrokenPipe.into());
    }
    let dgram = truncate_utf8(msg, MAX_DATAGRAM).as_bytes();
    match conn {
        Conn::UnixDgram(s) => s.send(dgram).await.map(drop),
        Conn::Udp(s) => s.send(dgram).await.map(drop),
        Conn::UnixStream(s) => write_all(s, format!("{msg}\n").as_bytes()).await,
        Conn::Tcp(s) => write_all(s, format!("{} {msg}", msg.len()).as_bytes()).await,
    }
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

/// The sender task: owns the connection and the receiving end of the queue.
async fn run(target: Target, conn: Conn, mut rx: mpsc::Receiver<Item>, stats: Arc<Stats>) {
    let mut conn = Some(conn);
    let mut head = None; // taken from the queue, not yet written
    let mut backoff = BACKOFF_MIN;
    loop {
        let Some(c) = conn.as_mut() else {
            sleep(backoff).await;
            backoff = (backoff * 2).min(BACKOFF_MAX);
            if let Ok(Ok(c)) = timeout(CONNECT_TIMEOUT, connect(&target)).await {
                conn = Some(c);
                stats.reconnects.fetch_add(1, Relaxed);
                stats.connected.store(true, Relaxed);
            }
            continue;
        };
        let item = match head.take() {
            Some(msg) => Item::Msg(msg),
            None => tokio::select! {
                item = rx.recv() => match item {
                    Some(item) => item,
                    None => return, // the handle is gone
                },
                () = closed(c) => {
                    conn = None;
                    stats.connected.store(false, Relaxed);
                    continue;
                }
            },
        };
        let msg = match item {
            Item::Msg(msg) => msg,
            Item::Flush(done) => {
                let _ = done.send(());
                continue;
            }
        };
        match write(c, &msg).await {
            Ok(()) => {
                stats.sent.fetch_add(1, Relaxed);
                // Reset only once a write worked: connecting a UDP socket
                // always works, refusals show up on a later send.
                backoff = BACKOFF_MIN;
            }
            // Too big for this socket: retrying would block the queue forever.
            Err(e) if e.raw_os_error() == Some(libc::EMSGSIZE) => {
                stats.dropped.fetch_add(1, Relaxed);
            }
            // Also ECONNREFUSED/ENOENT on datagrams: nobody listens right now.
            Err(_) => {
                head = Some(msg);
                conn = None;
                stats.connected.store(false, Relaxed);
            }
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

/// Handle on the sender task; dropping it ends the task (flush first).
#[derive(Debug)]
pub struct Syslog {
    cfg: Config,
    hostname: String,
    tx: mpsc::Sender<Item>,
    stats: Arc<Stats>,
    task: tokio::task::JoinHandle<()>,
}

impl Syslog {
    /// Connects once (within 3 s), then spawns the sender task on the current runtime.
    pub async fn start(cfg: Config) -> Result<Syslog> {
        let conn = match timeout(CONNECT_TIMEOUT, connect(&cfg.target)).await {
            Ok(Ok(c)) => c,
            Ok(Err(e)) => {
                // "Connection refused (os error 111)" -> "connection refused"
                let e = e.to_string().to_lowercase();
                let e = e.split(" (os error").next().unwrap_or_default();
                bail!("syslog target {}: {e}", cfg.target)
            }
            Err(_) => bail!("syslog target {}: no connection within 3 s", cfg.target),
        };
        let stats = Arc::new(Stats::default());
        stats.connected.store(true, Relaxed);
        let (tx, rx) = mpsc::channel(QUEUE);
        let task = tokio::spawn(run(cfg.target.clone(), conn, rx, stats.clone()));
        let hostname = local_hostname();
        Ok(Syslog {
            cfg,
            hostname,
            tx,
            stats,
            task,
        })
    }

    /// Queues one event without blocking; counts it as dropped if the queue is full.
    pub fn send(&self, event: &Value) {
        let (c, pid) = (&self.cfg, std::process::id());
        let msg = format(event, c.facility, &self.hostname, &c.app_name, pid);
        if self.tx.try_send(Item::Msg(msg)).is_err() {
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

    /// What the sender in this process makes of `event()`.
    fn expected() -> String {
        let (host, pid) = (local_hostname(), std::process::id());
        format(&event(), Facility::Daemon, &host, "tcpq", pid)
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
        format(&ev, Facility::Local7, &"h".repeat(300), "a", 1)
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
            format(&event(), Facility::Daemon, "host1", "tcpq", 42),
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
        assert_eq!(format(&ev, Facility::User, "", "my app", 7), want);
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
        udp.send(&event());
        let mut buf = vec![0; 70_000];
        let n = rx.recv(&mut buf).await.unwrap();
        assert_eq!(std::str::from_utf8(&buf[..n]).unwrap(), expected());

        let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let tcp = Syslog::start(cfg(&format!("tcp://{}", l.local_addr().unwrap()))).await;
        let tcp = tcp.unwrap();
        let (mut s, _) = l.accept().await.unwrap();
        tcp.send(&event());
        tcp.send(&json!({"event": "second"}));
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
        log.send(&event());
        let mut buf = vec![0; 70_000];
        let n = rx.recv(&mut buf).await.unwrap();
        assert_eq!(std::str::from_utf8(&buf[..n]).unwrap(), expected());
        // The receiver restarts (as rsyslog does): the message waits for it.
        drop(rx);
        std::fs::remove_file(&dgram).unwrap();
        log.send(&json!({"event": "later"}));
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
        log.send(&event());
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
        log.send(&json!({"event": "e0"}));
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
            log.send(&json!({"event": format!("e{i}")}));
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
}

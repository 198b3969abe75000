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
//!
//! `format` makes a message from a typed [`Line`], `fit` cuts one to a
//! size, `transport` connects and runs the sender task; here the handle.

mod fit;
mod format;
mod transport;

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed};
use std::sync::Arc;
use std::time::Duration;

use anyhow::Result;
use tokio::sync::{mpsc, oneshot};

pub use crate::export::head::{Head, Severity};
use crate::export::line::Line;
pub use fit::fit;
pub use format::{format, sd_param_value, Facility};
pub use transport::{connect_to, Connection, Target};
use transport::{done, Conn, Item, Msg};

const QUEUE: usize = 10_000;
/// Datagram limit, below UDP's 65507-byte maximum payload.
const MAX_DATAGRAM: usize = 65_000;

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

fn local_hostname() -> String {
    let mut buf = [0u8; 256];
    // SAFETY: buf is writable for buf.len() bytes.
    if unsafe { libc::gethostname(buf.as_mut_ptr().cast(), buf.len()) } != 0 {
        return String::new();
    }
    let end = buf.iter().position(|&b| b == 0).unwrap_or(buf.len());
    String::from_utf8_lossy(&buf[..end]).into_owned()
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
        let task = tokio::spawn(transport::run(
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

    /// Queues one line without blocking; counts it as dropped if the queue is full.
    pub fn send(&self, line: &Line) {
        let (c, pid) = (&self.cfg, std::process::id());
        let fmt = |l: &Line| format(l, c.facility, &self.hostname, &c.app_name, pid);
        let whole = fmt(line);
        let cut = (whole.len() > MAX_DATAGRAM).then(|| fit(line, MAX_DATAGRAM, fmt));
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
mod fixtures {
    //! Lines, senders and receivers the syslog tests share.
    use super::format::SD_ID;
    use super::*;
    use crate::export::line::Attr;
    use std::pin::Pin;
    use std::time::SystemTime;
    use tokio::io::{AsyncRead, ReadBuf};
    use tokio::net::TcpStream;

    pub(super) fn event() -> Line<'static> {
        line(vec![
            ("timestamp", Attr::str("2025-11-21T01:20:00.123Z")),
            ("event", Attr::str("listen_overflow")),
            ("count", Attr::U64(5)),
            ("server.address", Attr::str("::1")),
            ("server.port", Attr::U64(6379)),
            ("network.netns", Attr::U64(4026532000)),
            ("process.executable.name", Attr::str("redis-server")),
            ("verdict.cause", Attr::str("accept_slow")),
        ])
    }

    /// A line of `attrs` with the head such a line has in the agent: its
    /// time, event and severity (a verdict is a Warning, lost events an
    /// Error, state Info).
    pub(super) fn line(attrs: Vec<(&'static str, Attr)>) -> Line<'static> {
        let mut l = Line::new(Head::lost(SystemTime::now()));
        for (k, a) in attrs {
            l.set(k, a);
        }
        // Leaked: a test's few names.
        let event: &'static str = Box::leak(l.str("event").unwrap_or("").into());
        let at = l.str("timestamp");
        l.head = Head {
            at: at.map_or_else(SystemTime::now, |t| humantime::parse_rfc3339(t).unwrap()),
            event,
            severity: match event {
                "events_lost" => Severity::Err,
                "listener_snapshot" | "agent_health" => Severity::Info,
                _ if l.get("verdict.cause").is_some() => Severity::Warning,
                _ => Severity::Notice,
            },
        };
        l
    }

    /// A line with only its event.
    pub(super) fn named(event: &str) -> Line<'static> {
        line(vec![("event", Attr::str(event))])
    }

    pub(super) fn send(log: &Syslog, l: &Line) {
        log.send(l);
    }

    /// What the sender in this process makes of `event()`.
    pub(super) fn expected() -> String {
        let (host, pid) = (local_hostname(), std::process::id());
        format(&event(), Facility::Daemon, &host, "tcpq", pid)
    }

    pub(super) fn cfg(target: &str) -> Config {
        let target = Target::parse(target).unwrap();
        Config {
            target,
            facility: Facility::Daemon,
            app_name: "tcpq".into(),
        }
    }

    /// Appends what one read gives; 0 at EOF.
    pub(super) async fn read_some<R: AsyncRead + Unpin>(r: &mut R, to: &mut Vec<u8>) -> usize {
        let mut buf = [0u8; 4096];
        let mut rb = ReadBuf::new(&mut buf);
        let res = std::future::poll_fn(|cx| Pin::new(&mut *r).poll_read(cx, &mut rb)).await;
        res.unwrap();
        to.extend_from_slice(rb.filled());
        rb.filled().len()
    }

    /// Reads one RFC 6587 octet-counted frame; `buf` keeps what came after it.
    pub(super) async fn read_frame(s: &mut TcpStream, buf: &mut Vec<u8>) -> String {
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
    pub(super) fn short(l: Line) -> String {
        format(&l, Facility::Local7, &"h".repeat(300), "a", 1)
    }

    pub(super) const FORGED: &str = "x\n<0>1 FORGED\r\"]\\\t\u{1b}\u{7f}\u{85}\u{2028}y";

    /// RFC 5424 §6.3.3 PARAM-VALUEs of one SD element, unescaped: what a
    /// receiver makes of them.
    pub(super) fn sd_values(msg: &str) -> (Vec<(String, String)>, &str) {
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
}

#[cfg(test)]
mod tests {
    use super::fixtures::*;
    use super::*;
    use crate::export::line::Attr;
    use serde_json::{json, Value};
    use std::time::SystemTime;
    use tokio::net::{TcpListener, UdpSocket, UnixDatagram};
    use tokio::time::sleep;

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
        send(&tcp, &named("second"));
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
        send(&log, &named("later"));
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
        send(&log, &named("e0"));
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
            send(&log, &named(&format!("e{i}")));
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

    #[tokio::test(flavor = "current_thread")]
    async fn udp_cuts_big_messages_and_counts_them() {
        let rx = UdpSocket::bind("127.0.0.1:0").await.unwrap();
        let log = Syslog::start(cfg(&format!("udp://{}", rx.local_addr().unwrap())))
            .await
            .unwrap();
        let mut big = event();
        big.set("process.command_line", Attr::Str("c".repeat(80_000)));
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
            send(&log, &named(&format!("q{i}")));
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
        send(&log, &named("after"));
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
        send(&log, &named("never"));
        send(&log, &named("never"));
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
            ev.set("process.executable.name", Attr::Str(format!("{FORGED}{i}")));
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

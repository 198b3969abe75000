//! Syslog transports: connecting to a target (unix datagram or stream,
//! UDP, TCP), each transport's framing, and the sender task that owns the
//! connection and reconnects with backoff (see the module doc of
//! [`super`]).

use std::io;
use std::path::PathBuf;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{anyhow, bail, Result};
use tokio::io::AsyncWrite;
use tokio::net::{TcpStream, UdpSocket, UnixDatagram, UnixStream};
use tokio::sync::{mpsc, oneshot};
use tokio::time::{sleep, timeout};

use super::{format::truncate_utf8, Stats, MAX_DATAGRAM};

const CONNECT_TIMEOUT: Duration = Duration::from_secs(3);
const BACKOFF_MIN: Duration = Duration::from_millis(200);
const BACKOFF_MAX: Duration = Duration::from_secs(5);

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

/// One formatted message, and the form cut to fit a datagram when the
/// whole one does not (made at once: the target may change before it is
/// sent).
#[derive(Debug)]
pub(super) struct Msg {
    pub(super) whole: String,
    pub(super) cut: Option<String>,
}

#[derive(Debug)]
pub(super) enum Item {
    Msg(Msg),
    /// Answered once everything queued before it was written.
    Flush(oneshot::Sender<()>),
}

/// A connection to a target, made before a sender takes it over
/// ([`Syslog::retarget`]).
pub struct Connection(pub(super) Conn);

impl std::fmt::Debug for Connection {
    fn fmt(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        f.write_str("Connection")
    }
}

pub(super) enum Conn {
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
pub(super) fn done(stats: &Stats) {
    let _ = stats
        .queued
        .fetch_update(Relaxed, Relaxed, |n| Some(n.saturating_sub(1)));
}

/// The sender task: owns the connection and the receiving end of the
/// queue. A new target (a reload) arrives with its connection made; what
/// is queued, and a message a write to the old target was interrupted in,
/// go to it.
pub(super) async fn run(
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

#[cfg(test)]
mod tests {
    use super::super::Facility;
    use super::*;

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
}

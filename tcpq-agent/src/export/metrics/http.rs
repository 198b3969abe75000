//! The HTTP server behind `GET /metrics` (hyper), hardened against idle
//! connections and slow clients: see the constants below.

use std::convert::Infallible;
use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

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

use super::conns::{fd_limit, lock, Conns, Slot};
use super::registry::{Registry, Type};

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

#[cfg(test)]
mod tests {
    use super::super::fixtures::*;
    use super::super::listen::bind;
    use super::*;
    use std::net::SocketAddr;

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
}

//! Reproduces listener failure modes on loopback, inside whatever network
//! namespace it is started in (the tests start it with `ip netns exec`).
//! Every mode is bounded in connections and time, then exits.
//!
//!   tcpq-scenario listen PORT BACKLOG [HOLD_SECS]
//!       listen and never accept (prints `ready` once listening)
//!   tcpq-scenario syn-overflow PORT CLIENTS SYNCNT HOLD_SECS
//!       listen(0), never accept; CLIENTS non-blocking connects with
//!       TCP_SYNCNT=SYNCNT; the first fills the queue, the rest are dropped
//!       at SYN time (each SYN and each retransmit)
//!   tcpq-scenario connect PORT CLIENTS SYNCNT HOLD_SECS
//!       only the clients, against a listener started elsewhere
//!   tcpq-scenario ack-overflow PORT HOLD_SECS
//!       listen(1); client B delays its final ACK (TCP_DEFER_ACCEPT on the
//!       client), A1 and A2 fill the queue meanwhile: B's ACK overflows
//!   tcpq-scenario slow-accept PORT CLIENTS ACCEPTS HOLD_SECS
//!       listen(1); CLIENTS connects (TCP_SYNCNT=3), then ACCEPTS accept()s
//!       300 ms apart while the rest keep overflowing; prints `accepted N`
//!   tcpq-scenario refused PORT COUNT
//!       COUNT connects to a closed port (each answered by a RST)
//!   tcpq-scenario syn-queue PORT BACKLOG CLIENTS HOLD_SECS
//!       TCP_DEFER_ACCEPT=30 on the listener, listen(BACKLOG), never accept;
//!       CLIENTS idle non-blocking clients (TCP_SYNCNT=1) 100 ms apart stay in
//!       the SYN queue until it is full (or the 3/4 rule of
//!       tcp_max_syn_backlog drops them, syncookies=0); prints
//!       `syn_queue established=E syn_sent=S other=O` (client states)
//!   tcpq-scenario accept-emfile PORT CLIENTS ATTEMPTS HOLD_SECS
//!       listen(16), CLIENTS (at most 17) connects, then RLIMIT_NOFILE
//!       (soft) lowered to the lowest free fd: ATTEMPTS accept()s 10 ms apart fail with EMFILE while
//!       the connections stay queued; prints
//!       `accept_errors EMFILE=N other=M accepted=K`
//!   tcpq-scenario close-wait PORT CONNS HOLD_SECS
//!       CONNS accepted connections closed by their clients, never by the
//!       server: CONNS sockets in CLOSE_WAIT; prints `close_wait N`
//!   tcpq-scenario port-exhaust PORT ATTEMPTS HOLD_SECS
//!       (with a small ip_local_port_range) ATTEMPTS blocking connects, every
//!       successful one kept open, a thread accepting them; prints
//!       `connect EADDRNOTAVAIL=N ok=K other=M`
//!   tcpq-scenario tw-exhaust PORT CYCLES ATTEMPTS HOLD_SECS
//!       CYCLES connect+close with the client closing first (its side goes
//!       TIME_WAIT; the server closes once the client is in FIN_WAIT2), then
//!       ATTEMPTS connects (EADDRNOTAVAIL with
//!       tcp_tw_reuse=0 once TIME_WAIT holds every local port); prints
//!       `connect EADDRNOTAVAIL=N ok=K other=M time_wait_cycles=C`
//!   tcpq-scenario connect-timeout PORT HOLD_SECS
//!       TCP_DEFER_ACCEPT listener, listen(1), two idle clients fill the SYN
//!       queue (syncookies=0), then a blocking connect with TCP_SYNCNT=1 times
//!       out after ~3 s (its SYNs are dropped as TCPReqQFullDrop); prints
//!       `connect ETIMEDOUT=N other=M`
//!   tcpq-scenario accept-delay PORT CONNS DELAY_MS HOLD_SECS
//!       listen(64), CONNS (at most 65) connects, DELAY_MS later all are
//!       accepted; prints `accepted N`
//!   tcpq-scenario reset-peer PORT CONNS
//!       CONNS accepted connections closed by the server with SO_LINGER
//!       {on, 0} (a RST); each client's read() fails; prints `reset N`
//!       (the ECONNRESET count)
//!   tcpq-scenario abort-client PORT CONNS REQUEST
//!       CONNS clients of a server on PORT, each sending the line REQUEST,
//!       reading the answer and closing with SO_LINGER {on, 0} (a RST);
//!       prints `aborted N` (the answers read)
//!
//!   tcpq-scenario churn PORT PORTS WORKERS LIFE_MS SECS
//!       for SECS: WORKERS forked children at a time, each listening on
//!       the next of PORTS ports from PORT (listen(0), 2 clients: an
//!       overflow), living LIFE_MS; prints `churn listeners=N`
//!
//!   tcpq-scenario reuseport PORT BACKLOG HOLD_SECS
//!       two processes (parent and a forked child), each with its own
//!       SO_REUSEPORT listener on PORT, never accepting; prints `ready
//!       PARENT` then `member CHILD`
//!   tcpq-scenario fork-listen PORT BACKLOG HOLD_SECS PARENT_SECS
//!       a listener inherited by a forked child; the parent exits after
//!       PARENT_SECS, the child holds it until HOLD_SECS; prints `ready
//!       PARENT` then `child CHILD`
//!
//! Loopback over IPv4 (127.0.0.1), or IPv6 (::1) with TCPQ_SCENARIO_V6=1.
//! TCPQ_SCENARIO_COMM=NAME: the process names itself NAME first
//! (prctl(PR_SET_NAME), any bytes, at most 15).
use std::{
    io,
    net::{Ipv4Addr, Ipv6Addr},
    os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd},
    sync::{
        atomic::{AtomicBool, Ordering},
        mpsc, Arc,
    },
    thread::{self, sleep},
    time::{Duration, Instant},
};

fn check(rc: i32, what: &str) -> io::Result<i32> {
    if rc < 0 {
        let e = io::Error::last_os_error();
        Err(io::Error::new(e.kind(), format!("{what}: {e}")))
    } else {
        Ok(rc)
    }
}

fn v6() -> bool {
    std::env::var("TCPQ_SCENARIO_V6").is_ok_and(|v| v == "1")
}

/// The loopback address and `port` as a sockaddr_storage, with its length.
fn sockaddr(port: u16) -> (libc::sockaddr_storage, u32) {
    // SAFETY: all-zero is a valid sockaddr_storage.
    let mut ss: libc::sockaddr_storage = unsafe { std::mem::zeroed() };
    let len = if v6() {
        let sa = libc::sockaddr_in6 {
            sin6_family: libc::AF_INET6 as u16,
            sin6_port: port.to_be(),
            sin6_flowinfo: 0,
            sin6_addr: libc::in6_addr {
                s6_addr: Ipv6Addr::LOCALHOST.octets(),
            },
            sin6_scope_id: 0,
        };
        // SAFETY: sockaddr_storage is large enough for any sockaddr.
        unsafe { std::ptr::write((&raw mut ss).cast::<libc::sockaddr_in6>(), sa) };
        std::mem::size_of::<libc::sockaddr_in6>()
    } else {
        let sa = libc::sockaddr_in {
            sin_family: libc::AF_INET as u16,
            sin_port: port.to_be(),
            sin_addr: libc::in_addr {
                s_addr: u32::from(Ipv4Addr::LOCALHOST).to_be(),
            },
            sin_zero: [0; 8],
        };
        // SAFETY: as above.
        unsafe { std::ptr::write((&raw mut ss).cast::<libc::sockaddr_in>(), sa) };
        std::mem::size_of::<libc::sockaddr_in>()
    };
    (ss, len as u32)
}

fn tcp_socket() -> io::Result<OwnedFd> {
    let family = if v6() { libc::AF_INET6 } else { libc::AF_INET };
    let fd = check(
        unsafe { libc::socket(family, libc::SOCK_STREAM | libc::SOCK_CLOEXEC, 0) },
        "socket",
    )?;
    // SAFETY: a fresh descriptor nobody else owns.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

fn setopt(fd: RawFd, level: i32, opt: i32, v: i32) -> io::Result<()> {
    let p = (&raw const v).cast::<libc::c_void>();
    check(
        unsafe { libc::setsockopt(fd, level, opt, p, 4) },
        "setsockopt",
    )
    .map(|_| ())
}

fn listener(port: u16, backlog: i32) -> io::Result<OwnedFd> {
    let s = tcp_socket()?;
    setopt(s.as_raw_fd(), libc::SOL_SOCKET, libc::SO_REUSEADDR, 1)?;
    let (a, len) = sockaddr(port);
    check(
        unsafe { libc::bind(s.as_raw_fd(), (&raw const a).cast(), len) },
        "bind",
    )?;
    check(unsafe { libc::listen(s.as_raw_fd(), backlog) }, "listen")?;
    Ok(s)
}

/// A listener with SO_REUSEPORT (a member of a group on `port`).
fn reuseport_listener(port: u16, backlog: i32) -> io::Result<OwnedFd> {
    let s = tcp_socket()?;
    setopt(s.as_raw_fd(), libc::SOL_SOCKET, libc::SO_REUSEPORT, 1)?;
    let (a, len) = sockaddr(port);
    check(
        unsafe { libc::bind(s.as_raw_fd(), (&raw const a).cast(), len) },
        "bind",
    )?;
    check(unsafe { libc::listen(s.as_raw_fd(), backlog) }, "listen")?;
    Ok(s)
}

/// fork(2); the child gets 0. Only called while single-threaded.
fn fork() -> io::Result<i32> {
    // SAFETY: the scenario has no other threads at this point.
    check(unsafe { libc::fork() }, "fork")
}

/// Starts a connect; returns the socket and the error if it failed at once.
/// A socket's pending error (`SO_ERROR`), 0 if none.
fn so_error(fd: i32) -> i32 {
    let mut err: libc::c_int = 0;
    let mut len = std::mem::size_of::<libc::c_int>() as libc::socklen_t;
    // SAFETY: err and len are valid for the call; fd is a socket we own.
    let rc = unsafe {
        libc::getsockopt(
            fd,
            libc::SOL_SOCKET,
            libc::SO_ERROR,
            &mut err as *mut _ as *mut libc::c_void,
            &mut len,
        )
    };
    if rc == 0 {
        err
    } else {
        0
    }
}

fn connect(
    port: u16,
    syncnt: Option<i32>,
    nonblocking: bool,
    defer: bool,
) -> io::Result<(OwnedFd, Option<io::Error>)> {
    let s = tcp_socket()?;
    if let Some(n) = syncnt {
        setopt(s.as_raw_fd(), libc::IPPROTO_TCP, libc::TCP_SYNCNT, n)?;
    }
    if defer {
        setopt(s.as_raw_fd(), libc::IPPROTO_TCP, libc::TCP_DEFER_ACCEPT, 1)?;
    }
    if nonblocking {
        let fl = unsafe { libc::fcntl(s.as_raw_fd(), libc::F_GETFL) };
        check(
            unsafe { libc::fcntl(s.as_raw_fd(), libc::F_SETFL, fl | libc::O_NONBLOCK) },
            "fcntl",
        )?;
    }
    let (a, len) = sockaddr(port);
    let rc = unsafe { libc::connect(s.as_raw_fd(), (&raw const a).cast(), len) };
    let err = if rc < 0 {
        let e = io::Error::last_os_error();
        (e.raw_os_error() != Some(libc::EINPROGRESS)).then_some(e)
    } else {
        None
    };
    Ok((s, err))
}

/// Waits up to `ms` for `fd` to become readable (or to have an error/EOF).
fn readable(fd: RawFd, ms: i32) -> bool {
    let mut p = libc::pollfd {
        fd,
        events: libc::POLLIN,
        revents: 0,
    };
    // SAFETY: one valid pollfd, count 1.
    unsafe { libc::poll(&raw mut p, 1, ms) > 0 }
}

/// accept() on `l`; the error keeps its errno (`check` would drop it).
fn accept(l: RawFd) -> io::Result<OwnedFd> {
    // SAFETY: no peer address is asked for.
    let fd = unsafe { libc::accept(l, std::ptr::null_mut(), std::ptr::null_mut()) };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: a fresh descriptor nobody else owns.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// The socket's TCP state (`TCP_ESTABLISHED`, ...) from TCP_INFO.
fn tcp_state(fd: RawFd) -> Option<u8> {
    // SAFETY: all-zero is a valid tcp_info.
    let mut info: libc::tcp_info = unsafe { std::mem::zeroed() };
    let mut len = std::mem::size_of::<libc::tcp_info>() as libc::socklen_t;
    // SAFETY: `info` is writable for `len` bytes.
    let rc = unsafe {
        libc::getsockopt(
            fd,
            libc::IPPROTO_TCP,
            libc::TCP_INFO,
            (&raw mut info).cast(),
            &raw mut len,
        )
    };
    (rc == 0).then_some(info.tcpi_state)
}

const TCP_ESTABLISHED: u8 = 1;
const TCP_SYN_SENT: u8 = 2;
const TCP_FIN_WAIT2: u8 = 5;
const TCP_CLOSE: u8 = 7;
const TCP_CLOSE_WAIT: u8 = 8;

/// TCP_DEFER_ACCEPT on a listener: bare final ACKs are dropped and the
/// request stays in the SYN queue until data arrives (or `secs` pass).
fn defer_accept(l: &OwnedFd, secs: i32) -> io::Result<()> {
    setopt(
        l.as_raw_fd(),
        libc::IPPROTO_TCP,
        libc::TCP_DEFER_ACCEPT,
        secs,
    )
}

/// The server half of a close handshake: `go` says when to close an
/// accepted connection, `closed` reports that it was closed.
struct CloseOrder {
    go: mpsc::Receiver<()>,
    closed: mpsc::Sender<()>,
}

/// Accepts on `l` in a thread, keeping every connection open, until `stop`
/// is set, `max` were accepted or 10 minutes passed. With `order`, each
/// connection is instead read to EOF, closed once `go` says so, and reported
/// on `closed` (each wait at most 5 s, and cut short by `stop`). Returns the
/// number accepted.
fn acceptor(
    l: OwnedFd,
    max: usize,
    stop: Arc<AtomicBool>,
    order: Option<CloseOrder>,
) -> thread::JoinHandle<usize> {
    thread::spawn(move || {
        let deadline = Instant::now() + Duration::from_secs(600);
        let stopped = || stop.load(Ordering::Relaxed);
        let mut held = Vec::new();
        let mut accepted = 0;
        while accepted < max && !stopped() && Instant::now() < deadline {
            if !readable(l.as_raw_fd(), 50) {
                continue;
            }
            let Ok(c) = accept(l.as_raw_fd()) else {
                continue;
            };
            accepted += 1;
            let Some(order) = &order else {
                held.push(c);
                continue;
            };
            let mut buf = [0u8; 256];
            for _ in 0..100 {
                if stopped() || !readable(c.as_raw_fd(), 50) {
                    continue;
                }
                // SAFETY: `buf` is writable for its length.
                let n = unsafe { libc::read(c.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len()) };
                if n <= 0 {
                    break;
                }
            }
            for _ in 0..100 {
                if stopped() || order.go.recv_timeout(Duration::from_millis(50)).is_ok() {
                    break;
                }
            }
            drop(c);
            let _ = order.closed.send(());
        }
        accepted
    })
}

/// Polls the TCP state of `fd` every 10 ms until it is `want` (2 s at most).
fn wait_state(fd: RawFd, want: u8) -> bool {
    for _ in 0..200 {
        if tcp_state(fd) == Some(want) {
            return true;
        }
        sleep(Duration::from_millis(10));
    }
    false
}

/// Counts connect() results by errno: (EADDRNOTAVAIL, ok, other); keeps the
/// successful sockets in `held`.
fn count_connects(
    port: u16,
    attempts: usize,
    held: &mut Vec<OwnedFd>,
) -> io::Result<(usize, usize, usize)> {
    let (mut unavail, mut ok, mut other) = (0, 0, 0);
    for _ in 0..attempts.min(10_000) {
        match connect(port, Some(2), false, false)? {
            (s, None) => {
                ok += 1;
                held.push(s);
            }
            (_, Some(e)) if e.raw_os_error() == Some(libc::EADDRNOTAVAIL) => unavail += 1,
            (_, Some(_)) => other += 1,
        }
    }
    Ok((unavail, ok, other))
}

fn arg<T: std::str::FromStr>(args: &[String], i: usize, name: &str) -> T {
    args.get(i).and_then(|s| s.parse().ok()).unwrap_or_else(|| {
        eprintln!("tcpq-scenario: missing or bad {name}");
        std::process::exit(2)
    })
}

/// A pipe (read end, write end).
fn pipe() -> io::Result<(OwnedFd, OwnedFd)> {
    let mut fds = [0; 2];
    check(unsafe { libc::pipe(fds.as_mut_ptr()) }, "pipe")?;
    // SAFETY: fresh descriptors nobody else owns.
    Ok(unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) })
}

/// The pid of the last forked child, found as our only child in /proc.
fn child_pid() -> u32 {
    let me = std::process::id();
    std::fs::read_to_string(format!("/proc/{me}/task/{me}/children"))
        .ok()
        .and_then(|s| s.split_whitespace().next()?.parse().ok())
        .unwrap_or(0)
}

/// One `GET /` with `Connection: close`: whether the answer was a 200.
fn http_close(port: u16) -> io::Result<bool> {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(("127.0.0.1", port))?;
    s.set_read_timeout(Some(Duration::from_secs(5)))?;
    s.write_all(b"GET / HTTP/1.1\r\nHost: tcpq\r\nConnection: close\r\n\r\n")?;
    let mut answer = Vec::new();
    s.read_to_end(&mut answer)?;
    Ok(answer.starts_with(b"HTTP/1.1 200"))
}

/// SO_LINGER {on, 0}: closing the socket sends a RST.
fn reset_on_close(fd: RawFd) -> io::Result<()> {
    let lin = libc::linger {
        l_onoff: 1,
        l_linger: 0,
    };
    // SAFETY: a valid linger struct of the size passed.
    check(
        unsafe {
            libc::setsockopt(
                fd,
                libc::SOL_SOCKET,
                libc::SO_LINGER,
                (&raw const lin).cast(),
                std::mem::size_of::<libc::linger>() as libc::socklen_t,
            )
        },
        "setsockopt SO_LINGER",
    )?;
    Ok(())
}

fn ready() {
    println!("ready {}", std::process::id());
}

fn secs(v: f64) -> Duration {
    Duration::from_secs_f64(v.clamp(0.0, 120.0))
}

fn main() -> io::Result<()> {
    // TCPQ_SCENARIO_COMM: the name to give this process (PR_SET_NAME, at
    // most 15 bytes), whatever bytes it holds: a hostile name for the
    // exporters' tests.
    if let Some(name) = std::env::var_os("TCPQ_SCENARIO_COMM") {
        use std::os::unix::ffi::OsStrExt;
        let mut buf = [0u8; 16];
        let b = name.as_bytes();
        let n = b.len().min(15);
        buf[..n].copy_from_slice(&b[..n]);
        // SAFETY: buf is a NUL-terminated 16-byte buffer.
        check(
            unsafe { libc::prctl(libc::PR_SET_NAME, buf.as_ptr() as libc::c_ulong, 0, 0, 0) },
            "prctl(PR_SET_NAME)",
        )?;
    }
    let args: Vec<String> = std::env::args().skip(1).collect();
    let mode = args.first().map(String::as_str).unwrap_or("");
    match mode {
        "listen" => {
            let _l = listener(arg(&args, 1, "PORT"), arg(&args, 2, "BACKLOG"))?;
            ready();
            sleep(secs(
                args.get(3).and_then(|s| s.parse().ok()).unwrap_or(120.0),
            ));
        }
        "churn" => {
            // Listeners and processes born and gone continuously: WORKERS
            // at a time, each a forked child that listens on the next port
            // of PORTS, overflows its queue with 2 clients, lives LIFE_MS
            // and exits.
            let base: u16 = arg(&args, 1, "PORT");
            let ports: u16 = arg(&args, 2, "PORTS");
            let workers: usize = arg(&args, 3, "WORKERS");
            let life_ms: u64 = arg(&args, 4, "LIFE_MS");
            let total = secs(arg(&args, 5, "SECS"));
            ready();
            let start = std::time::Instant::now();
            let mut next = 0u32;
            let mut live: Vec<i32> = Vec::new();
            let mut born = 0u64;
            while start.elapsed() < total {
                while live.len() < workers.clamp(1, 16) {
                    let port = base + (next % ports.max(1) as u32) as u16;
                    next += 1;
                    match fork()? {
                        0 => {
                            let code = match listener(port, 0) {
                                Ok(_l) => {
                                    let c1 = connect(port, Some(1), true, false);
                                    let c2 = connect(port, Some(1), true, false);
                                    sleep(Duration::from_millis(life_ms.min(5000)));
                                    drop((c1, c2));
                                    0
                                }
                                Err(_) => 1,
                            };
                            unsafe { libc::_exit(code) };
                        }
                        pid => {
                            live.push(pid);
                            born += 1;
                        }
                    }
                }
                let mut status = 0;
                let pid = unsafe { libc::waitpid(-1, &mut status, 0) };
                live.retain(|&p| p != pid);
            }
            for p in live {
                let mut status = 0;
                unsafe { libc::waitpid(p, &mut status, 0) };
            }
            println!("churn listeners={born}");
        }
        "syn-overflow" | "connect" => {
            let port = arg(&args, 1, "PORT");
            let clients: usize = arg(&args, 2, "CLIENTS");
            let syncnt: i32 = arg(&args, 3, "SYNCNT");
            let hold: f64 = arg(&args, 4, "HOLD_SECS");
            let _l = if mode == "syn-overflow" {
                Some(listener(port, 0)?)
            } else {
                None
            };
            ready();
            let mut held = Vec::new();
            for _ in 0..clients.min(1000) {
                held.push(connect(port, Some(syncnt), true, false)?.0);
                sleep(Duration::from_millis(20));
            }
            sleep(secs(hold));
        }
        "ack-overflow" => {
            let port = arg(&args, 1, "PORT");
            let hold: f64 = arg(&args, 2, "HOLD_SECS");
            let _l = listener(port, 1)?;
            ready();
            let (b, _) = connect(port, None, true, true)?;
            sleep(Duration::from_millis(20));
            let (a1, _) = connect(port, None, false, false)?;
            let (a2, _) = connect(port, None, false, false)?;
            sleep(secs(hold));
            drop((a1, a2, b));
        }
        "slow-accept" => {
            let port = arg(&args, 1, "PORT");
            let clients: usize = arg(&args, 2, "CLIENTS");
            let accepts: usize = arg(&args, 3, "ACCEPTS");
            let hold: f64 = arg(&args, 4, "HOLD_SECS");
            let l = listener(port, 1)?;
            ready();
            let mut held = Vec::new();
            for _ in 0..clients.min(1000) {
                held.push(connect(port, Some(3), true, false)?.0);
                sleep(Duration::from_millis(20));
            }
            let mut accepted = 0;
            for _ in 0..accepts.min(1000) {
                sleep(Duration::from_millis(300));
                let fd = unsafe {
                    libc::accept(l.as_raw_fd(), std::ptr::null_mut(), std::ptr::null_mut())
                };
                if fd >= 0 {
                    accepted += 1;
                    held.push(unsafe { OwnedFd::from_raw_fd(fd) });
                }
            }
            println!("accepted {accepted}");
            sleep(secs(hold));
        }
        "refused" => {
            let port = arg(&args, 1, "PORT");
            let count: usize = arg(&args, 2, "COUNT");
            ready();
            let mut refused = 0;
            for _ in 0..count.min(100_000) {
                if let (_, Some(e)) = connect(port, None, false, false)? {
                    if e.raw_os_error() == Some(libc::ECONNREFUSED) {
                        refused += 1;
                    }
                }
            }
            println!("refused {refused}");
        }
        "syn-queue" => {
            let port = arg(&args, 1, "PORT");
            let backlog: i32 = arg(&args, 2, "BACKLOG");
            let clients: usize = arg(&args, 3, "CLIENTS");
            let hold: f64 = arg(&args, 4, "HOLD_SECS");
            let l = listener(port, backlog)?;
            defer_accept(&l, 30)?;
            ready();
            let mut held = Vec::new();
            for i in 0..clients.min(1000) {
                if i > 0 {
                    sleep(Duration::from_millis(100));
                }
                held.push(connect(port, Some(1), true, false)?.0);
            }
            sleep(Duration::from_millis(200));
            let (mut est, mut sent, mut other) = (0, 0, 0);
            for s in &held {
                match tcp_state(s.as_raw_fd()) {
                    Some(TCP_ESTABLISHED) => est += 1,
                    Some(TCP_SYN_SENT) => sent += 1,
                    _ => other += 1,
                }
            }
            println!("syn_queue established={est} syn_sent={sent} other={other}");
            sleep(secs(hold));
            drop(l);
        }
        "accept-emfile" => {
            let port = arg(&args, 1, "PORT");
            let clients: usize = arg(&args, 2, "CLIENTS");
            let attempts: usize = arg(&args, 3, "ATTEMPTS");
            let hold: f64 = arg(&args, 4, "HOLD_SECS");
            let l = listener(port, 16)?;
            ready();
            let mut held = Vec::new();
            for _ in 0..clients.min(17) {
                match connect(port, Some(2), false, false)? {
                    (s, None) => held.push(s),
                    (_, Some(e)) => return Err(e),
                }
            }
            // The lowest free descriptor: what the next allocation would get.
            // SAFETY: F_DUPFD on an open descriptor; the copy is closed below.
            let lowest = check(
                unsafe { libc::fcntl(l.as_raw_fd(), libc::F_DUPFD_CLOEXEC, 0) },
                "fcntl",
            )?;
            // SAFETY: `lowest` was just created here and is owned by nobody else.
            drop(unsafe { OwnedFd::from_raw_fd(lowest) });
            let mut lim = libc::rlimit {
                rlim_cur: 0,
                rlim_max: 0,
            };
            // SAFETY: `lim` is a valid rlimit to fill.
            check(
                unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &raw mut lim) },
                "getrlimit",
            )?;
            lim.rlim_cur = lowest as libc::rlim_t;
            // SAFETY: as above; only the soft limit is lowered.
            check(
                unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &raw const lim) },
                "setrlimit",
            )?;
            let (mut emfile, mut other, mut accepted) = (0, 0, 0);
            for i in 0..attempts.min(10_000) {
                if i > 0 {
                    sleep(Duration::from_millis(10));
                }
                match accept(l.as_raw_fd()) {
                    Ok(c) => {
                        accepted += 1;
                        held.push(c);
                    }
                    Err(e) if e.raw_os_error() == Some(libc::EMFILE) => emfile += 1,
                    Err(_) => other += 1,
                }
            }
            println!("accept_errors EMFILE={emfile} other={other} accepted={accepted}");
            sleep(secs(hold));
        }
        "close-wait" => {
            let port = arg(&args, 1, "PORT");
            let conns: usize = arg(&args, 2, "CONNS");
            let hold: f64 = arg(&args, 3, "HOLD_SECS");
            let l = listener(port, 16)?;
            ready();
            let mut server = Vec::new();
            for _ in 0..conns.min(1000) {
                let c = match connect(port, Some(2), false, false)? {
                    (s, None) => s,
                    (_, Some(e)) => return Err(e),
                };
                server.push(accept(l.as_raw_fd())?);
                // SAFETY: shuts down a socket this loop owns; it is closed next.
                check(
                    unsafe { libc::shutdown(c.as_raw_fd(), libc::SHUT_RDWR) },
                    "shutdown",
                )?;
                // Once the server's (delayed) ACK of the FIN is in, the client
                // is in FIN_WAIT2 and its close makes it a TIME_WAIT entry
                // (substate FIN_WAIT2) at once: TW counts it before the result.
                wait_state(c.as_raw_fd(), TCP_FIN_WAIT2);
                drop(c);
            }
            let count = || {
                server
                    .iter()
                    .filter(|s| tcp_state(s.as_raw_fd()) == Some(TCP_CLOSE_WAIT))
                    .count()
            };
            for _ in 0..100 {
                if count() == server.len() {
                    break;
                }
                sleep(Duration::from_millis(10));
            }
            println!("close_wait {}", count());
            sleep(secs(hold));
        }
        "port-exhaust" | "tw-exhaust" => {
            let port = arg(&args, 1, "PORT");
            let (cycles, rest): (usize, usize) = if mode == "tw-exhaust" {
                (arg::<usize>(&args, 2, "CYCLES").min(1000), 3)
            } else {
                (0, 2)
            };
            let attempts: usize = arg(&args, rest, "ATTEMPTS");
            let hold: f64 = arg(&args, rest + 1, "HOLD_SECS");
            let l = listener(port, 64)?;
            let stop = Arc::new(AtomicBool::new(false));
            let (go, go_rx) = mpsc::channel();
            let (closed_tx, closed) = mpsc::channel();
            let order = (mode == "tw-exhaust").then_some(CloseOrder {
                go: go_rx,
                closed: closed_tx,
            });
            let server = acceptor(l, cycles + attempts.min(10_000), stop.clone(), order);
            ready();
            let mut held = Vec::new();
            // The client closes first (shutdown SHUT_WR, then close) and its
            // side ends in TIME_WAIT. The server closes only once the client
            // is in FIN_WAIT2: the server's (delayed) ACK of the client's FIN
            // then cannot arrive after its FIN. Otherwise, under load, that
            // stale ACK can reach the client's TIME_WAIT socket, whose answer
            // finds the server socket gone, the listener sends a RST, and
            // the RST ends the TIME_WAIT early (tcp_rfc1337=0), freeing a port.
            // Cycles whose connect fails (more CYCLES than local ports) just
            // do not count; the result line covers the ATTEMPTS connects.
            let mut tw_cycles = 0;
            for _ in 0..cycles {
                let (s, None) = connect(port, Some(2), false, false)? else {
                    continue;
                };
                // SAFETY: shuts down the write side of a socket owned here.
                check(
                    unsafe { libc::shutdown(s.as_raw_fd(), libc::SHUT_WR) },
                    "shutdown",
                )?;
                let fin_wait2 = wait_state(s.as_raw_fd(), TCP_FIN_WAIT2);
                let _ = go.send(());
                let server_closed = closed.recv_timeout(Duration::from_secs(6)).is_ok();
                // After the server's FIN the socket is a TIME_WAIT entry and
                // the full socket reports TCP_CLOSE.
                if fin_wait2 && server_closed && wait_state(s.as_raw_fd(), TCP_CLOSE) {
                    tw_cycles += 1;
                }
                drop(s);
            }
            let (n, ok, m) = count_connects(port, attempts, &mut held)?;
            if mode == "tw-exhaust" {
                println!(
                    "connect EADDRNOTAVAIL={n} ok={ok} other={m} time_wait_cycles={tw_cycles}"
                );
            } else {
                println!("connect EADDRNOTAVAIL={n} ok={ok} other={m}");
            }
            sleep(secs(hold));
            stop.store(true, Ordering::Relaxed);
            let _ = server.join();
        }
        "http-close" => {
            // N sequential HTTP/1.1 requests with `Connection: close` to a
            // real server on 127.0.0.1:PORT (one handshake per request);
            // prints how many got a 200.
            let port: u16 = arg(&args, 1, "PORT");
            let n: usize = arg::<usize>(&args, 2, "REQUESTS").min(200_000);
            ready();
            let (mut ok, mut failed) = (0usize, 0usize);
            for _ in 0..n {
                match http_close(port) {
                    Ok(true) => ok += 1,
                    _ => failed += 1,
                }
            }
            println!("http ok={ok} failed={failed}");
        }
        "connect-timeout" => {
            let port = arg(&args, 1, "PORT");
            let hold: f64 = arg(&args, 2, "HOLD_SECS");
            let l = listener(port, 1)?;
            defer_accept(&l, 30)?;
            ready();
            let mut held = Vec::new();
            for _ in 0..2 {
                held.push(connect(port, Some(1), true, false)?.0);
                sleep(Duration::from_millis(100));
            }
            let t0 = Instant::now();
            let (_s, err) = connect(port, Some(1), false, false)?;
            let (n, m) = match &err {
                Some(e) if e.raw_os_error() == Some(libc::ETIMEDOUT) => (1, 0),
                _ => (0, 1),
            };
            eprintln!(
                "tcpq-scenario: connect returned after {} ms: {err:?}",
                t0.elapsed().as_millis()
            );
            sleep(secs(hold));
            // A held connect whose SYN the kernel dropped too (a SYN queue
            // called full at `qlen >= limit`, before Linux's fix of 2024)
            // timed out meanwhile: count it, the kernel did.
            let held_timeouts = held
                .iter()
                .filter(|s| so_error(s.as_raw_fd()) == libc::ETIMEDOUT)
                .count();
            println!("connect ETIMEDOUT={} other={m}", n + held_timeouts);
            drop(l);
        }
        "accept-delay" => {
            let port = arg(&args, 1, "PORT");
            let conns: usize = arg(&args, 2, "CONNS");
            let delay: u64 = arg(&args, 3, "DELAY_MS");
            let hold: f64 = arg(&args, 4, "HOLD_SECS");
            let l = listener(port, 64)?;
            ready();
            let mut held = Vec::new();
            for _ in 0..conns.min(65) {
                match connect(port, Some(2), false, false)? {
                    (s, None) => held.push(s),
                    (_, Some(e)) => return Err(e),
                }
            }
            sleep(Duration::from_millis(delay.min(120_000)));
            let mut accepted = 0;
            for _ in 0..conns.min(65) {
                if !readable(l.as_raw_fd(), 1000) {
                    break;
                }
                held.push(accept(l.as_raw_fd())?);
                accepted += 1;
            }
            println!("accepted {accepted}");
            sleep(secs(hold));
        }
        "reuseport" => {
            // Two processes, one SO_REUSEPORT listener each, never accepting.
            let port = arg(&args, 1, "PORT");
            let backlog: i32 = arg(&args, 2, "BACKLOG");
            let hold = secs(arg(&args, 3, "HOLD_SECS"));
            let (tx, rx) = pipe()?;
            if fork()? == 0 {
                let _l = reuseport_listener(port, backlog)?;
                // SAFETY: valid fd and buffer.
                unsafe { libc::write(tx.as_raw_fd(), b"x".as_ptr().cast(), 1) };
                sleep(hold);
                std::process::exit(0);
            }
            let mut b = [0u8; 1];
            // SAFETY: valid fd and buffer; waits for the child's listener.
            unsafe { libc::read(rx.as_raw_fd(), b.as_mut_ptr().cast(), 1) };
            let _l = reuseport_listener(port, backlog)?;
            ready();
            println!("member {}", child_pid());
            sleep(hold);
            // SAFETY: reaps the child.
            unsafe { libc::wait(std::ptr::null_mut()) };
        }
        "fork-listen" => {
            // The parent listens and forks a child that inherits the
            // listener; the parent exits after PARENT_SECS.
            let port = arg(&args, 1, "PORT");
            let backlog: i32 = arg(&args, 2, "BACKLOG");
            let hold = secs(arg(&args, 3, "HOLD_SECS"));
            let parent_secs = secs(arg(&args, 4, "PARENT_SECS"));
            let _l = listener(port, backlog)?;
            let child = fork()?;
            if child == 0 {
                sleep(hold);
                std::process::exit(0);
            }
            ready();
            println!("child {child}");
            sleep(parent_secs);
        }
        "reset-peer" => {
            let port = arg(&args, 1, "PORT");
            let conns: usize = arg(&args, 2, "CONNS");
            let l = listener(port, 16)?;
            ready();
            let mut pairs = Vec::new();
            for _ in 0..conns.min(1000) {
                let c = match connect(port, Some(2), false, false)? {
                    (s, None) => s,
                    (_, Some(e)) => return Err(e),
                };
                pairs.push((c, accept(l.as_raw_fd())?));
            }
            let mut clients = Vec::new();
            for (c, s) in pairs {
                reset_on_close(s.as_raw_fd())?;
                drop(s);
                clients.push(c);
            }
            let mut reset = 0;
            for c in &clients {
                if !readable(c.as_raw_fd(), 1000) {
                    continue;
                }
                let mut b = [0u8; 1];
                // SAFETY: `b` is writable for its length.
                let n = unsafe { libc::read(c.as_raw_fd(), b.as_mut_ptr().cast(), 1) };
                if n < 0 && io::Error::last_os_error().raw_os_error() == Some(libc::ECONNRESET) {
                    reset += 1;
                }
            }
            println!("reset {reset}");
        }
        "abort-client" => {
            let port = arg(&args, 1, "PORT");
            let conns: usize = arg(&args, 2, "CONNS");
            let request: String = arg(&args, 3, "REQUEST");
            ready();
            let mut answered = 0;
            for _ in 0..conns.min(1000) {
                let c = match connect(port, Some(2), false, false)? {
                    (s, None) => s,
                    (_, Some(e)) => return Err(e),
                };
                let req = format!("{request}\r\n");
                // SAFETY: `req` is readable for its length.
                check(
                    unsafe { libc::write(c.as_raw_fd(), req.as_ptr().cast(), req.len()) as i32 },
                    "write",
                )?;
                let mut b = [0u8; 64];
                // SAFETY: `b` is writable for its length.
                if readable(c.as_raw_fd(), 2000)
                    && unsafe { libc::read(c.as_raw_fd(), b.as_mut_ptr().cast(), b.len()) } > 0
                {
                    answered += 1;
                }
                reset_on_close(c.as_raw_fd())?;
                drop(c);
            }
            println!("aborted {answered}");
        }
        _ => {
            eprintln!(
                "tcpq-scenario: unknown mode `{mode}` (listen, syn-overflow, connect, \
                 ack-overflow, slow-accept, refused, syn-queue, accept-emfile, close-wait, \
                 port-exhaust, tw-exhaust, connect-timeout, accept-delay, reset-peer, \
                 reuseport, fork-listen)"
            );
            std::process::exit(2);
        }
    }
    Ok(())
}

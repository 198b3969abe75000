//! connect() failing: refused, out of local ports (held open or in
//! TIME_WAIT), timed out; and plain HTTP requests (one handshake each).
use std::{
    io,
    os::fd::{AsRawFd, OwnedFd},
    sync::{
        atomic::{AtomicBool, Ordering},
        mpsc, Arc,
    },
    thread::{self, sleep},
    time::{Duration, Instant},
};

use anyhow::Result;
use clap::Args;

use crate::{
    ready, seconds,
    sys::{
        accept, check, connect, defer_accept, listener, readable, so_error, wait_state, TCP_CLOSE,
        TCP_FIN_WAIT2,
    },
};

/// connect() refused.
///
/// Connects to a closed port (each answered by a RST); prints `refused N`.
#[derive(Args)]
pub struct RefusedArgs {
    /// The port (on loopback).
    #[arg(long)]
    port: u16,
    /// Blocking connects (at most 100000).
    #[arg(long)]
    count: usize,
}

pub fn refused(a: RefusedArgs) -> Result<()> {
    ready();
    let mut refused = 0;
    for _ in 0..a.count.min(100_000) {
        if let (_, Some(e)) = connect(a.port, None, false, false)? {
            if e.raw_os_error() == Some(libc::ECONNREFUSED) {
                refused += 1;
            }
        }
    }
    println!("refused {refused}");
    Ok(())
}

/// connect() out of local ports held by open connections.
///
/// (With a small ip_local_port_range) blocking connects, every successful
/// one kept open, a thread accepting them; prints
/// `connect EADDRNOTAVAIL=N ok=K other=M`.
#[derive(Args)]
pub struct PortExhaustArgs {
    /// The port (on loopback).
    #[arg(long)]
    port: u16,
    /// Blocking connects (at most 10000).
    #[arg(long)]
    attempts: usize,
    /// How long to hold everything after the result line.
    #[arg(long, value_name = "SECS", value_parser = seconds)]
    hold: Duration,
}

pub fn port_exhaust(a: PortExhaustArgs) -> Result<()> {
    exhaust(a, None)
}

/// connect() out of local ports held in TIME_WAIT.
///
/// Connect+close cycles with the client closing first (its side goes
/// TIME_WAIT; the server closes once the client is in FIN_WAIT2), then
/// blocking connects (EADDRNOTAVAIL with tcp_tw_reuse=0 once TIME_WAIT
/// holds every local port); prints
/// `connect EADDRNOTAVAIL=N ok=K other=M time_wait_cycles=C`.
#[derive(Args)]
pub struct TwExhaustArgs {
    #[command(flatten)]
    connects: PortExhaustArgs,
    /// Connect+close cycles before the connects (at most 1000).
    #[arg(long)]
    cycles: usize,
}

pub fn tw_exhaust(a: TwExhaustArgs) -> Result<()> {
    exhaust(a.connects, Some(a.cycles.min(1000)))
}

/// The server half of a close handshake: `go` says when to close an
/// accepted connection, `closed` reports that it was closed.
struct CloseOrder {
    go: mpsc::Receiver<()>,
    closed: mpsc::Sender<()>,
}

/// port-exhaust, or with `cycles` tw-exhaust.
fn exhaust(a: PortExhaustArgs, cycles: Option<usize>) -> Result<()> {
    let l = listener(a.port, 64)?;
    let stop = Arc::new(AtomicBool::new(false));
    let (go, go_rx) = mpsc::channel();
    let (closed_tx, closed) = mpsc::channel();
    let order = cycles.is_some().then_some(CloseOrder {
        go: go_rx,
        closed: closed_tx,
    });
    let max = cycles.unwrap_or(0) + a.attempts.min(10_000);
    let server = acceptor(l, max, stop.clone(), order);
    ready();
    let mut held = Vec::new();
    let tw_cycles = time_wait_cycles(a.port, cycles.unwrap_or(0), &go, &closed)?;
    let (n, ok, m) = count_connects(a.port, a.attempts, &mut held)?;
    if cycles.is_some() {
        println!("connect EADDRNOTAVAIL={n} ok={ok} other={m} time_wait_cycles={tw_cycles}");
    } else {
        println!("connect EADDRNOTAVAIL={n} ok={ok} other={m}");
    }
    sleep(a.hold);
    stop.store(true, Ordering::Relaxed);
    let _ = server.join();
    Ok(())
}

/// `cycles` connect+close, the client closing first: returns how many left
/// a TIME_WAIT entry behind.
///
/// The client closes first (shutdown SHUT_WR, then close) and its side ends
/// in TIME_WAIT. The server closes only once the client is in FIN_WAIT2:
/// the server's (delayed) ACK of the client's FIN then cannot arrive after
/// its FIN. Otherwise, under load, that stale ACK can reach the client's
/// TIME_WAIT socket, whose answer finds the server socket gone, the
/// listener sends a RST, and the RST ends the TIME_WAIT early
/// (tcp_rfc1337=0), freeing a port. Cycles whose connect fails (more cycles
/// than local ports) just do not count.
fn time_wait_cycles(
    port: u16,
    cycles: usize,
    go: &mpsc::Sender<()>,
    closed: &mpsc::Receiver<()>,
) -> io::Result<usize> {
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
        // After the server's FIN the socket is a TIME_WAIT entry and the
        // full socket reports TCP_CLOSE.
        if fin_wait2 && server_closed && wait_state(s.as_raw_fd(), TCP_CLOSE) {
            tw_cycles += 1;
        }
        drop(s);
    }
    Ok(tw_cycles)
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

/// connect() timing out against a full SYN queue.
///
/// TCP_DEFER_ACCEPT listener, listen(1), two idle clients fill the SYN
/// queue (syncookies=0), then a blocking connect with TCP_SYNCNT=1 times
/// out after ~3 s (its SYNs are dropped as TCPReqQFullDrop); prints
/// `connect ETIMEDOUT=N other=M`.
#[derive(Args)]
pub struct ConnectTimeoutArgs {
    /// The port (on loopback).
    #[arg(long)]
    port: u16,
    /// How long to hold everything after the connect returned.
    #[arg(long, value_name = "SECS", value_parser = seconds)]
    hold: Duration,
}

pub fn connect_timeout(a: ConnectTimeoutArgs) -> Result<()> {
    let l = listener(a.port, 1)?;
    defer_accept(&l, 30)?;
    ready();
    let mut held = Vec::new();
    for _ in 0..2 {
        held.push(connect(a.port, Some(1), true, false)?.0);
        sleep(Duration::from_millis(100));
    }
    let t0 = Instant::now();
    let (_s, err) = connect(a.port, Some(1), false, false)?;
    let (n, m) = match &err {
        Some(e) if e.raw_os_error() == Some(libc::ETIMEDOUT) => (1, 0),
        _ => (0, 1),
    };
    eprintln!(
        "tcpq-scenario: connect returned after {} ms: {err:?}",
        t0.elapsed().as_millis()
    );
    sleep(a.hold);
    // A held connect whose SYN the kernel dropped too (a SYN queue called
    // full at `qlen >= limit`, before Linux's fix of 2024) timed out
    // meanwhile: count it, the kernel did.
    let held_timeouts = held
        .iter()
        .filter(|s| so_error(s.as_raw_fd()) == libc::ETIMEDOUT)
        .count();
    println!("connect ETIMEDOUT={} other={m}", n + held_timeouts);
    drop(l);
    Ok(())
}

/// HTTP requests, one connection each.
///
/// Sequential HTTP/1.1 requests with `Connection: close` to a real server
/// on 127.0.0.1:PORT (one handshake per request); prints
/// `http ok=N failed=M` (N answered 200).
#[derive(Args)]
pub struct HttpCloseArgs {
    /// The port (on loopback).
    #[arg(long)]
    port: u16,
    /// Requests, one after the other (at most 200000).
    #[arg(long)]
    requests: usize,
}

pub fn http_close(a: HttpCloseArgs) -> Result<()> {
    ready();
    let (mut ok, mut failed) = (0usize, 0usize);
    for _ in 0..a.requests.min(200_000) {
        match get_with_close(a.port) {
            Ok(true) => ok += 1,
            _ => failed += 1,
        }
    }
    println!("http ok={ok} failed={failed}");
    Ok(())
}

/// One `GET /` with `Connection: close`: whether the answer was a 200.
fn get_with_close(port: u16) -> io::Result<bool> {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(("127.0.0.1", port))?;
    s.set_read_timeout(Some(Duration::from_secs(5)))?;
    s.write_all(b"GET / HTTP/1.1\r\nHost: tcpq\r\nConnection: close\r\n\r\n")?;
    let mut answer = Vec::new();
    s.read_to_end(&mut answer)?;
    Ok(answer.starts_with(b"HTTP/1.1 200"))
}

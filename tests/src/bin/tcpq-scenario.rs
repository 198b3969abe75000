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
//!
//! Loopback over IPv4 (127.0.0.1), or IPv6 (::1) with TCPQ_SCENARIO_V6=1.
use std::{
    io,
    net::{Ipv4Addr, Ipv6Addr},
    os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd},
    thread::sleep,
    time::Duration,
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

/// Starts a connect; returns the socket and the error if it failed at once.
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

fn arg<T: std::str::FromStr>(args: &[String], i: usize, name: &str) -> T {
    args.get(i).and_then(|s| s.parse().ok()).unwrap_or_else(|| {
        eprintln!("tcpq-scenario: missing or bad {name}");
        std::process::exit(2)
    })
}

fn ready() {
    println!("ready {}", std::process::id());
}

fn secs(v: f64) -> Duration {
    Duration::from_secs_f64(v.clamp(0.0, 120.0))
}

fn main() -> io::Result<()> {
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
        _ => {
            eprintln!("tcpq-scenario: unknown mode `{mode}` (listen, syn-overflow, connect, ack-overflow, refused)");
            std::process::exit(2);
        }
    }
    Ok(())
}

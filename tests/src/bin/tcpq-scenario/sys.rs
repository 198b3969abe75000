//! The system calls the modes are made of: loopback sockets (IPv4, or IPv6
//! with TCPQ_SCENARIO_V6=1), their options and states, fork and pipes.
use std::{
    io,
    net::{Ipv4Addr, Ipv6Addr},
    os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd},
    thread::sleep,
    time::Duration,
};

pub const TCP_ESTABLISHED: u8 = 1;
pub const TCP_SYN_SENT: u8 = 2;
pub const TCP_FIN_WAIT2: u8 = 5;
pub const TCP_CLOSE: u8 = 7;
pub const TCP_CLOSE_WAIT: u8 = 8;

/// `rc`, or the errno as an error naming `what`.
pub fn check(rc: i32, what: &str) -> io::Result<i32> {
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

/// An int socket option.
pub fn setopt(fd: RawFd, level: i32, opt: i32, v: i32) -> io::Result<()> {
    let p = (&raw const v).cast::<libc::c_void>();
    check(
        unsafe { libc::setsockopt(fd, level, opt, p, 4) },
        "setsockopt",
    )
    .map(|_| ())
}

/// A listener on `port` with the SOL_SOCKET option `reuse` set.
fn listen_with(port: u16, backlog: i32, reuse: i32) -> io::Result<OwnedFd> {
    let s = tcp_socket()?;
    setopt(s.as_raw_fd(), libc::SOL_SOCKET, reuse, 1)?;
    let (a, len) = sockaddr(port);
    check(
        unsafe { libc::bind(s.as_raw_fd(), (&raw const a).cast(), len) },
        "bind",
    )?;
    check(unsafe { libc::listen(s.as_raw_fd(), backlog) }, "listen")?;
    Ok(s)
}

/// A listener (SO_REUSEADDR) on `port`.
pub fn listener(port: u16, backlog: i32) -> io::Result<OwnedFd> {
    listen_with(port, backlog, libc::SO_REUSEADDR)
}

/// A listener with SO_REUSEPORT (a member of a group on `port`).
pub fn reuseport_listener(port: u16, backlog: i32) -> io::Result<OwnedFd> {
    listen_with(port, backlog, libc::SO_REUSEPORT)
}

/// TCP_DEFER_ACCEPT on a listener: bare final ACKs are dropped and the
/// request stays in the SYN queue until data arrives (or `secs` pass).
pub fn defer_accept(l: &OwnedFd, secs: i32) -> io::Result<()> {
    setopt(
        l.as_raw_fd(),
        libc::IPPROTO_TCP,
        libc::TCP_DEFER_ACCEPT,
        secs,
    )
}

/// Starts a connect to `port`, with TCP_SYNCNT=`syncnt` if given, optionally
/// non-blocking and with TCP_DEFER_ACCEPT (a delayed final ACK); returns
/// the socket and the error if it failed at once.
pub fn connect(
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

/// A blocking connect with TCP_SYNCNT=2 that must succeed.
pub fn connected(port: u16) -> io::Result<OwnedFd> {
    match connect(port, Some(2), false, false)? {
        (s, None) => Ok(s),
        (_, Some(e)) => Err(e),
    }
}

/// accept() on `l`; the error keeps its errno (`check` would drop it).
pub fn accept(l: RawFd) -> io::Result<OwnedFd> {
    // SAFETY: no peer address is asked for.
    let fd = unsafe { libc::accept(l, std::ptr::null_mut(), std::ptr::null_mut()) };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: a fresh descriptor nobody else owns.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// Waits up to `ms` for `fd` to become readable (or to have an error/EOF).
pub fn readable(fd: RawFd, ms: i32) -> bool {
    let mut p = libc::pollfd {
        fd,
        events: libc::POLLIN,
        revents: 0,
    };
    // SAFETY: one valid pollfd, count 1.
    unsafe { libc::poll(&raw mut p, 1, ms) > 0 }
}

/// A socket option read as a `T`, None if getsockopt() fails. Only for
/// plain C types, valid when all-zero (`c_int`, `tcp_info`).
fn getsockopt<T>(fd: RawFd, level: i32, opt: i32) -> Option<T> {
    // SAFETY: T is a plain C type for which all-zero is valid (above).
    let mut v: T = unsafe { std::mem::zeroed() };
    let mut len = std::mem::size_of::<T>() as libc::socklen_t;
    // SAFETY: `v` is writable for `len` bytes.
    let rc = unsafe { libc::getsockopt(fd, level, opt, (&raw mut v).cast(), &raw mut len) };
    (rc == 0).then_some(v)
}

/// A socket's pending error (`SO_ERROR`), 0 if none.
pub fn so_error(fd: RawFd) -> i32 {
    getsockopt::<libc::c_int>(fd, libc::SOL_SOCKET, libc::SO_ERROR).unwrap_or(0)
}

/// The socket's TCP state (`TCP_ESTABLISHED`, ...) from TCP_INFO.
pub fn tcp_state(fd: RawFd) -> Option<u8> {
    getsockopt::<libc::tcp_info>(fd, libc::IPPROTO_TCP, libc::TCP_INFO).map(|i| i.tcpi_state)
}

/// Polls the TCP state of `fd` every 10 ms until it is `want` (2 s at most).
pub fn wait_state(fd: RawFd, want: u8) -> bool {
    for _ in 0..200 {
        if tcp_state(fd) == Some(want) {
            return true;
        }
        sleep(Duration::from_millis(10));
    }
    false
}

/// fork(2); the child gets 0. Only called while single-threaded.
pub fn fork() -> io::Result<i32> {
    // SAFETY: the scenario has no other threads at this point.
    check(unsafe { libc::fork() }, "fork")
}

/// A pipe (read end, write end).
pub fn pipe() -> io::Result<(OwnedFd, OwnedFd)> {
    let mut fds = [0; 2];
    check(unsafe { libc::pipe(fds.as_mut_ptr()) }, "pipe")?;
    // SAFETY: fresh descriptors nobody else owns.
    Ok(unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) })
}

/// The pid of the last forked child, found as our only child in /proc.
pub fn child_pid() -> u32 {
    let me = std::process::id();
    std::fs::read_to_string(format!("/proc/{me}/task/{me}/children"))
        .ok()
        .and_then(|s| s.split_whitespace().next()?.parse().ok())
        .unwrap_or(0)
}

/// Names this process `name` (prctl(PR_SET_NAME): its first 15 bytes,
/// whatever they are).
pub fn set_comm(name: &[u8]) -> io::Result<()> {
    let mut buf = [0u8; 16];
    let n = name.len().min(15);
    buf[..n].copy_from_slice(&name[..n]);
    // SAFETY: buf is a NUL-terminated 16-byte buffer.
    check(
        unsafe { libc::prctl(libc::PR_SET_NAME, buf.as_ptr() as libc::c_ulong, 0, 0, 0) },
        "prctl(PR_SET_NAME)",
    )
    .map(drop)
}

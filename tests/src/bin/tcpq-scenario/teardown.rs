//! Connections ended badly: left in CLOSE_WAIT by the server, or reset.
use std::{io, os::fd::AsRawFd, thread::sleep, time::Duration};

use anyhow::Result;
use clap::Args;

use crate::{
    ready, seconds,
    sys::{
        accept, check, connected, listener, readable, tcp_state, wait_state, TCP_CLOSE_WAIT,
        TCP_FIN_WAIT2,
    },
};

/// Sockets left in CLOSE_WAIT.
///
/// Accepted connections closed by their clients, never by the server: as
/// many sockets in CLOSE_WAIT; prints `close_wait N`.
#[derive(Args)]
pub struct CloseWaitArgs {
    /// The port (on loopback); repeated: as many connections on each.
    #[arg(long, required = true)]
    port: Vec<u16>,
    /// Connections per port (at most 1000).
    #[arg(long)]
    conns: usize,
    /// Close the listeners before the result line: the CLOSE_WAIT sockets
    /// are left without one.
    #[arg(long)]
    close_listener: bool,
    /// How long to hold the CLOSE_WAIT sockets after the result line.
    #[arg(long, value_name = "SECS", value_parser = seconds)]
    hold: Duration,
}

pub fn close_wait(a: CloseWaitArgs) -> Result<()> {
    let mut listeners = Vec::new();
    for &port in &a.port {
        listeners.push((port, listener(port, 16)?));
    }
    ready();
    let mut server = Vec::new();
    for (port, l) in &listeners {
        for _ in 0..a.conns.min(1000) {
            server.push(close_waiting(*port, l.as_raw_fd())?);
        }
    }
    if a.close_listener {
        listeners.clear();
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
    sleep(a.hold);
    Ok(())
}

/// One connection to `port`, accepted on `l` and closed by the client: the
/// server's socket, soon in CLOSE_WAIT.
fn close_waiting(port: u16, l: std::os::fd::RawFd) -> Result<std::os::fd::OwnedFd> {
    let c = connected(port)?;
    let server = accept(l)?;
    // SAFETY: shuts down a socket this function owns; it is closed next.
    check(
        unsafe { libc::shutdown(c.as_raw_fd(), libc::SHUT_RDWR) },
        "shutdown",
    )?;
    // Once the server's (delayed) ACK of the FIN is in, the client is
    // in FIN_WAIT2 and its close makes it a TIME_WAIT entry (substate
    // FIN_WAIT2) at once: TW counts it before the result.
    wait_state(c.as_raw_fd(), TCP_FIN_WAIT2);
    drop(c);
    Ok(server)
}

/// Connections reset by the server.
///
/// Accepted connections closed by the server with SO_LINGER {on, 0} (a
/// RST); each client's read() fails; prints `reset N` (the ECONNRESET
/// count).
#[derive(Args)]
pub struct ResetPeerArgs {
    /// The port (on loopback).
    #[arg(long)]
    port: u16,
    /// Connections (at most 1000).
    #[arg(long)]
    conns: usize,
}

pub fn reset_peer(a: ResetPeerArgs) -> Result<()> {
    let l = listener(a.port, 16)?;
    ready();
    let mut pairs = Vec::new();
    for _ in 0..a.conns.min(1000) {
        let c = connected(a.port)?;
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
    Ok(())
}

/// SO_LINGER {on, 0}: closing the socket sends a RST.
fn reset_on_close(fd: std::os::fd::RawFd) -> Result<()> {
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

/// Clients that reset their connections.
///
/// Each of CONNS clients of a server on the port sends the line REQUEST,
/// reads the answer and closes with SO_LINGER {on, 0} (a RST); prints
/// `aborted N` (the answers read).
#[derive(Args)]
pub struct AbortClientArgs {
    /// The server's port (on loopback).
    #[arg(long)]
    port: u16,
    /// Connections (at most 1000).
    #[arg(long)]
    conns: usize,
    /// The line each client sends (CRLF added).
    #[arg(long)]
    request: String,
}

pub fn abort_client(a: AbortClientArgs) -> Result<()> {
    ready();
    let req = format!("{}\r\n", a.request);
    let mut answered = 0;
    for _ in 0..a.conns.min(1000) {
        let c = connected(a.port)?;
        // SAFETY: `req` is readable for its length.
        let rc = unsafe { libc::write(c.as_raw_fd(), req.as_ptr().cast(), req.len()) };
        check(rc as i32, "write")?;
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
    Ok(())
}

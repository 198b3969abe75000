//! accept() failing (EMFILE) or late, with connections waiting in the
//! accept queue.
use std::{
    os::fd::{AsRawFd, FromRawFd, OwnedFd},
    thread::sleep,
    time::Duration,
};

use anyhow::Result;
use clap::Args;

use crate::{
    ready, seconds,
    sys::{accept, check, connected, listener, readable},
};

/// accept() failing with EMFILE.
///
/// listen(16), the clients connect, then RLIMIT_NOFILE (soft) is lowered
/// to the lowest free descriptor: accept()s 10 ms apart fail with EMFILE
/// while the connections stay queued; prints
/// `accept_errors EMFILE=N other=M accepted=K`.
#[derive(Args)]
pub struct AcceptEmfileArgs {
    /// The port (on loopback).
    #[arg(long)]
    port: u16,
    /// Blocking connects (at most 17).
    #[arg(long)]
    clients: usize,
    /// accept() calls, 10 ms apart (at most 10000).
    #[arg(long)]
    attempts: usize,
    /// How long to hold everything after the result line.
    #[arg(long, value_name = "SECS", value_parser = seconds)]
    hold: Duration,
}

pub fn accept_emfile(a: AcceptEmfileArgs) -> Result<()> {
    let (l, mut held) = queued(a.port, 16, a.clients.min(17))?;
    limit_fds_to_lowest_free(&l)?;
    let (mut emfile, mut other, mut accepted) = (0, 0, 0);
    for i in 0..a.attempts.min(10_000) {
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
    sleep(a.hold);
    Ok(())
}

/// A listener with `conns` connections waiting in its accept queue (each
/// blocking connect done: `ready` is printed before the first), and the
/// clients' sockets.
fn queued(port: u16, backlog: i32, conns: usize) -> Result<(OwnedFd, Vec<OwnedFd>)> {
    let l = listener(port, backlog)?;
    ready();
    let mut clients = Vec::new();
    for _ in 0..conns {
        clients.push(connected(port)?);
    }
    Ok((l, clients))
}

/// Lowers the soft RLIMIT_NOFILE to the lowest free descriptor (what the
/// next allocation would get): every new descriptor fails with EMFILE.
fn limit_fds_to_lowest_free(open: &OwnedFd) -> Result<()> {
    // SAFETY: F_DUPFD on an open descriptor; the copy is closed below.
    let lowest = check(
        unsafe { libc::fcntl(open.as_raw_fd(), libc::F_DUPFD_CLOEXEC, 0) },
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
    Ok(())
}

/// accept() late.
///
/// listen(64), the clients connect, and a delay later all are accepted;
/// prints `accepted N`.
#[derive(Args)]
pub struct AcceptDelayArgs {
    /// The port (on loopback).
    #[arg(long)]
    port: u16,
    /// Blocking connects (at most 65).
    #[arg(long)]
    conns: usize,
    /// Milliseconds between the last connect and the first accept() (at
    /// most 120000).
    #[arg(long, value_name = "MS")]
    delay_ms: u64,
    /// How long to hold everything after the result line.
    #[arg(long, value_name = "SECS", value_parser = seconds)]
    hold: Duration,
}

pub fn accept_delay(a: AcceptDelayArgs) -> Result<()> {
    let (l, mut held) = queued(a.port, 64, a.conns.min(65))?;
    sleep(Duration::from_millis(a.delay_ms.min(120_000)));
    let mut accepted = 0;
    for _ in 0..a.conns.min(65) {
        if !readable(l.as_raw_fd(), 1000) {
            break;
        }
        held.push(accept(l.as_raw_fd())?);
        accepted += 1;
    }
    println!("accepted {accepted}");
    sleep(a.hold);
    Ok(())
}

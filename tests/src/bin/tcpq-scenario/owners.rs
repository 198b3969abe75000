//! Listeners and the processes that own them: short-lived owners, two
//! processes sharing a port (SO_REUSEPORT), a listener inherited by a child.
use std::{
    os::fd::AsRawFd,
    thread::sleep,
    time::{Duration, Instant},
};

use anyhow::Result;
use clap::Args;

use crate::{
    ready, seconds,
    sys::{child_pid, connect, fork, listener, pipe, reuseport_listener},
};

/// Short-lived listeners and owners.
///
/// Listeners and processes born and gone continuously: for a while,
/// forked children (a few at a time), each listening on the next port of a
/// range (listen(0), 2 clients: an overflow) for a short life; prints
/// `churn listeners=N` (the children forked).
#[derive(Args)]
pub struct ChurnArgs {
    /// The first port of the range (on loopback).
    #[arg(long)]
    port: u16,
    /// How many ports from --port the children cycle through.
    #[arg(long)]
    ports: u16,
    /// Children alive at a time (1 to 16).
    #[arg(long)]
    workers: usize,
    /// Each child's life in milliseconds (at most 5000).
    #[arg(long, value_name = "MS")]
    life_ms: u64,
    /// How long to keep forking.
    #[arg(long, value_name = "SECS", value_parser = seconds)]
    duration: Duration,
}

pub fn churn(a: ChurnArgs) -> Result<()> {
    ready();
    let start = Instant::now();
    let mut next = 0u32;
    let mut live: Vec<i32> = Vec::new();
    let mut born = 0u64;
    while start.elapsed() < a.duration {
        while live.len() < a.workers.clamp(1, 16) {
            let port = a.port + (next % a.ports.max(1) as u32) as u16;
            next += 1;
            match fork()? {
                // SAFETY: the child leaves without running the parent's exit
                // handlers or destructors.
                0 => unsafe { libc::_exit(churn_child(port, a.life_ms)) },
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
    Ok(())
}

/// A churn child: listen(0) on `port`, 2 clients (an overflow), a life of
/// `life_ms`; its exit code.
fn churn_child(port: u16, life_ms: u64) -> i32 {
    match listener(port, 0) {
        Ok(_l) => {
            let c1 = connect(port, Some(1), true, false);
            let c2 = connect(port, Some(1), true, false);
            sleep(Duration::from_millis(life_ms.min(5000)));
            drop((c1, c2));
            0
        }
        Err(_) => 1,
    }
}

/// A listener that is never accepted from, and how long it is held.
#[derive(Args)]
pub struct HeldListener {
    /// The port (on loopback).
    #[arg(long)]
    port: u16,
    /// listen()'s backlog.
    #[arg(long, allow_negative_numbers = true)]
    backlog: i32,
    /// How long the listener is held (reuseport: by both processes;
    /// fork-listen: by the child).
    #[arg(long, value_name = "SECS", value_parser = seconds)]
    hold: Duration,
}

/// Two processes (this one and a forked child), each with its own
/// SO_REUSEPORT listener.
pub fn reuseport(a: HeldListener) -> Result<()> {
    let (tx, rx) = pipe()?;
    if fork()? == 0 {
        let _l = reuseport_listener(a.port, a.backlog)?;
        // SAFETY: valid fd and buffer.
        unsafe { libc::write(tx.as_raw_fd(), b"x".as_ptr().cast(), 1) };
        sleep(a.hold);
        std::process::exit(0);
    }
    let mut b = [0u8; 1];
    // SAFETY: valid fd and buffer; waits for the child's listener.
    unsafe { libc::read(rx.as_raw_fd(), b.as_mut_ptr().cast(), 1) };
    let _l = reuseport_listener(a.port, a.backlog)?;
    ready();
    println!("member {}", child_pid());
    sleep(a.hold);
    // SAFETY: reaps the child.
    unsafe { libc::wait(std::ptr::null_mut()) };
    Ok(())
}

/// A listener inherited by a child.
///
/// A listener inherited by a forked child; this process (the parent)
/// exits after --parent-hold, the child holds the listener for --hold;
/// prints `ready PARENT` then `child CHILD`.
#[derive(Args)]
pub struct ForkListenArgs {
    #[command(flatten)]
    listener: HeldListener,
    /// How long the parent keeps it.
    #[arg(long, value_name = "PARENT_SECS", value_parser = seconds)]
    parent_hold: Duration,
}

pub fn fork_listen(a: ForkListenArgs) -> Result<()> {
    let _l = listener(a.listener.port, a.listener.backlog)?;
    let child = fork()?;
    if child == 0 {
        sleep(a.listener.hold);
        std::process::exit(0);
    }
    ready();
    println!("child {child}");
    sleep(a.parent_hold);
    Ok(())
}

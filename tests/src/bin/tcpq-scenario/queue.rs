//! Accept- and SYN-queue overflows: listeners that never (or slowly)
//! accept, and the clients that overflow them.
use std::{os::fd::AsRawFd, thread::sleep, time::Duration};

use anyhow::Result;
use clap::Args;

use crate::{
    ready, seconds,
    sys::{self, accept, defer_accept, listener, tcp_state, TCP_ESTABLISHED, TCP_SYN_SENT},
};

/// Listen and never accept.
///
/// Prints `ready PID` once listening.
#[derive(Args)]
pub struct ListenArgs {
    /// The port (on loopback).
    #[arg(long)]
    port: u16,
    /// listen()'s backlog.
    #[arg(long, allow_negative_numbers = true)]
    backlog: i32,
    /// How long to keep listening.
    #[arg(long, value_name = "SECS", value_parser = seconds, default_value = "120")]
    hold: Duration,
}

pub fn listen(a: ListenArgs) -> Result<()> {
    let _l = listener(a.port, a.backlog)?;
    ready();
    sleep(a.hold);
    Ok(())
}

#[derive(Args)]
pub struct ClientsArgs {
    /// The port (on loopback).
    #[arg(long)]
    port: u16,
    /// Non-blocking connects, 20 ms apart (at most 1000).
    #[arg(long)]
    clients: usize,
    /// Their TCP_SYNCNT (SYN retransmits before giving up).
    #[arg(long)]
    syncnt: i32,
    /// How long to hold the clients after the last connect.
    #[arg(long, value_name = "SECS", value_parser = seconds)]
    hold: Duration,
}

/// The listener of syn-overflow, then its clients.
pub fn syn_overflow(a: ClientsArgs) -> Result<()> {
    let _l = listener(a.port, 0)?;
    connect(a)
}

/// The clients of syn-overflow alone.
pub fn connect(a: ClientsArgs) -> Result<()> {
    ready();
    let mut held = Vec::new();
    for _ in 0..a.clients.min(1000) {
        held.push(sys::connect(a.port, Some(a.syncnt), true, false)?.0);
        sleep(Duration::from_millis(20));
    }
    sleep(a.hold);
    Ok(())
}

/// Overflow the accept queue with a final ACK.
///
/// listen(1); client B delays its final ACK (TCP_DEFER_ACCEPT on the
/// client), A1 and A2 fill the queue meanwhile: B's ACK overflows.
#[derive(Args)]
pub struct AckOverflowArgs {
    /// The port (on loopback).
    #[arg(long)]
    port: u16,
    /// How long to hold the three clients.
    #[arg(long, value_name = "SECS", value_parser = seconds)]
    hold: Duration,
}

pub fn ack_overflow(a: AckOverflowArgs) -> Result<()> {
    let _l = listener(a.port, 1)?;
    ready();
    let (b, _) = sys::connect(a.port, None, true, true)?;
    sleep(Duration::from_millis(20));
    let (a1, _) = sys::connect(a.port, None, false, false)?;
    let (a2, _) = sys::connect(a.port, None, false, false)?;
    sleep(a.hold);
    drop((a1, a2, b));
    Ok(())
}

/// Accept slowly from an overflowing queue.
///
/// listen(1); the clients connect (TCP_SYNCNT=3), then accept()s 300 ms
/// apart while the rest keep overflowing; prints `accepted N`.
#[derive(Args)]
pub struct SlowAcceptArgs {
    /// The port (on loopback).
    #[arg(long)]
    port: u16,
    /// Non-blocking connects, 20 ms apart (at most 1000).
    #[arg(long)]
    clients: usize,
    /// accept() calls, 300 ms apart (at most 1000).
    #[arg(long)]
    accepts: usize,
    /// How long to hold everything after the last accept().
    #[arg(long, value_name = "SECS", value_parser = seconds)]
    hold: Duration,
}

pub fn slow_accept(a: SlowAcceptArgs) -> Result<()> {
    let l = listener(a.port, 1)?;
    ready();
    let mut held = Vec::new();
    for _ in 0..a.clients.min(1000) {
        held.push(sys::connect(a.port, Some(3), true, false)?.0);
        sleep(Duration::from_millis(20));
    }
    let mut accepted = 0;
    for _ in 0..a.accepts.min(1000) {
        sleep(Duration::from_millis(300));
        if let Ok(c) = accept(l.as_raw_fd()) {
            accepted += 1;
            held.push(c);
        }
    }
    println!("accepted {accepted}");
    sleep(a.hold);
    Ok(())
}

/// Fill the SYN queue.
///
/// TCP_DEFER_ACCEPT=30 on the listener, never accept; idle non-blocking
/// clients (TCP_SYNCNT=1) 100 ms apart stay in the SYN queue until it is
/// full (or the 3/4 rule of tcp_max_syn_backlog drops them,
/// syncookies=0); prints `syn_queue established=E syn_sent=S other=O`
/// (the clients' states).
#[derive(Args)]
pub struct SynQueueArgs {
    /// The port (on loopback).
    #[arg(long)]
    port: u16,
    /// listen()'s backlog.
    #[arg(long, allow_negative_numbers = true)]
    backlog: i32,
    /// Idle clients, 100 ms apart (at most 1000).
    #[arg(long)]
    clients: usize,
    /// How long to hold everything after the result line.
    #[arg(long, value_name = "SECS", value_parser = seconds)]
    hold: Duration,
}

pub fn syn_queue(a: SynQueueArgs) -> Result<()> {
    let l = listener(a.port, a.backlog)?;
    defer_accept(&l, 30)?;
    ready();
    let mut held = Vec::new();
    for i in 0..a.clients.min(1000) {
        if i > 0 {
            sleep(Duration::from_millis(100));
        }
        held.push(sys::connect(a.port, Some(1), true, false)?.0);
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
    sleep(a.hold);
    drop(l);
    Ok(())
}

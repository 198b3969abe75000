//! The sock_diag poller: a thread that walks every network namespace at a
//! fixed pace and sends one snapshot of all TCP listeners per round. It
//! runs on its own OS thread because it changes that thread's namespace.

use std::{
    fs::File,
    sync::mpsc as std_mpsc,
    time::{Duration, Instant},
};

use tokio::sync::mpsc;

use crate::{aggregate::NetnsSnapshot, netns, netstat, sockdiag, storm::Storms};

/// Every this many rounds (4 s at the default pace) at most, also the
/// sockets that need a walk of the whole connection table (CLOSE_WAIT,
/// SYN_RECV): costlier on a busy host, and slow-moving anyway.
pub const SLOW_EVERY: u32 = 16;

/// A slow round may cost at most 1/`SLOW_BUDGET` of a core: a round that
/// took 10 ms of CPU (a table with 130,000 TIME_WAIT entries, walked once
/// per namespace with listeners) is followed by the next 5 s later, never
/// later than [`SLOW_MAX`].
pub const SLOW_BUDGET: u32 = 500;
pub const SLOW_MAX: Duration = Duration::from_secs(30);

/// When the next slow round is due after one that took `cost` of CPU, at a
/// pace of `every`.
pub fn slow_gap(cost: Duration, every: Duration) -> Duration {
    let min = every * SLOW_EVERY;
    (cost * SLOW_BUDGET).clamp(min, SLOW_MAX.max(min))
}

/// CPU time the calling thread has used.
fn thread_cpu() -> Duration {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: valid pointer.
    unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut ts) };
    Duration::new(ts.tv_sec as u64, ts.tv_nsec as u32)
}

/// One namespace, read from inside it: its listeners, then its counters
/// and settings (re-read with `sysctls`), which then cover every drop the
/// listener dump saw (a drop just after is matched one round later). On
/// `slow` rounds, or when its drop counters moved since `prev` (the SYN
/// queues say how drops are classified), also its CLOSE_WAIT and SYN_RECV
/// sockets. That walk visits the whole connection table, which every
/// namespace shares (hundreds of thousands of TIME_WAIT entries on a busy
/// server): only where there is a listener to attribute them to.
fn read_ns(slow: bool, sysctls: bool, prev: Option<u64>) -> anyhow::Result<NsReading> {
    let listeners = sockdiag::dump(sockdiag::TCPF_LISTEN)?;
    let state = netstat::read_current(sysctls);
    let moved = prev.is_some_and(|p| p != drop_counters(&state.counters));
    let others = match (slow || moved, listeners.is_empty()) {
        (false, _) => None,
        (true, true) => Some(Vec::new()),
        (true, false) => Some(sockdiag::dump(
            sockdiag::TCPF_CLOSE_WAIT | sockdiag::TCPF_SYN_RECV,
        )?),
    };
    Ok(((listeners, others), state))
}

/// A namespace's listeners, its other sockets when dumped, and its state.
type NsReading = (
    (Vec<sockdiag::DiagSock>, Option<Vec<sockdiag::DiagSock>>),
    netstat::NetnsState,
);

pub fn monotonic_ns() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: valid pointer; CLOCK_MONOTONIC is bpf_ktime_get_ns's clock.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}

/// The sum of a namespace's listener-drop counters: when it moves, the
/// SYN queues are dumped at once (drops are classified by their depth).
fn drop_counters(c: &std::collections::HashMap<String, u64>) -> u64 {
    let get = |k: &str| c.get(k).copied().unwrap_or(0);
    get("TcpExt.ListenDrops") + get("TcpExt.TCPReqQFullDoCookies")
}

/// What a round keeps for the next: each namespace's drop counters and
/// settings, and which namespace each process is in.
#[derive(Default)]
pub struct Memory {
    last: std::collections::HashMap<u32, u64>,
    settings: std::collections::HashMap<u32, netstat::Sysctls>,
    netns: netns::Cache,
}

/// One round over every namespace: its listeners, its counters and
/// settings, and on `slow` rounds (or when its drop counters moved) its
/// CLOSE_WAIT and SYN_RECV sockets. `last` keeps each namespace's drop
/// counters between rounds, `settings` its sysctls (re-read on slow rounds),
/// `netns` the namespaces found (listed from scratch on slow rounds).
/// The kernel's counts (`storms`) are read before the first dump and after
/// each: what moved in between happened around that dump.
pub fn round(
    home: &File,
    home_ino: u32,
    baseline: bool,
    slow: bool,
    memory: &mut Memory,
    mut storms: Option<&mut Storms>,
) -> Vec<NetnsSnapshot> {
    let mut out = Vec::new();
    let mut take = || storms.as_mut().map(|s| s.take()).unwrap_or_default();
    let mut before = take();
    let listed = memory.netns.list(slow);
    let Memory { last, settings, .. } = memory;
    last.retain(|ino, _| listed.contains_key(ino));
    settings.retain(|ino, _| listed.contains_key(ino));
    for (ino, path) in listed {
        let start_ns = monotonic_ns();
        let prev = last.get(&ino).copied();
        // Settings change rarely: read on slow rounds, else reused.
        let sysctls = slow || !settings.contains_key(&ino);
        let read = || read_ns(slow, sysctls, prev);
        let dumped = if ino == home_ino {
            read()
        } else {
            netns::run_in(&path, home, read)
        };
        let end_ns = monotonic_ns();
        let after = take();
        // A namespace can vanish between listing and entering it.
        if let Ok(((listeners, others), mut state)) = dumped {
            last.insert(ino, drop_counters(&state.counters));
            match settings.get(&ino) {
                Some(s) if state.sysctls == netstat::Sysctls::default() => {
                    state.sysctls = s.clone()
                }
                _ => {
                    settings.insert(ino, state.sysctls.clone());
                }
            }
            out.push(NetnsSnapshot {
                netns: ino,
                listeners,
                others,
                state: Some(state),
                start_ns,
                end_ns,
                baseline,
                storm_before: std::mem::take(&mut before),
                storm_after: after,
            });
        } else {
            // Nobody else carries these: the next namespace does.
            before.extend(after);
        }
    }
    if !before.is_empty() {
        if let Some(first) = out.first_mut() {
            first.storm_before.extend(before);
        }
    }
    out
}

/// Starts the poller. A message on `wake` asks for a round now (used to
/// take a last snapshot before exiting); the thread ends when `tx` closes.
pub fn spawn(
    every: Duration,
    tx: mpsc::Sender<Vec<NetnsSnapshot>>,
    wake: std_mpsc::Receiver<()>,
    mut storms: Option<Storms>,
) -> anyhow::Result<std::thread::JoinHandle<()>> {
    let home = File::open("/proc/thread-self/ns/net")?;
    let home_ino = netns::current()?;
    Ok(std::thread::Builder::new()
        .name("tcpq-sockdiag".into())
        .spawn(move || {
            let mut baseline = true;
            let mut next_slow = Instant::now();
            let mut memory = Memory::default();
            loop {
                let slow = Instant::now() >= next_slow;
                let cpu = thread_cpu();
                let snaps = round(
                    &home,
                    home_ino,
                    baseline,
                    slow,
                    &mut memory,
                    storms.as_mut(),
                );
                if slow {
                    next_slow = Instant::now() + slow_gap(thread_cpu() - cpu, every);
                }
                if let Some(s) = storms.as_mut() {
                    s.sweep();
                }
                baseline = false;
                if tx.blocking_send(snaps).is_err() {
                    return;
                }
                match wake.recv_timeout(every) {
                    Ok(()) | Err(std_mpsc::RecvTimeoutError::Timeout) => {}
                    Err(std_mpsc::RecvTimeoutError::Disconnected) => return,
                }
            }
        })?)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slow_rounds_keep_to_their_cpu_budget() {
        let every = Duration::from_millis(250);
        // Cheap walks: every 16th round, as always.
        assert_eq!(
            slow_gap(Duration::from_micros(300), every),
            Duration::from_secs(4)
        );
        // A 20 ms walk: 10 s apart (0.2 % of a core).
        assert_eq!(
            slow_gap(Duration::from_millis(20), every),
            Duration::from_secs(10)
        );
        // Never more than 30 s apart, however costly.
        assert_eq!(slow_gap(Duration::from_secs(1), every), SLOW_MAX);
        // A slow pace of its own is kept.
        let lazy = Duration::from_secs(5);
        assert_eq!(slow_gap(Duration::ZERO, lazy), lazy * SLOW_EVERY);
    }
}

//! The sock_diag poller: a thread that walks every network namespace at a
//! fixed pace and sends one snapshot of all TCP listeners per round. It
//! runs on its own OS thread because it changes that thread's namespace.

use std::{
    collections::{BTreeMap, HashMap, HashSet},
    fs::File,
    path::Path,
    sync::mpsc as std_mpsc,
    time::{Duration, Instant},
};

use tokio::sync::mpsc;

use crate::{
    kernel::privs::{self, Unreadable},
    source::netns,
    source::netstat,
    source::sockdiag,
    source::storm::Storms,
};

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
pub(crate) fn thread_cpu() -> Duration {
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
fn read_ns(slow: bool, sysctls: bool, prev: Option<u64>) -> anyhow::Result<Reading> {
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
    Ok(Reading {
        listeners,
        others,
        state,
        moved,
    })
}

/// A namespace's listeners, its other sockets when dumped, its state, and
/// whether its drop counters moved.
struct Reading {
    listeners: Vec<sockdiag::DiagSock>,
    others: Option<Vec<sockdiag::DiagSock>>,
    state: netstat::NetnsState,
    moved: bool,
}

/// After this many readings in a row with nothing going on (no drop
/// counter moved, no connection waiting in an accept queue, nothing the
/// kernel counted about it), a namespace is quiet: read every
/// [`QUIET_EVERY`]th round (1 s at the default pace) instead of every round,
/// and at once when the kernel counts something about it. A host with
/// fifty pods pays for the busy ones only.
pub const QUIET_AFTER: u32 = 4;
pub const QUIET_EVERY: u32 = 4;

/// One netns' listeners as one dump saw them.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct NetnsSnapshot {
    pub netns: u32,
    pub listeners: Vec<sockdiag::DiagSock>,
    /// CLOSE_WAIT and SYN_RECV sockets, on the rounds that dump them.
    pub others: Option<Vec<sockdiag::DiagSock>>,
    /// The namespace's counters and settings, read right after the dump.
    pub state: Option<netstat::NetnsState>,
    /// CLOCK_MONOTONIC (the clock of `bpf_ktime_get_ns`) around the dump.
    pub start_ns: u64,
    pub end_ns: u64,
    /// Taken when the agent started: what it holds is history, not news.
    pub baseline: bool,
    /// What the kernel's counts moved by, read just before this dump (only
    /// the round's first namespace) and just after it.
    pub storm_before: Vec<crate::source::storm::Delta>,
    pub storm_after: Vec<crate::source::storm::Delta>,
}

/// One round's snapshots (of the namespaces read), and every namespace
/// that is still there.
#[derive(Debug, Clone, Default, serde::Serialize, serde::Deserialize)]
pub struct Round {
    pub snaps: Vec<NetnsSnapshot>,
    pub alive: Vec<u32>,
}

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
fn drop_counters(c: &HashMap<String, u64>) -> u64 {
    let get = |k: &str| c.get(k).copied().unwrap_or(0);
    get("TcpExt.ListenDrops") + get("TcpExt.TCPReqQFullDoCookies")
}

/// What a round keeps for the next: each namespace's drop counters,
/// settings and quiet readings in a row, and which namespace each process
/// is in.
#[derive(Default)]
pub struct Memory {
    last: HashMap<u32, u64>,
    settings: HashMap<u32, netstat::Sysctls>,
    quiet: HashMap<u32, u32>,
    rounds: u32,
    netns: netns::Cache,
}

impl Memory {
    /// Whether namespace `ino` is read this round: always on a `full` one,
    /// when the kernel counted something about it (`hot`), or while it is
    /// not quiet; else on its turn (spread over the rounds by inode).
    fn due(&self, ino: u32, full: bool, hot: &HashSet<u32>) -> bool {
        full || hot.contains(&ino)
            || self.quiet.get(&ino).is_none_or(|&q| q < QUIET_AFTER)
            || self.rounds.wrapping_add(ino).is_multiple_of(QUIET_EVERY)
    }

    /// Counts a reading of `ino` as quiet or not.
    fn note(&mut self, ino: u32, busy: bool) {
        let q = self.quiet.entry(ino).or_default();
        *q = if busy { 0 } else { q.saturating_add(1) };
    }

    /// A new round over the namespaces `listed`: what is kept of the
    /// others is forgotten.
    fn start_round<T>(&mut self, listed: &BTreeMap<u32, T>) {
        self.rounds = self.rounds.wrapping_add(1);
        self.last.retain(|ino, _| listed.contains_key(ino));
        self.settings.retain(|ino, _| listed.contains_key(ino));
        self.quiet.retain(|ino, _| listed.contains_key(ino));
    }

    /// Keeps what the next rounds need of a reading of `ino` (`hot`: the
    /// kernel counted something about it): whether it was busy, its drop
    /// counters, its settings. A reading without settings (not re-read
    /// this round) gets the last ones.
    fn keep(&mut self, ino: u32, mut r: Reading, hot: bool) -> Reading {
        let busy = r.moved || hot || r.listeners.iter().any(|l| l.rqueue > 0);
        self.note(ino, busy);
        self.last.insert(ino, drop_counters(&r.state.counters));
        match self.settings.get(&ino) {
            Some(s) if r.state.sysctls == netstat::Sysctls::default() => {
                r.state.sysctls = s.clone()
            }
            _ => {
                self.settings.insert(ino, r.state.sysctls.clone());
            }
        }
        r
    }
}

/// Processes whose namespace could not be looked up, if any.
fn proc_denied(denied: u64) -> Option<Unreadable> {
    (denied > 0).then(|| Unreadable {
        reason: "proc_ns_denied",
        detail: format!("{denied} processes' /proc/PID/ns/net: permission denied"),
        capability: privs::missing_for_proc(),
        count: denied,
    })
}

/// Namespace `ino`, which could not be entered or opened.
fn ns_unreadable(ino: u32, reason: &'static str, detail: &str) -> Unreadable {
    let capability = match reason {
        "setns_denied" => privs::missing_for_setns(),
        "open_denied" => privs::missing_for_proc(),
        _ => "none".to_string(),
    };
    Unreadable {
        reason,
        detail: format!("namespace {ino}: {detail}"),
        capability,
        count: 1,
    }
}

/// One round over the namespaces due (every one when `full`; see
/// [`Memory::due`]): its listeners, its counters and settings, and on
/// `slow` rounds (or when its drop counters moved) its CLOSE_WAIT and
/// SYN_RECV sockets. `memory` keeps what a round needs of the previous
/// ones: drop counters, sysctls (re-read on slow rounds), quiet readings,
/// the namespaces found (listed from scratch on slow rounds).
/// The kernel's counts (`storms`) are read before the first dump and after
/// each: what moved in between happened around that dump.
pub fn round(
    home: &File,
    home_ino: u32,
    baseline: bool,
    slow: bool,
    full: bool,
    memory: &mut Memory,
    mut storms: Option<&mut Storms>,
) -> Round {
    let mut out = Round::default();
    let mut take = || storms.as_mut().map(|s| s.take()).unwrap_or_default();
    let mut before = take();
    let mut hot: HashSet<u32> = before.iter().map(|d| d.ev.netns).collect();
    let listed = memory.netns.list(slow);
    memory.start_round(&listed);
    out.alive = listed.keys().copied().collect();
    let full = full || slow || baseline;
    // What could not be read, for stderr and the health metrics. A
    // namespace that could not be read is never quiet: tried every round.
    let mut unreadable: Vec<Unreadable> = proc_denied(memory.netns.denied).into_iter().collect();
    for (ino, path) in listed {
        if !memory.due(ino, full, &hot) {
            continue;
        }
        let start_ns = monotonic_ns();
        let dumped = read_one(home, home_ino, ino, &path, slow, memory);
        if let Err(netns::NsError::Unreadable { reason, detail }) = &dumped {
            unreadable.push(ns_unreadable(ino, reason, detail));
        }
        let end_ns = monotonic_ns();
        let after = take();
        hot.extend(after.iter().map(|d| d.ev.netns));
        // A namespace can vanish between listing and entering it.
        let Ok(reading) = dumped else {
            // Nobody else carries these: the next namespace does.
            before.extend(after);
            continue;
        };
        let Reading {
            listeners,
            others,
            state,
            ..
        } = memory.keep(ino, reading, hot.contains(&ino));
        out.snaps.push(NetnsSnapshot {
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
    }
    privs::netns_round(&unreadable);
    if !before.is_empty() {
        if let Some(first) = out.snaps.first_mut() {
            first.storm_before.extend(before);
        }
    }
    out
}

/// Reads namespace `ino` (at `path`) from inside it: the calling thread
/// enters it and returns `home`, unless it is `home_ino` already.
fn read_one(
    home: &File,
    home_ino: u32,
    ino: u32,
    path: &Path,
    slow: bool,
    memory: &Memory,
) -> Result<Reading, netns::NsError> {
    let prev = memory.last.get(&ino).copied();
    // Settings change rarely: read on slow rounds, else reused.
    let sysctls = slow || !memory.settings.contains_key(&ino);
    let read = || read_ns(slow, sysctls, prev);
    if ino == home_ino {
        read().map_err(netns::NsError::Inside)
    } else {
        netns::try_run_in(path, home, read)
    }
}

/// Starts the poller. A message on `wake` asks for a round now: `false`
/// when the kernel sent news (the namespaces it counted something about
/// are read), `true` for a last snapshot of every namespace before
/// exiting; the thread ends when `tx` closes.
pub fn spawn(
    every: Duration,
    tx: mpsc::Sender<Round>,
    wake: std_mpsc::Receiver<bool>,
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
            let mut woken = false;
            loop {
                // The last round before exiting is complete (CLOSE_WAIT too).
                let slow = woken || Instant::now() >= next_slow;
                let cpu = thread_cpu();
                let snaps = round(
                    &home,
                    home_ino,
                    baseline,
                    slow,
                    woken,
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
                woken = match wake.recv_timeout(every) {
                    Ok(full) => full,
                    Err(std_mpsc::RecvTimeoutError::Timeout) => false,
                    Err(std_mpsc::RecvTimeoutError::Disconnected) => return,
                };
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

    #[test]
    fn a_quiet_namespace_is_read_on_its_turn_and_at_once_when_hot() {
        let mut m = Memory::default();
        let none = HashSet::new();
        let ino = 4026531840;
        // New, then busy: every round.
        assert!(m.due(ino, false, &none));
        for _ in 0..QUIET_AFTER - 1 {
            m.note(ino, false);
        }
        m.note(ino, true);
        assert!(m.due(ino, false, &none));
        // Quiet: one round in QUIET_EVERY.
        for _ in 0..QUIET_AFTER {
            m.note(ino, false);
        }
        let turns = (0..QUIET_EVERY * 10)
            .filter(|_| {
                m.rounds = m.rounds.wrapping_add(1);
                m.due(ino, false, &none)
            })
            .count();
        assert_eq!(turns, 10);
        // The kernel counted something about it, or a full round: now.
        let hot = HashSet::from([ino]);
        let off_turn = (1..QUIET_EVERY)
            .map(|k| m.rounds.wrapping_add(k))
            .find(|r| !r.wrapping_add(ino).is_multiple_of(QUIET_EVERY))
            .unwrap();
        m.rounds = off_turn;
        assert!(!m.due(ino, false, &none));
        assert!(m.due(ino, false, &hot));
        assert!(m.due(ino, true, &none));
    }

    fn reading(sysctls: netstat::Sysctls, drops: u64, moved: bool) -> Reading {
        Reading {
            listeners: Vec::new(),
            others: None,
            state: netstat::NetnsState {
                counters: HashMap::from([("TcpExt.ListenDrops".to_string(), drops)]),
                time_wait: None,
                sysctls,
            },
            moved,
        }
    }

    #[test]
    fn a_reading_without_settings_gets_the_last_ones() {
        let mut m = Memory::default();
        let ino = 4026531840;
        let set = netstat::Sysctls {
            somaxconn: Some(4096),
            ..Default::default()
        };
        let r = m.keep(ino, reading(set.clone(), 3, false), false);
        assert_eq!(r.state.sysctls, set);
        assert_eq!(m.last[&ino], 3);
        // Not re-read this round: the last ones.
        let r = m.keep(ino, reading(netstat::Sysctls::default(), 5, false), false);
        assert_eq!(r.state.sysctls, set);
        assert_eq!(m.last[&ino], 5);
        // Re-read: the new ones.
        let new = netstat::Sysctls {
            somaxconn: Some(128),
            ..Default::default()
        };
        let r = m.keep(ino, reading(new.clone(), 5, false), false);
        assert_eq!((r.state.sysctls, &m.settings[&ino]), (new.clone(), &new));
    }

    #[test]
    fn busy_readings_keep_a_namespace_from_going_quiet() {
        let mut m = Memory::default();
        let (ino, none) = (7, HashSet::new());
        for _ in 0..QUIET_AFTER {
            m.keep(ino, reading(Default::default(), 0, false), false);
        }
        assert_eq!(m.quiet[&ino], QUIET_AFTER);
        m.keep(ino, reading(Default::default(), 0, true), false);
        assert_eq!(m.quiet[&ino], 0);
        m.keep(ino, reading(Default::default(), 0, false), true);
        assert_eq!(m.quiet[&ino], 0);
        assert!(m.due(ino, false, &none));
    }

    #[test]
    fn a_round_forgets_namespaces_gone() {
        let mut m = Memory::default();
        m.keep(1, reading(Default::default(), 2, false), false);
        m.keep(2, reading(Default::default(), 4, false), false);
        m.start_round(&BTreeMap::from([(2, ())]));
        assert_eq!(m.rounds, 1);
        assert_eq!(m.last, HashMap::from([(2, 4)]));
        assert_eq!((m.settings.len(), m.quiet.len()), (1, 1));
    }

    #[test]
    fn unreadable_namespaces_are_named() {
        assert!(proc_denied(0).is_none());
        let u = proc_denied(3).unwrap();
        assert_eq!((u.reason, u.count), ("proc_ns_denied", 3));
        assert_eq!(u.detail, "3 processes' /proc/PID/ns/net: permission denied");
        let u = ns_unreadable(9, "setns_failed", "invalid argument");
        assert_eq!(
            (u.reason, u.detail.as_str(), u.capability.as_str(), u.count),
            ("setns_failed", "namespace 9: invalid argument", "none", 1)
        );
    }
}

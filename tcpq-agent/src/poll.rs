//! The sock_diag poller: a thread that walks every network namespace at a
//! fixed pace and sends one snapshot of all TCP listeners per round. It
//! runs on its own OS thread because it changes that thread's namespace.

use std::{fs::File, sync::mpsc as std_mpsc, time::Duration};

use tokio::sync::mpsc;

use crate::{aggregate::NetnsSnapshot, netns, sockdiag};

pub fn monotonic_ns() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: valid pointer; CLOCK_MONOTONIC is bpf_ktime_get_ns's clock.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}

/// One round over every namespace.
pub fn round(home: &File, home_ino: u32, baseline: bool) -> Vec<NetnsSnapshot> {
    let mut out = Vec::new();
    for (ino, path) in netns::list() {
        let start_ns = monotonic_ns();
        let dumped = if ino == home_ino {
            sockdiag::dump(sockdiag::TCPF_LISTEN)
        } else {
            netns::run_in(&path, home, || sockdiag::dump(sockdiag::TCPF_LISTEN))
        };
        let end_ns = monotonic_ns();
        // A namespace can vanish between listing and entering it.
        if let Ok(listeners) = dumped {
            out.push(NetnsSnapshot {
                netns: ino,
                listeners,
                start_ns,
                end_ns,
                baseline,
            });
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
) -> anyhow::Result<std::thread::JoinHandle<()>> {
    let home = File::open("/proc/thread-self/ns/net")?;
    let home_ino = netns::current()?;
    Ok(std::thread::Builder::new()
        .name("tcpq-sockdiag".into())
        .spawn(move || {
            let mut baseline = true;
            loop {
                let snaps = round(&home, home_ino, baseline);
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

//! The /metrics server's connections: which are open, which to close at
//! the cap, and the descriptor budget they take from.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use tokio::sync::Notify;

/// One open connection, as the accept loop sees it.
pub(super) struct Slot {
    /// In order of arrival.
    pub(super) id: u64,
    /// Milliseconds from `Conns::epoch` to the last request start, request
    /// end or successful write.
    pub(super) last: AtomicU64,
    /// Requests whose response has not been sent whole yet.
    pub(super) in_flight: AtomicU32,
    pub(super) close: Notify,
}

pub(super) struct Conns {
    pub(super) epoch: Instant,
    pub(super) max: usize,
    next_id: u64,
    pub(super) open: HashMap<u64, Arc<Slot>>,
}

impl Conns {
    pub(super) fn new(max: usize) -> Self {
        let (epoch, next_id, open) = (Instant::now(), 0, HashMap::new());
        Conns {
            epoch,
            max,
            next_id,
            open,
        }
    }

    pub(super) fn now_ms(epoch: Instant) -> u64 {
        epoch.elapsed().as_millis() as u64
    }

    /// Tracks a new connection, closing the oldest idle ones first while
    /// at the cap (else the oldest ones: the newest always gets in).
    pub(super) fn admit(&mut self) -> Arc<Slot> {
        while self.open.len() >= self.max.max(1) && self.evict() {}
        self.next_id += 1;
        let slot = Arc::new(Slot {
            id: self.next_id,
            last: AtomicU64::new(Self::now_ms(self.epoch)),
            in_flight: AtomicU32::new(0),
            close: Notify::new(),
        });
        self.open.insert(slot.id, slot.clone());
        slot
    }

    /// Closes the connection idle the longest, or if every one is busy,
    /// the oldest. False when none is open.
    pub(super) fn evict(&mut self) -> bool {
        let idle = self
            .open
            .values()
            .filter(|s| s.in_flight.load(Relaxed) == 0)
            .min_by_key(|s| (s.last.load(Relaxed), s.id));
        let victim = idle.or_else(|| self.open.values().min_by_key(|s| s.id));
        let Some(id) = victim.map(|s| s.id) else {
            return false;
        };
        if let Some(s) = self.open.remove(&id) {
            s.close.notify_one();
        }
        true
    }
}

pub(super) fn lock(conns: &Mutex<Conns>) -> std::sync::MutexGuard<'_, Conns> {
    conns.lock().unwrap_or_else(|p| p.into_inner())
}

/// The soft RLIMIT_NOFILE.
pub(super) fn fd_limit() -> u64 {
    let mut r = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit writes into the struct we pass.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut r) } != 0 {
        return 1024;
    }
    r.rlim_cur
}

/// Raises the soft RLIMIT_NOFILE to the hard one, so the /metrics server
/// can hold its connections beside the agent's own descriptors.
pub fn raise_fd_limit() {
    let mut r = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit/setrlimit read and write the struct we pass.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut r) == 0 && r.rlim_cur < r.rlim_max {
            r.rlim_cur = r.rlim_max;
            libc::setrlimit(libc::RLIMIT_NOFILE, &r);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn evicts_oldest_idle_then_oldest() {
        let mut c = Conns::new(2);
        let a = c.admit();
        let b = c.admit();
        a.last.store(10, Relaxed);
        b.last.store(5, Relaxed);
        let d = c.admit(); // b idle the longest
        assert!(c.open.contains_key(&a.id) && !c.open.contains_key(&b.id));
        a.in_flight.store(1, Relaxed);
        d.in_flight.store(1, Relaxed);
        let _e = c.admit(); // all busy: the oldest, a
        assert!(!c.open.contains_key(&a.id) && c.open.contains_key(&d.id));
        assert_eq!(c.open.len(), 2);
        // A lowered cap (the descriptor limit went down): down to it at
        // the next connection, idle ones first (d is busy).
        c.max = 4;
        for _ in 0..2 {
            c.admit();
        }
        assert_eq!(c.open.len(), 4);
        c.max = 2;
        let f = c.admit();
        assert_eq!(c.open.len(), 2);
        assert!(c.open.contains_key(&f.id) && c.open.contains_key(&d.id));
    }
}

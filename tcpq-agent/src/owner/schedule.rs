//! When the resolver reads `/proc`: a full scan for unknown sockets within a
//! CPU budget, a re-check of the known holders every few seconds, and a
//! full reconcile every ten minutes.

use std::time::{Duration, Instant};

/// A full `/proc` scan may take at most 1/[`SCAN_BUDGET`] of a core: after
/// one that took `cost` of CPU (~2 s with 2,000 processes × 200 fds), the
/// next waits `cost × SCAN_BUDGET`, at least `min` and at most
/// [`SCAN_MAX_GAP`]. Lines meanwhile name the owners the kernel or the known
/// holders tell, else none.
pub fn scan_gap(cost: Duration, min: Duration) -> Duration {
    (cost * SCAN_BUDGET).clamp(min, SCAN_MAX_GAP.max(min))
}

pub const SCAN_BUDGET: u32 = 50;
pub const SCAN_MAX_GAP: Duration = Duration::from_secs(60);

/// Which re-check of the known owners is due.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reconcile {
    /// Their holders' (and those holders' children's) fd tables.
    Holders,
    /// All of `/proc`: also finds holders that got a socket by fd passing.
    Full,
}

/// The resolver's clocks.
#[derive(Debug)]
pub struct Schedule {
    pub(super) last_scan: Option<Instant>,
    min_rescan: Duration,
    /// CPU time the last full scan took: the next waits [`scan_gap`] of it.
    pub(super) last_scan_cost: Duration,
    last_reconcile: Instant,
    reconcile: Duration,
    last_full: Instant,
    full_reconcile: Duration,
}

impl Schedule {
    /// Scans for unknown sockets at most once per `min_rescan` (and the
    /// budget).
    pub fn new(min_rescan: Duration) -> Self {
        Self {
            last_scan: None,
            min_rescan,
            last_scan_cost: Duration::ZERO,
            last_reconcile: Instant::now(),
            reconcile: Duration::from_secs(5),
            last_full: Instant::now(),
            full_reconcile: Duration::from_secs(600),
        }
    }

    /// The re-check of the known owners that is due now, if any (and
    /// starts its clock).
    pub fn reconcile(&mut self) -> Option<Reconcile> {
        if self.last_reconcile.elapsed() < self.reconcile {
            return None;
        }
        self.last_reconcile = Instant::now();
        if self.last_full.elapsed() >= self.full_reconcile {
            self.last_full = Instant::now();
            Some(Reconcile::Full)
        } else {
            Some(Reconcile::Holders)
        }
    }

    /// Whether a full scan for unknown sockets is allowed now. Lines about
    /// to be written (`now`) skip the minimum pause, not the budget.
    pub fn scan_due(&self, now: bool) -> bool {
        let min = if now { Duration::ZERO } else { self.min_rescan };
        let gap = scan_gap(self.last_scan_cost, min);
        self.last_scan.is_none_or(|t| t.elapsed() >= gap)
    }

    /// A full scan just ended, having cost `cost` of CPU.
    pub fn scanned(&mut self, cost: Duration) {
        self.last_scan = Some(Instant::now());
        self.last_scan_cost = cost;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_budget_spaces_full_scans_by_their_cost() {
        assert_eq!(
            scan_gap(Duration::from_secs(2), Duration::from_millis(100)),
            SCAN_MAX_GAP
        );
        assert_eq!(
            scan_gap(Duration::from_millis(1), Duration::from_millis(100)),
            Duration::from_millis(100)
        );
        let mut s = Schedule::new(Duration::from_secs(3600));
        assert!(s.scan_due(false), "the first scan is due at once");
        s.scanned(Duration::ZERO);
        assert!(!s.scan_due(false), "within the minimum pause");
        assert!(s.scan_due(true), "lines skip the pause");
        s.scanned(Duration::from_millis(10));
        assert!(!s.scan_due(true), "but not the budget: 500 ms");
    }

    #[test]
    fn holders_are_rechecked_every_few_seconds_and_all_of_proc_every_ten_minutes() {
        let mut s = Schedule::new(Duration::ZERO);
        assert_eq!(s.reconcile(), None);
        let ago = |secs| Instant::now().checked_sub(Duration::from_secs(secs));
        let (Some(six), Some(long)) = (ago(6), ago(601)) else {
            return; // an uptime too short to go back in time
        };
        s.last_reconcile = six;
        assert_eq!(s.reconcile(), Some(Reconcile::Holders));
        assert_eq!(s.reconcile(), None, "its clock restarted");
        (s.last_reconcile, s.last_full) = (six, long);
        assert_eq!(s.reconcile(), Some(Reconcile::Full));
    }
}

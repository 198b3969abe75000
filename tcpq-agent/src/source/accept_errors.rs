//! accept() failures counted in the kernel (`ACCEPT_ERRORS`: per
//! (tgid << 32 | errno), per CPU, summed when read) → the failures since
//! the last reading. Pure, unit-tested.

use std::collections::HashMap;

/// Failures of one process with one errno since the last reading.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Failures {
    pub pid: u32,
    pub errno: u32,
    pub n: u64,
}

/// The totals of the last reading, to take differences.
#[derive(Debug, Default)]
pub struct AcceptErrorDeltas {
    seen: HashMap<u64, u64>,
}

impl AcceptErrorDeltas {
    /// `now`: every key the map holds with its total. Only what the kernel
    /// still holds is remembered: a total below the last one is a new
    /// entry (the key was deleted and made again), counted from zero.
    pub fn update(&mut self, now: &[(u64, u64)]) -> Vec<Failures> {
        let prev = std::mem::replace(&mut self.seen, now.iter().copied().collect());
        now.iter()
            .filter_map(|&(key, total)| {
                let before = prev.get(&key).copied().unwrap_or(0);
                let n = if total >= before {
                    total - before
                } else {
                    total
                };
                (n > 0).then_some(Failures {
                    pid: (key >> 32) as u32,
                    errno: key as u32,
                    n,
                })
            })
            .collect()
    }

    /// The keys held for processes, to ask which are gone.
    pub fn keys(&self) -> Vec<u64> {
        let mut k: Vec<u64> = self.seen.keys().copied().collect();
        k.sort_unstable();
        k
    }

    /// A process that exited fails no more accepts: its key, read for the
    /// last time, is deleted from the map and forgotten here.
    pub fn forget(&mut self, key: u64) {
        self.seen.remove(&key);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const K: u64 = 7 << 32 | 24; // pid 7, EMFILE

    #[test]
    fn reports_what_is_new_per_process_and_errno() {
        let mut d = AcceptErrorDeltas::default();
        let f = d.update(&[(K, 5)]);
        assert_eq!(
            f,
            vec![Failures {
                pid: 7,
                errno: 24,
                n: 5
            }]
        );
        assert!(d.update(&[(K, 5)]).is_empty());
        assert_eq!(d.update(&[(K, 9)])[0].n, 4);
    }

    #[test]
    fn a_remade_key_counts_from_zero() {
        let mut d = AcceptErrorDeltas::default();
        d.update(&[(K, 50)]);
        // Deleted (the process gone) and made again by a new process with
        // the same pid: its total is below the last one.
        assert_eq!(d.update(&[(K, 3)])[0].n, 3);
    }

    #[test]
    fn a_key_gone_from_the_map_is_forgotten() {
        let mut d = AcceptErrorDeltas::default();
        d.update(&[(K, 5)]);
        d.update(&[]);
        assert_eq!(d.update(&[(K, 5)])[0].n, 5);
        d.forget(K);
        assert!(d.keys().is_empty());
    }
}

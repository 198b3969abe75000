//! Counts the kernel keeps (`STORM` map, see `tcpq_common::storm`) turned
//! into increments: the map holds per-CPU running totals, so each reading
//! is compared with the previous one. Pure apart from [`read`]; the
//! sock_diag thread reads the map around each namespace's dump, so every
//! increment knows whether it happened before, during or after the dump
//! (`lo`..`hi`), which is what settling `sk_drops` against it needs.

use std::collections::HashMap;

use aya::maps::{MapData, PerCpuHashMap};
use tcpq_common::{
    storm::{StormKey, StormValue},
    Event,
};

/// What one key moved by between two readings.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Delta {
    /// The latest event of the key (over all CPUs that moved).
    #[serde(with = "crate::source::wire::event_bytes")]
    pub ev: Event,
    /// Occurrences since the previous reading.
    pub n: u64,
    /// They happened after `lo` (the previous reading of the key, 0 when
    /// none) and at or before `hi` (the latest one's kernel timestamp).
    pub lo: u64,
    pub hi: u64,
}

/// One reading: every key with each CPU's value, and when it was taken
/// (CLOCK_MONOTONIC, the clock of `bpf_ktime_get_ns`).
pub struct Reading {
    pub at_ns: u64,
    pub keys: Vec<(StormKey, Vec<StormValue>)>,
}

/// Keys unchanged for this long are deleted from the map (closed listeners
/// and old endpoints must not fill it over months).
pub const QUIET_NS: u64 = 60_000_000_000;

#[derive(Default)]
struct Known {
    /// Per CPU: the total already turned into increments.
    totals: Vec<u64>,
    /// When the key was last read, and last seen moving.
    read_ns: u64,
    moved_ns: u64,
}

#[derive(Default)]
pub struct Tally {
    known: HashMap<StormKey, Known>,
}

impl Tally {
    /// Increments since the previous reading, one per key that moved.
    pub fn observe(&mut self, r: &Reading) -> Vec<Delta> {
        let mut out = Vec::new();
        for (key, cpus) in &r.keys {
            let k = self.known.entry(*key).or_insert_with(|| Known {
                moved_ns: r.at_ns,
                ..Known::default()
            });
            if k.totals.len() < cpus.len() {
                k.totals.resize(cpus.len(), 0);
            }
            let mut n = 0;
            let mut latest: Option<&Event> = None;
            for (cpu, v) in cpus.iter().enumerate() {
                let was = k.totals[cpu];
                // A smaller total is a key the kernel made anew.
                let d = v.ev.count.checked_sub(was).unwrap_or(v.ev.count);
                if d > 0 {
                    n += d;
                    k.totals[cpu] = v.ev.count;
                    if latest.is_none_or(|l| v.ev.ts_ns > l.ts_ns) {
                        latest = Some(&v.ev);
                    }
                }
            }
            let lo = k.read_ns;
            k.read_ns = r.at_ns;
            if let Some(ev) = latest {
                k.moved_ns = r.at_ns;
                out.push(Delta {
                    ev: *ev,
                    n,
                    lo,
                    hi: ev.ts_ns,
                });
            }
        }
        out
    }

    /// Keys that have not moved for [`QUIET_NS`] as of `now`: to delete
    /// from the map, then [`Tally::forget`].
    pub fn quiet(&self, now_ns: u64) -> Vec<StormKey> {
        self.known
            .iter()
            .filter(|(_, k)| now_ns.saturating_sub(k.moved_ns) >= QUIET_NS)
            .map(|(key, _)| *key)
            .collect()
    }

    pub fn forget(&mut self, key: &StormKey) {
        self.known.remove(key);
    }
}

/// Reads the whole map (one `get_next_key` and one lookup per key).
pub fn read(map: &PerCpuHashMap<MapData, StormKey, StormValue>, at_ns: u64) -> Reading {
    let keys = map
        .iter()
        .filter_map(Result::ok)
        .map(|(k, v)| (k, v.iter().copied().collect()))
        .collect();
    Reading { at_ns, keys }
}

/// The sock_diag thread's handle on the map: reads, increments, cleanup.
pub struct Storms {
    pub map: PerCpuHashMap<MapData, StormKey, StormValue>,
    pub tally: Tally,
}

impl Storms {
    /// Reads the map now and returns what moved.
    pub fn take(&mut self) -> Vec<Delta> {
        let r = read(&self.map, crate::source::poll::monotonic_ns());
        self.tally.observe(&r)
    }

    /// Deletes keys quiet for a minute. An occurrence between the last
    /// reading and the delete would be lost; after a minute of quiet that
    /// window is a few microseconds.
    pub fn sweep(&mut self) {
        for key in self.tally.quiet(crate::source::poll::monotonic_ns()) {
            let _ = self.map.remove(&key);
            self.tally.forget(&key);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn val(count: u64, ts: u64) -> StormValue {
        let mut v = StormValue::zeroed();
        v.ev.count = count;
        v.ev.ts_ns = ts;
        v
    }

    fn key(sk: u64) -> StormKey {
        StormKey {
            sk,
            kind: 4,
            ..StormKey::default()
        }
    }

    #[test]
    fn increments_are_differences_of_per_cpu_totals() {
        let mut t = Tally::default();
        let r1 = Reading {
            at_ns: 100,
            keys: vec![(key(1), vec![val(3, 50), val(2, 60)])],
        };
        let d = t.observe(&r1);
        assert_eq!(d.len(), 1);
        assert_eq!((d[0].n, d[0].lo, d[0].hi), (5, 0, 60));
        // CPU 0 moves by 4, CPU 1 not at all.
        let r2 = Reading {
            at_ns: 200,
            keys: vec![(key(1), vec![val(7, 150), val(2, 60)])],
        };
        let d = t.observe(&r2);
        assert_eq!((d[0].n, d[0].lo, d[0].hi), (4, 100, 150));
        // Nothing moved: nothing to say.
        let r3 = Reading {
            at_ns: 300,
            keys: vec![(key(1), vec![val(7, 150), val(2, 60)])],
        };
        assert!(t.observe(&r3).is_empty());
    }

    #[test]
    fn a_key_made_anew_counts_from_zero() {
        let mut t = Tally::default();
        t.observe(&Reading {
            at_ns: 1,
            keys: vec![(key(1), vec![val(9, 1)])],
        });
        let d = t.observe(&Reading {
            at_ns: 2,
            keys: vec![(key(1), vec![val(2, 2)])],
        });
        assert_eq!(d[0].n, 2);
    }

    #[test]
    fn quiet_keys_are_swept_and_forgotten() {
        let mut t = Tally::default();
        t.observe(&Reading {
            at_ns: 10,
            keys: vec![(key(1), vec![val(1, 5)]), (key(2), vec![val(1, 5)])],
        });
        t.observe(&Reading {
            at_ns: QUIET_NS,
            keys: vec![
                (key(1), vec![val(1, 5)]),
                (key(2), vec![val(2, QUIET_NS - 1)]),
            ],
        });
        assert_eq!(t.quiet(QUIET_NS + 10), vec![key(1)]);
        t.forget(&key(1));
        assert!(t.quiet(QUIET_NS + 10).is_empty());
        assert_eq!(t.quiet(2 * QUIET_NS), vec![key(2)]);
    }
}

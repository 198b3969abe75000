//! Accept-latency histograms from the kernel (cumulative, per netns and
//! port) → per-interval summaries: how many accepts, p50, p99, max.

use std::collections::HashMap;

use tcpq_common::latency::{bucket_upper_ns, LatencyHist, LAT_BUCKETS};

/// One listener port's accepts over one interval.
#[derive(Debug, Clone, PartialEq)]
pub struct Summary {
    pub netns: u32,
    pub port: u16,
    pub count: u64,
    /// Upper bounds of the buckets holding the percentile (≤ 25 % above).
    pub p50_ns: u64,
    pub p99_ns: u64,
    /// The highest bucket's bound, capped by the largest value ever seen.
    pub max_ns: u64,
    /// Sum of the interval's waits.
    pub sum_ns: u64,
    /// The interval's non-empty buckets: (upper bound in ns, accepts).
    pub buckets: Vec<(u64, u64)>,
}

/// Prometheus histogram buckets (`le`, seconds) for accept latency.
pub const PROM_BOUNDS: [f64; 14] = [
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
];

/// Folds a summary's fine buckets into `bounds` (per bucket, the last one
/// above every bound). A fine bucket goes to the first bound at or above
/// its upper edge, so a count is never placed below its true value (at
/// most one fine bucket, 19 %, high).
pub fn fold(s: &Summary, bounds: &[f64]) -> Vec<u64> {
    let mut out = vec![0u64; bounds.len() + 1];
    for &(upper_ns, n) in &s.buckets {
        let secs = upper_ns as f64 / 1e9;
        let i = bounds
            .iter()
            .position(|&b| secs <= b * (1.0 + 1e-9))
            .unwrap_or(bounds.len());
        out[i] += n;
    }
    out
}

/// Sums one key's per-CPU histograms.
pub fn sum_cpus<'a>(per_cpu: impl Iterator<Item = &'a LatencyHist>) -> LatencyHist {
    let mut out = LatencyHist::zeroed();
    for h in per_cpu {
        out.count += h.count;
        out.sum_ns += h.sum_ns;
        out.max_ns = out.max_ns.max(h.max_ns);
        for (o, b) in out.buckets.iter_mut().zip(h.buckets.iter()) {
            *o += b;
        }
    }
    out
}

/// How long a listener stays measured after its queue was last seen
/// filling.
pub const KEEP_MEASURING: std::time::Duration = std::time::Duration::from_secs(60);

/// Whether a listener's accept latency is worth measuring now: its queue is
/// a quarter full (the warning before it fills) — or it is the `--port`
/// the user asked about.
pub fn worth_measuring(queue_len: u32, queue_limit: u32, port: u16, wanted: Option<u16>) -> bool {
    wanted == Some(port) || (queue_len > 0 && queue_len as u64 * 4 >= queue_limit as u64)
}

/// The key the kernel uses for a listener port.
pub fn key(netns: u32, port: u16) -> u64 {
    (netns as u64) << 16 | port as u64
}

#[derive(Default)]
pub struct LatencyTracker {
    prev: HashMap<u64, LatencyHist>,
}

impl LatencyTracker {
    /// Takes the kernel's cumulative histograms; returns what changed since
    /// the previous call.
    pub fn update(&mut self, now: Vec<(u64, LatencyHist)>) -> Vec<Summary> {
        let mut out = Vec::new();
        let mut next = HashMap::new();
        for (key, h) in now {
            let before = self.prev.get(&key);
            let count = h.count - before.map_or(0, |b| b.count.min(h.count));
            if count > 0 {
                let mut delta = [0u64; LAT_BUCKETS];
                for (i, d) in delta.iter_mut().enumerate() {
                    let b = before.map_or(0, |b| b.buckets[i]);
                    *d = h.buckets[i].saturating_sub(b) as u64;
                }
                let pct = |p: f64| {
                    let want = ((count as f64) * p).ceil().max(1.0) as u64;
                    let mut seen = 0;
                    for (i, d) in delta.iter().enumerate() {
                        seen += d;
                        if seen >= want {
                            return bucket_upper_ns(i);
                        }
                    }
                    bucket_upper_ns(LAT_BUCKETS - 1)
                };
                let top = delta.iter().rposition(|&d| d > 0).unwrap_or(0);
                let buckets = delta
                    .iter()
                    .enumerate()
                    .filter(|(_, &d)| d > 0)
                    .map(|(i, &d)| (bucket_upper_ns(i), d))
                    .collect();
                out.push(Summary {
                    netns: (key >> 16) as u32,
                    port: key as u16,
                    count,
                    p50_ns: pct(0.50).min(h.max_ns.max(1)),
                    p99_ns: pct(0.99).min(h.max_ns.max(1)),
                    max_ns: bucket_upper_ns(top).min(h.max_ns.max(1)),
                    sum_ns: h.sum_ns - before.map_or(0, |b| b.sum_ns.min(h.sum_ns)),
                    buckets,
                });
            }
            next.insert(key, h);
        }
        self.prev = next;
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tcpq_common::latency::bucket;

    fn hist(values: &[u64]) -> LatencyHist {
        let mut h = LatencyHist::zeroed();
        for &v in values {
            h.count += 1;
            h.sum_ns += v;
            h.max_ns = h.max_ns.max(v);
            h.buckets[bucket(v)] += 1;
        }
        h
    }

    #[test]
    fn summarises_the_interval_only() {
        let mut t = LatencyTracker::default();
        let key = 4026532000u64 << 16 | 8080;
        let first: Vec<u64> = (0..100).map(|_| 1_000_000).collect(); // 1 ms
        let s = t.update(vec![(key, hist(&first))]);
        assert_eq!(s.len(), 1);
        assert_eq!((s[0].netns, s[0].port, s[0].count), (4026532000, 8080, 100));
        assert!(
            s[0].p99_ns >= 1_000_000 && s[0].p99_ns <= 1_250_000,
            "{:?}",
            s[0]
        );
        // Nothing new: no summary. Then 10 slow accepts.
        assert!(t.update(vec![(key, hist(&first))]).is_empty());
        let mut all = first.clone();
        all.extend((0..10).map(|_| 500_000_000));
        let s = t.update(vec![(key, hist(&all))]);
        assert_eq!(s[0].count, 10);
        assert!(s[0].p50_ns >= 500_000_000 && s[0].p50_ns <= 625_000_000);
        assert_eq!(s[0].max_ns, 500_000_000, "capped by the true max");
        assert_eq!(s[0].sum_ns, 10 * 500_000_000);
        // In Prometheus buckets: all ten in le=0.5 or le=1 (the fine
        // bucket holding 500 ms ends above 0.5 s), none lower.
        let f = fold(&s[0], &PROM_BOUNDS);
        assert_eq!(f.iter().sum::<u64>(), 10);
        assert_eq!(f[..9].iter().sum::<u64>(), 0, "{f:?}");
    }

    #[test]
    fn measures_filling_queues_and_the_asked_port() {
        assert!(!worth_measuring(0, 4096, 80, None));
        assert!(!worth_measuring(100, 4096, 80, None));
        assert!(worth_measuring(1024, 4096, 80, None));
        assert!(worth_measuring(1, 1, 80, None));
        assert!(worth_measuring(0, 4096, 80, Some(80)));
        assert!(!worth_measuring(0, 4096, 81, Some(80)));
        assert_eq!(key(7, 8080), 7 << 16 | 8080);
    }

    #[test]
    fn sums_cpus() {
        let a = hist(&[2_000, 3_000]);
        let b = hist(&[9_000_000]);
        let s = sum_cpus([a, b].iter());
        assert_eq!((s.count, s.max_ns), (3, 9_000_000));
    }
}

//! Accept latency (handshake completed → `accept()` returned it) as a
//! log-linear histogram, kept per listener port in the kernel: 4 buckets per
//! power of two (each bucket spans at most 25 % of its lower bound) from
//! 1 µs up; bucket 0 holds everything under 1.024 µs.

pub const LAT_BUCKETS: usize = 128;
/// Values below 2^10 ns go to bucket 0.
const FIRST_OCTAVE: u32 = 10;

#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LatencyHist {
    pub count: u64,
    pub max_ns: u64,
    /// Sum of all waits (Prometheus `_sum`).
    pub sum_ns: u64,
    pub buckets: [u32; LAT_BUCKETS],
}

#[cfg(feature = "user")]
unsafe impl aya::Pod for LatencyHist {}

impl LatencyHist {
    pub const fn zeroed() -> Self {
        Self {
            count: 0,
            max_ns: 0,
            sum_ns: 0,
            buckets: [0; LAT_BUCKETS],
        }
    }
}

/// floor(log2(v)) for v > 0, in a handful of branch-free-ish steps the BPF
/// verifier accepts (no loops).
#[inline(always)]
pub fn log2(mut v: u64) -> u32 {
    let mut r = 0;
    if v >= 1 << 32 {
        v >>= 32;
        r += 32;
    }
    if v >= 1 << 16 {
        v >>= 16;
        r += 16;
    }
    if v >= 1 << 8 {
        v >>= 8;
        r += 8;
    }
    if v >= 1 << 4 {
        v >>= 4;
        r += 4;
    }
    if v >= 1 << 2 {
        v >>= 2;
        r += 2;
    }
    if v >= 1 << 1 {
        r += 1;
    }
    r
}

/// Latencies from this many ns up share the last bucket (about 37 min).
const CAP_NS: u64 = (1 << 41) - 1;

/// The bucket of a latency in ns: always below [`LAT_BUCKETS`] (at most
/// 124), by construction rather than by a final clamp, so that the BPF
/// verifier (6.1's included) can follow it.
#[inline(always)]
pub fn bucket(ns: u64) -> usize {
    if ns < 1 << FIRST_OCTAVE {
        return 0;
    }
    let ns = if ns > CAP_NS { CAP_NS } else { ns };
    let msb = log2(ns);
    let sub = ((ns >> (msb - 2)) & 3) as usize;
    ((msb - FIRST_OCTAVE) as usize) * 4 + sub + 1
}

/// The upper bound (exclusive) of bucket `i`, in ns.
pub fn bucket_upper_ns(i: usize) -> u64 {
    if i == 0 {
        return 1 << FIRST_OCTAVE;
    }
    let octave = ((i - 1) / 4) as u32 + FIRST_OCTAVE;
    let sub = ((i - 1) % 4) as u64;
    (1u64 << octave) + ((sub + 1) << (octave - 2))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buckets_bound_their_values() {
        for ns in [
            1_024u64,
            1_500,
            2_047,
            2_048,
            999_999,
            1_000_000,
            500_000_000,
            7_777_777_777,
        ] {
            let b = bucket(ns);
            assert!(ns < bucket_upper_ns(b), "{ns} in {b}");
            assert!(b == 0 || ns >= bucket_upper_ns(b - 1), "{ns} in {b}");
            // Within 25 % of the value.
            assert!(bucket_upper_ns(b) as f64 <= ns as f64 * 1.25 + 1.0, "{ns}");
        }
        assert_eq!(bucket(5), 0);
        assert_eq!(bucket(u64::MAX), bucket(CAP_NS));
        assert!(bucket(u64::MAX) < LAT_BUCKETS);
        assert_eq!(log2(1), 0);
        assert_eq!(log2(1 << 40), 40);
    }
}

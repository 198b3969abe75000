//! Accepts per listener, from the kernel's per-CPU `ACCEPTS` map (filled by
//! the `inet_csk_accept` hook): per-interval deltas. Pure, unit-tested.

use std::collections::HashMap;

use tcpq_common::{accepted::PeerKey, AcceptStats};

use crate::model::ListenerKey;

/// What a listener's application did with its queue during an interval.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Accepts {
    /// Connections accepted during the interval.
    pub count: u64,
    /// Longest accept queue seen at an accept since tcpq started.
    pub queue_max: u32,
}

/// Sums one map entry's per-CPU values.
pub fn sum_cpus<'a>(values: impl IntoIterator<Item = &'a AcceptStats>) -> AcceptStats {
    values
        .into_iter()
        .fold(AcceptStats::default(), |mut acc, v| {
            acc.accepts += v.accepts;
            acc.depth_max = acc.depth_max.max(v.depth_max);
            if acc.sock_ino == 0 {
                acc.netns = v.netns;
                acc.sock_ino = v.sock_ino;
            }
            acc
        })
}

/// Remembers each entry's total to report deltas.
#[derive(Default)]
pub struct AcceptCounter {
    last: HashMap<u64, u64>,
}

impl AcceptCounter {
    /// `entries`: (listener address, CPU-summed stats) for every map entry.
    pub fn update(
        &mut self,
        entries: impl IntoIterator<Item = (u64, AcceptStats)>,
    ) -> HashMap<ListenerKey, Accepts> {
        let mut out: HashMap<ListenerKey, Accepts> = HashMap::new();
        let mut seen = HashMap::new();
        for (sk, s) in entries {
            let before = self.last.get(&sk).copied().unwrap_or(0);
            seen.insert(sk, s.accepts);
            let key = ListenerKey {
                netns: s.netns,
                inode: s.sock_ino,
            };
            let a = out.entry(key).or_default();
            a.count += s.accepts.saturating_sub(before);
            a.queue_max = a.queue_max.max(s.depth_max);
        }
        self.last = seen; // entries evicted by the LRU are forgotten
        out
    }
}

/// The kernel's record of who accepted each connection (`ACCEPTED_BY`) as
/// a lookup for the aggregator. `by_fd`: no `inet_csk_accept` hook, so the
/// accept syscall's exit records accepts (while it is attached).
pub fn accepter(ebpf: &mut aya::Ebpf, by_fd: bool) -> anyhow::Result<Option<Accepter>> {
    if by_fd {
        if let Some(m) = ebpf.map_mut(tcpq_common::names::map::BY_FD) {
            aya::maps::Array::<_, u32>::try_from(m)?.set(0, 1, 0)?;
        }
    }
    let Some(map) = ebpf.take_map(tcpq_common::names::map::ACCEPTED_BY) else {
        return Ok(None);
    };
    let map = aya::maps::HashMap::<_, PeerKey, u32>::try_from(map)?;
    Ok(Some(Box::new(move |k: &PeerKey| map.get(k, 0).ok())))
}

/// Looks up the process that accepted a connection (tgid).
pub type Accepter = Box<dyn Fn(&PeerKey) -> Option<u32> + Send>;

#[cfg(test)]
mod tests {
    use super::*;

    fn stats(accepts: u64, depth: u32) -> AcceptStats {
        AcceptStats {
            accepts,
            depth_max: depth,
            netns: 7,
            sock_ino: 42,
            _pad: 0,
        }
    }

    #[test]
    fn sums_cpus_and_keeps_identity_from_any_cpu() {
        let zero = AcceptStats::default();
        let s = sum_cpus([&zero, &stats(3, 2), &stats(4, 5)]);
        assert_eq!((s.accepts, s.depth_max, s.netns, s.sock_ino), (7, 5, 7, 42));
    }

    #[test]
    fn reports_deltas_per_interval() {
        let mut c = AcceptCounter::default();
        let key = ListenerKey {
            netns: 7,
            inode: 42,
        };
        assert_eq!(
            c.update([(0xffff, stats(10, 3))])[&key],
            Accepts {
                count: 10,
                queue_max: 3
            }
        );
        assert_eq!(c.update([(0xffff, stats(10, 3))])[&key].count, 0);
        assert_eq!(
            c.update([(0xffff, stats(15, 4))])[&key],
            Accepts {
                count: 5,
                queue_max: 4
            }
        );
        assert!(c.update([]).is_empty());
    }
}

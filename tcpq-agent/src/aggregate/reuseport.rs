//! SO_REUSEPORT groups: several listeners on one namespace, address and
//! port, among which the kernel spreads connections.

use std::collections::HashMap;

use crate::{
    aggregate::Aggregator,
    model::{Fact, Kind, Pending, Stage},
};

/// A group: namespace, address, port.
type Group = (u32, std::net::IpAddr, u16);

impl Aggregator {
    /// SO_REUSEPORT groups (several listeners on one netns, address and
    /// port), each as its members' socket inodes.
    pub fn reuseport_groups(&self) -> Vec<Vec<u32>> {
        let mut groups: HashMap<Group, Vec<u32>> = HashMap::new();
        for (k, st) in &self.listeners {
            if let Some(i) = &st.info {
                groups
                    .entry((k.netns, i.addr, i.port))
                    .or_default()
                    .push(k.inode);
            }
        }
        groups.into_values().filter(|g| g.len() > 1).collect()
    }

    /// SO_REUSEPORT groups (several listeners on one netns, address and
    /// port): each member's line also carries the group's size and its
    /// total of that kind over the interval.
    pub(super) fn group_totals(&self, lines: &mut [Pending]) {
        let mut size: HashMap<Group, u32> = HashMap::new();
        for (k, st) in &self.listeners {
            if let Some(i) = &st.info {
                *size.entry((k.netns, i.addr, i.port)).or_default() += 1;
            }
        }
        let group = |p: &Pending| p.key.map(|k| (k.netns, p.info.addr, p.info.port));
        let mut totals: HashMap<(Group, &'static str, Option<Stage>), u64> = HashMap::new();
        for p in lines.iter() {
            if let Some(g) = group(p) {
                *totals
                    .entry((g, p.kind.event_name(), p.kind.stage()))
                    .or_default() += p.count;
            }
        }
        for p in lines.iter_mut() {
            let Some(g) = group(p) else { continue };
            let n = size.get(&g).copied().unwrap_or(0);
            if n > 1 && p.kind != Kind::CloseWait {
                let t = totals[&(g, p.kind.event_name(), p.kind.stage())];
                p.attrs.push(Fact::Reuseport {
                    group_size: n,
                    group_count: t,
                });
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::super::testutil::*;
    use super::*;

    #[test]
    fn reuseport_members_carry_the_group_total() {
        let mut a = Aggregator::default();
        a.on_snapshot(&snap(vec![sock(1, 0, 0, 1), sock(2, 0, 0, 1)], 100, true));
        a.on_snapshot(&snap(vec![sock(1, 3, 2, 1), sock(2, 5, 2, 1)], 200, false));
        let p = a.take();
        assert_eq!(p.len(), 2);
        for l in &p {
            assert!(
                l.attrs.contains(&Fact::Reuseport {
                    group_size: 2,
                    group_count: 8
                }),
                "{l:?}"
            );
        }
        let mut counts: Vec<u64> = p.iter().map(|l| l.count).collect();
        counts.sort();
        assert_eq!(counts, vec![3, 5], "each member on its own");
        let mut g = a.reuseport_groups();
        g[0].sort();
        assert_eq!(g, vec![vec![1, 2]]);
    }
}

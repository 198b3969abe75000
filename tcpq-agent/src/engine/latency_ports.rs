//! Which listener ports the kernel measures accept latency for: those
//! whose queue is filling (for [`latency::KEEP_MEASURING`] after) and the
//! `--port` asked about; off for the rest, so a healthy server pays one
//! array load. Only changes reach the kernel's maps. Pure, unit-tested.

use std::{collections::HashMap, time::Instant};

use crate::{
    model::{ListenerInfo, ListenerKey},
    source::latency,
};

/// What the kernel's maps must be told.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Changes {
    /// Keys (netns << 16 | port) to start measuring.
    pub add: Vec<u64>,
    /// Keys to stop measuring: their histograms go too.
    pub remove: Vec<u64>,
    /// The global switch, when it flips.
    pub on: Option<bool>,
}

/// The ports measured, and until when.
#[derive(Debug, Default)]
pub struct LatencyPorts {
    until: HashMap<u64, Instant>,
}

/// The keys worth measuring now: the `--port` in any namespace (from the
/// first connection on), and every listener whose queue is filling.
pub fn wanted<'a>(
    port: Option<u16>,
    listeners: impl Iterator<Item = (ListenerKey, &'a ListenerInfo)>,
) -> Vec<u64> {
    let mut w: Vec<u64> = port.map(|p| latency::key(0, p)).into_iter().collect();
    for (k, i) in listeners {
        if latency::worth_measuring(i.queue_len, i.queue_limit, i.port, port) {
            w.push(latency::key(k.netns, i.port));
        }
    }
    w
}

impl LatencyPorts {
    pub fn choose(&mut self, wanted: Vec<u64>, now: Instant) -> Changes {
        let until = now + latency::KEEP_MEASURING;
        let was_on = !self.until.is_empty();
        let mut c = Changes::default();
        for k in wanted {
            if self.until.insert(k, until).is_none() {
                c.add.push(k);
            }
        }
        self.until.retain(|k, t| {
            let keep = *t > now;
            if !keep {
                c.remove.push(*k);
            }
            keep
        });
        c.remove.sort_unstable();
        let on = !self.until.is_empty();
        if on != was_on {
            c.on = Some(on);
        }
        c
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::{net::IpAddr, time::Duration};

    fn listener(netns: u32, port: u16, queue_len: u32) -> (ListenerKey, ListenerInfo) {
        (
            ListenerKey {
                netns,
                inode: port as u32,
            },
            ListenerInfo {
                addr: IpAddr::from([127, 0, 0, 1]),
                port,
                queue_len,
                queue_limit: 8,
            },
        )
    }

    #[test]
    fn the_asked_port_and_filling_queues_are_wanted() {
        let l = [listener(5, 80, 2), listener(5, 81, 1), listener(6, 82, 0)];
        let w = wanted(Some(82), l.iter().map(|(k, i)| (*k, i)));
        assert_eq!(
            w,
            vec![
                latency::key(0, 82),
                latency::key(5, 80),
                latency::key(6, 82)
            ]
        );
    }

    #[test]
    fn only_changes_reach_the_kernel_and_measuring_stops_after_a_while() {
        let t0 = Instant::now();
        let mut p = LatencyPorts::default();
        let c = p.choose(vec![7], t0);
        assert_eq!(
            c,
            Changes {
                add: vec![7],
                remove: vec![],
                on: Some(true)
            }
        );
        assert_eq!(
            p.choose(vec![7], t0 + Duration::from_secs(1)),
            Changes::default()
        );
        let late = t0 + Duration::from_secs(1) + latency::KEEP_MEASURING;
        assert_eq!(
            p.choose(vec![], late),
            Changes {
                add: vec![],
                remove: vec![7],
                on: Some(false)
            }
        );
    }
}

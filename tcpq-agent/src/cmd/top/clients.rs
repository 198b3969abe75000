//! The client side of `top`: connect() failures per process, with their
//! rates, and the local-port headroom of each namespace they (or the
//! listeners) are in.

use std::{
    collections::{HashMap, VecDeque},
    time::Instant,
};

use super::frame::{Client, Ports, RATE_WINDOW};
use crate::{
    export::sink::View,
    source::netstat::Sysctls,
    verdict::{self, PortEvidence},
};

/// One process's connect() errors since `top` started.
#[derive(Default)]
pub(super) struct ClientTally {
    pub process: String,
    pub errors: HashMap<String, u64>,
    /// (when, errors then), oldest first.
    history: VecDeque<(Instant, HashMap<String, u64>)>,
    pub destination: String,
}

impl ClientTally {
    /// Records a sample at `now`; returns errno name → (total, per second
    /// over the last `RATE_WINDOW`), by name.
    pub fn sample(&mut self, now: Instant) -> Vec<(String, u64, f64)> {
        self.history.push_back((now, self.errors.clone()));
        while self.history.len() > 2 && now - self.history[1].0 >= RATE_WINDOW {
            self.history.pop_front();
        }
        let (t0, base) = self
            .history
            .front()
            .cloned()
            .unwrap_or((now, HashMap::new()));
        let secs = (now - t0).as_secs_f64().max(0.5);
        let mut errors: Vec<(String, u64, f64)> = self
            .errors
            .iter()
            .map(|(e, n)| {
                let before = base.get(e).copied().unwrap_or(0);
                (e.clone(), *n, (n - before) as f64 / secs)
            })
            .collect();
        errors.sort_by(|a, b| a.0.cmp(&b.0));
        errors
    }
}

/// The client rows at `now`: most errors first, then by pid.
pub(super) fn rows(tallies: &mut HashMap<(u32, u32), ClientTally>, now: Instant) -> Vec<Client> {
    let mut clients: Vec<Client> = tallies
        .iter_mut()
        .map(|(&(netns, pid), c)| Client {
            netns,
            pid,
            process: c.process.clone(),
            errors: c.sample(now),
            last_destination: c.destination.clone(),
        })
        .collect();
    clients.sort_by(|a, b| {
        let ta: u64 = a.errors.iter().map(|e| e.1).sum();
        let tb: u64 = b.errors.iter().map(|e| e.1).sum();
        tb.cmp(&ta).then(a.pid.cmp(&b.pid))
    });
    clients
}

/// The namespaces of `listeners` and `clients`, once each, in order.
pub(super) fn namespaces(listeners: impl Iterator<Item = u32>, clients: &[Client]) -> Vec<u32> {
    let mut netns: Vec<u32> = listeners.chain(clients.iter().map(|c| c.netns)).collect();
    netns.sort_unstable();
    netns.dedup();
    netns
}

/// EADDRNOTAVAIL failures (no local port left) of namespace `ns`'s clients.
fn addr_not_avail(clients: &[Client], ns: u32) -> u64 {
    clients
        .iter()
        .filter(|c| c.netns == ns)
        .flat_map(|c| &c.errors)
        .filter(|(e, ..)| e == "EADDRNOTAVAIL")
        .map(|(_, n, _)| n)
        .sum()
}

/// Port headroom of each of `netns` the aggregator has read; their
/// settings are added to `sysctls` where missing.
pub(super) fn ports(
    view: &View,
    netns: Vec<u32>,
    clients: &[Client],
    sysctls: &mut HashMap<u32, Sysctls>,
) -> Vec<Ports> {
    let mut ports = Vec::new();
    for ns in netns {
        let Some(st) = view.agg.netns_state(ns) else {
            continue;
        };
        sysctls.entry(ns).or_insert_with(|| st.sysctls.clone());
        ports.push(Ports {
            netns: ns,
            range: st.sysctls.port_range,
            time_wait: st.time_wait.unwrap_or(0),
            verdict: verdict::ports(&PortEvidence {
                addr_not_avail: addr_not_avail(clients, ns),
                time_wait: st.time_wait.unwrap_or(0),
                connected: 0,
                tw_reuse: st.sysctls.tw_reuse,
                settings: st.sysctls.clone(),
            }),
        });
    }
    ports
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    fn client(netns: u32, pid: u32, errors: &[(&str, u64)]) -> Client {
        Client {
            netns,
            pid,
            process: "curl".into(),
            errors: errors
                .iter()
                .map(|(e, n)| (e.to_string(), *n, 0.0))
                .collect(),
            last_destination: "10.0.0.1:80".into(),
        }
    }

    #[test]
    fn error_rates_over_the_window() {
        let t0 = Instant::now();
        let mut c = ClientTally::default();
        c.errors.insert("ECONNREFUSED".into(), 2);
        // The first sample: against nothing, over at least half a second.
        assert_eq!(c.sample(t0), [("ECONNREFUSED".to_string(), 2, 0.0)]);
        c.errors.insert("ECONNREFUSED".into(), 8);
        c.errors.insert("EADDRNOTAVAIL".into(), 1);
        assert_eq!(
            c.sample(t0 + Duration::from_secs(2)),
            [
                ("EADDRNOTAVAIL".to_string(), 1, 0.5),
                ("ECONNREFUSED".to_string(), 8, 3.0)
            ]
        );
        // Samples older than the window go (one at or before its start
        // stays).
        c.errors.insert("ECONNREFUSED".into(), 14);
        let e = c.sample(t0 + Duration::from_secs(5));
        assert_eq!(e[1], ("ECONNREFUSED".to_string(), 14, 2.0));
    }

    #[test]
    fn most_errors_first_then_pid() {
        let t0 = Instant::now();
        let mut tallies = HashMap::new();
        for (pid, n) in [(30, 1), (20, 5), (10, 1)] {
            let c: &mut ClientTally = tallies.entry((1, pid)).or_default();
            c.errors.insert("ECONNREFUSED".into(), n);
        }
        let pids: Vec<u32> = rows(&mut tallies, t0).iter().map(|c| c.pid).collect();
        assert_eq!(pids, [20, 10, 30]);
    }

    #[test]
    fn namespaces_once_each_and_their_port_failures() {
        let clients = [
            client(7, 1, &[("EADDRNOTAVAIL", 3), ("ECONNREFUSED", 9)]),
            client(7, 2, &[("EADDRNOTAVAIL", 4)]),
            client(2, 3, &[("EADDRNOTAVAIL", 5)]),
        ];
        assert_eq!(namespaces([7, 1, 7].into_iter(), &clients), [1, 2, 7]);
        assert_eq!(addr_not_avail(&clients, 7), 7);
        assert_eq!(addr_not_avail(&clients, 1), 0);
    }
}

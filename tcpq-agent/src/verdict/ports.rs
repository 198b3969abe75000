//! Outgoing connections of a network namespace: local ports running out
//! (connect() failing with EADDRNOTAVAIL, or nearly so).

use crate::verdict::{
    remedy,
    words::{count, times},
    PortEvidence, Verdict,
};

/// The verdict for the outgoing connections of one network namespace, or
/// None when local ports are not running out.
pub fn ports(e: &PortEvidence) -> Option<Verdict> {
    let range = e
        .settings
        .port_range
        .filter(|(lo, hi)| lo <= hi)
        .map(|(lo, hi)| (lo, hi, u64::from(hi) - u64::from(lo) + 1));
    let held = u64::from(e.time_wait) + u64::from(e.connected);
    let tw = e.time_wait;
    let conn = e.connected;
    let cause = match range {
        Some((lo, hi, size)) => {
            let left = size.saturating_sub(held);
            let low = left * 10 < size;
            if e.addr_not_avail == 0 && !low {
                return None;
            }
            let numbers = format!(
                "net.ipv4.ip_local_port_range {lo}–{hi} has {}, {tw} held in TIME_WAIT and {conn} by open connections",
                count(size, "port", "ports")
            );
            if e.addr_not_avail == 0 {
                format!(
                    "Local ports are nearly exhausted: {numbers}, {left} left; connect() fails with EADDRNOTAVAIL once none are."
                )
            } else if low {
                format!(
                    "connect() failed with EADDRNOTAVAIL {}: {numbers}, {left} left.",
                    times(e.addr_not_avail)
                )
            } else {
                format!(
                    "connect() failed with EADDRNOTAVAIL {}: {numbers}, {left} left now, so the shortage has eased or comes in bursts.",
                    times(e.addr_not_avail)
                )
            }
        }
        None => {
            if e.addr_not_avail == 0 {
                return None;
            }
            format!(
                "connect() failed with EADDRNOTAVAIL {} because no local port was free: {tw} held in TIME_WAIT and {conn} by open connections now (net.ipv4.ip_local_port_range unknown).",
                times(e.addr_not_avail)
            )
        }
    };
    let remedy = remedy::ports(e.time_wait, e.tw_reuse);
    Some(Verdict { cause, remedy })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::verdict::{testutil::*, Settings};

    fn port_settings(range: Option<(u16, u16)>) -> Settings {
        Settings {
            port_range: range,
            ..settings()
        }
    }

    #[test]
    fn ports_exhausted_by_time_wait() {
        let e = PortEvidence {
            addr_not_avail: 57,
            time_wait: 4,
            connected: 0,
            tw_reuse: Some(0),
            settings: port_settings(Some((40000, 40003))),
        };
        let v = port_verdict(&e);
        assert_eq!(
            v.cause,
            "connect() failed with EADDRNOTAVAIL 57 times: net.ipv4.ip_local_port_range 40000–40003 has 4 ports, 4 held in TIME_WAIT and 0 by open connections, 0 left."
        );
        assert_eq!(
            v.remedy,
            "Reuse connections (keep-alive / connection pooling) — the durable fix; widening net.ipv4.ip_local_port_range or enabling net.ipv4.tcp_tw_reuse=1 (currently 0) only buys headroom."
        );
    }

    #[test]
    fn ports_nearly_exhausted_without_errors() {
        let e = PortEvidence {
            addr_not_avail: 0,
            time_wait: 27000,
            connected: 1000,
            tw_reuse: Some(2),
            settings: port_settings(Some((32768, 60999))),
        };
        let v = port_verdict(&e);
        assert_eq!(
            v.cause,
            "Local ports are nearly exhausted: net.ipv4.ip_local_port_range 32768–60999 has 28232 ports, 27000 held in TIME_WAIT and 1000 by open connections, 232 left; connect() fails with EADDRNOTAVAIL once none are."
        );
        assert_eq!(
            v.remedy,
            "Reuse connections (keep-alive / connection pooling) — the durable fix; widening net.ipv4.ip_local_port_range or enabling net.ipv4.tcp_tw_reuse=1 (currently 2, loopback only) only buys headroom."
        );
    }

    #[test]
    fn ports_held_by_open_connections_with_tw_reuse_on() {
        let e = PortEvidence {
            addr_not_avail: 3,
            time_wait: 0,
            connected: 4,
            tw_reuse: Some(0),
            settings: port_settings(Some((40000, 40003))),
        };
        let v = port_verdict(&e);
        assert_eq!(
            v.cause,
            "connect() failed with EADDRNOTAVAIL 3 times: net.ipv4.ip_local_port_range 40000–40003 has 4 ports, 0 held in TIME_WAIT and 4 by open connections, 0 left."
        );
        // No TIME_WAIT: tcp_tw_reuse would not help, so it is not offered.
        assert_eq!(
            v.remedy,
            "Reuse connections (keep-alive / connection pooling) — the durable fix; widening net.ipv4.ip_local_port_range only buys headroom."
        );

        let e = PortEvidence {
            time_wait: 2,
            connected: 2,
            tw_reuse: Some(1),
            ..e
        };
        assert_eq!(
            port_verdict(&e).remedy,
            "Reuse connections (keep-alive / connection pooling) — the durable fix; widening net.ipv4.ip_local_port_range only buys headroom (net.ipv4.tcp_tw_reuse is already 1)."
        );
    }

    #[test]
    fn ports_errors_but_ports_free_now() {
        let e = PortEvidence {
            addr_not_avail: 1,
            time_wait: 100,
            connected: 20,
            tw_reuse: None,
            settings: port_settings(Some((32768, 60999))),
        };
        let v = port_verdict(&e);
        assert_eq!(
            v.cause,
            "connect() failed with EADDRNOTAVAIL 1 time: net.ipv4.ip_local_port_range 32768–60999 has 28232 ports, 100 held in TIME_WAIT and 20 by open connections, 28112 left now, so the shortage has eased or comes in bursts."
        );
        assert_eq!(
            v.remedy,
            "Reuse connections (keep-alive / connection pooling) — the durable fix; widening net.ipv4.ip_local_port_range or enabling net.ipv4.tcp_tw_reuse=1 only buys headroom."
        );
    }

    #[test]
    fn ports_with_unknown_range() {
        let e = PortEvidence {
            addr_not_avail: 57,
            time_wait: 31927,
            connected: 40,
            tw_reuse: Some(0),
            settings: Settings::default(),
        };
        let v = port_verdict(&e);
        assert_eq!(
            v.cause,
            "connect() failed with EADDRNOTAVAIL 57 times because no local port was free: 31927 held in TIME_WAIT and 40 by open connections now (net.ipv4.ip_local_port_range unknown)."
        );
        assert_eq!(
            v.remedy,
            "Reuse connections (keep-alive / connection pooling) — the durable fix; widening net.ipv4.ip_local_port_range or enabling net.ipv4.tcp_tw_reuse=1 (currently 0) only buys headroom."
        );
        // Unknown range and no errors: nothing to say.
        let e = PortEvidence {
            addr_not_avail: 0,
            ..e
        };
        assert_eq!(ports(&e), None);
    }

    #[test]
    fn ports_healthy_has_no_verdict() {
        let mut e = PortEvidence {
            addr_not_avail: 0,
            time_wait: 25000,
            connected: 400,
            tw_reuse: Some(2),
            settings: port_settings(Some((32768, 60999))),
        };
        // 2832 of 28232 free: just above 10%.
        assert_eq!(ports(&e), None);
        // 2823 free is 9.999%: below 10%.
        e.time_wait += 9;
        assert!(ports(&e).is_some());
        // A bogus range (lo > hi) is treated as unknown.
        e.settings.port_range = Some((60999, 32768));
        assert_eq!(ports(&e), None);
        assert_eq!(ports(&PortEvidence::default()), None);
    }
}

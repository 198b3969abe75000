//! A network namespace's own view of itself: its TCP counters
//! (`/proc/net/netstat`, `/proc/net/snmp`), its TIME_WAIT count
//! (`/proc/net/sockstat`) and the sysctls the kernel applies to its
//! listeners. All per-netns: read from a thread inside the namespace
//! (`/proc/thread-self/net`, and `/proc/sys/net`, which follows the reading
//! thread's namespace).

use std::collections::HashMap;

/// The per-netns settings that decide what happens to a connection.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Sysctls {
    pub somaxconn: Option<u32>,
    pub max_syn_backlog: Option<u32>,
    pub syncookies: Option<u8>,
    pub abort_on_overflow: Option<u8>,
    pub synack_retries: Option<u32>,
    pub port_range: Option<(u16, u16)>,
    pub tw_reuse: Option<u8>,
}

/// One reading of a namespace.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct NetnsState {
    /// `TcpExt.ListenOverflows`, `Tcp.OutRsts`, ...
    pub counters: HashMap<String, u64>,
    /// Sockets in TIME_WAIT (`sockstat` `tw`).
    pub time_wait: Option<u32>,
    pub sysctls: Sysctls,
}

impl NetnsState {
    pub fn counter(&self, name: &str) -> u64 {
        self.counters.get(name).copied().unwrap_or(0)
    }
}

/// `tw` of the `TCP:` line of `/proc/net/sockstat`.
pub fn parse_sockstat_tw(text: &str) -> Option<u32> {
    let line = text.lines().find(|l| l.starts_with("TCP:"))?;
    let mut it = line.split_whitespace();
    while let Some(k) = it.next() {
        if k == "tw" {
            return it.next()?.parse().ok();
        }
    }
    None
}

/// `ip_local_port_range`: "32768\t60999".
pub fn parse_range(text: &str) -> Option<(u16, u16)> {
    let mut it = text.split_whitespace().map(|v| v.parse::<u16>());
    match (it.next()?, it.next()?) {
        (Ok(a), Ok(b)) if a <= b => Some((a, b)),
        _ => None,
    }
}

fn read_tw() -> Option<u32> {
    std::fs::read_to_string("/proc/thread-self/net/sockstat")
        .ok()
        .and_then(|t| parse_sockstat_tw(&t))
}

fn sysctl<T: std::str::FromStr>(path: &str) -> Option<T> {
    std::fs::read_to_string(format!("/proc/sys/net/{path}"))
        .ok()?
        .trim()
        .parse()
        .ok()
}

/// The counters tcpq uses (TcpExt, from `/proc/net/netstat`).
pub const WANTED: &[&str] = &[
    "TcpExt.ListenOverflows",
    "TcpExt.ListenDrops",
    "TcpExt.TCPReqQFullDrop",
    "TcpExt.TCPReqQFullDoCookies",
    "TcpExt.TCPDeferAcceptDrop",
    "TcpExt.TW",
];

/// The [`WANTED`] counters of `/proc/net/netstat` text, without building
/// a key for each of the other ~150 (this runs several times a second per
/// namespace).
pub fn parse_wanted(text: &str) -> HashMap<String, u64> {
    let mut out = HashMap::new();
    let lines: Vec<&str> = text.lines().collect();
    for pair in lines.chunks(2) {
        let [h, v] = pair else { continue };
        let mut keys = h.split_whitespace();
        if keys.next() != Some("TcpExt:") {
            continue;
        }
        for (k, val) in keys.zip(v.split_whitespace().skip(1)) {
            if let Some(full) = WANTED.iter().find(|w| w.strip_prefix("TcpExt.") == Some(k)) {
                if let Ok(n) = val.parse() {
                    out.insert((*full).to_string(), n);
                }
            }
        }
    }
    out
}

/// The calling thread's namespace's [`WANTED`] counters alone.
pub fn read_counters() -> HashMap<String, u64> {
    std::fs::read_to_string("/proc/thread-self/net/netstat")
        .map(|t| parse_wanted(&t))
        .unwrap_or_default()
}

/// Reads the calling thread's namespace: its counters, TIME_WAIT count
/// and, with `sysctls`, its settings (else left unknown).
pub fn read_current(sysctls: bool) -> NetnsState {
    let counters = read_counters();
    let time_wait = read_tw();
    if !sysctls {
        return NetnsState {
            counters,
            time_wait,
            sysctls: Sysctls::default(),
        };
    }
    let sysctls = Sysctls {
        somaxconn: sysctl("core/somaxconn"),
        max_syn_backlog: sysctl("ipv4/tcp_max_syn_backlog"),
        syncookies: sysctl("ipv4/tcp_syncookies"),
        abort_on_overflow: sysctl("ipv4/tcp_abort_on_overflow"),
        synack_retries: sysctl("ipv4/tcp_synack_retries"),
        port_range: std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
            .ok()
            .and_then(|t| parse_range(&t)),
        tw_reuse: sysctl("ipv4/tcp_tw_reuse"),
    };
    NetnsState {
        counters,
        time_wait,
        sysctls,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_counter_pairs() {
        let t = "TcpExt: SyncookiesSent ListenOverflows ListenDrops TW\nTcpExt: 0 7 9 x\nIpExt: InNoRoutes ListenDrops\nIpExt: 1 5\n";
        let m = parse_wanted(t);
        assert_eq!(m["TcpExt.ListenOverflows"], 7);
        assert_eq!(m["TcpExt.ListenDrops"], 9);
        // Only TcpExt's wanted counters, and only numbers.
        assert_eq!(m.len(), 2);
    }

    #[test]
    fn parses_sockstat_and_range() {
        let s = "sockets: used 5\nTCP: inuse 3 orphan 0 tw 4 alloc 8 mem 1\nUDP: inuse 0 mem 0\n";
        assert_eq!(parse_sockstat_tw(s), Some(4));
        assert_eq!(parse_sockstat_tw("TCP: inuse 3\n"), None);
        assert_eq!(parse_range("40000\t40003\n"), Some((40000, 40003)));
        assert_eq!(parse_range("5 1"), None);
        assert_eq!(parse_range(""), None);
    }

    #[test]
    fn reads_our_own_namespace() {
        let s = read_current(true);
        assert!(s.counters.contains_key("TcpExt.ListenOverflows"));
        assert!(s.sysctls.somaxconn.is_some());
        assert!(s.sysctls.port_range.is_some());
    }
}

//! `/proc/net/netstat`, `/proc/net/snmp`, `/proc/net/sockstat` and
//! `ip_local_port_range` (kernel → agent).
#![no_main]
use libfuzzer_sys::fuzz_target;
use tcpq_agent::source::netstat::{parse_range, parse_sockstat_tw, parse_wanted, WANTED};

fuzz_target!(|data: &[u8]| {
    let text = String::from_utf8_lossy(data);
    // Only the wanted TcpExt counters come out.
    for k in parse_wanted(&text).keys() {
        assert!(WANTED.contains(&k.as_str()), "{k:?}");
    }
    let _ = parse_sockstat_tw(&text);
    if let Some((lo, hi)) = parse_range(&text) {
        assert!(lo <= hi);
    }
});

//! `/proc/net/netstat`, `/proc/net/snmp`, `/proc/net/sockstat` and
//! `ip_local_port_range` (kernel → agent).
#![no_main]
use std::collections::HashMap;

use libfuzzer_sys::fuzz_target;
use tcpq_agent::netstat::{parse_counters, parse_range, parse_sockstat_tw};

fuzz_target!(|data: &[u8]| {
    let text = String::from_utf8_lossy(data);
    let mut out = HashMap::new();
    parse_counters(&text, &mut out);
    for k in out.keys() {
        assert!(k.contains('.'), "{k:?}");
    }
    let _ = parse_sockstat_tw(&text);
    if let Some((lo, hi)) = parse_range(&text) {
        assert!(lo <= hi);
    }
});

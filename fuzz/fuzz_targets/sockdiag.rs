//! sock_diag netlink dumps (kernel → agent): any `recv` buffer parses or is
//! refused in one line.
#![no_main]
use libfuzzer_sys::fuzz_target;
use tcpq_agent::source::sockdiag::parse;

fuzz_target!(|data: &[u8]| {
    match parse(data) {
        Ok(p) => {
            // Each socket takes at least a netlink header and an inet_diag_msg.
            assert!(p.socks.len() * (16 + 72) <= data.len());
        }
        Err(e) => assert!(!format!("{e:#}").contains('\n')),
    }
});

//! What is read about a socket's owner (any process → agent):
//! `/proc/PID/limits`, `/proc/PID/cmdline`, `/proc/PID/fd/N` link targets
//! and `/etc/passwd`.
#![no_main]
use libfuzzer_sys::fuzz_target;
use tcpq_agent::owner::resolve::{cmdline, parse_fd_limit, passwd_name, socket_inode};

fuzz_target!(|data: &[u8]| {
    let line = cmdline(data);
    assert!(!line.contains('\0'));
    let text = String::from_utf8_lossy(data);
    let _ = parse_fd_limit(&text);
    if let Some(ino) = socket_inode(&text) {
        assert!(text.starts_with("socket:[") && text.ends_with(']'));
        assert_eq!(socket_inode(&format!("socket:[{ino}]")), Some(ino));
    }
    let uid = data.first().copied().unwrap_or(0) as u32;
    if let Some(name) = passwd_name(&text, uid) {
        assert!(!name.contains('\n') && !name.contains(':'));
    }
});

//! The syslog formatter (RFC 5424) on events whose strings come from
//! processes (comm, cmdline, cgroup) and the kernel.
#![no_main]
use libfuzzer_sys::fuzz_target;
use serde_json::{json, Value};
use tcpq_agent::export::syslog::{format, Facility, Head, Severity};

fuzz_target!(|data: &[u8]| {
    // Either a JSON event as given, or an event whose fields are the
    // input's NUL-separated parts (raw, so control characters get in).
    let event: Value = serde_json::from_slice(data).unwrap_or_else(|_| {
        let text = String::from_utf8_lossy(data);
        let mut p = text.split('\0');
        let mut next = || p.next().unwrap_or("").to_string();
        json!({
            "timestamp": next(),
            "event": next(),
            "server.address": next(),
            "server.port": 80,
            "network.netns": 4026531840u32,
            "process.executable.name": next(),
            "process.command_line": next(),
            "count": next(),
        })
    });
    let host = String::from_utf8_lossy(data.get(..16).unwrap_or(data)).into_owned();
    // The MSGID is the event's name: from the input too.
    let head = Head {
        at: std::time::SystemTime::now(),
        event: event.get("event").and_then(Value::as_str).unwrap_or(""),
        severity: Severity::Notice,
    };
    let msg = format(&head, &event, Facility::Daemon, &host, "tcpq", 4242);
    let pri = msg
        .strip_prefix('<')
        .and_then(|m| m.split_once(">1 "))
        .and_then(|(p, _)| p.parse::<u8>().ok());
    assert!(pri.is_some_and(|p| p < 192), "{msg:?}");
    // One message is one line (a newline would let a process name forge a
    // second record on a stream transport).
    assert!(!msg.contains('\n') && !msg.contains('\r'), "{msg:?}");
});

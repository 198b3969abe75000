//! The syslog formatter (RFC 5424) on lines whose strings come from
//! processes (comm, cmdline, cgroup) and the kernel.
#![no_main]
use libfuzzer_sys::fuzz_target;
use tcpq_agent::export::line::{Attr, Line};
use tcpq_agent::export::syslog::{fit, format, Facility, Head, Severity};

fuzz_target!(|data: &[u8]| {
    // A line whose strings are the input's NUL-separated parts (raw, so
    // control characters get in); the first byte picks the type of
    // `count`, which the SD element copies too.
    let text = String::from_utf8_lossy(data.get(1..).unwrap_or_default());
    let mut p = text.split('\0');
    let mut next = || p.next().unwrap_or("").to_string();
    let (timestamp, event) = (next(), next());
    // The MSGID is the event's name: from the input too.
    let head = Head {
        at: std::time::SystemTime::now(),
        event: &event,
        severity: Severity::Notice,
    };
    let mut line = Line::new(head);
    line.set("timestamp", Attr::Str(timestamp));
    line.set("event", Attr::Str(event.clone()));
    line.set("server.address", Attr::Str(next()));
    line.set("server.port", Attr::U64(80));
    line.set("network.netns", Attr::U64(4026531840));
    line.set("process.executable.name", Attr::Str(next()));
    line.set("process.command_line", Attr::Str(next()));
    let count = match data.first().copied().unwrap_or(0) % 5 {
        0 => Attr::Str(next()),
        1 => Attr::U64(u64::MAX),
        2 => Attr::I64(-1),
        3 => Attr::F64(f64::NAN),
        _ => Attr::Strs(vec![next(), next()]),
    };
    line.set("count", count);
    let host = String::from_utf8_lossy(data.get(..16).unwrap_or(data)).into_owned();
    let fmt = |l: &Line| format(l, Facility::Daemon, &host, "tcpq", 4242);
    for msg in [fmt(&line), fit(&line, 300, fmt)] {
        let pri = msg
            .strip_prefix('<')
            .and_then(|m| m.split_once(">1 "))
            .and_then(|(p, _)| p.parse::<u8>().ok());
        assert!(pri.is_some_and(|p| p < 192), "{msg:?}");
        // One message is one line (a newline would let a process name forge a
        // second record on a stream transport).
        assert!(!msg.contains('\n') && !msg.contains('\r'), "{msg:?}");
    }
    assert!(fit(&line, 300, fmt).len() <= 300);
});

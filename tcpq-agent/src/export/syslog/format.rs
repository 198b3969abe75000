//! One RFC 5424 message from a line: PRI from the facility and the
//! line's severity, the header, one SD element with the line's key facts,
//! and the line's JSON as MSG.

use anyhow::{anyhow, Result};

use crate::export::{
    json,
    line::{Attr, Line},
};

pub(super) const SD_ID: &str = "tcpq@32473";
/// Line keys copied into the SD element, with their SD-PARAM names.
pub(super) const SD_PARAMS: [(&str, &str); 6] = [
    ("event", "event"),
    ("server.address", "server_address"),
    ("server.port", "server_port"),
    ("network.netns", "netns"),
    ("process.executable.name", "process"),
    ("count", "count"),
];

/// Syslog facility (RFC 5424 §6.2.1); the discriminant is the code.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Facility {
    Kern = 0,
    User = 1,
    #[default]
    Daemon = 3,
    Local0 = 16,
    Local1,
    Local2,
    Local3,
    Local4,
    Local5,
    Local6,
    Local7,
}

impl std::str::FromStr for Facility {
    type Err = anyhow::Error;
    /// "daemon", "local0"… (any case); the names are the variants'.
    fn from_str(s: &str) -> Result<Facility> {
        use Facility::*;
        let locals = [
            Local0, Local1, Local2, Local3, Local4, Local5, Local6, Local7,
        ];
        let mut all = [Kern, User, Daemon].into_iter().chain(locals);
        let f = all.find(|f| format!("{f:?}").eq_ignore_ascii_case(s));
        let want = "expected kern, user, daemon or local0..local7";
        f.ok_or_else(|| anyhow!("syslog facility `{s}`: {want}"))
    }
}

/// Printable ASCII only (so no spaces), at most `max` bytes; "-" if nothing is left.
fn header_field(s: &str, max: usize) -> String {
    let f: String = s.chars().filter(char::is_ascii_graphic).take(max).collect();
    if f.is_empty() {
        return "-".into();
    }
    f
}

/// The longest prefix of `s` of at most `max` bytes that is still valid UTF-8.
pub(super) fn truncate_utf8(s: &str, max: usize) -> &str {
    let mut end = s.len().min(max);
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    &s[..end]
}

/// One RFC 5424 message, without transport framing (see the module doc).
/// The header's time, event and severity come from the line's head; SD
/// and MSG (the JSON line) from its attributes.
pub fn format(line: &Line, facility: Facility, hostname: &str, app_name: &str, pid: u32) -> String {
    let head = &line.head;
    let name = head.event;
    let timestamp = humantime::format_rfc3339_millis(head.at);
    let graphic = !name.is_empty() && name.bytes().all(|b| b.is_ascii_graphic());
    let msgid = if graphic {
        &name[..name.len().min(32)]
    } else {
        "-"
    };
    let mut sd = String::new();
    for (key, param) in SD_PARAMS {
        let value = match line.get(key) {
            None => continue,
            Some(a) if a.is_null() => continue,
            Some(Attr::Str(s)) => s.clone(),
            Some(a) => json::attr_text(a),
        };
        sd += &format!(" {param}=\"{}\"", sd_param_value(&value));
    }
    let sd = if sd.is_empty() {
        "-".into()
    } else {
        format!("[{SD_ID}{sd}]")
    };
    format!(
        "<{}>1 {timestamp} {} {} {} {msgid} {sd} {}",
        facility as u8 * 8 + head.severity as u8,
        header_field(hostname, 255),
        header_field(app_name, 48),
        header_field(&pid.to_string(), 128),
        json::render(line),
    )
}

/// An SD-PARAM value (RFC 5424 §6.3.3): `"`, `\` and `]` escaped with a
/// backslash; control characters (C0, DEL, C1) and the Unicode line
/// separators replaced by U+FFFD, so no value can end the message, start a
/// forged one on a newline-framed transport, or close the SD element. The
/// exact value is in MSG's JSON.
pub fn sd_param_value(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 4);
    for c in s.chars() {
        match c {
            '"' | '\\' | ']' => {
                out.push('\\');
                out.push(c);
            }
            c if c.is_control() || matches!(c, '\u{2028}' | '\u{2029}') => out.push('\u{fffd}'),
            c => out.push(c),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::super::fixtures::*;
    use super::*;
    use serde_json::Value;

    #[test]
    fn format_fixture_and_severities() {
        let json = serde_json::to_string(&json::value(&event())).unwrap();
        let want = format!(
            "<28>1 2025-11-21T01:20:00.123Z host1 tcpq 42 listen_overflow [tcpq@32473 \
             event=\"listen_overflow\" server_address=\"::1\" server_port=\"6379\" \
             netns=\"4026532000\" process=\"redis-server\" count=\"5\"] {json}"
        );
        assert_eq!(
            format(&event(), Facility::Daemon, "host1", "tcpq", 42),
            want
        );
        let health = line(vec![
            ("event", Attr::str("agent_health")),
            ("verdict.cause", Attr::str("x")),
        ]);
        assert!(short(health).starts_with("<190>1 ")); // Info: 23 * 8 + 6
        assert!(short(named("listen_drop")).starts_with("<189>1 ")); // Notice
        assert!(short(named("events_lost")).starts_with("<187>1 ")); // Err
        for (_, name) in SD_PARAMS {
            let bad = |c: char| !c.is_ascii_graphic() || "= ]\"".contains(c);
            assert!(name.len() <= 32 && !name.contains(bad), "{name}");
        }
    }

    #[test]
    fn format_escaping_and_fallbacks() {
        let ev = line(vec![
            ("timestamp", Attr::str("2025-11-21T01:20:00Z")),
            ("process.executable.name", Attr::str("a\"b\\c]d")),
        ]);
        let json = serde_json::to_string(&json::value(&ev)).unwrap();
        let sd = r#"[tcpq@32473 process="a\"b\\c\]d"]"#;
        let want = format!("<13>1 2025-11-21T01:20:00.000Z - myapp 7 - {sd} {json}");
        assert_eq!(format(&ev, Facility::User, "", "my app", 7), want);
        // No SD params and no event: "-" twice; no timestamp: now; long fields cut.
        let s = short(line(vec![("other", Attr::U64(1))]));
        let f: Vec<&str> = s.splitn(8, ' ').collect();
        assert!(humantime::parse_rfc3339(f[1]).is_ok(), "{s}");
        assert_eq!((f[2].len(), f[5], f[6]), (255, "-", "-"));
        let s = short(named("two words"));
        assert!(s.contains(" 1 - [tcpq@32473 event=\"two words\"] {"), "{s}");
        let s = short(named(&"x".repeat(40)));
        assert_eq!(s.split(' ').nth(5), Some(&*"x".repeat(32)));
        assert_eq!(truncate_utf8("aé", 2), "a");
    }

    #[test]
    fn sd_param_values_are_escaped_and_controls_replaced() {
        assert_eq!(sd_param_value(r#"a"b\c]d"#), r#"a\"b\\c\]d"#);
        assert_eq!(sd_param_value("plain name"), "plain name");
        assert_eq!(
            sd_param_value(FORGED),
            "x\u{fffd}<0>1 FORGED\u{fffd}\\\"\\]\\\\\u{fffd}\u{fffd}\u{fffd}\u{fffd}\u{fffd}y"
        );
    }

    #[test]
    fn a_forged_process_name_makes_one_message_with_our_pri() {
        let mut ev = event();
        ev.set("process.executable.name", Attr::str(FORGED));
        ev.set(
            "process.command_line",
            Attr::Str(format!("{FORGED} --flag")),
        );
        let msg = format(&ev, Facility::Daemon, "host1", "tcpq", 42);
        assert!(!msg.chars().any(|c| c.is_control()), "{msg:?}");
        assert!(!msg.contains('\u{2028}'));
        assert!(msg.starts_with("<28>1 ") && msg.matches("<0>").count() == 3); // in SD, and twice in MSG
        let (params, rest) = sd_values(&msg);
        let process = params.iter().find(|(n, _)| n == "process").unwrap();
        assert_eq!(
            process.1,
            "x\u{fffd}<0>1 FORGED\u{fffd}\"]\\\u{fffd}\u{fffd}\u{fffd}\u{fffd}\u{fffd}y"
        );
        // MSG: the exact event.
        let json: Value = serde_json::from_str(rest.trim_start()).unwrap();
        assert_eq!(json["process.executable.name"], FORGED);
        assert_eq!(json, crate::export::json::value(&ev));
    }
}

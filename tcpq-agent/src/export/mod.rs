//! Rendering reports: one readable text line (`text`), or one JSON object
//! per line with OpenTelemetry-style keys (`line` builds the typed line,
//! `json` writes it); syslog, OTLP and Prometheus (`metrics`, with
//! `labels`) for the sidecar; `sink` is where the engine hands them over.

pub mod head;
pub mod json;
pub mod labels;
pub mod line;
pub mod metrics;
pub mod otlp;
pub mod sink;
pub mod syslog;
pub mod text;

pub use text::{text, text_safe};

use std::time::SystemTime;

use crate::{model::Pending, owner::resolve::Owner};

/// The JSON lines schema (docs/events.md). Bumped only when a key is
/// removed or changes meaning; new keys and events keep the version.
pub const SCHEMA_VERSION: &str = "1";

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Format {
    Text,
    Json,
}

/// One output line's worth of facts.
pub struct Report<'a> {
    pub at: SystemTime,
    pub pending: &'a Pending,
    pub owner: Option<&'a Owner>,
    /// Accepts by the application meanwhile, when the accept hook is on.
    pub accepts: Option<crate::source::accepts::Accepts>,
    /// Cause and remedy, for lines that show trouble.
    pub verdict: Option<crate::verdict::Verdict>,
}

pub fn timestamp(at: SystemTime) -> String {
    humantime::format_rfc3339_millis(at).to_string()
}

/// Whether the line names a server end (`server.address`/`server.port`):
/// a listener, a connect()'s destination, or a socket-less reset's port.
pub fn has_server(p: &Pending) -> bool {
    !p.kind.is_connection() && (p.key.is_some() || p.info.port != 0)
}

pub use crate::model::endpoint;

pub fn render(format: Format, r: &Report) -> String {
    match format {
        Format::Text => text(r),
        Format::Json => json::render(&line::report(r)),
    }
}

/// A line about the agent itself: events the kernel saw that never reached
/// user space.
pub fn lost(format: Format, at: SystemTime, count: u64) -> String {
    match format {
        Format::Json => json::render(&line::lost(at, count)),
        Format::Text => text::lost(at, count),
    }
}

#[cfg(test)]
mod golden;

#[cfg(test)]
mod tests {
    use super::text::unsafe_in_text;
    use super::*;
    use crate::export::json::line as json_line;
    use crate::model::{Kind, ListenerInfo, ListenerKey, Source, Stage};
    use serde_json::{json, Value};
    use std::time::{Duration, UNIX_EPOCH};

    /// A report's line as its JSON object.
    fn json(r: &Report) -> Value {
        crate::export::json::value(&line::report(r))
    }

    fn pending() -> Pending {
        Pending {
            kind: Kind::ListenOverflow(Stage::Syn, crate::model::Next::Unknown),
            source: Source::SockDiag,
            key: Some(ListenerKey {
                netns: 4026532000,
                inode: 31337,
            }),
            info: ListenerInfo {
                addr: "::1".parse().unwrap(),
                port: 6379,
                queue_len: 3,
                queue_limit: 2,
            },
            count: 5,
            peer: None,
            netns: None,
            pid: None,
            inode: None,
            attrs: Vec::new(),
        }
    }

    #[test]
    fn json_has_the_documented_keys() {
        let p = pending();
        let owner = Owner {
            pid: 42,
            name: "redis-server".into(),
            exe: Some("/usr/bin/redis-check-rdb".into()),
            cmdline: Some("redis-server *:6379".into()),
            user: Some("redis".into()),
            placement: Some(crate::owner::cgroup::Placement {
                cgroup: "/system.slice/redis-server.service".into(),
                systemd_unit: Some("redis-server.service".into()),
                ..Default::default()
            }),
            holders: vec![42, 43],
        };
        let at = UNIX_EPOCH + Duration::from_millis(1_763_688_000_123);
        let v = json(&Report {
            at,
            pending: &p,
            owner: Some(&owner),
            accepts: None,
            verdict: None,
        });
        assert_eq!(v["timestamp"], "2025-11-21T01:20:00.123Z");
        assert_eq!(v["event"], "listen_overflow");
        assert_eq!(v["schema.version"], SCHEMA_VERSION);
        assert_eq!(v["stage"], "syn");
        assert_eq!(v["count"], 5);
        assert_eq!(v["server.address"], "::1");
        assert_eq!(v["server.port"], 6379);
        assert_eq!(v["network.netns"], 4026532000u32);
        assert_eq!(v["process.pid"], 42);
        assert_eq!(v["process.executable.name"], "redis-server");
        assert_eq!(v["process.executable.path"], "/usr/bin/redis-check-rdb");
        assert_eq!(v["process.command_line"], "redis-server *:6379");
        assert_eq!(v["process.owner"], "redis");
        assert_eq!(v["process.holders"], json!([42, 43]));
        assert_eq!(v["cgroup.path"], "/system.slice/redis-server.service");
        assert_eq!(v["systemd.unit"], "redis-server.service");
        assert!(v.get("container.id").is_none());
        assert_eq!(v["queue.length"], 3);
        assert_eq!(v["queue.limit"], 2);
        assert_eq!(v["source"], "sock_diag");
        // One line, parseable back.
        let line = render(
            Format::Json,
            &Report {
                at,
                pending: &p,
                owner: Some(&owner),
                accepts: None,
                verdict: None,
            },
        );
        assert!(!line.contains('\n'));
        assert_eq!(serde_json::from_str::<Value>(&line).unwrap(), v);
    }

    #[test]
    fn text_is_one_readable_line() {
        let p = pending();
        let at = UNIX_EPOCH;
        let t = text(&Report {
            at,
            pending: &p,
            owner: None,
            accepts: None,
            verdict: None,
        });
        assert_eq!(
            t,
            "1970-01-01T00:00:00.000Z listen_overflow stage=syn count=5 listener=[::1]:6379 \
             netns=4026532000 queue=3/2 pid=? source=sock_diag"
        );
        assert!(lost(Format::Json, at, 7).contains("\"count\":7"));
    }

    #[test]
    fn facts_are_rounded_where_rendered() {
        let mut p = pending();
        p.attrs = vec![
            crate::model::Fact::CloseWait {
                oldest_seconds: 29.96,
                growth_per_minute: 2.0,
            },
            crate::model::Fact::PortRange { lo: 1, hi: 4 },
        ];
        let r = Report {
            at: UNIX_EPOCH,
            pending: &p,
            owner: None,
            accepts: None,
            verdict: None,
        };
        assert!(text(&r).contains(
            " close_wait.oldest_seconds=30.0 close_wait.growth_per_minute=2.0 \
             port_range=\"1-4\" port_range.size=4 "
        ));
        assert_eq!(json(&r)["close_wait.oldest_seconds"], 30.0);
        assert_eq!(json(&r)["port_range"], "1-4");
    }

    /// A name a process can give itself with prctl(PR_SET_NAME), and
    /// worse: newlines, a forged syslog header, SD delimiters, a terminal
    /// escape, C1, a line separator, a bidi override.
    const FORGED: &str = "x\n<0>1 FORGED\r\"]\\\t\u{1b}[2J\u{7f}\u{85}\u{2028}\u{202e}y";

    #[test]
    fn text_safe_leaves_no_control_character() {
        assert_eq!(text_safe("redis-server *:6379"), "redis-server *:6379");
        assert!(matches!(text_safe("plain"), std::borrow::Cow::Borrowed(_)));
        let t = text_safe(FORGED);
        assert_eq!(
            t,
            r#"x\n<0>1 FORGED\r"]\\t\x1b[2J\x7f\u{0085}\u{2028}\u{202e}y"#
        );
        assert!(!t.chars().any(unsafe_in_text));
        assert_eq!(text_safe("é ü 名前"), "é ü 名前");
    }

    #[test]
    fn json_line_escapes_every_control_and_parses_back() {
        let v = json!({"process.executable.name": FORGED, "n": 1});
        let line = json_line(&v);
        assert!(!line.chars().any(|c| c.is_control()), "{line:?}");
        assert!(!line.contains('\u{2028}'));
        assert!(line.contains(r"\u007f") && line.contains(r"\u0085") && line.contains(r"\u2028"));
        assert_eq!(serde_json::from_str::<Value>(&line).unwrap(), v);
        let plain = json!({"a": "b"});
        assert_eq!(json_line(&plain), plain.to_string());
    }

    #[test]
    fn a_forged_owner_name_stays_on_its_line() {
        let p = pending();
        let owner = Owner {
            pid: 42,
            name: FORGED.into(),
            exe: Some(format!("/tmp/{FORGED}")),
            cmdline: Some(FORGED.into()),
            user: None,
            placement: None,
            holders: vec![42],
        };
        let verdict = crate::verdict::Verdict {
            cause: format!("{FORGED} (pid 42) does not accept"),
            remedy: "fix it".into(),
        };
        let r = Report {
            at: UNIX_EPOCH,
            pending: &p,
            owner: Some(&owner),
            accepts: None,
            verdict: Some(verdict),
        };
        let t = text(&r);
        let lines: Vec<&str> = t.split('\n').collect();
        assert_eq!(lines.len(), 3, "{t}");
        assert!(lines[0].contains(r"pid=42 (x\n<0>1 FORGED\r"), "{t}");
        assert!(lines[1].starts_with("    cause:  x\\n<0>1 FORGED"), "{t}");
        assert!(lines[2].starts_with("    remedy: "));
        assert!(!t.chars().any(|c| c != '\n' && unsafe_in_text(c)), "{t:?}");
        let j = render(Format::Json, &r);
        assert!(!j.chars().any(|c| c.is_control()));
        let v: Value = serde_json::from_str(&j).unwrap();
        assert_eq!(v["process.executable.name"], FORGED);
        assert_eq!(v["process.command_line"], FORGED);
    }

    #[test]
    fn a_pod_is_named_in_json_and_text() {
        let p = pending();
        let owner = Owner {
            pid: 7,
            name: "nginx".into(),
            exe: None,
            cmdline: None,
            user: None,
            placement: Some(crate::owner::cgroup::Placement {
                container_id: Some("4f3c9a1e0b7d52c8e6a9f0d1b2c3e4f5".into()),
                k8s_pod_uid: Some("6f1c2a4e-9b7d-4c1e-8a55-0c3f2d1b7e90".into()),
                k8s_names: Some(crate::owner::k8s::PodNames {
                    namespace: "shop".into(),
                    pod: "web-7d9c".into(),
                }),
                ..Default::default()
            }),
            holders: vec![7],
        };
        let r = Report {
            at: UNIX_EPOCH,
            pending: &p,
            owner: Some(&owner),
            accepts: None,
            verdict: None,
        };
        let v = json(&r);
        assert_eq!(v["k8s.namespace.name"], "shop");
        assert_eq!(v["k8s.pod.name"], "web-7d9c");
        assert!(text(&r).contains(" pid=7 (nginx) pod=shop/web-7d9c container=4f3c9a1e0b7d "));
    }
}

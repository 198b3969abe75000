//! What a syslog message's header and an OTLP log record take from the
//! line they carry: when, which event, how severe — from the typed report,
//! never read back out of its JSON.

use std::time::SystemTime;

use crate::export::Report;

/// Severity (RFC 5424 §6.2.1): a verdict marks trouble (Warning); lost
/// events are an Error; other events are Notice; periodic state is Info.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Severity {
    Err = 3,
    Warning = 4,
    Notice = 5,
    Info = 6,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Head<'a> {
    pub at: SystemTime,
    /// The event's name (syslog's MSGID).
    pub event: &'a str,
    pub severity: Severity,
}

impl Head<'_> {
    pub fn report(r: &Report) -> Head<'static> {
        Head {
            at: r.at,
            event: r.pending.kind.event_name(),
            severity: match r.verdict {
                Some(_) => Severity::Warning,
                None => Severity::Notice,
            },
        }
    }

    /// A line of periodic state's (`listener_snapshot`, `agent_health`).
    pub fn state(at: SystemTime, event: &'static str) -> Head<'static> {
        Head {
            at,
            event,
            severity: Severity::Info,
        }
    }

    /// The `events_lost` line's.
    pub fn lost(at: SystemTime) -> Head<'static> {
        Head {
            at,
            event: "events_lost",
            severity: Severity::Err,
        }
    }
}

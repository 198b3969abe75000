//! Text lines: one readable line per report (with `cause:`/`remedy:`
//! lines when there is a verdict), every string from the kernel or /proc
//! made safe for a terminal.

use std::time::SystemTime;

use crate::{
    export::{endpoint, has_server, json, timestamp, Report},
    model::Kind,
    owner::resolve::Owner,
};

/// Whether a character must not reach a text line raw: C0 and C1 controls,
/// DEL, the Unicode line and paragraph separators, and the bidirectional
/// overrides and isolates (text that reorders what follows it on screen).
pub(super) fn unsafe_in_text(c: char) -> bool {
    c.is_control()
        || matches!(c, '\u{2028}' | '\u{2029}' | '\u{200e}' | '\u{200f}')
        || ('\u{202a}'..='\u{202e}').contains(&c)
        || ('\u{2066}'..='\u{2069}').contains(&c)
}

/// A text line (or a part of one) with every character that could end it,
/// forge another, or rewrite it on a terminal shown as an escape: `\n`,
/// `\r`, `\t`, `\xNN` for other ASCII controls, `\u{NNNN}` for the rest.
/// Strings from the kernel and /proc (a process name set with
/// `prctl(PR_SET_NAME)`, a command line, a cgroup path) go through it, so a
/// text line is always one line. Backslashes are left as they are: the text
/// is for people; JSON is the exact form.
pub fn text_safe(s: &str) -> std::borrow::Cow<'_, str> {
    if !s.chars().any(unsafe_in_text) {
        return s.into();
    }
    let mut out = String::with_capacity(s.len() + 8);
    for c in s.chars() {
        match c {
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            c if c.is_ascii_control() => out += &format!("\\x{:02x}", c as u32),
            c if unsafe_in_text(c) => out += &format!("\\u{{{:04x}}}", c as u32),
            c => out.push(c),
        }
    }
    out.into()
}

/// The owner in a text line: pid (name), and where it runs.
fn owner_text(o: &Owner) -> String {
    let mut s = format!(" pid={} ({})", o.pid, o.name);
    if o.holders.len() > 1 {
        let h: Vec<String> = o.holders.iter().map(|p| p.to_string()).collect();
        s += &format!(" holders={}", h.join(","));
    }
    if let Some(pl) = &o.placement {
        if let Some(n) = &pl.k8s_names {
            s += &format!(" pod={}/{}", n.namespace, n.pod);
        }
        if let Some(id) = &pl.container_id {
            s += &format!(" container={}", &id[..id.len().min(12)]);
        } else if let Some(u) = &pl.systemd_unit {
            s += &format!(" unit={u}");
        }
    }
    s
}

pub fn text(r: &Report) -> String {
    let p = r.pending;
    let mut s = format!("{} {}", timestamp(r.at), p.kind.event_name());
    if let Some(stage) = p.kind.stage() {
        s += &format!(" stage={}", stage.as_str());
    }
    if let Some(next) = p.kind.next() {
        s += &format!(" next={next}");
    }
    match &p.kind {
        Kind::ResetSent {
            reason,
            kernel_reason,
        } => s += &format!(" reason={reason} ({kernel_reason})"),
        k => {
            if let Some(reason) = k.reason() {
                s += &format!(" reason={reason}");
            }
        }
    }
    if let Some(e) = p.kind.error() {
        s += &format!(" error={e}");
    }
    s += &format!(" count={}", p.count);
    if let Kind::ResetReceived { state } = &p.kind {
        s += &format!(
            " local={} state={state}",
            endpoint(p.info.addr, p.info.port)
        );
    } else if matches!(p.kind, Kind::ConnectError { .. }) {
        s += &format!(" destination={}", endpoint(p.info.addr, p.info.port));
    } else if has_server(p) {
        s += &format!(" listener={}", endpoint(p.info.addr, p.info.port));
    }
    if let Some(k) = p.key {
        s += &format!(
            " netns={} queue={}/{}",
            k.netns, p.info.queue_len, p.info.queue_limit
        );
    } else if let Some(ns) = p.netns {
        s += &format!(" netns={ns}");
    }
    match r.owner {
        Some(o) => s += &owner_text(o),
        None if p.key.is_some() => s += " pid=?",
        None => {}
    }
    if let Some((addr, port)) = p.peer {
        s += &format!(" peer={}", endpoint(addr, port));
    }
    if let Some(a) = r.accepts {
        s += &format!(" accepted={}", a.count);
    }
    for (k, v) in p.attrs.iter().flat_map(|f| f.fields()) {
        s += &format!(" {k}={}", json::attr_text(&(&v).into()));
    }
    s += &format!(" source={}", p.source.as_str());
    let mut s = text_safe(&s).into_owned();
    if let Some(v) = &r.verdict {
        let (cause, remedy) = (text_safe(&v.cause), text_safe(&v.remedy));
        s += &format!("\n    cause:  {cause}\n    remedy: {remedy}");
    }
    s
}

/// The `events_lost` line.
pub fn lost(at: SystemTime, count: u64) -> String {
    format!(
        "{} events_lost count={count} (ring buffer full: kernel events not delivered; counts above are low by this much)",
        timestamp(at)
    )
}

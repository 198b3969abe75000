//! Lines about state rather than events: `status` rows (also the sidecar's
//! `listener_snapshot`), a namespace's `local_ports`, and the sidecar's
//! `agent_health`.

use std::time::SystemTime;

use crate::{
    export::{
        line::{report, Attr, Head, Line},
        sink::Health,
    },
    verdict::status::{Row, Snapshot},
};

/// The sidecar's `agent_health` line: the engine's health and its own.
pub struct HealthLine<'a> {
    pub at: SystemTime,
    pub engine: &'a Health,
    pub metric_series: usize,
    pub metric_series_overflowed: u64,
    pub netns_unreadable: u64,
    pub owner_lookup_failures: u64,
    /// Syslog messages dropped and truncated, when syslog ran.
    pub syslog: Option<(u64, u64)>,
    pub output_lines_lost: u64,
}

/// One `status` row's keys (all but when and which event).
pub fn row(r: &Row, l: &mut Line) {
    l.set("server.address", Attr::Str(r.sock.local.to_string()));
    l.set("server.port", Attr::U64(r.sock.lport.into()));
    l.set("network.netns", Attr::U64(r.netns.into()));
    l.set("socket.inode", Attr::U64(r.sock.inode.into()));
    if let Some(o) = &r.owner {
        report::owner(o, l);
    }
    if let Some(n) = r.open_fds {
        l.set("process.open_fds", Attr::U64(n.into()));
    }
    if let Some(n) = r.fd_limit {
        l.set("process.fd_limit", Attr::U64(n));
    }
    l.set("queue.length", Attr::U64(r.sock.rqueue.into()));
    l.set("queue.limit", Attr::U64(r.sock.wqueue.into()));
    if let Some(v) = r.settings.somaxconn {
        l.set("net.core.somaxconn", Attr::U64(v.into()));
        // The limit is min(backlog, somaxconn): equal means it was capped
        // (or asked for exactly that).
        l.set("queue.limit_is_somaxconn", Attr::Bool(v == r.sock.wqueue));
    }
    if let Some(d) = r.sock.drops {
        l.set("drops", Attr::U64(d.into()));
    }
    l.set("syn_queue.length", Attr::U64(r.syn_queue.into()));
    l.set("close_wait.count", Attr::U64(r.close_wait.into()));
    if let Some(v) = &r.verdict {
        l.set("verdict.cause", Attr::str(&v.cause));
        l.set("verdict.remedy", Attr::str(&v.remedy));
    }
}

/// `status`'s lines: one per listener (`event` = `listener_event`), then
/// one `local_ports` line per namespace short of ports.
pub fn status(snap: &Snapshot, listener_event: &'static str) -> Vec<Line<'static>> {
    let mut out = Vec::new();
    for r in &snap.rows {
        let mut l = report::start(Head::state(snap.at, listener_event));
        row(r, &mut l);
        out.push(l);
    }
    for (ns, v) in &snap.ports {
        let mut l = report::start(Head::state(snap.at, "local_ports"));
        l.set("network.netns", Attr::U64((*ns).into()));
        l.set("verdict.cause", Attr::str(&v.cause));
        l.set("verdict.remedy", Attr::str(&v.remedy));
        out.push(l);
    }
    out
}

/// The sidecar's `agent_health` line.
pub fn health(h: &HealthLine) -> Line<'static> {
    let e = h.engine;
    let mut l = report::start(Head::state(h.at, "agent_health"));
    let n = |n: usize| Attr::U64(n as u64);
    l.set("agent.events_received", Attr::U64(e.received));
    l.set("agent.events_lost", Attr::U64(e.lost));
    l.set("agent.undecodable", Attr::U64(e.undecodable));
    l.set("agent.ringbuf_fill_ratio", Attr::F64(e.ringbuf_fill));
    l.set("agent.tracked_listeners", n(e.tracked_listeners));
    l.set("agent.owners_cached", n(e.owners_cached));
    l.set("agent.metric_series", n(h.metric_series));
    let overflowed = Attr::U64(h.metric_series_overflowed);
    l.set("agent.metric_series_overflowed", overflowed);
    let losses = e.map_losses.rows();
    let losses = losses
        .iter()
        .map(|(map, loss, n)| (format!("{map}.{loss}"), *n));
    l.set("agent.kernel_map_losses", Attr::Counts(losses.collect()));
    l.set("agent.probes", Attr::Counts(e.probes.clone()));
    l.set("agent.netns_unreadable", Attr::U64(h.netns_unreadable));
    let failures = Attr::U64(h.owner_lookup_failures);
    l.set("agent.owner_lookup_failures", failures);
    if let Some((dropped, truncated)) = h.syslog {
        l.set("agent.syslog_dropped", Attr::U64(dropped));
        l.set("agent.syslog_truncated", Attr::U64(truncated));
    }
    if e.overflows_missed_by_hooks > 0 {
        let n = Attr::U64(e.overflows_missed_by_hooks);
        l.set("agent.overflows_missed_by_hooks", n);
    }
    if h.output_lines_lost > 0 {
        l.set("agent.output_lines_lost", Attr::U64(h.output_lines_lost));
    }
    l
}

//! A report's line and the `events_lost` line: OpenTelemetry-style keys
//! (docs/events.md), from the typed report.

use std::time::SystemTime;

use crate::{
    export::{
        self,
        line::{Attr, Head, Line},
        Report,
    },
    model::Kind,
    owner::resolve::Owner,
};

/// The keys every line starts with: when, which schema, which event.
pub(crate) fn start(head: Head<'static>) -> Line<'static> {
    let mut l = Line::new(head);
    l.set("timestamp", Attr::Str(export::timestamp(head.at)));
    l.set("schema.version", Attr::str(export::SCHEMA_VERSION));
    l.set("event", Attr::str(head.event));
    l
}

/// A report line.
pub fn report(r: &Report) -> Line<'static> {
    let p = r.pending;
    let mut l = start(Head::report(r));
    if let Some(stage) = p.kind.stage() {
        l.set("stage", Attr::str(stage.as_str()));
    }
    if let Some(next) = p.kind.next() {
        l.set("next", Attr::str(next));
    }
    l.set("count", Attr::U64(p.count));
    if export::has_server(p) {
        l.set("server.address", Attr::Str(p.info.addr.to_string()));
        l.set("server.port", Attr::U64(p.info.port.into()));
    }
    if let Some(ns) = p.netns.or(p.key.map(|k| k.netns)) {
        l.set("network.netns", Attr::U64(ns.into()));
    }
    if let Some(k) = p.key {
        l.set("socket.inode", Attr::U64(k.inode.into()));
        l.set("queue.length", Attr::U64(p.info.queue_len.into()));
        l.set("queue.limit", Attr::U64(p.info.queue_limit.into()));
    }
    if let Some(o) = r.owner {
        owner(o, &mut l);
    }
    kind(r, &mut l);
    if let Some(a) = r.accepts {
        l.set("accept.count", Attr::U64(a.count));
        l.set("accept.queue_max", Attr::U64(a.queue_max.into()));
    }
    for (k, v) in p.attrs.iter().flat_map(|f| f.fields()) {
        l.set(k, Attr::from(&v));
    }
    if let Some(v) = &r.verdict {
        l.set("verdict.cause", Attr::str(&v.cause));
        l.set("verdict.remedy", Attr::str(&v.remedy));
    }
    l.set("source", Attr::str(p.source.as_str()));
    l
}

/// The kind's dimensions: reason, error, and a connection's two ends.
fn kind(r: &Report, l: &mut Line) {
    let p = r.pending;
    if let Some(reason) = p.kind.reason() {
        l.set("reason", Attr::str(reason));
    }
    if let Kind::ResetSent { kernel_reason, .. } = &p.kind {
        l.set("reset.kernel_reason", Attr::str(kernel_reason));
    }
    if let Some(e) = p.kind.error() {
        l.set("error.type", Attr::str(e));
    }
    if let Kind::ResetReceived { state } = &p.kind {
        l.set("tcp.state", Attr::str(*state));
        l.set("network.local.address", Attr::Str(p.info.addr.to_string()));
        l.set("network.local.port", Attr::U64(p.info.port.into()));
        if let Some((addr, port)) = p.peer {
            l.set("network.peer.address", Attr::Str(addr.to_string()));
            l.set("network.peer.port", Attr::U64(port.into()));
        }
    } else if let Some((addr, port)) = p.peer {
        l.set("client.address", Attr::Str(addr.to_string()));
        l.set("client.port", Attr::U64(port.into()));
    }
}

/// The owner's keys: OpenTelemetry `process.*`, `container.*`,
/// `k8s.pod.uid`, `k8s.namespace.name`, `k8s.pod.name`, plus `cgroup.path`,
/// `systemd.unit` and, when several processes hold the socket (forked
/// workers), `process.holders`.
pub fn owner(o: &Owner, l: &mut Line) {
    l.set("process.pid", Attr::U64(o.pid.into()));
    l.set("process.executable.name", Attr::str(&o.name));
    let text = |l: &mut Line, k: &'static str, v: &Option<String>| {
        if let Some(v) = v {
            l.set(k, Attr::str(v));
        }
    };
    text(l, "process.executable.path", &o.exe);
    text(l, "process.command_line", &o.cmdline);
    text(l, "process.owner", &o.user);
    if o.holders.len() > 1 {
        let pids = o.holders.iter().map(|&p| p.into()).collect();
        l.set("process.holders", Attr::U64s(pids));
    }
    let Some(pl) = &o.placement else { return };
    if !pl.cgroup.is_empty() {
        l.set("cgroup.path", Attr::str(&pl.cgroup));
    }
    text(l, "container.id", &pl.container_id);
    if let Some(v) = pl.container_runtime {
        l.set("container.runtime", Attr::str(v));
    }
    text(l, "systemd.unit", &pl.systemd_unit);
    text(l, "k8s.pod.uid", &pl.k8s_pod_uid);
    if let Some(n) = &pl.k8s_names {
        l.set("k8s.namespace.name", Attr::str(&n.namespace));
        l.set("k8s.pod.name", Attr::str(&n.pod));
    }
}

/// The `events_lost` line.
pub fn lost(at: SystemTime, count: u64) -> Line<'static> {
    let mut l = start(Head::lost(at));
    l.set("count", Attr::U64(count));
    l.set("source", Attr::str("agent"));
    l
}

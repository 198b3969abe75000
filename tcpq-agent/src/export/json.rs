//! JSON lines: every line the agent writes as JSON — reports, lost events,
//! `status` rows — rendered from the typed values, and nowhere else.

use std::time::SystemTime;

use serde_json::{json, Map, Value};

use crate::{
    cmd::run::HealthLine,
    cmd::status::{Row, Snapshot},
    export::{self, Report},
    model::report::Field,
    owner::resolve::Owner,
};

/// One JSON object as one line: serde_json's escaping (every C0 control,
/// `"` and `\`), plus DEL, the C1 controls and U+2028/U+2029 as `\uNNNN`,
/// so the line holds no control character at all. It parses back to the
/// same value.
pub fn line(v: &Value) -> String {
    let s = v.to_string();
    if !s
        .chars()
        .any(|c| c.is_control() || matches!(c, '\u{2028}' | '\u{2029}'))
    {
        return s;
    }
    // Outside strings serde_json writes no such character, so every one
    // found is inside a string, where `\uNNNN` is its escape.
    let mut out = String::with_capacity(s.len() + 12);
    for c in s.chars() {
        if c.is_control() || matches!(c, '\u{2028}' | '\u{2029}') {
            out += &format!("\\u{:04x}", c as u32);
        } else {
            out.push(c);
        }
    }
    out
}

/// A report line.
pub fn report(r: &Report) -> Value {
    let p = r.pending;
    let mut m = Map::new();
    m.insert("timestamp".into(), json!(export::timestamp(r.at)));
    m.insert("schema.version".into(), json!(export::SCHEMA_VERSION));
    m.insert("event".into(), json!(p.kind.event_name()));
    if let Some(stage) = p.kind.stage() {
        m.insert("stage".into(), json!(stage.as_str()));
    }
    if let Some(next) = p.kind.next() {
        m.insert("next".into(), json!(next));
    }
    m.insert("count".into(), json!(p.count));
    if export::has_server(p) {
        m.insert("server.address".into(), json!(p.info.addr.to_string()));
        m.insert("server.port".into(), json!(p.info.port));
    }
    if let Some(ns) = p.netns.or(p.key.map(|k| k.netns)) {
        m.insert("network.netns".into(), json!(ns));
    }
    if let Some(k) = p.key {
        m.insert("socket.inode".into(), json!(k.inode));
        m.insert("queue.length".into(), json!(p.info.queue_len));
        m.insert("queue.limit".into(), json!(p.info.queue_limit));
    }
    if let Some(o) = r.owner {
        owner_json(o, &mut m);
    }
    if let Some(reason) = p.kind.reason() {
        m.insert("reason".into(), json!(reason));
    }
    if let crate::model::Kind::ResetSent { kernel_reason, .. } = &p.kind {
        m.insert("reset.kernel_reason".into(), json!(kernel_reason));
    }
    if let Some(e) = p.kind.error() {
        m.insert("error.type".into(), json!(e));
    }
    if let crate::model::Kind::ResetReceived { state } = &p.kind {
        m.insert("tcp.state".into(), json!(state));
        m.insert(
            "network.local.address".into(),
            json!(p.info.addr.to_string()),
        );
        m.insert("network.local.port".into(), json!(p.info.port));
        if let Some((addr, port)) = p.peer {
            m.insert("network.peer.address".into(), json!(addr.to_string()));
            m.insert("network.peer.port".into(), json!(port));
        }
    } else if let Some((addr, port)) = p.peer {
        m.insert("client.address".into(), json!(addr.to_string()));
        m.insert("client.port".into(), json!(port));
    }
    if let Some(a) = r.accepts {
        m.insert("accept.count".into(), json!(a.count));
        m.insert("accept.queue_max".into(), json!(a.queue_max));
    }
    for (k, v) in p.attrs.iter().flat_map(|f| f.fields()) {
        m.insert(k.into(), field(&v));
    }
    if let Some(v) = &r.verdict {
        m.insert("verdict.cause".into(), json!(v.cause));
        m.insert("verdict.remedy".into(), json!(v.remedy));
    }
    m.insert("source".into(), json!(p.source.as_str()));
    Value::Object(m)
}

/// A fact's value in JSON; text lines spell it the same way (a string
/// in quotes).
pub fn field(f: &Field) -> Value {
    match f {
        Field::Int(n) => json!(n),
        Field::Uint(n) => json!(n),
        Field::Float(x) => json!(x),
        Field::Str(s) => json!(s),
    }
}

/// The owner's keys: OpenTelemetry `process.*`, `container.*`,
/// `k8s.pod.uid`, `k8s.namespace.name`, `k8s.pod.name`, plus `cgroup.path`, `systemd.unit` and, when several
/// processes hold the socket (forked workers), `process.holders`.
pub fn owner_json(o: &Owner, m: &mut Map<String, Value>) {
    m.insert("process.pid".into(), json!(o.pid));
    m.insert("process.executable.name".into(), json!(o.name));
    if let Some(v) = &o.exe {
        m.insert("process.executable.path".into(), json!(v));
    }
    if let Some(v) = &o.cmdline {
        m.insert("process.command_line".into(), json!(v));
    }
    if let Some(v) = &o.user {
        m.insert("process.owner".into(), json!(v));
    }
    if o.holders.len() > 1 {
        m.insert("process.holders".into(), json!(o.holders));
    }
    if let Some(pl) = &o.placement {
        if !pl.cgroup.is_empty() {
            m.insert("cgroup.path".into(), json!(pl.cgroup));
        }
        if let Some(v) = &pl.container_id {
            m.insert("container.id".into(), json!(v));
        }
        if let Some(v) = pl.container_runtime {
            m.insert("container.runtime".into(), json!(v));
        }
        if let Some(v) = &pl.systemd_unit {
            m.insert("systemd.unit".into(), json!(v));
        }
        if let Some(v) = &pl.k8s_pod_uid {
            m.insert("k8s.pod.uid".into(), json!(v));
        }
        if let Some(n) = &pl.k8s_names {
            m.insert("k8s.namespace.name".into(), json!(n.namespace));
            m.insert("k8s.pod.name".into(), json!(n.pod));
        }
    }
}

/// The `events_lost` object.
pub fn lost(at: SystemTime, count: u64) -> Value {
    json!({
        "timestamp": export::timestamp(at),
        "schema.version": export::SCHEMA_VERSION,
        "event": "events_lost",
        "count": count,
        "source": "agent",
    })
}

/// One `status` row.
pub fn status_row(r: &Row) -> Value {
    let mut m = Map::new();
    m.insert("event".into(), json!("listener"));
    m.insert("server.address".into(), json!(r.sock.local.to_string()));
    m.insert("server.port".into(), json!(r.sock.lport));
    m.insert("network.netns".into(), json!(r.netns));
    m.insert("socket.inode".into(), json!(r.sock.inode));
    if let Some(o) = &r.owner {
        owner_json(o, &mut m);
    }
    if let Some(n) = r.open_fds {
        m.insert("process.open_fds".into(), json!(n));
    }
    if let Some(n) = r.fd_limit {
        m.insert("process.fd_limit".into(), json!(n));
    }
    m.insert("queue.length".into(), json!(r.sock.rqueue));
    m.insert("queue.limit".into(), json!(r.sock.wqueue));
    if let Some(v) = r.settings.somaxconn {
        m.insert("net.core.somaxconn".into(), json!(v));
        // The limit is min(backlog, somaxconn): equal means it was capped
        // (or asked for exactly that).
        m.insert("queue.limit_is_somaxconn".into(), json!(v == r.sock.wqueue));
    }
    if let Some(d) = r.sock.drops {
        m.insert("drops".into(), json!(d));
    }
    m.insert("syn_queue.length".into(), json!(r.syn_queue));
    m.insert("close_wait.count".into(), json!(r.close_wait));
    if let Some(v) = &r.verdict {
        m.insert("verdict.cause".into(), json!(v.cause));
        m.insert("verdict.remedy".into(), json!(v.remedy));
    }
    Value::Object(m)
}

/// The JSON form: one object per listener (`event` = `listener_event`),
/// then one `local_ports` object per namespace short of ports.
pub fn status(snap: &Snapshot, listener_event: &str) -> Vec<Value> {
    let (rows, ports, at) = (&snap.rows, &snap.ports, snap.at);
    let mut out = Vec::new();
    for r in rows {
        let mut v = status_row(r);
        v["event"] = json!(listener_event);
        v["timestamp"] = json!(export::timestamp(at));
        v["schema.version"] = json!(export::SCHEMA_VERSION);
        out.push(v);
    }
    for (ns, v) in ports {
        out.push(json!({
            "timestamp": export::timestamp(at),
            "schema.version": export::SCHEMA_VERSION,
            "event": "local_ports",
            "network.netns": ns,
            "verdict.cause": v.cause,
            "verdict.remedy": v.remedy,
        }));
    }
    out
}

/// The sidecar's `agent_health` line.
pub fn health(l: &HealthLine) -> Value {
    let h = l.engine;
    let map_losses = h.map_losses.rows();
    let mut v = json!({
        "timestamp": export::timestamp(l.at),
        "schema.version": export::SCHEMA_VERSION,
        "event": "agent_health",
        "agent.events_received": h.received,
        "agent.events_lost": h.lost,
        "agent.undecodable": h.undecodable,
        "agent.ringbuf_fill_ratio": h.ringbuf_fill,
        "agent.tracked_listeners": h.tracked_listeners,
        "agent.owners_cached": h.owners_cached,
        "agent.metric_series": l.metric_series,
        "agent.metric_series_overflowed": l.metric_series_overflowed,
        "agent.kernel_map_losses": map_losses.iter().map(|(map, loss, n)| (format!("{map}.{loss}"), json!(n))).collect::<Map<_, _>>(),
        "agent.probes": h.probes.iter().map(|(k, n)| (k.clone(), json!(n))).collect::<Map<_, _>>(),
        "agent.netns_unreadable": l.netns_unreadable,
        "agent.owner_lookup_failures": l.owner_lookup_failures,
    });
    if let Some((dropped, truncated)) = l.syslog {
        v["agent.syslog_dropped"] = json!(dropped);
        v["agent.syslog_truncated"] = json!(truncated);
    }
    if l.output_lines_lost > 0 {
        v["agent.output_lines_lost"] = json!(l.output_lines_lost);
    }
    v
}

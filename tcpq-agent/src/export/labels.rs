//! A report's Prometheus labels, from its typed fields, and their OTLP
//! names.

use crate::{
    export::metrics::Labels,
    export::{self, Report},
    model,
};

/// A label's name in OTLP: the JSON lines' key of the same fact.
pub fn otlp_attr(label: &str) -> String {
    LABELS
        .iter()
        .find(|(l, _)| *l == label)
        .map_or(label, |(_, k)| k)
        .to_string()
}

/// A report's labels, with the JSON lines' keys of the same facts (their
/// OTLP names), in the order [`of`] gives them.
const LABELS: [(&str, &str); 12] = [
    ("server_address", "server.address"),
    ("server_port", "server.port"),
    ("netns", "network.netns"),
    ("process", "process.executable.name"),
    ("container_id", "container.id"),
    ("k8s_namespace", "k8s.namespace.name"),
    ("k8s_pod", "k8s.pod.name"),
    ("stage", "stage"),
    ("next", "next"),
    ("reason", "reason"),
    ("error_type", "error.type"),
    ("tcp_state", "tcp.state"),
];

/// A report's labels: where, whose, and the kind's dimensions. Every family
/// has all of them (empty ones are not rendered); no pid (pids churn).
pub fn of(r: &Report) -> Labels {
    let p = r.pending;
    let text = |v: Option<&str>| v.unwrap_or_default().to_string();
    let (addr, port) = match export::has_server(p) {
        true => (p.info.addr.to_string(), p.info.port.to_string()),
        false => Default::default(),
    };
    let placement = r.owner.and_then(|o| o.placement.as_ref());
    let pod = placement.and_then(|pl| pl.k8s_names.as_ref());
    let state = match &p.kind {
        model::Kind::ResetReceived { state } => Some(*state),
        _ => None,
    };
    let values = [
        addr,
        port,
        p.netns
            .or(p.key.map(|k| k.netns))
            .map_or_else(String::new, |n| n.to_string()),
        text(r.owner.map(|o| o.name.as_str())),
        text(placement.and_then(|pl| pl.container_id.as_deref())),
        text(pod.map(|n| n.namespace.as_str())),
        text(pod.map(|n| n.pod.as_str())),
        text(p.kind.stage().map(model::Stage::as_str)),
        text(p.kind.next()),
        text(p.kind.reason()),
        text(p.kind.error()),
        text(state),
    ];
    LABELS.iter().map(|(l, _)| *l).zip(values).collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{Kind, ListenerInfo, ListenerKey, Next, Pending, Source, Stage};
    use serde_json::Value;
    use std::time::SystemTime;

    fn report_of(kind: Kind, owner: Option<&crate::owner::resolve::Owner>, f: impl Fn(Report)) {
        let p = Pending {
            kind,
            source: Source::Tracepoint,
            key: Some(ListenerKey {
                netns: 4026531840,
                inode: 9,
            }),
            netns: None,
            info: ListenerInfo {
                addr: "127.0.0.1".parse().unwrap(),
                port: 8080,
                queue_len: 1,
                queue_limit: 2,
            },
            count: 3,
            peer: Some(("10.0.0.1".parse().unwrap(), 5555)),
            pid: Some(7),
            inode: None,
            attrs: Vec::new(),
        };
        f(Report {
            at: SystemTime::UNIX_EPOCH,
            pending: &p,
            owner,
            accepts: None,
            verdict: None,
        })
    }

    #[test]
    fn labels_are_the_json_lines_facts_without_pid() {
        let pod = crate::owner::k8s::PodNames {
            namespace: "shop".into(),
            pod: "web".into(),
        };
        let owner = crate::owner::resolve::Owner {
            name: "nginx".into(),
            placement: Some(crate::owner::cgroup::Placement {
                container_id: Some("abc".into()),
                k8s_names: Some(pod),
                ..Default::default()
            }),
            ..Default::default()
        };
        let kinds = [
            Kind::ListenOverflow(Stage::Syn, Next::Reset),
            Kind::ResetSent {
                reason: "r",
                kernel_reason: "k".into(),
            },
            Kind::ResetReceived {
                state: "ESTABLISHED",
            },
            Kind::ConnectError { error: "E".into() },
        ];
        for (kind, owner) in kinds.iter().flat_map(|k| [(k, None), (k, Some(&owner))]) {
            report_of(kind.clone(), owner, |r| {
                let l = of(&r);
                let v = crate::export::json::value(&crate::export::line::report(&r));
                assert!(l.iter().all(|(n, _)| !n.contains("pid")));
                // The same values the JSON line has under the labels' keys.
                for ((label, value), (name, key)) in l.iter().zip(LABELS) {
                    let want = match v.get(key) {
                        None => String::new(),
                        Some(Value::String(s)) => s.clone(),
                        Some(other) => other.to_string(),
                    };
                    assert_eq!((*label, value), (name, &want), "{kind:?}");
                }
                assert_eq!(l.len(), LABELS.len());
            });
        }
        report_of(kinds[0].clone(), Some(&owner), |r| {
            let l = of(&r);
            let get = |k: &str| l.iter().find(|(n, _)| *n == k).unwrap().1.clone();
            assert_eq!(get("server_address"), "127.0.0.1");
            assert_eq!(get("server_port"), "8080");
            assert_eq!(get("netns"), "4026531840");
            assert_eq!(get("process"), "nginx");
            assert_eq!(get("container_id"), "abc");
            assert_eq!(get("stage"), "syn");
            assert_eq!(get("next"), "reset");
        });
    }
}

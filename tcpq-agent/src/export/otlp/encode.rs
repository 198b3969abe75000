//! OTLP messages (`opentelemetry-proto`'s prost types): a line as a
//! LogRecord, the registry as metrics, and the requests that carry them,
//! with the resource attributes `host.name` and `service.name=tcpq`.

use std::{
    collections::BTreeMap,
    time::{SystemTime, UNIX_EPOCH},
};

use opentelemetry_proto::tonic::{
    collector::{logs::v1::ExportLogsServiceRequest, metrics::v1::ExportMetricsServiceRequest},
    common::v1::{any_value, AnyValue, ArrayValue, InstrumentationScope, KeyValue, KeyValueList},
    logs::v1::{LogRecord, ResourceLogs, ScopeLogs},
    metrics::v1::{
        metric, number_data_point, AggregationTemporality, Gauge, Histogram, HistogramDataPoint,
        Metric, NumberDataPoint, ResourceMetrics, ScopeMetrics, Sum,
    },
    resource::v1::Resource,
};

use crate::export::line::{Attr, Line, Severity};

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

/// An attribute as an OTLP value (None for what JSON writes as null);
/// integers beyond i64 are clamped, named counts are a key-value list
/// sorted by name.
fn any(a: &Attr) -> Option<AnyValue> {
    use any_value::Value as V;
    let int = |n: u64| V::IntValue(n.min(i64::MAX as u64) as i64);
    let array = |values: Vec<V>| {
        let values = values.into_iter().map(|v| AnyValue { value: Some(v) });
        V::ArrayValue(ArrayValue {
            values: values.collect(),
        })
    };
    let value = match a {
        _ if a.is_null() => return None,
        Attr::Str(s) => V::StringValue(s.clone()),
        Attr::U64(n) => int(*n),
        Attr::I64(n) => V::IntValue(*n),
        Attr::F64(x) => V::DoubleValue(*x),
        Attr::Bool(b) => V::BoolValue(*b),
        Attr::U64s(v) => array(v.iter().map(|n| int(*n)).collect()),
        Attr::Strs(v) => array(v.iter().map(|s| V::StringValue(s.clone())).collect()),
        Attr::Counts(c) => {
            let sorted: BTreeMap<&str, u64> = c.iter().map(|(k, n)| (k.as_str(), *n)).collect();
            let values = sorted.into_iter().map(|(k, n)| {
                let value = AnyValue {
                    value: Some(int(n)),
                };
                kv(k, value)
            });
            V::KvlistValue(KeyValueList {
                values: values.collect(),
            })
        }
    };
    Some(AnyValue { value: Some(value) })
}

fn nanos(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or(0)
}

/// A line as a LogRecord: every attribute but `timestamp` (the JSON
/// line's keys, in its order); time, event name (also the body, with the
/// verdict's cause) and severity from the head, as in syslog.
pub fn log_record(line: &Line) -> LogRecord {
    let head = &line.head;
    let event = head.event;
    let (number, text) = match head.severity {
        Severity::Err => (17, "ERROR"),
        Severity::Warning => (13, "WARNING"),
        Severity::Notice => (10, "NOTICE"),
        Severity::Info => (9, "INFO"),
    };
    let attrs = line.sorted().into_iter().filter(|(k, _)| *k != "timestamp");
    let attributes = attrs.filter_map(|(k, a)| Some(kv(k, any(a)?))).collect();
    let body = match line.str("verdict.cause") {
        Some(c) => format!("{event}: {c}"),
        None => event.to_string(),
    };
    LogRecord {
        time_unix_nano: nanos(head.at),
        observed_time_unix_nano: nanos(SystemTime::now()),
        severity_number: number,
        severity_text: text.into(),
        body: Some(string(body)),
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::export::line::Head;
    use prost::Message;
    use std::time::Duration;

    fn line<'a>(head: Head<'a>, attrs: Vec<(&'static str, Attr)>) -> Line<'a> {
        let mut l = Line::new(head);
        for (k, a) in attrs {
            l.set(k, a);
        }
        l
    }

    #[test]
    fn a_line_becomes_a_log_record_with_the_json_lines_keys() {
        let head = |event, severity| Head {
            at: UNIX_EPOCH + Duration::from_millis(1_795_224_370_437),
            event,
            severity,
        };
        let l = line(
            head("listen_overflow", Severity::Warning),
            vec![
                ("timestamp", Attr::str("2026-11-21T01:26:10.437Z")),
                ("event", Attr::str("listen_overflow")),
                ("count", Attr::U64(3)),
                ("server.port", Attr::U64(6379)),
                ("process.holders", Attr::U64s(vec![1, 2])),
                ("verdict.cause", Attr::str("full")),
                ("x", Attr::F64(f64::NAN)),
            ],
        );
        let r = log_record(&l);
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
        // The JSON line's keys: all but the time, and what it writes as null.
        let json = crate::export::json::value(&l);
        let json_keys = json.as_object().unwrap().iter();
        let json_keys = json_keys.filter(|(k, v)| *k != "timestamp" && !v.is_null());
        assert_eq!(keys, json_keys.map(|(k, _)| k.as_str()).collect::<Vec<_>>());
        assert_eq!(r.time_unix_nano, 1_795_224_370_437_000_000);
        assert_eq!(
            (r.severity_number, r.severity_text.as_str()),
            (13, "WARNING")
        );
        assert_eq!(r.event_name, "listen_overflow");
        let body = r.body.as_ref().and_then(|b| b.value.clone());
        let want = any_value::Value::StringValue("listen_overflow: full".into());
        assert_eq!(body, Some(want));
        let lost = log_record(&line(
            head("events_lost", Severity::Err),
            vec![("event", Attr::str("events_lost")), ("count", Attr::U64(1))],
        ));
        assert_eq!(lost.severity_number, 17);
        // Decodes as what it encodes.
        let req = logs_request(vec![r.clone()], &resource());
        let back = ExportLogsServiceRequest::decode(req.encode_to_vec().as_slice()).unwrap();
        assert_eq!(back.resource_logs[0].scope_logs[0].log_records[0], r);
    }
}

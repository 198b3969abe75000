//! OTLP/HTTP (protobuf) export for `run`: one LogRecord per JSON line (the
//! same attribute keys, severity as in syslog) and the registry's counters,
//! gauges and histogram as cumulative OTLP metrics, both with the resource
//! attributes `host.name` and `service.name=tcpq`.
//!
//! Messages are `opentelemetry-proto`'s prost types; the transport is
//! hyper's HTTP/1 client over a tokio `TcpStream` (one connection per
//! request; plain `http://` only — a TLS stack would cost more crates than
//! everything else here, and a local collector takes plain HTTP).
//! Log records wait in a bounded queue (`queue_size`); a full queue drops
//! the record and counts it. A failed request is retried with backoff
//! (0.5 s doubling to 8 s, 6 attempts) on connection errors, 429 and 5xx;
//! then the batch is dropped and counted (`tcpq_otlp_*` health metrics).

mod client;
mod config;
mod encode;
#[cfg(test)]
mod receiver;
mod transport;

use std::{
    sync::{
        atomic::{AtomicU64, Ordering::Relaxed},
        Arc,
    },
    time::Duration,
};

use opentelemetry_proto::tonic::{logs::v1::LogRecord, metrics::v1::Metric};
use tokio::sync::mpsc;

use crate::export::line::Line;
pub use config::{parse_headers, Config, Endpoint};
pub use encode::{log_record, logs_request, metrics, metrics_request, resource};

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

impl Otlp {
    /// Starts the senders on the current runtime.
    pub fn start(cfg: Config) -> Otlp {
        let stats = Arc::new(Stats::default());
        let (logs, logs_rx) = mpsc::channel(cfg.queue_size.max(1));
        // One metrics export waits at most: a newer one replaces nothing,
        // it is dropped (and counted) while the previous is being retried.
        let (metrics, metrics_rx) = mpsc::channel(1);
        let resource = resource();
        tokio::spawn(transport::send_logs(
            logs_rx,
            cfg.clone(),
            stats.clone(),
            resource.clone(),
        ));
        tokio::spawn(transport::send_metrics(
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

    /// Queues one line as a log record (dropped and counted when the
    /// queue is full).
    pub fn log(&self, line: &Line) {
        match self.logs.try_send(log_record(line)) {
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

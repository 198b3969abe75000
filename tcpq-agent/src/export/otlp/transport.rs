//! OTLP/HTTP transport: batching log records, one HTTP/1.1 POST per
//! request over a tokio `TcpStream`, retries with backoff.

use std::{
    sync::{atomic::Ordering::Relaxed, Arc},
    time::Duration,
};

use opentelemetry_proto::tonic::{
    logs::v1::LogRecord, metrics::v1::Metric, resource::v1::Resource,
};
use prost::Message;
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::TcpStream,
    sync::mpsc,
};

use super::{encode, Config, Stats};

/// Most log records per request.
const BATCH: usize = 512;

pub(super) async fn send_logs(
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
        let body = encode::logs_request(batch, &resource).encode_to_vec();
        match post_with_retry(&cfg, "/v1/logs", &body, &stats).await {
            true => stats.log_records.fetch_add(n, Relaxed),
            false => {
                stats.batches_dropped_records.fetch_add(n, Relaxed);
                stats.log_records_dropped.fetch_add(n, Relaxed)
            }
        };
    }
}

pub(super) async fn send_metrics(
    mut rx: mpsc::Receiver<Vec<Metric>>,
    cfg: Config,
    stats: Arc<Stats>,
    resource: Resource,
) {
    while let Some(m) = rx.recv().await {
        let body = encode::metrics_request(m, &resource).encode_to_vec();
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

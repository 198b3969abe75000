//! OTLP/HTTP transport: batching log records into requests, sending each
//! (see `client`) with retries and backoff, and counting the outcome.

use std::{
    sync::{atomic::Ordering::Relaxed, Arc},
    time::Duration,
};

use bytes::Bytes;
use hyper::StatusCode;
use opentelemetry_proto::tonic::{
    logs::v1::LogRecord, metrics::v1::Metric, resource::v1::Resource,
};
use prost::Message;
use tokio::sync::mpsc;

use super::{client, encode, Config, Stats};

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
        match post_with_retry(&cfg, &RETRY, "/v1/logs", body.into(), &stats).await {
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
        match post_with_retry(&cfg, &RETRY, "/v1/metrics", body.into(), &stats).await {
            true => stats.metric_exports.fetch_add(1, Relaxed),
            false => {
                stats.metric_batches_dropped.fetch_add(1, Relaxed);
                stats.metric_exports_dropped.fetch_add(1, Relaxed)
            }
        };
    }
}

/// When a failed request is tried again: `first` after the first failure,
/// doubling up to `max`, `attempts` tries in all.
#[derive(Debug, Clone, Copy)]
pub(super) struct Retry {
    pub first: Duration,
    pub max: Duration,
    pub attempts: u32,
}

/// 0.5 s doubling to 8 s, 6 attempts.
pub(super) const RETRY: Retry = Retry {
    first: Duration::from_millis(500),
    max: Duration::from_secs(8),
    attempts: 6,
};

impl Retry {
    /// The wait after failed attempt `n` (1-based), None after the last.
    fn after(&self, n: u32) -> Option<Duration> {
        let doubled = self.first.saturating_mul(1 << (n - 1).min(31));
        (n < self.attempts).then(|| doubled.min(self.max))
    }
}

/// What an attempt's result means: accepted, refused for good (any other
/// status), or worth another try (no answer, 429, 5xx).
#[derive(Debug, PartialEq, Eq)]
enum Outcome {
    Sent,
    Refused(StatusCode),
    Again,
}

fn outcome(r: &anyhow::Result<StatusCode>) -> Outcome {
    match r {
        Ok(code) if code.is_success() => Outcome::Sent,
        Ok(code) if *code != StatusCode::TOO_MANY_REQUESTS && !code.is_server_error() => {
            Outcome::Refused(*code)
        }
        _ => Outcome::Again,
    }
}

/// Whether the request was accepted, after up to `retry.attempts` tries.
/// Every failed try counts in `failed_requests`, an accepted one its body
/// in `bytes`.
pub(super) async fn post_with_retry(
    cfg: &Config,
    retry: &Retry,
    signal: &str,
    body: Bytes,
    stats: &Stats,
) -> bool {
    for attempt in 1..=retry.attempts {
        let r = client::post(cfg, signal, body.clone()).await;
        match outcome(&r) {
            Outcome::Sent => {
                stats.bytes.fetch_add(body.len() as u64, Relaxed);
                return true;
            }
            Outcome::Refused(code) => {
                stats.failed_requests.fetch_add(1, Relaxed);
                let code = code.as_u16();
                eprintln!(
                    "tcpq: OTLP {signal}: the receiver refused the request (HTTP {code}); dropped"
                );
                return false;
            }
            Outcome::Again => {
                stats.failed_requests.fetch_add(1, Relaxed);
                match retry.after(attempt) {
                    Some(wait) => tokio::time::sleep(wait).await,
                    None => eprintln!(
                        "tcpq: OTLP {signal}: {}:{} failed {} times; dropped",
                        cfg.endpoint.host, cfg.endpoint.port, retry.attempts
                    ),
                }
            }
        }
    }
    false
}

#[cfg(test)]
mod tests {
    use super::super::receiver;
    use super::*;

    /// Quick enough for a test: 10 ms, 20 ms, 3 attempts.
    const QUICK: Retry = Retry {
        first: Duration::from_millis(10),
        max: Duration::from_millis(20),
        attempts: 3,
    };

    #[test]
    fn backoff_doubles_from_half_a_second_to_eight_in_six_attempts() {
        let waits: Vec<_> = (1..=6).map(|n| RETRY.after(n)).collect();
        let s = |ms| Some(Duration::from_millis(ms));
        assert_eq!(waits, [s(500), s(1000), s(2000), s(4000), s(8000), None]);
    }

    #[test]
    fn what_is_retried() {
        let v = |c: u16| outcome(&Ok(StatusCode::from_u16(c).unwrap()));
        for c in [200, 202, 204] {
            assert_eq!(v(c), Outcome::Sent, "{c}");
        }
        for c in [301, 400, 401, 404, 413] {
            assert!(matches!(v(c), Outcome::Refused(_)), "{c}");
        }
        for c in [429, 500, 502, 503, 504] {
            assert_eq!(v(c), Outcome::Again, "{c}");
        }
        assert_eq!(outcome(&Err(anyhow::anyhow!("refused"))), Outcome::Again);
    }

    fn counts(s: &Stats) -> (u64, u64) {
        (s.failed_requests.load(Relaxed), s.bytes.load(Relaxed))
    }

    #[tokio::test]
    async fn accepted_at_once() {
        let rx = receiver::scripted(vec![]).await;
        let (cfg, stats) = (receiver::config(rx.addr, ""), Stats::default());
        let body = Bytes::from_static(b"abc");
        assert!(post_with_retry(&cfg, &QUICK, "/v1/logs", body, &stats).await);
        assert_eq!(counts(&stats), (0, 3));
    }

    #[tokio::test]
    async fn two_503s_are_retried_and_counted() {
        let rx = receiver::scripted(vec![503, 503]).await;
        let (cfg, stats) = (receiver::config(rx.addr, ""), Stats::default());
        let body = Bytes::from_static(b"abcd");
        assert!(post_with_retry(&cfg, &QUICK, "/v1/logs", body, &stats).await);
        assert_eq!(counts(&stats), (2, 4));
        let seen = rx.seen.lock().unwrap();
        assert_eq!(seen.len(), 3);
        assert!(seen.iter().all(|s| &s.body[..] == b"abcd"));
    }

    #[tokio::test]
    async fn a_refusal_is_not_retried() {
        let rx = receiver::scripted(vec![400]).await;
        let (cfg, stats) = (receiver::config(rx.addr, ""), Stats::default());
        assert!(!post_with_retry(&cfg, &QUICK, "/v1/logs", Bytes::new(), &stats).await);
        assert_eq!(counts(&stats), (1, 0));
        assert_eq!(rx.seen.lock().unwrap().len(), 1);
    }

    #[tokio::test]
    async fn connection_refused_counts_every_attempt() {
        let cfg = receiver::config(receiver::refusing(), "");
        let stats = Stats::default();
        assert!(!post_with_retry(&cfg, &QUICK, "/v1/logs", Bytes::new(), &stats).await);
        assert_eq!(counts(&stats), (3, 0));
    }

    #[tokio::test]
    async fn a_receiver_that_never_answers_times_out_every_attempt() {
        let mut cfg = receiver::config(receiver::silent().await, "");
        cfg.timeout = Duration::from_millis(100);
        let stats = Stats::default();
        let t = tokio::time::Instant::now();
        assert!(!post_with_retry(&cfg, &QUICK, "/v1/logs", Bytes::new(), &stats).await);
        assert_eq!(counts(&stats), (3, 0));
        assert!(t.elapsed() >= Duration::from_millis(300 + 30));
    }
}

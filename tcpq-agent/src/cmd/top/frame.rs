//! What one screen of `top` shows: per-listener rows (totals, rates,
//! queue state, owner, verdict), client-side errors per process, port
//! headroom per namespace. Built by `tally`, read by the screen.

use std::{
    collections::HashMap,
    time::{Duration, SystemTime},
};

use crate::{export::sink::Health, model::ListenerKey, source::netstat::Sysctls, verdict::Verdict};

/// Rates are averaged over this window.
pub const RATE_WINDOW: Duration = Duration::from_secs(3);

/// Counts of the kinds `top` has columns for.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Counts {
    pub overflow_syn: f64,
    pub overflow_ack: f64,
    pub syn_drops: f64,
    pub cookies: f64,
    pub resets: f64,
    pub accept_errors: f64,
}

impl Counts {
    pub(super) fn add(&mut self, o: &Counts, sign: f64) {
        self.overflow_syn += sign * o.overflow_syn;
        self.overflow_ack += sign * o.overflow_ack;
        self.syn_drops += sign * o.syn_drops;
        self.cookies += sign * o.cookies;
        self.resets += sign * o.resets;
        self.accept_errors += sign * o.accept_errors;
    }

    pub(super) fn scaled(self, f: f64) -> Counts {
        Counts {
            overflow_syn: self.overflow_syn * f,
            overflow_ack: self.overflow_ack * f,
            syn_drops: self.syn_drops * f,
            cookies: self.cookies * f,
            resets: self.resets * f,
            accept_errors: self.accept_errors * f,
        }
    }

    /// Everything that lost or refused a connection.
    pub fn trouble(&self) -> f64 {
        self.overflow_syn
            + self.overflow_ack
            + self.syn_drops
            + self.cookies
            + self.resets
            + self.accept_errors
    }
}

/// One listener's row.
#[derive(Debug, Clone, PartialEq)]
pub struct Row {
    pub key: ListenerKey,
    pub endpoint: String,
    pub port: u16,
    pub queue_len: u32,
    pub queue_limit: u32,
    /// Per second over the last `RATE_WINDOW`.
    pub rates: Counts,
    /// Since `top` started.
    pub totals: Counts,
    pub p99_ms: Option<f64>,
    pub close_wait: u32,
    /// Change over the last minute (or since start, when shorter).
    pub close_wait_growth: i64,
    pub process: Option<String>,
    pub pid: Option<u32>,
    pub container: Option<String>,
    pub verdict: Option<Verdict>,
}

impl Row {
    /// Accept-queue fill, 0..1 (a full queue holds limit + 1).
    pub fn fill(&self) -> f64 {
        if self.queue_limit == 0 {
            return if self.queue_len > 0 { 1.0 } else { 0.0 };
        }
        (self.queue_len as f64 / (self.queue_limit + 1) as f64).min(1.0)
    }
}

/// Client-side trouble of one process (connect() failures).
#[derive(Debug, Clone, PartialEq)]
pub struct Client {
    pub netns: u32,
    pub pid: u32,
    pub process: String,
    /// errno name → (total since start, per second now).
    pub errors: Vec<(String, u64, f64)>,
    pub last_destination: String,
}

/// Local ports of one namespace.
#[derive(Debug, Clone, PartialEq)]
pub struct Ports {
    pub netns: u32,
    pub range: Option<(u16, u16)>,
    pub time_wait: u32,
    pub verdict: Option<Verdict>,
}

impl Ports {
    pub fn size(&self) -> u32 {
        self.range
            .filter(|(lo, hi)| lo <= hi)
            .map_or(0, |(lo, hi)| u32::from(hi) - u32::from(lo) + 1)
    }

    /// Ports not held by TIME_WAIT sockets (open connections may hold
    /// some of them).
    pub fn left(&self) -> u32 {
        self.size().saturating_sub(self.time_wait)
    }
}

/// Everything on one screen.
#[derive(Debug, Clone, Default)]
pub struct Frame {
    pub at: Option<SystemTime>,
    pub rows: Vec<Row>,
    pub clients: Vec<Client>,
    pub ports: Vec<Ports>,
    pub sysctls: HashMap<u32, Sysctls>,
    pub health: Health,
    /// Bumped on every publish.
    pub generation: u64,
}

#[cfg(test)]
pub(super) mod tests {
    use super::*;

    pub(in crate::cmd::top) fn row(
        port: u16,
        rate: f64,
        total: f64,
        fill: (u32, u32),
        process: &str,
    ) -> Row {
        Row {
            key: ListenerKey {
                netns: 1,
                inode: port as u32,
            },
            endpoint: format!("127.0.0.1:{port}"),
            port,
            queue_len: fill.0,
            queue_limit: fill.1,
            rates: Counts {
                overflow_syn: rate,
                ..Default::default()
            },
            totals: Counts {
                overflow_syn: total,
                ..Default::default()
            },
            p99_ms: None,
            close_wait: 0,
            close_wait_growth: 0,
            process: Some(process.into()),
            pid: Some(1),
            container: Some("abcdef12".into()),
            verdict: None,
        }
    }

    #[test]
    fn fill_counts_the_extra_slot() {
        assert_eq!(row(1, 0.0, 0.0, (2, 1), "x").fill(), 1.0);
        assert_eq!(row(1, 0.0, 0.0, (1, 0), "x").fill(), 1.0);
        assert_eq!(row(1, 0.0, 0.0, (0, 0), "x").fill(), 0.0);
        assert!((row(1, 0.0, 0.0, (64, 127), "x").fill() - 0.5).abs() < 1e-9);
    }

    #[test]
    fn port_headroom() {
        let p = Ports {
            netns: 1,
            range: Some((40000, 40003)),
            time_wait: 3,
            verdict: None,
        };
        assert_eq!((p.size(), p.left()), (4, 1));
    }
}

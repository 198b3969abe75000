//! Prometheus metrics: a small registry (`registry`), the text exposition
//! format 0.0.4 (`exposition`) and the HTTP server for `GET /metrics`
//! (`http` on hyper, hardened against idle connections and slow clients;
//! `conns` tracks its connections, `listen` binds its address).
//!
//! The registry is hand-written rather than a crate: families are dynamic (a new event kind
//! shows up as a new family without code changes), memory must stay bounded
//! on an agent that runs for weeks while label sets churn, and the format is
//! small.
//!
//! Bounds, per family:
//! - at most `max_series` real series; a NEW label set beyond that is folded
//!   into one overflow series (same label names, every value `"overflow"`,
//!   not counted in `max_series`), so family sums stay exact for `inc`,
//!   `observe` and `replace_gauges` (the sum of folded values). `set` and
//!   `set_counter` cannot be exact there: the overflow gauge holds the last
//!   folded value, the overflow counter the largest. A lowered limit applies
//!   to new label sets; existing series stay until they expire or are replaced.
//! - counter and histogram series (the overflow one too, same rule) not
//!   updated for `ttl` are dropped by [`Registry::expire`]; a label set that
//!   comes back restarts at zero, which Prometheus reads as a counter reset.
//!   Gauges do not expire: `replace_gauges` replaces them whole.

mod conns;
mod exposition;
mod http;
mod listen;
mod registry;

pub use conns::raise_fd_limit;
pub use http::serve;
pub use listen::bind;
pub use registry::{Labels, Registry, Sample, Type};

#[cfg(test)]
mod fixtures {
    //! A registry with a family of every type, for the tests.
    use super::*;
    use std::time::Duration;

    pub(super) const DROPS: &str = "tcpq_drops_total";
    pub(super) const LAT: &str = "tcpq_accept_latency_seconds";
    pub(super) const BOUNDS: &[f64] = &[0.001, 0.1, 1.0];

    pub(super) fn port(p: &str) -> Labels {
        vec![("port", p.into())]
    }

    pub(super) fn drop_labels(p: &str, reason: &str) -> Labels {
        vec![("port", p.into()), ("reason", reason.into())]
    }

    pub(super) fn sample_registry() -> Registry {
        let mut r = Registry::new(10, Duration::from_secs(60));
        r.describe(DROPS, "Dropped SYNs.\nBy \\reason", Type::Counter);
        r.describe("tcpq_backlog", "Accept queue length.", Type::Gauge);
        r.describe(LAT, "Accept latency.", Type::Histogram);
        r.describe("tcpq_empty_total", "Nothing yet.", Type::Counter);
        r.describe("tcpq_up", "Agent running.", Type::Gauge);
        r.describe("tcpq_up", "ignored", Type::Gauge);
        r.inc(DROPS, &drop_labels("80", "full"), 2);
        r.inc(DROPS, &drop_labels("443", "a\"b\\c\nd"), 1);
        r.inc(DROPS, &drop_labels("80", "full"), 3);
        let no_comm = vec![("port", "22".into()), ("comm", "".into())];
        r.set("tcpq_backlog", &no_comm, 1.5);
        r.observe(LAT, &port("80"), BOUNDS, &[1, 2, 0, 4], 9.5);
        r.observe(LAT, &port("80"), BOUNDS, &[0, 1, 0, 0], 0.25);
        r.set("tcpq_up", &vec![], 1.0);
        r
    }
}

//! Where reports go. `trace` prints them (`Console`); `run` sends them to
//! JSON lines, Prometheus and syslog (`run::Sidecar`). The engine in
//! `trace` calls a sink; a sink never reaches back into the engine.

use std::{
    io::{self, Write},
    time::SystemTime,
};

use serde_json::Value;

use crate::{
    aggregate::Aggregator,
    export::{self, Format, Report},
    latency::Summary,
    resolve::Resolver,
};

/// The agent's own state, as of a flush.
#[derive(Debug, Clone, Default)]
pub struct Health {
    pub received: u64,
    /// Events the kernel could not deliver (ring buffer full), in total.
    pub lost: u64,
    pub undecodable: u64,
    pub read_errors: u64,
    /// Most unconsumed bytes in the ring buffer since the last flush, as a
    /// share of its size (0..1).
    pub ringbuf_fill: f64,
    /// Attached programs per hook kind.
    pub probes: Vec<(String, u64)>,
    pub owners_cached: usize,
    pub tracked_listeners: usize,
    /// What the kernel's maps could not hold.
    pub map_losses: MapLosses,
}

/// What the kernel's maps could not hold, in total since start: each map
/// that can run out of room, and what that cost (see `tcpq_common::stats`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct MapLosses {
    /// accept() failures not counted: `ACCEPT_ERRORS` full.
    pub accept_errors_full: u64,
    /// Listener entries evicted from the `ACCEPTS` LRU (each loses its
    /// accepts since the last read).
    pub accepts_evicted: u64,
    /// Histograms evicted from the `ACCEPT_LATENCY` LRU.
    pub latency_evicted: u64,
    /// Accepts not counted: their `ACCEPT_ENTRY` entry was gone.
    pub accept_entries_missing: u64,
}

/// The kernel's counters and what the agent sees in the maps, for
/// [`MapLosses::new`].
#[derive(Debug, Clone, Copy, Default)]
pub struct MapCounts {
    pub accept_errors_full: u64,
    /// Keys the kernel created in `ACCEPTS`, and those there at the last read.
    pub accepts_inserted: u64,
    pub accepts_present: u64,
    /// Keys the kernel created in `ACCEPT_LATENCY`, those there at the last
    /// read, and those the agent removed itself.
    pub latency_inserted: u64,
    pub latency_present: u64,
    pub latency_removed: u64,
    pub accept_entries_missing: u64,
}

impl MapLosses {
    /// An LRU map's evictions are the keys created that are neither there
    /// nor removed by the agent.
    pub fn new(c: MapCounts) -> MapLosses {
        MapLosses {
            accept_errors_full: c.accept_errors_full,
            accepts_evicted: c.accepts_inserted.saturating_sub(c.accepts_present),
            latency_evicted: c
                .latency_inserted
                .saturating_sub(c.latency_present + c.latency_removed),
            accept_entries_missing: c.accept_entries_missing,
        }
    }

    /// (map, what was lost, count): metric labels and the exit summary.
    pub fn rows(&self) -> [(&'static str, &'static str, u64); 4] {
        [
            ("ACCEPT_ERRORS", "map_full", self.accept_errors_full),
            ("ACCEPTS", "evicted", self.accepts_evicted),
            ("ACCEPT_LATENCY", "evicted", self.latency_evicted),
            ("ACCEPT_ENTRY", "entry_missing", self.accept_entries_missing),
        ]
    }

    /// One clause for the exit summary, e.g. `ACCEPT_ERRORS map_full=3,
    /// ACCEPTS evicted=0, ...`.
    pub fn summary(&self) -> String {
        self.rows()
            .iter()
            .map(|(map, what, n)| format!("{map} {what}={n}"))
            .collect::<Vec<_>>()
            .join(", ")
    }
}

/// What a sink may read at the end of a flush.
pub struct View<'a> {
    pub agg: &'a Aggregator,
    pub resolver: &'a Resolver,
    pub health: Health,
}

/// Settings a running engine takes from a reloaded configuration: those
/// applied in the agent, not in the kernel.
#[derive(Debug, Clone, PartialEq)]
pub struct AgentFilters {
    pub comm: Option<String>,
    pub cgroup: Option<String>,
    pub container: Option<String>,
    pub accept_latency_ms: f64,
}

pub trait Sink {
    /// One report line.
    fn report(&mut self, r: &Report) -> io::Result<()>;
    /// `n` more kernel events lost since the last call.
    fn lost(&mut self, at: SystemTime, n: u64) -> io::Result<()>;
    /// The end of a flush (every report of the interval was given).
    fn flushed(&mut self, view: &View) -> io::Result<()>;
    /// One listener port's accept latency over an interval (every
    /// interval, not only those over the threshold).
    fn latency(&mut self, _s: &Summary) {}
    /// SIGHUP: reopen outputs, reload settings. Returns the agent-side
    /// filters to apply, if they changed.
    fn reload(&mut self) -> Option<AgentFilters> {
        None
    }
    /// Periodic status lines (`status`'s JSON) with the agent's health.
    fn snapshot(&mut self, _lines: Vec<Value>, _view: &View) -> io::Result<()> {
        Ok(())
    }
}

/// `trace`: text or JSON lines on stdout.
pub struct Console {
    pub format: Format,
    pub out: io::Stdout,
}

impl Sink for Console {
    fn report(&mut self, r: &Report) -> io::Result<()> {
        writeln!(self.out.lock(), "{}", export::render(self.format, r))
    }

    fn lost(&mut self, at: SystemTime, n: u64) -> io::Result<()> {
        writeln!(self.out.lock(), "{}", export::lost(self.format, at, n))
    }

    fn flushed(&mut self, _view: &View) -> io::Result<()> {
        self.out.lock().flush()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lru_evictions_are_keys_created_that_are_neither_there_nor_removed() {
        let l = MapLosses::new(MapCounts {
            accept_errors_full: 7,
            accepts_inserted: 10,
            accepts_present: 8,
            latency_inserted: 12,
            latency_present: 5,
            latency_removed: 4,
            accept_entries_missing: 1,
        });
        assert_eq!(
            l,
            MapLosses {
                accept_errors_full: 7,
                accepts_evicted: 2,
                latency_evicted: 3,
                accept_entries_missing: 1,
            }
        );
        assert_eq!(
            l.summary(),
            "ACCEPT_ERRORS map_full=7, ACCEPTS evicted=2, ACCEPT_LATENCY evicted=3, ACCEPT_ENTRY entry_missing=1"
        );
        // Read before the kernel's counter caught up: never negative.
        let l = MapLosses::new(MapCounts {
            accepts_inserted: 1,
            accepts_present: 3,
            ..Default::default()
        });
        assert_eq!(l.accepts_evicted, 0);
    }
}

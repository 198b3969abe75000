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

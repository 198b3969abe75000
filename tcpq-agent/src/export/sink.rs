//! Where reports go. `trace` prints them (`Console`); `run` sends them to
//! JSON lines, Prometheus and syslog (`run::Sidecar`). The engine in
//! `trace` calls a sink; a sink never reaches back into the engine.

use std::{
    io::{self, Write},
    time::SystemTime,
};

use tcpq_common::names::map;

use crate::{
    aggregate::Aggregator,
    export::{self, Format, Report},
    owner::resolve::Resolver,
    source::latency::Summary,
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
    /// Listen overflows the kernel counted that no hook reported (found in
    /// `TcpExt.ListenOverflows`; see `aggregate::shortfall`).
    pub overflows_missed_by_hooks: u64,
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
            (map::ACCEPT_ERRORS, "map_full", self.accept_errors_full),
            (map::ACCEPTS, "evicted", self.accepts_evicted),
            (map::ACCEPT_LATENCY, "evicted", self.latency_evicted),
            (
                map::ACCEPT_ENTRY,
                "entry_missing",
                self.accept_entries_missing,
            ),
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
    /// Periodic status rows (`status`'s) with the agent's health.
    fn snapshot(
        &mut self,
        _snap: crate::verdict::status::Snapshot,
        _view: &View,
    ) -> io::Result<()> {
        Ok(())
    }
    /// Report lines that could not be written, so far (the exit summary).
    fn lines_lost(&self) -> u64 {
        0
    }
}

/// Whole lines to a file or stdout, each record (a line, or a text line
/// with its `cause:`/`remedy:` lines) built in one buffer and written with
/// one `write_all`, unbuffered: nothing of a line waits in a buffer to be
/// glued to a later one. A record that fails is lost whole and counted in
/// `lost`; if part of it reached the file (a disk filling mid-line), the
/// next write starts with a newline, so the fragment stays a line of its
/// own and the lines after it parse.
#[derive(Debug)]
pub struct LineOut<W: Write> {
    w: W,
    /// The last write stopped inside a line.
    repair: bool,
    /// Records not written (whole or in part).
    pub lost: u64,
    /// Newlines written to end a fragment.
    pub repaired: u64,
}

impl<W: Write> LineOut<W> {
    pub fn new(w: W) -> LineOut<W> {
        LineOut {
            w,
            repair: false,
            lost: 0,
            repaired: 0,
        }
    }

    /// Like `new`, for a file whose last line is unterminated when
    /// `mid_line`: the first write ends it.
    pub fn resume(w: W, mid_line: bool) -> LineOut<W> {
        LineOut {
            repair: mid_line,
            ..LineOut::new(w)
        }
    }

    /// Writes `line` and a newline (`line` itself has none, or only the
    /// ones of a text record's continuation lines).
    pub fn line(&mut self, line: &str) -> io::Result<()> {
        let mut buf = Vec::with_capacity(line.len() + 2);
        let repairing = self.repair;
        if repairing {
            buf.push(b'\n');
        }
        buf.extend_from_slice(line.as_bytes());
        buf.push(b'\n');
        let mut off = 0;
        let r = loop {
            if off == buf.len() {
                break Ok(());
            }
            match self.w.write(&buf[off..]) {
                Ok(0) => break Err(io::Error::from(io::ErrorKind::WriteZero)),
                Ok(n) => off += n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => break Err(e),
            }
        };
        if off > 0 {
            if repairing {
                self.repaired += 1;
            }
            self.repair = buf[off - 1] != b'\n';
        }
        if r.is_err() {
            self.lost += 1;
        }
        r
    }

    /// Whether the last write stopped inside a line (the next one starts
    /// with a newline).
    pub fn mid_line(&self) -> bool {
        self.repair
    }
}

/// File descriptor 1, unbuffered (`io::Stdout` keeps what a failed write
/// left in its buffer and writes it before the next line).
#[derive(Debug, Default)]
pub struct RawStdout;

impl Write for RawStdout {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        // SAFETY: buf is readable for buf.len() bytes; fd 1 is not closed
        // by anything in this process.
        let n = unsafe { libc::write(1, buf.as_ptr().cast(), buf.len()) };
        if n < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(n as usize)
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// `trace`: text or JSON lines on stdout.
pub struct Console {
    pub format: Format,
    pub out: LineOut<RawStdout>,
}

impl Console {
    pub fn stdout(format: Format) -> Console {
        Console {
            format,
            out: LineOut::new(RawStdout),
        }
    }
}

impl Sink for Console {
    fn report(&mut self, r: &Report) -> io::Result<()> {
        self.out.line(&export::render(self.format, r))
    }

    fn lost(&mut self, at: SystemTime, n: u64) -> io::Result<()> {
        self.out.line(&export::lost(self.format, at, n))
    }

    fn flushed(&mut self, _view: &View) -> io::Result<()> {
        Ok(())
    }

    fn lines_lost(&self) -> u64 {
        self.out.lost
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A file that takes `room` more bytes, then says ENOSPC.
    struct Disk {
        data: Vec<u8>,
        room: usize,
    }

    impl Write for Disk {
        fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
            if self.room == 0 {
                return Err(io::Error::from_raw_os_error(libc::ENOSPC));
            }
            let n = buf.len().min(self.room);
            self.data.extend_from_slice(&buf[..n]);
            self.room -= n;
            Ok(n)
        }
        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn a_full_disk_loses_whole_lines_counted_and_never_glues_them() {
        let mut out = LineOut::new(Disk {
            data: Vec::new(),
            room: 30,
        });
        out.line(r#"{"n":1,"pad":"xxxxxxxxx"}"#).unwrap(); // 26 bytes
        let e = out.line(r#"{"n":2}"#).unwrap_err(); // 4 bytes of it fit
        assert_eq!(e.raw_os_error(), Some(libc::ENOSPC));
        assert!(out.line(r#"{"n":3}"#).is_err());
        assert_eq!((out.lost, out.repair), (2, true));
        // Space again (logs rotated): a newline first, then the line.
        out.w.room = 100;
        out.line(r#"{"n":4}"#).unwrap();
        out.line(r#"{"n":5}"#).unwrap();
        assert_eq!((out.lost, out.repaired, out.repair), (2, 1, false));
        let text = String::from_utf8(out.w.data.clone()).unwrap();
        assert_eq!(
            text,
            "{\"n\":1,\"pad\":\"xxxxxxxxx\"}\n{\"n\"\n{\"n\":4}\n{\"n\":5}\n"
        );
        // Every line but the fragment parses; the fragment is alone.
        let bad: Vec<&str> = text
            .lines()
            .filter(|l| serde_json::from_str::<serde_json::Value>(l).is_err())
            .collect();
        assert_eq!(bad, [r#"{"n""#]);
        // A write that gets only the repair newline out needs no more.
        let mut out = LineOut::new(Disk {
            data: b"{".to_vec(),
            room: 1,
        });
        out.repair = true;
        assert!(out.line("{}").is_err());
        assert!(!out.repair);
        assert_eq!(out.w.data, b"{\n");
    }

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

//! Recordings: every input the engine's pipeline takes, as one JSON object
//! per line, in the order it took them (`trace --record FILE`), so that
//! `tcpq-agent replay FILE` feeds them through the same pipeline without
//! root, BPF or this host's `/proc`.
//!
//! A recording holds the kernel's side (ring-buffer records as bytes,
//! sock_diag snapshots with each namespace's counters and sysctls, the
//! kernel maps' readings) and the host's side: every answer the pipeline
//! got about processes (an owner, the sockets a pid holds, its fd use),
//! in the order it asked. Replaying asks the same questions in the same
//! order; a recording that answers differently does not match this agent.

use std::{
    collections::HashMap,
    fs::File,
    io::{self, BufRead, BufReader, BufWriter, Write},
    path::Path,
};

use anyhow::{bail, Context, Result};
use serde::{Deserialize, Serialize};

use crate::{
    owner::resolve::Owner,
    source::{poll::Round, wire::Pod},
};

/// The first line's `recording` value: bumped when a step changes meaning.
pub const VERSION: u32 = 1;

/// What the pipeline was built with.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Start {
    pub recording: u32,
    /// The agent that recorded it, and the kernel it ran on.
    pub agent: String,
    pub kernel: String,
    pub settings: Settings,
}

/// The pipeline's settings: `trace`'s filters and the facts of the attach
/// plan that the aggregation depends on.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct Settings {
    pub netns: u32,
    pub port: Option<u16>,
    pub pid: Option<u32>,
    pub comm: Option<String>,
    pub cgroup: Option<String>,
    pub container: Option<String>,
    pub accept_latency_ms: f64,
    /// `sk_rst_reason` values → names, from the kernel's BTF.
    pub rst_reasons: HashMap<u32, String>,
    /// Kernel-function hooks for SYN and ACK time.
    pub hooked_syn: bool,
    pub hooked_ack: bool,
    /// The kernel counts accepts per listener (`inet_csk_accept` hooked).
    pub accepts: bool,
    /// accept() failures are counted (syscall hooks).
    pub accept_errors: bool,
    /// Accept latency is measured.
    pub latency: bool,
    /// The kernel records who accepted each connection.
    pub accepter: bool,
}

/// One input, with the CLOCK_MONOTONIC time the agent took it.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(tag = "step", rename_all = "snake_case")]
pub enum Step {
    /// The answers asked while the pipeline was built (`--pid`).
    Begin { answers: Vec<Answer> },
    /// Ring-buffer records, drained in one go.
    Records {
        t: u64,
        #[serde(with = "crate::source::wire::hex_list")]
        records: Vec<Vec<u8>>,
        answers: Vec<Answer>,
    },
    /// One sock_diag round (every namespace), with the kernel's answers to
    /// "who accepted this connection" asked while it was applied.
    Round {
        t: u64,
        round: Round,
        accepted: Vec<Option<u32>>,
    },
    /// The kernel's accept() failures per (tgid << 32 | errno).
    AcceptErrors {
        t: u64,
        counts: Vec<(u64, u64)>,
        answers: Vec<Answer>,
    },
    /// Owners learned between rounds (`--pid`'s sockets).
    Learn { t: u64, answers: Vec<Answer> },
    /// A report interval ends.
    Flush {
        t: u64,
        /// Wall clock of the lines, ns since the epoch.
        at_ns: u64,
        /// Events lost so far (ring buffer full).
        lost: u64,
        /// `ACCEPTS` entries: listener address → CPU-summed stats.
        accepts: Option<Vec<(u64, Pod)>>,
        /// `ACCEPT_LATENCY` histograms per (netns << 16 | port).
        latency: Option<Vec<(u64, Pod)>>,
        answers: Vec<Answer>,
    },
}

/// One answer about the host's processes, in the order asked.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(rename_all = "snake_case")]
pub enum Answer {
    /// A process, by pid.
    Owner(Owner),
    /// The owner of a socket, by inode.
    SocketOwner(Option<Owner>),
    /// Whether a socket is a member of an SO_REUSEPORT group.
    InGroup(bool),
    /// The socket inodes a process holds.
    Sockets(Vec<u32>),
    /// A process's open descriptors and its limit.
    Fds(Option<usize>, Option<u64>),
    /// Whether a process still exists.
    Alive(bool),
}

impl Answer {
    pub fn what(&self) -> &'static str {
        match self {
            Answer::Owner(_) => "owner",
            Answer::SocketOwner(_) => "socket_owner",
            Answer::InGroup(_) => "in_group",
            Answer::Sockets(_) => "sockets",
            Answer::Fds(..) => "fds",
            Answer::Alive(_) => "alive",
        }
    }
}

/// Writes a recording, a line per step. A write error stops recording
/// (said once) rather than the engine.
pub struct Recorder {
    out: Option<BufWriter<File>>,
    path: String,
    pub steps: u64,
}

impl Recorder {
    pub fn create(path: &Path, start: &Start) -> Result<Recorder> {
        let f = File::create(path).map_err(|e| {
            anyhow::anyhow!(
                "--record {}: {}",
                path.display(),
                crate::source::netns::io_reason(&e)
            )
        })?;
        let mut r = Recorder {
            out: Some(BufWriter::new(f)),
            path: path.display().to_string(),
            steps: 0,
        };
        r.line(&serde_json::to_string(start)?);
        Ok(r)
    }

    pub fn step(&mut self, step: &Step) {
        match serde_json::to_string(step) {
            Ok(s) => self.line(&s),
            Err(e) => self.fail(&e.to_string()),
        }
        self.steps += 1;
    }

    fn line(&mut self, s: &str) {
        let Some(out) = self.out.as_mut() else { return };
        if let Err(e) = writeln!(out, "{s}") {
            self.fail(&e.to_string());
        }
    }

    /// Writes what is buffered (at each flush of the engine and at exit).
    pub fn flush(&mut self) {
        if let Some(Err(e)) = self.out.as_mut().map(|o| o.flush()) {
            self.fail(&e.to_string());
        }
    }

    fn fail(&mut self, why: &str) {
        if self.out.take().is_some() {
            eprintln!("tcpq: recording to {} stopped: {why}", self.path);
        }
    }
}

/// Reads a recording: its start, then its steps.
pub struct Reader<R: BufRead = BufReader<File>> {
    lines: io::Lines<R>,
    pub line: u64,
}

impl Reader {
    pub fn open(path: &Path) -> Result<(Start, Reader)> {
        let f = File::open(path).with_context(|| format!("{}", path.display()))?;
        Reader::start(BufReader::new(f)).with_context(|| format!("{}", path.display()))
    }
}

impl<R: BufRead> Reader<R> {
    /// Reads the first line, the recording's start.
    pub fn start(input: R) -> Result<(Start, Reader<R>)> {
        let mut r = Reader {
            lines: input.lines(),
            line: 0,
        };
        let first = r.next_line()?.context("empty, not a tcpq recording")?;
        #[derive(Deserialize)]
        struct Format {
            recording: u32,
        }
        let not_start =
            |e: serde_json::Error| anyhow::anyhow!("line 1 is not a tcpq recording's start: {e}");
        let format: Format = serde_json::from_str(&first).map_err(not_start)?;
        if format.recording != VERSION {
            bail!(
                "recording format {} (this agent reads {VERSION})",
                format.recording
            );
        }
        let start: Start = serde_json::from_str(&first).map_err(not_start)?;
        Ok((start, r))
    }

    fn next_line(&mut self) -> Result<Option<String>> {
        self.line += 1;
        match self.lines.next() {
            None => Ok(None),
            Some(l) => Ok(Some(l.with_context(|| format!("line {}", self.line))?)),
        }
    }

    /// The next step; None at the end. A truncated last line (the agent
    /// was killed mid-write) ends the recording.
    pub fn next_step(&mut self) -> Result<Option<Step>> {
        let Some(l) = self.next_line()? else {
            return Ok(None);
        };
        match serde_json::from_str(&l) {
            Ok(s) => Ok(Some(s)),
            Err(e) if e.is_eof() => Ok(None),
            Err(e) => bail!("line {}: not a recorded step: {e}", self.line),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn steps_round_trip_through_json() {
        let steps = vec![
            Step::Records {
                t: 5,
                records: vec![vec![0, 1, 0xfe], vec![]],
                answers: vec![Answer::Alive(true)],
            },
            Step::AcceptErrors {
                t: 6,
                counts: vec![(1 << 32 | 24, 9)],
                answers: vec![Answer::Sockets(vec![3, 4]), Answer::Fds(Some(10), Some(64))],
            },
            Step::Flush {
                t: 7,
                at_ns: 1_700_000_000_000_000_000,
                lost: 2,
                accepts: None,
                latency: Some(vec![(9, Pod(vec![1, 2]))]),
                answers: vec![Answer::SocketOwner(None), Answer::InGroup(false)],
            },
        ];
        for s in steps {
            let line = serde_json::to_string(&s).unwrap();
            assert!(!line.contains('\n'));
            let back = serde_json::from_str::<Step>(&line).unwrap();
            assert_eq!(serde_json::to_string(&back).unwrap(), line);
        }
    }
}

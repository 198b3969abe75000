//! A live session: the pipeline fed from this kernel's ring buffer, maps
//! and sock_diag rounds, and from this host's `/proc`; each step kept in
//! the recording when `--record` asked for one.

use std::{
    sync::{mpsc as std_mpsc, Arc, Mutex},
    time::{Duration, Instant, SystemTime, UNIX_EPOCH},
};

use aya::maps::{MapData, RingBuf};
use tcpq_common::stats;

use crate::engine::record::{Recorder, Step};
use crate::source::wire::Pod;
use crate::{
    engine::{
        demand::{self, Change, Demand},
        host::ProcHost,
        latency_ports::{self, LatencyPorts},
        maps::Maps,
        pipeline::{FlushInput, Pipeline},
    },
    export::sink::{Health, Sink, View},
    kernel::load::Loaded,
    source::poll::Round,
};

/// News of a counted kind asks for a sock_diag round at most this often.
const NEWS_WAKE_EVERY: Duration = Duration::from_millis(50);

pub struct Session {
    pub pipeline: Pipeline,
    pub host: ProcHost,
    pub maps: Maps,
    pub recorder: Option<Recorder>,
    /// The kernel's answers to "who accepted this connection", asked while
    /// a round was applied (recording only).
    pub accepted: Option<Arc<Mutex<Vec<Option<u32>>>>>,
    /// Asks the sock_diag thread for a round now (it also reads the
    /// kernel's counts): sent on news of a counted kind, at most every
    /// [`NEWS_WAKE_EVERY`].
    pub wake: std_mpsc::Sender<bool>,
    pub last_wake: Instant,
    pub last_flush: Instant,
    /// Programs attached per hook kind, as of the last change.
    pub probes: Vec<(String, u64)>,
    /// Most unconsumed ring-buffer bytes since the last flush.
    pub fill_peak: u64,
    pub ring_bytes: u32,
    /// On-demand syscall hooks: attached while a queue is filling.
    pub demand: Demand,
    pub demand_links: Option<Vec<aya::programs::trace_point::TracePointLinkId>>,
    pub latency_ports: LatencyPorts,
}

impl Session {
    fn record(&mut self, step: impl FnOnce(&mut ProcHost) -> Step) {
        if self.recorder.is_some() {
            let s = step(&mut self.host);
            if let Some(r) = self.recorder.as_mut() {
                r.step(&s);
            }
        }
    }

    pub fn drain(&mut self, ring: &mut RingBuf<MapData>) {
        let mut records = Vec::new();
        let mut news = false;
        while let Some(item) = ring.next() {
            news |= self.pipeline.records(&mut self.host, [&*item]);
            if self.recorder.is_some() {
                records.push(item.to_vec());
            }
        }
        if news && self.last_wake.elapsed() >= NEWS_WAKE_EVERY {
            self.last_wake = Instant::now();
            let _ = self.wake.send(false);
        }
        if !records.is_empty() {
            self.record(|h| Step::Records {
                t: now_ns(),
                records,
                answers: h.take_log(),
            });
        }
    }

    /// A sock_diag round, then what it decides in the kernel: the syscall
    /// hooks on demand and the latency ports; then accept() failures.
    pub fn round(&mut self, round: Round, loaded: Option<&mut Loaded>) {
        let copy = self.recorder.is_some().then(|| round.clone());
        self.pipeline.round(round);
        if let Some(round) = copy {
            let accepted = self
                .accepted
                .as_ref()
                .map(|a| std::mem::take(&mut *a.lock().unwrap_or_else(|e| e.into_inner())))
                .unwrap_or_default();
            self.record(|_| Step::Round {
                t: now_ns(),
                round,
                accepted,
            });
        }
        self.choose_latency_ports();
        if let Some(loaded) = loaded {
            self.syscall_demand(loaded);
            self.probes = loaded.probes(self.demand_links.is_some());
        }
        self.accept_errors();
    }

    pub fn accept_errors(&mut self) {
        let Some(counts) = self.maps.accept_errors() else {
            return;
        };
        let gone = self.pipeline.accept_errors(&mut self.host, &counts);
        self.maps.forget_accept_errors(&gone);
        self.record(|h| Step::AcceptErrors {
            t: now_ns(),
            counts,
            answers: h.take_log(),
        });
    }

    pub fn learn(&mut self) {
        self.pipeline.learn(&mut self.host);
        let answers = self.host.take_log();
        if !answers.is_empty() {
            self.record(|_| Step::Learn {
                t: now_ns(),
                answers,
            });
        }
    }

    pub fn flush(&mut self, sink: &mut dyn Sink) -> std::io::Result<()> {
        let at = SystemTime::now();
        self.last_flush = Instant::now();
        let input = FlushInput {
            at,
            lost: self.maps.stat(stats::RINGBUF_FULL),
            accepts: self.maps.accepts(),
            latency: self.maps.latency(),
        };
        let recorded = self.recorder.is_some().then(|| Step::Flush {
            t: now_ns(),
            at_ns: at
                .duration_since(UNIX_EPOCH)
                .map_or(0, |d| d.as_nanos() as u64),
            lost: input.lost,
            accepts: input
                .accepts
                .as_ref()
                .map(|v| v.iter().map(|(k, s)| (*k, Pod::of(s))).collect()),
            latency: input
                .latency
                .as_ref()
                .map(|v| v.iter().map(|(k, h)| (*k, Pod::of(h))).collect()),
            answers: Vec::new(),
        });
        let health = self.health();
        let done = self.pipeline.flush(&mut self.host, input, health, sink);
        self.fill_peak = 0;
        // The answers of this flush are known only once it ran.
        if let Some(mut step) = recorded {
            if let Step::Flush { answers, .. } = &mut step {
                *answers = self.host.take_log();
            }
            if let Some(r) = self.recorder.as_mut() {
                r.step(&step);
                r.flush();
            }
        }
        done
    }

    /// The agent's state for the sink. Moves the kernel's ring-buffer fill
    /// mark into `fill_peak` (cleared by `flush` only).
    pub fn health(&mut self) -> Health {
        self.fill_peak = self.fill_peak.max(self.maps.take_fill_mark());
        Health {
            received: self.pipeline.received,
            lost: self.maps.stat(stats::RINGBUF_FULL),
            undecodable: self.pipeline.undecodable,
            read_errors: self.maps.stat(stats::READ_ERRORS),
            ringbuf_fill: (self.fill_peak as f64 / self.ring_bytes as f64).min(1.0),
            probes: self.probes.clone(),
            owners_cached: self.host.resolver.len(),
            tracked_listeners: self.pipeline.agg.listener_infos().count(),
            map_losses: self.maps.losses(),
            overflows_missed_by_hooks: self.pipeline.agg.missed_overflows().total(),
        }
    }

    pub fn view(&mut self) -> View<'_> {
        let health = self.health();
        View {
            agg: &self.pipeline.agg,
            resolver: &self.host.resolver,
            health,
        }
    }

    /// On-demand syscall hooks: attached when a listener's accept queue is
    /// a quarter full, detached a while after all drained.
    fn syscall_demand(&mut self, loaded: &mut Loaded) {
        if loaded.deferred.is_empty() {
            return;
        }
        let infos = self.pipeline.agg.listener_infos().map(|(_, i)| i);
        let need = demand::needed(self.pipeline.settings.port, infos);
        self.demand.attached = self.demand_links.is_some();
        match self.demand.decide(need, Instant::now()) {
            Some(Change::Attach) => {
                match loaded.attach_deferred() {
                    Ok(links) => {
                        eprintln!("tcpq: accept queues are backing up: attached the accept() syscall hooks");
                        self.demand_links = Some(links);
                    }
                    Err(e) => {
                        eprintln!("tcpq: could not attach the accept() syscall hooks: {e:#}");
                        loaded.deferred.clear();
                    }
                }
            }
            Some(Change::Detach) => {
                if let Some(links) = self.demand_links.take() {
                    loaded.detach_deferred(links);
                    eprintln!("tcpq: accept queues drained: detached the accept() syscall hooks");
                }
            }
            None => {}
        }
    }

    fn choose_latency_ports(&mut self) {
        if !self.maps.has_latency() {
            return;
        }
        let wanted = latency_ports::wanted(
            self.pipeline.settings.port,
            self.pipeline.agg.listener_infos(),
        );
        let changes = self.latency_ports.choose(wanted, Instant::now());
        self.maps.set_latency_ports(&changes);
    }
}

/// CLOCK_MONOTONIC, the clock of the kernel's timestamps.
fn now_ns() -> u64 {
    crate::source::poll::monotonic_ns()
}

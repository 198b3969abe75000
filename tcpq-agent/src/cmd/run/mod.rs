//! `tcpq-agent run`: the per-host sidecar. The engine of `trace`, with its
//! reports sent to the pipelines a fleet already runs: JSON lines (stdout
//! or a file), Prometheus `/metrics`, RFC 5424 syslog.
//!
//! Start-up checks everything a user can get wrong — the config, the
//! metrics address, the syslog target, the output file — before anything is
//! loaded into the kernel, each failure one line and exit 1. Later failures
//! (a syslog server restarting, a full disk) are retried or counted, never
//! fatal. SIGHUP reopens the output file (logrotate) and reloads the config;
//! SIGTERM/SIGINT flush and exit 0.
//!
//! Here the wiring (runtimes, exporters, the snapshot task) and the
//! [`Sidecar`] sink; `emit` is the sink's side the engine calls, `output`
//! the JSON-lines file, `gauges` the metrics rebuilt from the engine's
//! view, `health` the `agent_health` line, `reload` SIGHUP, `syslog` the
//! switch to a reload's syslog target.

mod emit;
mod gauges;
mod health;
mod output;
mod reload;
mod syslog;

use std::{
    collections::HashMap,
    sync::{Arc, Mutex},
    time::{Duration, Instant, SystemTime},
};

use anyhow::{Context, Result};
use tokio::{
    signal::unix::{signal, SignalKind},
    sync::{mpsc, watch},
};

pub use crate::export::line::HealthLine;
use crate::{
    cmd::cli::RunArgs,
    cmd::config,
    engine::{self, Control},
    export::metrics::{self, Registry},
    export::syslog::Syslog,
};
use output::Output;

pub fn main(args: RunArgs) -> Result<()> {
    let cfg = config::Run::load(&args)?;
    crate::kernel::privs::require("run", crate::kernel::privs::Mode::Trace)?;
    // Each /metrics connection holds a descriptor: room for the server's
    // cap (see metrics::serve) beside the agent's own netns and /proc reads.
    metrics::raise_fd_limit();
    // The exporters (the /metrics server, the syslog sender) run on a
    // thread of their own: the engine's thread does blocking work (sock_diag
    // dumps, /proc walks, writes to a full pipe) that must not stall a
    // scrape or the syslog queue.
    let exporters = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .thread_name("tcpq-export")
        .enable_all()
        .build()
        .context("starting the exporter runtime")?;
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("starting the runtime")?;
    let result = rt.block_on(sidecar(args, cfg, exporters.handle().clone()));
    // A snapshot still walking /proc must not hold up the exit.
    rt.shutdown_timeout(Duration::from_secs(1));
    exporters.shutdown_timeout(Duration::from_secs(1));
    result
}

async fn sidecar(args: RunArgs, cfg: config::Run, exporters: tokio::runtime::Handle) -> Result<()> {
    // Before anything can take a while: SIGHUP's default action kills.
    let mut hangup = signal(SignalKind::hangup())?;
    let out = Output::open(cfg.output_file.clone())?;
    let registry = Arc::new(Mutex::new(Registry::new(cfg.max_series, cfg.series_ttl)));
    gauges::describe(&mut registry.lock().unwrap_or_else(|e| e.into_inner()));
    if let Some(addr) = cfg.metrics_address.clone() {
        let reg = registry.clone();
        exporters
            .spawn(async move {
                let listener = metrics::bind(&addr).await?;
                tokio::spawn(metrics::serve(listener, reg));
                anyhow::Ok(())
            })
            .await??;
    }
    let syslog = match cfg.syslog.clone() {
        Some(c) => {
            let s = exporters.spawn(Syslog::start(c)).await??;
            eprintln!("tcpq: sending events to syslog {}", s.target());
            Some(s)
        }
        None => None,
    };
    let syslog_stats = syslog.as_ref().map(Syslog::stats);
    let otlp = match cfg.otlp.clone() {
        Some(c) => {
            let o = exporters
                .spawn(async move { crate::export::otlp::Otlp::start(c) })
                .await?;
            let e = &o.config().endpoint;
            eprintln!(
                "tcpq: exporting OTLP/HTTP logs and metrics to http://{}:{}{}",
                e.host, e.port, e.prefix
            );
            Some(o)
        }
        None => None,
    };
    let (tx, rx) = mpsc::channel(8);
    let hup_tx = tx.clone();
    tokio::spawn(async move {
        while hangup.recv().await.is_some() {
            if hup_tx.send(Control::Reload).await.is_err() {
                break;
            }
        }
    });
    let (every_tx, every_rx) = watch::channel(cfg.snapshot_interval);
    tokio::spawn(snapshots(every_rx, cfg.detect.port, tx));
    let mut sink = Sidecar {
        exporters,
        syslog_stats,
        args,
        cfg: cfg.clone(),
        out,
        syslog,
        next_syslog: Arc::new(Mutex::new(None)),
        registry,
        owners: HashMap::new(),
        snapshot_every: every_tx,
        warned_overflow: false,
        expired_at: Instant::now(),
        otlp,
        otlp_next: Instant::now(),
        started: SystemTime::now(),
        lines_lost: 0,
        out_failing: None,
    };
    let result = engine::engine(cfg.detect.engine(), &mut sink, Some(rx)).await;
    sink.close().await;
    result
}

/// Every `interval`: `status`'s rows, gathered on a blocking thread (they
/// walk /proc and every namespace), sent to the engine.
async fn snapshots(
    mut every: watch::Receiver<Option<Duration>>,
    port: Option<u16>,
    tx: mpsc::Sender<Control>,
) {
    // The first one at once: it names the owners of listeners older than
    // the agent (the queue gauges' labels).
    let mut first = true;
    loop {
        let interval = *every.borrow_and_update();
        match interval {
            None => {
                if every.changed().await.is_err() {
                    return;
                }
                continue;
            }
            Some(_) if first => first = false,
            Some(d) => {
                tokio::select! {
                    _ = tokio::time::sleep(d) => {}
                    r = every.changed() => { if r.is_err() { return } continue; }
                }
            }
        }
        let snap = tokio::task::spawn_blocking(move || crate::cmd::status::collect(port)).await;
        match snap {
            Ok(Ok(snap)) => {
                if tx.send(Control::Snapshot(snap)).await.is_err() {
                    return;
                }
            }
            Ok(Err(e)) => eprintln!("tcpq: snapshot failed: {e:#}"),
            Err(e) => eprintln!("tcpq: snapshot failed: {e}"),
        }
    }
}

/// The sink of `run`: every line to the JSON output, events to syslog
/// and OTLP too, counts and gauges to the registry.
struct Sidecar {
    /// Where syslog senders run.
    exporters: tokio::runtime::Handle,
    /// The syslog counters, shared by every sender this agent ran (a
    /// reload to a new target keeps the sender and its queue; one that
    /// removes syslog drains it in the background).
    syslog_stats: Option<Arc<crate::export::syslog::Stats>>,
    args: RunArgs,
    cfg: config::Run,
    out: Output,
    syslog: Option<Syslog>,
    /// A connection to the syslog target of a reload, taken over once made.
    next_syslog: Arc<
        Mutex<
            Option<(
                crate::export::syslog::Connection,
                crate::export::syslog::Config,
            )>,
        >,
    >,
    registry: Arc<Mutex<Registry>>,
    /// Listener inode → owner, from the last snapshot's rows, for the
    /// labels of listeners whose owner the engine has not resolved.
    owners: HashMap<u32, crate::owner::resolve::Owner>,
    snapshot_every: watch::Sender<Option<Duration>>,
    warned_overflow: bool,
    expired_at: Instant,
    /// OTLP/HTTP export, when configured; the next metrics export.
    otlp: Option<crate::export::otlp::Otlp>,
    otlp_next: Instant,
    started: SystemTime,
    /// JSON lines lost to output errors, in total.
    lines_lost: u64,
    /// While writes fail: `lines_lost` when they started failing.
    out_failing: Option<u64>,
}

impl Sidecar {
    fn registry(&self) -> std::sync::MutexGuard<'_, Registry> {
        self.registry.lock().unwrap_or_else(|e| e.into_inner())
    }
}

#[cfg(test)]
mod tests {
    use super::gauges::describe;
    use super::*;
    use crate::model::Event;
    use crate::model::Measure;
    use crate::model::{Kind, Next, Stage};

    #[test]
    fn every_event_kind_has_a_metric() {
        for k in [
            Kind::ListenOverflow(Stage::Syn, Next::Unknown),
            Kind::ListenDrop(Stage::Ack),
            Kind::SynQueueDrop { reason: "x" },
            Kind::SyncookiesSent,
            Kind::SynackRetransmit,
            Kind::ResetSent {
                reason: "x",
                kernel_reason: "y".into(),
            },
            Kind::ResetReceived { state: "x" },
            Kind::ConnectError { error: "x".into() },
            Kind::AcceptError { error: "x".into() },
            Kind::CloseWait,
            Kind::AcceptLatency,
        ] {
            assert!(Event::ALL.contains(&k.event()), "{k:?}");
        }
        let mut r = Registry::new(10, Duration::from_secs(60));
        describe(&mut r);
        let text = r.render();
        for e in Event::ALL {
            match e.measure() {
                Measure::Counter { name, .. } | Measure::Gauge { name, .. } => {
                    assert!(text.contains(&format!("# TYPE {name} ")), "{name}")
                }
                Measure::Other => {}
            }
        }
        // Every kind but the gauge and the histogram is a counter.
        for e in Event::ALL
            .iter()
            .filter(|e| !matches!(**e, Event::CloseWait | Event::AcceptLatency))
        {
            let Measure::Counter { name, .. } = e.measure() else {
                panic!("{e:?}")
            };
            assert!(
                name.starts_with("tcpq_") && name.ends_with("_total"),
                "{name}"
            );
        }
        assert_eq!(
            Event::ListenOverflow.measure(),
            Measure::Counter {
                name: "tcpq_listen_overflows_total",
                help: "Connections lost to a full accept queue (ListenOverflows)."
            }
        );
    }
}

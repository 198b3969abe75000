//! The engine: load and attach (`start`), then the pipeline (`pipeline`)
//! fed from the kernel (`session`, `maps`) until a signal, `--duration` or
//! the `--pid`'s exit; reports go to a sink. `tcpq-agent trace` runs it
//! with the console sink, `run` with the sidecar's, `top` with its tally;
//! `replay` feeds the pipeline from a recording instead.

pub mod demand;
pub mod host;
pub mod latency_ports;
pub mod maps;
pub mod options;
pub mod pipeline;
pub mod record;
pub mod session;
pub mod start;
pub mod summary;

use std::{io, time::Duration};

use anyhow::{anyhow, Result};
use tokio::{
    signal::unix::{signal, SignalKind},
    sync::mpsc,
};

use crate::{export::sink::Sink, source::poll, verdict::status::Snapshot};

/// What the sidecar asks of a running engine.
pub enum Control {
    /// SIGHUP: the sink reopens and reloads.
    Reload,
    /// Periodic status rows, gathered off the engine's thread.
    Snapshot(Snapshot),
}

/// Runs until SIGINT/SIGTERM, `--duration`, or the `--pid` exits; every
/// report goes to `sink`. `control` carries the sidecar's requests.
pub async fn engine(
    args: options::Options,
    sink: &mut dyn Sink,
    control: Option<mpsc::Receiver<Control>>,
) -> Result<()> {
    let mut e = start::start(args).await?;
    let failed = run_loop(&mut e, sink, control).await?;
    let failed = match failed {
        Some(f) => {
            e.session.drain(e.ring.get_mut());
            Some(f)
        }
        None => last_round(&mut e, sink).await.err(),
    };
    if let Some(r) = e.session.recorder.as_mut() {
        r.flush();
    }
    summary::print(&e, sink.lines_lost());
    match failed {
        // "output: No space left on device", "output: Broken pipe"
        Some(e) => Err(anyhow!("output: {}", os_reason(&e))),
        None => Ok(()),
    }
}

/// What woke the loop.
enum Wake {
    Ring,
    Round(poll::Round),
    Tick,
    Control(Control),
    Stop,
}

/// The loop: events, rounds, flushes. Returns the output's error, if one
/// stopped it.
async fn run_loop(
    e: &mut start::Engine,
    sink: &mut dyn Sink,
    mut control: Option<mpsc::Receiver<Control>>,
) -> Result<Option<io::Error>> {
    let mut sigint = signal(SignalKind::interrupt())?;
    let mut sigterm = signal(SignalKind::terminate())?;
    let duration = e.args.duration;
    let deadline = async move {
        match duration {
            Some(d) => tokio::time::sleep(d).await,
            None => std::future::pending().await,
        }
    };
    tokio::pin!(deadline);
    let mut tick = tokio::time::interval(e.args.interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    tick.tick().await;
    loop {
        let next_control = async {
            match control.as_mut() {
                Some(c) => c.recv().await,
                None => std::future::pending().await,
            }
        };
        let wake = tokio::select! {
            r = e.ring.readable_mut() => { r?.clear_ready(); Wake::Ring }
            r = e.rounds.recv() => Wake::Round(r.ok_or_else(|| anyhow!("the sock_diag poller stopped"))?),
            _ = tick.tick() => Wake::Tick,
            c = next_control => match c {
                Some(c) => Wake::Control(c),
                None => { control = None; Wake::Ring }
            },
            _ = sigint.recv() => Wake::Stop,
            _ = sigterm.recv() => Wake::Stop,
            _ = &mut deadline => Wake::Stop,
        };
        let s = &mut e.session;
        let mut flush = false;
        let mut round = None;
        match wake {
            Wake::Stop => return Ok(None),
            Wake::Control(Control::Reload) => {
                if let Some(f) = sink.reload() {
                    s.pipeline.set_filters(f);
                }
            }
            Wake::Control(Control::Snapshot(snap)) => {
                let view = s.view();
                if let Err(err) = sink.snapshot(snap, &view) {
                    return Ok(Some(err));
                }
            }
            Wake::Tick => flush = true,
            Wake::Round(r) => round = Some(r),
            Wake::Ring => {}
        }
        // Events first: a snapshot is only settled against the events
        // stamped before it.
        s.drain(e.ring.get_mut());
        if let Some(r) = round {
            s.round(r, Some(&mut e.loaded));
        }
        s.learn();
        // After a quiet interval, the first news goes out at once; then one
        // line per listener per interval.
        let quiet = s.last_flush.elapsed() >= e.args.interval;
        if flush || (quiet && s.pipeline.agg.has_pending()) {
            tick.reset();
            if let Err(err) = s.flush(sink) {
                // A full disk, a closed pipe (`| head`): stop, say so once
                // the summary is out, exit non-zero.
                return Ok(Some(err));
            }
            if let Some(pid) = e.args.pid {
                if !std::path::Path::new(&format!("/proc/{pid}")).exists() {
                    eprintln!("tcpq: process {pid} exited");
                    return Ok(None);
                }
            }
        }
    }
}

/// Counts what happened up to the stop, then flushes.
async fn last_round(e: &mut start::Engine, sink: &mut dyn Sink) -> io::Result<()> {
    let s = &mut e.session;
    let mut applied = false;
    if s.wake.send(true).is_ok() {
        if let Ok(Some(r)) = tokio::time::timeout(Duration::from_secs(5), e.rounds.recv()).await {
            s.drain(e.ring.get_mut());
            s.round(r, None);
            applied = true;
        }
    }
    if !applied {
        s.accept_errors();
    }
    s.learn();
    s.drain(e.ring.get_mut());
    s.flush(sink)
}

pub use crate::source::netns::os_reason;

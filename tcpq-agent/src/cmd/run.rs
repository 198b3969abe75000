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

use std::{
    collections::HashMap,
    fs::{File, OpenOptions},
    io,
    path::PathBuf,
    sync::{Arc, Mutex},
    time::{Duration, Instant, SystemTime},
};

use anyhow::{anyhow, Context, Result};
use serde_json::Value;
use tokio::{
    signal::unix::{signal, SignalKind},
    sync::{mpsc, watch},
};

use crate::{
    cmd::cli::RunArgs,
    cmd::config,
    engine::{self, Control},
    export::head::Head,
    export::labels,
    export::metrics::{self, Labels, Registry, Type},
    export::sink::{AgentFilters, LineOut, RawStdout, Sink, View},
    export::syslog::Syslog,
    export::Report,
    model::{Event, Measure},
    source::latency::{self, Summary},
};

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
    describe(&mut registry.lock().unwrap_or_else(|e| e.into_inner()));
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
    let result = engine::engine(cfg.detect.clone(), &mut sink, Some(rx)).await;
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

/// JSON lines: stdout, or a file reopened on SIGHUP. Each line is written
/// whole or counted lost ([`LineOut`]: one write per line, a newline
/// repair after a partial one), so a full disk costs lines, counted in
/// `tcpq_output_lines_lost_total`, and never glues two together.
enum Output {
    Stdout(LineOut<RawStdout>),
    File { path: PathBuf, w: LineOut<File> },
}

impl Output {
    fn open(path: Option<PathBuf>) -> Result<Output> {
        Ok(match path {
            None => Output::Stdout(LineOut::new(RawStdout)),
            Some(path) => {
                let f = open_append(&path).map_err(|e| {
                    anyhow!("output file {}: {}", path.display(), config::io_reason(&e))
                })?;
                // A line cut by a full disk (or a crash) before this open:
                // the first write ends it.
                let mid_line = ends_mid_line(&f);
                Output::File {
                    path,
                    w: LineOut::resume(f, mid_line),
                }
            }
        })
    }

    fn line(&mut self, v: &Value) -> io::Result<()> {
        let line = crate::export::json::line(v);
        match self {
            Output::Stdout(w) => w.line(&line),
            Output::File { w, .. } => w.line(&line),
        }
    }

    fn path(&self) -> Option<&PathBuf> {
        match self {
            Output::Stdout(_) => None,
            Output::File { path, .. } => Some(path),
        }
    }
}

/// Whether a file's last byte is something other than a newline.
fn ends_mid_line(f: &File) -> bool {
    use std::os::unix::fs::FileExt;
    let len = f.metadata().map(|m| m.len()).unwrap_or(0);
    let mut last = [b'\n'];
    len > 0 && f.read_exact_at(&mut last, len - 1).is_ok() && last[0] != b'\n'
}

fn open_append(path: &PathBuf) -> io::Result<File> {
    // Readable too: `ends_mid_line` looks at the last byte.
    OpenOptions::new()
        .create(true)
        .read(true)
        .append(true)
        .open(path)
}

/// The sidecar's `agent_health` line: the engine's health and its own.
pub struct HealthLine<'a> {
    pub at: SystemTime,
    pub engine: &'a crate::export::sink::Health,
    pub metric_series: usize,
    pub metric_series_overflowed: u64,
    pub netns_unreadable: u64,
    pub owner_lookup_failures: u64,
    /// Syslog messages dropped and truncated, when syslog ran.
    pub syslog: Option<(u64, u64)>,
    pub output_lines_lost: u64,
}

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

/// The families that exist whether or not anything happened yet.
fn describe(r: &mut Registry) {
    for (name, help, ty) in [
        ("tcpq_listen_queue_length", "Connections waiting in a listener's accept queue (ss Recv-Q).", Type::Gauge),
        ("tcpq_listen_queue_limit", "A listener's accept-queue limit, min(backlog, somaxconn) (ss Send-Q); summed over an SO_REUSEPORT group's members.", Type::Gauge),
        ("tcpq_local_port_range_size", "Ports in a network namespace's net.ipv4.ip_local_port_range.", Type::Gauge),
        ("tcpq_time_wait_sockets", "Sockets in TIME_WAIT in a network namespace, each holding a local port.", Type::Gauge),
        ("tcpq_accept_latency_seconds", "Time from handshake completion to accept(), measured while a listener's queue fills (or for detect.port).", Type::Histogram),
        ("tcpq_events_received_total", "Kernel events the agent received.", Type::Counter),
        ("tcpq_events_lost_total", "Kernel events lost because the ring buffer was full.", Type::Counter),
        ("tcpq_events_undecodable_total", "Kernel events the agent could not decode.", Type::Counter),
        ("tcpq_kernel_read_errors_total", "Failed kernel memory reads in the eBPF programs.", Type::Counter),
        ("tcpq_kernel_map_losses_total", "What the kernel's maps could not hold: accept() failures not counted (map=ACCEPT_ERRORS loss=map_full), LRU entries evicted (ACCEPTS, ACCEPT_LATENCY: evicted), accepts missed (ACCEPT_ENTRY: entry_missing).", Type::Counter),
        ("tcpq_ringbuf_fill_ratio", "Most of the kernel-to-agent ring buffer in use since the last report (0-1).", Type::Gauge),
        ("tcpq_probes_attached", "eBPF programs attached, per hook kind.", Type::Gauge),
        ("tcpq_tracked_listeners", "Listeners the agent tracks.", Type::Gauge),
        ("tcpq_owners_cached", "Socket owners the agent holds in memory.", Type::Gauge),
        ("tcpq_metric_series", "Metric series the agent exports.", Type::Gauge),
        ("tcpq_metric_series_overflowed_total", "Updates folded into overflow series because a family reached metrics.max_series.", Type::Counter),
        ("tcpq_output_errors_total", "Failed writes to the JSON-lines output (one per lost line: each line is one write), and failed reopens on SIGHUP.", Type::Counter),
        ("tcpq_output_lines_lost_total", "JSON lines not written (whole or in part: a partial line is ended with a newline at the next write) because the output failed.", Type::Counter),
        ("tcpq_netns_unreadable", "Network namespaces the agent could not read in its last sock_diag round (their listeners are not watched), by reason (open_denied, setns_denied, setns_failed, open_failed; proc_ns_denied: processes whose namespace could not be identified) and missing capability.", Type::Gauge),
        ("tcpq_owner_lookup_failures_total", "Socket owner lookups that failed, by reason (fd_denied: other processes' /proc/PID/fd unreadable) and missing capability.", Type::Counter),
    ] {
        r.describe(name, help, ty);
    }
    for event in Event::ALL {
        match event.measure() {
            Measure::Counter { name, help } => r.describe(name, help, Type::Counter),
            Measure::Gauge { name, help } => r.describe(name, help, Type::Gauge),
            Measure::Other => {}
        }
    }
}

impl Sidecar {
    fn registry(&self) -> std::sync::MutexGuard<'_, Registry> {
        self.registry.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// A line to the JSON output and, with its `head`, to syslog and OTLP;
    /// write errors are counted (a full disk must not stop the metrics).
    fn emit(&mut self, v: &Value, head: Option<Head>) {
        match self.out.line(v) {
            Ok(()) if self.out_failing.is_some() => {
                let since = self.out_failing.take().unwrap_or_default();
                eprintln!(
                    "tcpq: output: writing again; {} JSON lines lost meanwhile (tcpq_output_lines_lost_total)",
                    self.lines_lost - since
                );
            }
            Ok(()) => {}
            Err(e) => {
                self.lines_lost += 1;
                if self.out_failing.is_none() {
                    self.out_failing = Some(self.lines_lost - 1);
                    eprintln!(
                        "tcpq: output: {}: JSON lines are lost, and counted in tcpq_output_lines_lost_total, until writes work again",
                        engine::os_reason(&e)
                    );
                }
                let mut r = self.registry();
                r.inc("tcpq_output_errors_total", &Vec::new(), 1);
                r.inc("tcpq_output_lines_lost_total", &Vec::new(), 1);
            }
        }
        if let Some(head) = head {
            self.take_new_syslog();
            if let Some(s) = &self.syslog {
                s.send(&head, v);
            }
            if let Some(o) = &self.otlp {
                o.log(&head, v);
            }
        }
    }

    fn take_new_syslog(&mut self) {
        let ready = self
            .next_syslog
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .take();
        let Some((conn, c)) = ready else { return };
        match &mut self.syslog {
            // The queue (what waited for an unreachable old target too)
            // goes to the new one.
            Some(s) => {
                if !s.retarget(c.clone(), conn) {
                    eprintln!("tcpq: reload: syslog busy switching targets; send SIGHUP again");
                    return;
                }
            }
            None => {
                let _in = self.exporters.enter();
                let stats = self.syslog_stats.get_or_insert_with(Arc::default).clone();
                self.syslog = Some(Syslog::with(c.clone(), conn, stats));
            }
        }
        eprintln!("tcpq: sending events to syslog {}", c.target);
        self.cfg.syslog = Some(c);
    }

    /// Stops the syslog sender: it gets 5 s (in the background) to send
    /// what is queued; what is left then is counted as dropped.
    fn retire_syslog(&mut self) {
        if let Some(old) = self.syslog.take() {
            self.exporters.spawn(async move {
                old.flush(Duration::from_secs(5)).await;
                drop(old);
            });
        }
    }

    fn count(&mut self, report: &Report) {
        match report.pending.kind.event().measure() {
            Measure::Counter { name, help } => {
                let mut r = self.registry();
                r.describe(name, help, Type::Counter);
                r.inc(name, &labels::of(report), report.pending.count);
            }
            // Gauges are rebuilt from the engine's state at every flush.
            Measure::Gauge { .. } | Measure::Other => {}
        }
    }

    /// A listener's (or, without one, a port's) labels.
    fn listener_labels(
        &self,
        view: &View,
        netns: u32,
        inode: Option<u32>,
        info: &crate::model::ListenerInfo,
    ) -> Labels {
        let (process, container) = inode
            .map(|i| self.owner_labels(view, i))
            .unwrap_or_default();
        vec![
            (
                "server_address",
                match inode {
                    Some(_) => info.addr.to_string(),
                    None => String::new(),
                },
            ),
            ("server_port", info.port.to_string()),
            ("netns", netns.to_string()),
            ("process", process),
            ("container_id", container),
        ]
    }

    /// Process and container of a listener: the engine's resolver, else
    /// the last snapshot.
    fn owner_labels(&self, view: &View, inode: u32) -> (String, String) {
        let Some(o) = view.resolver.get(inode).or(self.owners.get(&inode)) else {
            return Default::default();
        };
        let placement = o.placement.as_ref();
        let container = placement.and_then(|p| p.container_id.clone());
        (o.name.clone(), container.unwrap_or_default())
    }

    fn gauges(&mut self, view: &View) {
        // Summed per label set: the members of an SO_REUSEPORT group share
        // address, port and owner.
        let mut len: HashMap<Labels, f64> = HashMap::new();
        let mut limit: HashMap<Labels, f64> = HashMap::new();
        for (k, info) in view.agg.listener_infos() {
            let l = self.listener_labels(view, k.netns, Some(k.inode), info);
            *len.entry(l.clone()).or_default() += info.queue_len as f64;
            *limit.entry(l).or_default() += info.queue_limit as f64;
        }
        let mut close_wait: HashMap<Labels, f64> = HashMap::new();
        for (netns, key, info, n) in view.agg.close_wait_now() {
            let l = self.listener_labels(view, netns, key.map(|k| k.inode), &info);
            *close_wait.entry(l).or_default() += n as f64;
        }
        // Local ports per namespace (of the namespaces with a listener):
        // the range's size and the TIME_WAIT sockets holding ports.
        let mut range: Vec<(Labels, f64)> = Vec::new();
        let mut time_wait: Vec<(Labels, f64)> = Vec::new();
        let mut seen = std::collections::HashSet::new();
        for (k, _) in view.agg.listener_infos() {
            if !seen.insert(k.netns) {
                continue;
            }
            let Some(st) = view.agg.netns_state(k.netns) else {
                continue;
            };
            let l = vec![("netns", k.netns.to_string())];
            if let Some((lo, hi)) = st.sysctls.port_range.filter(|(lo, hi)| lo <= hi) {
                range.push((l.clone(), f64::from(hi - lo) + 1.0));
            }
            if let Some(tw) = st.time_wait {
                time_wait.push((l, tw as f64));
            }
        }
        let (len, limit, close_wait): (Vec<_>, Vec<_>, Vec<_>) = (
            len.into_iter().collect(),
            limit.into_iter().collect(),
            close_wait.into_iter().collect(),
        );
        let h = &view.health;
        let syslog = self.syslog_stats.clone();
        let syslog_on = self.syslog.is_some();
        let reg = Arc::clone(&self.registry);
        let mut r = reg.lock().unwrap_or_else(|e| e.into_inner());
        r.replace_gauges("tcpq_listen_queue_length", len);
        r.replace_gauges("tcpq_listen_queue_limit", limit);
        if let Measure::Gauge { name, .. } = Event::CloseWait.measure() {
            r.replace_gauges(name, close_wait);
        }
        r.replace_gauges("tcpq_local_port_range_size", range);
        r.replace_gauges("tcpq_time_wait_sockets", time_wait);
        let none = Vec::new();
        r.set_counter("tcpq_events_received_total", &none, h.received);
        r.set_counter("tcpq_events_lost_total", &none, h.lost);
        r.set_counter("tcpq_events_undecodable_total", &none, h.undecodable);
        r.set_counter("tcpq_kernel_read_errors_total", &none, h.read_errors);
        r.set("tcpq_ringbuf_fill_ratio", &none, h.ringbuf_fill);
        for (map, loss, n) in h.map_losses.rows() {
            let labels = vec![("map", map.to_string()), ("loss", loss.to_string())];
            r.set_counter("tcpq_kernel_map_losses_total", &labels, n);
        }
        r.replace_gauges(
            "tcpq_probes_attached",
            h.probes
                .iter()
                .map(|(k, n)| (vec![("kind", k.clone())], *n as f64))
                .collect(),
        );
        r.set("tcpq_tracked_listeners", &none, h.tracked_listeners as f64);
        r.set("tcpq_owners_cached", &none, h.owners_cached as f64);
        let (unreadable, owner_failures) = crate::kernel::privs::loss_metrics();
        let labels = |reason: &'static str, cap: String| -> Labels {
            vec![("reason", reason.to_string()), ("capability", cap)]
        };
        r.replace_gauges(
            "tcpq_netns_unreadable",
            unreadable
                .into_iter()
                .map(|(reason, cap, n)| (labels(reason, cap), n as f64))
                .collect(),
        );
        for (reason, cap, n) in owner_failures {
            r.set_counter("tcpq_owner_lookup_failures_total", &labels(reason, cap), n);
        }
        if let Some(s) = syslog {
            use std::sync::atomic::Ordering::Relaxed;
            r.describe(
                "tcpq_syslog_messages_total",
                "Messages written to the syslog target.",
                Type::Counter,
            );
            r.describe(
                "tcpq_syslog_dropped_total",
                "Syslog messages lost: the queue was full, a datagram the socket refused as too big, or still queued when the sender stopped (exit, or syslog removed by a reload, after 5 s of draining).",
                Type::Counter,
            );
            r.describe(
                "tcpq_syslog_truncated_total",
                "Syslog messages sent cut to fit one datagram (largest fields shortened or removed, \"truncated\": true in the JSON).",
                Type::Counter,
            );
            r.describe(
                "tcpq_syslog_queue_length",
                "Syslog messages queued, not yet written.",
                Type::Gauge,
            );
            r.describe(
                "tcpq_syslog_connected",
                "1 while the syslog target is connected.",
                Type::Gauge,
            );
            r.set_counter("tcpq_syslog_messages_total", &none, s.sent.load(Relaxed));
            r.set_counter("tcpq_syslog_dropped_total", &none, s.dropped.load(Relaxed));
            r.set_counter(
                "tcpq_syslog_truncated_total",
                &none,
                s.truncated.load(Relaxed),
            );
            r.set(
                "tcpq_syslog_queue_length",
                &none,
                s.queued.load(Relaxed) as f64,
            );
            if syslog_on {
                r.set(
                    "tcpq_syslog_connected",
                    &none,
                    s.connected.load(Relaxed) as u8 as f64,
                );
            }
        }
        if let Some(o) = &self.otlp {
            use std::sync::atomic::Ordering::Relaxed;
            let st = &o.stats;
            for (name, help, v) in [
                ("tcpq_otlp_log_records_total", "Log records the OTLP receiver accepted.", st.log_records.load(Relaxed)),
                ("tcpq_otlp_log_records_dropped_total", "Log records dropped: OTLP queue full, or the receiver failed after retries.", st.log_records_dropped.load(Relaxed)),
                ("tcpq_otlp_metric_exports_total", "OTLP metrics exports the receiver accepted.", st.metric_exports.load(Relaxed)),
                ("tcpq_otlp_metric_exports_dropped_total", "OTLP metrics exports dropped (one still being retried, or failed after retries).", st.metric_exports_dropped.load(Relaxed)),
                ("tcpq_otlp_failed_requests_total", "OTLP requests that failed (each retry counts).", st.failed_requests.load(Relaxed)),
                ("tcpq_otlp_sent_bytes_total", "Protobuf payload bytes of accepted OTLP requests.", st.bytes.load(Relaxed)),
            ] {
                r.describe(name, help, Type::Counter);
                r.set_counter(name, &none, v);
            }
        }
        if self.expired_at.elapsed() >= Duration::from_secs(10) {
            r.expire(Instant::now());
            self.expired_at = Instant::now();
        }
        let series = r.series();
        r.set("tcpq_metric_series", &none, series as f64);
        let overflowed = r.overflowed();
        r.set_counter("tcpq_metric_series_overflowed_total", &none, overflowed);
        drop(r);
        if overflowed > 0 && !self.warned_overflow {
            self.warned_overflow = true;
            eprintln!(
                "tcpq: a metric family reached metrics.max_series={}: further label sets are counted in its \"overflow\" series (tcpq_metric_series_overflowed_total)",
                self.cfg.max_series
            );
        }
    }

    fn health_line(&self, view: &View) -> Value {
        let r = self.registry();
        let (unreadable, owner_failures) = crate::kernel::privs::loss_metrics();
        let total = |s: &crate::kernel::privs::LossSeries| s.iter().map(|(_, _, n)| n).sum::<u64>();
        let syslog = self.syslog_stats.as_ref().map(|s| {
            use std::sync::atomic::Ordering::Relaxed;
            (s.dropped.load(Relaxed), s.truncated.load(Relaxed))
        });
        crate::export::json::health(&HealthLine {
            at: SystemTime::now(),
            engine: &view.health,
            metric_series: r.series(),
            metric_series_overflowed: r.overflowed(),
            netns_unreadable: total(&unreadable),
            owner_lookup_failures: total(&owner_failures),
            syslog,
            output_lines_lost: self.lines_lost,
        })
    }

    async fn close(&mut self) {
        if self.lines_lost > 0 {
            eprintln!(
                "tcpq: output: {} JSON lines could not be written",
                self.lines_lost
            );
        }
        self.take_new_syslog();
        if let Some(s) = &self.syslog {
            s.flush(Duration::from_secs(5)).await;
        }
        // The last metrics, after the last flush.
        self.export_metrics(true);
        if let Some(o) = &self.otlp {
            o.flush(Duration::from_secs(5)).await;
        }
    }

    /// OTLP metrics from the registry, every `otlp.metrics_interval` (or
    /// now, with `force`).
    fn export_metrics(&mut self, force: bool) {
        let Some(o) = &self.otlp else { return };
        if !force && Instant::now() < self.otlp_next {
            return;
        }
        self.otlp_next = Instant::now() + o.config().metrics_interval;
        let m = {
            let r = self.registry.lock().unwrap_or_else(|e| e.into_inner());
            crate::export::otlp::metrics(&r, self.started, &labels::otlp_attr)
        };
        o.metrics(m);
    }
}

impl Sink for Sidecar {
    fn report(&mut self, r: &Report) -> io::Result<()> {
        self.count(r);
        self.emit(&crate::export::json::report(r), Some(Head::report(r)));
        Ok(())
    }

    fn lost(&mut self, at: SystemTime, n: u64) -> io::Result<()> {
        self.emit(&crate::export::json::lost(at, n), Some(Head::lost(at)));
        Ok(())
    }

    fn latency(&mut self, s: &Summary) {
        let l: Labels = vec![
            ("server_port", s.port.to_string()),
            ("netns", s.netns.to_string()),
        ];
        let counts = latency::fold(s, &latency::PROM_BOUNDS);
        self.registry().observe(
            "tcpq_accept_latency_seconds",
            &l,
            &latency::PROM_BOUNDS,
            &counts,
            s.sum_ns as f64 / 1e9,
        );
    }

    fn flushed(&mut self, view: &View) -> io::Result<()> {
        self.take_new_syslog();
        self.gauges(view);
        self.export_metrics(false);
        Ok(())
    }

    fn snapshot(&mut self, snap: crate::cmd::status::Snapshot, view: &View) -> io::Result<()> {
        for v in crate::export::json::status(&snap, "listener_snapshot") {
            self.emit(&v, None);
        }
        self.owners = (snap.rows.into_iter())
            .filter_map(|r| Some((r.sock.inode, r.owner?)))
            .collect();
        let h = self.health_line(view);
        self.emit(&h, None);
        Ok(())
    }

    fn reload(&mut self) -> Option<AgentFilters> {
        // The output file first: logrotate moved it, whatever the config says.
        let new = config::Run::load(&self.args);
        let path = match &new {
            Ok(n) => n.output_file.clone(),
            Err(_) => self.out.path().cloned(),
        };
        match Output::open(path) {
            Ok(o) => self.out = o,
            Err(e) => {
                self.registry()
                    .inc("tcpq_output_errors_total", &Vec::new(), 1);
                eprintln!("tcpq: reload: {e:#}; still writing to the old file")
            }
        }
        let new = match new {
            Ok(n) => n,
            Err(e) => {
                eprintln!("tcpq: reload: {e:#}; keeping the running configuration");
                return None;
            }
        };
        let restart = self.cfg.needs_restart(&new);
        if !restart.is_empty() {
            eprintln!(
                "tcpq: reload: {} changed: takes effect at the next restart; keeping the running value",
                restart.join(", ")
            );
        }
        // Only a change restarts the wait (frequent SIGHUPs must not starve
        // the snapshots).
        self.snapshot_every.send_if_modified(|v| {
            let changed = *v != new.snapshot_interval;
            *v = new.snapshot_interval;
            changed
        });
        self.registry().set_limits(new.max_series, new.series_ttl);
        if new.syslog != self.cfg.syslog {
            match new.syslog.clone() {
                None => {
                    self.retire_syslog();
                    self.next_syslog
                        .lock()
                        .unwrap_or_else(|e| e.into_inner())
                        .take();
                    self.cfg.syslog = None;
                    self.registry()
                        .replace_gauges("tcpq_syslog_connected", Vec::new());
                }
                Some(c) => {
                    let slot = self.next_syslog.clone();
                    self.exporters.spawn(async move {
                        match crate::export::syslog::connect_to(&c.target).await {
                            Ok(conn) => {
                                *slot.lock().unwrap_or_else(|e| e.into_inner()) = Some((conn, c))
                            }
                            Err(e) => eprintln!("tcpq: reload: {e:#}; syslog stays as it was"),
                        }
                    });
                }
            }
        }
        let filters = AgentFilters {
            comm: new.detect.comm.clone(),
            cgroup: new.detect.cgroup.clone(),
            container: new.detect.container.clone(),
            accept_latency_ms: new.detect.accept_latency_ms,
        };
        // What needs a restart keeps its running value.
        let mut kept = new;
        kept.detect = crate::cmd::cli::TraceArgs {
            comm: filters.comm.clone(),
            cgroup: filters.cgroup.clone(),
            container: filters.container.clone(),
            accept_latency_ms: filters.accept_latency_ms,
            ..self.cfg.detect.clone()
        };
        kept.metrics_address = self.cfg.metrics_address.clone();
        // The new syslog target counts once its sender is connected.
        if kept.syslog.is_some() {
            kept.syslog = self.cfg.syslog.clone();
        }
        self.cfg = kept;
        eprintln!("tcpq: reloaded the configuration and reopened the output");
        Some(filters)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
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

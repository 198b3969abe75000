//! The engine: attach, poll, aggregate, hand reports to a sink; flush on
//! exit. `tcpq-agent trace` runs it with the console sink, `run` with the
//! sidecar's.

use std::{
    collections::HashSet,
    io,
    sync::mpsc as std_mpsc,
    time::{Duration, SystemTime},
};

use anyhow::{anyhow, Context, Result};
use aya::maps::{HashMap as BpfHashMap, MapData, PerCpuArray, PerCpuHashMap, RingBuf};

use crate::source::storm::Storms;
use std::collections::HashMap;
use tcpq_common::{latency::LatencyHist, names::map, stats, AcceptStats};
use tokio::{
    io::unix::AsyncFd,
    signal::unix::{signal, SignalKind},
    sync::mpsc,
};

use crate::{
    aggregate::{Aggregator, Hooked},
    cmd::cli::{SyscallHooks, TraceArgs},
    export,
    export::sink::{AgentFilters, Health, MapCounts, MapLosses, Sink, View},
    kernel::caps::{self, Kfunc},
    kernel::load,
    kernel::tracefs,
    kernel::{self, Tp},
    model::ListenerKey,
    owner::resolve::{self, Owner, Resolver},
    source::accepts::{self, AcceptCounter, Accepts},
    source::decode,
    source::latency::{self, LatencyTracker},
    source::netns,
    source::poll,
};

/// What the sidecar asks of a running engine.
pub enum Control {
    /// SIGHUP: the sink reopens and reloads.
    Reload,
    /// Periodic status rows, gathered off the engine's thread.
    Snapshot(crate::cmd::status::Snapshot),
}

/// (tgid << 32 | errno) → failures, per CPU (`ACCEPT_ERRORS`).
type AcceptErrorMap = PerCpuHashMap<MapData, u64, u64>;
type LatencyMap = PerCpuHashMap<MapData, u64, LatencyHist>;

/// The deferred syscall hooks' state.
#[derive(Default)]
struct Demand {
    /// Links while attached.
    links: Option<Vec<aya::programs::trace_point::TracePointLinkId>>,
    /// Last time a listener needed them.
    last_need: Option<std::time::Instant>,
}

/// News of a counted kind asks for a sock_diag round at most this often.
const NEWS_WAKE_EVERY: Duration = Duration::from_millis(50);

/// How long on-demand syscall hooks stay attached after the last listener
/// that needed them recovered.
const DEMAND_LINGER: Duration = Duration::from_secs(60);

struct LatencyPorts {
    ports: aya::maps::HashMap<MapData, u64, u8>,
    on: aya::maps::Array<MapData, u32>,
    until: HashMap<u64, std::time::Instant>,
}

struct Session {
    /// `--netns` (or the `--pid`'s namespace): 0 = all.
    filter_netns: u32,
    args: TraceArgs,
    /// The kernel's per-listener accept counts, when `inet_csk_accept` is hooked.
    accepts: Option<(PerCpuHashMap<MapData, u64, AcceptStats>, AcceptCounter)>,
    pid_filter: Option<PidFilter>,
    agg: Aggregator,
    resolver: Resolver,
    stats: PerCpuArray<MapData, u64>,
    /// accept() failures per (tgid, errno), counted in the kernel, and what
    /// was already reported.
    accept_errors: Option<(AcceptErrorMap, HashMap<u64, u64>)>,
    /// Accept-latency histograms per (netns, port), with the tracker that
    /// turns them into per-interval summaries.
    latency: Option<(LatencyMap, LatencyTracker)>,
    /// Which listener ports the kernel measures, and until when.
    latency_ports: Option<LatencyPorts>,
    /// On-demand syscall hooks: attached while a queue is filling.
    demand: Demand,
    /// Names the kernel took in the process's own context (tgid → comm),
    /// for a process gone before /proc is read.
    comms: Option<BpfHashMap<MapData, u32, [u8; 16]>>,
    /// Asks the sock_diag thread for a round now (it also reads the
    /// kernel's counts): sent on news of a counted kind, at most every
    /// [`NEWS_WAKE_EVERY`].
    wake: std_mpsc::Sender<bool>,
    last_wake: std::time::Instant,
    received: u64,
    undecodable: u64,
    lost_reported: u64,
    last_flush: std::time::Instant,
    /// Programs attached per hook kind, as of the last change.
    probes: Vec<(String, u64)>,
    /// Most unconsumed ring-buffer bytes since the last flush.
    fill_peak: u64,
    /// Keys in `ACCEPTS` and `ACCEPT_LATENCY` at the last read, and
    /// `ACCEPT_LATENCY` keys removed here: with the kernel's counts of keys
    /// created, what the LRU maps evicted.
    accepts_present: u64,
    latency_present: u64,
    latency_removed: u64,
}

/// Runs until SIGINT/SIGTERM, `--duration`, or the `--pid` exits; every
/// report goes to `sink`. `control` carries the sidecar's requests.
pub async fn engine(
    args: TraceArgs,
    sink: &mut dyn Sink,
    mut control: Option<mpsc::Receiver<Control>>,
) -> Result<()> {
    let tracefs = tracefs::ensure_mounted()?;
    let pid_netns = match args.pid {
        Some(pid) => Some(
            netns::inode_of(std::path::Path::new(&format!("/proc/{pid}/ns/net")))
                .with_context(|| format!("--pid {pid}: cannot read its network namespace"))?,
        ),
        None => None,
    };
    let asked_netns = args
        .netns
        .as_deref()
        .map(crate::cmd::cli::netns_inode)
        .transpose()?;
    let filter_netns = match (pid_netns, asked_netns) {
        (Some(a), Some(b)) if a != b => anyhow::bail!(
            "--pid {} lives in network namespace {a}, not in --netns {b}",
            args.pid.unwrap_or(0)
        ),
        (a, b) => a.or(b).unwrap_or(0),
    };
    let (plan, facts) = kernel::discover(&tracefs, args.port.unwrap_or(0), filter_netns)?;
    let choices = caps::plan(&facts, args.attach);
    caps::check_plan(args.attach, &choices).map_err(|e| anyhow!(e))?;
    // Run-time stats cost a clock read per program run: only on request.
    let _stats_fd = if args.bpf_stats {
        Some(
            aya::sys::enable_stats(aya::sys::Stats::RunTime)
                .context("enabling BPF run-time stats")?,
        )
    } else {
        None
    };
    let syscall_mode = match args.syscall_hooks {
        SyscallHooks::Auto if args.pid.is_some() || args.port.is_some() => SyscallHooks::Always,
        SyscallHooks::Auto => SyscallHooks::OnDemand,
        m => m,
    };
    let mut plan = plan;
    plan.config.news_interval_ms = args.interval.as_millis().clamp(1, u32::MAX as u128) as u32;
    plan.config.ring_wake_bytes = args.ring_buffer_bytes / 4;
    if syscall_mode == SyscallHooks::Never {
        plan.hooks.retain(|h| h.category != "syscalls");
    }
    let mut loaded = load::load(
        &plan,
        &choices,
        args.ring_buffer_bytes,
        syscall_mode == SyscallHooks::OnDemand,
    )?;
    let refused: Vec<(&str, String)> = loaded
        .kfuncs
        .iter()
        .filter(|k| k.kind.is_none())
        .map(|k| (k.function(), k.notes.join("; ")))
        .collect();
    if let Some(e) = caps::forced_error(args.attach, &refused) {
        anyhow::bail!(e);
    }
    // Functions that could not be hooked, grouped by the reason (on a
    // kernel without fentry/kprobes they all fail alike: say it once).
    let mut unhooked: Vec<(String, Vec<&str>)> = Vec::new();
    for k in loaded
        .kfuncs
        .iter()
        .filter(|k| k.kind.is_none() && !k.notes.is_empty())
    {
        let why = k.notes.join("; ");
        match unhooked.iter_mut().find(|(w, _)| *w == why) {
            Some((_, fns)) => fns.push(k.function()),
            None => unhooked.push((why, vec![k.function()])),
        }
    }
    for (why, fns) in &unhooked {
        eprintln!(
            "tcpq: continuing without hooks on {} ({why})",
            fns.join(", ")
        );
    }
    for (what, why) in &loaded.skipped {
        eprintln!("tcpq: continuing without {what} ({why})");
    }
    let ring = RingBuf::try_from(
        loaded
            .ebpf
            .take_map(map::EVENTS)
            .ok_or_else(|| anyhow!("{} map missing", map::EVENTS))?,
    )?;
    // SAFETY: the ring buffer owns its fd and outlives the registration.
    let mut ring = unsafe { AsyncFd::register(ring) }
        .map_err(|e| anyhow!("watching the ring buffer: {}", e.into_parts().1))?;
    let stats = PerCpuArray::try_from(
        loaded
            .ebpf
            .take_map(map::STATS)
            .ok_or_else(|| anyhow!("{} map missing", map::STATS))?,
    )?;

    let accepts = match loaded.kind_of(Kfunc::CskAccept) {
        Some(_) => {
            let map = loaded
                .ebpf
                .take_map(map::ACCEPTS)
                .ok_or_else(|| anyhow!("{} map missing", map::ACCEPTS))?;
            Some((PerCpuHashMap::try_from(map)?, AcceptCounter::default()))
        }
        None => None,
    };
    let comms = loaded
        .ebpf
        .take_map(map::COMMS)
        .map(BpfHashMap::try_from)
        .transpose()?;
    let accept_errors = match loaded.has_syscall_hooks() {
        true => loaded
            .ebpf
            .take_map(map::ACCEPT_ERRORS)
            .map(PerCpuHashMap::try_from)
            .transpose()?
            .map(|m| (m, HashMap::new())),
        false => None,
    };
    // Needs both ends: the handshake (inet_sock_set_state) and the accept.
    let latency = match loaded.has_tracepoint(Tp::SockState) && loaded.has_syscall_hooks() {
        true => loaded
            .ebpf
            .take_map(map::ACCEPT_LATENCY)
            .map(PerCpuHashMap::try_from)
            .transpose()?
            .map(|m| (m, LatencyTracker::default())),
        false => None,
    };
    let latency_ports = match latency.is_some() {
        true => Some(LatencyPorts {
            ports: aya::maps::HashMap::try_from(
                loaded
                    .ebpf
                    .take_map(map::LATENCY_PORTS)
                    .ok_or_else(|| anyhow!("{} map missing", map::LATENCY_PORTS))?,
            )?,
            on: aya::maps::Array::try_from(
                loaded
                    .ebpf
                    .take_map(map::LATENCY_ON)
                    .ok_or_else(|| anyhow!("{} map missing", map::LATENCY_ON))?,
            )?,
            until: HashMap::new(),
        }),
        false => None,
    };
    let storms = Storms {
        map: PerCpuHashMap::try_from(
            loaded
                .ebpf
                .take_map(map::STORM)
                .ok_or_else(|| anyhow!("{} map missing", map::STORM))?,
        )?,
        tally: Default::default(),
    };
    let by_fd = loaded.kind_of(Kfunc::CskAccept).is_none();
    let accepter = accepts::accepter(&mut loaded.ebpf, by_fd)?;
    let (tx, mut rx) = mpsc::channel::<poll::Round>(4);
    let (wake, wake_rx) = std_mpsc::channel();
    let _poller = poll::spawn(args.poll_interval, tx, wake_rx, Some(storms))?;

    let mut s = Session {
        filter_netns,
        accepts,
        agg: Aggregator::new(
            plan.rst_reasons.clone(),
            args.port,
            Hooked {
                syn: loaded.kind_of(Kfunc::ConnRequest).is_some(),
                ack: loaded.kind_of(Kfunc::SynRecv4).is_some()
                    || loaded.has_tracepoint(Tp::KfreeSkb),
            },
        ),
        resolver: Resolver::new(Duration::from_millis(100)),
        stats,
        accept_errors,
        latency,
        latency_ports,
        demand: Demand::default(),
        comms,
        wake: wake.clone(),
        last_wake: std::time::Instant::now(),
        received: 0,
        undecodable: 0,
        lost_reported: 0,
        probes: loaded.probes(false),
        fill_peak: 0,
        accepts_present: 0,
        latency_present: 0,
        latency_removed: 0,
        // Quiet since start: the first news is printed at once.
        last_flush: std::time::Instant::now()
            .checked_sub(args.interval)
            .unwrap_or_else(std::time::Instant::now),
        pid_filter: args.pid.map(|pid| PidFilter {
            owner: Owner::of(pid),
            sockets: resolve::sockets_of(pid),
        }),
        args,
    };
    if let Some(a) = accepter {
        s.agg.set_accepter(a);
    }
    // Round 0 is the baseline: what listeners had dropped before we came.
    let first = rx
        .recv()
        .await
        .ok_or_else(|| anyhow!("the sock_diag poller stopped"))?;
    s.drain(ring.get_mut());
    let listeners: usize = first.snaps.iter().map(|n| n.listeners.len()).sum();
    let namespaces = first.snaps.len();
    s.apply(first);
    // Start-up parsed the kernel's BTF twice (ours and aya's); give that
    // memory back to the system rather than keep it for the agent's life.
    // SAFETY: plain glibc call, no pointers.
    unsafe { libc::malloc_trim(0) };
    eprintln!(
        "tcpq: tracing {listeners} listeners in {namespaces} network namespaces; hooks: {}, sock_diag every {:?}; reporting every {:?}",
        loaded.summary().join(", "),
        s.args.poll_interval,
        s.args.interval
    );

    let mut sigint = signal(SignalKind::interrupt())?;
    let mut sigterm = signal(SignalKind::terminate())?;
    let duration = s.args.duration;
    let deadline = async move {
        match duration {
            Some(d) => tokio::time::sleep(d).await,
            None => std::future::pending().await,
        }
    };
    tokio::pin!(deadline);
    let mut tick = tokio::time::interval(s.args.interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    tick.tick().await;

    let mut output_failed: Option<io::Error> = None;
    loop {
        let mut round = None;
        let mut flush = false;
        let mut asked = None;
        let next_control = async {
            match control.as_mut() {
                Some(c) => c.recv().await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            r = ring.readable_mut() => { r?.clear_ready(); }
            r = rx.recv() => { round = Some(r.ok_or_else(|| anyhow!("the sock_diag poller stopped"))?); }
            _ = tick.tick() => { flush = true; }
            c = next_control => match c {
                Some(c) => asked = Some(c),
                None => control = None,
            },
            _ = sigint.recv() => break,
            _ = sigterm.recv() => break,
            _ = &mut deadline => break,
        }
        match asked {
            Some(Control::Reload) => {
                if let Some(f) = sink.reload() {
                    s.set_filters(f);
                }
            }
            Some(Control::Snapshot(snap)) => {
                let view = s.view();
                if let Err(e) = sink.snapshot(snap, &view) {
                    output_failed = Some(e);
                    break;
                }
            }
            None => {}
        }
        // Events first: a snapshot is only settled against the events
        // stamped before it.
        s.drain(ring.get_mut());
        if let Some(r) = round {
            s.apply(r);
            s.syscall_demand(&mut loaded);
            s.probes = loaded.probes(s.demand.links.is_some());
            s.read_accept_errors();
        }
        s.learn_owners();
        // After a quiet interval, the first news goes out at once; then one
        // line per listener per interval.
        let quiet = s.last_flush.elapsed() >= s.args.interval;
        if flush || (quiet && s.agg.has_pending()) {
            tick.reset();
            if let Err(e) = s.flush(sink) {
                // A full disk, a closed pipe (`| head`): stop, say so once
                // the summary is out, exit non-zero.
                output_failed = Some(e);
                break;
            }
            if let Some(pid) = s.args.pid {
                if !std::path::Path::new(&format!("/proc/{pid}")).exists() {
                    eprintln!("tcpq: process {pid} exited");
                    break;
                }
            }
        }
    }

    // Last round: count what happened up to the stop, then flush (unless
    // the output already failed: nothing more can be written).
    if output_failed.is_none() {
        if wake.send(true).is_ok() {
            if let Ok(Some(r)) = tokio::time::timeout(Duration::from_secs(5), rx.recv()).await {
                s.drain(ring.get_mut());
                s.apply(r);
            }
        }
        s.read_accept_errors();
        s.learn_owners();
        s.drain(ring.get_mut());
        if let Err(e) = s.flush(sink) {
            output_failed = Some(e);
        }
    } else {
        s.drain(ring.get_mut());
    }
    let lost = s.stat(stats::RINGBUF_FULL);
    let unwritten = match sink.lines_lost() {
        0 => String::new(),
        n => format!("; {n} report lines not written (output failed)"),
    };
    eprintln!(
        "tcpq: done: {} kernel events received, {lost} lost (ring buffer full), {} undecodable, {} kernel read errors; {} socket owners cached{unwritten}",
        s.received,
        s.undecodable,
        s.stat(stats::READ_ERRORS),
        s.resolver.len()
    );
    eprintln!(
        "tcpq: kernel: {} ring-buffer records sent; counted in the kernel: {} news records dropped (counts kept), {} occurrences sent alone (map full)",
        s.stat(stats::RINGBUF_SENT),
        s.stat(stats::NEWS_DROPPED),
        s.stat(stats::STORM_MAP_FULL),
    );
    eprintln!("tcpq: kernel maps: {}", s.map_losses().summary());
    if s.args.bpf_stats {
        for (name, prog) in loaded.ebpf.programs() {
            if let Ok(info) = prog.info() {
                let runs = info.run_count();
                let ns = info.run_time().as_nanos() as u64;
                let avg = ns.checked_div(runs).unwrap_or(0);
                eprintln!("tcpq: cost {name} runs={runs} total_ns={ns} ns_per_run={avg}");
            }
        }
    }
    match output_failed {
        // "output: No space left on device", "output: Broken pipe"
        Some(e) => Err(anyhow!("output: {}", os_reason(&e))),
        None => Ok(()),
    }
}

/// An I/O error's message without the "(os error N)" tail.
pub fn os_reason(e: &io::Error) -> String {
    let s = e.to_string();
    s.split(" (os error").next().unwrap_or(&s).to_string()
}

impl Session {
    fn drain(&mut self, ring: &mut RingBuf<MapData>) {
        while let Some(item) = ring.next() {
            match decode::decode(&item) {
                Ok(ev) if ev.counted => {
                    // News: the counts come with the next sock_diag round.
                    self.received += 1;
                    if self.last_wake.elapsed() >= NEWS_WAKE_EVERY {
                        self.last_wake = std::time::Instant::now();
                        let _ = self.wake.send(false);
                    }
                }
                Ok(ev) => {
                    self.received += 1;
                    if ev.kind == tcpq_common::EventKind::ListenerUp {
                        self.resolver.seed(ev.inode, ev.aux);
                    }
                    self.agg.on_event(&ev);
                }
                Err(_) => self.undecodable += 1,
            }
        }
    }

    fn apply(&mut self, round: poll::Round) {
        let poll::Round {
            snaps: mut round,
            alive,
        } = round;
        // The kernel's counts first, each before the dump it came with:
        // a namespace filtered out below may carry another one's counts.
        for snap in &round {
            for d in snap.storm_before.iter().chain(&snap.storm_after) {
                match decode::decode_event(&d.ev) {
                    Ok(ev) => self.agg.on_events(&ev, d.n, (d.lo, d.hi)),
                    Err(_) => self.undecodable += 1,
                }
            }
        }
        if self.filter_netns != 0 {
            round.retain(|s| s.netns == self.filter_netns);
        }
        for snap in &round {
            self.agg.on_snapshot(snap);
        }
        self.agg.end_round(&alive);
        self.choose_latency_ports();
    }

    /// What the kernel's maps could not hold, so far.
    fn map_losses(&self) -> MapLosses {
        MapLosses::new(MapCounts {
            accept_errors_full: self.stat(stats::ACCEPT_ERRORS_MAP_FULL),
            accepts_inserted: self.stat(stats::ACCEPTS_INSERTED),
            accepts_present: self.accepts_present,
            latency_inserted: self.stat(stats::LATENCY_INSERTED),
            latency_present: self.latency_present,
            latency_removed: self.latency_removed,
            accept_entries_missing: self.stat(stats::ACCEPT_ENTRY_MISSING),
        })
    }

    fn stat(&self, index: u32) -> u64 {
        self.stats
            .get(&index, 0)
            .map(|v| v.iter().sum())
            .unwrap_or(0)
    }

    fn flush(&mut self, sink: &mut dyn Sink) -> io::Result<()> {
        let at = SystemTime::now();
        self.last_flush = std::time::Instant::now();
        let lost = self.stat(stats::RINGBUF_FULL);
        if lost > self.lost_reported {
            sink.lost(at, lost - self.lost_reported)?;
            self.lost_reported = lost;
        }
        let accepts = self.read_accepts();
        self.read_latency(sink);
        // Every line about to be written wants its owner, even if a scan
        // ran a moment ago (lines added just now, e.g. latency, too).
        let inodes: Vec<u32> = self.agg.pending_inodes().collect();
        self.resolver.learn_now(inodes);
        let pending = self.agg.take();
        let written = self.write_lines(&pending, accepts, at, sink);
        let view = self.view();
        let done = written.and_then(|()| sink.flushed(&view));
        self.fill_peak = 0;
        // Owners of sockets no longer tracked go, whether or not anything
        // was printed.
        let agg = &self.agg;
        self.resolver.retain(|ino| agg.tracks_inode(ino));
        if let Some(f) = &mut self.pid_filter {
            f.sockets.retain(|ino| agg.tracks_inode(*ino));
        }
        done
    }

    /// The agent's state for the sink. Moves the kernel's ring-buffer fill
    /// mark into `fill_peak` (cleared by `flush` only).
    fn view(&mut self) -> View<'_> {
        let fill = self
            .stats
            .get(&stats::RINGBUF_FILL_MAX, 0)
            .map(|v| v.iter().copied().max().unwrap_or(0))
            .unwrap_or(0);
        self.fill_peak = self.fill_peak.max(fill);
        let fill = self.fill_peak;
        if fill > 0 {
            if let Ok(cpus) = aya::util::nr_cpus() {
                if let Ok(zero) = aya::maps::PerCpuValues::try_from(vec![0u64; cpus]) {
                    let _ = self.stats.set(stats::RINGBUF_FILL_MAX, zero, 0);
                }
            }
        }
        View {
            agg: &self.agg,
            resolver: &self.resolver,
            health: Health {
                received: self.received,
                lost: self.stat(stats::RINGBUF_FULL),
                undecodable: self.undecodable,
                read_errors: self.stat(stats::READ_ERRORS),
                ringbuf_fill: (fill as f64 / self.args.ring_buffer_bytes as f64).min(1.0),
                probes: self.probes.clone(),
                owners_cached: self.resolver.len(),
                tracked_listeners: self.agg.listener_infos().count(),
                map_losses: self.map_losses(),
            },
        }
    }

    fn set_filters(&mut self, f: AgentFilters) {
        self.args.comm = f.comm;
        self.args.cgroup = f.cgroup;
        self.args.container = f.container;
        self.args.accept_latency_ms = f.accept_latency_ms;
    }

    fn write_lines(
        &self,
        pending: &[crate::model::Pending],
        accepts: Option<HashMap<ListenerKey, Accepts>>,
        at: SystemTime,
        sink: &mut dyn Sink,
    ) -> io::Result<()> {
        let mut failed = None;
        for p in pending {
            // The process the kernel named, else the holder of the
            // listener, else the holder of the socket the line is about.
            let named = p.pid.map(|pid| self.owner_of(pid));
            let owner = match &named {
                Some(o) => Some(o),
                None => p
                    .key
                    .map(|k| k.inode)
                    .or(p.inode)
                    .and_then(|i| self.resolver.get(i)),
            };
            if self.filter_netns != 0
                && p.netns
                    .or(p.key.map(|k| k.netns))
                    .is_some_and(|n| n != self.filter_netns)
            {
                continue;
            }
            if !self.owner_wanted(owner) {
                continue;
            }
            if let Some(f) = &self.pid_filter {
                let mine = match (p.pid, p.key) {
                    (Some(pid), _) => pid == f.owner.pid,
                    // A socket it holds; of an SO_REUSEPORT group whose
                    // every member it holds (an nginx worker), its own.
                    (None, Some(k)) => {
                        f.sockets.contains(&k.inode)
                            && (!self.resolver.in_group(k.inode)
                                || owner.is_none_or(|o| o.pid == f.owner.pid))
                    }
                    (None, None) => owner.is_some_and(|o| o.pid == f.owner.pid),
                };
                if !mine {
                    continue;
                }
            }
            let owner = match (&self.pid_filter, p.key) {
                (Some(f), Some(k)) if p.pid.is_none() && f.sockets.contains(&k.inode) => {
                    Some(&f.owner)
                }
                _ => owner,
            };
            let written = sink.report(&export::Report {
                at,
                pending: p,
                owner,
                accepts: p.key.and_then(|k| {
                    accepts
                        .as_ref()
                        .map(|a| a.get(&k).copied().unwrap_or_default())
                }),
                verdict: crate::verdict::explain::line(
                    p,
                    owner,
                    p.netns.and_then(|n| self.agg.netns_state(n)),
                ),
            });
            // Every line is tried (and counted by the sink if lost); the
            // first error is the answer.
            if let Err(e) = written {
                failed.get_or_insert(e);
            }
        }
        failed.map_or(Ok(()), Err)
    }

    /// accept() failures since the last call, per process and errno, with
    /// the process's descriptor use and its listener that backs up.
    fn read_accept_errors(&mut self) {
        let Some((map, seen)) = self.accept_errors.as_mut() else {
            return;
        };
        let now: Vec<(u64, u64)> = map
            .iter()
            .filter_map(|r| r.ok())
            .map(|(k, per_cpu)| (k, per_cpu.iter().sum()))
            .collect();
        // Only what the kernel still holds is remembered: a count below the
        // last one is a new entry (the key was deleted and made again).
        let mut prev = std::mem::take(seen);
        for &(key, total) in &now {
            seen.insert(key, total);
        }
        for (key, total) in now {
            let before = prev.remove(&key).unwrap_or(0);
            let n = if total >= before {
                total - before
            } else {
                total
            };
            if n == 0 {
                continue;
            }
            let pid = (key >> 32) as u32;
            let errno = key as u32;
            if self.pid_filter.as_ref().is_some_and(|f| f.owner.pid != pid) {
                continue;
            }
            let listener = self.agg.busiest_listener(&resolve::sockets_of(pid));
            let mut attrs = Vec::new();
            if let Some(n) = resolve::open_fds(pid) {
                attrs.push(crate::model::Fact::OpenFds(n as u64));
            }
            if let Some(n) = resolve::fd_limit(pid) {
                attrs.push(crate::model::Fact::FdLimit(n));
            }
            self.agg.on_accept_errors(pid, errno, n, listener, attrs);
        }
        // The map is not LRU: the keys of processes that exited, read for
        // the last time just now, make room (a dead process fails no more
        // accepts, so nothing is lost by deleting after the read).
        let gone: Vec<u64> = seen
            .keys()
            .copied()
            .filter(|key| !std::path::Path::new(&format!("/proc/{}", key >> 32)).exists())
            .collect();
        for key in gone {
            let _ = map.remove(&key);
            seen.remove(&key);
        }
    }

    /// On-demand syscall hooks: attached when a listener's accept queue is
    /// a quarter full (connections wait: the app is slow, stuck, or its
    /// accept() fails), detached a while after all drained.
    fn syscall_demand(&mut self, loaded: &mut load::Loaded) {
        if loaded.deferred.is_empty() {
            return;
        }
        let port = self.args.port;
        let need = self.agg.listener_infos().any(|(_, i)| {
            port.is_none_or(|p| p == i.port)
                && latency::worth_measuring(i.queue_len, i.queue_limit, i.port, None)
        });
        let d = &mut self.demand;
        if need {
            d.last_need = Some(std::time::Instant::now());
        }
        let needed = d.last_need.is_some_and(|t| t.elapsed() < DEMAND_LINGER);
        match (&d.links, needed) {
            (None, true) => {
                match loaded.attach_deferred() {
                    Ok(links) => {
                        eprintln!("tcpq: accept queues are backing up: attached the accept() syscall hooks");
                        d.links = Some(links);
                    }
                    Err(e) => {
                        eprintln!("tcpq: could not attach the accept() syscall hooks: {e:#}");
                        loaded.deferred.clear();
                    }
                }
            }
            (Some(_), false) => {
                if let Some(links) = d.links.take() {
                    loaded.detach_deferred(links);
                    eprintln!("tcpq: accept queues drained: detached the accept() syscall hooks");
                }
            }
            _ => {}
        }
    }

    /// Turns accept-latency measurement on in the kernel for listeners whose
    /// queue is filling (for a while after) and the `--port` asked about;
    /// off for the rest, so a healthy server pays nothing for it.
    fn choose_latency_ports(&mut self) {
        let Some(lp) = self.latency_ports.as_mut() else {
            return;
        };
        let now = std::time::Instant::now();
        let until = now + latency::KEEP_MEASURING;
        let was_on = !lp.until.is_empty();
        let mut wanted = Vec::new();
        if let Some(port) = self.args.port {
            // Any namespace, from the first connection on.
            wanted.push(latency::key(0, port));
        }
        for (k, info) in self.agg.listener_infos() {
            if latency::worth_measuring(info.queue_len, info.queue_limit, info.port, self.args.port)
            {
                wanted.push(latency::key(k.netns, info.port));
            }
        }
        // Only changes reach the kernel's maps.
        for k in wanted {
            if lp.until.insert(k, until).is_none() {
                let _ = lp.ports.insert(k, 1, 0);
            }
        }
        let mut stopped = Vec::new();
        lp.until.retain(|k, t| {
            let keep = *t > now;
            if !keep {
                let _ = lp.ports.remove(k);
                stopped.push(*k);
            }
            keep
        });
        let on = !lp.until.is_empty();
        if on != was_on {
            let _ = lp.on.set(0, on as u32, 0);
        }
        // A listener no longer measured keeps no histogram (in the kernel
        // or here): with listeners coming and going, memory stays flat.
        if let Some((map, _)) = self.latency.as_mut() {
            for k in stopped {
                if map.remove(&k).is_ok() {
                    self.latency_removed += 1;
                }
            }
        }
    }

    /// Accept latency since the last flush: a line for listeners whose
    /// p99 reached `--accept-latency-ms`.
    fn read_latency(&mut self, sink: &mut dyn Sink) {
        let Some((map, tracker)) = self.latency.as_mut() else {
            return;
        };
        let now: Vec<(u64, LatencyHist)> = map
            .iter()
            .filter_map(|r| r.ok())
            .map(|(k, per_cpu)| (k, latency::sum_cpus(per_cpu.iter())))
            .collect();
        self.latency_present = now.len() as u64;
        let threshold = (self.args.accept_latency_ms * 1e6) as u64;
        for s in tracker.update(now) {
            sink.latency(&s);
            if s.p99_ns >= threshold {
                self.agg.on_accept_latency(&s);
            }
        }
    }

    /// `--comm`, `--cgroup`, `--container`: whether a line's owner passes
    /// (a line without a known owner does not, when any is set).
    fn owner_wanted(&self, owner: Option<&Owner>) -> bool {
        let a = &self.args;
        if a.comm.is_none() && a.cgroup.is_none() && a.container.is_none() {
            return true;
        }
        let Some(o) = owner else { return false };
        if a.comm.as_deref().is_some_and(|c| !o.has_comm(c)) {
            return false;
        }
        let pl = o.placement.clone().unwrap_or_default();
        if a.cgroup
            .as_deref()
            .is_some_and(|c| !crate::owner::cgroup::cgroup_matches(&pl, c))
        {
            return false;
        }
        a.container
            .as_deref()
            .is_none_or(|c| crate::owner::cgroup::container_matches(&pl, c))
    }

    /// Accepts per listener since the last flush; None without the hook.
    fn read_accepts(&mut self) -> Option<HashMap<ListenerKey, Accepts>> {
        let (map, counter) = self.accepts.as_mut()?;
        let entries: Vec<_> = map
            .iter()
            .filter_map(|r| r.ok())
            .map(|(sk, per_cpu)| (sk, accepts::sum_cpus(per_cpu.iter())))
            .collect();
        self.accepts_present = entries.len() as u64;
        Some(counter.update(entries))
    }

    /// Everything /proc says about `pid`, named by the kernel when /proc
    /// no longer can (the process exited).
    fn owner_of(&self, pid: u32) -> Owner {
        let mut o = Owner::of(pid);
        if o.name == "?" {
            let comm = self.comms.as_ref().and_then(|m| m.get(&pid, 0).ok());
            if let Some(name) = comm.as_ref().and_then(|c| resolve::comm_name(c)) {
                o.name = name;
            }
        }
        o
    }

    /// Learns the owners of listeners that just showed up, while their
    /// processes are still there to ask.
    fn learn_owners(&mut self) {
        let inodes: Vec<u32> = self.agg.pending_inodes().collect();
        if let Some(f) = &mut self.pid_filter {
            f.sockets.extend(resolve::sockets_of(f.owner.pid));
        }
        self.resolver.set_groups(self.agg.reuseport_groups());
        self.resolver.learn(inodes);
    }
}

/// `--pid`: the process and every socket it has been seen holding.
struct PidFilter {
    owner: Owner,
    sockets: HashSet<u32>,
}

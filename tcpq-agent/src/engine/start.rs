//! Starting the engine: which namespace to watch, the attach plan, load
//! and attach, the maps, the sock_diag poller, the pipeline, the
//! recording; then the baseline round (what listeners dropped before we
//! came is history, not news).

use std::{
    collections::HashMap,
    sync::{mpsc as std_mpsc, Arc, Mutex},
    time::{Duration, Instant},
};

use anyhow::{anyhow, Context, Result};
use aya::maps::{HashMap as BpfHashMap, MapData, PerCpuHashMap, RingBuf};
use tcpq_common::names::map;
use tokio::{io::unix::AsyncFd, sync::mpsc};

use crate::engine::{
    options::{Options, SyscallHooks},
    record::{self, Recorder, Settings, Start, Step},
};
use crate::{
    engine::{
        demand::Demand, host::ProcHost, latency_ports::LatencyPorts, maps::Maps,
        pipeline::Pipeline, session::Session,
    },
    kernel::{
        self,
        caps::{self, Kfunc},
        load::{self, Loaded},
        tracefs, Tp,
    },
    owner::resolve::Resolver,
    source::accepts::Accepter,
    source::{accepts, netns, poll, storm::Storms},
};

/// A running engine: what the loop reads from and feeds.
pub struct Engine {
    pub args: Options,
    pub session: Session,
    pub ring: AsyncFd<RingBuf<MapData>>,
    pub rounds: mpsc::Receiver<poll::Round>,
    pub loaded: Loaded,
    pub _poller: std::thread::JoinHandle<()>,
    /// Run-time stats stay on while this is held (`--bpf-stats`).
    pub _stats_fd: Option<std::os::fd::OwnedFd>,
}

pub async fn start(args: Options) -> Result<Engine> {
    let tracefs = tracefs::ensure_mounted()?;
    let filter_netns = filter_netns(&args)?;
    let (mut plan, facts) = kernel::discover(&tracefs, args.port.unwrap_or(0), filter_netns)?;
    let choices = caps::plan(&facts, args.attach);
    caps::check_plan(args.attach, &choices).map_err(|e| anyhow!(e))?;
    // Run-time stats cost a clock read per program run: only on request.
    let stats_fd = match args.bpf_stats {
        true => Some(
            aya::sys::enable_stats(aya::sys::Stats::RunTime)
                .context("enabling BPF run-time stats")?,
        ),
        false => None,
    };
    let syscall_mode = match args.syscall_hooks {
        SyscallHooks::Auto if args.pid.is_some() || args.port.is_some() => SyscallHooks::Always,
        SyscallHooks::Auto => SyscallHooks::OnDemand,
        m => m,
    };
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
    say_what_is_missing(&loaded, args.attach)?;
    let ring = RingBuf::try_from(
        loaded
            .ebpf
            .take_map(map::EVENTS)
            .ok_or_else(|| anyhow!("{} map missing", map::EVENTS))?,
    )?;
    // SAFETY: the ring buffer owns its fd and outlives the registration.
    let ring = unsafe { AsyncFd::register(ring) }
        .map_err(|e| anyhow!("watching the ring buffer: {}", e.into_parts().1))?;
    let maps = Maps::take(&mut loaded)?;
    let storms = Storms {
        map: PerCpuHashMap::try_from(
            loaded
                .ebpf
                .take_map(map::STORM)
                .ok_or_else(|| anyhow!("{} map missing", map::STORM))?,
        )?,
        tally: Default::default(),
    };
    let settings = settings(
        &args,
        filter_netns,
        plan.rst_reasons.clone(),
        &loaded,
        &maps,
    );
    let (tx, rounds) = mpsc::channel::<poll::Round>(4);
    let (wake, wake_rx) = std_mpsc::channel();
    let poller = poll::spawn(args.poll_interval, tx, wake_rx, Some(storms))?;
    let session = session(&args, settings, &mut loaded, maps, wake)?;
    let mut e = Engine {
        args,
        session,
        ring,
        rounds,
        loaded,
        _poller: poller,
        _stats_fd: stats_fd,
    };
    baseline(&mut e).await?;
    Ok(e)
}

/// `--netns`, or the `--pid`'s namespace (both: they must agree); 0 = all.
fn filter_netns(args: &Options) -> Result<u32> {
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
        .map(|spec| netns::inode_named("--netns", spec))
        .transpose()?;
    Ok(match (pid_netns, asked_netns) {
        (Some(a), Some(b)) if a != b => anyhow::bail!(
            "--pid {} lives in network namespace {a}, not in --netns {b}",
            args.pid.unwrap_or(0)
        ),
        (a, b) => a.or(b).unwrap_or(0),
    })
}

/// A forced hook kind that did not load is an error; functions that could
/// not be hooked otherwise are said once per reason (on a kernel without
/// fentry/kprobes they all fail alike).
fn say_what_is_missing(loaded: &Loaded, attach: caps::AttachMode) -> Result<()> {
    let refused: Vec<(&str, String)> = loaded
        .kfuncs
        .iter()
        .filter(|k| k.kind.is_none())
        .map(|k| (k.function(), k.notes.join("; ")))
        .collect();
    if let Some(e) = caps::forced_error(attach, &refused) {
        anyhow::bail!(e);
    }
    let mut unhooked: Vec<(String, Vec<&str>)> = Vec::new();
    for (f, why) in refused.iter().filter(|(_, why)| !why.is_empty()) {
        match unhooked.iter_mut().find(|(w, _)| w == why) {
            Some((_, fns)) => fns.push(f),
            None => unhooked.push((why.clone(), vec![f])),
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
    Ok(())
}

fn settings(
    args: &Options,
    netns: u32,
    rst_reasons: HashMap<u32, String>,
    loaded: &Loaded,
    maps: &Maps,
) -> Settings {
    Settings {
        netns,
        port: args.port,
        pid: args.pid,
        comm: args.comm.clone(),
        cgroup: args.cgroup.clone(),
        container: args.container.clone(),
        accept_latency_ms: args.accept_latency_ms,
        rst_reasons,
        hooked_syn: loaded.kind_of(Kfunc::ConnRequest).is_some(),
        hooked_ack: loaded.kind_of(Kfunc::SynRecv4).is_some()
            || loaded.has_tracepoint(Tp::KfreeSkb),
        accepts: maps.has_accepts(),
        accept_errors: maps.has_accept_errors(),
        latency: maps.has_latency(),
        accepter: false,
    }
}

fn session(
    args: &Options,
    mut settings: Settings,
    loaded: &mut Loaded,
    maps: Maps,
    wake: std_mpsc::Sender<bool>,
) -> Result<Session> {
    let comms = loaded
        .ebpf
        .take_map(map::COMMS)
        .map(BpfHashMap::try_from)
        .transpose()?;
    let by_fd = loaded.kind_of(Kfunc::CskAccept).is_none();
    let accepter = accepts::accepter(&mut loaded.ebpf, by_fd)?;
    settings.accepter = accepter.is_some();
    let recording = args.record.is_some();
    let mut host = ProcHost {
        resolver: Resolver::new(Duration::from_millis(100)),
        comms,
        log: recording.then(Vec::new),
    };
    let mut pipeline = Pipeline::new(settings.clone(), &mut host);
    let accepted = (recording && accepter.is_some()).then(|| Arc::new(Mutex::new(Vec::new())));
    if let Some(a) = accepter {
        pipeline.agg.set_accepter(logged(a, accepted.clone()));
    }
    let recorder = match &args.record {
        Some(path) => {
            let mut r = Recorder::create(path, &start_record(settings))?;
            r.step(&Step::Begin {
                answers: host.take_log(),
            });
            Some(r)
        }
        None => None,
    };
    Ok(Session {
        pipeline,
        host,
        maps,
        recorder,
        accepted,
        wake,
        last_wake: Instant::now(),
        // Quiet since start: the first news is printed at once.
        last_flush: Instant::now()
            .checked_sub(args.interval)
            .unwrap_or_else(Instant::now),
        probes: loaded.probes(false),
        fill_peak: 0,
        ring_bytes: args.ring_buffer_bytes,
        demand: Demand::default(),
        demand_links: None,
        latency_ports: LatencyPorts::default(),
    })
}

/// The kernel's accepter, keeping each answer when recording.
fn logged(a: Accepter, log: Option<Arc<Mutex<Vec<Option<u32>>>>>) -> Accepter {
    match log {
        None => a,
        Some(log) => Box::new(move |k| {
            let r = a(k);
            log.lock().unwrap_or_else(|e| e.into_inner()).push(r);
            r
        }),
    }
}

fn start_record(settings: Settings) -> Start {
    Start {
        recording: record::VERSION,
        agent: env!("CARGO_PKG_VERSION").into(),
        kernel: std::fs::read_to_string("/proc/sys/kernel/osrelease")
            .unwrap_or_default()
            .trim()
            .into(),
        settings,
    }
}

/// Round 0 is the baseline: what listeners had dropped before we came.
async fn baseline(e: &mut Engine) -> Result<()> {
    let first = e
        .rounds
        .recv()
        .await
        .ok_or_else(|| anyhow!("the sock_diag poller stopped"))?;
    e.session.drain(e.ring.get_mut());
    let listeners: usize = first.snaps.iter().map(|n| n.listeners.len()).sum();
    let namespaces = first.snaps.len();
    e.session.round(first, None);
    // Start-up parsed the kernel's BTF twice (ours and aya's); give that
    // memory back to the system rather than keep it for the agent's life.
    // SAFETY: plain glibc call, no pointers.
    unsafe { libc::malloc_trim(0) };
    eprintln!(
        "tcpq: tracing {listeners} listeners in {namespaces} network namespaces; hooks: {}, sock_diag every {:?}; reporting every {:?}",
        e.loaded.summary().join(", "),
        e.args.poll_interval,
        e.args.interval
    );
    Ok(())
}

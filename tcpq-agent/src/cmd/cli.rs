//! Command line. Parsing only; every check that needs the system lives in
//! `validate`.

use std::time::Duration;

use anyhow::{bail, Result};
use clap::{Args, Parser, Subcommand};

use crate::{export::Format, kernel::caps::AttachMode};

#[derive(Parser, Debug)]
#[command(
    name = "tcpq-agent",
    version,
    about = "Which listening socket of which process is losing TCP connections, and why"
)]
pub struct Cli {
    /// The running kernel's BTF from this file instead of
    /// /sys/kernel/btf/vmlinux (a kernel without CONFIG_DEBUG_INFO_BTF;
    /// btfhub ships one `<uname -r>.btf` per release).
    #[arg(long, global = true, value_name = "PATH")]
    pub btf: Option<String>,
    /// Run without these capabilities (comma-separated, e.g.
    /// CAP_SYS_ADMIN,CAP_SYS_PTRACE), accepting what is lost: namespaces
    /// the agent cannot enter and owners it cannot read, each reported on
    /// stderr and in the health metrics.
    #[arg(long, global = true, value_name = "CAPS", value_parser = cap_list)]
    pub allow_missing_caps: Option<CapList>,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Subcommand, Debug)]
pub enum Command {
    /// Report accept-queue overflows and listener drops as they happen.
    Trace(TraceArgs),
    /// One-shot table of every TCP listener: queue, limit, drops, SYN
    /// queue, CLOSE_WAIT, owner, and a verdict.
    Status {
        /// Only listeners on this local port.
        #[arg(long, value_name = "PORT", value_parser = port, allow_negative_numbers = true)]
        port: Option<u16>,
        /// A table, or one JSON object per listener.
        #[arg(long, value_enum, default_value_t = Format::Text)]
        output: Format,
    },
    /// Run unattended (per-host sidecar): the detection of `trace`, as
    /// JSON lines to stdout or a file, Prometheus /metrics and syslog.
    /// SIGHUP reopens the output file and reloads the config.
    Run(RunArgs),
    /// Live full-screen view of every listener (needs a terminal): queue
    /// fill, drop rates, verdict of the selected row, client-side errors.
    /// Keys: ↑/↓ select, s sort, / filter, p pause, q quit.
    Top(TopArgs),
    /// Feed a recording (`trace --record FILE`) through the pipeline:
    /// the lines `trace` printed, on any machine, without root.
    Replay {
        /// The recording.
        #[arg(value_name = "FILE")]
        file: std::path::PathBuf,
        /// Readable lines, or one JSON object per line.
        #[arg(long, value_enum, default_value_t = Format::Text)]
        output: Format,
    },
    /// Show what this kernel offers, the attach plan and why.
    Doctor {
        /// Force a hook kind for the kernel-function hooks.
        #[arg(long, value_enum, default_value_t = AttachMode::Auto)]
        attach: AttachMode,
    },
}

pub use crate::engine::options::SyscallHooks;

#[derive(Args, Debug, Clone)]
pub struct TraceArgs {
    /// Only listeners owned by this process (it holds their file descriptor).
    #[arg(long, value_name = "PID", value_parser = pid, allow_negative_numbers = true)]
    pub pid: Option<u32>,
    /// Only listeners on this local port.
    #[arg(long, value_name = "PORT", value_parser = port, allow_negative_numbers = true)]
    pub port: Option<u16>,
    /// Only this network namespace: its inode number (as tcpq prints it) or
    /// a path that opens it (/run/netns/NAME, /proc/PID/ns/net).
    #[arg(long, value_name = "NETNS", allow_negative_numbers = true)]
    pub netns: Option<String>,
    /// Only sockets a process with this name (comm) holds.
    #[arg(long, value_name = "NAME")]
    pub comm: Option<String>,
    /// Only sockets of processes in this cgroup (or below it), e.g.
    /// /system.slice/nginx.service.
    #[arg(long, value_name = "PATH")]
    pub cgroup: Option<String>,
    /// Only sockets of processes in this container (id or its prefix, at
    /// least 4 characters).
    #[arg(long, value_name = "ID")]
    pub container: Option<String>,
    /// Kernel-function hooks: fentry where possible, else kprobe, else
    /// tracepoints and sock_diag (`auto`), or force one kind.
    #[arg(long, value_enum, default_value_t = AttachMode::Auto)]
    pub attach: AttachMode,
    /// Output format: one readable line, or one JSON object, per report.
    #[arg(long, value_enum, default_value_t = Format::Text)]
    pub output: Format,
    /// Stop after this many seconds (default: until Ctrl-C / SIGTERM).
    #[arg(long, value_name = "SECS", value_parser = seconds, allow_negative_numbers = true)]
    pub duration: Option<Duration>,
    /// Report once per this many seconds, one line per listener and kind.
    #[arg(long, value_name = "SECS", default_value = "1", value_parser = seconds, allow_negative_numbers = true)]
    pub interval: Duration,
    /// How often every listener's counters are read over sock_diag.
    #[arg(long, value_name = "SECS", default_value = "0.25", value_parser = seconds, allow_negative_numbers = true)]
    pub poll_interval: Duration,
    /// Size of the kernel→agent ring buffer (a power of two, at least one
    /// page). Small values are for tests of loss accounting.
    #[arg(long, value_name = "BYTES", default_value_t = 1 << 20, value_parser = ring_bytes, allow_negative_numbers = true, hide = true)]
    pub ring_buffer_bytes: u32,
    /// Measure the kernel programs (BPF_ENABLE_STATS, for this process's
    /// lifetime only) and print runs and ns/run per program on exit.
    #[arg(long)]
    pub bpf_stats: bool,
    /// accept() syscall hooks (accept errors, accept latency). Enabling any
    /// syscall tracepoint slows every syscall on the host a little, so by
    /// default (`auto`) they are attached only while some listener's accept
    /// queue is a quarter full (and a minute after) — or always with
    /// --pid/--port.
    #[arg(long, value_enum, default_value_t = SyscallHooks::Auto)]
    pub syscall_hooks: SyscallHooks,
    /// Report a listener's accept latency (handshake done → accept()) for
    /// an interval whose p99 reaches this many milliseconds.
    #[arg(long, value_name = "MS", default_value_t = 10.0, value_parser = millis, allow_negative_numbers = true)]
    pub accept_latency_ms: f64,

    /// Record every input (ring-buffer records, sock_diag rounds, the
    /// kernel maps' readings, what /proc answered) to FILE, for
    /// `tcpq-agent replay FILE` on any machine.
    #[arg(long, value_name = "FILE")]
    pub record: Option<std::path::PathBuf>,
}

/// `top`: `trace`'s filters and hook choices; the screen instead of lines.
#[derive(Args, Debug, Clone)]
pub struct TopArgs {
    /// Only listeners owned by this process (it holds their file descriptor).
    #[arg(long, value_name = "PID", value_parser = pid, allow_negative_numbers = true)]
    pub pid: Option<u32>,
    /// Only listeners on this local port.
    #[arg(long, value_name = "PORT", value_parser = port, allow_negative_numbers = true)]
    pub port: Option<u16>,
    /// Only this network namespace (inode number or path).
    #[arg(long, value_name = "NETNS", allow_negative_numbers = true)]
    pub netns: Option<String>,
    /// Only sockets a process with this name (comm) holds.
    #[arg(long, value_name = "NAME")]
    pub comm: Option<String>,
    /// Only sockets of processes in this cgroup (or below it).
    #[arg(long, value_name = "PATH")]
    pub cgroup: Option<String>,
    /// Only sockets of processes in this container (id prefix).
    #[arg(long, value_name = "ID")]
    pub container: Option<String>,
    /// Kernel-function hooks (as for `trace`).
    #[arg(long, value_enum, default_value_t = AttachMode::Auto)]
    pub attach: AttachMode,
    /// Seconds between screen updates (at most 1).
    #[arg(long, value_name = "SECS", default_value = "1", value_parser = seconds, allow_negative_numbers = true)]
    pub interval: Duration,
    /// How often every listener's counters are read over sock_diag.
    #[arg(long, value_name = "SECS", default_value = "0.25", value_parser = seconds, allow_negative_numbers = true)]
    pub poll_interval: Duration,
    /// accept() syscall hooks (as for `trace`).
    #[arg(long, value_enum, default_value_t = SyscallHooks::Auto)]
    pub syscall_hooks: SyscallHooks,
    /// Verdicts call accept latency slow from this p99, in ms.
    #[arg(long, value_name = "MS", default_value_t = 10.0, value_parser = millis, allow_negative_numbers = true)]
    pub accept_latency_ms: f64,
    /// Stop after this many seconds (tests; default: until q).
    #[arg(long, value_name = "SECS", value_parser = seconds, allow_negative_numbers = true, hide = true)]
    pub duration: Option<Duration>,
}

impl TopArgs {
    /// The engine's settings: `trace`'s, with the same filters.
    pub fn to_trace(&self) -> TraceArgs {
        TraceArgs {
            pid: self.pid,
            port: self.port,
            netns: self.netns.clone(),
            comm: self.comm.clone(),
            cgroup: self.cgroup.clone(),
            container: self.container.clone(),
            attach: self.attach,
            output: Format::Text,
            duration: self.duration,
            interval: self.interval.min(Duration::from_secs(1)),
            poll_interval: self.poll_interval,
            ring_buffer_bytes: 1 << 20,
            bpf_stats: false,
            syscall_hooks: self.syscall_hooks,
            accept_latency_ms: self.accept_latency_ms,
            record: None,
        }
    }
}

/// `run`: a config file, and flags that override it (unset flags leave the
/// file's value, or the default, alone).
#[derive(Args, Debug, Clone, Default)]
pub struct RunArgs {
    /// TOML config file (see packaging/tcpq.toml).
    #[arg(long, value_name = "FILE")]
    pub config: Option<std::path::PathBuf>,
    /// Only listeners on this local port.
    #[arg(long, value_name = "PORT", value_parser = port, allow_negative_numbers = true)]
    pub port: Option<u16>,
    /// Only this network namespace (inode number or path).
    #[arg(long, value_name = "NETNS", allow_negative_numbers = true)]
    pub netns: Option<String>,
    /// Only sockets a process with this name holds.
    #[arg(long, value_name = "NAME")]
    pub comm: Option<String>,
    /// Only sockets of processes in this cgroup (or below it).
    #[arg(long, value_name = "PATH")]
    pub cgroup: Option<String>,
    /// Only sockets of processes in this container (id prefix).
    #[arg(long, value_name = "ID")]
    pub container: Option<String>,
    /// Kernel-function hooks (as for `trace`).
    #[arg(long, value_enum)]
    pub attach: Option<AttachMode>,
    /// accept() syscall hooks (as for `trace`).
    #[arg(long, value_enum)]
    pub syscall_hooks: Option<SyscallHooks>,
    /// Accept-latency threshold for accept_latency lines, in ms.
    #[arg(long, value_name = "MS", value_parser = millis, allow_negative_numbers = true)]
    pub accept_latency_ms: Option<f64>,
    /// Seconds between reports.
    #[arg(long, value_name = "SECS", value_parser = seconds, allow_negative_numbers = true)]
    pub interval: Option<Duration>,
    /// Seconds between sock_diag reads.
    #[arg(long, value_name = "SECS", value_parser = seconds, allow_negative_numbers = true)]
    pub poll_interval: Option<Duration>,
    /// JSON lines to this file ("-" = stdout); reopened on SIGHUP.
    #[arg(long, value_name = "PATH")]
    pub output_file: Option<std::path::PathBuf>,
    /// Seconds between listener_snapshot/agent_health lines (0 = off).
    #[arg(long, value_name = "SECS", value_parser = millis, allow_negative_numbers = true)]
    pub snapshot_interval: Option<f64>,

    /// Record the engine's inputs to FILE (see `trace --record`).
    #[arg(long, value_name = "FILE")]
    pub record: Option<std::path::PathBuf>,

    /// Prometheus /metrics on HOST:PORT ("" or "off" = none).
    #[arg(long, value_name = "HOST:PORT")]
    pub metrics_address: Option<String>,
    /// Most label sets per metric family; more go to an "overflow" series.
    #[arg(long, value_name = "N", value_parser = count, allow_negative_numbers = true)]
    pub max_series: Option<u32>,
    /// RFC 5424 syslog target: unix:///dev/log, udp://HOST:PORT, tcp://HOST:PORT ("off" = none).
    #[arg(long, value_name = "URL")]
    pub syslog: Option<String>,
    /// syslog facility (daemon, local0 … local7, user).
    #[arg(long, value_name = "NAME")]
    pub syslog_facility: Option<String>,
    /// OTLP/HTTP (protobuf) base URL, e.g. http://127.0.0.1:4318 ("off" =
    /// none; default: otlp.endpoint, else OTEL_EXPORTER_OTLP_ENDPOINT).
    #[arg(long, value_name = "URL")]
    pub otlp_endpoint: Option<String>,
    /// Seconds between OTLP metrics exports.
    #[arg(long, value_name = "SECS", value_parser = seconds, allow_negative_numbers = true)]
    pub otlp_metrics_interval: Option<Duration>,
    /// Stop after this many seconds (tests; default: until SIGTERM).
    #[arg(long, value_name = "SECS", value_parser = seconds, allow_negative_numbers = true, hide = true)]
    pub duration: Option<Duration>,
}

/// Capability numbers (`--allow-missing-caps`).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CapList(pub Vec<u32>);

fn cap_list(s: &str) -> Result<CapList, String> {
    crate::kernel::privs::parse_list(s).map(CapList)
}

/// A value that starts with `-` and is otherwise a number.
fn negative(s: &str) -> Result<(), String> {
    match s.trim().strip_prefix('-') {
        Some(rest) if rest.parse::<f64>().is_ok() => {
            Err(format!("{s}: negative values are not allowed"))
        }
        _ => Ok(()),
    }
}

fn pid(s: &str) -> Result<u32, String> {
    negative(s)?;
    match s.parse::<u32>() {
        Ok(0) => Err("0 is not a process id".into()),
        Ok(v) if v <= 4_194_304 => Ok(v),
        Ok(v) => Err(format!("{v} is above the largest process id (4194304)")),
        Err(_) => Err(format!("`{s}` is not a process id")),
    }
}

fn port(s: &str) -> Result<u16, String> {
    negative(s)?;
    match s.parse::<u64>() {
        Ok(0) => Err("0 is not a port (1-65535)".into()),
        Ok(v) if v <= 65535 => Ok(v as u16),
        Ok(v) => Err(format!("{v} is not in 1..=65535")),
        Err(_) => Err(format!("`{s}` is not a port number (1-65535)")),
    }
}

fn count(s: &str) -> Result<u32, String> {
    negative(s)?;
    match s.parse::<u32>() {
        Ok(0) => Err("0: must be at least 1".into()),
        Ok(v) => Ok(v),
        Err(_) => Err(format!("`{s}` is not a count (1 to 4294967295)")),
    }
}

fn ring_bytes(s: &str) -> Result<u32, String> {
    negative(s)?;
    let v: u32 = s
        .parse()
        .map_err(|_| format!("`{s}` is not a number of bytes"))?;
    if v < 4096 || !v.is_power_of_two() || v > 1 << 30 {
        return Err(format!(
            "{v} must be a power of two from 4096 to 1073741824"
        ));
    }
    Ok(v)
}

fn millis(s: &str) -> Result<f64, String> {
    negative(s)?;
    match s.parse::<f64>() {
        Ok(v) if v.is_finite() && v >= 0.0 => Ok(v),
        _ => Err(format!("`{s}` is not a number of milliseconds")),
    }
}

fn seconds(s: &str) -> Result<Duration, String> {
    negative(s)?;
    let v: f64 = s
        .parse()
        .map_err(|_| format!("`{s}` is not a number of seconds"))?;
    if !(v.is_finite() && v > 0.0 && v <= 366.0 * 86400.0) {
        return Err(format!("{s} is out of range (0 < SECS <= 31622400)"));
    }
    Ok(Duration::from_secs_f64(v))
}

/// Checks that need the system: the process exists, the namespace is
/// one, this process has the capabilities (`what` is the subcommand).
pub fn validate(what: &str, args: &TraceArgs) -> Result<()> {
    if let Some(pid) = args.pid {
        check_pid(pid)?;
    }
    check_filters(args)?;
    crate::kernel::privs::require(what, crate::kernel::privs::Mode::Trace)?;
    if let Some(spec) = &args.netns {
        netns_inode(spec)?;
    }
    if let Some(path) = &args.record {
        check_record(path)?;
    }
    Ok(())
}

/// `--record FILE`: its directory must exist; FILE itself is created (or
/// emptied) once the kernel programs are loaded.
fn check_record(path: &std::path::Path) -> Result<()> {
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d,
        _ => std::path::Path::new("."),
    };
    if !dir.is_dir() {
        bail!(
            "--record {}: no such directory {}",
            path.display(),
            dir.display()
        );
    }
    if path.is_dir() {
        bail!("--record {}: is a directory", path.display());
    }
    Ok(())
}

/// The checks of values that need no system access (also for config files).
pub fn check_filters(args: &TraceArgs) -> Result<()> {
    if let Some(c) = &args.container {
        if c.len() < 4 || !c.chars().all(|ch| ch.is_ascii_hexdigit()) {
            bail!("--container {c}: expected a container id or a prefix of at least 4 hex digits");
        }
    }
    if let Some(c) = &args.cgroup {
        if !c.starts_with('/') {
            bail!("--cgroup {c}: expected a cgroup path such as /system.slice/nginx.service");
        }
    }
    if args.interval < Duration::from_millis(10) || args.poll_interval < Duration::from_millis(10) {
        bail!("--interval and --poll-interval must be at least 0.01 s");
    }
    Ok(())
}

/// The inode of the namespace `--netns` names: a number, or a path.
pub fn netns_inode(spec: &str) -> Result<u32> {
    netns_inode_named("--netns", spec)
}

/// [`netns_inode`], the error naming `key` (a flag or a config key).
pub fn netns_inode_named(key: &str, spec: &str) -> Result<u32> {
    crate::source::netns::inode_named(key, spec)
}

/// Whether the process exists (its /proc entry); refuses 0.
fn check_pid(pid: u32) -> Result<()> {
    if pid == 0 || !std::path::Path::new(&format!("/proc/{pid}")).exists() {
        bail!("--pid {pid}: no such process");
    }
    Ok(())
}

impl TraceArgs {
    /// What the engine is asked to do (all but the output format, which
    /// is the sink's).
    pub fn engine(&self) -> crate::engine::options::Options {
        crate::engine::options::Options {
            pid: self.pid,
            port: self.port,
            netns: self.netns.clone(),
            comm: self.comm.clone(),
            cgroup: self.cgroup.clone(),
            container: self.container.clone(),
            attach: self.attach,
            duration: self.duration,
            interval: self.interval,
            poll_interval: self.poll_interval,
            ring_buffer_bytes: self.ring_buffer_bytes,
            bpf_stats: self.bpf_stats,
            syscall_hooks: self.syscall_hooks,
            accept_latency_ms: self.accept_latency_ms,
            record: self.record.clone(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(args: &[&str]) -> Result<Cli, clap::Error> {
        Cli::try_parse_from(std::iter::once("tcpq-agent").chain(args.iter().copied()))
    }

    #[test]
    fn parses_trace_flags() {
        let c = parse(&[
            "trace",
            "--pid",
            "1",
            "--port",
            "80",
            "--output",
            "json",
            "--duration",
            "2.5",
        ])
        .unwrap();
        let Command::Trace(t) = c.command else {
            panic!()
        };
        assert_eq!((t.pid, t.port, t.output), (Some(1), Some(80), Format::Json));
        assert_eq!(t.duration, Some(Duration::from_millis(2500)));
        assert_eq!(t.interval, Duration::from_secs(1));
    }

    #[test]
    fn rejects_bad_values() {
        for bad in [
            vec!["trace", "--port", "70000"],
            vec!["trace", "--port", "0"],
            vec!["trace", "--duration", "-1"],
            vec!["trace", "--duration", "soon"],
            vec!["trace", "--output", "xml"],
            vec!["trace", "--bogus"],
            vec!["frobnicate"],
            vec!["trace", "--ring-buffer-bytes", "5000"],
            vec!["trace", "--attach", "uprobe"],
            vec!["doctor", "--attach", "magic"],
        ] {
            assert!(parse(&bad).is_err(), "{bad:?} accepted");
        }
    }

    #[test]
    fn negative_numbers_are_named_as_such() {
        for bad in [
            vec!["trace", "--duration", "-1"],
            vec!["trace", "--interval", "-0.5"],
            vec!["trace", "--port", "-80"],
            vec!["trace", "--pid", "-1"],
            vec!["trace", "--accept-latency-ms", "-3"],
            vec!["run", "--max-series", "-5"],
            vec!["top", "--poll-interval", "-1"],
        ] {
            let e = parse(&bad).unwrap_err().to_string();
            assert!(
                e.contains("negative values are not allowed"),
                "{bad:?}: {e}"
            );
        }
        assert!(
            parse(&["trace", "--netns", "-3"]).is_ok(),
            "validated later"
        );
        assert_eq!(
            netns_inode("-3").unwrap_err().to_string(),
            "--netns -3: negative values are not allowed (a namespace inode is a positive number)"
        );
    }

    #[test]
    fn a_missing_process_is_named() {
        let c = parse(&["trace", "--pid", "4000000"]).unwrap();
        let Command::Trace(t) = c.command else {
            panic!("not trace")
        };
        assert_eq!(
            validate("trace", &t).unwrap_err().to_string(),
            "--pid 4000000: no such process"
        );
    }
}

//! `tcpq-agent run`'s configuration: a TOML file (`packaging/tcpq.toml` is
//! the documented example) with command-line flags that override it.
//!
//! Parsing is strict — an unknown key or a wrong type is an error naming the
//! file, the line and the key — because a sidecar that silently ignores a
//! misspelt `adress` runs for weeks without the metrics anyone expected.

use std::{
    path::{Path, PathBuf},
    time::Duration,
};

use anyhow::{anyhow, bail, Result};
use serde::Deserialize;

use crate::{
    cmd::cli::{RunArgs, SyscallHooks, TraceArgs},
    export::syslog,
    export::Format,
    kernel::caps::AttachMode,
};

/// The file, as written. Every key is optional; defaults live in `Run`.
#[derive(Debug, Default, Deserialize, Clone, PartialEq)]
#[serde(deny_unknown_fields, default)]
struct File {
    detect: Detect,
    output: Output,
    metrics: Metrics,
    syslog: Syslog,
    otlp: Otlp,
}

#[derive(Debug, Default, Deserialize, Clone, PartialEq)]
#[serde(deny_unknown_fields, default)]
struct Detect {
    port: Option<u16>,
    netns: Option<String>,
    comm: Option<String>,
    cgroup: Option<String>,
    container: Option<String>,
    attach: Option<String>,
    syscall_hooks: Option<String>,
    accept_latency_ms: Option<Number>,
    interval: Option<Number>,
    poll_interval: Option<Number>,
}

#[derive(Debug, Default, Deserialize, Clone, PartialEq)]
#[serde(deny_unknown_fields, default)]
struct Output {
    file: Option<String>,
    snapshot_interval: Option<Number>,
}

#[derive(Debug, Default, Deserialize, Clone, PartialEq)]
#[serde(deny_unknown_fields, default)]
struct Metrics {
    address: Option<String>,
    max_series: Option<u32>,
    series_ttl: Option<Number>,
}

#[derive(Debug, Default, Deserialize, Clone, PartialEq)]
#[serde(deny_unknown_fields, default)]
struct Syslog {
    target: Option<String>,
    facility: Option<String>,
    app_name: Option<String>,
}

#[derive(Debug, Default, Deserialize, Clone, PartialEq)]
#[serde(deny_unknown_fields, default)]
struct Otlp {
    endpoint: Option<String>,
    headers: Option<String>,
    queue_size: Option<u32>,
    metrics_interval: Option<Number>,
    timeout: Option<Number>,
}

/// A TOML number: `1` and `1.0` both mean one second.
#[derive(Debug, Clone, Copy, PartialEq, Deserialize)]
#[serde(untagged, expecting = "a number")]
enum Number {
    Int(i64),
    Float(f64),
}

impl Number {
    fn get(self) -> f64 {
        match self {
            Number::Int(i) => i as f64,
            Number::Float(f) => f,
        }
    }
}

/// Default Prometheus endpoint: loopback only.
pub const METRICS_ADDRESS: &str = "127.0.0.1:9470";

/// Everything `run` needs, resolved: file, then flags, then defaults.
#[derive(Debug, Clone)]
pub struct Run {
    /// Detection, as `trace` takes it (output JSON).
    pub detect: TraceArgs,
    /// JSON lines go here; None = stdout.
    pub output_file: Option<PathBuf>,
    /// listener_snapshot + agent_health lines every so often; None = off.
    pub snapshot_interval: Option<Duration>,
    /// Prometheus endpoint; None = off.
    pub metrics_address: Option<String>,
    pub max_series: usize,
    pub series_ttl: Duration,
    pub syslog: Option<syslog::Config>,
    /// OTLP/HTTP export; None = off.
    pub otlp: Option<crate::export::otlp::Config>,
}

impl Run {
    /// Reads the file (if any) and applies the flags over it.
    pub fn load(args: &RunArgs) -> Result<Run> {
        let file = match &args.config {
            Some(path) => read(path)?,
            None => File::default(),
        };
        let at = |key: &str| match &args.config {
            Some(p) => format!("{} {key}", p.display()),
            None => key.to_string(),
        };
        let run = resolve(file, args, &at)?;
        // What only the system can tell: the namespace exists and is one.
        if let Some(spec) = &run.detect.netns {
            let key = match args.netns {
                Some(_) => "--netns".to_string(),
                None => at("detect.netns"),
            };
            crate::cmd::cli::netns_inode_named(&key, spec)?;
        }
        Ok(run)
    }

    /// Settings that live in the kernel programs or in bound sockets: a
    /// reload cannot change them. Returns the names of those that differ.
    pub fn needs_restart(&self, new: &Run) -> Vec<&'static str> {
        let (a, b) = (&self.detect, &new.detect);
        [
            ("detect.port", a.port != b.port),
            ("detect.netns", a.netns != b.netns),
            ("detect.attach", a.attach != b.attach),
            ("detect.syscall_hooks", a.syscall_hooks != b.syscall_hooks),
            ("detect.poll_interval", a.poll_interval != b.poll_interval),
            ("detect.interval", a.interval != b.interval),
            (
                "metrics.address",
                self.metrics_address != new.metrics_address,
            ),
            ("otlp", self.otlp != new.otlp),
        ]
        .into_iter()
        .filter_map(|(name, changed)| changed.then_some(name))
        .collect()
    }
}

/// The largest config file read: the documented example is 5 KiB.
pub const MAX_BYTES: u64 = 1 << 20;

fn read(path: &Path) -> Result<File> {
    let text = read_bounded(path).map_err(|e| anyhow!("config {}: {e}", path.display()))?;
    parse(&text).map_err(|e| anyhow!("config {}: {e}", path.display()))
}

/// A regular file of at most [`MAX_BYTES`], as UTF-8. Opened without
/// blocking, so a FIFO is refused instead of waiting for a writer; a
/// device (/dev/zero) or a directory is refused before a byte is read.
pub fn read_bounded(path: &Path) -> std::result::Result<String, String> {
    use std::io::Read;
    use std::os::unix::fs::OpenOptionsExt;
    let f = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NONBLOCK | libc::O_NOCTTY | libc::O_CLOEXEC)
        .open(path)
        .map_err(|e| io_reason(&e))?;
    let md = f.metadata().map_err(|e| io_reason(&e))?;
    if !md.is_file() {
        return Err(format!(
            "{}, not a regular file",
            crate::source::netns::file_kind(&md)
        ));
    }
    if md.len() > MAX_BYTES {
        return Err(format!(
            "{} bytes, more than a config file may have ({MAX_BYTES})",
            md.len()
        ));
    }
    let mut buf = Vec::new();
    f.take(MAX_BYTES + 1)
        .read_to_end(&mut buf)
        .map_err(|e| io_reason(&e))?;
    if buf.len() as u64 > MAX_BYTES {
        return Err(format!("more than {MAX_BYTES} bytes"));
    }
    String::from_utf8(buf).map_err(|e| {
        format!(
            "not UTF-8 text (invalid byte at offset {})",
            e.utf8_error().valid_up_to()
        )
    })
}

/// A configuration file's text, resolved with `args` over it, as
/// [`Run::load`] does after reading the file (public for the fuzz target).
pub fn from_text(text: &str, args: &RunArgs) -> Result<Run> {
    resolve(parse(text)?, args, &|key: &str| key.to_string())
}

/// TOML → File; the error is one line with the line number.
fn parse(text: &str) -> Result<File> {
    toml::from_str::<File>(text).map_err(|e| {
        let line = e
            .span()
            .map(|s| text[..s.start.min(text.len())].matches('\n').count() + 1);
        let msg = e.message().trim().replace('\n', " ");
        match line {
            Some(l) => anyhow!("line {l}: {msg}"),
            None => anyhow!("{msg}"),
        }
    })
}

/// A key's name as error messages show it (with the file's path, if any).
type At<'a> = &'a dyn Fn(&str) -> String;

/// The file's sections, each resolved with its flags over it, in the order
/// of the file (the first error found is the one reported).
fn resolve(f: File, a: &RunArgs, at: At) -> Result<Run> {
    let detect = detect(&f.detect, a, at)?;
    let (output_file, snapshot_interval) = output(f.output, a, at)?;
    let (metrics_address, max_series, series_ttl) = metrics(f.metrics, a, at)?;
    let syslog = syslog(f.syslog, a, at)?;
    let otlp = otlp(f.otlp, a, at, &|k: &str| {
        std::env::var(k).ok().filter(|v| !v.is_empty())
    })?;
    crate::cmd::cli::check_filters(&detect)?;
    Ok(Run {
        otlp,
        detect,
        output_file,
        snapshot_interval,
        metrics_address,
        max_series,
        series_ttl,
        syslog,
    })
}

/// A duration in seconds: the flag, else the file, else `default`; the
/// file's value must be in (0, 366 days].
fn secs(
    at: At,
    key: &str,
    flag: Option<Duration>,
    file: Option<Number>,
    default: f64,
) -> Result<Duration> {
    if let Some(d) = flag {
        return Ok(d);
    }
    let v = file.map(Number::get).unwrap_or(default);
    if !(v.is_finite() && v > 0.0 && v <= 366.0 * 86400.0) {
        bail!("{}: {v} is out of range (0 < seconds <= 31622400)", at(key));
    }
    Ok(Duration::from_secs_f64(v))
}

/// `[detect]`: what to watch and how, as `trace` takes it.
fn detect(d: &Detect, a: &RunArgs, at: At) -> Result<TraceArgs> {
    let attach = match (a.attach, &d.attach) {
        (Some(m), _) => m,
        (None, Some(s)) => value_enum::<AttachMode>(s).ok_or_else(|| {
            anyhow!(
                "{}: `{s}` is not one of auto, fentry, kprobe, tracepoint",
                at("detect.attach")
            )
        })?,
        (None, None) => AttachMode::Auto,
    };
    let syscall_hooks = match (a.syscall_hooks, &d.syscall_hooks) {
        (Some(m), _) => m,
        (None, Some(s)) => value_enum::<SyscallHooks>(s).ok_or_else(|| {
            anyhow!(
                "{}: `{s}` is not one of auto, always, on-demand, never",
                at("detect.syscall_hooks")
            )
        })?,
        (None, None) => SyscallHooks::Auto,
    };
    let port = a.port.or(d.port);
    if port == Some(0) {
        bail!("{}: 0 is not a port (1-65535)", at("detect.port"));
    }
    let accept_latency_ms = match (a.accept_latency_ms, d.accept_latency_ms) {
        (Some(v), _) => v,
        (None, Some(n)) if n.get().is_finite() && n.get() >= 0.0 => n.get(),
        (None, Some(n)) => bail!(
            "{}: {} is not a number of milliseconds",
            at("detect.accept_latency_ms"),
            n.get()
        ),
        (None, None) => 10.0,
    };
    Ok(TraceArgs {
        pid: None,
        port,
        netns: a.netns.clone().or(d.netns.clone()),
        comm: a.comm.clone().or(d.comm.clone()),
        cgroup: a.cgroup.clone().or(d.cgroup.clone()),
        container: a.container.clone().or(d.container.clone()),
        attach,
        output: Format::Json,
        duration: a.duration,
        interval: secs(at, "detect.interval", a.interval, d.interval, 1.0)?,
        poll_interval: secs(
            at,
            "detect.poll_interval",
            a.poll_interval,
            d.poll_interval,
            0.25,
        )?,
        ring_buffer_bytes: 1 << 20,
        bpf_stats: false,
        syscall_hooks,
        accept_latency_ms,
        record: a.record.clone(),
    })
}

/// `[output]`: where JSON lines go (None = stdout) and how often
/// snapshots are written (None = never).
fn output(o: Output, a: &RunArgs, at: At) -> Result<(Option<PathBuf>, Option<Duration>)> {
    let output_file = match a.output_file.clone().or(o.file.map(PathBuf::from)) {
        Some(p) if p.as_os_str() == "-" => None,
        Some(p) if p.as_os_str().is_empty() => {
            bail!("{}: empty path (use \"-\" for stdout)", at("output.file"))
        }
        p => p,
    };
    let snapshot_interval = match (a.snapshot_interval, o.snapshot_interval) {
        (Some(v), _) => v,
        (None, Some(n)) => n.get(),
        (None, None) => 60.0,
    };
    let snapshot_interval = match snapshot_interval {
        0.0 => None,
        v if (1.0..=86400.0).contains(&v) => Some(Duration::from_secs_f64(v)),
        v => bail!(
            "{}: {v} is out of range (0 = off, or 1 to 86400 seconds)",
            at("output.snapshot_interval")
        ),
    };
    Ok((output_file, snapshot_interval))
}

/// `[metrics]`: the Prometheus endpoint (None = off), the series cap and
/// how long an idle series is kept.
fn metrics(m: Metrics, a: &RunArgs, at: At) -> Result<(Option<String>, usize, Duration)> {
    let metrics_address = match a
        .metrics_address
        .clone()
        .or(m.address)
        .unwrap_or_else(|| METRICS_ADDRESS.to_string())
    {
        s if s.is_empty() || s == "off" => None,
        s => Some(s),
    };
    let max_series = a.max_series.or(m.max_series).unwrap_or(10_000);
    if max_series == 0 {
        bail!("{}: must be at least 1", at("metrics.max_series"));
    }
    let series_ttl = secs(at, "metrics.series_ttl", None, m.series_ttl, 3600.0)?;
    Ok((metrics_address, max_series as usize, series_ttl))
}

/// `[syslog]`: None = off.
fn syslog(file: Syslog, a: &RunArgs, at: At) -> Result<Option<syslog::Config>> {
    let target = match a.syslog.clone().or(file.target) {
        None => return Ok(None),
        Some(t) if t.is_empty() || t == "off" => return Ok(None),
        Some(t) => t,
    };
    Ok(Some(syslog::Config {
        target: syslog::Target::parse(&target)
            .map_err(|e| anyhow!("{}: {e}", at("syslog.target")))?,
        facility: match a.syslog_facility.clone().or(file.facility) {
            Some(s) => s
                .parse()
                .map_err(|e| anyhow!("{}: {e}", at("syslog.facility")))?,
            None => syslog::Facility::Daemon,
        },
        app_name: file.app_name.unwrap_or_else(|| "tcpq".into()),
    }))
}

/// `[otlp]`: None = off. The flag, then the file, then the standard
/// environment variables (`env`: a variable's value, if set and not empty).
fn otlp(
    o: Otlp,
    a: &RunArgs,
    at: At,
    env: &dyn Fn(&str) -> Option<String>,
) -> Result<Option<crate::export::otlp::Config>> {
    let endpoint = match a
        .otlp_endpoint
        .clone()
        .or(o.endpoint.clone())
        .or_else(|| env("OTEL_EXPORTER_OTLP_ENDPOINT"))
    {
        None => return Ok(None),
        Some(e) if e.is_empty() || e == "off" => return Ok(None),
        Some(e) => e,
    };
    let endpoint = crate::export::otlp::Endpoint::parse(&endpoint)
        .map_err(|m| anyhow!("{}: {m}", at("otlp.endpoint")))?;
    let headers = match o.headers.clone() {
        Some(h) => crate::export::otlp::parse_headers(&h)
            .map_err(|m| anyhow!("{}: {m}", at("otlp.headers")))?,
        None => match env("OTEL_EXPORTER_OTLP_HEADERS") {
            Some(h) => crate::export::otlp::parse_headers(&h)
                .map_err(|m| anyhow!("OTEL_EXPORTER_OTLP_HEADERS: {m}"))?,
            None => Vec::new(),
        },
    };
    let queue_size = o.queue_size.unwrap_or(10_000);
    if queue_size == 0 {
        bail!("{}: must be at least 1", at("otlp.queue_size"));
    }
    Ok(Some(crate::export::otlp::Config {
        endpoint,
        headers,
        queue_size: queue_size as usize,
        metrics_interval: secs(
            at,
            "otlp.metrics_interval",
            a.otlp_metrics_interval,
            o.metrics_interval,
            10.0,
        )?,
        timeout: secs(at, "otlp.timeout", None, o.timeout, 10.0)?,
    }))
}

pub use crate::source::netns::io_reason;

fn value_enum<T: clap::ValueEnum>(s: &str) -> Option<T> {
    T::from_str(s, false).ok()
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    fn args(extra: &[&str]) -> RunArgs {
        let cli = crate::cmd::cli::Cli::try_parse_from(
            ["tcpq-agent", "run"].iter().chain(extra.iter()).copied(),
        )
        .unwrap();
        match cli.command {
            crate::cmd::cli::Command::Run(r) => r,
            _ => panic!("not run"),
        }
    }

    fn load(text: &str, extra: &[&str]) -> Result<Run> {
        let f = parse(text)?;
        resolve(f, &args(extra), &|k: &str| format!("tcpq.toml {k}"))
    }

    #[test]
    fn only_a_bounded_regular_file_is_read() {
        assert_eq!(
            read_bounded(Path::new("/dev/zero")).unwrap_err(),
            "a character device, not a regular file"
        );
        assert_eq!(
            read_bounded(Path::new("/")).unwrap_err(),
            "a directory, not a regular file"
        );
        let example = concat!(env!("CARGO_MANIFEST_DIR"), "/../packaging/tcpq.toml");
        assert!(read_bounded(Path::new(example))
            .unwrap()
            .contains("[detect]"));
    }

    #[test]
    fn defaults_without_a_file() {
        let r = load("", &[]).unwrap();
        assert_eq!(r.metrics_address.as_deref(), Some(METRICS_ADDRESS));
        assert_eq!(r.output_file, None);
        assert_eq!(r.snapshot_interval, Some(Duration::from_secs(60)));
        assert_eq!(r.detect.interval, Duration::from_secs(1));
        assert_eq!(r.detect.output, Format::Json);
        assert!(r.syslog.is_none());
        assert_eq!(r.max_series, 10_000);
    }

    #[test]
    fn the_shipped_example_parses_to_the_defaults() {
        let example = include_str!("../../../packaging/tcpq.toml");
        let r = load(example, &[]).unwrap();
        let d = load("", &[]).unwrap();
        assert_eq!(r.metrics_address, d.metrics_address);
        assert_eq!(r.snapshot_interval, d.snapshot_interval);
        assert_eq!(r.series_ttl, d.series_ttl);
        assert_eq!(r.detect.poll_interval, d.detect.poll_interval);
        assert_eq!(r.otlp, d.otlp);
    }

    #[test]
    fn otlp_from_the_file_and_flags() {
        assert!(load("", &[]).unwrap().otlp.is_none());
        let text = "[otlp]\nendpoint = \"http://127.0.0.1:4318/x\"\nheaders = \"k=v\"\nqueue_size = 5\nmetrics_interval = 2\n";
        let o = load(text, &[]).unwrap().otlp.unwrap();
        assert_eq!((o.endpoint.port, o.endpoint.prefix.as_str()), (4318, "/x"));
        assert_eq!(o.headers, [("k".to_string(), "v".to_string())]);
        assert_eq!(
            (o.queue_size, o.metrics_interval),
            (5, Duration::from_secs(2))
        );
        let o = load(
            text,
            &[
                "--otlp-endpoint",
                "http://h:1",
                "--otlp-metrics-interval",
                "0.5",
            ],
        )
        .unwrap()
        .otlp
        .unwrap();
        assert_eq!(
            (o.endpoint.host.as_str(), o.metrics_interval),
            ("h", Duration::from_millis(500))
        );
        assert!(load(text, &["--otlp-endpoint", "off"])
            .unwrap()
            .otlp
            .is_none());
        for (bad, msg) in [
            (
                "[otlp]\nendpoint = \"https://x\"\n",
                "tcpq.toml otlp.endpoint: ",
            ),
            (
                "[otlp]\nendpoint = \"http://x\"\nheaders = \"nope\"\n",
                "tcpq.toml otlp.headers: ",
            ),
            (
                "[otlp]\nendpoint = \"http://x\"\nqueue_size = 0\n",
                "tcpq.toml otlp.queue_size: ",
            ),
        ] {
            let e = load(bad, &[]).unwrap_err().to_string();
            assert!(e.starts_with(msg), "{e}");
        }
        assert!(parse("[otlp]\nendpont = \"x\"\n").is_err());
    }

    #[test]
    fn otlp_falls_back_on_the_standard_environment_variables() {
        let at = |k: &str| format!("tcpq.toml {k}");
        let env = |vars: &'static [(&'static str, &'static str)]| {
            move |k: &str| {
                vars.iter()
                    .find(|(name, _)| *name == k)
                    .map(|(_, v)| v.to_string())
            }
        };
        let set = env(&[
            ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://collector:4318"),
            ("OTEL_EXPORTER_OTLP_HEADERS", "k=v"),
        ]);
        let o = otlp(Otlp::default(), &args(&[]), &at, &set)
            .unwrap()
            .unwrap();
        assert_eq!(
            (o.endpoint.host.as_str(), o.endpoint.port),
            ("collector", 4318)
        );
        assert_eq!(o.headers, [("k".to_string(), "v".to_string())]);
        // The file's headers win over the environment's.
        let file = Otlp {
            headers: Some("a=b".into()),
            ..Otlp::default()
        };
        let o = otlp(file, &args(&[]), &at, &set).unwrap().unwrap();
        assert_eq!(o.headers, [("a".to_string(), "b".to_string())]);
        let bad = env(&[
            ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://collector:4318"),
            ("OTEL_EXPORTER_OTLP_HEADERS", "nope"),
        ]);
        let e = otlp(Otlp::default(), &args(&[]), &at, &bad).unwrap_err();
        assert!(
            e.to_string().starts_with("OTEL_EXPORTER_OTLP_HEADERS: "),
            "{e}"
        );
        assert!(otlp(Otlp::default(), &args(&[]), &at, &env(&[]))
            .unwrap()
            .is_none());
    }

    #[test]
    fn flags_override_the_file() {
        let text = "[detect]\nport = 80\ninterval = 2\n[metrics]\naddress = \"127.0.0.1:1\"\n[syslog]\ntarget = \"udp://127.0.0.1:514\"\n";
        let r = load(text, &[]).unwrap();
        assert_eq!(r.detect.port, Some(80));
        assert_eq!(r.detect.interval, Duration::from_secs(2));
        let r = load(
            text,
            &[
                "--port",
                "81",
                "--metrics-address",
                "",
                "--interval",
                "0.5",
                "--syslog",
                "off",
            ],
        )
        .unwrap();
        assert_eq!(r.detect.port, Some(81));
        assert_eq!(r.metrics_address, None);
        assert_eq!(r.detect.interval, Duration::from_millis(500));
        assert!(r.syslog.is_none());
    }

    #[test]
    fn bad_files_are_one_line_naming_the_problem() {
        for (text, want) in [
            (
                "[metrics]\nadress = \"x\"\n",
                "line 2: unknown field `adress`",
            ),
            (
                "[detect]\nport = \"80\"\n",
                "line 2: invalid type: string \"80\", expected u16",
            ),
            ("[detect]\nport = 70000\n", "line 2:"),
            ("[detect]\ninterval = \"1s\"\n", "line 2: a number"),
            ("[nope]\n", "line 1: unknown field `nope`"),
            ("port = 1\n", "line 1: unknown field `port`"),
            ("[detect\n", "line 1:"),
        ] {
            let e = load(text, &[]).unwrap_err().to_string();
            assert!(e.starts_with(want), "{text:?}: {e}");
            assert!(!e.contains('\n'), "{e}");
        }
        for (text, want) in [
            (
                "[detect]\ninterval = 0\n",
                "tcpq.toml detect.interval: 0 is out of range",
            ),
            (
                "[detect]\nattach = \"uprobe\"\n",
                "tcpq.toml detect.attach: `uprobe` is not one of",
            ),
            (
                "[syslog]\ntarget = \"ftp://x\"\n",
                "tcpq.toml syslog.target: ",
            ),
            (
                "[syslog]\ntarget = \"udp://h:1\"\nfacility = \"nope\"\n",
                "tcpq.toml syslog.facility: ",
            ),
            (
                "[output]\nsnapshot_interval = 0.5\n",
                "tcpq.toml output.snapshot_interval: 0.5 is out of range",
            ),
            (
                "[metrics]\nmax_series = 0\n",
                "tcpq.toml metrics.max_series: must be at least 1",
            ),
            (
                "[detect]\ncgroup = \"relative\"\n",
                "--cgroup relative: expected a cgroup path",
            ),
        ] {
            let e = load(text, &[]).unwrap_err().to_string();
            assert!(e.starts_with(want), "{text:?}: {e}");
        }
    }

    #[test]
    fn a_reload_names_what_needs_a_restart() {
        let a = load("[detect]\nport = 80\n", &[]).unwrap();
        let b = load("[detect]\nport = 81\ncomm = \"nginx\"\n", &[]).unwrap();
        assert_eq!(a.needs_restart(&b), vec!["detect.port"]);
        assert!(a.needs_restart(&a.clone()).is_empty());
    }
}

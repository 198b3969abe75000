//! `cargo xtask bench`: what attaching tcpq costs a busy server, measured
//! side by side in one run (this machine is noisy: only ratios within one
//! run mean anything).
//!
//! nginx (Debian's nginx-light) serves a tiny response on loopback inside a
//! private network namespace; wrk loads it for two loads: keep-alive
//! (healthy traffic, few handshakes) and `Connection: close` (one handshake
//! per request: every listener hook fires per request). Each round runs
//! the load untraced, with `tcpq-agent trace` attached host-wide, and with
//! bpftrace counting the equivalent tracepoints (the peer), in a rotating
//! order; ratios are per round and their median. Then one run with
//! BPF_ENABLE_STATS (it costs a clock read per program run, so the ratio
//! runs go without) gives each program's runs and ns per request and the
//! ring-buffer records per request; and a SYN flood (hping3 into a full
//! accept queue) gives drops per second, exactness against ListenOverflows,
//! the agent's CPU and memory, and records per drop; and the agent's idle
//! CPU with 50 quiet namespaces, a listener each (a node full of pods).
//! Bounded: `--rounds` × 2
//! loads × 3 runs of SECS seconds, plus two more runs and a FLOOD_SECS flood.

use std::{
    io::Read,
    path::PathBuf,
    process::{Child, Command, Stdio},
    thread::sleep,
    time::{Duration, Instant},
};

use anyhow::{bail, Context, Result};

const NS: &str = "tcpq-bench";
const SECS: u32 = 5;
const FLOOD_SECS: u32 = 4;
/// Where nginx listens, and the listener the SYN flood hits.
const NGINX_PORT: u16 = 8080;
const FLOOD_PORT: u16 = 9099;

/// The peer: bpftrace counting the tracepoints tcpq's healthy path sits on.
const BPFTRACE: &str = "tracepoint:sock:inet_sock_set_state { @state = count(); } \
tracepoint:tcp:tcp_send_reset { @rst = count(); } \
tracepoint:tcp:tcp_retransmit_synack { @synack = count(); } \
tracepoint:skb:kfree_skb { @drop = count(); } \
tracepoint:syscalls:sys_exit_accept4 { @accept = count(); }";

struct Netns;

impl Netns {
    fn new() -> Result<Netns> {
        let _ = Command::new("ip")
            .args(["netns", "del", NS])
            .stderr(Stdio::null())
            .status();
        run(Command::new("ip").args(["netns", "add", NS]))?;
        run(Command::new("ip").args(["-n", NS, "link", "set", "lo", "up"]))?;
        // Room for a connection-per-request load: the port range and
        // TIME_WAIT reuse are per-netns.
        for kv in [
            "net.ipv4.tcp_tw_reuse=1",
            "net.ipv4.ip_local_port_range=1024 65000",
            "net.core.somaxconn=4096",
        ] {
            run(Command::new("ip").args(["netns", "exec", NS, "sysctl", "-q", "-w", kv]))?;
        }
        Ok(Netns)
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        let _ = Command::new("ip").args(["netns", "del", NS]).status();
    }
}

fn run(cmd: &mut Command) -> Result<String> {
    let out = cmd.output().with_context(|| format!("{cmd:?}"))?;
    if !out.status.success() {
        bail!("{cmd:?}: {}", String::from_utf8_lossy(&out.stderr).trim());
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// "Requests/sec:  12345.67" → 12345.67
pub fn requests_per_sec(wrk: &str) -> Option<f64> {
    wrk.lines()
        .find_map(|l| l.trim().strip_prefix("Requests/sec:")?.trim().parse().ok())
}

/// "  123456 requests in 5.00s, ..." → 123456
pub fn requests_total(wrk: &str) -> Option<u64> {
    wrk.lines().find_map(|l| {
        let (n, rest) = l.trim().split_once(' ')?;
        rest.starts_with("requests in").then(|| n.parse().ok())?
    })
}

/// The median of a non-empty list.
pub fn median(v: &[f64]) -> f64 {
    let mut s = v.to_vec();
    s.sort_by(|a, b| a.total_cmp(b));
    let n = s.len();
    if n % 2 == 1 {
        s[n / 2]
    } else {
        (s[n / 2 - 1] + s[n / 2]) / 2.0
    }
}

/// "tcpq: kernel: N ring-buffer records sent; ..." → N
pub fn records_line(line: &str) -> Option<u64> {
    line.strip_prefix("tcpq: kernel: ")?
        .split_whitespace()
        .next()?
        .parse()
        .ok()
}

/// "tcpq: cost NAME runs=N total_ns=T ns_per_run=A" → (NAME, N, A)
pub fn cost_line(line: &str) -> Option<Cost> {
    let rest = line.strip_prefix("tcpq: cost ")?;
    let mut it = rest.split_whitespace();
    let name = it.next()?.to_string();
    let mut runs = None;
    let mut avg = None;
    for kv in it {
        if let Some(v) = kv.strip_prefix("runs=") {
            runs = v.parse().ok();
        } else if let Some(v) = kv.strip_prefix("ns_per_run=") {
            avg = v.parse().ok();
        }
    }
    Some((name, runs?, avg?))
}

/// One wrk run: (requests per second, requests).
fn wrk(close: bool) -> Result<(f64, u64)> {
    let mut c = Command::new("ip");
    c.args([
        "netns",
        "exec",
        NS,
        "wrk",
        "-t1",
        "-c32",
        &format!("-d{SECS}s"),
    ]);
    if close {
        c.args(["-H", "Connection: close"]);
    }
    c.arg(format!("http://127.0.0.1:{NGINX_PORT}/"));
    let out = run(&mut c)?;
    let rps =
        requests_per_sec(&out).with_context(|| format!("no Requests/sec in wrk output: {out}"))?;
    let n = requests_total(&out).with_context(|| format!("no request count in: {out}"))?;
    Ok((rps, n))
}

fn cpu_ticks(pid: u32) -> u64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    // Fields after the command name (which may contain spaces): utime is 14th overall.
    let after = stat.rsplit_once(')').map(|(_, r)| r).unwrap_or("");
    let f: Vec<&str> = after.split_whitespace().collect();
    f.get(11).and_then(|s| s.parse::<u64>().ok()).unwrap_or(0)
        + f.get(12).and_then(|s| s.parse::<u64>().ok()).unwrap_or(0)
}

fn status_kib(pid: u32, key: &str) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_default()
        .lines()
        .find_map(|l| {
            l.strip_prefix(key)?
                .trim()
                .trim_end_matches(" kB")
                .trim()
                .parse()
                .ok()
        })
        .unwrap_or(0)
}

struct Agent {
    child: Child,
    /// When it was ready, and its CPU ticks then: start-up (BTF parsing)
    /// is not what a loaded server pays.
    started: Instant,
    ticks: u64,
}

/// One kernel program's (name, runs, ns per run).
type Cost = (String, u64, u64);

/// The agent over one run: CPU % of one core and CPU seconds, peak RSS
/// (KiB), program costs, ring-buffer records the kernel sent, JSON lines.
struct AgentRun {
    cpu: f64,
    cpu_secs: f64,
    hwm_kib: u64,
    costs: Vec<Cost>,
    records: u64,
    lines: Vec<serde_json::Value>,
}

impl Agent {
    /// `stats`: BPF_ENABLE_STATS, which itself costs two clock reads per
    /// program run — only for the separate cost run, never for ratios.
    fn start(bin: &PathBuf, stats: bool) -> Result<Agent> {
        let mut child = Command::new(bin)
            .args(["trace", "--output", "json"])
            .args(stats.then_some("--bpf-stats"))
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .context("starting tcpq-agent")?;
        // Wait for "tcpq: tracing" on stderr.
        let mut err = child.stderr.take().unwrap();
        let mut seen = String::new();
        let deadline = Instant::now() + Duration::from_secs(30);
        let mut buf = [0u8; 256];
        while !seen.contains("tcpq: tracing") {
            if Instant::now() > deadline {
                bail!("agent did not start: {seen}");
            }
            let n = err.read(&mut buf)?;
            if n == 0 {
                bail!("agent exited: {seen}");
            }
            seen.push_str(&String::from_utf8_lossy(&buf[..n]));
        }
        child.stderr = Some(err);
        let ticks = cpu_ticks(child.id());
        Ok(Agent {
            child,
            started: Instant::now(),
            ticks,
        })
    }

    /// Stops it and says what it cost.
    fn stop(mut self) -> Result<AgentRun> {
        let pid = self.child.id();
        let ticks = cpu_ticks(pid) - self.ticks;
        let wall = self.started.elapsed().as_secs_f64();
        let hwm = status_kib(pid, "VmHWM:");
        unsafe { libc::kill(pid as i32, libc::SIGINT) };
        let mut out = String::new();
        self.child.stdout.take().unwrap().read_to_string(&mut out)?;
        let mut err = String::new();
        self.child.stderr.take().unwrap().read_to_string(&mut err)?;
        self.child.wait()?;
        let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as f64;
        let costs = err.lines().filter_map(cost_line).collect();
        Ok(AgentRun {
            cpu: ticks as f64 / hz / wall * 100.0,
            cpu_secs: ticks as f64 / hz,
            hwm_kib: hwm,
            costs,
            records: err.lines().find_map(records_line).unwrap_or(0),
            lines: out
                .lines()
                .filter_map(|l| serde_json::from_str(l).ok())
                .collect(),
        })
    }
}

/// bpftrace attached to the peer's tracepoints, until stopped.
struct Bpftrace(Child);

impl Bpftrace {
    fn start() -> Result<Bpftrace> {
        let mut child = Command::new("bpftrace")
            // Line-buffered: into a pipe it would hold "Attaching" until exit.
            .args(["-B", "line", "-e", BPFTRACE])
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .context("starting bpftrace (apt-get install bpftrace)")?;
        let mut out = child.stdout.take().unwrap();
        let mut seen = String::new();
        let mut buf = [0u8; 256];
        let deadline = Instant::now() + Duration::from_secs(60);
        while !seen.contains("Attaching") {
            let n = out.read(&mut buf)?;
            if n == 0 || Instant::now() > deadline {
                bail!("bpftrace did not attach: {seen}");
            }
            seen.push_str(&String::from_utf8_lossy(&buf[..n]));
        }
        // Attaching is printed before the probes are live.
        sleep(Duration::from_millis(500));
        child.stdout = Some(out);
        Ok(Bpftrace(child))
    }

    /// SIGINT (bpftrace prints its maps and exits); a first SIGINT is
    /// sometimes not acted on, so again, then SIGKILL: never a hang.
    fn stop(mut self) -> Result<()> {
        // Drain its output (the maps) so it never blocks on a full pipe.
        let mut out = self.0.stdout.take().unwrap();
        let drain = std::thread::spawn(move || {
            let mut rest = String::new();
            let _ = out.read_to_string(&mut rest);
        });
        for sig in [libc::SIGINT, libc::SIGINT, libc::SIGKILL] {
            unsafe { libc::kill(self.0.id() as i32, sig) };
            let deadline = Instant::now() + Duration::from_secs(3);
            while Instant::now() < deadline {
                if self.0.try_wait()?.is_some() {
                    let _ = drain.join();
                    return Ok(());
                }
                sleep(Duration::from_millis(50));
            }
        }
        self.0.wait()?;
        let _ = drain.join();
        Ok(())
    }
}

#[derive(Clone, Copy, PartialEq)]
enum Tracer {
    None,
    Tcpq,
    Bpftrace,
    /// `--baseline AGENT`: another build of the agent (say, main before
    /// a change), measured in the same rotation.
    Baseline,
}

/// One load with one tracer: req/s, and the agent's run with tcpq.
fn measure(
    agent_bin: &PathBuf,
    baseline: Option<&PathBuf>,
    close: bool,
    t: Tracer,
) -> Result<(f64, Option<AgentRun>)> {
    Ok(match t {
        Tracer::None => (wrk(close)?.0, None),
        Tracer::Tcpq => {
            let agent = Agent::start(agent_bin, false)?;
            let (rps, _) = wrk(close)?;
            (rps, Some(agent.stop()?))
        }
        Tracer::Baseline => {
            let bin = baseline.context("no baseline agent")?;
            let agent = Agent::start(bin, false)?;
            let (rps, _) = wrk(close)?;
            agent.stop()?;
            (rps, None)
        }
        Tracer::Bpftrace => {
            let b = Bpftrace::start()?;
            let (rps, _) = wrk(close)?;
            b.stop()?;
            (rps, None)
        }
    })
}

/// A private directory with nginx's configuration.
fn nginx_conf(dir: &std::path::Path) -> Result<PathBuf> {
    let conf = dir.join("nginx.conf");
    std::fs::write(
        &conf,
        format!(
            "worker_processes 1; master_process off; daemon off; pid {d}/nginx.pid; error_log {d}/error.log;\n\
             events {{ worker_connections 4096; }}\n\
             http {{ access_log off; client_body_temp_path {d}; proxy_temp_path {d}; fastcgi_temp_path {d}; \
             uwsgi_temp_path {d}; scgi_temp_path {d};\n\
             server {{ listen 127.0.0.1:{NGINX_PORT} backlog=4096; location / {{ return 200 \"ok\\n\"; }} }} }}\n",
            d = dir.display()
        ),
    )?;
    Ok(conf)
}

pub fn run_bench(
    agent_bin: PathBuf,
    scenario_bin: PathBuf,
    rounds: usize,
    baseline: Option<PathBuf>,
) -> Result<()> {
    let _ns = Netns::new()?;
    let dir = std::env::temp_dir().join(format!("tcpq-bench-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    let conf = nginx_conf(&dir)?;
    let mut nginx = Command::new("ip")
        .args(["netns", "exec", NS, "nginx", "-c"])
        .arg(&conf)
        .arg("-p")
        .arg(&dir)
        .arg("-e")
        .arg(dir.join("error.log"))
        .spawn()
        .context("starting nginx (apt-get install nginx-light)")?;
    sleep(Duration::from_millis(500));
    let result = (|| -> Result<()> {
        header(rounds)?;
        wrk(false)?; // warm-up
        loads(&agent_bin, baseline.as_ref(), rounds)?;
        stats_run(&agent_bin)?;
        flood(&agent_bin, &scenario_bin)?;
        namespaces(&agent_bin, &scenario_bin)
    })();
    let _ = nginx.kill();
    let _ = nginx.wait();
    let _ = std::fs::remove_dir_all(&dir);
    result
}

fn header(rounds: usize) -> Result<()> {
    let kernel = run(Command::new("uname").arg("-r"))?;
    let date = run(Command::new("date").args(["-u", "+%Y-%m-%d %H:%M UTC"]))?;
    println!(
        "tcpq bench, {}, kernel {}, {} CPUs; nginx-light 1 worker + wrk -t1 -c32, {SECS} s per run, {rounds} rounds",
        date.trim(),
        kernel.trim(),
        std::thread::available_parallelism().map_or(0, |n| n.get())
    );
    Ok(())
}

/// The ratio runs: per load, `rounds` rounds of untraced / tcpq / bpftrace
/// (and the baseline agent) in a rotating order.
fn loads(agent_bin: &PathBuf, baseline: Option<&PathBuf>, rounds: usize) -> Result<()> {
    let mut tracers = vec![Tracer::None, Tracer::Tcpq, Tracer::Bpftrace];
    if baseline.is_some() {
        tracers.push(Tracer::Baseline);
    }
    let mut agent_runs = Vec::new();
    println!("\nload                     untraced req/s   tcpq/untraced   bpftrace/untraced   (per round: tcpq | bpftrace)");
    let mut vs_baseline = Vec::new();
    for (close, name) in [(false, "keep-alive"), (true, "connection-per-request")] {
        let (mut off, mut tcpq, mut bpft, mut base) =
            (Vec::new(), Vec::new(), Vec::new(), Vec::new());
        for round in 0..rounds {
            let mut got = [0.0; 4];
            // Each round starts one tracer later: every position in turn.
            for i in 0..tracers.len() {
                let t = tracers[(round + i) % tracers.len()];
                let (rps, agent) = measure(agent_bin, baseline, close, t)?;
                got[t as usize] = rps;
                if let Some(a) = agent {
                    agent_runs.push((name, rps, a));
                }
            }
            off.push(got[0]);
            tcpq.push(got[1] / got[0]);
            bpft.push(got[2] / got[0]);
            base.push(got[1] / got[3]);
        }
        println!(
            "{name:<24}{:>15.0}{:>16.3}{:>20.3}   ({} | {})",
            median(&off),
            median(&tcpq),
            median(&bpft),
            show(&tcpq),
            show(&bpft)
        );
        vs_baseline.push((name, base));
    }
    if let Some(b) = baseline {
        println!("\ntcpq / baseline ({}), the same rounds:", b.display());
        for (name, v) in &vs_baseline {
            println!("  {name:<24}{:>8.3}   ({})", median(v), show(v));
        }
    }
    println!("\nagent while loaded (each tcpq run, ready to stop): CPU % of one core, CPU µs per request, peak RSS, ring-buffer records per request");
    for (name, rps, r) in &agent_runs {
        let requests = rps * SECS as f64;
        println!(
            "  {name:<24} {:>5.2}%  {:>6.2} µs/req  {:>6} KiB  {:.5} records/req",
            r.cpu,
            r.cpu_secs * 1e6 / requests,
            r.hwm_kib,
            r.records as f64 / requests
        );
    }
    Ok(())
}

fn show(v: &[f64]) -> String {
    v.iter()
        .map(|r| format!("{r:.3}"))
        .collect::<Vec<_>>()
        .join(" ")
}

/// Per-program cost in one more run, with stats on (not in the ratios).
fn stats_run(agent_bin: &PathBuf) -> Result<()> {
    let agent = Agent::start(agent_bin, true)?;
    let (rps, requests) = wrk(true)?;
    let r = agent.stop()?;
    println!("\nkernel programs (a connection-per-request run with BPF stats on, {rps:.0} req/s, {requests} requests): runs, ns per run, runs and ns per request");
    let mut total_ns = 0u64;
    for (prog, runs, avg) in r.costs.iter().filter(|c| c.1 > 0) {
        let per_req = *runs as f64 / requests as f64;
        total_ns += runs * avg;
        println!(
            "  {prog:<28} {runs:>9} {avg:>7} ns  {per_req:>6.2} runs/req  {:>7.1} ns/req",
            per_req * *avg as f64
        );
    }
    println!(
        "  kernel time per request: {:.0} ns; ring-buffer records per request: {:.5} ({} records)",
        total_ns as f64 / requests as f64,
        r.records as f64 / requests as f64,
        r.records
    );
    Ok(())
}

/// hping3 floods a full accept queue with SYNs for FLOOD_SECS: drops per
/// second, tcpq's count against ListenOverflows, and what it cost tcpq.
fn flood(agent_bin: &PathBuf, scenario_bin: &PathBuf) -> Result<()> {
    let port = FLOOD_PORT.to_string();
    let in_ns = |args: &str| -> Result<Child> {
        Command::new("ip")
            .args(["netns", "exec", NS])
            .arg(scenario_bin)
            .args(args.split_whitespace())
            .stdout(Stdio::null())
            .spawn()
            .context("starting tcpq-scenario")
    };
    // listen(0) and one connection nobody accepts: every SYN is dropped.
    let mut server = in_ns(&format!("listen --port {port} --backlog 0 --hold 60"))?;
    sleep(Duration::from_millis(300));
    let mut holder = in_ns(&format!(
        "connect --port {port} --clients 1 --syncnt 2 --hold 60"
    ))?;
    sleep(Duration::from_millis(500));
    let counters = || -> Result<u64> {
        let text = run(Command::new("ip").args(["netns", "exec", NS, "cat", "/proc/net/netstat"]))?;
        netstat_field(&text, "ListenOverflows").context("no ListenOverflows")
    };
    let agent = Agent::start(agent_bin, false)?;
    let before = counters()?;
    let t0 = Instant::now();
    let _ = Command::new("ip")
        .args(["netns", "exec", NS, "timeout", &format!("{FLOOD_SECS}s")])
        .args(["hping3", "-q", "-S", "--flood", "-p", &port, "127.0.0.1"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .context("running hping3 (apt-get install hping3)")?;
    let secs = t0.elapsed().as_secs_f64();
    sleep(Duration::from_millis(1500));
    let drops = counters()? - before;
    let r = agent.stop()?;
    let _ = (server.kill(), holder.kill(), server.wait(), holder.wait());
    let counted: u64 = r
        .lines
        .iter()
        .filter(|l| l["event"] == "listen_overflow" && l["server.port"] == FLOOD_PORT)
        .filter_map(|l| l["count"].as_u64())
        .sum();
    println!(
        "\nSYN flood (hping3 --flood, {secs:.1} s into a full accept queue): {:.0} drops/s, ΔListenOverflows {drops}, tcpq counted {counted} ({}), agent {:.2}% of a core, peak RSS {} KiB, {} ring-buffer records ({:.6} per drop)",
        drops as f64 / secs,
        if counted == drops { "exact" } else { "MISMATCH" },
        r.cpu,
        r.hwm_kib,
        r.records,
        r.records as f64 / drops.max(1) as f64
    );
    if counted != drops {
        bail!("tcpq counted {counted} SYN drops, the kernel {drops}");
    }
    Ok(())
}

/// A TcpExt field of /proc/net/netstat (header line, then values).
/// Quiet namespaces (a pod each, with a listener and nothing going on).
const QUIET_NETNS: usize = 50;
const IDLE_SECS: u64 = 10;

/// What many quiet namespaces cost the agent: idle CPU with none and with
/// QUIET_NETNS, each with one listener (a host full of pods).
fn namespaces(agent_bin: &PathBuf, scenario_bin: &PathBuf) -> Result<()> {
    let idle = |what: &str| -> Result<f64> {
        let agent = Agent::start(agent_bin, false)?;
        sleep(Duration::from_secs(IDLE_SECS));
        let r = agent.stop()?;
        println!(
            "  {what:<40} agent {:.2}% of a core, peak RSS {} KiB",
            r.cpu, r.hwm_kib
        );
        Ok(r.cpu)
    };
    println!(
        "
quiet namespaces (no load, {IDLE_SECS} s each):"
    );
    let base = idle("no namespace added")?;
    let names: Vec<String> = (0..QUIET_NETNS)
        .map(|i| format!("tcpq-bench-q{i}"))
        .collect();
    let mut servers = Vec::new();
    let result = (|| -> Result<f64> {
        for n in &names {
            run(Command::new("ip").args(["netns", "add", n]))?;
            run(Command::new("ip").args(["-n", n, "link", "set", "lo", "up"]))?;
            servers.push(
                Command::new("ip")
                    .args(["netns", "exec", n])
                    .arg(scenario_bin)
                    .args("listen --port 8000 --backlog 16 --hold 60".split_whitespace())
                    .stdout(Stdio::null())
                    .spawn()
                    .context("starting tcpq-scenario")?,
            );
        }
        sleep(Duration::from_millis(500));
        idle(&format!("{QUIET_NETNS} namespaces with a listener each"))
    })();
    for mut s in servers {
        let _ = (s.kill(), s.wait());
    }
    for n in &names {
        let _ = Command::new("ip").args(["netns", "del", n]).status();
    }
    let many = result?;
    println!(
        "  each quiet namespace: {:.1} µs of agent CPU per second",
        (many - base).max(0.0) / 100.0 * 1e6 / QUIET_NETNS as f64
    );
    Ok(())
}

fn netstat_field(text: &str, name: &str) -> Option<u64> {
    let lines: Vec<&str> = text.lines().collect();
    lines.chunks(2).find_map(|pair| {
        let (h, v) = (pair.first()?, pair.get(1)?);
        let i = h.split_whitespace().position(|f| f == name)?;
        v.split_whitespace().nth(i)?.parse().ok()
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_wrk_and_cost_lines() {
        let wrk = "Running 5s test @ http://127.0.0.1:8080/\n  1 threads and 32 connections\nRequests/sec:  41234.56\nTransfer/sec:      5.90MB\n";
        assert_eq!(requests_per_sec(wrk), Some(41234.56));
        assert_eq!(requests_per_sec("nothing"), None);
        assert_eq!(
            cost_line("tcpq: cost tcpq_kfree_skb runs=50 total_ns=8986 ns_per_run=179"),
            Some(("tcpq_kfree_skb".into(), 50, 179))
        );
        assert_eq!(cost_line("tcpq: done: 1"), None);
        let wrk = "  123456 requests in 5.00s, 17.66MB read\nRequests/sec:  24691.20\n";
        assert_eq!(requests_total(wrk), Some(123456));
        assert_eq!(median(&[3.0, 1.0, 2.0]), 2.0);
        assert_eq!(median(&[4.0, 1.0, 2.0, 3.0]), 2.5);
        assert_eq!(
            records_line("tcpq: kernel: 12 ring-buffer records sent; counted ..."),
            Some(12)
        );
        let ns = "TcpExt: SyncookiesSent ListenOverflows\nTcpExt: 0 42\nIpExt: A\nIpExt: 1\n";
        assert_eq!(netstat_field(ns, "ListenOverflows"), Some(42));
    }
}

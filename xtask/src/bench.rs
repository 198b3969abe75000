//! `cargo xtask bench`: what attaching tcpq costs a busy server.
//!
//! nginx (Debian's nginx-light) serves a tiny response on loopback inside a
//! private network namespace; wrk loads it, alternating runs without and
//! with `tcpq-agent trace` attached (host-wide, no filter), for two loads:
//! keep-alive (healthy traffic, few handshakes) and `Connection: close`
//! (one handshake per request: every listener hook fires per request).
//! Reported as ratios (with/without) measured in this one run, plus the
//! agent's CPU and memory and each kernel program's ns per run
//! (BPF_ENABLE_STATS, in one extra run: the stats themselves cost a clock
//! read per program run, so the ratio runs go without). Bounded:
//! ROUNDS × 2 × 2 + 1 runs of SECS seconds.

use std::{
    io::Read,
    path::PathBuf,
    process::{Child, Command, Stdio},
    thread::sleep,
    time::{Duration, Instant},
};

use anyhow::{bail, Context, Result};

const NS: &str = "tcpq-bench";
const ROUNDS: usize = 3;
const SECS: u32 = 5;

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

fn wrk(close: bool) -> Result<f64> {
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
    c.arg("http://127.0.0.1:8080/");
    let out = run(&mut c)?;
    requests_per_sec(&out).with_context(|| format!("no Requests/sec in wrk output: {out}"))
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

/// The agent over one run: CPU % of one core, peak RSS (KiB), program costs.
struct AgentRun {
    cpu: f64,
    hwm_kib: u64,
    costs: Vec<Cost>,
}

impl Agent {
    /// `stats`: BPF_ENABLE_STATS, which itself costs two clock reads per
    /// program run — only for the separate cost run, never for ratios.
    fn start(bin: &PathBuf, stats: bool) -> Result<Agent> {
        let mut child = Command::new(bin)
            .args(["trace", "--output", "json"])
            .args(stats.then_some("--bpf-stats"))
            .stdout(Stdio::null())
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
        let mut err = String::new();
        self.child.stderr.take().unwrap().read_to_string(&mut err)?;
        self.child.wait()?;
        let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as f64;
        let costs = err.lines().filter_map(cost_line).collect();
        Ok(AgentRun {
            cpu: ticks as f64 / hz / wall * 100.0,
            hwm_kib: hwm,
            costs,
        })
    }
}

pub fn run_bench(agent_bin: PathBuf) -> Result<()> {
    let _ns = Netns::new()?;
    let dir = std::env::temp_dir().join(format!("tcpq-bench-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    let conf = dir.join("nginx.conf");
    std::fs::write(
        &conf,
        format!(
            "worker_processes 1; master_process off; daemon off; pid {d}/nginx.pid; error_log {d}/error.log;\n\
             events {{ worker_connections 4096; }}\n\
             http {{ access_log off; client_body_temp_path {d}; proxy_temp_path {d}; fastcgi_temp_path {d}; \
             uwsgi_temp_path {d}; scgi_temp_path {d};\n\
             server {{ listen 127.0.0.1:8080 backlog=4096; location / {{ return 200 \"ok\\n\"; }} }} }}\n",
            d = dir.display()
        ),
    )?;
    let mut nginx = Command::new("ip")
        .args(["netns", "exec", NS, "nginx", "-c"])
        .arg(&conf)
        .arg("-p")
        .arg(&dir)
        .spawn()
        .context("starting nginx (apt-get install nginx-light)")?;
    sleep(Duration::from_millis(500));
    let result = (|| -> Result<()> {
        wrk(false)?; // warm-up
        println!("load                  without (req/s)   with tcpq (req/s)   ratio");
        let mut agent_stats = Vec::new();
        for (close, name) in [(false, "keep-alive"), (true, "connection-per-request")] {
            let (mut off, mut on) = (Vec::new(), Vec::new());
            for _ in 0..ROUNDS {
                off.push(wrk(close)?);
                let agent = Agent::start(&agent_bin, false)?;
                on.push(wrk(close)?);
                agent_stats.push((name, agent.stop()?));
            }
            let mean = |v: &[f64]| v.iter().sum::<f64>() / v.len() as f64;
            let rounds: Vec<String> = off
                .iter()
                .zip(&on)
                .map(|(a, b)| format!("{:.3}", b / a))
                .collect();
            println!(
                "{name:<22}{:>15.0}{:>20.0}{:>9.3}   (per round: {})",
                mean(&off),
                mean(&on),
                mean(&on) / mean(&off),
                rounds.join(" ")
            );
        }
        println!("\nagent while loaded (per run, from ready to stop): CPU % of one core, peak RSS");
        for (name, r) in &agent_stats {
            println!("  {name:<22} {:>5.1}%  {:>6} KiB", r.cpu, r.hwm_kib);
        }
        // Per-program cost in one more run, with stats on (not in the ratios).
        let agent = Agent::start(&agent_bin, true)?;
        let rps = wrk(true)?;
        let r = agent.stop()?;
        println!("\nkernel programs (a separate connection-per-request run with BPF stats on, {rps:.0} req/s): runs, ns per run, per request");
        for (prog, runs, avg) in &r.costs {
            let per_req = *runs as f64 / (rps * SECS as f64);
            println!("  {prog:<28} {runs:>9} {avg:>7} ns  {per_req:>5.1} runs/request");
        }
        Ok(())
    })();
    let _ = nginx.kill();
    let _ = nginx.wait();
    let _ = std::fs::remove_dir_all(&dir);
    result
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
    }
}

//! Test harness for tcpq's scenario tests: private network namespaces,
//! kernel counters read inside them, and the agent run as a user runs it.
//!
//! Root is required. Without it these tests fail (they must not pass
//! vacuously); set `TCPQ_SKIP_ROOT_TESTS=1` to skip them knowingly.

use std::{
    collections::HashMap,
    io::{BufRead, BufReader, Read},
    path::PathBuf,
    process::{Child, Command, Stdio},
    sync::mpsc,
    time::{Duration, Instant},
};

use serde_json::Value;

/// Returns false (and says so) when root tests are knowingly skipped;
/// panics when they cannot run but were not asked to be skipped.
pub fn root_or_skip() -> bool {
    if std::env::var("TCPQ_SKIP_ROOT_TESTS").is_ok_and(|v| v == "1") {
        eprintln!("skipped: TCPQ_SKIP_ROOT_TESTS=1");
        return false;
    }
    assert_eq!(
        unsafe { libc::geteuid() },
        0,
        "scenario tests need root (or TCPQ_SKIP_ROOT_TESTS=1)"
    );
    true
}

/// The workspace's target directory (where `cargo build` put the agent).
pub fn target_dir() -> PathBuf {
    if let Ok(d) = std::env::var("CARGO_TARGET_DIR") {
        return PathBuf::from(d);
    }
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../target")
}

/// The agent binary: `TCPQ_AGENT`, else target/{release,debug}/tcpq-agent,
/// whichever is newer.
pub fn agent_bin() -> PathBuf {
    if let Ok(p) = std::env::var("TCPQ_AGENT") {
        return PathBuf::from(p);
    }
    let candidates = ["debug", "release"].map(|p| target_dir().join(p).join("tcpq-agent"));
    candidates
        .iter()
        .filter_map(|p| Some((std::fs::metadata(p).ok()?.modified().ok()?, p.clone())))
        .max()
        .map(|(_, p)| p)
        .expect("tcpq-agent is not built: run `cargo build -p tcpq-agent` (cargo xtask test does)")
}

/// The scenario helper, built by cargo next to the test executables
/// (`target/<profile>/tcpq-scenario`, tests in `target/<profile>/deps`).
pub fn scenario_bin() -> PathBuf {
    let exe = std::env::current_exe().expect("current_exe");
    let bin = exe
        .parent()
        .and_then(|d| d.parent())
        .expect("target dir")
        .join("tcpq-scenario");
    assert!(
        bin.exists(),
        "{} missing: build with `cargo build -p tcpq-tests --bins`",
        bin.display()
    );
    bin
}

pub fn run(cmd: &mut Command) -> String {
    let out = cmd.output().unwrap_or_else(|e| panic!("{cmd:?}: {e}"));
    assert!(
        out.status.success(),
        "{cmd:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// A private network namespace with loopback up, deleted on drop.
pub struct Netns {
    pub name: String,
}

impl Netns {
    pub fn new(tag: &str) -> Netns {
        let name = format!("tcpq-{tag}-{}", std::process::id());
        // A leftover from an interrupted run would make `add` fail.
        let _ = Command::new("ip")
            .args(["netns", "del", &name])
            .stderr(Stdio::null())
            .status();
        run(Command::new("ip").args(["netns", "add", &name]));
        let ns = Netns { name };
        run(Command::new("ip").args(["-n", &ns.name, "link", "set", "lo", "up"]));
        ns.sysctl("net.ipv4.tcp_no_metrics_save", "1");
        ns
    }

    /// Sets a per-netns sysctl inside this namespace only.
    pub fn sysctl(&self, key: &str, value: &str) {
        run(self
            .cmd("sysctl")
            .args(["-q", "-w", &format!("{key}={value}")]));
    }

    /// A command that runs inside the namespace.
    pub fn cmd(&self, program: &str) -> Command {
        let mut c = Command::new("ip");
        c.args(["netns", "exec", &self.name, program]);
        c
    }

    /// The namespace's inode (what tcpq reports as `network.netns`).
    pub fn inode(&self) -> u64 {
        use std::os::unix::fs::MetadataExt;
        std::fs::metadata(format!("/run/netns/{}", self.name))
            .expect("netns mount")
            .ino()
    }

    /// TcpExt (/proc/net/netstat) and Tcp (/proc/net/snmp) counters of the
    /// namespace, keyed `TcpExt.ListenOverflows`, `Tcp.OutRsts`, ...
    pub fn counters(&self) -> HashMap<String, u64> {
        let mut out = HashMap::new();
        for file in ["/proc/net/netstat", "/proc/net/snmp"] {
            let text = run(self.cmd("cat").arg(file));
            let lines: Vec<&str> = text.lines().collect();
            for pair in lines.chunks(2) {
                let [h, v] = pair else { continue };
                let (hp, vp) = (h.split_whitespace(), v.split_whitespace());
                let mut prefix = "";
                for (k, val) in hp.zip(vp) {
                    if k.ends_with(':') {
                        prefix = k.trim_end_matches(':');
                        continue;
                    }
                    if let Ok(n) = val.parse() {
                        out.insert(format!("{prefix}.{k}"), n);
                    }
                }
            }
        }
        out
    }

    /// Waits (up to 10 s) until something listens on `port` here.
    pub fn wait_listening(&self, port: u16) {
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            let out = self
                .cmd("ss")
                .args(["-Hltn", &format!("sport = :{port}")])
                .output()
                .unwrap();
            if !String::from_utf8_lossy(&out.stdout).trim().is_empty() {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        panic!("nothing listening on {port} after 10 s");
    }

    /// Starts the scenario helper (IPv4) inside the namespace and waits for
    /// its `ready` line. Returns the child and its pid. `args`: its command
    /// line after its name, split at whitespace (`syn-overflow --port 9101
    /// --clients 6 --syncnt 1 --hold 3`; `tcpq-scenario MODE --help`).
    pub fn scenario(&self, args: &str) -> (Child, u32) {
        self.scenario_ip(Ip::V4, args)
    }

    /// Like `scenario`, over IPv4 or IPv6 loopback.
    pub fn scenario_ip(&self, ip: Ip, args: &str) -> (Child, u32) {
        let bin = scenario_bin();
        let mut cmd = self.cmd(bin.to_str().unwrap());
        cmd.env("TCPQ_SCENARIO_V6", if ip == Ip::V6 { "1" } else { "0" });
        Netns::start_scenario(cmd, args)
    }

    /// Like `scenario`, with the helper run from `bin` (a copy of it, at a
    /// path that is also its argv[0], its command line and its exe) and,
    /// with `comm`, named that with prctl(PR_SET_NAME).
    pub fn scenario_as(
        &self,
        bin: &std::path::Path,
        comm: Option<&str>,
        args: &str,
    ) -> (Child, u32) {
        use std::os::unix::ffi::OsStrExt;
        let mut cmd = Command::new("ip");
        cmd.args(["netns", "exec", &self.name]).arg(bin.as_os_str());
        cmd.env("TCPQ_SCENARIO_V6", "0");
        if let Some(c) = comm {
            cmd.env(
                "TCPQ_SCENARIO_COMM",
                std::ffi::OsStr::from_bytes(c.as_bytes()),
            );
        }
        Netns::start_scenario(cmd, args)
    }

    fn start_scenario(mut cmd: Command, args: &str) -> (Child, u32) {
        let mut child = cmd
            .args(args.split_whitespace())
            .stdout(Stdio::piped())
            .spawn()
            .expect("start tcpq-scenario");
        // Byte by byte: what follows `ready` (a result line) stays in the
        // pipe for whoever reads the rest.
        let mut line = String::new();
        let out = child.stdout.as_mut().unwrap();
        let mut b = [0u8; 1];
        while out.read(&mut b).unwrap_or(0) == 1 && b[0] != b'\n' {
            line.push(b[0] as char);
        }
        let pid = line
            .strip_prefix("ready ")
            .and_then(|p| p.trim().parse().ok());
        let pid = pid.unwrap_or_else(|| panic!("scenario {args:?} did not start: {line:?}"));
        (child, pid)
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        let _ = Command::new("ip")
            .args(["netns", "del", &self.name])
            .status();
    }
}

pub fn delta(before: &HashMap<String, u64>, after: &HashMap<String, u64>, key: &str) -> u64 {
    after.get(key).copied().unwrap_or(0) - before.get(key).copied().unwrap_or(0)
}

/// Loopback address family of a scenario.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ip {
    V4,
    V6,
}

impl Ip {
    /// What tcpq reports as `server.address`.
    pub fn loopback(self) -> &'static str {
        match self {
            Ip::V4 => "127.0.0.1",
            Ip::V6 => "::1",
        }
    }
}

/// Which hook must report SYN-time and ACK-time overflows in this run.
/// `TCPQ_EXPECT_HOOK=fentry|kprobe` (set by the VM runs, where the kernel
/// has them) demands that kind of kernel-function hook, `kfunc` either kind
/// (`--attach auto` mixes them: on Debian 6.1 the 7-argument
/// syn_recv_sock cannot take fentry); unset, the host's path: sock_diag for
/// SYN-time, the kfree_skb tracepoint for ACK-time. A silent fallback
/// therefore fails the test instead of passing it.
pub fn expected_sources() -> (String, String) {
    match std::env::var("TCPQ_EXPECT_HOOK") {
        Ok(h) if !h.is_empty() => (h.clone(), h),
        _ => ("sock_diag".into(), "tracepoint".into()),
    }
}

/// Whether a line's `source` is what `expected` (from `expected_sources`)
/// allows.
pub fn source_matches(source: &str, expected: &str) -> bool {
    match expected {
        "kfunc" => source == "fentry" || source == "kprobe",
        e => source == e,
    }
}

/// A running `tcpq-agent trace --output json`.
pub struct Agent {
    child: Child,
    /// The agent's "tcpq: tracing ..." line (lists the hooks in use).
    pub ready_line: String,
    /// What it said on stderr before that line.
    pub early: Vec<String>,
    stderr_lines: mpsc::Receiver<String>,
    stdout_lines: mpsc::Receiver<(Instant, String)>,
    pub started: Instant,
}

impl Agent {
    /// Starts the agent with extra `trace` flags and waits until it says it
    /// is tracing.
    pub fn trace(extra: &[&str]) -> Agent {
        Agent::start(&["trace", "--output", "json"], extra)
    }

    /// Starts `tcpq-agent run` (the sidecar) with these flags and waits
    /// until it is tracing. Its JSON lines are on stdout unless
    /// `--output-file` is given.
    pub fn run(extra: &[&str]) -> Agent {
        Agent::start(&["run"], extra)
    }

    /// Starts `tcpq-agent trace --output json` through `wrapper` (a program
    /// and its arguments that then exec the agent, e.g. `setpriv ...`).
    pub fn trace_via(wrapper: &[String], extra: &[&str]) -> Agent {
        Agent::start_via(wrapper, &["trace", "--output", "json"], extra)
    }

    /// Like [`Agent::run`], through `wrapper`.
    pub fn run_via(wrapper: &[String], extra: &[&str]) -> Agent {
        Agent::start_via(wrapper, &["run"], extra)
    }

    /// Starts the agent with these arguments (a subcommand and its flags)
    /// and waits until it is tracing.
    pub fn start(sub: &[&str], extra: &[&str]) -> Agent {
        Agent::start_via(&[], sub, extra)
    }

    /// Like [`Agent::trace`], with these variables in the agent's
    /// environment (test-only knobs).
    pub fn trace_env(extra: &[&str], env: &[(&str, &str)]) -> Agent {
        let mut cmd = Command::new(agent_bin());
        cmd.envs(env.iter().copied())
            .args(["trace", "--output", "json"])
            .args(extra)
            .args(attach_args());
        Agent::spawn(cmd)
    }

    fn start_via(wrapper: &[String], sub: &[&str], extra: &[&str]) -> Agent {
        let mut cmd = match wrapper.split_first() {
            Some((prog, args)) => {
                let mut c = Command::new(prog);
                c.args(args).arg(agent_bin());
                c
            }
            None => Command::new(agent_bin()),
        };
        cmd.args(sub).args(extra).args(attach_args());
        Agent::spawn(cmd)
    }

    /// Starts `cmd` (the agent, or a command that execs it, keeping its
    /// pid) with stdout and stderr piped, and waits until it is tracing.
    pub fn spawn(mut cmd: Command) -> Agent {
        let mut child = cmd
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("start tcpq-agent");
        let (tx, rx) = mpsc::channel();
        let stderr = child.stderr.take().unwrap();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                eprintln!("[agent] {line}");
                let _ = tx.send(line);
            }
        });
        // Under QEMU's TCG, with another VM beside it, reading the kernel's
        // BTF and verifying and attaching the programs takes several times
        // as long as here.
        let start_within = if std::env::var_os("TCPQ_IN_VM").is_some() {
            Duration::from_secs(120)
        } else {
            Duration::from_secs(30)
        };
        let deadline = Instant::now() + start_within;
        let mut early = Vec::new();
        let ready_line = loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match rx.recv_timeout(left) {
                Ok(l) if l.starts_with("tcpq: tracing") => {
                    eprintln!(
                        "[agent] ready after {:.1} s",
                        (start_within - deadline.saturating_duration_since(Instant::now()))
                            .as_secs_f64()
                    );
                    break l;
                }
                Ok(l) => early.push(l),
                Err(_) => {
                    let _ = child.kill();
                    panic!("agent did not start tracing within {start_within:?}");
                }
            }
        };
        let (otx, orx) = mpsc::channel();
        let stdout = child.stdout.take().unwrap();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                let _ = otx.send((Instant::now(), line));
            }
        });
        Agent {
            child,
            ready_line,
            early,
            stderr_lines: rx,
            stdout_lines: orx,
            started: Instant::now(),
        }
    }

    /// Sends SIGINT, waits for the exit, returns the JSON lines printed.
    pub fn stop(self) -> Vec<Value> {
        self.stop_timed().into_iter().map(|(_, v)| v).collect()
    }

    /// Like `stop`, with the time each line arrived.
    pub fn stop_timed(self) -> Vec<(Instant, Value)> {
        self.stop_with(libc::SIGINT)
    }

    /// Stops the agent with `signal` (SIGINT or SIGTERM: both must flush
    /// what is pending and exit 0); returns the lines with arrival times.
    pub fn stop_with(self, signal: i32) -> Vec<(Instant, Value)> {
        self.stop_with_stderr(signal).0
    }

    /// Like `stop_with`, also returning what the agent said on stderr after
    /// it was ready (e.g. its exit summary).
    pub fn stop_with_stderr(mut self, signal: i32) -> (Vec<(Instant, Value)>, Vec<String>) {
        unsafe { libc::kill(self.child.id() as i32, signal) };
        let status = self.child.wait().unwrap();
        assert!(status.success(), "agent exited with {status}");
        let mut err = Vec::new();
        while let Ok(l) = self.stderr_lines.recv_timeout(Duration::from_secs(2)) {
            err.push(l);
        }
        let mut out = Vec::new();
        while let Ok((at, l)) = self.stdout_lines.recv_timeout(Duration::from_secs(5)) {
            let v = serde_json::from_str(&l).unwrap_or_else(|e| panic!("not JSON ({e}): {l}"));
            out.push((at, v));
        }
        (out, err)
    }

    /// Sends `signal`, waits for the exit; returns the exit status and the
    /// lines on stdout and stderr (after ready), as they are.
    pub fn stop_raw(mut self, signal: i32) -> (std::process::ExitStatus, Vec<String>, Vec<String>) {
        unsafe { libc::kill(self.child.id() as i32, signal) };
        let status = self.child.wait().unwrap();
        let mut err = Vec::new();
        while let Ok(l) = self.stderr_lines.recv_timeout(Duration::from_secs(2)) {
            err.push(l);
        }
        let mut out = Vec::new();
        while let Ok((_, l)) = self.stdout_lines.recv_timeout(Duration::from_secs(5)) {
            out.push(l);
        }
        (status, out, err)
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Waits up to `within` for a stderr line containing `what`.
    pub fn wait_stderr(&self, what: &str, within: Duration) -> Option<String> {
        let deadline = Instant::now() + within;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.stderr_lines.recv_timeout(left) {
                Ok(l) if l.contains(what) => return Some(l),
                Ok(_) => continue,
                Err(_) => return None,
            }
        }
    }

    /// Whether the agent is still running.
    pub fn alive(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }

    /// The agent's resident memory, KiB (VmRSS).
    pub fn rss_kib(&self) -> u64 {
        let status =
            std::fs::read_to_string(format!("/proc/{}/status", self.pid())).unwrap_or_default();
        status
            .lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
            .unwrap_or(0)
    }
}

/// `--attach MODE` when `TCPQ_ATTACH` asks for one.
pub fn attach_args() -> Vec<String> {
    match std::env::var("TCPQ_ATTACH") {
        Ok(mode) if !mode.is_empty() => vec!["--attach".to_string(), mode],
        _ => vec![],
    }
}

/// A TCP port on 127.0.0.1 nobody listens on right now.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// HTTP/1.0 GET on loopback: (status code, body).
pub fn http_get(addr: &str, path: &str) -> std::io::Result<(u16, String)> {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(addr)?;
    s.set_read_timeout(Some(Duration::from_secs(10)))?;
    write!(s, "GET {path} HTTP/1.0\r\nHost: {addr}\r\n\r\n")?;
    let mut raw = Vec::new();
    s.read_to_end(&mut raw)?;
    let text = String::from_utf8_lossy(&raw).to_string();
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    let code = head
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    Ok((code, body.to_string()))
}

impl Drop for Agent {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Sum of `count` over lines matching `event` (and `stage`, if given) for
/// the listener on `port` in netns `netns`.
pub fn sum(lines: &[Value], event: &str, stage: Option<&str>, port: u16, netns: u64) -> u64 {
    lines
        .iter()
        .filter(|l| l["event"] == event)
        .filter(|l| stage.is_none_or(|s| l["stage"] == s))
        .filter(|l| l["server.port"] == port && l["network.netns"] == netns)
        .map(|l| l["count"].as_u64().unwrap())
        .sum()
}

/// The running kernel's `major.minor` (from `uname -r`).
pub fn kernel_version() -> (u32, u32) {
    let release = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
    let mut it = release
        .trim()
        .split(['.', '-'])
        .map(|p| p.parse::<u32>().unwrap_or(0));
    (it.next().unwrap_or(0), it.next().unwrap_or(0))
}

/// Marks the calling test as skipped on this kernel because it lacks
/// `needs` (a kernel change, named with the version that brought it). The
/// line goes straight to stdout, past libtest's capture, so `cargo xtask
/// test` counts and lists it instead of counting a pass; the caller then
/// returns.
pub fn skip(needs: &str) {
    use std::io::Write;
    let test = std::thread::current()
        .name()
        .unwrap_or("?")
        .rsplit("::")
        .next()
        .unwrap_or("?")
        .to_string();
    let (major, minor) = kernel_version();
    let line = format!("TCPQ-SKIP {test} on {major}.{minor}: needs {needs}\n");
    let _ = std::io::stdout().lock().write_all(line.as_bytes());
}

/// The namespace's TIME_WAIT sockets now (`/proc/net/sockstat` `tw`).
pub fn sockstat_tw(ns: &Netns) -> u64 {
    run(ns.cmd("cat").arg("/proc/net/sockstat"))
        .lines()
        .find_map(|l| {
            let mut w = l.strip_prefix("TCP:")?.split_whitespace();
            while let Some(k) = w.next() {
                if k == "tw" {
                    return w.next()?.parse().ok();
                }
            }
            None
        })
        .expect("no TCP tw in /proc/net/sockstat")
}

/// Waits for a scenario to finish and returns what it printed after its
/// `ready` line; a failed scenario fails the test.
pub fn finish(mut child: Child) -> String {
    use std::io::Read;
    let mut s = String::new();
    child.stdout.take().unwrap().read_to_string(&mut s).unwrap();
    assert!(child.wait().unwrap().success(), "scenario failed: {s}");
    s
}

/// `NAME=N` from a scenario's result line.
pub fn field(out: &str, name: &str) -> u64 {
    out.split_whitespace()
        .find_map(|w| w.strip_prefix(&format!("{name}=")))
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("no {name}= in {out:?}"))
}

/// nginx (Debian's nginx-light) serving `ok` on 127.0.0.1:PORT in a
/// namespace, everything it writes under a private directory.
pub struct Nginx {
    child: Child,
    dir: PathBuf,
    /// The worker processes (empty for a single-process nginx).
    pub workers: Vec<u32>,
}

/// How an nginx is run.
#[derive(Clone, Copy)]
pub struct NginxConf {
    /// 0: one process (`master_process off`), else a master and this many
    /// workers.
    pub workers: u32,
    /// `listen … reuseport`: one listening socket per worker.
    pub reuseport: bool,
    pub backlog: u32,
}

impl Nginx {
    /// A single process with a deep backlog: for load.
    pub fn start(ns: &Netns, port: u16) -> Nginx {
        Nginx::with(
            ns,
            port,
            NginxConf {
                workers: 0,
                reuseport: false,
                backlog: 4096,
            },
        )
    }

    pub fn with(ns: &Netns, port: u16, c: NginxConf) -> Nginx {
        let dir = std::env::temp_dir().join(format!("tcpq-nginx-{}-{port}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let d = dir.display();
        let conf = dir.join("nginx.conf");
        let procs = match c.workers {
            0 => "worker_processes 1; master_process off;".to_string(),
            n => format!("worker_processes {n}; master_process on;"),
        };
        let reuseport = if c.reuseport { " reuseport" } else { "" };
        std::fs::write(
            &conf,
            format!(
                "{procs} daemon off; pid {d}/nginx.pid; error_log {d}/error.log;\n\
                 events {{ worker_connections 1024; }}\n\
                 http {{ access_log off; client_body_temp_path {d}; proxy_temp_path {d}; fastcgi_temp_path {d}; \
                 uwsgi_temp_path {d}; scgi_temp_path {d};\n\
                 server {{ listen 127.0.0.1:{port} backlog={}{reuseport}; location / {{ return 200 \"ok\\n\"; }} }} }}\n",
                c.backlog
            ),
        )
        .unwrap();
        let child = ns
            .cmd("nginx")
            .arg("-c")
            .arg(&conf)
            .arg("-p")
            .arg(&dir)
            .arg("-e")
            .arg(dir.join("error.log"))
            .stdout(Stdio::null())
            .spawn()
            .expect("start nginx (apt-get install nginx-light; cargo xtask setup does)");
        let mut nginx = Nginx {
            child,
            dir,
            workers: Vec::new(),
        };
        // Ready once a request gets its 200 and every worker is there.
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            nginx.workers = children(nginx.child.id());
            let ok = http_close(ns, port, 1).0 == 1;
            if ok && nginx.workers.len() == c.workers as usize {
                break;
            }
            assert!(Instant::now() < deadline, "nginx did not answer on {port}");
            std::thread::sleep(Duration::from_millis(100));
        }
        nginx
    }

    pub fn master(&self) -> u32 {
        self.child.id()
    }

    /// Sends `signal` to every worker (SIGSTOP: nobody accepts).
    pub fn signal_workers(&self, signal: i32) {
        for &w in &self.workers {
            // SAFETY: plain kill(2).
            unsafe { libc::kill(w as i32, signal) };
        }
    }
}

impl Drop for Nginx {
    fn drop(&mut self) {
        // nginx's own fast shutdown: the master stops its workers and reaps
        // them (workers killed first would be respawned, or left as zombies
        // of init).
        let mut workers = children(self.child.id());
        workers.extend(&self.workers);
        for &w in &workers {
            // SAFETY: plain kill(2).
            unsafe { libc::kill(w as i32, libc::SIGCONT) };
        }
        unsafe { libc::kill(self.child.id() as i32, libc::SIGTERM) };
        let deadline = Instant::now() + Duration::from_secs(5);
        while Instant::now() < deadline && matches!(self.child.try_wait(), Ok(None)) {
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
        for w in workers {
            unsafe { libc::kill(w as i32, libc::SIGKILL) };
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// The child processes of `pid`.
pub fn children(pid: u32) -> Vec<u32> {
    let mut out: Vec<u32> = std::fs::read_dir(format!("/proc/{pid}/task"))
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|t| std::fs::read_to_string(t.path().join("children")).ok())
        .flat_map(|c| {
            c.split_whitespace()
                .filter_map(|p| p.parse().ok())
                .collect::<Vec<u32>>()
        })
        .collect();
    out.sort_unstable();
    out
}

/// The socket inodes `pid` holds.
pub fn sockets_of(pid: u32) -> Vec<u64> {
    std::fs::read_dir(format!("/proc/{pid}/fd"))
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| std::fs::read_link(e.path()).ok())
        .filter_map(|l| {
            l.to_str()?
                .strip_prefix("socket:[")?
                .strip_suffix(']')?
                .parse()
                .ok()
        })
        .collect()
}

/// The socket inodes `pid`'s epoll files watch (`/proc/PID/fdinfo`: an
/// nginx worker watches its own SO_REUSEPORT member only).
pub fn polled_by(pid: u32) -> Vec<u64> {
    std::fs::read_dir(format!("/proc/{pid}/fd"))
        .into_iter()
        .flatten()
        .flatten()
        .filter(|e| {
            std::fs::read_link(e.path()).is_ok_and(|t| t.as_os_str() == "anon_inode:[eventpoll]")
        })
        .filter_map(|e| {
            std::fs::read_to_string(format!(
                "/proc/{pid}/fdinfo/{}",
                e.file_name().to_string_lossy()
            ))
            .ok()
        })
        .flat_map(|t| {
            t.lines()
                .filter(|l| l.starts_with("tfd:"))
                .filter_map(|l| {
                    let hex = l.split_whitespace().find_map(|w| w.strip_prefix("ino:"))?;
                    u64::from_str_radix(hex, 16).ok()
                })
                .collect::<Vec<_>>()
        })
        .collect()
}

/// `n` sequential `Connection: close` requests from inside `ns`: (200s,
/// failures).
pub fn http_close(ns: &Netns, port: u16, n: u64) -> (u64, u64) {
    let (child, _) = ns.scenario(&format!("http-close --port {port} --requests {n}"));
    let out = finish(child);
    (field(&out, "ok"), field(&out, "failed"))
}

/// A scratch directory, removed at the end.
pub struct Dir(pub PathBuf);

impl Dir {
    pub fn new(tag: &str) -> Dir {
        let p = std::env::temp_dir().join(format!("tcpq-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&p);
        std::fs::create_dir_all(&p).unwrap();
        Dir(p)
    }

    pub fn path(&self, name: &str) -> PathBuf {
        self.0.join(name)
    }
}

impl Drop for Dir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Calls `f` every 250 ms until it returns something, for at most `within`.
pub fn wait_until<T>(within: Duration, mut f: impl FnMut() -> Option<T>) -> Option<T> {
    let deadline = Instant::now() + within;
    loop {
        if let Some(v) = f() {
            return Some(v);
        }
        if Instant::now() > deadline {
            return None;
        }
        std::thread::sleep(Duration::from_millis(250));
    }
}

/// redis-server on 127.0.0.1:`port` in `ns`, without persistence, as
/// Debian installs it (`cargo xtask setup`); `extra` flags after the rest.
/// Returns once it listens; killed when dropped.
pub fn redis_server(ns: &Netns, port: u16, extra: &[&str]) -> Redis {
    let p = port.to_string();
    let child = ns
        .cmd("redis-server")
        .args(["--port", &p, "--bind", "127.0.0.1", "--save", ""])
        .args([
            "--appendonly",
            "no",
            "--daemonize",
            "no",
            "--loglevel",
            "warning",
        ])
        .args(extra)
        .stdout(std::process::Stdio::null())
        .spawn()
        .expect("redis-server (cargo xtask setup installs it)");
    ns.wait_listening(port);
    Redis(child)
}

/// A redis-server of [`redis_server`]: killed when dropped, so that a failed
/// test leaves nothing running.
pub struct Redis(pub Child);

impl Redis {
    pub fn pid(&self) -> u32 {
        self.0.id()
    }
}

impl Drop for Redis {
    fn drop(&mut self) {
        let _ = (self.0.kill(), self.0.wait());
    }
}

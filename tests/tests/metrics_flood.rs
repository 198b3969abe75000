//! `/metrics` under a hostile network: 1,000 idle TCP connections kept open
//! (each one the server closes is opened again at once) plus a slowloris
//! (connections sending one header byte every 500 ms), and meanwhile
//! normal scrapes, spaced 100 ms, must still be answered within 1 s with a
//! body `promtool check metrics` accepts. Also measured: the agent's
//! resident memory with the flood open, and its own listener's accept
//! queue (it must not back up). Host only (the guest carries no promtool);
//! root.

use std::{
    io::{ErrorKind, Read, Write},
    net::TcpStream,
    process::{Command, Stdio},
    sync::{
        atomic::{AtomicBool, AtomicU64, Ordering::Relaxed},
        Arc,
    },
    thread,
    time::{Duration, Instant},
};

use tcpq_tests::*;

const IDLE: usize = 1000;
const SLOWLORIS: usize = 8;
const SCRAPES: usize = 50;
const SCRAPE_WITHIN: Duration = Duration::from_secs(1);

/// The test's own descriptors: 1,000 and more sockets.
fn raise_nofile() {
    let mut r = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    unsafe {
        libc::getrlimit(libc::RLIMIT_NOFILE, &mut r);
        r.rlim_cur = r.rlim_max;
        libc::setrlimit(libc::RLIMIT_NOFILE, &r);
    }
    assert!(
        r.rlim_cur as usize > IDLE + SLOWLORIS + 256,
        "RLIMIT_NOFILE hard limit {} is too low for the flood",
        r.rlim_max
    );
}

#[derive(Default)]
struct FloodStats {
    /// Flood connections open right now.
    open: AtomicU64,
    /// Idle connections the server closed (and the flood opened again).
    idle_closed: AtomicU64,
    /// Slowloris connections the server closed, and the longest one lasted (ms).
    slow_closed: AtomicU64,
    slow_longest_ms: AtomicU64,
    connect_errors: AtomicU64,
}

/// True once the server has closed (or reset) the connection.
fn closed(s: &mut TcpStream) -> bool {
    let mut buf = [0u8; 256];
    loop {
        match s.read(&mut buf) {
            Ok(0) => return true,
            Ok(_) => continue, // a 408 or similar before the close
            Err(e) if e.kind() == ErrorKind::WouldBlock => return false,
            Err(_) => return true,
        }
    }
}

fn connect(addr: &str, stats: &FloodStats) -> Option<TcpStream> {
    match TcpStream::connect_timeout(&addr.parse().unwrap(), Duration::from_secs(1)) {
        Ok(s) => {
            s.set_nonblocking(true).unwrap();
            Some(s)
        }
        Err(e) => {
            eprintln!("flood: connect: {e}");
            stats.connect_errors.fetch_add(1, Relaxed);
            None
        }
    }
}

/// Keeps `n_idle` idle connections and `n_slow` slowloris drippers open
/// until `stop`; every socket is closed when it returns.
fn flood(
    addr: String,
    (n_idle, n_slow): (usize, usize),
    stop: Arc<AtomicBool>,
    stats: Arc<FloodStats>,
) {
    const HEADER: &[u8] = b"GET /metrics HTTP/1.1\r\nHost: x\r\nX-Slow: aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa";
    let mut idle: Vec<Option<TcpStream>> = (0..n_idle).map(|_| connect(&addr, &stats)).collect();
    // (socket, opened, bytes sent, last byte at)
    let mut slow: Vec<Option<(TcpStream, Instant, usize, Instant)>> =
        (0..n_slow).map(|_| None).collect();
    // Bounded whatever happens to the test thread.
    let deadline = Instant::now() + Duration::from_secs(120);
    while !stop.load(Relaxed) && Instant::now() < deadline {
        for c in idle.iter_mut() {
            if c.as_mut().is_some_and(closed) {
                stats.idle_closed.fetch_add(1, Relaxed);
                *c = None;
            }
            if c.is_none() {
                *c = connect(&addr, &stats);
            }
        }
        let now = Instant::now();
        for c in slow.iter_mut() {
            if let Some((s, opened, sent, last)) = c {
                // The header never ends: past HEADER, more of its last value.
                let byte = HEADER.get(*sent).unwrap_or(&b'a');
                let gone = closed(s)
                    || (now >= *last + Duration::from_millis(500)
                        && s.write_all(&[*byte]).is_err());
                if gone {
                    stats.slow_closed.fetch_add(1, Relaxed);
                    let ms = opened.elapsed().as_millis() as u64;
                    stats.slow_longest_ms.fetch_max(ms, Relaxed);
                    *c = None;
                } else if now >= *last + Duration::from_millis(500) {
                    (*sent, *last) = (*sent + 1, now);
                }
            }
            if c.is_none() {
                *c = connect(&addr, &stats).map(|s| (s, now, 0, now - Duration::from_secs(1)));
            }
        }
        let open = idle.iter().flatten().count() + slow.iter().flatten().count();
        stats.open.store(open as u64, Relaxed);
        thread::sleep(Duration::from_millis(50));
    }
    stats.open.store(0, Relaxed);
}

/// One scrape: (latency, body) when it answered 200 within SCRAPE_WITHIN.
fn scrape(addr: &str) -> Option<(Duration, String)> {
    let t = Instant::now();
    let mut s = TcpStream::connect_timeout(&addr.parse().unwrap(), SCRAPE_WITHIN).ok()?;
    s.set_read_timeout(Some(SCRAPE_WITHIN)).ok()?;
    s.set_write_timeout(Some(SCRAPE_WITHIN)).ok()?;
    write!(
        s,
        "GET /metrics HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n"
    )
    .ok()?;
    let mut raw = Vec::new();
    // A read timeout ends the read with an error: not answered in time.
    s.read_to_end(&mut raw).ok()?;
    let took = t.elapsed();
    let text = String::from_utf8(raw).ok()?;
    let (head, body) = text.split_once("\r\n\r\n")?;
    (took <= SCRAPE_WITHIN && head.starts_with("HTTP/1.1 200 ")).then(|| (took, body.to_string()))
}

fn promtool_ok(body: &str) -> Result<(), String> {
    let mut child = Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("promtool (Debian package `prometheus`)");
    child
        .stdin
        .take()
        .unwrap()
        .write_all(body.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    let msg = String::from_utf8_lossy(&out.stdout) + String::from_utf8_lossy(&out.stderr);
    if out.status.success() {
        Ok(())
    } else {
        Err(format!("promtool check metrics: {msg}\n{body}"))
    }
}

/// The agent's descriptors (its flood connections among them).
fn fds(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd")).map_or(0, |d| d.count())
}

/// The accept queue of the listener on `port` in this namespace: (Recv-Q,
/// Send-Q), the connections waiting for the agent's accept() and the limit.
fn accept_queue(port: u16) -> (u64, u64) {
    let out = Command::new("ss")
        .args(["-Hltn", &format!("sport = :{port}")])
        .output()
        .expect("ss (iproute2)");
    let text = String::from_utf8_lossy(&out.stdout);
    let mut q = text
        .split_whitespace()
        .skip(1)
        .map(|q| q.parse().unwrap_or(0));
    (q.next().unwrap_or(0), q.next().unwrap_or(0))
}

/// The accept queue of the listener on 127.0.0.1:`port`, from
/// /proc/net/tcp (a listener's rx_queue): cheap enough to sample every
/// 10 ms.
fn accept_queue_now(port: u16) -> u64 {
    let want = format!("0100007F:{port:04X}");
    let text = std::fs::read_to_string("/proc/net/tcp").unwrap_or_default();
    text.lines()
        .skip(1)
        .map(|l| l.split_whitespace().collect::<Vec<_>>())
        .find(|f| f.len() > 4 && f[1] == want && f[3] == "0A")
        .and_then(|f| f[4].split_once(':').map(|(_, rx)| rx.to_string()))
        .and_then(|rx| u64::from_str_radix(&rx, 16).ok())
        .unwrap_or(0)
}

/// A sample's value in a Prometheus text body (0 when absent).
fn value(body: &str, series: &str) -> f64 {
    body.lines()
        .find_map(|l| l.strip_prefix(series)?.strip_prefix(' '))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(0.0)
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    sorted[((sorted.len() as f64 * p).ceil() as usize).clamp(1, sorted.len()) - 1]
}

#[test]
fn metrics_survive_idle_connections_and_slowloris() {
    if std::env::var("TCPQ_IN_VM").is_ok_and(|v| v == "1") {
        return eprintln!("skipped in the VM: host only (the guest carries no promtool)");
    }
    if !root_or_skip() {
        return;
    }
    raise_nofile();
    let port = free_port();
    let addr = format!("127.0.0.1:{port}");
    let agent = Agent::run(&["--metrics-address", &addr, "--output-file", "/dev/null"]);
    let (code, body) = http_get(&addr, "/metrics").unwrap();
    assert_eq!(code, 200, "{body}");
    promtool_ok(&body).unwrap();
    let (rss_before, fds_before) = (agent.rss_kib(), fds(agent.pid()));

    let stop = Arc::new(AtomicBool::new(false));
    let stats = Arc::new(FloodStats::default());
    let flooder = {
        let (addr, stop, stats) = (addr.clone(), stop.clone(), stats.clone());
        thread::spawn(move || flood(addr, (IDLE, SLOWLORIS), stop, stats))
    };
    let started = Instant::now();
    while (stats.open.load(Relaxed) as usize) < IDLE + SLOWLORIS {
        assert!(
            started.elapsed() < Duration::from_secs(20),
            "flood never got open"
        );
        thread::sleep(Duration::from_millis(50));
    }
    thread::sleep(Duration::from_millis(500));
    // The agent's listener's queue, every 10 ms while the flood runs.
    let sampler = {
        let stop = stop.clone();
        thread::spawn(move || {
            let mut max = 0;
            while !stop.load(Relaxed) {
                max = max.max(accept_queue_now(port));
                thread::sleep(Duration::from_millis(10));
            }
            max
        })
    };
    let (mut rss_max, mut fds_max) = (0, 0);
    let mut answered = Vec::new();
    let mut failed = 0;
    for _ in 0..SCRAPES {
        let t = Instant::now();
        match scrape(&addr) {
            Some(ok) => answered.push(ok),
            None => failed += 1,
        }
        rss_max = rss_max.max(agent.rss_kib());
        fds_max = fds_max.max(fds(agent.pid()));
        thread::sleep(Duration::from_millis(100).saturating_sub(t.elapsed()));
    }
    let flood_open = stats.open.load(Relaxed);
    stop.store(true, Relaxed);
    flooder.join().unwrap();
    let queue_max = sampler.join().unwrap();

    let mut lat: Vec<Duration> = answered.iter().map(|(d, _)| *d).collect();
    lat.sort();
    let ms = |d: Duration| d.as_secs_f64() * 1000.0;
    eprintln!(
        "metrics flood: {} of {SCRAPES} scrapes answered within {SCRAPE_WITHIN:?} ({failed} not); latency p50 {:.1} ms, p99 {:.1} ms, max {:.1} ms",
        answered.len(),
        lat.first().map_or(0.0, |_| ms(percentile(&lat, 0.50))),
        lat.first().map_or(0.0, |_| ms(percentile(&lat, 0.99))),
        lat.last().map_or(0.0, |d| ms(*d)),
    );
    eprintln!(
        "metrics flood: {flood_open} flood connections open at the end; server closed {} idle and {} slowloris ones (longest slowloris {} ms); {} connect errors",
        stats.idle_closed.load(Relaxed),
        stats.slow_closed.load(Relaxed),
        stats.slow_longest_ms.load(Relaxed),
        stats.connect_errors.load(Relaxed),
    );
    eprintln!(
        "metrics flood: agent RSS {rss_before} KiB before, {rss_max} KiB at most during; descriptors {fds_before} before, {fds_max} at most; its listener's accept queue at most {queue_max}"
    );

    // ≥ 95 % answered within a second, each body valid.
    assert!(
        answered.len() * 100 >= SCRAPES * 95,
        "{} of {SCRAPES} answered",
        answered.len()
    );
    for (_, body) in &answered {
        assert!(body.contains("# TYPE tcpq_"), "{body}");
        promtool_ok(body).unwrap();
    }
    // The flood was really there while scraping: the connections the
    // server closed were opened again, and the server held them.
    let held = answered
        .iter()
        .map(|(_, b)| value(b, "tcpq_http_connections"))
        .fold(0.0, f64::max);
    eprintln!("metrics flood: tcpq_http_connections at most {held} during the scrapes");
    assert!(held >= IDLE as f64, "tcpq_http_connections at most {held}");
    assert!(
        flood_open as usize >= IDLE,
        "{flood_open} flood connections"
    );
    assert_eq!(stats.connect_errors.load(Relaxed), 0);
    // The header timeout (2 s) cut every slowloris connection.
    let longest = stats.slow_longest_ms.load(Relaxed);
    assert!(stats.slow_closed.load(Relaxed) >= SLOWLORIS as u64);
    assert!(longest < 4000, "a slowloris connection lasted {longest} ms");
    // The agent accepts at once: its own listener does not back up.
    // An idle connection costs about 2 KiB until its first byte (hyper's
    // buffers come with the request): 1,000 of them well under 16 MiB.
    assert!(
        rss_max.saturating_sub(rss_before) < 16 * 1024,
        "RSS {rss_before} -> {rss_max} KiB"
    );
    // The agent's own listener does not back up: its queue stays under a
    // quarter of its limit, where the agent would call it backing up (and
    // attach its accept() hooks host-wide).
    let limit = accept_queue(port).1;
    assert!(limit >= 1024, "listen backlog {limit}");
    assert!(
        queue_max < limit / 4,
        "accept queue reached {queue_max} of {limit}"
    );

    // The flood's connections are gone from the agent once closed, and it
    // still answers and exits cleanly.
    let settled = Instant::now();
    while fds(agent.pid()) > fds_before + 16 && settled.elapsed() < Duration::from_secs(5) {
        thread::sleep(Duration::from_millis(100));
    }
    assert!(
        fds(agent.pid()) <= fds_before + 16,
        "{} fds",
        fds(agent.pid())
    );
    let (code, body) = http_get(&addr, "/metrics").unwrap();
    assert_eq!(code, 200);
    // What it shed is on /metrics, by reason.
    let timeouts = value(
        &body,
        "tcpq_http_connections_closed_total{reason=\"timeout\"}",
    );
    eprintln!("metrics flood: {timeouts} connections closed for timeout on /metrics");
    let cut = stats.idle_closed.load(Relaxed) + stats.slow_closed.load(Relaxed);
    assert!(
        timeouts >= cut as f64 * 0.9,
        "{timeouts} timeouts counted, {cut} seen"
    );
    agent.stop();
}

/// `tcpq-agent run` with RLIMIT_NOFILE 512 (soft and hard): the server's cap
/// is half of it, 256. A flood of 400 idle connections (reopened as they
/// are closed) then meets the cap: each new connection closes the oldest
/// idle one, the scrapes still get in, and the agent never runs out of
/// descriptors. Then the limit is lowered to 384 under the running agent
/// (prlimit): the cap follows, 192; then to 160, below what is open: accept()
/// fails with EMFILE, counted, each failure closing the oldest idle
/// connection, and the scrapes still get in.
#[test]
fn at_a_low_descriptor_limit_the_oldest_idle_connection_makes_room() {
    use std::io::BufRead;
    use std::os::unix::process::CommandExt;
    if std::env::var("TCPQ_IN_VM").is_ok_and(|v| v == "1") {
        return eprintln!("skipped in the VM: host only");
    }
    if !root_or_skip() {
        return;
    }
    raise_nofile();
    let port = free_port();
    let addr = format!("127.0.0.1:{port}");
    let mut cmd = Command::new(agent_bin());
    cmd.args([
        "run",
        "--metrics-address",
        &addr,
        "--output-file",
        "/dev/null",
    ])
    .stdout(Stdio::null())
    .stderr(Stdio::piped());
    unsafe {
        cmd.pre_exec(|| {
            let r = libc::rlimit {
                rlim_cur: 512,
                rlim_max: 512,
            };
            if libc::setrlimit(libc::RLIMIT_NOFILE, &r) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    let mut child = cmd.spawn().expect("start tcpq-agent");
    let pid = child.id();
    // Killed whatever happens below.
    struct Kill(u32);
    impl Drop for Kill {
        fn drop(&mut self) {
            unsafe { libc::kill(self.0 as i32, libc::SIGKILL) };
        }
    }
    let kill = Kill(pid);
    let (tx, rx) = std::sync::mpsc::channel();
    let stderr = child.stderr.take().unwrap();
    thread::spawn(move || {
        for line in std::io::BufReader::new(stderr)
            .lines()
            .map_while(Result::ok)
        {
            eprintln!("[agent] {line}");
            let _ = tx.send(line);
        }
    });
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        match rx.recv_timeout(left) {
            Ok(l) if l.starts_with("tcpq: tracing") => break,
            Ok(_) => continue,
            Err(_) => panic!("agent did not start tracing within 30 s"),
        }
    }

    let stop = Arc::new(AtomicBool::new(false));
    let stats = Arc::new(FloodStats::default());
    let flooder = {
        let (addr, stop, stats) = (addr.clone(), stop.clone(), stats.clone());
        thread::spawn(move || flood(addr, (400, 0), stop, stats))
    };
    thread::sleep(Duration::from_millis(1000));
    const N: usize = 20;
    // N scrapes 100 ms apart: (answered, tcpq_http_connections at most,
    // the agent's descriptors at most).
    let phase = || {
        let (mut answered, mut held, mut fds_max) = (0, 0.0f64, 0);
        for _ in 0..N {
            let t = Instant::now();
            if let Some((_, body)) = scrape(&addr) {
                answered += 1;
                held = held.max(value(&body, "tcpq_http_connections"));
            }
            fds_max = fds_max.max(fds(pid));
            thread::sleep(Duration::from_millis(100).saturating_sub(t.elapsed()));
        }
        (answered, held, fds_max)
    };
    let (answered, held, fds_max) = phase();
    eprintln!(
        "low limit 512: {answered} of {N} scrapes answered; tcpq_http_connections at most {held}; agent descriptors at most {fds_max}"
    );
    assert!(answered * 100 >= N * 95, "{answered} of {N} answered");
    assert!((200.0..=256.0).contains(&held), "held {held}");
    assert!(fds_max < 512, "{fds_max} descriptors");

    // Lowered under the running agent (prlimit): the cap follows, 192.
    let low = libc::rlimit {
        rlim_cur: 384,
        rlim_max: 384,
    };
    let set = unsafe { libc::prlimit(pid as i32, libc::RLIMIT_NOFILE, &low, std::ptr::null_mut()) };
    assert_eq!(set, 0, "prlimit: {}", std::io::Error::last_os_error());
    thread::sleep(Duration::from_millis(300));
    let (answered, held, fds_max) = phase();
    eprintln!(
        "low limit 384 (lowered): {answered} of {N} scrapes answered; tcpq_http_connections at most {held}; agent descriptors at most {fds_max}"
    );
    assert!(answered * 100 >= N * 95, "{answered} of {N} answered");
    assert!((150.0..=192.0).contains(&held), "held {held}");
    assert!(fds_max < 384, "{fds_max} descriptors");

    // Lowered below what is open (≈ 192 connections + the agent's own):
    // accept() fails with EMFILE until enough are closed, each failure
    // closing the oldest idle connection; then the cap, 80.
    let low = libc::rlimit {
        rlim_cur: 160,
        rlim_max: 160,
    };
    let set = unsafe { libc::prlimit(pid as i32, libc::RLIMIT_NOFILE, &low, std::ptr::null_mut()) };
    assert_eq!(set, 0, "prlimit: {}", std::io::Error::last_os_error());
    let (answered, held, _) = phase();
    eprintln!(
        "low limit 160 (below what is open): {answered} of {N} scrapes answered; tcpq_http_connections at most {held}"
    );
    assert!(answered * 100 >= N * 95, "{answered} of {N} answered");
    assert!(held <= 80.0, "held {held}");

    stop.store(true, Relaxed);
    flooder.join().unwrap();
    thread::sleep(Duration::from_millis(300));
    let (code, body) = http_get(&addr, "/metrics").unwrap();
    assert_eq!(code, 200);
    let emfile = value(&body, "tcpq_http_accept_errors_total");
    eprintln!("low limit: {emfile} accept errors counted");
    assert!(emfile >= 1.0, "no accept error counted");
    let evicted = value(
        &body,
        "tcpq_http_connections_closed_total{reason=\"evicted\"}",
    );
    eprintln!(
        "low limit: {evicted} evicted; server closed {} flood connections",
        stats.idle_closed.load(Relaxed)
    );
    assert!(evicted >= 100.0, "{evicted} evicted");
    assert!(matches!(child.try_wait(), Ok(None)), "the agent exited");
    unsafe { libc::kill(pid as i32, libc::SIGINT) };
    let status = child.wait().unwrap();
    std::mem::forget(kill);
    assert!(status.success(), "agent exited with {status}");
}

//! `tcpq-agent run`, the per-host sidecar, against the real receivers a
//! fleet runs: Debian's Prometheus (scraping, PromQL through its HTTP API,
//! `promtool check metrics`) and rsyslogd (unix, UDP and TCP). Every count
//! is compared with the test namespace's own TcpExt counters. Host only
//! (the guest carries neither server); root.

use std::{
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use serde_json::Value;
use tcpq_tests::*;

/// A child killed when dropped.
struct Server(Child);

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn urlencode(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'a'..=b'z' | b'A'..=b'Z' | b'0'..=b'9' | b'-' | b'_' | b'.' => (b as char).to_string(),
            _ => format!("%{b:02X}"),
        })
        .collect()
}

/// Runs the syn-overflow scenario (listen(0), CLIENTS clients) and returns
/// ΔListenOverflows of the namespace.
fn overflow(ns: &Netns, port: u16, clients: &str) -> u64 {
    let before = ns.counters();
    let (mut child, _) = ns.scenario(&format!(
        "syn-overflow --port {port} --clients {clients} --syncnt 1 --hold 3"
    ));
    assert!(child.wait().unwrap().success());
    delta(&before, &ns.counters(), "TcpExt.ListenOverflows")
}

fn json_lines(path: &Path) -> Vec<Value> {
    std::fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON ({e}): {l}")))
        .collect()
}

#[test]
fn prometheus_query_matches_the_kernel_and_promtool_passes() {
    if !root_or_skip() {
        return;
    }
    let dir = Dir::new("prom");
    let ns = Netns::new("prom");
    let metrics = format!("127.0.0.1:{}", free_port());
    let events = dir.path("events.jsonl");
    let agent = Agent::run(&[
        "--metrics-address",
        &metrics,
        "--output-file",
        events.to_str().unwrap(),
        "--snapshot-interval",
        "2",
    ]);
    // Prometheus scrapes the agent every second.
    let web = format!("127.0.0.1:{}", free_port());
    std::fs::write(
        dir.path("prometheus.yml"),
        format!(
            "global:\n  scrape_interval: 1s\n  evaluation_interval: 1s\nscrape_configs:\n  - job_name: tcpq\n    static_configs:\n      - targets: ['{metrics}']\n"
        ),
    )
    .unwrap();
    let _prom = Server(
        Command::new("prometheus")
            .arg(format!(
                "--config.file={}",
                dir.path("prometheus.yml").display()
            ))
            .arg(format!(
                "--storage.tsdb.path={}",
                dir.path("data").display()
            ))
            .arg(format!("--web.listen-address={web}"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start prometheus (Debian package `prometheus`)"),
    );
    wait_until(Duration::from_secs(60), || {
        http_get(&web, "/-/ready").ok().filter(|(c, _)| *c == 200)
    })
    .expect("prometheus ready");

    let port = 9601;
    let want = overflow(&ns, port, "6");
    assert!(want > 0, "the scenario overflowed nothing");
    let query = format!(
        "sum(tcpq_listen_overflows_total{{server_port=\"{port}\",netns=\"{}\"}})",
        ns.inode()
    );
    let ask = || -> Option<u64> {
        let (code, body) =
            http_get(&web, &format!("/api/v1/query?query={}", urlencode(&query))).ok()?;
        assert_eq!(code, 200, "{body}");
        let v: Value = serde_json::from_str(&body).ok()?;
        v["data"]["result"][0]["value"][1].as_str()?.parse().ok()
    };
    let got = wait_until(Duration::from_secs(30), || ask().filter(|&n| n >= want));
    eprintln!("PromQL {query} = {got:?}; ΔListenOverflows = {want}");
    assert_eq!(got, Some(want));
    // And it stays there: nothing counted twice by later rounds (the
    // slow sock_diag dump runs every 4 s).
    std::thread::sleep(Duration::from_secs(5));
    assert_eq!(ask(), Some(want));

    // The exposition passes Prometheus' own linter.
    let (code, body) = http_get(&metrics, "/metrics").unwrap();
    assert_eq!(code, 200);
    let mut promtool = Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    use std::io::Write;
    promtool
        .stdin
        .take()
        .unwrap()
        .write_all(body.as_bytes())
        .unwrap();
    let out = promtool.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "promtool check metrics: {}{}\n{body}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    for family in [
        "tcpq_listen_overflows_total",
        "tcpq_listen_queue_length",
        "tcpq_events_received_total",
        "tcpq_probes_attached",
        "tcpq_ringbuf_fill_ratio",
    ] {
        assert!(
            body.contains(&format!("# TYPE {family} ")),
            "{family} missing"
        );
    }
    assert!(!body.contains("pid="), "no pid labels");
    let ready = agent.ready_line.clone();
    let (_, err) = agent.stop_with_stderr(libc::SIGTERM);
    eprintln!("{ready}\n{}", err.join("\n"));

    // The JSON lines say the same, versioned; snapshots and health lines
    // came too.
    let lines = json_lines(&events);
    assert!(
        lines.iter().all(|l| l["schema.version"] == "1"),
        "schema.version on every line"
    );
    assert_eq!(sum(&lines, "listen_overflow", None, port, ns.inode()), want);
    assert!(lines.iter().any(|l| l["event"] == "listener_snapshot"));
    let health = lines
        .iter()
        .rfind(|l| l["event"] == "agent_health")
        .expect("an agent_health line");
    assert!(health["agent.events_received"].as_u64().unwrap() > 0);
}

/// The per-listener gauges equal what `ss` shows: accept-queue length and
/// limit (Recv-Q/Send-Q), and the sockets in CLOSE_WAIT.
#[test]
fn gauges_match_ss() {
    if !root_or_skip() {
        return;
    }
    let ns = Netns::new("gauges");
    let metrics = format!("127.0.0.1:{}", free_port());
    let agent = Agent::run(&[
        "--metrics-address",
        &metrics,
        "--output-file",
        "/dev/null",
        "--snapshot-interval",
        "0",
    ]);
    // listen(0) with 3 clients: 1 queued over a limit of 0; and 4
    // accepted connections the server never closes.
    let (mut full, _) = ns.scenario("syn-overflow --port 9661 --clients 3 --syncnt 1 --hold 10");
    let (mut cw, _) = ns.scenario("close-wait --port 9662 --conns 4 --hold 10");
    // CLOSE_WAIT is read every 4 s.
    std::thread::sleep(Duration::from_secs(5));
    let listen = run(ns.cmd("ss").args(["-Hltn", "sport", "=", ":9661"]));
    let cols: Vec<&str> = listen.split_whitespace().collect();
    let (recv_q, send_q): (f64, f64) = (cols[1].parse().unwrap(), cols[2].parse().unwrap());
    let close_wait = run(ns.cmd("ss").args(["-Htan", "state", "close-wait"]))
        .lines()
        .count() as f64;
    eprintln!("ss: 9661 Recv-Q {recv_q} Send-Q {send_q}; CLOSE_WAIT {close_wait}");
    assert_eq!(
        (recv_q, send_q, close_wait),
        (1.0, 0.0, 4.0),
        "the scenarios"
    );
    let netns = format!("netns=\"{}\"", ns.inode());
    let gauge = |body: &str, name: &str, port: u16| -> Option<f64> {
        let port = format!("server_port=\"{port}\"");
        body.lines()
            .filter(|l| l.starts_with(&format!("{name}{{")))
            .find(|l| l.contains(&port) && l.contains(&netns))
            .and_then(|l| l.rsplit(' ').next()?.parse().ok())
    };
    let seen = wait_until(Duration::from_secs(10), || {
        let (_, body) = http_get(&metrics, "/metrics").ok()?;
        let got = (
            gauge(&body, "tcpq_listen_queue_length", 9661)?,
            gauge(&body, "tcpq_listen_queue_limit", 9661)?,
            gauge(&body, "tcpq_close_wait_sockets", 9662)?,
        );
        (got == (recv_q, send_q, close_wait)).then_some(got)
    });
    assert_eq!(seen, Some((recv_q, send_q, close_wait)));
    for c in [&mut full, &mut cw] {
        let _ = c.kill();
        let _ = c.wait();
    }
    agent.stop_with(libc::SIGTERM);
}

/// The accept-latency histogram: 5 connections accepted 500 ms late
/// (`detect.port` turns measurement on from the first connection).
#[test]
fn accept_latency_reaches_prometheus_as_a_histogram() {
    if !root_or_skip() {
        return;
    }
    let ns = Netns::new("lat");
    let metrics = format!("127.0.0.1:{}", free_port());
    let agent = Agent::run(&[
        "--port",
        "9651",
        "--metrics-address",
        &metrics,
        "--output-file",
        "/dev/null",
        "--snapshot-interval",
        "0",
    ]);
    let (mut child, _) = ns.scenario("accept-delay --port 9651 --conns 5 --delay-ms 500 --hold 1");
    let mut out = String::new();
    use std::io::Read;
    child
        .stdout
        .take()
        .unwrap()
        .read_to_string(&mut out)
        .unwrap();
    assert!(child.wait().unwrap().success());
    assert_eq!(out.trim(), "accepted 5");
    let sel = format!("{{server_port=\"9651\",netns=\"{}\"", ns.inode());
    let value = |body: &str, suffix: &str, le: Option<&str>| -> Option<f64> {
        let head = match le {
            Some(le) => format!("tcpq_accept_latency_seconds{suffix}{sel},le=\"{le}\"}} "),
            None => format!("tcpq_accept_latency_seconds{suffix}{sel}}} "),
        };
        body.lines()
            .find_map(|l| l.strip_prefix(&head))
            .and_then(|v| v.trim().parse().ok())
    };
    // A new series shows 0 at its first scrape, its count from the next.
    let body = wait_until(Duration::from_secs(15), || {
        let (_, body) = http_get(&metrics, "/metrics").ok()?;
        (value(&body, "_count", None)? == 5.0).then_some(body)
    })
    .expect("tcpq_accept_latency_seconds_count 5");
    eprintln!(
        "{}",
        body.lines()
            .filter(|l| l.contains(&sel))
            .collect::<Vec<_>>()
            .join("\n")
    );
    // Every wait was 500 ms or more: none at or below 0.25 s, all by 2.5 s.
    assert_eq!(value(&body, "_bucket", Some("0.25")), Some(0.0));
    assert_eq!(value(&body, "_bucket", Some("2.5")), Some(5.0));
    assert_eq!(value(&body, "_bucket", Some("+Inf")), Some(5.0));
    let sum = value(&body, "_sum", None).unwrap();
    assert!((2.5..4.0).contains(&sum), "_sum {sum}");
    agent.stop_with(libc::SIGTERM);
}

/// rsyslogd with a unix socket, a UDP and a TCP input, writing every
/// message to `out.log` in RFC 5424 form.
struct Rsyslog {
    server: Option<Server>,
    conf: PathBuf,
    out: PathBuf,
    unix: PathBuf,
    udp: u16,
    tcp: u16,
    dir: PathBuf,
}

impl Rsyslog {
    fn start(dir: &Dir) -> Rsyslog {
        let mut r = Rsyslog {
            server: None,
            conf: dir.path("rsyslog.conf"),
            out: dir.path("out.log"),
            unix: dir.path("log.sock"),
            udp: free_port(),
            tcp: free_port(),
            dir: dir.0.clone(),
        };
        std::fs::write(
            &r.conf,
            format!(
                r#"global(workDirectory="{dir}")
module(load="imuxsock" SysSock.Use="off")
input(type="imuxsock" Socket="{unix}" UseSpecialParser="off" ParseHostname="on" UseSysTimeStamp="off")
module(load="imudp")
input(type="imudp" address="127.0.0.1" port="{udp}")
module(load="imtcp")
input(type="imtcp" address="127.0.0.1" port="{tcp}")
*.* action(type="omfile" file="{out}" template="RSYSLOG_SyslogProtocol23Format")
"#,
                dir = r.dir.display(),
                unix = r.unix.display(),
                udp = r.udp,
                tcp = r.tcp,
                out = r.out.display()
            ),
        )
        .unwrap();
        r.restart();
        r
    }

    fn restart(&mut self) {
        self.server = None;
        let child = Command::new("rsyslogd")
            .arg("-n")
            .arg("-f")
            .arg(&self.conf)
            .arg("-i")
            .arg(self.dir.join("rsyslogd.pid"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start rsyslogd (Debian package `rsyslog`)");
        self.server = Some(Server(child));
        let tcp = format!("127.0.0.1:{}", self.tcp);
        wait_until(Duration::from_secs(20), || {
            (std::net::TcpStream::connect(&tcp).is_ok() && self.unix.exists()).then_some(())
        })
        .expect("rsyslogd listening");
    }

    fn stop(&mut self) {
        self.server = None;
    }

    /// The JSON events in the messages written so far, with their
    /// RFC 5424 header (everything before the JSON).
    fn events(&self) -> Vec<(String, Value)> {
        std::fs::read_to_string(&self.out)
            .unwrap_or_default()
            .lines()
            .filter_map(|l| {
                let i = l.find('{')?;
                Some((l[..i].to_string(), serde_json::from_str(&l[i..]).ok()?))
            })
            .collect()
    }
}

fn syslog_sum(events: &[(String, Value)], port: u16, netns: u64) -> u64 {
    let lines: Vec<Value> = events.iter().map(|(_, v)| v.clone()).collect();
    sum(&lines, "listen_overflow", None, port, netns)
}

/// TCP, with the server gone for a while: the agent keeps the events,
/// reconnects, and rsyslogd writes every one.
#[test]
fn rsyslog_over_tcp_gets_every_event_across_a_server_restart() {
    if !root_or_skip() {
        return;
    }
    let dir = Dir::new("rsyslog-tcp");
    let ns = Netns::new("rsyslog-tcp");
    let mut rs = Rsyslog::start(&dir);
    let mut agent = Agent::run(&[
        "--syslog",
        &format!("tcp://127.0.0.1:{}", rs.tcp),
        "--metrics-address",
        "off",
        "--output-file",
        dir.path("events.jsonl").to_str().unwrap(),
    ]);
    let port = 9611;
    let first = overflow(&ns, port, "4");
    let got = wait_until(Duration::from_secs(15), || {
        Some(syslog_sum(&rs.events(), port, ns.inode())).filter(|&n| n >= first)
    });
    assert_eq!(got, Some(first), "before the restart");
    let (header, v) = rs
        .events()
        .into_iter()
        .find(|(_, v)| v["event"] == "listen_overflow")
        .unwrap();
    assert!(header.starts_with('<'), "{header}");
    assert!(
        header.contains(" listen_overflow [tcpq@32473 event=\"listen_overflow\""),
        "{header}"
    );
    assert!(v["verdict.cause"].is_string());

    // The server goes away; events happen; it comes back.
    rs.stop();
    let second = overflow(&ns, port + 1, "4");
    std::thread::sleep(Duration::from_secs(2));
    assert!(
        agent.alive(),
        "the agent survived its syslog server going away"
    );
    rs.restart();
    let got = wait_until(Duration::from_secs(30), || {
        Some(syslog_sum(&rs.events(), port + 1, ns.inode())).filter(|&n| n >= second)
    });
    assert_eq!(got, Some(second), "events from while the server was down");
    assert_eq!(
        syslog_sum(&rs.events(), port, ns.inode()),
        first,
        "nothing twice"
    );
    let (_, err) = agent.stop_with_stderr(libc::SIGTERM);
    eprintln!("{}", err.join("\n"));
}

/// The unix socket (as /dev/log is) and UDP.
#[test]
fn rsyslog_over_unix_and_udp_gets_the_events() {
    if !root_or_skip() {
        return;
    }
    let dir = Dir::new("rsyslog-dgram");
    let ns = Netns::new("rsyslog-dgram");
    let rs = Rsyslog::start(&dir);
    for (i, target) in [
        format!("unix://{}", rs.unix.display()),
        format!("udp://127.0.0.1:{}", rs.udp),
    ]
    .into_iter()
    .enumerate()
    {
        let agent = Agent::run(&[
            "--syslog",
            &target,
            "--metrics-address",
            "off",
            "--output-file",
            dir.path("events.jsonl").to_str().unwrap(),
        ]);
        let port = 9621 + i as u16;
        let want = overflow(&ns, port, "4");
        let got = wait_until(Duration::from_secs(15), || {
            Some(syslog_sum(&rs.events(), port, ns.inode())).filter(|&n| n >= want)
        });
        eprintln!("{target}: syslog Σ={got:?}, ΔListenOverflows={want}");
        assert_eq!(got, Some(want), "{target}");
        agent.stop_with(libc::SIGTERM);
    }
}

/// One line naming the problem, exit status 1, before anything is loaded.
#[test]
fn bad_configurations_fail_at_start_in_one_line() {
    if !root_or_skip() {
        return;
    }
    let dir = Dir::new("badcfg");
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let taken_addr = taken.local_addr().unwrap().to_string();
    let cfg = |name: &str, text: &str| {
        let p = dir.path(name);
        std::fs::write(&p, text).unwrap();
        p.to_str().unwrap().to_string()
    };
    let unknown = cfg("unknown.toml", "[metrics]\nadress = \"127.0.0.1:1\"\n");
    let wrong = cfg("wrong.toml", "[detect]\nport = \"http\"\n");
    let closed = free_port();
    let cases: Vec<(Vec<String>, String)> = vec![
        (
            vec!["--config".into(), unknown.clone()],
            format!("config {unknown}: line 2: unknown field `adress`"),
        ),
        (
            vec!["--config".into(), wrong.clone()],
            format!("config {wrong}: line 2: invalid type: string \"http\", expected u16"),
        ),
        (
            vec!["--config".into(), "/nonexistent/tcpq.toml".into()],
            "config /nonexistent/tcpq.toml: no such file or directory".into(),
        ),
        (
            vec!["--metrics-address".into(), taken_addr.clone()],
            format!("metrics address {taken_addr}: address already in use"),
        ),
        (
            vec![
                "--metrics-address".into(),
                "off".into(),
                "--syslog".into(),
                format!("tcp://127.0.0.1:{closed}"),
            ],
            format!("syslog target tcp://127.0.0.1:{closed}: "),
        ),
        (
            vec!["--syslog".into(), "ftp://example".into()],
            "syslog.target: syslog target `ftp://example`".into(),
        ),
        (
            vec![
                "--output-file".into(),
                "/nonexistent/dir/events.jsonl".into(),
            ],
            "output file /nonexistent/dir/events.jsonl: no such file or directory".into(),
        ),
    ];
    for (args, want) in cases {
        let t = Instant::now();
        // --duration: a regression that starts the agent ends the test
        // instead of hanging it.
        let out = Command::new(agent_bin())
            .arg("run")
            .args(&args)
            .args(["--duration", "5"])
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        eprintln!("{args:?} -> {err}");
        assert_eq!(out.status.code(), Some(1), "{args:?}: {err}");
        assert_eq!(err.lines().count(), 1, "{args:?}: one line: {err}");
        assert!(err.contains(&want), "{args:?}: want {want:?} in {err}");
        assert!(!err.contains("panicked"));
        assert!(
            t.elapsed() < Duration::from_secs(10),
            "{args:?} took {:?}",
            t.elapsed()
        );
    }
    drop(taken);
}

/// SIGHUP: the output file is reopened (logrotate moved it), a changed
/// agent-side setting applies, a broken config is refused and the old one
/// kept; SIGTERM flushes and exits 0.
#[test]
fn sighup_reopens_and_reloads_sigterm_flushes() {
    if !root_or_skip() {
        return;
    }
    let dir = Dir::new("hup");
    let ns = Netns::new("hup");
    let events = dir.path("events.jsonl");
    let config = dir.path("tcpq.toml");
    let write_cfg = |comm: &str| {
        std::fs::write(
            &config,
            format!(
                "[detect]\ncomm = \"{comm}\"\n[output]\nfile = \"{}\"\nsnapshot_interval = 0\n[metrics]\naddress = \"\"\n",
                events.display()
            ),
        )
        .unwrap()
    };
    write_cfg("tcpq-scenario");
    let agent = Agent::run(&["--config", config.to_str().unwrap()]);
    let first = overflow(&ns, 9631, "4");
    let got = wait_until(Duration::from_secs(10), || {
        Some(sum(
            &json_lines(&events),
            "listen_overflow",
            None,
            9631,
            ns.inode(),
        ))
        .filter(|&n| n >= first)
    });
    assert_eq!(got, Some(first));

    // logrotate: move the file away, SIGHUP; the config now filters on a
    // name nobody has.
    let rotated = dir.path("events.jsonl.1");
    std::fs::rename(&events, &rotated).unwrap();
    write_cfg("nobody-has-this");
    unsafe { libc::kill(agent.pid() as i32, libc::SIGHUP) };
    assert!(agent
        .wait_stderr("reloaded the configuration", Duration::from_secs(10))
        .is_some());
    assert!(events.exists(), "reopened at the configured path");
    let filtered = overflow(&ns, 9632, "4");
    assert!(filtered > 0);
    // Back to the scenario's name; then a broken file, which is refused.
    write_cfg("tcpq-scenario");
    unsafe { libc::kill(agent.pid() as i32, libc::SIGHUP) };
    assert!(agent
        .wait_stderr("reloaded the configuration", Duration::from_secs(10))
        .is_some());
    std::fs::write(&config, "[detect]\nbogus = 1\n").unwrap();
    unsafe { libc::kill(agent.pid() as i32, libc::SIGHUP) };
    let refused = agent
        .wait_stderr("keeping the running configuration", Duration::from_secs(10))
        .expect("a broken config is refused");
    assert!(refused.contains("unknown field `bogus`"), "{refused}");
    let third = overflow(&ns, 9633, "4");
    let got = wait_until(Duration::from_secs(10), || {
        Some(sum(
            &json_lines(&events),
            "listen_overflow",
            None,
            9633,
            ns.inode(),
        ))
        .filter(|&n| n >= third)
    });
    assert_eq!(
        got,
        Some(third),
        "the filter is back after the second reload"
    );
    let (_, _) = agent.stop_with_stderr(libc::SIGTERM);
    let old = json_lines(&rotated);
    let new = json_lines(&events);
    assert_eq!(sum(&old, "listen_overflow", None, 9631, ns.inode()), first);
    assert_eq!(
        sum(&new, "listen_overflow", None, 9631, ns.inode()),
        0,
        "the old lines stay in the rotated file"
    );
    assert_eq!(
        sum(&new, "listen_overflow", None, 9632, ns.inode()),
        0,
        "filtered out by the reloaded comm"
    );
    assert_eq!(sum(&new, "listen_overflow", None, 9633, ns.inode()), third);
}

/// SIGTERM flushes what is pending: with a 30 s interval most of an
/// overflow is held (checked) until the agent is told to stop.
#[test]
fn sigterm_flushes_the_pending_interval() {
    if !root_or_skip() {
        return;
    }
    let dir = Dir::new("term");
    let ns = Netns::new("term");
    let events = dir.path("events.jsonl");
    // Only this namespace: news from elsewhere on the host would take the
    // "first news at once" flush.
    let netns = format!("/run/netns/{}", ns.name);
    let agent = Agent::run(&[
        "--netns",
        &netns,
        "--interval",
        "30",
        "--metrics-address",
        "off",
        "--snapshot-interval",
        "0",
        "--output-file",
        events.to_str().unwrap(),
    ]);
    // After a quiet spell the first news goes out at once; the SYN
    // retransmits' drops that follow wait for the end of the interval.
    let all = overflow(&ns, 9641, "4");
    let early = sum(
        &json_lines(&events),
        "listen_overflow",
        None,
        9641,
        ns.inode(),
    );
    eprintln!("written before SIGTERM: {early} of {all}");
    assert!(
        early > 0 && early < all,
        "{early} of {all}: the rest held for 30 s"
    );
    let (_, err) = agent.stop_with_stderr(libc::SIGTERM);
    eprintln!("{}", err.join("\n"));
    let lines = json_lines(&events);
    assert_eq!(
        sum(&lines, "listen_overflow", None, 9641, ns.inode()),
        all,
        "flushed at SIGTERM"
    );
}

/// Listeners and processes born and gone continuously for three minutes:
/// the agent's memory stays flat and its series stay capped.
#[test]
fn churn_keeps_memory_flat() {
    if !root_or_skip() {
        return;
    }
    let secs: u64 = std::env::var("TCPQ_CHURN_SECS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(180);
    let ns = Netns::new("churn");
    let metrics = format!("127.0.0.1:{}", free_port());
    let agent = Agent::run(&[
        "--metrics-address",
        &metrics,
        "--max-series",
        "200",
        "--snapshot-interval",
        "5",
        "--output-file",
        "/dev/null",
    ]);
    let (churn, _) = ns.scenario(&format!(
        "churn --port 20000 --ports 2000 --workers 4 --life-ms 300 --duration {secs}"
    ));
    let start = Instant::now();
    let mut samples = Vec::new();
    let mut last_body = String::new();
    while start.elapsed() < Duration::from_secs(secs) {
        std::thread::sleep(Duration::from_secs(10));
        let (_, body) = http_get(&metrics, "/metrics").unwrap_or_default();
        let series = body
            .lines()
            .find_map(|l| l.strip_prefix("tcpq_metric_series "))
            .and_then(|v| v.trim().parse::<f64>().ok())
            .unwrap_or(0.0);
        let overflowed = body
            .lines()
            .find_map(|l| l.strip_prefix("tcpq_metric_series_overflowed_total "))
            .unwrap_or("0")
            .trim()
            .to_string();
        let rss = agent.rss_kib();
        eprintln!(
            "churn t={:>3}s rss={rss} KiB series={series} overflowed={overflowed}",
            start.elapsed().as_secs()
        );
        samples.push((rss, series));
        last_body = body;
    }
    let out = churn.wait_with_output().unwrap();
    eprintln!("{}", String::from_utf8_lossy(&out.stdout).trim());
    let (lines, err) = agent.stop_with_stderr(libc::SIGTERM);
    assert!(lines.is_empty());
    eprintln!("{}", err.join("\n"));
    assert!(samples.len() >= 6, "{samples:?}");
    // Flat: after the first third (warm-up: allocator arenas, the first
    // series), resident memory grows by less than 2 MiB.
    let third = samples.len() / 3;
    let warm = samples[third].0;
    let last = samples.last().unwrap().0;
    let peak = samples[third..].iter().map(|s| s.0).max().unwrap();
    eprintln!("churn rss: warm {warm} KiB, last {last} KiB, peak {peak} KiB");
    assert!(peak < warm + 2048, "memory grew: {samples:?}");
    // Capped: at most 200 series per family plus its overflow series, and
    // the cap was reached (1500+ listeners came and went).
    let mut per_family: std::collections::HashMap<&str, usize> = Default::default();
    for l in last_body.lines().filter(|l| !l.starts_with('#')) {
        let name = l.split(['{', ' ']).next().unwrap_or("");
        *per_family.entry(name).or_default() += 1;
    }
    eprintln!("churn series per family: {per_family:?}");
    let overflows = per_family
        .get("tcpq_listen_overflows_total")
        .copied()
        .unwrap_or(0);
    assert_eq!(overflows, 201, "200 real series + the overflow series");
    assert!(
        per_family.values().all(|&n| n <= 201 * 17),
        "{per_family:?}"
    );
    assert!(last_body.contains("server_address=\"overflow\""));
}

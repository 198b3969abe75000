//! Accept-queue overflow, end to end: a real listener in a private network
//! namespace, the agent as a user runs it, and the namespace's own kernel
//! counters as the judge. Needs root.

use std::{
    process::Command,
    thread::sleep,
    time::{Duration, Instant},
};

use tcpq_tests::{delta, expected_sources, root_or_skip, source_matches, sum, Agent, Ip, Netns};

const OVERFLOWS: &str = "TcpExt.ListenOverflows";

/// Every report line for `port` in `ns` names the owner and the settings.
fn assert_attributed(lines: &[serde_json::Value], port: u16, ns: &Netns, pid: u32, exe: &str) {
    assert_attributed_ip(lines, port, ns, pid, exe, Ip::V4)
}

fn assert_attributed_ip(
    lines: &[serde_json::Value],
    port: u16,
    ns: &Netns,
    pid: u32,
    exe: &str,
    ip: Ip,
) {
    let mine: Vec<_> = lines
        .iter()
        .filter(|l| l["event"] == "listen_overflow" && l["server.port"] == port)
        .collect();
    assert!(
        !mine.is_empty(),
        "no listen_overflow line for port {port}: {lines:#?}"
    );
    for l in mine {
        assert_eq!(l["network.netns"], ns.inode(), "{l}");
        assert_eq!(
            l["process.pid"], pid,
            "owner must be the listener's process: {l}"
        );
        assert_eq!(l["process.executable.name"], exe, "{l}");
        assert_eq!(l["server.address"], ip.loopback(), "{l}");
        assert!(l["count"].as_u64().unwrap() >= 1, "{l}");
        assert!(l["timestamp"].as_str().unwrap().ends_with('Z'), "{l}");
        assert!(
            l["queue.limit"].is_u64() && l["queue.length"].is_u64(),
            "{l}"
        );
    }
}

/// The kernel counted at least `min` overflows in `ns`, and tcpq reported
/// exactly as many for `port` there. Returns the kernel's count.
fn assert_counts_match(
    lines: &[serde_json::Value],
    port: u16,
    ns: &Netns,
    before: &std::collections::HashMap<String, u64>,
    after: &std::collections::HashMap<String, u64>,
    min: u64,
) -> u64 {
    let kernel = delta(before, after, OVERFLOWS);
    assert!(
        kernel >= min,
        "scenario did not overflow enough: ListenOverflows +{kernel}"
    );
    let reported = sum(lines, "listen_overflow", None, port, ns.inode());
    assert_eq!(
        reported, kernel,
        "tcpq's count vs the kernel's ListenOverflows: {lines:#?}"
    );
    kernel
}

/// All `listen_overflow` lines of `stage` come from `source`.
fn assert_source(lines: &[serde_json::Value], port: u16, stage: &str, expected: &str) {
    for l in lines.iter().filter(|l| {
        l["event"] == "listen_overflow" && l["server.port"] == port && l["stage"] == stage
    }) {
        let got = l["source"].as_str().unwrap_or("");
        assert!(
            source_matches(got, expected),
            "{stage}-time overflow seen by {got}, expected {expected}: {l}"
        );
    }
}

fn syn_time_overflow(ip: Ip, port: u16) {
    if !root_or_skip() {
        return;
    }
    let ns = Netns::new(&format!("syn{port}"));
    let agent = Agent::trace(&["--port", &port.to_string()]);
    let before = ns.counters();
    let t0 = Instant::now();
    // listen(0): the first client fills the queue; 5 more are dropped at SYN
    // time, once for the SYN and once for its single retransmit.
    let (mut child, pid) = ns.scenario_ip(
        ip,
        &format!("syn-overflow --port {port} --clients 6 --syncnt 1 --hold 3.5"),
    );
    child.wait().unwrap();
    let after = ns.counters();
    let lines = agent.stop_timed();
    let values: Vec<_> = lines.iter().map(|(_, v)| v.clone()).collect();
    let kernel = assert_counts_match(&values, port, &ns, &before, &after, 5);
    assert_eq!(
        sum(&values, "listen_overflow", Some("syn"), port, ns.inode()),
        kernel
    );
    assert_attributed_ip(&values, port, &ns, pid, "tcpq-scenario", ip);
    assert_source(&values, port, "syn", &expected_sources().0);
    // Detection latency: first drop is ~20 ms after t0 (second client).
    let first = lines
        .iter()
        .find(|(_, v)| v["event"] == "listen_overflow")
        .unwrap()
        .0;
    let latency = first.duration_since(t0);
    eprintln!(
        "MEASURED first overflow -> first line: {:?}",
        latency.saturating_sub(Duration::from_millis(20))
    );
    assert!(
        latency < Duration::from_secs(3),
        "first line after {latency:?}"
    );
}

#[test]
fn syn_time_overflow_matches_listen_overflows() {
    syn_time_overflow(Ip::V4, 9101);
}

#[test]
fn syn_time_overflow_ipv6() {
    syn_time_overflow(Ip::V6, 9111);
}

#[test]
fn a_listener_older_than_the_agent_is_tracked_without_its_history() {
    if !root_or_skip() {
        return;
    }
    let ns = Netns::new("old");
    let port = 9102;
    let p = port.to_string();
    let (mut listener, pid) = ns.scenario(&format!("listen --port {p} --backlog 0 --hold 30"));
    // History the agent must not report: a queue filled and 2 SYNs dropped.
    let (mut early, _) = ns.scenario(&format!(
        "connect --port {p} --clients 2 --syncnt 1 --hold 0.5"
    ));
    early.wait().unwrap();
    assert!(
        ns.counters()[OVERFLOWS] >= 1,
        "history scenario did not overflow"
    );
    let agent = Agent::trace(&["--port", &p]);
    let before = ns.counters();
    let (mut clients, clients_pid) = ns.scenario(&format!(
        "connect --port {p} --clients 3 --syncnt 1 --hold 2.5"
    ));
    clients.wait().unwrap();
    sleep(Duration::from_millis(400));
    let after = ns.counters();
    let lines = agent.stop();
    let _ = listener.kill();
    let _ = listener.wait();
    assert_counts_match(&lines, port, &ns, &before, &after, 3);
    assert_attributed(&lines, port, &ns, pid, "tcpq-scenario");
    assert_ne!(pid, clients_pid);
}

fn ack_time_overflow(ip: Ip, port: u16, abort_on_overflow: bool) {
    if !root_or_skip() {
        return;
    }
    let ns = Netns::new(&format!("ack{port}"));
    ns.sysctl("net.ipv4.tcp_synack_retries", "2");
    ns.sysctl(
        "net.ipv4.tcp_abort_on_overflow",
        if abort_on_overflow { "1" } else { "0" },
    );
    let agent = Agent::trace(&["--port", &port.to_string()]);
    let before = ns.counters();
    let (mut child, pid) = ns.scenario_ip(ip, &format!("ack-overflow --port {port} --hold 2"));
    child.wait().unwrap();
    let after = ns.counters();
    let lines = agent.stop();
    assert_counts_match(&lines, port, &ns, &before, &after, 1);
    let ack = sum(&lines, "listen_overflow", Some("ack"), port, ns.inode());
    assert!(ack >= 1, "no ACK-time overflow reported: {lines:#?}");
    let source = expected_sources().1;
    assert_source(&lines, port, "ack", &source);
    let ack_lines = || {
        lines
            .iter()
            .filter(|l| l["stage"] == "ack" && l["server.port"] == port)
    };
    assert!(ack_lines().all(|l| l["queue.length"].as_u64() > l["queue.limit"].as_u64()));
    assert_attributed_ip(&lines, port, &ns, pid, "tcpq-scenario", ip);
    let resets = delta(&before, &after, "TcpExt.EmbryonicRsts");
    if abort_on_overflow {
        assert!(resets >= 1, "tcp_abort_on_overflow=1 sent no RST");
    }
    if source_matches("tracepoint", &source) {
        // tcp:tcp_send_reset names the listener and its full queue.
        let rst: u64 = lines
            .iter()
            .filter(|l| {
                l["event"] == "reset_sent"
                    && l["reason"] == "listen_overflow"
                    && l["server.port"] == port
            })
            .map(|l| l["count"].as_u64().unwrap())
            .sum();
        assert_eq!(
            rst, resets,
            "RSTs for overflows vs EmbryonicRsts: {lines:#?}"
        );
    } else {
        // tcp_check_req's hook tells what followed each overflow.
        let next = if abort_on_overflow {
            "reset"
        } else {
            "ack_dropped"
        };
        assert!(
            ack_lines().all(|l| l["next"] == next),
            "expected next={next}: {lines:#?}"
        );
    }
    if !abort_on_overflow {
        // Each dropped ACK leaves the request pending: the kernel retransmits
        // the SYN-ACK, and tcpq counts those per listener too.
        let rtx = lines
            .iter()
            .filter(|l| l["event"] == "synack_retransmit" && l["server.port"] == port)
            .map(|l| l["count"].as_u64().unwrap())
            .sum::<u64>();
        assert_eq!(
            rtx,
            delta(&before, &after, "TcpExt.TCPSynRetrans"),
            "{lines:#?}"
        );
    }
}

#[test]
fn ack_time_overflow_is_seen_by_the_tracepoint() {
    ack_time_overflow(Ip::V4, 9103, false);
}

#[test]
fn ack_time_overflow_ipv6() {
    ack_time_overflow(Ip::V6, 9113, false);
}

#[test]
fn ack_time_overflow_with_abort_on_overflow_resets_the_client() {
    ack_time_overflow(Ip::V4, 9123, true);
}

#[test]
fn redis_server_that_stops_accepting() {
    if !root_or_skip() {
        return;
    }
    let Ok(redis) = which("redis-server") else {
        panic!("redis-server is not installed (cargo xtask setup installs it)");
    };
    let ns = Netns::new("redis");
    let port = 9105;
    let p = port.to_string();
    let mut server = ns
        .cmd(&redis)
        .args([
            "--port",
            &p,
            "--bind",
            "127.0.0.1",
            "--tcp-backlog",
            "1",
            "--save",
            "",
            "--appendonly",
            "no",
        ])
        .args(["--daemonize", "no", "--loglevel", "warning"])
        .spawn()
        .unwrap();
    ns.wait_listening(port);
    let pid = server.id();
    // The server existed before the agent; then it hangs (SIGSTOP), as a
    // server stuck on a lock would, and clients pile up.
    let agent = Agent::trace(&["--port", &p]);
    unsafe { libc::kill(pid as i32, libc::SIGSTOP) };
    let before = ns.counters();
    let (mut clients, _) = ns.scenario(&format!(
        "connect --port {p} --clients 5 --syncnt 1 --hold 3"
    ));
    clients.wait().unwrap();
    let after = ns.counters();
    let lines = agent.stop();
    unsafe { libc::kill(pid as i32, libc::SIGKILL) };
    let _ = server.wait();
    assert_counts_match(&lines, port, &ns, &before, &after, 3);
    assert_attributed(&lines, port, &ns, pid, "redis-server");
    let limit = lines
        .iter()
        .find(|l| l["event"] == "listen_overflow")
        .unwrap()["queue.limit"]
        .clone();
    assert_eq!(limit, 1, "tcp-backlog 1 → accept-queue limit 1");
}

#[test]
fn ring_buffer_loss_is_counted_not_silent() {
    if !root_or_skip() {
        return;
    }
    let ns = Netns::new("loss");
    let port = 9104;
    let p = port.to_string();
    // A 4 KiB ring holds ~42 events; the agent is frozen while 400 RSTs are
    // sent for a closed port, so most cannot be delivered.
    let agent = Agent::trace(&["--port", &p, "--ring-buffer-bytes", "4096"]);
    if !agent.ready_line.contains("tcp:tcp_send_reset") {
        eprintln!("skipped: tcp:tcp_send_reset has no socket-less resets on this kernel (Linux 6.10+); loss accounting is tested on the host");
        return;
    }
    let before = ns.counters();
    unsafe { libc::kill(agent.pid() as i32, libc::SIGSTOP) };
    let (mut child, _) = ns.scenario(&format!("refused --port {p} --count 400"));
    child.wait().unwrap();
    let after = ns.counters();
    unsafe { libc::kill(agent.pid() as i32, libc::SIGCONT) };
    sleep(Duration::from_millis(1500));
    let lines = agent.stop();
    let kernel = delta(&before, &after, "Tcp.OutRsts");
    assert_eq!(kernel, 400, "each refused connect is one RST");
    // Each refused connect is three kernel events: the RST sent
    // (reset_sent), the RST received in SYN_SENT (reset_received) and the
    // failed connect (connect_error). The first and the last are counted in
    // the kernel (STORM map): exact even though the ring buffer overflowed.
    // RSTs received are one record each: delivered or counted as lost.
    let total = |event: &str| -> u64 {
        lines
            .iter()
            .filter(|l| l["event"] == event)
            .inspect(|l| {
                if l["event"] == "reset_sent" {
                    assert_eq!(l["reason"], "no_listener", "{l}")
                }
            })
            .map(|l| l["count"].as_u64().unwrap())
            .sum()
    };
    let failed = delta(&before, &after, "Tcp.AttemptFails");
    assert_eq!(failed, 400, "each refused connect is one failed attempt");
    assert_eq!(total("reset_sent"), kernel, "Σ reset_sent vs OutRsts");
    assert_eq!(
        total("connect_error"),
        failed,
        "Σ connect_error vs AttemptFails"
    );
    let delivered = total("reset_received");
    let lost = total("events_lost");
    assert!(
        lost > 0 && delivered > 0,
        "delivered {delivered}, lost {lost}"
    );
    assert_eq!(
        delivered + lost,
        failed,
        "every RST received is either reported or counted as lost"
    );
}

fn which(name: &str) -> Result<String, ()> {
    let out = Command::new("sh")
        .args(["-c", &format!("command -v {name}")])
        .output()
        .map_err(|_| ())?;
    let p = String::from_utf8_lossy(&out.stdout).trim().to_string();
    if p.is_empty() {
        Err(())
    } else {
        Ok(p)
    }
}

#[test]
fn pid_filter_shows_only_that_process_listeners() {
    if !root_or_skip() {
        return;
    }
    let ns = Netns::new("pid");
    let (mut a, pid_a) = ns.scenario("listen --port 9106 --backlog 0 --hold 20");
    let (mut b, _pid_b) = ns.scenario("listen --port 9107 --backlog 0 --hold 20");
    let agent = Agent::trace(&["--pid", &pid_a.to_string()]);
    let before = ns.counters();
    let (mut ca, _) = ns.scenario("connect --port 9106 --clients 3 --syncnt 1 --hold 2.5");
    let (mut cb, _) = ns.scenario("connect --port 9107 --clients 3 --syncnt 1 --hold 2.5");
    ca.wait().unwrap();
    cb.wait().unwrap();
    let after = ns.counters();
    // A sidecar is stopped with SIGTERM: it too flushes and exits 0.
    let lines: Vec<_> = agent
        .stop_with(libc::SIGTERM)
        .into_iter()
        .map(|(_, v)| v)
        .collect();
    for c in [&mut a, &mut b] {
        let _ = c.kill();
        let _ = c.wait();
    }
    let total = delta(&before, &after, OVERFLOWS);
    assert!(
        total >= 4,
        "scenario did not overflow both listeners: ListenOverflows +{total}"
    );
    let on_a = sum(&lines, "listen_overflow", None, 9106, ns.inode());
    assert!(
        on_a >= 2,
        "kernel counted {total}, tcpq reported for pid {pid_a}: {lines:#?}"
    );
    assert!(
        lines.iter().all(|l| l["server.port"] == 9106),
        "only pid {pid_a}'s listener: {lines:#?}"
    );
    // Both listeners overflowed alike (3 clients, listen(0)): the kernel's
    // total is A's plus B's, and tcpq showed exactly A's share.
    assert_eq!(on_a * 2, total, "A={on_a}, netns total={total}");
    assert_attributed(&lines, 9106, &ns, pid_a, "tcpq-scenario");
}

/// The `inet_csk_accept` hook counts what the application accepts while its
/// queue overflows: 0 for a stuck server, exactly its accepts otherwise.
/// Needs fentry or kprobes (the VM runs); the host has no accept hook.
#[test]
fn accepts_during_overflow_are_counted() {
    if !root_or_skip() {
        return;
    }
    if std::env::var("TCPQ_EXPECT_HOOK").is_err() {
        eprintln!(
            "skipped: no inet_csk_accept hook on this kernel (no fentry/kprobes); runs in the VM"
        );
        return;
    }
    let ns = Netns::new("accept");
    let port = 9108;
    let agent = Agent::trace(&["--port", &port.to_string()]);
    let mut child = ns
        .cmd(tcpq_tests::scenario_bin().to_str().unwrap())
        .args(
            format!("slow-accept --port {port} --clients 10 --accepts 3 --hold 2.5")
                .split_whitespace(),
        )
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let out = {
        use std::io::Read;
        let mut s = String::new();
        child.stdout.take().unwrap().read_to_string(&mut s).unwrap();
        s
    };
    child.wait().unwrap();
    let accepted: u64 = out
        .lines()
        .find_map(|l| l.strip_prefix("accepted ")?.trim().parse().ok())
        .expect("scenario reports its accepts");
    let lines = agent.stop();
    let mine: Vec<_> = lines
        .iter()
        .filter(|l| l["event"] == "listen_overflow" && l["server.port"] == port)
        .collect();
    assert!(!mine.is_empty(), "{lines:#?}");
    // accept.count is the listener's, per interval: every line of that
    // listener in one interval (SYN- and ACK-stage) carries the same value.
    let per_interval: std::collections::BTreeMap<String, u64> = mine
        .iter()
        .map(|l| {
            let at = l["timestamp"].as_str().unwrap().to_string();
            (at, l["accept.count"].as_u64().expect("accept.count"))
        })
        .collect();
    let counted: u64 = per_interval.values().sum();
    assert_eq!(accepted, 3);
    // Accepts ride on the listener's lines of the same interval. Since
    // storm counts reach the report at the next sock_diag round, an accept
    // can fall in an interval whose overflow arrives a round later, and is
    // then on no line (README, Known limits): never more than the
    // application made, and the overflow lines must carry some.
    assert!(
        (1..=accepted).contains(&counted),
        "{counted} accepts on overflow lines for {accepted} made: {lines:#?}"
    );
    // listen(1) holds 2: the first accept found a queue of 2.
    let queue_max = mine
        .iter()
        .map(|l| l["accept.queue_max"].as_u64().unwrap())
        .max();
    assert_eq!(queue_max, Some(2), "{lines:#?}");
}

/// `listen(fd, 64)` under `somaxconn=4`: the queue limit is 4. Where the
/// kernel-function hooks run (`__sys_listen`), the line carries the 64 the
/// application asked for and the verdict names both numbers; elsewhere the
/// verdict says the requested value is not known.
#[test]
fn a_capped_backlog_is_named_with_what_listen_asked_for() {
    if !root_or_skip() {
        return;
    }
    let ns = Netns::new("cap9120");
    ns.sysctl("net.core.somaxconn", "4");
    let port = 9120;
    let p = port.to_string();
    // The agent first: the listener is born while it traces. Whether this
    // kernel let it hook __sys_listen: its start-up line lists the hooks.
    let agent = Agent::trace(&["--port", &p]);
    let kfunc = agent.ready_line.contains("fentry __sys_listen")
        || agent.ready_line.contains("kprobe __sys_listen");
    let before = ns.counters();
    let (mut server, _) = ns.scenario(&format!("listen --port {p} --backlog 64 --hold 8"));
    let (mut clients, _) = ns.scenario(&format!(
        "connect --port {p} --clients 10 --syncnt 1 --hold 3"
    ));
    clients.wait().unwrap();
    let after = ns.counters();
    let lines = agent.stop();
    let _ = (server.kill(), server.wait());
    assert_counts_match(&lines, port, &ns, &before, &after, 3);
    let ov: Vec<_> = lines
        .iter()
        .filter(|l| l["event"] == "listen_overflow" && l["server.port"] == port)
        .collect();
    for l in &ov {
        assert_eq!(l["queue.limit"], 4, "{l}");
        let cause = l["verdict.cause"].as_str().unwrap_or_default();
        if kfunc {
            assert_eq!(l["listen.backlog_requested"], 64, "{l}");
            assert!(
                cause.contains("listen(…, 64) was capped to net.core.somaxconn=4"),
                "{cause}"
            );
        } else {
            assert!(l.get("listen.backlog_requested").is_none(), "{l}");
            assert!(
                cause.contains("the backlog it asked for is not known"),
                "{cause}"
            );
        }
    }
}

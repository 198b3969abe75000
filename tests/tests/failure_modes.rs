//! Every failure mode of the incident write-ups beyond a full accept queue,
//! end to end: a scenario in a private network namespace, the agent as a
//! user runs it, and the namespace's own counters (or sock_diag, through
//! `ss`, where the kernel keeps no counter) as the judge. Needs root.

use serde_json::Value;
use tcpq_tests::{
    delta, expected_sources, field, finish, kernel_version, root_or_skip, run, skip, sockstat_tw,
    source_matches, Agent, Netns,
};

/// Before this fix the kernel calls a SYN queue full one request earlier
/// (`qlen >= limit`) than tcpq's `tcp_conn_request` hook models
/// (`qlen > limit`): drops at the limit are reported as `listen_drop`,
/// syncookies sent at the limit are missed.
const REQSK_QUEUE_IS_FULL_FIX: &str = "inet_csk_reqsk_queue_is_full() as `qlen > limit` \
     (mainline fix of December 2024, in the 5.10 stable series from January 2025; \
     Debian 11's 5.10.223 predates it)";

/// Whether this kernel predates `REQSK_QUEUE_IS_FULL_FIX` (Debian 11's
/// 5.10.0-32 = 5.10.223 does; Debian 12's 6.1.0-47 and later do not).
fn reqsk_full_at_limit() -> bool {
    kernel_version() < (5, 11)
}

/// SYN-stage lines come from the hook this run demands (`TCPQ_EXPECT_HOOK`:
/// `tcp_conn_request` in the VM, sock_diag + counters on the host).
fn assert_syn_source(lines: &[&Value]) {
    let want = expected_sources().0;
    for l in lines {
        let got = l["source"].as_str().unwrap_or("");
        assert!(
            source_matches(got, &want),
            "seen by {got}, expected {want}: {l}"
        );
    }
}

fn lines_of<'a>(lines: &'a [Value], event: &str, netns: u64) -> Vec<&'a Value> {
    lines
        .iter()
        .filter(|l| l["event"] == event && l["network.netns"] == netns)
        .collect()
}

fn total(lines: &[&Value]) -> u64 {
    lines.iter().map(|l| l["count"].as_u64().unwrap()).sum()
}

/// Sockets in `state` in the namespace, as `ss` (sock_diag) counts them.
/// While a scenario holds CLOSE_WAIT sockets: long enough for the agent
/// to read them (every 4th poll; a TCG guest beside another one runs
/// several times slower).
fn wait_for_close_wait_reads() {
    let ms = if std::env::var_os("TCPQ_IN_VM").is_some() {
        15_000
    } else {
        5000
    };
    std::thread::sleep(std::time::Duration::from_millis(ms));
}

fn ss_count(ns: &Netns, state: &str) -> u64 {
    run(ns.cmd("ss").args(["-Htan", "state", state]))
        .lines()
        .count() as u64
}

fn syn_queue(
    syncookies: &str,
    port: u16,
) -> (
    Vec<Value>,
    Netns,
    std::collections::HashMap<String, u64>,
    std::collections::HashMap<String, u64>,
) {
    let ns = Netns::new(&format!("synq{port}"));
    ns.sysctl("net.ipv4.tcp_syncookies", syncookies);
    let agent = Agent::trace(&["--port", &port.to_string()]);
    let before = ns.counters();
    // listen(2) with TCP_DEFER_ACCEPT: idle clients stay half-open; the
    // SYN queue holds 3, the rest overflow it.
    let (child, _) = ns.scenario(&format!(
        "syn-queue --port {port} --backlog 2 --clients 5 --hold 1.5"
    ));
    finish(child);
    let after = ns.counters();
    (agent.stop(), ns, before, after)
}

#[test]
fn syn_queue_drops_match_tcp_req_q_full_drop() {
    if !root_or_skip() {
        return;
    }
    if reqsk_full_at_limit() {
        return skip(REQSK_QUEUE_IS_FULL_FIX);
    }
    let (lines, ns, before, after) = syn_queue("0", 9301);
    let kernel = delta(&before, &after, "TcpExt.TCPReqQFullDrop");
    assert!(kernel >= 2, "scenario: TCPReqQFullDrop +{kernel}");
    let mine = lines_of(&lines, "syn_queue_drop", ns.inode());
    assert!(
        mine.iter()
            .all(|l| l["reason"] == "syn_queue_full" && l["server.port"] == 9301),
        "{mine:#?}"
    );
    assert_eq!(
        total(&mine),
        kernel,
        "syn_queue_drop vs TCPReqQFullDrop: {lines:#?}"
    );
    assert_syn_source(&mine);
    assert_eq!(delta(&before, &after, "TcpExt.ListenOverflows"), 0);
    assert!(lines_of(&lines, "listen_overflow", ns.inode()).is_empty());
    let v = mine[0]["verdict.cause"].as_str().unwrap_or_default();
    assert!(
        v.contains("tcp_syncookies") || v.contains("syncookies"),
        "verdict: {v}"
    );
}

#[test]
fn syncookies_sent_match_tcp_req_q_full_do_cookies() {
    if !root_or_skip() {
        return;
    }
    if reqsk_full_at_limit() {
        return skip(REQSK_QUEUE_IS_FULL_FIX);
    }
    let (lines, ns, before, after) = syn_queue("1", 9302);
    let kernel = delta(&before, &after, "TcpExt.TCPReqQFullDoCookies");
    assert!(kernel >= 2, "scenario: TCPReqQFullDoCookies +{kernel}");
    let mine = lines_of(&lines, "syncookies_sent", ns.inode());
    assert!(mine.iter().all(|l| l["server.port"] == 9302), "{mine:#?}");
    assert_eq!(
        total(&mine),
        kernel,
        "syncookies_sent vs TCPReqQFullDoCookies: {lines:#?}"
    );
    assert_syn_source(&mine);
    assert!(lines_of(&lines, "syn_queue_drop", ns.inode()).is_empty());
}

#[test]
fn three_quarters_of_max_syn_backlog_is_a_syn_queue_drop() {
    if !root_or_skip() {
        return;
    }
    let ns = Netns::new("msb9303");
    ns.sysctl("net.ipv4.tcp_syncookies", "0");
    ns.sysctl("net.ipv4.tcp_max_syn_backlog", "8");
    let agent = Agent::trace(&["--port", "9303"]);
    let before = ns.counters();
    let (child, _) = ns.scenario("syn-queue --port 9303 --backlog 100 --clients 10 --hold 1.5");
    finish(child);
    let after = ns.counters();
    let lines = agent.stop();
    let drops = delta(&before, &after, "TcpExt.ListenDrops");
    assert!(drops >= 3, "scenario: ListenDrops +{drops}");
    assert_eq!(delta(&before, &after, "TcpExt.TCPReqQFullDrop"), 0);
    let mine = lines_of(&lines, "syn_queue_drop", ns.inode());
    assert!(
        mine.iter().all(|l| l["reason"] == "max_syn_backlog"),
        "{mine:#?}"
    );
    assert_eq!(
        total(&mine),
        drops,
        "syn_queue_drop vs ListenDrops: {lines:#?}"
    );
    assert_syn_source(&mine);
}

#[test]
fn accept_emfile_is_counted_per_process_with_its_fds_and_queue() {
    if !root_or_skip() {
        return;
    }
    let ns = Netns::new("emfile9304");
    // --port: the accept() syscall hooks are on from the start (host-wide
    // they are attached on demand: see the next test).
    let agent = Agent::trace(&["--port", "9304"]);
    let (child, pid) = ns.scenario("accept-emfile --port 9304 --clients 3 --attempts 7 --hold 1.5");
    let out = finish(child);
    let lines = agent.stop();
    let failed = field(&out, "EMFILE");
    assert_eq!(failed, 7, "{out}");
    let mine: Vec<&Value> = lines
        .iter()
        .filter(|l| l["event"] == "accept_error" && l["process.pid"] == pid)
        .collect();
    assert!(
        mine.iter().all(|l| l["error.type"] == "EMFILE"),
        "{mine:#?}"
    );
    assert_eq!(
        total(&mine),
        failed,
        "accept_error vs the app's own count: {lines:#?}"
    );
    let l = mine[0];
    assert_eq!(l["server.port"], 9304, "the listener backing up: {l}");
    assert_eq!(l["queue.length"], 3, "Recv-Q while accept() fails: {l}");
    assert_eq!(l["network.netns"], ns.inode());
    assert!(
        l["process.fd_limit"].as_u64().unwrap() <= l["process.open_fds"].as_u64().unwrap(),
        "{l}"
    );
    assert!(
        l["verdict.cause"].as_str().unwrap().contains("EMFILE"),
        "{l}"
    );
}

#[test]
fn accept_errors_beyond_the_kernel_map_are_counted_not_lost() {
    if !root_or_skip() {
        return;
    }
    let ns = Netns::new("emfull9314");
    // Room for one (pid, errno) in the kernel: the first process failing
    // accept() takes it, the second finds the map full.
    let agent = Agent::trace_env(
        &["--syscall-hooks", "always"],
        &[("TCPQ_TEST_ACCEPT_ERRORS_ENTRIES", "1")],
    );
    let (first, pid1) =
        ns.scenario("accept-emfile --port 9314 --clients 3 --attempts 150 --hold 0.5");
    std::thread::sleep(std::time::Duration::from_millis(500));
    let (second, pid2) =
        ns.scenario("accept-emfile --port 9315 --clients 3 --attempts 7 --hold 0.5");
    let (out1, out2) = (finish(first), finish(second));
    let (lines, stderr) = agent.stop_with_stderr(libc::SIGINT);
    let failed = field(&out1, "EMFILE") + field(&out2, "EMFILE");
    let seen = |pid: u32| -> u64 {
        lines
            .iter()
            .filter(|(_, l)| l["event"] == "accept_error" && l["process.pid"] == pid)
            .map(|(_, l)| l["count"].as_u64().unwrap())
            .sum()
    };
    let reported = seen(pid1) + seen(pid2);
    let summary = stderr
        .iter()
        .find(|l| l.starts_with("tcpq: kernel maps:"))
        .unwrap_or_else(|| panic!("no kernel-maps summary: {stderr:#?}"));
    let full: u64 = summary
        .split("ACCEPT_ERRORS map_full=")
        .nth(1)
        .and_then(|r| r.split(',').next())
        .and_then(|n| n.trim().parse().ok())
        .unwrap_or_else(|| panic!("{summary}"));
    // Some failures did not fit, and each of those is counted (other
    // processes on the host may add to the count, never take from it).
    assert!(
        reported < failed,
        "reported {reported} of {failed}: nothing lost?"
    );
    assert!(
        reported + full >= failed,
        "reported {reported} + map_full {full} < {failed} failures: {summary}"
    );
}

#[test]
fn accept_hooks_attach_on_demand_when_a_queue_backs_up() {
    if !root_or_skip() {
        return;
    }
    let ns = Netns::new("emfile9313");
    // Host-wide: no syscall hook until a queue is a quarter full; accept()
    // keeps failing for 3 s meanwhile (300 attempts 10 ms apart).
    let agent = Agent::trace(&[]);
    assert!(
        !agent.ready_line.contains("tracepoint syscalls:")
            && agent
                .ready_line
                .contains("sys_exit_accept4 when a queue backs up"),
        "syscall hooks must start detached: {}",
        agent.ready_line
    );
    // 5 connections wait in a queue of 16+1: a quarter full.
    let (child, pid) =
        ns.scenario("accept-emfile --port 9313 --clients 5 --attempts 300 --hold 0.5");
    let out = finish(child);
    let lines = agent.stop();
    let failed = field(&out, "EMFILE");
    let seen: u64 = lines
        .iter()
        .filter(|l| l["event"] == "accept_error" && l["process.pid"] == pid)
        .map(|l| l["count"].as_u64().unwrap())
        .sum();
    // Attached within about two polls: most failures are seen, never more
    // than happened.
    assert!(
        seen > failed / 2 && seen <= failed,
        "seen {seen} of {failed}: {lines:#?}"
    );
}

#[test]
fn close_wait_sockets_are_counted_per_listener_like_ss() {
    if !root_or_skip() {
        return;
    }
    let ns = Netns::new("cw9305");
    let agent = Agent::trace(&[]);
    // Held 60 s (killed below).
    let (mut child, pid) = ns.scenario("close-wait --port 9305 --conns 4 --hold 60");
    wait_for_close_wait_reads();
    let ss = ss_count(&ns, "close-wait");
    let lines = agent.stop();
    let _ = child.kill();
    let _ = child.wait();
    assert_eq!(ss, 4, "scenario: CLOSE_WAIT sockets per ss");
    let mine = lines_of(&lines, "close_wait", ns.inode());
    let last = mine
        .last()
        .unwrap_or_else(|| panic!("no close_wait line: {lines:#?}"));
    assert_eq!(last["count"].as_u64().unwrap(), ss, "{last}");
    assert_eq!(last["server.port"], 9305, "{last}");
    assert_eq!(last["process.pid"], pid, "{last}");
    assert!(last["close_wait.oldest_seconds"].is_number(), "{last}");
    assert!(
        last["verdict.cause"]
            .as_str()
            .unwrap()
            .contains("CLOSE_WAIT"),
        "{last}"
    );
}

/// CLOSE_WAIT sockets of one process on two ports whose listeners it has
/// closed: nothing to attribute them to but their port, and each port
/// is a line of its own with its own count (before: one line, the last
/// port's, and the other port's count lost).
#[test]
fn close_wait_without_a_listener_is_counted_per_port_like_ss() {
    if !root_or_skip() {
        return;
    }
    let ns = Netns::new("cw9307");
    let agent = Agent::trace(&[]);
    // A listener elsewhere in the namespace: the agent walks CLOSE_WAIT
    // only in namespaces with one (the table is shared by all of them).
    let (mut other, _) = ns.scenario("close-wait --port 9309 --conns 0 --hold 60");
    let (mut child, pid) =
        ns.scenario("close-wait --port 9307 --port 9308 --conns 2 --close-listener --hold 60");
    wait_for_close_wait_reads();
    let ss = |port: u16| {
        run(ns.cmd("ss").args(["-Htan", "state", "close-wait"]))
            .lines()
            .filter(|l| {
                l.split_whitespace()
                    .nth(2)
                    .is_some_and(|a| a.ends_with(&format!(":{port}")))
            })
            .count() as u64
    };
    let (a, b) = (ss(9307), ss(9308));
    let listening = run(ns.cmd("ss").args(["-Htln"]));
    let lines = agent.stop();
    for c in [&mut child, &mut other] {
        let _ = c.kill();
        let _ = c.wait();
    }
    assert_eq!((a, b), (2, 2), "scenario: CLOSE_WAIT per port per ss");
    assert!(
        !listening.contains(":9307") && !listening.contains(":9308"),
        "listeners left: {listening}"
    );
    let mine = lines_of(&lines, "close_wait", ns.inode());
    for (port, n) in [(9307, a), (9308, b)] {
        let last = mine
            .iter()
            .rfind(|l| l["server.port"] == port)
            .unwrap_or_else(|| panic!("no close_wait line of {port}: {mine:#?}"));
        assert_eq!(last["count"].as_u64().unwrap(), n, "{last}");
        assert_eq!(last["process.pid"], pid, "{last}");
    }
}

#[test]
fn port_exhaustion_is_a_connect_error_with_the_port_range() {
    if !root_or_skip() {
        return;
    }
    let ns = Netns::new("ports9306");
    ns.sysctl("net.ipv4.ip_local_port_range", "40000 40003");
    let agent = Agent::trace(&[]);
    let (child, pid) = ns.scenario("port-exhaust --port 9306 --attempts 10 --hold 1");
    let out = finish(child);
    let lines = agent.stop();
    let failed = field(&out, "EADDRNOTAVAIL");
    assert_eq!((field(&out, "ok"), failed), (4, 6), "{out}");
    let mine: Vec<&Value> = lines_of(&lines, "connect_error", ns.inode())
        .into_iter()
        .filter(|l| l["error.type"] == "EADDRNOTAVAIL")
        .collect();
    assert_eq!(
        total(&mine),
        failed,
        "connect_error vs the app's own count: {lines:#?}"
    );
    let l = mine[0];
    assert_eq!(l["process.pid"], pid, "{l}");
    assert_eq!(l["server.port"], 9306, "destination: {l}");
    assert_eq!(l["port_range.size"], 4, "{l}");
    assert!(l["verdict.remedy"].is_string(), "{l}");
}

#[test]
fn time_wait_exhaustion_reports_the_time_wait_count() {
    if !root_or_skip() {
        return;
    }
    let ns = Netns::new("tw9307");
    ns.sysctl("net.ipv4.ip_local_port_range", "40000 40003");
    ns.sysctl("net.ipv4.tcp_tw_reuse", "0");
    let agent = Agent::trace(&[]);
    let before = ns.counters();
    let (child, _) = ns.scenario("tw-exhaust --port 9307 --cycles 4 --attempts 3 --hold 1");
    let out = finish(child);
    let after = ns.counters();
    let lines = agent.stop();
    let failed = field(&out, "EADDRNOTAVAIL");
    assert!(failed >= 1, "{out}");
    let mine: Vec<&Value> = lines_of(&lines, "connect_error", ns.inode())
        .into_iter()
        .filter(|l| l["error.type"] == "EADDRNOTAVAIL")
        .collect();
    assert_eq!(total(&mine), failed, "{lines:#?}");
    // TIME_WAIT sockets the namespace holds (sockstat `tw`): TcpExt.TW
    // counts entries on 6.x but expiries (60 s later) on 5.10.
    let tw = sockstat_tw(&ns);
    let _ = (before, after);
    assert_eq!(tw, 4, "kernel: sockets in TIME_WAIT");
    assert_eq!(mine[0]["time_wait.count"], tw, "{}", mine[0]);
}

#[test]
fn refused_connects_are_resets_received_and_connect_errors() {
    if !root_or_skip() {
        return;
    }
    let ns = Netns::new("refused9308");
    let agent = Agent::trace(&[]);
    let before = ns.counters();
    let (child, _) = ns.scenario("refused --port 9308 --count 6");
    let out = finish(child);
    let after = ns.counters();
    let lines = agent.stop();
    assert_eq!(out.trim(), "refused 6");
    let fails = delta(&before, &after, "Tcp.AttemptFails");
    assert_eq!(fails, 6, "kernel: AttemptFails");
    let rr = lines_of(&lines, "reset_received", ns.inode());
    assert!(
        rr.iter()
            .all(|l| l["tcp.state"] == "SYN_SENT" && l["network.peer.port"] == 9308),
        "{rr:#?}"
    );
    assert_eq!(
        total(&rr),
        fails,
        "reset_received vs AttemptFails: {lines:#?}"
    );
    let ce = lines_of(&lines, "connect_error", ns.inode());
    assert!(
        ce.iter().all(|l| l["error.type"] == "ECONNREFUSED"),
        "{ce:#?}"
    );
    assert_eq!(total(&ce), fails);
}

#[test]
fn resets_from_a_server_are_resets_received_by_its_clients() {
    if !root_or_skip() {
        return;
    }
    let ns = Netns::new("rst9309");
    let agent = Agent::trace(&[]);
    let before = ns.counters();
    let (child, _) = ns.scenario("reset-peer --port 9309 --conns 5");
    let out = finish(child);
    let after = ns.counters();
    let lines = agent.stop();
    assert_eq!(field(&out.replace("reset ", "reset="), "reset"), 5, "{out}");
    let sent = delta(&before, &after, "Tcp.OutRsts");
    assert_eq!(sent, 5, "kernel: OutRsts");
    let rr = lines_of(&lines, "reset_received", ns.inode());
    assert!(
        rr.iter().all(|l| l["tcp.state"] == "ESTABLISHED"),
        "{rr:#?}"
    );
    assert_eq!(total(&rr), sent, "reset_received vs OutRsts: {lines:#?}");
}

#[test]
fn connect_timeout_is_a_connect_error() {
    if !root_or_skip() {
        return;
    }
    let ns = Netns::new("cto9310");
    ns.sysctl("net.ipv4.tcp_syncookies", "0");
    let agent = Agent::trace(&[]);
    let (child, pid) = ns.scenario("connect-timeout --port 9310 --hold 0.5");
    let out = finish(child);
    let lines = agent.stop();
    // The last connect, and on a kernel without REQSK_QUEUE_IS_FULL_FIX
    // also the second held one (the SYN queue then holds one request).
    let timed_out = field(&out, "ETIMEDOUT");
    let expected = if reqsk_full_at_limit() { 2 } else { 1 };
    assert_eq!(timed_out, expected, "{out}");
    let ce: Vec<&Value> = lines_of(&lines, "connect_error", ns.inode())
        .into_iter()
        .filter(|l| l["error.type"] == "ETIMEDOUT")
        .collect();
    assert_eq!(total(&ce), timed_out, "{lines:#?}");
    assert_eq!(ce[0]["process.pid"], pid, "{}", ce[0]);
}

#[test]
fn status_agrees_with_ss_and_the_kernel_counters() {
    if !root_or_skip() {
        return;
    }
    let ns = Netns::new("status9311");
    ns.sysctl("net.core.somaxconn", "128");
    let before = ns.counters();
    // listen(0), never accept: one queued, the other clients dropped.
    // Held 60 s (killed below): the listener outlives the wait for the
    // drops to settle, however slow the machine.
    let (mut child, pid) = ns.scenario("syn-overflow --port 9311 --clients 4 --syncnt 1 --hold 60");
    // Until the clients' one SYN retransmit each is over (later under a
    // slow TCG guest than on the host): ListenDrops unchanged for 1 s.
    let settled = || {
        let mut last = ns.counters();
        for _ in 0..20 {
            std::thread::sleep(std::time::Duration::from_millis(1000));
            let now = ns.counters();
            if delta(&last, &now, "TcpExt.ListenDrops") == 0 {
                return now;
            }
            last = now;
        }
        panic!("ListenDrops still moving after 20 s");
    };
    let after = settled();
    let out = run(std::process::Command::new(tcpq_tests::agent_bin())
        .args(["status", "--output", "json", "--port", "9311"]));
    let ss = run(ns.cmd("ss").args(["-Hltn", "sport", "= :9311"]));
    assert_eq!(
        delta(&after, &ns.counters(), "TcpExt.ListenDrops"),
        0,
        "drops while status ran"
    );
    let _ = child.kill();
    let _ = child.wait();
    let rows: Vec<Value> = out
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let row = rows
        .iter()
        .find(|r| r["network.netns"] == ns.inode() && r["event"] == "listener")
        .unwrap_or_else(|| panic!("no row for the listener: {out}"));
    // ss -lnt: State Recv-Q Send-Q Local Peer
    let f: Vec<&str> = ss.split_whitespace().collect();
    assert_eq!(row["queue.length"].to_string(), f[1], "{row} vs ss {ss}");
    assert_eq!(row["queue.limit"].to_string(), f[2], "{row} vs ss {ss}");
    assert_eq!(row["process.pid"], pid);
    assert_eq!(row["net.core.somaxconn"], 128);
    // SYN-time drops only: sk_drops == ListenDrops of the namespace.
    let drops = delta(&before, &after, "TcpExt.ListenDrops");
    assert!(drops >= 3, "scenario: ListenDrops +{drops}");
    assert_eq!(row["drops"], drops, "{row}");
    assert!(
        row["verdict.cause"].as_str().unwrap().contains("queue"),
        "{row}"
    );
}

#[test]
fn accept_latency_is_the_time_connections_waited_for_accept() {
    if !root_or_skip() {
        return;
    }
    let ns = Netns::new("lat9312");
    // --port: measured from the first connection (host-wide, only
    // listeners whose queue is seen a quarter full are measured).
    let agent = Agent::trace(&["--accept-latency-ms", "100", "--port", "9312"]);
    // 5 connections, accepted 500 ms after the last one connected.
    let (child, pid) = ns.scenario("accept-delay --port 9312 --conns 5 --delay-ms 500 --hold 1");
    let out = finish(child);
    let lines = agent.stop();
    assert_eq!(out.trim(), "accepted 5");
    let mine = lines_of(&lines, "accept_latency", ns.inode());
    assert_eq!(total(&mine), 5, "accepts measured: {lines:#?}");
    let l = mine[0];
    assert_eq!(l["server.port"], 9312, "{l}");
    assert_eq!(l["process.pid"], pid, "{l}");
    let ms = |k: &str| l[k].as_f64().unwrap();
    // Buckets are at most 25 % wide; the scheduler adds a little.
    assert!(
        (500.0..=700.0).contains(&ms("accept_latency.p50_ms")),
        "{l}"
    );
    assert!(
        ms("accept_latency.max_ms") >= ms("accept_latency.p99_ms"),
        "{l}"
    );
    assert!(
        l["verdict.cause"]
            .as_str()
            .unwrap()
            .contains("slow to accept"),
        "{l}"
    );
}

/// A short-lived client out of local ports: redis-cli exits at once, before
/// the agent could read /proc, and its lines still carry its name (taken in
/// the kernel, inside connect()) and as many failures as strace saw it get.
#[test]
fn a_client_that_exits_at_once_is_named_by_the_kernel() {
    if !root_or_skip() {
        return;
    }
    let ns = Netns::new("rcli9309");
    ns.sysctl("net.ipv4.ip_local_port_range", "40000 40001");
    let server = tcpq_tests::redis_server(&ns, 9309, &[]);
    // Two held connections take both local ports.
    let (holder, _) = ns.scenario("connect --port 9309 --clients 2 --syncnt 1 --hold 30");
    std::thread::sleep(std::time::Duration::from_millis(300));
    let agent = Agent::trace(&[]);
    let trace = std::env::temp_dir().join(format!("tcpq-strace-{}", std::process::id()));
    let mut failed = 0;
    for _ in 0..3 {
        let out = ns
            .cmd("strace")
            .args(["-f", "-qq", "-e", "trace=connect", "-o"])
            .arg(&trace)
            .args(["redis-cli", "-p", "9309", "ping"])
            .output()
            .expect("strace (cargo xtask setup installs it)");
        let text = std::fs::read_to_string(&trace).unwrap();
        failed += text.matches("EADDRNOTAVAIL").count() as u64;
        assert!(!out.status.success() || !String::from_utf8_lossy(&out.stdout).contains("PONG"));
    }
    std::thread::sleep(std::time::Duration::from_millis(1200));
    let lines = agent.stop();
    let _ = std::fs::remove_file(&trace);
    drop(server);
    finish_kill(holder);
    assert!(failed >= 3, "redis-cli did not run out of ports: {failed}");
    let mine: Vec<&Value> = lines_of(&lines, "connect_error", ns.inode())
        .into_iter()
        .filter(|l| l["error.type"] == "EADDRNOTAVAIL")
        .collect();
    assert_eq!(total(&mine), failed, "connect_error vs strace: {lines:#?}");
    for l in &mine {
        assert_eq!(l["process.executable.name"], "redis-cli", "{l}");
    }
}

fn finish_kill(mut child: std::process::Child) {
    let _ = child.kill();
    let _ = child.wait();
}

//! Owners: every socket resolved to the processes holding it — with
//! executable, command line, user and cgroup — through SO_REUSEPORT groups,
//! forks and exits; and the filters that mean "sockets owned by this".
//! Needs root.

use std::{
    io::Read,
    process::Child,
    thread::sleep,
    time::{Duration, Instant},
};

use serde_json::Value;
use tcpq_tests::{delta, polled_by, root_or_skip, sockets_of, Agent, Netns, Nginx, NginxConf};

const OVERFLOWS: &str = "TcpExt.ListenOverflows";

/// The next line a running scenario prints (after `ready`), read byte by
/// byte so nothing after it is consumed.
fn next_line(child: &mut Child) -> String {
    let out = child.stdout.as_mut().unwrap();
    let mut line = String::new();
    let mut b = [0u8; 1];
    while out.read(&mut b).unwrap_or(0) == 1 && b[0] != b'\n' {
        line.push(b[0] as char);
    }
    line
}

fn pid_after(line: &str, word: &str) -> u32 {
    line.strip_prefix(word)
        .and_then(|p| p.trim().parse().ok())
        .unwrap_or_else(|| panic!("expected `{word} PID`, got {line:?}"))
}

fn overflow_lines(lines: &[Value], port: u16) -> Vec<&Value> {
    lines
        .iter()
        .filter(|l| l["event"] == "listen_overflow" && l["server.port"] == port)
        .collect()
}

fn total(lines: &[&Value]) -> u64 {
    lines.iter().map(|l| l["count"].as_u64().unwrap()).sum()
}

fn stop(mut child: Child) {
    unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
    let _ = child.wait();
}

#[test]
fn reuseport_members_are_reported_on_their_own_and_pid_shows_one_member() {
    if !root_or_skip() {
        return;
    }
    let ns = Netns::new("rp9501");
    // Two processes, one SO_REUSEPORT listener each, listen(0).
    let (mut srv, a) = ns.scenario("reuseport --port 9501 --backlog 0 --hold 60");
    let b = pid_after(&next_line(&mut srv), "member ");
    let all = Agent::trace(&["--port", "9501"]);
    let only_a = Agent::trace(&["--pid", &a.to_string()]);
    let only_b = Agent::trace(&["--pid", &b.to_string()]);
    let before = ns.counters();
    // 16 clients spread over the members by the kernel's hash.
    let (mut cl, _) = ns.scenario("connect --port 9501 --clients 16 --syncnt 1 --hold 3.5");
    cl.wait().unwrap();
    let after = ns.counters();
    let (all, only_a, only_b) = (all.stop(), only_a.stop(), only_b.stop());
    stop(srv);
    let kernel = delta(&before, &after, OVERFLOWS);
    assert!(kernel >= 4, "scenario: ListenOverflows +{kernel}");
    let lines = overflow_lines(&all, 9501);
    assert_eq!(total(&lines), kernel, "{all:#?}");
    for pid in [a, b] {
        assert!(
            lines.iter().any(|l| l["process.pid"] == pid),
            "member {pid} reported on its own: {lines:#?}"
        );
    }
    for l in &lines {
        assert_eq!(l["reuseport.group_size"], 2, "{l}");
        assert!(l["reuseport.group_count"].as_u64().unwrap() >= l["count"].as_u64().unwrap());
    }
    // --pid: only that member's socket; the two add up to the kernel's.
    let (la, lb) = (overflow_lines(&only_a, 9501), overflow_lines(&only_b, 9501));
    assert!(la.iter().all(|l| l["process.pid"] == a), "{la:#?}");
    assert!(lb.iter().all(|l| l["process.pid"] == b), "{lb:#?}");
    assert!(!la.is_empty() && !lb.is_empty());
    assert_eq!(
        total(&la) + total(&lb),
        kernel,
        "--pid shares vs ListenOverflows"
    );
}

#[test]
fn a_listener_inherited_by_a_child_lists_both_then_only_the_survivor() {
    if !root_or_skip() {
        return;
    }
    let ns = Netns::new("fork9502");
    let agent = Agent::trace(&["--port", "9502"]);
    let before = ns.counters();
    // Parent listens (listen(0)), forks; the parent exits after 3 s.
    let (mut srv, parent) =
        ns.scenario("fork-listen --port 9502 --backlog 0 --hold 40 --parent-hold 3");
    let child = pid_after(&next_line(&mut srv), "child ");
    let (mut c1, _) = ns.scenario("connect --port 9502 --clients 4 --syncnt 1 --hold 1.5");
    c1.wait().unwrap();
    // Parent gone; the agent re-reads holders every 5 s.
    sleep(Duration::from_secs(8));
    let marker = Instant::now();
    let (mut c2, _) = ns.scenario("connect --port 9502 --clients 4 --syncnt 1 --hold 1.5");
    c2.wait().unwrap();
    let after = ns.counters();
    let lines = agent.stop_timed();
    stop(srv);
    let kernel = delta(&before, &after, OVERFLOWS);
    let all: Vec<Value> = lines.iter().map(|(_, v)| v.clone()).collect();
    assert_eq!(total(&overflow_lines(&all, 9502)), kernel, "{all:#?}");
    let (early, late): (Vec<_>, Vec<_>) = lines
        .iter()
        .filter(|(_, v)| v["event"] == "listen_overflow")
        .partition(|(t, _)| *t < marker);
    assert!(!early.is_empty() && !late.is_empty(), "{lines:#?}");
    for (_, l) in &early {
        assert_eq!(l["process.pid"], parent, "{l}");
        assert_eq!(
            l["process.holders"],
            serde_json::json!([parent, child]),
            "{l}"
        );
    }
    for (_, l) in &late {
        assert_eq!(
            l["process.pid"], child,
            "no stale owner after the parent exited: {l}"
        );
        assert!(l.get("process.holders").is_none(), "{l}");
    }
}

#[test]
fn owner_details_and_filters_by_netns_comm_and_cgroup() {
    if !root_or_skip() {
        return;
    }
    let (ns1, ns2) = (Netns::new("own9503"), Netns::new("own9504"));
    let by_netns = Agent::trace(&["--netns", &format!("/run/netns/{}", ns1.name)]);
    let by_comm = Agent::trace(&["--comm", "no-such-process"]);
    let (mut s1, p1) = ns1.scenario("syn-overflow --port 9503 --clients 4 --syncnt 1 --hold 3");
    // The cgroup v2 path (the VM's initramfs may have none).
    let cgroup = std::fs::read_to_string(format!("/proc/{p1}/cgroup"))
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix("0::").map(str::to_string));
    let by_cgroup = Agent::trace(&[
        "--cgroup",
        cgroup.as_deref().unwrap_or("/"),
        "--port",
        "9504",
    ]);
    let (mut s2, _) = ns2.scenario("syn-overflow --port 9504 --clients 4 --syncnt 1 --hold 3");
    s1.wait().unwrap();
    s2.wait().unwrap();
    let (by_netns, by_comm, by_cgroup) = (by_netns.stop(), by_comm.stop(), by_cgroup.stop());
    // --netns: only ns1's listener, with its owner's details.
    let l1 = overflow_lines(&by_netns, 9503);
    assert!(!l1.is_empty(), "{by_netns:#?}");
    assert!(overflow_lines(&by_netns, 9504).is_empty(), "{by_netns:#?}");
    let l = l1[0];
    assert_eq!(l["process.pid"], p1);
    assert!(
        l["process.executable.path"]
            .as_str()
            .unwrap()
            .ends_with("/tcpq-scenario"),
        "{l}"
    );
    assert!(
        l["process.command_line"]
            .as_str()
            .unwrap()
            .contains("syn-overflow --port 9503"),
        "{l}"
    );
    // root's name where /etc/passwd has it (not in the VM's initramfs).
    let root = match std::fs::read_to_string("/etc/passwd") {
        Ok(p) if p.lines().any(|l| l.starts_with("root:x:0:")) => "root",
        _ => "0",
    };
    assert_eq!(l["process.owner"], root, "{l}");
    match &cgroup {
        Some(c) => assert_eq!(l["cgroup.path"], c.as_str(), "{l}"),
        None => assert!(l.get("cgroup.path").is_none(), "{l}"),
    }
    // --comm that matches nobody: no lines about these listeners.
    assert!(overflow_lines(&by_comm, 9503).is_empty() && overflow_lines(&by_comm, 9504).is_empty());
    // --cgroup of the scenarios: ns2's listener is in it (where processes
    // have a cgroup path at all).
    if cgroup.is_some() {
        assert!(
            !overflow_lines(&by_cgroup, 9504).is_empty(),
            "{by_cgroup:#?}"
        );
    }
}

#[test]
fn a_listener_born_and_gone_while_tracing_is_owned_then_forgotten() {
    if !root_or_skip() {
        return;
    }
    let ns = Netns::new("gone9505");
    let agent = Agent::trace(&["--port", "9505"]);
    let before = ns.counters();
    // Born after the agent (its owner comes from the kernel's listen()),
    // overflowing, then gone with its process.
    let (mut s, pid) = ns.scenario("syn-overflow --port 9505 --clients 4 --syncnt 1 --hold 2.5");
    s.wait().unwrap();
    let after = ns.counters();
    sleep(Duration::from_secs(3));
    let (lines, stderr) = agent.stop_with_stderr(libc::SIGINT);
    let lines: Vec<Value> = lines.into_iter().map(|(_, v)| v).collect();
    let mine = overflow_lines(&lines, 9505);
    assert_eq!(
        total(&mine),
        delta(&before, &after, OVERFLOWS),
        "{lines:#?}"
    );
    assert!(mine.iter().all(|l| l["process.pid"] == pid), "{mine:#?}");
    let done = stderr
        .iter()
        .find(|l| l.starts_with("tcpq: done:"))
        .unwrap_or_else(|| panic!("no exit summary: {stderr:#?}"));
    assert!(
        done.ends_with("; 0 socket owners cached"),
        "owners of closed sockets must not pile up: {done}"
    );
}

/// nginx with its workers stopped: 24 clients (one SYN retry each) into
/// queues of 2, so most SYNs are dropped. Returns the kernel's
/// ListenOverflows delta and the agent's lines.
fn nginx_overflow(ns: &Netns, port: u16, nginx: &Nginx, agent_args: &[&str]) -> (u64, Vec<Value>) {
    let agent = Agent::trace(agent_args);
    let before = ns.counters();
    let (mut c, _) = ns.scenario(&format!(
        "connect --port {port} --clients 24 --syncnt 1 --hold 2.5"
    ));
    c.wait().unwrap();
    let after = ns.counters();
    let lines = agent.stop();
    let _ = nginx;
    (delta(&before, &after, OVERFLOWS), lines)
}

#[test]
fn nginx_reuseport_members_belong_to_their_workers() {
    if !root_or_skip() {
        return;
    }
    let ns = Netns::new("ngxrp9511");
    let port = 9511;
    let conf = NginxConf {
        workers: 2,
        reuseport: true,
        backlog: 2,
    };
    let nginx = Nginx::with(&ns, port, conf);
    let master = nginx.master();
    // Every process holds every member (nginx 1.22); each worker polls
    // its own (its epoll interest list).
    let member_of: std::collections::HashMap<u64, u32> = nginx
        .workers
        .iter()
        .flat_map(|&w| polled_by(w).into_iter().map(move |i| (i, w)))
        .filter(|(i, _)| sockets_of(master).contains(i))
        .collect();
    nginx.signal_workers(libc::SIGSTOP);
    let (kernel, lines) = nginx_overflow(&ns, port, &nginx, &["--port", "9511"]);
    let ov = overflow_lines(&lines, port);
    assert!(kernel > 0, "no overflow: {lines:#?}");
    assert_eq!(total(&ov), kernel, "{ov:#?}");
    let mut owners = std::collections::BTreeSet::new();
    for l in &ov {
        let ino = l["socket.inode"].as_u64().unwrap();
        let worker = member_of[&ino];
        assert_eq!(
            l["process.pid"], worker,
            "a member's owner is its worker: {l}"
        );
        assert_ne!(l["process.pid"], master, "{l}");
        assert_eq!(l["reuseport.group_size"], 2, "{l}");
        owners.insert(worker);
    }
    assert_eq!(owners.len(), 2, "both members overflowed: {ov:#?}");
    // `--pid <worker>`: that worker's member only (the queues are still
    // full: the workers are stopped).
    let w = nginx.workers[0];
    let (kernel, lines) = nginx_overflow(&ns, port, &nginx, &["--pid", &w.to_string()]);
    let ov = overflow_lines(&lines, port);
    assert!(
        !ov.is_empty() && total(&ov) < kernel,
        "{kernel} overflows, {ov:#?}"
    );
    for l in &ov {
        assert_eq!(l["process.pid"], w, "{l}");
        assert_eq!(member_of[&l["socket.inode"].as_u64().unwrap()], w, "{l}");
    }
    nginx.signal_workers(libc::SIGCONT);
}

#[test]
fn nginx_workers_sharing_one_socket_are_the_masters_service() {
    if !root_or_skip() {
        return;
    }
    let ns = Netns::new("ngxsh9512");
    let port = 9512;
    let conf = NginxConf {
        workers: 2,
        reuseport: false,
        backlog: 2,
    };
    let nginx = Nginx::with(&ns, port, conf);
    let master = nginx.master();
    nginx.signal_workers(libc::SIGSTOP);
    let (kernel, lines) = nginx_overflow(&ns, port, &nginx, &["--port", "9512"]);
    nginx.signal_workers(libc::SIGCONT);
    let ov = overflow_lines(&lines, port);
    assert!(kernel > 0, "no overflow: {lines:#?}");
    assert_eq!(total(&ov), kernel, "{ov:#?}");
    let mut holders = vec![master];
    holders.extend(&nginx.workers);
    for l in &ov {
        assert_eq!(l["process.pid"], master, "{l}");
        assert_eq!(l["process.executable.name"], "nginx", "{l}");
        assert_eq!(l["process.holders"], serde_json::json!(holders), "{l}");
        assert!(l.get("reuseport.group_size").is_none(), "{l}");
    }
}

/// Clients that reset their connections to redis-server: redis closes each
/// socket at once, before the agent could look for its holder in /proc, and
/// every `reset_received` line still names redis-server, because the kernel
/// recorded who accepted the connection (`inet_csk_accept` exit, or the
/// accept syscall's exit where kernel-function hooks are missing). Counts:
/// equal to the namespace's OutRsts (the clients' RSTs), the clients' own
/// count of answers.
#[test]
fn resets_of_accepted_connections_name_who_accepted_them() {
    if !root_or_skip() {
        return;
    }
    let ns = Netns::new("rrst9311");
    let server = tcpq_tests::redis_server(&ns, 9311, &[]);
    let agent = Agent::trace(&["--syscall-hooks", "always"]);
    let before = ns.counters();
    let (client, _) = ns.scenario("abort-client --port 9311 --conns 6 --request PING");
    let out = tcpq_tests::finish(client);
    sleep(Duration::from_millis(1500));
    let after = ns.counters();
    let lines = agent.stop();
    let pid = server.pid();
    drop(server);
    assert_eq!(out.trim(), "aborted 6", "redis-server answered every PING");
    let sent = delta(&before, &after, "Tcp.OutRsts");
    assert_eq!(sent, 6, "kernel: OutRsts");
    let mine: Vec<&Value> = lines
        .iter()
        .filter(|l| l["event"] == "reset_received" && l["network.netns"] == ns.inode())
        .filter(|l| l["tcp.state"] == "ESTABLISHED")
        .collect();
    assert_eq!(total(&mine), sent, "reset_received vs OutRsts: {lines:#?}");
    for l in &mine {
        assert_eq!(l["process.pid"], pid, "{l}");
        assert_eq!(l["process.executable.name"], "redis-server", "{l}");
    }
}

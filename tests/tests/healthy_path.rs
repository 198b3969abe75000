//! What tcpq costs, as counts (no timings): healthy traffic sends nothing
//! to user space and runs each kernel program the expected number of times
//! per request; a flood is counted in the kernel and arrives as a handful
//! of records, with exact counts.
//!
//! Each test runs real programs in a private network namespace: Debian's
//! nginx answering one-connection-per-request HTTP, and hping3 flooding a
//! full accept queue with SYNs.

use std::{collections::BTreeMap, process::Stdio, time::Duration};

use tcpq_tests::{
    delta, expected_sources, http_close, root_or_skip, source_matches, sum, Agent, Netns, Nginx,
};

/// Requests in the healthy run (the floor: 20,000).
const REQUESTS: u64 = 20_000;

/// Ring-buffer records the healthy path may cost: 1 per 1,000 requests.
const RECORDS_PER_REQUEST: f64 = 0.001;

/// The agent's exit summary: ring-buffer records the kernel sent, or at
/// least those the agent received (an agent from before the kernel counted
/// them says only that).
fn records_sent(stderr: &[String]) -> u64 {
    let first_number = |prefix: &str| {
        stderr.iter().find_map(|l| {
            l.strip_prefix(prefix)?
                .split_whitespace()
                .next()?
                .parse::<u64>()
                .ok()
        })
    };
    let sent = first_number("tcpq: kernel: ");
    let received = first_number("tcpq: done: ");
    sent.max(received)
        .unwrap_or_else(|| panic!("no exit summary in {stderr:#?}"))
}

/// `--bpf-stats` lines: program name → runs.
fn program_runs(stderr: &[String]) -> BTreeMap<String, u64> {
    stderr
        .iter()
        .filter_map(|l| {
            let rest = l.strip_prefix("tcpq: cost ")?;
            let mut it = rest.split_whitespace();
            let name = it.next()?.to_string();
            let runs = it.find_map(|kv| kv.strip_prefix("runs=")?.parse().ok())?;
            Some((name, runs))
        })
        .collect()
}

/// Runs per request each program may take on the healthy path, as
/// (min, max). A connection that the server closes first makes 10 TCP state
/// changes (client: CLOSE→SYN_SENT→ESTABLISHED→CLOSE_WAIT→LAST_ACK→CLOSE;
/// server child: LISTEN→SYN_RECV→ESTABLISHED→FIN_WAIT1→FIN_WAIT2→CLOSE);
/// each of the design card's kernel functions runs once per handshake; the
/// accept syscall exit runs for nginx's accept4() calls (one per connection,
/// plus the odd EAGAIN); nothing else fires for traffic that is fine.
fn expected_runs(program: &str) -> Option<(f64, f64)> {
    Some(match program {
        "tcpq_sock_state" => (10.0, 10.05),
        // Dropped packets only. On 6.18 exactly one skb per connection is
        // freed as dropped (measured 1.000/request); the hook compares its
        // reason and returns.
        "tcpq_kfree_skb" => (0.0, 1.01),
        "tcpq_send_reset" | "tcpq_receive_reset" | "tcpq_retransmit_synack" => (0.0, 0.001),
        "tcpq_accept_exit" => (1.0, 2.0),
        // tcp_conn_request: one SYN per request, entry and exit.
        p if p.starts_with("tcpq_conn_request_") => (1.0, 1.01),
        // syn_recv_sock and check_req: one final ACK per request.
        p if p.starts_with("tcpq_syn_recv") => (1.0, 1.01),
        p if p.starts_with("tcpq_check_req_") => (1.0, 1.01),
        // inet_csk_accept: nginx's accepts (+ EAGAINs for the kprobe entry).
        p if p.starts_with("tcpq_accept_") => (1.0, 2.0),
        _ => return None,
    })
}

#[test]
fn healthy_connection_per_request_traffic_sends_nothing_to_user_space() {
    if !root_or_skip() {
        return;
    }
    let ns = Netns::new("healthy");
    let port = 8380;
    let _nginx = Nginx::start(&ns, port);
    // Host-wide, every hook attached (the syscall hooks too, which are
    // otherwise attached only while a queue backs up), stats on.
    let agent = Agent::trace(&["--bpf-stats", "--syscall-hooks", "always"]);
    let before = ns.counters();
    let (ok, failed) = http_close(&ns, port, REQUESTS);
    let after = ns.counters();
    let (lines, stderr) = agent.stop_with_stderr(libc::SIGINT);
    assert_eq!((ok, failed), (REQUESTS, 0), "every request must succeed");
    // The kernel agrees that nothing went wrong: no drop, no failed
    // connect. A few RSTs may happen (under QEMU's TCG, 3 in 20,000: a
    // late segment meeting a closed socket); they are reported, as they
    // should be, within the record budget below.
    for c in ["TcpExt.ListenDrops", "Tcp.AttemptFails"] {
        assert_eq!(delta(&before, &after, c), 0, "{c} moved: not a healthy run");
    }
    let rsts = delta(&before, &after, "Tcp.OutRsts");
    assert!(
        rsts as f64 <= ok as f64 * RECORDS_PER_REQUEST / 2.0,
        "{rsts} RSTs: not a healthy run"
    );
    // A socket caught in passing (the client between the server's FIN and
    // its own close) by a CLOSE_WAIT dump is state, not trouble: reported
    // once with age 0 (see README, Known limits). Nothing else may appear.
    let ours: Vec<_> = lines
        .iter()
        .map(|(_, l)| l)
        .filter(|l| l["network.netns"] == ns.inode())
        .filter(|l| !(l["event"] == "close_wait" && l["close_wait.oldest_seconds"] == 0.0))
        .filter(|l| !(rsts > 0 && (l["event"] == "reset_received" || l["event"] == "reset_sent")))
        .collect();
    assert!(ours.is_empty(), "healthy traffic was reported: {ours:#?}");
    // The RSTs the kernel did send are reported, never more.
    let sent_rsts: u64 = lines
        .iter()
        .map(|(_, l)| l)
        .filter(|l| l["network.netns"] == ns.inode() && l["event"] == "reset_sent")
        .filter_map(|l| l["count"].as_u64())
        .sum();
    assert!(sent_rsts <= rsts, "{sent_rsts} reset_sent for {rsts} RSTs");

    let sent = records_sent(&stderr);
    eprintln!("healthy: {ok} requests, {sent} ring-buffer records");
    assert!(
        sent as f64 <= ok as f64 * RECORDS_PER_REQUEST,
        "{sent} ring-buffer records for {ok} healthy requests (budget {RECORDS_PER_REQUEST}/request)"
    );

    let runs = program_runs(&stderr);
    assert!(!runs.is_empty(), "no --bpf-stats lines in {stderr:#?}");
    assert!(
        runs.get("tcpq_sock_state").is_some_and(|&r| r > 0),
        "the state-change hook must be attached and running: {runs:?}"
    );
    let (kfunc, _) = expected_sources();
    if kfunc != "sock_diag" {
        // Kernels with kprobes or fentry hook the design card's functions.
        // Program names: tcpq_<function>[4|6]_{fentry,fexit,kprobe,kretprobe}.
        const KINDS: [&str; 4] = ["_fentry", "_fexit", "_kprobe", "_kretprobe"];
        for f in ["conn_request", "syn_recv", "check_req", "accept"] {
            let ran = runs.iter().any(|(n, &r)| {
                r > 0
                    && n.strip_prefix(&format!("tcpq_{f}"))
                        .is_some_and(|rest| KINDS.iter().any(|k| rest.ends_with(k)))
            });
            assert!(ran, "no kernel-function hook on {f} ran: {runs:?}");
        }
    }
    let mut bad = Vec::new();
    for (name, &n) in &runs {
        let per = n as f64 / ok as f64;
        eprintln!("  {name:<30} {n:>8} runs  {per:>7.3} per request");
        if n == 0 {
            continue; // loaded, not attached on this kernel
        }
        match expected_runs(name) {
            Some((lo, hi)) if per >= lo && per <= hi => {}
            Some((lo, hi)) => bad.push(format!("{name}: {per:.3} per request, expected {lo}–{hi}")),
            None => bad.push(format!("{name}: ran {n} times, no expectation for it")),
        }
    }
    assert!(bad.is_empty(), "program runs per request: {bad:#?}");
}

/// Source ports hping3 sends from start here and count up.
const HPING_BASE_PORT: &str = "20000";

#[test]
fn a_syn_flood_is_counted_in_the_kernel_and_sent_as_a_few_records() {
    if !root_or_skip() {
        return;
    }
    let ns = Netns::new("flood");
    let port = 9390;
    // listen(0) and one connection that nobody accepts: the accept queue is
    // full (1 > 0), so every further SYN is dropped in tcp_conn_request.
    let (mut server, _) = ns.scenario(&format!("listen --port {port} --backlog 0 --hold 60"));
    let (mut holder, _) = ns.scenario(&format!(
        "connect --port {port} --clients 1 --syncnt 2 --hold 60"
    ));
    std::thread::sleep(Duration::from_millis(300));
    // The syscall hooks stay off: attaching them mid-flood patches the
    // syscall exit path while hping3 runs on the other vCPU, which QEMU's
    // TCG once turned into an int3 oops (6.12 guest); this test is about
    // SYN drops.
    let agent = Agent::trace(&[
        "--netns",
        &format!("/run/netns/{}", ns.name),
        "--syscall-hooks",
        "never",
    ]);
    let before = ns.counters();
    let flood = ns
        .cmd("hping3")
        .args(["-q", "-S", "-p", &port.to_string(), "-s", HPING_BASE_PORT])
        .args(["-c", "6000", "-i", "u100", "127.0.0.1"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .expect("run hping3 (apt-get install hping3; cargo xtask setup does)");
    assert!(
        flood.success() || flood.code() == Some(1),
        "hping3: {flood}"
    );
    // Let the last SYNs land and one more report pass.
    std::thread::sleep(Duration::from_millis(1500));
    let after = ns.counters();
    let (lines, stderr) = agent.stop_with_stderr(libc::SIGINT);
    let _ = server.kill();
    let _ = holder.kill();
    let _ = (server.wait(), holder.wait());

    let overflows = delta(&before, &after, "TcpExt.ListenOverflows");
    let drops = delta(&before, &after, "TcpExt.ListenDrops");
    assert!(overflows >= 5000, "the flood dropped only {overflows} SYNs");
    let lines: Vec<_> = lines.into_iter().map(|(_, l)| l).collect();
    let counted = sum(&lines, "listen_overflow", Some("syn"), port, ns.inode());
    assert_eq!(counted, overflows, "Σ listen_overflow vs ListenOverflows");
    assert_eq!(drops, overflows, "only overflows were dropped");
    let (syn_source, _) = expected_sources();
    for l in lines.iter().filter(|l| l["event"] == "listen_overflow") {
        let src = l["source"].as_str().unwrap_or("");
        assert!(
            source_matches(src, &syn_source),
            "source {src}, expected {syn_source}: {l}"
        );
    }
    let sent = records_sent(&stderr);
    eprintln!("flood: {overflows} SYN drops, {sent} ring-buffer records");
    assert!(
        sent <= 50,
        "{sent} ring-buffer records for a flood of {overflows} SYN drops (≤ 50)"
    );
}

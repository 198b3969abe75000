//! Least privilege, for real: the agent as a non-root user (`nobody`) with
//! exactly the capabilities README's "Privileges" documents, through an
//! accept-queue overflow in a private namespace whose listener belongs to
//! root; the counts must match the namespace's ListenOverflows and the
//! owner must be named. One capability less is a one-line refusal naming
//! it; a capability let go with `--allow-missing-caps` is a loss reported
//! on stderr and in the health metrics, never a silent one.
//!
//! Host only (`HOST_ONLY` in xtask/src/vm.rs): the guests have no user
//! database for setpriv's `--reuid` checks to matter, and run as root.

use std::{process::Command, time::Duration};

use tcpq_tests::{agent_bin, delta, free_port, http_get, root_or_skip, sum, Agent, Netns};

/// README, "Privileges": trace/run/top. CAP_SYS_ADMIN also grants what
/// CAP_BPF and CAP_PERFMON grant (the kernel's bpf_capable() and
/// perfmon_capable()), so they add nothing here.
const TRACE_CAPS: &[&str] = &["sys_admin", "sys_ptrace", "dac_read_search"];
/// Without CAP_SYS_ADMIN, eBPF needs its own two.
const WITHOUT_SYS_ADMIN: &[&str] = &["bpf", "perfmon", "sys_ptrace", "dac_read_search"];
/// `status`: no eBPF.
const STATUS_CAPS: &[&str] = &["sys_admin", "sys_ptrace", "dac_read_search"];

/// `setpriv` as nobody with exactly `caps` (inheritable, ambient and
/// bounding set: nothing else can be gained).
fn as_nobody(caps: &[&str]) -> Vec<String> {
    let list: String = caps.iter().map(|c| format!(",+{c}")).collect();
    vec![
        "setpriv".into(),
        "--reuid=65534".into(),
        "--regid=65534".into(),
        "--clear-groups".into(),
        format!("--inh-caps=-all{list}"),
        format!("--ambient-caps=-all{list}"),
        format!("--bounding-set=-all{list}"),
    ]
}

fn cap_bit(name: &str) -> u32 {
    match name {
        "dac_read_search" => 2,
        "sys_ptrace" => 19,
        "sys_admin" => 21,
        "perfmon" => 38,
        "bpf" => 39,
        n => panic!("unknown cap {n}"),
    }
}

/// The agent process's uid and effective capabilities.
fn uid_and_caps(pid: u32) -> (u32, u64) {
    let st = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let field = |k: &str| {
        st.lines()
            .find_map(|l| l.strip_prefix(k))
            .unwrap()
            .split_whitespace()
            .next()
            .unwrap()
            .to_string()
    };
    (
        field("Uid:").parse().unwrap(),
        u64::from_str_radix(&field("CapEff:"), 16).unwrap(),
    )
}

fn assert_exactly(pid: u32, caps: &[&str]) {
    let want: u64 = caps.iter().map(|c| 1u64 << cap_bit(c)).sum();
    let (uid, eff) = uid_and_caps(pid);
    assert_eq!(uid, 65534, "the agent must run as nobody");
    assert_eq!(eff, want, "CapEff {eff:x}, documented set {want:x}");
}

/// SYN-time overflow of a root-owned listener in a private namespace, as
/// listen_overflow.rs does it. Returns (kernel's count, scenario pid, lines).
fn overflow(
    ns: &Netns,
    agent: Agent,
    port: u16,
) -> (u64, u32, Vec<serde_json::Value>, Vec<String>) {
    let before = ns.counters();
    let (mut child, pid) = ns.scenario(&format!(
        "syn-overflow --port {port} --clients 6 --syncnt 1 --hold 3.5"
    ));
    child.wait().unwrap();
    let after = ns.counters();
    let (lines, err) = agent.stop_with_stderr(libc::SIGINT);
    let kernel = delta(&before, &after, "TcpExt.ListenOverflows");
    assert!(kernel >= 5, "scenario did not overflow: +{kernel}");
    (
        kernel,
        pid,
        lines.into_iter().map(|(_, v)| v).collect(),
        err,
    )
}

#[test]
fn nobody_with_the_documented_capabilities_counts_and_names_owners() {
    if !root_or_skip() {
        return;
    }
    let port = 9131;
    let ns = Netns::new("priv9131");
    let agent = Agent::trace_via(&as_nobody(TRACE_CAPS), &["--port", &port.to_string()]);
    assert_exactly(agent.pid(), TRACE_CAPS);
    let early = agent.early.clone();
    let (kernel, pid, lines, err) = overflow(&ns, agent, port);
    assert_eq!(
        sum(&lines, "listen_overflow", None, port, ns.inode()),
        kernel,
        "tcpq as nobody vs the kernel's ListenOverflows: {lines:#?}"
    );
    let mine: Vec<_> = lines
        .iter()
        .filter(|l| l["event"] == "listen_overflow" && l["server.port"] == port)
        .collect();
    assert!(!mine.is_empty());
    for l in mine {
        assert_eq!(l["process.pid"], pid, "{l}");
        assert_eq!(l["process.executable.name"], "tcpq-scenario", "{l}");
        assert_eq!(l["process.owner"], "root", "{l}");
    }
    // Losses for lack of a capability: none. (A process even root may not
    // inspect, such as a sandbox's init, is reported with "missing" absent.)
    for l in early.iter().chain(&err) {
        assert!(
            !l.contains("(missing CAP_"),
            "a loss with the documented set: {l}"
        );
    }
}

/// Runs the agent as nobody with `caps`; (exit code, stderr).
fn refused(caps: &[&str], args: &[&str]) -> (i32, String) {
    let w = as_nobody(caps);
    let out = Command::new(&w[0])
        .args(&w[1..])
        .arg(agent_bin())
        .args(args)
        .env("RUST_BACKTRACE", "1")
        .output()
        .unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn one_missing_capability_is_a_one_line_error_naming_it() {
    if !root_or_skip() {
        return;
    }
    for (mode, set, args) in [
        ("trace", TRACE_CAPS, &["trace", "--duration", "1"][..]),
        ("status", STATUS_CAPS, &["status"][..]),
        (
            "run",
            TRACE_CAPS,
            &["run", "--metrics-address", "off", "--duration", "1"][..],
        ),
    ] {
        for drop in set {
            let caps: Vec<&str> = set.iter().copied().filter(|c| c != drop).collect();
            let (rc, err) = refused(&caps, args);
            let name = format!("CAP_{}", drop.to_ascii_uppercase());
            assert_eq!(rc, 1, "{mode} without {name}: exit {rc}: {err}");
            assert_eq!(err.lines().count(), 1, "{mode} without {name}: {err}");
            assert!(
                err.starts_with(&format!("tcpq-agent: {mode} needs {name} (missing")),
                "{mode} without {name}: {err}"
            );
            assert!(!err.contains("panicked"), "{err}");
        }
    }
    // Without CAP_SYS_ADMIN, eBPF needs CAP_BPF and CAP_PERFMON themselves.
    let (rc, err) = refused(
        &["perfmon", "sys_ptrace", "dac_read_search"],
        &[
            "--allow-missing-caps",
            "CAP_SYS_ADMIN",
            "trace",
            "--duration",
            "1",
        ],
    );
    assert_eq!((rc, err.lines().count()), (1, 1), "{err}");
    assert!(err.starts_with("tcpq-agent: trace needs CAP_BPF "), "{err}");
}

/// `tcpq_NAME{...}` value lines of /metrics, once one is non-zero (the
/// health metrics are set at each report interval), within 10 s.
fn metric(addr: &str, name: &str) -> (Vec<String>, String) {
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        let (_, page) = http_get(addr, "/metrics").unwrap();
        let lines: Vec<String> = page
            .lines()
            .filter(|l| l.starts_with(&format!("{name}{{")))
            .map(str::to_string)
            .collect();
        // A new counter series reads 0 at its first scrape (so that rate()
        // sees its first increase): wait for a non-zero value.
        if lines.iter().any(|l| !l.ends_with(" 0")) || std::time::Instant::now() > deadline {
            return (lines, page);
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}

#[test]
fn capabilities_let_go_are_losses_reported_not_silent() {
    if !root_or_skip() {
        return;
    }
    // Without CAP_SYS_ADMIN the agent cannot enter the private namespace:
    // said once on stderr, and the gauge names reason and capability.
    let port = 9132;
    let ns = Netns::new("priv9132");
    let addr = format!("127.0.0.1:{}", free_port());
    let agent = Agent::run_via(
        &as_nobody(WITHOUT_SYS_ADMIN),
        &[
            "--allow-missing-caps",
            "CAP_SYS_ADMIN",
            "--port",
            &port.to_string(),
            "--metrics-address",
            &addr,
            "--snapshot-interval",
            "0",
        ],
    );
    assert_exactly(agent.pid(), WITHOUT_SYS_ADMIN);
    // Said at the first round (before "tracing"), once per reason.
    let said: Vec<_> = agent
        .early
        .iter()
        .filter(|l| l.contains("cannot read a network namespace") && l.contains("setns"))
        .collect();
    assert_eq!(said.len(), 1, "{:?}", agent.early);
    assert!(said[0].contains("missing CAP_SYS_ADMIN"), "{}", said[0]);
    let (g, page) = metric(&addr, "tcpq_netns_unreadable");
    assert!(
        g.iter().any(|l| l.contains("reason=\"setns_denied\"")
            && l.contains("capability=\"CAP_SYS_ADMIN\"")
            && !l.ends_with(" 0")),
        "{page}"
    );
    drop(agent);

    // Without CAP_SYS_PTRACE, root's /proc/PID/fd links cannot be read.
    let port = 9133;
    let ns2 = Netns::new("priv9133");
    let addr = format!("127.0.0.1:{}", free_port());
    let caps = ["sys_admin", "dac_read_search"];
    let agent = Agent::run_via(
        &as_nobody(&caps),
        &[
            "--allow-missing-caps",
            "CAP_SYS_PTRACE",
            "--port",
            &port.to_string(),
            "--metrics-address",
            &addr,
            "--snapshot-interval",
            "0",
        ],
    );
    assert!(
        agent
            .early
            .iter()
            .any(|l| l.contains("cannot be identified") && l.contains("missing CAP_SYS_PTRACE")),
        "no word about the namespaces it cannot identify: {:?}",
        agent.early
    );
    let (mut child, _pid) = ns2.scenario(&format!(
        "syn-overflow --port {port} --clients 6 --syncnt 1 --hold 3.5"
    ));
    let said = match agent
        .early
        .iter()
        .find(|l| l.contains("socket owners cannot be looked up"))
    {
        Some(l) => l.clone(),
        None => agent
            .wait_stderr("socket owners cannot be looked up", Duration::from_secs(10))
            .expect("no word about the owners it cannot read"),
    };
    assert!(said.contains("missing CAP_SYS_PTRACE"), "{said}");
    child.wait().unwrap();
    let (c, page) = metric(&addr, "tcpq_owner_lookup_failures_total");
    assert!(
        c.iter().any(|l| l.contains("reason=\"fd_denied\"")
            && l.contains("capability=\"CAP_SYS_PTRACE\"")
            && !l.ends_with(" 0")),
        "{page}"
    );
    drop(ns);
}

/// The DaemonSet's way (packaging/kubernetes): no ambient capabilities,
/// the binary's file capabilities, the bounding set as the cap.
#[test]
fn file_capabilities_as_in_the_daemonset() {
    if !root_or_skip() {
        return;
    }
    let dir = std::env::temp_dir().join(format!("tcpq-fcaps-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let bin = dir.join("tcpq-agent");
    std::fs::copy(agent_bin(), &bin).unwrap();
    let set = Command::new("setcap")
        .arg("cap_sys_admin,cap_sys_ptrace,cap_dac_read_search+ep")
        .arg(&bin)
        .status()
        .expect("setcap (libcap2-bin)");
    assert!(set.success());
    let out = Command::new("setpriv")
        .args([
            "--reuid=65534",
            "--regid=65534",
            "--clear-groups",
            "--bounding-set=-all,+sys_admin,+sys_ptrace,+dac_read_search",
        ])
        .arg(&bin)
        .args(["trace", "--duration", "1"])
        .output()
        .unwrap();
    let _ = std::fs::remove_dir_all(&dir);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{err}");
    assert!(err.contains("tcpq: tracing"), "{err}");
    assert!(!err.contains("(missing CAP_"), "{err}");
}

//! packaging/prometheus/: the alerting rules pass `promtool test rules`
//! (Debian's prometheus package), each failure mode's runbook is tcpq's
//! own verdict wording, and every metric name the rules, their tests and
//! the Grafana dashboard use is one `tcpq-agent run` really serves (with
//! the local-port gauges equal to the test namespace's settings). Host
//! only (the guest carries no promtool).

use std::{
    collections::HashSet,
    path::{Path, PathBuf},
    process::Command,
    time::{Duration, Instant},
};

use tcpq_tests::*;

fn dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../packaging/prometheus")
}

fn read(name: &str) -> String {
    std::fs::read_to_string(dir().join(name)).unwrap_or_else(|e| panic!("{name}: {e}"))
}

fn in_vm() -> bool {
    if std::env::var("TCPQ_IN_VM").is_ok_and(|v| v == "1") {
        eprintln!(
            "skipped in the VM: host only (the guest carries no promtool and no source tree)"
        );
        return true;
    }
    false
}

#[test]
fn alert_rules_pass_promtool_check_and_test() {
    if in_vm() {
        return;
    }
    let check = run(Command::new("promtool")
        .args(["check", "rules", "tcpq-alerts.yml"])
        .current_dir(dir()));
    assert!(check.contains("SUCCESS: 10 rules found"), "{check}");
    let out = Command::new("promtool")
        .args(["test", "rules", "tcpq-alerts.test.yml"])
        .current_dir(dir())
        .output()
        .expect("promtool (Debian package `prometheus`)");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success() && text.contains("SUCCESS"), "{text}");
    // Every rule has a firing case in the tests, and a quiet one where it
    // can be quiet.
    let rules = read("tcpq-alerts.yml");
    // Indentation aside.
    let tests: String = read("tcpq-alerts.test.yml")
        .lines()
        .map(|l| l.trim().to_string() + "\n")
        .collect();
    for alert in alerts(&rules) {
        assert!(
            tests.contains(&format!("alertname: {alert}\nexp_alerts:\n- exp_labels")),
            "{alert} never fires in tcpq-alerts.test.yml"
        );
        assert!(
            tests.contains(&format!("alertname: {alert}\nexp_alerts: []")),
            "{alert} has no quiet case in tcpq-alerts.test.yml"
        );
    }
}

fn alerts(rules: &str) -> Vec<String> {
    rules
        .lines()
        .filter_map(|l| l.trim().strip_prefix("- alert: "))
        .map(String::from)
        .collect()
}

/// (alert, runbook) pairs, in file order.
fn runbooks(rules: &str) -> Vec<(String, String)> {
    let mut out = Vec::new();
    let mut alert = String::new();
    for l in rules.lines().map(str::trim) {
        if let Some(a) = l.strip_prefix("- alert: ") {
            alert = a.to_string();
        }
        if let Some(r) = l.strip_prefix("runbook: ") {
            out.push((alert.clone(), r.trim_matches('"').to_string()));
        }
    }
    out
}

/// Whether `text` is an instance of `template`, a Rust format string
/// whose `{name}` placeholders stand for any text.
fn instance_of(text: &str, template: &str) -> bool {
    let mut pieces = Vec::new();
    let mut rest = template;
    while let Some(open) = rest.find('{') {
        let Some(close) = rest[open..].find('}') else {
            break;
        };
        pieces.push(&rest[..open]);
        rest = &rest[open + close + 1..];
    }
    pieces.push(rest);
    let (first, last) = (pieces[0], pieces[pieces.len() - 1]);
    if pieces.len() == 1 {
        return text == first;
    }
    if !text.starts_with(first) || !text.ends_with(last) || text.len() < first.len() + last.len() {
        return false;
    }
    let mut at = first.len();
    let end = text.len() - last.len();
    for p in &pieces[1..pieces.len() - 1] {
        match text[at..end].find(p) {
            Some(i) => at += i + p.len(),
            None => return false,
        }
    }
    true
}

#[test]
fn failure_mode_runbooks_are_the_verdicts_remedies() {
    // The guest has the test executables, not the source tree.
    if in_vm() {
        return;
    }
    let verdict = std::fs::read_to_string(
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../tcpq-agent/src/verdict/remedy.rs"),
    )
    .unwrap();
    // The string literals of the remedy sentences (one per line is enough
    // there).
    let literals: Vec<&str> = verdict
        .lines()
        .filter_map(|l| {
            let a = l.find('"')?;
            let b = l.rfind('"')?;
            (b > a).then(|| &l[a + 1..b])
        })
        .collect();
    let flood = literals
        .iter()
        .find(|l| l.starts_with("check for a SYN flood"))
        .copied()
        .expect("the SYN-flood phrase");
    let health = [
        "TcpqEventsLost",
        "TcpqMetricSeriesOverflow",
        "TcpqDown",
        "TcpqAbsent",
    ];
    let rules = read("tcpq-alerts.yml");
    let all = runbooks(&rules);
    assert_eq!(
        all.len(),
        alerts(&rules).len(),
        "an alert without a runbook"
    );
    let mut checked = 0;
    for (alert, runbook) in all {
        if health.contains(&alert.as_str()) {
            continue;
        }
        let ok = literals.iter().any(|t| {
            instance_of(&runbook, t) || instance_of(&runbook, &t.replace("{flood}", flood))
        });
        assert!(
            ok,
            "{alert}: runbook is not a verdict remedy of verdict/remedy.rs: {runbook}"
        );
        checked += 1;
    }
    assert_eq!(checked, 6, "failure modes with a runbook");
    assert!(!instance_of("Raise it.", "Lower {x}."));
    assert!(instance_of("Raise 5 a 6.", "Raise {x} a {y}."));
}

/// Every `tcpq_…` name in `text`.
fn metric_names(text: &str) -> HashSet<String> {
    let mut out = HashSet::new();
    let mut rest = text;
    while let Some(i) = rest.find("tcpq_") {
        let name: String = rest[i..]
            .chars()
            .take_while(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || *c == '_')
            .collect();
        rest = &rest[i + name.len()..];
        out.insert(name);
    }
    out
}

#[test]
fn dashboard_and_rules_use_only_metrics_run_serves() {
    if !root_or_skip() || in_vm() {
        return;
    }
    let dashboard = read("tcpq-dashboard.json");
    let v: serde_json::Value = serde_json::from_str(&dashboard).expect("dashboard JSON");
    let panels = v["panels"].as_array().expect("panels");
    let titles: Vec<&str> = panels.iter().filter_map(|p| p["title"].as_str()).collect();
    for want in [
        "Listen overflows",
        "SYN-queue drops",
        "accept() errors",
        "CLOSE_WAIT",
        "Local ports",
        "Agent health",
    ] {
        assert!(
            titles.iter().any(|t| t.starts_with(want)),
            "no {want} panel: {titles:?}"
        );
    }
    let exprs: String = panels
        .iter()
        .flat_map(|p| p["targets"].as_array().cloned().unwrap_or_default())
        .filter_map(|t| t["expr"].as_str().map(String::from))
        .collect::<Vec<_>>()
        .join("\n");

    let ns = Netns::new("promdash");
    ns.sysctl("net.ipv4.ip_local_port_range", "40000 40999");
    let (mut l, _) = ns.scenario("listen --port 9611 --backlog 0 --hold 30");
    let metrics = format!("127.0.0.1:{}", free_port());
    let agent = Agent::run(&["--metrics-address", &metrics, "--output-file", "/dev/null"]);
    let (mut c, _) = ns.scenario("connect --port 9611 --clients 3 --syncnt 1 --hold 1");
    c.wait().unwrap();
    let netns = ns.inode().to_string();
    let tw_now = || {
        let s = run(ns.cmd("cat").arg("/proc/net/sockstat"));
        s.lines()
            .find(|l| l.starts_with("TCP:"))
            .and_then(|l| {
                let f: Vec<&str> = l.split_whitespace().collect();
                f.iter()
                    .position(|w| *w == "tw")
                    .map(|i| f[i + 1].to_string())
            })
            .unwrap()
    };
    let deadline = Instant::now() + Duration::from_secs(20);
    let body = loop {
        let (_, body) = http_get(&metrics, "/metrics").expect("scrape");
        let sample = |name: &str| {
            body.lines()
                .find(|l| l.starts_with(name) && l.contains(&format!("netns=\"{netns}\"")))
                .and_then(|l| l.rsplit(' ').next())
                .map(String::from)
        };
        let tw = tw_now();
        if sample("tcpq_local_port_range_size").as_deref() == Some("1000")
            && sample("tcpq_time_wait_sockets{").as_deref() == Some(tw.as_str())
            && sample("tcpq_listen_overflows_total").is_some()
        {
            break body;
        }
        assert!(
            Instant::now() < deadline,
            "local-port gauges of netns {netns} never matched (range 1000, TIME_WAIT {tw}):\n{body}"
        );
        std::thread::sleep(Duration::from_millis(500));
    };
    let _ = agent.stop();
    let _ = l.kill();
    let _ = l.wait();

    let mut served = HashSet::new();
    for l in body.lines() {
        let Some(rest) = l.strip_prefix("# TYPE ") else {
            continue;
        };
        let mut f = rest.split_whitespace();
        let (Some(name), Some(ty)) = (f.next(), f.next()) else {
            continue;
        };
        served.insert(name.to_string());
        if ty == "histogram" {
            for s in ["_bucket", "_sum", "_count"] {
                served.insert(format!("{name}{s}"));
            }
        }
    }
    let used = [
        ("the dashboard", metric_names(&exprs)),
        ("tcpq-alerts.yml", metric_names(&read("tcpq-alerts.yml"))),
        (
            "tcpq-alerts.test.yml",
            metric_names(&read("tcpq-alerts.test.yml")),
        ),
    ];
    for (what, names) in &used {
        assert!(names.len() >= 5, "{what}: {names:?}");
        let mut missing: Vec<&String> = names.iter().filter(|n| !served.contains(*n)).collect();
        missing.sort();
        assert!(
            missing.is_empty(),
            "{what} uses metrics /metrics does not serve: {missing:?}"
        );
    }
}

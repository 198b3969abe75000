//! Recording and replay: `trace --record FILE` while real failures happen
//! in a private network namespace, then `tcpq-agent replay FILE` as
//! `nobody` (no root, no BPF, no capability): the same JSON lines as the
//! live run, and they still add up to the namespace's own counters.
//! Needs root for the live half.

use std::{collections::BTreeMap, os::unix::fs::PermissionsExt, path::Path, process::Command};

use serde_json::Value;
use tcpq_tests::{
    agent_bin, delta, field, finish, root_or_skip, sum, wait_until, Agent, Dir, Netns,
};

/// `replay FILE --output FORMAT` as uid/gid 65534: (exit code, stdout, stderr).
fn replay_as_nobody(file: &Path, format: &str) -> (i32, String, String) {
    let out = Command::new("setpriv")
        .args(["--reuid=65534", "--regid=65534", "--clear-groups"])
        .arg(agent_bin())
        .arg("replay")
        .arg(file)
        .args(["--output", format])
        .output()
        .expect("run tcpq-agent replay");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// `TCPQ_KEEP_RECORDING=1`: the recording and the live lines go to stdout
/// past libtest's capture (`TCPQ-KEEP rec|live LINE`), so a run in the VM
/// can give the golden recordings of `tests/recordings/` (see its README).
fn keep(file: &Path, live: &[Value]) {
    use std::io::Write;
    if std::env::var_os("TCPQ_KEEP_RECORDING").is_none() {
        return;
    }
    let mut out = std::io::stdout().lock();
    for l in std::fs::read_to_string(file).unwrap().lines() {
        let _ = writeln!(out, "TCPQ-KEEP rec {l}");
    }
    for l in live {
        let _ = writeln!(out, "TCPQ-KEEP live {l}");
    }
}

/// A line with its keys in order: equal lines compare equal.
fn canonical(v: &Value) -> String {
    let m: BTreeMap<_, _> = v.as_object().expect("a JSON object").iter().collect();
    serde_json::to_string(&m).unwrap()
}

#[test]
fn a_recording_replays_without_root_to_the_lines_trace_printed() {
    if !root_or_skip() {
        return;
    }
    let ns = Netns::new("replay9520");
    let dir = Dir::new("replay");
    std::fs::set_permissions(&dir.0, std::fs::Permissions::from_mode(0o755)).unwrap();
    let file = dir.path("rec.jsonl");
    let netns = ns.inode().to_string();
    let before = ns.counters();
    let agent = Agent::trace(&[
        "--netns",
        &netns,
        "--syscall-hooks",
        "always",
        "--record",
        file.to_str().unwrap(),
    ]);
    // Three failure modes at once: SYN-time overflow (sock_diag or
    // tcp_conn_request), accept() failing with EMFILE (the kernel's map
    // and /proc answers), connections reset by the server.
    let (overflow, _) = ns.scenario("syn-overflow --port 9520 --clients 4 --syncnt 1 --hold 3");
    let (emfile, _) = ns.scenario("accept-emfile --port 9521 --clients 3 --attempts 7 --hold 1");
    let (resets, _) = ns.scenario("reset-peer --port 9522 --conns 3");
    let emfile_out = finish(emfile);
    finish(overflow);
    let resets_out = finish(resets);
    let after = ns.counters();
    let kernel = delta(&before, &after, "TcpExt.ListenOverflows");
    let settled = wait_until(std::time::Duration::from_secs(5), || {
        (std::fs::metadata(&file).map_or(0, |m| m.len()) > 0).then_some(())
    });
    assert!(
        settled.is_some(),
        "no recording written to {}",
        file.display()
    );
    let live = agent.stop();
    std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o644)).unwrap();
    keep(&file, &live);

    let (rc, out, err) = replay_as_nobody(&file, "json");
    assert_eq!(rc, 0, "replay as nobody: {err}");
    assert!(err.contains("tcpq: replayed"), "{err}");
    let replayed: Vec<Value> = out
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l}")))
        .collect();
    let mut a: Vec<String> = live.iter().map(canonical).collect();
    let mut b: Vec<String> = replayed.iter().map(canonical).collect();
    a.sort();
    b.sort();
    assert_eq!(a, b, "replayed lines differ from the live run's");

    // Not two empty outputs: the replay still adds up to the kernel.
    let ino = ns.inode();
    assert!(kernel >= 3, "scenario did not overflow: +{kernel}");
    // Both listeners overflow (accept-emfile's queue is full too).
    let overflows: u64 = replayed
        .iter()
        .filter(|l| l["event"] == "listen_overflow" && l["network.netns"] == ino)
        .map(|l| l["count"].as_u64().unwrap())
        .sum();
    assert_eq!(
        overflows, kernel,
        "listen_overflow vs ListenOverflows: {out}"
    );
    assert!(
        sum(&replayed, "listen_overflow", None, 9520, ino) >= 3,
        "{out}"
    );
    assert_eq!(
        sum(&replayed, "accept_error", None, 9521, ino),
        field(&emfile_out, "EMFILE"),
        "accept_error vs the app's count: {out}"
    );
    let resets: u64 = replayed
        .iter()
        .filter(|l| {
            l["event"] == "reset_received"
                && l["network.netns"] == ino
                && l["network.peer.port"] == 9522
        })
        .map(|l| l["count"].as_u64().unwrap())
        .sum();
    assert_eq!(
        resets,
        field(&resets_out.replace("reset ", "reset="), "reset"),
        "reset_received from 9522 vs the server's resets: {out}"
    );

    // The same recording as text: one line per report (and its verdict).
    let (rc, text, err) = replay_as_nobody(&file, "text");
    assert_eq!(rc, 0, "{err}");
    let reports = text.lines().filter(|l| !l.starts_with(' ')).count();
    assert_eq!(reports, replayed.len(), "{text}");
}

#[test]
fn a_recording_that_is_not_one_is_a_one_line_error() {
    let dir = Dir::new("replay-bad");
    let cases: [(&str, &str, &str); 4] = [
        ("empty", "", "empty, not a tcpq recording"),
        (
            "garbage",
            "{\"x\":1}\n",
            "line 1 is not a tcpq recording's start",
        ),
        (
            "future",
            "{\"recording\":99,\"agent\":\"9\",\"kernel\":\"9\",\"settings\":{}}\n",
            "recording format 99",
        ),
        ("missing", "", "No such file"),
    ];
    for (name, text, needle) in cases {
        let path = dir.path(name);
        if name != "missing" {
            std::fs::write(&path, text).unwrap();
        }
        let out = Command::new(agent_bin())
            .arg("replay")
            .arg(&path)
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{name}: {err}");
        assert_eq!(err.lines().count(), 1, "{name}: one line: {err}");
        assert!(err.contains(needle), "{name}: {err}");
    }
}

//! Bad input: one line naming the problem, a non-zero exit, no panic and no
//! backtrace — for flags, values, missing processes and missing privileges.

use std::process::Command;

use tcpq_tests::agent_bin;

/// Runs the agent; returns (exit code, stderr).
fn agent(args: &[&str], as_nobody: bool) -> (i32, String) {
    let mut c = if as_nobody {
        let mut c = Command::new("setpriv");
        c.args(["--reuid=65534", "--regid=65534", "--clear-groups"])
            .arg(agent_bin());
        c
    } else {
        Command::new(agent_bin())
    };
    let out = c
        .args(args)
        .env("RUST_BACKTRACE", "1")
        .output()
        .expect("run tcpq-agent");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

fn assert_one_line_error(args: &[&str], as_nobody: bool, code: i32, needle: &str) {
    let (rc, err) = agent(args, as_nobody);
    assert_eq!(rc, code, "{args:?}: exit {rc}, stderr: {err}");
    assert_eq!(err.lines().count(), 1, "{args:?}: not one line: {err}");
    assert!(err.starts_with("tcpq-agent: "), "{err}");
    assert!(
        err.contains(needle),
        "{args:?}: {err:?} does not mention {needle:?}"
    );
    for bad in ["panicked", "backtrace", "RUST_BACKTRACE"] {
        assert!(!err.contains(bad), "{err}");
    }
}

#[test]
fn unknown_flag() {
    assert_one_line_error(&["trace", "--frobnicate"], false, 2, "--frobnicate");
}

#[test]
fn port_out_of_range() {
    assert_one_line_error(&["trace", "--port", "70000"], false, 2, "70000");
}

#[test]
fn bad_output_format() {
    assert_one_line_error(&["trace", "--output", "xml"], false, 2, "xml");
}

#[test]
fn pid_that_does_not_exist() {
    // Above the kernel's pid_max limit (4194304): can never exist.
    assert_one_line_error(
        &["trace", "--pid", "4194305"],
        false,
        1,
        "--pid 4194305: no such process",
    );
}

#[test]
fn without_root() {
    assert_one_line_error(&["trace"], true, 1, "needs root");
}

#[test]
fn help_is_not_an_error() {
    let (rc, _) = agent(&["trace", "--help"], false);
    assert_eq!(rc, 0);
}

#[test]
fn bad_owner_filters() {
    if !tcpq_tests::root_or_skip() {
        return;
    }
    assert_one_line_error(
        &["trace", "--container", "xyz"],
        false,
        1,
        "--container xyz",
    );
    assert_one_line_error(
        &["trace", "--cgroup", "system.slice"],
        false,
        1,
        "--cgroup system.slice",
    );
    assert_one_line_error(
        &["trace", "--netns", "/nonexistent/ns"],
        false,
        1,
        "--netns /nonexistent/ns",
    );
}

#[test]
fn btf_file_that_is_missing_or_not_btf() {
    assert_one_line_error(
        &["doctor", "--btf", "/nonexistent/5.10.0-32-cloud-amd64.btf"],
        false,
        1,
        "--btf /nonexistent/5.10.0-32-cloud-amd64.btf",
    );
    assert_one_line_error(
        &["trace", "--btf", "/proc/self/status"],
        false,
        1,
        "not a BTF file",
    );
}

/// The agent in a private mount namespace where /sys/kernel/btf is an
/// empty tmpfs: a kernel built without CONFIG_DEBUG_INFO_BTF, as the agent
/// sees it. Nothing outside that namespace changes.
fn agent_without_kernel_btf(args: &str) -> (i32, String, String) {
    let script = format!(
        "mount -t tmpfs tmpfs /sys/kernel/btf && test ! -e /sys/kernel/btf/vmlinux && exec {} {args}",
        agent_bin().display()
    );
    let out = Command::new("unshare")
        .args(["-m", "--propagation", "private", "sh", "-c", &script])
        .env("RUST_BACKTRACE", "1")
        .output()
        .expect("run unshare");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn no_kernel_btf_is_one_line_or_a_btf_file() {
    if !tcpq_tests::root_or_skip() {
        return;
    }
    let (rc, _, err) = agent_without_kernel_btf("trace --duration 1");
    assert_eq!(rc, 1, "stderr: {err}");
    assert_eq!(err.lines().count(), 1, "not one line: {err}");
    assert!(
        err.starts_with("tcpq-agent: this kernel has no BTF") && err.contains("--btf PATH"),
        "{err}"
    );
    // The same kernel's BTF as a file (what btfhub ships): the plan is the
    // one the kernel's own BTF gives.
    let copy = std::env::temp_dir().join(format!("tcpq-vmlinux-{}.btf", std::process::id()));
    std::fs::copy("/sys/kernel/btf/vmlinux", &copy).expect("copy the kernel's BTF");
    let (rc, out, err) = agent_without_kernel_btf(&format!("doctor --btf {}", copy.display()));
    let _ = std::fs::remove_file(&copy);
    assert_eq!(rc, 0, "stderr: {err}");
    let with_btf = Command::new(agent_bin())
        .arg("doctor")
        .output()
        .expect("doctor");
    let plan = |s: &str| -> Vec<String> {
        s.lines()
            .take_while(|l| !l.starts_with("attached"))
            .map(str::to_string)
            .collect()
    };
    assert_eq!(
        plan(&out),
        plan(&String::from_utf8_lossy(&with_btf.stdout)),
        "doctor --btf FILE vs the kernel's own BTF"
    );
    assert!(out.contains("tcp_conn_request"), "{out}");
}

//! Bad input: one line naming the problem, a non-zero exit, no panic and no
//! backtrace — for flags, values, missing processes and missing privileges.

use std::{
    path::PathBuf,
    process::{Command, Stdio},
    time::{Duration, Instant},
};

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
    // The kernel's largest pid_max is 4194304 and pids stay below it: this
    // one can never exist.
    assert_one_line_error(
        &["trace", "--pid", "4194304"],
        false,
        1,
        "--pid 4194304: no such process",
    );
}

#[test]
fn without_capabilities() {
    // nobody, no capabilities: the first one missing is named.
    assert_one_line_error(&["trace"], true, 1, "trace needs CAP_SYS_ADMIN");
    assert_one_line_error(&["status"], true, 1, "status needs CAP_SYS_ADMIN");
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

/// A scratch directory for config files, removed on drop.
struct Scratch(PathBuf);

impl Scratch {
    fn new() -> Scratch {
        let d = std::env::temp_dir().join(format!("tcpq-cli-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        std::fs::create_dir_all(&d).unwrap();
        Scratch(d)
    }

    fn file(&self, name: &str, text: &str) -> String {
        let p = self.0.join(name);
        std::fs::write(&p, text).unwrap();
        p.display().to_string()
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Runs the agent with a deadline: (exit code, stderr), or None if it hung.
fn agent_within(args: &[String], within: Duration) -> Option<(i32, String)> {
    let mut child = Command::new(agent_bin())
        .args(args)
        .env("RUST_BACKTRACE", "1")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run tcpq-agent");
    let deadline = Instant::now() + within;
    loop {
        match child.try_wait().unwrap() {
            Some(status) => {
                let mut err = String::new();
                use std::io::Read;
                child
                    .stderr
                    .take()
                    .unwrap()
                    .read_to_string(&mut err)
                    .unwrap();
                return Some((status.code().unwrap_or(-1), err));
            }
            None if Instant::now() > deadline => {
                let _ = child.kill();
                let _ = child.wait();
                return None;
            }
            None => std::thread::sleep(Duration::from_millis(20)),
        }
    }
}

/// Every bad input: one line on stderr starting `tcpq-agent: ` that
/// contains the needle, the exit code (2: usage, 1: refused after
/// parsing), no panic or backtrace, and an answer within 20 s (a FIFO or
/// /dev/zero must not hang it). Failures are collected, then reported
/// together.
#[test]
fn bad_inputs_are_one_line_errors() {
    if !tcpq_tests::root_or_skip() {
        return;
    }
    let dir = Scratch::new();
    let fifo = dir.0.join("fifo.toml");
    let c = std::ffi::CString::new(fifo.to_str().unwrap()).unwrap();
    // SAFETY: valid NUL-terminated path.
    assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o600) }, 0, "mkfifo");
    let fifo = fifo.display().to_string();
    let big = dir.0.join("big.toml");
    std::fs::File::create(&big)
        .unwrap()
        .set_len(2 << 20)
        .unwrap();
    let big = big.display().to_string();
    let plain = dir.file("plain.txt", "not a namespace\n");
    let bad_value = dir.file("bad-value.toml", "[detect]\ninterval = -1\n");
    let bad_key = dir.file("bad-key.toml", "[metrics]\nadress = \"127.0.0.1:1\"\n");
    let bad_type = dir.file("bad-type.toml", "[detect]\nport = \"http\"\n");
    let bad_netns = dir.file(
        "bad-netns.toml",
        &format!("[detect]\nnetns = \"{plain}\"\n"),
    );
    let mnt_netns = dir.file(
        "mnt-netns.toml",
        "[detect]\nnetns = \"/proc/self/ns/mnt\"\n",
    );
    let num_netns = dir.file("num-netns.toml", "[detect]\nnetns = \"12345\"\n");
    let bad_port = dir.file("bad-port.toml", "[detect]\nport = 70000\n");
    let bad_attach = dir.file("bad-attach.toml", "[detect]\nattach = \"uprobe\"\n");
    let not_toml = dir.file("not-toml.toml", "[detect\nport = 1\n");
    let no_kprobes = !std::path::Path::new("/sys/kernel/tracing/kprobe_events").exists()
        && !std::path::Path::new("/sys/kernel/debug/tracing/kprobe_events").exists();
    let kprobe_file = dir.file("kprobe.toml", "[detect]\nattach = \"kprobe\"\n");

    let off = "--metrics-address=off";
    let mut cases: Vec<(Vec<&str>, i32, &str)> = vec![
        // Flags and values clap rejects.
        (vec!["trace", "--frobnicate"], 2, "--frobnicate"),
        (vec!["frobnicate"], 2, "frobnicate"),
        // Recording and replay.
        (
            vec!["trace", "--record", "/nonexistent-dir/rec.jsonl"],
            1,
            "--record /nonexistent-dir/rec.jsonl: no such directory /nonexistent-dir",
        ),
        (
            vec!["trace", "--record", "/tmp"],
            1,
            "--record /tmp: is a directory",
        ),
        (vec!["replay"], 2, "FILE"),
        (
            vec!["replay", "/nonexistent-rec"],
            1,
            "/nonexistent-rec: No such file",
        ),
        (
            vec!["replay", &plain],
            1,
            "line 1 is not a tcpq recording's start",
        ),
        (vec!["replay", "/proc"], 1, "/proc"),
        (
            vec!["trace", "--port", "70000"],
            2,
            "70000 is not in 1..=65535",
        ),
        (vec!["trace", "--port", "0"], 2, "0 is not a port"),
        (vec!["status", "--port", "0"], 2, "0 is not a port"),
        (
            vec!["trace", "--port", "-1"],
            2,
            "negative values are not allowed",
        ),
        (vec!["trace", "--port", "http"], 2, "not a port number"),
        (vec!["trace", "--output", "xml"], 2, "xml"),
        (vec!["trace", "--pid", "0"], 2, "0 is not a process id"),
        (
            vec!["trace", "--pid", "-1"],
            2,
            "negative values are not allowed",
        ),
        (vec!["trace", "--pid", "abc"], 2, "not a process id"),
        (
            vec!["trace", "--pid", "99999999"],
            2,
            "above the largest process id",
        ),
        (
            vec!["trace", "--duration", "-1"],
            2,
            "negative values are not allowed",
        ),
        (vec!["trace", "--duration", "0"], 2, "out of range"),
        (
            vec!["trace", "--duration", "soon"],
            2,
            "not a number of seconds",
        ),
        (vec!["trace", "--duration", "1e999"], 2, "out of range"),
        (
            vec!["trace", "--interval", "-1"],
            2,
            "negative values are not allowed",
        ),
        (
            vec!["trace", "--poll-interval", "-0.5"],
            2,
            "negative values are not allowed",
        ),
        (
            vec!["trace", "--accept-latency-ms", "-3"],
            2,
            "negative values are not allowed",
        ),
        (
            vec!["trace", "--ring-buffer-bytes", "5000"],
            2,
            "power of two",
        ),
        (vec!["trace", "--attach", "uprobe"], 2, "uprobe"),
        (vec!["doctor", "--attach", "magic"], 2, "magic"),
        (vec!["run", "--max-series", "0"], 2, "must be at least 1"),
        (
            vec!["run", "--snapshot-interval", "-1"],
            2,
            "negative values are not allowed",
        ),
        (
            vec!["trace", "--allow-missing-caps", "CAP_NOPE"],
            2,
            "not a capability name",
        ),
        // Values only the system can judge.
        (
            vec!["trace", "--pid", "4194304"],
            1,
            "--pid 4194304: no such process",
        ),
        (vec!["trace", "--interval", "0.001"], 1, "at least 0.01 s"),
        (vec!["trace", "--container", "xyz"], 1, "--container xyz"),
        (
            vec!["trace", "--cgroup", "system.slice"],
            1,
            "--cgroup system.slice",
        ),
        (
            vec!["trace", "--netns", &plain],
            1,
            "not a network namespace (a regular file)",
        ),
        (
            vec!["trace", "--netns", "/proc"],
            1,
            "not a network namespace (a directory)",
        ),
        (
            vec!["trace", "--netns", "/proc/self/ns/mnt"],
            1,
            "a mount namespace, not a network namespace",
        ),
        (
            vec!["trace", "--netns", "/proc/self/ns/pid"],
            1,
            "a pid namespace, not a network namespace",
        ),
        (
            vec!["trace", "--netns", "12345"],
            1,
            "no network namespace has inode 12345",
        ),
        (
            vec!["trace", "--netns", "/nonexistent/ns"],
            1,
            "--netns /nonexistent/ns: no such file or directory",
        ),
        (
            vec!["trace", "--netns", "-7"],
            1,
            "negative values are not allowed",
        ),
        (vec!["trace", "--netns", ""], 1, "--netns: empty"),
        (
            vec!["trace", "--netns", "/dev/zero"],
            1,
            "not a network namespace (a character device)",
        ),
        (vec!["status", "--netns", "/proc"], 2, "--netns"),
        (
            vec!["run", off, "--netns", "/proc/self/ns/mnt"],
            1,
            "--netns /proc/self/ns/mnt: a mount namespace",
        ),
        (
            vec!["trace", "--btf", "/nonexistent/x.btf"],
            1,
            "--btf /nonexistent/x.btf",
        ),
        (
            vec!["trace", "--btf", "/proc/self/status"],
            1,
            "not a BTF file",
        ),
        (vec!["top"], 1, "top needs a terminal"),
        // Config files.
        (
            vec!["run", "--config", &fifo],
            1,
            "a FIFO, not a regular file",
        ),
        (
            vec!["run", "--config", "/dev/zero"],
            1,
            "/dev/zero: a character device, not a regular file",
        ),
        (
            vec!["run", "--config", "/tmp"],
            1,
            "a directory, not a regular file",
        ),
        (
            vec!["run", "--config", "/nonexistent/tcpq.toml"],
            1,
            "no such file or directory",
        ),
        (
            vec!["run", "--config", &big],
            1,
            "more than a config file may have",
        ),
        (
            vec!["run", "--config", &bad_value],
            1,
            "detect.interval: -1 is out of range",
        ),
        (vec!["run", "--config", &bad_key], 1, "adress"),
        (vec!["run", "--config", &bad_type], 1, "line 2"),
        (vec!["run", "--config", &not_toml], 1, "line 1"),
        (vec!["run", "--config", &bad_port], 1, "line 2"),
        (
            vec!["run", "--config", &bad_attach],
            1,
            "detect.attach: `uprobe`",
        ),
        (vec!["run", off, "--config", &bad_netns], 1, "detect.netns"),
        (
            vec!["run", off, "--config", &mnt_netns],
            1,
            "detect.netns /proc/self/ns/mnt: a mount namespace",
        ),
        (
            vec!["run", off, "--config", &num_netns],
            1,
            "detect.netns 12345: no network namespace",
        ),
    ];
    if no_kprobes {
        // Only `auto` falls back; a forced kind that cannot be had is refused.
        cases.push((
            vec!["trace", "--attach", "kprobe", "--duration", "1"],
            1,
            "--attach kprobe cannot be honoured",
        ));
        cases.push((
            vec!["doctor", "--attach", "kprobe"],
            1,
            "--attach kprobe cannot be honoured",
        ));
        cases.push((
            vec!["run", off, "--duration", "1", "--config", &kprobe_file],
            1,
            "--attach kprobe cannot be honoured",
        ));
    }
    let mut failures = Vec::new();
    for (args, code, needle) in &cases {
        let args: Vec<String> = args.iter().map(|a| a.to_string()).collect();
        let Some((rc, err)) = agent_within(&args, Duration::from_secs(20)) else {
            failures.push(format!("{args:?}: no answer within 20 s (hung)"));
            continue;
        };
        let problems = [
            (rc != *code).then(|| format!("exit {rc}, expected {code}")),
            (err.lines().count() != 1).then(|| "not one line".to_string()),
            (!err.starts_with("tcpq-agent: ")).then(|| "no tcpq-agent: prefix".to_string()),
            (!err.contains(needle)).then(|| format!("does not say {needle:?}")),
            ["panicked", "backtrace", "RUST_BACKTRACE"]
                .iter()
                .any(|b| err.contains(b))
                .then(|| "a panic or backtrace".to_string()),
        ];
        let problems: Vec<String> = problems.into_iter().flatten().collect();
        if !problems.is_empty() {
            failures.push(format!("{args:?}: {}: {err:?}", problems.join(", ")));
        }
    }
    eprintln!("{} bad inputs tried", cases.len());
    assert!(cases.len() >= 30);
    assert!(
        failures.is_empty(),
        "{} of {} bad inputs:\n{}",
        failures.len(),
        cases.len(),
        failures.join("\n")
    );
}

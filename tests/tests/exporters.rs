//! The exporters under a hostile process and an unlucky host: a process
//! named to forge log lines (newlines, a syslog header, `]`, `"`, `\` in
//! its comm, command line and executable path) against every exporter;
//! a syslog target changed by SIGHUP while the old one is down; `trace`
//! writing to /dev/full and to a closed pipe; the sidecar's JSON lines on
//! a filesystem that fills up. Host only (promtool); root.

use std::{
    io::{BufRead, BufReader, Read},
    os::unix::net::UnixListener,
    path::{Path, PathBuf},
    process::{Command, Stdio},
    sync::{mpsc, Arc, Mutex},
    time::Duration,
};

use serde_json::Value;
use tcpq_tests::*;

/// The syn-overflow scenario (listen(0), 4 clients) from `bin` named
/// `comm`; returns ΔListenOverflows of the namespace.
fn overflow_as(ns: &Netns, bin: &Path, comm: Option<&str>, port: u16) -> u64 {
    let before = ns.counters();
    let (child, _) = ns.scenario_as(
        bin,
        comm,
        &format!("syn-overflow --port {port} --clients 4 --syncnt 1 --hold 3"),
    );
    finish(child);
    delta(&before, &ns.counters(), "TcpExt.ListenOverflows")
}

fn overflow(ns: &Netns, port: u16) -> u64 {
    overflow_as(ns, &scenario_bin(), None, port)
}

/// The JSON lines of a file; every line must parse.
fn json_lines(path: &Path) -> Vec<Value> {
    std::fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON ({e}): {l:?}")))
        .collect()
}

/// A newline-framed syslog receiver on a unix stream socket (syslog-ng's
/// `unix-stream()`): every byte it got, over all connections.
struct StreamSink {
    path: PathBuf,
    got: Arc<Mutex<Vec<u8>>>,
}

impl StreamSink {
    fn start(path: PathBuf) -> StreamSink {
        let l = UnixListener::bind(&path).unwrap();
        let got = Arc::new(Mutex::new(Vec::new()));
        let to = got.clone();
        std::thread::spawn(move || {
            for conn in l.incoming() {
                let Ok(mut c) = conn else { return };
                let to = to.clone();
                std::thread::spawn(move || {
                    let mut buf = [0u8; 65536];
                    while let Ok(n) = c.read(&mut buf) {
                        if n == 0 {
                            break;
                        }
                        to.lock().unwrap().extend_from_slice(&buf[..n]);
                    }
                });
            }
        });
        StreamSink { path, got }
    }

    fn target(&self) -> String {
        format!("unix://{}", self.path.display())
    }

    /// The records: what is between newlines.
    fn records(&self) -> Vec<String> {
        let got = self.got.lock().unwrap().clone();
        let text = String::from_utf8(got).expect("UTF-8 syslog");
        text.split_terminator('\n').map(str::to_string).collect()
    }
}

/// The JSON MSG of an RFC 5424 record (after the SD element).
fn msg_json(record: &str) -> Value {
    let i = record
        .find("] {")
        .unwrap_or_else(|| panic!("no SD and MSG: {record:?}"));
    serde_json::from_str(&record[i + 2..])
        .unwrap_or_else(|e| panic!("MSG not JSON ({e}): {record:?}"))
}

/// PRI of a record that must begin with `<PRI>1 `.
fn pri(record: &str) -> u32 {
    let end = record
        .find(">1 ")
        .unwrap_or_else(|| panic!("no header: {record:?}"));
    assert!(record.starts_with('<') && end <= 4, "{record:?}");
    record[1..end]
        .parse()
        .unwrap_or_else(|_| panic!("bad PRI: {record:?}"))
}

fn metric(body: &str, name: &str) -> Option<f64> {
    body.lines()
        .find(|l| l.starts_with(name) && l[name.len()..].starts_with([' ', '{']))
        .and_then(|l| l.rsplit(' ').next()?.parse().ok())
}

/// A Prometheus label value's escapes undone (`\\`, `\"`, `\n`).
fn unescape_label(v: &str) -> String {
    let mut out = String::new();
    let mut it = v.chars();
    while let Some(c) = it.next() {
        if c == '\\' {
            match it.next() {
                Some('n') => out.push('\n'),
                Some(c) => out.push(c),
                None => out.push('\\'),
            }
        } else {
            out.push(c);
        }
    }
    out
}

/// `name="value"` of a sample line, the value as written.
fn label<'a>(sample: &'a str, name: &str) -> Option<&'a str> {
    let start = sample.find(&format!("{name}=\""))? + name.len() + 2;
    let rest = &sample[start..];
    let mut end = 0;
    let b = rest.as_bytes();
    while end < b.len() && b[end] != b'"' {
        end += if b[end] == b'\\' { 2 } else { 1 };
    }
    Some(&rest[..end])
}

fn promtool_passes(body: &str) {
    let mut promtool = Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("promtool (Debian package `prometheus`)");
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
}

/// What a process can name itself with prctl(PR_SET_NAME) (15 bytes): a
/// newline and a forged syslog header, and the SD delimiters.
const COMM: &str = "x\n<0>1 F]\"\\";

#[test]
fn a_process_named_to_forge_lines_stays_one_record_in_every_exporter() {
    if !root_or_skip() {
        return;
    }
    assert!(COMM.len() <= 15);
    let dir = Dir::new("forged");
    let ns = Netns::new("forged");
    // The helper run from a path that forges too: its exe, argv[0] and so
    // its command line.
    let bin = dir.path("bin\n<0>1 FORGED ]\"\\ x");
    std::fs::copy(scenario_bin(), &bin).unwrap();
    let bin_str = bin.to_str().unwrap().to_string();
    let sink = StreamSink::start(dir.path("syslog.sock"));
    let events = dir.path("events.jsonl");
    let metrics = format!("127.0.0.1:{}", free_port());
    let run = Agent::run(&[
        "--syslog",
        &sink.target(),
        "--metrics-address",
        &metrics,
        "--output-file",
        events.to_str().unwrap(),
        "--snapshot-interval",
        "0",
    ]);
    let text = Agent::start(&["trace", "--output", "text"], &[]);
    let port = 9711;
    let want = overflow_as(&ns, &bin, Some(COMM), port);
    assert!(want > 0);
    let got = wait_until(Duration::from_secs(15), || {
        Some(sum(
            &json_lines(&events),
            "listen_overflow",
            None,
            port,
            ns.inode(),
        ))
        .filter(|&n| n >= want)
    });
    assert_eq!(got, Some(want), "JSON Σcount vs ΔListenOverflows");
    std::thread::sleep(Duration::from_secs(2));

    // Prometheus: promtool accepts the exposition; the label, unescaped,
    // is the name.
    let (code, body) = http_get(&metrics, "/metrics").unwrap();
    assert_eq!(code, 200);
    promtool_passes(&body);
    let sample = body
        .lines()
        .find(|l| {
            l.starts_with("tcpq_listen_overflows_total{")
                && l.contains(&format!("server_port=\"{port}\""))
        })
        .unwrap_or_else(|| panic!("no overflow series for {port}:\n{body}"));
    assert_eq!(
        unescape_label(label(sample, "process").unwrap()),
        COMM,
        "{sample}"
    );
    assert!(
        body.lines()
            .all(|l| l.starts_with('#') || l.starts_with("tcpq_") || l.is_empty()),
        "a line that is neither a comment nor a tcpq sample"
    );

    let (status, text_out, _) = text.stop_raw(libc::SIGINT);
    assert!(status.success());
    let (_, _) = run.stop_with_stderr(libc::SIGTERM);

    // JSON: every line parses, the names are recovered exactly.
    let raw = std::fs::read_to_string(&events).unwrap();
    assert!(
        !raw.chars().any(|c| c != '\n' && c.is_control()),
        "a raw control character in the JSON lines"
    );
    let lines = json_lines(&events);
    let mine: Vec<&Value> = lines
        .iter()
        .filter(|l| l["server.port"] == port && l["network.netns"] == ns.inode())
        .collect();
    assert!(!mine.is_empty());
    let named: Vec<&&Value> = mine
        .iter()
        .filter(|l| l.get("process.pid").is_some())
        .collect();
    assert!(!named.is_empty(), "no owner on any line");
    for l in &named {
        assert_eq!(l["process.executable.name"], COMM, "{l}");
        assert_eq!(l["process.executable.path"], bin_str.as_str(), "{l}");
        let cmdline = l["process.command_line"].as_str().unwrap();
        assert!(cmdline.starts_with(&bin_str), "{cmdline:?}");
    }

    // Syslog over a newline-framed unix stream: one record per JSON line
    // (snapshots are off: the same lines go to both), each with our PRI
    // (daemon: 24..31), its MSG the exact event.
    let records = sink.records();
    assert_eq!(records.len(), lines.len(), "syslog records vs JSON lines");
    for r in &records {
        let p = pri(r);
        assert!((24..32).contains(&p), "PRI {p}: {r:?}");
        assert!(!r.chars().any(char::is_control), "{r:?}");
    }
    let from_syslog: Vec<Value> = records.iter().map(|r| msg_json(r)).collect();
    assert_eq!(from_syslog, lines, "MSG is the JSON line");
    let forged = records
        .iter()
        .filter(|r| r.contains("process=\"x\u{fffd}<0>1 F\\]\\\"\\\\\""))
        .count();
    let by_name = lines
        .iter()
        .filter(|l| l["process.executable.name"] == COMM)
        .count();
    assert!(by_name > 0);
    assert_eq!(
        forged, by_name,
        "the SD-PARAM, escaped, on each record of the process"
    );

    // trace's text: one line per event (continuation lines indented), the
    // name shown escaped.
    let mut ours = 0;
    let mut count = 0;
    for l in &text_out {
        let record = l.len() > 24 && l.as_bytes()[4] == b'-' && l.as_bytes()[10] == b'T';
        let continued = l.starts_with("    cause:  ") || l.starts_with("    remedy: ");
        assert!(
            record || continued,
            "a line that is neither a record nor its cause/remedy: {l:?}"
        );
        assert!(!l.chars().any(char::is_control), "{l:?}");
        if record && l.contains(&format!("listener=127.0.0.1:{port} netns={} ", ns.inode())) {
            assert!(
                l.contains(" pid=?") || l.contains(" (x\\n<0>1 F]\"\\)"),
                "{l}"
            );
            if l.contains(" listen_overflow ") {
                count += field(l, "count");
            }
            ours += 1;
        }
    }
    assert!(ours > 0);
    assert_eq!(count, want, "text Σcount vs ΔListenOverflows");
}

/// An RFC 6587 octet-counting receiver on 127.0.0.1 that can be stopped
/// (listener and connections closed).
struct TcpSink {
    port: u16,
    frames: Arc<Mutex<Vec<String>>>,
    stop: mpsc::Sender<()>,
}

impl TcpSink {
    fn start() -> TcpSink {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = l.local_addr().unwrap().port();
        l.set_nonblocking(true).unwrap();
        let frames = Arc::new(Mutex::new(Vec::new()));
        let (stop, stopped) = mpsc::channel::<()>();
        let to = frames.clone();
        std::thread::spawn(move || {
            let mut conns: Vec<(std::net::TcpStream, Vec<u8>)> = Vec::new();
            loop {
                if !matches!(stopped.try_recv(), Err(mpsc::TryRecvError::Empty)) {
                    return; // drops the listener and the connections
                }
                if let Ok((c, _)) = l.accept() {
                    c.set_nonblocking(true).unwrap();
                    conns.push((c, Vec::new()));
                }
                for (c, buf) in &mut conns {
                    let mut b = [0u8; 65536];
                    while let Ok(n) = c.read(&mut b) {
                        if n == 0 {
                            break;
                        }
                        buf.extend_from_slice(&b[..n]);
                    }
                    while let Some(sp) = buf.iter().position(|&x| x == b' ') {
                        let len: usize = std::str::from_utf8(&buf[..sp]).unwrap().parse().unwrap();
                        if buf.len() < sp + 1 + len {
                            break;
                        }
                        let frame: Vec<u8> = buf.drain(..sp + 1 + len).skip(sp + 1).collect();
                        to.lock().unwrap().push(String::from_utf8(frame).unwrap());
                    }
                }
                std::thread::sleep(Duration::from_millis(20));
            }
        });
        TcpSink { port, frames, stop }
    }

    fn frames(&self) -> Vec<String> {
        self.frames.lock().unwrap().clone()
    }

    fn stop(&self) {
        let _ = self.stop.send(());
        std::thread::sleep(Duration::from_millis(200));
    }
}

fn syslog_sum(frames: &[String], port: u16, netns: u64) -> u64 {
    let lines: Vec<Value> = frames.iter().map(|f| msg_json(f)).collect();
    sum(&lines, "listen_overflow", None, port, netns)
}

#[test]
fn sighup_to_a_new_syslog_target_hands_over_the_queue_and_counts_real_loss() {
    if !root_or_skip() {
        return;
    }
    let dir = Dir::new("hup-syslog");
    let ns = Netns::new("hup-syslog");
    let events = dir.path("events.jsonl");
    let config = dir.path("tcpq.toml");
    let metrics = format!("127.0.0.1:{}", free_port());
    let write_cfg = |syslog: Option<u16>| {
        let syslog = syslog.map_or(String::new(), |p| {
            format!("[syslog]\ntarget = \"tcp://127.0.0.1:{p}\"\n")
        });
        std::fs::write(
            &config,
            format!(
                "[output]\nfile = \"{}\"\nsnapshot_interval = 0\n[metrics]\naddress = \"{metrics}\"\n{syslog}",
                events.display()
            ),
        )
        .unwrap()
    };
    let scrape = |name: &str| {
        let (_, body) = http_get(&metrics, "/metrics").unwrap();
        metric(&body, name)
    };
    let a = TcpSink::start();
    write_cfg(Some(a.port));
    let agent = Agent::run(&["--config", config.to_str().unwrap()]);
    let first = overflow(&ns, 9721);
    let got = wait_until(Duration::from_secs(15), || {
        Some(syslog_sum(&a.frames(), 9721, ns.inode())).filter(|&n| n >= first)
    });
    assert_eq!(got, Some(first), "the first target gets the events");
    std::thread::sleep(Duration::from_secs(2)); // nothing in flight when it stops

    // The target goes down; events queue for it through a 4 s outage.
    a.stop();
    let during = overflow(&ns, 9722);
    std::thread::sleep(Duration::from_secs(4));
    let queued = scrape("tcpq_syslog_queue_length").unwrap_or(0.0);
    assert!(queued >= 1.0, "messages wait in the queue: {queued}");
    assert_eq!(scrape("tcpq_syslog_connected"), Some(0.0));

    // SIGHUP to a new target: it gets the queue.
    let b = TcpSink::start();
    write_cfg(Some(b.port));
    unsafe { libc::kill(agent.pid() as i32, libc::SIGHUP) };
    assert!(agent
        .wait_stderr(
            &format!("sending events to syslog tcp://127.0.0.1:{}", b.port),
            Duration::from_secs(10)
        )
        .is_some());
    let got = wait_until(Duration::from_secs(15), || {
        Some(syslog_sum(&b.frames(), 9722, ns.inode())).filter(|&n| n >= during)
    });
    assert_eq!(
        got,
        Some(during),
        "the new target got what queued during the outage"
    );
    // Every JSON line went to syslog once (the metrics are updated at the
    // end of each interval; the agent's own refused reconnects are events
    // too, so lines keep coming for a while).
    let settled = wait_until(Duration::from_secs(15), || {
        let json = json_lines(&events).len() as f64;
        let sent = (a.frames().len() + b.frames().len()) as f64;
        let counted = scrape("tcpq_syslog_messages_total")?;
        (sent == json && counted == sent).then_some(sent)
    });
    assert!(
        settled.is_some(),
        "JSON lines, frames received and tcpq_syslog_messages_total differ"
    );
    assert_eq!(scrape("tcpq_syslog_dropped_total"), Some(0.0));
    assert_eq!(scrape("tcpq_syslog_queue_length"), Some(0.0));

    // Real loss is counted: B goes down, events queue, and a reload
    // removes syslog; after 5 s of draining into nothing, what is left is
    // dropped, and counted.
    b.stop();
    let lost_port = 9723;
    overflow(&ns, lost_port);
    std::thread::sleep(Duration::from_secs(2));
    let queued = scrape("tcpq_syslog_queue_length").unwrap();
    assert!(queued >= 1.0);
    write_cfg(None);
    let before = json_lines(&events).len() as f64;
    unsafe { libc::kill(agent.pid() as i32, libc::SIGHUP) };
    assert!(agent
        .wait_stderr("reloaded the configuration", Duration::from_secs(10))
        .is_some());
    let after = json_lines(&events).len() as f64;
    let dropped = wait_until(Duration::from_secs(15), || {
        scrape("tcpq_syslog_dropped_total").filter(|&d| d > 0.0)
    });
    assert!(dropped.is_some(), "the loss is counted");
    std::thread::sleep(Duration::from_secs(1));
    let (dropped, sent) = (
        scrape("tcpq_syslog_dropped_total").unwrap(),
        scrape("tcpq_syslog_messages_total").unwrap(),
    );
    // Lines written after the reload have no syslog to go to.
    assert!(
        (before..=after).contains(&(dropped + sent)),
        "every line before the reload sent or counted as dropped: {dropped} + {sent} vs {before}..={after} (queued {queued})"
    );
    assert!(dropped >= queued, "{dropped} < {queued}");
    agent.stop_with(libc::SIGTERM);
}

/// `trace` with stdout at `out`, until it exits by itself: (exit code,
/// stderr lines).
fn trace_into(out: Stdio, close_reader: bool, ns: &Netns) -> (Option<i32>, Vec<String>) {
    let mut child = Command::new(agent_bin())
        .args(["trace", "--output", "json"])
        .args(attach_args())
        .stdout(out)
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    if close_reader {
        drop(child.stdout.take()); // the reader goes away: a broken pipe
    }
    let (tx, rx) = mpsc::channel();
    let stderr = child.stderr.take().unwrap();
    std::thread::spawn(move || {
        for l in BufReader::new(stderr).lines().map_while(Result::ok) {
            eprintln!("[agent] {l}");
            let _ = tx.send(l);
        }
    });
    let mut err = Vec::new();
    let ready = wait_until(Duration::from_secs(30), || {
        while let Ok(l) = rx.try_recv() {
            err.push(l);
        }
        err.iter()
            .any(|l| l.starts_with("tcpq: tracing"))
            .then_some(())
    });
    assert!(ready.is_some(), "agent did not start: {err:?}");
    overflow(ns, 9731);
    let status = wait_until(Duration::from_secs(20), || child.try_wait().unwrap());
    let Some(status) = status else {
        let _ = child.kill();
        panic!("trace kept running with a failed output");
    };
    while let Ok(l) = rx.recv_timeout(Duration::from_secs(2)) {
        err.push(l);
    }
    (status.code(), err)
}

#[test]
fn trace_exits_non_zero_with_one_line_when_its_output_fails() {
    if !root_or_skip() {
        return;
    }
    let ns = Netns::new("trace-out");
    let full = std::fs::OpenOptions::new()
        .write(true)
        .open("/dev/full")
        .unwrap();
    for (out, close, reason) in [
        (Stdio::from(full), false, "No space left on device"),
        (Stdio::piped(), true, "Broken pipe"),
    ] {
        let (code, err) = trace_into(out, close, &ns);
        assert_eq!(code, Some(1), "{reason}: {err:?}");
        assert_eq!(
            err.last().map(String::as_str),
            Some(&*format!("tcpq-agent: output: {reason}")),
            "{err:?}"
        );
        let done = err
            .iter()
            .find(|l| l.starts_with("tcpq: done: "))
            .unwrap_or_else(|| panic!("no summary: {err:?}"));
        assert!(
            done.contains(" report lines not written (output failed)"),
            "{done}"
        );
        assert_eq!(
            err.iter().filter(|l| l.starts_with("tcpq-agent:")).count(),
            1
        );
    }
    // `status` says it the same way.
    let full = std::fs::OpenOptions::new()
        .write(true)
        .open("/dev/full")
        .unwrap();
    let out = Command::new(agent_bin())
        .arg("status")
        .stdout(full)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    // Ends with the one line (a host's degradation notes may come first).
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(
        stderr.lines().last(),
        Some("tcpq-agent: output: No space left on device"),
        "{stderr}"
    );
    assert_eq!(stderr.matches("tcpq-agent:").count(), 1, "{stderr}");
}

#[test]
fn a_full_disk_costs_whole_lines_counted_never_glued() {
    if !root_or_skip() {
        return;
    }
    let dir = Dir::new("full");
    let ns = Netns::new("full");
    let mnt = dir.path("mnt");
    std::fs::create_dir(&mnt).unwrap();
    let sink = StreamSink::start(dir.path("syslog.sock"));
    let metrics = format!("127.0.0.1:{}", free_port());
    let events = mnt.join("events.jsonl");
    // A 1 MiB tmpfs in a mount namespace of the agent's own, all but 4 KiB of it
    // taken: one page left for the JSON lines. A `sleep` holds the
    // namespace (and the file) after the agent exits.
    let holder_pid = dir.path("holder.pid");
    let mut cmd = Command::new("unshare");
    cmd.args(["--mount", "--propagation", "private", "sh", "-c"])
        .arg(r#"mount -t tmpfs -o size=1m tcpq-full "$0" && dd if=/dev/zero of="$0/filler" bs=4096 count=255 2>/dev/null && { sleep 600 </dev/null >/dev/null 2>&1 & echo $! > "$0.holder"; } && exec "$@""#)
        .arg(&mnt)
        .arg(agent_bin())
        .args(["run", "--output-file", events.to_str().unwrap(), "--snapshot-interval", "0"])
        .args(["--metrics-address", &metrics, "--syslog", &sink.target()])
        .args(attach_args());
    let agent = Agent::spawn(cmd);
    std::fs::rename(dir.path("mnt.holder"), &holder_pid).unwrap();
    let holder: i32 = std::fs::read_to_string(&holder_pid)
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    struct Holder(i32);
    impl Drop for Holder {
        fn drop(&mut self) {
            unsafe { libc::kill(self.0, libc::SIGKILL) };
        }
    }
    let _holder = Holder(holder);
    let inside = PathBuf::from(format!("/proc/{holder}/root")).join(mnt.strip_prefix("/").unwrap());
    let file = inside.join("events.jsonl");
    let scrape = |name: &str| {
        let (_, body) = http_get(&metrics, "/metrics").unwrap();
        metric(&body, name)
    };
    // Lines until the page is full and some are lost.
    let ports: Vec<u16> = (9741..9749).collect();
    let lost = wait_until(Duration::from_secs(60), || {
        std::thread::scope(|s| {
            for &p in &ports {
                let ns = &ns;
                s.spawn(move || overflow(ns, p));
            }
        });
        std::thread::sleep(Duration::from_secs(2));
        scrape("tcpq_output_lines_lost_total").filter(|&n| n > 0.0)
    });
    assert!(lost.is_some(), "no line was lost on a full filesystem");
    assert!(agent
        .wait_stderr(
            "tcpq: output: No space left on device: JSON lines are lost",
            Duration::from_secs(5)
        )
        .is_some());
    // Room again: the next lines are written, the fragment (if a line was
    // cut) ended first.
    std::fs::remove_file(inside.join("filler")).unwrap();
    let after = overflow(&ns, 9750);
    let got = wait_until(Duration::from_secs(15), || {
        let text = std::fs::read_to_string(&file).ok()?;
        let lines: Vec<Value> = text
            .lines()
            .filter_map(|l| serde_json::from_str(l).ok())
            .collect();
        Some(sum(&lines, "listen_overflow", None, 9750, ns.inode())).filter(|&n| n >= after)
    });
    assert_eq!(
        got,
        Some(after),
        "lines are written again once there is room"
    );
    let recovered = agent
        .wait_stderr("tcpq: output: writing again;", Duration::from_secs(5))
        .expect("the recovery is said");
    let (_, err) = agent.stop_with_stderr(libc::SIGTERM);
    let lost: usize = err
        .iter()
        .find_map(|l| {
            l.strip_prefix("tcpq: output: ")?
                .strip_suffix(" JSON lines could not be written")?
                .parse()
                .ok()
        })
        .unwrap_or_else(|| panic!("no count of lost lines at exit: {err:?}"));
    assert!(
        recovered.contains(&format!(" {lost} JSON lines lost meanwhile")),
        "{recovered}"
    );
    let text = std::fs::read_to_string(&file).unwrap();

    // Every line parses but at most one fragment, which is a line of its
    // own (the lines around it parse).
    assert!(text.ends_with('\n'));
    let all: Vec<&str> = text.lines().collect();
    let fragments: Vec<usize> = (0..all.len())
        .filter(|&i| serde_json::from_str::<Value>(all[i]).is_err())
        .collect();
    assert!(fragments.len() <= 1, "{fragments:?}");
    let written: Vec<Value> = all
        .iter()
        .filter_map(|l| serde_json::from_str(l).ok())
        .collect();
    // Syslog got every line: the file's plus the lost ones.
    let records: Vec<Value> = sink.records().iter().map(|r| msg_json(r)).collect();
    assert_eq!(
        records.len(),
        written.len() + lost,
        "syslog records = lines written + lines lost"
    );
    if let Some(&i) = fragments.first() {
        let frag = all[i];
        assert!(
            records.iter().any(|r| export_line(r).starts_with(frag)),
            "the fragment is the start of a lost line: {frag:?}"
        );
        assert!(i + 1 < all.len(), "lines follow the fragment");
    }
    eprintln!(
        "full disk: {} lines written, {lost} lost, {} fragment(s), syslog {}",
        written.len(),
        fragments.len(),
        records.len()
    );
}

/// A JSON line as the agent writes it (serde_json's key order and escapes).
fn export_line(v: &Value) -> String {
    v.to_string()
}

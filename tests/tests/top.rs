//! `tcpq-agent top` in a real terminal: tmux runs it (`send-keys` to type,
//! `capture-pane` to read the screen) while a listener in a private
//! network namespace overflows; the row's count is compared with the
//! namespace's ListenOverflows, then sorting, filtering, pause, and the
//! terminal after SIGTERM. Host only (the guest carries no tmux); root.
//! The screenshot in docs/ is rendered from this test's capture
//! (`TCPQ_UPDATE_DOCS=1` writes it there; it always goes to target/).

use std::{
    process::Command,
    thread::sleep,
    time::{Duration, Instant},
};

use tcpq_tests::*;

/// A detached tmux session, killed on drop.
struct Tmux {
    name: String,
}

impl Tmux {
    fn new(tag: &str) -> Tmux {
        let name = format!("tcpq-{tag}-{}", std::process::id());
        let _ = Command::new("tmux")
            .args(["kill-session", "-t", &name])
            .output();
        run(Command::new("tmux").args([
            "new-session",
            "-d",
            "-s",
            &name,
            "-x",
            "160",
            "-y",
            "40",
            // A plain shell: no rc file to vary the prompt.
            "env PS1='$ ' TERM=xterm-256color bash --norc --noprofile",
        ]));
        Tmux { name }
    }

    /// Key names, one at a time (an Escape sent together with the next
    /// key would read as Alt+key).
    fn keys(&self, keys: &[&str]) {
        for k in keys {
            run(Command::new("tmux").args(["send-keys", "-t", &self.name, k]));
            sleep(Duration::from_millis(150));
        }
    }

    /// Literal text (no key names).
    fn type_text(&self, text: &str) {
        run(Command::new("tmux").args(["send-keys", "-t", &self.name, "-l", text]));
    }

    fn screen(&self) -> String {
        run(Command::new("tmux").args(["capture-pane", "-p", "-t", &self.name]))
    }

    /// The screen with its colours (SGR escapes).
    fn screen_ansi(&self) -> String {
        run(Command::new("tmux").args(["capture-pane", "-p", "-e", "-t", &self.name]))
    }

    fn display(&self, what: &str) -> String {
        run(Command::new("tmux").args(["display-message", "-p", "-t", &self.name, what]))
            .trim()
            .to_string()
    }

    /// Waits until `f` accepts the screen; panics with the last screen.
    fn wait_for(&self, within: Duration, what: &str, f: impl Fn(&str) -> bool) -> String {
        let deadline = Instant::now() + within;
        loop {
            let s = self.screen();
            if f(&s) {
                return s;
            }
            if Instant::now() > deadline {
                panic!("screen never showed {what} within {within:?}:\n{s}");
            }
            sleep(Duration::from_millis(200));
        }
    }
}

impl Drop for Tmux {
    fn drop(&mut self) {
        let _ = Command::new("tmux")
            .args(["kill-session", "-t", &self.name])
            .output();
    }
}

/// The listener table row for `endpoint`: its whitespace-separated cells
/// (LISTENER NETNS QUEUE FILL OVF-SYN/s OVF-ACK/s OVF ...), and its line
/// number on the screen.
fn row(screen: &str, endpoint: &str) -> Option<(usize, Vec<String>)> {
    screen.lines().enumerate().find_map(|(i, l)| {
        let cells: Vec<String> = l
            .trim_start()
            .trim_start_matches('▶')
            .split_whitespace()
            .map(String::from)
            .collect();
        (cells.first().map(String::as_str) == Some(endpoint)).then_some((i, cells))
    })
}

/// The OVF (overflows since start) cell as a number ("-" = 0).
fn ovf(cells: &[String]) -> u64 {
    match cells[6].as_str() {
        "-" => 0,
        n => n.parse().unwrap_or_else(|_| panic!("OVF cell {n:?}")),
    }
}

/// The process running in the pane (the child of its shell).
fn top_pid(t: &Tmux) -> u32 {
    let shell = t.display("#{pane_pid}");
    let children =
        std::fs::read_to_string(format!("/proc/{shell}/task/{shell}/children")).unwrap_or_default();
    children
        .split_whitespace()
        .next()
        .and_then(|p| p.parse().ok())
        .expect("top is not running in the pane")
}

fn cpu_ticks(pid: u32) -> u64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    let after = stat.rsplit_once(')').map(|(_, r)| r).unwrap_or("");
    let f: Vec<&str> = after.split_whitespace().collect();
    // utime and stime: fields 14 and 15, here 12 and 13 after "(comm)".
    f.get(11).and_then(|v| v.parse().ok()).unwrap_or(0)
        + f.get(12).and_then(|v| v.parse().ok()).unwrap_or(0)
}

fn status_kib(pid: u32, key: &str) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix(key))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or(0)
}

fn in_vm() -> bool {
    if std::env::var("TCPQ_IN_VM").is_ok_and(|v| v == "1") {
        eprintln!("skipped in the VM: host only (the guest carries no tmux)");
        return true;
    }
    false
}

#[test]
fn top_without_a_terminal_refuses_with_a_hint() {
    let out = Command::new(agent_bin())
        .arg("top")
        .stdin(std::process::Stdio::null())
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(err.lines().count(), 1, "{err}");
    assert!(
        err.contains("terminal") && err.contains("tcpq-agent trace") && err.contains("status"),
        "{err}"
    );
    assert!(out.stdout.is_empty());
}

#[test]
fn top_shows_the_overflowing_listener_sorts_filters_and_restores_the_terminal() {
    if !root_or_skip() || in_vm() {
        return;
    }
    let ns = Netns::new("top");
    let (sick, healthy) = (9402u16, 9401u16);
    let (mut l1, owner) = ns.scenario(&format!("listen --port {sick} --backlog 0 --hold 90"));
    let (mut l2, _) = ns.scenario(&format!("listen --port {healthy} --backlog 128 --hold 90"));
    let (sick_ep, healthy_ep) = (format!("127.0.0.1:{sick}"), format!("127.0.0.1:{healthy}"));

    let t = Tmux::new("top");
    let netns_path = format!("/run/netns/{}", ns.name);
    t.type_text(&format!(
        "{} top --netns {netns_path}; echo TOP-EXITED $?",
        agent_bin().display()
    ));
    t.keys(&["Enter"]);
    let s = t.wait_for(Duration::from_secs(30), "both listeners", |s| {
        s.contains("tcpq top") && row(s, &sick_ep).is_some() && row(s, &healthy_ep).is_some()
    });
    let pid = top_pid(&t);
    let (cpu0, t0) = (cpu_ticks(pid), Instant::now());
    assert_eq!(
        t.display("#{alternate_on}"),
        "1",
        "top is not on the alternate screen"
    );
    let (_, cells) = row(&s, &sick_ep).unwrap();
    assert_eq!(cells[1], ns.inode().to_string(), "{s}");
    assert_eq!(ovf(&cells), 0, "history before the test: {s}");
    for header in [
        "OVF-SYN/s",
        "OVF-ACK/s",
        "SYNQ/s",
        "P99ms",
        "CLOSE_WAIT",
        "PROCESS",
    ] {
        assert!(s.contains(header), "no {header} column:\n{s}");
    }

    // 6 clients on listen(0): the first fills the queue, the others are
    // dropped, once per SYN and once per retransmit.
    let before = ns.counters();
    let (mut clients, _) = ns.scenario(&format!(
        "connect --port {sick} --clients 6 --syncnt 1 --hold 2.5"
    ));
    clients.wait().unwrap();
    sleep(Duration::from_millis(1500));
    let after = ns.counters();
    let kernel = delta(&before, &after, "TcpExt.ListenOverflows");
    assert!(kernel >= 5, "the scenario did not overflow: +{kernel}");
    let s = t.wait_for(Duration::from_secs(10), "the kernel's count", |s| {
        row(s, &sick_ep).is_some_and(|(_, c)| ovf(&c) == kernel)
    });
    let (sick_line, cells) = row(&s, &sick_ep).unwrap();
    assert_eq!(cells[2], "1/0", "queue length/limit: {s}");
    assert!(
        s.contains(&format!("tcpq-scenario ({owner})")),
        "owner {owner} not shown:\n{s}"
    );
    // Sorted by trouble: the overflowing listener first, selected, with
    // its verdict and its namespace's settings below.
    let (healthy_line, _) = row(&s, &healthy_ep).unwrap();
    assert!(sick_line < healthy_line, "not sorted by trouble:\n{s}");
    assert!(s.contains("sort: trouble"), "{s}");
    assert!(
        s.contains(&format!("{sick_ep} (netns {})", ns.inode())),
        "selected row's panel:\n{s}"
    );
    assert!(
        s.contains("cause:") && s.contains("overflowed") && s.contains("remedy:"),
        "no verdict:\n{s}"
    );
    assert!(
        s.contains("net.core.somaxconn=4096") && s.contains("tcp_abort_on_overflow=0"),
        "no sysctls:\n{s}"
    );
    assert!(s.contains("local ports"), "no client panel:\n{s}");
    screenshot(&t);

    // s: trouble → queue fill → total drops → port.
    t.keys(&["s", "s", "s"]);
    let s = t.wait_for(Duration::from_secs(5), "sort by port", |s| {
        s.contains("sort: port")
    });
    let (a, _) = row(&s, &healthy_ep).unwrap();
    let (b, _) = row(&s, &sick_ep).unwrap();
    assert!(a < b, "not sorted by port:\n{s}");

    // Filter by port, by process name, and one nothing matches.
    t.keys(&["/"]);
    t.type_text(&healthy.to_string());
    t.keys(&["Enter"]);
    let s = t.wait_for(Duration::from_secs(5), "the port filter", |s| {
        s.contains(&format!("filter: {healthy}"))
    });
    assert!(
        row(&s, &healthy_ep).is_some() && row(&s, &sick_ep).is_none(),
        "{s}"
    );
    assert!(s.contains("listeners 1/2"), "{s}");
    t.keys(&["/", "Escape", "/"]);
    t.type_text("scenario");
    t.keys(&["Enter"]);
    let s = t.wait_for(Duration::from_secs(5), "the process filter", |s| {
        s.contains("filter: scenario")
    });
    assert!(
        row(&s, &healthy_ep).is_some() && row(&s, &sick_ep).is_some(),
        "{s}"
    );
    t.keys(&["/", "Escape", "/"]);
    t.type_text("nginx");
    t.keys(&["Enter"]);
    let s = t.wait_for(Duration::from_secs(5), "a filter nothing matches", |s| {
        s.contains("filter: nginx")
    });
    assert!(
        row(&s, &healthy_ep).is_none() && row(&s, &sick_ep).is_none(),
        "{s}"
    );
    assert!(s.contains("listeners 0/2"), "{s}");
    t.keys(&["/", "Escape"]);
    t.wait_for(Duration::from_secs(5), "the filter cleared", |s| {
        row(s, &sick_ep).is_some() && !s.contains("filter:")
    });

    // Pause freezes the screen (its timestamp); p again resumes.
    let stamp = |s: &str| {
        s.lines()
            .next()
            .and_then(|l| l.split_whitespace().nth(2))
            .unwrap_or("")
            .to_string()
    };
    t.keys(&["p"]);
    let s = t.wait_for(Duration::from_secs(5), "PAUSED", |s| s.contains("PAUSED"));
    sleep(Duration::from_millis(2500));
    assert_eq!(
        stamp(&t.screen()),
        stamp(&s),
        "the screen moved while paused"
    );
    t.keys(&["p"]);
    t.wait_for(Duration::from_secs(5), "updates again", |now| {
        !now.contains("PAUSED") && stamp(now) != stamp(&s)
    });

    let secs = t0.elapsed().as_secs_f64();
    // SAFETY: sysconf has no preconditions.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as f64;
    eprintln!(
        "MEASURED top: {:.1} % of a core over {secs:.0} s (keys and redraws included), VmRSS {} KiB, VmHWM {} KiB",
        (cpu_ticks(pid) - cpu0) as f64 / hz / secs * 100.0,
        status_kib(pid, "VmRSS:"),
        status_kib(pid, "VmHWM:")
    );

    // SIGTERM: top exits 0, the terminal is back to a usable shell.
    unsafe { libc::kill(pid as i32, libc::SIGTERM) };
    let s = t.wait_for(Duration::from_secs(15), "the exit", |s| {
        s.contains("TOP-EXITED")
    });
    assert!(s.contains("TOP-EXITED 0"), "{s}");
    assert!(
        s.contains("tcpq: done:"),
        "exit summary not printed after the screen:\n{s}"
    );
    assert_eq!(
        t.display("#{alternate_on}"),
        "0",
        "still on the alternate screen"
    );
    assert_eq!(t.display("#{cursor_flag}"), "1", "cursor still hidden");
    t.type_text("stty -a | tr ' ;' '\\n\\n' | grep -xE -- '-?(icanon|echo|icrnl)' | tr '\\n' ' '; echo STTY-DONE");
    t.keys(&["Enter"]);
    let answer = |l: &&str| l.ends_with("STTY-DONE") && !l.starts_with('$');
    let s = t.wait_for(Duration::from_secs(5), "the shell's answer", |s| {
        s.lines().any(|l| answer(&l))
    });
    let line = s.lines().find(answer).unwrap();
    assert_eq!(
        line.split_whitespace().collect::<Vec<_>>(),
        ["icrnl", "icanon", "echo", "STTY-DONE"],
        "terminal left in raw mode:\n{s}"
    );
    for c in [&mut l1, &mut l2] {
        let _ = c.kill();
        let _ = c.wait();
    }
}

/// Renders the pane (with its colours) to target/top.png, and to
/// docs/top.png with `TCPQ_UPDATE_DOCS=1`.
fn screenshot(t: &Tmux) {
    let (w, h, mvg) = ansi_mvg(&t.screen_ansi(), 160, 40);
    let dir = target_dir();
    let mvg_path = dir.join("top.mvg");
    let png = dir.join("top.png");
    std::fs::write(&mvg_path, mvg).unwrap();
    run(Command::new("convert")
        .args(["-size", &format!("{w}x{h}")])
        .arg(format!("mvg:{}", mvg_path.display()))
        .arg(&png));
    let meta = std::fs::metadata(&png).expect("no PNG written");
    assert!(meta.len() > 10_000, "PNG suspiciously small");
    if std::env::var("TCPQ_UPDATE_DOCS").is_ok_and(|v| v == "1") {
        let docs = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../docs/top.png");
        std::fs::copy(&png, docs).unwrap();
    }
}

/// The xterm colours tmux emits (SGR 30–37, 90–97, 38;5;n for n < 16).
const PALETTE: [&str; 16] = [
    "#1e1e1e", "#e06c75", "#98c379", "#e5c07b", "#61afef", "#c678dd", "#56b6c2", "#d0d0d0",
    "#7f848e", "#ff7b86", "#b5e890", "#ffd787", "#7cc4ff", "#e29cff", "#7fdbe6", "#ffffff",
];

/// A pane captured with `-e` as ImageMagick drawing commands (MVG): one
/// `text` per run of cells in one style, in DejaVu Sans Mono on a grid of
/// 8.4 × 18 px cells. Returns the image's width, height and the commands.
fn ansi_mvg(ansi: &str, cols: usize, rows: usize) -> (u32, u32, String) {
    let (cw, ch) = (8.4, 18.0);
    let (bg, fg) = ("#1e1e1e", "#d0d0d0");
    let (w, h) = (
        (cols as f64 * cw + 16.0) as u32,
        (rows as f64 * ch + 16.0) as u32,
    );
    let mut out = format!("viewbox 0 0 {w} {h}\nfill '{bg}' rectangle 0,0 {w},{h}\nfont-size 14\n");
    let esc = |c: char| match c {
        '\'' => "\\'".to_string(),
        '\\' => "\\\\".to_string(),
        '%' => "%%".to_string(),
        c => c.to_string(),
    };
    #[derive(Clone, Copy, PartialEq)]
    struct Style {
        fg: Option<usize>,
        bold: bool,
        reverse: bool,
    }
    for (y, line) in ansi.lines().take(rows).enumerate() {
        let mut style = Style {
            fg: None,
            bold: false,
            reverse: false,
        };
        let mut runs: Vec<(usize, Style, String)> = Vec::new();
        let mut col = 0usize;
        let mut chars = line.chars().peekable();
        while let Some(c) = chars.next() {
            if c == '\x1b' && chars.peek() == Some(&'[') {
                chars.next();
                let mut code = String::new();
                for d in chars.by_ref() {
                    if d.is_ascii_alphabetic() {
                        if d == 'm' {
                            let parts: Vec<u32> =
                                code.split(';').map(|p| p.parse().unwrap_or(0)).collect();
                            let mut i = 0;
                            while i < parts.len() {
                                match parts[i] {
                                    0 => {
                                        style = Style {
                                            fg: None,
                                            bold: false,
                                            reverse: false,
                                        }
                                    }
                                    1 => style.bold = true,
                                    22 => style.bold = false,
                                    7 => style.reverse = true,
                                    27 => style.reverse = false,
                                    39 => style.fg = None,
                                    n @ 30..=37 => style.fg = Some((n - 30) as usize),
                                    n @ 90..=97 => style.fg = Some((n - 90 + 8) as usize),
                                    38 if parts.get(i + 1) == Some(&5) => {
                                        style.fg = parts.get(i + 2).map(|&n| n as usize % 16);
                                        i += 2;
                                    }
                                    _ => {}
                                }
                                i += 1;
                            }
                        }
                        break;
                    }
                    code.push(d);
                }
                continue;
            }
            match runs.last_mut() {
                Some((_, s, text)) if *s == style => text.push(c),
                _ => runs.push((col, style, c.to_string())),
            }
            col += 1;
        }
        for (x, s, text) in runs {
            let color = s.fg.map_or(fg, |i| PALETTE[i]);
            let (ink, paper) = if s.reverse { (bg, color) } else { (color, bg) };
            let (px, py) = (8.0 + x as f64 * cw, 8.0 + y as f64 * ch);
            let width = text.chars().count() as f64 * cw;
            if s.reverse {
                out += &format!(
                    "fill '{paper}' rectangle {px:.1},{py:.1} {:.1},{:.1}\n",
                    px + width,
                    py + ch
                );
            }
            if text.trim().is_empty() {
                continue;
            }
            let body: String = text.chars().map(esc).collect();
            let font = if s.bold {
                "DejaVu-Sans-Mono-Bold"
            } else {
                "DejaVu-Sans-Mono"
            };
            out += &format!(
                "font '{font}' fill '{ink}' text {px:.1},{:.1} '{body}'\n",
                py + 14.0
            );
        }
    }
    (w, h, out)
}

#[test]
fn top_restores_the_terminal_after_an_error() {
    if !root_or_skip() || in_vm() {
        return;
    }
    // The namespace path is checked by the engine, after the screen is
    // set up: the error must come out as one line on a restored terminal.
    let t = Tmux::new("toperr");
    t.type_text(&format!(
        "{} top --netns /run/netns/tcpq-no-such-ns; echo TOP-EXITED $?",
        agent_bin().display()
    ));
    t.keys(&["Enter"]);
    let s = t.wait_for(Duration::from_secs(30), "the exit", |s| {
        s.lines().any(|l| l.starts_with("TOP-EXITED"))
    });
    assert!(s.contains("TOP-EXITED 1"), "{s}");
    let errors: Vec<&str> = s
        .lines()
        .filter(|l| l.starts_with("tcpq-agent: "))
        .collect();
    assert_eq!(errors.len(), 1, "{s}");
    assert!(errors[0].contains("tcpq-no-such-ns"), "{s}");
    assert_eq!(
        t.display("#{alternate_on}"),
        "0",
        "still on the alternate screen"
    );
    assert_eq!(t.display("#{cursor_flag}"), "1", "cursor still hidden");
}

#[test]
fn top_shows_a_client_out_of_local_ports() {
    if !root_or_skip() || in_vm() {
        return;
    }
    use std::io::Read;
    let ns = Netns::new("topports");
    ns.sysctl("net.ipv4.ip_local_port_range", "40000 40003");
    let t = Tmux::new("topports");
    t.type_text(&format!(
        "{} top --netns /run/netns/{}",
        agent_bin().display(),
        ns.name
    ));
    t.keys(&["Enter"]);
    t.wait_for(Duration::from_secs(30), "the screen", |s| {
        s.contains("tcpq top") && s.contains("tcpq: tracing")
    });
    // 4 connections take the 4 ports and are held; 6 more connect()s fail.
    let (mut child, pid) = ns.scenario("port-exhaust --port 9306 --attempts 10 --hold 8");
    let mut out = String::new();
    let mut stdout = child.stdout.take().unwrap();
    let mut b = [0u8; 1];
    while stdout.read(&mut b).unwrap_or(0) == 1 && b[0] != b'\n' {
        out.push(b[0] as char);
    }
    let failed: u64 = out
        .split_whitespace()
        .find_map(|w| w.strip_prefix("EADDRNOTAVAIL="))
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("scenario said {out:?}"));
    assert_eq!(failed, 6, "{out}");
    let s = t.wait_for(Duration::from_secs(10), "the client's errors", |s| {
        s.contains(&format!(
            "tcpq-scenario ({pid}) netns {}: connect() EADDRNOTAVAIL {failed} ",
            ns.inode()
        ))
    });
    assert!(s.contains("last to 127.0.0.1:9306"), "{s}");
    assert!(
        s.contains(&format!(
            "netns {}: local ports 40000-40003 (4 ports)",
            ns.inode()
        )),
        "{s}"
    );
    assert!(s.contains("Reuse connections"), "no port verdict:\n{s}");
    let top = top_pid(&t);
    unsafe { libc::kill(top as i32, libc::SIGTERM) };
    let _ = child.wait();
}

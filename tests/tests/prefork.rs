//! A prefork server besides nginx: Debian's gunicorn, whose arbiter (the
//! master) opens one listening socket and forks sync workers that all accept
//! from it. The owner is the service, the arbiter, with the workers in
//! `process.holders`; counts equal the namespace's ListenOverflows. Host
//! only (the guests carry no Python).

use std::{
    path::Path,
    process::{Child, Stdio},
    thread::sleep,
    time::Duration,
};

use serde_json::Value;
use tcpq_tests::{children, delta, root_or_skip, wait_until, Agent, Dir, Netns};

const PORT: u16 = 9530;

/// gunicorn with `workers` sync workers and `listen(…, backlog)`, serving a
/// one-line WSGI app; stopped (SIGTERM: the arbiter stops its workers) when
/// dropped.
struct Gunicorn {
    child: Child,
    workers: Vec<u32>,
    _dir: Dir,
}

impl Gunicorn {
    fn start(ns: &Netns, workers: u32, backlog: u32) -> Gunicorn {
        assert!(
            Path::new("/usr/bin/gunicorn").exists(),
            "gunicorn is not installed (cargo xtask setup installs it)"
        );
        let dir = Dir::new("gunicorn");
        std::fs::write(
            dir.path("app.py"),
            "def app(environ, start_response):\n    start_response('200 OK', [])\n    return [b'ok']\n",
        )
        .unwrap();
        let child = ns
            .cmd("/usr/bin/gunicorn")
            .arg("--chdir")
            .arg(&dir.0)
            .args(["--workers", &workers.to_string()])
            .args(["--backlog", &backlog.to_string()])
            .args(["--bind", &format!("127.0.0.1:{PORT}"), "app:app"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        ns.wait_listening(PORT);
        // `ip netns exec` execs gunicorn: the child is the arbiter.
        let arbiter = child.id();
        let workers = wait_until(Duration::from_secs(10), || {
            let w = children(arbiter);
            (w.len() == workers as usize).then_some(w)
        })
        .expect("gunicorn's workers did not start");
        Gunicorn {
            child,
            workers,
            _dir: dir,
        }
    }

    fn signal_workers(&self, signal: i32) {
        for &w in &self.workers {
            // SAFETY: plain kill(2).
            unsafe { libc::kill(w as i32, signal) };
        }
    }
}

impl Drop for Gunicorn {
    fn drop(&mut self) {
        self.signal_workers(libc::SIGCONT);
        // SAFETY: plain kill(2).
        unsafe { libc::kill(self.child.id() as i32, libc::SIGTERM) };
        if wait_until(Duration::from_secs(5), || {
            self.child.try_wait().ok().flatten()
        })
        .is_none()
        {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
        for &w in &self.workers {
            unsafe { libc::kill(w as i32, libc::SIGKILL) };
        }
    }
}

#[test]
fn gunicorn_workers_sharing_one_socket_are_the_arbiters_service() {
    if !root_or_skip() {
        return;
    }
    let ns = Netns::new("guni9530");
    let g = Gunicorn::start(&ns, 2, 2);
    let arbiter = g.child.id();
    // Workers that stop accepting (stuck, as a slow handler would be).
    g.signal_workers(libc::SIGSTOP);
    let agent = Agent::trace(&["--port", &PORT.to_string()]);
    let before = ns.counters();
    let (mut c, _) = ns.scenario(&format!(
        "connect --port {PORT} --clients 24 --syncnt 1 --hold 2.5"
    ));
    c.wait().unwrap();
    let after = ns.counters();
    sleep(Duration::from_millis(200));
    let lines = agent.stop();
    let kernel = delta(&before, &after, "TcpExt.ListenOverflows");
    let ov: Vec<&Value> = lines
        .iter()
        .filter(|l| l["event"] == "listen_overflow" && l["server.port"] == PORT)
        .collect();
    assert!(kernel > 0, "no overflow: {lines:#?}");
    let sum: u64 = ov.iter().map(|l| l["count"].as_u64().unwrap()).sum();
    assert_eq!(sum, kernel, "tcpq vs ListenOverflows: {ov:#?}");
    let mut holders = vec![arbiter];
    holders.extend(&g.workers);
    holders.sort_unstable();
    for l in &ov {
        assert_eq!(l["process.pid"], arbiter, "{l}");
        assert_eq!(l["process.executable.name"], "gunicorn", "{l}");
        assert_eq!(l["process.holders"], serde_json::json!(holders), "{l}");
    }
}

//! Containers for real: Debian's podman, with runc, runs a listener that
//! overflows inside the container's own network namespace (`--network
//! none`). The image is imported from a local rootfs (busybox and the
//! scenario helper with its libraries): no registry. Host only (the guests
//! carry no container runtime).

use std::{collections::HashMap, path::Path, process::Command, thread::sleep, time::Duration};

use serde_json::Value;
use tcpq_tests::{agent_bin, root_or_skip, run, scenario_bin, Agent};

const IMAGE: &str = "localhost/tcpq-scenario:test";

/// podman with runc (crun fails on this host's cgroups) and the ulimits
/// its defaults would exceed here.
fn podman() -> Command {
    let mut c = Command::new("podman");
    c.args(["--runtime", "runc"]);
    c
}

/// A rootfs with busybox and the scenario helper (and the libraries it
/// links), imported as IMAGE.
fn import_image() {
    let root = std::env::temp_dir().join(format!("tcpq-rootfs-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&root);
    std::fs::create_dir_all(root.join("bin")).unwrap();
    std::fs::copy("/bin/busybox", root.join("bin/busybox")).expect("busybox-static");
    std::os::unix::fs::symlink("busybox", root.join("bin/sh")).unwrap();
    let bin = scenario_bin();
    std::fs::copy(&bin, root.join("bin/tcpq-scenario")).unwrap();
    let ldd = run(Command::new("ldd").arg(&bin));
    for lib in ldd.split_whitespace().filter(|w| w.starts_with('/')) {
        let to = root.join(lib.trim_start_matches('/'));
        std::fs::create_dir_all(to.parent().unwrap()).unwrap();
        std::fs::copy(lib, &to).unwrap();
    }
    let tar = root.with_extension("tar");
    run(Command::new("tar")
        .arg("-C")
        .arg(&root)
        .arg("-cf")
        .arg(&tar)
        .arg("."));
    run(podman().arg("import").arg(&tar).arg(IMAGE));
    let _ = std::fs::remove_dir_all(&root);
    let _ = std::fs::remove_file(&tar);
}

/// A container created (not started) running the scenario helper.
struct Container {
    id: String,
}

impl Container {
    /// `args`: the helper's command line after its name, split at whitespace.
    fn create(name: &str, args: &str) -> Container {
        let _ = podman().args(["rm", "-f", "-t", "0", name]).output();
        let id = run(podman()
            .args(["create", "--name", name, "--network", "none"])
            .args([
                "--ulimit",
                "nofile=1024:1024",
                "--ulimit",
                "nproc=1024:1024",
            ])
            .arg(IMAGE)
            .arg("/bin/tcpq-scenario")
            .args(args.split_whitespace()));
        Container {
            id: id.trim().to_string(),
        }
    }

    fn start(&self) {
        run(podman().args(["start", &self.id]));
    }

    fn pid(&self) -> u32 {
        run(podman().args(["inspect", "-f", "{{.State.Pid}}", &self.id]))
            .trim()
            .parse()
            .unwrap()
    }

    /// The container's own TcpExt counters (its network namespace, read
    /// through its process).
    fn counters(&self) -> HashMap<String, u64> {
        let text = std::fs::read_to_string(format!("/proc/{}/net/netstat", self.pid())).unwrap();
        let lines: Vec<&str> = text.lines().collect();
        let mut out = HashMap::new();
        for pair in lines.chunks(2) {
            let [h, v] = pair else { continue };
            for (k, n) in h.split_whitespace().zip(v.split_whitespace()).skip(1) {
                if let Ok(n) = n.parse() {
                    out.insert(k.to_string(), n);
                }
            }
        }
        out
    }

    fn netns(&self) -> u64 {
        std::fs::metadata(format!("/proc/{}/ns/net", self.pid()))
            .map(|m| std::os::unix::fs::MetadataExt::ino(&m))
            .unwrap()
    }
}

impl Drop for Container {
    fn drop(&mut self) {
        let _ = podman().args(["rm", "-f", "-t", "0", &self.id]).output();
    }
}

#[test]
fn a_podman_containers_overflows_name_the_container_and_its_filter_shows_it_alone() {
    if !root_or_skip() {
        return;
    }
    assert!(
        Path::new("/usr/bin/podman").exists(),
        "podman is not installed (cargo xtask setup installs it)"
    );
    import_image();
    // Two containers, each overflowing its own listener (listen(0), six
    // clients with one SYN retry each, held 6 s); the agent is told to show
    // the first one only.
    let tag = std::process::id();
    let a = Container::create(
        &format!("tcpq-a-{tag}"),
        "syn-overflow --port 9400 --clients 6 --syncnt 1 --hold 6",
    );
    let b = Container::create(
        &format!("tcpq-b-{tag}"),
        "syn-overflow --port 9400 --clients 6 --syncnt 1 --hold 6",
    );
    let agent = Agent::trace(&["--container", &a.id[..12]]);
    a.start();
    b.start();
    // The clients are done after ~0.2 s; each SYN was retried once, 1 s
    // later. Read the containers' counters while they still hold.
    sleep(Duration::from_secs(4));
    let (ca, cb) = (a.counters(), b.counters());
    let (na, nb) = (a.netns(), b.netns());
    // `status` (no kernel programs) names the owner, whose pid namespace is
    // the container's, by the host pid the kernel gave it.
    let status =
        run(Command::new(agent_bin()).args(["status", "--port", "9400", "--output", "json"]));
    let lines = agent.stop();
    let rows: Vec<Value> = status
        .lines()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .filter(|r| r["network.netns"] == na)
        .collect();
    assert_eq!(rows.len(), 1, "one listener in the container: {status}");
    let r = &rows[0];
    assert_eq!(r["process.executable.name"], "tcpq-scenario", "{r}");
    assert_eq!(r["container.id"], a.id.as_str(), "{r}");
    let pid = r["process.pid"].as_u64().unwrap();
    let ns = std::fs::metadata(format!("/proc/{pid}/ns/net"))
        .map(|m| std::os::unix::fs::MetadataExt::ino(&m));
    assert_eq!(
        ns.ok(),
        Some(na),
        "the owner's host pid {pid} is in the container's netns: {r}"
    );
    let kernel_a = ca["ListenOverflows"];
    assert!(kernel_a >= 5 && cb["ListenOverflows"] >= 5, "{ca:?} {cb:?}");
    let ov: Vec<&Value> = lines
        .iter()
        .filter(|l| l["event"] == "listen_overflow")
        .collect();
    let sum: u64 = ov.iter().map(|l| l["count"].as_u64().unwrap()).sum();
    assert_eq!(
        sum, kernel_a,
        "tcpq vs the container's ListenOverflows: {ov:#?}"
    );
    for l in &ov {
        assert_eq!(l["container.id"], a.id.as_str(), "{l}");
        assert_eq!(l["container.runtime"], "podman", "{l}");
        assert_eq!(l["network.netns"], na, "{l}");
        assert_eq!(l["process.executable.name"], "tcpq-scenario", "{l}");
        assert_eq!(l["server.port"], 9400, "{l}");
    }
    assert!(
        lines
            .iter()
            .all(|l| l["network.netns"] != nb && l["container.id"] != b.id.as_str()),
        "the other container is filtered out: {lines:#?}"
    );
}

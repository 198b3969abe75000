//! The hooks' documented kernel prototypes (`tcpq_common::protos`) against
//! the running kernel's BTF, as `tcpq-agent doctor` reports them: on the
//! host and in every kernel `cargo xtask vm` boots (not in HOST_ONLY).
//!
//! A function the kernel has must match one documented variant (parameter
//! count, the types of the parameters the BPF programs read, the return
//! type where an exit program reads it); one missing from BTF is reported
//! and passes, as the loader then hooks it by kprobe or not at all.

use std::{io::Write, process::Command};

use tcpq_tests::agent_bin;

/// Every function of the table and the raw tracepoint, as doctor names them.
const CHECKED: &[&str] = &[
    "tcp_conn_request",
    "tcp_v4_syn_recv_sock",
    "tcp_v6_syn_recv_sock",
    "tcp_check_req",
    "inet_csk_accept",
    "__sys_listen",
    "tp inet_sock_set_state",
];

#[test]
fn documented_prototypes_match_this_kernels_btf() {
    if !tcpq_tests::root_or_skip() {
        return;
    }
    if !std::path::Path::new("/sys/kernel/btf/vmlinux").exists() {
        tcpq_tests::skip("kernel BTF (CONFIG_DEBUG_INFO_BTF)");
        return;
    }
    // tracepoint: the section does not depend on the attach mode, and
    // nothing but tracepoints is loaded.
    let out = Command::new(agent_bin())
        .args(["doctor", "--attach", "tracepoint"])
        .output()
        .expect("run tcpq-agent doctor");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let section: Vec<&str> = stdout
        .lines()
        .skip_while(|l| !l.starts_with("prototypes"))
        .skip(1)
        .take_while(|l| l.starts_with("  "))
        .collect();
    // Past libtest's capture: the console of each VM kernel shows it.
    let (major, minor) = tcpq_tests::kernel_version();
    let mut report = String::new();
    for l in &section {
        report += &format!("TCPQ-PROTO {major}.{minor}{l}\n");
    }
    let _ = std::io::stdout().lock().write_all(report.as_bytes());
    assert!(
        !section.is_empty(),
        "doctor printed no prototypes section (exit {:?}):\n{stdout}\n{}",
        out.status.code(),
        String::from_utf8_lossy(&out.stderr)
    );
    // "  NAME (padded to 22) VERDICT..."
    let name = |l: &str| l.get(2..24).unwrap_or("").trim_end().to_string();
    let verdict = |l: &str| l.get(24..).unwrap_or("").trim_start().to_string();
    let names: Vec<String> = section.iter().map(|l| name(l)).collect();
    assert_eq!(names, CHECKED, "{report}");
    let bad: Vec<&&str> = section
        .iter()
        .filter(|l| {
            let v = verdict(l);
            !(v.starts_with("matches") || v.starts_with("not in BTF"))
        })
        .collect();
    assert!(bad.is_empty(), "prototypes BTF does not match:\n{bad:#?}");
    // On every kernel tcpq supports: in BTF, and as documented.
    for always in [
        "tcp_conn_request",
        "tcp_check_req",
        "tp inet_sock_set_state",
    ] {
        assert!(
            section
                .iter()
                .any(|l| name(l) == always && verdict(l).starts_with("matches")),
            "{always}: {report}"
        );
    }
}

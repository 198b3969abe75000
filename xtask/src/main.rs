//! Project tasks: `cargo xtask <setup|trace|test|lint|vm>`.
//!
//! `setup` installs what a fresh machine lacks (idempotent, fast when done);
//! `trace` and `test` run it first, so each is one command from a clean
//! checkout.

mod bench;
mod setup;
mod vm;

use std::{
    path::{Path, PathBuf},
    process::Command,
    time::Duration,
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
    /// Set up, then run every test: lint, unit tests, scenario tests on
    /// this kernel (root), then the scenario tests again inside Debian's 6.1
    /// kernel under QEMU (`vm`, modes auto and kprobe).
    Test,
    /// Set up, then measure what tcpq costs a loaded nginx (ratios).
    Bench,
    /// cargo fmt --check and clippy -D warnings.
    Lint,
    /// Set up, then run the test executables inside Debian's 6.1 cloud
    /// kernel under QEMU (TCG); ARGS after `--` go to each of them.
    Vm {
        /// bzImage to boot instead of the (cached) Debian 6.1 cloud kernel.
        #[arg(long)]
        kernel: Option<PathBuf>,
        /// Kill the VM and fail after SECS.
        #[arg(long, default_value_t = 1800)]
        timeout: u64,
        /// Run every test executable once per mode: the agent's `--attach`
        /// and the hook the tests then expect.
        #[arg(long, value_delimiter = ',', default_value = "auto,kprobe",
              value_parser = vm::ATTACH_MODES)]
        attach: Vec<String>,
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        args: Vec<String>,
    },
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
            let host = test_counting(&["test", "--", "--test-threads=1"]);
            let console = root().join("target/vm/console.log");
            let _ = std::fs::remove_file(&console);
            let in_vm = host.as_ref().ok().map(|_| {
                vm::run(vm::Opts {
                    kernel: None,
                    timeout: Duration::from_secs(1800),
                    attach: vec!["auto".into(), "kprobe".into()],
                    args: vec![],
                })
            });
            let (hp, hf) = host.as_ref().copied().unwrap_or((0, 1));
            let log = std::fs::read_to_string(&console).unwrap_or_default();
            let (vp, vf) = totals(log.lines().filter_map(|l| l.split("test result: ").nth(1)));
            println!("tests: {} passed, {} failed", hp + vp, hf + vf);
            host?;
            in_vm.unwrap_or(Ok(()))
        }
        Task::Bench => {
            setup::all()?;
            cargo(&[
                "build",
                "--release",
                "-p",
                "tcpq-agent",
                "-p",
                "tcpq-tests",
                "--bins",
            ])?;
            bench::run_bench(
                root().join("target/release/tcpq-agent"),
                root().join("target/release/tcpq-scenario"),
            )
        }
        Task::Lint => lint(),
        Task::Vm {
            kernel,
            timeout,
            attach,
            args,
        } => {
            setup::all()?;
            vm::run(vm::Opts {
                kernel,
                timeout: Duration::from_secs(timeout),
                attach,
                args,
            })
        }
    }
}

/// Formatting, then clippy on the host crates and on the kernel crate for
/// its own target (it cannot build for the host), with the pinned toolchain
/// and `RUSTC_BOOTSTRAP=1` for `-Z build-std=core`.
fn lint() -> Result<()> {
    cargo(&["fmt", "--all", "--", "--check"])?;
    cargo(&["clippy", "--all-targets", "--", "-D", "warnings"])?;
    sh(Command::new("rustup")
        .args([
            "run",
            setup::TOOLCHAIN,
            "cargo",
            "clippy",
            "-p",
            "tcpq-ebpf",
        ])
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
        .env("RUSTC_BOOTSTRAP", "1")
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

/// Runs `cargo ARGS` (a test run), echoing its output; returns the totals
/// of every `test result:` line cargo printed.
fn test_counting(args: &[&str]) -> Result<(u64, u64)> {
    use std::io::{BufRead, BufReader};
    let mut cmd = Command::new(env!("CARGO"));
    cmd.args(args)
        .current_dir(root())
        .stdout(std::process::Stdio::piped());
    eprintln!("xtask: $ {}", show(&cmd));
    let mut child = cmd.spawn().context("starting cargo test")?;
    let mut summaries = Vec::new();
    for line in BufReader::new(child.stdout.take().unwrap()).lines() {
        let line = line?;
        println!("{line}");
        if let Some(rest) = line.strip_prefix("test result: ") {
            summaries.push(rest.to_string());
        }
    }
    let status = child.wait()?;
    if !status.success() {
        bail!("`{}` failed ({status})", show(&cmd));
    }
    Ok(totals(summaries.iter().map(String::as_str)))
}

/// (passed, failed) summed over cargo's "ok. 6 passed; 0 failed; ..." lines.
fn totals<'a>(summaries: impl Iterator<Item = &'a str>) -> (u64, u64) {
    summaries.fold((0, 0), |(p, f), s| {
        (p + count(s, " passed"), f + count(s, " failed"))
    })
}

/// The number before `what` in "ok. 6 passed; 0 failed; ...".
fn count(summary: &str, what: &str) -> u64 {
    summary
        .split(';')
        .find_map(|part| {
            part.trim()
                .trim_start_matches("ok. ")
                .trim_start_matches("FAILED. ")
                .strip_suffix(what.trim_start())
        })
        .and_then(|n| n.trim().parse().ok())
        .unwrap_or(0)
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

#[cfg(test)]
mod tests {
    #[test]
    fn counts_cargo_summaries() {
        let s = "ok. 6 passed; 1 failed; 0 ignored; 0 measured; 0 filtered out; finished in 0.02s";
        assert_eq!(super::count(s, " passed"), 6);
        assert_eq!(super::count(s, " failed"), 1);
        assert_eq!(
            super::count("FAILED. 2 passed; 3 failed; 0 ignored", " failed"),
            3
        );
    }
}

//! Project tasks: `cargo xtask <setup|trace|test|lint|vm>`.
//!
//! `setup` installs what a fresh machine lacks (idempotent, fast when done);
//! `trace` and `test` run it first, so each is one command from a clean
//! checkout.

mod bench;
mod fuzz;
mod setup;
mod vm;

use std::{
    path::{Path, PathBuf},
    process::Command,
    time::Duration,
};

use anyhow::{bail, ensure, Context, Result};
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
    /// this kernel (root), then the scenario tests again inside Debian's
    /// 5.10, 6.1 and 6.12 kernels under QEMU (`vm`, `VM_PLAN`).
    Test,
    /// Set up, then measure what tcpq costs a loaded nginx (ratios).
    Bench {
        /// Interleaved rounds of untraced / tcpq / bpftrace per load (the
        /// medians are quoted; this machine swings ±30 % between runs).
        #[arg(long, default_value_t = 7, value_parser = clap::value_parser!(u32).range(3..=50))]
        rounds: u32,
        /// Another tcpq-agent binary (say, a release build of main before
        /// a change), measured in the same rotation: `tcpq / baseline`.
        #[arg(long, value_name = "AGENT")]
        baseline: Option<PathBuf>,
    },
    /// cargo fmt --check and clippy -D warnings.
    Lint,
    /// Build the fuzz targets of `fuzz/` (no cargo-fuzz needed) and run
    /// each for SECS; fails on a crash, naming the input.
    Fuzz {
        /// How long each target runs.
        #[arg(long, default_value_t = 60)]
        seconds: u64,
        /// Only this target (default: all; `fuzz/fuzz_targets/*.rs`).
        #[arg(long)]
        target: Option<String>,
    },
    /// Set up, then run the test executables inside Debian cloud kernels
    /// under QEMU (TCG); ARGS after `--` go to each of them.
    Vm {
        /// Debian kernel series (5.10 = bullseye, 6.1 = bookworm, 6.12 =
        /// trixie, fetched with apt and cached) or a bzImage path; several,
        /// comma-separated, boot one after another (see --jobs).
        #[arg(long, value_delimiter = ',', default_value = "6.1")]
        kernel: Vec<vm::KernelArg>,
        /// Kill a VM and fail it after SECS.
        #[arg(long, default_value_t = 1800)]
        timeout: u64,
        /// Run every test executable once per mode: the agent's `--attach`
        /// and the hook the tests then expect.
        #[arg(long, value_delimiter = ',', default_value = "auto,kprobe",
              value_parser = vm::ATTACH_MODES)]
        attach: Vec<String>,
        /// VMs running at once.
        #[arg(long, default_value_t = 1)]
        jobs: usize,
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
            let started = std::time::Instant::now();
            lint()?;
            // Every parser and formatter under libFuzzer, briefly: a
            // crash a short run finds is a regression (`cargo xtask fuzz`
            // runs them longer).
            fuzz::run(FUZZ_CI_SECONDS, None)?;
            cargo(&["build", "-p", "tcpq-agent", "-p", "tcpq-tests", "--bins"])?;
            // Scenario tests attach kernel programs and change sysctls in
            // their own netns; one at a time keeps timings honest on 2 cores.
            let host = test_counting(&["test", "--", "--test-threads=1"]);
            let host_time = started.elapsed();
            let _ = std::fs::remove_dir_all(root().join("target/vm"));
            // The guests run even when a host test failed: one run shows
            // every kernel's results.
            let in_vm = Some(vm::run(vm::Opts {
                boots: vm_plan(),
                timeout: Duration::from_secs(2400),
                jobs: 2,
                args: vec![],
            }));
            let (mut passed, mut failed, mut skipped) = match &host {
                Ok(t) => (t.passed, t.failed, t.skipped.clone()),
                Err(_) => (0, 1, vec![]),
            };
            eprintln!(
                "xtask: host: {} passed, {} failed, {} skipped in {:.0?} (lint, build, unit and root tests)",
                passed.saturating_sub(skipped.len() as u64),
                failed,
                skipped.len(),
                host_time
            );
            for k in &skipped {
                eprintln!("xtask: host:     skipped {k}");
            }
            let mut vm_ok = true;
            match &in_vm {
                Some(Ok(outcomes)) => {
                    eprintln!("{}", vm::report(outcomes));
                    for o in outcomes {
                        vm_ok &= o.ok;
                        passed += o.passed;
                        failed += o.failed + u64::from(!o.ok && o.failed == 0);
                        skipped.extend(o.skipped.iter().map(|k| format!("{}: {k}", o.label)));
                    }
                }
                Some(Err(e)) => {
                    eprintln!("xtask: vm: {e:#}");
                    vm_ok = false;
                    failed += 1;
                }
                None => {}
            }
            eprintln!("xtask: whole run {:.0?}", started.elapsed());
            // A skipped test returned early: it counts as neither.
            println!(
                "tests: {} skipped (each names the kernel change it needs)",
                skipped.len()
            );
            println!(
                "tests: {} passed, {} failed",
                passed.saturating_sub(skipped.len() as u64),
                failed
            );
            host?;
            ensure!(vm_ok, "vm: not every test executable passed");
            Ok(())
        }
        Task::Bench { rounds, baseline } => {
            if let Some(b) = &baseline {
                ensure!(b.is_file(), "--baseline {}: no such file", b.display());
            }
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
                rounds as usize,
                baseline,
            )
        }
        Task::Lint => lint(),
        Task::Fuzz { seconds, target } => fuzz::run(seconds, target.as_deref()).map(drop),
        Task::Vm {
            kernel,
            timeout,
            attach,
            jobs,
            args,
        } => {
            setup::all()?;
            let outcomes = vm::run(vm::Opts {
                boots: kernel
                    .into_iter()
                    .map(|kernel| vm::Boot {
                        kernel,
                        attach: attach.clone(),
                        only: None,
                    })
                    .collect(),
                timeout: Duration::from_secs(timeout),
                jobs,
                args,
            })?;
            eprintln!("{}", vm::report(&outcomes));
            ensure!(
                outcomes.iter().all(|o| o.ok),
                "vm: not every test executable passed"
            );
            Ok(())
        }
    }
}

/// How long `cargo xtask test` runs each fuzz target (9 targets: 90 s).
const FUZZ_CI_SECONDS: u64 = 10;

/// What `cargo xtask test` boots: every Debian LTS kernel in `auto` mode
/// (fentry where the kernel allows, else kprobe), and 6.1 also with
/// kprobes forced; two VMs at a time.
fn vm_plan() -> Vec<vm::Boot> {
    let boot = |series: &str, attach: &[&str]| vm::Boot {
        kernel: series.parse().expect("a series of vm::SERIES"),
        attach: attach.iter().map(|s| s.to_string()).collect(),
        only: None,
    };
    vec![
        boot("6.1", &["auto"]),
        boot("6.12", &["auto"]),
        boot("5.10", &["auto"]),
        boot("6.1", &["kprobe"]),
    ]
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

/// A host test run's totals.
struct HostTotals {
    passed: u64,
    failed: u64,
    /// `TCPQ-SKIP` lines: tests that returned early, and why.
    skipped: Vec<String>,
}

/// Runs `cargo ARGS` (a test run), echoing its output; returns the totals
/// of every `test result:` line cargo printed.
fn test_counting(args: &[&str]) -> Result<HostTotals> {
    use std::io::{BufRead, BufReader};
    let mut cmd = Command::new(env!("CARGO"));
    cmd.args(args)
        .current_dir(root())
        .stdout(std::process::Stdio::piped());
    eprintln!("xtask: $ {}", show(&cmd));
    let mut child = cmd.spawn().context("starting cargo test")?;
    let mut summaries = Vec::new();
    let mut skipped = Vec::new();
    for line in BufReader::new(child.stdout.take().unwrap()).lines() {
        let line = line?;
        println!("{line}");
        if let Some(rest) = line.strip_prefix("test result: ") {
            summaries.push(rest.to_string());
        }
        if let Some(rest) = line.split(vm::SKIP_MARK).nth(1) {
            skipped.push(rest.trim().to_string());
        }
    }
    let status = child.wait()?;
    if !status.success() {
        bail!("`{}` failed ({status})", show(&cmd));
    }
    let (passed, failed) = totals(summaries.iter().map(String::as_str));
    Ok(HostTotals {
        passed,
        failed,
        skipped,
    })
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

pub fn show(cmd: &Command) -> String {
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

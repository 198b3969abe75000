//! `cargo xtask fuzz`: builds the libFuzzer targets of `fuzz/` and runs
//! each for a while; a crash fails the task and names the input.
//!
//! No cargo-fuzz needed: the fuzz crate is built with plain cargo and the
//! flags cargo-fuzz passes (SanitizerCoverage with inline 8-bit counters,
//! PC table and compare tracing, `--cfg fuzzing`, AddressSanitizer,
//! debug assertions and overflow checks), on the pinned stable toolchain
//! with `RUSTC_BOOTSTRAP=1` for the `-Z` flag. libfuzzer-sys compiles
//! libFuzzer itself with the system C++ compiler. With cargo-fuzz
//! installed, `cd fuzz && RUSTC_BOOTSTRAP=1 AYA_BUILD_SKIP=1 cargo fuzz run
//! TARGET` runs the same targets.
//!
//! Each target starts from its seeds (`fuzz/corpus/TARGET`, committed:
//! real inputs from this host's kernel and /proc, and the unit tests'
//! records) and keeps what it finds in `fuzz/target/corpus/TARGET` (not
//! committed), so later runs resume from there. Crashes land in
//! `fuzz/artifacts/TARGET/`.

use std::{
    io::{BufRead, BufReader},
    path::{Path, PathBuf},
    process::{Command, Stdio},
    time::Instant,
};

use anyhow::{bail, ensure, Context, Result};

use crate::{root, setup};

const TRIPLE: &str = "x86_64-unknown-linux-gnu";

/// What cargo-fuzz 0.12 passes to rustc (`cargo fuzz build`, default
/// sanitizer: address).
const RUSTFLAGS: &[&str] = &[
    "-Cpasses=sancov-module",
    "-Cllvm-args=-sanitizer-coverage-level=4",
    "-Cllvm-args=-sanitizer-coverage-inline-8bit-counters",
    "-Cllvm-args=-sanitizer-coverage-pc-table",
    "-Cllvm-args=-sanitizer-coverage-trace-compares",
    "--cfg",
    "fuzzing",
    "-Cdebug-assertions",
    "-Coverflow-checks",
    "-Cforce-frame-pointers",
    "-Zsanitizer=address",
];

/// One target's run.
#[derive(Debug, Default)]
pub struct Outcome {
    pub target: String,
    pub executions: u64,
    pub seconds: f64,
    /// Coverage features (`ft:`) and corpus size at the end.
    pub features: u64,
    pub corpus: u64,
    /// The crashing (or hanging) input, when there was one.
    pub crash: Option<PathBuf>,
}

/// The targets: one `fuzz/fuzz_targets/NAME.rs` each.
pub fn targets() -> Result<Vec<String>> {
    let dir = root().join("fuzz/fuzz_targets");
    let mut names: Vec<String> = std::fs::read_dir(&dir)
        .with_context(|| format!("reading {}", dir.display()))?
        .flatten()
        .filter_map(|e| {
            let name = e.file_name().into_string().ok()?;
            name.strip_suffix(".rs").map(str::to_string)
        })
        .collect();
    names.sort();
    Ok(names)
}

/// Builds every target (release, instrumented).
pub fn build() -> Result<()> {
    let fuzz = root().join("fuzz");
    crate::sh(
        Command::new("rustup")
            .args(["run", setup::TOOLCHAIN, "cargo", "build", "--release"])
            .args(["--target", TRIPLE, "--bins", "--locked"])
            .arg("--manifest-path")
            .arg(fuzz.join("Cargo.toml"))
            // The fuzz targets need no eBPF object: skip building it.
            .env("AYA_BUILD_SKIP", "1")
            .env("RUSTC_BOOTSTRAP", "1")
            .env("CARGO_ENCODED_RUSTFLAGS", RUSTFLAGS.join("\x1f"))
            .env_remove("RUSTFLAGS")
            .env_remove("RUSTC")
            .env_remove("RUSTUP_TOOLCHAIN")
            .env_remove("CARGO_TARGET_DIR")
            .current_dir(&fuzz),
    )
}

/// Builds, then runs each of `only` (default: every target) for `seconds`;
/// fails if any crashed, after running the rest.
pub fn run(seconds: u64, only: Option<&str>) -> Result<Vec<Outcome>> {
    let all = targets()?;
    let chosen: Vec<String> = match only {
        Some(t) => {
            ensure!(
                all.iter().any(|a| a == t),
                "no fuzz target `{t}` (targets: {})",
                all.join(", ")
            );
            vec![t.to_string()]
        }
        None => all,
    };
    build()?;
    let mut outcomes = Vec::new();
    for t in &chosen {
        let o = run_one(t, seconds)?;
        eprintln!("xtask: fuzz: {}", line(&o));
        outcomes.push(o);
    }
    eprintln!("xtask: fuzz: summary");
    for o in &outcomes {
        eprintln!("xtask: fuzz:   {}", line(o));
    }
    let crashed: Vec<&Outcome> = outcomes.iter().filter(|o| o.crash.is_some()).collect();
    if !crashed.is_empty() {
        for o in &crashed {
            let input = o.crash.as_deref().unwrap_or(Path::new("?"));
            eprintln!(
                "xtask: fuzz: {} crashed on {} (reproduce: {} {})",
                o.target,
                input.display(),
                binary(&o.target).display(),
                input.display()
            );
        }
        bail!(
            "fuzz: {} of {} targets crashed",
            crashed.len(),
            outcomes.len()
        );
    }
    Ok(outcomes)
}

fn binary(target: &str) -> PathBuf {
    root()
        .join("fuzz/target")
        .join(TRIPLE)
        .join("release")
        .join(target)
}

fn line(o: &Outcome) -> String {
    format!(
        "{:<10} {:>11} executions in {:>4.0} s ({:>7.0}/s), {} features, corpus {}: {}",
        o.target,
        o.executions,
        o.seconds,
        o.executions as f64 / o.seconds.max(0.001),
        o.features,
        o.corpus,
        match &o.crash {
            None => "no crash".to_string(),
            Some(p) => format!("CRASH {}", p.display()),
        }
    )
}

fn run_one(target: &str, seconds: u64) -> Result<Outcome> {
    let fuzz = root().join("fuzz");
    let work = fuzz.join("target/corpus").join(target);
    let seeds = fuzz.join("corpus").join(target);
    let artifacts = fuzz.join("artifacts").join(target);
    for d in [&work, &seeds, &artifacts] {
        std::fs::create_dir_all(d).with_context(|| format!("creating {}", d.display()))?;
    }
    let mut cmd = Command::new(binary(target));
    cmd.arg(&work)
        .arg(&seeds)
        .arg(format!("-max_total_time={seconds}"))
        // A hang is a bug too: any input taking 10 s is one.
        .arg("-timeout=10")
        .arg("-print_final_stats=1")
        .arg(format!("-artifact_prefix={}/", artifacts.display()))
        .env("ASAN_OPTIONS", "detect_leaks=0")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .current_dir(&fuzz);
    eprintln!("xtask: fuzz: $ {}", crate::show(&cmd));
    let started = Instant::now();
    let mut child = cmd
        .spawn()
        .with_context(|| format!("starting {}", binary(target).display()))?;
    let mut o = Outcome {
        target: target.to_string(),
        ..Default::default()
    };
    // libFuzzer's status lines are many: keep the tail for a crash report.
    let mut tail: std::collections::VecDeque<String> = Default::default();
    for l in BufReader::new(child.stderr.take().unwrap()).lines() {
        let l = l?;
        parse_line(&l, &mut o);
        if tail.len() == 60 {
            tail.pop_front();
        }
        tail.push_back(l);
    }
    let status = child.wait()?;
    o.seconds = started.elapsed().as_secs_f64();
    if !status.success() && o.crash.is_none() {
        // Killed, or a crash libFuzzer could not write out: the newest
        // artifact, else say so.
        o.crash = Some(newest(&artifacts).unwrap_or_else(|| artifacts.join("(none written)")));
    }
    if o.crash.is_some() {
        for l in &tail {
            eprintln!("    {l}");
        }
    }
    Ok(o)
}

/// Takes what a libFuzzer stderr line says: `#N ... ft: F corp: C/..`,
/// `stat::number_of_executed_units: N`, `Test unit written to PATH`.
fn parse_line(l: &str, o: &mut Outcome) {
    if let Some(n) = l.strip_prefix("stat::number_of_executed_units:") {
        o.executions = n.trim().parse().unwrap_or(o.executions);
    } else if let Some(p) = l.split("Test unit written to ").nth(1) {
        o.crash = Some(PathBuf::from(p.trim()));
    } else if l.starts_with('#') {
        let mut words = l.split_whitespace();
        while let Some(w) = words.next() {
            match w {
                "ft:" => o.features = num(words.next()).unwrap_or(o.features),
                "corp:" => o.corpus = num(words.next()).unwrap_or(o.corpus),
                _ => {}
            }
        }
    }
}

/// "123" or "123/45Kb" → 123.
fn num(w: Option<&str>) -> Option<u64> {
    w?.split('/').next()?.parse().ok()
}

fn newest(dir: &Path) -> Option<PathBuf> {
    std::fs::read_dir(dir)
        .ok()?
        .flatten()
        .filter_map(|e| Some((e.metadata().ok()?.modified().ok()?, e.path())))
        .max()
        .map(|(_, p)| p)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_libfuzzer_output() {
        let mut o = Outcome::default();
        for l in [
            "#2\tINITED cov: 120 ft: 130 corp: 5/1200b exec/s: 0 rss: 40Mb",
            "#524288\tpulse  cov: 310 ft: 900 corp: 88/9Kb lim: 4096 exec/s: 174762 rss: 60Mb",
            "==1== ERROR: libFuzzer: deadly signal",
            "artifact_prefix='/f/artifacts/decode/'; Test unit written to /f/artifacts/decode/crash-da39a3ee",
            "stat::number_of_executed_units: 612345",
        ] {
            parse_line(l, &mut o);
        }
        assert_eq!((o.features, o.corpus, o.executions), (900, 88, 612345));
        assert_eq!(
            o.crash.as_deref(),
            Some(Path::new("/f/artifacts/decode/crash-da39a3ee"))
        );
    }

    #[test]
    fn every_target_is_a_bin_of_the_fuzz_crate() {
        let manifest = std::fs::read_to_string(root().join("fuzz/Cargo.toml")).unwrap();
        for t in targets().unwrap() {
            assert!(
                manifest.contains(&format!("path = \"fuzz_targets/{t}.rs\"")),
                "fuzz/Cargo.toml has no [[bin]] for {t}"
            );
            assert!(
                root()
                    .join("fuzz/corpus")
                    .join(&t)
                    .read_dir()
                    .is_ok_and(|mut d| d.next().is_some()),
                "fuzz/corpus/{t} has no seed"
            );
        }
    }
}

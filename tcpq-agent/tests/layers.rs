//! The folders of `tcpq-agent/src` are the pipeline's stages, and data
//! flows one way: a stage imports only the stages below it. This test
//! reads the sources (the part before `#[cfg(test)]`) and fails on any
//! `crate::STAGE` path that runs upward.

use std::path::Path;

/// Bottom to top.
const STAGES: [&str; 9] = [
    "model",     // the vocabulary: listeners, kinds, report facts
    "kernel",    // BTF, tracefs, hook choice, plan, load
    "source",    // ring-buffer records, sock_diag, counters, kernel maps
    "owner",     // socket → process, cgroup, pod
    "aggregate", // per-listener accounting
    "verdict",   // evidence → cause and remedy
    "export",    // text, JSON, Prometheus, syslog, OTLP
    "engine",    // the pipeline fed live or from a recording
    "cmd",       // the command line and one driver per subcommand
];

fn rank(stage: &str) -> Option<usize> {
    STAGES.iter().position(|s| *s == stage)
}

/// The stage each `crate::` path of `code` names first.
fn imported(code: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut rest = code;
    while let Some(i) = rest.find("crate::") {
        rest = &rest[i + "crate::".len()..];
        if let Some(group) = rest.strip_prefix('{') {
            // Items at the group's first level: `a::b, c::{d, e}, f`.
            let (mut depth, mut start) = (0, true);
            for (j, c) in group.char_indices() {
                match c {
                    '{' => depth += 1,
                    '}' if depth == 0 => break,
                    '}' => depth -= 1,
                    ',' if depth == 0 => start = true,
                    c if start && (c.is_alphabetic() || c == '_') => {
                        out.push(ident(&group[j..]));
                        start = false;
                    }
                    _ => {}
                }
            }
        } else {
            out.push(ident(rest));
        }
    }
    out
}

fn ident(s: &str) -> String {
    s.chars()
        .take_while(|c| c.is_alphanumeric() || *c == '_')
        .collect()
}

fn files(dir: &Path, out: &mut Vec<std::path::PathBuf>) {
    for e in std::fs::read_dir(dir).unwrap().flatten() {
        let p = e.path();
        if p.is_dir() {
            files(&p, out);
        } else if p.extension().is_some_and(|x| x == "rs") {
            out.push(p);
        }
    }
}

#[test]
fn no_stage_imports_a_stage_above_it() {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut all = Vec::new();
    files(&src, &mut all);
    let mut upward = Vec::new();
    let mut staged = 0;
    for f in &all {
        let rel = f.strip_prefix(&src).unwrap();
        let Some(stage) = rel.iter().next().and_then(|s| s.to_str()) else {
            continue;
        };
        let Some(mine) = rank(stage) else { continue };
        staged += 1;
        let text = std::fs::read_to_string(f).unwrap();
        let code = text.split("#[cfg(test)]").next().unwrap();
        for target in imported(code) {
            if rank(&target).is_some_and(|t| t > mine) {
                upward.push(format!("{} -> {target}", rel.display()));
            }
        }
    }
    assert!(
        staged > 50,
        "only {staged} files found under {}",
        src.display()
    );
    assert!(
        upward.is_empty(),
        "imports that run upward:\n{}",
        upward.join("\n")
    );
}

#[test]
fn the_reader_sees_groups_and_plain_paths() {
    let code = "use crate::{model::{A, B}, source::poll, kernel};\nlet x = crate::cmd::run();";
    assert_eq!(imported(code), ["model", "source", "kernel", "cmd"]);
}

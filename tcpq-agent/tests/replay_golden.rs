//! The golden recordings of `tests/recordings/`: real scenarios recorded
//! with `trace --record` on the host and in the VM's kernels, each with
//! the JSON lines the live run printed (`NAME.lines.jsonl`) and the text
//! `replay` printed when it was added (`NAME.txt`). Replaying each must
//! give exactly those, on any machine, without root: every stage from
//! decoding to the exporters is tested on recorded input.

use std::{collections::BTreeMap, path::PathBuf, process::Command};

use serde_json::Value;

fn recordings() -> Vec<(String, PathBuf)> {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../tests/recordings");
    let mut v: Vec<(String, PathBuf)> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .filter_map(|e| {
            let p = e.ok()?.path();
            let name = p
                .file_name()?
                .to_str()?
                .strip_suffix(".rec.jsonl")?
                .to_string();
            Some((name, p))
        })
        .collect();
    v.sort();
    v
}

fn replay(file: &PathBuf, format: &str) -> String {
    let out = Command::new(env!("CARGO_BIN_EXE_tcpq-agent"))
        .arg("replay")
        .arg(file)
        .args(["--output", format])
        .output()
        .expect("run tcpq-agent replay");
    assert!(
        out.status.success(),
        "{}: {}",
        file.display(),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

/// A line with its keys in order.
fn canonical(line: &str) -> String {
    let v: Value = serde_json::from_str(line).unwrap_or_else(|e| panic!("{e}: {line}"));
    let m: BTreeMap<_, _> = v.as_object().expect("an object").iter().collect();
    serde_json::to_string(&m).unwrap()
}

/// Text output as its reports, each with its indented verdict lines, sorted.
fn blocks(text: &str) -> Vec<String> {
    let mut b: Vec<String> = Vec::new();
    for l in text.lines() {
        match b.last_mut() {
            Some(last) if l.starts_with(' ') => {
                last.push('\n');
                last.push_str(l);
            }
            _ => b.push(l.to_string()),
        }
    }
    b.sort();
    b
}

#[test]
fn every_recording_replays_to_its_golden_lines() {
    let all = recordings();
    assert!(!all.is_empty(), "golden recordings missing");
    for (name, file) in all {
        let dir = file.parent().unwrap();
        let want = std::fs::read_to_string(dir.join(format!("{name}.lines.jsonl"))).unwrap();
        let got = replay(&file, "json");
        let mut want: Vec<String> = want.lines().map(canonical).collect();
        let mut got: Vec<String> = got.lines().map(canonical).collect();
        assert!(!want.is_empty(), "{name}: no golden lines");
        // Lines of one flush come in the aggregator's order, which a
        // HashMap decides: compare them as multisets.
        want.sort();
        got.sort();
        assert_eq!(got, want, "{name}: JSON lines differ from the live run's");
        let text = std::fs::read_to_string(dir.join(format!("{name}.txt"))).unwrap();
        assert_eq!(
            blocks(&replay(&file, "text")),
            blocks(&text),
            "{name}: text differs"
        );
    }
}

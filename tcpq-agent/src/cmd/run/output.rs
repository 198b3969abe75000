//! The JSON-lines output of `run`: stdout or a file, reopened on SIGHUP.

use std::{
    fs::{File, OpenOptions},
    io,
    path::PathBuf,
};

use anyhow::{anyhow, Result};

use crate::{
    cmd::config,
    export::sink::{LineOut, RawStdout},
    export::{json, line::Line},
};

/// JSON lines: stdout, or a file reopened on SIGHUP. Each line is written
/// whole or counted lost ([`LineOut`]: one write per line, a newline
/// repair after a partial one), so a full disk costs lines, counted in
/// `tcpq_output_lines_lost_total`, and never glues two together.
pub(super) enum Output {
    Stdout(LineOut<RawStdout>),
    File { path: PathBuf, w: LineOut<File> },
}

impl Output {
    pub(super) fn open(path: Option<PathBuf>) -> Result<Output> {
        Ok(match path {
            None => Output::Stdout(LineOut::new(RawStdout)),
            Some(path) => {
                let f = open_append(&path).map_err(|e| {
                    anyhow!("output file {}: {}", path.display(), config::io_reason(&e))
                })?;
                // A line cut by a full disk (or a crash) before this open:
                // the first write ends it.
                let mid_line = ends_mid_line(&f);
                Output::File {
                    path,
                    w: LineOut::resume(f, mid_line),
                }
            }
        })
    }

    /// Writes the line as JSON.
    pub(super) fn line(&mut self, l: &Line) -> io::Result<()> {
        let line = json::render(l);
        match self {
            Output::Stdout(w) => w.line(&line),
            Output::File { w, .. } => w.line(&line),
        }
    }

    pub(super) fn path(&self) -> Option<&PathBuf> {
        match self {
            Output::Stdout(_) => None,
            Output::File { path, .. } => Some(path),
        }
    }
}

/// Whether a file's last byte is something other than a newline.
fn ends_mid_line(f: &File) -> bool {
    use std::os::unix::fs::FileExt;
    let len = f.metadata().map(|m| m.len()).unwrap_or(0);
    let mut last = [b'\n'];
    len > 0 && f.read_exact_at(&mut last, len - 1).is_ok() && last[0] != b'\n'
}

fn open_append(path: &PathBuf) -> io::Result<File> {
    // Readable too: `ends_mid_line` looks at the last byte.
    OpenOptions::new()
        .create(true)
        .read(true)
        .append(true)
        .open(path)
}

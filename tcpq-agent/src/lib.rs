//! tcpq-agent: which listening socket of which process is losing TCP
//! connections, and why.
//!
//! Data flows one way: kernel (tracepoints, sock_diag) → decode → aggregate
//! → resolve (owner) → export. `main` only parses, dispatches and prints
//! errors as one line.
//!
//! The library holds every stage so the pure parts (decoders, parsers,
//! formatters) can be unit-tested and fuzzed; `main.rs` is a thin binary.

pub mod aggregate;
pub mod cmd;
pub mod engine;
pub mod export;
pub mod kernel;
pub mod model;
pub mod owner;
pub mod source;
pub mod verdict;

use std::process::ExitCode;

use clap::{error::ErrorKind, Parser};

use cmd::{cli, doctor, replay, run, status, top, trace};
use kernel::{btf, privs};

/// The whole command line program: parse, dispatch, print errors as one line.
pub fn main() -> ExitCode {
    std::panic::set_hook(Box::new(|info| {
        let msg = info
            .payload()
            .downcast_ref::<&str>()
            .map(|s| s.to_string())
            .or_else(|| info.payload().downcast_ref::<String>().cloned())
            .unwrap_or_default();
        eprintln!("tcpq-agent: internal error: {}", one_line(&msg));
    }));
    let cli = match cli::Cli::try_parse() {
        Ok(c) => c,
        Err(e) => return usage_error(e),
    };
    if let Some(path) = &cli.btf {
        if let Err(e) = btf::use_file(path) {
            eprintln!("tcpq-agent: {}", one_line(&format!("{e:#}")));
            return ExitCode::FAILURE;
        }
    }
    let allow = cli.allow_missing_caps.clone().unwrap_or_default().0;
    privs::set_allowed(&allow);
    let result = match cli.command {
        cli::Command::Trace(args) => cli::validate("trace", &args).and_then(|()| trace::run(args)),
        cli::Command::Run(args) => run::main(args),
        cli::Command::Top(args) => top::run(args),
        cli::Command::Doctor { attach } => doctor::run(attach),
        cli::Command::Replay { file, output } => replay::run(&file, output),
        cli::Command::Status { port, output } => {
            privs::require("status", privs::Mode::Status).and_then(|()| status::run(output, port))
        }
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("tcpq-agent: {}", one_line(&format!("{e:#}")));
            ExitCode::FAILURE
        }
    }
}

/// Help and version go to stdout as clap renders them; anything else is one
/// line on stderr and exit status 2.
fn usage_error(e: clap::Error) -> ExitCode {
    match e.kind() {
        ErrorKind::DisplayHelp | ErrorKind::DisplayVersion => {
            let _ = e.print();
            ExitCode::SUCCESS
        }
        ErrorKind::DisplayHelpOnMissingArgumentOrSubcommand => {
            let _ = e.print();
            ExitCode::from(2)
        }
        _ => {
            let rendered = e.render().to_string();
            eprintln!("tcpq-agent: {} (see --help)", first_line(&rendered));
            ExitCode::from(2)
        }
    }
}

/// clap's message as one line: its first line, and when that ends with
/// a colon ("required arguments were not provided:") the lines it
/// introduces, up to the usage.
fn first_line(rendered: &str) -> String {
    let mut lines = rendered.lines().map(str::trim);
    let first = lines.next().unwrap_or("invalid arguments");
    let first = first.strip_prefix("error: ").unwrap_or(first);
    if !first.ends_with(':') {
        return first.to_string();
    }
    let listed: Vec<&str> = lines
        .take_while(|l| !l.starts_with("Usage:"))
        .filter(|l| !l.is_empty())
        .collect();
    format!("{first} {}", listed.join(", "))
}

pub fn one_line(s: &str) -> String {
    s.split_whitespace().collect::<Vec<_>>().join(" ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_missing_argument_is_named_on_the_one_line() {
        let e = "error: the following required arguments were not provided:\n  <FILE>\n\nUsage: tcpq-agent replay <FILE>\n\nFor more information, try '--help'.\n";
        assert_eq!(
            first_line(e),
            "the following required arguments were not provided: <FILE>"
        );
        assert_eq!(
            first_line("error: unexpected argument '--x' found\n\n  tip: …\n"),
            "unexpected argument '--x' found"
        );
    }
}

//! The `tcpq-agent` binary: everything lives in the library (`lib.rs`).

fn main() -> std::process::ExitCode {
    tcpq_agent::main()
}

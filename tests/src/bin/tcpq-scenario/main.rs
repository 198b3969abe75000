//! Reproduces listener failure modes on loopback, inside whatever network
//! namespace it is started in (the tests start it with `ip netns exec`).
//! Every mode is bounded in connections and time, then exits. Each prints
//! `ready PID` once set up (listening, if it listens); what else it prints
//! is in its `--help`.
//!
//! The modes, by family: accept- and SYN-queue overflows (`queue`),
//! accept() failing or late (`accept`), connect() failing (`connect`),
//! connections ended badly (`teardown`), listeners and their owning
//! processes (`owners`).
mod accept;
mod connect;
mod owners;
mod queue;
mod sys;
mod teardown;

use std::time::Duration;

use clap::{Parser, Subcommand};

const ENVIRONMENT: &str = "\
Every mode prints `ready PID` once set up (listening, if it listens), then
what its --help says, and exits.

Environment:
  TCPQ_SCENARIO_V6=1     loopback over IPv6 (::1) instead of IPv4 (127.0.0.1)
  TCPQ_SCENARIO_COMM=NAME
                         the process names itself NAME first
                         (prctl(PR_SET_NAME), any bytes, at most 15)";

#[derive(Parser)]
#[command(
    name = "tcpq-scenario",
    about = "Reproduces listener failure modes on loopback, bounded in connections and time",
    after_help = ENVIRONMENT
)]
struct Cli {
    #[command(subcommand)]
    mode: Mode,
}

#[derive(Subcommand)]
enum Mode {
    Listen(queue::ListenArgs),
    /// Overflow the accept queue with SYNs.
    ///
    /// listen(0), never accept; non-blocking clients with TCP_SYNCNT: the
    /// first fills the queue, the rest are dropped at SYN time (each SYN and
    /// each retransmit).
    SynOverflow(queue::ClientsArgs),
    /// The clients of syn-overflow alone.
    ///
    /// Only the clients of syn-overflow, against a listener started
    /// elsewhere.
    Connect(queue::ClientsArgs),
    AckOverflow(queue::AckOverflowArgs),
    SlowAccept(queue::SlowAcceptArgs),
    SynQueue(queue::SynQueueArgs),
    AcceptEmfile(accept::AcceptEmfileArgs),
    AcceptDelay(accept::AcceptDelayArgs),
    Refused(connect::RefusedArgs),
    PortExhaust(connect::PortExhaustArgs),
    TwExhaust(connect::TwExhaustArgs),
    ConnectTimeout(connect::ConnectTimeoutArgs),
    HttpClose(connect::HttpCloseArgs),
    CloseWait(teardown::CloseWaitArgs),
    ResetPeer(teardown::ResetPeerArgs),
    AbortClient(teardown::AbortClientArgs),
    Churn(owners::ChurnArgs),
    /// Two processes sharing a port.
    ///
    /// Two processes (this one and a forked child), each with its own
    /// SO_REUSEPORT listener on the port, never accepting; prints `ready
    /// PID` then `member CHILD`.
    Reuseport(owners::HeldListener),
    ForkListen(owners::ForkListenArgs),
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    // A hostile name for the exporters' tests.
    if let Some(name) = std::env::var_os("TCPQ_SCENARIO_COMM") {
        use std::os::unix::ffi::OsStrExt;
        sys::set_comm(name.as_bytes())?;
    }
    match cli.mode {
        Mode::Listen(a) => queue::listen(a),
        Mode::SynOverflow(a) => queue::syn_overflow(a),
        Mode::Connect(a) => queue::connect(a),
        Mode::AckOverflow(a) => queue::ack_overflow(a),
        Mode::SlowAccept(a) => queue::slow_accept(a),
        Mode::SynQueue(a) => queue::syn_queue(a),
        Mode::AcceptEmfile(a) => accept::accept_emfile(a),
        Mode::AcceptDelay(a) => accept::accept_delay(a),
        Mode::Refused(a) => connect::refused(a),
        Mode::PortExhaust(a) => connect::port_exhaust(a),
        Mode::TwExhaust(a) => connect::tw_exhaust(a),
        Mode::ConnectTimeout(a) => connect::connect_timeout(a),
        Mode::HttpClose(a) => connect::http_close(a),
        Mode::CloseWait(a) => teardown::close_wait(a),
        Mode::ResetPeer(a) => teardown::reset_peer(a),
        Mode::AbortClient(a) => teardown::abort_client(a),
        Mode::Churn(a) => owners::churn(a),
        Mode::Reuseport(a) => owners::reuseport(a),
        Mode::ForkListen(a) => owners::fork_listen(a),
    }
}

/// The line every mode prints once it is set up (the tests wait for it).
fn ready() {
    println!("ready {}", std::process::id());
}

/// A time in seconds (a decimal number), at most 120 s: larger values are
/// cut to 120 (a negative one, `--hold=-1`, to 0).
fn seconds(s: &str) -> Result<Duration, String> {
    let v: f64 = s
        .parse()
        .map_err(|_| format!("`{s}` is not a number of seconds"))?;
    if v.is_nan() {
        return Err(format!("`{s}` is not a number of seconds"));
    }
    Ok(Duration::from_secs_f64(v.clamp(0.0, 120.0)))
}

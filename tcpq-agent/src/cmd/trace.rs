//! `tcpq-agent trace`: the engine with the console sink, until Ctrl-C,
//! `--duration` or the `--pid`'s exit.

use anyhow::{Context, Result};

use crate::{cmd::cli::TraceArgs, engine::engine, export::sink::Console};

pub fn run(args: TraceArgs) -> Result<()> {
    let mut console = Console::stdout(args.output);
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("starting the runtime")?
        .block_on(engine(args.engine(), &mut console, None))
}

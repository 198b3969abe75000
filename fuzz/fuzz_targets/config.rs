//! `run --config FILE` (user → agent): any text is a configuration or an
//! error, never a panic.
#![no_main]
use libfuzzer_sys::fuzz_target;
use tcpq_agent::{cmd::cli::RunArgs, cmd::config};

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    if let Ok(run) = config::from_text(text, &RunArgs::default()) {
        // A configuration never needs a restart to become itself.
        assert!(run.needs_restart(&run.clone()).is_empty());
    }
});

//! `tcpq-agent replay FILE` (a recording from a bug report → agent): any
//! bytes are replayed or refused with an error, never a panic, through
//! the whole pipeline down to the exporters.
#![no_main]
use std::{io, time::SystemTime};

use libfuzzer_sys::fuzz_target;
use tcpq_agent::{
    cmd::replay,
    export::{
        self,
        sink::{Sink, View},
        Report,
    },
    engine::record::Reader,
};

/// Renders each line as text and JSON, as `replay` would print them.
struct Render;

impl Sink for Render {
    fn report(&mut self, r: &Report) -> io::Result<()> {
        let _ = export::render(export::Format::Json, r);
        let _ = export::render(export::Format::Text, r);
        Ok(())
    }
    fn lost(&mut self, _at: SystemTime, _n: u64) -> io::Result<()> {
        Ok(())
    }
    fn flushed(&mut self, _view: &View) -> io::Result<()> {
        Ok(())
    }
}

fuzz_target!(|data: &[u8]| {
    if let Ok((start, mut reader)) = Reader::start(data) {
        let _ = replay::replay(&start, &mut reader, &mut Render);
    }
});

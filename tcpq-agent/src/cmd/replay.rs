//! `tcpq-agent replay FILE`: a recording (`trace --record FILE`) fed
//! through the same pipeline as the live engine, without root, BPF or
//! this host's `/proc`; the lines `trace` would have printed, as text or
//! JSON. Time is the recording's: each line carries its recorded time.

use std::{
    collections::VecDeque,
    io::BufRead,
    path::Path,
    sync::{Arc, Mutex},
    time::{Duration, UNIX_EPOCH},
};

use anyhow::{bail, Context, Result};

use crate::{
    engine::record::{Reader, Start, Step},
    engine::{
        host::Replayed,
        pipeline::{FlushInput, Pipeline},
    },
    export::{
        sink::{Console, Health, Sink},
        Format,
    },
    source::wire::Pod,
};

type Answers = Arc<Mutex<VecDeque<Option<u32>>>>;

pub fn run(file: &Path, output: Format) -> Result<()> {
    let (start, mut reader) = Reader::open(file)?;
    let mut console = Console::stdout(output);
    let p =
        replay(&start, &mut reader, &mut console).with_context(|| format!("{}", file.display()))?;
    eprintln!(
        "tcpq: replayed {} steps recorded by tcpq-agent {} on Linux {}: {} kernel events, {} undecodable; {} report lines not written",
        reader.line.saturating_sub(2),
        start.agent,
        start.kernel,
        p.received,
        p.undecodable,
        console.lines_lost()
    );
    if let Some(l) = crate::engine::summary::missed_line(p.agg.missed_overflows()) {
        eprintln!("{l}");
    }
    Ok(())
}

/// Feeds every step after `start` through a new pipeline into `sink`.
pub fn replay<R: BufRead>(
    start: &Start,
    reader: &mut Reader<R>,
    sink: &mut dyn Sink,
) -> Result<Pipeline> {
    let mut host = Replayed::default();
    match reader.next_step()? {
        Some(Step::Begin { answers }) => host.give(answers)?,
        _ => bail!("line 2 is not the recording's begin step"),
    }
    let mut pipeline = Pipeline::new(start.settings.clone(), &mut host);
    host.finish().context("begin step")?;
    let accepted: Answers = Arc::default();
    if start.settings.accepter {
        let a = accepted.clone();
        pipeline.agg.set_accepter(Box::new(move |_| {
            a.lock()
                .unwrap_or_else(|e| e.into_inner())
                .pop_front()
                .flatten()
        }));
    }
    while let Some(step) = reader.next_step()? {
        let line = reader.line;
        feed(&mut pipeline, &mut host, &accepted, step, sink)
            .with_context(|| format!("line {line}"))?;
    }
    Ok(pipeline)
}

fn feed(
    p: &mut Pipeline,
    host: &mut Replayed,
    accepted: &Answers,
    step: Step,
    sink: &mut dyn Sink,
) -> Result<()> {
    match step {
        Step::Begin { .. } => bail!("a second begin step"),
        Step::Records {
            records, answers, ..
        } => {
            host.give(answers)?;
            p.records(host, records.iter().map(Vec::as_slice));
        }
        Step::Round {
            round, accepted: a, ..
        } => {
            *accepted.lock().unwrap_or_else(|e| e.into_inner()) = a.into();
            p.round(round);
            let left = accepted.lock().unwrap_or_else(|e| e.into_inner()).len();
            if left > 0 {
                bail!(
                    "recording does not match this agent: {left} accepter answers never asked for"
                );
            }
        }
        Step::AcceptErrors {
            counts, answers, ..
        } => {
            host.give(answers)?;
            p.accept_errors(host, &counts);
        }
        Step::Learn { answers, .. } => {
            host.give(answers)?;
            p.learn(host);
        }
        Step::Flush {
            at_ns,
            lost,
            accepts,
            latency,
            answers,
            ..
        } => {
            host.give(answers)?;
            let input = FlushInput {
                at: UNIX_EPOCH + Duration::from_nanos(at_ns),
                lost,
                accepts: accepts.map(pods).transpose()?,
                latency: latency.map(pods).transpose()?,
            };
            p.flush(host, input, Health::default(), sink)
                .context("output")?;
        }
    }
    host.finish()
        .context("recording does not match this agent")?;
    if host.mismatches > 0 {
        bail!(
            "recording does not match this agent: {} questions had no recorded answer (first: {})",
            host.mismatches,
            host.first_mismatch.unwrap_or("?")
        );
    }
    Ok(())
}

fn pods<T: aya::Pod>(v: Vec<(u64, Pod)>) -> Result<Vec<(u64, T)>> {
    v.into_iter().map(|(k, p)| Ok((k, p.get()?))).collect()
}

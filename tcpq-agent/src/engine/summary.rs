//! The exit summary on stderr: what was received and lost, the kernel's
//! own counts, the maps' losses, and with `--bpf-stats` each program's
//! cost.

use tcpq_common::stats;

use crate::{aggregate::Missed, engine::start::Engine};

pub fn print(e: &Engine, lines_lost: u64) {
    let s = &e.session;
    let m = &s.maps;
    let unwritten = match lines_lost {
        0 => String::new(),
        n => format!("; {n} report lines not written (output failed)"),
    };
    eprintln!(
        "tcpq: done: {} kernel events received, {} lost (ring buffer full), {} undecodable, {} kernel read errors; {} socket owners cached{unwritten}",
        s.pipeline.received,
        m.stat(stats::RINGBUF_FULL),
        s.pipeline.undecodable,
        m.stat(stats::READ_ERRORS),
        s.host.resolver.len()
    );
    eprintln!(
        "tcpq: kernel: {} ring-buffer records sent; counted in the kernel: {} news records dropped (counts kept), {} occurrences sent alone (map full)",
        m.stat(stats::RINGBUF_SENT),
        m.stat(stats::NEWS_DROPPED),
        m.stat(stats::STORM_MAP_FULL),
    );
    eprintln!("tcpq: kernel maps: {}", m.losses().summary());
    if let Some(l) = missed_line(s.pipeline.agg.missed_overflows()) {
        eprintln!("{l}");
    }
    if let Some(r) = &s.recorder {
        eprintln!("tcpq: recorded {} steps", r.steps);
    }
    if e.args.bpf_stats {
        for (name, prog) in e.loaded.ebpf.programs() {
            if let Ok(info) = prog.info() {
                let runs = info.run_count();
                let ns = info.run_time().as_nanos() as u64;
                let avg = ns.checked_div(runs).unwrap_or(0);
                eprintln!("tcpq: cost {name} runs={runs} total_ns={ns} ns_per_run={avg}");
            }
        }
    }
}

/// The summary's line for overflows no hook reported (none: no line).
pub fn missed_line(missed: Missed) -> Option<String> {
    (missed.total() > 0).then(|| {
        format!(
            "tcpq: {} listen overflows counted by the kernel (TcpExt.ListenOverflows) that no hook reported: {} reported from the counter on their listener, {} with no listener to name",
            missed.total(),
            missed.named,
            missed.unattributed
        )
    })
}

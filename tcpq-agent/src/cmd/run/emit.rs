//! The sidecar as the engine's sink: report and lost lines to every
//! output, counters, snapshots and health lines, the flush's metrics.

use std::{
    io,
    time::{Duration, Instant, SystemTime},
};

use crate::{
    engine,
    export::labels,
    export::line::{self, Line},
    export::metrics::{Labels, Type},
    export::sink::{AgentFilters, Sink, View},
    export::Report,
    model::Measure,
    source::latency::{self, Summary},
};

use super::Sidecar;

impl Sidecar {
    /// A line to the JSON output; write errors are counted (a full disk
    /// must not stop the metrics).
    fn write(&mut self, l: &Line) {
        match self.out.line(l) {
            Ok(()) if self.out_failing.is_some() => {
                let since = self.out_failing.take().unwrap_or_default();
                eprintln!(
                    "tcpq: output: writing again; {} JSON lines lost meanwhile (tcpq_output_lines_lost_total)",
                    self.lines_lost - since
                );
            }
            Ok(()) => {}
            Err(e) => {
                self.lines_lost += 1;
                if self.out_failing.is_none() {
                    self.out_failing = Some(self.lines_lost - 1);
                    eprintln!(
                        "tcpq: output: {}: JSON lines are lost, and counted in tcpq_output_lines_lost_total, until writes work again",
                        engine::os_reason(&e)
                    );
                }
                let mut r = self.registry();
                r.inc("tcpq_output_errors_total", &Vec::new(), 1);
                r.inc("tcpq_output_lines_lost_total", &Vec::new(), 1);
            }
        }
    }

    /// An event's line to the JSON output, syslog and OTLP.
    fn publish(&mut self, l: &Line) {
        self.write(l);
        self.take_new_syslog();
        if let Some(s) = &self.syslog {
            s.send(l);
        }
        if let Some(o) = &self.otlp {
            o.log(l);
        }
    }

    fn count(&mut self, report: &Report) {
        match report.pending.kind.event().measure() {
            Measure::Counter { name, help } => {
                let mut r = self.registry();
                r.describe(name, help, Type::Counter);
                r.inc(name, &labels::of(report), report.pending.count);
            }
            // Gauges are rebuilt from the engine's state at every flush.
            Measure::Gauge { .. } | Measure::Other => {}
        }
    }

    pub(super) async fn close(&mut self) {
        if self.lines_lost > 0 {
            eprintln!(
                "tcpq: output: {} JSON lines could not be written",
                self.lines_lost
            );
        }
        self.take_new_syslog();
        if let Some(s) = &self.syslog {
            s.flush(Duration::from_secs(5)).await;
        }
        // The last metrics, after the last flush.
        self.export_metrics(true);
        if let Some(o) = &self.otlp {
            o.flush(Duration::from_secs(5)).await;
        }
    }

    /// OTLP metrics from the registry, every `otlp.metrics_interval` (or
    /// now, with `force`).
    fn export_metrics(&mut self, force: bool) {
        let Some(o) = &self.otlp else { return };
        if !force && Instant::now() < self.otlp_next {
            return;
        }
        self.otlp_next = Instant::now() + o.config().metrics_interval;
        let m = {
            let r = self.registry.lock().unwrap_or_else(|e| e.into_inner());
            crate::export::otlp::metrics(&r, self.started, &labels::otlp_attr)
        };
        o.metrics(m);
    }
}

impl Sink for Sidecar {
    fn report(&mut self, r: &Report) -> io::Result<()> {
        self.count(r);
        self.publish(&line::report(r));
        Ok(())
    }

    fn lost(&mut self, at: SystemTime, n: u64) -> io::Result<()> {
        self.publish(&line::lost(at, n));
        Ok(())
    }

    fn latency(&mut self, s: &Summary) {
        let l: Labels = vec![
            ("server_port", s.port.to_string()),
            ("netns", s.netns.to_string()),
        ];
        let counts = latency::fold(s, &latency::PROM_BOUNDS);
        self.registry().observe(
            "tcpq_accept_latency_seconds",
            &l,
            &latency::PROM_BOUNDS,
            &counts,
            s.sum_ns as f64 / 1e9,
        );
    }

    fn flushed(&mut self, view: &View) -> io::Result<()> {
        self.take_new_syslog();
        self.gauges(view);
        self.export_metrics(false);
        Ok(())
    }

    fn snapshot(&mut self, snap: crate::verdict::status::Snapshot, view: &View) -> io::Result<()> {
        for l in line::status(&snap, "listener_snapshot") {
            self.write(&l);
        }
        self.owners = (snap.rows.into_iter())
            .filter_map(|r| Some((r.sock.inode, r.owner?)))
            .collect();
        let h = self.health_line(view);
        self.write(&h);
        Ok(())
    }

    fn reload(&mut self) -> Option<AgentFilters> {
        self.reload_config()
    }
}

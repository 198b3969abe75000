//! SIGHUP in the sidecar: reopen the output, reload the configuration,
//! apply what can change without a restart.

use crate::{cmd::config, export::sink::AgentFilters};

use super::{output::Output, Sidecar};

impl Sidecar {
    /// Reopens the output (logrotate moved it) and reloads the
    /// configuration; returns the agent-side filters to apply.
    pub(super) fn reload_config(&mut self) -> Option<AgentFilters> {
        // The output file first: logrotate moved it, whatever the config says.
        let new = config::Run::load(&self.args);
        let path = match &new {
            Ok(n) => n.output_file.clone(),
            Err(_) => self.out.path().cloned(),
        };
        match Output::open(path) {
            Ok(o) => self.out = o,
            Err(e) => {
                self.registry()
                    .inc("tcpq_output_errors_total", &Vec::new(), 1);
                eprintln!("tcpq: reload: {e:#}; still writing to the old file")
            }
        }
        let new = match new {
            Ok(n) => n,
            Err(e) => {
                eprintln!("tcpq: reload: {e:#}; keeping the running configuration");
                return None;
            }
        };
        let restart = self.cfg.needs_restart(&new);
        if !restart.is_empty() {
            eprintln!(
                "tcpq: reload: {} changed: takes effect at the next restart; keeping the running value",
                restart.join(", ")
            );
        }
        // Only a change restarts the wait (frequent SIGHUPs must not starve
        // the snapshots).
        self.snapshot_every.send_if_modified(|v| {
            let changed = *v != new.snapshot_interval;
            *v = new.snapshot_interval;
            changed
        });
        self.registry().set_limits(new.max_series, new.series_ttl);
        if new.syslog != self.cfg.syslog {
            match new.syslog.clone() {
                None => {
                    self.retire_syslog();
                    self.next_syslog
                        .lock()
                        .unwrap_or_else(|e| e.into_inner())
                        .take();
                    self.cfg.syslog = None;
                    self.registry()
                        .replace_gauges("tcpq_syslog_connected", Vec::new());
                }
                Some(c) => {
                    let slot = self.next_syslog.clone();
                    self.exporters.spawn(async move {
                        match crate::export::syslog::connect_to(&c.target).await {
                            Ok(conn) => {
                                *slot.lock().unwrap_or_else(|e| e.into_inner()) = Some((conn, c))
                            }
                            Err(e) => eprintln!("tcpq: reload: {e:#}; syslog stays as it was"),
                        }
                    });
                }
            }
        }
        let filters = AgentFilters {
            comm: new.detect.comm.clone(),
            cgroup: new.detect.cgroup.clone(),
            container: new.detect.container.clone(),
            accept_latency_ms: new.detect.accept_latency_ms,
        };
        // What needs a restart keeps its running value.
        let mut kept = new;
        kept.detect = crate::cmd::cli::TraceArgs {
            comm: filters.comm.clone(),
            cgroup: filters.cgroup.clone(),
            container: filters.container.clone(),
            accept_latency_ms: filters.accept_latency_ms,
            ..self.cfg.detect.clone()
        };
        kept.metrics_address = self.cfg.metrics_address.clone();
        // The new syslog target counts once its sender is connected.
        if kept.syslog.is_some() {
            kept.syslog = self.cfg.syslog.clone();
        }
        self.cfg = kept;
        eprintln!("tcpq: reloaded the configuration and reopened the output");
        Some(filters)
    }
}

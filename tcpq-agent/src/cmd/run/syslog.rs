//! Switching the sidecar's syslog sender: to a reload's new target once
//! connected, or off.

use std::{sync::Arc, time::Duration};

use crate::export::syslog::Syslog;

use super::Sidecar;

impl Sidecar {
    pub(super) fn take_new_syslog(&mut self) {
        let ready = self
            .next_syslog
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .take();
        let Some((conn, c)) = ready else { return };
        match &mut self.syslog {
            // The queue (what waited for an unreachable old target too)
            // goes to the new one.
            Some(s) => {
                if !s.retarget(c.clone(), conn) {
                    eprintln!("tcpq: reload: syslog busy switching targets; send SIGHUP again");
                    return;
                }
            }
            None => {
                let _in = self.exporters.enter();
                let stats = self.syslog_stats.get_or_insert_with(Arc::default).clone();
                self.syslog = Some(Syslog::with(c.clone(), conn, stats));
            }
        }
        eprintln!("tcpq: sending events to syslog {}", c.target);
        self.cfg.syslog = Some(c);
    }

    /// Stops the syslog sender: it gets 5 s (in the background) to send
    /// what is queued; what is left then is counted as dropped.
    pub(super) fn retire_syslog(&mut self) {
        if let Some(old) = self.syslog.take() {
            self.exporters.spawn(async move {
                old.flush(Duration::from_secs(5)).await;
                drop(old);
            });
        }
    }
}

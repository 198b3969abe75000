//! The sidecar's `agent_health` line: the engine's health and the
//! sidecar's own counters.

use std::time::SystemTime;

use crate::{
    export::line::{self, HealthLine, Line},
    export::sink::View,
};

use super::Sidecar;

impl Sidecar {
    pub(super) fn health_line(&self, view: &View) -> Line<'static> {
        let r = self.registry();
        let (unreadable, owner_failures) = crate::kernel::privs::loss_metrics();
        let total = |s: &crate::kernel::privs::LossSeries| s.iter().map(|(_, _, n)| n).sum::<u64>();
        let syslog = self.syslog_stats.as_ref().map(|s| {
            use std::sync::atomic::Ordering::Relaxed;
            (s.dropped.load(Relaxed), s.truncated.load(Relaxed))
        });
        line::health(&HealthLine {
            at: SystemTime::now(),
            engine: &view.health,
            metric_series: r.series(),
            metric_series_overflowed: r.overflowed(),
            netns_unreadable: total(&unreadable),
            owner_lookup_failures: total(&owner_failures),
            syslog,
            output_lines_lost: self.lines_lost,
        })
    }
}

//! When the on-demand syscall hooks (`sys_exit_accept{,4}`) should be
//! attached: while some listener's accept queue is a quarter full
//! (connections wait: the app is slow, stuck, or its accept() fails), and
//! for [`LINGER`] after the last one drained. Enabling any syscall
//! tracepoint sends every syscall on the host through the tracing slow
//! path, so a healthy host runs without them. Pure, unit-tested.

use std::time::{Duration, Instant};

use crate::{model::ListenerInfo, source::latency};

/// How long the hooks stay attached after the last listener that needed
/// them recovered.
pub const LINGER: Duration = Duration::from_secs(60);

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Change {
    Attach,
    Detach,
}

#[derive(Debug, Default)]
pub struct Demand {
    pub attached: bool,
    last_need: Option<Instant>,
}

/// Whether a listener (of the `--port`, if one was asked) backs up.
pub fn needed<'a>(
    port: Option<u16>,
    mut listeners: impl Iterator<Item = &'a ListenerInfo>,
) -> bool {
    listeners.any(|i| {
        port.is_none_or(|p| p == i.port)
            && latency::worth_measuring(i.queue_len, i.queue_limit, i.port, None)
    })
}

impl Demand {
    /// What to do now that a round said whether any listener `need`s them.
    /// The caller reports back by setting [`Demand::attached`].
    pub fn decide(&mut self, need: bool, now: Instant) -> Option<Change> {
        if need {
            self.last_need = Some(now);
        }
        let wanted = self
            .last_need
            .is_some_and(|t| now.saturating_duration_since(t) < LINGER);
        match (self.attached, wanted) {
            (false, true) => Some(Change::Attach),
            (true, false) => Some(Change::Detach),
            _ => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn info(port: u16, queue_len: u32, queue_limit: u32) -> ListenerInfo {
        ListenerInfo {
            port,
            queue_len,
            queue_limit,
            ..ListenerInfo::unknown()
        }
    }

    #[test]
    fn a_quarter_full_queue_needs_the_hooks() {
        let filling = [info(80, 26, 100), info(81, 0, 100)];
        assert!(needed(None, filling.iter()));
        assert!(needed(Some(80), filling.iter()));
        assert!(!needed(Some(81), filling.iter()));
        assert!(!needed(None, [info(80, 1, 100)].iter()));
    }

    #[test]
    fn attach_on_need_and_detach_a_minute_after() {
        let t0 = Instant::now();
        let mut d = Demand::default();
        assert_eq!(d.decide(false, t0), None);
        assert_eq!(d.decide(true, t0), Some(Change::Attach));
        d.attached = true;
        assert_eq!(d.decide(false, t0 + Duration::from_secs(59)), None);
        assert_eq!(d.decide(false, t0 + LINGER), Some(Change::Detach));
        d.attached = false;
        assert_eq!(d.decide(false, t0 + LINGER * 2), None);
    }
}

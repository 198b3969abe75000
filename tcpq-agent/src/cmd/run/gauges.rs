//! The sidecar's gauges and health counters, rebuilt from the engine's
//! [`View`] at every flush, and the families that exist from the start.

use std::{
    collections::{HashMap, HashSet},
    sync::atomic::Ordering::Relaxed,
    time::{Duration, Instant},
};

use crate::{
    export::metrics::{Labels, Registry, Type},
    export::sink::{Health, View},
    model::{Event, Measure},
};

use super::Sidecar;

/// The families that exist whether or not anything happened yet.
pub(super) fn describe(r: &mut Registry) {
    for (name, help, ty) in [
        ("tcpq_listen_queue_length", "Connections waiting in a listener's accept queue (ss Recv-Q).", Type::Gauge),
        ("tcpq_listen_queue_limit", "A listener's accept-queue limit, min(backlog, somaxconn) (ss Send-Q); summed over an SO_REUSEPORT group's members.", Type::Gauge),
        ("tcpq_local_port_range_size", "Ports in a network namespace's net.ipv4.ip_local_port_range.", Type::Gauge),
        ("tcpq_time_wait_sockets", "Sockets in TIME_WAIT in a network namespace, each holding a local port.", Type::Gauge),
        ("tcpq_accept_latency_seconds", "Time from handshake completion to accept(), measured while a listener's queue fills (or for detect.port).", Type::Histogram),
        ("tcpq_events_received_total", "Kernel events the agent received.", Type::Counter),
        ("tcpq_events_lost_total", "Kernel events lost because the ring buffer was full.", Type::Counter),
        ("tcpq_events_undecodable_total", "Kernel events the agent could not decode.", Type::Counter),
        ("tcpq_overflows_missed_by_hooks_total", "Listen overflows TcpExt.ListenOverflows counted that no hook reported (a kprobe run the kernel skipped); they are reported from the counter, on the listener when one can be named.", Type::Counter),
        ("tcpq_kernel_read_errors_total", "Failed kernel memory reads in the eBPF programs.", Type::Counter),
        ("tcpq_kernel_map_losses_total", "What the kernel's maps could not hold: accept() failures not counted (map=ACCEPT_ERRORS loss=map_full), LRU entries evicted (ACCEPTS, ACCEPT_LATENCY: evicted), accepts missed (ACCEPT_ENTRY: entry_missing).", Type::Counter),
        ("tcpq_ringbuf_fill_ratio", "Most of the kernel-to-agent ring buffer in use since the last report (0-1).", Type::Gauge),
        ("tcpq_probes_attached", "eBPF programs attached, per hook kind.", Type::Gauge),
        ("tcpq_tracked_listeners", "Listeners the agent tracks.", Type::Gauge),
        ("tcpq_owners_cached", "Socket owners the agent holds in memory.", Type::Gauge),
        ("tcpq_metric_series", "Metric series the agent exports.", Type::Gauge),
        ("tcpq_metric_series_overflowed_total", "Updates folded into overflow series because a family reached metrics.max_series.", Type::Counter),
        ("tcpq_output_errors_total", "Failed writes to the JSON-lines output (one per lost line: each line is one write), and failed reopens on SIGHUP.", Type::Counter),
        ("tcpq_output_lines_lost_total", "JSON lines not written (whole or in part: a partial line is ended with a newline at the next write) because the output failed.", Type::Counter),
        ("tcpq_netns_unreadable", "Network namespaces the agent could not read in its last sock_diag round (their listeners are not watched), by reason (open_denied, setns_denied, setns_failed, open_failed; proc_ns_denied: processes whose namespace could not be identified) and missing capability.", Type::Gauge),
        ("tcpq_owner_lookup_failures_total", "Socket owner lookups that failed, by reason (fd_denied: other processes' /proc/PID/fd unreadable) and missing capability.", Type::Counter),
    ] {
        r.describe(name, help, ty);
    }
    for event in Event::ALL {
        match event.measure() {
            Measure::Counter { name, help } => r.describe(name, help, Type::Counter),
            Measure::Gauge { name, help } => r.describe(name, help, Type::Gauge),
            Measure::Other => {}
        }
    }
}

/// Gauge series per family, summed per label set.
type Series = Vec<(Labels, f64)>;

impl Sidecar {
    /// A listener's (or, without one, a port's) labels.
    fn listener_labels(
        &self,
        view: &View,
        netns: u32,
        inode: Option<u32>,
        info: &crate::model::ListenerInfo,
    ) -> Labels {
        let (process, container) = inode
            .map(|i| self.owner_labels(view, i))
            .unwrap_or_default();
        vec![
            (
                "server_address",
                match inode {
                    Some(_) => info.addr.to_string(),
                    None => String::new(),
                },
            ),
            ("server_port", info.port.to_string()),
            ("netns", netns.to_string()),
            ("process", process),
            ("container_id", container),
        ]
    }

    /// Process and container of a listener: the engine's resolver, else
    /// the last snapshot.
    fn owner_labels(&self, view: &View, inode: u32) -> (String, String) {
        let Some(o) = view.resolver.get(inode).or(self.owners.get(&inode)) else {
            return Default::default();
        };
        let placement = o.placement.as_ref();
        let container = placement.and_then(|p| p.container_id.clone());
        (o.name.clone(), container.unwrap_or_default())
    }

    /// The accept-queue and CLOSE_WAIT gauges, per listener: length,
    /// limit, CLOSE_WAIT sockets. Summed per label set: the members of an
    /// SO_REUSEPORT group share address, port and owner.
    fn queue_gauges(&self, view: &View) -> (Series, Series, Series) {
        let mut len: HashMap<Labels, f64> = HashMap::new();
        let mut limit: HashMap<Labels, f64> = HashMap::new();
        for (k, info) in view.agg.listener_infos() {
            let l = self.listener_labels(view, k.netns, Some(k.inode), info);
            *len.entry(l.clone()).or_default() += info.queue_len as f64;
            *limit.entry(l).or_default() += info.queue_limit as f64;
        }
        let mut close_wait: HashMap<Labels, f64> = HashMap::new();
        for (netns, key, info, n) in view.agg.close_wait_now() {
            let l = self.listener_labels(view, netns, key.map(|k| k.inode), &info);
            *close_wait.entry(l).or_default() += n as f64;
        }
        (
            len.into_iter().collect(),
            limit.into_iter().collect(),
            close_wait.into_iter().collect(),
        )
    }

    /// Rebuilds the gauges and the agent's counters after a flush.
    pub(super) fn gauges(&mut self, view: &View) {
        let (len, limit, close_wait) = self.queue_gauges(view);
        let (range, time_wait) = port_gauges(view);
        let syslog = self.syslog_stats.clone();
        let syslog_on = self.syslog.is_some();
        let reg = std::sync::Arc::clone(&self.registry);
        let mut r = reg.lock().unwrap_or_else(|e| e.into_inner());
        r.replace_gauges("tcpq_listen_queue_length", len);
        r.replace_gauges("tcpq_listen_queue_limit", limit);
        if let Measure::Gauge { name, .. } = Event::CloseWait.measure() {
            r.replace_gauges(name, close_wait);
        }
        r.replace_gauges("tcpq_local_port_range_size", range);
        r.replace_gauges("tcpq_time_wait_sockets", time_wait);
        health_metrics(&mut r, &view.health);
        if let Some(s) = syslog {
            syslog_metrics(&mut r, &s, syslog_on);
        }
        if let Some(o) = &self.otlp {
            otlp_metrics(&mut r, &o.stats);
        }
        if self.expired_at.elapsed() >= Duration::from_secs(10) {
            r.expire(Instant::now());
            self.expired_at = Instant::now();
        }
        let none = Vec::new();
        let series = r.series();
        r.set("tcpq_metric_series", &none, series as f64);
        let overflowed = r.overflowed();
        r.set_counter("tcpq_metric_series_overflowed_total", &none, overflowed);
        drop(r);
        if overflowed > 0 && !self.warned_overflow {
            self.warned_overflow = true;
            eprintln!(
                "tcpq: a metric family reached metrics.max_series={}: further label sets are counted in its \"overflow\" series (tcpq_metric_series_overflowed_total)",
                self.cfg.max_series
            );
        }
    }
}

/// Local ports per namespace (of the namespaces with a listener): the
/// range's size and the TIME_WAIT sockets holding ports.
fn port_gauges(view: &View) -> (Series, Series) {
    let mut range: Series = Vec::new();
    let mut time_wait: Series = Vec::new();
    let mut seen = HashSet::new();
    for (k, _) in view.agg.listener_infos() {
        if !seen.insert(k.netns) {
            continue;
        }
        let Some(st) = view.agg.netns_state(k.netns) else {
            continue;
        };
        let l = vec![("netns", k.netns.to_string())];
        if let Some((lo, hi)) = st.sysctls.port_range.filter(|(lo, hi)| lo <= hi) {
            range.push((l.clone(), f64::from(hi - lo) + 1.0));
        }
        if let Some(tw) = st.time_wait {
            time_wait.push((l, tw as f64));
        }
    }
    (range, time_wait)
}

/// The engine's health: events, ring buffer, kernel maps, probes, and what
/// could not be read.
fn health_metrics(r: &mut Registry, h: &Health) {
    let none = Vec::new();
    r.set_counter("tcpq_events_received_total", &none, h.received);
    r.set_counter("tcpq_events_lost_total", &none, h.lost);
    r.set_counter("tcpq_events_undecodable_total", &none, h.undecodable);
    let missed = h.overflows_missed_by_hooks;
    r.set_counter("tcpq_overflows_missed_by_hooks_total", &none, missed);
    r.set_counter("tcpq_kernel_read_errors_total", &none, h.read_errors);
    r.set("tcpq_ringbuf_fill_ratio", &none, h.ringbuf_fill);
    for (map, loss, n) in h.map_losses.rows() {
        let labels = vec![("map", map.to_string()), ("loss", loss.to_string())];
        r.set_counter("tcpq_kernel_map_losses_total", &labels, n);
    }
    r.replace_gauges(
        "tcpq_probes_attached",
        h.probes
            .iter()
            .map(|(k, n)| (vec![("kind", k.clone())], *n as f64))
            .collect(),
    );
    r.set("tcpq_tracked_listeners", &none, h.tracked_listeners as f64);
    r.set("tcpq_owners_cached", &none, h.owners_cached as f64);
    let (unreadable, owner_failures) = crate::kernel::privs::loss_metrics();
    let labels = |reason: &'static str, cap: String| -> Labels {
        vec![("reason", reason.to_string()), ("capability", cap)]
    };
    r.replace_gauges(
        "tcpq_netns_unreadable",
        unreadable
            .into_iter()
            .map(|(reason, cap, n)| (labels(reason, cap), n as f64))
            .collect(),
    );
    for (reason, cap, n) in owner_failures {
        r.set_counter("tcpq_owner_lookup_failures_total", &labels(reason, cap), n);
    }
}

/// The syslog sender's counters.
fn syslog_metrics(r: &mut Registry, s: &crate::export::syslog::Stats, syslog_on: bool) {
    let none = Vec::new();
    r.describe(
        "tcpq_syslog_messages_total",
        "Messages written to the syslog target.",
        Type::Counter,
    );
    r.describe(
        "tcpq_syslog_dropped_total",
        "Syslog messages lost: the queue was full, a datagram the socket refused as too big, or still queued when the sender stopped (exit, or syslog removed by a reload, after 5 s of draining).",
        Type::Counter,
    );
    r.describe(
        "tcpq_syslog_truncated_total",
        "Syslog messages sent cut to fit one datagram (largest fields shortened or removed, \"truncated\": true in the JSON).",
        Type::Counter,
    );
    r.describe(
        "tcpq_syslog_queue_length",
        "Syslog messages queued, not yet written.",
        Type::Gauge,
    );
    r.describe(
        "tcpq_syslog_connected",
        "1 while the syslog target is connected.",
        Type::Gauge,
    );
    r.set_counter("tcpq_syslog_messages_total", &none, s.sent.load(Relaxed));
    r.set_counter("tcpq_syslog_dropped_total", &none, s.dropped.load(Relaxed));
    r.set_counter(
        "tcpq_syslog_truncated_total",
        &none,
        s.truncated.load(Relaxed),
    );
    r.set(
        "tcpq_syslog_queue_length",
        &none,
        s.queued.load(Relaxed) as f64,
    );
    if syslog_on {
        r.set(
            "tcpq_syslog_connected",
            &none,
            s.connected.load(Relaxed) as u8 as f64,
        );
    }
}

/// The OTLP exporter's counters.
fn otlp_metrics(r: &mut Registry, st: &crate::export::otlp::Stats) {
    let none = Vec::new();
    for (name, help, v) in [
        (
            "tcpq_otlp_log_records_total",
            "Log records the OTLP receiver accepted.",
            st.log_records.load(Relaxed),
        ),
        (
            "tcpq_otlp_log_records_dropped_total",
            "Log records dropped: OTLP queue full, or the receiver failed after retries.",
            st.log_records_dropped.load(Relaxed),
        ),
        (
            "tcpq_otlp_metric_exports_total",
            "OTLP metrics exports the receiver accepted.",
            st.metric_exports.load(Relaxed),
        ),
        (
            "tcpq_otlp_metric_exports_dropped_total",
            "OTLP metrics exports dropped (one still being retried, or failed after retries).",
            st.metric_exports_dropped.load(Relaxed),
        ),
        (
            "tcpq_otlp_failed_requests_total",
            "OTLP requests that failed (each retry counts).",
            st.failed_requests.load(Relaxed),
        ),
        (
            "tcpq_otlp_sent_bytes_total",
            "Protobuf payload bytes of accepted OTLP requests.",
            st.bytes.load(Relaxed),
        ),
    ] {
        r.describe(name, help, Type::Counter);
        r.set_counter(name, &none, v);
    }
}

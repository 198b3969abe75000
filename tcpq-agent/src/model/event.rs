//! Event kinds without their dimensions, and how each is measured in
//! Prometheus: exhaustive matches, so a new kind fails to compile until it
//! has a name and a metric.

/// An event kind without its dimensions: its name and its metric.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Event {
    ListenOverflow,
    ListenDrop,
    SynQueueDrop,
    SyncookiesSent,
    SynackRetransmit,
    ResetSent,
    ResetReceived,
    ConnectError,
    AcceptError,
    CloseWait,
    AcceptLatency,
}

/// How an event appears in Prometheus.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Measure {
    /// A counter family: `count` is added.
    Counter {
        name: &'static str,
        help: &'static str,
    },
    /// A gauge family: `count` is the value now.
    Gauge {
        name: &'static str,
        help: &'static str,
    },
    /// Not from report lines (accept latency comes from the kernel's
    /// histograms).
    Other,
}

impl Event {
    /// Every event, for exporters that declare their families up front.
    pub const ALL: [Event; 11] = [
        Event::ListenOverflow,
        Event::ListenDrop,
        Event::SynQueueDrop,
        Event::SyncookiesSent,
        Event::SynackRetransmit,
        Event::ResetSent,
        Event::ResetReceived,
        Event::ConnectError,
        Event::AcceptError,
        Event::CloseWait,
        Event::AcceptLatency,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Event::ListenOverflow => "listen_overflow",
            Event::ListenDrop => "listen_drop",
            Event::SynQueueDrop => "syn_queue_drop",
            Event::SyncookiesSent => "syncookies_sent",
            Event::SynackRetransmit => "synack_retransmit",
            Event::ResetSent => "reset_sent",
            Event::ResetReceived => "reset_received",
            Event::ConnectError => "connect_error",
            Event::AcceptError => "accept_error",
            Event::CloseWait => "close_wait",
            Event::AcceptLatency => "accept_latency",
        }
    }

    /// The event's metric (no catch-all: a new event needs one to compile).
    pub fn measure(self) -> Measure {
        let counter = |name, help| Measure::Counter { name, help };
        match self {
            Event::ListenOverflow => counter(
                "tcpq_listen_overflows_total",
                "Connections lost to a full accept queue (ListenOverflows).",
            ),
            Event::ListenDrop => counter(
                "tcpq_listen_drops_total",
                "Connections a listener dropped for another reason than a full accept queue.",
            ),
            Event::SynQueueDrop => counter(
                "tcpq_syn_queue_drops_total",
                "SYNs dropped because the SYN (half-open) queue was full.",
            ),
            Event::SyncookiesSent => counter(
                "tcpq_syncookies_sent_total",
                "SYNs answered with a syncookie because the SYN queue was full.",
            ),
            Event::SynackRetransmit => counter(
                "tcpq_synack_retransmits_total",
                "SYN-ACKs retransmitted by a listener.",
            ),
            Event::ResetSent => counter("tcpq_resets_sent_total", "RSTs sent, by reason."),
            Event::ResetReceived => {
                counter("tcpq_resets_received_total", "RSTs received, by TCP state.")
            }
            Event::ConnectError => {
                counter("tcpq_connect_errors_total", "connect() failures, by errno.")
            }
            Event::AcceptError => {
                counter("tcpq_accept_errors_total", "accept() failures, by errno.")
            }
            Event::CloseWait => Measure::Gauge {
                name: "tcpq_close_wait_sockets",
                help:
                    "Accepted connections in CLOSE_WAIT: the peer closed, the application has not.",
            },
            Event::AcceptLatency => Measure::Other,
        }
    }
}

//! The agent's vocabulary: listeners, what happened to them, and reports.

pub mod event;
pub mod report;

use std::net::IpAddr;

pub use crate::model::event::{Event, Measure};

/// A listening socket, host-wide: its network namespace and socket inode.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ListenerKey {
    pub netns: u32,
    pub inode: u32,
}

/// What is known about a listener at the moment of the last observation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ListenerInfo {
    pub addr: IpAddr,
    pub port: u16,
    /// Accept-queue length (`sk_ack_backlog`, `ss` Recv-Q).
    pub queue_len: u32,
    /// Accept-queue limit, `min(backlog, somaxconn)` (`ss` Send-Q).
    pub queue_limit: u32,
}

impl ListenerInfo {
    /// No listener known.
    pub fn unknown() -> Self {
        Self {
            addr: IpAddr::from([0, 0, 0, 0]),
            port: 0,
            queue_len: 0,
            queue_limit: 0,
        }
    }

    /// The kernel's `sk_acceptq_is_full()`: `listen(fd, N)` holds N+1.
    pub fn queue_full(&self) -> bool {
        self.queue_len > self.queue_limit
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Stage {
    /// The SYN was dropped: no SYN-ACK, the client retransmits its SYN.
    Syn,
    /// The handshake's final ACK was refused.
    Ack,
}

impl Stage {
    pub fn as_str(self) -> &'static str {
        match self {
            Stage::Syn => "syn",
            Stage::Ack => "ack",
        }
    }
}

/// Which hook saw it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Source {
    Tracepoint,
    SockDiag,
    Fentry,
    Kprobe,
}

impl Source {
    pub fn as_str(self) -> &'static str {
        match self {
            Source::Tracepoint => "tracepoint",
            Source::SockDiag => "sock_diag",
            Source::Fentry => "fentry",
            Source::Kprobe => "kprobe",
        }
    }
}

/// What the kernel did after refusing a handshake's final ACK
/// (`tcp_check_req`, per `net.ipv4.tcp_abort_on_overflow`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Next {
    /// Not observed (SYN stage, or no hook on `tcp_check_req`).
    Unknown,
    /// The ACK was dropped; the SYN-ACK will be retransmitted.
    AckDropped,
    /// The client got a RST (`connection reset by peer`).
    Reset,
}

impl Next {
    pub fn as_str(self) -> Option<&'static str> {
        match self {
            Next::Unknown => None,
            Next::AckDropped => Some("ack_dropped"),
            Next::Reset => Some("reset"),
        }
    }
}

/// What a report line is about.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Kind {
    /// A connection lost to a full accept queue.
    ListenOverflow(Stage, Next),
    /// A connection dropped by a listener for another reason (memory, a
    /// failed child socket, ...).
    ListenDrop(Stage),
    /// A SYN dropped because the SYN (half-open) queue was full
    /// (`syn_queue_full`, TCPReqQFullDrop) or, with syncookies off, 3/4 of
    /// `tcp_max_syn_backlog` was in use (`max_syn_backlog`).
    SynQueueDrop {
        reason: &'static str,
    },
    /// SYNs answered with a syncookie: the SYN queue was full.
    SyncookiesSent,
    SynackRetransmit,
    /// A RST; `reason` is tcpq's class, `kernel_reason` the kernel's
    /// `sk_rst_reason` name.
    ResetSent {
        reason: &'static str,
        kernel_reason: String,
    },
    /// A RST arrived on a socket in `state`.
    ResetReceived {
        state: &'static str,
    },
    /// connect() failed with `error` (an errno name).
    ConnectError {
        error: String,
    },
    /// accept() failed with `error` (an errno name).
    AcceptError {
        error: String,
    },
    /// Sockets sitting in CLOSE_WAIT (a gauge: `count` is how many now).
    CloseWait,
    /// Time from handshake completion to accept(): `count` accepts.
    AcceptLatency,
}

impl Kind {
    pub fn event(&self) -> Event {
        match self {
            Kind::ListenOverflow(..) => Event::ListenOverflow,
            Kind::ListenDrop(_) => Event::ListenDrop,
            Kind::SynQueueDrop { .. } => Event::SynQueueDrop,
            Kind::SyncookiesSent => Event::SyncookiesSent,
            Kind::SynackRetransmit => Event::SynackRetransmit,
            Kind::ResetSent { .. } => Event::ResetSent,
            Kind::ResetReceived { .. } => Event::ResetReceived,
            Kind::ConnectError { .. } => Event::ConnectError,
            Kind::AcceptError { .. } => Event::AcceptError,
            Kind::CloseWait => Event::CloseWait,
            Kind::AcceptLatency => Event::AcceptLatency,
        }
    }

    pub fn event_name(&self) -> &'static str {
        self.event().name()
    }

    pub fn next(&self) -> Option<&'static str> {
        match self {
            Kind::ListenOverflow(_, n) => n.as_str(),
            _ => None,
        }
    }

    pub fn stage(&self) -> Option<Stage> {
        match self {
            Kind::ListenOverflow(s, _) | Kind::ListenDrop(s) => Some(*s),
            Kind::SynQueueDrop { .. } | Kind::SyncookiesSent => Some(Stage::Syn),
            _ => None,
        }
    }

    /// tcpq's reason class, for kinds that have one.
    pub fn reason(&self) -> Option<&str> {
        match self {
            Kind::SynQueueDrop { reason } | Kind::ResetSent { reason, .. } => Some(reason),
            _ => None,
        }
    }

    /// The errno name, for kinds that have one.
    pub fn error(&self) -> Option<&str> {
        match self {
            Kind::ConnectError { error } | Kind::AcceptError { error } => Some(error),
            _ => None,
        }
    }

    /// Whether the line is about a connection's two ends rather than a
    /// listener (`info` then holds the local end, `peer` the remote one).
    pub fn is_connection(&self) -> bool {
        matches!(self, Kind::ResetReceived { .. })
    }
}

pub use crate::model::report::Fact;

/// Aggregated counts for one listener (or, for socket-less resets, one local
/// endpoint) and one kind, over one interval.
#[derive(Debug, Clone, PartialEq)]
pub struct Pending {
    pub kind: Kind,
    pub source: Source,
    pub key: Option<ListenerKey>,
    /// The network namespace, also for lines without a listener.
    pub netns: Option<u32>,
    /// The listener; for `connect_error` the destination; for
    /// `reset_received` the local end.
    pub info: ListenerInfo,
    pub count: u64,
    /// For resets: the last peer seen.
    pub peer: Option<(IpAddr, u16)>,
    /// The process, when the kernel told (connect() in process context).
    pub pid: Option<u32>,
    /// A socket whose owner is the line's owner (for lines that are not
    /// about a listener).
    pub inode: Option<u32>,
    /// Kind-specific facts, typed and unrounded.
    pub attrs: Vec<Fact>,
}

/// TCP state names as `ss` prints them.
pub fn state_name(state: u16) -> &'static str {
    match state {
        1 => "ESTABLISHED",
        2 => "SYN_SENT",
        3 => "SYN_RECV",
        4 => "FIN_WAIT1",
        5 => "FIN_WAIT2",
        6 => "TIME_WAIT",
        7 => "CLOSE",
        8 => "CLOSE_WAIT",
        9 => "LAST_ACK",
        10 => "LISTEN",
        11 => "CLOSING",
        12 => "NEW_SYN_RECV",
        _ => "UNKNOWN",
    }
}

/// errno names for the errors tcpq reports (libc's values for the target:
/// errno numbers are ABI, but differ between architectures).
pub fn errno_name(errno: u32) -> String {
    const NAMES: &[(i32, &str)] = &[
        (libc::ENFILE, "ENFILE"),
        (libc::EMFILE, "EMFILE"),
        (libc::EADDRNOTAVAIL, "EADDRNOTAVAIL"),
        (libc::ECONNRESET, "ECONNRESET"),
        (libc::ETIMEDOUT, "ETIMEDOUT"),
        (libc::ECONNREFUSED, "ECONNREFUSED"),
        (libc::EHOSTUNREACH, "EHOSTUNREACH"),
        (libc::ENETUNREACH, "ENETUNREACH"),
        (libc::ENOMEM, "ENOMEM"),
        (libc::ENOBUFS, "ENOBUFS"),
        (libc::EINVAL, "EINVAL"),
        (libc::EINTR, "EINTR"),
        (libc::ECONNABORTED, "ECONNABORTED"),
        (libc::EPERM, "EPERM"),
        (libc::EPROTO, "EPROTO"),
    ];
    NAMES
        .iter()
        .find(|(n, _)| *n as u32 == errno)
        .map(|(_, s)| s.to_string())
        .unwrap_or_else(|| format!("errno {errno}"))
}
/// `addr:port`, IPv6 in brackets.
pub fn endpoint(addr: std::net::IpAddr, port: u16) -> String {
    match addr {
        std::net::IpAddr::V6(a) => format!("[{a}]:{port}"),
        a => format!("{a}:{port}"),
    }
}

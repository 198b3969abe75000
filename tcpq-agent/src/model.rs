//! The agent's vocabulary: listeners, what happened to them, and reports.

use std::net::IpAddr;

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
    /// A connection dropped by a listener while its accept queue was not
    /// full (SYN queue full, memory, a failed child socket, ...).
    ListenDrop(Stage),
    SynackRetransmit,
    /// A RST; `reason` is tcpq's class, `kernel_reason` the kernel's
    /// `sk_rst_reason` name.
    ResetSent {
        reason: &'static str,
        kernel_reason: String,
    },
}

impl Kind {
    pub fn event_name(&self) -> &'static str {
        match self {
            Kind::ListenOverflow(..) => "listen_overflow",
            Kind::ListenDrop(_) => "listen_drop",
            Kind::SynackRetransmit => "synack_retransmit",
            Kind::ResetSent { .. } => "reset_sent",
        }
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
            _ => None,
        }
    }
}

/// Aggregated counts for one listener (or, for socket-less resets, one local
/// endpoint) and one kind, over one interval.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Pending {
    pub kind: Kind,
    pub source: Source,
    pub key: Option<ListenerKey>,
    pub info: ListenerInfo,
    pub count: u64,
    /// For resets: the last peer seen.
    pub peer: Option<(IpAddr, u16)>,
}

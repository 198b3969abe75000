//! The record every kernel hook writes to the ring buffer.

/// What a kernel hook saw. Values are part of the wire format: append only.
#[repr(u32)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum EventKind {
    /// The final ACK of a handshake was refused because the listener's accept
    /// queue was full (`skb:kfree_skb` reason `TCP_LISTEN_OVERFLOW`).
    ListenOverflowAck = 1,
    /// A SYN-ACK was retransmitted for a pending connection of a listener
    /// (`tcp:tcp_retransmit_synack`).
    SynackRetransmit = 2,
    /// A RST was sent for a listener, a request sock or for no socket at all
    /// (`tcp:tcp_send_reset`); `detail` holds the kernel's `sk_rst_reason`.
    ResetSent = 3,
    /// `tcp_conn_request` dropped a SYN: the listener's `sk_drops` moved
    /// across the call (kprobe/fentry). `aux` holds the SYN-queue length and
    /// `ack_backlog`/`max_ack_backlog` the accept queue, both at entry.
    SynDrop = 4,
    /// `tcp_conn_request` answered a SYN with a syncookie because the SYN
    /// queue was full (or `tcp_syncookies=2`). Fields as for `SynDrop`.
    SyncookieSent = 5,
    /// A RST arrived on a socket (`tcp:tcp_receive_reset`): the socket's
    /// endpoints, its state at that moment and its inode.
    ResetReceived = 6,
    /// A connect() failed: SYN_SENT → CLOSE (`sock:inet_sock_set_state`).
    /// `detail` holds the errno; `aux` the thread-group id of the caller
    /// when the failure happened inside connect() itself (no local port
    /// left: EADDRNOTAVAIL), else 0 (timeout, refused: softirq context).
    ConnectError = 7,
    /// A socket started listening (CLOSE → LISTEN, in listen() itself):
    /// `aux` holds the caller's thread-group id — the owner, known without
    /// a /proc scan.
    ListenerUp = 8,
    /// A listener closed (LISTEN → CLOSE): its owner can be forgotten.
    ListenerDown = 9,
}

impl EventKind {
    pub const fn from_u32(v: u32) -> Option<Self> {
        match v {
            1 => Some(Self::ListenOverflowAck),
            2 => Some(Self::SynackRetransmit),
            3 => Some(Self::ResetSent),
            4 => Some(Self::SynDrop),
            5 => Some(Self::SyncookieSent),
            6 => Some(Self::ResetReceived),
            7 => Some(Self::ConnectError),
            8 => Some(Self::ListenerUp),
            9 => Some(Self::ListenerDown),
            _ => None,
        }
    }
}

/// One kernel event. 104 bytes, 8-byte aligned, no padding.
///
/// Addresses are in network byte order as the kernel stores them; ports are
/// in host byte order. `netns` is the network namespace's inode number (what
/// `ls -L -i /proc/PID/ns/net` shows) and `sock_ino` the socket's inode (what
/// `ss -e` shows as `ino:` and `/proc/PID/fd` as `socket:[N]`).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Event {
    /// `bpf_ktime_get_ns()`: CLOCK_MONOTONIC.
    pub ts_ns: u64,
    /// An [`EventKind`].
    pub kind: u32,
    /// Kind-specific: the reset reason for [`EventKind::ResetSent`];
    /// `net.ipv4.tcp_max_syn_backlog` for [`EventKind::SynDrop`] and
    /// [`EventKind::SyncookieSent`]; the errno for [`EventKind::ConnectError`].
    pub detail: u32,
    pub netns: u32,
    pub sock_ino: u32,
    /// AF_INET (2) or AF_INET6 (10); 0 when the hook had no socket.
    pub family: u16,
    pub lport: u16,
    pub rport: u16,
    /// The socket's TCP state (kernel numbering, which is ABI-stable); for
    /// [`EventKind::SynDrop`] and [`EventKind::SyncookieSent`] the netns'
    /// `net.ipv4.tcp_syncookies` instead.
    pub state: u16,
    pub laddr: [u8; 16],
    pub raddr: [u8; 16],
    /// `sk_ack_backlog` of the listener: current accept-queue length.
    pub ack_backlog: u32,
    /// `sk_max_ack_backlog` of the listener: `min(backlog, somaxconn)`.
    pub max_ack_backlog: u32,
    /// Kernel address of the socket: only an identity within one boot.
    pub sk: u64,
    /// A [`Source`]: which kind of hook produced the event.
    pub source: u32,
    /// Kind-specific: SYN-queue length for [`EventKind::SynDrop`]; the
    /// outcome ([`outcome`]) for [`EventKind::ListenOverflowAck`].
    pub aux: u32,
    /// For a kind counted in the kernel ([`flags::COUNTED`]): how many times
    /// it happened on CPU [`Event::cpu`] for this key since the key was
    /// created (cumulative: the agent takes differences); else 1.
    pub count: u64,
    /// The CPU whose per-CPU value this is (counted kinds).
    pub cpu: u32,
    /// [`flags`] bits.
    pub flags: u32,
}

/// [`Event::flags`].
pub mod flags {
    /// A record of a kind counted in the kernel (`STORM` map): `count` is
    /// that CPU's running total for the key. Through the ring buffer it is
    /// only news ("this key moved"); the counts come from reading the map.
    pub const COUNTED: u32 = 1;
    /// A [`super::EventKind::ListenerUp`] whose `detail` is the backlog the
    /// application passed to listen() (as an i32), before the somaxconn cap.
    pub const BACKLOG_REQUESTED: u32 = 2;
}

/// Which kind of kernel hook produced an event.
#[repr(u32)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Source {
    Tracepoint = 0,
    Fentry = 1,
    Kprobe = 2,
}

impl Source {
    pub const fn from_u32(v: u32) -> Option<Self> {
        match v {
            0 => Some(Self::Tracepoint),
            1 => Some(Self::Fentry),
            2 => Some(Self::Kprobe),
            _ => None,
        }
    }
}

/// What `tcp_check_req` did with an ACK that overflowed the accept queue.
pub mod outcome {
    /// Not observed (the hook on `tcp_check_req` is not attached).
    pub const UNKNOWN: u32 = 0;
    /// `tcp_abort_on_overflow=0`: the ACK was dropped, the request kept;
    /// the SYN-ACK will be retransmitted.
    pub const ACK_DROPPED: u32 = 1;
    /// `tcp_abort_on_overflow=1`: the client got a RST.
    pub const RESET: u32 = 2;
}

impl Event {
    pub const SIZE: usize = core::mem::size_of::<Event>();

    /// All fields zero (kind 0 is no kind: fill it in).
    pub const fn default_zeroed() -> Event {
        Event {
            ts_ns: 0,
            kind: 0,
            detail: 0,
            netns: 0,
            sock_ino: 0,
            family: 0,
            lport: 0,
            rport: 0,
            state: 0,
            laddr: [0; 16],
            raddr: [0; 16],
            ack_backlog: 0,
            max_ack_backlog: 0,
            sk: 0,
            source: 0,
            aux: 0,
            count: 0,
            cpu: 0,
            flags: 0,
        }
    }
}

#[cfg(feature = "user")]
unsafe impl aya::Pod for Event {}

const _: () = assert!(core::mem::size_of::<Event>() == 104);

/// Per-listener accept statistics, aggregated in the kernel (map
/// `ACCEPTS`, keyed by the listener's kernel address): an accept on a
/// healthy server costs one map update, never a ring-buffer record.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct AcceptStats {
    /// Successful `accept()`s since the entry was created.
    pub accepts: u64,
    /// Largest accept-queue length seen at an accept (including the one
    /// being accepted).
    pub depth_max: u32,
    pub netns: u32,
    pub sock_ino: u32,
    pub _pad: u32,
}

#[cfg(feature = "user")]
unsafe impl aya::Pod for AcceptStats {}

const _: () = assert!(core::mem::size_of::<AcceptStats>() == 24);

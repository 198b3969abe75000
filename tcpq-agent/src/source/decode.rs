//! Ring-buffer bytes → typed kernel events. Pure: no kernel, no root.
//!
//! Every record has the same fields; what the kind-specific ones (`detail`,
//! `aux`, `state`, some `flags`) mean depends on the kind
//! (`tcpq_common::event`). They are read here, once, into [`Happened`]:
//! later stages match on it and never see the raw fields.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use tcpq_common::{config::AF_INET6, event, Event, EventKind};

use crate::model::{ListenerInfo, ListenerKey, Source};

/// One kernel event: what every kind has, and [`Happened`], what this kind
/// alone carries.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KernelEvent {
    pub ts_ns: u64,
    /// The listener, when the hook had one.
    pub listener: Option<(ListenerKey, ListenerInfo)>,
    pub local: (IpAddr, u16),
    pub peer: (IpAddr, u16),
    pub source: Source,
    pub netns: u32,
    /// The socket's inode (0: none, or already closed).
    pub inode: u32,
    /// A kind counted in the kernel: this record is news (the counts come
    /// from the `STORM` map), not an occurrence to add.
    pub counted: bool,
    pub what: Happened,
}

/// What a hook saw, one variant per [`EventKind`], with that kind's fields.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Happened {
    /// A handshake's final ACK refused (the listener is in
    /// [`KernelEvent::listener`], its accept queue as the hook saw it).
    ListenOverflowAck {
        outcome: Outcome,
    },
    SynackRetransmit,
    /// A RST sent; `reason` is the kernel's `sk_rst_reason` (named through
    /// the kernel's BTF, see `kernel::plan`).
    ResetSent {
        reason: u32,
    },
    /// `tcp_conn_request` dropped a SYN.
    SynDrop(SynArrival),
    /// `tcp_conn_request` answered a SYN with a syncookie.
    SyncookieSent(SynArrival),
    /// A RST arrived on a socket in TCP `state` (kernel numbering); the
    /// process that accepted the connection, when the kernel saw it.
    ResetReceived {
        state: u16,
        accepter: Option<u32>,
    },
    /// connect() failed with `errno`; the caller, when the failure happened
    /// in its own context (no local port left).
    ConnectError {
        errno: u32,
        pid: Option<u32>,
    },
    /// A socket started listening, in listen() called by `pid`;
    /// `backlog_requested` is what listen() asked for, before the somaxconn
    /// cap (kernels with `__sys_listen` hooked).
    ListenerUp {
        pid: Option<u32>,
        backlog_requested: Option<i32>,
    },
    ListenerDown,
}

/// What `tcp_check_req` did with an ACK that overflowed the accept queue
/// (`tcpq_common::event::outcome`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// The hook on `tcp_check_req` is not attached.
    NotObserved,
    /// `tcp_abort_on_overflow=0`: the ACK was dropped, the request kept.
    AckDropped,
    /// `tcp_abort_on_overflow=1`: the client got a RST.
    Reset,
}

/// The SYN queue and its settings when a SYN reached `tcp_conn_request`
/// (the accept queue is in [`KernelEvent::listener`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SynArrival {
    pub syn_queue_len: u32,
    /// `net.ipv4.tcp_max_syn_backlog`.
    pub max_syn_backlog: u32,
    /// `net.ipv4.tcp_syncookies` (0, 1 or 2).
    pub syncookies: u8,
}

impl Happened {
    pub fn kind(&self) -> EventKind {
        match self {
            Happened::ListenOverflowAck { .. } => EventKind::ListenOverflowAck,
            Happened::SynackRetransmit => EventKind::SynackRetransmit,
            Happened::ResetSent { .. } => EventKind::ResetSent,
            Happened::SynDrop(_) => EventKind::SynDrop,
            Happened::SyncookieSent(_) => EventKind::SyncookieSent,
            Happened::ResetReceived { .. } => EventKind::ResetReceived,
            Happened::ConnectError { .. } => EventKind::ConnectError,
            Happened::ListenerUp { .. } => EventKind::ListenerUp,
            Happened::ListenerDown => EventKind::ListenerDown,
        }
    }
}

#[derive(Debug, PartialEq, Eq)]
pub enum DecodeError {
    Short(usize),
    UnknownKind(u32),
    UnknownSource(u32),
    /// A [`EventKind::ListenOverflowAck`] whose outcome is none of
    /// `tcpq_common::event::outcome`.
    UnknownOutcome(u32),
    /// A SYN event whose `tcp_syncookies` does not fit the sysctl.
    Syncookies(u16),
}

impl std::fmt::Display for DecodeError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            DecodeError::Short(n) => {
                write!(f, "event record of {n} bytes, expected {}", Event::SIZE)
            }
            DecodeError::UnknownKind(k) => write!(f, "unknown event kind {k}"),
            DecodeError::UnknownSource(s) => write!(f, "unknown event source {s}"),
            DecodeError::UnknownOutcome(o) => write!(f, "unknown ACK overflow outcome {o}"),
            DecodeError::Syncookies(s) => write!(f, "tcp_syncookies {s} out of range"),
        }
    }
}

pub fn decode(bytes: &[u8]) -> Result<KernelEvent, DecodeError> {
    if bytes.len() < Event::SIZE {
        return Err(DecodeError::Short(bytes.len()));
    }
    // SAFETY: length checked; Event is plain old data; read_unaligned copes
    // with any alignment of the ring-buffer slice.
    let ev: Event = unsafe { std::ptr::read_unaligned(bytes.as_ptr().cast()) };
    decode_event(&ev)
}

pub fn decode_event(ev: &Event) -> Result<KernelEvent, DecodeError> {
    let kind = EventKind::from_u32(ev.kind).ok_or(DecodeError::UnknownKind(ev.kind))?;
    let source = match event::Source::from_u32(ev.source) {
        Some(event::Source::Tracepoint) => Source::Tracepoint,
        Some(event::Source::Fentry) => Source::Fentry,
        Some(event::Source::Kprobe) => Source::Kprobe,
        None => return Err(DecodeError::UnknownSource(ev.source)),
    };
    let v6 = ev.family == AF_INET6;
    let local = (addr(&ev.laddr, v6), ev.lport);
    let peer = (addr(&ev.raddr, v6), ev.rport);
    let listener = (ev.sock_ino != 0 || ev.sk != 0).then_some((
        ListenerKey {
            netns: ev.netns,
            inode: ev.sock_ino,
        },
        ListenerInfo {
            addr: local.0,
            port: ev.lport,
            queue_len: ev.ack_backlog,
            queue_limit: ev.max_ack_backlog,
        },
    ));
    Ok(KernelEvent {
        ts_ns: ev.ts_ns,
        listener,
        local,
        peer,
        source,
        netns: ev.netns,
        inode: ev.sock_ino,
        counted: ev.flags & event::flags::COUNTED != 0,
        what: happened(kind, ev)?,
    })
}

/// The kind-specific fields, read as `tcpq_common::event` documents them.
fn happened(kind: EventKind, ev: &Event) -> Result<Happened, DecodeError> {
    // A thread-group id of 0: the hook ran outside any caller's context.
    let pid = (ev.aux != 0).then_some(ev.aux);
    Ok(match kind {
        EventKind::ListenOverflowAck => Happened::ListenOverflowAck {
            outcome: match ev.aux {
                event::outcome::UNKNOWN => Outcome::NotObserved,
                event::outcome::ACK_DROPPED => Outcome::AckDropped,
                event::outcome::RESET => Outcome::Reset,
                o => return Err(DecodeError::UnknownOutcome(o)),
            },
        },
        EventKind::SynackRetransmit => Happened::SynackRetransmit,
        EventKind::ResetSent => Happened::ResetSent { reason: ev.detail },
        EventKind::SynDrop => Happened::SynDrop(syn_arrival(ev)?),
        EventKind::SyncookieSent => Happened::SyncookieSent(syn_arrival(ev)?),
        EventKind::ResetReceived => Happened::ResetReceived {
            state: ev.state,
            accepter: pid,
        },
        EventKind::ConnectError => Happened::ConnectError {
            errno: ev.detail,
            pid,
        },
        EventKind::ListenerUp => Happened::ListenerUp {
            pid,
            backlog_requested: (ev.flags & event::flags::BACKLOG_REQUESTED != 0)
                .then_some(ev.detail as i32),
        },
        EventKind::ListenerDown => Happened::ListenerDown,
    })
}

fn syn_arrival(ev: &Event) -> Result<SynArrival, DecodeError> {
    Ok(SynArrival {
        syn_queue_len: ev.aux,
        max_syn_backlog: ev.detail,
        syncookies: u8::try_from(ev.state).map_err(|_| DecodeError::Syncookies(ev.state))?,
    })
}

fn addr(b: &[u8; 16], v6: bool) -> IpAddr {
    if v6 {
        let a = Ipv6Addr::from(*b);
        // Dual-stack listeners see IPv4 clients as ::ffff:a.b.c.d.
        a.to_ipv4_mapped().map(IpAddr::V4).unwrap_or(IpAddr::V6(a))
    } else {
        IpAddr::V4(Ipv4Addr::new(b[0], b[1], b[2], b[3]))
    }
}

#[cfg(test)]
pub mod tests {
    use super::*;

    pub fn raw(kind: EventKind) -> Event {
        Event {
            ts_ns: 1_000,
            kind: kind as u32,
            detail: 0,
            netns: 4026531840,
            sock_ino: 777,
            family: 2,
            lport: 8080,
            rport: 0,
            state: 10,
            laddr: [127, 0, 0, 1, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0],
            raddr: [0; 16],
            ack_backlog: 2,
            max_ack_backlog: 1,
            sk: 0xffff_8880_0000_1000,
            source: 0,
            aux: 0,
            count: 1,
            cpu: 0,
            flags: 0,
        }
    }

    fn bytes(ev: &Event) -> Vec<u8> {
        // SAFETY: Event is repr(C) with no padding.
        unsafe { std::slice::from_raw_parts((ev as *const Event).cast::<u8>(), Event::SIZE) }
            .to_vec()
    }

    #[test]
    fn decodes_a_listener_overflow() {
        let ev = decode(&bytes(&raw(EventKind::ListenOverflowAck))).unwrap();
        let (key, info) = ev.listener.unwrap();
        assert_eq!(
            key,
            ListenerKey {
                netns: 4026531840,
                inode: 777
            }
        );
        assert_eq!(info.addr, "127.0.0.1".parse::<IpAddr>().unwrap());
        assert_eq!((info.port, info.queue_len, info.queue_limit), (8080, 2, 1));
        assert!(info.queue_full());
    }

    fn what(e: &Event) -> Result<Happened, DecodeError> {
        decode(&bytes(e)).map(|ev| ev.what)
    }

    #[test]
    fn a_new_listener_carries_its_caller_and_the_backlog_it_asked_for() {
        let mut r = raw(EventKind::ListenerUp);
        let up = |pid, backlog_requested| {
            Ok(Happened::ListenerUp {
                pid,
                backlog_requested,
            })
        };
        assert_eq!(what(&r), up(None, None));
        r.aux = 4242;
        assert_eq!(what(&r), up(Some(4242), None));
        r.detail = 8192;
        assert_eq!(what(&r), up(Some(4242), None), "no flag: not a backlog");
        r.flags = event::flags::BACKLOG_REQUESTED;
        assert_eq!(what(&r), up(Some(4242), Some(8192)));
        r.detail = -1i32 as u32;
        assert_eq!(what(&r), up(Some(4242), Some(-1)));
        // Only a listener's birth carries it.
        let mut o = raw(EventKind::ListenerDown);
        o.flags = event::flags::BACKLOG_REQUESTED;
        (o.detail, o.aux) = (8192, 4242);
        assert_eq!(what(&o), Ok(Happened::ListenerDown));
    }

    #[test]
    fn an_ack_overflow_carries_its_outcome() {
        let mut e = raw(EventKind::ListenOverflowAck);
        let with = |outcome| Ok(Happened::ListenOverflowAck { outcome });
        for (aux, outcome) in [
            (event::outcome::UNKNOWN, Outcome::NotObserved),
            (event::outcome::ACK_DROPPED, Outcome::AckDropped),
            (event::outcome::RESET, Outcome::Reset),
        ] {
            e.aux = aux;
            assert_eq!(what(&e), with(outcome));
        }
        e.aux = 3;
        assert_eq!(what(&e), Err(DecodeError::UnknownOutcome(3)));
        assert_eq!(
            DecodeError::UnknownOutcome(3).to_string(),
            "unknown ACK overflow outcome 3"
        );
    }

    #[test]
    fn syn_events_carry_the_syn_queue_and_its_settings() {
        let arrival = SynArrival {
            syn_queue_len: 7,
            max_syn_backlog: 128,
            syncookies: 1,
        };
        for (kind, want) in [
            (EventKind::SynDrop, Happened::SynDrop(arrival)),
            (EventKind::SyncookieSent, Happened::SyncookieSent(arrival)),
        ] {
            let mut e = raw(kind);
            (e.aux, e.detail, e.state) = (7, 128, 1);
            assert_eq!(what(&e), Ok(want));
            e.state = 256;
            assert_eq!(what(&e), Err(DecodeError::Syncookies(256)));
        }
        assert_eq!(
            DecodeError::Syncookies(256).to_string(),
            "tcp_syncookies 256 out of range"
        );
    }

    #[test]
    fn resets_and_connect_errors_carry_their_fields() {
        let mut e = raw(EventKind::ResetSent);
        (e.detail, e.aux, e.state) = (5, 42, 1);
        assert_eq!(what(&e), Ok(Happened::ResetSent { reason: 5 }));

        let mut e = raw(EventKind::ResetReceived);
        (e.detail, e.aux, e.state) = (9, 4242, 1);
        let got = what(&e);
        assert_eq!(
            got,
            Ok(Happened::ResetReceived {
                state: 1,
                accepter: Some(4242)
            })
        );
        e.aux = 0;
        assert_eq!(
            what(&e),
            Ok(Happened::ResetReceived {
                state: 1,
                accepter: None
            })
        );

        let mut e = raw(EventKind::ConnectError);
        (e.detail, e.aux) = (libc::EADDRNOTAVAIL as u32, 42);
        assert_eq!(
            what(&e),
            Ok(Happened::ConnectError {
                errno: libc::EADDRNOTAVAIL as u32,
                pid: Some(42)
            })
        );
        (e.detail, e.aux) = (libc::ETIMEDOUT as u32, 0);
        assert_eq!(
            what(&e),
            Ok(Happened::ConnectError {
                errno: libc::ETIMEDOUT as u32,
                pid: None
            })
        );
    }

    #[test]
    fn kinds_without_fields_ignore_them() {
        for (kind, want) in [
            (EventKind::SynackRetransmit, Happened::SynackRetransmit),
            (EventKind::ListenerDown, Happened::ListenerDown),
        ] {
            let mut e = raw(kind);
            (e.detail, e.aux, e.state) = (1, 2, 3);
            assert_eq!(what(&e), Ok(want));
        }
    }

    #[test]
    fn every_kind_decodes_to_its_own_variant() {
        for k in 0..=20 {
            let Some(kind) = EventKind::from_u32(k) else {
                continue;
            };
            assert_eq!(what(&raw(kind)).unwrap().kind(), kind);
        }
    }

    #[test]
    fn the_common_fields_and_the_counted_flag() {
        let mut e = raw(EventKind::SynDrop);
        (e.rport, e.source) = (5555, 2);
        e.raddr[..4].copy_from_slice(&[10, 0, 0, 9]);
        let ev = decode(&bytes(&e)).unwrap();
        assert_eq!(
            (ev.ts_ns, ev.netns, ev.inode, ev.source, ev.counted),
            (1_000, 4026531840, 777, Source::Kprobe, false)
        );
        assert_eq!(ev.local, ("127.0.0.1".parse().unwrap(), 8080));
        assert_eq!(ev.peer, ("10.0.0.9".parse().unwrap(), 5555));
        e.flags = event::flags::COUNTED;
        assert!(decode(&bytes(&e)).unwrap().counted);
    }

    #[test]
    fn maps_v4_mapped_v6_and_plain_v6() {
        let mut e = raw(EventKind::SynackRetransmit);
        e.family = 10;
        e.laddr = "::ffff:10.1.2.3".parse::<Ipv6Addr>().unwrap().octets();
        assert_eq!(
            decode_event(&e).unwrap().local.0,
            "10.1.2.3".parse::<IpAddr>().unwrap()
        );
        e.laddr = Ipv6Addr::LOCALHOST.octets();
        assert_eq!(
            decode_event(&e).unwrap().local.0,
            "::1".parse::<IpAddr>().unwrap()
        );
    }

    #[test]
    fn rejects_short_records_and_unknown_kinds_and_sources() {
        assert_eq!(decode(&[0u8; 10]), Err(DecodeError::Short(10)));
        let mut e = raw(EventKind::ResetSent);
        e.kind = 99;
        assert_eq!(decode(&bytes(&e)), Err(DecodeError::UnknownKind(99)));
        e.kind = 0;
        assert_eq!(decode(&bytes(&e)), Err(DecodeError::UnknownKind(0)));
        let mut e = raw(EventKind::ResetSent);
        e.source = 3;
        assert_eq!(decode(&bytes(&e)), Err(DecodeError::UnknownSource(3)));
    }

    #[test]
    fn socketless_events_have_no_listener() {
        let mut e = raw(EventKind::ResetSent);
        e.sock_ino = 0;
        e.sk = 0;
        assert!(decode_event(&e).unwrap().listener.is_none());
    }
}

//! Ring-buffer bytes → typed kernel events. Pure: no kernel, no root.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use tcpq_common::{config::AF_INET6, event, Event, EventKind};

use crate::model::{ListenerInfo, ListenerKey, Source};

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KernelEvent {
    pub ts_ns: u64,
    pub kind: EventKind,
    /// The listener, when the hook had one.
    pub listener: Option<(ListenerKey, ListenerInfo)>,
    pub local: (IpAddr, u16),
    pub peer: (IpAddr, u16),
    pub detail: u32,
    pub aux: u32,
    pub source: Source,
    /// The socket's TCP state (or, for SYN events, the syncookies setting).
    pub state: u16,
    pub netns: u32,
    /// The socket's inode (0: none, or already closed).
    pub inode: u32,
    /// A kind counted in the kernel: this record is news (the counts come
    /// from the `STORM` map), not an occurrence to add.
    pub counted: bool,
    /// For a listener born while tracing: the backlog its listen() asked
    /// for, before the somaxconn cap (kernels with `__sys_listen` hooked).
    pub backlog_requested: Option<i32>,
}

#[derive(Debug, PartialEq, Eq)]
pub enum DecodeError {
    Short(usize),
    UnknownKind(u32),
    UnknownSource(u32),
}

impl std::fmt::Display for DecodeError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            DecodeError::Short(n) => {
                write!(f, "event record of {n} bytes, expected {}", Event::SIZE)
            }
            DecodeError::UnknownKind(k) => write!(f, "unknown event kind {k}"),
            DecodeError::UnknownSource(s) => write!(f, "unknown event source {s}"),
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
        kind,
        listener,
        local,
        peer,
        detail: ev.detail,
        aux: ev.aux,
        source,
        state: ev.state,
        netns: ev.netns,
        inode: ev.sock_ino,
        counted: ev.flags & event::flags::COUNTED != 0,
        backlog_requested: (kind == EventKind::ListenerUp
            && ev.flags & event::flags::BACKLOG_REQUESTED != 0)
            .then_some(ev.detail as i32),
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

    #[test]
    fn a_new_listener_carries_the_backlog_it_asked_for() {
        let mut r = raw(EventKind::ListenerUp);
        assert_eq!(decode(&bytes(&r)).unwrap().backlog_requested, None);
        r.detail = 8192;
        r.flags = event::flags::BACKLOG_REQUESTED;
        assert_eq!(decode(&bytes(&r)).unwrap().backlog_requested, Some(8192));
        r.detail = -1i32 as u32;
        assert_eq!(decode(&bytes(&r)).unwrap().backlog_requested, Some(-1));
        // Only a listener's birth carries it.
        let mut o = raw(EventKind::ListenOverflowAck);
        o.flags = event::flags::BACKLOG_REQUESTED;
        assert_eq!(decode(&bytes(&o)).unwrap().backlog_requested, None);
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
    fn rejects_short_records_and_unknown_kinds() {
        assert_eq!(decode(&[0u8; 10]), Err(DecodeError::Short(10)));
        let mut e = raw(EventKind::ResetSent);
        e.kind = 99;
        assert_eq!(decode(&bytes(&e)), Err(DecodeError::UnknownKind(99)));
    }

    #[test]
    fn socketless_events_have_no_listener() {
        let mut e = raw(EventKind::ResetSent);
        e.sock_ino = 0;
        e.sk = 0;
        assert!(decode_event(&e).unwrap().listener.is_none());
    }
}

//! TCP listeners as the kernel reports them over NETLINK_SOCK_DIAG (what
//! `ss -lnt` reads): accept-queue length and limit, the listener's drop
//! counter (`sk_drops`) and its inode. Works on every kernel; the caller
//! chooses the network namespace by running this on a thread inside it.

use anyhow::{bail, Result};
use std::{
    io,
    net::IpAddr,
    os::fd::{AsRawFd, FromRawFd},
};

const SOCK_DIAG_BY_FAMILY: u16 = 20;
const NLM_F_REQUEST: u16 = 0x1;
const NLM_F_DUMP: u16 = 0x300;
const NLMSG_ERROR: u16 = 2;
const NLMSG_DONE: u16 = 3;
const INET_DIAG_SKMEMINFO: u16 = 7;
const SK_MEMINFO_DROPS: usize = 8;
const NLMSG_HDRLEN: usize = 16;
const INET_DIAG_MSG_LEN: usize = 72;
pub const TCPF_LISTEN: u32 = 1 << 10;
/// Also request socks (TCP_NEW_SYN_RECV): the SYN queue.
pub const TCPF_SYN_RECV: u32 = 1 << 3;
pub const TCPF_CLOSE_WAIT: u32 = 1 << 8;
pub const STATE_SYN_RECV: u8 = 3;
pub const STATE_CLOSE_WAIT: u8 = 8;

/// One socket from a dump.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct DiagSock {
    pub family: u8,
    pub state: u8,
    pub local: IpAddr,
    pub lport: u16,
    /// The remote port (0 for a listener).
    pub rport: u16,
    /// The remote address as the kernel stores it: IPv4 in the first 4
    /// bytes, IPv6 (a v4-mapped peer of an AF_INET6 socket included) in 16.
    pub peer: [u8; 16],
    /// For a listener: accept-queue length (`sk_ack_backlog`).
    pub rqueue: u32,
    /// For a listener: accept-queue limit (`sk_max_ack_backlog`).
    pub wqueue: u32,
    pub uid: u32,
    pub inode: u32,
    pub cookie: u64,
    /// `sk_drops`, when the kernel sent SK_MEMINFO.
    pub drops: Option<u32>,
}

impl DiagSock {
    /// The connection as the kernel's accepted-socket record keys it.
    pub fn peer_key(&self, netns: u32) -> tcpq_common::accepted::PeerKey {
        tcpq_common::accepted::PeerKey {
            netns,
            family: self.family as u16,
            lport: self.lport,
            rport: self.rport,
            _pad: 0,
            raddr: self.peer,
        }
    }
}

/// The request: `nlmsghdr` + `inet_diag_req_v2` asking for `states` of
/// `family` with SK_MEMINFO.
pub fn request(family: u8, states: u32, seq: u32) -> Vec<u8> {
    let len = NLMSG_HDRLEN + 56;
    let mut b = Vec::with_capacity(len);
    b.extend_from_slice(&(len as u32).to_ne_bytes());
    b.extend_from_slice(&SOCK_DIAG_BY_FAMILY.to_ne_bytes());
    b.extend_from_slice(&(NLM_F_REQUEST | NLM_F_DUMP).to_ne_bytes());
    b.extend_from_slice(&seq.to_ne_bytes());
    b.extend_from_slice(&0u32.to_ne_bytes());
    b.push(family);
    b.push(libc::IPPROTO_TCP as u8);
    b.push(1 << (INET_DIAG_SKMEMINFO - 1));
    b.push(0);
    b.extend_from_slice(&states.to_ne_bytes());
    b.resize(len, 0); // inet_diag_sockid: all wildcards
    b
}

/// What one `recv` of a dump held.
#[derive(Debug, Default)]
pub struct Parsed {
    pub socks: Vec<DiagSock>,
    pub done: bool,
}

/// Parses netlink messages from one `recv` buffer.
pub fn parse(buf: &[u8]) -> Result<Parsed> {
    let mut out = Parsed::default();
    let mut off = 0;
    while off + NLMSG_HDRLEN <= buf.len() {
        let len = u32_at(buf, off) as usize;
        let ty = u16::from_ne_bytes([buf[off + 4], buf[off + 5]]);
        if len < NLMSG_HDRLEN || off + len > buf.len() {
            bail!("sock_diag: truncated netlink message ({len} bytes at {off})");
        }
        let body = &buf[off + NLMSG_HDRLEN..off + len];
        match ty {
            NLMSG_DONE => {
                out.done = true;
                return Ok(out);
            }
            NLMSG_ERROR => {
                let errno = body
                    .get(..4)
                    .map(|b| i32::from_ne_bytes(b.try_into().unwrap()));
                match errno {
                    Some(0) => {}
                    // wrapping: i32::MIN (no errno, but bytes can say it)
                    // must not overflow.
                    Some(e) => bail!(
                        "sock_diag: {}",
                        io::Error::from_raw_os_error(e.wrapping_neg())
                    ),
                    None => bail!("sock_diag: short error message"),
                }
            }
            SOCK_DIAG_BY_FAMILY => out.socks.push(parse_msg(body)?),
            _ => {}
        }
        off += align4(len);
    }
    Ok(out)
}

fn parse_msg(b: &[u8]) -> Result<DiagSock> {
    if b.len() < INET_DIAG_MSG_LEN {
        bail!("sock_diag: short inet_diag_msg ({} bytes)", b.len());
    }
    let family = b[0];
    // inet_diag_sockid at 4: sport(be16) dport(be16) src[16] dst[16] if cookie[2]
    let lport = u16::from_be_bytes([b[4], b[5]]);
    let src: [u8; 16] = b[8..24].try_into().unwrap();
    let local = if family == libc::AF_INET6 as u8 {
        IpAddr::from(src)
    } else {
        IpAddr::from([src[0], src[1], src[2], src[3]])
    };
    let cookie = u32_at(b, 44) as u64 | (u32_at(b, 48) as u64) << 32;
    let mut s = DiagSock {
        family,
        state: b[1],
        local,
        lport,
        rport: u16::from_be_bytes([b[6], b[7]]),
        peer: match family == libc::AF_INET6 as u8 {
            true => b[24..40].try_into().unwrap(),
            false => {
                let mut p = [0u8; 16];
                p[..4].copy_from_slice(&b[24..28]);
                p
            }
        },
        rqueue: u32_at(b, 56),
        wqueue: u32_at(b, 60),
        uid: u32_at(b, 64),
        inode: u32_at(b, 68),
        cookie,
        drops: None,
    };
    let mut off = INET_DIAG_MSG_LEN;
    while off + 4 <= b.len() {
        let alen = u16::from_ne_bytes([b[off], b[off + 1]]) as usize;
        let aty = u16::from_ne_bytes([b[off + 2], b[off + 3]]);
        if alen < 4 || off + alen > b.len() {
            break;
        }
        if aty == INET_DIAG_SKMEMINFO && alen >= 4 + 4 * (SK_MEMINFO_DROPS + 1) {
            s.drops = Some(u32_at(b, off + 4 + 4 * SK_MEMINFO_DROPS));
        }
        off += align4(alen);
    }
    Ok(s)
}

fn u32_at(b: &[u8], off: usize) -> u32 {
    u32::from_ne_bytes(b[off..off + 4].try_into().unwrap())
}

fn align4(n: usize) -> usize {
    (n + 3) & !3
}

/// Dumps TCP sockets in `states` of both families in the calling thread's
/// network namespace.
pub fn dump(states: u32) -> Result<Vec<DiagSock>> {
    // SAFETY: plain socket(2); the fd is owned right away.
    let fd = unsafe {
        libc::socket(
            libc::AF_NETLINK,
            libc::SOCK_DGRAM | libc::SOCK_CLOEXEC,
            libc::NETLINK_SOCK_DIAG,
        )
    };
    if fd < 0 {
        bail!("sock_diag socket: {}", io::Error::last_os_error());
    }
    // SAFETY: fd is a fresh, valid descriptor nobody else owns.
    let fd = unsafe { std::os::fd::OwnedFd::from_raw_fd(fd) };
    let mut all = Vec::new();
    let mut buf = vec![0u8; 64 * 1024];
    for (seq, family) in [(1, libc::AF_INET as u8), (2, libc::AF_INET6 as u8)] {
        let req = request(family, states, seq);
        // SAFETY: req is a valid buffer; the kernel's address is the default.
        let n = unsafe { libc::send(fd.as_raw_fd(), req.as_ptr().cast(), req.len(), 0) };
        if n < 0 {
            bail!("sock_diag send: {}", io::Error::last_os_error());
        }
        loop {
            // SAFETY: buf is writable for its whole length.
            let n = unsafe { libc::recv(fd.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len(), 0) };
            if n < 0 {
                let e = io::Error::last_os_error();
                if e.kind() == io::ErrorKind::Interrupted {
                    continue;
                }
                bail!("sock_diag recv: {e}");
            }
            let p = parse(&buf[..n as usize])?;
            all.extend(p.socks);
            if p.done || n == 0 {
                break;
            }
        }
    }
    Ok(all)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn msg(port: u16, inode: u32, drops: u32, v6: bool) -> Vec<u8> {
        let mut body = vec![0u8; INET_DIAG_MSG_LEN];
        body[0] = if v6 { 10 } else { 2 };
        body[1] = 10;
        body[4..6].copy_from_slice(&port.to_be_bytes());
        if v6 {
            body[8..24].copy_from_slice(&std::net::Ipv6Addr::LOCALHOST.octets());
        } else {
            body[8..12].copy_from_slice(&[127, 0, 0, 1]);
        }
        body[44..48].copy_from_slice(&7u32.to_ne_bytes());
        body[56..60].copy_from_slice(&3u32.to_ne_bytes());
        body[60..64].copy_from_slice(&2u32.to_ne_bytes());
        body[68..72].copy_from_slice(&inode.to_ne_bytes());
        let mut attr = Vec::new();
        attr.extend_from_slice(&(4u16 + 4 * 9).to_ne_bytes());
        attr.extend_from_slice(&INET_DIAG_SKMEMINFO.to_ne_bytes());
        for i in 0..9u32 {
            attr.extend_from_slice(&(if i == 8 { drops } else { 100 + i }).to_ne_bytes());
        }
        body.extend(attr);
        let mut m = Vec::new();
        m.extend_from_slice(&((NLMSG_HDRLEN + body.len()) as u32).to_ne_bytes());
        m.extend_from_slice(&SOCK_DIAG_BY_FAMILY.to_ne_bytes());
        m.extend_from_slice(&[0; 10]);
        m.extend(body);
        m
    }

    fn done() -> Vec<u8> {
        let mut m = Vec::new();
        m.extend_from_slice(&20u32.to_ne_bytes());
        m.extend_from_slice(&NLMSG_DONE.to_ne_bytes());
        m.extend_from_slice(&[0; 14]);
        m
    }

    #[test]
    fn parses_listeners_with_drops_and_done() {
        let mut buf = msg(8080, 4242, 17, false);
        buf.extend(msg(443, 99, 0, true));
        buf.extend(done());
        let p = parse(&buf).unwrap();
        assert!(p.done);
        assert_eq!(p.socks.len(), 2);
        let a = &p.socks[0];
        assert_eq!(
            (a.lport, a.inode, a.drops, a.rqueue, a.wqueue),
            (8080, 4242, Some(17), 3, 2)
        );
        assert_eq!(a.local, "127.0.0.1".parse::<IpAddr>().unwrap());
        assert_eq!(a.cookie, 7);
        assert_eq!(p.socks[1].local, "::1".parse::<IpAddr>().unwrap());
    }

    #[test]
    fn a_connection_keeps_its_peer_as_the_kernel_keys_it() {
        let mut v4 = msg(8080, 1, 0, false);
        let body = NLMSG_HDRLEN;
        v4[body + 6..body + 8].copy_from_slice(&51234u16.to_be_bytes());
        v4[body + 24..body + 28].copy_from_slice(&[10, 0, 0, 9]);
        let mut v6 = msg(8080, 2, 0, true);
        let mapped = "::ffff:10.0.0.9".parse::<std::net::Ipv6Addr>().unwrap();
        v6[body + 24..body + 40].copy_from_slice(&mapped.octets());
        v4.extend(v6);
        let p = parse(&v4).unwrap();
        let k = p.socks[0].peer_key(7);
        assert_eq!((k.netns, k.family, k.lport, k.rport), (7, 2, 8080, 51234));
        assert_eq!(k.raddr[..4], [10, 0, 0, 9]);
        assert_eq!(k.raddr[4..], [0; 12]);
        let k6 = p.socks[1].peer_key(7);
        assert_eq!((k6.family, k6.raddr), (10, mapped.octets()));
    }

    #[test]
    fn kernel_errors_and_truncation_are_errors() {
        let mut e = Vec::new();
        e.extend_from_slice(&20u32.to_ne_bytes());
        e.extend_from_slice(&NLMSG_ERROR.to_ne_bytes());
        e.extend_from_slice(&[0; 10]);
        e.extend_from_slice(&(-libc::EPERM).to_ne_bytes());
        assert!(parse(&e).unwrap_err().to_string().contains("not permitted"));
        let m = msg(1, 1, 1, false);
        assert!(parse(&m[..m.len() - 8]).is_err());
    }

    /// Found by the `sockdiag` fuzz target: an NLMSG_ERROR carrying
    /// i32::MIN overflowed negating it.
    #[test]
    fn an_error_of_i32_min_is_an_error_not_a_panic() {
        let mut e = Vec::new();
        e.extend_from_slice(&20u32.to_ne_bytes());
        e.extend_from_slice(&NLMSG_ERROR.to_ne_bytes());
        e.extend_from_slice(&[0; 10]);
        e.extend_from_slice(&i32::MIN.to_ne_bytes());
        assert!(parse(&e).is_err());
    }

    #[test]
    fn request_layout_matches_inet_diag_req_v2() {
        let r = request(2, TCPF_LISTEN, 9);
        assert_eq!(r.len(), 72);
        assert_eq!(u32_at(&r, 0), 72);
        assert_eq!(r[16], 2);
        assert_eq!(r[17], 6);
        assert_eq!(r[18], 0x40);
        assert_eq!(u32_at(&r, 20), TCPF_LISTEN);
    }
}

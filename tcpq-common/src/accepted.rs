//! Who accepted a connection: the kernel follows accepted sockets so that
//! lines about them (a RST received, CLOSE_WAIT after the listener closed)
//! name the process without a `/proc` walk, even once the socket is gone.

/// A server-side connection, as both `sock_diag` and the kernel see it: the
/// network namespace, the local port and the peer. The local address is
/// left out (the listener's port is what ties the line to a service).
/// Addresses in network byte order as the kernel stores them: an IPv4 peer
/// in the first 4 bytes of `raddr` with `family` AF_INET; an IPv6 socket's
/// peer (v4-mapped or not) in all 16 with AF_INET6. Ports in host order.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct PeerKey {
    pub netns: u32,
    pub family: u16,
    pub lport: u16,
    pub rport: u16,
    pub _pad: u16,
    pub raddr: [u8; 16],
}

#[cfg(feature = "user")]
unsafe impl aya::Pod for PeerKey {}

const _: () = assert!(core::mem::size_of::<PeerKey>() == 28);

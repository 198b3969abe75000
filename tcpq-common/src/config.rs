//! Values the agent computes at start (from the running kernel's BTF and the
//! tracepoint format files) and hands to the kernel programs as one global.
//!
//! aya emits no CO-RE relocations, so struct offsets and enum values must not
//! be compiled in: they differ between kernels. A zero offset for an optional
//! field means "this kernel has no such field".

#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Config {
    // ---- tracepoint record layouts (from events/*/*/format) ----
    /// Raw tracepoint kfree_skb: the argument index of `rx_sk` (6.11+) and
    /// of `reason` (from BTF's `btf_trace_kfree_skb`); unused when the hook
    /// is not attached.
    pub kfree_rx_sk: u32,
    pub kfree_reason: u32,
    /// tcp:tcp_retransmit_synack `skaddr` (the listener).
    pub synack_skaddr: u32,
    /// tcp:tcp_send_reset `skaddr`.
    pub rst_skaddr: u32,
    /// tcp:tcp_send_reset `reason` (6.10+); 0 = missing.
    pub rst_reason: u32,
    /// tcp:tcp_send_reset `saddr` / `daddr` (sockaddr_in6-sized buffers).
    pub rst_saddr: u32,
    pub rst_daddr: u32,
    /// tcp:tcp_receive_reset `skaddr`; 0 = no such tracepoint.
    pub recv_rst_skaddr: u32,
    /// syscalls:sys_exit_accept{,4} `ret`.
    pub accept_ret: u32,

    // ---- enum values (from BTF) ----
    /// `enum skb_drop_reason`: SKB_DROP_REASON_TCP_LISTEN_OVERFLOW.
    pub drop_reason_listen_overflow: u32,

    // ---- struct sock / sock_common offsets (from BTF) ----
    pub skc_family: u32,
    pub skc_state: u32,
    pub skc_num: u32,
    pub skc_dport: u32,
    pub skc_rcv_saddr: u32,
    pub skc_daddr: u32,
    pub skc_v6_rcv_saddr: u32,
    pub skc_v6_daddr: u32,
    /// `sock_common.skc_net` (a `possible_net_t`, i.e. one `struct net *`).
    pub skc_net: u32,
    /// `net.ns.inum`.
    pub net_ns_inum: u32,
    pub sk_ack_backlog: u32,
    pub sk_max_ack_backlog: u32,
    /// `sock.sk_socket`.
    pub sk_socket: u32,
    /// `request_sock.rsk_listener` (for resets sent on a request sock).
    pub rsk_listener: u32,
    /// `sock.sk_drops` (atomic_t).
    pub sk_drops: u32,
    /// `inet_connection_sock.icsk_accept_queue.qlen` (SYN-queue length).
    pub icsk_qlen: u32,
    /// `net.ipv4.sysctl_tcp_abort_on_overflow` (u8).
    pub net_abort_on_overflow: u32,
    /// `net.ipv4.sysctl_tcp_syncookies` (u8).
    pub net_syncookies: u32,
    /// `net.ipv4.sysctl_max_syn_backlog` (int).
    pub net_max_syn_backlog: u32,
    /// `sock.sk_err` (int): the error a failed connect() reports.
    pub sk_err: u32,
    /// `sock.sk_protocol` (u16).
    pub sk_protocol: u32,
    /// `inet_sock.inet_sport` (be16): kept when the port is released.
    pub inet_sport: u32,
    pub _pad: u32,
    /// fd → socket: `task_struct.files`, `files_struct.fdt`, `fdtable.fd`,
    /// `fdtable.max_fds`, `file.private_data`, `socket.sk`.
    pub task_files: u32,
    pub files_fdt: u32,
    pub fdt_fd: u32,
    pub fdt_max_fds: u32,
    pub file_private_data: u32,
    pub socket_sk: u32,
    /// Offset from a `struct socket *` to its inode's `i_ino`:
    /// `socket_alloc.vfs_inode - socket_alloc.socket + inode.i_ino`.
    pub socket_to_ino: i32,

    // ---- filters applied in the kernel ----
    /// Only this local port (host order); 0 = every port.
    pub filter_lport: u32,
    /// Only this netns inode; 0 = every netns.
    pub filter_netns: u32,

    // ---- ring-buffer pacing ----
    /// At most one news record per counted key and CPU per this many ms
    /// (the report interval); the counts themselves are read from the map.
    pub news_interval_ms: u32,
    /// Records wake the agent only once this many bytes wait in the ring
    /// buffer (the agent also drains it at every sock_diag round), except a
    /// key's first news, which wakes it at once.
    pub ring_wake_bytes: u32,
}

#[cfg(feature = "user")]
unsafe impl aya::Pod for Config {}

const _: () = assert!(core::mem::size_of::<Config>().is_multiple_of(8));

/// TCP states (include/net/tcp_states.h): part of the user ABI (`ss`,
/// sock_diag), stable across kernels.
pub mod tcp_state {
    pub const ESTABLISHED: u16 = 1;
    pub const SYN_SENT: u16 = 2;
    pub const SYN_RECV: u16 = 3;
    pub const TIME_WAIT: u16 = 6;
    pub const CLOSE: u16 = 7;
    pub const CLOSE_WAIT: u16 = 8;
    pub const LISTEN: u16 = 10;
    pub const NEW_SYN_RECV: u16 = 12;
}

pub const AF_INET: u16 = 2;
pub const AF_INET6: u16 = 10;

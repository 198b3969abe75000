//! tcpq kernel programs.
//!
//! Every hook is a few instructions on the healthy path: it compares one
//! field (a drop reason, a socket state, a port) and returns. Only anomalies
//! (an overflow, a SYN-ACK retransmit, a reset of interest) reach
//! [`emit::emit`], which counts them per CPU and writes one [`Event`] to the
//! ring buffer; a full ring buffer is counted too, so the agent can report
//! exactly what it did not receive.
//!
//! Struct offsets and enum values are not compiled in: the agent reads them
//! from the running kernel's BTF and tracepoint formats and sets [`CONFIG`]
//! before loading (aya cannot emit CO-RE relocations).
#![no_std]
#![no_main]

mod accepted;
mod emit;
mod hooks;
mod names;
mod sock;
mod storm;

use tcpq_common::Config;

/// Set by the agent at load time (`EbpfLoader::set_global`).
#[no_mangle]
static CONFIG: Config = Config {
    kfree_rx_sk: 0,
    kfree_reason: 0,
    synack_skaddr: 0,
    rst_skaddr: 0,
    rst_reason: 0,
    rst_saddr: 0,
    rst_daddr: 0,
    recv_rst_skaddr: 0,
    accept_ret: 0,
    drop_reason_listen_overflow: 0,
    skc_family: 0,
    skc_state: 0,
    skc_num: 0,
    skc_dport: 0,
    skc_rcv_saddr: 0,
    skc_daddr: 0,
    skc_v6_rcv_saddr: 0,
    skc_v6_daddr: 0,
    skc_net: 0,
    net_ns_inum: 0,
    sk_ack_backlog: 0,
    sk_max_ack_backlog: 0,
    sk_socket: 0,
    rsk_listener: 0,
    task_files: 0,
    files_fdt: 0,
    fdt_fd: 0,
    fdt_max_fds: 0,
    file_private_data: 0,
    socket_sk: 0,
    socket_to_ino: 0,
    filter_lport: 0,
    filter_netns: 0,
    news_interval_ms: 0,
    ring_wake_bytes: 0,
    sk_drops: 0,
    icsk_qlen: 0,
    net_abort_on_overflow: 0,
    net_syncookies: 0,
    net_max_syn_backlog: 0,
    sk_err: 0,
    sk_protocol: 0,
    inet_sport: 0,
    _pad: 0,
};

/// Reads one field of [`CONFIG`] so the compiler cannot fold the zero
/// initialiser into the code.
macro_rules! conf {
    ($field:ident) => {
        $crate::read_conf(&$crate::CONFIG.$field)
    };
}
pub(crate) use conf;

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    loop {}
}

#[link_section = "license"]
#[no_mangle]
static LICENSE: [u8; 4] = *b"GPL\0";

#[inline(always)]
pub(crate) fn read_conf<T: Copy>(field: &T) -> T {
    unsafe { core::ptr::read_volatile(field) }
}

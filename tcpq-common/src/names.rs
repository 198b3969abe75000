//! The names of the kernel side's maps and programs, as the BPF object
//! carries them: the agent looks maps and programs up by these constants.
//!
//! aya-ebpf names a map after its static (`#[map]`) and a program after its
//! function, so the kernel side cannot use these constants; the agent's
//! unit test `object_has_the_maps_and_programs_tcpq_common_names` opens the
//! embedded object and checks that its maps and programs are exactly
//! [`MAPS`] and [`PROGRAMS`], so a rename on either side fails there.

/// Maps (`#[map] static NAME`).
pub mod map {
    /// Ring buffer of events (`emit.rs`).
    pub const EVENTS: &str = "EVENTS";
    /// Per-CPU counters, indexed by `stats::*` (`emit.rs`).
    pub const STATS: &str = "STATS";
    /// Accepts per listener (`hooks/accept.rs`).
    pub const ACCEPTS: &str = "ACCEPTS";
    /// kprobe entry → kretprobe state of inet_csk_accept (`hooks/accept.rs`).
    pub const ACCEPT_ENTRY: &str = "ACCEPT_ENTRY";
    /// accept() failures per listener and errno (`hooks/accept_error.rs`).
    pub const ACCEPT_ERRORS: &str = "ACCEPT_ERRORS";
    /// Handshake → accept() latency histograms (`hooks/latency.rs`).
    pub const ACCEPT_LATENCY: &str = "ACCEPT_LATENCY";
    /// When each handshake completed (`hooks/latency.rs`).
    pub const ESTABLISHED_AT: &str = "ESTABLISHED_AT";
    /// Ports whose latency is measured (`hooks/latency.rs`).
    pub const LATENCY_PORTS: &str = "LATENCY_PORTS";
    /// Whether latency is measured at all (`hooks/latency.rs`).
    pub const LATENCY_ON: &str = "LATENCY_ON";
    /// A zeroed histogram to insert from (`hooks/latency.rs`).
    pub const ZERO: &str = "ZERO";
    /// Entry → exit state of the kernel-function hooks (`hooks/kfunc.rs`).
    pub const SLOTS: &str = "SLOTS";
    /// The backlog listen() asked for, per thread (`hooks/backlog.rs`).
    pub const REQUESTED_BACKLOG: &str = "REQUESTED_BACKLOG";
    /// Process names taken in the kernel (`names.rs`).
    pub const COMMS: &str = "COMMS";
    /// Storm aggregation (`storm.rs`).
    pub const STORM: &str = "STORM";
    /// Who accepted each connection (`accepted.rs`).
    pub const ACCEPTED_BY: &str = "ACCEPTED_BY";
    /// Whether the accept syscall exit records accepts (`accepted.rs`).
    pub const BY_FD: &str = "BY_FD";
}

/// Every map of the object.
pub const MAPS: &[&str] = &[
    map::EVENTS,
    map::STATS,
    map::ACCEPTS,
    map::ACCEPT_ENTRY,
    map::ACCEPT_ERRORS,
    map::ACCEPT_LATENCY,
    map::ESTABLISHED_AT,
    map::LATENCY_PORTS,
    map::LATENCY_ON,
    map::ZERO,
    map::SLOTS,
    map::REQUESTED_BACKLOG,
    map::COMMS,
    map::STORM,
    map::ACCEPTED_BY,
    map::BY_FD,
];

/// The global the agent sets before loading (`static CONFIG`, `.rodata`).
pub const CONFIG: &str = "CONFIG";

/// Programs (the functions of `hooks/*.rs`).
pub mod prog {
    // Tracepoints and raw tracepoints.
    pub const KFREE_SKB: &str = "tcpq_kfree_skb";
    pub const RETRANSMIT_SYNACK: &str = "tcpq_retransmit_synack";
    pub const SEND_RESET: &str = "tcpq_send_reset";
    pub const RECEIVE_RESET: &str = "tcpq_receive_reset";
    pub const SOCK_STATE: &str = "tcpq_sock_state";
    pub const ACCEPT_EXIT: &str = "tcpq_accept_exit";
    // tcp_conn_request
    pub const CONN_REQUEST_FENTRY: &str = "tcpq_conn_request_fentry";
    pub const CONN_REQUEST_FEXIT: &str = "tcpq_conn_request_fexit";
    pub const CONN_REQUEST_KPROBE: &str = "tcpq_conn_request_kprobe";
    pub const CONN_REQUEST_KRETPROBE: &str = "tcpq_conn_request_kretprobe";
    // tcp_v4_syn_recv_sock, tcp_v6_syn_recv_sock
    pub const SYN_RECV4_FEXIT: &str = "tcpq_syn_recv4_fexit";
    pub const SYN_RECV6_FEXIT: &str = "tcpq_syn_recv6_fexit";
    pub const SYN_RECV_KPROBE: &str = "tcpq_syn_recv_kprobe";
    pub const SYN_RECV_KRETPROBE: &str = "tcpq_syn_recv_kretprobe";
    // tcp_check_req
    pub const CHECK_REQ_FENTRY: &str = "tcpq_check_req_fentry";
    pub const CHECK_REQ_FEXIT: &str = "tcpq_check_req_fexit";
    pub const CHECK_REQ_KPROBE: &str = "tcpq_check_req_kprobe";
    pub const CHECK_REQ_KRETPROBE: &str = "tcpq_check_req_kretprobe";
    // inet_csk_accept
    pub const ACCEPT_FEXIT: &str = "tcpq_accept_fexit";
    pub const ACCEPT_KPROBE: &str = "tcpq_accept_kprobe";
    pub const ACCEPT_KRETPROBE: &str = "tcpq_accept_kretprobe";
    // __sys_listen
    pub const SYS_LISTEN_FENTRY: &str = "tcpq_sys_listen_fentry";
    pub const SYS_LISTEN_KPROBE: &str = "tcpq_sys_listen_kprobe";
}

/// Every program of the object.
pub const PROGRAMS: &[&str] = &[
    prog::KFREE_SKB,
    prog::RETRANSMIT_SYNACK,
    prog::SEND_RESET,
    prog::RECEIVE_RESET,
    prog::SOCK_STATE,
    prog::ACCEPT_EXIT,
    prog::CONN_REQUEST_FENTRY,
    prog::CONN_REQUEST_FEXIT,
    prog::CONN_REQUEST_KPROBE,
    prog::CONN_REQUEST_KRETPROBE,
    prog::SYN_RECV4_FEXIT,
    prog::SYN_RECV6_FEXIT,
    prog::SYN_RECV_KPROBE,
    prog::SYN_RECV_KRETPROBE,
    prog::CHECK_REQ_FENTRY,
    prog::CHECK_REQ_FEXIT,
    prog::CHECK_REQ_KPROBE,
    prog::CHECK_REQ_KRETPROBE,
    prog::ACCEPT_FEXIT,
    prog::ACCEPT_KPROBE,
    prog::ACCEPT_KRETPROBE,
    prog::SYS_LISTEN_FENTRY,
    prog::SYS_LISTEN_KPROBE,
];

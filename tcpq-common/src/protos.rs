//! The kernel prototypes tcpq's hooks are written against: each hooked
//! kernel function with the variants the hook files document (`hooks/*.rs`
//! headers), and which arguments the BPF programs read. The agent checks
//! them against the running kernel's BTF (`tcpq-agent doctor`, section
//! "prototypes", and the `prototypes` scenario test on every VM kernel):
//! a function that exists must match one variant in its parameter count,
//! the types of the parameters read, and, if the exit program reads it, the
//! return type.
//!
//! Types are spelled as the agent's BTF reader spells them: `struct sock *`,
//! `int`, `bool`, qualifiers (`const`) dropped.

/// Kernel functions tcpq hooks (fentry/fexit or kprobe/kretprobe).
pub mod kfunc {
    pub const TCP_CONN_REQUEST: &str = "tcp_conn_request";
    pub const TCP_V4_SYN_RECV_SOCK: &str = "tcp_v4_syn_recv_sock";
    pub const TCP_V6_SYN_RECV_SOCK: &str = "tcp_v6_syn_recv_sock";
    pub const TCP_CHECK_REQ: &str = "tcp_check_req";
    pub const INET_CSK_ACCEPT: &str = "inet_csk_accept";
    pub const SYS_LISTEN: &str = "__sys_listen";
}

/// Argument indexes the BPF programs read (`ctx.arg(i)`).
pub mod arg {
    /// `tcp_conn_request(rsk_ops, af_ops, sk, skb)`: the listener.
    pub const CONN_REQUEST_SK: usize = 2;
    /// `tcp_v{4,6}_syn_recv_sock(sk, ...)`: the listener.
    pub const SYN_RECV_SOCK_SK: usize = 0;
    /// `inet_csk_accept(sk, ...)`: the listener.
    pub const CSK_ACCEPT_SK: usize = 0;
    /// `__sys_listen(fd, backlog)`: the backlog asked for.
    pub const SYS_LISTEN_BACKLOG: usize = 1;
    /// Raw tracepoint `inet_sock_set_state(sk, oldstate, newstate)`.
    pub const SOCK_STATE_SK: usize = 0;
    pub const SOCK_STATE_OLD: usize = 1;
    pub const SOCK_STATE_NEW: usize = 2;
}

/// One documented prototype of a function.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Variant {
    /// Kernels with this prototype (for the reader): as documented, or the
    /// kernels `cargo xtask vm` and the host showed it on.
    pub kernels: &'static str,
    pub ret: &'static str,
    /// (type, name) of each parameter.
    pub params: &'static [(&'static str, &'static str)],
}

/// A hooked function (or raw tracepoint) and its documented prototypes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Proto {
    pub function: &'static str,
    pub variants: &'static [Variant],
    /// Argument indexes the BPF programs read.
    pub reads: &'static [usize],
    /// Whether an exit program reads the return value.
    pub reads_ret: bool,
}

const SYN_RECV_SOCK: &[Variant] = &[
    Variant {
        kernels: "six parameters (seen on 5.10, 6.1)",
        ret: "struct sock *",
        params: &[
            ("struct sock *", "sk"),
            ("struct sk_buff *", "skb"),
            ("struct request_sock *", "req"),
            ("struct dst_entry *", "dst"),
            ("struct request_sock *", "req_unhash"),
            ("bool *", "own_req"),
        ],
    },
    Variant {
        kernels: "with opt_child_init (seen on 6.12.117, 6.18.44)",
        ret: "struct sock *",
        params: &[
            ("struct sock *", "sk"),
            ("struct sk_buff *", "skb"),
            ("struct request_sock *", "req"),
            ("struct dst_entry *", "dst"),
            ("struct request_sock *", "req_unhash"),
            ("bool *", "own_req"),
            ("void (*)(struct sock *, struct sock *)", "opt_child_init"),
        ],
    },
];

/// The kernel functions, in the agent's plan order.
pub const KFUNCS: &[Proto] = &[
    Proto {
        function: kfunc::TCP_CONN_REQUEST,
        variants: &[Variant {
            kernels: "every kernel since 4.4",
            ret: "int",
            params: &[
                ("struct request_sock_ops *", "rsk_ops"),
                ("struct tcp_request_sock_ops *", "af_ops"),
                ("struct sock *", "sk"),
                ("struct sk_buff *", "skb"),
            ],
        }],
        reads: &[arg::CONN_REQUEST_SK],
        reads_ret: false,
    },
    Proto {
        function: kfunc::TCP_V4_SYN_RECV_SOCK,
        variants: SYN_RECV_SOCK,
        reads: &[arg::SYN_RECV_SOCK_SK],
        reads_ret: true,
    },
    Proto {
        function: kfunc::TCP_V6_SYN_RECV_SOCK,
        variants: SYN_RECV_SOCK,
        reads: &[arg::SYN_RECV_SOCK_SK],
        reads_ret: true,
    },
    Proto {
        function: kfunc::TCP_CHECK_REQ,
        variants: &[
            Variant {
                kernels: "five parameters (seen on 5.10, 6.1, 6.12)",
                ret: "struct sock *",
                params: &[
                    ("struct sock *", "sk"),
                    ("struct sk_buff *", "skb"),
                    ("struct request_sock *", "req"),
                    ("bool", "fastopen"),
                    ("bool *", "req_stolen"),
                ],
            },
            Variant {
                kernels: "with drop_reason (seen on 6.18.44)",
                ret: "struct sock *",
                params: &[
                    ("struct sock *", "sk"),
                    ("struct sk_buff *", "skb"),
                    ("struct request_sock *", "req"),
                    ("bool", "fastopen"),
                    ("bool *", "req_stolen"),
                    ("enum skb_drop_reason *", "drop_reason"),
                ],
            },
        ],
        // Entry and exit only mark "inside": nothing is read.
        reads: &[],
        reads_ret: false,
    },
    Proto {
        function: kfunc::INET_CSK_ACCEPT,
        variants: &[
            Variant {
                kernels: "Linux ≤ 6.9",
                ret: "struct sock *",
                params: &[
                    ("struct sock *", "sk"),
                    ("int", "flags"),
                    ("int *", "err"),
                    ("bool", "kern"),
                ],
            },
            Variant {
                kernels: "Linux 6.10+",
                ret: "struct sock *",
                params: &[
                    ("struct sock *", "sk"),
                    ("struct proto_accept_arg *", "arg"),
                ],
            },
        ],
        reads: &[arg::CSK_ACCEPT_SK],
        reads_ret: true,
    },
    Proto {
        function: kfunc::SYS_LISTEN,
        variants: &[Variant {
            kernels: "every kernel since 4.17",
            ret: "int",
            params: &[("int", "fd"), ("int", "backlog")],
        }],
        reads: &[arg::SYS_LISTEN_BACKLOG],
        reads_ret: false,
    },
];

/// Raw tracepoints whose arguments the programs read at fixed indexes
/// (`kfree_skb`'s are found in BTF at run time and need no entry). BTF
/// declares them as `btf_trace_<name>`; names are not kept there, so the
/// names here are the `TP_PROTO`'s.
pub const RAW_TRACEPOINTS: &[Proto] = &[Proto {
    function: "inet_sock_set_state",
    variants: &[Variant {
        kernels: "every kernel since 4.16",
        ret: "void",
        params: &[
            ("struct sock *", "sk"),
            ("int", "oldstate"),
            ("int", "newstate"),
        ],
    }],
    reads: &[arg::SOCK_STATE_SK, arg::SOCK_STATE_OLD, arg::SOCK_STATE_NEW],
    reads_ret: false,
}];

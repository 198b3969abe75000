//! The tracepoints tcpq attaches: each one's name, kind (classic or raw)
//! and the kernel program that serves it.

use tcpq_common::names::prog;

/// A tracepoint tcpq attaches (one [`Hook`] each).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Tp {
    KfreeSkb,
    RetransmitSynack,
    SendReset,
    ReceiveReset,
    SockState,
    Accept4Exit,
    AcceptExit,
}

/// A tracepoint hook and the program that serves it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Hook {
    pub tp: Tp,
    pub program: &'static str,
    pub category: &'static str,
    pub name: &'static str,
    /// A raw tracepoint (arguments, no record): `name` only.
    pub raw: bool,
}

impl Hook {
    /// A syscall tracepoint (`syscalls:*`): attached on demand.
    pub fn is_syscall(&self) -> bool {
        self.category == "syscalls"
    }
}

impl std::fmt::Display for Hook {
    /// `category:name`, as doctor and the start-up message show it.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}:{}", self.category, self.name)
    }
}

/// A raw tracepoint: it fires for every dropped packet on the host, and the
/// classic tracepoint would build its record each time before the program
/// looked at the reason.
pub const KFREE_SKB: Hook = Hook {
    tp: Tp::KfreeSkb,
    program: prog::KFREE_SKB,
    category: "skb",
    name: "kfree_skb",
    raw: true,
};
pub const RETRANSMIT_SYNACK: Hook = Hook {
    tp: Tp::RetransmitSynack,
    program: prog::RETRANSMIT_SYNACK,
    category: "tcp",
    name: "tcp_retransmit_synack",
    raw: false,
};
pub const SEND_RESET: Hook = Hook {
    tp: Tp::SendReset,
    program: prog::SEND_RESET,
    category: "tcp",
    name: "tcp_send_reset",
    raw: false,
};

pub const RECEIVE_RESET: Hook = Hook {
    tp: Tp::ReceiveReset,
    program: prog::RECEIVE_RESET,
    category: "tcp",
    name: "tcp_receive_reset",
    raw: false,
};
pub const SOCK_STATE: Hook = Hook {
    tp: Tp::SockState,
    program: prog::SOCK_STATE,
    category: "sock",
    name: "inet_sock_set_state",
    raw: true,
};
pub const ACCEPT4_EXIT: Hook = Hook {
    tp: Tp::Accept4Exit,
    program: prog::ACCEPT_EXIT,
    category: "syscalls",
    name: "sys_exit_accept4",
    raw: false,
};
pub const ACCEPT_EXIT: Hook = Hook {
    tp: Tp::AcceptExit,
    program: prog::ACCEPT_EXIT,
    category: "syscalls",
    name: "sys_exit_accept",
    raw: false,
};

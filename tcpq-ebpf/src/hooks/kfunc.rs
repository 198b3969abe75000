//! The design card's kernel-function hooks, each compiled twice over one
//! shared body: as fentry/fexit (BPF trampolines, Linux 5.5+, cheapest) and
//! as kprobe/kretprobe (any kernel with CONFIG_KPROBES). The agent loads the
//! variant this kernel can attach (see the agent's `caps` module); on a
//! kernel with neither, the tracepoint and sock_diag paths stand in.
//!
//! The prototypes below, and the argument indexes the programs read
//! (`tcpq_common::protos::arg`), are `tcpq_common::protos::KFUNCS`, which the
//! agent checks against each kernel's BTF (`tcpq-agent doctor`).
//!
//! Entry→exit state lives in a per-CPU slot: these functions run in softirq
//! context (TCP receive), which does not nest on one CPU.

use aya_ebpf::{
    macros::{fentry, fexit, kprobe, kretprobe, map},
    maps::PerCpuArray,
    programs::{FEntryContext, FExitContext, ProbeContext, RetProbeContext},
};
use tcpq_common::{
    event::outcome,
    event::Source,
    protos::arg,
    stats,
    storm::{class, StormKey},
    EventKind,
};

use crate::{conf, sock, storm};

#[repr(C)]
#[derive(Clone, Copy)]
pub struct Slot {
    sk: u64,
    drops: u32,
    backlog: u32,
    max: u32,
    qlen: u32,
    /// For the `tcp_check_req` slot: non-zero while inside it.
    inside: u32,
    /// For the `tcp_conn_request` slot: the netns' `tcp_syncookies` and
    /// `tcp_max_syn_backlog` at entry.
    syncookies: u32,
    max_syn_backlog: u32,
    _pad: u32,
}

/// Per-CPU: [CONN_REQ] SYN being processed, [SYN_RECV] listener of the
/// running `syn_recv_sock` (kprobe only), [CHECK_REQ] ACK-time drop waiting
/// for `tcp_check_req` to return.
#[map]
static SLOTS: PerCpuArray<Slot> = PerCpuArray::with_max_entries(3, 0);
const CONN_REQ: u32 = 0;
const SYN_RECV: u32 = 1;
const CHECK_REQ: u32 = 2;

#[inline(always)]
fn slot(i: u32) -> Option<&'static mut Slot> {
    SLOTS.get_ptr_mut(i).map(|p| unsafe { &mut *p })
}

// ---------------------------------------------------------------------------
// int tcp_conn_request(struct request_sock_ops *rsk_ops,
//                      const struct tcp_request_sock_ops *af_ops,
//                      struct sock *sk, struct sk_buff *skb);
// Every kernel since 4.4 (IPv4 and IPv6). It returns 0 whether it admitted
// the SYN or dropped it; a drop is `tcp_listendrop()`: `sk_drops` + 1. So:
// `sk_drops` at entry vs at exit. Queue lengths are taken at entry, which is
// what the kernel's own checks saw; with them and the netns' syncookies
// setting the agent tells a full SYN queue from a full accept queue, and an
// admitted SYN with no new request sock is a syncookie.
// ---------------------------------------------------------------------------

#[inline(always)]
fn conn_request_enter(sk: u64) {
    let Some(s) = slot(CONN_REQ) else { return };
    s.sk = 0;
    if sk == 0 || sock::filtered_out(sk) {
        return;
    }
    s.drops = sock::read::<u32>(sk, conf!(sk_drops)).unwrap_or(0);
    s.backlog = sock::read::<u32>(sk, conf!(sk_ack_backlog)).unwrap_or(0);
    s.max = sock::read::<u32>(sk, conf!(sk_max_ack_backlog)).unwrap_or(0);
    s.qlen = sock::read::<u32>(sk, conf!(icsk_qlen)).unwrap_or(0);
    (s.syncookies, s.max_syn_backlog) = match sock::read::<u64>(sk, conf!(skc_net)) {
        Some(net) if net != 0 => (
            sock::read::<u8>(net, conf!(net_syncookies)).unwrap_or(0) as u32,
            sock::read::<u32>(net, conf!(net_max_syn_backlog)).unwrap_or(0),
        ),
        _ => (0, 0),
    };
    s.sk = sk;
}

#[inline(always)]
fn conn_request_exit(source: Source) {
    let Some(s) = slot(CONN_REQ) else { return };
    let sk = s.sk;
    if sk == 0 {
        return;
    }
    s.sk = 0;
    let q = Queues {
        backlog: s.backlog,
        max: s.max,
    };
    let now = sock::read::<u32>(sk, conf!(sk_drops)).unwrap_or(0);
    let (seen, kind) = if now != s.drops {
        (stats::SYN_DROP_SEEN, EventKind::SynDrop)
    } else if s.syncookies == 2 || (s.syncookies == 1 && s.qlen > s.max) {
        // Admitted without a request sock: the kernel's own condition for
        // `want_cookie` (`inet_csk_reqsk_queue_is_full()` is `qlen > max`
        // from 6.1 to 6.18).
        (stats::SYNCOOKIE_SEEN, EventKind::SyncookieSent)
    } else {
        return; // admitted: the healthy path ends here
    };
    let (qlen, syncookies, msb) = (s.qlen, s.syncookies, s.max_syn_backlog);
    let key = StormKey {
        sk,
        kind: kind as u32,
        class: match kind {
            EventKind::SynDrop => syn_drop_class(q, qlen, syncookies, msb),
            _ => 0,
        },
        ..StormKey::default()
    };
    storm::count(seen, &key, kind as u32, |ev| {
        sock::fill_listener(ev, sk);
        ev.ack_backlog = q.backlog;
        ev.max_ack_backlog = q.max;
        ev.aux = qlen;
        ev.state = syncookies as u16;
        ev.detail = msb;
        ev.source = source as u32;
    });
}

/// Why `tcp_conn_request` dropped a SYN, in the order it checks (6.1–6.18):
/// a full SYN queue without syncookies, a full accept queue, then with
/// syncookies off 3/4 of `tcp_max_syn_backlog` in use (the agent's
/// `classify_syn_drop` reads the same fields back from the event).
#[inline(always)]
fn syn_drop_class(q: Queues, qlen: u32, syncookies: u32, msb: u32) -> u32 {
    if syncookies == 0 && qlen > q.max {
        class::SYN_QUEUE_FULL
    } else if q.backlog > q.max {
        class::ACCEPT_QUEUE_FULL
    } else if syncookies == 0 && (msb as i64 - qlen as i64) < (msb >> 2) as i64 {
        class::MAX_SYN_BACKLOG
    } else {
        class::OTHER
    }
}

/// Accept-queue length and limit as a hook saw them.
#[derive(Clone, Copy)]
struct Queues {
    backlog: u32,
    max: u32,
}

/// One ACK-time drop of listener `sk`, counted under its queue state (full
/// or not) and outcome, with the queue state the hook saw (not re-read now).
#[inline(always)]
fn count_ack_drop(sk: u64, q: Queues, aux: u32, source: Source) {
    let kind = EventKind::ListenOverflowAck;
    let full = if q.backlog > q.max {
        class::QUEUE_FULL
    } else {
        0
    };
    let key = StormKey {
        sk,
        kind: kind as u32,
        class: full | aux,
        ..StormKey::default()
    };
    storm::count(stats::LISTEN_OVERFLOW_SEEN, &key, kind as u32, |ev| {
        sock::fill_listener(ev, sk);
        ev.ack_backlog = q.backlog;
        ev.max_ack_backlog = q.max;
        ev.aux = aux;
        ev.source = source as u32;
    });
}

#[fentry(function = "tcp_conn_request")]
pub fn tcpq_conn_request_fentry(ctx: FEntryContext) -> u32 {
    conn_request_enter(ctx.arg::<u64>(arg::CONN_REQUEST_SK));
    0
}

#[fexit(function = "tcp_conn_request")]
pub fn tcpq_conn_request_fexit(_ctx: FExitContext) -> u32 {
    conn_request_exit(Source::Fentry);
    0
}

#[kprobe]
pub fn tcpq_conn_request_kprobe(ctx: ProbeContext) -> u32 {
    conn_request_enter(ctx.arg::<u64>(arg::CONN_REQUEST_SK).unwrap_or(0));
    0
}

#[kretprobe]
pub fn tcpq_conn_request_kretprobe(_ctx: RetProbeContext) -> u32 {
    conn_request_exit(Source::Kprobe);
    0
}

// ---------------------------------------------------------------------------
// struct sock *tcp_v4_syn_recv_sock(const struct sock *sk, struct sk_buff *skb,
//         struct request_sock *req, struct dst_entry *dst,
//         struct request_sock *req_unhash, bool *own_req);
// newer ones (seen on Debian's 6.12.117 and on 6.18.44) add a seventh,
//         void (*opt_child_init)(struct sock *newsk, const struct sock *sk)
// (and tcp_v6_syn_recv_sock). Called through icsk_af_ops, so never inlined.
// NULL = no child socket: with `sk_acceptq_is_full()` that is the ACK-time
// overflow (ListenOverflows); otherwise a failed child (memory, route).
// Inside `tcp_check_req` the event waits for it to return, to learn what it
// did next; from the syncookie path it is sent at once.
// fentry on these needs a trampoline that takes all their arguments (the
// agent checks the count from BTF); kprobes always work.
// ---------------------------------------------------------------------------

#[inline(always)]
fn syn_recv_exit(sk: u64, child: u64, source: Source) {
    if child != 0 || sk == 0 || sock::filtered_out(sk) {
        return;
    }
    let backlog = sock::read::<u32>(sk, conf!(sk_ack_backlog)).unwrap_or(0);
    let max = sock::read::<u32>(sk, conf!(sk_max_ack_backlog)).unwrap_or(0);
    if let Some(p) = slot(CHECK_REQ) {
        if p.inside != 0 {
            p.sk = sk;
            p.backlog = backlog;
            p.max = max;
            p.drops = source as u32;
            return;
        }
    }
    emit_ack_drop(sk, backlog, max, outcome::UNKNOWN, source);
}

#[inline(always)]
fn emit_ack_drop(sk: u64, backlog: u32, max: u32, what: u32, source: Source) {
    count_ack_drop(sk, Queues { backlog, max }, what, source);
}

#[fexit(function = "tcp_v4_syn_recv_sock")]
pub fn tcpq_syn_recv4_fexit(ctx: FExitContext) -> u32 {
    syn_recv_exit(
        ctx.arg::<u64>(arg::SYN_RECV_SOCK_SK),
        ctx.ret::<u64>().unwrap_or(1),
        Source::Fentry,
    );
    0
}

#[fexit(function = "tcp_v6_syn_recv_sock")]
pub fn tcpq_syn_recv6_fexit(ctx: FExitContext) -> u32 {
    syn_recv_exit(
        ctx.arg::<u64>(arg::SYN_RECV_SOCK_SK),
        ctx.ret::<u64>().unwrap_or(1),
        Source::Fentry,
    );
    0
}

/// Attached to both tcp_v4_syn_recv_sock and tcp_v6_syn_recv_sock.
#[kprobe]
pub fn tcpq_syn_recv_kprobe(ctx: ProbeContext) -> u32 {
    if let Some(s) = slot(SYN_RECV) {
        s.sk = ctx.arg::<u64>(arg::SYN_RECV_SOCK_SK).unwrap_or(0);
    }
    0
}

#[kretprobe]
pub fn tcpq_syn_recv_kretprobe(ctx: RetProbeContext) -> u32 {
    if let Some(s) = slot(SYN_RECV) {
        let sk = s.sk;
        s.sk = 0;
        syn_recv_exit(sk, ctx.ret::<u64>(), Source::Kprobe);
    }
    0
}

// ---------------------------------------------------------------------------
// struct sock *tcp_check_req(struct sock *sk, struct sk_buff *skb,
//         struct request_sock *req, bool fastopen, bool *req_stolen);
// newer kernels (seen on 6.18.44, not on 6.12.117) add
// `enum skb_drop_reason *drop_reason`. Nothing is read:
// entry and exit only mark "inside".
// Every kernel. After `syn_recv_sock` fails it jumps to `listen_overflow:`:
// with net.ipv4.tcp_abort_on_overflow=0 it marks the request acked and drops
// the ACK (the SYN-ACK timer retransmits); with 1 it sends a RST. tcpq reads
// the same per-netns sysctl the kernel branches on.
// ---------------------------------------------------------------------------

#[inline(always)]
fn check_req_enter() {
    if let Some(s) = slot(CHECK_REQ) {
        s.sk = 0;
        s.inside = 1;
    }
}

#[inline(always)]
fn check_req_exit() {
    let Some(s) = slot(CHECK_REQ) else { return };
    s.inside = 0;
    let sk = s.sk;
    if sk == 0 {
        return;
    }
    s.sk = 0;
    let what = match sock::read::<u64>(sk, conf!(skc_net)) {
        Some(net) if net != 0 => match sock::read::<u8>(net, conf!(net_abort_on_overflow)) {
            Some(0) => outcome::ACK_DROPPED,
            Some(_) => outcome::RESET,
            None => outcome::UNKNOWN,
        },
        _ => outcome::UNKNOWN,
    };
    let source = if s.drops == Source::Kprobe as u32 {
        Source::Kprobe
    } else {
        Source::Fentry
    };
    emit_ack_drop(sk, s.backlog, s.max, what, source);
}

#[fentry(function = "tcp_check_req")]
pub fn tcpq_check_req_fentry(_ctx: FEntryContext) -> u32 {
    check_req_enter();
    0
}

#[fexit(function = "tcp_check_req")]
pub fn tcpq_check_req_fexit(_ctx: FExitContext) -> u32 {
    check_req_exit();
    0
}

#[kprobe]
pub fn tcpq_check_req_kprobe(_ctx: ProbeContext) -> u32 {
    check_req_enter();
    0
}

#[kretprobe]
pub fn tcpq_check_req_kretprobe(_ctx: RetProbeContext) -> u32 {
    check_req_exit();
    0
}

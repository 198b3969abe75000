//! The attach plan: what this kernel offers (BTF, tracepoint formats) →
//! the values the kernel programs need (struct offsets, record layouts)
//! and which tracepoint hooks to attach, or why not. Facts come from BTF
//! and tracepoint formats only.

use std::collections::HashMap;

use anyhow::Result;
use tcpq_common::Config;

use super::{
    btf::KernelBtf,
    hooks::{
        Hook, ACCEPT4_EXIT, ACCEPT_EXIT, KFREE_SKB, RECEIVE_RESET, RETRANSMIT_SYNACK, SEND_RESET,
        SOCK_STATE,
    },
    tracefs::Format,
};

#[derive(Debug)]
pub struct Plan {
    pub config: Config,
    /// Hooks to attach.
    pub hooks: Vec<Hook>,
    /// Hooks left out, with the reason (shown to the user).
    pub skipped: Vec<(Hook, String)>,
    /// `enum sk_rst_reason` value → name without prefix.
    pub rst_reasons: HashMap<u32, String>,
}

/// Tracepoint record layouts, as read from tracefs (`None`: no such
/// tracepoint on this kernel).
#[derive(Default)]
pub struct Formats {
    pub kfree_skb: Option<Format>,
    pub retransmit_synack: Option<Format>,
    pub send_reset: Option<Format>,
    pub receive_reset: Option<Format>,
    /// Only whether it exists: attached raw.
    pub sock_state: Option<Format>,
    pub accept4_exit: Option<Format>,
    pub accept_exit: Option<Format>,
}

impl Formats {
    pub fn read(root: &std::path::Path) -> Formats {
        Formats {
            kfree_skb: Format::read(root, "skb", "kfree_skb").ok(),
            retransmit_synack: Format::read(root, "tcp", "tcp_retransmit_synack").ok(),
            send_reset: Format::read(root, "tcp", "tcp_send_reset").ok(),
            receive_reset: Format::read(root, "tcp", "tcp_receive_reset").ok(),
            sock_state: Format::read(root, "sock", "inet_sock_set_state").ok(),
            accept4_exit: Format::read(root, "syscalls", "sys_exit_accept4").ok(),
            accept_exit: Format::read(root, "syscalls", "sys_exit_accept").ok(),
        }
    }
}

impl Plan {
    /// Attaches `hook` if its step found what it needs, else skips it with
    /// the step's reason.
    fn decide(&mut self, hook: Hook, step: Result<(), String>) {
        match step {
            Ok(()) => self.hooks.push(hook),
            Err(why) => self.skipped.push((hook, why)),
        }
    }
}

pub fn plan(
    btf: &KernelBtf,
    formats: &Formats,
    filter_lport: u16,
    filter_netns: u32,
) -> Result<Plan> {
    let mut p = Plan {
        config: Config {
            filter_lport: filter_lport as u32,
            filter_netns,
            ..offsets(btf)?
        },
        hooks: Vec::new(),
        skipped: Vec::new(),
        rst_reasons: HashMap::new(),
    };
    let step = kfree_skb(btf, formats.kfree_skb.as_ref(), &mut p.config);
    p.decide(KFREE_SKB, step);
    let step = retransmit_synack(formats.retransmit_synack.as_ref(), &mut p.config);
    p.decide(RETRANSMIT_SYNACK, step);
    let step = send_reset(formats.send_reset.as_ref(), &mut p.config).map(|()| {
        p.rst_reasons = rst_reasons(btf.enum_values("sk_rst_reason").unwrap_or_default());
    });
    p.decide(SEND_RESET, step);
    let step = receive_reset(formats.receive_reset.as_ref(), &mut p.config);
    p.decide(RECEIVE_RESET, step);
    let step = sock_state(formats.sock_state.as_ref());
    p.decide(SOCK_STATE, step);
    // Both accept syscalls share one program; their records are alike.
    for (hook, format) in [
        (ACCEPT4_EXIT, &formats.accept4_exit),
        (ACCEPT_EXIT, &formats.accept_exit),
    ] {
        let step = accept_exit(format.as_ref(), &mut p.config);
        p.decide(hook, step);
    }
    Ok(p)
}

/// The struct offsets every program needs, from BTF; an error names the
/// first one missing.
fn offsets(btf: &KernelBtf) -> Result<Config> {
    let sc = |f: &str| btf.offset("sock", &["__sk_common", f]);
    let socket_in_alloc = btf.offset("socket_alloc", &["socket"])?;
    let inode_in_alloc = btf.offset("socket_alloc", &["vfs_inode"])?;
    let i_ino = btf.offset("inode", &["i_ino"])?;
    Ok(Config {
        skc_family: sc("skc_family")?,
        skc_state: sc("skc_state")?,
        skc_num: sc("skc_num")?,
        skc_dport: sc("skc_dport")?,
        skc_rcv_saddr: sc("skc_rcv_saddr")?,
        skc_daddr: sc("skc_daddr")?,
        // Absent on kernels built without IPv6.
        skc_v6_rcv_saddr: btf
            .offset_opt("sock", &["__sk_common", "skc_v6_rcv_saddr"])
            .unwrap_or(0),
        skc_v6_daddr: btf
            .offset_opt("sock", &["__sk_common", "skc_v6_daddr"])
            .unwrap_or(0),
        skc_net: sc("skc_net")?,
        net_ns_inum: btf.offset("net", &["ns", "inum"])?,
        sk_ack_backlog: btf.offset("sock", &["sk_ack_backlog"])?,
        sk_max_ack_backlog: btf.offset("sock", &["sk_max_ack_backlog"])?,
        sk_socket: btf.offset("sock", &["sk_socket"])?,
        // `#define rsk_listener __req_common.skc_listener`
        rsk_listener: btf.offset("request_sock", &["__req_common", "skc_listener"])?,
        socket_to_ino: (inode_in_alloc + i_ino) as i32 - socket_in_alloc as i32,
        sk_drops: btf.offset("sock", &["sk_drops"])?,
        icsk_qlen: btf.offset("inet_connection_sock", &["icsk_accept_queue", "qlen"])?,
        net_abort_on_overflow: btf.offset("net", &["ipv4", "sysctl_tcp_abort_on_overflow"])?,
        net_syncookies: btf.offset("net", &["ipv4", "sysctl_tcp_syncookies"])?,
        net_max_syn_backlog: btf.offset("net", &["ipv4", "sysctl_max_syn_backlog"])?,
        sk_err: btf.offset("sock", &["sk_err"])?,
        sk_protocol: btf.offset("sock", &["sk_protocol"])?,
        inet_sport: btf.offset("inet_sock", &["inet_sport"])?,
        task_files: btf.offset("task_struct", &["files"])?,
        files_fdt: btf.offset("files_struct", &["fdt"])?,
        fdt_fd: btf.offset("fdtable", &["fd"])?,
        fdt_max_fds: btf.offset("fdtable", &["max_fds"])?,
        file_private_data: btf.offset("file", &["private_data"])?,
        socket_sk: btf.offset("socket", &["sk"])?,
        ..Config::default()
    })
}

/// skb:kfree_skb needs rx_sk (6.11+) and the TCP_LISTEN_OVERFLOW reason
/// (6.15+). Attached raw: the argument positions come from BTF.
fn kfree_skb(btf: &KernelBtf, f: Option<&Format>, config: &mut Config) -> Result<(), String> {
    let overflow = btf.enum_value("skb_drop_reason", "SKB_DROP_REASON_TCP_LISTEN_OVERFLOW");
    let (f, v) = match (f, overflow) {
        (None, _) => return Err("no such tracepoint".into()),
        (Some(_), Err(_)) => {
            return Err("kernel has no SKB_DROP_REASON_TCP_LISTEN_OVERFLOW (Linux 6.15+)".into())
        }
        (Some(f), Ok(v)) => (f, v),
    };
    let args = btf.raw_tp_args("kfree_skb").unwrap_or_default();
    let at = |want: &str| args.iter().position(|a| a == want);
    match (
        f.offset("rx_sk", 8),
        at("enum skb_drop_reason"),
        at("struct sock *"),
    ) {
        (Some(_), Some(reason), Some(rx_sk)) => {
            config.kfree_rx_sk = rx_sk as u32;
            config.kfree_reason = reason as u32;
            config.drop_reason_listen_overflow = v;
            Ok(())
        }
        (None, ..) => Err("record has no rx_sk (Linux 6.11+)".into()),
        _ => Err(format!(
            "BTF's btf_trace_kfree_skb has no reason or rx_sk argument: {args:?}"
        )),
    }
}

fn retransmit_synack(f: Option<&Format>, config: &mut Config) -> Result<(), String> {
    let off = f
        .and_then(|f| f.offset("skaddr", 8))
        .ok_or("no such tracepoint or no skaddr")?;
    config.synack_skaddr = off;
    Ok(())
}

fn send_reset(f: Option<&Format>, config: &mut Config) -> Result<(), String> {
    let f = f.ok_or("no such tracepoint")?;
    match (
        f.offset("skaddr", 8),
        f.offset("saddr", 28),
        f.offset("daddr", 28),
    ) {
        (Some(sk), Some(sa), Some(da)) => {
            config.rst_skaddr = sk;
            config.rst_saddr = sa;
            config.rst_daddr = da;
            config.rst_reason = f.offset("reason", 4).unwrap_or(0);
            Ok(())
        }
        _ => Err("record layout not recognised".into()),
    }
}

/// `enum sk_rst_reason` value → name without the `SK_RST_REASON_` prefix.
fn rst_reasons(values: Vec<(String, u32)>) -> HashMap<u32, String> {
    values
        .into_iter()
        .map(|(name, v)| {
            let short = name.strip_prefix("SK_RST_REASON_").unwrap_or(&name);
            (v, short.to_string())
        })
        .collect()
}

fn receive_reset(f: Option<&Format>, config: &mut Config) -> Result<(), String> {
    let off = f
        .and_then(|f| f.offset("skaddr", 8))
        .ok_or("no such tracepoint or no skaddr")?;
    config.recv_rst_skaddr = off;
    Ok(())
}

/// Raw: the arguments (sk, oldstate, newstate) are the same on every
/// kernel since 4.16; the classic record is not needed.
fn sock_state(f: Option<&Format>) -> Result<(), String> {
    f.map(|_| ()).ok_or_else(|| "no such tracepoint".into())
}

/// An accept syscall's exit: its `ret`, at the same offset as the other
/// accept syscall's (they share one program).
fn accept_exit(f: Option<&Format>, config: &mut Config) -> Result<(), String> {
    match f.and_then(|f| f.offset("ret", 8)) {
        Some(off) if config.accept_ret == 0 || config.accept_ret == off => {
            config.accept_ret = off;
            Ok(())
        }
        Some(_) => Err("record layout differs from accept4's".into()),
        None => Err("no such tracepoint (CONFIG_FTRACE_SYSCALLS off?)".into()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plans_on_the_running_kernel_without_root() {
        // BTF is world-readable; tracefs formats may not be: plan with the
        // 6.18 layouts captured in tracefs' tests.
        let Ok(btf) = KernelBtf::load() else { return };
        let kfree = Format::parse(
            "field:void * rx_sk;\toffset:24;\tsize:8;\tsigned:0;\nfield:enum skb_drop_reason reason;\toffset:36;\tsize:4;\tsigned:0;",
        );
        let f = Formats {
            kfree_skb: Some(kfree),
            ..Formats::default()
        };
        let p = plan(&btf, &f, 80, 0).unwrap();
        assert_eq!(p.config.filter_lport, 80);
        assert_eq!(p.config.skc_num, p.config.skc_dport + 2);
        assert!(p.config.socket_to_ino > 0);
        let has_reason = btf
            .enum_value("skb_drop_reason", "SKB_DROP_REASON_TCP_LISTEN_OVERFLOW")
            .is_ok();
        assert_eq!(p.hooks.contains(&KFREE_SKB), has_reason);
        assert!(p.skipped.iter().any(|(h, _)| *h == RETRANSMIT_SYNACK));
        assert!(p.skipped.iter().any(|(h, _)| *h == SEND_RESET));
    }

    #[test]
    fn a_kernel_without_rx_sk_skips_kfree_skb() {
        let Ok(btf) = KernelBtf::load() else { return };
        let old =
            Format::parse("field:enum skb_drop_reason reason;\toffset:28;\tsize:4;\tsigned:0;");
        let f = Formats {
            kfree_skb: Some(old),
            ..Formats::default()
        };
        let p = plan(&btf, &f, 0, 0).unwrap();
        assert!(!p.hooks.contains(&KFREE_SKB));
        assert_eq!(p.config.kfree_rx_sk, 0);
    }

    #[test]
    fn both_accept_syscalls_share_one_program_and_layout() {
        let Ok(btf) = KernelBtf::load() else { return };
        let exit = "field:int __syscall_nr;\toffset:8;\tsize:4;\tsigned:1;\nfield:long ret;\toffset:16;\tsize:8;\tsigned:1;";
        let f = Formats {
            accept4_exit: Some(Format::parse(exit)),
            accept_exit: Some(Format::parse(exit)),
            sock_state: Some(Format::parse("")),
            ..Formats::default()
        };
        let p = plan(&btf, &f, 0, 0).unwrap();
        assert_eq!(p.config.accept_ret, 16);
        assert!(p.hooks.contains(&ACCEPT4_EXIT) && p.hooks.contains(&ACCEPT_EXIT));
        assert!(p.hooks.contains(&SOCK_STATE) && SOCK_STATE.raw);
        assert!(p.config.sk_protocol > 0);
        assert!(p.skipped.iter().any(|(h, _)| *h == RECEIVE_RESET));
    }

    #[test]
    fn tracepoint_steps_read_their_record_layouts() {
        let mut c = Config::default();
        let exit = |ret: u32| {
            Format::parse(&format!(
                "field:int __syscall_nr;\toffset:8;\tsize:4;\tsigned:1;\nfield:long ret;\toffset:{ret};\tsize:8;\tsigned:1;"
            ))
        };
        assert_eq!(accept_exit(Some(&exit(16)), &mut c), Ok(()));
        assert_eq!(c.accept_ret, 16);
        assert_eq!(
            accept_exit(Some(&exit(24)), &mut c),
            Err("record layout differs from accept4's".into())
        );
        assert_eq!(
            accept_exit(None, &mut c),
            Err("no such tracepoint (CONFIG_FTRACE_SYSCALLS off?)".into())
        );
        let synack = Format::parse("field:const void * skaddr;\toffset:8;\tsize:8;\tsigned:0;");
        assert_eq!(retransmit_synack(Some(&synack), &mut c), Ok(()));
        assert_eq!(receive_reset(Some(&synack), &mut c), Ok(()));
        assert_eq!((c.synack_skaddr, c.recv_rst_skaddr), (8, 8));
        assert_eq!(
            send_reset(Some(&synack), &mut c),
            Err("record layout not recognised".into())
        );
        assert_eq!(send_reset(None, &mut c), Err("no such tracepoint".into()));
        assert_eq!(sock_state(None), Err("no such tracepoint".into()));
        assert_eq!(sock_state(Some(&Format::parse(""))), Ok(()));
    }

    #[test]
    fn reset_reasons_lose_their_prefix() {
        let r = rst_reasons(vec![
            ("SK_RST_REASON_NOT_SPECIFIED".into(), 0),
            ("SK_RST_REASON_TCP_OLD_ACK".into(), 5),
            ("OTHER".into(), 9),
        ]);
        assert_eq!(r[&0], "NOT_SPECIFIED");
        assert_eq!(r[&5], "TCP_OLD_ACK");
        assert_eq!(r[&9], "OTHER");
    }
}

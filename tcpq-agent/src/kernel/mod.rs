//! What this kernel offers → the values the kernel programs need and which
//! hooks to attach. Facts come from BTF and tracepoint formats only.

pub mod btf;
pub mod caps;
pub mod load;
pub mod privs;
pub mod protos;
pub mod tracefs;

use std::collections::HashMap;

use anyhow::{Context, Result};
use tcpq_common::{names::prog, Config};

use crate::{
    kernel::btf::KernelBtf,
    kernel::caps::{Facts, FnFacts},
    kernel::tracefs::Format,
};

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

pub fn plan(
    btf: &KernelBtf,
    formats: &Formats,
    filter_lport: u16,
    filter_netns: u32,
) -> Result<Plan> {
    let sc = |f: &str| btf.offset("sock", &["__sk_common", f]);
    let socket_in_alloc = btf.offset("socket_alloc", &["socket"])?;
    let inode_in_alloc = btf.offset("socket_alloc", &["vfs_inode"])?;
    let i_ino = btf.offset("inode", &["i_ino"])?;
    let mut config = Config {
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
        filter_lport: filter_lport as u32,
        filter_netns,
        ..Config::default()
    };
    let mut hooks = Vec::new();
    let mut skipped = Vec::new();

    // skb:kfree_skb needs rx_sk (6.11+) and the TCP_LISTEN_OVERFLOW reason (6.15+).
    let overflow = btf.enum_value("skb_drop_reason", "SKB_DROP_REASON_TCP_LISTEN_OVERFLOW");
    match (&formats.kfree_skb, overflow) {
        (None, _) => skipped.push((KFREE_SKB, "no such tracepoint".into())),
        (Some(_), Err(_)) => skipped.push((
            KFREE_SKB,
            "kernel has no SKB_DROP_REASON_TCP_LISTEN_OVERFLOW (Linux 6.15+)".into(),
        )),
        (Some(f), Ok(v)) => {
            // Attached raw: the argument positions come from BTF.
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
                    hooks.push(KFREE_SKB);
                }
                (None, ..) => skipped.push((KFREE_SKB, "record has no rx_sk (Linux 6.11+)".into())),
                _ => skipped.push((
                    KFREE_SKB,
                    format!("BTF's btf_trace_kfree_skb has no reason or rx_sk argument: {args:?}"),
                )),
            }
        }
    }

    match formats
        .retransmit_synack
        .as_ref()
        .and_then(|f| f.offset("skaddr", 8))
    {
        Some(off) => {
            config.synack_skaddr = off;
            hooks.push(RETRANSMIT_SYNACK);
        }
        None => skipped.push((RETRANSMIT_SYNACK, "no such tracepoint or no skaddr".into())),
    }

    let mut rst_reasons = HashMap::new();
    match formats.send_reset.as_ref() {
        Some(f) => match (
            f.offset("skaddr", 8),
            f.offset("saddr", 28),
            f.offset("daddr", 28),
        ) {
            (Some(sk), Some(sa), Some(da)) => {
                config.rst_skaddr = sk;
                config.rst_saddr = sa;
                config.rst_daddr = da;
                config.rst_reason = f.offset("reason", 4).unwrap_or(0);
                if let Ok(vals) = btf.enum_values("sk_rst_reason") {
                    for (name, v) in vals {
                        let short = name
                            .strip_prefix("SK_RST_REASON_")
                            .unwrap_or(&name)
                            .to_string();
                        rst_reasons.insert(v, short);
                    }
                }
                hooks.push(SEND_RESET);
            }
            _ => skipped.push((SEND_RESET, "record layout not recognised".into())),
        },
        None => skipped.push((SEND_RESET, "no such tracepoint".into())),
    }
    match formats
        .receive_reset
        .as_ref()
        .and_then(|f| f.offset("skaddr", 8))
    {
        Some(off) => {
            config.recv_rst_skaddr = off;
            hooks.push(RECEIVE_RESET);
        }
        None => skipped.push((RECEIVE_RESET, "no such tracepoint or no skaddr".into())),
    }

    // Raw: the arguments (sk, oldstate, newstate) are the same on every
    // kernel since 4.16; the classic record is not needed.
    match formats.sock_state {
        Some(_) => hooks.push(SOCK_STATE),
        None => skipped.push((SOCK_STATE, "no such tracepoint".into())),
    }

    // Both accept syscalls share one program; their records are alike.
    for (hook, format) in [
        (ACCEPT4_EXIT, &formats.accept4_exit),
        (ACCEPT_EXIT, &formats.accept_exit),
    ] {
        match format.as_ref().and_then(|f| f.offset("ret", 8)) {
            Some(off) if config.accept_ret == 0 || config.accept_ret == off => {
                config.accept_ret = off;
                hooks.push(hook);
            }
            Some(_) => skipped.push((hook, "record layout differs from accept4's".into())),
            None => skipped.push((
                hook,
                "no such tracepoint (CONFIG_FTRACE_SYSCALLS off?)".into(),
            )),
        }
    }
    Ok(Plan {
        config,
        hooks,
        skipped,
        rst_reasons,
    })
}

/// Reads kernel facts and plans.
pub fn discover(
    tracefs: &std::path::Path,
    filter_lport: u16,
    filter_netns: u32,
) -> Result<(Plan, Facts)> {
    let btf = KernelBtf::load()?;
    let plan = plan(&btf, &Formats::read(tracefs), filter_lport, filter_netns)
        .context("reading struct layouts from kernel BTF")?;
    Ok((plan, facts(&btf, tracefs)))
}

/// What the kernel offers for the kernel-function hooks (see `caps`).
pub fn facts(btf: &KernelBtf, tracefs: &std::path::Path) -> Facts {
    let release = std::fs::read_to_string("/proc/sys/kernel/osrelease")
        .unwrap_or_default()
        .trim()
        .to_string();
    let names: Vec<&str> = caps::Kfunc::ALL.iter().map(|k| k.name()).collect();
    let ftrace_list = tracefs.join("available_filter_functions");
    // Unreadable under lockdown even for root: then "unknown", not "no".
    let ftrace = symbols_in(&ftrace_list, 0, &names);
    let kallsyms =
        symbols_in(std::path::Path::new("/proc/kallsyms"), 2, &names).unwrap_or_default();
    let functions = names
        .iter()
        .map(|&name| {
            let f = FnFacts {
                btf_args: btf.func_args(name),
                ftrace: ftrace.as_ref().map(|found| found.contains(name)),
                kallsyms: kallsyms.contains(name),
            };
            (name.to_string(), f)
        })
        .collect();
    Facts {
        version: caps::parse_release(&release),
        release,
        kprobes: tracefs.join("kprobe_events").exists(),
        ftrace: ftrace_list.exists(),
        tracing_refused: btf
            .func_id("bpf_fentry_test1")
            .and_then(|id| crate::kernel::load::probe_fentry(id).err()),
        functions,
    }
}

/// Which of `names` appear as whitespace-separated field `field` of some
/// line of `path`, read line by line (kallsyms is large); None if the file
/// cannot be read.
fn symbols_in(
    path: &std::path::Path,
    field: usize,
    names: &[&str],
) -> Option<std::collections::HashSet<String>> {
    use std::io::BufRead;
    let f = std::fs::File::open(path).ok()?;
    let mut found = std::collections::HashSet::new();
    for line in std::io::BufReader::new(f).lines() {
        let line = line.ok()?;
        if let Some(sym) = line.split_whitespace().nth(field) {
            if names.contains(&sym) {
                found.insert(sym.to_string());
            }
        }
    }
    Some(found)
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
}

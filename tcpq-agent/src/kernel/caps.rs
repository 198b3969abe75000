//! What this kernel offers for the design card's kernel-function hooks, and
//! which hook kind to use for each: a pure function of facts, unit-tested.
//! The override order is `--attach` first, then detection.
//!
//! fentry/fexit (BPF trampolines) are the cheapest; they need BTF for the
//! function, ftrace able to patch it, and — on x86-64 before Linux 6.6 — at
//! most 6 arguments. kprobes need CONFIG_KPROBES and a symbol. Without
//! either, tcpq uses tracepoints and sock_diag.

use std::collections::BTreeMap;

use tcpq_common::protos::kfunc;

/// A kernel function tcpq hooks (the design card's kernel-function hooks).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Kfunc {
    /// SYN-time drops, exact (sk_drops before/after).
    ConnRequest,
    /// ACK-time overflow (IPv4).
    SynRecv4,
    /// ACK-time overflow (IPv6).
    SynRecv6,
    /// What follows an ACK-time overflow: dropped or RST.
    CheckReq,
    /// Accepts per listener, counted in the kernel.
    CskAccept,
    /// The backlog listen() asked for, before the somaxconn cap.
    SysListen,
}

impl Kfunc {
    /// Every hooked function, in plan order.
    pub const ALL: [Kfunc; 6] = [
        Kfunc::ConnRequest,
        Kfunc::SynRecv4,
        Kfunc::SynRecv6,
        Kfunc::CheckReq,
        Kfunc::CskAccept,
        Kfunc::SysListen,
    ];

    /// The kernel's name of the function (BTF, kallsyms).
    pub fn name(self) -> &'static str {
        match self {
            Kfunc::ConnRequest => kfunc::TCP_CONN_REQUEST,
            Kfunc::SynRecv4 => kfunc::TCP_V4_SYN_RECV_SOCK,
            Kfunc::SynRecv6 => kfunc::TCP_V6_SYN_RECV_SOCK,
            Kfunc::CheckReq => kfunc::TCP_CHECK_REQ,
            Kfunc::CskAccept => kfunc::INET_CSK_ACCEPT,
            Kfunc::SysListen => kfunc::SYS_LISTEN,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum AttachMode {
    /// fentry where possible, else kprobe, else tracepoints/sock_diag.
    Auto,
    Fentry,
    Kprobe,
    /// No kernel-function hooks: tracepoints and sock_diag only.
    Tracepoint,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum HookKind {
    Fentry,
    Kprobe,
}

impl HookKind {
    pub fn as_str(self) -> &'static str {
        match self {
            HookKind::Fentry => "fentry",
            HookKind::Kprobe => "kprobe",
        }
    }
}

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct FnFacts {
    /// Parameter count from BTF; None: not in BTF.
    pub btf_args: Option<usize>,
    /// Listed in tracefs `available_filter_functions` (ftrace can patch
    /// it); None when the list cannot be read (lockdown): then try.
    pub ftrace: Option<bool>,
    /// In /proc/kallsyms (a kprobe can find it).
    pub kallsyms: bool,
}

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Facts {
    pub release: String,
    /// (major, minor) of the running kernel.
    pub version: (u32, u32),
    /// tracefs has `kprobe_events`: the kernel was built with kprobes.
    pub kprobes: bool,
    /// tracefs has `available_filter_functions`: dynamic ftrace, which
    /// fentry/fexit trampolines need (readable or not).
    pub ftrace: bool,
    /// Why the kernel refused a trivial BPF_PROG_TYPE_TRACING (fentry)
    /// program, when a probe load was made and failed; None: it loads, or
    /// was not probed (then the loader finds out).
    pub tracing_refused: Option<String>,
    pub functions: BTreeMap<String, FnFacts>,
}

/// The choice for one function: what to try, in order, and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Choice {
    pub kfunc: Kfunc,
    /// Hook kinds to try, best first; empty: tracepoint/sock_diag path.
    pub try_order: Vec<HookKind>,
    pub why: String,
}

impl Choice {
    /// The kernel's name of the function.
    pub fn function(&self) -> &'static str {
        self.kfunc.name()
    }
}

/// Most arguments a BPF trampoline takes on x86-64: 6 before Linux 6.6,
/// 12 since ("bpf, x86: allow function arguments up to 12 for TRACING").
pub fn max_trampoline_args(version: (u32, u32)) -> usize {
    if version >= (6, 6) {
        12
    } else {
        6
    }
}

/// Parses "6.18.44-fc-v595" → (6, 18).
pub fn parse_release(release: &str) -> (u32, u32) {
    let mut it = release
        .split(|c: char| !c.is_ascii_digit())
        .filter(|s| !s.is_empty());
    let major = it.next().and_then(|s| s.parse().ok()).unwrap_or(0);
    let minor = it.next().and_then(|s| s.parse().ok()).unwrap_or(0);
    (major, minor)
}

fn fentry_verdict(facts: &Facts, f: &FnFacts) -> Result<(), String> {
    let Some(n) = f.btf_args else {
        return Err("not in kernel BTF".into());
    };
    if !facts.ftrace {
        return Err("kernel has no dynamic ftrace (no available_filter_functions)".into());
    }
    if let Some(why) = &facts.tracing_refused {
        return Err(format!("the kernel refuses fentry programs ({why})"));
    }
    if f.ftrace == Some(false) {
        return Err("not in available_filter_functions (inlined or notrace)".into());
    }
    let max = max_trampoline_args(facts.version);
    if n > max {
        return Err(format!(
            "{n} arguments, trampolines on {}.{} take {max}",
            facts.version.0, facts.version.1
        ));
    }
    Ok(())
}

fn kprobe_verdict(facts: &Facts, f: &FnFacts) -> Result<(), String> {
    if !facts.kprobes {
        return Err("kernel has no kprobes (no kprobe_events in tracefs)".into());
    }
    if !f.kallsyms && f.ftrace != Some(true) {
        return Err("symbol not found".into());
    }
    Ok(())
}

pub fn plan(facts: &Facts, mode: AttachMode) -> Vec<Choice> {
    Kfunc::ALL
        .iter()
        .map(|&kfunc| {
            let f = facts
                .functions
                .get(kfunc.name())
                .cloned()
                .unwrap_or_default();
            let fentry = fentry_verdict(facts, &f);
            let kprobe = kprobe_verdict(facts, &f);
            let (try_order, why) = match mode {
                AttachMode::Tracepoint => (vec![], "--attach tracepoint".to_string()),
                AttachMode::Fentry => match &fentry {
                    Ok(()) => (vec![HookKind::Fentry], "--attach fentry".into()),
                    Err(e) => (vec![], format!("--attach fentry, but {e}")),
                },
                AttachMode::Kprobe => match &kprobe {
                    Ok(()) => (vec![HookKind::Kprobe], "--attach kprobe".into()),
                    Err(e) => (vec![], format!("--attach kprobe, but {e}")),
                },
                AttachMode::Auto => match (&fentry, &kprobe) {
                    (Ok(()), Ok(())) => (
                        vec![HookKind::Fentry, HookKind::Kprobe],
                        "fentry possible; kprobe as fallback".into(),
                    ),
                    (Ok(()), Err(k)) => (
                        vec![HookKind::Fentry],
                        format!("fentry possible; no kprobe fallback: {k}"),
                    ),
                    (Err(e), Ok(())) => (
                        vec![HookKind::Kprobe],
                        format!("kprobe, because fentry is out: {e}"),
                    ),
                    (Err(e), Err(k)) => (
                        vec![],
                        format!("tracepoint/sock_diag path: fentry: {e}; kprobe: {k}"),
                    ),
                },
            };
            Choice {
                kfunc,
                try_order,
                why,
            }
        })
        .collect()
}

/// A forced `--attach fentry|kprobe` is honoured for every function or it
/// is an error (only `auto` falls back): the reasons, grouped, in one
/// line. `refused` lists (function, why) of functions the forced kind
/// cannot serve; from the plan, or from the loader's attempts.
pub fn forced_error(mode: AttachMode, refused: &[(&str, String)]) -> Option<String> {
    let kind = match mode {
        AttachMode::Fentry => "fentry",
        AttachMode::Kprobe => "kprobe",
        _ => return None,
    };
    if refused.is_empty() {
        return None;
    }
    let mut groups: Vec<(String, Vec<&str>)> = Vec::new();
    for (f, why) in refused {
        let prefix = format!("--attach {kind}, but ");
        let why = why.strip_prefix(&prefix).unwrap_or(why).to_string();
        match groups.iter_mut().find(|(w, _)| *w == why) {
            Some((_, fs)) => fs.push(f),
            None => groups.push((why, vec![f])),
        }
    }
    let parts: Vec<String> = groups
        .iter()
        .map(|(why, fs)| format!("{}: {why}", fs.join(", ")))
        .collect();
    Some(format!(
        "--attach {kind} cannot be honoured on this kernel ({}); --attach auto falls back to what the kernel offers",
        parts.join("; ")
    ))
}

/// [`forced_error`] for a plan.
pub fn check_plan(mode: AttachMode, choices: &[Choice]) -> Result<(), String> {
    let refused: Vec<(&str, String)> = choices
        .iter()
        .filter(|c| c.try_order.is_empty())
        .map(|c| (c.function(), c.why.clone()))
        .collect();
    match forced_error(mode, &refused) {
        Some(e) => Err(e),
        None => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn facts(version: (u32, u32), kprobes: bool, args: usize) -> Facts {
        let f = FnFacts {
            btf_args: Some(args),
            ftrace: Some(true),
            kallsyms: true,
        };
        Facts {
            release: format!("{}.{}.0", version.0, version.1),
            version,
            kprobes,
            ftrace: true,
            tracing_refused: None,
            functions: Kfunc::ALL
                .iter()
                .map(|k| (k.name().to_string(), f.clone()))
                .collect(),
        }
    }

    fn order(c: &[Choice], f: &str) -> Vec<HookKind> {
        c.iter()
            .find(|c| c.function() == f)
            .unwrap()
            .try_order
            .clone()
    }

    #[test]
    fn debian_6_1_uses_fentry_with_kprobe_fallback() {
        let p = plan(&facts((6, 1), true, 6), AttachMode::Auto);
        assert_eq!(
            order(&p, "tcp_conn_request"),
            vec![HookKind::Fentry, HookKind::Kprobe]
        );
    }

    #[test]
    fn seven_arguments_rule_out_fentry_before_6_6() {
        let mut f = facts((6, 1), true, 4);
        f.functions
            .get_mut("tcp_v4_syn_recv_sock")
            .unwrap()
            .btf_args = Some(7);
        let p = plan(&f, AttachMode::Auto);
        assert_eq!(order(&p, "tcp_v4_syn_recv_sock"), vec![HookKind::Kprobe]);
        assert!(p[1].why.contains("7 arguments"), "{}", p[1].why);
        let p = plan(
            &Facts {
                version: (6, 6),
                ..f
            },
            AttachMode::Auto,
        );
        assert_eq!(order(&p, "tcp_v4_syn_recv_sock")[0], HookKind::Fentry);
    }

    #[test]
    fn this_host_without_kprobes_has_fentry_to_try_or_nothing() {
        let p = plan(&facts((6, 18), false, 4), AttachMode::Auto);
        assert_eq!(order(&p, "tcp_check_req"), vec![HookKind::Fentry]);
        let p = plan(&facts((6, 18), false, 4), AttachMode::Kprobe);
        assert!(p
            .iter()
            .all(|c| c.try_order.is_empty() && c.why.contains("no kprobes")));
    }

    #[test]
    fn forced_modes_and_missing_functions() {
        let mut f = facts((6, 1), true, 4);
        f.functions.remove("tcp_v6_syn_recv_sock");
        let p = plan(&f, AttachMode::Fentry);
        assert_eq!(order(&p, "tcp_v6_syn_recv_sock"), vec![]);
        assert!(p[2].why.contains("not in kernel BTF"));
        assert_eq!(order(&p, "tcp_conn_request"), vec![HookKind::Fentry]);
        assert!(plan(&f, AttachMode::Tracepoint)
            .iter()
            .all(|c| c.try_order.is_empty()));
    }

    #[test]
    fn an_unreadable_ftrace_list_means_try_not_give_up() {
        let mut f = facts((6, 18), false, 4);
        for v in f.functions.values_mut() {
            v.ftrace = None;
        }
        assert_eq!(
            order(&plan(&f, AttachMode::Auto), "tcp_conn_request"),
            vec![HookKind::Fentry]
        );
        f.ftrace = false;
        let p = plan(&f, AttachMode::Auto);
        assert!(
            p[0].try_order.is_empty() && p[0].why.contains("no dynamic ftrace"),
            "{}",
            p[0].why
        );
    }

    #[test]
    fn a_forced_mode_that_cannot_be_honoured_is_an_error() {
        let f = facts((6, 18), false, 4);
        let e = check_plan(AttachMode::Kprobe, &plan(&f, AttachMode::Kprobe)).unwrap_err();
        assert!(
            e.starts_with("--attach kprobe cannot be honoured on this kernel (tcp_conn_request, tcp_v4_syn_recv_sock, tcp_v6_syn_recv_sock, tcp_check_req, inet_csk_accept, __sys_listen: kernel has no kprobes"),
            "{e}"
        );
        assert!(check_plan(AttachMode::Auto, &plan(&f, AttachMode::Auto)).is_ok());
        assert!(check_plan(AttachMode::Tracepoint, &plan(&f, AttachMode::Tracepoint)).is_ok());
        assert!(check_plan(AttachMode::Fentry, &plan(&f, AttachMode::Fentry)).is_ok());
        let mut f = facts((6, 1), true, 6);
        f.functions
            .get_mut("tcp_v4_syn_recv_sock")
            .unwrap()
            .btf_args = Some(7);
        let e = check_plan(AttachMode::Fentry, &plan(&f, AttachMode::Fentry)).unwrap_err();
        assert!(e.contains("(tcp_v4_syn_recv_sock: 7 arguments"), "{e}");
    }

    #[test]
    fn releases_parse() {
        assert_eq!(parse_release("6.18.44-fc-v595"), (6, 18));
        assert_eq!(parse_release("6.1.0-56-cloud-amd64"), (6, 1));
        assert_eq!(parse_release("garbage"), (0, 0));
    }
}

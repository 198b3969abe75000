//! `tcpq-agent doctor`: what this kernel offers, the attach plan, why each
//! choice was made, and (as root) what actually attached.

use std::fmt::Write as _;

use anyhow::Result;

use crate::{
    kernel::caps::{self, AttachMode, Choice, Facts, Kfunc},
    kernel::load,
    kernel::privs,
    kernel::tracefs,
    kernel::{self, Tp},
};

pub fn run(mode: AttachMode) -> Result<()> {
    let eff = privs::effective();
    let missing = privs::missing(eff, privs::Mode::Trace.required(), privs::last_cap());
    print!("{}", privs::report(eff, privs::last_cap()));
    let tracefs = tracefs::ensure_mounted()?;
    let (plan, facts) = kernel::discover(&tracefs, 0, 0)?;
    let choices = caps::plan(&facts, mode);
    print!("\n{}", render_facts(&facts, &choices));
    // The same BTF the plan came from (`--btf` or the kernel's).
    if let Ok(btf) = crate::kernel::btf::KernelBtf::load() {
        print!(
            "\n{}",
            crate::kernel::protos::render(&crate::kernel::protos::check(&btf))
        );
    }
    // A forced mode this kernel cannot honour: `trace` would refuse it.
    caps::check_plan(mode, &choices).map_err(|e| anyhow::anyhow!(e))?;
    if !missing.is_empty() {
        println!(
            "\n(without {}: this is the plan; with them doctor shows what attaches)",
            privs::names(&missing)
        );
        return Ok(());
    }
    let loaded = load::load(&plan, &choices, 1 << 20, false)?;
    println!("\nattached (tried in plan order):");
    for k in &loaded.kfuncs {
        let got = k.kind.map(|k| k.as_str()).unwrap_or("none");
        let notes = if k.notes.is_empty() {
            String::new()
        } else {
            format!("  [{}]", k.notes.join("; "))
        };
        println!("  {:<22} {got}{notes}", k.function());
    }
    for t in &loaded.attached {
        println!("  {:<22} tracepoint", t.to_string());
    }
    for (t, why) in &loaded.skipped {
        println!("  {t:<22} not attached: {why}");
    }
    println!(
        "  {:<22} sock_diag polling of every listener in every netns (always)",
        "listeners"
    );
    let syn = match loaded.kind_of(Kfunc::ConnRequest) {
        Some(k) => format!("exact, from {} tcp_conn_request", k.as_str()),
        None => "from sock_diag (sk_drops between polls)".into(),
    };
    let ack = match (
        loaded.kind_of(Kfunc::SynRecv4),
        loaded.has_tracepoint(Tp::KfreeSkb),
    ) {
        (Some(k), _) => format!("exact, from {} tcp_v4/v6_syn_recv_sock", k.as_str()),
        (None, true) => "exact, from tracepoint skb:kfree_skb".into(),
        (None, false) if loaded.kind_of(Kfunc::ConnRequest).is_some() => {
            "from sock_diag: half of the sk_drops the SYN hook does not explain".into()
        }
        (None, false) => {
            "not told apart: sock_diag counts each as 2 SYN-time drops (no hook on this kernel)"
                .into()
        }
    };
    println!("\nSYN-time drops: {syn}\nACK-time overflows: {ack}");
    let refused: Vec<(&str, String)> = loaded
        .kfuncs
        .iter()
        .filter(|k| k.kind.is_none())
        .map(|k| (k.function(), k.notes.join("; ")))
        .collect();
    if let Some(e) = caps::forced_error(mode, &refused) {
        anyhow::bail!(e);
    }
    Ok(())
}

pub fn render_facts(facts: &Facts, choices: &[Choice]) -> String {
    let mut s = String::new();
    let _ = writeln!(
        s,
        "kernel: {} ({}.{})",
        facts.release, facts.version.0, facts.version.1
    );
    let _ = writeln!(
        s,
        "kprobes: {}",
        if facts.kprobes {
            "yes"
        } else {
            "no (tracefs has no kprobe_events: CONFIG_KPROBES off)"
        }
    );
    let _ = writeln!(
        s,
        "dynamic ftrace (fentry/fexit): {}; trampolines take up to {} arguments",
        if facts.ftrace { "yes" } else { "no" },
        caps::max_trampoline_args(facts.version)
    );
    let _ = writeln!(s, "\nfunctions:");
    for c in choices {
        let f = facts
            .functions
            .get(c.function())
            .cloned()
            .unwrap_or_default();
        let args = f
            .btf_args
            .map(|n| n.to_string())
            .unwrap_or_else(|| "-".into());
        let yn = |b| if b { "yes" } else { "no" };
        let order: Vec<_> = c.try_order.iter().map(|k| k.as_str()).collect();
        let order = if order.is_empty() {
            "tracepoint/sock_diag".to_string()
        } else {
            order.join(" → ")
        };
        let _ = writeln!(
            s,
            "  {:<22} args={args} ftrace={} kallsyms={}  plan: {order}  ({})",
            c.function(),
            f.ftrace.map(yn).unwrap_or("unreadable"),
            yn(f.kallsyms),
            c.why
        );
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kernel::caps::FnFacts;

    #[test]
    fn explains_each_choice() {
        let f = FnFacts {
            btf_args: Some(6),
            ftrace: Some(true),
            kallsyms: true,
        };
        let facts = Facts {
            release: "6.1.0-56-cloud-amd64".into(),
            version: (6, 1),
            kprobes: true,
            ftrace: true,
            tracing_refused: None,
            functions: caps::Kfunc::ALL
                .iter()
                .map(|k| (k.name().to_string(), f.clone()))
                .collect(),
        };
        let out = render_facts(&facts, &caps::plan(&facts, AttachMode::Auto));
        assert!(out.contains("kernel: 6.1.0-56-cloud-amd64 (6.1)"), "{out}");
        assert!(
            out.contains(
                "tcp_conn_request       args=6 ftrace=yes kallsyms=yes  plan: fentry → kprobe"
            ),
            "{out}"
        );
        let out = render_facts(&facts, &caps::plan(&facts, AttachMode::Tracepoint));
        assert!(
            out.contains("plan: tracepoint/sock_diag  (--attach tracepoint)"),
            "{out}"
        );
    }
}

//! Reading what the running kernel offers: its BTF, its tracepoint
//! formats (for [`plan`](super::plan)), and for the kernel-function hooks
//! which functions exist and can be traced (for [`caps`](super::caps)).

use anyhow::{Context, Result};

use super::{
    btf::KernelBtf,
    caps::{self, Facts, FnFacts},
    plan::{plan, Formats, Plan},
};

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

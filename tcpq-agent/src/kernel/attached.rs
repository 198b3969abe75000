//! What attached, as `load` leaves it: the hook kind serving each kernel
//! function (and why earlier kinds failed), the tracepoints attached,
//! skipped and deferred; queries on that record, and attaching or
//! detaching the deferred syscall tracepoints.

use anyhow::{Context, Result};
use aya::{
    programs::{trace_point::TracePointLinkId, TracePoint},
    Ebpf,
};

use super::{
    caps::{HookKind, Kfunc},
    hooks::{Hook, Tp},
};

/// What happened to one kernel function.
#[derive(Debug, Clone)]
pub struct KfuncResult {
    pub kfunc: Kfunc,
    /// The hook kind in use, if any.
    pub kind: Option<HookKind>,
    /// Why earlier kinds failed.
    pub notes: Vec<String>,
}

impl KfuncResult {
    /// The kernel's name of the function.
    pub fn function(&self) -> &'static str {
        self.kfunc.name()
    }
}

pub struct Loaded {
    pub ebpf: Ebpf,
    pub kfuncs: Vec<KfuncResult>,
    /// The attached tracepoints (shown as `category:name`).
    pub attached: Vec<Hook>,
    /// Tracepoints not attached, and why.
    pub skipped: Vec<(String, String)>,
    /// Syscall tracepoints loaded but left detached, for `attach_deferred`.
    pub deferred: Vec<Hook>,
    /// How many of `attached` are raw tracepoints.
    pub raw_attached: usize,
}

impl Loaded {
    /// The hook kind serving `kfunc`, if any.
    pub fn kind_of(&self, kfunc: Kfunc) -> Option<HookKind> {
        self.kfuncs
            .iter()
            .find(|k| k.kfunc == kfunc)
            .and_then(|k| k.kind)
    }

    /// Whether tracepoint `tp` is attached.
    pub fn has_tracepoint(&self, tp: Tp) -> bool {
        self.attached.iter().any(|h| h.tp == tp)
    }

    /// Attaches the deferred syscall tracepoints; returns their links.
    pub fn attach_deferred(&mut self) -> Result<Vec<TracePointLinkId>> {
        let mut links = Vec::new();
        for hook in &self.deferred {
            let prog: &mut TracePoint = self
                .ebpf
                .program_mut(hook.program)
                .with_context(|| format!("program {} missing", hook.program))?
                .try_into()?;
            links.push(prog.attach(hook.category, hook.name)?);
        }
        Ok(links)
    }

    /// Detaches what `attach_deferred` attached.
    pub fn detach_deferred(&mut self, links: Vec<TracePointLinkId>) {
        if let Some(hook) = self.deferred.first() {
            if let Some(Ok(prog)) = self
                .ebpf
                .program_mut(hook.program)
                .map(<&mut TracePoint>::try_from)
            {
                for l in links {
                    let _ = prog.detach(l);
                }
            }
        }
    }

    /// Whether the accept() syscall hooks are attached or can be.
    pub fn has_syscall_hooks(&self) -> bool {
        !self.deferred.is_empty() || self.attached.iter().any(Hook::is_syscall)
    }

    /// Attached programs per hook kind (fentry, kprobe, tracepoint,
    /// raw_tracepoint, syscall), for the agent's health metrics.
    pub fn probes(&self, deferred_attached: bool) -> Vec<(String, u64)> {
        let mut out: std::collections::BTreeMap<String, u64> =
            ["tracepoint", "raw_tracepoint", "syscall"]
                .iter()
                .map(|k| (k.to_string(), 0))
                .collect();
        for k in self.kfuncs.iter().filter_map(|k| k.kind) {
            *out.entry(k.as_str().to_string()).or_default() += 1;
        }
        let syscalls = self.attached.iter().filter(|h| h.is_syscall()).count();
        let deferred = if deferred_attached {
            self.deferred.len()
        } else {
            0
        };
        out.insert("syscall".into(), (syscalls + deferred) as u64);
        out.insert("raw_tracepoint".into(), self.raw_attached as u64);
        out.insert(
            "tracepoint".into(),
            (self.attached.len() - syscalls - self.raw_attached) as u64,
        );
        out.into_iter().collect()
    }

    /// One line per attached hook, for the start-up message.
    pub fn summary(&self) -> Vec<String> {
        let mut out: Vec<String> = self
            .kfuncs
            .iter()
            .filter_map(|k| Some(format!("{} {}", k.kind?.as_str(), k.function())))
            .collect();
        out.extend(self.attached.iter().map(|t| format!("tracepoint {t}")));
        out.extend(
            self.deferred
                .iter()
                .map(|h| format!("{}:{} when a queue backs up", h.category, h.name)),
        );
        out
    }
}

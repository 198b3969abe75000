//! Loading the embedded eBPF object with the planned configuration and
//! attaching its programs. Thin: all decisions are in `kernel::plan`.

use anyhow::{bail, Context, Result};
use aya::{programs::TracePoint, Ebpf, EbpfLoader};

use crate::kernel::Plan;

static OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/tcpq"));

pub struct Loaded {
    pub ebpf: Ebpf,
    /// `category:name` of each attached tracepoint.
    pub attached: Vec<String>,
    /// Hooks that could not be attached, and why.
    pub failed: Vec<(String, String)>,
}

pub fn load(plan: &Plan, ring_buffer_bytes: u32) -> Result<Loaded> {
    if OBJECT.is_empty() {
        bail!("this tcpq-agent was built with AYA_BUILD_SKIP=1 and carries no kernel programs; rebuild without it");
    }
    raise_memlock();
    let mut ebpf = EbpfLoader::new()
        .override_global("CONFIG", &plan.config, true)
        .map_max_entries("EVENTS", ring_buffer_bytes)
        .load(OBJECT)
        .context("loading the eBPF object")?;
    let mut attached = Vec::new();
    let mut failed = Vec::new();
    for hook in &plan.hooks {
        let what = format!("{}:{}", hook.category, hook.name);
        let r = (|| -> Result<()> {
            let prog: &mut TracePoint = ebpf
                .program_mut(hook.program)
                .with_context(|| format!("program {} missing from the object", hook.program))?
                .try_into()?;
            prog.load()?;
            prog.attach(hook.category, hook.name)?;
            Ok(())
        })();
        match r {
            Ok(()) => attached.push(what),
            Err(e) => failed.push((what, format!("{e:#}"))),
        }
    }
    if attached.is_empty() && !plan.hooks.is_empty() {
        let why: Vec<_> = failed.iter().map(|(w, e)| format!("{w}: {e}")).collect();
        bail!("no kernel hook could be attached ({})", why.join("; "));
    }
    Ok(Loaded {
        ebpf,
        attached,
        failed,
    })
}

/// Kernels before 5.11 charge BPF maps to RLIMIT_MEMLOCK. Newer ones use
/// memcg, and raising the limit needs CAP_SYS_RESOURCE, which containers
/// often drop: try, and carry on if refused.
fn raise_memlock() {
    let r = libc::rlimit {
        rlim_cur: libc::RLIM_INFINITY,
        rlim_max: libc::RLIM_INFINITY,
    };
    // SAFETY: valid pointer to a local rlimit.
    let _ = unsafe { libc::setrlimit(libc::RLIMIT_MEMLOCK, &r) };
}

//! Loading the embedded eBPF object with the planned configuration and
//! attaching its programs: kernel-function hooks per `caps::plan` (trying
//! each kind in order, falling back on failure), then the tracepoints that
//! are still needed. Thin: decisions live in `caps` and `kernel`.

use anyhow::{anyhow, bail, Context, Result};
use aya::{
    programs::{
        fentry::FEntryLinkId, fexit::FExitLinkId, kprobe::KProbeLinkId,
        trace_point::TracePointLinkId, FEntry, FExit, KProbe, Program, RawTracePoint, TracePoint,
    },
    Btf, Ebpf, EbpfLoader,
};

use crate::{
    caps::{Choice, HookKind},
    kernel::{self, Plan},
};

static OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/tcpq"));

/// What happened to one kernel function.
#[derive(Debug, Clone)]
pub struct KfuncResult {
    pub function: &'static str,
    /// The hook kind in use, if any.
    pub kind: Option<HookKind>,
    /// Why earlier kinds failed.
    pub notes: Vec<String>,
}

pub struct Loaded {
    pub ebpf: Ebpf,
    pub kfuncs: Vec<KfuncResult>,
    /// `category:name` of each attached tracepoint.
    pub attached: Vec<String>,
    /// Tracepoints not attached, and why.
    pub skipped: Vec<(String, String)>,
    /// Syscall tracepoints loaded but left detached, for `attach_deferred`.
    pub deferred: Vec<kernel::Hook>,
    /// How many of `attached` are raw tracepoints.
    pub raw_attached: usize,
}

impl Loaded {
    /// The hook kind serving `function`, if any.
    pub fn kind_of(&self, function: &str) -> Option<HookKind> {
        self.kfuncs
            .iter()
            .find(|k| k.function == function)
            .and_then(|k| k.kind)
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
        !self.deferred.is_empty() || self.attached.iter().any(|t| t.starts_with("syscalls:"))
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
        let syscalls = self
            .attached
            .iter()
            .filter(|t| t.starts_with("syscalls:"))
            .count();
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
            .filter_map(|k| Some(format!("{} {}", k.kind?.as_str(), k.function)))
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

/// `EbpfLoader::new()` parses the kernel's whole BTF (aya 0.14: ~19 MB of
/// peak memory, most of what a DaemonSet's memory limit would have to allow
/// for start-up) although tcpq needs none to load. So the loader is made on
/// a short-lived thread whose private mount namespace shows /dev/null at
/// /sys/kernel/btf/vmlinux: aya finds no BTF and skips the parse. If that
/// cannot be arranged (no CAP_SYS_ADMIN), aya parses as usual.
fn loader_without_kernel_btf() -> EbpfLoader<'static> {
    std::thread::scope(|s| {
        s.spawn(|| {
            hide_kernel_btf_from_this_thread();
            EbpfLoader::new()
        })
        .join()
        .unwrap_or_else(|_| EbpfLoader::new())
    })
}

/// In a mount namespace of this thread alone (unshare(CLONE_NEWNS) also
/// unshares its filesystem attributes), bind-mounts /dev/null over the
/// kernel's BTF. The namespace goes away with the thread.
fn hide_kernel_btf_from_this_thread() {
    use std::ffi::CString;
    let (Ok(root), Ok(null), Ok(btf)) = (
        CString::new("/"),
        CString::new("/dev/null"),
        CString::new(crate::btf::VMLINUX),
    ) else {
        return;
    };
    // SAFETY: plain syscalls on C strings that outlive them; they change
    // only this thread's mount namespace, which nothing else shares.
    unsafe {
        if libc::unshare(libc::CLONE_NEWNS) != 0 {
            return;
        }
        let private = libc::MS_REC | libc::MS_PRIVATE;
        if libc::mount(
            std::ptr::null(),
            root.as_ptr(),
            std::ptr::null(),
            private,
            std::ptr::null(),
        ) != 0
        {
            return;
        }
        libc::mount(
            null.as_ptr(),
            btf.as_ptr(),
            std::ptr::null(),
            libc::MS_BIND,
            std::ptr::null(),
        );
    }
}

/// Loads (and closes) the smallest fentry program, attached to BTF function
/// `btf_id` (`bpf_fentry_test1`): whether this kernel takes fentry at all,
/// found without parsing the kernel's BTF a second time. The error says why
/// not (this project's 6.18 host refuses BPF_PROG_TYPE_TRACING with EPERM).
pub fn probe_fentry(btf_id: u32) -> Result<(), String> {
    const BPF_PROG_LOAD: libc::c_long = 5;
    const BPF_PROG_TYPE_TRACING: u32 = 26;
    const BPF_TRACE_FENTRY: u32 = 24;
    // r0 = 0; exit
    let insns: [u64; 2] = [0x0000_0000_0000_00b7, 0x0000_0000_0000_0095];
    let license = b"GPL\0";
    // union bpf_attr, BPF_PROG_LOAD part: prog_type, insn_cnt, insns,
    // license, ..., expected_attach_type at 68, attach_btf_id at 108.
    let mut attr = [0u8; 120];
    attr[0..4].copy_from_slice(&BPF_PROG_TYPE_TRACING.to_ne_bytes());
    attr[4..8].copy_from_slice(&2u32.to_ne_bytes());
    attr[8..16].copy_from_slice(&(insns.as_ptr() as u64).to_ne_bytes());
    attr[16..24].copy_from_slice(&(license.as_ptr() as u64).to_ne_bytes());
    attr[68..72].copy_from_slice(&BPF_TRACE_FENTRY.to_ne_bytes());
    attr[108..112].copy_from_slice(&btf_id.to_ne_bytes());
    // SAFETY: attr points at a buffer of the size passed; the pointers in
    // it outlive the call.
    let fd = unsafe { libc::syscall(libc::SYS_bpf, BPF_PROG_LOAD, attr.as_ptr(), attr.len()) };
    if fd < 0 {
        return Err(format!(
            "BPF_PROG_LOAD of a fentry program: {}",
            std::io::Error::last_os_error()
        ));
    }
    // SAFETY: a file descriptor this call just opened.
    unsafe { libc::close(fd as i32) };
    Ok(())
}

/// `defer_syscalls`: load the syscall tracepoint programs but leave them
/// detached (enabling any syscall tracepoint sends every syscall of every
/// task through the tracing slow path).
pub fn load(
    plan: &Plan,
    choices: &[Choice],
    ring_buffer_bytes: u32,
    defer_syscalls: bool,
) -> Result<Loaded> {
    if OBJECT.is_empty() {
        bail!("this tcpq-agent was built with AYA_BUILD_SKIP=1 and carries no kernel programs; rebuild without it");
    }
    raise_memlock();
    // No target BTF: tcpq has no CO-RE relocations (offsets come from
    // btf.rs). It is parsed below only if fentry will be tried.
    let mut loader = loader_without_kernel_btf();
    loader
        .btf(None)
        .override_global("CONFIG", &plan.config, true)
        .map_max_entries("EVENTS", ring_buffer_bytes);
    // Tests only: a tiny ACCEPT_ERRORS map, so a test can fill it and see
    // the losses counted.
    if let Some(n) = std::env::var("TCPQ_TEST_ACCEPT_ERRORS_ENTRIES")
        .ok()
        .and_then(|v| v.parse::<u32>().ok())
        .filter(|&n| n > 0)
    {
        loader.map_max_entries("ACCEPT_ERRORS", n);
    }
    let mut ebpf = loader.load(OBJECT).context("loading the eBPF object")?;

    let btf = if choices
        .iter()
        .any(|c| c.try_order.contains(&HookKind::Fentry))
    {
        match crate::btf::path() {
            crate::btf::VMLINUX => Btf::from_sys_fs().ok(),
            file => Btf::parse_file(file, aya::Endianness::default()).ok(),
        }
    } else {
        None
    };
    let mut kfuncs = Vec::new();
    for c in choices {
        let mut r = KfuncResult {
            function: c.function,
            kind: None,
            notes: Vec::new(),
        };
        for &kind in &c.try_order {
            match attach_kfunc(&mut ebpf, c.function, kind, btf.as_ref()) {
                Ok(()) => {
                    r.kind = Some(kind);
                    break;
                }
                Err(e) => r.notes.push(format!("{}: {}", kind.as_str(), why_not(&e))),
            }
        }
        kfuncs.push(r);
    }

    let ack_hooked = kfuncs
        .iter()
        .any(|k| k.function == "tcp_v4_syn_recv_sock" && k.kind.is_some());
    let mut attached = Vec::new();
    let mut skipped: Vec<(String, String)> = plan
        .skipped
        .iter()
        .map(|(h, why)| (format!("{}:{}", h.category, h.name), why.clone()))
        .collect();
    let mut loaded_programs = std::collections::HashSet::new();
    let mut deferred = Vec::new();
    let mut raw_attached = 0;
    for hook in &plan.hooks {
        let what = format!("{}:{}", hook.category, hook.name);
        if *hook == kernel::KFREE_SKB && ack_hooked {
            skipped.push((
                what,
                "ACK-time overflows come from the tcp_v4/v6_syn_recv_sock hooks".into(),
            ));
            continue;
        }
        let r = (|| -> Result<()> {
            let prog = ebpf
                .program_mut(hook.program)
                .with_context(|| format!("program {} missing from the object", hook.program))?;
            let first = loaded_programs.insert(hook.program);
            if hook.raw {
                let prog: &mut RawTracePoint = prog.try_into()?;
                if first {
                    prog.load()?;
                }
                prog.attach(hook.name)?;
            } else {
                let prog: &mut TracePoint = prog.try_into()?;
                // One program may serve several tracepoints.
                if first {
                    prog.load()?;
                }
                if defer_syscalls && hook.category == "syscalls" {
                    deferred.push(hook.clone());
                    return Ok(());
                }
                prog.attach(hook.category, hook.name)?;
            }
            Ok(())
        })();
        match r {
            Ok(()) if deferred.last() == Some(hook) => {}
            Ok(()) => {
                raw_attached += hook.raw as usize;
                attached.push(what)
            }
            Err(e) => skipped.push((what, one_line(&format!("{e:#}")))),
        }
    }
    if attached.is_empty() && kfuncs.iter().all(|k| k.kind.is_none()) && !plan.hooks.is_empty() {
        let why: Vec<_> = skipped.iter().map(|(w, e)| format!("{w}: {e}")).collect();
        bail!("no kernel hook could be attached ({})", why.join("; "));
    }
    Ok(Loaded {
        ebpf,
        kfuncs,
        attached,
        skipped,
        deferred,
        raw_attached,
    })
}

/// The programs serving `function` as `kind`, exit side first (an exit
/// hook without its entry hook does nothing; the reverse would leave state
/// behind).
fn programs(function: &str, kind: HookKind) -> &'static [&'static str] {
    match (function, kind) {
        ("tcp_conn_request", HookKind::Fentry) => {
            &["tcpq_conn_request_fexit", "tcpq_conn_request_fentry"]
        }
        ("tcp_conn_request", HookKind::Kprobe) => {
            &["tcpq_conn_request_kretprobe", "tcpq_conn_request_kprobe"]
        }
        ("tcp_v4_syn_recv_sock", HookKind::Fentry) => &["tcpq_syn_recv4_fexit"],
        ("tcp_v6_syn_recv_sock", HookKind::Fentry) => &["tcpq_syn_recv6_fexit"],
        ("tcp_v4_syn_recv_sock" | "tcp_v6_syn_recv_sock", HookKind::Kprobe) => {
            &["tcpq_syn_recv_kretprobe", "tcpq_syn_recv_kprobe"]
        }
        ("tcp_check_req", HookKind::Fentry) => &["tcpq_check_req_fexit", "tcpq_check_req_fentry"],
        ("tcp_check_req", HookKind::Kprobe) => {
            &["tcpq_check_req_kretprobe", "tcpq_check_req_kprobe"]
        }
        ("inet_csk_accept", HookKind::Fentry) => &["tcpq_accept_fexit"],
        ("inet_csk_accept", HookKind::Kprobe) => &["tcpq_accept_kretprobe", "tcpq_accept_kprobe"],
        ("__sys_listen", HookKind::Fentry) => &["tcpq_sys_listen_fentry"],
        ("__sys_listen", HookKind::Kprobe) => &["tcpq_sys_listen_kprobe"],
        _ => &[],
    }
}

enum Link {
    FEntry(&'static str, FEntryLinkId),
    FExit(&'static str, FExitLinkId),
    KProbe(&'static str, KProbeLinkId),
}

/// Attaches every program serving `function` as `kind`, or none of them.
fn attach_kfunc(
    ebpf: &mut Ebpf,
    function: &'static str,
    kind: HookKind,
    btf: Option<&Btf>,
) -> Result<()> {
    let names = programs(function, kind);
    if names.is_empty() {
        bail!("no program for {function}");
    }
    let mut links = Vec::new();
    for &name in names {
        match attach_one(ebpf, name, function, btf) {
            Ok(link) => links.push(link),
            Err(e) => {
                for link in links {
                    detach(ebpf, link);
                }
                return Err(e.context(name));
            }
        }
    }
    Ok(())
}

fn attach_one(
    ebpf: &mut Ebpf,
    name: &'static str,
    function: &str,
    btf: Option<&Btf>,
) -> Result<Link> {
    let prog = ebpf
        .program_mut(name)
        .ok_or_else(|| anyhow!("program {name} missing from the object"))?;
    let need_btf = || btf.ok_or_else(|| anyhow!("kernel BTF not loadable by aya"));
    Ok(match prog {
        Program::FEntry(p) => {
            p.load(function, need_btf()?)?;
            Link::FEntry(name, p.attach()?)
        }
        Program::FExit(p) => {
            p.load(function, need_btf()?)?;
            Link::FExit(name, p.attach()?)
        }
        Program::KProbe(p) => {
            if p.fd().is_err() {
                p.load()?;
            }
            Link::KProbe(name, p.attach(function, 0)?)
        }
        _ => bail!("{name} is not a kernel-function program"),
    })
}

fn detach(ebpf: &mut Ebpf, link: Link) {
    let _ = match link {
        Link::FEntry(n, id) => ebpf
            .program_mut(n)
            .and_then(|p| <&mut FEntry>::try_from(p).ok())
            .map(|p| p.detach(id)),
        Link::FExit(n, id) => ebpf
            .program_mut(n)
            .and_then(|p| <&mut FExit>::try_from(p).ok())
            .map(|p| p.detach(id)),
        Link::KProbe(n, id) => ebpf
            .program_mut(n)
            .and_then(|p| <&mut KProbe>::try_from(p).ok())
            .map(|p| p.detach(id)),
    };
}

/// The kernel's answer, without our context and without an empty verifier
/// log ("…returned Operation not permitted (os error 1). Verifier output: :
/// …" says the same thing twice); a real verifier log is kept.
fn why_not(e: &anyhow::Error) -> String {
    // chain: [our context (the program), aya's error, its cause...]
    let aya = e.chain().nth(1).unwrap_or_else(|| e.root_cause());
    let msg = one_line(&aya.to_string());
    match msg.split_once(". Verifier output:") {
        Some((head, log)) if log.trim_start_matches(':').trim().len() < 60 => head.to_string(),
        _ => msg,
    }
}

fn one_line(s: &str) -> String {
    s.split_whitespace().collect::<Vec<_>>().join(" ")
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

#[cfg(test)]
mod tests {
    use super::OBJECT;

    /// The embedded BPF object has the bytes the committed hash names: the
    /// build is pinned (toolchain, bpf-linker, Cargo.lock) and carries no
    /// path of this clone or this user (build.rs remaps them), so every
    /// clone on every machine builds the same object. A change to
    /// tcpq-ebpf, tcpq-common, Cargo.lock, the toolchain or bpf-linker
    /// changes the bytes on purpose: then commit the hash printed here.
    #[test]
    fn bpf_object_is_reproducible() {
        if OBJECT.is_empty() {
            eprintln!("skipped: built with AYA_BUILD_SKIP=1, no BPF object embedded");
            return;
        }
        // Paths outside the remapped /tcpq, /cargo, /rustc would make the
        // bytes depend on where the clone and the toolchain live.
        for leak in [
            "/home/",
            "/root/",
            "/tmp/",
            "/work/",
            "/usr/local/",
            "/.cargo/",
        ] {
            assert!(
                !OBJECT.windows(leak.len()).any(|w| w == leak.as_bytes()),
                "the BPF object names a path under {leak}: not reproducible elsewhere"
            );
        }
        let file = std::env::temp_dir().join(format!("tcpq-object-{}", std::process::id()));
        std::fs::write(&file, OBJECT).unwrap();
        let out = std::process::Command::new("sha256sum")
            .arg(&file)
            .output()
            .expect("sha256sum (coreutils)");
        let _ = std::fs::remove_file(&file);
        let got = String::from_utf8_lossy(&out.stdout);
        let got = got.split_whitespace().next().unwrap_or_default();
        let want = include_str!("../bpf-object.sha256");
        let want = want.split_whitespace().next().unwrap_or_default();
        assert_eq!(
            got, want,
            "the BPF object changed: if tcpq-ebpf, tcpq-common, Cargo.lock, the toolchain \
             or bpf-linker changed, put {got} in tcpq-agent/bpf-object.sha256"
        );
    }
}

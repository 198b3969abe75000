//! Loading the embedded eBPF object with the planned configuration and
//! attaching its programs: kernel-function hooks per `caps::plan` (trying
//! each kind in order, falling back on failure), then the tracepoints that
//! are still needed. Thin: decisions live in `caps` and `plan`; the result
//! is the record in `attached`.

use std::collections::HashSet;

use anyhow::{anyhow, bail, Context, Result};
use aya::{
    programs::{
        fentry::FEntryLinkId, fexit::FExitLinkId, kprobe::KProbeLinkId, FEntry, FExit, KProbe,
        Program, RawTracePoint, TracePoint,
    },
    Btf, Ebpf, EbpfLoader,
};

use tcpq_common::names::{self, map, prog};

use crate::{
    kernel::caps::{Choice, HookKind, Kfunc},
    kernel::hooks::{Hook, KFREE_SKB},
    kernel::Plan,
};

pub use super::attached::{KfuncResult, Loaded};

static OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/tcpq"));

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
        CString::new(crate::kernel::btf::VMLINUX),
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
    let mut ebpf = open_object(plan, ring_buffer_bytes)?;
    let kfuncs = attach_kfuncs(&mut ebpf, choices);
    let ack_hooked = kfuncs
        .iter()
        .any(|k| k.kfunc == Kfunc::SynRecv4 && k.kind.is_some());
    let t = attach_tracepoints(&mut ebpf, plan, ack_hooked, defer_syscalls);
    if t.attached.is_empty() && kfuncs.iter().all(|k| k.kind.is_none()) && !plan.hooks.is_empty() {
        let why: Vec<_> = t.skipped.iter().map(|(w, e)| format!("{w}: {e}")).collect();
        bail!("no kernel hook could be attached ({})", why.join("; "));
    }
    Ok(Loaded {
        ebpf,
        kfuncs,
        attached: t.attached,
        skipped: t.skipped,
        deferred: t.deferred,
        raw_attached: t.raw_attached,
    })
}

/// The embedded object, loaded with the plan's configuration and a ring
/// buffer of `ring_buffer_bytes`; no program loaded yet.
fn open_object(plan: &Plan, ring_buffer_bytes: u32) -> Result<Ebpf> {
    // No target BTF: tcpq has no CO-RE relocations (offsets come from
    // btf.rs). It is parsed in `attach_kfuncs` only if fentry will be tried.
    let mut loader = loader_without_kernel_btf();
    loader
        .btf(None)
        .override_global(names::CONFIG, &plan.config, true)
        .map_max_entries(map::EVENTS, ring_buffer_bytes);
    // Tests only: a tiny ACCEPT_ERRORS map, so a test can fill it and see
    // the losses counted.
    if let Some(n) = std::env::var("TCPQ_TEST_ACCEPT_ERRORS_ENTRIES")
        .ok()
        .and_then(|v| v.parse::<u32>().ok())
        .filter(|&n| n > 0)
    {
        loader.map_max_entries(map::ACCEPT_ERRORS, n);
    }
    loader.load(OBJECT).context("loading the eBPF object")
}

/// Each kernel function hooked by the first kind in its `try_order` that
/// attaches.
fn attach_kfuncs(ebpf: &mut Ebpf, choices: &[Choice]) -> Vec<KfuncResult> {
    let btf = if choices
        .iter()
        .any(|c| c.try_order.contains(&HookKind::Fentry))
    {
        match crate::kernel::btf::path() {
            crate::kernel::btf::VMLINUX => Btf::from_sys_fs().ok(),
            file => Btf::parse_file(file, aya::Endianness::default()).ok(),
        }
    } else {
        None
    };
    let mut kfuncs = Vec::new();
    for c in choices {
        let mut r = KfuncResult {
            kfunc: c.kfunc,
            kind: None,
            notes: Vec::new(),
        };
        for &kind in &c.try_order {
            match attach_kfunc(ebpf, c.kfunc, kind, btf.as_ref()) {
                Ok(()) => {
                    r.kind = Some(kind);
                    break;
                }
                Err(e) => r.notes.push(format!("{}: {}", kind.as_str(), why_not(&e))),
            }
        }
        kfuncs.push(r);
    }
    kfuncs
}

/// The tracepoint side of [`Loaded`].
struct Tracepoints {
    attached: Vec<Hook>,
    skipped: Vec<(String, String)>,
    deferred: Vec<Hook>,
    raw_attached: usize,
}

/// Attaches the plan's tracepoint hooks (syscall ones only loaded when
/// `defer_syscalls`); skb:kfree_skb is left out when `ack_hooked`.
fn attach_tracepoints(
    ebpf: &mut Ebpf,
    plan: &Plan,
    ack_hooked: bool,
    defer_syscalls: bool,
) -> Tracepoints {
    let mut t = Tracepoints {
        attached: Vec::new(),
        skipped: plan
            .skipped
            .iter()
            .map(|(h, why)| (h.to_string(), why.clone()))
            .collect(),
        deferred: Vec::new(),
        raw_attached: 0,
    };
    let mut loaded_programs = HashSet::new();
    for hook in &plan.hooks {
        if *hook == KFREE_SKB && ack_hooked {
            t.skipped.push((
                hook.to_string(),
                "ACK-time overflows come from the tcp_v4/v6_syn_recv_sock hooks".into(),
            ));
            continue;
        }
        let defer = defer_syscalls && hook.is_syscall();
        match attach_tracepoint(ebpf, hook, &mut loaded_programs, defer) {
            Ok(true) => t.deferred.push(hook.clone()),
            Ok(false) => {
                t.raw_attached += hook.raw as usize;
                t.attached.push(hook.clone())
            }
            Err(e) => t
                .skipped
                .push((hook.to_string(), one_line(&format!("{e:#}")))),
        }
    }
    t
}

/// Loads `hook`'s program (once: one program may serve several
/// tracepoints, `loaded` says which are) and attaches it, unless `defer`
/// (a classic tracepoint loaded only). Returns whether it was deferred.
fn attach_tracepoint(
    ebpf: &mut Ebpf,
    hook: &Hook,
    loaded: &mut HashSet<&'static str>,
    defer: bool,
) -> Result<bool> {
    let prog = ebpf
        .program_mut(hook.program)
        .with_context(|| format!("program {} missing from the object", hook.program))?;
    let first = loaded.insert(hook.program);
    if hook.raw {
        let prog: &mut RawTracePoint = prog.try_into()?;
        if first {
            prog.load()?;
        }
        prog.attach(hook.name)?;
    } else {
        let prog: &mut TracePoint = prog.try_into()?;
        if first {
            prog.load()?;
        }
        if defer {
            return Ok(true);
        }
        prog.attach(hook.category, hook.name)?;
    }
    Ok(false)
}

/// The programs serving `kfunc` as `kind`, exit side first (an exit
/// hook without its entry hook does nothing; the reverse would leave state
/// behind).
fn programs(kfunc: Kfunc, kind: HookKind) -> &'static [&'static str] {
    use HookKind::{Fentry, Kprobe};
    match (kfunc, kind) {
        (Kfunc::ConnRequest, Fentry) => &[prog::CONN_REQUEST_FEXIT, prog::CONN_REQUEST_FENTRY],
        (Kfunc::ConnRequest, Kprobe) => &[prog::CONN_REQUEST_KRETPROBE, prog::CONN_REQUEST_KPROBE],
        (Kfunc::SynRecv4, Fentry) => &[prog::SYN_RECV4_FEXIT],
        (Kfunc::SynRecv6, Fentry) => &[prog::SYN_RECV6_FEXIT],
        (Kfunc::SynRecv4 | Kfunc::SynRecv6, Kprobe) => {
            &[prog::SYN_RECV_KRETPROBE, prog::SYN_RECV_KPROBE]
        }
        (Kfunc::CheckReq, Fentry) => &[prog::CHECK_REQ_FEXIT, prog::CHECK_REQ_FENTRY],
        (Kfunc::CheckReq, Kprobe) => &[prog::CHECK_REQ_KRETPROBE, prog::CHECK_REQ_KPROBE],
        (Kfunc::CskAccept, Fentry) => &[prog::ACCEPT_FEXIT],
        (Kfunc::CskAccept, Kprobe) => &[prog::ACCEPT_KRETPROBE, prog::ACCEPT_KPROBE],
        (Kfunc::SysListen, Fentry) => &[prog::SYS_LISTEN_FENTRY],
        (Kfunc::SysListen, Kprobe) => &[prog::SYS_LISTEN_KPROBE],
    }
}

enum Link {
    FEntry(&'static str, FEntryLinkId),
    FExit(&'static str, FExitLinkId),
    KProbe(&'static str, KProbeLinkId),
}

/// Attaches every program serving `function` as `kind`, or none of them.
fn attach_kfunc(ebpf: &mut Ebpf, kfunc: Kfunc, kind: HookKind, btf: Option<&Btf>) -> Result<()> {
    let mut links = Vec::new();
    for &name in programs(kfunc, kind) {
        match attach_one(ebpf, name, kfunc.name(), btf) {
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
    use std::collections::BTreeSet;

    use aya_obj::{Object, ProgramSection};

    use super::*;
    use crate::kernel;

    /// The maps and programs of the embedded object are exactly those
    /// tcpq-common names (a rename on either side fails here), each
    /// program of a kernel function is of the kind the loader attaches it
    /// as, and each fentry/fexit program targets the function it serves.
    #[test]
    fn object_has_the_maps_and_programs_tcpq_common_names() {
        if OBJECT.is_empty() {
            eprintln!("skipped: built with AYA_BUILD_SKIP=1, no BPF object embedded");
            return;
        }
        let obj = Object::parse(OBJECT).expect("the embedded BPF object parses");
        // `.rodata`, `.bss`, `.data`: the globals' sections, not maps of ours.
        let maps: BTreeSet<&str> = obj
            .maps
            .keys()
            .map(String::as_str)
            .filter(|m| !m.starts_with('.'))
            .collect();
        assert_eq!(
            maps,
            names::MAPS.iter().copied().collect(),
            "maps in the object vs tcpq_common::names::MAPS"
        );
        let progs: BTreeSet<&str> = obj.programs.keys().map(String::as_str).collect();
        assert_eq!(
            progs,
            names::PROGRAMS.iter().copied().collect(),
            "programs in the object vs tcpq_common::names::PROGRAMS"
        );
        assert_eq!(
            names::PROGRAMS.len(),
            progs.len(),
            "a name twice in PROGRAMS"
        );
        assert_eq!(names::MAPS.len(), maps.len(), "a name twice in MAPS");
        assert!(
            OBJECT
                .windows(names::CONFIG.len())
                .any(|w| w == names::CONFIG.as_bytes()),
            "no global {} in the object",
            names::CONFIG
        );
        // Every program is reached: by a tracepoint hook or a kernel function.
        let mut used = BTreeSet::new();
        for hook in [
            kernel::KFREE_SKB,
            kernel::RETRANSMIT_SYNACK,
            kernel::SEND_RESET,
            kernel::RECEIVE_RESET,
            kernel::SOCK_STATE,
            kernel::ACCEPT4_EXIT,
            kernel::ACCEPT_EXIT,
        ] {
            let section = &obj.programs[hook.program].section;
            match hook.raw {
                true => assert!(
                    matches!(section, ProgramSection::RawTracePoint),
                    "{}: {section:?}",
                    hook.program
                ),
                false => assert!(
                    matches!(section, ProgramSection::TracePoint),
                    "{}: {section:?}",
                    hook.program
                ),
            }
            used.insert(hook.program);
        }
        for kfunc in Kfunc::ALL {
            for kind in [HookKind::Fentry, HookKind::Kprobe] {
                for &name in programs(kfunc, kind) {
                    let section = &obj.programs[name].section;
                    let ok = match kind {
                        HookKind::Fentry => {
                            let (prefix, ok) = match section {
                                ProgramSection::FEntry { .. } => ("fentry", true),
                                ProgramSection::FExit { .. } => ("fexit", true),
                                _ => ("", false),
                            };
                            // The attach target is the section name.
                            let target = format!("{prefix}/{}\0", kfunc.name());
                            ok && OBJECT.windows(target.len()).any(|w| w == target.as_bytes())
                        }
                        HookKind::Kprobe => {
                            matches!(section, ProgramSection::KProbe | ProgramSection::KRetProbe)
                        }
                    };
                    assert!(
                        ok,
                        "{name} serving {} as {kind:?}: {section:?}",
                        kfunc.name()
                    );
                    used.insert(name);
                }
            }
        }
        assert_eq!(used, progs, "programs no hook uses");
    }

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
        let want = include_str!("../../bpf-object.sha256");
        let want = want.split_whitespace().next().unwrap_or_default();
        assert_eq!(
            got, want,
            "the BPF object changed: if tcpq-ebpf, tcpq-common, Cargo.lock, the toolchain \
             or bpf-linker changed, put {got} in tcpq-agent/bpf-object.sha256"
        );
    }
}

//! `cargo xtask vm`: the scenario tests inside Debian's LTS cloud kernels
//! (5.10, 6.1, 6.12: kprobes, fentry, BTF), booted by QEMU with TCG.
//!
//! 1. kernel: the newest `linux-image-*-cloud-amd64-unsigned` of the
//!    series' suite (`SERIES`), fetched by `apt-get download` with a private
//!    sources list and state under `${XDG_CACHE_HOME:-~/.cache}/tcpq/vm/apt`
//!    (the mirror of this machine's /etc/apt, which stays untouched); its
//!    `vmlinuz-*` and the modules sock_diag needs for TCP (`MODULES` not in
//!    `modules.builtin`, uncompressed) are kept in `.../tcpq/vm/RELEASE/`.
//!    `--kernel PATH` boots a bzImage instead (with INET_DIAG and
//!    INET_TCP_DIAG built in, as no module is loaded then);
//! 2. build the agent (release: the guest's TCG is slow), tcpq-scenario
//!    and the integration-test executables;
//! 3. initramfs (newc, gzip), written here: busybox and its applets,
//!    iproute2's `ip`/`ss` and the other tools the tests run, each dynamic
//!    ELF with its shared libraries and interpreter at the host's paths, our
//!    binaries in the layout cargo gives them (`/tcpq/target/debug/...`),
//!    and an `/init` that runs every test executable once per attach mode
//!    (`--attach auto,kprobe` by default: `TCPQ_ATTACH` set to the mode,
//!    `TCPQ_EXPECT_HOOK` to the hook kind the tests must then see — `kfunc`
//!    (fentry or kprobe) for auto; `tracepoint`: the host's expectations) and prints `TCPQ-VM:
//!    PASS|FAIL <name>@<mode>`, then `TCPQ-VM: DONE`, then powers off;
//!    The parts every boot shares are one archive, the modules and /init
//!    of each boot a second one appended to it;
//! 4. QEMU, `--jobs` at a time, each serial console streamed as `vm| ...`
//!    (`vm LABEL| ...`) and saved to target/vm/LABEL/console.log; the
//!    verdict comes from the marker lines.
//!
//! No root needed.

use std::{
    cmp::Ordering,
    collections::BTreeMap,
    fs,
    io::{self, BufRead, BufReader, BufWriter, Write},
    os::unix::fs::PermissionsExt,
    path::{Path, PathBuf},
    process::{Command, Stdio},
    sync::mpsc,
    time::{Duration, Instant},
};

use anyhow::{bail, ensure, Context, Result};

use crate::{cargo, is_root, root, sh};

const MARK: &str = "TCPQ-VM: ";
/// What `tcpq_tests::skip` prints for a test that cannot hold on this
/// kernel (followed by `NAME: needs …`).
pub const SKIP_MARK: &str = "TCPQ-SKIP ";
/// Where the guest finds our binaries: the layout of `target/`, so the
/// tests find tcpq-scenario next to themselves (`deps/../tcpq-scenario`).
const GUEST_BIN: &str = "tcpq/target/debug";
/// Host tools the tests run besides busybox (`cargo xtask setup` installs
/// them): iproute2's, util-linux's `setpriv --reuid` (busybox's lacks it),
/// the real redis-server and redis-cli (with strace, which counts the
/// client's own failed connects);
/// nginx, wrk and hping3 for the healthy-path and load tests.
const TOOLS: &[&str] = &[
    "ip",
    "ss",
    "setpriv",
    "redis-server",
    "redis-cli",
    "strace",
    "nginx",
    "wrk",
    "hping3",
];
/// Data files tools need, copied when the host has them.
const EXTRA_FILES: &[&str] = &["/etc/nginx/mime.types"];
const TOOL_DIRS: &[&str] = &["/usr/sbin", "/usr/bin", "/sbin", "/bin"];
/// `--attach` values: the agent's `--attach` modes the tests can check.
pub const ATTACH_MODES: [&str; 4] = ["auto", "fentry", "kprobe", "tracepoint"];

/// One boot: a kernel, the attach modes to run every executable in, and
/// optionally only some of the executables (to split a long suite).
#[derive(Debug)]
pub struct Boot {
    pub kernel: KernelArg,
    /// Attach modes (`ATTACH_MODES`), one run of every executable each.
    pub attach: Vec<String>,
    /// Only these test executables (by name); all when `None`.
    pub only: Option<Vec<String>>,
}

impl Boot {
    /// `5.10-auto`, `6.1-auto+kprobe`, `bzImage-auto`: its directory
    /// under target/vm/ and its console prefix.
    pub fn label(&self) -> String {
        let k = match &self.kernel {
            KernelArg::Debian(s) => s.name.to_string(),
            KernelArg::Image(p) => p
                .file_name()
                .map_or("image".into(), |n| n.to_string_lossy().into_owned()),
        };
        let mut l = format!("{k}-{}", self.attach.join("+"));
        if let Some(only) = &self.only {
            l += &format!("-{}", only.join("+"));
        }
        l
    }
}

pub struct Opts {
    pub boots: Vec<Boot>,
    pub timeout: Duration,
    /// Boots running at once.
    pub jobs: usize,
    pub args: Vec<String>,
}

/// What one boot gave.
pub struct Outcome {
    pub label: String,
    pub kernel: Option<String>,
    pub ok: bool,
    /// libtest's totals over the boot's `test result:` lines.
    pub passed: u64,
    pub failed: u64,
    /// `TCPQ-SKIP` lines: tests that returned early, and why.
    pub skipped: Vec<String>,
    pub booted_after: Option<Duration>,
    pub total: Duration,
}

/// Builds once, then boots each of `opts.boots`, `opts.jobs` at a time.
/// Errs only when nothing could be booted; a boot whose tests failed is an
/// `Outcome` with `ok: false`.
pub fn run(opts: Opts) -> Result<Vec<Outcome>> {
    // Kernels first (a download problem shows before the long build).
    let mut kernels = Vec::new();
    for b in &opts.boots {
        let k = match &b.kernel {
            KernelArg::Image(vmlinuz) => Kernel {
                vmlinuz: vmlinuz.clone(),
                modules: vec![],
            },
            KernelArg::Debian(series) => debian_kernel(series)?,
        };
        ensure!(k.vmlinuz.is_file(), "no kernel at {}", k.vmlinuz.display());
        kernels.push(k);
    }
    let tests = build()?;
    let out = root().join("target/vm");
    fs::create_dir_all(&out)?;
    // What every boot shares (binaries, tools, libraries), one archive;
    // each boot appends its own small one (modules, /init): the kernel
    // unpacks concatenated archives in order.
    let t = Instant::now();
    let common = out.join("common.cpio.gz");
    common_initramfs(&tests, &common)?;
    eprintln!(
        "xtask: vm: {} ({} MiB) in {:.1?}",
        common.display(),
        fs::metadata(&common)?.len() >> 20,
        t.elapsed()
    );
    let mut jobs = Vec::new();
    for (b, k) in opts.boots.iter().zip(kernels) {
        let selected: Vec<&TestExe> = tests
            .iter()
            .filter(|t| b.only.as_ref().is_none_or(|o| o.contains(&t.name)))
            .collect();
        ensure!(
            !selected.is_empty(),
            "{}: no such test executable",
            b.label()
        );
        let runs: Vec<Run> = b
            .attach
            .iter()
            .flat_map(|mode| selected.iter().map(move |t| Run::new(t, mode)))
            .collect();
        let dir = out.join(b.label());
        fs::create_dir_all(&dir)?;
        let initrd = dir.join("initramfs.cpio.gz");
        boot_initramfs(&common, &runs, &k.modules, &opts.args, &initrd)?;
        jobs.push((b.label(), k, runs, dir, initrd));
    }
    // Popped from the end: the first boot starts first.
    let mut jobs: Vec<_> = jobs.into_iter().enumerate().collect();
    jobs.reverse();
    let queue = std::sync::Mutex::new(jobs);
    let results = std::sync::Mutex::new(Vec::new());
    let prefix_console = opts.jobs > 1;
    std::thread::scope(|s| {
        for _ in 0..opts.jobs.max(1) {
            s.spawn(|| loop {
                let Some((i, (label, k, runs, dir, initrd))) = queue.lock().unwrap().pop() else {
                    break;
                };
                let log = dir.join("console.log");
                let prefix = if prefix_console {
                    format!("vm {label}| ")
                } else {
                    "vm| ".into()
                };
                let outcome = match boot(&k.vmlinuz, &initrd, &log, opts.timeout, &prefix) {
                    Ok(v) => {
                        let names: Vec<&str> = runs.iter().map(|r| r.name.as_str()).collect();
                        eprintln!("xtask: vm: {label}:\n{}", v.summary(&names));
                        eprintln!("xtask: vm: console log in {}", log.display());
                        Outcome {
                            label: label.clone(),
                            kernel: v.kernel.clone(),
                            ok: v.all_passed(&names),
                            passed: v.totals.0,
                            failed: v.totals.1,
                            skipped: v.skipped.clone(),
                            booted_after: v.booted_after,
                            total: v.total,
                        }
                    }
                    Err(e) => {
                        eprintln!("xtask: vm: {label}: {e:#}");
                        Outcome {
                            label: label.clone(),
                            kernel: None,
                            ok: false,
                            passed: 0,
                            failed: 1,
                            skipped: vec![],
                            booted_after: None,
                            total: Duration::ZERO,
                        }
                    }
                };
                results.lock().unwrap().push((i, outcome));
            });
        }
    });
    let mut results = results.into_inner().unwrap();
    results.sort_by_key(|(i, _)| *i);
    Ok(results.into_iter().map(|(_, o)| o).collect())
}

/// One line per boot: kernel, verdict, counts, times.
pub fn report(outcomes: &[Outcome]) -> String {
    let mut s = String::new();
    for o in outcomes {
        s += &format!(
            "xtask: vm: {:<22} {} kernel {}: {} passed, {} failed, {} skipped; booted in {}, whole run {:.0?}\n",
            o.label,
            if o.ok { "PASS" } else { "FAIL" },
            o.kernel.as_deref().unwrap_or("?"),
            o.passed,
            o.failed,
            o.skipped.len(),
            o.booted_after
                .map_or("?".into(), |d| format!("{:.1} s", d.as_secs_f64())),
            o.total
        );
        for k in &o.skipped {
            s += &format!("xtask: vm:     skipped {k}\n");
        }
    }
    s.trim_end().to_string()
}

// ---- kernel ---------------------------------------------------------------

fn cache_dir() -> Result<PathBuf> {
    let base = match std::env::var_os("XDG_CACHE_HOME").filter(|v| !v.is_empty()) {
        Some(d) => PathBuf::from(d),
        None => PathBuf::from(std::env::var_os("HOME").context("HOME is not set")?).join(".cache"),
    };
    Ok(base.join("tcpq/vm"))
}

/// A Debian cloud kernel series `cargo xtask vm --kernel SERIES` boots.
#[derive(Debug, PartialEq)]
pub struct Series {
    /// What `--kernel` takes: `5.10`, `6.1`, `6.12`.
    pub name: &'static str,
    /// The Debian suite that ships it.
    suite: &'static str,
    /// `uname -r` of its releases starts with this (`6.1.0-`, not `6.1`,
    /// which would match 6.12 too).
    release_prefix: &'static str,
}

/// Debian's LTS kernels: Debian 11, 12, 13.
pub const SERIES: &[Series] = &[
    Series {
        name: "5.10",
        suite: "bullseye",
        release_prefix: "5.10.0-",
    },
    Series {
        name: "6.1",
        suite: "bookworm",
        release_prefix: "6.1.0-",
    },
    Series {
        name: "6.12",
        suite: "trixie",
        release_prefix: "6.12.",
    },
];

/// `--kernel`: a Debian series or a bzImage.
#[derive(Debug, Clone, PartialEq)]
pub enum KernelArg {
    Debian(&'static Series),
    Image(PathBuf),
}

impl std::str::FromStr for KernelArg {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        if let Some(series) = SERIES.iter().find(|k| k.name == s) {
            return Ok(KernelArg::Debian(series));
        }
        if s.contains('/') || Path::new(s).is_file() {
            return Ok(KernelArg::Image(PathBuf::from(s)));
        }
        let names: Vec<&str> = SERIES.iter().map(|k| k.name).collect();
        Err(format!(
            "{s:?} is neither a Debian kernel series ({}) nor a bzImage file",
            names.join(", ")
        ))
    }
}

const KERNEL_SUFFIX: &str = "-cloud-amd64-unsigned";
/// Modules sock_diag needs for TCP, in load order (tcp_diag needs
/// inet_diag; ipv6 before both where it is a module). Each is taken from the
/// package unless the kernel's `modules.builtin` lists it; `=m` in every
/// Debian kernel so far for the two diag modules, ipv6 built in.
const MODULES: &[&str] = &["ipv6", "inet_diag", "tcp_diag"];
/// Cache file naming the modules kept next to it, in load order.
const MODULE_LIST: &str = "modules.load";

struct Kernel {
    vmlinuz: PathBuf,
    /// Uncompressed `.ko` files, in load order.
    modules: Vec<PathBuf>,
}

impl Kernel {
    /// What `debian_kernel` keeps in `dir` (`RELEASE/`), if complete.
    fn cached(dir: &Path) -> Option<Kernel> {
        let list = fs::read_to_string(dir.join(MODULE_LIST)).ok()?;
        let modules: Vec<PathBuf> = list
            .lines()
            .filter(|l| !l.is_empty())
            .map(|m| dir.join(format!("{m}.ko")))
            .collect();
        let vmlinuz = dir.join("vmlinuz");
        (vmlinuz.is_file() && modules.iter().all(|m| m.is_file()))
            .then_some(Kernel { vmlinuz, modules })
    }
}

/// apt with a private sources list and state under the cache: the Debian
/// archive this machine's apt uses (its mirror URI and keyring, read from
/// /etc/apt), the suites of `SERIES`, and nothing of the system's apt state
/// touched.
struct PrivateApt {
    dir: PathBuf,
}

impl PrivateApt {
    fn new(cache: &Path) -> Result<PrivateApt> {
        let dir = cache.join("apt");
        for d in ["lists/partial", "archives/partial", "sources.list.d"] {
            fs::create_dir_all(dir.join(d))?;
        }
        let (uri, keyring) = system_debian_mirror();
        let list: String = SERIES
            .iter()
            .map(|k| format!("deb [signed-by={keyring}] {uri} {} main\n", k.suite))
            .collect();
        let path = dir.join("sources.list");
        if fs::read_to_string(&path).ok().as_deref() != Some(list.as_str()) {
            fs::write(&path, &list)?;
            // A new mirror or suite: what was fetched before is stale.
            let _ = fs::remove_file(dir.join("updated"));
        }
        if !dir.join("status").exists() {
            fs::write(dir.join("status"), "")?;
        }
        Ok(PrivateApt { dir })
    }

    fn cmd(&self, program: &str) -> Command {
        let d = self.dir.display();
        let mut c = Command::new(program);
        c.arg("-q")
            .arg(format!("-o=Dir::Etc::SourceList={d}/sources.list"))
            .arg(format!("-o=Dir::Etc::SourceParts={d}/sources.list.d"))
            .arg(format!("-o=Dir::State={d}"))
            .arg(format!("-o=Dir::State::Lists={d}/lists"))
            .arg(format!("-o=Dir::State::status={d}/status"))
            .arg(format!("-o=Dir::Cache={d}"))
            .arg("-o=Debug::NoLocking=1")
            .env("DEBIAN_FRONTEND", "noninteractive");
        if is_root() {
            // Our cache is not the `_apt` user's to write.
            c.arg("-o=APT::Sandbox::User=root");
        }
        c
    }

    fn update(&self) -> Result<()> {
        sh(self.cmd("apt-get").arg("update"))?;
        fs::write(self.dir.join("updated"), "")?;
        Ok(())
    }

    /// The newest cloud kernel package of `series`, updating the private
    /// lists first if they were never fetched or know none.
    fn newest_kernel(&self, series: &Series) -> Result<String> {
        let search = || -> Result<Option<String>> {
            let out = self
                .cmd("apt-cache")
                .args([
                    "search",
                    "--names-only",
                    &format!("^linux-image-{}", series.release_prefix.replace('.', "\\.")),
                ])
                .output()
                .context("running apt-cache")?;
            Ok(newest_kernel_package(
                &String::from_utf8_lossy(&out.stdout),
                series,
            ))
        };
        if self.dir.join("updated").exists() {
            if let Some(p) = search()? {
                return Ok(p);
            }
        }
        self.update()?;
        search()?.with_context(|| {
            format!(
                "Debian {} has no linux-image-{}*{KERNEL_SUFFIX}",
                series.suite, series.release_prefix
            )
        })
    }
}

/// The Debian archive URI and keyring the system's apt uses (one-line
/// `.list` or deb822 `.sources` files; security and update suites aside),
/// else deb.debian.org with Debian's archive keyring.
fn system_debian_mirror() -> (String, String) {
    let keyring = "/usr/share/keyrings/debian-archive-keyring.gpg".to_string();
    let mut files = vec![PathBuf::from("/etc/apt/sources.list")];
    if let Ok(rd) = fs::read_dir("/etc/apt/sources.list.d") {
        let mut more: Vec<PathBuf> = rd.filter_map(|e| Some(e.ok()?.path())).collect();
        more.sort();
        files.extend(more);
    }
    for f in files {
        let name = f.to_string_lossy();
        let Ok(text) = fs::read_to_string(&f) else {
            continue;
        };
        let found = if name.ends_with(".sources") {
            debian_uri_deb822(&text)
        } else if name.ends_with(".list") {
            debian_uri_one_line(&text)
        } else {
            None
        };
        if let Some((uri, key)) = found {
            return (uri, key.unwrap_or(keyring));
        }
    }
    ("http://deb.debian.org/debian".into(), keyring)
}

/// Whether a sources entry is Debian's main archive: a `…/debian` URI
/// (not `debian-security`, not a third party's).
fn is_debian_archive(uri: &str) -> bool {
    uri.trim_end_matches('/').ends_with("/debian")
}

fn debian_uri_deb822(text: &str) -> Option<(String, Option<String>)> {
    for stanza in text.split("\n\n") {
        let field = |k: &str| {
            stanza
                .lines()
                .filter(|l| !l.trim_start().starts_with('#'))
                .find_map(|l| l.strip_prefix(k)?.strip_prefix(':'))
                .map(|v| v.trim().to_string())
        };
        if field("Enabled").is_some_and(|v| v == "no")
            || !field("Types").is_some_and(|t| t.split_whitespace().any(|t| t == "deb"))
        {
            continue;
        }
        let Some(uri) = field("URIs").and_then(|u| {
            u.split_whitespace()
                .find(|u| is_debian_archive(u))
                .map(str::to_string)
        }) else {
            continue;
        };
        return Some((uri, field("Signed-By").filter(|k| k.starts_with('/'))));
    }
    None
}

fn debian_uri_one_line(text: &str) -> Option<(String, Option<String>)> {
    for line in text.lines().map(str::trim) {
        let Some(rest) = line.strip_prefix("deb ") else {
            continue;
        };
        let (opts, rest) = match rest.trim_start().strip_prefix('[') {
            Some(r) => r.split_once(']')?,
            None => ("", rest),
        };
        let uri = rest.split_whitespace().next()?;
        if !is_debian_archive(uri) {
            continue;
        }
        let key = opts
            .split_whitespace()
            .find_map(|o| o.strip_prefix("signed-by="))
            .map(str::to_string);
        return Some((uri.to_string(), key));
    }
    None
}

/// The newest cached kernel of `series`, else the newest one Debian's
/// suite has, downloaded with the private apt and unpacked into the cache.
fn debian_kernel(series: &Series) -> Result<Kernel> {
    let cache = cache_dir()?;
    fs::create_dir_all(&cache).with_context(|| format!("creating {}", cache.display()))?;
    let cached = fs::read_dir(&cache)?
        .filter_map(|e| e.ok()?.file_name().into_string().ok())
        .filter(|n| n.starts_with(series.release_prefix) && n.ends_with("-cloud-amd64"))
        .filter_map(|n| Some((Kernel::cached(&cache.join(&n))?, n)))
        .max_by(|a, b| version_cmp(&a.1, &b.1));
    if let Some((kernel, release)) = cached {
        eprintln!(
            "xtask: vm: kernel {release} (cached in {})",
            cache.display()
        );
        return Ok(kernel);
    }
    let apt = PrivateApt::new(&cache)?;
    let package = apt.newest_kernel(series)?;
    let debs = cache.join("debs");
    let _ = fs::remove_dir_all(&debs);
    fs::create_dir_all(&debs)?;
    sh(apt
        .cmd("apt-get")
        .args(["download", &package])
        .current_dir(&debs))?;
    let deb = fs::read_dir(&debs)?
        .filter_map(|e| Some(e.ok()?.path()))
        .find(|p| p.extension().is_some_and(|e| e == "deb"))
        .with_context(|| format!("apt-get download left no {package}_*.deb"))?;
    let tmp = cache.join("extract");
    let _ = fs::remove_dir_all(&tmp);
    sh(Command::new("dpkg-deb").arg("-x").arg(&deb).arg(&tmp))?;
    let vmlinuz = fs::read_dir(tmp.join("boot"))?
        .filter_map(|e| e.ok()?.file_name().into_string().ok())
        .find(|n| n.starts_with("vmlinuz-"))
        .context("no boot/vmlinuz-* in the package")?;
    let release = &vmlinuz["vmlinuz-".len()..];
    // bullseye and bookworm: /lib/modules; trixie: /usr/lib/modules.
    let moddir = ["lib", "usr/lib"]
        .iter()
        .map(|l| tmp.join(l).join("modules").join(release))
        .find(|p| p.is_dir())
        .with_context(|| format!("no lib/modules/{release} in {package}"))?;
    let builtin = fs::read_to_string(moddir.join("modules.builtin")).unwrap_or_default();
    let files = module_files(&moddir)?;
    let dir = cache.join(release);
    let _ = fs::remove_dir_all(&dir);
    fs::create_dir_all(&dir)?;
    let mut load = String::new();
    for m in MODULES {
        if is_builtin(&builtin, m) {
            continue;
        }
        let src = files
            .get(*m)
            .with_context(|| format!("{package}: {m} is neither built in nor a module"))?;
        unpack_module(src, &dir.join(format!("{m}.ko")))?;
        load += &format!("{m}\n");
    }
    fs::write(dir.join(MODULE_LIST), load)?;
    fs::rename(tmp.join("boot").join(&vmlinuz), dir.join("vmlinuz"))?;
    fs::remove_dir_all(&tmp)?;
    fs::remove_dir_all(&debs)?;
    eprintln!("xtask: vm: kernel {release} kept in {}", dir.display());
    Kernel::cached(&dir).context("kernel cache incomplete")
}

/// Whether `modules.builtin` (one `kernel/…/NAME.ko` per line) has `name`.
fn is_builtin(modules_builtin: &str, name: &str) -> bool {
    modules_builtin
        .lines()
        .any(|l| l.rsplit('/').next() == Some(&format!("{name}.ko")))
}

/// Module name (`tcp_diag`) → its file under `dir`, whatever the
/// compression (`.ko` on 5.10 and 6.1, `.ko.xz` on 6.12).
fn module_files(dir: &Path) -> Result<BTreeMap<String, PathBuf>> {
    let mut out = BTreeMap::new();
    let mut todo = vec![dir.join("kernel")];
    while let Some(d) = todo.pop() {
        for e in fs::read_dir(&d)? {
            let p = e?.path();
            if p.is_dir() {
                todo.push(p);
            } else if let Some(name) = p.file_name().and_then(|n| n.to_str()) {
                if let Some((stem, _)) = module_name(name) {
                    out.insert(stem.to_string(), p.clone());
                }
            }
        }
    }
    Ok(out)
}

/// `tcp_diag.ko.xz` → (`tcp_diag`, `xz`); `ipv6.ko` → (`ipv6`, ``).
fn module_name(file: &str) -> Option<(&str, &str)> {
    let (stem, rest) = file.split_once(".ko")?;
    let comp = match rest {
        "" => "",
        ".xz" => "xz",
        ".zst" => "zstd",
        ".gz" => "gzip",
        _ => return None,
    };
    Some((stem, comp))
}

/// Copies a module, decompressed: busybox's insmod loads plain ELF only.
fn unpack_module(src: &Path, dst: &Path) -> Result<()> {
    let name = src.file_name().unwrap().to_string_lossy();
    let (_, comp) = module_name(&name).context("not a module")?;
    if comp.is_empty() {
        fs::copy(src, dst)?;
        return Ok(());
    }
    let out = Command::new(comp)
        .arg("-dc")
        .arg(src)
        .output()
        .with_context(|| format!("running {comp} (to unpack {name})"))?;
    ensure!(out.status.success(), "{comp} -dc {}: failed", src.display());
    fs::write(dst, out.stdout)?;
    Ok(())
}

/// The newest `linux-image-RELEASE-cloud-amd64-unsigned` of `series` in
/// `apt-cache search` output (`NAME - description` lines).
fn newest_kernel_package(apt_cache: &str, series: &Series) -> Option<String> {
    let prefix = format!("linux-image-{}", series.release_prefix);
    apt_cache
        .lines()
        .filter_map(|l| l.split_whitespace().next())
        .filter(|n| n.starts_with(&prefix) && n.ends_with(KERNEL_SUFFIX))
        .max_by(|a, b| version_cmp(a, b))
        .map(str::to_string)
}

/// Compares digit runs as numbers and everything else as text:
/// `6.1.0-9` < `6.1.0-56`.
fn version_cmp(a: &str, b: &str) -> Ordering {
    fn chunks(s: &str) -> Vec<(bool, &str)> {
        let mut out = Vec::new();
        let mut start = 0;
        for (i, c) in s.char_indices().skip(1) {
            let prev = s[..i].chars().next_back().unwrap();
            if prev.is_ascii_digit() != c.is_ascii_digit() {
                out.push((prev.is_ascii_digit(), &s[start..i]));
                start = i;
            }
        }
        if !s.is_empty() {
            out.push((
                s[start..].starts_with(|c: char| c.is_ascii_digit()),
                &s[start..],
            ));
        }
        out
    }
    for (x, y) in chunks(a).into_iter().zip(chunks(b)) {
        let o = match (x, y) {
            ((true, x), (true, y)) => {
                let (x, y) = (x.trim_start_matches('0'), y.trim_start_matches('0'));
                x.len().cmp(&y.len()).then(x.cmp(y))
            }
            ((_, x), (_, y)) => x.cmp(y),
        };
        if o != Ordering::Equal {
            return o;
        }
    }
    chunks(a).len().cmp(&chunks(b).len())
}

// ---- build ----------------------------------------------------------------

/// An integration-test executable: cargo's target name and its path.
#[derive(Debug, PartialEq)]
struct TestExe {
    name: String,
    path: PathBuf,
}

/// Test executables that run on the host only: they need Debian's
/// prometheus and rsyslogd (sidecar, prometheus), tmux (top), the Python
/// venv and collector (otlp), promtool (exporters, metrics_flood), setpriv with a user
/// (privilege), podman (containers) or gunicorn and its Python (prefork),
/// which the guest does not carry; the
/// kernel side they drive is the engine the other tests run in the guest.
const HOST_ONLY: &[&str] = &[
    "sidecar",
    "top",
    "otlp",
    "prometheus",
    "exporters",
    "privilege",
    "containers",
    "metrics_flood",
    "prefork",
];

fn build() -> Result<Vec<TestExe>> {
    cargo(&["build", "-p", "tcpq-agent", "-p", "tcpq-tests", "--bins"])?;
    // The guest runs the release agent: under TCG a debug build takes tens
    // of seconds to parse the kernel's BTF, longer than some scenarios
    // hold their listeners.
    cargo(&["build", "--release", "-p", "tcpq-agent"])?;
    let args = [
        "test",
        "-p",
        "tcpq-tests",
        "--no-run",
        "--message-format=json",
    ];
    eprintln!("xtask: $ cargo {}", args.join(" "));
    let out = Command::new(env!("CARGO"))
        .args(args)
        .current_dir(root())
        .stderr(Stdio::inherit())
        .output()
        .context("running cargo")?;
    ensure!(out.status.success(), "cargo test --no-run failed");
    let mut tests = test_executables(&String::from_utf8_lossy(&out.stdout));
    tests.retain(|t| !HOST_ONLY.contains(&t.name.as_str()));
    ensure!(
        !tests.is_empty(),
        "cargo built no integration-test executable"
    );
    Ok(tests)
}

/// Integration-test executables (`kind` `test`) in `cargo --message-format
/// json` output, sorted by name.
fn test_executables(json_lines: &str) -> Vec<TestExe> {
    let mut out: Vec<TestExe> = json_lines
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .filter(|m| m["reason"] == "compiler-artifact")
        .filter(|m| {
            m["target"]["kind"]
                .as_array()
                .is_some_and(|k| k.iter().any(|k| k == "test"))
        })
        .filter_map(|m| {
            Some(TestExe {
                name: m["target"]["name"].as_str()?.to_string(),
                path: PathBuf::from(m["executable"].as_str()?),
            })
        })
        .collect();
    out.sort_by(|a, b| a.name.cmp(&b.name));
    out.dedup_by(|a, b| a.name == b.name);
    out
}

// ---- initramfs ------------------------------------------------------------

/// One run of a test executable in the guest: `NAME@MODE`.
#[derive(Debug, Clone, PartialEq)]
struct Run {
    name: String,
    mode: String,
    guest_path: String,
}

impl Run {
    fn new(t: &TestExe, mode: &str) -> Run {
        let file = t.path.file_name().unwrap().to_string_lossy();
        Run {
            name: format!("{}@{mode}", t.name),
            mode: mode.to_string(),
            guest_path: format!("/{GUEST_BIN}/deps/{file}"),
        }
    }
}

/// The part of the initramfs every boot shares: directories, our binaries
/// in cargo's layout, the host tools with their libraries, busybox.
fn common_initramfs(tests: &[TestExe], out: &Path) -> Result<()> {
    let mut fs = Tree::default();
    for d in ["dev", "proc", "sys", "run", "tmp", "root", "etc"] {
        fs.dir(d);
    }
    // iproute2 keeps namespaces in /var/run/netns, the tests look in /run.
    fs.symlink("var/run", "../run");
    // nginx writes its default error log and temp files here before it
    // reads the configuration it is given; it switches workers to nobody.
    for d in ["var/log/nginx", "var/lib/nginx", "var/tmp"] {
        fs.dir(d);
    }
    fs.bytes(
        "etc/passwd",
        b"root:x:0:0:root:/root:/bin/sh\n\
          www-data:x:33:33:www-data:/var/www:/bin/false\n\
          nobody:x:65534:65534:nobody:/nonexistent:/bin/false\n"
            .to_vec(),
    );
    fs.bytes(
        "etc/group",
        b"root:x:0:\nwww-data:x:33:\nnogroup:x:65534:\n".to_vec(),
    );
    for f in EXTRA_FILES {
        if Path::new(f).is_file() {
            fs.file(f, Path::new(f))?;
        }
    }

    // Cargo's layout: target/debug/{tcpq-agent,tcpq-scenario}, tests in deps/.
    let host_bin = tests[0].path.parent().and_then(Path::parent).unwrap();
    let mut elves = Vec::new();
    let release = host_bin.parent().unwrap().join("release");
    for (name, dir) in [
        ("tcpq-agent", &release),
        ("tcpq-scenario", &host_bin.to_path_buf()),
    ] {
        let src = dir.join(name);
        ensure!(src.is_file(), "{} is not built", src.display());
        fs.file(&format!("{GUEST_BIN}/{name}"), &src)?;
        elves.push(src);
    }
    for t in tests {
        fs.file(&Run::new(t, "").guest_path, &t.path)?;
        elves.push(t.path.clone());
    }
    for tool in TOOLS {
        let p = TOOL_DIRS
            .iter()
            .map(|d| Path::new(d).join(tool))
            .find(|p| p.is_file())
            .with_context(|| format!("{tool} is not installed (cargo xtask setup installs it)"))?;
        fs.file(&p.to_string_lossy(), &p)?;
        elves.push(p);
    }
    for elf in &elves {
        let out = Command::new("ldd")
            .arg(elf)
            .output()
            .context("running ldd")?;
        for lib in ldd_paths(&String::from_utf8_lossy(&out.stdout))? {
            fs.file(&lib, Path::new(&lib))?;
        }
    }
    // busybox for everything else (sh, mount, sysctl, cat, poweroff...),
    // never shadowing a real tool copied above.
    fs.file("bin/busybox", Path::new("/bin/busybox"))?;
    let applets = Command::new("/bin/busybox")
        .arg("--list")
        .output()
        .context("busybox-static is not installed (cargo xtask setup installs it)")?;
    for applet in String::from_utf8_lossy(&applets.stdout).lines() {
        let shadowed = TOOL_DIRS
            .iter()
            .any(|d| fs.0.contains_key(&format!("{}/{applet}", &d[1..])));
        if !shadowed && applet != "busybox" {
            fs.symlink(&format!("bin/{applet}"), "busybox");
        }
    }
    write_gz(&fs, out)
}

/// One boot's initramfs: the common archive followed by this boot's
/// modules and `/init`.
fn boot_initramfs(
    common: &Path,
    runs: &[Run],
    modules: &[PathBuf],
    args: &[String],
    out: &Path,
) -> Result<()> {
    let mut fs = Tree::default();
    let mut guest_modules = Vec::new();
    for m in modules {
        let guest = format!("lib/modules/{}", m.file_name().unwrap().to_string_lossy());
        fs.file(&guest, m)?;
        guest_modules.push(format!("/{guest}"));
    }
    let agent = format!("/{GUEST_BIN}/tcpq-agent");
    let init = render_init(runs, &guest_modules, &agent, args);
    fs.bytes("init", init.into_bytes());
    let own = out.with_extension("own.gz");
    write_gz(&fs, &own)?;
    let mut w = fs::File::create(out)?;
    io::copy(&mut fs::File::open(common)?, &mut w)?;
    io::copy(&mut fs::File::open(&own)?, &mut w)?;
    fs::remove_file(&own)?;
    Ok(())
}

/// `tree` as a gzip-compressed newc archive at `out` (`X.gz`).
fn write_gz(tree: &Tree, out: &Path) -> Result<()> {
    let cpio = out.with_extension("");
    tree.write_cpio(&cpio)
        .with_context(|| format!("writing {}", cpio.display()))?;
    sh(Command::new("gzip").args(["-1", "-f"]).arg(&cpio))?;
    ensure!(out.is_file(), "gzip left no {}", out.display());
    Ok(())
}

/// Absolute paths of the shared libraries and ELF interpreter in `ldd`
/// output (none for a static executable).
fn ldd_paths(ldd: &str) -> Result<Vec<String>> {
    let mut out = Vec::new();
    for line in ldd.lines().map(str::trim) {
        if let Some((lib, path)) = line.split_once("=>") {
            let path = path.split_whitespace().next().unwrap_or("");
            if path == "not" {
                bail!("ldd: {lib} not found");
            }
            if path.starts_with('/') {
                out.push(path.to_string());
            }
        } else if line.starts_with('/') {
            out.push(line.split_whitespace().next().unwrap().to_string());
        }
    }
    Ok(out)
}

/// The guest's /init: mounts and modules, then each run in turn, one marker
/// line per run, then power off.
fn render_init(runs: &[Run], modules: &[String], agent: &str, args: &[String]) -> String {
    let args: String = args.iter().map(|a| format!(" {}", sh_quote(a))).collect();
    let modules: String = modules
        .iter()
        .map(|m| format!("insmod {}\n", sh_quote(m)))
        .collect();
    let mut s = format!(
        r#"#!/bin/sh
export PATH=/usr/sbin:/usr/bin:/sbin:/bin HOME=/root
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev
mount -t tmpfs tmpfs /run
mount -t tmpfs tmpfs /tmp
mount -t tracefs tracefs /sys/kernel/tracing
{modules}ip link set lo up
echo "{MARK}kernel $(uname -r)"
cd /tmp
export TCPQ_AGENT={agent} TCPQ_IN_VM=1 RUST_BACKTRACE=0
run() {{
    name=$1
    shift
    "$@" --test-threads=1{args}
    rc=$?
    if [ $rc -eq 0 ]; then echo "{MARK}PASS $name"; else echo "{MARK}FAIL $name rc=$rc"; fi
}}
# What the kernel offers and what attaches (doctor), then the kernel
# programs' cost per run (BPF_ENABLE_STATS) over a few overflow scenarios.
report() {{
    mode=$1
    scen=$(dirname "$TCPQ_AGENT")/tcpq-scenario
    # busybox's sh runs its own applets first: name iproute2's ip by path.
    ip=/usr/sbin/ip
    [ -x $ip ] || ip=/usr/bin/ip
    echo "{MARK}doctor --attach $mode"
    "$TCPQ_AGENT" doctor --attach "$mode"
    $ip netns add cost && $ip -n cost link set lo up
    $ip netns exec cost sysctl -q -w net.ipv4.tcp_synack_retries=1
    "$TCPQ_AGENT" trace --attach "$mode" --bpf-stats --output json >/dev/null 2>/tmp/cost.err &
    ag=$!
    i=0
    while ! grep -q "tcpq: tracing" /tmp/cost.err && [ $i -lt 60 ]; do sleep 1; i=$((i+1)); done
    $ip netns exec cost "$scen" syn-overflow --port 9400 --clients 20 --syncnt 1 --hold 1.5 >/dev/null
    $ip netns exec cost "$scen" slow-accept --port 9401 --clients 6 --accepts 3 --hold 0.5 >/dev/null
    $ip netns exec cost "$scen" ack-overflow --port 9402 --hold 1.5 >/dev/null
    kill -INT $ag
    wait $ag
    grep "tcpq: cost" /tmp/cost.err | sed "s/^/{MARK}cost@$mode /"
    $ip netns del cost
}}
"#
    );
    // Golden recordings for tests/recordings (tests/tests/replay.rs).
    if std::env::var_os("TCPQ_KEEP_RECORDING").is_some() {
        s += "export TCPQ_KEEP_RECORDING=1\n";
    }
    let mut mode = None;
    for r in runs {
        if mode != Some(&r.mode) {
            mode = Some(&r.mode);
            s += &match r.mode.as_str() {
                // The host's path: sock_diag and the kfree_skb tracepoint.
                "tracepoint" => "export TCPQ_ATTACH=tracepoint\nunset TCPQ_EXPECT_HOOK\n".into(),
                // fentry where the kernel allows it, kprobe elsewhere (on
                // 6.1 the 7-argument syn_recv_sock): either kind will do.
                "auto" => "export TCPQ_ATTACH=auto TCPQ_EXPECT_HOOK=kfunc\n".into(),
                m => format!("export TCPQ_ATTACH={m} TCPQ_EXPECT_HOOK={m}\n"),
            };
            s += &format!("report {}\n", sh_quote(&r.mode));
        }
        s += &format!("run {} {}\n", sh_quote(&r.name), sh_quote(&r.guest_path));
    }
    s += &format!("echo \"{MARK}DONE\"\npoweroff -f\n");
    s
}

fn sh_quote(s: &str) -> String {
    let plain = |c: char| c.is_ascii_alphanumeric() || "-_./=:,+@".contains(c);
    if !s.is_empty() && s.chars().all(plain) {
        s.to_string()
    } else {
        format!("'{}'", s.replace('\'', r"'\''"))
    }
}

enum Node {
    Dir,
    File(PathBuf),
    Bytes(Vec<u8>),
    Symlink(String),
}

/// The initramfs contents, keyed by path without the leading `/` (sorted:
/// a directory comes before what it holds).
#[derive(Default)]
struct Tree(BTreeMap<String, Node>);

impl Tree {
    fn add(&mut self, path: &str, node: Node) {
        let path = path.trim_start_matches('/');
        let mut parent = Path::new(path).parent();
        while let Some(p) = parent.filter(|p| !p.as_os_str().is_empty()) {
            self.0
                .entry(p.to_string_lossy().into_owned())
                .or_insert(Node::Dir);
            parent = p.parent();
        }
        self.0.insert(path.to_string(), node);
    }
    fn dir(&mut self, path: &str) {
        self.add(path, Node::Dir);
    }
    fn file(&mut self, path: &str, src: &Path) -> Result<()> {
        ensure!(src.is_file(), "{} is not a file", src.display());
        self.add(path, Node::File(src.to_path_buf()));
        Ok(())
    }
    fn bytes(&mut self, path: &str, data: Vec<u8>) {
        self.add(path, Node::Bytes(data));
    }
    fn symlink(&mut self, path: &str, target: &str) {
        self.add(path, Node::Symlink(target.to_string()));
    }

    /// newc cpio, everything owned by root.
    fn write_cpio(&self, path: &Path) -> Result<()> {
        let mut w = BufWriter::new(fs::File::create(path)?);
        for (ino, (name, node)) in self.0.iter().enumerate() {
            let ino = ino as u32 + 1;
            match node {
                Node::Dir => cpio_entry(&mut w, name, ino, 0o040755, &mut io::empty(), 0)?,
                Node::Symlink(t) => {
                    cpio_entry(&mut w, name, ino, 0o120777, &mut t.as_bytes(), t.len())?
                }
                Node::Bytes(d) => cpio_entry(&mut w, name, ino, 0o100755, &mut &d[..], d.len())?,
                Node::File(src) => {
                    let mut f = fs::File::open(src)
                        .with_context(|| format!("opening {}", src.display()))?;
                    let meta = f.metadata()?;
                    let mode = 0o100000 | (meta.permissions().mode() & 0o7777);
                    cpio_entry(&mut w, name, ino, mode, &mut f, meta.len() as usize)?
                }
            }
        }
        cpio_entry(&mut w, "TRAILER!!!", 0, 0, &mut io::empty(), 0)?;
        w.flush()?;
        Ok(())
    }
}

/// One newc record: 110-byte header, name, data, each padded to 4 bytes.
fn cpio_entry(
    w: &mut impl Write,
    name: &str,
    ino: u32,
    mode: u32,
    data: &mut impl io::Read,
    size: usize,
) -> Result<()> {
    let nlink = if mode & 0o170000 == 0o040000 { 2 } else { 1 };
    let namesize = name.len() + 1;
    write!(w, "070701")?;
    // ino mode uid gid nlink mtime filesize devmajor devminor rdevmajor
    // rdevminor namesize check
    for field in [
        ino as usize,
        mode as usize,
        0,
        0,
        nlink,
        0,
        size,
        0,
        0,
        0,
        0,
        namesize,
        0,
    ] {
        write!(w, "{field:08X}")?;
    }
    w.write_all(name.as_bytes())?;
    w.write_all(&[0][..])?;
    w.write_all(&[0; 3][..(4 - (110 + namesize) % 4) % 4])?;
    let copied = io::copy(data, w)? as usize;
    ensure!(copied == size, "{name}: {copied} bytes, expected {size}");
    w.write_all(&[0; 3][..(4 - size % 4) % 4])?;
    Ok(())
}

// ---- QEMU -----------------------------------------------------------------

/// What the serial console said.
#[derive(Debug, Default, PartialEq)]
struct Verdict {
    kernel: Option<String>,
    /// Finished runs: name, exit code, libtest's results in it.
    runs: Vec<(String, i32, Vec<TestResult>)>,
    /// libtest's results in the run under way.
    tests: Vec<TestResult>,
    done: bool,
    panic: bool,
    booted_after: Option<Duration>,
    total: Duration,
    /// (passed, failed) summed over libtest's `test result:` lines.
    totals: (u64, u64),
    /// `TCPQ-SKIP NAME: REASON` lines (`tcpq_tests::skip`).
    skipped: Vec<String>,
}

/// `(test, "ok" | "FAILED" | "ignored")`; `""` until its result is seen.
type TestResult = (String, String);

/// libtest's result word at the start of `s` (`ok`, `FAILED`, `ignored, why`).
fn result_word(s: &str) -> Option<&str> {
    let w = s.trim().split([' ', ',']).next()?;
    ["ok", "FAILED", "ignored"].into_iter().find(|&r| r == w)
}

impl Verdict {
    /// Takes one console line (a marker may follow kernel output on it).
    fn scan(&mut self, line: &str) {
        if line.contains("Kernel panic") {
            self.panic = true;
        }
        if let Some(rest) = line.split("test result: ").nth(1) {
            let (p, f) = crate::totals(std::iter::once(rest));
            self.totals = (self.totals.0 + p, self.totals.1 + f);
        }
        if let Some(rest) = line.split(SKIP_MARK).nth(1) {
            self.skipped.push(rest.trim().to_string());
        }
        // `test NAME ... ok`; what a test's child processes print to the
        // console can come between `... ` and the result word.
        match line
            .strip_prefix("test ")
            .and_then(|l| l.split_once(" ... "))
        {
            Some((t, r)) => {
                let r = result_word(r).unwrap_or("");
                self.tests.push((t.to_string(), r.to_string()));
            }
            None => {
                if let Some(last) = self.tests.last_mut().filter(|t| t.1.is_empty()) {
                    if let Some(r) = result_word(line) {
                        last.1 = r.to_string();
                    }
                }
            }
        }
        let Some(m) = line.find(MARK).map(|i| &line[i + MARK.len()..]) else {
            return;
        };
        let mut w = m.split_whitespace();
        let mut finished = |name: &str, rc| {
            let tests = std::mem::take(&mut self.tests);
            self.runs.push((name.to_string(), rc, tests));
        };
        match (w.next(), w.next(), w.next()) {
            (Some("kernel"), Some(k), _) => self.kernel = Some(k.to_string()),
            (Some("PASS"), Some(n), _) => finished(n, 0),
            (Some("FAIL"), Some(n), rc) => {
                let rc = rc.and_then(|r| r.strip_prefix("rc=")?.parse().ok());
                finished(n, rc.unwrap_or(-1))
            }
            (Some("DONE"), ..) => self.done = true,
            _ => {}
        }
    }

    fn all_passed(&self, expected: &[&str]) -> bool {
        self.done
            && expected
                .iter()
                .all(|n| self.runs.iter().any(|(r, rc, _)| r == n && *rc == 0))
    }

    fn summary(&self, expected: &[&str]) -> String {
        let mut s = format!(
            "xtask: vm: kernel {}, booted in {}, whole run {:.0?}\n",
            self.kernel.as_deref().unwrap_or("?"),
            self.booted_after
                .map_or("?".into(), |d| format!("{:.1} s", d.as_secs_f64())),
            self.total
        );
        // Results so far of the run that did not finish belong to the first
        // expected run without a marker.
        let mut under_way = Some(self.tests.as_slice());
        for n in expected {
            let (verdict, tests) = match self.runs.iter().find(|(r, ..)| r == n) {
                Some((_, 0, tests)) => ("PASS".to_string(), tests.as_slice()),
                Some((_, rc, tests)) => (format!("FAIL rc={rc}"), tests.as_slice()),
                None => ("did not finish".into(), under_way.take().unwrap_or(&[])),
            };
            s += &format!("xtask: vm: {verdict:14} {n}\n");
            for (t, r) in tests {
                let r = if r.is_empty() { "?" } else { r };
                s += &format!("xtask: vm:     {r:7} {t}\n");
            }
        }
        if self.panic {
            s += "xtask: vm: kernel panic\n";
        }
        if !self.done {
            s += "xtask: vm: no DONE line (timeout, crash or early exit)\n";
        }
        s.trim_end().to_string()
    }
}

fn boot(
    kernel: &Path,
    initrd: &Path,
    log: &Path,
    timeout: Duration,
    prefix: &str,
) -> Result<Verdict> {
    let mut cmd = Command::new("qemu-system-x86_64");
    // TCG only: KVM hangs on some hosts, and TCG runs anywhere.
    cmd.args(["-accel", "tcg", "-cpu", "max", "-m", "2048", "-smp", "2"])
        .args(["-nodefaults", "-display", "none", "-serial", "stdio"])
        .arg("-no-reboot")
        .arg("-kernel")
        .arg(kernel)
        .arg("-initrd")
        .arg(initrd)
        .args(["-append", "console=ttyS0 panic=-1 quiet"])
        .stdin(Stdio::null())
        .stdout(Stdio::piped());
    eprintln!("xtask: $ {}", crate::show(&cmd));
    let started = Instant::now();
    let mut qemu = cmd.spawn().context("starting qemu-system-x86_64")?;
    let (tx, rx) = mpsc::channel();
    let stdout = qemu.stdout.take().unwrap();
    std::thread::spawn(move || {
        let mut r = BufReader::new(stdout);
        let mut buf = Vec::new();
        while r.read_until(b'\n', &mut buf).is_ok_and(|n| n > 0) {
            let line = String::from_utf8_lossy(&buf);
            let _ = tx.send(line.trim_end_matches(['\r', '\n']).to_string());
            buf.clear();
        }
    });
    let mut console =
        BufWriter::new(fs::File::create(log).with_context(|| format!("{}", log.display()))?);
    let mut v = Verdict::default();
    let deadline = started + timeout;
    let mut exited = false;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        let line = match rx.recv_timeout(left) {
            Ok(l) => l,
            Err(mpsc::RecvTimeoutError::Disconnected) => {
                exited = true;
                break;
            }
            Err(mpsc::RecvTimeoutError::Timeout) => {
                eprintln!("xtask: vm: timeout after {timeout:?}");
                break;
            }
        };
        println!("{prefix}{line}");
        writeln!(console, "{line}")?;
        let had_kernel = v.kernel.is_some();
        v.scan(&line);
        if !had_kernel && v.kernel.is_some() {
            v.booted_after = Some(started.elapsed());
        }
        if v.panic || v.done {
            break;
        }
    }
    console.flush()?;
    if v.done && !exited {
        // `poweroff -f` follows DONE: give QEMU a moment to exit by itself.
        let until = Instant::now() + Duration::from_secs(20);
        while Instant::now() < until && qemu.try_wait()?.is_none() {
            std::thread::sleep(Duration::from_millis(100));
        }
    }
    if qemu.try_wait()?.is_none() {
        let _ = qemu.kill();
    }
    qemu.wait()?;
    v.total = started.elapsed();
    Ok(v)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn newest_kernel_is_picked_by_version_not_text() {
        let apt = "\
linux-image-6.1.0-9-cloud-amd64-unsigned - Linux 6.1 for x86-64 cloud
linux-image-6.1.0-56-cloud-amd64-unsigned - Linux 6.1 for x86-64 cloud
linux-image-6.1.0-56-cloud-amd64-dbg - Debug symbols for linux-image-6.1.0-56-cloud-amd64
linux-image-6.1.0-100-amd64-unsigned - Linux 6.1 for 64-bit PCs
linux-image-6.1.0-47-cloud-amd64-unsigned - Linux 6.1 for x86-64 cloud
linux-image-6.12.107+deb13-cloud-amd64-unsigned - Linux 6.12 for x86-64 cloud
linux-image-6.12.117+deb13-cloud-amd64-unsigned - Linux 6.12 for x86-64 cloud
linux-image-5.10.0-32-cloud-amd64-unsigned - Linux 5.10 for x86-64 cloud
";
        let series = |n: &str| match n.parse::<KernelArg>() {
            Ok(KernelArg::Debian(s)) => s,
            other => panic!("{n}: {other:?}"),
        };
        assert_eq!(
            newest_kernel_package(apt, series("6.1")).as_deref(),
            Some("linux-image-6.1.0-56-cloud-amd64-unsigned")
        );
        assert_eq!(
            newest_kernel_package(apt, series("6.12")).as_deref(),
            Some("linux-image-6.12.117+deb13-cloud-amd64-unsigned")
        );
        assert_eq!(
            newest_kernel_package(apt, series("5.10")).as_deref(),
            Some("linux-image-5.10.0-32-cloud-amd64-unsigned")
        );
        assert_eq!(newest_kernel_package("", series("6.1")), None);
        assert_eq!(version_cmp("6.1.0-9", "6.1.0-56"), Ordering::Less);
        assert_eq!(version_cmp("6.1.0-056", "6.1.0-56"), Ordering::Equal);
        assert_eq!(version_cmp("6.1.0-56", "6.1.0-56a"), Ordering::Less);
        assert_eq!(version_cmp("", "1"), Ordering::Less);
    }

    #[test]
    fn kernel_argument_is_a_series_or_an_image() {
        assert_eq!(series_suite("5.10"), "bullseye");
        assert_eq!(series_suite("6.1"), "bookworm");
        assert_eq!(series_suite("6.12"), "trixie");
        assert_eq!(
            "/boot/vmlinuz-x".parse::<KernelArg>(),
            Ok(KernelArg::Image("/boot/vmlinuz-x".into()))
        );
        let err = "6.2".parse::<KernelArg>().unwrap_err();
        assert!(err.contains("5.10, 6.1, 6.12"), "{err}");
    }

    fn series_suite(n: &str) -> &'static str {
        match n.parse::<KernelArg>() {
            Ok(KernelArg::Debian(s)) => s.suite,
            other => panic!("{n}: {other:?}"),
        }
    }

    #[test]
    fn system_mirror_is_read_from_either_sources_format() {
        let deb822 = "\
Types: deb
# http://snapshot.debian.org/archive/debian/20250520T000000Z
URIs: http://deb.debian.org/debian
Suites: bookworm bookworm-updates
Components: main
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg

Types: deb
URIs: http://deb.debian.org/debian-security
Suites: bookworm-security
";
        assert_eq!(
            debian_uri_deb822(deb822),
            Some((
                "http://deb.debian.org/debian".into(),
                Some("/usr/share/keyrings/debian-archive-keyring.gpg".into())
            ))
        );
        let third_party =
            "Types: deb\nURIs: https://deb.nodesource.com/node_20.x\nSuites: nodistro\n";
        assert_eq!(debian_uri_deb822(third_party), None);
        let list = "# comment\n\
deb https://packages.cloud.google.com/apt cloud-sdk-bookworm main\n\
deb [arch=amd64 signed-by=/k.gpg] http://mirror.example/debian/ bookworm main\n";
        assert_eq!(
            debian_uri_one_line(list),
            Some((
                "http://mirror.example/debian/".into(),
                Some("/k.gpg".into())
            ))
        );
        assert!(!is_debian_archive("http://deb.debian.org/debian-security"));
    }

    #[test]
    fn modules_are_found_builtin_or_compressed() {
        let builtin = "kernel/net/ipv6/ipv6.ko\nkernel/net/ipv4/tcp_cubic.ko\n";
        assert!(is_builtin(builtin, "ipv6"));
        assert!(!is_builtin(builtin, "tcp_diag"));
        assert!(!is_builtin(builtin, "ipv"));
        assert_eq!(module_name("tcp_diag.ko.xz"), Some(("tcp_diag", "xz")));
        assert_eq!(module_name("inet_diag.ko"), Some(("inet_diag", "")));
        assert_eq!(module_name("x.ko.zst"), Some(("x", "zstd")));
        assert_eq!(module_name("modules.dep"), None);
        assert_eq!(module_name("x.ko.bz2"), None);
    }

    #[test]
    fn integration_tests_are_found_in_cargo_json() {
        let json = r#"{"reason":"compiler-artifact","target":{"kind":["lib"],"name":"tcpq_tests"},"executable":null}
{"reason":"compiler-artifact","target":{"kind":["test"],"name":"listen_overflow"},"executable":"/w/target/debug/deps/listen_overflow-1a2b"}
{"reason":"compiler-artifact","target":{"kind":["bin"],"name":"tcpq-scenario"},"executable":"/w/target/debug/tcpq-scenario"}
{"reason":"compiler-artifact","target":{"kind":["lib"],"name":"tcpq_tests"},"profile":{"test":true},"executable":"/w/target/debug/deps/tcpq_tests-ff"}
{"reason":"compiler-artifact","target":{"kind":["test"],"name":"cli"},"executable":"/w/target/debug/deps/cli-3c4d"}
not json
{"reason":"build-finished","success":true}"#;
        assert_eq!(
            test_executables(json),
            vec![
                TestExe {
                    name: "cli".into(),
                    path: "/w/target/debug/deps/cli-3c4d".into()
                },
                TestExe {
                    name: "listen_overflow".into(),
                    path: "/w/target/debug/deps/listen_overflow-1a2b".into()
                },
            ]
        );
    }

    #[test]
    fn ldd_output_gives_libraries_and_interpreter() {
        let ldd = "\tlinux-vdso.so.1 (0x00007ffd)\n\
            \tlibgcc_s.so.1 => /lib/x86_64-linux-gnu/libgcc_s.so.1 (0x00007f01)\n\
            \tlibc.so.6 => /lib/x86_64-linux-gnu/libc.so.6 (0x00007f02)\n\
            \t/lib64/ld-linux-x86-64.so.2 (0x00007f03)\n";
        assert_eq!(
            ldd_paths(ldd).unwrap(),
            [
                "/lib/x86_64-linux-gnu/libgcc_s.so.1",
                "/lib/x86_64-linux-gnu/libc.so.6",
                "/lib64/ld-linux-x86-64.so.2"
            ]
        );
        assert!(ldd_paths("\tnot a dynamic executable\n")
            .unwrap()
            .is_empty());
        assert!(ldd_paths("\tstatically linked\n").unwrap().is_empty());
        assert!(ldd_paths("\tlibfoo.so.1 => not found\n").is_err());
    }

    #[test]
    fn init_runs_every_executable_per_mode_with_the_filter_and_powers_off() {
        let tests = [
            TestExe {
                name: "cli".into(),
                path: "/w/target/debug/deps/cli-1".into(),
            },
            TestExe {
                name: "listen_overflow".into(),
                path: "/w/target/debug/deps/lo-2".into(),
            },
        ];
        let runs: Vec<Run> = ["fentry", "tracepoint"]
            .iter()
            .flat_map(|m| tests.iter().map(move |t| Run::new(t, m)))
            .collect();
        let init = render_init(
            &runs,
            &[
                "/lib/modules/inet_diag.ko".into(),
                "/lib/modules/tcp_diag.ko".into(),
            ],
            "/tcpq/target/debug/tcpq-agent",
            &["syn_time".into(), "it's".into()],
        );
        assert!(init.starts_with("#!/bin/sh\n"));
        assert!(init.contains("\"$@\" --test-threads=1 syn_time 'it'\\''s'\n"));
        assert!(init.contains("TCPQ_AGENT=/tcpq/target/debug/tcpq-agent TCPQ_IN_VM=1"));
        let order = [
            "export TCPQ_ATTACH=fentry TCPQ_EXPECT_HOOK=fentry\n",
            "run cli@fentry /tcpq/target/debug/deps/cli-1\n",
            "run listen_overflow@fentry /tcpq/target/debug/deps/lo-2\n",
            "export TCPQ_ATTACH=tracepoint\nunset TCPQ_EXPECT_HOOK\n",
            "run cli@tracepoint /tcpq/target/debug/deps/cli-1\n",
            "run listen_overflow@tracepoint /tcpq/target/debug/deps/lo-2\n",
            "echo \"TCPQ-VM: DONE\"\npoweroff -f\n",
        ]
        .map(|l| {
            init.find(l)
                .unwrap_or_else(|| panic!("{l:?} not in {init}"))
        });
        assert!(order.windows(2).all(|w| w[0] < w[1]), "{init}");
        assert!(init.contains("mount -t tracefs tracefs /sys/kernel/tracing"));
        assert!(init.contains(
            "insmod /lib/modules/inet_diag.ko\ninsmod /lib/modules/tcp_diag.ko\nip link set lo up\n"
        ));
    }

    #[test]
    fn console_markers_make_the_verdict() {
        let mut v = Verdict::default();
        for l in [
            "[    0.000000] Linux version 6.1.0-56-cloud-amd64",
            "TCPQ-VM: kernel 6.1.0-56-cloud-amd64",
            "test unknown_flag ... ok",
            "TCPQ-VM: PASS cli@fentry",
            "test syn_time ... Cannot remove namespace file \"/run/netns/x\"",
            "ok",
            "test ack_time ... FAILED",
            "test redis ... 171:C 21 Nov 2026 01:40:28.511 # Redis is starting",
            "171:M 21 Nov 2026 01:40:28.557 # Server initialized",
            "ignored, needs redis",
            "[   12.3] random: crng init doneTCPQ-VM: FAIL listen_overflow@fentry rc=101",
            "test unknown_flag ... ok",
            "TCPQ-VM: DONE",
        ] {
            v.scan(l);
        }
        assert_eq!(v.kernel.as_deref(), Some("6.1.0-56-cloud-amd64"));
        let t = |n: &str, r: &str| (n.to_string(), r.to_string());
        assert_eq!(
            v.runs,
            [
                ("cli@fentry".into(), 0, vec![t("unknown_flag", "ok")]),
                (
                    "listen_overflow@fentry".into(),
                    101,
                    vec![
                        t("syn_time", "ok"),
                        t("ack_time", "FAILED"),
                        t("redis", "ignored")
                    ]
                ),
            ]
        );
        assert!(v.done && !v.panic);
        let expected = ["cli@fentry", "listen_overflow@fentry", "cli@kprobe"];
        assert!(!v.all_passed(&expected));
        assert!(v.all_passed(&expected[..1]));
        let s = v.summary(&expected);
        assert!(s.contains("PASS           cli@fentry\n"), "{s}");
        assert!(s.contains("FAIL rc=101    listen_overflow@fentry\n"), "{s}");
        assert!(s.contains("    FAILED  ack_time\n"), "{s}");
        assert!(
            s.contains("did not finish cli@kprobe\nxtask: vm:     ok      unknown_flag"),
            "{s}"
        );
        v.scan("[    1.0] Kernel panic - not syncing: Attempted to kill init!");
        assert!(v.panic);
    }

    #[test]
    fn cpio_records_are_newc_and_padded() {
        let mut out = Vec::new();
        cpio_entry(&mut out, "init", 1, 0o100755, &mut &b"#!/bin/sh\n"[..], 10).unwrap();
        let header = std::str::from_utf8(&out[..110]).unwrap();
        assert!(header.starts_with("070701"));
        assert_eq!(&header[6..14], "00000001"); // ino
        assert_eq!(&header[14..22], "000081ED"); // S_IFREG | 0755
        assert_eq!(&header[54..62], "0000000A"); // filesize
        assert_eq!(&header[94..102], "00000005"); // "init\0"
        assert_eq!(&out[110..115], b"init\0");
        // 110 + 5 = 115 → data at 116; 10 bytes of data → padded to 128.
        assert_eq!(&out[116..126], b"#!/bin/sh\n");
        assert_eq!(out.len(), 128);
        let mut tree = Tree::default();
        tree.symlink("bin/sh", "busybox");
        tree.bytes("tcpq/target/debug/x", vec![]);
        let paths: Vec<_> = tree.0.keys().map(String::as_str).collect();
        assert_eq!(
            paths,
            [
                "bin",
                "bin/sh",
                "tcpq",
                "tcpq/target",
                "tcpq/target/debug",
                "tcpq/target/debug/x"
            ]
        );
    }
}

//! Network namespaces on the host: finding them all (through the processes
//! that live in them and `ip netns` mounts) and running code inside one.

use anyhow::{bail, Context, Result};
use std::{
    collections::{BTreeMap, HashMap},
    fs::File,
    os::{fd::AsRawFd, unix::fs::MetadataExt},
    path::{Path, PathBuf},
};

/// Inode number of the network namespace behind `path` (a
/// `/proc/PID/ns/net` link or an `ip netns` mount).
pub fn inode_of(path: &Path) -> Result<u32> {
    Ok(std::fs::metadata(path)
        .with_context(|| format!("stat {}", path.display()))?
        .ino() as u32)
}

/// `NS_GET_NSTYPE` (linux/nsfs.h: `_IO(0xb7, 0x3)`): the type of the
/// namespace an nsfs fd refers to.
const NS_GET_NSTYPE: libc::c_ulong = 0xb703;

/// Opens `path` without blocking (a FIFO must not hang the agent) and
/// checks that it is a network namespace: `NS_GET_NSTYPE` == CLONE_NEWNET,
/// or, on kernels before 4.11 (no such ioctl), the same device as our own
/// `/proc/self/ns/net` (nsfs) and not a directory. Returns its inode.
pub fn check(path: &Path) -> std::result::Result<u32, String> {
    use std::os::unix::fs::OpenOptionsExt;
    let f = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NONBLOCK | libc::O_NOCTTY | libc::O_CLOEXEC)
        .open(path)
        .map_err(|e| io_reason(&e))?;
    let md = f.metadata().map_err(|e| io_reason(&e))?;
    // SAFETY: valid fd; the ioctl takes no argument.
    let t = unsafe { libc::ioctl(f.as_raw_fd(), NS_GET_NSTYPE as _) };
    if t >= 0 {
        return match t {
            libc::CLONE_NEWNET => Ok(md.ino() as u32),
            other => Err(format!(
                "a {} namespace, not a network namespace",
                ns_kind(other)
            )),
        };
    }
    let err = std::io::Error::last_os_error();
    if err.raw_os_error() != Some(libc::ENOTTY) && err.raw_os_error() != Some(libc::EINVAL) {
        return Err(io_reason(&err));
    }
    // ENOTTY: not an nsfs file at all — or a kernel without the ioctl.
    let own = std::fs::metadata("/proc/self/ns/net").map_err(|e| io_reason(&e))?;
    if md.is_file() || md.is_dir() || md.dev() != own.dev() {
        return Err(format!("not a network namespace ({})", file_kind(&md)));
    }
    Ok(md.ino() as u32)
}

fn ns_kind(t: i32) -> &'static str {
    match t {
        libc::CLONE_NEWNS => "mount",
        libc::CLONE_NEWUTS => "uts",
        libc::CLONE_NEWIPC => "ipc",
        libc::CLONE_NEWUSER => "user",
        libc::CLONE_NEWPID => "pid",
        libc::CLONE_NEWCGROUP => "cgroup",
        0x80 => "time",
        _ => "different",
    }
}

/// "a regular file", "a directory", …: for messages.
pub fn file_kind(md: &std::fs::Metadata) -> &'static str {
    use std::os::unix::fs::FileTypeExt;
    let t = md.file_type();
    if t.is_file() {
        "a regular file"
    } else if t.is_dir() {
        "a directory"
    } else if t.is_fifo() {
        "a FIFO"
    } else if t.is_socket() {
        "a socket"
    } else if t.is_char_device() {
        "a character device"
    } else if t.is_block_device() {
        "a block device"
    } else if t.is_symlink() {
        "a symbolic link"
    } else {
        "not a regular file"
    }
}

/// Why a namespace could not be read: it vanished (its last process
/// exited between listing and entering: normal), or the agent may not
/// enter it (a loss to report).
#[derive(Debug)]
pub enum NsError {
    Vanished,
    /// `reason` is a metric label (`open_denied`, `setns_denied`,
    /// `setns_failed`), `detail` the system's words.
    Unreadable {
        reason: &'static str,
        detail: String,
    },
    /// Entered, but reading inside it failed.
    Inside(anyhow::Error),
}

impl std::fmt::Display for NsError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            NsError::Vanished => write!(f, "the namespace is gone"),
            NsError::Unreadable { detail, .. } => write!(f, "{detail}"),
            NsError::Inside(e) => write!(f, "{e:#}"),
        }
    }
}

/// Like [`run_in`], telling a vanished namespace from one the agent may
/// not enter.
pub fn try_run_in<T>(
    path: &Path,
    home: &File,
    f: impl FnOnce() -> Result<T>,
) -> std::result::Result<T, NsError> {
    let ns = match File::open(path) {
        Ok(ns) => ns,
        Err(e) => {
            return Err(match e.raw_os_error() {
                Some(libc::ENOENT) | Some(libc::ESRCH) => NsError::Vanished,
                Some(libc::EACCES) | Some(libc::EPERM) => NsError::Unreadable {
                    reason: "open_denied",
                    detail: format!("open {}: {}", path.display(), io_reason(&e)),
                },
                _ => NsError::Unreadable {
                    reason: "open_failed",
                    detail: format!("open {}: {}", path.display(), io_reason(&e)),
                },
            })
        }
    };
    // SAFETY: valid fd; CLONE_NEWNET only affects this thread.
    if unsafe { libc::setns(ns.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
        let e = std::io::Error::last_os_error();
        return Err(NsError::Unreadable {
            reason: if e.raw_os_error() == Some(libc::EPERM) {
                "setns_denied"
            } else {
                "setns_failed"
            },
            detail: format!("setns {}: {}", path.display(), io_reason(&e)),
        });
    }
    let r = f();
    setns(home)
        .context("returning to the agent's own network namespace")
        .map_err(NsError::Inside)?;
    r.map_err(NsError::Inside)
}

/// The calling thread's network namespace.
pub fn current() -> Result<u32> {
    inode_of(Path::new("/proc/thread-self/ns/net"))
}

/// Every network namespace that holds a process or an `ip netns` name:
/// inode → a path that opens it. A namespace with neither holds no
/// listener, since a listening socket needs a process holding its fd.
pub fn list() -> BTreeMap<u32, PathBuf> {
    Cache::default().list(true)
}

/// [`list`] for a caller that asks several times a second: each process's
/// namespace is looked up once (a `stat` per new pid, where listing from
/// scratch costs one per process), and from scratch on a `full` listing,
/// which follows the rare process that changed namespace (`setns`,
/// `unshare`) or a reused pid.
#[derive(Default)]
pub struct Cache {
    by_pid: HashMap<u32, u32>,
    /// Processes whose `/proc/PID/ns/net` the last listing could not read
    /// for lack of permission (their namespaces may be missing from it).
    pub denied: u64,
}

impl Cache {
    pub fn list(&mut self, full: bool) -> BTreeMap<u32, PathBuf> {
        if full {
            self.by_pid.clear();
        }
        self.denied = 0;
        let mut out = BTreeMap::new();
        if let Ok(rd) = std::fs::read_dir("/run/netns") {
            for e in rd.flatten() {
                if let Ok(ino) = inode_of(&e.path()) {
                    out.entry(ino).or_insert(e.path());
                }
            }
        }
        let mut seen = HashMap::with_capacity(self.by_pid.len());
        for pid in pids() {
            let p = PathBuf::from(format!("/proc/{pid}/ns/net"));
            let ino = match self.by_pid.get(&pid) {
                Some(&ino) => ino,
                None => match std::fs::metadata(&p) {
                    Ok(md) => md.ino() as u32,
                    Err(e) if e.kind() == std::io::ErrorKind::PermissionDenied => {
                        self.denied += 1;
                        continue;
                    }
                    Err(_) => continue,
                },
            };
            seen.insert(pid, ino);
            out.entry(ino).or_insert(p);
        }
        self.by_pid = seen;
        out
    }
}

/// Runs `f` with the calling thread moved into the namespace at `path`,
/// then moves it back. Only the calling thread changes namespace.
pub fn run_in<T>(path: &Path, home: &File, f: impl FnOnce() -> Result<T>) -> Result<T> {
    let ns = File::open(path).with_context(|| format!("open {}", path.display()))?;
    setns(&ns)?;
    let r = f();
    setns(home).context("returning to the agent's own network namespace")?;
    r
}

fn setns(f: &File) -> Result<()> {
    // SAFETY: valid fd; CLONE_NEWNET only affects this thread.
    if unsafe { libc::setns(f.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
        bail!("setns: {}", std::io::Error::last_os_error());
    }
    Ok(())
}

/// The inode of the network namespace `spec` names (`--netns`, or a
/// config key: `key` names it in the error). A
/// number must be the inode of a network namespace that exists now (one
/// that a process or an `ip netns` name holds); a path must open one.
pub fn inode_named(key: &str, spec: &str) -> Result<u32> {
    let spec_t = spec.trim();
    if spec_t.is_empty() {
        bail!("{key}: empty (give an inode number, /run/netns/NAME or /proc/PID/ns/net)");
    }
    if let Some(digits) = spec_t.strip_prefix('-') {
        if !digits.is_empty() && digits.chars().all(|c| c.is_ascii_digit()) {
            bail!("{key} {spec}: negative values are not allowed (a namespace inode is a positive number)");
        }
    }
    if spec_t.chars().all(|c| c.is_ascii_digit()) {
        let n: u32 = match spec_t.parse() {
            Ok(n) if n > 0 => n,
            _ => bail!("{key} {spec}: not a namespace inode (1 to 4294967295)"),
        };
        let mut known = list();
        if let Ok(own) = current() {
            known.entry(own).or_default();
        }
        if !known.contains_key(&n) {
            bail!("{key} {spec}: no network namespace has inode {n} (none of /run/netns/* and /proc/PID/ns/net is it)");
        }
        return Ok(n);
    }
    check(std::path::Path::new(spec)).map_err(|why| {
        anyhow::anyhow!(
            "{key} {spec}: {why} (give an inode number, /run/netns/NAME or /proc/PID/ns/net)"
        )
    })
}

/// "No such file or directory (os error 2)" → "no such file or directory".
pub fn io_reason(e: &std::io::Error) -> String {
    let s = os_reason(e);
    let mut c = s.chars();
    match c.next() {
        Some(f) => f.to_lowercase().chain(c).collect(),
        None => s,
    }
}

/// An I/O error's message without the "(os error N)" tail.
pub fn os_reason(e: &std::io::Error) -> String {
    let s = e.to_string();
    s.split(" (os error").next().unwrap_or(&s).to_string()
}

/// Process ids on the host (thread-group leaders).
pub fn pids() -> impl Iterator<Item = u32> {
    std::fs::read_dir("/proc")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse().ok())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_a_network_namespace_passes() {
        let own = check(Path::new("/proc/self/ns/net")).unwrap();
        assert_eq!(own, current().unwrap());
        assert_eq!(
            check(Path::new("/proc/self/ns/mnt")).unwrap_err(),
            "a mount namespace, not a network namespace"
        );
        assert_eq!(
            check(Path::new("/proc")).unwrap_err(),
            "not a network namespace (a directory)"
        );
        let manifest = concat!(env!("CARGO_MANIFEST_DIR"), "/Cargo.toml");
        assert_eq!(
            check(Path::new(manifest)).unwrap_err(),
            "not a network namespace (a regular file)"
        );
        assert_eq!(
            check(Path::new("/nonexistent/ns")).unwrap_err(),
            "no such file or directory"
        );
    }
}

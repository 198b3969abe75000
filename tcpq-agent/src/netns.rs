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
}

impl Cache {
    pub fn list(&mut self, full: bool) -> BTreeMap<u32, PathBuf> {
        if full {
            self.by_pid.clear();
        }
        let mut out = BTreeMap::new();
        if let Ok(rd) = std::fs::read_dir("/run/netns") {
            for e in rd.flatten() {
                if let Ok(ino) = inode_of(&e.path()) {
                    out.entry(ino).or_insert(e.path());
                }
            }
        }
        let mut seen = HashMap::with_capacity(self.by_pid.len());
        for pid in crate::resolve::pids() {
            let p = PathBuf::from(format!("/proc/{pid}/ns/net"));
            let ino = match self.by_pid.get(&pid) {
                Some(&ino) => ino,
                None => match inode_of(&p) {
                    Ok(ino) => ino,
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

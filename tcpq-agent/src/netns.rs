//! Network namespaces on the host: finding them all (through the processes
//! that live in them and `ip netns` mounts) and running code inside one.

use anyhow::{bail, Context, Result};
use std::{
    collections::BTreeMap,
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
    let mut out = BTreeMap::new();
    if let Ok(rd) = std::fs::read_dir("/run/netns") {
        for e in rd.flatten() {
            if let Ok(ino) = inode_of(&e.path()) {
                out.entry(ino).or_insert(e.path());
            }
        }
    }
    for pid in crate::resolve::pids() {
        let p = PathBuf::from(format!("/proc/{pid}/ns/net"));
        if let Ok(ino) = inode_of(&p) {
            out.entry(ino).or_insert(p);
        }
    }
    out
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

//! Socket → owning process. The owner of a listening socket is a process
//! holding a file descriptor for it (`/proc/PID/fd/N` → `socket:[INODE]`),
//! never the task a softirq happened to interrupt.

use std::{
    collections::{HashMap, HashSet},
    time::{Duration, Instant},
};

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Owner {
    pub pid: u32,
    /// `comm`: see [`process_name`].
    pub name: String,
}

/// Process ids on the host (thread-group leaders).
pub fn pids() -> impl Iterator<Item = u32> {
    std::fs::read_dir("/proc")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse().ok())
}

/// Parses a `/proc/PID/fd/N` link target `socket:[12345]`.
pub fn socket_inode(link: &str) -> Option<u32> {
    link.strip_prefix("socket:[")?
        .strip_suffix(']')?
        .parse()
        .ok()
}

/// Socket inodes `pid` holds.
pub fn sockets_of(pid: u32) -> HashSet<u32> {
    let mut out = HashSet::new();
    if let Ok(rd) = std::fs::read_dir(format!("/proc/{pid}/fd")) {
        for e in rd.flatten() {
            if let Ok(t) = std::fs::read_link(e.path()) {
                if let Some(ino) = t.to_str().and_then(socket_inode) {
                    out.insert(ino);
                }
            }
        }
    }
    out
}

/// How many file descriptors `pid` has open.
pub fn open_fds(pid: u32) -> Option<usize> {
    Some(std::fs::read_dir(format!("/proc/{pid}/fd")).ok()?.count())
}

/// The soft RLIMIT_NOFILE of `pid` ("Max open files" in /proc/PID/limits);
/// None when unlimited or unreadable.
pub fn fd_limit(pid: u32) -> Option<u64> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/limits")).ok()?;
    parse_fd_limit(&text)
}

pub fn parse_fd_limit(limits: &str) -> Option<u64> {
    let line = limits.lines().find(|l| l.starts_with("Max open files"))?;
    line["Max open files".len()..]
        .split_whitespace()
        .next()?
        .parse()
        .ok()
}

/// The process name as OpenTelemetry defines `process.executable.name` on
/// Linux: `Name` of /proc/PID/status, i.e. `comm` (what `ps` and `top`
/// show; for a symlinked binary such as Debian's redis-server, the name it
/// was started as, not the link target).
pub fn process_name(pid: u32) -> Option<String> {
    std::fs::read_to_string(format!("/proc/{pid}/comm"))
        .ok()
        .map(|s| s.trim_end().to_string())
}

/// Caches inode → owner. An owner is looked up as soon as its listener is
/// first seen (the process may be gone by the time the report is printed)
/// and kept until the listener is forgotten; `/proc` is rescanned for
/// unknown inodes at most once per `min_rescan`.
pub struct Resolver {
    owners: HashMap<u32, Owner>,
    last_scan: Option<Instant>,
    min_rescan: Duration,
}

impl Resolver {
    pub fn new(min_rescan: Duration) -> Self {
        Self {
            owners: HashMap::new(),
            last_scan: None,
            min_rescan,
        }
    }

    /// Makes sure owners of `wanted` are known, scanning `/proc` if some are
    /// not and a scan is due.
    pub fn learn(&mut self, wanted: impl IntoIterator<Item = u32>) {
        let missing: HashSet<u32> = wanted
            .into_iter()
            .filter(|i| !self.owners.contains_key(i))
            .collect();
        let due = self
            .last_scan
            .is_none_or(|t| t.elapsed() >= self.min_rescan);
        if !missing.is_empty() && due {
            self.scan(&missing);
        }
    }

    pub fn get(&self, inode: u32) -> Option<&Owner> {
        self.owners.get(&inode)
    }

    /// Forgets owners of inodes for which `keep` is false.
    pub fn retain(&mut self, keep: impl Fn(u32) -> bool) {
        self.owners.retain(|ino, _| keep(*ino));
    }

    fn scan(&mut self, wanted: &HashSet<u32>) {
        self.last_scan = Some(Instant::now());
        let mut pids: Vec<u32> = pids().collect();
        pids.sort_unstable(); // the lowest pid holding the socket: usually the parent
        for pid in pids {
            for ino in sockets_of(pid) {
                if wanted.contains(&ino) && !self.owners.contains_key(&ino) {
                    let name = process_name(pid).unwrap_or_default();
                    self.owners.insert(ino, Owner { pid, name });
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::fd::AsRawFd;

    #[test]
    fn parses_the_soft_fd_limit() {
        let l = "Limit                     Soft Limit           Hard Limit           Units     \nMax processes             63704                63704                processes \nMax open files            1024                 524288               files     \n";
        assert_eq!(parse_fd_limit(l), Some(1024));
        assert_eq!(
            parse_fd_limit(
                "Max open files            unlimited            unlimited            files"
            ),
            None
        );
        assert!(fd_limit(std::process::id()).is_some());
        assert!(open_fds(std::process::id()).unwrap() >= 3);
    }

    #[test]
    fn parses_socket_links_only() {
        assert_eq!(socket_inode("socket:[4026]"), Some(4026));
        assert_eq!(socket_inode("pipe:[4026]"), None);
        assert_eq!(socket_inode("/dev/null"), None);
        assert_eq!(socket_inode("socket:[x]"), None);
    }

    #[test]
    fn finds_the_owner_of_our_own_listener() {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let link = std::fs::read_link(format!("/proc/self/fd/{}", l.as_raw_fd())).unwrap();
        let ino = socket_inode(link.to_str().unwrap()).unwrap();
        let me = std::process::id();
        assert!(sockets_of(me).contains(&ino));
        let mut r = Resolver::new(Duration::ZERO);
        r.learn([ino]);
        assert_eq!(r.get(ino).unwrap().pid, me);
        assert!(!r.get(ino).unwrap().name.is_empty());
        r.retain(|_| false);
        assert!(r.get(ino).is_none());
    }
}

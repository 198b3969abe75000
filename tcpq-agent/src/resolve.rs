//! Socket → owning process. The owner of a listening socket is a process
//! holding a file descriptor for it (`/proc/PID/fd/N` → `socket:[INODE]`),
//! never the task a softirq happened to interrupt.

use std::{
    collections::{HashMap, HashSet},
    time::{Duration, Instant},
};

/// The process that owns a socket, and every process holding it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Owner {
    /// The lowest pid holding the socket (usually the parent of forked
    /// workers).
    pub pid: u32,
    /// `comm`: see [`process_name`].
    pub name: String,
    /// `/proc/PID/exe`.
    pub exe: Option<String>,
    /// `/proc/PID/cmdline`, arguments joined by spaces.
    pub cmdline: Option<String>,
    /// The real user's name (uid when /etc/passwd has none).
    pub user: Option<String>,
    /// cgroup, container, systemd unit, pod.
    pub placement: Option<crate::cgroup::Placement>,
    /// Every process holding the socket, ascending (the owner first).
    pub holders: Vec<u32>,
}

impl Owner {
    /// Everything /proc says about `pid`.
    pub fn of(pid: u32) -> Owner {
        Owner {
            pid,
            name: process_name(pid).unwrap_or_else(|| "?".into()),
            exe: std::fs::read_link(format!("/proc/{pid}/exe"))
                .ok()
                .map(|p| p.to_string_lossy().into_owned()),
            cmdline: std::fs::read(format!("/proc/{pid}/cmdline"))
                .ok()
                .map(|b| cmdline(&b))
                .filter(|c| !c.is_empty()),
            user: uid_of(pid).map(user_name),
            placement: crate::cgroup::of_pid(pid),
            holders: vec![pid],
        }
    }

    /// Whether any holder has this `comm`.
    pub fn has_comm(&self, comm: &str) -> bool {
        self.name == comm
            || self
                .holders
                .iter()
                .any(|&p| p != self.pid && process_name(p).as_deref() == Some(comm))
    }
}

/// `/proc/PID/cmdline` (NUL-separated) as one line.
pub fn cmdline(raw: &[u8]) -> String {
    raw.split(|&b| b == 0)
        .filter(|a| !a.is_empty())
        .map(|a| String::from_utf8_lossy(a).into_owned())
        .collect::<Vec<_>>()
        .join(" ")
}

/// The real uid (`Uid:` of /proc/PID/status).
fn uid_of(pid: u32) -> Option<u32> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("Uid:"))?
        .split_whitespace()
        .next()?
        .parse()
        .ok()
}

/// The user name of `uid` from /etc/passwd, else the number.
pub fn user_name(uid: u32) -> String {
    std::fs::read_to_string("/etc/passwd")
        .ok()
        .and_then(|p| passwd_name(&p, uid))
        .unwrap_or_else(|| uid.to_string())
}

pub fn passwd_name(passwd: &str, uid: u32) -> Option<String> {
    passwd.lines().find_map(|l| {
        let mut f = l.split(':');
        let name = f.next()?;
        (f.nth(1)?.parse::<u32>().ok()? == uid).then(|| name.to_string())
    })
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
///
/// Exactly what the process named itself (prctl(PR_SET_NAME) takes any
/// bytes): only the kernel's newline is taken off, and bytes that are not
/// UTF-8 become U+FFFD instead of hiding the name. The exporters escape it.
pub fn process_name(pid: u32) -> Option<String> {
    let raw = std::fs::read(format!("/proc/{pid}/comm")).ok()?;
    let raw = raw.strip_suffix(b"\n").unwrap_or(&raw);
    Some(String::from_utf8_lossy(raw).into_owned())
}

/// Caches inode → owner. An owner is looked up as soon as its socket is
/// first seen (the process may be gone by the time the report is printed);
/// `/proc` is rescanned for unknown inodes at most once per `min_rescan`,
/// and every `reconcile` for the known ones, so holders that fork or exit
/// are followed: an owner that exited is replaced by a remaining holder,
/// and forgotten with its socket (`retain`).
pub struct Resolver {
    owners: HashMap<u32, Owner>,
    /// Seeded from listen() but not yet checked against /proc (a fork
    /// right after listen() adds holders).
    provisional: HashSet<u32>,
    last_scan: Option<Instant>,
    min_rescan: Duration,
    last_reconcile: Instant,
    reconcile: Duration,
}

impl Resolver {
    pub fn new(min_rescan: Duration) -> Self {
        Self {
            owners: HashMap::new(),
            provisional: HashSet::new(),
            last_scan: None,
            min_rescan,
            last_reconcile: Instant::now(),
            reconcile: Duration::from_secs(5),
        }
    }

    /// Makes sure owners of `wanted` are known, scanning `/proc` if some are
    /// not and a scan is due; re-checks the known ones every few seconds.
    pub fn learn(&mut self, wanted: impl IntoIterator<Item = u32>) {
        self.learn_at(wanted, false)
    }

    /// Like [`Resolver::learn`], scanning even if the last scan was less
    /// than `min_rescan` ago: for the lines about to be written (at most
    /// a couple of times per report interval).
    pub fn learn_now(&mut self, wanted: impl IntoIterator<Item = u32>) {
        self.learn_at(wanted, true)
    }

    fn learn_at(&mut self, wanted: impl IntoIterator<Item = u32>, now: bool) {
        let missing: HashSet<u32> = wanted
            .into_iter()
            .filter(|i| !self.owners.contains_key(i) || self.provisional.contains(i))
            .collect();
        let due = now
            || self
                .last_scan
                .is_none_or(|t| t.elapsed() >= self.min_rescan);
        let reconcile = !self.owners.is_empty() && self.last_reconcile.elapsed() >= self.reconcile;
        if (!missing.is_empty() && due) || reconcile {
            let mut all = missing;
            if reconcile {
                all.extend(self.owners.keys().copied());
                self.last_reconcile = Instant::now();
            }
            self.scan(&all);
        }
    }

    /// The kernel saw `pid` call listen() on socket `inode`: its owner,
    /// known even if the process is gone before a /proc scan; checked
    /// against /proc (forked holders) when a report first needs it.
    pub fn seed(&mut self, inode: u32, pid: u32) {
        if inode != 0 && pid != 0 && !self.owners.contains_key(&inode) {
            self.owners.insert(inode, Owner::of(pid));
            self.provisional.insert(inode);
        }
    }

    pub fn get(&self, inode: u32) -> Option<&Owner> {
        self.owners.get(&inode)
    }

    /// Forgets owners of inodes for which `keep` is false.
    pub fn retain(&mut self, keep: impl Fn(u32) -> bool) {
        self.owners.retain(|ino, _| keep(*ino));
        self.provisional.retain(|ino| keep(*ino));
    }

    /// How many sockets' owners are cached.
    pub fn len(&self) -> usize {
        self.owners.len()
    }

    /// Whether no owner is cached.
    pub fn is_empty(&self) -> bool {
        self.owners.is_empty()
    }

    fn scan(&mut self, wanted: &HashSet<u32>) {
        self.last_scan = Some(Instant::now());
        let mut holders: HashMap<u32, Vec<u32>> = HashMap::new();
        let mut pids: Vec<u32> = pids().collect();
        pids.sort_unstable();
        for pid in pids {
            for ino in sockets_of(pid) {
                if wanted.contains(&ino) {
                    holders.entry(ino).or_default().push(pid);
                }
            }
        }
        for ino in wanted {
            self.provisional.remove(ino);
            match holders.remove(ino) {
                Some(h) => {
                    // Keep what is known of a still-present owner; look up
                    // a new one (the old owner exited, or first sighting).
                    let same = self.owners.get(ino).is_some_and(|o| o.pid == h[0]);
                    if !same {
                        self.owners.insert(*ino, Owner::of(h[0]));
                    }
                    if let Some(o) = self.owners.get_mut(ino) {
                        o.holders = h;
                    }
                }
                // Nobody holds it any more: keep the last owner for the
                // lines still to be printed; `retain` drops it with the
                // socket.
                None => {
                    if let Some(o) = self.owners.get_mut(ino) {
                        o.holders
                            .retain(|&p| std::path::Path::new(&format!("/proc/{p}")).exists());
                    }
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
    fn parses_cmdline_and_passwd() {
        assert_eq!(
            cmdline(b"nginx: master process\0-g\0daemon off;\0"),
            "nginx: master process -g daemon off;"
        );
        let pw = "root:x:0:0:root:/root:/bin/bash\nwww-data:x:33:33:www-data:/var/www:/usr/sbin/nologin\n";
        assert_eq!(passwd_name(pw, 33).as_deref(), Some("www-data"));
        assert_eq!(passwd_name(pw, 7), None);
        assert_eq!(user_name(0), "root");
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
        let o = r.get(ino).unwrap();
        assert_eq!((o.pid, &o.holders), (me, &vec![me]));
        assert!(!o.name.is_empty());
        assert!(o.exe.as_deref().is_some_and(|e| e.starts_with('/')));
        assert!(o.cmdline.is_some() && o.user.is_some());
        r.retain(|_| false);
        assert!(r.get(ino).is_none());
        // Seeded from listen(): used at once, checked against /proc when
        // first wanted.
        r.seed(ino, 1);
        assert_eq!(r.get(ino).unwrap().pid, 1);
        r.learn([ino]);
        assert_eq!(r.get(ino).unwrap().holders, vec![me]);
    }
}

//! Socket → owning process. The owner of a listening socket is a process
//! holding a file descriptor for it (`/proc/PID/fd/N` → `socket:[INODE]`),
//! never the task a softirq happened to interrupt.

use std::{
    collections::{HashMap, HashSet},
    time::{Duration, Instant},
};

/// The process that owns a socket, and every process holding it.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Owner {
    /// The process that owns the socket ([`choose_owner`]): for an
    /// SO_REUSEPORT member beside a master, the worker that holds it;
    /// else the lowest pid holding it (the parent of forked workers).
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
    pub placement: Option<crate::owner::cgroup::Placement>,
    /// Every process holding the socket, ascending.
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
            placement: crate::owner::cgroup::of_pid(pid),
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

/// Who owns socket `ino`, which `holders` (ascending) hold. For an
/// SO_REUSEPORT member, `siblings` are the other members with their
/// holders, and `polled` each holder's epoll interest list (socket inodes):
/// the owner is the one holder that polls this member and no other (an
/// nginx worker, whose master and fellow workers hold every member's fd),
/// else the one holder that holds no other member (a worker that closed the
/// rest). Otherwise the lowest pid: the parent of forked workers sharing
/// one socket, i.e. the service. None when nobody holds it.
pub fn choose_owner(
    ino: u32,
    holders: &[u32],
    siblings: &[(u32, &[u32])],
    polled: &HashMap<u32, HashSet<u32>>,
) -> Option<u32> {
    if !siblings.is_empty() && holders.len() > 1 {
        let only = |v: Vec<u32>| match v.as_slice() {
            [one] => Some(*one),
            _ => None,
        };
        let pollers = holders
            .iter()
            .copied()
            .filter(|p| {
                polled.get(p).is_some_and(|set| {
                    set.contains(&ino) && !siblings.iter().any(|(s, _)| set.contains(s))
                })
            })
            .collect();
        let alone = holders
            .iter()
            .copied()
            .filter(|p| !siblings.iter().any(|(_, h)| h.contains(p)))
            .collect();
        if let Some(p) = only(pollers).or_else(|| only(alone)) {
            return Some(p);
        }
    }
    holders.first().copied()
}

/// The socket inodes in an epoll file's `/proc/PID/fdinfo/N`: its
/// interest list, one `tfd: … ino:<hex> …` line per target.
pub fn parse_epoll_targets(fdinfo: &str) -> Vec<u32> {
    fdinfo
        .lines()
        .filter(|l| l.starts_with("tfd:"))
        .filter_map(|l| {
            let hex = l.split_whitespace().find_map(|w| w.strip_prefix("ino:"))?;
            u32::from_str_radix(hex, 16).ok()
        })
        .collect()
}

/// Every inode `pid`'s epoll files watch.
pub fn polled_by(pid: u32) -> HashSet<u32> {
    let mut out = HashSet::new();
    let Ok(rd) = std::fs::read_dir(format!("/proc/{pid}/fd")) else {
        return out;
    };
    for e in rd.flatten() {
        let is_epoll =
            std::fs::read_link(e.path()).is_ok_and(|t| t.as_os_str() == "anon_inode:[eventpoll]");
        if is_epoll {
            let info = format!("/proc/{pid}/fdinfo/{}", e.file_name().to_string_lossy());
            if let Ok(t) = std::fs::read_to_string(info) {
                out.extend(parse_epoll_targets(&t));
            }
        }
    }
    out
}

/// The epoll interest lists of the holders of SO_REUSEPORT members among
/// `inodes` (the only sockets whose owner they decide).
fn polls_of<'a>(
    inodes: impl Iterator<Item = (&'a u32, &'a Vec<u32>)>,
    groups: &HashMap<u32, Vec<u32>>,
) -> HashMap<u32, HashSet<u32>> {
    let mut polled = HashMap::new();
    for (ino, holders) in inodes {
        if groups.contains_key(ino) && holders.len() > 1 {
            for &p in holders {
                polled.entry(p).or_insert_with(|| polled_by(p));
            }
        }
    }
    polled
}

/// A kernel `comm` buffer (NUL-padded, at most 16 bytes) as a name; None
/// when empty.
pub fn comm_name(comm: &[u8]) -> Option<String> {
    let end = comm.iter().position(|&b| b == 0).unwrap_or(comm.len());
    (end > 0).then(|| String::from_utf8_lossy(&comm[..end]).into_owned())
}

/// The child processes of `pid` (every thread's `children`).
pub fn children_of(pid: u32) -> Vec<u32> {
    std::fs::read_dir(format!("/proc/{pid}/task"))
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|t| std::fs::read_to_string(t.path().join("children")).ok())
        .flat_map(|c| {
            c.split_whitespace()
                .filter_map(|p| p.parse().ok())
                .collect::<Vec<u32>>()
        })
        .collect()
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
    sockets_of_checked(pid).unwrap_or_default()
}

/// [`sockets_of`], or the error that kept `/proc/PID/fd` (or one of its
/// links) from being read: permission denied means the agent lacks
/// CAP_SYS_PTRACE / CAP_DAC_READ_SEARCH for another user's process.
pub fn sockets_of_checked(pid: u32) -> std::io::Result<HashSet<u32>> {
    let mut out = HashSet::new();
    for e in std::fs::read_dir(format!("/proc/{pid}/fd"))?.flatten() {
        match std::fs::read_link(e.path()) {
            Ok(t) => {
                if let Some(ino) = t.to_str().and_then(socket_inode) {
                    out.insert(ino);
                }
            }
            Err(e) if e.kind() == std::io::ErrorKind::PermissionDenied => return Err(e),
            Err(_) => {}
        }
    }
    Ok(out)
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
/// `/proc` is rescanned for unknown inodes at most once per `min_rescan`.
/// Every `reconcile` the known holders and their children are checked
/// (their own fd tables only), so an owner that exited is replaced by a
/// remaining holder, a forked worker joins, and a socket is forgotten with
/// its last holder (`retain`); every `full_reconcile` (10 min) the whole of
/// `/proc` is read again, which also finds holders that got the socket by fd
/// passing. Reading all of `/proc` costs ~2 s of CPU on a host with 2,000
/// processes of 200 descriptors each.
pub struct Resolver {
    owners: HashMap<u32, Owner>,
    /// Seeded from listen() but not yet checked against /proc (a fork
    /// right after listen() adds holders).
    provisional: HashSet<u32>,
    last_scan: Option<Instant>,
    min_rescan: Duration,
    /// CPU time the last full scan took: the next waits [`scan_gap`] of it.
    last_scan_cost: Duration,
    last_reconcile: Instant,
    reconcile: Duration,
    last_full: Instant,
    full_reconcile: Duration,
    /// SO_REUSEPORT groups: each member's inode → the other members'.
    groups: HashMap<u32, Vec<u32>>,
}

impl Resolver {
    pub fn new(min_rescan: Duration) -> Self {
        Self {
            owners: HashMap::new(),
            provisional: HashSet::new(),
            last_scan: None,
            min_rescan,
            last_scan_cost: Duration::ZERO,
            last_reconcile: Instant::now(),
            reconcile: Duration::from_secs(5),
            last_full: Instant::now(),
            full_reconcile: Duration::from_secs(600),
            groups: HashMap::new(),
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
        let mut full = HashSet::new();
        if !self.owners.is_empty() && self.last_reconcile.elapsed() >= self.reconcile {
            self.last_reconcile = Instant::now();
            if self.last_full.elapsed() >= self.full_reconcile {
                // All of /proc: also finds holders that got a socket by fd
                // passing.
                self.last_full = Instant::now();
                full.extend(self.owners.keys().copied());
            } else {
                full.extend(self.check_holders());
            }
        }
        // The holders it knows first (a connection's socket is most often
        // held by a listener's process); all of /proc for what is left,
        // when the CPU budget allows.
        let left = self.scan_known(missing);
        // Lines about to be written skip the minimum pause, not the budget.
        let min = if now { Duration::ZERO } else { self.min_rescan };
        let gap = scan_gap(self.last_scan_cost, min);
        if !full.is_empty() || self.last_scan.is_none_or(|t| t.elapsed() >= gap) {
            full.extend(left);
        }
        if !full.is_empty() {
            let cpu = crate::source::poll::thread_cpu();
            self.scan(&full, pids().collect());
            for i in &full {
                self.provisional.remove(i);
            }
            self.last_scan = Some(Instant::now());
            self.last_scan_cost = crate::source::poll::thread_cpu().saturating_sub(cpu);
        }
    }

    /// Looks for `wanted` in the fd tables of the processes holding known
    /// sockets, and their children; returns what they do not hold.
    fn scan_known(&mut self, wanted: HashSet<u32>) -> HashSet<u32> {
        if wanted.is_empty() || self.owners.is_empty() {
            return wanted;
        }
        let mut known: Vec<u32> = self
            .owners
            .values()
            .flat_map(|o| o.holders.iter().copied().chain([o.pid]))
            .collect();
        known.sort_unstable();
        known.dedup();
        let mut pids = known.clone();
        for p in known {
            pids.extend(children_of(p));
        }
        let found = self.scan(&wanted, pids);
        wanted.into_iter().filter(|i| !found.contains(i)).collect()
    }

    /// Re-checks each known socket against its holders' fd tables alone
    /// (a few directories, where a scan reads every process's): holders
    /// that closed it or exited are dropped, and the lowest remaining one
    /// becomes the owner. Returns the sockets no known holder has any more,
    /// for a scan to find who else does.
    fn check_holders(&mut self) -> HashSet<u32> {
        let mut tables: HashMap<u32, HashSet<u32>> = HashMap::new();
        let mut lost = HashSet::new();
        let mut still_of: HashMap<u32, Vec<u32>> = HashMap::new();
        for (ino, owner) in &self.owners {
            if self.provisional.contains(ino) {
                continue;
            }
            let known = if owner.holders.is_empty() {
                vec![owner.pid]
            } else {
                owner.holders.clone()
            };
            // A new holder is, but for fd passing, a fork of a known one (a
            // respawned or added worker of its master): the children are
            // checked too.
            let mut candidates = known.clone();
            for &p in &known {
                candidates.extend(children_of(p));
            }
            candidates.sort_unstable();
            candidates.dedup();
            let still: Vec<u32> = candidates
                .into_iter()
                .filter(|p| {
                    tables
                        .entry(*p)
                        .or_insert_with(|| sockets_of(*p))
                        .contains(ino)
                })
                .collect();
            // Nobody it knew of holds it any more: a scan looks for others.
            if still.is_empty() {
                lost.insert(*ino);
            }
            still_of.insert(*ino, still);
        }
        let polled = polls_of(still_of.iter(), &self.groups);
        for (ino, still) in &still_of {
            let sib: Vec<(u32, &[u32])> = self
                .siblings(*ino)
                .iter()
                .map(|s| (*s, still_of.get(s).map_or(&[][..], Vec::as_slice)))
                .collect();
            let Some(pid) = choose_owner(*ino, still, &sib, &polled) else {
                continue;
            };
            let Some(owner) = self.owners.get_mut(ino) else {
                continue;
            };
            if owner.pid != pid {
                *owner = Owner::of(pid);
            }
            owner.holders = still.clone();
        }
        lost
    }

    /// The current SO_REUSEPORT groups (listeners sharing a namespace,
    /// address and port), each as its members' inodes: a member's owner is
    /// the holder that holds no other member (see [`choose_owner`]).
    pub fn set_groups(&mut self, groups: impl IntoIterator<Item = Vec<u32>>) {
        self.groups.clear();
        for g in groups {
            for &m in &g {
                let others = g.iter().copied().filter(|&o| o != m).collect();
                self.groups.insert(m, others);
            }
        }
    }

    /// Whether `ino` is a member of an SO_REUSEPORT group.
    pub fn in_group(&self, ino: u32) -> bool {
        self.groups.contains_key(&ino)
    }

    fn siblings(&self, ino: u32) -> &[u32] {
        self.groups.get(&ino).map_or(&[], Vec::as_slice)
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

    /// Finds the holders of `wanted` among `pids` and updates their owners;
    /// returns the inodes found.
    fn scan(&mut self, wanted: &HashSet<u32>, mut pids: Vec<u32>) -> HashSet<u32> {
        // The other members of their groups too: who holds them decides
        // who owns a member.
        let mut looked: HashSet<u32> = wanted.clone();
        for &ino in wanted {
            looked.extend(self.siblings(ino));
        }
        let mut holders: HashMap<u32, Vec<u32>> = HashMap::new();
        pids.sort_unstable();
        pids.dedup();
        let mut denied = 0u32;
        for pid in pids {
            let socks = match sockets_of_checked(pid) {
                Ok(s) => s,
                Err(e) if e.kind() == std::io::ErrorKind::PermissionDenied => {
                    denied += 1;
                    continue;
                }
                Err(_) => continue,
            };
            for ino in socks {
                if looked.contains(&ino) {
                    holders.entry(ino).or_default().push(pid);
                }
            }
        }
        // Sockets nobody we could read holds, while some processes could
        // not be read: their owners are unknown for lack of permission.
        if denied > 0 {
            let unfound = wanted.iter().filter(|i| !holders.contains_key(i)).count();
            for _ in 0..unfound {
                crate::kernel::privs::owner_failure(
                    "fd_denied",
                    &format!("/proc/PID/fd of {denied} processes: permission denied"),
                    &crate::kernel::privs::missing_for_proc(),
                );
            }
        }
        let polled = polls_of(
            holders.iter().filter(|(i, _)| wanted.contains(i)),
            &self.groups,
        );
        let mut owners_of: HashMap<u32, u32> = HashMap::new();
        for &ino in wanted {
            if let Some(h) = holders.get(&ino) {
                let sib: Vec<(u32, &[u32])> = self
                    .siblings(ino)
                    .iter()
                    .map(|s| (*s, holders.get(s).map_or(&[][..], Vec::as_slice)))
                    .collect();
                owners_of.extend(choose_owner(ino, h, &sib, &polled).map(|o| (ino, o)));
            }
        }
        let mut found = HashSet::new();
        for ino in wanted {
            match holders.remove(ino) {
                Some(h) => {
                    self.provisional.remove(ino);
                    found.insert(*ino);
                    let owner = owners_of.get(ino).copied().unwrap_or(h[0]);
                    // Keep what is known of a still-present owner; look up
                    // a new one (the old owner exited, or first sighting).
                    let same = self.owners.get(ino).is_some_and(|o| o.pid == owner);
                    if !same {
                        self.owners.insert(*ino, Owner::of(owner));
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
        found
    }
}

/// A full `/proc` scan may take at most 1/[`SCAN_BUDGET`] of a core: after
/// one that took `cost` of CPU (~2 s with 2,000 processes × 200 fds), the
/// next waits `cost × SCAN_BUDGET`, at least `min` and at most
/// [`SCAN_MAX_GAP`]. Lines meanwhile name the owners the kernel or the known
/// holders tell, else none.
pub fn scan_gap(cost: Duration, min: Duration) -> Duration {
    (cost * SCAN_BUDGET).clamp(min, SCAN_MAX_GAP.max(min))
}

pub const SCAN_BUDGET: u32 = 50;
pub const SCAN_MAX_GAP: Duration = Duration::from_secs(60);

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
        r.last_scan_cost = Duration::ZERO; // the scan budget allows one now
        r.learn([ino]);
        assert_eq!(r.get(ino).unwrap().holders, vec![me]);
    }

    #[test]
    fn reconciling_checks_the_known_holders_and_scans_only_for_lost_sockets() {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let link = std::fs::read_link(format!("/proc/self/fd/{}", l.as_raw_fd())).unwrap();
        let ino = socket_inode(link.to_str().unwrap()).unwrap();
        let me = std::process::id();
        let mut r = Resolver::new(Duration::ZERO);
        r.learn([ino]);
        // Holders unchanged: nothing to scan for.
        assert!(r.check_holders().is_empty());
        // A holder that is gone (no such pid) is dropped, the owner stays.
        r.owners.get_mut(&ino).unwrap().holders = vec![me, u32::MAX];
        assert!(r.check_holders().is_empty());
        assert_eq!(r.get(ino).unwrap().holders, vec![me]);
        // An owner that no longer holds it, with a holder that does: the
        // holder becomes the owner at once.
        r.owners.get_mut(&ino).unwrap().pid = u32::MAX;
        r.owners.get_mut(&ino).unwrap().holders = vec![me];
        assert!(r.check_holders().is_empty());
        assert_eq!(r.get(ino).unwrap().pid, me);
        // No known holder has it: it is handed to a scan, which finds us.
        r.owners.get_mut(&ino).unwrap().holders = vec![u32::MAX];
        assert_eq!(r.check_holders(), HashSet::from([ino]));
        r.scan(&HashSet::from([ino]), pids().collect());
        assert_eq!(r.get(ino).unwrap().holders, vec![me]);
    }

    fn ino_of(fd: &impl AsRawFd) -> u32 {
        let link = std::fs::read_link(format!("/proc/self/fd/{}", fd.as_raw_fd())).unwrap();
        socket_inode(link.to_str().unwrap()).unwrap()
    }

    #[test]
    fn a_socket_of_a_known_holder_is_found_without_reading_all_of_proc() {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let c = std::net::TcpStream::connect(l.local_addr().unwrap()).unwrap();
        let (accepted, _) = l.accept().unwrap();
        let me = std::process::id();
        // Budget: after a full scan that cost 10 ms, the next waits 500 ms.
        let mut r = Resolver::new(Duration::from_secs(3600));
        r.learn([ino_of(&l)]);
        let full_scan = r.last_scan;
        assert!(full_scan.is_some());
        r.last_scan_cost = Duration::from_millis(10);
        // The accepted socket: ours, a known holder's, found at once.
        r.learn_now([ino_of(&accepted)]);
        assert_eq!(r.get(ino_of(&accepted)).map(|o| o.pid), Some(me));
        assert_eq!(r.last_scan, full_scan, "no scan of all of /proc");
        // A socket nobody known holds waits for the budget.
        drop(c);
        r.learn_now([u32::MAX]);
        assert_eq!(r.last_scan, full_scan, "within 500 ms of the last scan");
        assert_eq!(
            scan_gap(Duration::from_secs(2), Duration::from_millis(100)),
            SCAN_MAX_GAP
        );
        assert_eq!(
            scan_gap(Duration::from_millis(1), Duration::from_millis(100)),
            Duration::from_millis(100)
        );
    }

    #[test]
    fn a_reuseport_member_belongs_to_the_worker_that_polls_or_holds_it_alone() {
        let none = HashMap::new();
        // nginx 1.22 `listen … reuseport`, 2 workers: every process holds
        // both members (1, 2); each worker polls its own.
        let polled = HashMap::from([(11, HashSet::from([1, 77])), (12, HashSet::from([2, 78]))]);
        let all: &[u32] = &[10, 11, 12];
        assert_eq!(choose_owner(1, all, &[(2, all)], &polled), Some(11));
        assert_eq!(choose_owner(2, all, &[(1, all)], &polled), Some(12));
        // Without the interest lists: the master (lowest).
        assert_eq!(choose_owner(1, all, &[(2, all)], &none), Some(10));
        // Workers that closed the other members: the one holding it alone.
        assert_eq!(
            choose_owner(1, &[10, 11], &[(2, &[10, 12])], &none),
            Some(11)
        );
        // Two unrelated processes, a member each.
        assert_eq!(choose_owner(1, &[20], &[(2, &[21])], &none), Some(20));
        // One socket shared by a master and its workers (all poll it): the
        // master.
        let shared = HashMap::from([(11, HashSet::from([1])), (12, HashSet::from([1]))]);
        assert_eq!(choose_owner(1, all, &[], &shared), Some(10));
        assert_eq!(choose_owner(1, &[], &[], &none), None);
    }

    #[test]
    fn a_forked_holder_joins_at_the_next_check_without_a_scan() {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let link = std::fs::read_link(format!("/proc/self/fd/{}", l.as_raw_fd())).unwrap();
        let ino = socket_inode(link.to_str().unwrap()).unwrap();
        let me = std::process::id();
        let mut r = Resolver::new(Duration::ZERO);
        r.learn([ino]);
        assert_eq!(r.get(ino).unwrap().holders, vec![me]);
        // SAFETY: the child only sleeps and exits.
        let child = unsafe { libc::fork() };
        if child == 0 {
            unsafe {
                libc::sleep(10);
                libc::_exit(0);
            }
        }
        assert!(r.check_holders().is_empty());
        let holders = r.get(ino).unwrap().holders.clone();
        unsafe {
            libc::kill(child, libc::SIGKILL);
            libc::waitpid(child, std::ptr::null_mut(), 0);
        }
        assert_eq!(holders, vec![me, child as u32]);
        assert_eq!(r.get(ino).unwrap().pid, me);
    }

    #[test]
    fn reads_a_kernel_comm() {
        assert_eq!(
            comm_name(b"redis-cli\0\0\0\0\0\0\0").as_deref(),
            Some("redis-cli")
        );
        assert_eq!(
            comm_name(b"exactly15chars!\0").as_deref(),
            Some("exactly15chars!")
        );
        assert_eq!(comm_name(&[0; 16]), None);
    }

    #[test]
    fn reads_an_epoll_interest_list() {
        let t = "pos:\t0\nflags:\t02\nmnt_id:\t17\nino:\t1030\n\
                 tfd:        9 events: 80000019 data:     56447d63f340  pos:0 ino:406 sdev:10\n\
                 tfd:        4 events:     2019 data:     7f7d46914010  pos:0 ino:aec064 sdev:9\n";
        assert_eq!(parse_epoll_targets(t), vec![0x406, 0xaec064]);
        // Our own epoll file, through /proc.
        let me = std::process::id();
        let ep = unsafe { libc::epoll_create1(0) };
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let mut ev = libc::epoll_event {
            events: libc::EPOLLIN as u32,
            u64: 0,
        };
        assert_eq!(
            unsafe { libc::epoll_ctl(ep, libc::EPOLL_CTL_ADD, l.as_raw_fd(), &mut ev) },
            0
        );
        let link = std::fs::read_link(format!("/proc/self/fd/{}", l.as_raw_fd())).unwrap();
        let ino = socket_inode(link.to_str().unwrap()).unwrap();
        assert!(polled_by(me).contains(&ino));
        unsafe { libc::close(ep) };
    }
}

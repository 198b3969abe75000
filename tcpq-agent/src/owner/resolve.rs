//! Socket → owning process. The owner of a listening socket is a process
//! holding a file descriptor for it (`/proc/PID/fd/N` → `socket:[INODE]`),
//! never the task a softirq happened to interrupt.
//!
//! The [`Resolver`] caches owners by socket inode and decides which fd
//! tables to read: its known holders first, all of `/proc` when the
//! [`schedule`](crate::owner::schedule) allows. What /proc says of a process
//! is in [`process`](crate::owner::process), fd tables in
//! [`fds`](crate::owner::fds), the owner of an SO_REUSEPORT member in
//! [`reuseport`](crate::owner::reuseport); their items are re-exported here,
//! where the rest of the agent finds them.

use std::{
    collections::{HashMap, HashSet},
    time::Duration,
};

pub use crate::owner::{
    fds::{fd_limit, open_fds, parse_fd_limit, socket_inode, sockets_of, sockets_of_checked},
    process::{children_of, cmdline, comm_name, passwd_name, pids, process_name, user_name, Owner},
    reuseport::{choose_owner, parse_epoll_targets, polled_by},
    schedule::{scan_gap, SCAN_BUDGET, SCAN_MAX_GAP},
};
use crate::owner::{
    reuseport::polls_of,
    schedule::{Reconcile, Schedule},
};

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
    /// When to read which fd tables.
    schedule: Schedule,
    /// SO_REUSEPORT groups: each member's inode → the other members'.
    groups: HashMap<u32, Vec<u32>>,
}

impl Resolver {
    pub fn new(min_rescan: Duration) -> Self {
        Self {
            owners: HashMap::new(),
            provisional: HashSet::new(),
            schedule: Schedule::new(min_rescan),
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
        let unknown = |r: &Self, i: &u32| !r.owners.contains_key(i) || r.provisional.contains(i);
        let mut missing: HashSet<u32> = wanted.into_iter().filter(|i| unknown(self, i)).collect();
        // An SO_REUSEPORT member's owner is told apart from its siblings'
        // by who holds them: look for the siblings in the same scan, or a
        // member whose line comes a moment later waits for the budget.
        let siblings: Vec<u32> = missing
            .iter()
            .flat_map(|i| self.siblings(*i).iter().copied())
            .filter(|s| unknown(self, s))
            .collect();
        missing.extend(siblings);
        let mut full = HashSet::new();
        if !self.owners.is_empty() {
            match self.schedule.reconcile() {
                Some(Reconcile::Full) => full.extend(self.owners.keys().copied()),
                Some(Reconcile::Holders) => full.extend(self.check_holders()),
                None => {}
            }
        }
        // The holders it knows first (a connection's socket is most often
        // held by a listener's process); all of /proc for what is left,
        // when the CPU budget allows.
        let left = self.scan_known(missing);
        if !full.is_empty() || self.schedule.scan_due(now) {
            full.extend(left);
        }
        if !full.is_empty() {
            let cpu = crate::source::poll::thread_cpu();
            self.scan(&full, pids().collect());
            for i in &full {
                self.provisional.remove(i);
            }
            self.schedule
                .scanned(crate::source::poll::thread_cpu().saturating_sub(cpu));
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

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::fd::AsRawFd;

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
        r.schedule.last_scan_cost = Duration::ZERO; // the scan budget allows one now
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
        let full_scan = r.schedule.last_scan;
        assert!(full_scan.is_some());
        r.schedule.last_scan_cost = Duration::from_millis(10);
        // The accepted socket: ours, a known holder's, found at once.
        r.learn_now([ino_of(&accepted)]);
        assert_eq!(r.get(ino_of(&accepted)).map(|o| o.pid), Some(me));
        assert_eq!(r.schedule.last_scan, full_scan, "no scan of all of /proc");
        // A socket nobody known holds waits for the budget.
        drop(c);
        r.learn_now([u32::MAX]);
        assert_eq!(
            r.schedule.last_scan, full_scan,
            "within 500 ms of the last scan"
        );
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
}

//! SO_REUSEPORT members: which of the processes holding a member owns it,
//! from who holds the other members and whose epoll interest list (in
//! `/proc/PID/fdinfo`) watches it.

use std::collections::{HashMap, HashSet};

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
pub(super) fn polls_of<'a>(
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::owner::fds::socket_inode;
    use std::os::fd::AsRawFd;

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

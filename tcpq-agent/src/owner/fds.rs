//! A process's file-descriptor table: the sockets it holds
//! (`/proc/PID/fd/N` → `socket:[INODE]`), how many descriptors it has open
//! and its limit.

use std::collections::HashSet;

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

#[cfg(test)]
mod tests {
    use super::*;

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
}

//! Processes as /proc describes them: the [`Owner`] of a socket with its
//! name, executable, command line and user, and the host's processes and a
//! process's children.

use crate::owner::cgroup;

/// The process that owns a socket, and every process holding it.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Owner {
    /// The process that owns the socket ([`choose_owner`](crate::owner::reuseport::choose_owner)): for an
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
    pub placement: Option<cgroup::Placement>,
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
            placement: cgroup::of_pid(pid),
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

pub use crate::source::netns::pids;

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

#[cfg(test)]
mod tests {
    use super::*;

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
}

//! Linux capabilities: what this process has (`CapEff` of
//! /proc/self/status), what each mode needs, and a one-line error naming
//! what is missing. The agent never checks for uid 0: root without
//! capabilities (a container that dropped them) cannot trace, a non-root
//! user with them (systemd `User=` + `AmbientCapabilities=`) can.
//!
//! The sets were found by experiment (tests/tests/privilege.rs runs the
//! agent as `nobody` with exactly them): see README, "Privileges".

use anyhow::{bail, Result};

/// Capability numbers (linux/capability.h) of the ones tcpq uses.
pub const CAP_DAC_READ_SEARCH: u32 = 2;
pub const CAP_NET_ADMIN: u32 = 12;
pub const CAP_SYS_PTRACE: u32 = 19;
pub const CAP_SYS_ADMIN: u32 = 21;
pub const CAP_SYS_RESOURCE: u32 = 24;
pub const CAP_PERFMON: u32 = 38;
pub const CAP_BPF: u32 = 39;

/// Every capability name, by number (up to CAP_CHECKPOINT_RESTORE).
const NAMES: [&str; 41] = [
    "CAP_CHOWN",
    "CAP_DAC_OVERRIDE",
    "CAP_DAC_READ_SEARCH",
    "CAP_FOWNER",
    "CAP_FSETID",
    "CAP_KILL",
    "CAP_SETGID",
    "CAP_SETUID",
    "CAP_SETPCAP",
    "CAP_LINUX_IMMUTABLE",
    "CAP_NET_BIND_SERVICE",
    "CAP_NET_BROADCAST",
    "CAP_NET_ADMIN",
    "CAP_NET_RAW",
    "CAP_IPC_LOCK",
    "CAP_IPC_OWNER",
    "CAP_SYS_MODULE",
    "CAP_SYS_RAWIO",
    "CAP_SYS_CHROOT",
    "CAP_SYS_PTRACE",
    "CAP_SYS_PACCT",
    "CAP_SYS_ADMIN",
    "CAP_SYS_BOOT",
    "CAP_SYS_NICE",
    "CAP_SYS_RESOURCE",
    "CAP_SYS_TIME",
    "CAP_SYS_TTY_CONFIG",
    "CAP_MKNOD",
    "CAP_LEASE",
    "CAP_AUDIT_WRITE",
    "CAP_AUDIT_CONTROL",
    "CAP_SETFCAP",
    "CAP_MAC_OVERRIDE",
    "CAP_MAC_ADMIN",
    "CAP_SYSLOG",
    "CAP_WAKE_ALARM",
    "CAP_BLOCK_SUSPEND",
    "CAP_AUDIT_READ",
    "CAP_PERFMON",
    "CAP_BPF",
    "CAP_CHECKPOINT_RESTORE",
];

pub fn name(cap: u32) -> String {
    NAMES
        .get(cap as usize)
        .map(|s| s.to_string())
        .unwrap_or_else(|| format!("CAP_{cap}"))
}

/// `CAP_SYS_ADMIN`, `sys_admin` or `SYS_ADMIN` → 21.
pub fn parse_name(s: &str) -> Option<u32> {
    let up = s.trim().to_ascii_uppercase();
    let full = if up.starts_with("CAP_") {
        up
    } else {
        format!("CAP_{up}")
    };
    NAMES.iter().position(|n| *n == full).map(|i| i as u32)
}

/// What a capability is for, in one phrase (errors and `doctor`).
pub fn purpose(cap: u32) -> &'static str {
    match cap {
        CAP_BPF => "load eBPF programs and create their maps (or CAP_SYS_ADMIN)",
        CAP_PERFMON => {
            "attach tracepoints/kprobes/fentry and read kernel memory from them (or CAP_SYS_ADMIN)"
        }
        CAP_SYS_ADMIN => "setns() into other network namespaces (and BPF_ENABLE_STATS)",
        CAP_SYS_PTRACE => "read /proc/PID/fd, exe and ns/net of other users' processes",
        CAP_DAC_READ_SEARCH => "read tracefs (mode 0700) and other users' /proc/PID/fd",
        _ => "",
    }
}

/// The mode a check is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// `trace`, `run`, `top`: load and attach eBPF, read every namespace
    /// and every owner.
    Trace,
    /// `status`: no eBPF; every namespace and every owner.
    Status,
}

impl Mode {
    /// The minimal effective set (see README, "Privileges").
    pub fn required(self) -> &'static [u32] {
        match self {
            Mode::Trace => &[
                CAP_BPF,
                CAP_PERFMON,
                CAP_SYS_ADMIN,
                CAP_SYS_PTRACE,
                CAP_DAC_READ_SEARCH,
            ],
            Mode::Status => &[CAP_SYS_ADMIN, CAP_SYS_PTRACE, CAP_DAC_READ_SEARCH],
        }
    }
}

/// Parses the hex `CapEff:` (or another `Cap*:`) line of a status file.
pub fn parse_status(status: &str, key: &str) -> Option<u64> {
    status.lines().find_map(|l| {
        let v = l.strip_prefix(key)?.strip_prefix(':')?;
        u64::from_str_radix(v.trim(), 16).ok()
    })
}

/// This process's effective capabilities (read once: the agent never
/// changes them, and the loss accounting asks every round).
pub fn effective() -> u64 {
    static EFF: std::sync::OnceLock<u64> = std::sync::OnceLock::new();
    *EFF.get_or_init(|| {
        std::fs::read_to_string("/proc/self/status")
            .ok()
            .and_then(|s| parse_status(&s, "CapEff"))
            .unwrap_or(0)
    })
}

/// The highest capability this kernel knows (`cap_last_cap`); kernels
/// before 5.8 have no CAP_PERFMON/CAP_BPF, where CAP_SYS_ADMIN covers them.
pub fn last_cap() -> u32 {
    static LAST: std::sync::OnceLock<u32> = std::sync::OnceLock::new();
    *LAST.get_or_init(|| {
        std::fs::read_to_string("/proc/sys/kernel/cap_last_cap")
            .ok()
            .and_then(|s| s.trim().parse().ok())
            .unwrap_or(40)
    })
}

pub fn has(eff: u64, cap: u32) -> bool {
    cap < 64 && eff & (1u64 << cap) != 0
}

/// The capabilities of `needed` that `eff` lacks. CAP_SYS_ADMIN stands
/// for CAP_BPF and CAP_PERFMON, as in the kernel (`bpf_capable()`,
/// `perfmon_capable()`; kernels before 5.8 have only CAP_SYS_ADMIN).
pub fn missing(eff: u64, needed: &[u32], last_cap: u32) -> Vec<u32> {
    needed
        .iter()
        .copied()
        .filter(|&c| {
            let covered = (c == CAP_BPF || c == CAP_PERFMON) && has(eff, CAP_SYS_ADMIN);
            !covered && (c > last_cap || !has(eff, c))
        })
        .collect()
}

/// Names, comma-separated.
pub fn names(caps: &[u32]) -> String {
    caps.iter().map(|&c| name(c)).collect::<Vec<_>>().join(", ")
}

/// The one-line refusal for `what` (a subcommand) lacking `missing`.
pub fn refusal(what: &str, missing: &[u32]) -> String {
    let why: Vec<String> = missing
        .iter()
        .map(|&c| format!("{} to {}", name(c), purpose(c)))
        .collect();
    format!(
        "{what} needs {} (missing from this process's effective capabilities: {}); run it as root, or grant them (systemd AmbientCapabilities=, setpriv --ambient-caps; see README, Privileges)",
        names(missing),
        why.join("; ")
    )
}

static ALLOWED: std::sync::Mutex<Vec<u32>> = std::sync::Mutex::new(Vec::new());

/// `--allow-missing-caps`: the capabilities the agent may run without.
pub fn set_allowed(caps: &[u32]) {
    *ALLOWED.lock().unwrap_or_else(|e| e.into_inner()) = caps.to_vec();
}

fn allowed() -> Vec<u32> {
    ALLOWED.lock().unwrap_or_else(|e| e.into_inner()).clone()
}

/// Refuses unless this process has `mode`'s capabilities, except the ones
/// `--allow-missing-caps` lets go (run degraded, reported as such).
pub fn require(what: &str, mode: Mode) -> Result<()> {
    let miss = to_grant(effective(), mode, last_cap(), &allowed());
    if !miss.is_empty() {
        bail!("{}", refusal(what, &miss));
    }
    Ok(())
}

/// What must be granted for `mode`, beyond `allowed` to miss: CAP_SYS_ADMIN,
/// once granted, brings CAP_BPF and CAP_PERFMON along, so they are named
/// only when CAP_SYS_ADMIN is there or let go.
pub fn to_grant(eff: u64, mode: Mode, last_cap: u32, allowed: &[u32]) -> Vec<u32> {
    let miss: Vec<u32> = missing(eff, mode.required(), last_cap)
        .into_iter()
        .filter(|c| !allowed.contains(c))
        .collect();
    if miss.contains(&CAP_SYS_ADMIN) {
        miss.into_iter()
            .filter(|&c| c != CAP_BPF && c != CAP_PERFMON)
            .collect()
    } else {
        miss
    }
}

/// Parses `--allow-missing-caps CAP_SYS_ADMIN,CAP_SYS_PTRACE`.
pub fn parse_list(s: &str) -> Result<Vec<u32>, String> {
    s.split(',')
        .filter(|p| !p.trim().is_empty())
        .map(|p| parse_name(p).ok_or_else(|| format!("`{}` is not a capability name", p.trim())))
        .collect()
}

/// What `doctor` prints: the effective set and, per mode, what is missing.
pub fn report(eff: u64, last_cap: u32) -> String {
    let have: Vec<String> = (0..=last_cap.min(63))
        .filter(|&c| has(eff, c))
        .map(name)
        .collect();
    let all = (0..=last_cap.min(63)).all(|c| has(eff, c));
    let mut s = format!(
        "capabilities (effective, CapEff={eff:016x}): {}\n",
        if all {
            "all".to_string()
        } else if have.is_empty() {
            "none".to_string()
        } else {
            have.join(" ")
        }
    );
    for (what, mode, needs) in [
        (
            "trace/run/top",
            Mode::Trace,
            "CAP_SYS_ADMIN, CAP_SYS_PTRACE, CAP_DAC_READ_SEARCH (CAP_SYS_ADMIN includes CAP_BPF and CAP_PERFMON; without it, those two)",
        ),
        ("status", Mode::Status, "CAP_SYS_ADMIN, CAP_SYS_PTRACE, CAP_DAC_READ_SEARCH"),
    ] {
        let m = to_grant(eff, mode, last_cap, &[]);
        s.push_str(&format!(
            "  {what:<14} needs {needs}: {}\n",
            if m.is_empty() {
                "ok".to_string()
            } else {
                format!("missing {}", names(&m))
            }
        ));
    }
    s
}

/// The capabilities whose lack explains an EACCES/EPERM reading another
/// process's /proc entries (`CAP_SYS_PTRACE`, `CAP_DAC_READ_SEARCH`), or
/// "none" when both are there (then an LSM or a user namespace refused).
pub fn missing_for_proc() -> String {
    let m = missing(
        effective(),
        &[CAP_SYS_PTRACE, CAP_DAC_READ_SEARCH],
        last_cap(),
    );
    if m.is_empty() {
        "none".into()
    } else {
        m.iter().map(|&c| name(c)).collect::<Vec<_>>().join("+")
    }
}

/// Likewise for setns() (`CAP_SYS_ADMIN`).
pub fn missing_for_setns() -> String {
    if has(effective(), CAP_SYS_ADMIN) {
        "none".into()
    } else {
        name(CAP_SYS_ADMIN)
    }
}

/// What the agent could not see, for stderr (once per reason) and the
/// health metrics: namespaces it could not enter, owners it could not read.
#[derive(Debug, Default)]
struct Losses {
    /// (reason, missing capability) → namespaces (or, for
    /// `proc_ns_denied`, processes whose namespace is unknown) in the last
    /// round.
    netns: std::collections::BTreeMap<(&'static str, String), u64>,
    /// (reason, missing capability) → failed owner lookups so far.
    owners: std::collections::BTreeMap<(&'static str, String), u64>,
    warned: std::collections::BTreeSet<(&'static str, String)>,
}

static LOSSES: std::sync::Mutex<Option<Losses>> = std::sync::Mutex::new(None);

fn losses<T>(f: impl FnOnce(&mut Losses) -> T) -> T {
    let mut g = LOSSES.lock().unwrap_or_else(|e| e.into_inner());
    f(g.get_or_insert_with(Losses::default))
}

/// Namespaces (or processes, for `proc_ns_denied`) a sock_diag round
/// could not read, alike in reason and missing capability.
#[derive(Debug, Clone)]
pub struct Unreadable {
    /// A metric label: `setns_denied`, `open_denied`, `proc_ns_denied`, …
    pub reason: &'static str,
    /// What happened, for stderr.
    pub detail: String,
    /// The missing capability, or "none".
    pub capability: String,
    pub count: u64,
}

/// One sock_diag round's losses; they replace the previous round's. Each
/// (reason, capability) is printed once.
pub fn netns_round(unreadable: &[Unreadable]) {
    let mut lines = Vec::new();
    losses(|l| {
        l.netns.clear();
        for u in unreadable {
            let (reason, cap) = (u.reason, u.capability.as_str());
            *l.netns.entry((reason, cap.to_string())).or_default() += u.count;
            if l.warned.insert(("netns", format!("{reason}/{cap}"))) {
                let missing = match cap {
                    "none" => String::new(),
                    c => format!(" (missing {c})"),
                };
                let detail = &u.detail;
                let what = match reason {
                    "proc_ns_denied" => format!("the network namespace of some processes cannot be identified: {detail}{missing}; a namespace only they are in is not watched"),
                    _ => format!("cannot read a network namespace: {detail}{missing}; its listeners are not watched"),
                };
                lines.push(format!(
                    "tcpq: {what} (counted in tcpq_netns_unreadable{{reason=\"{reason}\"}}; not printed again)"
                ));
            }
        }
    });
    for l in lines {
        eprintln!("{l}");
    }
}

/// An owner lookup that failed for `reason` (`fd_denied`: some process's
/// /proc/PID/fd could not be read, and the socket's owner was not found).
pub fn owner_failure(reason: &'static str, detail: &str, cap: &str) {
    let first = losses(|l| {
        *l.owners.entry((reason, cap.to_string())).or_default() += 1;
        l.warned.insert(("owner", format!("{reason}/{cap}")))
    });
    if first {
        eprintln!(
            "tcpq: socket owners cannot be looked up: {detail}{}; such lines carry no owner (counted in tcpq_owner_lookup_failures_total{{reason=\"{reason}\"}}; not printed again)",
            match cap {
                "none" => String::new(),
                c => format!(" (missing {c})"),
            }
        );
    }
}

/// (reason, missing capability, value) of `tcpq_netns_unreadable` and of
/// `tcpq_owner_lookup_failures_total`.
pub type LossSeries = Vec<(&'static str, String, u64)>;

pub fn loss_metrics() -> (LossSeries, LossSeries) {
    losses(|l| {
        let flat = |m: &std::collections::BTreeMap<(&'static str, String), u64>| {
            m.iter().map(|((r, c), v)| (*r, c.clone(), *v)).collect()
        };
        (flat(&l.netns), flat(&l.owners))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_cap_eff() {
        let st = "Name:\tx\nCapInh:\t0000000000000000\nCapEff:\t000001fffeffffff\n";
        let eff = parse_status(st, "CapEff").unwrap();
        assert!(has(eff, CAP_BPF) && has(eff, CAP_SYS_ADMIN));
        assert!(!has(eff, CAP_SYS_RESOURCE));
        assert_eq!(parse_status(st, "CapInh"), Some(0));
        assert_eq!(parse_status("garbage", "CapEff"), None);
    }

    #[test]
    fn names_what_is_missing() {
        let eff = (1 << CAP_BPF) | (1 << CAP_SYS_PTRACE);
        assert_eq!(
            missing(eff, Mode::Trace.required(), 40),
            vec![CAP_PERFMON, CAP_SYS_ADMIN, CAP_DAC_READ_SEARCH]
        );
        let r = refusal("trace", &[CAP_PERFMON]);
        assert!(r.starts_with("trace needs CAP_PERFMON (missing"), "{r}");
        assert!(!r.contains('\n'));
        // CAP_SYS_ADMIN covers CAP_BPF and CAP_PERFMON (also on kernels
        // before 5.8, which have neither).
        assert_eq!(
            missing(1 << CAP_SYS_ADMIN, &[CAP_BPF, CAP_PERFMON], 37),
            Vec::<u32>::new()
        );
        assert_eq!(
            missing(1 << CAP_SYS_ADMIN, &[CAP_BPF, CAP_PERFMON], 40),
            Vec::<u32>::new()
        );
        assert_eq!(
            missing(1 << CAP_BPF, &[CAP_BPF, CAP_PERFMON], 40),
            vec![CAP_PERFMON]
        );
        assert!(missing(0, Mode::Status.required(), 40).len() == 3);
    }

    #[test]
    fn parses_names() {
        assert_eq!(parse_name("CAP_SYS_ADMIN"), Some(21));
        assert_eq!(parse_name("sys_ptrace"), Some(19));
        assert_eq!(parse_name("bpf"), Some(39));
        assert_eq!(parse_name("CAP_NOPE"), None);
        assert_eq!(parse_list("CAP_BPF, perfmon").unwrap(), vec![39, 38]);
        assert!(parse_list("CAP_BPF,x").is_err());
        assert_eq!(name(40), "CAP_CHECKPOINT_RESTORE");
    }

    #[test]
    fn doctor_report() {
        let r = report(u64::MAX >> 23, 40);
        assert!(r.contains("all"), "{r}");
        assert!(r.contains("status         needs"), "{r}");
        let r = report(1 << CAP_BPF, 40);
        assert!(r.contains("CAP_BPF\n"), "{r}");
        assert!(
            r.contains("missing CAP_SYS_ADMIN, CAP_SYS_PTRACE, CAP_DAC_READ_SEARCH\n"),
            "{r}"
        );
        let r = report((1 << CAP_BPF) | (1 << CAP_SYS_ADMIN), 40);
        assert!(
            r.contains("missing CAP_SYS_PTRACE, CAP_DAC_READ_SEARCH\n"),
            "{r}"
        );
    }
}

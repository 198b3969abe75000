//! Where a process runs, from its cgroup: the cgroup path, the container
//! (id and runtime), the systemd unit and the Kubernetes pod.
//!
//! Everything here is pure string work on the text of `/proc/PID/cgroup`
//! (one `hierarchy-ID:controllers:path` line per hierarchy, see cgroups(7));
//! [`of_pid`] is the only function that touches the file system.
//!
//! The layouts recognised, by who creates them (the runtimes' own code, and
//! the parsers of OpenTelemetry's container resource detectors, Falco's
//! libsinsp `cri.cpp`/`docker_linux.cpp`, Datadog's agent, Tetragon and
//! NeuVector, agree on these):
//!
//! | creator | cgroup (leaf component) |
//! |---|---|
//! | docker, cgroupfs driver | `/docker/<id>` |
//! | docker (also cri-dockerd), systemd driver | `…/docker-<id>.scope` |
//! | containerd via `ctr` / nerdctl, cgroupfs | `/<namespace>/<id>` (containerd `oci/spec.go`: `filepath.Join("/", ns, id)`) |
//! | nerdctl, systemd (`slice:nerdctl:id`) | `/system.slice/nerdctl-<id>.scope` |
//! | kubelet + containerd, systemd driver | `/kubepods.slice/kubepods-<qos>.slice/kubepods-<qos>-pod<uid_>.slice/cri-containerd-<id>.scope` |
//! | containerd without `SystemdCgroup = true` under a systemd kubelet | `…/kubepods-<qos>-pod<uid_>.slice:cri-containerd:<id>` (the OCI `slice:prefix:name` kept literally) |
//! | kubelet, cgroupfs driver (containerd or docker) | `/kubepods/<qos>/pod<uid>/<id>` |
//! | cri-o | `…/crio-<id>.scope` (cgroupfs: `…/crio-<id>`); its monitor `crio-conmon-<id>.scope` |
//! | podman, rootful | `/machine.slice/libpod-<id>.scope[/container]`; monitor `libpod-conmon-<id>.scope` |
//! | podman, rootless | `/user.slice/user-U.slice/user@U.service/user.slice/libpod-<id>.scope` |
//!
//! Guaranteed pods have no QoS level: `kubepods.slice/kubepods-pod<uid_>.slice`
//! and `/kubepods/pod<uid>`. The systemd driver escapes the pod UID's dashes
//! as underscores (kubelet `cgroup_manager_linux.go`); they are put back.
//!
//! Paths are as the reading process's cgroup namespace sees them: an agent
//! run in its own cgroup namespace sees other processes' paths relative to
//! its own (`/../…`), and they are reported as they are.

/// What a process's cgroup says about where it runs.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Placement {
    /// The cgroup v2 path (the `0::` line), or for cgroup v1 the path of the
    /// `name=systemd` / `pids` / `memory` / `cpu` controller line (first found), e.g. "/system.slice/nginx.service".
    /// Which line exactly: see [`parse`]. Empty when nothing could be parsed.
    pub cgroup: String,
    /// 64-hex (or at least 12-hex) container id when the path names one (docker, containerd/cri-containerd, cri-o, podman/libpod, also kubepods burstable/besteffort/guaranteed layouts with systemd or cgroupfs drivers).
    ///
    /// For a runtime's per-container monitor, cri-o's or podman's `conmon`
    /// (in `crio-conmon-<id>.scope` / `libpod-conmon-<id>.scope`, a host
    /// process beside the container, not in it), this is the id of the
    /// container it monitors; [`Placement::cgroup`] tells the two apart.
    pub container_id: Option<String>,
    /// "docker", "containerd", "cri-o", "podman" when recognisable from the path.
    #[serde(deserialize_with = "runtime")]
    pub container_runtime: Option<Name>,
    /// The systemd unit: the last `*.service` / `*.scope` / `*.socket` component that is not a container scope (e.g. "nginx.service", "session-3.scope"); None when the process is in a container scope managed by a runtime.
    pub systemd_unit: Option<String>,
    /// Kubernetes pod UID (8-4-4-4-12 with dashes; systemd driver paths encode dashes as underscores: convert back).
    ///
    /// For a static pod the kubelet's UID is the 32-hex config hash (the
    /// mirror pod's `kubernetes.io/config.hash` annotation), reported as is.
    pub k8s_pod_uid: Option<String>,
    /// The pod's namespace and name, from the kubelet's pod log directory
    /// (see [`crate::owner::k8s`]); not part of the cgroup path, so [`parse`]
    /// leaves it empty and [`of_pid`] looks it up.
    pub k8s_names: Option<crate::owner::k8s::PodNames>,
}

/// A name from this agent's own table (an alias, so serde does not take
/// it for a string borrowed from its input).
pub type Name = &'static str;

/// Every runtime [`Placement::container_runtime`] names.
pub const RUNTIMES: [&str; 4] = ["docker", "containerd", "cri-o", "podman"];

/// A recorded runtime name, as the static name this agent uses.
fn runtime<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<&'static str>, D::Error> {
    use serde::{de::Error, Deserialize};
    match Option::<String>::deserialize(d)? {
        None => Ok(None),
        Some(r) => RUNTIMES
            .iter()
            .find(|k| **k == r)
            .map(|k| Some(*k))
            .ok_or_else(|| D::Error::custom(format!("unknown container runtime {r:?}"))),
    }
}

/// Parses the text of /proc/PID/cgroup.
///
/// The path is the `0::` line's (when it is `/` but a `name=systemd` line
/// has a deeper path, as on a cgroup v1 host where cgroup2 is mounted but
/// unused, that line's). Without a `0::` line: the first of `name=systemd`,
/// `pids`, `memory`, `cpu` (in that order, then any other controller) whose
/// path is not `/`, or `/` when all are. When that path names no container
/// but another line's does (a hybrid host whose runtime placed the
/// container in the v1 controllers only), that line is used for every
/// field. Unparsable input gives [`Placement::default`].
pub fn parse(proc_cgroup: &str) -> Placement {
    let mut lines: Vec<(u8, &str)> = proc_cgroup.lines().filter_map(line).collect();
    if lines.is_empty() {
        return Placement::default();
    }
    // Stable: lines of the same rank keep the file's order.
    lines.sort_by_key(|&(rank, _)| rank);
    // A root path says nothing: prefer a line with a deeper one, but let
    // only name=systemd (the hierarchy cgroup v2 replaces) override `0::/`.
    let v2 = lines[0].0 == RANK_V2;
    let primary = lines
        .iter()
        .find(|&&(r, p)| p != "/" && (!v2 || r <= RANK_SYSTEMD))
        .unwrap_or(&lines[0])
        .1;
    let mut placement = placement_of(primary);
    if placement.container_id.is_none() {
        if let Some(p) = lines
            .iter()
            .map(|&(_, p)| placement_of(p))
            .find(|p| p.container_id.is_some())
        {
            placement = p;
        }
    }
    placement
}

/// Reads and parses /proc/PID/cgroup (None if unreadable).
pub fn of_pid(pid: u32) -> Option<Placement> {
    let mut p = parse(&std::fs::read_to_string(format!("/proc/{pid}/cgroup")).ok()?);
    p.k8s_names = p
        .k8s_pod_uid
        .as_deref()
        .and_then(crate::owner::k8s::names_of);
    Some(p)
}

/// True when `p` matches a user's filter: `--cgroup PATH` matches when the
/// cgroup path equals PATH or is under it (prefix at a path-component
/// boundary).
///
/// A trailing `/` in PATH is ignored, and so is a leading cgroup2 mount
/// point (`/sys/fs/cgroup`, `/sys/fs/cgroup/unified`,
/// `/sys/fs/cgroup/systemd`), so a directory copied from the file system
/// works too. `/` matches every known placement; an empty PATH, or a
/// placement without a path, matches nothing.
pub fn cgroup_matches(p: &Placement, wanted: &str) -> bool {
    let wanted = wanted.trim();
    if wanted.is_empty() || p.cgroup.is_empty() {
        return false;
    }
    let mut w = wanted;
    for mount in [
        "/sys/fs/cgroup/unified",
        "/sys/fs/cgroup/systemd",
        "/sys/fs/cgroup",
    ] {
        if let Some(rest) = under(w, mount) {
            w = rest;
            break;
        }
    }
    let w = w.trim_matches('/');
    let have = p.cgroup.trim_matches('/');
    w.is_empty() || under(have, w).is_some()
}

/// True when `p` matches a user's filter: `--container ID` matches when the
/// container id starts with ID (min 4 chars, case-insensitive).
///
/// A `runtime://` scheme, as in a pod's `containerStatuses[].containerID`
/// (`containerd://<id>`), is ignored.
pub fn container_matches(p: &Placement, wanted: &str) -> bool {
    let w = wanted.trim();
    let w = w.split_once("://").map_or(w, |(_, id)| id);
    let Some(id) = &p.container_id else {
        return false;
    };
    w.len() >= 4
        && id.len() >= w.len()
        && id.as_bytes()[..w.len()].eq_ignore_ascii_case(w.as_bytes())
}

// Line ranks: which line's path is the process's cgroup.
const RANK_V2: u8 = 0;
const RANK_SYSTEMD: u8 = 1;

/// One line of /proc/PID/cgroup: its rank and its path; None when it is
/// not `hierarchy-ID:controllers:/path`.
fn line(l: &str) -> Option<(u8, &str)> {
    let mut it = l.trim_end().splitn(3, ':');
    let (id, controllers, path) = (it.next()?, it.next()?, it.next()?);
    if id.is_empty() || !id.bytes().all(|b| b.is_ascii_digit()) || !path.starts_with('/') {
        return None;
    }
    // The kernel marks a removed cgroup v2 (a process exiting as its
    // service stops): "0::/system.slice/foo.service (deleted)".
    let path = path.strip_suffix(" (deleted)").unwrap_or(path);
    let has = |c: &str| controllers.split(',').any(|x| x == c);
    let rank = if id == "0" && controllers.is_empty() {
        RANK_V2
    } else if has("name=systemd") {
        RANK_SYSTEMD
    } else if has("pids") {
        2
    } else if has("memory") {
        3
    } else if has("cpu") {
        4
    } else {
        5
    };
    Some((rank, path))
}

/// Runtime scope/cgroup prefixes and the runtime each names. More specific
/// prefixes first (`crio-conmon-` before `crio-`).
const PREFIXES: &[(&str, &str)] = &[
    // kubelet + containerd, systemd driver (Falco cri.cpp, Tetragon).
    ("cri-containerd-", "containerd"),
    // cri-o's conmon, beside the container in the pod's cgroup (cri-o
    // internal/oci: "crio-conmon-" + id).
    ("crio-conmon-", "cri-o"),
    ("crio-", "cri-o"),
    // podman's conmon: "libpod-conmon-<id>.scope" under machine.slice.
    ("libpod-conmon-", "podman"),
    ("libpod-", "podman"),
    // docker's systemd driver (and cri-dockerd).
    ("docker-", "docker"),
    // nerdctl's systemd cgroup path "system.slice:nerdctl:<id>".
    ("nerdctl-", "containerd"),
];

/// Systemd unit suffixes a process can run in.
const UNIT_SUFFIXES: &[&str] = &[".service", ".scope", ".socket"];

/// The placement one cgroup path describes.
fn placement_of(path: &str) -> Placement {
    let comps: Vec<&str> = path.split('/').filter(|c| !c.is_empty()).collect();
    // The innermost container (kind, docker-in-docker: containers nest).
    let container = comps
        .iter()
        .enumerate()
        .rev()
        .find_map(|(i, c)| container_of(c, i.checked_sub(1).map(|j| comps[j])).map(|x| (i, x)));
    // Units inside the container (systemd run in it) still count; the
    // slices and units holding the container (user@1000.service for
    // rootless podman, containerd.service) do not.
    let from = container.as_ref().map_or(0, |(i, _)| i + 1);
    let systemd_unit = comps[from..]
        .iter()
        .rev()
        .find(|c| is_unit(c))
        .map(|c| c.to_string());
    let (container_id, container_runtime) = match container {
        Some((_, (id, rt))) => (Some(id), rt),
        None => (None, None),
    };
    let k8s_pod_uid = if path.contains("kubepods") {
        comps.iter().rev().find_map(|c| pod_uid(c))
    } else {
        None
    };
    Placement {
        cgroup: path.to_string(),
        container_id,
        container_runtime,
        systemd_unit,
        k8s_pod_uid,
        k8s_names: None,
    }
}

/// The container id (and runtime, when known) one path component names;
/// `parent` is the component above it.
fn container_of(c: &str, parent: Option<&str>) -> Option<(String, Option<&'static str>)> {
    // An OCI systemd cgroupsPath "slice:prefix:name" used literally by a
    // cgroupfs-driven runtime: "kubepods-…-pod<uid>.slice:cri-containerd:<id>".
    if let Some((_, rest)) = c.split_once(':') {
        let (prefix, name) = rest.split_once(':')?;
        let id = hex_id(name)?;
        let rt = PREFIXES
            .iter()
            .find(|(p, _)| p.strip_suffix('-') == Some(prefix))
            .map(|&(_, rt)| rt);
        return Some((id, rt));
    }
    let base = strip_scope(c);
    for &(prefix, rt) in PREFIXES {
        if let Some(id) = base.strip_prefix(prefix).and_then(hex_id) {
            return Some((id, Some(rt)));
        }
    }
    // A bare id: docker's and the kubelet's cgroupfs layouts, containerd's
    // default "/<namespace>/<id>". Only a full 64-hex id, so that other
    // hex-looking names are not taken for containers.
    if c.len() == 64 {
        let id = hex_id(c)?;
        let rt = match parent {
            Some("docker") => Some("docker"),
            // containerd namespaces used by ctr and nerdctl.
            Some("default") | Some("k8s.io") => Some("containerd"),
            // Under kubepods the id alone does not tell containerd from docker.
            _ => None,
        };
        return Some((id, rt));
    }
    None
}

/// A systemd unit name: `*.service`, `*.scope`, `*.socket` with a name.
fn is_unit(c: &str) -> bool {
    !c.contains(':')
        && UNIT_SUFFIXES
            .iter()
            .any(|s| c.strip_suffix(s).is_some_and(|n| !n.is_empty()))
}

/// A container id: 12 to 64 hex digits, lowercased.
fn hex_id(s: &str) -> Option<String> {
    ((12..=64).contains(&s.len()) && s.bytes().all(|b| b.is_ascii_hexdigit()))
        .then(|| s.to_ascii_lowercase())
}

fn strip_scope(c: &str) -> &str {
    c.strip_suffix(".scope").unwrap_or(c)
}

/// `rest` when `path` is `prefix` or below it (at a `/` boundary).
fn under<'a>(path: &'a str, prefix: &str) -> Option<&'a str> {
    let rest = path.strip_prefix(prefix)?;
    (rest.is_empty() || rest.starts_with('/')).then_some(rest)
}

/// The pod UID in a pod cgroup component: `pod<uid>` (cgroupfs),
/// `kubepods-<qos>-pod<uid_>.slice` (systemd), possibly followed by
/// `:prefix:id`. UIDs are 8-4-4-4-12 hex with `-` or `_`, or a static
/// pod's 32-hex config hash.
fn pod_uid(c: &str) -> Option<String> {
    c.match_indices("pod").find_map(|(i, _)| {
        if i > 0 && !c[..i].ends_with('-') {
            return None;
        }
        let rest = &c[i + 3..];
        let end = rest.find(['.', ':']).unwrap_or(rest.len());
        let uid = &rest[..end];
        if end < rest.len() && !rest[end..].starts_with(".slice") && !rest[end..].starts_with(':') {
            return None;
        }
        let hash = uid.len() == 32 && uid.bytes().all(|b| b.is_ascii_hexdigit());
        (is_uuid(uid) || hash).then(|| uid.replace('_', "-").to_ascii_lowercase())
    })
}

/// Whether `s` is 8-4-4-4-12 hex groups joined by one separator, `-` or
/// `_` (a systemd-escaped UID).
fn is_uuid(s: &str) -> bool {
    let Some(sep) = s.chars().nth(8).filter(|c| *c == '-' || *c == '_') else {
        return false;
    };
    let groups: Vec<&str> = s.split(sep).collect();
    groups.len() == 5
        && groups
            .iter()
            .zip([8, 4, 4, 4, 12])
            .all(|(g, n)| g.len() == n && g.bytes().all(|b| b.is_ascii_hexdigit()))
}

#[cfg(test)]
mod tests {
    use super::*;

    const ID: &str = "85e833f62b41acc2eb7f8e5f1face84e46f83e3bf6586aee98e916dc049427d3";
    const ID2: &str = "cfc71d3cf6a287b5ed8aabc873995b4796df64f21c17bddc3a5c74185cbfe102";
    const UID: &str = "1d2e3f4a-5b6c-7d8e-9f00-112233445566";
    const UID_: &str = "1d2e3f4a_5b6c_7d8e_9f00_112233445566";

    fn want(
        cgroup: &str,
        id: Option<&str>,
        runtime: Option<&'static str>,
        unit: Option<&str>,
        pod: Option<&str>,
    ) -> Placement {
        Placement {
            cgroup: cgroup.to_string(),
            container_id: id.map(str::to_string),
            container_runtime: runtime,
            systemd_unit: unit.map(str::to_string),
            k8s_pod_uid: pod.map(str::to_string),
            k8s_names: None,
        }
    }

    /// A cgroup v1 file (Ubuntu 18.04 / CentOS 7 style, highest hierarchy
    /// first) with every controller at `path`.
    fn v1(path: &str) -> String {
        [
            "12:pids:",
            "11:hugetlb:",
            "10:net_cls,net_prio:",
            "9:perf_event:",
            "8:cpuset:",
            "7:memory:",
            "6:freezer:",
            "5:rdma:",
            "4:blkio:",
            "3:cpu,cpuacct:",
            "2:devices:",
            "1:name=systemd:",
        ]
        .iter()
        .map(|l| format!("{l}{path}\n"))
        .collect()
    }

    #[test]
    fn host_service_v2() {
        let p = parse("0::/system.slice/nginx.service\n");
        let w = want(
            "/system.slice/nginx.service",
            None,
            None,
            Some("nginx.service"),
            None,
        );
        assert_eq!(p, w);
    }

    #[test]
    fn user_session_scope() {
        let p = parse("0::/user.slice/user-1000.slice/session-3.scope\n");
        let w = want(
            "/user.slice/user-1000.slice/session-3.scope",
            None,
            None,
            Some("session-3.scope"),
            None,
        );
        assert_eq!(p, w);
    }

    #[test]
    fn user_service_under_user_manager() {
        let path = "/user.slice/user-1000.slice/user@1000.service/app.slice/foo.service";
        let p = parse(&format!("0::{path}\n"));
        assert_eq!(p, want(path, None, None, Some("foo.service"), None));
    }

    #[test]
    fn init_scope_and_root() {
        let p = parse("0::/init.scope\n");
        assert_eq!(p, want("/init.scope", None, None, Some("init.scope"), None));
        // A kernel thread, or anything at the root.
        let p = parse("0::/\n");
        assert_eq!(p, want("/", None, None, None, None));
    }

    #[test]
    fn removed_cgroup_is_marked_deleted() {
        // A process still exiting after its service's cgroup was removed.
        let p = parse("0::/system.slice/nginx.service (deleted)\n");
        let w = want(
            "/system.slice/nginx.service",
            None,
            None,
            Some("nginx.service"),
            None,
        );
        assert_eq!(p, w);
    }

    #[test]
    fn docker_cgroupfs_v1() {
        let path = format!("/docker/{ID}");
        let p = parse(&v1(&path));
        assert_eq!(p, want(&path, Some(ID), Some("docker"), None, None));
        assert!(container_matches(&p, "85e833f62b41"));
    }

    #[test]
    fn docker_systemd_v2_and_v1() {
        let path = format!("/system.slice/docker-{ID}.scope");
        let w = want(&path, Some(ID), Some("docker"), None, None);
        assert_eq!(parse(&format!("0::{path}\n")), w);
        // CentOS 7: docker with the systemd driver on cgroup v1.
        assert_eq!(parse(&v1(&path)), w);
    }

    #[test]
    fn containerd_ctr_and_nerdctl() {
        // ctr/nerdctl with cgroupfs: containerd's default "/<namespace>/<id>".
        let path = format!("/default/{ID}");
        let p = parse(&format!("0::{path}\n"));
        assert_eq!(p, want(&path, Some(ID), Some("containerd"), None, None));
        // nerdctl with systemd: "system.slice:nerdctl:<id>".
        let path = format!("/system.slice/nerdctl-{ID}.scope");
        let p = parse(&format!("0::{path}\n"));
        assert_eq!(p, want(&path, Some(ID), Some("containerd"), None, None));
    }

    #[test]
    fn kubepods_burstable_containerd_systemd() {
        let path = format!(
            "/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod{UID_}.slice/cri-containerd-{ID}.scope"
        );
        let p = parse(&format!("0::{path}\n"));
        assert_eq!(
            p,
            want(&path, Some(ID), Some("containerd"), None, Some(UID))
        );
    }

    #[test]
    fn kubepods_besteffort_cgroupfs() {
        let path = format!("/kubepods/besteffort/pod{UID}/{ID}");
        let p = parse(&format!("0::{path}\n"));
        // containerd or docker: the path does not say.
        assert_eq!(p, want(&path, Some(ID), None, None, Some(UID)));
    }

    #[test]
    fn kubepods_guaranteed_has_no_qos_level() {
        let path = format!("/kubepods.slice/kubepods-pod{UID_}.slice/cri-containerd-{ID}.scope");
        let p = parse(&format!("0::{path}\n"));
        assert_eq!(
            p,
            want(&path, Some(ID), Some("containerd"), None, Some(UID))
        );
        // cgroupfs driver on cgroup v1.
        let path = format!("/kubepods/pod{UID}/{ID}");
        let p = parse(&v1(&path));
        assert_eq!(p, want(&path, Some(ID), None, None, Some(UID)));
    }

    #[test]
    fn containerd_without_systemd_cgroup_under_systemd_kubelet() {
        // The OCI "slice:prefix:name" kept literally, below containerd.service
        // (as in OpenTelemetry Java's cgroup v1 detector tests).
        let path = format!(
            "/system.slice/containerd.service/kubepods-burstable-pod{UID_}.slice:cri-containerd:{ID}"
        );
        let p = parse(&format!("0::{path}\n"));
        assert_eq!(
            p,
            want(&path, Some(ID), Some("containerd"), None, Some(UID))
        );
    }

    #[test]
    fn crio_besteffort_systemd() {
        let path = format!(
            "/kubepods.slice/kubepods-besteffort.slice/kubepods-besteffort-pod{UID_}.slice/crio-{ID}.scope"
        );
        let p = parse(&format!("0::{path}\n"));
        assert_eq!(p, want(&path, Some(ID), Some("cri-o"), None, Some(UID)));
    }

    #[test]
    fn crio_conmon_names_its_container() {
        let path = format!(
            "/kubepods.slice/kubepods-besteffort.slice/kubepods-besteffort-pod{UID_}.slice/crio-conmon-{ID}.scope"
        );
        let p = parse(&format!("0::{path}\n"));
        assert_eq!(p, want(&path, Some(ID), Some("cri-o"), None, Some(UID)));
    }

    #[test]
    fn podman_rootful() {
        let path = format!("/machine.slice/libpod-{ID}.scope");
        let p = parse(&format!("0::{path}\n"));
        assert_eq!(p, want(&path, Some(ID), Some("podman"), None, None));
        // The runtime's sub-cgroup of the container's scope.
        let path = format!("/machine.slice/libpod-{ID}.scope/container");
        let p = parse(&format!("0::{path}\n"));
        assert_eq!(p, want(&path, Some(ID), Some("podman"), None, None));
    }

    #[test]
    fn podman_pod_slice() {
        let path =
            format!("/machine.slice/machine-libpod_pod_{ID2}.slice/libpod-{ID}.scope/container");
        let p = parse(&format!("0::{path}\n"));
        assert_eq!(p, want(&path, Some(ID), Some("podman"), None, None));
    }

    #[test]
    fn podman_rootless_is_not_the_user_manager() {
        let path =
            format!("/user.slice/user-1000.slice/user@1000.service/user.slice/libpod-{ID}.scope");
        let p = parse(&format!("0::{path}\n"));
        assert_eq!(p, want(&path, Some(ID), Some("podman"), None, None));
    }

    #[test]
    fn podman_conmon() {
        let path = format!("/machine.slice/libpod-conmon-{ID}.scope");
        let p = parse(&format!("0::{path}\n"));
        assert_eq!(p, want(&path, Some(ID), Some("podman"), None, None));
    }

    #[test]
    fn kind_node_nests_containers() {
        // A kind node is a docker container; its pods are containerd's.
        let path = format!(
            "/system.slice/docker-{ID2}.scope/kubelet.slice/kubelet-kubepods.slice/kubelet-kubepods-besteffort.slice/kubelet-kubepods-besteffort-pod{UID_}.slice/cri-containerd-{ID}.scope"
        );
        let p = parse(&format!("0::{path}\n"));
        assert_eq!(
            p,
            want(&path, Some(ID), Some("containerd"), None, Some(UID))
        );
        // The node's own kubelet: a unit inside the container.
        let path = format!("/system.slice/docker-{ID2}.scope/system.slice/kubelet.service");
        let p = parse(&format!("0::{path}\n"));
        let w = want(
            &path,
            Some(ID2),
            Some("docker"),
            Some("kubelet.service"),
            None,
        );
        assert_eq!(p, w);
    }

    #[test]
    fn static_pod_uid_is_the_config_hash() {
        let hash = "8c1e3a0b6d2f4e5a9b7c0d1e2f3a4b5c";
        let path = format!("/kubepods/burstable/pod{hash}/{ID}");
        let p = parse(&v1(&path));
        assert_eq!(p, want(&path, Some(ID), None, None, Some(hash)));
    }

    #[test]
    fn v1_name_systemd_holds_the_path() {
        // Older systemd on cgroup v1: only pids (and name=systemd) follow the
        // unit; the resource controllers without accounting stay at the root.
        let text = "\
11:perf_event:/
10:devices:/system.slice/nginx.service
9:cpuset:/
8:net_cls,net_prio:/
7:blkio:/
6:memory:/
5:freezer:/
4:hugetlb:/
3:cpu,cpuacct:/
2:pids:/system.slice/nginx.service
1:name=systemd:/system.slice/nginx.service
";
        let w = want(
            "/system.slice/nginx.service",
            None,
            None,
            Some("nginx.service"),
            None,
        );
        assert_eq!(parse(text), w);
        // Without name=systemd (a non-systemd host): pids, then memory.
        let text = "4:memory:/batch/job7\n3:cpu,cpuacct:/\n2:pids:/\n";
        assert_eq!(parse(text), want("/batch/job7", None, None, None, None));
    }

    #[test]
    fn hybrid_prefers_the_unified_line() {
        let path = "/system.slice/sshd.service";
        let text = format!("{}0::{path}\n", v1(path));
        assert_eq!(
            parse(&text),
            want(path, None, None, Some("sshd.service"), None)
        );
        // cgroup2 mounted but unused: "0::/" says nothing, name=systemd does.
        let text = format!("{}0::/\n", v1(path));
        assert_eq!(
            parse(&text),
            want(path, None, None, Some("sshd.service"), None)
        );
        // A container only the v1 controllers know about.
        let docker = format!("/docker/{ID}");
        let text = format!("{}0::/system.slice/containerd.service\n", v1(&docker));
        assert_eq!(
            parse(&text),
            want(&docker, Some(ID), Some("docker"), None, None)
        );
    }

    #[test]
    fn garbage_and_empty_input() {
        assert_eq!(parse(""), Placement::default());
        assert_eq!(parse("\n\n"), Placement::default());
        assert_eq!(parse("not a cgroup file\nx:y\n"), Placement::default());
        assert_eq!(parse("a:b:/c\n0::relative\n"), Placement::default());
        assert_eq!(parse("\u{0}\u{ff}:::").cgroup, "");
        // A hex-looking name that is not a full id is not a container.
        let p = parse("0::/system.slice/deadbeefcafe.service\n");
        let w = want(
            "/system.slice/deadbeefcafe.service",
            None,
            None,
            Some("deadbeefcafe.service"),
            None,
        );
        assert_eq!(p, w);
    }

    #[test]
    fn cgroup_filter() {
        let p = want(
            "/system.slice/nginx.service",
            None,
            None,
            Some("nginx.service"),
            None,
        );
        for yes in [
            "/system.slice/nginx.service",
            "/system.slice/nginx.service/",
            "/system.slice",
            "/system.slice/",
            "/",
            "/sys/fs/cgroup/system.slice",
            "/sys/fs/cgroup/unified/system.slice/nginx.service",
            "/sys/fs/cgroup",
        ] {
            assert!(cgroup_matches(&p, yes), "{yes}");
        }
        for no in [
            "/system.slice/nginx",
            "/system.slice/nginx.service/child",
            "/system",
            "/user.slice",
            "",
        ] {
            assert!(!cgroup_matches(&p, no), "{no}");
        }
        assert!(!cgroup_matches(&Placement::default(), "/"));
    }

    #[test]
    fn container_filter() {
        let p = want(
            &format!("/docker/{ID}"),
            Some(ID),
            Some("docker"),
            None,
            None,
        );
        for yes in ["85e8", "85E833F62B41", ID, &format!("containerd://{ID}")] {
            assert!(container_matches(&p, yes), "{yes}");
        }
        for no in ["85e", "", "cfc71d3c", &format!("{ID}0")] {
            assert!(!container_matches(&p, no), "{no}");
        }
        let host = want("/system.slice/nginx.service", None, None, None, None);
        assert!(!container_matches(&host, "85e8"));
    }

    #[test]
    fn this_process() {
        // Whatever this host is, reading our own cgroup works.
        let p = of_pid(std::process::id()).expect("/proc/self/cgroup");
        assert!(p.cgroup.starts_with('/'), "{p:?}");
        assert_eq!(of_pid(u32::MAX), None);
    }
}

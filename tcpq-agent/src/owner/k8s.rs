//! Kubernetes names of a pod: the kubelet writes every pod's logs under
//! `/var/log/pods/<namespace>_<pod name>_<pod uid>/`, so the directory
//! names map the pod UID (which the cgroup path carries) to its namespace
//! and name, with no API server and no credentials. The DaemonSet mounts
//! that directory read-only.
//!
//! Namespace and pod names are DNS labels and subdomains, and UIDs are
//! UUIDs (or a static pod's 32-hex config hash): none contains `_`, so a
//! name splits into exactly three parts.

use std::{
    collections::HashMap,
    path::{Path, PathBuf},
    time::{Duration, Instant},
};

/// Where the kubelet keeps pod logs.
pub const PODS_DIR: &str = "/var/log/pods";

/// A pod's Kubernetes names.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct PodNames {
    pub namespace: String,
    pub pod: String,
}

/// Parses one directory name `<namespace>_<pod>_<uid>`: (uid, names).
pub fn parse_dir_name(name: &str) -> Option<(String, PodNames)> {
    let mut it = name.split('_');
    let (ns, pod, uid) = (it.next()?, it.next()?, it.next()?);
    if it.next().is_some() || ns.is_empty() || pod.is_empty() || uid.is_empty() {
        return None;
    }
    let dns = |s: &str| {
        s.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'.')
    };
    let uid_ok = uid.bytes().all(|b| b.is_ascii_hexdigit() || b == b'-');
    (dns(ns) && dns(pod) && uid_ok).then(|| {
        (
            uid.to_ascii_lowercase(),
            PodNames {
                namespace: ns.to_string(),
                pod: pod.to_string(),
            },
        )
    })
}

/// Pod UID → names, read from a pods directory and re-read when a UID is
/// not found (a pod newer than the last reading), at most once per
/// `min_reread`.
pub struct Pods {
    dir: PathBuf,
    names: HashMap<String, PodNames>,
    read_at: Option<Instant>,
    min_reread: Duration,
}

impl Pods {
    pub fn new(dir: impl AsRef<Path>) -> Pods {
        Pods {
            dir: dir.as_ref().to_path_buf(),
            names: HashMap::new(),
            read_at: None,
            min_reread: Duration::from_secs(2),
        }
    }

    /// The names of pod `uid`, if the pods directory has it.
    pub fn get(&mut self, uid: &str) -> Option<PodNames> {
        let uid = uid.to_ascii_lowercase();
        if !self.names.contains_key(&uid)
            && self.read_at.is_none_or(|t| t.elapsed() >= self.min_reread)
        {
            self.reread();
        }
        self.names.get(&uid).cloned()
    }

    fn reread(&mut self) {
        self.read_at = Some(Instant::now());
        let Ok(rd) = std::fs::read_dir(&self.dir) else {
            return;
        };
        self.names = rd
            .flatten()
            .filter_map(|e| parse_dir_name(e.file_name().to_str()?))
            .collect();
    }
}

/// The process-wide reader of [`PODS_DIR`] (`TCPQ_PODS_DIR` overrides it,
/// for a DaemonSet that mounts it elsewhere, and for tests).
pub fn names_of(uid: &str) -> Option<PodNames> {
    use std::sync::{Mutex, OnceLock};
    static PODS: OnceLock<Mutex<Pods>> = OnceLock::new();
    let pods = PODS.get_or_init(|| {
        let dir = std::env::var_os("TCPQ_PODS_DIR")
            .map(PathBuf::from)
            .unwrap_or_else(|| PODS_DIR.into());
        Mutex::new(Pods::new(dir))
    });
    pods.lock().ok()?.get(uid)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_kubelet_pod_log_directory_names() {
        let (uid, n) = parse_dir_name(
            "kube-system_coredns-5d78c9869d-x7k2p_0b1c2d3e-4f50-6172-8394-a5b6c7d8e9f0",
        )
        .unwrap();
        assert_eq!(uid, "0b1c2d3e-4f50-6172-8394-a5b6c7d8e9f0");
        assert_eq!(n.namespace, "kube-system");
        assert_eq!(n.pod, "coredns-5d78c9869d-x7k2p");
        // A static pod: the UID is the config hash.
        let (uid, n) =
            parse_dir_name("kube-system_etcd-node1.example.com_5d0c1b0a0f2e4a1b9c8d7e6f5a4b3c2d")
                .unwrap();
        assert_eq!(uid, "5d0c1b0a0f2e4a1b9c8d7e6f5a4b3c2d");
        assert_eq!(n.pod, "etcd-node1.example.com");
        for bad in [
            "",
            "default_web",
            "default_web_uid_extra",
            "_web_0b1c",
            "Default_web_0b1c",
            "default_web_not-hex!",
            "default_we b_0b1c",
        ] {
            assert_eq!(parse_dir_name(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn a_new_pod_is_found_by_reading_the_directory_again() {
        let dir = std::env::temp_dir().join(format!("tcpq-pods-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(dir.join("shop_web-1_aaaa-bbbb")).unwrap();
        std::fs::create_dir_all(dir.join("not a pod")).unwrap();
        let mut pods = Pods::new(&dir);
        pods.min_reread = Duration::ZERO;
        assert_eq!(pods.get("AAAA-BBBB").unwrap().pod, "web-1");
        assert_eq!(pods.get("cccc"), None);
        std::fs::create_dir_all(dir.join("shop_web-2_cccc")).unwrap();
        assert_eq!(pods.get("cccc").unwrap().namespace, "shop");
        std::fs::remove_dir_all(&dir).unwrap();
    }
}

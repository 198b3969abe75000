//! The filters of `trace` that `top` applies itself, by a listener's
//! owner (the engine applies port and namespace).

use crate::owner::resolve::Owner;

/// The filters of `trace` applied to rows by owner (`--pid`, `--comm`,
/// `--cgroup`, `--container`; port and namespace are applied by the
/// engine).
#[derive(Debug, Clone, Default)]
pub struct OwnerFilter {
    pub pid: Option<u32>,
    pub comm: Option<String>,
    pub cgroup: Option<String>,
    pub container: Option<String>,
}

impl OwnerFilter {
    fn is_empty(&self) -> bool {
        self.pid.is_none()
            && self.comm.is_none()
            && self.cgroup.is_none()
            && self.container.is_none()
    }

    pub fn wants(&self, owner: Option<&Owner>) -> bool {
        if self.is_empty() {
            return true;
        }
        let Some(o) = owner else { return false };
        if self
            .pid
            .is_some_and(|p| !o.holders.contains(&p) && o.pid != p)
        {
            return false;
        }
        if self.comm.as_deref().is_some_and(|c| !o.has_comm(c)) {
            return false;
        }
        let pl = o.placement.clone().unwrap_or_default();
        if self
            .cgroup
            .as_deref()
            .is_some_and(|c| !crate::owner::cgroup::cgroup_matches(&pl, c))
        {
            return false;
        }
        self.container
            .as_deref()
            .is_none_or(|c| crate::owner::cgroup::container_matches(&pl, c))
    }
}

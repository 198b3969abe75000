//! Owners: which process holds a socket (`resolve`, from `/proc` and the
//! kernel's own records), and where that process runs (`cgroup`: container,
//! systemd unit; `k8s`: pod names).

pub mod cgroup;
pub mod k8s;
pub mod resolve;

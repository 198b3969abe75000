//! Owners: which process holds a socket (`resolve`, from `/proc` and the
//! kernel's own records), and where that process runs (`cgroup`: container,
//! systemd unit; `k8s`: pod names).
//!
//! `resolve` holds the cache and its policy; what it reads is in its own
//! files: a process as /proc describes it (`process`), fd tables (`fds`),
//! SO_REUSEPORT owner choice (`reuseport`), and when to read (`schedule`).

pub mod cgroup;
pub mod fds;
pub mod k8s;
pub mod process;
pub mod resolve;
pub mod reuseport;
pub mod schedule;

//! Sources: what the kernel tells the agent. Ring-buffer records
//! (`decode`), sock_diag snapshots of every listener (`sockdiag`, read per
//! namespace by the `poll` thread), each namespace's own counters and
//! sysctls (`netstat`, `netns`), and the counts kept in kernel maps
//! (`storm`, `accepts`, `latency`).

pub mod accept_errors;
pub mod accepts;
pub mod decode;
pub mod latency;
pub mod netns;
pub mod netstat;
pub mod poll;
pub mod sockdiag;
pub mod storm;
pub mod wire;

//! What the engine is asked to do: `trace`'s flags as plain values (`run`
//! and `top` ask the same), built by `cmd` from the command line or the
//! configuration.

use std::{path::PathBuf, time::Duration};

use crate::kernel::caps::AttachMode;

#[derive(Debug, Clone)]
pub struct Options {
    /// Only listeners owned by this process (and its namespace).
    pub pid: Option<u32>,
    /// Only listeners on this local port (filtered in the kernel too).
    pub port: Option<u16>,
    /// Only this network namespace: an inode or a path.
    pub netns: Option<String>,
    pub comm: Option<String>,
    pub cgroup: Option<String>,
    pub container: Option<String>,
    pub attach: AttachMode,
    pub duration: Option<Duration>,
    pub interval: Duration,
    pub poll_interval: Duration,
    pub ring_buffer_bytes: u32,
    pub bpf_stats: bool,
    pub syscall_hooks: SyscallHooks,
    pub accept_latency_ms: f64,
    /// Record every input of the pipeline to this file.
    pub record: Option<PathBuf>,
}

/// When the accept() syscall hooks are attached (`--syscall-hooks`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum SyscallHooks {
    Auto,
    Always,
    OnDemand,
    Never,
}

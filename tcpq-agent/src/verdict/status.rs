//! Status rows: each listener as sock_diag and /proc see it, with its
//! verdict (`status`, the sidecar's `listener_snapshot` lines, and what
//! `top` shows). Built by `cmd::status`, rendered by the exporters.

use std::collections::BTreeMap;

use crate::{
    owner::resolve,
    source::sockdiag::DiagSock,
    verdict::{self, Settings},
};

/// One listener's row.
#[derive(Debug, Clone)]
pub struct Row {
    pub netns: u32,
    pub sock: DiagSock,
    pub owner: Option<resolve::Owner>,
    pub syn_queue: u32,
    pub close_wait: u32,
    pub settings: Settings,
    pub open_fds: Option<u32>,
    pub fd_limit: Option<u64>,
    /// The namespace's TCPReqQFullDrop / TCPReqQFullDoCookies so far.
    pub reqq_drops: u64,
    pub reqq_cookies: u64,
    pub verdict: Option<verdict::Verdict>,
}

/// One look at the host: every listener's row (sorted by netns, port,
/// inode), and the local-port verdict of each namespace short of ports.
#[derive(Debug, Clone)]
pub struct Snapshot {
    /// When the look ended.
    pub at: std::time::SystemTime,
    pub rows: Vec<Row>,
    pub ports: BTreeMap<u32, verdict::Verdict>,
}

//! The kernel side: what this kernel offers → the values the kernel
//! programs need and which hooks to attach, then loading and attaching
//! them. Facts come from BTF and tracepoint formats only.
//!
//! - `btf`, `tracefs`: reading the kernel's types and tracepoint formats
//! - `discover`: the running kernel's facts, read once at start-up
//! - `hooks`: the tracepoints tcpq attaches
//! - `plan`: facts → configuration of the programs and tracepoint hooks
//! - `caps`, `protos`: kernel-function hooks: which kind, and their
//!   prototypes checked against BTF
//! - `load`, `attached`: loading the object and attaching, and the record
//!   of what attached
//! - `privs`: capabilities and what their lack costs

pub mod attached;
pub mod btf;
pub mod caps;
pub mod discover;
pub mod hooks;
pub mod load;
pub mod plan;
pub mod privs;
pub mod protos;
pub mod tracefs;

pub use discover::{discover, facts};
pub use hooks::{
    Hook, Tp, ACCEPT4_EXIT, ACCEPT_EXIT, KFREE_SKB, RECEIVE_RESET, RETRANSMIT_SYNACK, SEND_RESET,
    SOCK_STATE,
};
pub use plan::{plan, Formats, Plan};

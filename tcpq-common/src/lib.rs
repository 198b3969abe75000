//! Types shared by the kernel programs (`tcpq-ebpf`) and the agent.
//!
//! Everything here is `#[repr(C)]`, has no implicit padding and uses integer
//! flags instead of `bool`, so both sides agree on the bytes. The `user`
//! feature adds `aya::Pod` so the agent can put these types in maps and
//! globals.
#![no_std]

pub mod accepted;
pub mod config;
pub mod event;
pub mod latency;
pub mod names;
pub mod protos;
pub mod stats;
pub mod storm;

pub use config::Config;
pub use event::{AcceptStats, Event, EventKind};

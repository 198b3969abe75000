//! One module per kernel hook family. Each entry point is thin:
//! `match try_x(ctx) { .. }`; the logic lives in `sock` and `emit`.

mod accept;
mod accept_error;
pub mod backlog;
mod connect;
mod kfunc;
pub mod latency;
mod listen;
mod reset;
mod synack;

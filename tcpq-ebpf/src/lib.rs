// Exists so tcpq-agent can name this crate as a build dependency (cargo then
// rebuilds the agent when the kernel programs change); the programs are the
// `tcpq` binary.
#![no_std]

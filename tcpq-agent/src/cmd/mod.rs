//! Commands: the command line (`cli`), and one file per subcommand, each
//! a thin driver of the engine or of a one-shot read.

pub mod cli;
pub mod config;
pub mod doctor;
pub mod replay;
pub mod run;
pub mod status;
pub mod top;
pub mod trace;

//! `rolloutctl`, the GP Rollout Control operator CLI, as a library so that tests drive the same
//! code the binary runs.
//!
//! - [`cmd`]: the command line ([`cmd::Cli`]), one module per command, and the exit status
//!   ([`cmd::Exit`]).
//! - [`client`]: the connection to the coordinator, its failures explained, List answers read
//!   to the end.
//! - [`hints`]: what to do about a refusal or a failed connection.
//! - [`render`]: what the commands print: one [`render::Printer`] for the output format and a
//!   [`render::View`] per answer.
//! - [`dev`]: `rolloutctl dev up`, the local stack.
//! - [`pki`]: the development PKI.

pub mod client;
pub mod cmd;
pub mod dev;
pub mod hints;
pub mod pki;
pub mod render;

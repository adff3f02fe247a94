//! `rollout-coordinator`: parses the configuration and runs [`rollout_coordinator::serve`].

use std::process::ExitCode;

use clap::Parser;
use mimalloc::MiMalloc;
use rollout_coordinator::{Args, Config, serve};

/// mimalloc rather than the C library's allocator: under many threads answering small calls
/// glibc malloc fragments (after a long history had been applied, it took over a third of a
/// read's CPU in the system benchmark), and mimalloc does not.
#[global_allocator]
static ALLOCATOR: MiMalloc = MiMalloc;

fn main() -> ExitCode {
    let args = Args::parse();
    let (log, listen, health) = (args.log.clone(), args.listen, args.health_listen.clone());
    rollout_net::server::run_binary(
        "rollout-coordinator",
        &log,
        listen,
        &health,
        |listener, health, shutdown| async move {
            serve(Config::try_from(args)?, listener, health, shutdown).await
        },
    )
}

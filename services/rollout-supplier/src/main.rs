//! `rollout-supplier`: parses the configuration and runs [`rollout_supplier::serve`].

use std::process::ExitCode;

use clap::Parser;
use mimalloc::MiMalloc;
use rollout_supplier::{Args, Config, serve};

/// mimalloc rather than the C library's allocator: under many threads answering small calls
/// glibc malloc fragments (after a long history had been applied, it took over a third of a
/// read's CPU in the system benchmark), and mimalloc does not.
#[global_allocator]
static ALLOCATOR: MiMalloc = MiMalloc;

fn main() -> ExitCode {
    let args = Args::parse();
    let (log, listen) = (args.log.clone(), args.listen);
    let (health, metrics) = (args.health_listen.clone(), args.metrics_listen.clone());
    rollout_net::server::run_binary(
        "rollout-supplier",
        &log,
        listen,
        &health,
        &metrics,
        |listeners, shutdown| async move { serve(Config::try_from(args)?, listeners, shutdown).await },
    )
}

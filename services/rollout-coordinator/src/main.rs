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
    let (log, health, metrics, web) = (
        args.log.clone(),
        args.health_listen.clone(),
        args.metrics_listen.clone(),
        args.web_listen.clone(),
    );
    let binary = rollout_net::server::Binary {
        name: "rollout-coordinator",
        log: &log,
        trace: args.trace.export("gprollout-coordinator", vec![]),
        listen: args.listen,
        health: &health,
        metrics: &metrics,
        web: &web,
    };
    rollout_net::server::run_binary(binary, |listeners, shutdown| async move {
        serve(Config::try_from(args)?, listeners, shutdown).await
    })
}

//! `rollout-coordinator`: parses the configuration and runs [`rollout_coordinator::serve`].

use std::process::ExitCode;

use clap::Parser;
use rollout_coordinator::{Args, Config, serve};

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

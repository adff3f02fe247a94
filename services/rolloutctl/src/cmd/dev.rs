//! `rolloutctl dev up`: the local stack ([`crate::dev`]).

use std::{path::PathBuf, time::Duration};

use clap::Subcommand;

use super::Outcome;
use crate::{
    client::usage,
    dev::{self, Layout},
};

/// The local development stack.
#[derive(Debug, Subcommand)]
pub enum Dev {
    /// Start a coordinator and four suppliers (emis, tpp, cegedim, microtest) as separate
    /// processes on loopback with SQLite, the dev PKI and the synthetic national estate; run a
    /// national go-live and halt; keep running until Ctrl-C (or SIGTERM), then stop every
    /// process within the grace period. A second run on the same state directory reuses it.
    Up {
        /// Where the PKI, databases, configuration and logs live.
        #[arg(long, env = "ROLLOUT_DEV_STATE_DIR", default_value = ".gprollout-dev")]
        state_dir: PathBuf,
        /// Coordinator on N, suppliers on N+1..N+4, plaintext health on N+10..N+14, Prometheus
        /// metrics on N+20..N+24, the coordinator's status page (HTTPS) on N+30.
        #[arg(long, env = "ROLLOUT_DEV_PORT_BASE", default_value_t = 50050)]
        port_base: u16,
        /// On Ctrl-C or SIGTERM: each server's --shutdown-grace (the time it has to end its
        /// streams, drain and exit); `dev up` kills a server still running a second after it.
        #[arg(
            long,
            env = "ROLLOUT_SHUTDOWN_GRACE",
            default_value = "10s",
            value_name = "DURATION",
            value_parser = rollout_net::cli::parse_grace
        )]
        shutdown_grace: Duration,
    },
}

impl Dev {
    /// Runs the stack until Ctrl-C.
    pub async fn run(self) -> Outcome {
        let Dev::Up {
            state_dir,
            port_base,
            shutdown_grace,
        } = self;
        if port_base > u16::MAX - 30 {
            return Err(usage(format!(
                "--port-base {port_base} leaves no room for the stack's ports (N to N+30)"
            )));
        }
        dev::up(
            Layout {
                dir: state_dir,
                base: port_base,
            },
            shutdown_grace,
        )
        .await
    }
}

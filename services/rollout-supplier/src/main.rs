//! `rollout-supplier`: parses the configuration and runs [`rollout_supplier::serve`].

use std::process::ExitCode;

use anyhow::Context;
use clap::Parser;
use rollout_supplier::{Args, Config, serve};
use tokio::net::TcpListener;

#[tokio::main]
async fn main() -> ExitCode {
    match run().await {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("rollout-supplier: {e:#}");
            ExitCode::FAILURE
        }
    }
}

async fn run() -> anyhow::Result<()> {
    let args = Args::parse();
    rollout_net::telemetry::init(args.log.log_format, &args.log.log_filter).map_err(anyhow::Error::msg)?;
    rollout_net::tls::install_crypto_provider();
    let listen = args.listen;
    let health = args.health_listen.clone();
    let config = Config::try_from(args)?;
    let listener = TcpListener::bind(listen)
        .await
        .with_context(|| format!("cannot listen on {listen}"))?;
    let health_listener = match health.as_str() {
        "off" => None,
        addr => Some(
            TcpListener::bind(addr)
                .await
                .with_context(|| format!("cannot listen on {addr} (health)"))?,
        ),
    };
    serve(
        config,
        listener,
        health_listener,
        rollout_net::server::shutdown_signal(),
    )
    .await?;
    Ok(())
}

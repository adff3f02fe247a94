//! `rolloutctl`: parses the command line and runs the command.
//!
//! Exit status: 0 success; 1 an error (the message says what to do); 2 a supplier rejected
//! the command, a halt is not verified, or the audit chain is broken; 3 a wait timed out.

use std::{path::PathBuf, process::ExitCode};

use clap::{Parser, Subcommand};
use rolloutctl::ops::{Connection, Op};

/// The GP Rollout Control operator CLI.
#[derive(Debug, Parser)]
#[command(version, about, long_about = None)]
struct Cli {
    #[command(flatten)]
    connection: Connection,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// The development PKI for a local stack and tests.
    Pki {
        #[command(subcommand)]
        command: PkiCommand,
    },
    /// The local development stack.
    Dev {
        #[command(subcommand)]
        command: DevCommand,
    },
    #[command(flatten)]
    Op(Op),
}

#[derive(Debug, Subcommand)]
enum DevCommand {
    /// Start a coordinator and four suppliers (emis, tpp, cegedim, microtest) as separate
    /// processes on loopback with SQLite, the dev PKI and the synthetic national estate; run a
    /// national go-live and halt; keep running until Ctrl-C. A second run on the same state
    /// directory reuses it.
    Up {
        /// Where the PKI, databases, configuration and logs live.
        #[arg(long, env = "ROLLOUT_DEV_STATE_DIR", default_value = ".gprollout-dev")]
        state_dir: PathBuf,
        /// Coordinator on N, suppliers on N+1..N+4, plaintext health on N+10..N+14.
        #[arg(long, env = "ROLLOUT_DEV_PORT_BASE", default_value_t = 50050)]
        port_base: u16,
    },
}

#[derive(Debug, Subcommand)]
enum PkiCommand {
    /// Write a development CA and a certificate for every local-stack identity (coordinator,
    /// suppliers emis, tpp, cegedim, microtest with their backend and practice-admin clients,
    /// operators alice and bob, auditor, viewer) as DIR/NAME.pem and DIR/NAME-key.pem.
    Init {
        /// Directory to write; created if missing.
        #[arg(long)]
        dir: PathBuf,
        /// Overwrite the files of a directory that is not empty.
        #[arg(long)]
        force: bool,
    },
}

fn block_on(f: impl std::future::Future<Output = rolloutctl::ops::Outcome>) -> Result<ExitCode, String> {
    rollout_net::tls::install_crypto_provider();
    match tokio::runtime::Builder::new_current_thread().enable_all().build() {
        Ok(rt) => rt.block_on(f).map_err(|e| e.to_string()),
        Err(e) => Err(format!("cannot start the runtime: {e}")),
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Pki {
            command: PkiCommand::Init { dir, force },
        } => rolloutctl::pki::init(&dir, force)
            .map(|files| {
                println!("wrote {} files to {}", files.len(), dir.display());
                ExitCode::SUCCESS
            })
            .map_err(|e| e.to_string()),
        Command::Op(op) => block_on(rolloutctl::ops::run(&cli.connection, op)),
        Command::Dev {
            command: DevCommand::Up { state_dir, port_base },
        } => {
            if port_base > u16::MAX - 20 {
                Err(format!(
                    "--port-base {port_base} leaves no room for the stack's 15 ports"
                ))
            } else {
                block_on(rolloutctl::dev::up(rolloutctl::dev::Layout {
                    dir: state_dir,
                    base: port_base,
                }))
            }
        }
    };
    match result {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}

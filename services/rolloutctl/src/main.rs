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
    #[command(flatten)]
    Op(Op),
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
        Command::Op(op) => {
            rollout_net::tls::install_crypto_provider();
            match tokio::runtime::Builder::new_current_thread().enable_all().build() {
                Ok(rt) => rt
                    .block_on(rolloutctl::ops::run(&cli.connection, op))
                    .map_err(|e| e.to_string()),
                Err(e) => Err(format!("cannot start the runtime: {e}")),
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

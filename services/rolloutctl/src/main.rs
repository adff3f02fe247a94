//! `rolloutctl`: parses the command line and runs the command.

use std::{path::PathBuf, process::ExitCode};

use clap::{Parser, Subcommand};

/// The GP Rollout Control operator CLI.
#[derive(Debug, Parser)]
#[command(version, about, long_about = None)]
struct Cli {
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
}

#[derive(Debug, Subcommand)]
enum PkiCommand {
    /// Write a development CA and a certificate for every local-stack identity (coordinator,
    /// suppliers emis, tpp, cegedim, microtest with their backend and practice-admin clients,
    /// operators alice and bob, auditor, viewer) as DIR/NAME.pem and DIR/NAME-key.pem.
    Init {
        /// Directory to write; created if missing.
        #[arg(long, env = "ROLLOUT_PKI_DIR")]
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
        } => rolloutctl::pki::init(&dir, force).map(|files| {
            println!("wrote {} files to {}", files.len(), dir.display());
        }),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}

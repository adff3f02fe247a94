//! `rolloutctl`: parses the command line and runs the command (see [`rolloutctl::cmd`]).

use std::process::ExitCode;

use clap::Parser;
use rolloutctl::cmd::Cli;

fn main() -> ExitCode {
    Cli::parse().run()
}

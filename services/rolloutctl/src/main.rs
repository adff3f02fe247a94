//! `rolloutctl`: parses the command line and runs the command (see [`rolloutctl::cmd`]).

use std::process::ExitCode;

fn main() -> ExitCode {
    rolloutctl::cmd::main()
}

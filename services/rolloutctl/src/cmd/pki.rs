//! `rolloutctl pki init`: the development PKI ([`crate::pki`]).

use std::path::PathBuf;

use clap::Subcommand;

use super::{Exit, Outcome};
use crate::{client::local, render::Printer};

/// The development PKI.
#[derive(Debug, Subcommand)]
pub enum Pki {
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

impl Pki {
    /// Writes the PKI.
    pub fn run(self, out: &mut Printer) -> Outcome {
        let Pki::Init { dir, force } = self;
        let files = crate::pki::init(&dir, force).map_err(|e| local(e.to_string()))?;
        out.line(format_args!("wrote {} files to {}", files.len(), dir.display()))?;
        Ok(Exit::Success)
    }
}

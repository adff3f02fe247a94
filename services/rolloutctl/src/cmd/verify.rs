//! `rolloutctl verify`: whether any practice in a halt's scope is still enabled anywhere.

use clap::Args;
use rollout_proto::v1 as pb;

use super::{Ctx, Exit, Outcome, command_name};
use crate::client::CliError;

/// `verify`.
#[derive(Debug, Args)]
pub struct Verify {
    /// The halt's command id.
    command: String,
}

impl Verify {
    /// Verifies the halt and prints the answer: [`Exit::CheckFailed`] unless verified.
    pub async fn run(self, ctx: &mut Ctx) -> Outcome {
        let r = check(ctx, &command_name(&self.command)).await?;
        ctx.out.print(&r)?;
        Ok(exit(&r))
    }
}

/// Asks the coordinator to verify the halt `name`.
pub async fn check(ctx: &mut Ctx, name: &str) -> Result<pb::VerifyCommandResponse, CliError> {
    Ok(ctx
        .client
        .verify_command(pb::VerifyCommandRequest {
            name: name.to_owned(),
            ..Default::default()
        })
        .await?
        .into_inner())
}

/// [`Exit::Success`] for a verified halt, else [`Exit::CheckFailed`]: the coordinator never
/// verifies a lifted halt, one whose scope covers no practice, one a supplier did not answer
/// for, or one with a practice in scope still enabled.
pub fn exit(r: &pb::VerifyCommandResponse) -> Exit {
    if r.verified {
        Exit::Success
    } else {
        Exit::CheckFailed
    }
}

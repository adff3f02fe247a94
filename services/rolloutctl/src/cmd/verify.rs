//! `rolloutctl verify`: whether any practice in a halt's scope is still enabled anywhere.

use clap::Args;
use rollout_proto::v1 as pb;

use super::{Ctx, Exit, Outcome, command_name};

/// `verify`.
#[derive(Debug, Args)]
pub struct Verify {
    /// The halt's command id.
    command: String,
}

impl Verify {
    /// Verifies the halt.
    pub async fn run(self, ctx: &mut Ctx) -> Outcome {
        check(ctx, &command_name(&self.command)).await
    }
}

/// Verifies the halt `name` and prints the answer: [`Exit::CheckFailed`] unless verified.
pub async fn check(ctx: &mut Ctx, name: &str) -> Outcome {
    let r = ctx
        .client
        .verify_command(pb::VerifyCommandRequest {
            name: name.to_owned(),
        })
        .await?
        .into_inner();
    ctx.out.print(&r)?;
    Ok(if r.verified {
        Exit::Success
    } else {
        Exit::CheckFailed
    })
}

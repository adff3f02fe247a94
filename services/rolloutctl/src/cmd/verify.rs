//! `rolloutctl verify`: each supplier's outcome for a halt, and what happens meanwhile where
//! it is not verified.

use std::time::Duration;

use clap::Args;
use rollout_proto::v1 as pb;

use super::{Ctx, Exit, Outcome, command_name};
use crate::client::{CliError, Client};

/// `verify`.
#[derive(Debug, Args)]
pub struct Verify {
    /// The halt's command id.
    command: String,
    /// How long each supplier has to answer; one that has not is UNREACHABLE. The suppliers
    /// are asked at once, so verify answers within about this long. From 100ms to 30s.
    #[arg(long, default_value = "2s", value_parser = supplier_timeout)]
    supplier_timeout: Duration,
}

/// `--supplier-timeout`: a duration from 100ms to 30s (as the coordinator accepts), checked
/// here so that a mistyped value is a usage error (exit 64) before anything is sent.
pub fn supplier_timeout(text: &str) -> Result<Duration, String> {
    let d = humantime::parse_duration(text).map_err(|e| e.to_string())?;
    if (Duration::from_millis(100)..=Duration::from_secs(30)).contains(&d) {
        Ok(d)
    } else {
        Err(format!("{text} is outside 100ms to 30s"))
    }
}

impl Verify {
    /// Verifies the halt and prints the answer: [`Exit::CheckFailed`] unless verified.
    pub async fn run(self, ctx: &mut Ctx) -> Outcome {
        let r = check(
            ctx.client.clone(),
            &command_name(&self.command),
            self.supplier_timeout,
            &[],
        )
        .await?;
        ctx.out.print(&r)?;
        Ok(exit(&r))
    }
}

/// Asks the coordinator to verify the halt `name` at `suppliers` (every supplier if empty),
/// each given `supplier_timeout` to answer.
pub async fn check(
    mut client: Client,
    name: &str,
    supplier_timeout: Duration,
    suppliers: &[String],
) -> Result<pb::VerifyCommandResponse, CliError> {
    Ok(client
        .verify_command(pb::VerifyCommandRequest {
            name: name.to_owned(),
            supplier_timeout: prost_types::Duration::try_from(supplier_timeout).ok(),
            suppliers: suppliers.to_vec(),
        })
        .await?
        .into_inner())
}

/// [`Exit::Success`] for a verified halt, else [`Exit::CheckFailed`]: the coordinator never
/// verifies a lifted halt, one whose scope covers no practice, one a supplier with practices
/// in scope has not applied or did not answer for, or one with a practice in scope still
/// enabled.
pub fn exit(r: &pb::VerifyCommandResponse) -> Exit {
    if r.verified {
        Exit::Success
    } else {
        Exit::CheckFailed
    }
}

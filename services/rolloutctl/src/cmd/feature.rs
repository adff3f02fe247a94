//! `rolloutctl feature create|list`: feature definitions.

use std::time::Duration;

use clap::{Args, Subcommand, ValueEnum};
use rollout_proto::v1 as pb;

use super::{Ctx, Outcome, RequestId};
use crate::client::pages;

/// Feature definitions.
#[derive(Debug, Subcommand)]
pub enum Feature {
    /// Define a feature (delivered to every supplier).
    Create(Create),
    /// Every feature.
    List,
}

/// `feature create`.
#[derive(Debug, Args)]
pub struct Create {
    /// The feature key, a lower-case slug.
    #[arg(value_name = "KEY")]
    feature: String,
    /// What a supplier serves when it has lost contact with the coordinator.
    #[arg(long, value_enum)]
    fail_mode: FailMode,
    /// For --fail-mode closed: how long without contact before off (10s to 7d).
    #[arg(long, value_parser = humantime::parse_duration)]
    control_ttl: Option<Duration>,
    /// Approvals a resume or go-live needs (1 to 5).
    #[arg(long, default_value_t = 1)]
    approvals: i32,
    /// What it is.
    #[arg(long, default_value = "")]
    description: String,
    /// Why it is being defined.
    #[arg(long)]
    reason: String,
    #[command(flatten)]
    request_id: RequestId,
}

/// A feature's fail mode.
#[derive(Debug, Clone, Copy, ValueEnum)]
enum FailMode {
    /// Keep serving when out of contact.
    Static,
    /// Off after the control TTL.
    Closed,
}

impl From<FailMode> for pb::FailMode {
    fn from(mode: FailMode) -> pb::FailMode {
        match mode {
            FailMode::Static => pb::FailMode::Static,
            FailMode::Closed => pb::FailMode::Closed,
        }
    }
}

impl Feature {
    /// Creates or lists.
    pub async fn run(self, ctx: &mut Ctx) -> Outcome {
        match self {
            Feature::Create(create) => create.run(ctx).await,
            Feature::List => {
                let r: pb::ListFeaturesResponse = pages(
                    &ctx.client,
                    usize::MAX,
                    1_000,
                    |mut c, page_token, page_size| async move {
                        c.list_features(pb::ListFeaturesRequest {
                            page_size,
                            page_token,
                        })
                        .await
                    },
                )
                .await?;
                ctx.print(&r)
            }
        }
    }
}

impl Create {
    async fn run(self, ctx: &mut Ctx) -> Outcome {
        let feature = pb::Feature {
            description: self.description,
            fail_mode: pb::FailMode::from(self.fail_mode).into(),
            control_ttl: self
                .control_ttl
                .and_then(|d| prost_types::Duration::try_from(d).ok()),
            approvals_required: self.approvals,
            ..Default::default()
        };
        let f = ctx
            .client
            .create_feature(pb::CreateFeatureRequest {
                feature_id: self.feature,
                feature: Some(feature),
                reason: self.reason,
                request_id: self.request_id.into(),
            })
            .await?
            .into_inner();
        ctx.print(&f)
    }
}

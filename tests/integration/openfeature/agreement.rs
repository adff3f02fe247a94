//! ResolveBoolean (v1 and v2) and ResolveAll say what GetPracticeFeature says, for every practice
//! of the synthetic estate in every state; and the protocol's errors.

use std::{collections::BTreeMap, time::Duration};

use prost_types::{Struct, Value, value::Kind};
use rollout_core::{Scope, SupplierId};
use rollout_proto::v1::control_service_client::ControlServiceClient;
use rollout_proto::{
    flagd::evaluation::{v1, v2},
    v1::{self as pb, practice_feature::Reason as R, practice_feature::State as S},
};
use tonic::{Code, transport::Channel};

use crate::support::{
    FEATURE, assert_refused, channel_as, define, feature_name, go_live, halt, practice_feature,
    reference_estate,
    supplier::{EMIS_B, EMIS_CLOSED, apply, control, emis, toggle},
};

/// The evaluation context of a practice.
fn context(ods: &str) -> Struct {
    Struct {
        fields: BTreeMap::from([(
            "targetingKey".to_owned(),
            Value {
                kind: Some(Kind::StringValue(ods.to_owned())),
            },
        )]),
    }
}

/// A string field of flagd metadata.
fn text<'a>(metadata: Option<&'a Struct>, key: &str) -> Option<&'a str> {
    match metadata?.fields.get(key)?.kind.as_ref()? {
        Kind::StringValue(s) => Some(s),
        _ => None,
    }
}

/// What flagd must say for an answer: value, variant, reason, metadata reason, deciding command.
type Expected = (bool, String, String, String, Option<String>);

fn expected(p: &pb::PracticeFeature) -> Expected {
    let (value, variant, reason) = match p.state() {
        S::Enabled => (true, "enabled", "TARGETING_MATCH"),
        S::Disabled => (false, "disabled", "TARGETING_MATCH"),
        _ => (false, "unknown", "UNKNOWN"),
    };
    let deciding = p
        .rules
        .iter()
        .find(|r| r.deciding && !r.command.is_empty())
        .map(|r| r.command.clone());
    (
        value,
        variant.into(),
        reason.into(),
        p.reason().as_str_name().trim_start_matches("REASON_").into(),
        deciding,
    )
}

struct Clients {
    toggle: rollout_proto::v1::toggle_service_client::ToggleServiceClient<Channel>,
    v1: v1::service_client::ServiceClient<Channel>,
    v2: v2::service_client::ServiceClient<Channel>,
    emis: Vec<String>,
    /// The coordinator's heartbeat (its client and latest sequence), sent before the reference
    /// is read and every [`HEARTBEAT_EVERY`] practices, so that a fail-closed feature with the
    /// shortest TTL stays in contact however slowly a pass goes; none once the test wants
    /// control to go stale.
    heartbeat: Option<(ControlServiceClient<Channel>, i64)>,
}

/// Practices compared between two heartbeats.
const HEARTBEAT_EVERY: usize = 100;

impl Clients {
    /// Compares every EMIS practice's three answers; returns how many practices had each
    /// (state, reason).
    async fn agree(&mut self) -> BTreeMap<(S, R), usize> {
        self.beat().await;
        let names = self.emis.iter().map(|o| practice_feature(o)).collect();
        let reference = self
            .toggle
            .batch_get_practice_features(pb::BatchGetPracticeFeaturesRequest { names, explain: true })
            .await
            .expect("batch get")
            .into_inner()
            .practice_features;
        let mut seen = BTreeMap::new();
        for (i, (ods, p)) in self.emis.clone().iter().zip(&reference).enumerate() {
            if i % HEARTBEAT_EVERY == HEARTBEAT_EVERY - 1 {
                self.beat().await;
            }
            *seen.entry((p.state(), p.reason())).or_default() += 1;
            let want = expected(p);
            let a = self
                .v2
                .resolve_boolean(v2::ResolveBooleanRequest {
                    flag_key: FEATURE.into(),
                    context: Some(context(ods)),
                })
                .await
                .expect("v2 resolve")
                .into_inner();
            let m = a.metadata.as_ref();
            let got = (
                a.value.expect("v2 value is always sent"),
                a.variant.clone().expect("v2 variant is always sent"),
                a.reason.clone(),
                text(m, "reason").unwrap_or_default().to_owned(),
                text(m, "decidingCommand").map(str::to_owned),
            );
            assert_eq!(got, want, "v2 for {ods}: {p:?}");
            assert_eq!(text(m, "supplier"), Some("emis"));
            assert_eq!(
                m.and_then(|m| m.fields.get("appliedSequence")?.kind.clone()),
                Some(Kind::NumberValue(p.applied_sequence as f64)),
            );
            let b = self
                .v1
                .resolve_boolean(v1::ResolveBooleanRequest {
                    flag_key: FEATURE.into(),
                    context: Some(context(ods)),
                })
                .await
                .expect("v1 resolve")
                .into_inner();
            assert_eq!(
                (b.value, &b.variant, &b.reason, &b.metadata),
                (
                    a.value.unwrap_or(!want.0),
                    &a.variant.unwrap_or_default(),
                    &a.reason,
                    &a.metadata
                ),
                "v1 for {ods}"
            );
        }
        seen
    }

    /// Sends the coordinator's heartbeat, if the test keeps control fresh.
    async fn beat(&mut self) {
        if let Some((control, target)) = &mut self.heartbeat {
            control
                .get_sync_state(pb::GetSyncStateRequest {
                    target_sequence: *target,
                })
                .await
                .expect("heartbeat");
        }
    }

    async fn resolve_all(&mut self, ods: &str) -> BTreeMap<String, v1::AnyFlag> {
        self.v1
            .resolve_all(v1::ResolveAllRequest {
                context: Some(context(ods)),
            })
            .await
            .expect("resolve all")
            .into_inner()
            .flags
            .into_iter()
            .collect()
    }
}

#[tokio::test]
async fn flagd_answers_agree_with_get_practice_feature_in_every_state() {
    let (_tmp, files, server) = emis().await;
    let channel = channel_as(&files.pki, "backend-emis", server.addr);
    let emis_id = SupplierId::parse("emis").expect("supplier");
    let mut c = Clients {
        toggle: toggle(&files, "backend-emis", &server),
        v1: v1::service_client::ServiceClient::new(channel.clone()),
        v2: v2::service_client::ServiceClient::new(channel),
        emis: reference_estate()
            .for_supplier(&emis_id)
            .practices()
            .map(|p| p.ods.to_string())
            .collect(),
        heartbeat: None,
    };
    let mut control = control(&files, &server);

    // Never synchronised: every practice UNKNOWN, false, "unknown".
    let seen = c.agree().await;
    assert_eq!(
        seen.keys().collect::<Vec<_>>(),
        [&(S::Unknown, R::NeverSynchronised)]
    );

    // Defined, fail-closed with the shortest TTL: not live anywhere (closed practices not active).
    apply(
        &mut control,
        define(1, Some(rollout_core::rules::MIN_CONTROL_TTL)),
    )
    .await;
    c.heartbeat = Some((control.clone(), 1));
    let seen = c.agree().await;
    assert!(seen.contains_key(&(S::Disabled, R::NotLive)), "{seen:?}");
    assert!(
        seen.contains_key(&(S::Disabled, R::PracticeNotActive)),
        "{seen:?}"
    );

    // A go-live scheduled for later: not yet live.
    let later = std::time::SystemTime::now() + Duration::from_secs(3600);
    apply(
        &mut control,
        go_live(2, "golive-later", Scope::National, Some(later)),
    )
    .await;
    c.heartbeat = Some((control.clone(), 2));
    assert!(c.agree().await.contains_key(&(S::Disabled, R::Scheduled)));

    // Live, with one ICB halted and one practice opted out.
    apply(&mut control, go_live(3, "golive-now", Scope::National, None)).await;
    apply(
        &mut control,
        halt(4, "halt-qn7", Scope::Icb("QN7".parse().expect("icb"))),
    )
    .await;
    super::opt_out_emis_b(&files, &server).await;
    c.heartbeat = Some((control.clone(), 4));
    let seen = c.agree().await;
    for state in [
        (S::Enabled, R::Live),
        (S::Disabled, R::Halted),
        (S::Disabled, R::OptedOut),
        (S::Disabled, R::PracticeNotActive),
    ] {
        assert!(seen.contains_key(&state), "{state:?} in {seen:?}");
    }
    let all = c.resolve_all(EMIS_CLOSED).await;
    assert_eq!(all.keys().collect::<Vec<_>>(), [FEATURE]);
    assert_eq!(
        (all[FEATURE].value.clone(), all[FEATURE].variant.as_str()),
        (Some(v1::any_flag::Value::BoolValue(false)), "disabled")
    );

    // Control goes stale (no contact for the TTL): every practice off, CONTROL_STALE. The
    // answers change when the supplier's clock task sees the TTL pass; wait on a watch stream.
    c.heartbeat = None;
    let mut watch = c
        .toggle
        .watch_practice_features(pb::WatchPracticeFeaturesRequest {
            feature: feature_name(),
            practices: vec![crate::support::supplier::EMIS_A.into()],
            start_version: 0,
        })
        .await
        .expect("watch")
        .into_inner();
    loop {
        let m = tokio::time::timeout(Duration::from_secs(60), watch.message())
            .await
            .expect("staleness is published within the TTL")
            .expect("stream")
            .expect("message");
        if m.practice_features.iter().any(|p| p.reason() == R::ControlStale) {
            break;
        }
    }
    let seen = c.agree().await;
    assert!(seen.contains_key(&(S::Disabled, R::ControlStale)), "{seen:?}");
    assert!(!seen.contains_key(&(S::Enabled, R::Live)), "{seen:?}");
    server.stop().await;
}

#[tokio::test]
async fn flagd_errors_are_the_codes_providers_expect() {
    let (_tmp, files, server) = emis().await;
    let mut control = control(&files, &server);
    apply(&mut control, define(1, None)).await;
    apply(&mut control, go_live(2, "golive-1", Scope::National, None)).await;
    let channel = channel_as(&files.pki, "backend-emis", server.addr);
    let mut c = v2::service_client::ServiceClient::new(channel.clone());
    let ask = |flag: &str, ctx: Option<Struct>| v2::ResolveBooleanRequest {
        flag_key: flag.into(),
        context: ctx,
    };

    // An unknown feature, and a key that could never be one: NOT_FOUND (flag not found).
    for flag in ["no-such-feature", "Not A Key!"] {
        let e = c
            .resolve_boolean(ask(flag, Some(context(EMIS_B))))
            .await
            .expect_err(flag);
        assert_eq!(e.code(), Code::NotFound, "{flag}: {e:?}");
    }
    // No targeting key, one that is not a string, one that is not an ODS code.
    let number = Struct {
        fields: BTreeMap::from([(
            "targetingKey".to_owned(),
            Value {
                kind: Some(Kind::NumberValue(1.0)),
            },
        )]),
    };
    for ctx in [
        None,
        Some(Struct::default()),
        Some(number),
        Some(context("not-a-code!")),
    ] {
        let e = c
            .resolve_boolean(ask(FEATURE, ctx.clone()))
            .await
            .expect_err("bad context");
        assert_eq!(e.code(), Code::InvalidArgument, "{ctx:?}: {e:?}");
        assert!(e.message().contains("targetingKey"), "{}", e.message());
    }
    // Only boolean flags exist: every other type is a type mismatch; an unknown one not found.
    let e = c
        .resolve_string(v2::ResolveStringRequest {
            flag_key: FEATURE.into(),
            context: Some(context(EMIS_B)),
        })
        .await
        .expect_err("string");
    assert_refused(&e, Code::InvalidArgument, "TYPE_MISMATCH", "a string resolve");
    let e = c
        .resolve_int(v2::ResolveIntRequest {
            flag_key: "no-such-feature".into(),
            context: Some(context(EMIS_B)),
        })
        .await
        .expect_err("int");
    assert_eq!(e.code(), Code::NotFound);

    // A practice of another supplier: the fail-closed answer, never NOT_FOUND (which providers
    // turn into the caller's code default).
    let tpp = reference_estate()
        .for_supplier(&SupplierId::parse("tpp").expect("tpp"))
        .practices()
        .find(|p| p.status == rollout_core::PracticeStatus::Active)
        .map(|p| p.ods.to_string())
        .expect("a TPP practice");
    let a = c
        .resolve_boolean(ask(FEATURE, Some(context(&tpp))))
        .await
        .expect("not held")
        .into_inner();
    assert_eq!(
        (a.value, a.variant.as_deref(), a.reason.as_str()),
        (Some(false), Some("unknown"), "UNKNOWN")
    );
    assert_eq!(text(a.metadata.as_ref(), "reason"), Some("PRACTICE_NOT_HELD"));

    // Backends only.
    for who in ["practice-admin-emis", "viewer", "coordinator"] {
        let mut other = v2::service_client::ServiceClient::new(channel_as(&files.pki, who, server.addr));
        let e = other
            .resolve_boolean(ask(FEATURE, Some(context(EMIS_B))))
            .await
            .expect_err(who);
        assert_eq!(e.code(), Code::PermissionDenied, "{who}: {e:?}");
    }
    server.stop().await;
}

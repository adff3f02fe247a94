//! What an approver sees: a resume's lifted halts and the preview of its effect, held to the
//! suppliers' own answers once it is applied.

use std::{collections::BTreeMap, time::Duration};

use rollout_core::{PracticeStatus, RegionCode};
use rollout_proto::v1::{self as pb, practice_feature::Reason as R, practice_feature::State as S};

use crate::{
    stack::{Stack, delivered, feature_live, halt},
    support::{FEATURE, feature_name, supplier::settings},
};

fn region(code: &str) -> pb::Scope {
    pb::Scope {
        target: Some(pb::scope::Target::Region(code.into())),
    }
}

fn icb(code: &str) -> pb::Scope {
    pb::Scope {
        target: Some(pb::scope::Target::Icb(code.into())),
    }
}

/// What a supplier answers for the practices of one region, counted the way a preview counts.
async fn answers_in(stack: &Stack, supplier: &str, region: &str) -> pb::preview::SupplierPreview {
    let page = stack
        .backend(supplier)
        .list_practice_features(pb::ListPracticeFeaturesRequest {
            feature: feature_name(),
            region: region.into(),
            page_size: 5_000,
            ..Default::default()
        })
        .await
        .expect("list")
        .into_inner();
    assert!(page.next_page_token.is_empty(), "one page holds the region");
    let mut c = pb::preview::SupplierPreview {
        supplier: format!("suppliers/{supplier}"),
        practices: i32::try_from(page.practice_features.len()).expect("count"),
        ..Default::default()
    };
    for p in &page.practice_features {
        let slot = match (p.state(), p.reason()) {
            (S::Enabled, _) => &mut c.turn_on,
            (_, R::Halted) => &mut c.stay_off_halted,
            (_, R::OptedOut) => &mut c.stay_off_opted_out,
            (_, R::PracticeNotActive) => &mut c.stay_off_not_active,
            (_, R::Scheduled) => &mut c.stay_off_scheduled,
            (_, R::NotLive) => &mut c.stay_off_not_live,
            other => panic!("{} answered {other:?}", p.name),
        };
        *slot += 1;
    }
    c
}

#[tokio::test]
async fn a_resume_preview_counts_what_the_suppliers_answer_once_it_is_applied() {
    let stack = Stack::start(None).await;
    feature_live(&stack).await;

    // A region, an ICB inside it, and two active EMIS practices of the region outside that ICB.
    let first = stack
        .estate
        .practices()
        .find(|p| p.supplier.as_str() == "emis" && p.status == PracticeStatus::Active)
        .expect("an EMIS practice");
    let region_code: RegionCode = first.region;
    let inner = first.icb;
    let opted: Vec<String> = stack
        .estate
        .practices()
        .filter(|p| {
            p.supplier.as_str() == "emis"
                && p.status == PracticeStatus::Active
                && p.region == region_code
                && p.icb != inner
        })
        .take(2)
        .map(|p| p.ods.to_string())
        .collect();
    assert_eq!(opted.len(), 2, "two EMIS practices in the region outside the ICB");
    let outer = halt(&stack, region(region_code.as_str())).await;
    let overlapping = halt(&stack, icb(inner.as_str())).await;
    delivered(&stack, &outer.name).await;
    delivered(&stack, &overlapping.name).await;

    let (files, running, _) = &stack.suppliers["emis"];
    let mut admin = settings(files, "practice-admin-emis", running.as_ref().expect("emis runs"));
    for ods in &opted {
        admin
            .set_practice_opt_out(pb::SetPracticeOptOutRequest {
                opt_out: Some(pb::PracticeOptOut {
                    name: format!("practices/{ods}/features/{FEATURE}/optOut"),
                    reason: "the practice asked".into(),
                    source: "letter from the practice manager".into(),
                    ..Default::default()
                }),
                request_id: String::new(),
            })
            .await
            .expect("opt out");
    }
    // The preview reads the national register: wait until it holds both.
    let end = tokio::time::Instant::now() + Duration::from_secs(20);
    loop {
        let register = stack
            .client("viewer")
            .list_opt_outs(pb::ListOptOutsRequest {
                feature: feature_name(),
                ..Default::default()
            })
            .await
            .expect("register")
            .into_inner();
        if register.opt_outs.len() == 2 {
            break;
        }
        assert!(tokio::time::Instant::now() < end, "register: {register:?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    let mut alice = stack.client("alice");
    let request = pb::ResumeFeatureRequest {
        name: feature_name(),
        halts: vec![outer.name.clone()],
        reason: "the region is clear".into(),
        request_id: String::new(),
        dry_run: true,
    };
    let dry = alice
        .resume_feature(request.clone())
        .await
        .expect("dry run")
        .into_inner();
    let pending = alice
        .resume_feature(pb::ResumeFeatureRequest {
            dry_run: false,
            ..request
        })
        .await
        .expect("resume")
        .into_inner();
    let shown = stack
        .client("viewer")
        .get_command(pb::GetCommandRequest {
            name: pending.name.clone(),
        })
        .await
        .expect("get command")
        .into_inner();

    // The approver sees the halt lifted, with its scope, reason and requester.
    assert_eq!(shown.lifted_halts.len(), 1, "{shown:?}");
    let lifted = &shown.lifted_halts[0];
    assert_eq!(lifted.command, outer.name);
    assert_eq!(lifted.reason, "halted until further notice");
    assert_eq!(lifted.requester, outer.requester);
    let summary = lifted.scope.as_ref().expect("scope");
    assert_eq!(summary.kind(), pb::scope_summary::Kind::Region);
    assert_eq!(summary.target, region_code.as_str());

    let preview = shown.preview.expect("a pending resume has a preview");
    let dry_preview = dry.preview.expect("a dry run has a preview");
    let per = |p: &pb::Preview| -> BTreeMap<String, (i32, i32, i32, i32, i32)> {
        p.suppliers
            .iter()
            .map(|s| {
                let key = (
                    s.practices,
                    s.turn_on,
                    s.stay_off_halted,
                    s.stay_off_opted_out,
                    s.stay_off_not_active,
                );
                (s.supplier.clone(), key)
            })
            .collect()
    };
    assert_eq!(per(&preview), per(&dry_preview), "the dry run previews the same");
    let emis = preview
        .suppliers
        .iter()
        .find(|s| s.supplier == "suppliers/emis")
        .expect("emis has practices in the region");
    assert_eq!(emis.stay_off_opted_out, 2, "{emis:?}");
    assert!(emis.stay_off_halted > 0, "the ICB halt holds some off: {emis:?}");
    assert!(emis.turn_on > 0, "{emis:?}");
    assert_eq!(emis.already_on, 0, "the region is halted now");

    // Approved and applied, every supplier answers what the preview said.
    stack
        .client("bob")
        .approve_command(pb::ApproveCommandRequest {
            name: pending.name.clone(),
            comment: "checked the preview".into(),
            request_id: String::new(),
        })
        .await
        .expect("approve");
    delivered(&stack, &pending.name).await;
    for s in &preview.suppliers {
        let id = s.supplier.trim_start_matches("suppliers/");
        let answered = answers_in(&stack, id, region_code.as_str()).await;
        assert_eq!(
            answered,
            pb::preview::SupplierPreview {
                already_on: 0,
                ..s.clone()
            },
            "{id}: what the preview said against what the supplier answers"
        );
    }
    let total: i32 = preview.suppliers.iter().map(|s| s.turn_on).sum();
    assert_eq!(preview.turn_on, total);
    stack.stop().await;
}

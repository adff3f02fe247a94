//! The halts in force a supplier has not applied: GetSupplier and ListSuppliers list them with
//! the supplier while it is out of contact (a halt lifted meanwhile no longer), and the list
//! empties once it is back and has applied them.

use std::time::Duration;

use rollout_proto::v1 as pb;

use crate::{
    stack::{Stack, feature_live, halt, suppliers_until},
    support::FEATURE,
};

fn icb(code: &str) -> pb::Scope {
    pb::Scope {
        target: Some(pb::scope::Target::Icb(code.into())),
    }
}

async fn get_supplier(stack: &Stack, id: &str) -> pb::Supplier {
    stack
        .client("viewer")
        .get_supplier(pb::GetSupplierRequest {
            name: format!("suppliers/{id}"),
        })
        .await
        .expect("get supplier")
        .into_inner()
}

/// Issues a resume of `halt` as alice and has bob approve it, which dispatches it.
async fn lift(stack: &Stack, halt: &pb::Command) {
    let resume = stack
        .client("alice")
        .resume_feature(pb::ResumeFeatureRequest {
            name: format!("features/{FEATURE}"),
            halts: vec![halt.name.clone()],
            reason: "lifted".into(),
            ..Default::default()
        })
        .await
        .expect("resume")
        .into_inner();
    let approved = stack
        .client("bob")
        .approve_command(pb::ApproveCommandRequest {
            name: resume.name,
            comment: "agreed".into(),
            request_id: String::new(),
        })
        .await
        .expect("approve")
        .into_inner();
    assert_eq!(approved.state(), pb::command::State::Dispatched);
}

#[tokio::test]
async fn a_stopped_supplier_lists_the_halts_it_has_not_applied_until_it_applies_them() {
    let mut stack = Stack::start(None).await;
    feature_live(&stack).await;
    let synced = suppliers_until(&stack, Duration::from_secs(30), "synced", |list| {
        list.iter().all(|s| s.applied_sequence == s.target_sequence)
    })
    .await;
    for s in &synced {
        assert_eq!((s.unapplied_halt_count, s.unapplied_halts.len()), (0, 0), "{s:?}");
    }

    stack.stop_supplier("tpp").await;
    let kept = halt(&stack, icb("QN7")).await;
    let lifted = halt(&stack, icb("QNT")).await;
    lift(&stack, &lifted).await;
    let expected = vec![pb::supplier::UnappliedHalt {
        command: kept.name.clone(),
        sequence: kept.sequence,
        feature: format!("features/{FEATURE}"),
        create_time: kept.create_time,
    }];
    assert!(kept.create_time.is_some(), "{kept:?}");
    let tpp = get_supplier(&stack, "tpp").await;
    assert_eq!(tpp.unapplied_halts, expected, "the lifted halt is not listed");
    assert_eq!(tpp.unapplied_halt_count, 1);

    // The others apply all three; tpp, in ListSuppliers too, still has the one halt to apply.
    let list = suppliers_until(&stack, Duration::from_secs(30), "applied by the others", |list| {
        list.iter()
            .filter(|s| s.name != "suppliers/tpp")
            .all(|s| s.applied_sequence == s.target_sequence)
    })
    .await;
    for s in &list {
        if s.name == "suppliers/tpp" {
            assert_eq!(s.unapplied_halts, expected, "{s:?}");
            assert_eq!(s.unapplied_halt_count, 1, "{s:?}");
            assert!(s.applied_sequence < kept.sequence, "{s:?}");
        } else {
            assert_eq!((s.unapplied_halt_count, s.unapplied_halts.len()), (0, 0), "{s:?}");
        }
    }

    stack.start_supplier("tpp").await;
    let list = suppliers_until(&stack, Duration::from_secs(30), "applied by tpp", |list| {
        list.iter()
            .any(|s| s.name == "suppliers/tpp" && s.applied_sequence == s.target_sequence)
    })
    .await;
    let tpp = list
        .iter()
        .find(|s| s.name == "suppliers/tpp")
        .expect("tpp listed");
    assert_eq!(
        (tpp.unapplied_halt_count, tpp.unapplied_halts.len()),
        (0, 0),
        "{tpp:?}"
    );
    let tpp = get_supplier(&stack, "tpp").await;
    assert_eq!(
        (tpp.unapplied_halt_count, tpp.unapplied_halts.len()),
        (0, 0),
        "{tpp:?}"
    );
    stack.stop().await;
}

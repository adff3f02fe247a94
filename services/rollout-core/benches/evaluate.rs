//! Evaluation micro-benchmarks (criterion): one practice against 1,000 active rules of mixed
//! scopes, and the largest supplier's whole list (EMIS, 3,441 practices) evaluated once.
//!
//! Run: `cargo bench -p rollout-core --bench evaluate`.

use std::{
    hint::black_box,
    time::{Duration, SystemTime},
};

use criterion::{Criterion, criterion_group, criterion_main};
use rollout_core::{
    Action, Command, CommandId, Context, Estate, FailMode, FeatureDef, FeatureKey, PracticeStatus, RuleBook,
    Scope, Source, evaluate,
};

fn estate() -> Estate {
    Estate::parse(
        Source {
            name: "epraccur.csv",
            bytes: include_bytes!("../../../data/epraccur.csv"),
        },
        Source {
            name: "gp-system-suppliers.csv",
            bytes: include_bytes!("../../../data/gp-system-suppliers.csv"),
        },
    )
    .expect("the synthetic estate")
}

/// A rule book with one feature and `n` active rules: go-lives and halts over every scope kind
/// (national, supplier, region, ICB, sub-ICB, and practice lists), none lifted.
fn book(estate: &Estate, n: usize) -> RuleBook {
    let key = FeatureKey::parse("prospective-record-access").expect("key");
    let mut book = RuleBook::new();
    let command = |sequence: u64, action: Action| Command {
        id: CommandId::parse(&format!("c{sequence}")).expect("id"),
        sequence,
        feature: key.clone(),
        action,
        reason: "benchmark".into(),
        requester: "alice".into(),
        issued_at: SystemTime::UNIX_EPOCH,
        approved_by: vec![],
        redelivery_of: None,
        supplier: None,
    };
    book.apply(
        &command(
            1,
            Action::CreateFeature(FeatureDef {
                key: key.clone(),
                description: String::new(),
                fail_mode: FailMode::Static,
                approvals_required: 1,
            }),
        ),
        None,
    )
    .expect("define");
    let practices: Vec<_> = estate.practices().collect();
    for i in 0..n {
        let p = practices[(i * 37) % practices.len()];
        let scope = match i % 6 {
            0 => Scope::National,
            1 => Scope::Supplier(p.supplier.clone()),
            2 => Scope::Region(p.region),
            3 => Scope::Icb(p.icb),
            4 => Scope::SubIcb(p.sub_icb),
            _ => Scope::practices(
                (0..5)
                    .map(|k| practices[(i * 11 + k * 101) % practices.len()].ods.as_str())
                    .collect::<Vec<_>>()
                    .into_iter(),
            )
            .expect("scope"),
        };
        let action = if i % 2 == 0 {
            Action::Halt { scope }
        } else {
            Action::GoLive {
                scope,
                effective_at: None,
            }
        };
        book.apply(&command(i as u64 + 2, action), None).expect("rule");
    }
    book
}

fn benches(c: &mut Criterion) {
    let estate = estate();
    let book = book(&estate, 1_000);
    let key = FeatureKey::parse("prospective-record-access").expect("key");
    let feature = book.feature(&key).expect("feature");
    let ctx = Context {
        now: SystemTime::UNIX_EPOCH + Duration::from_secs(1_800_000_000),
        synchronised: true,
        last_contact: Some(SystemTime::UNIX_EPOCH + Duration::from_secs(1_800_000_000)),
    };
    let practice = estate
        .practices()
        .find(|p| p.status == PracticeStatus::Active)
        .expect("practice");
    c.bench_function("evaluate one practice, 1,000 active rules", |b| {
        b.iter(|| black_box(evaluate(feature, black_box(practice), None, &ctx, false).state))
    });
    c.bench_function("explain one practice, 1,000 active rules", |b| {
        b.iter(|| {
            black_box(
                evaluate(feature, black_box(practice), None, &ctx, true)
                    .rules
                    .len(),
            )
        })
    });
    let emis = estate.for_supplier(&"emis".parse().expect("emis"));
    let list: Vec<_> = emis.practices().take(3_500).collect();
    c.bench_function("evaluate every EMIS practice (3,441)", |b| {
        b.iter(|| {
            list.iter()
                .filter(|p| evaluate(feature, p, None, &ctx, false).state == rollout_core::State::Enabled)
                .count()
        })
    });
}

criterion_group!(evaluation, benches);
criterion_main!(evaluation);

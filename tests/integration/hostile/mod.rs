//! Suppliers are untrusted input. A stub supplier (`stub.rs`, real tonic over real mutual TLS)
//! takes microtest's place beside three real suppliers and answers nonsense: absurd sequences,
//! outcomes that are neither APPLIED nor REJECTED, megabytes of strings, pages without end. The
//! coordinator stays up, keeps only bounded copies, shows that supplier FAULTY with the reason,
//! and every other supplier applies every halt as if nothing were wrong; once the stub answers
//! sensibly again it catches up and is no longer faulty.

mod stub;

use std::time::Duration;

use prost::Message;
use rollout_proto::v1::{self as pb, practice_feature::State as S, verify_command_response::Outcome};
use stub::{Behaviour, StubSupplier};

use crate::{
    shutdown::Process,
    stack::{Stack, delivered, feature_live, halt, national, suppliers_until},
    support::{FEATURE, coordinator_command, feature_name, practice_feature},
};

/// The suppliers that stay real.
const REAL: [&str; 3] = ["emis", "tpp", "cegedim"];

/// Four suppliers with the stub in microtest's place (the real microtest stopped).
async fn with_stub(behaviour: Behaviour, noisy: bool) -> (Stack, StubSupplier) {
    let mut stack = Stack::suppliers(None).await;
    stack.stop_supplier("microtest").await;
    let stub = StubSupplier::start(&stack.pki, "supplier-microtest", behaviour, noisy).await;
    stack.via.insert("microtest", stub.addr);
    (stack, stub)
}

/// A real `rollout-coordinator` process for `stack`, which then talks to it.
async fn coordinator_process(stack: &mut Stack) -> Process {
    let (policy, suppliers) = stack.coordinator_files();
    let database_url = format!("sqlite://{}", stack.coordinator_db.display());
    let mut command = coordinator_command(&stack.pki, &policy, &suppliers, &database_url);
    command.args(["--health-listen", "127.0.0.1:0"]);
    let mut process = Process::spawn(command);
    stack.coordinator_addr = process.addrs("coordinator listening").await.0;
    process
}

/// Follows WatchCommand until each of `by` has applied the command; returns it then.
async fn applied_by(stack: &Stack, name: &str, by: &[&str]) -> pb::Command {
    let mut stream = stack
        .client("viewer")
        .watch_command(pb::WatchCommandRequest { name: name.into() })
        .await
        .expect("watch")
        .into_inner();
    let follow = async {
        loop {
            let c = stream
                .message()
                .await
                .expect("stream")
                .expect("an update")
                .command
                .expect("command");
            let done = by.iter().all(|s| {
                c.deliveries.iter().any(|d| {
                    d.supplier == format!("suppliers/{s}") && d.state() == pb::delivery::State::Applied
                })
            });
            if done {
                return c;
            }
        }
    };
    tokio::time::timeout(Duration::from_secs(20), follow)
        .await
        .unwrap_or_else(|_| panic!("{name} not applied by {by:?} within 20 s"))
}

/// Defines the feature and takes it live nationally (alice asks, bob approves); returns the
/// go-live once the real suppliers applied it.
async fn live_at_the_real_suppliers(stack: &Stack) -> pb::Command {
    let mut alice = stack.client("alice");
    alice
        .create_feature(pb::CreateFeatureRequest {
            feature_id: FEATURE.into(),
            feature: Some(pb::Feature {
                fail_mode: pb::FailMode::Static.into(),
                ..Default::default()
            }),
            reason: "national programme".into(),
            request_id: String::new(),
        })
        .await
        .expect("create feature");
    let live = alice
        .schedule_go_live(pb::ScheduleGoLiveRequest {
            name: feature_name(),
            scope: Some(national()),
            reason: "go live".into(),
            ..Default::default()
        })
        .await
        .expect("go-live")
        .into_inner();
    stack
        .client("bob")
        .approve_command(pb::ApproveCommandRequest {
            name: live.name.clone(),
            ..Default::default()
        })
        .await
        .expect("approve");
    applied_by(stack, &live.name, &REAL).await
}

/// microtest as ListSuppliers shows it once `done` holds for it (within 20 s), and the whole
/// answer.
async fn microtest_until(
    stack: &Stack,
    what: &str,
    done: impl Fn(&pb::Supplier) -> bool,
) -> (pb::Supplier, Vec<pb::Supplier>) {
    let list = suppliers_until(stack, Duration::from_secs(20), what, |list| {
        list.iter().any(|s| s.name == "suppliers/microtest" && done(s))
    })
    .await;
    let microtest = list
        .iter()
        .find(|s| s.name == "suppliers/microtest")
        .cloned()
        .expect("microtest");
    (microtest, list)
}

/// The peak resident memory of a process, in KiB (VmHWM).
fn peak_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("process status");
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .expect("VmHWM")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_supplier_answering_nonsense_is_shown_faulty_and_every_other_supplier_applies_the_halt() {
    // ApplyCommand answered "applied sequence 100,000,000, REJECTED" with a 3 MB reason; every
    // heartbeat carries 10,000 counts of features nobody defined; verification pages never
    // end; a practice's answer is 3 MB with 10,000 rules.
    let (mut stack, stub) = with_stub(Behaviour::AbsurdApply, true).await;
    let mut coordinator = coordinator_process(&mut stack).await;
    live_at_the_real_suppliers(&stack).await;
    let issued = std::time::Instant::now();
    let h = halt(&stack, national()).await;
    let halted = applied_by(&stack, &h.name, &REAL).await;
    let halt_took = issued.elapsed();
    // Twenty more, each answered with 3 MB of nonsense: none of it is kept.
    for _ in 0..20 {
        let more = halt(&stack, national()).await;
        applied_by(&stack, &more.name, &REAL).await;
    }

    let (microtest, list) = microtest_until(&stack, "microtest FAULTY", |s| {
        s.state() == pb::supplier::State::Faulty
    })
    .await;
    assert!(
        microtest
            .fault
            .contains("answered applied sequence 100000000, past the latest dispatched sequence"),
        "{}",
        microtest.fault
    );
    assert!(microtest.fault_time.is_some());
    for s in list.iter().filter(|s| s.name != "suppliers/microtest") {
        assert!(s.fault.is_empty(), "{}: {}", s.name, s.fault);
    }
    // Nothing of its answers was recorded, and what is kept of it is bounded.
    let d = halted
        .deliveries
        .iter()
        .find(|d| d.supplier == "suppliers/microtest")
        .expect("delivery");
    assert_eq!(d.state(), pb::delivery::State::Pending, "{d:?}");
    assert!(d.rejection_reason.is_empty());
    assert_eq!(
        microtest
            .feature_counts
            .iter()
            .map(|c| c.feature.as_str())
            .collect::<Vec<_>>(),
        [feature_name()],
        "the counts of defined features only"
    );
    let suppliers = stack
        .client("viewer")
        .list_suppliers(pb::ListSuppliersRequest::default())
        .await
        .expect("list suppliers")
        .into_inner();
    assert!(
        suppliers.encoded_len() < 64 * 1024,
        "ListSuppliers is {} bytes",
        suppliers.encoded_len()
    );
    for s in REAL {
        let answer = stack
            .backend(s)
            .get_practice_feature(pb::GetPracticeFeatureRequest {
                name: practice_feature(&stack.practice_of(s)),
                explain: false,
            })
            .await
            .expect("answer")
            .into_inner();
        assert_eq!(answer.state(), S::Disabled, "{s} applied the halt");
    }

    // Verification answers at once: the faulty one never applied the halt, so it is not asked
    // and its practices are unverified, not counted as none enabled.
    let verified = tokio::time::timeout(
        Duration::from_secs(20),
        stack.client("viewer").verify_command(pb::VerifyCommandRequest {
            name: h.name.clone(),
            ..Default::default()
        }),
    )
    .await
    .expect("verify answers")
    .expect("verify")
    .into_inner();
    assert!(!verified.verified);
    assert!(
        verified.encoded_len() < 64 * 1024,
        "{} bytes",
        verified.encoded_len()
    );
    for r in &verified.suppliers {
        if r.supplier == "suppliers/microtest" {
            assert_eq!(r.outcome(), Outcome::NotApplied, "{r:?}");
            assert_eq!(r.unverified_count, r.in_scope_count);
        } else {
            assert_eq!(r.outcome(), Outcome::Verified, "{r:?}");
        }
    }
    // A practice's answer passed on from it is bounded.
    let status = stack
        .client("viewer")
        .get_practice_status(pb::GetPracticeStatusRequest {
            name: practice_feature(&stack.practice_of("microtest")),
        })
        .await
        .expect("practice status")
        .into_inner();
    assert!(status.encoded_len() < 64 * 1024, "{} bytes", status.encoded_len());
    assert_eq!((status.rules.len(), status.omitted_rules), (16, 10_000 - 16));

    // Still up, in bounded memory.
    assert!(
        coordinator.child.try_wait().expect("wait").is_none(),
        "{}",
        coordinator.log()
    );
    let peak = peak_kib(coordinator.child.id().expect("pid"));
    assert!(peak < 128 * 1024, "the coordinator peaked at {peak} KiB");
    // The figures docs/RELIABILITY.md quotes.
    eprintln!(
        "halt applied by the three real suppliers in {halt_took:?}; the coordinator peaked at {} MiB after {} heartbeats of the stub's",
        peak / 1024,
        stub.heartbeats()
    );
    assert!(stub.heartbeats() > 0);
    coordinator.stop("TERM", Duration::from_secs(15)).await;
    stack.stop().await;
    stub.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_supplier_claiming_absurd_sequences_is_faulty_not_diverged_and_recovers_once_sensible() {
    let (mut stack, stub) = with_stub(Behaviour::Honest, false).await;
    stack.start_coordinator().await;
    feature_live(&stack).await;

    // An outcome that is neither APPLIED nor REJECTED is recorded as neither.
    stub.behave(Behaviour::NoOutcome);
    let first = halt(&stack, national()).await;
    applied_by(&stack, &first.name, &REAL).await;
    let (microtest, _) = microtest_until(&stack, "no outcome", |s| {
        s.fault.contains("neither APPLIED nor REJECTED")
    })
    .await;
    assert_eq!(microtest.state(), pb::supplier::State::Faulty);
    assert_eq!(
        delivery_to_microtest(&stack, &first.name).await.state(),
        pb::delivery::State::Pending
    );

    // It loses its store and answers the snapshot that follows "applied sequence 100,000,000".
    stub.behave(Behaviour::AbsurdSnapshot);
    stub.lose_store();
    let (microtest, _) = microtest_until(&stack, "a faulty snapshot answer", |s| {
        s.fault
            .contains("ReplaceRules answered applied sequence 100000000 to a snapshot as of sequence 3")
    })
    .await;
    assert_eq!(microtest.state(), pb::supplier::State::Faulty);

    // It claims to have applied 100,000,000 commands: nonsense, not a coordinator behind its
    // suppliers, so nothing is refused SUPPLIER_DIVERGED and the others apply the next halt.
    stub.behave(Behaviour::AbsurdState);
    let (microtest, _) = microtest_until(&stack, "a faulty state", |s| {
        s.fault
            .contains("GetSyncState answered applied sequence 100000000")
    })
    .await;
    assert!(microtest.divergence.is_empty(), "{}", microtest.divergence);
    assert_eq!(microtest.state(), pb::supplier::State::Faulty);
    let second = halt(&stack, national()).await;
    applied_by(&stack, &second.name, &REAL).await;

    // Sensible again: it is resynchronised, both halts reach it, and it is no longer faulty.
    stub.behave(Behaviour::Honest);
    for h in [&first, &second] {
        let done = delivered(&stack, &h.name).await;
        assert!(
            done.deliveries
                .iter()
                .all(|d| d.state() == pb::delivery::State::Applied),
            "{done:?}"
        );
    }
    let (microtest, _) = microtest_until(&stack, "SYNCED again", |s| {
        s.state() == pb::supplier::State::Synced
    })
    .await;
    assert!(microtest.fault.is_empty() && microtest.fault_time.is_none());
    assert_eq!(stub.applied(), u64::try_from(second.sequence).expect("sequence"));

    // Now that it has applied them it is asked to verify, and its pages that never end are cut
    // off at the page limit (given time enough to reach it): UNREACHABLE, named faulty.
    let verified = stack
        .client("viewer")
        .verify_command(pb::VerifyCommandRequest {
            name: second.name.clone(),
            supplier_timeout: Some(prost_types::Duration {
                seconds: 20,
                nanos: 0,
            }),
            ..Default::default()
        })
        .await
        .expect("verify")
        .into_inner();
    assert!(!verified.verified);
    for r in &verified.suppliers {
        if r.supplier == "suppliers/microtest" {
            assert_eq!(r.outcome(), Outcome::Unreachable, "{r:?}");
            assert!(r.error.contains("kept answering pages"), "{}", r.error);
        } else {
            assert_eq!(r.outcome(), Outcome::Verified, "{r:?}");
        }
    }
    stack.stop().await;
    stub.stop().await;
}

/// The halt's delivery to microtest, as GetCommand shows it.
async fn delivery_to_microtest(stack: &Stack, name: &str) -> pb::Delivery {
    stack
        .client("viewer")
        .get_command(pb::GetCommandRequest { name: name.into() })
        .await
        .expect("get command")
        .into_inner()
        .deliveries
        .into_iter()
        .find(|d| d.supplier == "suppliers/microtest")
        .expect("delivery")
}

//! Message limits: a request over 4 MiB is refused with RESOURCE_EXHAUSTED and a reason, the
//! largest legitimate requests fit, and every List page stays within its byte budget, so a
//! client with the default 4 MiB limit (and `rolloutctl`) reads a long history of large
//! commands page by page.

use std::collections::BTreeSet;

use prost::Message;
use rollout_core::{Estate, MAX_SCOPE_PRACTICES, OdsCode, PracticeStatus, Scope, SupplierId};
use rollout_net::{ERROR_DOMAIN, MAX_MESSAGE_BYTES, PAGE_BUDGET_BYTES};
use rollout_proto::v1::{
    self as pb, control_service_client::ControlServiceClient,
    coordinator_service_client::CoordinatorServiceClient,
    practice_settings_service_client::PracticeSettingsServiceClient,
    toggle_service_client::ToggleServiceClient,
};
use tonic::{Code, Status};
use tonic_types::StatusExt;

use crate::{
    stack::{Stack, feature_live},
    support::{
        assert_refused, binary, channel_as, define, feature_name, halt, practice_feature, reference_files,
        supplier::{EMIS_ALL, apply, control, emis, toggle},
    },
};

/// What every common gRPC client accepts by default, set explicitly so that these tests do not
/// depend on tonic's default.
const DEFAULT_CLIENT_LIMIT: usize = 4 * 1024 * 1024;

/// More than any server here accepts.
const TOO_LARGE: usize = MAX_MESSAGE_BYTES + 1024;

/// Asserts `status` is the answer to a request over the limit.
#[track_caller]
fn assert_too_large(status: &Status, what: &str) {
    assert_refused(status, Code::ResourceExhausted, "MESSAGE_TOO_LARGE", what);
    let info = status
        .get_error_details()
        .error_info()
        .cloned()
        .expect("error info");
    assert_eq!(info.domain, ERROR_DOMAIN, "{what}");
    assert_eq!(
        info.metadata.get("limit_bytes"),
        Some(&MAX_MESSAGE_BYTES.to_string()),
        "{what}"
    );
    assert!(status.message().contains("send less"), "{what}: {status:?}");
}

/// `count` valid ODS codes that are no practice of the synthetic estate, so that a halt over
/// them is as large as a halt can be while covering nobody.
fn unknown_codes(estate: &Estate, count: usize) -> Vec<String> {
    (0..)
        .map(|i| format!("Y{i:05}"))
        .filter(|c| estate.get(&OdsCode::parse(c).expect("code")).is_none())
        .take(count)
        .collect()
}

fn practice_list(codes: Vec<String>) -> pb::Scope {
    pb::Scope {
        target: Some(pb::scope::Target::Practices(pb::scope::PracticeList {
            practices: codes,
        })),
    }
}

#[tokio::test]
async fn a_request_over_the_limit_is_refused_with_a_reason_by_every_service() {
    let stack = Stack::start(None).await;
    feature_live(&stack).await;
    let emis = stack.suppliers["emis"].2;
    let coordinator = stack.coordinator_addr;
    let huge = "x".repeat(TOO_LARGE);

    // A raw client whose own encoding limit lets it send what the servers refuse.
    let mut alice = CoordinatorServiceClient::new(channel_as(&stack.pki, "alice", coordinator))
        .max_encoding_message_size(usize::MAX);
    let halt_with_reason = |reason: String| pb::HaltFeatureRequest {
        name: feature_name(),
        scope: Some(crate::stack::national()),
        reason,
        request_id: String::new(),
        dry_run: false,
        ..Default::default()
    };
    let before = stack
        .client("viewer")
        .list_commands(pb::ListCommandsRequest::default())
        .await
        .expect("list")
        .into_inner()
        .commands
        .len();

    // Exactly at the limit the request is read (and refused for what it says); one byte more
    // and it is refused for its size.
    let mut at_limit = halt_with_reason("x".repeat(MAX_MESSAGE_BYTES));
    while at_limit.encoded_len() > MAX_MESSAGE_BYTES {
        let over = at_limit.encoded_len() - MAX_MESSAGE_BYTES;
        at_limit.reason.truncate(at_limit.reason.len() - over);
    }
    assert_eq!(at_limit.encoded_len(), MAX_MESSAGE_BYTES);
    let read = alice
        .halt_feature(at_limit.clone())
        .await
        .expect_err("reason too long");
    assert_refused(
        &read,
        Code::InvalidArgument,
        "INVALID_FIELD",
        "a request at the limit",
    );
    let mut over_limit = at_limit;
    over_limit.reason.push('x');
    let refused = alice.halt_feature(over_limit).await.expect_err("too large");
    assert_too_large(&refused, "CoordinatorService one byte over the limit");

    let coordinator_refusal = alice
        .halt_feature(halt_with_reason(huge.clone()))
        .await
        .expect_err("too large");
    assert_too_large(&coordinator_refusal, "CoordinatorService");

    let toggle_refusal = ToggleServiceClient::new(channel_as(&stack.pki, "backend-emis", emis))
        .max_encoding_message_size(usize::MAX)
        .batch_get_practice_features(pb::BatchGetPracticeFeaturesRequest {
            names: vec![huge.clone()],
            explain: false,
        })
        .await
        .expect_err("too large");
    assert_too_large(&toggle_refusal, "ToggleService");

    let settings_refusal =
        PracticeSettingsServiceClient::new(channel_as(&stack.pki, "practice-admin-emis", emis))
            .max_encoding_message_size(usize::MAX)
            .set_practice_opt_out(pb::SetPracticeOptOutRequest {
                opt_out: Some(pb::PracticeOptOut {
                    name: format!("{}/optOut", practice_feature(&stack.practice_of("emis"))),
                    reason: huge.clone(),
                    source: "letter".into(),
                    ..Default::default()
                }),
                request_id: String::new(),
            })
            .await
            .expect_err("too large");
    assert_too_large(&settings_refusal, "PracticeSettingsService");

    // The plaintext health port, too (no certificate: as a probe calls it).
    let probe_port = stack.suppliers["emis"].1.as_ref().expect("emis running").health;
    let probe = tonic::transport::Channel::from_shared(format!("http://{probe_port}"))
        .expect("address")
        .connect()
        .await
        .expect("plaintext health port");
    let health_refusal = tonic_health::pb::health_client::HealthClient::new(probe)
        .max_encoding_message_size(usize::MAX)
        .check(tonic_health::pb::HealthCheckRequest {
            service: huge.clone(),
        })
        .await
        .expect_err("too large");
    assert_too_large(&health_refusal, "the plaintext health port");

    let mut command = define(99, None);
    command.reason = huge;
    let control_refusal = ControlServiceClient::new(channel_as(&stack.pki, "coordinator", emis))
        .max_encoding_message_size(usize::MAX)
        .apply_command(pb::ApplyCommandRequest {
            command: Some(command),
            ..Default::default()
        })
        .await
        .expect_err("too large");
    assert_too_large(&control_refusal, "ControlService");

    // The servers keep serving, and nothing was created.
    let after = stack
        .client("viewer")
        .list_commands(pb::ListCommandsRequest::default())
        .await
        .expect("still serving")
        .into_inner()
        .commands
        .len();
    assert_eq!(after, before, "no command was created");
    stack
        .backend("emis")
        .get_practice_feature(pb::GetPracticeFeatureRequest {
            name: practice_feature(&stack.practice_of("emis")),
            explain: true,
        })
        .await
        .expect("the supplier still serves");
    stack.stop().await;
}

#[tokio::test]
async fn a_history_of_large_halts_is_listed_page_by_page_within_the_default_client_limit() {
    let stack = Stack::start(None).await;
    feature_live(&stack).await;
    // Halts over 10,000 unknown practices each, the largest command there is (about 160 KB:
    // the scope, and the impact's list of the codes the estate does not know), until the
    // history is well over what one message may carry.
    let codes = unknown_codes(&stack.estate, MAX_SCOPE_PRACTICES);
    let mut alice = stack.client("alice");
    let mut issued = BTreeSet::new();
    let mut total = 0;
    while total < MAX_MESSAGE_BYTES * 3 / 2 {
        let request = pb::HaltFeatureRequest {
            name: feature_name(),
            scope: Some(practice_list(codes.clone())),
            reason: format!("halt {} of a long history", issued.len()),
            allow_unknown_practices: true,
            ..Default::default()
        };
        let command = alice.halt_feature(request).await.expect("halt").into_inner();
        total += command.encoded_len();
        issued.insert(command.name);
    }

    // Every page, with the largest page size, read by a client with the default limit.
    let mut viewer = CoordinatorServiceClient::new(channel_as(&stack.pki, "viewer", stack.coordinator_addr))
        .max_decoding_message_size(DEFAULT_CLIENT_LIMIT);
    let mut listed = Vec::new();
    let mut page_token = String::new();
    let mut pages = 0;
    loop {
        let page = viewer
            .list_commands(pb::ListCommandsRequest {
                page_size: 500,
                page_token,
                ..Default::default()
            })
            .await
            .expect("every page decodes within the default client limit")
            .into_inner();
        pages += 1;
        assert!(
            page.encoded_len() <= PAGE_BUDGET_BYTES,
            "page {pages} is {} bytes",
            page.encoded_len()
        );
        assert!(!page.commands.is_empty(), "page {pages} is empty");
        listed.extend(page.commands.into_iter().map(|c| (c.sequence, c.name)));
        if page.next_page_token.is_empty() {
            break;
        }
        page_token = page.next_page_token;
    }
    assert!(pages >= 3, "{total} bytes of commands in {pages} pages");
    let names: Vec<&String> = listed.iter().map(|(_, n)| n).collect();
    let distinct: BTreeSet<&String> = names.iter().copied().collect();
    assert_eq!(distinct.len(), names.len(), "no command is listed twice");
    assert!(
        issued.iter().all(|n| distinct.contains(n)),
        "every halt is listed"
    );
    assert!(
        listed.windows(2).all(|w| w[0].0 > w[1].0),
        "newest first, across pages"
    );

    // The real rolloutctl lists every one of them, following the pages.
    let out = tokio::process::Command::new(binary("rolloutctl"))
        .arg("--coordinator")
        .arg(format!("localhost:{}", stack.coordinator_addr.port()))
        .arg("--pki-dir")
        .arg(&stack.pki)
        .args(["--as", "viewer", "--output", "name", "commands", "list"])
        .output()
        .await
        .expect("run rolloutctl");
    assert!(
        out.status.success(),
        "rolloutctl commands list failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let printed: Vec<String> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(str::to_owned)
        .collect();
    let expected: Vec<String> = names.iter().map(|n| n.to_string()).collect();
    assert_eq!(
        printed, expected,
        "rolloutctl lists every command once, newest first"
    );
    stack.stop().await;
}

#[tokio::test]
async fn explained_answers_are_paged_by_bytes_and_a_batch_over_the_limit_is_refused() {
    let (_tmp, files, server) = emis().await;
    let mut control = control(&files, &server);
    apply(&mut control, define(1, None)).await;
    // One halt over 10,000 practices: the first 60 EMIS practices and codes of no practice.
    let (practice_file, supplier_map) = reference_files();
    let estate = rollout_supplier::read_estate(
        &practice_file,
        &supplier_map,
        &SupplierId::parse("emis").expect("id"),
    )
    .expect("estate");
    let national = rollout_store::reference::read_estate(&practice_file, &supplier_map).expect("estate");
    let covered: Vec<String> = estate
        .practices()
        .filter(|p| p.status == PracticeStatus::Active)
        .take(60)
        .map(|p| p.ods.to_string())
        .collect();
    let mut codes = covered.clone();
    codes.extend(unknown_codes(&national, MAX_SCOPE_PRACTICES - covered.len()));
    let scope = Scope::practices(codes.iter().map(String::as_str)).expect("scope");
    apply(&mut control, halt(2, "big-halt", scope)).await;
    // Fourteen national halts after it: every explained answer lists fifteen rules.
    for i in 0..14 {
        apply(
            &mut control,
            halt(3 + i, &format!("national-{i}"), Scope::National),
        )
        .await;
    }

    // Listed with every rule explained (each rule bounded: the big halt says how many
    // practices it lists, not which), far fewer answers than the page size fit in a page.
    let mut backend = toggle(&files, "backend-emis", &server).max_decoding_message_size(DEFAULT_CLIENT_LIMIT);
    let mut seen = BTreeSet::new();
    let (mut page_token, mut pages, mut large) = (String::new(), 0, 0);
    loop {
        let page = backend
            .list_practice_features(pb::ListPracticeFeaturesRequest {
                feature: feature_name(),
                page_size: 5_000,
                page_token,
                explain: true,
                ..Default::default()
            })
            .await
            .expect("every page decodes within the default client limit")
            .into_inner();
        pages += 1;
        assert!(
            page.encoded_len() <= PAGE_BUDGET_BYTES,
            "page {pages} is {} bytes",
            page.encoded_len()
        );
        for a in &page.practice_features {
            assert!(seen.insert(a.name.clone()), "{} listed twice", a.name);
            if a.rules.iter().any(|r| {
                r.scope.as_ref().is_some_and(|s| {
                    s.kind() == pb::scope_summary::Kind::PracticeList
                        && s.practice_count == MAX_SCOPE_PRACTICES as i32
                })
            }) {
                large += 1;
            }
        }
        if page.next_page_token.is_empty() {
            break;
        }
        page_token = page.next_page_token;
    }
    assert_eq!(seen.len(), EMIS_ALL as usize, "every practice once");
    assert_eq!(
        large,
        covered.len(),
        "the covered practices' answers carry the halt"
    );
    assert!(pages >= 3, "{pages} pages");

    // The largest batch, 10,000 names, fits when not explained.
    let names: Vec<String> = covered
        .iter()
        .cycle()
        .take(10_000)
        .map(|c| practice_feature(c))
        .collect();
    let plain = backend
        .batch_get_practice_features(pb::BatchGetPracticeFeaturesRequest {
            names: names.clone(),
            explain: false,
        })
        .await
        .expect("10,000 plain answers fit")
        .into_inner();
    assert_eq!(plain.practice_features.len(), 10_000);

    // Explained, they would not: refused, saying how many fit. (Answers differ in size by a
    // byte or two from call to call, with the time in them, so the checks keep one answer,
    // at most 8 KB, either side of that count.)
    let refused = backend
        .batch_get_practice_features(pb::BatchGetPracticeFeaturesRequest {
            names: names.clone(),
            explain: true,
        })
        .await
        .expect_err("over the limit");
    assert_refused(
        &refused,
        Code::ResourceExhausted,
        "RESPONSE_TOO_LARGE",
        "explained batch",
    );
    let info = refused.get_error_details().error_info().cloned().expect("info");
    assert_eq!(info.metadata["limit_bytes"], MAX_MESSAGE_BYTES.to_string());
    let fit: usize = info.metadata["names_that_fit"].parse().expect("a count");
    assert!((2..9_999).contains(&fit), "{fit} of 10,000 fit");
    let most = backend
        .batch_get_practice_features(pb::BatchGetPracticeFeaturesRequest {
            names: names[..fit - 1].to_vec(),
            explain: true,
        })
        .await
        .expect("one name fewer than fit is answered")
        .into_inner();
    assert!(most.encoded_len() <= MAX_MESSAGE_BYTES);
    assert!(
        most.encoded_len() > MAX_MESSAGE_BYTES - 3 * 8_192,
        "the refusal counted the bytes: {} bytes fit",
        most.encoded_len()
    );
    let one_more = backend
        .batch_get_practice_features(pb::BatchGetPracticeFeaturesRequest {
            names: names[..=fit + 1].to_vec(),
            explain: true,
        })
        .await
        .expect_err("one name more than fit is refused");
    assert_refused(
        &one_more,
        Code::ResourceExhausted,
        "RESPONSE_TOO_LARGE",
        "one name more than fit",
    );
    server.stop().await;
}

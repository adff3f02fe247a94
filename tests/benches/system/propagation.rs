//! Parts 2 and 3: a halt through the coordinator to four suppliers' answers, and one halt
//! listing every active practice.

use super::*;

/// A coordinator and four suppliers in this process, the feature defined and live nationally
/// (issued by alice, approved by bob); the coordinator runs until `shutdown`, its status page
/// at the address returned last (for the viewer and the auditor).
pub(crate) async fn coordinator_stack(
    dir: &Path,
    pki: &Path,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> (
    CoordinatorServiceClient<Channel>,
    CoordinatorServiceClient<Channel>,
    Vec<InProcess>,
    SocketAddr,
) {
    let mut suppliers = Vec::new();
    for id in SUPPLIERS {
        suppliers.push(InProcess::start(dir, pki, id).await);
    }
    let config = rollout_coordinator::Config {
        tls: TlsFiles::from_pki_dir(pki, "coordinator"),
        supplier_ca: pki.join("ca.pem"),
        supplier_crls: Vec::new(),
        policy: policy(
            dir,
            "policy-coordinator.toml",
            &[
                (ALICE, "operator"),
                (BOB, "approver"),
                ("spiffe://gprollout.test/viewer", "viewer"),
                ("spiffe://gprollout.test/auditor", "auditor"),
            ],
        ),
        suppliers: suppliers
            .iter()
            .map(|s| rollout_coordinator::SupplierEndpoint {
                id: s.id.parse().expect("id"),
                endpoint: format!("localhost:{}", s.addr.port()),
                identity: format!("spiffe://gprollout.test/supplier/{}", s.id),
            })
            .collect(),
        database_url: format!("sqlite://{}", dir.join("coordinator.db").display()),
        estate: data(),
        heartbeat: HEARTBEAT,
        stale_after: Duration::from_secs(30),
        shutdown_grace: Duration::from_secs(10),
        budgets: Default::default(),
    };
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    let web = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let web_addr = web.local_addr().expect("addr");
    tokio::spawn(rollout_coordinator::serve(
        config,
        rollout_net::server::Listeners::new(listener, None).with_web(web),
        shutdown,
    ));
    let mut alice = CoordinatorServiceClient::new(channel(pki, "alice", addr));
    let bob = CoordinatorServiceClient::new(channel(pki, "bob", addr));
    alice
        .create_feature(pb::CreateFeatureRequest {
            feature_id: FEATURE.into(),
            feature: Some(pb::Feature {
                fail_mode: pb::FailMode::Static.into(),
                ..Default::default()
            }),
            reason: "benchmark".into(),
            request_id: String::new(),
        })
        .await
        .expect("create");
    let go = alice
        .schedule_go_live(pb::ScheduleGoLiveRequest {
            name: format!("features/{FEATURE}"),
            scope: Some(pb::Scope {
                target: Some(pb::scope::Target::National(pb::scope::National {})),
            }),
            reason: "benchmark".into(),
            ..Default::default()
        })
        .await
        .expect("go-live")
        .into_inner();
    bob.clone()
        .approve_command(pb::ApproveCommandRequest {
            name: go.name.clone(),
            ..Default::default()
        })
        .await
        .expect("approve");
    wait_delivered(&mut alice.clone(), &go.name).await;
    (alice, bob, suppliers, web_addr)
}

pub(crate) async fn wait_delivered(c: &mut CoordinatorServiceClient<Channel>, name: &str) {
    let mut stream = c
        .watch_command(pb::WatchCommandRequest { name: name.into() })
        .await
        .expect("watch")
        .into_inner();
    while let Some(u) = stream.message().await.expect("stream") {
        if u.complete {
            return;
        }
    }
}

pub(crate) fn practice_list(codes: Vec<String>) -> Option<pb::Scope> {
    Some(pb::Scope {
        target: Some(pb::scope::Target::Practices(pb::scope::PracticeList {
            practices: codes,
        })),
    })
}

pub(crate) async fn propagation_and_large_scope(dir: &Path, pki: &Path, s: &Sizes) {
    let (mut alice, _bob, suppliers, _) = coordinator_stack(dir, pki, std::future::pending()).await;
    let estate = rollout_store::reference::read_estate(&data().0, &data().1).expect("estate");
    let active: Vec<_> = estate
        .practices()
        .filter(|p| p.status == rollout_core::PracticeStatus::Active)
        .collect();
    let mut backends: Vec<(String, ToggleServiceClient<Channel>)> = suppliers
        .iter()
        .map(|s| {
            (
                s.id.clone(),
                ToggleServiceClient::new(channel(pki, "coordinator", s.addr)),
            )
        })
        .collect();
    let mut times = Vec::new();
    for i in 0..s.halts {
        // One practice of each supplier (the smaller suppliers' come round again after 178).
        let codes: Vec<String> = SUPPLIERS
            .iter()
            .map(|sup| {
                let theirs: Vec<_> = active.iter().filter(|p| p.supplier.as_str() == *sup).collect();
                theirs[i % theirs.len()].ods.to_string()
            })
            .collect();
        let t = Instant::now();
        let sequence = alice
            .halt_feature(pb::HaltFeatureRequest {
                name: format!("features/{FEATURE}"),
                scope: practice_list(codes.clone()),
                reason: "benchmark".into(),
                ..Default::default()
            })
            .await
            .expect("halt")
            .into_inner()
            .sequence;
        // Until every supplier answers DISABLED under this halt for its practice (polled from the
        // start, so the figure is the time to the suppliers' answers, not to the coordinator's
        // bookkeeping).
        for ((_, b), code) in backends.iter_mut().zip(&codes) {
            loop {
                let p = b
                    .get_practice_feature(pb::GetPracticeFeatureRequest {
                        name: format!("practices/{code}/features/{FEATURE}"),
                        explain: false,
                    })
                    .await
                    .expect("answer")
                    .into_inner();
                if p.applied_sequence >= sequence && p.state() == pb::practice_feature::State::Disabled {
                    break;
                }
                tokio::task::yield_now().await;
            }
        }
        times.push(t.elapsed());
    }
    times.sort();
    println!(
        "2. propagation: a halt through the coordinator until four suppliers (SQLite, synchronous=FULL) answer DISABLED, {} halts",
        s.halts
    );
    println!(
        "   p50 {}   p99 {}   max {}   (targets p50 <= 10 ms, p99 <= 50 ms)",
        ms(percentile(&times, 0.5)),
        ms(percentile(&times, 0.99)),
        ms(percentile(&times, 1.0))
    );

    let all: Vec<String> = active.iter().map(|p| p.ods.to_string()).collect();
    let t = Instant::now();
    let h = alice
        .halt_feature(pb::HaltFeatureRequest {
            name: format!("features/{FEATURE}"),
            scope: practice_list(all.clone()),
            reason: "benchmark".into(),
            ..Default::default()
        })
        .await
        .expect("halt")
        .into_inner();
    wait_delivered(&mut alice, &h.name).await;
    println!(
        "3. large scope: a halt listing all {} active practices, applied by every supplier: {} (target <= 500 ms)",
        all.len(),
        ms(t.elapsed())
    );
    // The stack keeps running to the end of the benchmark, as it always has.
    std::mem::forget(suppliers);
}

//! Part 4: watch fan-out, and the memory figures of a process.

use super::*;

pub(crate) fn peak_rss_mib(pid: u32) -> f64 {
    memory_mib(pid, "VmHWM:")
}

/// A memory figure of `/proc/PID/status` (`VmRSS:`, `VmHWM:`) in MiB.
pub(crate) fn memory_mib(pid: u32, field: &str) -> f64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    status
        .lines()
        .find(|l| l.starts_with(field))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|kb| kb.parse::<f64>().ok())
        .map_or(0.0, |kb| kb / 1024.0)
}

pub(crate) async fn watch_fan_out(dir: &Path, pki: &Path, s: &Sizes, pin: &Pinning) {
    let (mut child, addr) = supplier_process(dir, pki, pin, ("warn", "supplier"), &[]).await;
    let mut control = ControlServiceClient::new(channel(pki, "coordinator", addr));
    let estate = rollout_store::reference::read_estate(&data().0, &data().1).expect("estate");
    let codes: Vec<String> = estate
        .practices()
        .filter(|p| p.supplier.as_str() == "emis" && p.status == rollout_core::PracticeStatus::Active)
        .map(|p| p.ods.to_string())
        .collect();
    let connections: Vec<Channel> = (0..100).map(|_| channel(pki, "backend-emis", addr)).collect();
    let (ready_tx, mut ready_rx) = tokio::sync::mpsc::channel::<()>(s.watchers);
    let (go_tx, go_rx) = tokio::sync::watch::channel::<Option<Instant>>(None);
    // Each stream reports when it received the halt and stays open until every one has, so that
    // the figure is the delivery, not the delivery and the closing of the streams that had it.
    let (received_tx, mut received_rx) = tokio::sync::mpsc::channel::<Duration>(s.watchers);
    let (done_tx, done_rx) = tokio::sync::watch::channel(false);
    let mut tasks = Vec::new();
    for i in 0..s.watchers {
        let mut client = ToggleServiceClient::new(connections[i % connections.len()].clone());
        let code = codes[i % codes.len()].clone();
        let (ready, go) = (ready_tx.clone(), go_rx.clone());
        let (received, mut done) = (received_tx.clone(), done_rx.clone());
        tasks.push(tokio::spawn(async move {
            let mut stream = client
                .watch_practice_features(pb::WatchPracticeFeaturesRequest {
                    feature: format!("features/{FEATURE}"),
                    practices: vec![code],
                    start_version: 0,
                })
                .await
                .expect("watch")
                .into_inner();
            loop {
                let m = stream.message().await.expect("stream").expect("message");
                if m.event_type() == pb::watch_practice_features_response::EventType::SnapshotComplete {
                    break;
                }
            }
            let _ = ready.send(()).await;
            loop {
                let m = stream.message().await.expect("stream").expect("message");
                if m.practice_features
                    .iter()
                    .any(|p| p.state() == pb::practice_feature::State::Disabled)
                {
                    let t0 = go.borrow().expect("the halt was sent");
                    received.send(t0.elapsed()).await.expect("report");
                    let _ = done.wait_for(|d| *d).await;
                    return;
                }
            }
        }));
    }
    drop(received_tx);
    for _ in 0..s.watchers {
        ready_rx.recv().await.expect("ready");
    }
    pin.load_generator();
    let t0 = Instant::now();
    go_tx.send_replace(Some(t0));
    control
        .apply_command(pb::ApplyCommandRequest {
            command: Some(command(
                3,
                "halt",
                rollout_core::Action::Halt {
                    scope: rollout_core::Scope::National,
                },
            )),
            ..Default::default()
        })
        .await
        .expect("halt");
    let mut times = Vec::with_capacity(s.watchers);
    for _ in 0..s.watchers {
        let received = tokio::time::timeout(Duration::from_secs(60), received_rx.recv()).await;
        times.push(
            received
                .expect("every stream receives the halt within 60 s")
                .expect("a watcher failed"),
        );
    }
    pin.release();
    done_tx.send_replace(true);
    for t in tasks {
        t.await.expect("watcher");
    }
    times.sort();
    let rss = peak_rss_mib(child.id().expect("pid"));
    println!(
        "4. watch fan-out: {} streams over 100 connections on one supplier process ({}), one national halt",
        s.watchers,
        pin.describe()
    );
    println!(
        "   received p50 {}   p99 {}   all {}   (target p99 <= 150 ms)",
        ms(percentile(&times, 0.5)),
        ms(percentile(&times, 0.99)),
        ms(percentile(&times, 1.0))
    );
    println!("   supplier peak RSS {rss:.0} MiB (target <= 200 MiB)");
    let _ = child.kill().await;
}

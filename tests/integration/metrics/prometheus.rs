//! A real Prometheus server (Debian package `prometheus`) with the shipped alert rules scrapes a
//! running coordinator: the target is up, a coordinator figure is queryable, every rule of
//! `deploy/prometheus/alerts.yml` is loaded, and every query of the Grafana dashboard in
//! `deploy/grafana/` is valid PromQL (those of the coordinator's figures finding their series). Without the binary the test says so, and fails in
//! CI.

use std::{
    net::SocketAddr,
    path::Path,
    time::{Duration, Instant},
};

use super::get;
use crate::stack::{Stack, feature_live};

/// The `prometheus` binary, or why there is none.
fn prometheus() -> Option<String> {
    let binary = std::env::var("PROMETHEUS").unwrap_or_else(|_| "prometheus".into());
    let runs = std::process::Command::new(&binary)
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success());
    if runs {
        return Some(binary);
    }
    let say = "the Prometheus server test did not run: `prometheus` is not installed \
               (`apt-get install prometheus`; .ci/run installs it), or set PROMETHEUS";
    assert!(std::env::var_os("CI").is_none(), "{say}");
    eprintln!("{say}");
    None
}

/// Asks Prometheus's HTTP API at `addr` for `path` until `ok` holds of the JSON answer, for at
/// most 60 s (it scrapes every second and evaluates rules every second).
async fn until(addr: SocketAddr, path: &str, what: &str, ok: impl Fn(&serde_json::Value) -> bool) {
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut last = None;
    loop {
        if let Some((_, body)) = get(addr, path).await {
            let v: serde_json::Value = serde_json::from_str(&body).expect("JSON");
            if ok(&v) {
                return;
            }
            last = Some(v);
        }
        assert!(Instant::now() < deadline, "{what} within 60 s: {last:?}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// `s` with every byte but an ASCII letter or digit percent-encoded, for a URL's query.
fn percent_encoded(s: &str) -> String {
    s.bytes()
        .map(|b| {
            if b.is_ascii_alphanumeric() {
                (b as char).to_string()
            } else {
                format!("%{b:02X}")
            }
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_real_prometheus_scrapes_the_coordinator_and_loads_the_alert_rules() {
    let Some(binary) = prometheus() else { return };
    let stack = Stack::start(None).await;
    feature_live(&stack).await;
    let target = stack.coordinator_metrics.expect("the coordinator's metrics");
    let dir = tempfile::tempdir().expect("tempdir");
    let rules = Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy/prometheus/alerts.yml");
    let config = dir.path().join("prometheus.yml");
    std::fs::write(
        &config,
        format!(
            "global:\n  scrape_interval: 1s\n  evaluation_interval: 1s\n\
             rule_files:\n  - {}\n\
             scrape_configs:\n  - job_name: gprollout-coordinator\n    static_configs:\n      - targets: [\"{target}\"]\n",
            rules.display()
        ),
    )
    .expect("write the configuration");
    let web = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free port");
    let _server = tokio::process::Command::new(binary)
        .arg(format!("--config.file={}", config.display()))
        .arg(format!(
            "--storage.tsdb.path={}",
            dir.path().join("data").display()
        ))
        .arg(format!("--web.listen-address={web}"))
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .expect("start prometheus");

    until(
        web,
        "/api/v1/query?query=up",
        "the coordinator scraped and up",
        |v| {
            v["data"]["result"]
                .as_array()
                .is_some_and(|r| r.iter().any(|s| s["value"][1] == "1"))
        },
    )
    .await;
    until(
        web,
        "/api/v1/query?query=gprollout_coordinator_target_sequence",
        "the latest sequence (2) queryable",
        |v| v["data"]["result"][0]["value"][1] == "2",
    )
    .await;
    until(web, "/api/v1/rules", "every alert rule loaded", |v| {
        let names: Vec<&str> = v["data"]["groups"]
            .as_array()
            .into_iter()
            .flatten()
            .flat_map(|g| g["rules"].as_array().into_iter().flatten())
            .filter_map(|r| r["name"].as_str())
            .collect();
        [
            "GprolloutHaltNotApplied",
            "GprolloutSupplierStale",
            "GprolloutSupplierDiverged",
            "GprolloutFailClosedFeatureStale",
            "GprolloutAuditWriteFailures",
            "GprolloutInternalErrors",
            "GprolloutNoDeliveryLeader",
        ]
        .iter()
        .all(|n| names.contains(n))
    })
    .await;
    // Every query of the shipped dashboard is valid PromQL, and each of the coordinator's
    // finds its series (a misspelt metric name would find none).
    let dashboard: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(
            Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy/grafana/gprollout-national.json"),
        )
        .expect("read the dashboard"),
    )
    .expect("the dashboard is JSON");
    let queries: Vec<&str> = dashboard["panels"]
        .as_array()
        .expect("panels")
        .iter()
        .flat_map(|p| p["targets"].as_array().into_iter().flatten())
        .filter_map(|t| t["expr"].as_str())
        .collect();
    assert!(queries.len() >= 10, "{queries:?}");
    for q in queries {
        let path = format!("/api/v1/query?query={}", percent_encoded(q));
        let (_, body) = get(web, &path).await.expect("prometheus answers");
        let v: serde_json::Value = serde_json::from_str(&body).expect("JSON");
        assert_eq!(v["status"], "success", "{q}: {v}");
        if q.starts_with("gprollout_coordinator_") {
            assert!(
                v["data"]["result"].as_array().is_some_and(|r| !r.is_empty()),
                "{q} finds the coordinator's series: {v}"
            );
        }
    }
    // The delivery leader is there: its alert stays inactive.
    until(
        web,
        "/api/v1/query?query=sum(gprollout_coordinator_delivery_leader)",
        "one delivery leader",
        |v| v["data"]["result"][0]["value"][1] == "1",
    )
    .await;
    stack.stop().await;
}

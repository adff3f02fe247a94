//! System benchmarks with real servers and real mutual TLS, in one run:
//! 1. read throughput of GetPracticeFeature, and of the flagd ResolveBoolean an OpenFeature
//!    backend calls, on a `rollout-supplier` process against a bare tonic unary echo server
//!    process behind the same TLS acceptor and HTTP/2 settings, with the same requests from the
//!    same load generator, in alternating rounds;
//! 2. propagation of a halt through the coordinator to four suppliers (SQLite, durable);
//! 3. a halt listing every active practice;
//! 4. watch fan-out: many WatchPracticeFeatures streams on one supplier process, one halt;
//! 5. a long history (about 2,000 commands, 200 of them halts listing 5,000 practices) beside a
//!    young one: read throughput against the echo (GetPracticeFeature plain and explained, and
//!    flagd ResolveBoolean), answer size, supplier start time and memory,
//!    and the resynchronisation of a supplier whose store was wiped.
//!
//! On two or more cores the server under test runs on core 1 and the load generator on core 0
//! (parts 1, 4 and 5's reads). Run: `cargo build --release --bins && cargo bench -p
//! rollout-tests --bench system` (`-- --smoke` for a short run, `-- --only
//! read|propagation|watch|history` for one part). It prints figures; it asserts nothing about
//! time.

use std::{
    collections::{BTreeSet, VecDeque},
    net::SocketAddr,
    path::{Path, PathBuf},
    sync::Arc,
    time::{Duration, Instant},
};

use rollout_core::{Estate, OdsCode, Practice, PracticeStatus, Scope};
use rollout_net::tls::{self, TlsFiles};
use rollout_proto::flagd::evaluation::v2 as flagd;
use rollout_proto::v1::{
    self as pb, control_service_client::ControlServiceClient,
    coordinator_service_client::CoordinatorServiceClient, toggle_service_client::ToggleServiceClient,
};
use tokio::{net::TcpListener, sync::oneshot};
use tonic::transport::Channel;

/// The allocator the service binaries use, so that the echo baseline (this binary started with
/// `--echo-server`) is built alike.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

const FEATURE: &str = "prospective-record-access";
const SUPPLIERS: [&str; 4] = ["emis", "tpp", "cegedim", "microtest"];
const ALICE: &str = "spiffe://gprollout.test/operator/alice";
const BOB: &str = "spiffe://gprollout.test/operator/bob";
/// The coordinator's heartbeat in the benchmark's stacks (its default).
const HEARTBEAT: Duration = Duration::from_secs(2);

struct Sizes {
    rounds: usize,
    round: Duration,
    warm_up: Duration,
    connections: usize,
    concurrency: usize,
    halts: usize,
    watchers: usize,
    history: Shape,
    /// Timed starts and wiped-supplier resynchronisations per state.
    restarts: usize,
}

/// The long history's size: commands in all (the feature's definition and first go-live
/// included), the halts listing practices among them, and the codes each of those lists.
#[derive(Debug, Clone, Copy)]
struct Shape {
    commands: usize,
    list_halts: usize,
    list_size: usize,
}

fn data() -> (PathBuf, PathBuf) {
    let d = Path::new(env!("CARGO_MANIFEST_DIR")).join("../data");
    (d.join("epraccur.csv"), d.join("gp-system-suppliers.csv"))
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    sorted[((sorted.len() - 1) as f64 * p).round() as usize]
}

fn ms(d: Duration) -> String {
    format!("{:.2} ms", d.as_secs_f64() * 1e3)
}

mod baseline;
mod history;
mod history_shape;
mod propagation;
mod reads;
mod resync;
mod support;
mod watch;
mod web;

use baseline::*;
use history::*;
use history_shape::*;
use propagation::*;
use reads::*;
use resync::*;
use support::*;
use watch::*;
use web::*;

fn main() {
    rollout_net::tls::install_crypto_provider();
    let mut args = std::env::args().skip(1);
    // `--only read|propagation|watch|history` runs one part.
    let mut only = None;
    while let Some(a) = args.next() {
        match a.as_str() {
            "--echo-server" => {
                echo_server(Path::new(&args.next().expect("--echo-server PKI_DIR")));
                return;
            }
            "--only" => only = args.next(),
            _ => {}
        }
    }
    let run = |part: &str| only.as_deref().is_none_or(|o| o == part);
    let smoke = std::env::args().any(|a| a == "--smoke");
    let sizes = if smoke {
        Sizes {
            rounds: 2,
            round: Duration::from_millis(500),
            warm_up: Duration::from_millis(200),
            connections: 2,
            concurrency: 8,
            halts: 10,
            watchers: 200,
            history: Shape {
                commands: 50,
                list_halts: 10,
                list_size: 200,
            },
            restarts: 1,
        }
    } else {
        Sizes {
            rounds: 10,
            round: Duration::from_secs(2),
            warm_up: Duration::from_secs(1),
            connections: 4,
            concurrency: 64,
            halts: 200,
            watchers: 10_000,
            history: Shape {
                commands: 2_000,
                list_halts: 200,
                list_size: 5_000,
            },
            restarts: 3,
        }
    };
    let pin = Pinning::detect();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("runtime");
    runtime.block_on(async {
        let dir = tempfile::tempdir().expect("tempdir");
        let pki = dir.path().join("pki");
        rolloutctl::pki::init(&pki, false).expect("pki");
        println!(
            "GP Rollout Control system benchmarks{} ({} cores)",
            if smoke { " (smoke run)" } else { "" },
            std::thread::available_parallelism().map_or(0, |n| n.get())
        );
        let sub = |name: &str| {
            let d = dir.path().join(name);
            std::fs::create_dir_all(&d).expect("dir");
            d
        };
        if run("read") {
            read_throughput(&sub("read"), &pki, &sizes, &pin).await;
        }
        if run("propagation") {
            propagation_and_large_scope(&sub("propagation"), &pki, &sizes).await;
        }
        if run("watch") {
            watch_fan_out(&sub("watch"), &pki, &sizes, &pin).await;
        }
        if run("history") {
            long_history_part(&sub("history"), &pki, &sizes, &pin).await;
        }
    });
}

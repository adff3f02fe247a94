//! Part 1, and the read comparison part 5 reuses: each target's requests from one load
//! generator, in alternating rounds against the echo.

use super::*;

/// A server under read load: its label, address, process and the method called.
pub(crate) struct ReadTarget {
    pub(crate) label: String,
    pub(crate) addr: SocketAddr,
    pub(crate) pid: u32,
    pub(crate) path: &'static str,
    /// The encoded requests, sent in turn.
    pub(crate) requests: Arc<Vec<prost::bytes::Bytes>>,
}

/// What a read comparison measured: each target's totals (the echo baseline last), for each
/// other target the ratio of its throughput to the echo's in each round, sorted, and every
/// target's throughput in each round.
pub(crate) struct Reads {
    pub(crate) sides: Vec<Side>,
    pub(crate) ratios: Vec<Vec<f64>>,
    pub(crate) rounds: Vec<Vec<f64>>,
}

impl Reads {
    pub(crate) fn median(&self, i: usize) -> f64 {
        let r = &self.ratios[i];
        (r[(r.len() - 1) / 2] + r[r.len() / 2]) / 2.0
    }

    pub(crate) fn range(&self, i: usize) -> (f64, f64) {
        (self.ratios[i][0], self.ratios[i][self.ratios[i].len() - 1])
    }

    /// Target `i`'s throughput over target `j`'s in each round, sorted.
    fn ratios_between(&self, i: usize, j: usize) -> Vec<f64> {
        let mut r: Vec<f64> = self.rounds.iter().map(|rps| rps[i] / rps[j]).collect();
        r.sort_by(f64::total_cmp);
        r
    }

    /// The median of [`Reads::ratios_between`].
    pub(crate) fn median_between(&self, i: usize, j: usize) -> f64 {
        let r = self.ratios_between(i, j);
        (r[(r.len() - 1) / 2] + r[r.len() / 2]) / 2.0
    }

    /// The lowest and highest of [`Reads::ratios_between`].
    pub(crate) fn range_between(&self, i: usize, j: usize) -> (f64, f64) {
        let r = self.ratios_between(i, j);
        (r[0], r[r.len() - 1])
    }

    pub(crate) fn overall(&self, i: usize) -> f64 {
        self.sides[i].rps() / self.sides[self.sides.len() - 1].rps()
    }

    pub(crate) fn cpu_per_call(&self, i: usize) -> f64 {
        self.sides[i].server_cpu / self.sides[i].calls as f64
    }

    pub(crate) fn print(&self, targets: &[ReadTarget], answers: &[String]) {
        for ((t, side), answer) in targets.iter().zip(&self.sides).zip(answers) {
            println!(
                "   {:<30}  {:>7.0} rps   p50 {}   p99 {}   server CPU {:.1} us/call ({:.0}% of its core)   answer {answer}",
                t.label,
                side.rps(),
                ms(percentile(&side.latencies, 0.5)),
                ms(percentile(&side.latencies, 0.99)),
                side.server_cpu / side.calls as f64 * 1e6,
                side.server_cpu / side.seconds * 100.0,
            );
        }
    }
}

/// The names of every active EMIS practice's answer.
pub(crate) fn emis_names() -> Vec<String> {
    let estate = rollout_store::reference::read_estate(&data().0, &data().1).expect("estate");
    estate
        .practices()
        .filter(|p| p.supplier.as_str() == "emis" && p.status == PracticeStatus::Active)
        .map(|p| format!("practices/{}/features/{FEATURE}", p.ods))
        .collect()
}

/// Each name's encoded GetPracticeFeatureRequest, plain (as a backend asks) or with `explain`.
/// A plain request and the echo's payload have the same single field.
pub(crate) fn encoded_requests(names: &[String], explain: bool) -> Arc<Vec<prost::bytes::Bytes>> {
    let requests = names
        .iter()
        .map(|name| {
            let request = pb::GetPracticeFeatureRequest {
                name: name.clone(),
                explain,
            };
            prost::Message::encode_to_vec(&request).into()
        })
        .collect();
    Arc::new(requests)
}

/// The encoded size of the answer (plain or explained) to each name, sorted.
pub(crate) async fn answer_sizes(
    pki: &Path,
    addr: SocketAddr,
    names: &[String],
    explain: bool,
) -> Vec<usize> {
    let client = ToggleServiceClient::new(channel(pki, "backend-emis", addr));
    let names = Arc::new(names.to_vec());
    let tasks: Vec<_> = (0..8)
        .map(|t| {
            let (mut client, names) = (client.clone(), names.clone());
            tokio::spawn(async move {
                let mut sizes = Vec::new();
                for name in names.iter().skip(t).step_by(8) {
                    let a = client
                        .get_practice_feature(pb::GetPracticeFeatureRequest {
                            name: name.clone(),
                            explain,
                        })
                        .await
                        .expect("answer")
                        .into_inner();
                    sizes.push(prost::Message::encoded_len(&a));
                }
                sizes
            })
        })
        .collect();
    let mut all = Vec::new();
    for t in tasks {
        all.extend(t.await.expect("sizes"));
    }
    all.sort_unstable();
    all
}

/// Median, mean and largest of sorted sizes, as text.
pub(crate) fn sizes_text(sizes: &[usize]) -> String {
    let mean = sizes.iter().sum::<usize>() as f64 / sizes.len().max(1) as f64;
    format!(
        "median {} bytes (mean {mean:.0}, largest {})",
        sizes.get(sizes.len() / 2).copied().unwrap_or(0),
        sizes.last().copied().unwrap_or(0)
    )
}

/// The read comparison: each target's requests from the same load generator, every target in
/// turn (the echo baseline last), a warm-up of each, then alternating rounds with the order
/// rotated each round so that every target meets the same machine.
pub(crate) async fn read_rounds(pki: &Path, s: &Sizes, pin: &Pinning, targets: &[ReadTarget]) -> Reads {
    let clients: Vec<_> = targets
        .iter()
        .map(|t| {
            let clients: Vec<_> = (0..s.connections)
                .map(|_| tonic::client::Grpc::new(channel(pki, "backend-emis", t.addr)))
                .collect();
            (
                clients,
                tonic::codegen::http::uri::PathAndQuery::from_static(t.path),
                t.requests.clone(),
            )
        })
        .collect();

    // Worker w sends the requests in turn from its own starting point, over connection w mod n.
    let workers = s.connections * s.concurrency;
    let round = |side: usize, length: Duration| {
        let (clients, path, requests) = &clients[side];
        load(workers, length, |w| {
            let client = clients[w % clients.len()].clone();
            let (path, requests) = (path.clone(), requests.clone());
            let mut n = w * 37;
            move || {
                n += 1;
                let request = requests[n % requests.len()].clone();
                let (mut client, path) = (client.clone(), path.clone());
                async move { raw::call(&mut client, path, request).await.is_ok() }
            }
        })
    };

    pin.load_generator();
    // Warm every side up (connections, allocators, caches), then alternate short rounds.
    for side in 0..targets.len() {
        round(side, s.warm_up).await;
    }
    let n = targets.len();
    let mut sides: Vec<Side> = (0..n).map(|_| Side::default()).collect();
    let mut ratios = vec![Vec::new(); n - 1];
    let mut rounds = Vec::new();
    for r in 0..s.rounds {
        let mut rps = vec![0.0; n];
        for k in 0..n {
            let side = (r + k) % n;
            let cpu = cpu_seconds(targets[side].pid);
            let (calls, seconds, lat) = round(side, s.round).await;
            let used = cpu_seconds(targets[side].pid) - cpu;
            let t = &mut sides[side];
            t.calls += calls;
            t.seconds += seconds;
            t.server_cpu += used;
            t.latencies.extend(lat);
            rps[side] = calls as f64 / seconds;
        }
        for (i, ratio) in ratios.iter_mut().enumerate() {
            ratio.push(rps[i] / rps[n - 1]);
        }
        rounds.push(rps);
    }
    pin.release();
    for ratio in &mut ratios {
        ratio.sort_by(f64::total_cmp);
    }
    for side in &mut sides {
        side.latencies.sort();
    }
    Reads {
        sides,
        ratios,
        rounds,
    }
}

/// Each name's encoded flagd v2 ResolveBooleanRequest: the feature of the name, its practice as
/// the targeting key (what an OpenFeature backend sends).
pub(crate) fn encoded_flagd_requests(names: &[String]) -> Arc<Vec<prost::bytes::Bytes>> {
    use prost_types::{Struct, Value, value::Kind};
    let requests = names
        .iter()
        .map(|name| {
            let ods = name
                .trim_start_matches("practices/")
                .split('/')
                .next()
                .unwrap_or_default();
            let request = flagd::ResolveBooleanRequest {
                flag_key: FEATURE.into(),
                context: Some(Struct {
                    fields: [(
                        "targetingKey".to_owned(),
                        Value {
                            kind: Some(Kind::StringValue(ods.to_owned())),
                        },
                    )]
                    .into(),
                }),
            };
            prost::Message::encode_to_vec(&request).into()
        })
        .collect();
    Arc::new(requests)
}

pub(crate) async fn read_throughput(dir: &Path, pki: &Path, s: &Sizes, pin: &Pinning) {
    let (supplier, addr) = supplier_process(dir, pki, pin, ("info", "supplier"), &[]).await;
    // The same supplier with its metrics port on, so the layer that counts each call is there.
    let metrics_addr = free_addr().to_string();
    let (metered, metered_addr) = supplier_process(
        dir,
        pki,
        pin,
        ("info", "supplier-metrics"),
        &["--metrics-listen", &metrics_addr],
    )
    .await;
    let (echo_child, echo_addr) = echo_process(pki, pin).await;
    let names = emis_names();
    let requests = encoded_requests(&names, false);
    let flagd_requests = encoded_flagd_requests(&names);
    let answer = ToggleServiceClient::new(channel(pki, "backend-emis", addr))
        .get_practice_feature(pb::GetPracticeFeatureRequest {
            name: names[0].clone(),
            explain: false,
        })
        .await
        .expect("answer")
        .into_inner();
    let flagd_answer = flagd::service_client::ServiceClient::new(channel(pki, "backend-emis", addr))
        .resolve_boolean(
            <flagd::ResolveBooleanRequest as prost::Message>::decode(flagd_requests[0].clone())
                .expect("request"),
        )
        .await
        .expect("flagd answer")
        .into_inner();
    let targets = [
        ReadTarget {
            label: "GetPracticeFeature".into(),
            addr,
            pid: supplier.id().expect("supplier pid"),
            path: "/nhs.gprollout.v1.ToggleService/GetPracticeFeature",
            requests: requests.clone(),
        },
        ReadTarget {
            label: "flagd ResolveBoolean".into(),
            addr,
            pid: supplier.id().expect("supplier pid"),
            path: "/flagd.evaluation.v2.Service/ResolveBoolean",
            requests: flagd_requests.clone(),
        },
        ReadTarget {
            label: "GetPracticeFeature, metrics on".into(),
            addr: metered_addr,
            pid: metered.id().expect("supplier pid"),
            path: "/nhs.gprollout.v1.ToggleService/GetPracticeFeature",
            requests: requests.clone(),
        },
        ReadTarget {
            label: "bare tonic echo".into(),
            addr: echo_addr,
            pid: echo_child.id().expect("echo pid"),
            path: echo::PATH,
            requests: requests.clone(),
        },
    ];
    let reads = read_rounds(pki, s, pin, &targets).await;
    println!(
        "1. read throughput: {} connections x {} calls in flight, mutual TLS, {}; {} alternating rounds of {} s per side",
        s.connections,
        s.concurrency,
        pin.describe(),
        s.rounds,
        s.round.as_secs_f64()
    );
    reads.print(
        &targets,
        &[
            format!("{} bytes", prost::Message::encoded_len(&answer)),
            format!("{} bytes", prost::Message::encoded_len(&flagd_answer)),
            format!("{} bytes", prost::Message::encoded_len(&answer)),
            format!("{} bytes", requests[0].len()),
        ],
    );
    let (low, high) = reads.range_between(2, 0);
    println!(
        "   metrics on / off (GetPracticeFeature) throughput: median of rounds {:.2} (rounds {low:.2} to {high:.2}), overall {:.2} (target >= 0.95); server CPU per call, off / on: {:.2}; calls the metered supplier counted: {}",
        reads.median_between(2, 0),
        reads.overall(2) / reads.overall(0),
        reads.cpu_per_call(0) / reads.cpu_per_call(2),
        counted_calls(&metrics_addr).await,
    );
    for (i, label) in [(0, "GetPracticeFeature"), (1, "flagd ResolveBoolean")] {
        let (low, high) = reads.range(i);
        println!(
            "   {label} / echo throughput: median of rounds {:.2} (rounds {low:.2} to {high:.2}), overall {:.2} (target >= 0.85)",
            reads.median(i),
            reads.overall(i)
        );
    }
    println!(
        "   flagd ResolveBoolean / GetPracticeFeature throughput, overall: {:.2}",
        reads.overall(1) / reads.overall(0)
    );
    println!(
        "   server CPU per call, echo / GetPracticeFeature: {:.2}; echo / flagd ResolveBoolean: {:.2}",
        reads.cpu_per_call(3) / reads.cpu_per_call(0),
        reads.cpu_per_call(3) / reads.cpu_per_call(1)
    );
}

/// The GetPracticeFeature calls a supplier's `/metrics` at `addr` says it completed (so that
/// the figures above are known to have gone through the layer).
async fn counted_calls(addr: &str) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let Ok(mut tcp) = tokio::net::TcpStream::connect(addr).await else {
        return "none (metrics port not answering)".into();
    };
    let mut text = String::new();
    if tcp
        .write_all(b"GET /metrics HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n")
        .await
        .is_err()
        || tcp.read_to_string(&mut text).await.is_err()
    {
        return "none (metrics not read)".into();
    }
    text.lines()
        .find(|l| {
            l.starts_with("gprollout_grpc_server_handled_total{")
                && l.contains("grpc_method=\"GetPracticeFeature\"")
                && l.contains("grpc_code=\"OK\"")
        })
        .and_then(|l| l.rsplit(' ').next())
        .unwrap_or("none")
        .to_owned()
}

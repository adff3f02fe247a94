//! Part 5: a young and a long history side by side: reads, answer sizes, start-up, memory
//! and the resync of a wiped supplier.

use super::*;

/// A state's figures for the side-by-side summary.
#[derive(Default)]
pub(crate) struct Figures {
    pub(crate) starts: Vec<Duration>,
    pub(crate) rss: Vec<f64>,
    pub(crate) peak: Vec<f64>,
    pub(crate) resyncs: Vec<Resync>,
}

pub(crate) async fn long_history_part(dir: &Path, pki: &Path, s: &Sizes, pin: &Pinning) {
    let estate = rollout_store::reference::read_estate(&data().0, &data().1).expect("estate");
    let steps = long_history(s.history, &estate);
    let young = young_history();
    let long = history_commands(&steps);
    let in_force = InForce::of(&long);
    let targets_at = [young.len() as i64, long.len() as i64];
    let names = emis_names();
    let (requests, explained) = (encoded_requests(&names, false), encoded_requests(&names, true));
    let probe = names[0]
        .strip_prefix("practices/")
        .and_then(|n| n.split('/').next())
        .expect("code")
        .to_owned();

    // Both states at supplier processes of their own, built as the coordinator would deliver
    // them: one ApplyCommand after another.
    let addrs = [free_addr(), free_addr()];
    let mut children = [
        spawn_supplier(dir, pki, pin, "info", ("young", addrs[0]), &[]),
        spawn_supplier(dir, pki, pin, "info", ("long", addrs[1]), &[]),
    ];
    let mut built = Duration::ZERO;
    for (addr, commands) in addrs.iter().zip([&young, &long]) {
        answer_at(pki, *addr, &probe, 0).await;
        let t = Instant::now();
        apply_all(
            &mut ControlServiceClient::new(channel(pki, "coordinator", *addr)),
            commands,
        )
        .await;
        built = t.elapsed();
    }
    let counts = ControlServiceClient::new(channel(pki, "coordinator", addrs[1]))
        .get_sync_state(pb::GetSyncStateRequest::default())
        .await
        .expect("sync state")
        .into_inner()
        .feature_counts;
    let counts = counts.first().cloned().unwrap_or_default();
    let lists: Vec<usize> = steps
        .iter()
        .filter_map(|s| match s {
            Step::Halt(Scope::Practices(codes), _) => {
                Some(codes.iter().filter(|c| estate.get(c).is_some()).count())
            }
            _ => None,
        })
        .collect();
    let (kinds, resumes) = steps
        .iter()
        .fold(([0usize; 3], 0usize), |(mut k, r), step| match step {
            Step::Halt(Scope::Practices(_), _) => {
                k[0] += 1;
                (k, r)
            }
            Step::Halt(..) => {
                k[1] += 1;
                (k, r)
            }
            Step::Resume(..) => (k, r + 1),
            Step::GoLive(..) => {
                k[2] += 1;
                (k, r)
            }
        });
    println!(
        "5. long history: the EMIS supplier with a young history ({} commands) and a long one ({} commands)",
        young.len(),
        long.len()
    );
    println!(
        "   long history: {} halts listing {} codes ({:.0} real practice codes a list on average, the rest codes no supplier holds), {} national, regional, ICB and sub-ICB halts, {resumes} resumes, {} go-lives after the first; applied at a supplier process one ApplyCommand at a time in {:.1} s",
        kinds[0],
        s.history.list_size,
        lists.iter().sum::<usize>() as f64 / lists.len().max(1) as f64,
        kinds[1],
        kinds[2],
        built.as_secs_f64()
    );
    println!(
        "   in force after compaction: {} rules ({} list halts, {} area halts, {} national halts, {} go-lives) and the feature's definition",
        in_force.rules(),
        in_force.list_halts,
        in_force.area_halts,
        in_force.national_halts,
        in_force.go_lives
    );
    println!(
        "   EMIS answers in the long state: {} practices, {} enabled, {} halted, {} other",
        counts.practices,
        counts.enabled,
        counts.halted,
        counts.practices - counts.enabled - counts.halted
    );

    // Read throughput of both, plain (as a backend asks) and explained, against the echo, in
    // the same rounds.
    let (mut echo_child, echo_addr) = echo_process(pki, pin).await;
    let mut sizes = Vec::new();
    for explain in [false, true] {
        for addr in addrs {
            sizes.push(answer_sizes(pki, addr, &names, explain).await);
        }
    }
    let supplier = |label: &str, i: usize, requests: &Arc<Vec<prost::bytes::Bytes>>| ReadTarget {
        label: label.into(),
        addr: addrs[i],
        pid: children[i].id().expect("pid"),
        path: "/nhs.gprollout.v1.ToggleService/GetPracticeFeature",
        requests: requests.clone(),
    };
    let targets = [
        supplier("young history", 0, &requests),
        supplier("long history", 1, &requests),
        supplier("young, explained", 0, &explained),
        supplier("long, explained", 1, &explained),
        ReadTarget {
            path: "/flagd.evaluation.v2.Service/ResolveBoolean",
            ..supplier("long, flagd", 1, &encoded_flagd_requests(&names))
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
    let _ = echo_child.kill().await;
    println!(
        "   read throughput, GetPracticeFeature of every active EMIS practice in turn (plain, and with explain: up to 16 rules): {} connections x {} calls in flight, {}; {} rounds of {} s per side, the order rotated",
        s.connections,
        s.concurrency,
        pin.describe(),
        s.rounds,
        s.round.as_secs_f64()
    );
    let mut texts: Vec<String> = sizes.iter().map(|s| sizes_text(s)).collect();
    texts.push("flagd ResolveBoolean, same practices".into());
    texts.push(format!("{} bytes", requests[0].len()));
    reads.print(&targets, &texts);
    let echo = targets.len() - 1;
    for (i, label) in [
        "young",
        "long ",
        "young, explained",
        "long, explained ",
        "long, flagd",
    ]
    .iter()
    .enumerate()
    {
        let (low, high) = reads.range(i);
        println!(
            "   {label} / echo: median of rounds {:.2} (rounds {low:.2} to {high:.2}), overall {:.2}; server CPU per call, echo / this {:.2}{}",
            reads.median(i),
            reads.overall(i),
            reads.cpu_per_call(echo) / reads.cpu_per_call(i),
            if i == 1 { "   (target long >= 0.8)" } else { "" }
        );
    }

    // Start on an existing store: spawn until the first answer at the state's sequence.
    for child in &mut children {
        stop_process(child).await;
    }
    let stores = [
        store_bytes(&dir.join("young.db")),
        store_bytes(&dir.join("long.db")),
    ];
    let mut figures = [Figures::default(), Figures::default()];
    for _ in 0..s.restarts {
        for (i, name) in ["young", "long"].iter().enumerate() {
            let t = Instant::now();
            let mut child = spawn_supplier(dir, pki, pin, "info", (name, addrs[i]), &[]);
            answer_at(pki, addrs[i], &probe, targets_at[i]).await;
            figures[i].starts.push(t.elapsed());
            let pid = child.id().expect("pid");
            figures[i].rss.push(memory_mib(pid, "VmRSS:"));
            figures[i].peak.push(memory_mib(pid, "VmHWM:"));
            stop_process(&mut child).await;
        }
    }

    // A wiped supplier, resynchronised by the coordinator: young, then long.
    let stack = dir.join("stack");
    std::fs::create_dir_all(&stack).expect("dir");
    let (stop_coordinator, coordinator_stopped) = oneshot::channel::<()>();
    let (mut alice, mut bob, mut suppliers, web) = coordinator_stack(&stack, pki, async {
        let _ = coordinator_stopped.await;
    })
    .await;
    let events = events::Recorder::install();
    let young_target = target_sequence(&mut alice).await;
    converged(&mut alice, young_target).await;
    for _ in 0..s.restarts {
        let r = wipe_and_resync(&mut suppliers[0], pki, &probe, young_target, &events).await;
        figures[0].resyncs.push(r);
    }
    let t = Instant::now();
    let long_target = issue_history(&mut alice, &mut bob, &steps).await;
    let issued = t.elapsed();
    converged(&mut alice, long_target).await;
    let delivered = t.elapsed();
    status_page_figures(pki, web, &probe, long_target).await;
    for _ in 0..s.restarts {
        let r = wipe_and_resync(&mut suppliers[0], pki, &probe, long_target, &events).await;
        figures[1].resyncs.push(r);
    }
    let _ = stop_coordinator.send(());
    for s in &mut suppliers {
        s.stop().await;
    }
    println!(
        "   through the coordinator (four suppliers in this process): the long history issued by alice and bob in {:.1} s, applied by every supplier after {:.1} s",
        issued.as_secs_f64(),
        delivered.as_secs_f64()
    );
    let list = |v: &[Duration]| v.iter().map(|d| ms(*d)).collect::<Vec<_>>().join(", ");
    for (i, (label, f)) in ["young", "long "].iter().zip(&figures).enumerate() {
        println!(
            "   {label}: store {:.2} MiB; process start to first answer {} (median of {}: {}), VmRSS {:.0} MiB, VmHWM {:.0} MiB",
            mib(stores[i]),
            ms(median(f.starts.clone())),
            f.starts.len(),
            list(&f.starts),
            f.rss.iter().sum::<f64>() / f.rss.len() as f64,
            f.peak.iter().sum::<f64>() / f.peak.len() as f64,
        );
        let phase = |p: fn(&Resync) -> Duration| f.resyncs.iter().map(p).collect::<Vec<_>>();
        println!(
            "          wiped supplier answering at sequence {} after {} (median of {}: {}){}",
            if i == 0 { young_target } else { long_target },
            ms(median(phase(|r| r.answered))),
            f.resyncs.len(),
            list(&phase(|r| r.answered)),
            if i == 1 { "   (target <= 2 s)" } else { "" }
        );
        println!(
            "          from its restart: answering on an empty store {}; the coordinator noticed (its state watch ended at the stop, so it retried at once with backoff rather than wait for its heartbeat, every {} s) {}; ReplaceRules called {}; snapshot committed {}",
            list(&phase(|r| r.started)),
            HEARTBEAT.as_secs(),
            list(&phase(|r| r.noticed)),
            list(&phase(|r| r.transfer)),
            list(&phase(|r| r.installed)),
        );
        println!(
            "          the resynchronisation itself, from the coordinator noticing to the answer at the target: {}",
            list(&phase(|r| r.answered.saturating_sub(r.noticed))),
        );
    }
}

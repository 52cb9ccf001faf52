//! `scale`: the operator's memory and reconcile latency with many InstantRecovery objects.

use super::*;

// ---- scale ----

/// One InstantRecovery as the benchmark's watch saw it.
#[derive(Default)]
pub(super) struct Track {
    first_status: Option<Instant>,
    /// Each `status.observedGeneration` with the moment it was first seen.
    generations: Vec<(i64, Instant)>,
    phase: Option<Phase>,
    reason: Option<String>,
    gone: Option<Instant>,
}

impl Track {
    fn caught_up(&self, generation: i64) -> Option<Instant> {
        self.generations
            .iter()
            .find(|(g, _)| *g >= generation)
            .map(|(_, t)| *t)
    }
}

/// Watches every InstantRecovery of the namespace; returns once the watch runs.
async fn track(api: Api<InstantRecovery>) -> anyhow::Result<(Tracks, JoinHandle<()>)> {
    let tracks = Tracks::default();
    let (ready, mut watching) = tokio::sync::mpsc::channel(1);
    let record = tracks.clone();
    let task = tokio::spawn(async move {
        let mut events = watcher(api, watcher::Config::default())
            .default_backoff()
            .boxed();
        while let Some(event) = events.next().await {
            let now = Instant::now();
            let (ir, gone) = match event {
                Ok(watcher::Event::InitDone) => {
                    let _ = ready.try_send(());
                    continue;
                }
                Ok(watcher::Event::Apply(ir) | watcher::Event::InitApply(ir)) => (ir, false),
                Ok(watcher::Event::Delete(ir)) => (ir, true),
                _ => continue,
            };
            let mut tracks = record.lock().expect("tracks");
            let track = tracks.entry(ir.name_any()).or_default();
            if gone {
                track.gone.get_or_insert(now);
                continue;
            }
            if let Some(status) = &ir.status {
                track.first_status.get_or_insert(now);
                track.phase = Some(status.phase);
                track.reason.clone_from(&status.reason);
                if let Some(g) = status.observed_generation
                    && track.generations.last().is_none_or(|(last, _)| g > *last)
                {
                    track.generations.push((g, now));
                }
            }
        }
    });
    watching.recv().await.context("the watch ended")?;
    Ok((tracks, task))
}

/// Waits until `done` holds for every name and its track.
async fn wait_all(
    tracks: &Tracks,
    names: &[String],
    what: &str,
    done: impl Fn(&str, &Track) -> bool,
) -> anyhow::Result<()> {
    let deadline = Instant::now() + Duration::from_secs(600);
    loop {
        let missing = {
            let tracks = tracks.lock().expect("tracks");
            names
                .iter()
                .filter(|n| !tracks.get(*n).is_some_and(|t| done(n, t)))
                .count()
        };
        if missing == 0 {
            return Ok(());
        }
        ensure!(
            Instant::now() < deadline,
            "{missing} of {} objects not {what} after 600 s",
            names.len()
        );
        tokio::time::sleep(POLL).await;
    }
}

/// An InstantRecovery that goes to Waiting (RepositoryNotFound) and stays there: its
/// BackupRepository does not exist.
fn parked(name: &str) -> anyhow::Result<InstantRecovery> {
    Ok(serde_json::from_value(serde_json::json!({
        "apiVersion": "instantrecovery.dev/v1alpha1",
        "kind": "InstantRecovery",
        "metadata": {"name": name, "namespace": NAMESPACE},
        "spec": {
            "backup": {"repositoryRef": {"name": "no-such-repository"}, "id": "latest"},
            "postgres": {"credentialsSecret": {"name": "db-superuser"}},
            "switchover": {"mode": "Manual"},
        },
    }))?)
}

/// Changes `spec.switchover.maxLagBytes`; returns the object's new generation.
async fn patch_spec(api: &Api<InstantRecovery>, name: &str, lag: u64) -> anyhow::Result<i64> {
    let patch = serde_json::json!({"spec": {"switchover": {"maxLagBytes": lag}}});
    let patched = api
        .patch(name, &PatchParams::default(), &Patch::Merge(&patch))
        .await?;
    patched.metadata.generation.context("no generation")
}

/// User + system CPU time of a process.
fn cpu(pid: u32) -> anyhow::Result<Duration> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))?;
    let fields: Vec<&str> = stat
        .rsplit_once(')')
        .context("/proc/<pid>/stat")?
        .1
        .split_whitespace()
        .collect();
    // After the command: state is field 3, utime 14 and stime 15.
    let ticks: u64 = fields[11].parse::<u64>()? + fields[12].parse::<u64>()?;
    // SAFETY: sysconf has no preconditions.
    let hz = u64::try_from(unsafe { libc::sysconf(libc::_SC_CLK_TCK) })?;
    Ok(Duration::from_millis(ticks * 1000 / hz))
}

/// Latencies from the sending of each request to what `seen` finds in its track.
fn latencies(
    tracks: &Tracks,
    sent: &[(String, Instant)],
    seen: impl Fn(&Track) -> Option<Instant>,
) -> Vec<u64> {
    let tracks = tracks.lock().expect("tracks");
    sent.iter()
        .map(|(name, at)| {
            tracks
                .get(name)
                .and_then(&seen)
                .map_or(u64::MAX, |t| ms(t.saturating_duration_since(*at)))
        })
        .collect()
}

pub(super) async fn scale(args: ScaleArgs) -> anyhow::Result<()> {
    ensure!(
        args.objects > 0 && args.solo > 0,
        "--objects and --solo must be > 0"
    );
    let fx = Installation::start().await;
    let pid = fx.operator.as_ref().context("the operator runs")?.pid();
    let api = fx.recoveries();
    let (tracks, watch) = track(api.clone()).await?;
    tokio::time::sleep(SETTLE).await;
    let (idle_rss, _) = memory(pid)?;

    // Baseline: one object alone, created, changed and deleted before the next.
    let (mut solo_status, mut solo_generation) = (Vec::new(), Vec::new());
    for i in 0..args.solo {
        let name = format!("solo-{i}");
        let names = [name.clone()];
        let sent = Instant::now();
        api.create(&PostParams::default(), &parked(&name)?).await?;
        wait_all(&tracks, &names, "with a status", |_, t| {
            t.first_status.is_some()
        })
        .await?;
        solo_status.extend(latencies(&tracks, &[(name.clone(), sent)], |t| {
            t.first_status
        }));
        let sent = Instant::now();
        let generation = patch_spec(&api, &name, 4096).await?;
        wait_all(&tracks, &names, "caught up", |_, t| {
            t.caught_up(generation).is_some()
        })
        .await?;
        solo_generation.extend(latencies(&tracks, &[(name.clone(), sent)], |t| {
            t.caught_up(generation)
        }));
        api.delete(&name, &DeleteParams::default()).await?;
        wait_all(&tracks, &names, "deleted", |_, t| t.gone.is_some()).await?;
    }
    eprintln!(
        "one object alone: first status after {} ms; observedGeneration caught up after {} ms",
        join(&solo_status),
        join(&solo_generation)
    );

    // N at once.
    let names: Vec<String> = (0..args.objects).map(|i| format!("load-{i:04}")).collect();
    let cpu_before = cpu(pid)?;
    let burst = Instant::now();
    let sent = future::try_join_all(names.iter().map(|name| {
        let api = api.clone();
        async move {
            let object = parked(name)?;
            let at = Instant::now();
            api.create(&PostParams::default(), &object).await?;
            anyhow::Ok((name.clone(), at))
        }
    }))
    .await?;
    let created_ms = ms(burst.elapsed());
    wait_all(&tracks, &names, "with a status", |_, t| {
        t.first_status.is_some()
    })
    .await?;
    let statused_ms = ms(burst.elapsed());
    let create_cpu = cpu(pid)? - cpu_before;
    let first_status = latencies(&tracks, &sent, |t| t.first_status);
    wait_all(&tracks, &names, "Waiting", |_, t| {
        t.phase == Some(Phase::Waiting)
    })
    .await?;
    {
        let tracks = tracks.lock().expect("tracks");
        let other: Vec<_> = names
            .iter()
            .filter(|n| {
                tracks.get(*n).and_then(|t| t.reason.as_deref()) != Some("RepositoryNotFound")
            })
            .collect();
        ensure!(
            other.is_empty(),
            "objects not waiting for their repository: {other:?}"
        );
    }
    tokio::time::sleep(SETTLE).await;
    let (loaded_rss, _) = memory(pid)?;

    let cpu_before = cpu(pid)?;
    let burst = Instant::now();
    let sent = future::try_join_all(names.iter().map(|name| {
        let api = api.clone();
        async move {
            let at = Instant::now();
            let generation = patch_spec(&api, name, 8192).await?;
            anyhow::Ok((name.clone(), at, generation))
        }
    }))
    .await?;
    let generations: HashMap<String, i64> = sent.iter().map(|(n, _, g)| (n.clone(), *g)).collect();
    wait_all(&tracks, &names, "caught up", |name, t| {
        t.caught_up(generations[name]).is_some()
    })
    .await?;
    let patched_ms = ms(burst.elapsed());
    let patch_cpu = cpu(pid)? - cpu_before;
    let caught_up: Vec<u64> = {
        let tracks = tracks.lock().expect("tracks");
        sent.iter()
            .map(|(name, at, _)| {
                tracks
                    .get(name)
                    .and_then(|t| t.caught_up(generations[name]))
                    .map_or(u64::MAX, |t| ms(t.saturating_duration_since(*at)))
            })
            .collect()
    };
    tokio::time::sleep(SETTLE).await;
    let (patched_rss, _) = memory(pid)?;

    let deleting = Instant::now();
    future::try_join_all(names.iter().map(|name| {
        let api = api.clone();
        async move { api.delete(name, &DeleteParams::default()).await }
    }))
    .await?;
    wait_all(&tracks, &names, "deleted", |_, t| t.gone.is_some()).await?;
    let deleted_ms = ms(deleting.elapsed());
    tokio::time::sleep(SETTLE).await;
    let (after_rss, hwm) = memory(pid)?;
    watch.abort();

    let n = args.objects;
    eprintln!(
        "{n} at once: created (all API calls answered) after {created_ms} ms, all with a status \
         after {statused_ms} ms, operator CPU {} ms; first status p50/p99/max {} / {} / {} ms",
        create_cpu.as_millis(),
        percentile(&first_status, 50),
        percentile(&first_status, 99),
        percentile(&first_status, 100)
    );
    eprintln!(
        "{n} patched at once: all caught up after {patched_ms} ms, operator CPU {} ms; \
         p50/p99/max {} / {} / {} ms",
        patch_cpu.as_millis(),
        percentile(&caught_up, 50),
        percentile(&caught_up, 99),
        percentile(&caught_up, 100)
    );
    eprintln!(
        "operator VmRSS: idle {} MiB, {n} settled {} MiB, after the patches {} MiB, after \
         deleting them {} MiB; VmHWM {} MiB; {n} deleted at once: all gone after {deleted_ms} ms",
        mib(idle_rss),
        mib(loaded_rss),
        mib(patched_rss),
        mib(after_rss),
        mib(hwm)
    );

    let solo_s = median(&solo_status);
    let solo_g = median(&solo_generation);
    println!(
        "| operator memory (VmRSS), {n} InstantRecoveries settled vs none | {} MiB | {} MiB | {} | |",
        mib(loaded_rss),
        mib(idle_rss),
        ratio(loaded_rss as f64, idle_rss as f64)
    );
    for (label, p) in [("p50", 50), ("p99", 99), ("max", 100)] {
        let v = percentile(&first_status, p);
        println!(
            "| create to first status (watch), {n} created at once, {label} vs one alone \
             (median of {}) | {v} ms | {solo_s} ms | {} | |",
            args.solo,
            ratio(v as f64, solo_s)
        );
    }
    for (label, p) in [("p50", 50), ("p99", 99), ("max", 100)] {
        let v = percentile(&caught_up, p);
        println!(
            "| spec change to `status.observedGeneration` (watch), {n} patched at once, {label} \
             vs one alone (median of {}) | {v} ms | {solo_g} ms | {} | |",
            args.solo,
            ratio(v as f64, solo_g)
        );
    }
    Ok(())
}

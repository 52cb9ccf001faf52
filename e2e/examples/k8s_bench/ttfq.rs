//! `ttfq`: apply of an InstantRecovery to the first `SELECT 1` through its Service, against a
//! local `irctl recover` of the same backup.

use super::*;

// ---- ttfq ----

struct LocalRun {
    wall_ms: u64,
    reported_ms: u64,
}

/// Milestones of one recovery on the cluster, in ms after the apply.
struct K8sRun {
    wall_ms: u64,
    reported_ms: u64,
    mount_created_ms: u64,
    mounted_ms: u64,
    pod_created_ms: u64,
    pod_running_ms: u64,
    delete_ms: u64,
}

pub(super) async fn ttfq(args: TtfqArgs) -> anyhow::Result<()> {
    let irctl = installation::workspace_binary("irctl");
    let fx = Installation::with_backup(
        ir_e2e::shared_tempdir(),
        args.repo.clone(),
        args.backup.clone(),
    )
    .await;
    let (mut local, mut k8s) = (Vec::new(), Vec::new());
    for run in 1..=args.runs {
        let l = local_run(&args, &irctl)
            .await
            .with_context(|| format!("run {run}: local irctl recover"))?;
        let k = k8s_run(&fx, &format!("ttfq-{run}"))
            .await
            .with_context(|| format!("run {run}: InstantRecovery"))?;
        eprintln!(
            "run {run}: local: first select 1 after {} ms, irctl reports {} ms; cluster: \
             RecoveryMount created +{} ms, Mounted +{} ms, Pod created +{} ms, Pod Running +{} ms, \
             first select 1 through the Service +{} ms, operator reports {} ms; deleted in {} ms",
            l.wall_ms,
            l.reported_ms,
            k.mount_created_ms,
            k.mounted_ms,
            k.pod_created_ms,
            k.pod_running_ms,
            k.wall_ms,
            k.reported_ms,
            k.delete_ms
        );
        local.push(l);
        k8s.push(k);
    }
    let col = |runs: &[K8sRun], f: fn(&K8sRun) -> u64| runs.iter().map(f).collect::<Vec<_>>();
    let k_wall = col(&k8s, |r| r.wall_ms);
    let k_reported = col(&k8s, |r| r.reported_ms);
    let l_wall: Vec<u64> = local.iter().map(|r| r.wall_ms).collect();
    let l_reported: Vec<u64> = local.iter().map(|r| r.reported_ms).collect();
    eprintln!(
        "per run: cluster apply to first select 1 {} ms, operator reports {} ms; local launch to \
         first select 1 {} ms, irctl reports {} ms",
        join(&k_wall),
        join(&k_reported),
        join(&l_wall),
        join(&l_reported)
    );
    eprintln!(
        "medians after the apply: RecoveryMount created {} ms, Mounted {} ms, Pod created {} ms, \
         Pod Running {} ms, first select 1 {} ms; deletion {} ms",
        median(&col(&k8s, |r| r.mount_created_ms)),
        median(&col(&k8s, |r| r.mounted_ms)),
        median(&col(&k8s, |r| r.pod_created_ms)),
        median(&col(&k8s, |r| r.pod_running_ms)),
        median(&k_wall),
        median(&col(&k8s, |r| r.delete_ms)),
    );
    let (kw, lw) = (median(&k_wall), median(&l_wall));
    let (kr, lr) = (median(&k_reported), median(&l_reported));
    println!(
        "| apply of an InstantRecovery to first `SELECT 1` through its Service on the real node vs \
         launch of \
         `irctl recover` to first `SELECT 1`, {} | {kw} ms | {lw} ms | {} | |",
        args.label,
        ratio(kw, lw)
    );
    println!(
        "| time to first query the operator reports (`status.timings.timeToFirstQueryMs`) vs the \
         one `irctl recover` reports, {} | {kr} ms | {lr} ms | {} | |",
        args.label,
        ratio(kr, lr)
    );
    Ok(())
}

/// A local `irctl recover`; a failing benchmark stops it (SIGTERM: it stops after its current
/// step) and leaves the rest to the script's clean-up.
struct LocalRecovery {
    child: tokio::process::Child,
    out: PathBuf,
}

impl Drop for LocalRecovery {
    fn drop(&mut self) {
        if !matches!(self.child.try_wait(), Ok(None)) {
            return;
        }
        if let Some(pid) = self.child.id().and_then(|p| i32::try_from(p).ok()) {
            // SAFETY: our own child, not yet reaped.
            unsafe { libc::kill(pid, libc::SIGTERM) };
        }
        let deadline = Instant::now() + Duration::from_secs(20);
        while matches!(self.child.try_wait(), Ok(None)) && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = self.child.start_kill();
    }
}

async fn local_answers(socket_dir: &Path, port: u16) -> bool {
    let connected = tokio_postgres::Config::new()
        .host_path(socket_dir)
        .port(port)
        .user("postgres")
        .dbname("postgres")
        .connect_timeout(Duration::from_secs(1))
        .connect(tokio_postgres::NoTls)
        .await;
    let Ok((client, connection)) = connected else {
        return false;
    };
    tokio::spawn(connection);
    client.simple_query("SELECT 1").await.is_ok()
}

async fn service_answers(ip: &str) -> bool {
    match installation::connect(ip).await {
        Ok(client) => client.simple_query("SELECT 1").await.is_ok(),
        Err(_) => false,
    }
}

/// Launch to first `SELECT 1` on the published port; then the recovery runs to its end, and its
/// promoted target is stopped and removed with the workdir.
async fn local_run(args: &TtfqArgs, irctl: &Path) -> anyhow::Result<LocalRun> {
    for dir in [&args.workdir, &args.target_pgdata] {
        ensure!(
            !dir.exists(),
            "{} exists: a previous recovery left it (bench/recover-lib.sh recover_clean removes it)",
            dir.display()
        );
    }
    let out_path = args.workdir.with_extension("out");
    let out = std::fs::File::create(&out_path)
        .with_context(|| format!("create {}", out_path.display()))?;
    drop_caches()?;
    let start = Instant::now();
    let child = tokio::process::Command::new(irctl)
        .args(["recover", "--repo", &args.repo, "--backup", &args.backup])
        .arg("--workdir")
        .arg(&args.workdir)
        .arg("--target-pgdata")
        .arg(&args.target_pgdata)
        .args(["--switchover", "automatic", "--retry-limit", "0"])
        .args(["--published-port", &args.published_port.to_string()])
        .args(["--target-port", &args.target_port.to_string()])
        .stdin(Stdio::null())
        .stdout(out.try_clone()?)
        .stderr(out)
        .spawn()
        .context("start irctl recover")?;
    let mut recovery = LocalRecovery {
        child,
        out: out_path,
    };
    let socket_dir = args.workdir.join("run");
    loop {
        if let Some(status) = recovery.child.try_wait()? {
            bail!(
                "irctl recover exited ({status}) before its first query:\n{}",
                installation::log_tail(&recovery.out)
            );
        }
        if local_answers(&socket_dir, args.published_port).await {
            break;
        }
        ensure!(start.elapsed() < FLOW, "no first query within {FLOW:?}");
        tokio::time::sleep(POLL).await;
    }
    let wall_ms = ms(start.elapsed());

    let status = tokio::time::timeout(COMPLETE, recovery.child.wait())
        .await
        .context("irctl recover did not complete")??;
    ensure!(
        status.success(),
        "irctl recover: {status}:\n{}",
        installation::log_tail(&recovery.out)
    );
    let out = std::process::Command::new(irctl)
        .args(["status", "--output", "json", "--workdir"])
        .arg(&args.workdir)
        .output()?;
    ensure!(
        out.status.success(),
        "irctl status: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let state: serde_json::Value = serde_json::from_slice(&out.stdout)?;
    let reported_ms = state["timings"]["timeToFirstQueryMs"]
        .as_u64()
        .with_context(|| format!("no timings.timeToFirstQueryMs in {state}"))?;

    let pg_ctl = ir_e2e::pg::bindir().join("pg_ctl");
    let stop = ir_e2e::pg::as_pg(&pg_ctl)
        .arg("-D")
        .arg(&args.target_pgdata)
        .args(["-m", "fast", "-w", "stop"])
        .output()?;
    ensure!(
        stop.status.success(),
        "stop the promoted target: {}",
        String::from_utf8_lossy(&stop.stderr)
    );
    ensure!(
        ir_e2e::mounts_under(&args.workdir).is_empty(),
        "{} is still mounted after the recovery completed",
        args.workdir.display()
    );
    std::fs::remove_dir_all(&args.workdir)?;
    std::fs::remove_dir_all(&args.target_pgdata)?;
    Ok(LocalRun {
        wall_ms,
        reported_ms,
    })
}

/// What the benchmark's watches saw of one recovery's RecoveryMount and published Pod.
#[derive(Default)]
struct Seen {
    mount_created: Option<Instant>,
    mounted: Option<Instant>,
    pod_created: Option<Instant>,
    pod_running: Option<Instant>,
    service_ip: Option<String>,
}

/// Watches objects of one name and records what `on` makes of them; `ready` gets a message once
/// the watch runs.
fn watch_named<K, F>(
    api: Api<K>,
    name: &str,
    ready: tokio::sync::mpsc::Sender<()>,
    mut on: F,
) -> JoinHandle<()>
where
    K: Resource + Clone + DeserializeOwned + Debug + Send + 'static,
    F: FnMut(&K, Instant) + Send + 'static,
{
    let config = watcher::Config::default().fields(&format!("metadata.name={name}"));
    tokio::spawn(async move {
        let mut events = watcher(api, config).default_backoff().boxed();
        while let Some(event) = events.next().await {
            let now = Instant::now();
            match event {
                Ok(watcher::Event::InitDone) => {
                    let _ = ready.try_send(());
                }
                Ok(watcher::Event::Apply(o) | watcher::Event::InitApply(o)) => on(&o, now),
                _ => {}
            }
        }
    })
}

async fn k8s_run(fx: &Installation, name: &str) -> anyhow::Result<K8sRun> {
    let seen = Arc::new(Mutex::new(Seen::default()));
    let (ready, mut watching) = tokio::sync::mpsc::channel(2);
    let mounts: Api<RecoveryMount> = Api::namespaced(fx.plane.admin(), NAMESPACE);
    let on_mount = seen.clone();
    let on_pod = seen.clone();
    let on_service = seen.clone();
    let services: Api<Service> = Api::namespaced(fx.plane.admin(), NAMESPACE);
    let watches = [
        watch_named(mounts, name, ready.clone(), move |m, now| {
            let mut seen = on_mount.lock().expect("seen");
            seen.mount_created.get_or_insert(now);
            if m.status
                .as_ref()
                .is_some_and(|s| s.phase == MountPhase::Mounted && s.attempt == m.spec.attempt)
            {
                seen.mounted.get_or_insert(now);
            }
        }),
        watch_named(
            fx.pods(),
            &format!("{name}-published"),
            ready.clone(),
            move |p: &Pod, now| {
                let mut seen = on_pod.lock().expect("seen");
                seen.pod_created.get_or_insert(now);
                let status = p.status.as_ref();
                if status.and_then(|s| s.phase.as_deref()) == Some("Running") {
                    seen.pod_running.get_or_insert(now);
                }
            },
        ),
        watch_named(services, name, ready, move |s: &Service, _| {
            if let Some(ip) = s
                .spec
                .as_ref()
                .and_then(|s| s.cluster_ip.clone())
                .filter(|ip| !ip.is_empty() && ip != "None")
            {
                on_service.lock().expect("seen").service_ip = Some(ip);
            }
        }),
    ];
    for _ in &watches {
        watching.recv().await.context("a watch ended")?;
    }
    let result = k8s_recovery(fx, name, &seen).await;
    for watch in watches {
        watch.abort();
    }
    result
}

async fn k8s_recovery(fx: &Installation, name: &str, seen: &Mutex<Seen>) -> anyhow::Result<K8sRun> {
    let manifest = serde_json::json!({
        "apiVersion": "instantrecovery.dev/v1alpha1",
        "kind": "InstantRecovery",
        "metadata": {"name": name, "namespace": NAMESPACE},
        "spec": {
            "backup": {"repositoryRef": {"name": "backups"}, "id": fx.backup_id},
            "postgres": {"credentialsSecret": {"name": "db-superuser"}},
            "switchover": {"mode": "Manual"},
        },
    });
    let api = fx.recoveries();
    drop_caches()?;
    let start = Instant::now();
    api.patch(
        name,
        &PatchParams::apply(MANAGER).force(),
        &Patch::Apply(&manifest),
    )
    .await
    .context("apply the InstantRecovery")?;
    loop {
        let ip = seen.lock().expect("seen").service_ip.clone();
        if let Some(ip) = ip
            && service_answers(&ip).await
        {
            break;
        }
        if start.elapsed() > FLOW {
            bail!(
                "Service {name} did not answer within {FLOW:?}:\n{}",
                fx.diagnostics(name).await
            );
        }
        tokio::time::sleep(POLL).await;
    }
    let wall_ms = ms(start.elapsed());
    let reported_ms = loop {
        let status = api.get(name).await?.status.unwrap_or_default();
        if let Some(reported) = status.timings.time_to_first_query_ms {
            break reported;
        }
        if status.phase == Phase::Failed || start.elapsed() > FLOW {
            bail!(
                "no timeToFirstQueryMs from {name}:\n{}",
                fx.diagnostics(name).await
            );
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let after = |t: Option<Instant>| t.map_or(0, |t| ms(t.saturating_duration_since(start)));
    let (mount_created_ms, mounted_ms, pod_created_ms, pod_running_ms) = {
        let seen = seen.lock().expect("seen");
        (
            after(seen.mount_created),
            after(seen.mounted),
            after(seen.pod_created),
            after(seen.pod_running),
        )
    };

    let deleting = Instant::now();
    api.delete(name, &DeleteParams::default()).await?;
    while api.get_opt(name).await?.is_some() {
        if deleting.elapsed() > FLOW {
            bail!(
                "{name} not gone within {FLOW:?}:\n{}",
                fx.diagnostics(name).await
            );
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let delete_ms = ms(deleting.elapsed());
    ensure!(
        fx.mounts_left().is_empty(),
        "mounts left after the deletion: {:?}",
        fx.mounts_left()
    );
    Ok(K8sRun {
        wall_ms,
        reported_ms,
        mount_created_ms,
        mounted_ms,
        pod_created_ms,
        pod_running_ms,
        delete_ms,
    })
}

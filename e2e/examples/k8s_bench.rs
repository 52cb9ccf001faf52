//! Benchmarks of the Kubernetes part on the test harness (a real control plane, the agent and the
//! operator as processes with the chart's RBAC, PostgreSQL run by the kubelet stand-in), run by
//! bench/k8s-ttfq.sh and bench/k8s-scale.sh; results in docs/benchmarks.md.
//!
//! - `ttfq`: apply of an InstantRecovery to the first `SELECT 1` on its published Pod, against a
//!   local `irctl recover` of the same backup, alternating, with a cold page cache before each.
//! - `scale`: the operator's memory and reconcile latency with many InstantRecovery objects.
//! - `password`: the password the backup's `postgres` role needs for `ttfq` (the operator
//!   connects with it).
//!
//! Prints markdown table rows on stdout, per-run figures on stderr.

use std::collections::HashMap;
use std::fmt::Debug;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail, ensure};
use clap::{Parser, Subcommand};
use futures::{StreamExt, future};
use ir_api::crd::{InstantRecovery, MountPhase, RecoveryMount};
use ir_api::recovery::Phase;
use ir_e2e::installation::{self, Installation, NAMESPACE, PASSWORD};
use k8s_openapi::api::core::v1::Pod;
use kube::api::{DeleteParams, Patch, PatchParams, PostParams};
use kube::runtime::{WatchStreamExt, watcher};
use kube::{Api, Resource, ResourceExt};
use serde::de::DeserializeOwned;
use tokio::task::JoinHandle;

/// How often the first query is tried, on both sides.
const POLL: Duration = Duration::from_millis(10);
/// Longest wait for a first query, a status or a deletion.
const FLOW: Duration = Duration::from_secs(240);
/// Longest wait for a local recovery to complete (sync and switchover included).
const COMPLETE: Duration = Duration::from_secs(900);
/// Quiet time before reading the operator's memory.
const SETTLE: Duration = Duration::from_secs(10);
/// Field manager of the benchmark's server-side applies.
const MANAGER: &str = "k8s-bench";

#[derive(Parser)]
#[command(about = "Benchmarks of instant-recovery on Kubernetes (test harness)")]
struct Args {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Prints the password the backup's `postgres` role must have.
    Password,
    /// Apply to first query, against a local `irctl recover` of the same backup.
    Ttfq(TtfqArgs),
    /// Operator memory and reconcile latency with many InstantRecovery objects.
    Scale(ScaleArgs),
}

#[derive(clap::Args)]
struct TtfqArgs {
    /// Repository of the backup (file://); the cluster and the local run use the same one.
    #[arg(long)]
    repo: String,
    #[arg(long)]
    backup: String,
    #[arg(long, default_value_t = 3)]
    runs: usize,
    /// Workdir of the local `irctl recover`; must not exist, removed after each run. Its
    /// output goes to `<workdir>.out`.
    #[arg(long)]
    workdir: PathBuf,
    /// Target data directory of the local recovery; must not exist, removed after each run.
    #[arg(long)]
    target_pgdata: PathBuf,
    #[arg(long, default_value_t = 57410)]
    published_port: u16,
    #[arg(long, default_value_t = 57411)]
    target_port: u16,
    /// The data, for the table rows (`scale 50 (1500 MB)`).
    #[arg(long, default_value = "")]
    label: String,
}

#[derive(clap::Args)]
struct ScaleArgs {
    /// InstantRecovery objects created at once.
    #[arg(long, default_value_t = 200)]
    objects: usize,
    /// Objects created one at a time, alone, for the baseline.
    #[arg(long, default_value_t = 5)]
    solo: usize,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let run = async {
        match Args::parse().command {
            Command::Password => println!("{PASSWORD}"),
            Command::Ttfq(args) => ttfq(args).await?,
            Command::Scale(args) => scale(args).await?,
        }
        anyhow::Ok(())
    };
    // Interrupted, the run is dropped, and the installation with it: no process or mount is
    // left behind.
    let mut terminate = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    tokio::select! {
        result = run => result,
        _ = tokio::signal::ctrl_c() => bail!("interrupted"),
        _ = terminate.recv() => bail!("terminated"),
    }
}

fn drop_caches() -> anyhow::Result<()> {
    // SAFETY: sync has no preconditions.
    unsafe { libc::sync() };
    std::fs::write("/proc/sys/vm/drop_caches", "3").context("drop the page cache (needs root)")
}

fn ms(d: Duration) -> u64 {
    d.as_millis().try_into().unwrap_or(u64::MAX)
}

fn median(values: &[u64]) -> f64 {
    let mut v = values.to_vec();
    v.sort_unstable();
    match v.len() {
        0 => f64::NAN,
        n if n % 2 == 1 => v[n / 2] as f64,
        n => (v[n / 2 - 1] + v[n / 2]) as f64 / 2.0,
    }
}

/// Nearest-rank percentile (`p` in 0..=100).
fn percentile(values: &[u64], p: usize) -> u64 {
    let mut v = values.to_vec();
    v.sort_unstable();
    let rank = (p * v.len()).div_ceil(100).max(1);
    v.get(rank - 1).copied().unwrap_or_default()
}

fn ratio(value: f64, baseline: f64) -> String {
    format!("{:.2}", value / baseline)
}

fn join(values: &[u64]) -> String {
    values
        .iter()
        .map(u64::to_string)
        .collect::<Vec<_>>()
        .join(" / ")
}

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

async fn ttfq(args: TtfqArgs) -> anyhow::Result<()> {
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
             first select 1 +{} ms, operator reports {} ms; deleted in {} ms",
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
        "| apply of an InstantRecovery to first `SELECT 1` on the published Pod vs launch of \
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

async fn pod_answers(ip: &str) -> bool {
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
    pod_ip: Option<String>,
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
            ready,
            move |p: &Pod, now| {
                let mut seen = on_pod.lock().expect("seen");
                seen.pod_created.get_or_insert(now);
                let status = p.status.as_ref();
                if status.and_then(|s| s.phase.as_deref()) == Some("Running") {
                    seen.pod_running.get_or_insert(now);
                }
                if let Some(ip) = status
                    .and_then(|s| s.pod_ip.clone())
                    .filter(|ip| !ip.is_empty())
                {
                    seen.pod_ip = Some(ip);
                }
            },
        ),
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
        let ip = seen.lock().expect("seen").pod_ip.clone();
        if let Some(ip) = ip
            && pod_answers(&ip).await
        {
            break;
        }
        if start.elapsed() > FLOW {
            bail!(
                "{name}-published did not answer within {FLOW:?}:\n{}",
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

// ---- scale ----

/// One InstantRecovery as the benchmark's watch saw it.
#[derive(Default)]
struct Track {
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

type Tracks = Arc<Mutex<HashMap<String, Track>>>;

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

/// (VmRSS, VmHWM) of a process, KiB.
fn memory(pid: u32) -> anyhow::Result<(u64, u64)> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    let field = |key: &str| {
        status
            .lines()
            .find_map(|l| l.strip_prefix(key))
            .and_then(|v| v.split_whitespace().next())
            .and_then(|v| v.parse().ok())
            .with_context(|| format!("no {key} in /proc/{pid}/status"))
    };
    Ok((field("VmRSS:")?, field("VmHWM:")?))
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

fn mib(kib: u64) -> String {
    format!("{:.1}", kib as f64 / 1024.0)
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

async fn scale(args: ScaleArgs) -> anyhow::Result<()> {
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

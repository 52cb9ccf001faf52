//! `memory`: the agent's peak RSS while it serves a published backup on the real node, cold and
//! then warm, as bench/memory.sh measures `irctl mount` locally.

use super::*;

/// Peak RSS (VmHWM, KiB) of the agent after each phase, and how long the phase took.
struct Served {
    peak_kib: u64,
    took: Duration,
}

pub(super) async fn memory(args: MemoryArgs) -> anyhow::Result<()> {
    let fx = Installation::with_backup(ir_e2e::shared_tempdir(), args.repo, args.backup).await;
    let pid = fx.agent.as_ref().context("the agent is not running")?.pid();
    let (idle_kib, _) = super::memory(pid)?;
    let (mut cold, mut warm) = (Vec::new(), Vec::new());
    for run in 1..=args.runs {
        let name = format!("memory-{run}");
        drop_caches()?;
        let manifest = serde_json::json!({
            "apiVersion": "instantrecovery.dev/v1alpha1",
            "kind": "InstantRecovery",
            "metadata": {"name": name, "namespace": NAMESPACE},
            "spec": {
                "mode": "Publish",
                "backup": {"repositoryRef": {"name": "backups"}, "id": fx.backup_id},
                "postgres": {"credentialsSecret": {"name": "db-superuser"}},
            },
        });
        fx.recoveries()
            .patch(
                &name,
                &PatchParams::apply(MANAGER).force(),
                &Patch::Apply(&manifest),
            )
            .await
            .context("apply the InstantRecovery")?;
        fx.wait_phase(&name, Phase::Published, FLOW).await;
        let ip = fx.pod_ip(&format!("{name}-published"), FLOW).await;
        reset_peak(pid)?;
        let c = serve(&ip, pid, args.seconds, &args.table).await?;
        // Warm: the agent's caches hold what the cold phase read; the page cache does not.
        drop_caches()?;
        reset_peak(pid)?;
        let w = serve(&ip, pid, args.seconds, &args.table).await?;
        eprintln!(
            "run {run}: agent peak RSS cold {} MiB ({} s), warm {} MiB ({} s); idle before the \
             first run {} MiB",
            mib(c.peak_kib),
            c.took.as_secs(),
            mib(w.peak_kib),
            w.took.as_secs(),
            mib(idle_kib)
        );
        cold.push(c.peak_kib);
        warm.push(w.peak_kib);
        fx.recoveries()
            .delete(&name, &DeleteParams::default())
            .await?;
        let deleting = Instant::now();
        while fx.recoveries().get_opt(&name).await?.is_some() {
            ensure!(deleting.elapsed() < FLOW, "{name} not gone within {FLOW:?}");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
    let med = |v: &[u64]| median(v) / 1024.0;
    // The agent inherits the environment, and with it this setting.
    let cache_mib = std::env::var("IR_MEMORY_CACHE_MIB").unwrap_or_else(|_| "256".into());
    println!(
        "| peak RSS of the agent (`ir-agent`) on the real node serving {} published, memory cache \
         {cache_mib} MiB, `pgbench -S` {} s then a sequential scan of `{}`: cold / warm | \
         {:.0} / {:.0} MiB | | | |",
        args.label,
        args.seconds,
        args.table,
        med(&cold),
        med(&warm)
    );
    Ok(())
}

/// Clears the process's peak RSS, so VmHWM holds the peak of what follows.
fn reset_peak(pid: u32) -> anyhow::Result<()> {
    std::fs::write(format!("/proc/{pid}/clear_refs"), "5")
        .with_context(|| format!("reset the peak RSS of process {pid}"))
}

/// `pgbench -S` through PostgreSQL at `ip` for `seconds`, then a sequential scan of `table`;
/// the agent's peak RSS after both.
async fn serve(ip: &str, pid: u32, seconds: u64, table: &str) -> anyhow::Result<Served> {
    let start = Instant::now();
    let pgbench = tokio::process::Command::new(ir_e2e::pg::bindir().join("pgbench"))
        .args(["-h", ip, "-p", "5432", "-U", "postgres", "-S", "-n"])
        .args(["-c", "4", "-j", "2", "-T", &seconds.to_string(), "postgres"])
        .env("PGPASSWORD", installation::PASSWORD)
        .stdin(Stdio::null())
        .output()
        .await
        .context("run pgbench")?;
    ensure!(
        pgbench.status.success(),
        "pgbench -S: {}",
        String::from_utf8_lossy(&pgbench.stderr)
    );
    let client = installation::connect(ip).await?;
    client
        .simple_query(&format!("SELECT count(*) FROM {table}"))
        .await
        .with_context(|| format!("scan {table}"))?;
    Ok(Served {
        peak_kib: super::memory(pid)?.1,
        took: start.elapsed(),
    })
}

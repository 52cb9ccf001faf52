//! `irctl mount`: runs the mount its arguments ([`ir_cli::mount::MountArgs`]) describe until
//! SIGINT or SIGTERM.

use std::io::Write;
use std::time::{Duration, Instant};

use anyhow::Context;
use ir_cli::mount::MountArgs;
use ir_cli::point_in_time;
use ir_engine::backup::find_backup_for;
use ir_fuse::{MountOptions, mount_backup};
use tokio::signal::unix::{SignalKind, signal};

pub async fn run(args: MountArgs) -> anyhow::Result<()> {
    let started = Instant::now();
    let repo = args.repo.open().await?;
    let point_in_time = args.target.point_in_time();
    let id = match &point_in_time {
        Some(point) => {
            let location = args.repo.location();
            let (backup, status) = find_backup_for(&location, &args.backup, point)
                .await
                .map_err(|f| anyhow::anyhow!("{}: {}", f.reason, f.message))?;
            eprintln!(
                "backup {} reaches {}: it can recover {}",
                backup.id,
                status.target,
                status.window.map(|w| w.to_string()).unwrap_or_default()
            );
            backup.id
        }
        None => repo.resolve_backup(&args.backup).await?,
    };
    let manifest = repo.load_manifest(&id).await?;
    let mut opts = MountOptions::new(args.mountpoint.clone(), args.cache.clone());
    opts.uid = args.uid;
    opts.gid = args.gid;
    opts.threads = args.threads;
    opts.memory_cache_bytes = args.memory_cache_mib << 20;
    opts.readahead_chunks = args.readahead_chunks;

    let runtime = tokio::runtime::Handle::current();
    let mounted = tokio::task::spawn_blocking(move || mount_backup(repo, manifest, &opts, runtime))
        .await?
        .with_context(|| format!("mounting backup {id} at {}", args.mountpoint.display()))?;
    if let Some(point) = &point_in_time {
        let program = std::env::current_exe().context("finding irctl for restore_command")?;
        let settings =
            point_in_time::settings(point, &program, &args.repo.store.repo_spec(&args.repo.repo));
        let owner = args.uid.zip(args.gid);
        point_in_time::append_settings(&args.mountpoint, &settings)
            .and_then(|()| point_in_time::signal_recovery(&args.mountpoint, owner))
            .with_context(|| {
                format!(
                    "writing the recovery settings on {}",
                    args.mountpoint.display()
                )
            })?;
    }
    // Handlers first: whoever waits for the line below may signal us at once.
    let mut term = signal(SignalKind::terminate())?;
    let mut int = signal(SignalKind::interrupt())?;
    println!(
        "mounted backup {id} at {} (cache {}) in {} ms",
        args.mountpoint.display(),
        args.cache.display(),
        started.elapsed().as_millis()
    );
    std::io::stdout().flush()?;

    tokio::select! {
        _ = term.recv() => {}
        _ = int.recv() => {}
    }
    tracing::info!("unmounting");
    tokio::task::spawn_blocking(move || mounted.unmount(Duration::from_secs(10))).await??;
    eprintln!("unmounted {}", args.mountpoint.display());
    Ok(())
}

//! `irctl mount`: serve a backup read-write through FUSE, writes going to an IRCache.
use std::io::Write;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::Context;
use clap::Args;
use ir_fuse::{MountOptions, mount_backup};
use tokio::signal::unix::{SignalKind, signal};

use crate::repo_args::RepoArgs;

/// Exit code of `irctl mount` when the repository could not be reached (EX_TEMPFAIL).
pub const MOUNT_EXIT_TRANSIENT: i32 = 75;

#[derive(Debug, Args)]
pub struct MountArgs {
    #[command(flatten)]
    pub repo: RepoArgs,
    /// Backup id to mount, or `latest`.
    #[arg(long)]
    pub backup: String,
    /// IRCache directory: every write lands here. Reusing it after a crash keeps all fsynced
    /// writes; it is bound to the backup it was first used with.
    #[arg(long)]
    pub cache: PathBuf,
    /// Owner uid of the backup's files (the user PostgreSQL runs as).
    #[arg(long)]
    pub uid: Option<u32>,
    /// Owner gid of the backup's files.
    #[arg(long)]
    pub gid: Option<u32>,
    /// FUSE worker threads.
    #[arg(long, default_value_t = 4)]
    pub threads: usize,
    /// In-memory chunk cache, MiB.
    #[arg(long, default_value_t = 256)]
    pub memory_cache_mib: u64,
    /// Chunks read ahead on sequential reads.
    #[arg(long, default_value_t = 8)]
    pub readahead_chunks: usize,
    /// Where to mount: an existing empty directory.
    pub mountpoint: PathBuf,
}

pub async fn run(args: MountArgs) -> anyhow::Result<()> {
    let started = Instant::now();
    let repo = args.repo.open().await?;
    let id = repo.resolve_backup(&args.backup).await?;
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

//! `irctl backup`: create, list, show and verify backups.

use std::collections::{BTreeMap, HashMap};
use std::io::{BufReader, IsTerminal};
use std::path::PathBuf;
use std::sync::Arc;

use anyhow::{Context, bail};
use clap::{Args, Subcommand};
use ir_cli::output::{Output, print_json};
use ir_repository::size::format_size;
use ir_repository::wal::WalListing;
use ir_repository::{
    BackupManifest, Checkpoint, EntryKind, InvalidBackup, Progress, Repository, RestoreOwner,
};
use serde::Serialize;
use time::format_description::well_known::Rfc3339;

use crate::progress::ProgressLine;
use crate::wal_cmd::WalOfBackup;
use ir_cli::repo_args::RepoArgs;

/// Read buffer for tar input: tar headers are 512 bytes, reads should not be.
const TAR_BUFFER: usize = 1 << 20;

#[derive(Debug, Subcommand)]
pub enum BackupCommand {
    /// Back up a PostgreSQL cluster; prints the new backup id on stdout.
    Create(CreateArgs),
    /// List the backups of a repository.
    List(ListArgs),
    /// Show one backup (`latest` for the newest).
    Show(ShowArgs),
    /// Read back every chunk of a backup; fails naming each damaged file.
    Verify(ShowArgs),
    /// Restore a backup in full to a local directory (the classic, slow way to recover).
    Restore(RestoreArgs),
    /// Delete one backup, unless a running mount holds a lease on it.
    Delete(crate::retention_cmd::DeleteArgs),
    /// Delete the backups a retention policy does not keep (restic's --keep-* rules); backups
    /// in use are skipped.
    Prune(crate::retention_cmd::PruneArgs),
}

#[derive(Debug, Args)]
pub struct RestoreArgs {
    /// Backup id, or `latest`.
    id: String,
    #[command(flatten)]
    repo: RepoArgs,
    /// Directory to restore into; must be empty or absent.
    #[arg(long)]
    target: PathBuf,
    /// Owner uid of the restored files (the user PostgreSQL runs as).
    #[arg(long)]
    uid: Option<u32>,
    /// Owner gid of the restored files.
    #[arg(long)]
    gid: Option<u32>,
}

#[derive(Debug, Args)]
pub struct CreateArgs {
    #[command(flatten)]
    repo: RepoArgs,
    #[command(flatten)]
    source: SourceArgs,
    /// A label to record in the backup's manifest (repeatable); `backup prune --label`
    /// selects by it.
    #[arg(long = "label", value_name = "KEY=VALUE", value_parser = crate::labels::parse_label)]
    labels: Vec<(String, String)>,
}

/// What to read a backup from (for `backup create`, and for `repo repair`).
#[derive(Debug, Args)]
pub struct SourceArgs {
    #[command(flatten)]
    from: SourceChoice,
    /// With --from-pg: `fast` starts the backup at once (an immediate checkpoint on the
    /// server), `spread` waits for a paced one and puts less load on a busy server.
    #[arg(long, value_enum, default_value_t = CheckpointArg::Fast)]
    checkpoint: CheckpointArg,
    /// With --from-pg: directory of `pg_basebackup` (default: PATH, then the newest
    /// /usr/lib/postgresql/*/bin).
    #[arg(long, env = "IR_PG_BINDIR", value_name = "DIR")]
    pg_bindir: Option<PathBuf>,
}

#[derive(Debug, Clone, Copy, clap::ValueEnum)]
enum CheckpointArg {
    Fast,
    Spread,
}

impl From<CheckpointArg> for Checkpoint {
    fn from(c: CheckpointArg) -> Self {
        match c {
            CheckpointArg::Fast => Checkpoint::Fast,
            CheckpointArg::Spread => Checkpoint::Spread,
        }
    }
}

#[derive(Debug, Args)]
#[group(required = true, multiple = false)]
struct SourceChoice {
    /// Run pg_basebackup against this server (libpq connection string or URI). Give the
    /// password through PGPASSWORD or PGPASSFILE: one written here is visible to every local
    /// user in irctl's own command line (it is passed on to pg_basebackup in its environment).
    #[arg(long, value_name = "CONNINFO")]
    from_pg: Option<String>,
    /// Read `pg_basebackup -Ft -X fetch -D -` output from a file, or `-` for stdin.
    #[arg(long, value_name = "FILE|-")]
    from_tar: Option<PathBuf>,
    /// A plain-format pg_basebackup directory or a cleanly shut down data directory.
    #[arg(long, value_name = "DIR")]
    from_dir: Option<PathBuf>,
}

impl SourceArgs {
    /// The source, and how to name it in messages.
    pub fn open(self) -> anyhow::Result<(ir_repository::Source, String)> {
        let f = self.from;
        if let Some(conninfo) = f.from_pg {
            if conninfo.contains("password") {
                eprintln!(
                    "irctl: warning: --from-pg holds a password, which other local users can \
                     read in this command line; prefer PGPASSWORD or PGPASSFILE"
                );
            }
            let source = ir_repository::Source::Pg {
                conninfo,
                checkpoint: self.checkpoint.into(),
                pg_bindir: self.pg_bindir,
            };
            return Ok((source, "--from-pg".to_string()));
        }
        if let Some(file) = f.from_tar {
            let what = format!("--from-tar {}", file.display());
            let reader: Box<dyn std::io::Read + Send> = if file.as_os_str() == "-" {
                Box::new(BufReader::with_capacity(TAR_BUFFER, std::io::stdin()))
            } else {
                let f = std::fs::File::open(&file).with_context(|| what.clone())?;
                Box::new(BufReader::with_capacity(TAR_BUFFER, f))
            };
            return Ok((ir_repository::Source::Tar(reader), what));
        }
        let dir = f.from_dir.expect("clap requires one source");
        let what = format!("--from-dir {}", dir.display());
        Ok((ir_repository::Source::Dir(dir), what))
    }
}

#[derive(Debug, Args)]
pub struct ListArgs {
    #[command(flatten)]
    repo: RepoArgs,
    #[arg(long, value_enum, default_value_t)]
    output: Output,
}

#[derive(Debug, Args)]
pub struct ShowArgs {
    /// Backup id, or `latest`.
    id: String,
    #[command(flatten)]
    repo: RepoArgs,
    #[arg(long, value_enum, default_value_t)]
    output: Output,
}

/// A backup without its file list.
#[derive(Debug, Serialize)]
struct Summary<'a> {
    id: &'a str,
    created: String,
    pg_version: &'a str,
    system_identifier: &'a str,
    start_lsn: &'a str,
    stop_lsn: Option<&'a str>,
    timeline: u32,
    total_size: u64,
    chunk_size: u64,
    files: usize,
    stored_chunks: usize,
    /// `backup create --label`s.
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    labels: &'a BTreeMap<String, String>,
    /// The WAL the backup needs to be consistent, and what it can be recovered to with the
    /// archived WAL (`irctl wal push`); `null` when its system's archive cannot be listed.
    wal: Option<WalOfBackup>,
}

impl<'a> Summary<'a> {
    fn of(m: &'a BackupManifest) -> Self {
        let chunk_lists = || {
            m.entries.iter().filter_map(|e| match &e.kind {
                EntryKind::File { chunks } => Some(chunks),
                _ => None,
            })
        };
        let mut stored: Vec<_> = chunk_lists().flatten().flatten().collect();
        stored.sort_unstable();
        stored.dedup();
        Summary {
            id: &m.id,
            created: m.created.format(&Rfc3339).unwrap_or_default(),
            pg_version: &m.pg_version,
            system_identifier: &m.system_identifier,
            start_lsn: &m.start_lsn,
            stop_lsn: m.stop_lsn.as_deref(),
            timeline: m.timeline,
            total_size: m.total_size,
            chunk_size: m.chunk_size,
            files: chunk_lists().count(),
            stored_chunks: stored.len(),
            labels: &m.labels,
            wal: None,
        }
    }

    fn with_wal(mut self, listings: &HashMap<String, WalListing>, m: &BackupManifest) -> Self {
        self.wal = listings
            .get(&m.system_identifier)
            .map(|l| WalOfBackup::of(l, m));
        self
    }
}

/// The WAL archive of each system the backups are of, by system identifier as manifests write
/// it. An archive that cannot be listed is left out with a warning: the backups are still
/// listed.
async fn wal_listings(
    repo: &Repository,
    backups: &[BackupManifest],
) -> HashMap<String, WalListing> {
    let mut listings = HashMap::new();
    for m in backups {
        if listings.contains_key(&m.system_identifier) {
            continue;
        }
        let Ok(system) = m.system_identifier.parse::<u64>() else {
            continue;
        };
        match repo.wal(system).list().await {
            Ok(l) => {
                listings.insert(m.system_identifier.clone(), l);
            }
            Err(e) => eprintln!("irctl: the WAL archive of system {system} cannot be listed: {e}"),
        }
    }
    listings
}

/// `0/2000100 @ 2026-11-25 06:36:10`: where and when the backup is consistent by, `-` when
/// nothing of its system is archived.
fn recoverable_from(s: &Summary) -> String {
    match s.wal.as_ref().map(|w| &w.recovery_window) {
        Some(w) => format!(
            "{} @ {}",
            w.start_lsn,
            w.earliest
                .get(..19)
                .unwrap_or(&w.earliest)
                .replace('T', " ")
        ),
        None => "-".to_string(),
    }
}

/// `0/3000100 @ 2026-11-25 07:04:00` for a window reaching past the backup, `-` otherwise.
fn recoverable_to(s: &Summary) -> String {
    let Some(w) = s.wal.as_ref().map(|w| &w.recovery_window) else {
        return "-".to_string();
    };
    match &w.latest {
        // To the second, as the CREATED column.
        Some(latest) => format!(
            "{} @ {}",
            w.end_lsn,
            latest.get(..19).unwrap_or(latest).replace('T', " ")
        ),
        None => "-".to_string(),
    }
}

pub async fn run(cmd: BackupCommand) -> anyhow::Result<()> {
    match cmd {
        BackupCommand::Create(args) => create(args).await,
        BackupCommand::Delete(args) => crate::retention_cmd::delete(args).await,
        BackupCommand::Prune(args) => crate::retention_cmd::prune(args).await,
        BackupCommand::List(args) => {
            let repo = args.repo.open().await?;
            let list = repo.list_backups().await?;
            warn_invalid(&list.invalid);
            let backups = list.backups;
            let listings = wal_listings(&repo, &backups).await;
            let summaries: Vec<Summary> = backups
                .iter()
                .map(|m| Summary::of(m).with_wal(&listings, m))
                .collect();
            if args.output == Output::Json {
                return Ok(print_json(&summaries)?);
            }
            println!(
                "{:<22} {:<20} {:<4} {:>10} {:>8} {:<12} {:<12} {:<34} {:<12}",
                "ID",
                "CREATED",
                "PG",
                "SIZE",
                "FILES",
                "START LSN",
                "STOP LSN",
                "RECOVERABLE FROM",
                "RECOVERABLE TO"
            );
            let short =
                time::macros::format_description!("[year]-[month]-[day] [hour]:[minute]:[second]");
            for (s, m) in summaries.iter().zip(&backups) {
                println!(
                    "{:<22} {:<20} {:<4} {:>10} {:>8} {:<12} {:<12} {:<34} {:<12}",
                    s.id,
                    m.created.format(short).unwrap_or_default(),
                    s.pg_version,
                    format_size(s.total_size),
                    s.files,
                    s.start_lsn,
                    s.stop_lsn.unwrap_or("-"),
                    recoverable_from(s),
                    recoverable_to(s)
                );
            }
            Ok(())
        }
        BackupCommand::Show(args) => {
            let repo = args.repo.open().await?;
            let id = repo.resolve_backup(&args.id).await?;
            let m = repo.load_manifest(&id).await?;
            let listings = wal_listings(&repo, std::slice::from_ref(&m)).await;
            let s = Summary::of(&m).with_wal(&listings, &m);
            if args.output == Output::Json {
                /// The manifest as stored, and what the WAL archive makes of it.
                #[derive(Serialize)]
                struct Shown<'a> {
                    #[serde(flatten)]
                    manifest: &'a BackupManifest,
                    wal: Option<WalOfBackup>,
                }
                return Ok(print_json(&Shown {
                    manifest: &m,
                    wal: s.wal,
                })?);
            }
            println!("id:                {}", s.id);
            println!("created:           {}", s.created);
            println!("PostgreSQL:        {}", s.pg_version);
            println!("system identifier: {}", s.system_identifier);
            println!("timeline:          {}", s.timeline);
            println!("start LSN:         {}", s.start_lsn);
            println!("stop LSN:          {}", s.stop_lsn.unwrap_or("-"));
            println!(
                "size:              {} ({} bytes)",
                format_size(s.total_size),
                s.total_size
            );
            println!("files:             {}", s.files);
            println!("entries:           {}", m.entries.len());
            for (key, value) in &m.labels {
                println!("label:             {key}={value}");
            }
            println!(
                "stored chunks:     {} ({} each)",
                s.stored_chunks,
                format_size(s.chunk_size)
            );
            println!("repository:        {}", repo.url());
            if let Some(wal) = &s.wal {
                print_wal(&s, wal);
            }
            Ok(())
        }
        BackupCommand::Restore(args) => {
            let repo = args.repo.open().await?;
            let id = repo.resolve_backup(&args.id).await?;
            let progress = Arc::new(Progress::default());
            let started = std::time::Instant::now();
            let manifest = {
                let _line = ProgressLine::start(&progress, "restored");
                let owner = RestoreOwner {
                    uid: args.uid,
                    gid: args.gid,
                };
                repo.restore(&id, &args.target, owner, progress.clone())
                    .await
                    .with_context(|| {
                        format!("restoring backup {id} to {}", args.target.display())
                    })?
            };
            println!(
                "restored backup {} ({}) to {} in {:.1} s",
                manifest.id,
                format_size(manifest.total_size),
                args.target.display(),
                started.elapsed().as_secs_f64()
            );
            Ok(())
        }
        BackupCommand::Verify(args) => {
            let repo = args.repo.open().await?;
            let id = repo.resolve_backup(&args.id).await?;
            let progress = Arc::new(Progress::default());
            let report = {
                let _line = ProgressLine::start(&progress, "checked");
                repo.verify(&id, progress.clone()).await?
            };
            if args.output == Output::Json {
                print_json(&report)?;
            } else {
                for d in &report.damaged {
                    println!(
                        "damaged: {} chunk {} at offset {}: {}",
                        d.path, d.chunk_index, d.offset, d.reason
                    );
                }
                println!(
                    "backup {}: {} files, {} chunks ({}) checked, {} damaged",
                    report.backup_id,
                    report.files,
                    report.chunks_checked,
                    format_size(report.bytes_checked),
                    report.damaged.len()
                );
            }
            if !report.is_ok() {
                let mut files: Vec<&str> = report.damaged.iter().map(|d| d.path.as_str()).collect();
                files.dedup();
                bail!(
                    "backup {} in {} is damaged: {}",
                    report.backup_id,
                    repo.url(),
                    files.join(", ")
                );
            }
            Ok(())
        }
    }
}

/// The WAL lines of `backup show`.
fn print_wal(s: &Summary, wal: &WalOfBackup) {
    let w = &wal.recovery_window;
    let segment =
        |name: &Option<String>| name.as_ref().map(|n| format!(" ({n})")).unwrap_or_default();
    println!(
        "WAL needed:        {}{} .. {}{}",
        s.start_lsn,
        segment(&wal.start_segment),
        s.stop_lsn.unwrap_or(s.start_lsn),
        segment(if s.stop_lsn.is_some() {
            &wal.stop_segment
        } else {
            &wal.start_segment
        })
    );
    match &w.latest {
        Some(latest) => println!(
            "recoverable:       {} .. {} (LSN {} .. {}, timeline {})",
            w.earliest, latest, w.start_lsn, w.end_lsn, w.timeline
        ),
        None => println!(
            "recoverable:       to its consistency point {} only: no WAL past it is archived",
            w.start_lsn
        ),
    }
    if let Some(missing) = &w.first_missing {
        println!("first missing WAL: {missing}");
    }
}

/// Invalid backups go to stderr: the listing of the others stays what scripts read.
pub fn warn_invalid(invalid: &[InvalidBackup]) {
    for b in invalid {
        eprintln!(
            "irctl: backup {} is invalid and left out: {}",
            b.id, b.reason
        );
    }
}

async fn create(args: CreateArgs) -> anyhow::Result<()> {
    let repo = args.repo.open().await?;
    let progress = Arc::new(Progress::default());
    let line = ProgressLine::start(&progress, "read");
    let started = std::time::Instant::now();
    let (source, what) = args.source.open()?;
    let labels = args.labels.into_iter().collect();
    let manifest = repo
        .ingest(source, labels, progress.clone())
        .await
        .context(what)?;
    drop(line);
    let s = progress.snapshot();
    let mut summary = format!(
        "backup {}: {} in {} files, {} uploaded ({} new chunks, {} deduplicated, {} zero) in {:.1}s",
        manifest.id,
        format_size(manifest.total_size),
        Summary::of(&manifest).files,
        format_size(s.bytes_uploaded),
        s.chunks_new,
        s.chunks_deduped,
        s.chunks_zero,
        started.elapsed().as_secs_f64()
    );
    if s.chunks_replaced > 0 {
        summary += &format!(
            "; {} damaged stored chunks were written again",
            s.chunks_replaced
        );
    }
    if std::io::stderr().is_terminal() {
        eprintln!("{summary}");
    } else {
        tracing::info!("{summary}");
    }
    println!("{}", manifest.id);
    Ok(())
}

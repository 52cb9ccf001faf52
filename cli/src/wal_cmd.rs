//! `irctl wal`: continuous WAL archiving into the repository, as PostgreSQL's `archive_command`
//! (`push`) and `restore_command` (`fetch`), and its upkeep (`list`, `verify`, `prune`).

use std::ffi::OsStr;
use std::io::{Read, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use anyhow::{Context, bail};
use clap::{Args, Subcommand};
use ir_cli::output::{Output, print_json};
use ir_cli::repo_args::RepoArgs;
use ir_repository::size::format_size;
use ir_repository::wal::{
    Gap, MAX_SEGMENT_SIZE, MAX_SMALL_FILE, PushOutcome, WalError, WalFileName, WalListing,
    check_segment, system_identifier_from_pg_control,
};
use ir_repository::{Repository, format_lsn};
use serde::Serialize;

/// The exit status of `wal fetch` for every failure but "not archived". PostgreSQL takes a
/// restore_command status above 125 as fatal and stops recovery (RestoreArchivedFile in
/// xlogarchive.c: `wait_result_is_any_signal(rc, true)`, true for any exit code > 125), where
/// any other non-zero status means "not archived" and recovery would end there and promote,
/// short of WAL that exists. 126 and 127 read as "command not executable/not found" in its
/// log and 128 + n as death by signal n (143, SIGTERM, makes it exit quietly), so the code is
/// one no signal maps to.
pub const FETCH_EXIT_FATAL: u8 = 200;

#[derive(Debug, Subcommand)]
pub enum WalCommand {
    /// Archive one WAL file (segment, .partial, .history or .backup); exits 0 only once it is
    /// stored durably: `archive_command = 'irctl wal push --repo URL %p'`.
    Push(PushArgs),
    /// Restore one archived WAL file to DEST: `restore_command = 'irctl wal fetch --repo URL %f
    /// %p'`. Exits 1 when it is not archived, 200 on any other failure (PostgreSQL then stops
    /// recovery instead of ending it early).
    Fetch(FetchArgs),
    /// Per system and timeline: the first and last archived segment, their count and the gaps.
    List(ListArgs),
    /// Read back every archived WAL file and check it; fails naming damaged files and gaps.
    Verify(ListArgs),
    /// Delete the segments older than a backup's start (of its system, on its timeline and
    /// earlier ones); history files are kept.
    Prune(PruneArgs),
}

/// Which cluster's archive: given, or read from its control file.
#[derive(Debug, Args)]
pub struct SystemArgs {
    /// The cluster's system identifier (default: read from global/pg_control in --pgdata).
    #[arg(long, value_name = "N")]
    system_identifier: Option<u64>,
    /// The cluster's data directory (default: the current directory, where PostgreSQL runs
    /// archive_command and restore_command).
    #[arg(long, value_name = "DIR")]
    pgdata: Option<PathBuf>,
}

impl SystemArgs {
    fn resolve(&self) -> anyhow::Result<u64> {
        if let Some(id) = self.system_identifier {
            return Ok(id);
        }
        let dir = self.pgdata.clone().unwrap_or_else(|| PathBuf::from("."));
        let control = dir.join("global/pg_control");
        let bytes = read_bounded(&control, 64 * 1024)?;
        system_identifier_from_pg_control(&bytes)
            .map_err(anyhow::Error::msg)
            .with_context(|| {
                format!(
                    "{}: give --system-identifier or --pgdata",
                    control.display()
                )
            })
    }
}

#[derive(Debug, Args)]
pub struct PushArgs {
    #[command(flatten)]
    repo: RepoArgs,
    #[command(flatten)]
    system: SystemArgs,
    /// The WAL file (`%p`: relative to the data directory PostgreSQL runs the command in).
    path: PathBuf,
}

#[derive(Debug, Args)]
pub struct FetchArgs {
    #[command(flatten)]
    repo: RepoArgs,
    #[command(flatten)]
    system: SystemArgs,
    /// The WAL file's name (`%f`).
    name: String,
    /// Where to write it (`%p`); written whole or not at all.
    dest: PathBuf,
}

#[derive(Debug, Args)]
pub struct ListArgs {
    #[command(flatten)]
    repo: RepoArgs,
    /// Only this system's WAL (default: every system's).
    #[arg(long, value_name = "N")]
    system_identifier: Option<u64>,
    #[arg(long, value_enum, default_value_t)]
    output: Output,
}

#[derive(Debug, Args)]
pub struct PruneArgs {
    #[command(flatten)]
    repo: RepoArgs,
    /// The oldest backup to keep restorable to any point: segments before its start go (`latest`
    /// for the newest backup).
    #[arg(long, value_name = "ID")]
    before_backup: String,
    /// Say what would be deleted without deleting anything.
    #[arg(long)]
    dry_run: bool,
    #[arg(long, value_enum, default_value_t)]
    output: Output,
}

pub async fn run(cmd: WalCommand) -> anyhow::Result<()> {
    match cmd {
        WalCommand::Push(args) => push(args).await,
        WalCommand::Fetch(args) => fetch(args).await,
        WalCommand::List(args) => list(args).await,
        WalCommand::Verify(args) => verify(args).await,
        WalCommand::Prune(args) => prune(args).await,
    }
}

/// The exit status of a failed `wal fetch`: 1 when the file is not archived, which PostgreSQL
/// takes for the end of the archive, [`FETCH_EXIT_FATAL`] for everything else.
pub fn fetch_exit_code(e: &anyhow::Error) -> u8 {
    let missing = e
        .chain()
        .any(|c| matches!(c.downcast_ref::<WalError>(), Some(WalError::Missing { .. })));
    if missing { 1 } else { FETCH_EXIT_FATAL }
}

/// Whether the command line (without the program name) runs `wal fetch`: its usage errors must
/// stop recovery as its other failures do, not read as "not archived".
pub fn is_fetch(args: &[String]) -> bool {
    let mut words = args.iter().filter(|a| !a.starts_with('-'));
    words.next().map(String::as_str) == Some("wal")
        && words.next().map(String::as_str) == Some("fetch")
}

/// The whole file, refused past `max` bytes before it is read.
fn read_bounded(path: &Path, max: u64) -> anyhow::Result<Vec<u8>> {
    let what = || path.display().to_string();
    let file = std::fs::File::open(path).with_context(what)?;
    let len = file.metadata().with_context(what)?.len();
    if len > max {
        bail!("{}: {len} bytes, more than the {max} expected", what());
    }
    let mut bytes = Vec::with_capacity(len as usize);
    file.take(max + 1)
        .read_to_end(&mut bytes)
        .with_context(what)?;
    if bytes.len() as u64 > max {
        bail!("{}: grew past {max} bytes while read", what());
    }
    Ok(bytes)
}

async fn push(args: PushArgs) -> anyhow::Result<()> {
    let name = args
        .path
        .file_name()
        .and_then(OsStr::to_str)
        .with_context(|| format!("{}: names no WAL file", args.path.display()))?;
    let file = WalFileName::parse(name)?;
    let max = if file.segment().is_some() {
        MAX_SEGMENT_SIZE
    } else {
        MAX_SMALL_FILE
    };
    let bytes = read_bounded(&args.path, max)?;
    // A segment names its system in its page header; history and backup files do not.
    let system = match file.segment() {
        Some(_) => {
            let header = check_segment(name, &bytes)?;
            if let Some(given) = args.system.system_identifier
                && given != header.system_identifier
            {
                bail!(
                    "{name} belongs to system {}, not {given} as --system-identifier says",
                    header.system_identifier
                );
            }
            header.system_identifier
        }
        None => args.system.resolve()?,
    };
    let repo = args.repo.open().await?;
    match repo.wal(system).push(name, &bytes).await? {
        PushOutcome::Stored => tracing::info!(wal = name, system, "archived"),
        PushOutcome::AlreadyStored => {
            tracing::info!(wal = name, system, "already archived with the same content")
        }
    }
    Ok(())
}

async fn fetch(args: FetchArgs) -> anyhow::Result<()> {
    WalFileName::parse(&args.name)?;
    let system = args.system.resolve()?;
    let repo = args.repo.open().await?;
    let bytes = repo.wal(system).fetch(&args.name).await?;
    write_whole(&args.dest, &bytes)
        .with_context(|| format!("writing {} to {}", args.name, args.dest.display()))
}

/// Writes `bytes` to `dest` through a temporary file in its directory renamed over it, so that
/// `dest` never holds part of them. Not fsynced: PostgreSQL fsyncs a restored file itself when
/// it keeps it, and fetches it again after a crash.
fn write_whole(dest: &Path, bytes: &[u8]) -> std::io::Result<()> {
    let dir = match dest.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    };
    let name = dest
        .file_name()
        .ok_or_else(|| std::io::Error::new(std::io::ErrorKind::InvalidInput, "names no file"))?;
    let tmp = dir.join(format!(
        ".{}.irctl-{}",
        name.to_string_lossy(),
        std::process::id()
    ));
    // Left by an earlier process of the same pid that was killed.
    let _ = std::fs::remove_file(&tmp);
    let written = std::fs::File::options()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(&tmp)
        .and_then(|mut f| f.write_all(bytes))
        .and_then(|()| std::fs::rename(&tmp, dest));
    if written.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    written
}

/// The systems a listing command covers.
async fn systems(repo: &Repository, only: Option<u64>) -> anyhow::Result<Vec<u64>> {
    Ok(match only {
        Some(id) => vec![id],
        None => repo.wal_systems().await?,
    })
}

#[derive(Debug, Serialize)]
struct TimelineView {
    timeline: u32,
    first: Option<String>,
    last: Option<String>,
    segments: usize,
    partial: Vec<String>,
    backup_files: Vec<String>,
    gaps: Vec<Gap>,
}

#[derive(Debug, Serialize)]
struct SystemView {
    system_identifier: u64,
    segment_size: Option<u64>,
    timelines: Vec<TimelineView>,
    history: Vec<u32>,
    unreadable: Vec<String>,
}

impl SystemView {
    fn of(l: &WalListing) -> SystemView {
        let gaps = l.gaps();
        SystemView {
            system_identifier: l.system_identifier,
            segment_size: l.segment_size,
            timelines: l
                .timelines
                .iter()
                .map(|(&timeline, tl)| TimelineView {
                    timeline,
                    first: tl.segments.values().next().map(|s| s.name.clone()),
                    last: tl.segments.values().next_back().map(|s| s.name.clone()),
                    segments: tl.segments.len(),
                    partial: tl.partial.values().map(|s| s.name.clone()).collect(),
                    backup_files: tl.backup_files.iter().map(|s| s.name.clone()).collect(),
                    gaps: gaps
                        .iter()
                        .filter(|g| g.timeline == timeline)
                        .cloned()
                        .collect(),
                })
                .collect(),
            history: l.history.iter().copied().collect(),
            unreadable: l.unreadable.clone(),
        }
    }
}

fn gap_text(g: &Gap) -> String {
    if g.first_missing == g.last_missing {
        g.first_missing.clone()
    } else {
        format!("{} .. {}", g.first_missing, g.last_missing)
    }
}

async fn list(args: ListArgs) -> anyhow::Result<()> {
    let repo = args.repo.open().await?;
    let mut views = Vec::new();
    for system in systems(&repo, args.system_identifier).await? {
        views.push(SystemView::of(&repo.wal(system).list().await?));
    }
    if args.output == Output::Json {
        return Ok(print_json(&views)?);
    }
    if views.is_empty() {
        println!("no WAL archived in {}", repo.url());
    }
    for v in &views {
        let size = v.segment_size.map(format_size).unwrap_or("?".into());
        println!("system {} ({size} segments)", v.system_identifier);
        for t in &v.timelines {
            println!(
                "  timeline {}: {} segments, {} .. {}{}{}",
                t.timeline,
                t.segments,
                t.first.as_deref().unwrap_or("-"),
                t.last.as_deref().unwrap_or("-"),
                if t.partial.is_empty() {
                    String::new()
                } else {
                    format!(", partial {}", t.partial.join(", "))
                },
                if t.backup_files.is_empty() {
                    String::new()
                } else {
                    format!(", {} backup history files", t.backup_files.len())
                },
            );
            for g in &t.gaps {
                println!("    missing: {}", gap_text(g));
            }
        }
        if !v.history.is_empty() {
            let tl: Vec<String> = v.history.iter().map(u32::to_string).collect();
            println!("  history files of timelines {}", tl.join(", "));
        }
        for u in &v.unreadable {
            println!("  unreadable: {u}");
        }
    }
    Ok(())
}

async fn verify(args: ListArgs) -> anyhow::Result<()> {
    let repo = args.repo.open().await?;
    let mut reports = Vec::new();
    for system in systems(&repo, args.system_identifier).await? {
        reports.push(repo.wal(system).verify().await?);
    }
    if args.output == Output::Json {
        print_json(&reports)?;
    } else {
        if reports.is_empty() {
            println!("no WAL archived in {}", repo.url());
        }
        for r in &reports {
            for d in &r.damaged {
                println!("damaged: {}: {}", d.name, d.reason);
            }
            for g in &r.gaps {
                println!("missing: timeline {}: {}", g.timeline, gap_text(g));
            }
            println!(
                "system {}: {} WAL files ({}) checked, {} damaged, {} gaps",
                r.system_identifier,
                r.objects_checked,
                format_size(r.bytes_checked),
                r.damaged.len(),
                r.gaps.len()
            );
        }
    }
    let mut problems: Vec<String> = Vec::new();
    for r in &reports {
        problems.extend(r.damaged.iter().map(|d| format!("{} damaged", d.name)));
        problems.extend(r.gaps.iter().map(|g| format!("{} missing", gap_text(g))));
    }
    if !problems.is_empty() {
        bail!(
            "the WAL archive in {} is not whole: {}",
            repo.url(),
            problems.join(", ")
        );
    }
    Ok(())
}

async fn prune(args: PruneArgs) -> anyhow::Result<()> {
    let repo = args.repo.open().await?;
    let id = repo.resolve_backup(&args.before_backup).await?;
    let backup = repo.load_manifest(&id).await?;
    let system: u64 = backup.system_identifier.parse().with_context(|| {
        format!(
            "backup {id} has system identifier {:?}",
            backup.system_identifier
        )
    })?;
    let report = repo.wal(system).prune(&backup, args.dry_run).await?;
    if args.output == Output::Json {
        return Ok(print_json(&report)?);
    }
    let verb = if report.dry_run {
        "would remove"
    } else {
        "removed"
    };
    for name in &report.removed {
        println!("{verb} {name}");
    }
    println!(
        "system {}: {verb} {} WAL files ({}) before backup {} (start {}, segment {})",
        report.system_identifier,
        report.removed.len(),
        format_size(report.bytes_removed),
        report.backup_id,
        backup.start_lsn,
        report.keep_from.as_deref().unwrap_or("-")
    );
    Ok(())
}

/// What the repository's WAL makes of a backup, for `backup list` and `backup show`.
#[derive(Debug, Serialize)]
pub struct WalOfBackup {
    /// The segments holding the backup's start and stop LSNs: the WAL it needs to be
    /// consistent (`None` when nothing of its system is archived to tell the segment size).
    pub start_segment: Option<String>,
    pub stop_segment: Option<String>,
    pub recovery_window: WindowView,
}

/// [`ir_repository::wal::Window`] with LSNs and times as the rest of the output writes them.
#[derive(Debug, Serialize)]
pub struct WindowView {
    pub timeline: u32,
    pub start_lsn: String,
    pub earliest: String,
    pub end_lsn: String,
    /// An upper bound of the last commit recoverable: when the last segment of the run was
    /// archived. `None` when no WAL past the backup is archived.
    pub latest: Option<String>,
    pub first_missing: Option<String>,
}

impl WalOfBackup {
    pub fn of(listing: &WalListing, backup: &ir_repository::BackupManifest) -> WalOfBackup {
        let rfc3339 = |t: time::OffsetDateTime| {
            t.format(&time::format_description::well_known::Rfc3339)
                .unwrap_or_default()
        };
        let segment = |lsn: &str| {
            ir_repository::parse_lsn(lsn).and_then(|l| listing.segment_of(backup.timeline, l))
        };
        let w = listing.window(backup);
        WalOfBackup {
            start_segment: segment(&backup.start_lsn),
            stop_segment: backup.stop_lsn.as_deref().and_then(segment),
            recovery_window: WindowView {
                timeline: w.timeline,
                start_lsn: format_lsn(w.start_lsn),
                earliest: rfc3339(w.earliest),
                end_lsn: format_lsn(w.end_lsn),
                latest: w.latest.map(rfc3339),
                first_missing: w.first_missing,
            },
        }
    }
}

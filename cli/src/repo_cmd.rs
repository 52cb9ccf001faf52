//! `irctl repo`: create and maintain a backup repository.

use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use clap::{Args, Subcommand};
use ir_cli::output::{Output, print_json};
use ir_repository::size::{format_size, parse_size, validate_chunk_size};
use ir_repository::{GcReport, Progress, Repository, manifest::DEFAULT_CHUNK_SIZE};

use crate::backup::{SourceArgs, warn_invalid};
use crate::progress::ProgressLine;
use ir_cli::repo_args::RepoArgs;

#[derive(Debug, Subcommand)]
pub enum RepoCommand {
    /// Create a repository.
    Init(InitArgs),
    /// Delete chunks no backup refers to.
    Gc(GcArgs),
    /// Read back every chunk any backup needs, each once; fails naming every damaged chunk
    /// and each backup file it hurts, and every invalid backup.
    Verify(VerifyArgs),
    /// Write damaged or missing chunks again from a source holding the same data (the
    /// cluster backed up, or a copy of it); writes no backup.
    Repair(RepairArgs),
}

#[derive(Debug, Args)]
pub struct VerifyArgs {
    #[command(flatten)]
    repo: RepoArgs,
    #[arg(long, value_enum, default_value_t)]
    output: Output,
}

#[derive(Debug, Args)]
pub struct RepairArgs {
    #[command(flatten)]
    repo: RepoArgs,
    #[command(flatten)]
    source: SourceArgs,
    #[arg(long, value_enum, default_value_t)]
    output: Output,
}

#[derive(Debug, Args)]
pub struct InitArgs {
    #[command(flatten)]
    repo: RepoArgs,
    /// Chunk size, a multiple of 8KiB between 64KiB and 64MiB (e.g. 4MiB, 512KiB).
    #[arg(long, value_name = "SIZE", value_parser = parse_chunk_size, default_value_t = DEFAULT_CHUNK_SIZE)]
    chunk_size: u64,
    /// Encrypt chunks, manifests and WAL with a key unwrapped by the password in
    /// IR_REPO_PASSWORD or by --key-file; every command then needs one of them.
    #[arg(long)]
    encryption: bool,
}

#[derive(Debug, Args)]
pub struct GcArgs {
    #[command(flatten)]
    repo: RepoArgs,
    /// Keep unreferenced chunks younger than this (they may belong to an ingest in progress).
    #[arg(long, value_name = "DURATION", value_parser = humantime::parse_duration, default_value = "1h")]
    grace: Duration,
    /// Report what would be deleted without deleting anything.
    #[arg(long)]
    dry_run: bool,
    #[arg(long, value_enum, default_value_t)]
    output: Output,
}

fn parse_chunk_size(s: &str) -> Result<u64, String> {
    let size = parse_size(s).map_err(|e| e.to_string())?;
    validate_chunk_size(size).map_err(|e| e.to_string())?;
    Ok(size)
}

pub async fn run(cmd: RepoCommand) -> anyhow::Result<()> {
    match cmd {
        RepoCommand::Init(args) => {
            let location = args.repo.location();
            let repo = if args.encryption {
                Repository::init_encrypted(&location, args.chunk_size).await
            } else {
                Repository::init(&location, args.chunk_size).await
            }
            .context("repo init")?;
            println!(
                "created {}repository {} (chunk size {})",
                if repo.is_encrypted() {
                    "encrypted "
                } else {
                    ""
                },
                repo.url(),
                format_size(repo.config().chunk_size)
            );
        }
        RepoCommand::Gc(args) => {
            let repo = args.repo.open().await?;
            let r = repo.gc(args.grace, args.dry_run).await.context("repo gc")?;
            if args.output == Output::Json {
                print_json(&r)?;
            } else {
                print_gc(&r);
            }
            if !r.unreadable_backups.is_empty() {
                anyhow::bail!(
                    "repository {}: the manifests of backups {} cannot be read, so which chunks \
                     they need cannot be told and nothing was deleted; delete or repair those \
                     manifests first",
                    repo.url(),
                    r.unreadable_backups.join(", ")
                );
            }
        }
        RepoCommand::Verify(args) => {
            let repo = args.repo.open().await?;
            let progress = Arc::new(Progress::default());
            let report = {
                let _line = ProgressLine::start(&progress, "checked");
                repo.verify_repository(progress.clone()).await?
            };
            if args.output == Output::Json {
                print_json(&report)?;
            } else {
                warn_invalid(&report.invalid_backups);
                for d in &report.damaged {
                    println!("damaged: chunk {}: {}", d.chunk, d.reason);
                    for u in &d.uses {
                        println!(
                            "  used by backup {} {} chunk {}",
                            u.backup_id, u.path, u.chunk_index
                        );
                    }
                }
                println!(
                    "{} backups, {} chunks ({}) checked, {} damaged, {} invalid backups",
                    report.backups,
                    report.chunks_checked,
                    format_size(report.bytes_checked),
                    report.damaged.len(),
                    report.invalid_backups.len()
                );
            }
            if !report.is_ok() {
                anyhow::bail!(
                    "repository {} has {} damaged chunks and {} invalid backups{}",
                    repo.url(),
                    report.damaged.len(),
                    report.invalid_backups.len(),
                    if report.damaged.is_empty() {
                        ""
                    } else {
                        "; `irctl repo repair` writes damaged chunks again from a source"
                    }
                );
            }
        }
        RepoCommand::Repair(args) => {
            let repo = args.repo.open().await?;
            let (source, what) = args.source.open()?;
            let progress = Arc::new(Progress::default());
            let report = {
                let _line = ProgressLine::start(&progress, "read");
                repo.repair(source, progress.clone()).await.context(what)?
            };
            if args.output == Output::Json {
                print_json(&report)?;
            } else {
                println!(
                    "{} damaged chunks: {} written again, {} still damaged",
                    report.damaged,
                    report.replaced.len(),
                    report.still_damaged.len()
                );
                for id in &report.still_damaged {
                    println!("still damaged: chunk {id}");
                }
            }
            if !report.still_damaged.is_empty() {
                anyhow::bail!(
                    "{} chunks of {} are still damaged: the source does not hold their data",
                    report.still_damaged.len(),
                    repo.url()
                );
            }
        }
    }
    Ok(())
}

fn print_gc(r: &GcReport) {
    warn_invalid(&r.invalid_backups);
    if !r.ingests_running.is_empty() {
        println!(
            "ingest in progress ({}): nothing deleted, run gc again once it is done",
            r.ingests_running.join(", ")
        );
    }
    let verb = if r.dry_run { "would delete" } else { "deleted" };
    println!(
        "{} backups, {} chunks: {} referenced, {} unreferenced but recent, {verb} {} ({})",
        r.backups,
        r.chunks_total,
        r.chunks_referenced,
        r.chunks_recent,
        r.chunks_deleted,
        format_size(r.bytes_deleted)
    );
}

//! `irctl repo`: create and maintain a backup repository.

use std::time::Duration;

use anyhow::Context;
use clap::{Args, Subcommand};
use ir_cli::output::{Output, print_json};
use ir_repository::size::{format_size, parse_size, validate_chunk_size};
use ir_repository::{Repository, manifest::DEFAULT_CHUNK_SIZE};

use crate::repo_args::RepoArgs;

#[derive(Debug, Subcommand)]
pub enum RepoCommand {
    /// Create a repository.
    Init(InitArgs),
    /// Delete chunks no backup refers to.
    Gc(GcArgs),
}

#[derive(Debug, Args)]
pub struct InitArgs {
    #[command(flatten)]
    repo: RepoArgs,
    /// Chunk size, a multiple of 8KiB between 64KiB and 64MiB (e.g. 4MiB, 512KiB).
    #[arg(long, value_name = "SIZE", value_parser = parse_chunk_size, default_value_t = DEFAULT_CHUNK_SIZE)]
    chunk_size: u64,
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
            let repo =
                Repository::init(&args.repo.repo, args.chunk_size, &args.repo.store_options())
                    .await
                    .context("repo init")?;
            println!(
                "created repository {} (chunk size {})",
                repo.url(),
                format_size(repo.config().chunk_size)
            );
        }
        RepoCommand::Gc(args) => {
            let repo = args.repo.open().await?;
            let r = repo.gc(args.grace, args.dry_run).await.context("repo gc")?;
            if args.output == Output::Json {
                return Ok(print_json(&r)?);
            }
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
    }
    Ok(())
}

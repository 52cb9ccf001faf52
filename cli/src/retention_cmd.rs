//! `irctl backup delete` and `irctl backup prune`: backups go by id or by a retention policy
//! (restic's vocabulary); a backup a mount holds a lease on is skipped, and said so. The chunks
//! they leave unused go with the next `irctl repo gc`.

use std::time::Duration;

use anyhow::Context;
use clap::Args;
use ir_cli::output::{Output, print_json};
use ir_cli::repo_args::RepoArgs;
use ir_repository::{RepoError, RetentionPolicy, decide};
use serde::Serialize;

#[derive(Debug, Args)]
pub struct DeleteArgs {
    /// Backup id (not `latest`: a deletion names what it deletes).
    id: String,
    #[command(flatten)]
    repo: RepoArgs,
}

#[derive(Debug, Args)]
pub struct PruneArgs {
    #[command(flatten)]
    repo: RepoArgs,
    /// Keep the newest N backups.
    #[arg(long, value_name = "N")]
    keep_last: Option<usize>,
    /// Keep the newest backup of each of the N most recent days (UTC) that have one.
    #[arg(long, value_name = "N")]
    keep_daily: Option<usize>,
    /// Keep the newest backup of each of the N most recent ISO weeks that have one.
    #[arg(long, value_name = "N")]
    keep_weekly: Option<usize>,
    /// Keep every backup taken within this long before the newest one (e.g. `7days`, `36h`).
    #[arg(long, value_name = "DURATION", value_parser = humantime::parse_duration)]
    keep_within: Option<Duration>,
    /// Say what would be deleted without deleting anything.
    #[arg(long)]
    dry_run: bool,
    #[arg(long, value_enum, default_value_t)]
    output: Output,
}

/// One backup as prune judged it.
#[derive(Debug, Serialize)]
struct Pruned {
    id: String,
    #[serde(with = "time::serde::rfc3339")]
    created: time::OffsetDateTime,
    /// `keep`, `delete` (or, with --dry-run, `would delete`), or `in use`.
    action: &'static str,
    /// The rules that keep it, or the lease that holds it.
    reasons: Vec<String>,
}

pub async fn delete(args: DeleteArgs) -> anyhow::Result<()> {
    let repo = args.repo.open().await?;
    repo.delete_backup(&args.id).await?;
    println!(
        "deleted backup {}; `irctl repo gc` frees the chunks no other backup uses",
        args.id
    );
    Ok(())
}

pub async fn prune(args: PruneArgs) -> anyhow::Result<()> {
    let policy = RetentionPolicy {
        keep_last: args.keep_last,
        keep_daily: args.keep_daily,
        keep_weekly: args.keep_weekly,
        keep_within: args.keep_within,
    };
    anyhow::ensure!(
        !policy.is_empty(),
        "give at least one of --keep-last, --keep-daily, --keep-weekly, --keep-within: \
         without one prune would delete every backup"
    );
    let repo = args.repo.open().await?;
    let list = repo.list_backups().await?;
    for invalid in &list.invalid {
        eprintln!(
            "warning: backup {} is invalid and left alone (delete it by id): {}",
            invalid.id, invalid.reason
        );
    }
    let backups: Vec<_> = list
        .backups
        .iter()
        .map(|m| (m.id.clone(), m.created))
        .collect();
    let mut pruned = Vec::new();
    for verdict in decide(&backups, &policy) {
        let (action, reasons) = if verdict.keep {
            (
                "keep",
                verdict.reasons.iter().map(|r| r.to_string()).collect(),
            )
        } else if args.dry_run {
            let leases = repo.active_leases(&verdict.id).await?;
            match leases.first() {
                Some(l) => (
                    "in use",
                    vec![format!("lease of {} until {}", l.holder, l.expires)],
                ),
                None => ("would delete", Vec::new()),
            }
        } else {
            match repo.delete_backup(&verdict.id).await {
                Ok(()) => ("delete", Vec::new()),
                Err(RepoError::BackupLeased {
                    holder, expires, ..
                }) => ("in use", vec![format!("lease of {holder} until {expires}")]),
                Err(e) => {
                    return Err(e).with_context(|| format!("deleting backup {}", verdict.id));
                }
            }
        };
        pruned.push(Pruned {
            id: verdict.id,
            created: verdict.created,
            action,
            reasons,
        });
    }
    if args.output == Output::Json {
        return Ok(print_json(&pruned)?);
    }
    let short = time::macros::format_description!("[year]-[month]-[day] [hour]:[minute]:[second]");
    println!("{:<22} {:<20} {:<13} WHY", "ID", "CREATED", "ACTION");
    for p in &pruned {
        println!(
            "{:<22} {:<20} {:<13} {}",
            p.id,
            p.created.format(short).unwrap_or_default(),
            p.action,
            p.reasons.join(", ")
        );
    }
    let deleted = pruned.iter().filter(|p| p.action == "delete").count();
    if deleted > 0 {
        println!(
            "deleted {deleted} backups; `irctl repo gc` frees the chunks no other backup uses"
        );
    }
    Ok(())
}

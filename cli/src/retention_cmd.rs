//! `irctl backup delete` and `irctl backup prune`: backups go by id or by a retention policy
//! (restic's vocabulary); a backup a mount holds a lease on is skipped, and said so. The chunks
//! they leave unused go with the next `irctl repo gc`.

use std::time::Duration;

use crate::labels::parse_label;
use clap::Args;
use ir_cli::output::{Output, print_json};
use ir_cli::repo_args::RepoArgs;
use ir_repository::{PruneAction, PruneScope, RetentionPolicy};

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
    /// Only the backups with this label (`KEY=VALUE`, as given to `backup create --label`).
    #[arg(long, value_name = "KEY=VALUE", value_parser = parse_label)]
    label: Option<(String, String)>,
    /// Say what would be deleted without deleting anything.
    #[arg(long)]
    dry_run: bool,
    #[arg(long, value_enum, default_value_t)]
    output: Output,
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
    if policy.is_empty() {
        anyhow::bail!(
            "give at least one of --keep-last, --keep-daily, --keep-weekly and --keep-within: \
             without a rule, prune would delete every backup"
        );
    }
    let repo = args.repo.open().await?;
    let list = repo.list_backups().await?;
    for invalid in &list.invalid {
        eprintln!(
            "warning: backup {} is invalid and left alone (delete it by id): {}",
            invalid.id, invalid.reason
        );
    }
    let scope = PruneScope {
        label: args.label.as_ref().map(|(k, v)| (k.as_str(), v.as_str())),
    };
    let pruned = repo.prune(&policy, scope, args.dry_run).await?;
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
            p.action.as_str(),
            p.reasons.join(", ")
        );
    }
    let deleted = pruned
        .iter()
        .filter(|p| p.action == PruneAction::Delete)
        .count();
    if deleted > 0 {
        println!(
            "deleted {deleted} backups; `irctl repo gc` frees the chunks no other backup uses"
        );
    }
    Ok(())
}

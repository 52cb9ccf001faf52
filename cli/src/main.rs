//! `irctl`: manage backup repositories and bring backups online.

mod backup;
mod bring_up;
mod keeper;
mod labels;
mod mount_cmd;
mod progress;
mod publish;
mod recover;
mod repo_cmd;
mod retention_cmd;
mod wal_cmd;

use std::process::ExitCode;

use clap::{ArgAction, Parser, Subcommand};
use ir_cli::mount::{self, MOUNT_EXIT_TRANSIENT};
use ir_cli::output::one_line;
use ir_repository::RepoError;
use ir_repository::wal::WalError;
use tracing_subscriber::EnvFilter;

#[derive(Debug, Parser)]
#[command(
    name = "irctl",
    version,
    about = "Bring a PostgreSQL database online from its backup"
)]
struct Cli {
    /// More log output on stderr (-v info, -vv debug, -vvv trace); RUST_LOG takes precedence.
    #[arg(short, long, action = ArgAction::Count, global = true)]
    verbose: u8,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Create and maintain backup repositories.
    #[command(subcommand)]
    Repo(repo_cmd::RepoCommand),
    /// Create, list, show and verify backups.
    #[command(subcommand)]
    Backup(backup::BackupCommand),
    /// Serve a backup read-write through FUSE, writes going to an IRCache.
    Mount(mount::MountArgs),
    /// Bring a backup online now and move it to production storage: mount, publish, sync,
    /// switch over. Resumable: run it again with the same workdir after an interruption.
    Recover(Box<recover::RecoverArgs>),
    /// Bring a backup up only to look at it (query it, `irctl export` tables), with no copy
    /// and no switchover; it serves until its TTL ends or `irctl unpublish`.
    Publish(Box<publish::PublishArgs>),
    /// End a publish: stop its instance, unmount, wipe the IRCache.
    Unpublish(bring_up::WorkdirArgs),
    /// Give a recovery up before its switchover: stop every process it started, unmount, wipe
    /// the IRCache and remove the partial target. Refused once the switchover began.
    Abort(bring_up::WorkdirArgs),
    /// Dump tables of a published backup with pg_dump (the backup's major version).
    Export(publish::ExportArgs),
    /// Approve the switchover of a recovery started with `--switchover manual`.
    Switchover(bring_up::WorkdirArgs),
    /// Start a new round of retries of a Waiting or Failed recovery.
    Retry(bring_up::WorkdirArgs),
    /// Show a recovery's phase, conditions, progress, retries and timings.
    Status(recover::StatusArgs),
    /// Archive WAL into the repository and restore it from there (PostgreSQL's
    /// archive_command and restore_command), list, verify and prune it.
    #[command(subcommand)]
    Wal(wal_cmd::WalCommand),
}

fn init_tracing(verbose: u8) {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| {
        EnvFilter::new(match verbose {
            0 => "warn",
            1 => "info",
            2 => "debug",
            _ => "trace",
        })
    });
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
}

fn main() -> ExitCode {
    ir_fuse::limit_malloc_arenas();
    match tokio::runtime::Runtime::new() {
        Ok(runtime) => runtime.block_on(run()),
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            ExitCode::FAILURE
        }
    }
}

async fn run() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let restore_command = wal_cmd::is_fetch(&args);
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) => {
            let _ = e.print();
            // A mistyped restore_command must stop recovery, not read as "not archived".
            if restore_command && e.use_stderr() {
                return ExitCode::from(wal_cmd::FETCH_EXIT_FATAL);
            }
            return ExitCode::from(e.exit_code() as u8);
        }
    };
    init_tracing(cli.verbose);
    let result = match cli.command {
        Command::Repo(cmd) => repo_cmd::run(cmd).await,
        Command::Backup(cmd) => backup::run(cmd).await,
        Command::Mount(args) => mount_cmd::run(args).await,
        Command::Recover(args) => recover::recover(*args).await,
        Command::Publish(args) => publish::publish(*args).await,
        Command::Unpublish(args) => publish::unpublish(args).await,
        Command::Abort(args) => publish::abort(args).await,
        Command::Export(args) => publish::export(args).await,
        Command::Switchover(args) => recover::switchover(args),
        Command::Retry(args) => recover::retry(args),
        Command::Status(args) => recover::status(args),
        Command::Wal(cmd) => wal_cmd::run(cmd).await,
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("irctl: {}", one_line(e.as_ref()));
            if restore_command {
                return ExitCode::from(wal_cmd::fetch_exit_code(&e));
            }
            let transient = e.chain().any(|c| {
                c.downcast_ref::<RepoError>()
                    .is_some_and(RepoError::is_transient)
                    || c.downcast_ref::<WalError>()
                        .is_some_and(WalError::is_transient)
            });
            if transient {
                // Worth retrying later: the recovery engine waits and retries on this code.
                ExitCode::from(MOUNT_EXIT_TRANSIENT as u8)
            } else {
                ExitCode::FAILURE
            }
        }
    }
}

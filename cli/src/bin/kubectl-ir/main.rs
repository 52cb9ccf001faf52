//! `kubectl-ir`: the kubectl plugin for instant recoveries. Installed on the PATH, it runs as
//! `kubectl ir ...` with the usual kubeconfig, context and namespace.

mod backup;
mod commands;
mod export;

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use clap::{Parser, Subcommand};
use ir_cli::output::{Output, one_line};
use kube::config::{KubeConfigOptions, Kubeconfig};

#[derive(Debug, Parser)]
#[command(
    name = "kubectl-ir",
    bin_name = "kubectl ir",
    version,
    about = "Watch and steer InstantRecovery objects: status, switchover approval, retries, backups; take backups"
)]
struct Cli {
    /// Kubeconfig file (default: KUBECONFIG, else ~/.kube/config).
    #[arg(long, global = true, value_name = "PATH")]
    kubeconfig: Option<PathBuf>,
    /// Kubeconfig context (default: its current context).
    #[arg(long, global = true, value_name = "NAME")]
    context: Option<String>,
    /// Namespace of the objects (default: the context's namespace).
    #[arg(short, long, global = true, value_name = "NAMESPACE")]
    namespace: Option<String>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Show a recovery's phase, conditions, sync progress, lag, retries and timings.
    Status {
        /// Name of the InstantRecovery.
        name: String,
        /// For people (text) or programs (json).
        #[arg(short, long, value_enum, default_value_t)]
        output: Output,
    },
    /// Approve the switchover of a recovery whose `spec.switchover.mode` is Manual.
    Switchover {
        /// Name of the InstantRecovery.
        name: String,
    },
    /// Start a new round of retries of a Waiting or Failed recovery.
    Retry {
        /// Name of the InstantRecovery.
        name: String,
    },
    /// Give a recovery up before its switchover: everything it made is torn down and it ends
    /// Aborted. Refused once the switchover began.
    Abort {
        /// Name of the InstantRecovery.
        name: String,
    },
    /// Turn a published backup (`spec.mode: Publish`) into a recovery: it goes on from the
    /// published instance to sync and switchover.
    Recover {
        /// Name of the InstantRecovery.
        name: String,
    },
    /// List the backups a BackupRepository last saw.
    Backups {
        /// Name of the BackupRepository.
        repository: String,
        /// For people (text) or programs (json).
        #[arg(short, long, value_enum, default_value_t)]
        output: Output,
    },
    /// Dump a recovery's database (pg_dump in its serving Pod, streamed through the API
    /// server) into a file: a table or two from a published backup without recovering it.
    Export(export::ExportArgs),
    /// Back a PostgreSQL cluster up into a BackupRepository from the cluster (a `Backup`).
    #[command(subcommand)]
    Backup(BackupCommand),
    /// Show what each backup of a BackupRepository can be recovered to (`spec.pointInTime`):
    /// from its consistency point to the end of the WAL archived without a gap after it.
    Window {
        /// Name of the BackupRepository.
        repository: String,
        /// For people (text) or programs (json).
        #[arg(short, long, value_enum, default_value_t)]
        output: Output,
    },
}

#[derive(Debug, Subcommand)]
enum BackupCommand {
    /// Create a one-off Backup: a Job copies the cluster into the repository.
    Create(backup::CreateArgs),
}

/// A client for the chosen kubeconfig and context, and the namespace to work in.
async fn connect(cli: &Cli) -> anyhow::Result<(kube::Client, String)> {
    let options = KubeConfigOptions {
        context: cli.context.clone(),
        ..Default::default()
    };
    let config = match &cli.kubeconfig {
        Some(path) => {
            let kubeconfig = Kubeconfig::read_from(path)
                .with_context(|| format!("reading kubeconfig {}", path.display()))?;
            kube::Config::from_custom_kubeconfig(kubeconfig, &options).await
        }
        None => kube::Config::from_kubeconfig(&options).await,
    }
    .context("loading the kubeconfig")?;
    let namespace = cli
        .namespace
        .clone()
        .unwrap_or_else(|| config.default_namespace.clone());
    let client = kube::Client::try_from(config).context("creating the API client")?;
    Ok((client, namespace))
}

async fn run(cli: Cli) -> anyhow::Result<()> {
    let (client, namespace) = connect(&cli).await?;
    let at = commands::Namespace {
        client,
        namespace,
        explicit: cli.namespace.is_some(),
    };
    match cli.command {
        Command::Status { name, output } => commands::status(&at, &name, output).await,
        Command::Switchover { name } => commands::switchover(&at, &name).await,
        Command::Retry { name } => commands::retry(&at, &name).await,
        Command::Abort { name } => commands::abort(&at, &name).await,
        Command::Recover { name } => commands::recover(&at, &name).await,
        Command::Backups { repository, output } => {
            commands::backups(&at, &repository, output).await
        }
        Command::Window { repository, output } => commands::window(&at, &repository, output).await,
        Command::Export(args) => export::export(&at, args).await,
        Command::Backup(BackupCommand::Create(args)) => backup::create(&at, args).await,
    }
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> ExitCode {
    match run(Cli::parse()).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {}", one_line(e.as_ref()));
            ExitCode::FAILURE
        }
    }
}

//! `kubectl ir backup create`: a one-off `Backup` of a PostgreSQL cluster, optionally waited for.

use std::time::Duration;

use anyhow::{Context, bail};
use clap::Args;
use ir_api::backup::{Backup, BackupPhase, BackupSpec, BackupStatus, ClusterRef};
use ir_api::crd::LocalRef;
use ir_cli::output::{Output, print_json};
use ir_repository::size::format_size;
use kube::Api;
use kube::api::PostParams;
use serde::Serialize;

use crate::commands::Namespace;

/// How often `--wait` looks at the Backup's status.
const POLL: Duration = Duration::from_secs(2);

#[derive(Debug, Args)]
#[command(group = clap::ArgGroup::new("server").required(true).args(["host", "service"]))]
pub struct CreateArgs {
    /// Name of the new Backup.
    pub name: String,
    /// The BackupRepository the backup is written to.
    #[arg(long, value_name = "NAME")]
    pub repository: String,
    /// Host name or address of the PostgreSQL server.
    #[arg(long, value_name = "HOST")]
    pub host: Option<String>,
    /// A Service of the namespace in front of the server.
    #[arg(long, value_name = "NAME")]
    pub service: Option<String>,
    #[arg(long, default_value_t = 5432)]
    pub port: u16,
    /// Secret with `username` and `password` of a replication role or a superuser.
    #[arg(long, value_name = "NAME")]
    pub credentials_secret: String,
    /// PostgreSQL major version of the server (the Job runs `postgres:<version>`).
    #[arg(long, value_name = "MAJOR")]
    pub postgres_version: u32,
    /// Image with `pg_basebackup` of that major version, instead of `postgres:<version>`.
    #[arg(long, value_name = "IMAGE")]
    pub image: Option<String>,
    /// Wait until the backup ends, at most this long (`30m`, `1h`); fail unless it completed.
    #[arg(long, value_name = "DURATION", value_parser = humantime::parse_duration)]
    pub wait: Option<Duration>,
    /// For people (text) or programs (json).
    #[arg(short, long, value_enum, default_value_t)]
    pub output: Output,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct CreateOutput<'a> {
    namespace: &'a str,
    name: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    status: Option<&'a BackupStatus>,
}

pub async fn create(at: &Namespace, args: CreateArgs) -> anyhow::Result<()> {
    let backup = Backup::new(
        &args.name,
        BackupSpec {
            repository_ref: LocalRef {
                name: args.repository.clone(),
            },
            cluster: ClusterRef {
                host: args.host.clone(),
                service: args.service.clone().map(|name| LocalRef { name }),
                port: args.port,
                credentials_secret: LocalRef {
                    name: args.credentials_secret.clone(),
                },
                postgres_version: args.postgres_version,
                image: args.image.clone(),
            },
        },
    );
    let api: Api<Backup> = Api::namespaced(at.client.clone(), &at.namespace);
    let named = format!("backup {}/{}", at.namespace, args.name);
    api.create(&PostParams::default(), &backup)
        .await
        .with_context(|| format!("creating {named}"))?;
    let status = match args.wait {
        None => None,
        Some(limit) => Some(wait(&api, &named, &args.name, limit).await?),
    };
    match args.output {
        Output::Json => print_json(&CreateOutput {
            namespace: &at.namespace,
            name: &args.name,
            status: status.as_ref(),
        })?,
        Output::Text => match &status {
            None => println!(
                "{named} created; follow it with `kubectl get irbackup {} -w`",
                args.name
            ),
            Some(s) => println!(
                "{named} completed: backup {} ({}) in {:.0} s",
                s.backup_id.as_deref().unwrap_or("?"),
                format_size(s.size_bytes.unwrap_or(0)),
                s.duration_seconds.unwrap_or(0.0)
            ),
        },
    }
    if let Some(s) = &status
        && s.phase != BackupPhase::Completed
    {
        bail!(
            "{named} failed: {}",
            s.message.as_deref().unwrap_or("no message")
        );
    }
    Ok(())
}

/// The Backup's status once it ended (Completed or Failed), or an error after `limit`.
async fn wait(
    api: &Api<Backup>,
    named: &str,
    name: &str,
    limit: Duration,
) -> anyhow::Result<BackupStatus> {
    let deadline = tokio::time::Instant::now() + limit;
    loop {
        let status = api
            .get_status(name)
            .await
            .with_context(|| format!("reading {named}"))?
            .status;
        if let Some(status) = status.filter(|s| s.phase.is_final()) {
            return Ok(status);
        }
        if tokio::time::Instant::now() + POLL > deadline {
            bail!(
                "{named} has not ended after {}",
                humantime::format_duration(limit)
            );
        }
        tokio::time::sleep(POLL).await;
    }
}

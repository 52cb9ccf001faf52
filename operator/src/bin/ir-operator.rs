//! The instant-recovery operator: reconciles InstantRecovery and BackupRepository objects.

use std::time::Duration;

use clap::{Parser, ValueEnum};
use ir_api::GoDuration;
use ir_operator::k8s::{self, Settings, resources::PostgresUser};
use ir_operator::postgres::SwitchoverTimeouts;

#[derive(Debug, Clone, Copy, ValueEnum)]
enum LogFormat {
    Json,
    Text,
}

#[derive(Debug, Parser)]
#[command(name = "ir-operator", version, about)]
struct Args {
    /// Only this namespace (default: all namespaces).
    #[arg(long, env = "WATCH_NAMESPACE")]
    namespace: Option<String>,
    /// uid PostgreSQL runs as in its image (999 in the official images); the mount's files
    /// are owned by it.
    #[arg(long, env = "IR_POSTGRES_UID", default_value_t = 999)]
    postgres_uid: u32,
    #[arg(long, env = "IR_POSTGRES_GID", default_value_t = 999)]
    postgres_gid: u32,
    /// A node agent counts as gone after this long without a heartbeat.
    #[arg(long, env = "IR_AGENT_TIMEOUT", default_value = "90s")]
    agent_timeout: GoDuration,
    /// How long the switchover waits for the standby to replay the published instance's
    /// last WAL.
    #[arg(long, env = "IR_SWITCHOVER_CATCH_UP_TIMEOUT", default_value = "60s")]
    switchover_catch_up_timeout: GoDuration,
    /// How often BackupRepositories are checked.
    #[arg(long, env = "IR_REPOSITORY_POLL", default_value = "5m")]
    repository_poll: GoDuration,
    #[arg(long, env = "IR_LOG_FORMAT", value_enum, default_value = "json")]
    log_format: LogFormat,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let subscriber = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()));
    match args.log_format {
        LogFormat::Json => subscriber.json().init(),
        LogFormat::Text => subscriber.init(),
    }
    let client = kube::Client::try_default()
        .await
        .map_err(|e| anyhow::anyhow!("connecting to the Kubernetes API: {e}"))?;
    let settings = Settings {
        postgres_user: PostgresUser {
            uid: args.postgres_uid,
            gid: args.postgres_gid,
        },
        agent_timeout: args.agent_timeout.0,
        switchover: SwitchoverTimeouts {
            catch_up: args.switchover_catch_up_timeout.0,
            ..Default::default()
        },
        repository_poll: args.repository_poll.0.max(Duration::from_secs(1)),
        namespace: args.namespace,
    };
    let instance = std::env::var("POD_NAME")
        .or_else(|_| {
            std::fs::read_to_string("/proc/sys/kernel/hostname").map(|h| h.trim().to_owned())
        })
        .unwrap_or_else(|_| "ir-operator".to_owned());
    tracing::info!(?settings, %instance, "starting");
    k8s::run(client, settings, instance).await;
    tracing::info!("stopped");
    Ok(())
}

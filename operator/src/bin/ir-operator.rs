//! The instant-recovery operator: reconciles InstantRecovery and BackupRepository objects.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use anyhow::Context;
use clap::{Parser, ValueEnum};
use ir_api::{GoDuration, RepositoryPolicyArgs};
use ir_engine::postgres::SwitchoverTimeouts;
use ir_operator::k8s::leader::LeaseConfig;
use ir_operator::k8s::metrics::Metrics;
use ir_operator::k8s::{
    self, DEFAULT_TOOLS_IMAGE, OperatorPeer, Settings, resources::PostgresUser,
};

#[derive(Debug, Clone, Copy, ValueEnum)]
enum LogFormat {
    Json,
    Text,
}

#[derive(Debug, Parser)]
#[command(name = "ir-operator", version, about)]
struct Args {
    /// Only this namespace (default: all namespaces); added to --watch-namespaces.
    #[arg(long, env = "WATCH_NAMESPACE")]
    namespace: Option<String>,
    /// Only these namespaces (comma-separated; default: all namespaces). The operator then
    /// needs rights in these namespaces only (Roles), and cluster-wide only to read Nodes.
    #[arg(long, env = "WATCH_NAMESPACES", value_delimiter = ',')]
    watch_namespaces: Vec<String>,
    #[command(flatten)]
    repositories: RepositoryPolicyArgs,
    /// Write a NetworkPolicy `<name>-postgres` for each recovery: only the operator, the
    /// recovery's own Pods and its `spec.network.clients` reach PostgreSQL.
    #[arg(long, env = "IR_NETWORK_POLICY")]
    network_policy: bool,
    /// Labels of the operator's own Pods (comma-separated `key=value`), which the recoveries'
    /// NetworkPolicies admit from --operator-namespace.
    #[arg(
        long,
        env = "IR_OPERATOR_POD_LABELS",
        value_delimiter = ',',
        default_value = "app.kubernetes.io/name=instant-recovery,app.kubernetes.io/component=operator"
    )]
    operator_pod_labels: Vec<String>,
    /// The operator's own namespace, which the recoveries' NetworkPolicies admit.
    #[arg(long, env = "POD_NAMESPACE", required_if_eq("network_policy", "true"))]
    operator_namespace: Option<String>,
    /// uid PostgreSQL runs as in its image (999 in the official images); the mount's files
    /// are owned by it.
    #[arg(long, env = "IR_POSTGRES_UID", default_value_t = 999)]
    postgres_uid: u32,
    #[arg(long, env = "IR_POSTGRES_GID", default_value_t = 999)]
    postgres_gid: u32,
    /// Image with irctl (the operator's own): a published instance that replays to a point in
    /// time fetches the repository's WAL with the irctl an init container copies from it.
    #[arg(long, env = "IR_TOOLS_IMAGE", default_value = DEFAULT_TOOLS_IMAGE)]
    tools_image: String,
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
    /// Where `/metrics` (Prometheus text format), `/healthz` and `/readyz` are served.
    #[arg(long, env = "IR_METRICS_ADDRESS", default_value = "0.0.0.0:8080")]
    metrics_address: SocketAddr,
    /// Run the controllers only while holding the leader Lease (for more than one replica).
    #[arg(long, env = "IR_LEADER_ELECTION")]
    leader_election: bool,
    /// Namespace of the leader Lease (the operator's own).
    #[arg(long, env = "POD_NAMESPACE", required_if_eq("leader_election", "true"))]
    leader_election_namespace: Option<String>,
    /// Name of the leader Lease.
    #[arg(long, default_value = "instant-recovery-operator")]
    leader_election_lease: String,
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
    let (metrics, registry) = Metrics::new();
    let connected = Arc::new(AtomicBool::new(false));
    let ready = connected.clone();
    let address = ir_telemetry::serve(
        args.metrics_address,
        ir_telemetry::Endpoint {
            registry,
            ready: Box::new(move || ready.load(Ordering::Relaxed)),
        },
    )
    .await
    .with_context(|| format!("serving metrics on {}", args.metrics_address))?;
    tracing::info!(%address, "serving metrics");
    let client = kube::Client::try_default()
        .await
        .map_err(|e| anyhow::anyhow!("connecting to the Kubernetes API: {e}"))?;
    // Ready once the API server answers; a replica waiting for the Lease is ready too.
    while let Err(e) = client.apiserver_version().await {
        tracing::warn!(error = %e, "the Kubernetes API server does not answer yet");
        tokio::time::sleep(Duration::from_secs(2)).await;
    }
    connected.store(true, Ordering::Relaxed);
    let mut namespaces: Vec<String> = args
        .watch_namespaces
        .iter()
        .chain(&args.namespace)
        .map(|ns| ns.trim().to_owned())
        .filter(|ns| !ns.is_empty())
        .collect();
    namespaces.sort();
    namespaces.dedup();
    let repositories = args.repositories.policy().map_err(anyhow::Error::msg)?;
    let network_policy = match (args.network_policy, args.operator_namespace) {
        (false, _) => None,
        (true, None) => anyhow::bail!("--network-policy needs --operator-namespace"),
        (true, Some(namespace)) => Some(OperatorPeer {
            namespace,
            labels: pod_labels(&args.operator_pod_labels)?,
        }),
    };
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
        namespaces,
        repositories,
        network_policy,
        tools_image: args.tools_image,
    };
    let instance = std::env::var("POD_NAME")
        .or_else(|_| {
            std::fs::read_to_string("/proc/sys/kernel/hostname").map(|h| h.trim().to_owned())
        })
        .unwrap_or_else(|_| "ir-operator".to_owned());
    let election = match (args.leader_election, args.leader_election_namespace) {
        (true, Some(namespace)) => Some(LeaseConfig::new(
            namespace,
            args.leader_election_lease,
            instance.clone(),
        )),
        (true, None) => anyhow::bail!("--leader-election needs --leader-election-namespace"),
        (false, _) => None,
    };
    tracing::info!(?settings, %instance, ?election, "starting");
    k8s::run(client, settings, instance, metrics, election).await?;
    tracing::info!("stopped");
    Ok(())
}

/// `key=value` items as labels; an item without `=` is an error naming it.
fn pod_labels(items: &[String]) -> anyhow::Result<std::collections::BTreeMap<String, String>> {
    let labels = items
        .iter()
        .map(|item| item.trim())
        .filter(|item| !item.is_empty())
        .map(|item| match item.split_once('=') {
            Some((key, value)) if !key.is_empty() => Ok((key.to_owned(), value.to_owned())),
            _ => anyhow::bail!("--operator-pod-labels: {item:?} is not key=value"),
        })
        .collect::<anyhow::Result<std::collections::BTreeMap<_, _>>>()?;
    if labels.is_empty() {
        anyhow::bail!(
            "--operator-pod-labels: no label: the NetworkPolicies would admit every Pod of the operator's namespace"
        );
    }
    Ok(labels)
}

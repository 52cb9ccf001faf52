//! `ir-agent`: the instant-recovery node agent, run on every node by a DaemonSet. It mounts the
//! node's RecoveryMounts through FUSE; see `ir_fuse::agent`.

use std::net::SocketAddr;
use std::path::PathBuf;

use anyhow::Context;
use clap::{Parser, ValueEnum};
use ir_api::RepositoryPolicyArgs;
use ir_fuse::agent::{Agent, AgentConfig};
use tokio::signal::unix::{SignalKind, signal};
use tracing_subscriber::EnvFilter;

#[derive(Debug, Parser)]
#[command(name = "ir-agent", version, about = "instant-recovery node agent")]
struct Args {
    /// The node this agent serves (the downward API's spec.nodeName).
    #[arg(long, env = "NODE_NAME")]
    node_name: String,
    /// Where backups are mounted, as `<mount-root>/<RecoveryMount uid>`.
    #[arg(
        long,
        env = "IR_MOUNT_ROOT",
        default_value = "/run/media/instant-recovery"
    )]
    mount_root: PathBuf,
    /// Where IRCaches live, as `<cache-root>/ircache/<uid>`.
    #[arg(
        long,
        env = "IR_CACHE_ROOT",
        default_value = "/var/lib/instant-recovery"
    )]
    cache_root: PathBuf,
    #[command(flatten)]
    repositories: RepositoryPolicyArgs,
    /// Only the RecoveryMounts of these namespaces (comma-separated; default: all).
    #[arg(long, env = "WATCH_NAMESPACES", value_delimiter = ',')]
    watch_namespaces: Vec<String>,
    /// Each mount's in-memory chunk cache, MiB. A mount's peak memory is this plus about
    /// 80 MiB; size the agent's memory limit for the mounts its node serves at once.
    #[arg(long, env = "IR_MEMORY_CACHE_MIB", default_value_t = 256,
          value_parser = clap::value_parser!(u64).range(0..=ir_fuse::MAX_MEMORY_CACHE_MIB))]
    memory_cache_mib: u64,
    /// What the agent's mounts may take of memory in all, MiB (the chart gives the container's
    /// memory limit): each takes its memory cache plus 96 MiB, the agent 32 MiB. A mount that
    /// would pass it gets a smaller memory cache (down to 32 MiB), or waits (AgentMemoryFull)
    /// until another ends. Unset: mounts are not counted.
    #[arg(long, env = "IR_MEMORY_BUDGET_MIB",
          value_parser = clap::value_parser!(u64).range(1..=u64::MAX >> 20))]
    memory_budget_mib: Option<u64>,
    /// Where `/metrics` (Prometheus text format) and `/healthz` are served.
    #[arg(long, env = "IR_METRICS_ADDRESS", default_value = "0.0.0.0:8080")]
    metrics_address: SocketAddr,
    /// Log lines on stderr: JSON for a cluster's log collector, or text for people.
    #[arg(long, env = "IR_LOG_FORMAT", value_enum, default_value_t = LogFormat::Json)]
    log_format: LogFormat,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum LogFormat {
    Json,
    Text,
}

fn init_tracing(format: LogFormat) {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    match format {
        LogFormat::Json => builder.json().init(),
        LogFormat::Text => builder.with_ansi(false).init(),
    }
}

fn main() -> anyhow::Result<()> {
    ir_fuse::limit_malloc_arenas();
    tokio::runtime::Runtime::new()?.block_on(run())
}

async fn run() -> anyhow::Result<()> {
    let args = Args::parse();
    init_tracing(args.log_format);
    let repositories = args.repositories.policy().map_err(anyhow::Error::msg)?;
    let mut namespaces: Vec<String> = args
        .watch_namespaces
        .iter()
        .map(|ns| ns.trim().to_owned())
        .filter(|ns| !ns.is_empty())
        .collect();
    namespaces.sort();
    namespaces.dedup();
    // Handlers first, so that a signal during start-up is not fatal.
    let mut term = signal(SignalKind::terminate())?;
    let mut int = signal(SignalKind::interrupt())?;
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    tokio::spawn(async move {
        tokio::select! {
            _ = term.recv() => tracing::info!("SIGTERM"),
            _ = int.recv() => tracing::info!("SIGINT"),
        }
        let _ = stop.send(());
    });

    let client = kube::Client::try_default()
        .await
        .context("no Kubernetes client configuration (in-cluster or KUBECONFIG)")?;
    let agent = Agent::new(
        client,
        AgentConfig {
            node_name: args.node_name,
            mount_root: args.mount_root,
            cache_root: args.cache_root,
            repositories,
            namespaces,
            memory_cache_bytes: args.memory_cache_mib << 20,
            memory_budget_bytes: args.memory_budget_mib.map(|mib| mib << 20),
        },
    )?;
    let metrics = ir_telemetry::serve(
        args.metrics_address,
        ir_telemetry::Endpoint {
            registry: agent.metrics(),
            ready: Box::new(|| true),
        },
    )
    .await
    .with_context(|| format!("serving metrics on {}", args.metrics_address))?;
    tracing::info!(address = %metrics, "serving metrics");
    agent
        .run(async move {
            let _ = stopped.await;
        })
        .await;
    Ok(())
}

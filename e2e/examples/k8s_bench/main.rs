//! Benchmarks of the Kubernetes part on the test harness (a real node: kubelet, containerd and
//! the control plane; the agent and the operator as processes with the chart's RBAC; PostgreSQL
//! in Pods of the `postgres` image), run by bench/k8s-ttfq.sh, bench/k8s-scale.sh and
//! bench/k8s-memory.sh; results in
//! docs/benchmarks.md.
//!
//! - `ttfq`: apply of an InstantRecovery to the first `SELECT 1` through its Service, against a
//!   local `irctl recover` of the same backup, alternating, with a cold page cache before each.
//! - `scale`: the operator's memory and reconcile latency with many InstantRecovery objects.
//! - `memory`: the agent's peak RSS while it serves a published backup, cold and then warm.
//! - `password`: the password the backup's `postgres` role needs for `ttfq` (the operator
//!   connects with it).
//!
//! Prints markdown table rows on stdout, per-run figures on stderr.

use std::collections::HashMap;
use std::fmt::Debug;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail, ensure};
use clap::{Parser, Subcommand};
use futures::{StreamExt, future};
use ir_api::crd::{InstantRecovery, MountPhase, RecoveryMount};
use ir_api::recovery::Phase;
use ir_e2e::installation::{self, Installation, NAMESPACE, PASSWORD};
use k8s_openapi::api::core::v1::{Pod, Service};
use kube::api::{DeleteParams, Patch, PatchParams, PostParams};
use kube::runtime::{WatchStreamExt, watcher};
use kube::{Api, Resource, ResourceExt};
use serde::de::DeserializeOwned;
use tokio::task::JoinHandle;

mod memory;
mod scale;
mod ttfq;

/// How often the first query is tried, on both sides.
const POLL: Duration = Duration::from_millis(10);

/// Longest wait for a first query, a status or a deletion.
const FLOW: Duration = Duration::from_secs(240);

/// Longest wait for a local recovery to complete (sync and switchover included).
const COMPLETE: Duration = Duration::from_secs(900);

/// Quiet time before reading the operator's memory.
const SETTLE: Duration = Duration::from_secs(10);

/// Field manager of the benchmark's server-side applies.
const MANAGER: &str = "k8s-bench";

#[derive(Parser)]
#[command(about = "Benchmarks of instant-recovery on Kubernetes (test harness)")]
struct Args {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Prints the password the backup's `postgres` role must have.
    Password,
    /// Apply to first query, against a local `irctl recover` of the same backup.
    Ttfq(TtfqArgs),
    /// Operator memory and reconcile latency with many InstantRecovery objects.
    Scale(ScaleArgs),
    /// The agent's peak RSS while it serves a published backup, cold and then warm.
    Memory(MemoryArgs),
}

#[derive(clap::Args)]
struct TtfqArgs {
    /// Repository of the backup (file://); the cluster and the local run use the same one.
    #[arg(long)]
    repo: String,
    #[arg(long)]
    backup: String,
    #[arg(long, default_value_t = 3)]
    runs: usize,
    /// Workdir of the local `irctl recover`; must not exist, removed after each run. Its
    /// output goes to `<workdir>.out`.
    #[arg(long)]
    workdir: PathBuf,
    /// Target data directory of the local recovery; must not exist, removed after each run.
    #[arg(long)]
    target_pgdata: PathBuf,
    #[arg(long, default_value_t = 57410)]
    published_port: u16,
    #[arg(long, default_value_t = 57411)]
    target_port: u16,
    /// The data, for the table rows (`scale 50 (1500 MB)`).
    #[arg(long, default_value = "")]
    label: String,
}

#[derive(clap::Args)]
struct ScaleArgs {
    /// InstantRecovery objects created at once.
    #[arg(long, default_value_t = 200)]
    objects: usize,
    /// Objects created one at a time, alone, for the baseline.
    #[arg(long, default_value_t = 5)]
    solo: usize,
}

#[derive(clap::Args)]
struct MemoryArgs {
    /// Repository of the backup (file://).
    #[arg(long)]
    repo: String,
    #[arg(long)]
    backup: String,
    #[arg(long, default_value_t = 1)]
    runs: usize,
    /// Seconds of `pgbench -S` per phase.
    #[arg(long, default_value_t = 30)]
    seconds: u64,
    /// The table scanned after pgbench in each phase.
    #[arg(long, default_value = "pgbench_accounts")]
    table: String,
    /// The data, for the table rows (`scale 1000 (15800 MB)`).
    #[arg(long, default_value = "")]
    label: String,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let run = async {
        match Args::parse().command {
            Command::Password => println!("{PASSWORD}"),
            Command::Ttfq(args) => ttfq::ttfq(args).await?,
            Command::Scale(args) => scale::scale(args).await?,
            Command::Memory(args) => memory::memory(args).await?,
        }
        anyhow::Ok(())
    };
    // Interrupted, the run is dropped, and the installation with it: no process or mount is
    // left behind.
    let mut terminate = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    tokio::select! {
        result = run => result,
        _ = tokio::signal::ctrl_c() => bail!("interrupted"),
        _ = terminate.recv() => bail!("terminated"),
    }
}

fn drop_caches() -> anyhow::Result<()> {
    // SAFETY: sync has no preconditions.
    unsafe { libc::sync() };
    std::fs::write("/proc/sys/vm/drop_caches", "3").context("drop the page cache (needs root)")
}

fn ms(d: Duration) -> u64 {
    d.as_millis().try_into().unwrap_or(u64::MAX)
}

fn median(values: &[u64]) -> f64 {
    let mut v = values.to_vec();
    v.sort_unstable();
    match v.len() {
        0 => f64::NAN,
        n if n % 2 == 1 => v[n / 2] as f64,
        n => (v[n / 2 - 1] + v[n / 2]) as f64 / 2.0,
    }
}

/// Nearest-rank percentile (`p` in 0..=100).
fn percentile(values: &[u64], p: usize) -> u64 {
    let mut v = values.to_vec();
    v.sort_unstable();
    let rank = (p * v.len()).div_ceil(100).max(1);
    v.get(rank - 1).copied().unwrap_or_default()
}

fn ratio(value: f64, baseline: f64) -> String {
    format!("{:.2}", value / baseline)
}

fn join(values: &[u64]) -> String {
    values
        .iter()
        .map(u64::to_string)
        .collect::<Vec<_>>()
        .join(" / ")
}

type Tracks = Arc<Mutex<HashMap<String, scale::Track>>>;

/// (VmRSS, VmHWM) of a process, KiB.
fn memory(pid: u32) -> anyhow::Result<(u64, u64)> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    let field = |key: &str| {
        status
            .lines()
            .find_map(|l| l.strip_prefix(key))
            .and_then(|v| v.split_whitespace().next())
            .and_then(|v| v.parse().ok())
            .with_context(|| format!("no {key} in /proc/{pid}/status"))
    };
    Ok((field("VmRSS:")?, field("VmHWM:")?))
}

fn mib(kib: u64) -> String {
    format!("{:.1}", kib as f64 / 1024.0)
}

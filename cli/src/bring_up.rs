//! What `irctl recover` and `irctl publish` share: the flags that bring a backup up, the
//! workdir flag of the commands that act on one, and running the driver while printing its
//! phases and progress.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use clap::Args;
use ir_api::GoDuration;
use ir_api::Reason;
use ir_api::recovery::{Phase, RecoveryMode, RecoveryStatus, RetryPolicy, SwitchoverPolicy};
use ir_cli::local::{Goal, LocalRecovery, LocalSpec, Report, Rerun};
use ir_cli::point_in_time::TargetArgs;
use ir_cli::repo_args::StoreArgs;
use ir_cli::status_view::progress_text;
use ir_repository::size::parse_size;
use tokio::signal::unix::{SignalKind, signal};

/// What `irctl recover` and `irctl publish` both take: the workdir, the backup and how the
/// published instance runs.
#[derive(Debug, Args)]
pub struct BringUpArgs {
    /// Working directory of this recovery: state, mount, IRCache, logs. Run the same command
    /// (or just `irctl recover --workdir DIR`) again to resume after an interruption. It must
    /// be yours, on a path only root and you can change; other users cannot enter it.
    #[arg(long, value_name = "DIR")]
    pub workdir: PathBuf,
    /// Repository URL: file:///abs/path (or /abs/path) or s3://bucket/prefix. Fixed for the
    /// workdir's recovery.
    #[arg(long, env = "IR_REPO", value_name = "URL")]
    pub repo: Option<String>,
    /// Backup id, or `latest` (on a rerun: the one pinned at the first run).
    #[arg(long, value_name = "ID")]
    pub backup: Option<String>,
    /// Port of the published instance (on the mount). Default: 5433. Fixed for the workdir's
    /// recovery.
    #[arg(long)]
    pub published_port: Option<u16>,
    /// `listen_addresses` of both instances. Default: localhost. Fixed for the workdir's
    /// recovery.
    #[arg(long)]
    pub listen_addresses: Option<String>,
    /// OS user that runs PostgreSQL and owns the files: root runs it as this user; anyone
    /// else only as itself. Default: postgres when run as root, else the user running irctl.
    /// Fixed for the workdir's recovery.
    #[arg(long)]
    pub pg_user: Option<String>,
    /// Database superuser the engine connects as (over a private unix socket). Default:
    /// postgres, or on a rerun what the workdir records.
    #[arg(long)]
    pub db_user: Option<String>,
    /// Database the engine connects to. Default: postgres, or on a rerun what the workdir
    /// records.
    #[arg(long)]
    pub db_name: Option<String>,
    /// PostgreSQL server binaries (default: /usr/lib/postgresql/<backup's major>/bin). Fixed
    /// for the workdir's recovery.
    #[arg(long, value_name = "DIR")]
    pub pg_bindir: Option<PathBuf>,
    /// Retries of a step that failed for a transient reason, before the recovery fails.
    /// Default: 10, or on a rerun what the workdir records.
    #[arg(long)]
    pub retry_limit: Option<u32>,
    /// Time between retries (30s, 5m, 1h). Default: 5m, or on a rerun what the workdir records.
    #[arg(long)]
    pub retry_interval: Option<GoDuration>,
    /// Free space the IRCache's file system must have at the start. Default: 1GiB. Fixed for
    /// the workdir's recovery.
    #[arg(long, value_parser = parse_size)]
    pub cache_min_free: Option<u64>,
    /// Seconds PostgreSQL may take to answer its first query. Default: 600, or on a rerun what
    /// the workdir records.
    #[arg(long)]
    pub start_timeout: Option<u64>,
    #[command(flatten)]
    pub target: TargetArgs,
    #[command(flatten)]
    pub store: StoreArgs,
}

#[derive(Debug, Args)]
pub struct WorkdirArgs {
    /// Working directory of the recovery.
    #[arg(long, value_name = "DIR")]
    pub workdir: PathBuf,
}

const DEFAULT_PUBLISHED_PORT: u16 = 5433;
pub(crate) const DEFAULT_TARGET_PORT: u16 = 5434;
const DEFAULT_LISTEN_ADDRESSES: &str = "localhost";
const DEFAULT_CACHE_MIN_FREE: u64 = 1 << 30;
const DEFAULT_START_TIMEOUT_SECS: u64 = 600;
const DEFAULT_CATCH_UP_TIMEOUT_SECS: u64 = 60;

impl BringUpArgs {
    /// The spec of a new recovery in `mode`, when enough was given to start one.
    pub(crate) fn spec(
        &self,
        mode: RecoveryMode,
        target_pgdata: Option<PathBuf>,
    ) -> Option<LocalSpec> {
        let point_in_time = self.target.point_in_time();
        // With a target, `latest` is the newest backup that ends before it.
        let backup = self
            .backup
            .clone()
            .or_else(|| point_in_time.as_ref().map(|_| "latest".to_owned()));
        let (Some(repo), Some(backup)) = (&self.repo, backup) else {
            return None;
        };
        if mode == RecoveryMode::Recover && target_pgdata.is_none() {
            return None;
        }
        Some(LocalSpec {
            point_in_time,
            repo: self.store.repo_spec(repo),
            backup,
            mode,
            publish_ttl: None,
            read_only: false,
            target_pgdata,
            published_port: self.published_port.unwrap_or(DEFAULT_PUBLISHED_PORT),
            target_port: DEFAULT_TARGET_PORT,
            listen_addresses: self
                .listen_addresses
                .clone()
                .unwrap_or_else(|| DEFAULT_LISTEN_ADDRESSES.into()),
            pg_user: self
                .pg_user
                .clone()
                .unwrap_or_else(ir_engine::process::default_pg_user),
            db_user: self.db_user.clone().unwrap_or_else(|| "postgres".into()),
            db_name: self.db_name.clone().unwrap_or_else(|| "postgres".into()),
            pg_bindir: self.pg_bindir.clone(),
            switchover: SwitchoverPolicy::default(),
            retry: RetryPolicy {
                limit: self.retry_limit.unwrap_or(RetryPolicy::DEFAULT_LIMIT),
                interval: self
                    .retry_interval
                    .unwrap_or(GoDuration(RetryPolicy::DEFAULT_INTERVAL)),
            },
            cache_min_free_bytes: self.cache_min_free.unwrap_or(DEFAULT_CACHE_MIN_FREE),
            start_timeout_secs: self.start_timeout.unwrap_or(DEFAULT_START_TIMEOUT_SECS),
            catch_up_timeout_secs: DEFAULT_CATCH_UP_TIMEOUT_SECS,
        })
    }

    /// What this run states about a recovery the workdir may already record.
    pub(crate) fn rerun(&self, mode: RecoveryMode) -> Rerun {
        let store = &self.store;
        Rerun {
            mode: Some(mode),
            repo: self.repo.clone(),
            backup: self.backup.clone(),
            pg_user: self.pg_user.clone(),
            listen_addresses: self.listen_addresses.clone(),
            pg_bindir: self.pg_bindir.clone(),
            s3_endpoint: store.s3_endpoint.clone(),
            s3_region: store.s3_region.clone(),
            s3_allow_http: store.s3_allow_http.then_some(true),
            read_deadline_secs: store.read_deadline,
            cache_min_free_bytes: self.cache_min_free,
            published_port: self.published_port,
            retry_limit: self.retry_limit,
            retry_interval: self.retry_interval,
            db_user: self.db_user.clone(),
            db_name: self.db_name.clone(),
            start_timeout_secs: self.start_timeout,
            point_in_time: self.target.point_in_time(),
            ..Default::default()
        }
    }
}

/// Runs the driver until `goal` (or a SIGTERM or SIGINT, after the current step), printing
/// phases and progress.
pub(crate) async fn run_printing(
    recovery: &mut LocalRecovery,
    goal: Goal,
    workdir: &Path,
) -> anyhow::Result<()> {
    let stop = stop_on_signal()?;
    let mut printer = Printer::new(recovery.published_conninfo(), workdir.display().to_string());
    recovery.run(goal, stop, &mut |r| printer.report(r)).await?;
    Ok(())
}

/// A flag set by SIGTERM or SIGINT: the driver stops after the current step.
fn stop_on_signal() -> anyhow::Result<Arc<AtomicBool>> {
    let stop = Arc::new(AtomicBool::new(false));
    let mut term = signal(SignalKind::terminate())?;
    let mut int = signal(SignalKind::interrupt())?;
    let flag = stop.clone();
    tokio::spawn(async move {
        tokio::select! {
            _ = term.recv() => {}
            _ = int.recv() => {}
        }
        eprintln!("irctl: stopping after the current step; the running instances keep running");
        flag.store(true, Ordering::Relaxed);
    });
    Ok(stop)
}

/// Prints phases with their timing, and progress while syncing.
struct Printer {
    started: Instant,
    conninfo: String,
    workdir: String,
    last_progress: Option<Instant>,
    last_phase: Option<Phase>,
}

impl Printer {
    fn new(conninfo: String, workdir: String) -> Self {
        Printer {
            started: Instant::now(),
            conninfo,
            workdir,
            last_progress: None,
            last_phase: None,
        }
    }

    fn line(&self, text: &str) {
        println!("[{:7.2}s] {text}", self.started.elapsed().as_secs_f64());
        let _ = std::io::stdout().flush();
    }

    fn report(&mut self, report: Report<'_>) {
        match report {
            Report::Event(event, status) => {
                self.line(&event.message);
                self.last_progress = Some(Instant::now());
                let serving =
                    |p: Option<Phase>| matches!(p, Some(Phase::Syncing | Phase::Published));
                if serving(Some(status.phase)) && !serving(self.last_phase) {
                    let ttfq = status
                        .timings
                        .time_to_first_query_ms
                        .map(|ms| format!(" (time to first query {ms} ms)"))
                        .unwrap_or_default();
                    self.line(&format!("published: {}{ttfq}", self.conninfo));
                }
                if status.phase == Phase::Completed
                    && let Some(ms) = status.timings.switchover_downtime_ms
                {
                    self.line(&format!("switchover downtime {ms} ms"));
                }
                self.last_phase = Some(status.phase);
            }
            Report::Status(status) => self.progress(status),
        }
    }

    fn progress(&mut self, status: &RecoveryStatus) {
        let due = self
            .last_progress
            .is_none_or(|t| t.elapsed() >= Duration::from_secs(5));
        if !due {
            return;
        }
        let text = match status.phase {
            Phase::Syncing => progress_text(status),
            Phase::ReadyForSwitchover => {
                let mut text = progress_text(status);
                if status.reason.as_deref() == Some(Reason::AwaitingApproval.as_str()) {
                    text.push_str(&format!(
                        "; approve with `irctl switchover --workdir {}`",
                        self.workdir
                    ));
                } else if let Some(message) = &status.message {
                    text.push_str(&format!("; {message}"));
                }
                text
            }
            Phase::Waiting => status.message.clone().unwrap_or_default(),
            _ => return,
        };
        self.last_progress = Some(Instant::now());
        self.line(&text);
    }
}

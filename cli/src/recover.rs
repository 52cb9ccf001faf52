//! `irctl recover | switchover | retry | status`: a whole recovery on this host.

use std::path::PathBuf;

use anyhow::Context;
use clap::Args;
use ir_api::recovery::{Phase, RecoveryMode, RecoveryStatus, SwitchoverMode, SwitchoverPolicy};
use ir_cli::local::{Goal, LocalRecovery, LocalSpec, LocalState, Rerun, Workdir};
use ir_cli::output::{Output, print_json};
use ir_cli::status_view::StatusView;
use serde::Serialize;

use crate::bring_up::{BringUpArgs, DEFAULT_TARGET_PORT, WorkdirArgs, run_printing};
use crate::keeper;

#[derive(Debug, Args)]
#[command(after_help = RERUN_HELP)]
pub struct RecoverArgs {
    #[command(flatten)]
    pub common: BringUpArgs,
    /// Data directory of the production copy: absent or empty, named by its real path (no
    /// symbolic links). Fixed for the workdir's recovery; given to a workdir that holds a
    /// publish, the publish goes on to a recovery into it.
    #[arg(long, value_name = "DIR")]
    pub target_pgdata: Option<PathBuf>,
    /// `automatic` (as soon as the standby has caught up), `manual` (after `irctl switchover`),
    /// or `at=RFC3339` (at that time, once caught up). Default: automatic, or on a rerun what
    /// the workdir records.
    #[arg(long, value_parser = parse_switchover)]
    pub switchover: Option<SwitchoverPolicy>,
    /// Port of the standby, and of the primary it becomes. Default: 5434. Fixed for the
    /// workdir's recovery.
    #[arg(long)]
    pub target_port: Option<u16>,
    /// Seconds the standby may take to replay the last transaction during the switchover.
    /// Default: 60, or on a rerun what the workdir records.
    #[arg(long)]
    pub catch_up_timeout: Option<u64>,
}

const RERUN_HELP: &str = "On a rerun (the workdir records a recovery) a flag left out keeps \
what the workdir records. Given again, the flags the recovery was made with must repeat the \
recorded value, or the rerun is refused: --repo, --backup (`latest` matches), --target-pgdata, \
--published-port, --target-port, --listen-addresses, --pg-user, --pg-bindir, --s3-endpoint, \
--s3-region, --s3-allow-http, --read-deadline, --cache-min-free, --target-time, --target-lsn, \
--target-xid, --target-name, --target-immediate, --target-inclusive, --target-timeline. These \
may change: \
--switchover, --retry-limit, --retry-interval, --db-user, --db-name, --start-timeout, \
--catch-up-timeout.";

fn parse_switchover(text: &str) -> Result<SwitchoverPolicy, String> {
    let mut policy = SwitchoverPolicy::default();
    match text {
        "automatic" => {}
        "manual" => policy.mode = SwitchoverMode::Manual,
        _ => {
            let at = text
                .strip_prefix("at=")
                .ok_or("expected automatic, manual or at=RFC3339")?;
            policy.mode = SwitchoverMode::Scheduled;
            policy.at = Some(
                at.parse()
                    .map_err(|e| format!("at={at}: not an RFC 3339 time: {e}"))?,
            );
        }
    }
    Ok(policy)
}

impl RecoverArgs {
    fn spec(&self) -> Option<LocalSpec> {
        let mut spec = (self.common).spec(RecoveryMode::Recover, self.target_pgdata.clone())?;
        spec.switchover = self.switchover.clone().unwrap_or_default();
        spec.target_port = self.target_port.unwrap_or(DEFAULT_TARGET_PORT);
        if let Some(secs) = self.catch_up_timeout {
            spec.catch_up_timeout_secs = secs;
        }
        Some(spec)
    }

    fn rerun(&self) -> Rerun {
        Rerun {
            target_pgdata: self.target_pgdata.clone(),
            target_port: self.target_port,
            switchover: self.switchover.clone(),
            catch_up_timeout_secs: self.catch_up_timeout,
            ..self.common.rerun(RecoveryMode::Recover)
        }
    }
}

pub async fn recover(args: RecoverArgs) -> anyhow::Result<()> {
    let dir = &args.common.workdir;
    let workdir = Workdir::new(dir);
    let spec = args.spec();
    let recorded = workdir.load()?;
    if spec.is_none() && recorded.is_none() {
        anyhow::bail!(
            "no recovery in {}: --repo, --backup and --target-pgdata are needed to start one",
            dir.display()
        );
    }
    // A publish going on to a recovery: its keeper hands the workdir over.
    let from_publish = recorded.is_some_and(|s| s.spec.mode == RecoveryMode::Publish);
    if from_publish {
        keeper::stop_keeper(&workdir).await?;
    }
    let program = std::env::current_exe().context("locating the irctl binary")?;
    let mut recovery = match LocalRecovery::open(workdir.clone(), spec, args.rerun(), program) {
        Ok(recovery) => recovery,
        Err(e) => {
            if from_publish {
                keeper::start_keeper(&workdir)?;
            }
            return Err(e.into());
        }
    };

    run_printing(&mut recovery, Goal::End, dir).await?;
    let status = recovery.status();
    let target = recovery.spec().target_pgdata.as_deref().unwrap_or(dir);
    match status.phase {
        Phase::Aborted => anyhow::bail!(
            "the recovery was aborted (irctl abort); {}",
            recovery.torn_down().join("; ")
        ),
        Phase::Completed => println!(
            "recovery complete: {} runs as the primary on port {}",
            target.display(),
            recovery.spec().target_port
        ),
        phase => println!(
            "stopped in phase {phase}; run `irctl recover --workdir {}` to continue",
            dir.display()
        ),
    }
    Ok(())
}

pub fn switchover(args: WorkdirArgs) -> anyhow::Result<()> {
    Workdir::new(&args.workdir).approve_switchover()?;
    println!(
        "switchover approved for {}; it starts once the standby has caught up",
        args.workdir.display()
    );
    Ok(())
}

pub fn retry(args: WorkdirArgs) -> anyhow::Result<()> {
    let workdir = Workdir::new(&args.workdir);
    workdir.request_retry()?;
    if workdir.is_running() {
        println!("retry requested; the running irctl recover starts a new round now");
    } else {
        println!(
            "retry requested; run `irctl recover --workdir {}` to continue",
            args.workdir.display()
        );
    }
    Ok(())
}

#[derive(Debug, Args)]
pub struct StatusArgs {
    #[command(flatten)]
    pub workdir: WorkdirArgs,
    #[arg(long, value_enum, default_value_t)]
    pub output: Output,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct StatusOutput<'a> {
    workdir: &'a std::path::Path,
    /// Whether an `irctl recover` (or a publish's keeper) is working on it now.
    running: bool,
    mode: RecoveryMode,
    #[serde(skip_serializing_if = "Option::is_none")]
    target_pgdata: Option<&'a std::path::Path>,
    #[serde(skip_serializing_if = "<[String]>::is_empty")]
    torn_down: &'a [String],
    published_port: u16,
    target_port: u16,
    #[serde(flatten)]
    status: &'a RecoveryStatus,
}

pub fn status(args: StatusArgs) -> anyhow::Result<()> {
    let dir = &args.workdir.workdir;
    let workdir = Workdir::new(dir);
    let state: LocalState = workdir
        .load()?
        .with_context(|| format!("no recovery in {} (recovery.json not found)", dir.display()))?;
    let running = workdir.is_running();
    let status = &state.status;
    if args.output == Output::Json {
        return Ok(print_json(&StatusOutput {
            workdir: dir,
            running,
            mode: state.spec.mode,
            target_pgdata: state.spec.target_pgdata.as_deref(),
            torn_down: &state.torn_down,
            published_port: state.spec.published_port,
            target_port: state.spec.target_port,
            status,
        })?);
    }
    let workdir_arg = format!("--workdir {}", dir.display());
    let view = StatusView {
        about: vec![
            (
                "workdir",
                format!(
                    "{} ({})",
                    dir.display(),
                    if running {
                        "irctl is working on it"
                    } else {
                        "not running"
                    }
                ),
            ),
            (
                "instances",
                match &state.spec.target_pgdata {
                    Some(target) => format!(
                        "published on port {}, target {} on port {}",
                        state.spec.published_port,
                        target.display(),
                        state.spec.target_port
                    ),
                    None => format!(
                        "published on port {} (mode {}{})",
                        state.spec.published_port,
                        state.spec.mode.as_str(),
                        if state.spec.read_only {
                            ", read-only"
                        } else {
                            ""
                        }
                    ),
                },
            ),
        ],
        status,
        retry_limit: state.spec.retry.limit,
        switchover_command: format!("irctl switchover {workdir_arg}"),
        retry_command: format!("irctl retry {workdir_arg}"),
    };
    print!("{view}");
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn switchover_flag() {
        assert_eq!(
            parse_switchover("automatic").unwrap().mode,
            SwitchoverMode::Automatic
        );
        assert_eq!(
            parse_switchover("manual").unwrap().mode,
            SwitchoverMode::Manual
        );
        let at = parse_switchover("at=2026-11-25T10:00:00Z").unwrap();
        assert_eq!(at.mode, SwitchoverMode::Scheduled);
        assert_eq!(at.at.unwrap().to_string(), "2026-11-25T10:00:00Z");
        assert!(
            parse_switchover("at=tomorrow")
                .unwrap_err()
                .contains("RFC 3339")
        );
        assert!(parse_switchover("later").is_err());
    }
}

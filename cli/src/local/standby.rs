//! The standby: `pg_basebackup` copies the published instance into the target, which then
//! streams from it; a failed copy is thrown away and made again.

use std::time::{Duration, Instant};

use ir_api::Reason;
use ir_engine::machine::{Failure, Standby};
use ir_engine::postgres;
use ir_engine::process::{self, ProcState};
use ir_engine::round::{CopyAttempt, Found};

use super::error::{LocalError, io_err};
use super::instances::STANDBY_NAME;
use super::recovery::LocalRecovery;
use super::workdir::Which;

impl LocalRecovery {
    pub(super) async fn ensure_standby(&mut self) -> Result<Found, LocalError> {
        let target = match self.target_path() {
            Ok(target) => target,
            Err(f) => return Ok(Found::Standby(Standby::Failed(f))),
        };
        let published = self.endpoint(&self.published_instance());
        if let Err(f) = self.bins() {
            return Ok(Found::Standby(Standby::Failed(f)));
        }
        if let Some(pid) = self.state.resources.base_backup_pid {
            if let ProcState::Running = process::poll(pid) {
                let progress = match published.connect().await {
                    Ok(client) => postgres::base_backup_progress(&client).await,
                    Err(e) => Err(postgres::PgError::Unexpected(postgres::describe(&e))),
                };
                let progress = progress.unwrap_or_else(|e| {
                    tracing::warn!(error = %e, "cannot read the base backup's progress");
                    None
                });
                // The view's row goes before pg_basebackup exits: keep the last figures.
                let last = &self.state.status.progress;
                let (copied_bytes, total_bytes) =
                    progress.unwrap_or((last.copied_bytes, last.total_bytes));
                return Ok(Found::Copy(self.copy_attempt(copied_bytes, total_bytes)));
            }
            self.state.resources.base_backup_pid = None;
            if !postgres::base_backup_complete(&target) {
                let log = self.workdir.logs().join("basebackup.log");
                self.state.resources.base_backup_failure = Some(format!(
                    "pg_basebackup did not finish: {}",
                    process::log_tail(&log, 1000)
                ));
            }
        }
        if self.state.resources.base_backup_failure.is_some() {
            // Kept until the engine decides to copy again (on a retry).
            let last = &self.state.status.progress;
            return Ok(Found::Copy(
                self.copy_attempt(last.copied_bytes, last.total_bytes),
            ));
        }
        if postgres::base_backup_complete(&target) {
            let instance = self.target_instance(target);
            if let Err(f) = self.ensure_running(&instance, Which::Target).await? {
                return Ok(Found::Standby(Standby::Failed(f)));
            }
            // A standby just started connects within moments: wait for that rather than a poll.
            let mut lag = None;
            let deadline = Instant::now() + Duration::from_secs(3);
            if let Ok(client) = published.connect().await {
                while lag.is_none() && Instant::now() < deadline {
                    lag = postgres::replication_lag(&client, STANDBY_NAME)
                        .await
                        .ok()
                        .flatten();
                    if lag.is_none() {
                        tokio::time::sleep(Duration::from_millis(50)).await;
                    }
                }
            }
            return Ok(Found::Standby(match lag {
                Some(lag_bytes) => Standby::Streaming { lag_bytes },
                // Connecting to the published instance: the copy is done, streaming not yet.
                None => Standby::Connecting,
            }));
        }
        Ok(Found::Standby(self.start_copy().await?))
    }

    /// The copy as the engine judges it: a local `pg_basebackup` is not restarted by anyone, so
    /// one failure fails it.
    fn copy_attempt(&self, copied_bytes: u64, total_bytes: u64) -> CopyAttempt {
        let failure = self.state.resources.base_backup_failure.clone();
        CopyAttempt {
            copied_bytes,
            total_bytes,
            failures: u32::from(failure.is_some()),
            gives_up_after: 1,
            source_moved: false,
            failure_detail: failure.unwrap_or_default(),
        }
    }

    /// Throws a failed copy away and starts another.
    pub(super) async fn copy_again(&mut self) -> Result<Standby, LocalError> {
        if let Some(pid) = self.state.resources.base_backup_pid.take() {
            process::kill_group(pid)
                .await
                .map_err(io_err(&self.workdir.logs().join("basebackup.log")))?;
        }
        self.state.resources.base_backup_failure = None;
        self.start_copy().await
    }

    /// Starts `pg_basebackup` into the target. The target was empty at validation, so anything
    /// in it is ours: root empties and owns it through the handle, and hands on its path only
    /// while that path still leads to it.
    async fn start_copy(&mut self) -> Result<Standby, LocalError> {
        let target = match self.target_path() {
            Ok(target) => target,
            Err(f) => return Ok(Standby::Failed(f)),
        };
        let published = self.endpoint(&self.published_instance());
        let bins = match self.bins() {
            Ok(b) => b,
            Err(f) => return Ok(Standby::Failed(f)),
        };
        if self.state.resources.target_id.is_none() {
            // A publish that went on to a recovery: its target was checked then, made now.
            if let Err(f) = self.make_target() {
                return Ok(Standby::Failed(f));
            }
            self.workdir.save(&self.state)?;
        }
        let dir = match self.target_dir() {
            Ok(dir) => dir,
            Err(f) => return Ok(Standby::Failed(f)),
        };
        // A copy started by an irctl killed before it recorded the pid still writes here.
        let program = bins.path("pg_basebackup");
        for stray in process::running_with_args(&program, &["--pgdata".as_ref(), target.as_ref()]) {
            tracing::warn!(pid = stray, "stopping a pg_basebackup no recovery tracks");
            process::kill_group(stray).await.map_err(io_err(&target))?;
        }
        dir.clear().map_err(io_err(&target))?;
        self.own_target(&dir).map_err(io_err(&target))?;
        if let Err(f) = self.target_dir() {
            return Ok(Standby::Failed(f));
        }
        let log = self.workdir.logs().join("basebackup.log");
        match postgres::start_base_backup(&bins, &published, &target, &self.pg_user, &log) {
            Ok(pid) => {
                self.state.resources.base_backup_pid = Some(pid);
                // Recorded at once: a rerun adopts the copy instead of starting another.
                self.workdir.save(&self.state)?;
                Ok(Standby::Copying {
                    copied_bytes: 0,
                    total_bytes: 0,
                })
            }
            Err(e) => Ok(Standby::Failed(Failure::new(
                Reason::BaseBackupFailed,
                e.to_string(),
            ))),
        }
    }
}

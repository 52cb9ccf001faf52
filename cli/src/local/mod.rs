//! The local driver: one recovery on this host, the engine behind `irctl recover`.
//!
//! Everything lives in the workdir: `recovery.json` (what was asked, the status, the processes),
//! the mount point and IRCache, sockets, generated configuration and logs. The mount, PostgreSQL
//! and `pg_basebackup` run in their own sessions, so the driver can be killed at any moment: a
//! rerun reads `recovery.json`, finds them by pid and continues.
//!
//! This module runs the rounds of the engine and hands each action to the module that carries
//! it out. Dependencies go one way, from here down: the actions (`mount`, `instances`,
//! `standby`, `switchover`, `cleanup`; `standby`, `switchover` and `cleanup` use `instances`)
//! act on the [`LocalRecovery`] of `recovery`, which keeps its state in the [`Workdir`]
//! (`workdir`), made with what was asked (`spec`); `validate` checks before anything is made;
//! `dir` and `error` are used by all.

mod cleanup;
pub(crate) mod dir;
mod error;
mod instances;
mod mount;
mod recovery;
mod spec;
mod standby;
mod switchover;
mod teardown;
pub(crate) mod validate;
mod workdir;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use ir_api::recovery::{Phase, RecoveryStatus};
use ir_engine::machine::{Action, Decision, Event, Policy, Step};
use ir_engine::process;
use ir_engine::round::{self, Driver, Found, RoundInfo};
use jiff::Timestamp;

pub use error::LocalError;
pub use recovery::LocalRecovery;
pub use spec::{LocalSpec, Rerun};
pub use workdir::{LocalState, Workdir};

pub use crate::mount::MOUNT_EXIT_TRANSIENT;
pub use crate::repo_args::RepoSpec;

/// The local driver for one run: the recovery and where its reports go.
struct Session<'a> {
    recovery: &'a mut LocalRecovery,
    report: &'a mut (dyn FnMut(Report<'_>) + Send),
}

impl Driver for Session<'_> {
    type Error = LocalError;

    async fn requests(&mut self) -> Result<round::Requests, LocalError> {
        let pending = self.recovery.workdir.pending_requests();
        Ok(round::Requests {
            retry: pending.retry,
            approved: pending.approved,
            end: pending.end,
        })
    }

    async fn execute(&mut self, action: Action, _: RoundInfo<'_>) -> Result<Found, LocalError> {
        self.recovery.execute(action).await
    }

    async fn persist(&mut self, status: &RecoveryStatus) -> Result<(), LocalError> {
        let recovery = &mut *self.recovery;
        recovery.state.status = status.clone();
        if recovery.persisted {
            recovery.workdir.save(&recovery.state)?;
        }
        Ok(())
    }

    async fn report(&mut self, events: &[Event], status: &RecoveryStatus) {
        for event in events {
            (self.report)(Report::Event(event, status));
        }
        (self.report)(Report::Status(status));
    }
}

/// What the driver reports while it runs.
#[derive(Debug, Clone)]
pub enum Report<'a> {
    /// A transition or a notable failure.
    Event(&'a Event, &'a RecoveryStatus),
    /// Status after a reconcile (progress, lag).
    Status(&'a RecoveryStatus),
}

/// Where a run of the driver stops.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Goal {
    /// At rest: completed, or torn down after an unpublish, an expiry or an abort.
    End,
    /// As soon as a publish serves (`irctl publish` hands on to its keeper there).
    Serving,
}

/// The run loop and the dispatch of actions.
impl LocalRecovery {
    /// Runs the recovery until it reaches `goal`, fails, or `stop` is set (between rounds: a
    /// step such as the switchover is never abandoned halfway).
    pub async fn run(
        &mut self,
        goal: Goal,
        stop: Arc<AtomicBool>,
        report: &mut (dyn FnMut(Report<'_>) + Send),
    ) -> Result<(), LocalError> {
        if self.persisted {
            let status = &self.state.status;
            self.lay_out(status.backup.is_some() && status.phase != Phase::Completed)?;
        }
        let ending = self.workdir.pending_requests().end.is_some();
        if self.state.status.phase == Phase::Failed && self.persisted && !ending {
            // Running again after a failure is a manual retry.
            self.workdir.request_retry()?;
        }
        loop {
            let spec = &self.state.spec;
            let policy = Policy {
                switchover: spec.switchover.clone(),
                retry: spec.retry.clone(),
                mode: spec.mode,
                publish_ttl: spec.publish_ttl.map(|ttl| ttl.0),
            };
            let status = self.state.status.clone();
            let end_requested = self.workdir.pending_requests().end.is_some();
            let round = round::round(
                &mut Session {
                    recovery: self,
                    report: &mut *report,
                },
                &policy,
                &status,
                Timestamp::now,
            )
            .await?;
            if end_requested && self.persisted {
                // Taken up or refused by this round's plan.
                self.workdir.clear_end_request()?;
            }
            let at_rest = round.decision.requeue_after.is_none();
            match round.decision.status.phase {
                Phase::Failed => return Err(self.failure()),
                Phase::Completed | Phase::Unpublished | Phase::Aborted if at_rest => {
                    return Ok(());
                }
                Phase::Published if goal == Goal::Serving => return Ok(()),
                _ => {}
            }
            if stop.load(Ordering::Relaxed) {
                return Ok(());
            }
            if !round.moved_on {
                self.pause(&round.decision, &stop).await;
            }
            if stop.load(Ordering::Relaxed) {
                return Ok(());
            }
        }
    }

    /// The error for a Failed status: before anything was created it is a validation error.
    fn failure(&self) -> LocalError {
        let status = &self.state.status;
        let reason = status.reason.clone().unwrap_or_default();
        let message = status.message.clone().unwrap_or_default();
        if self.persisted {
            LocalError::Failed { reason, message }
        } else {
            LocalError::Invalid { reason, message }
        }
    }

    /// Sleeps until the requested requeue, waking early for a stop or a new request.
    async fn pause(&self, decision: &Decision, stop: &AtomicBool) {
        let Some(wait) = decision.requeue_after else {
            return;
        };
        let deadline = Instant::now() + wait;
        let before = self.workdir.pending_requests();
        // The end of the base backup is worth looking at at once: the standby can start.
        let base_backup = self.state.resources.base_backup_pid;
        let copying = || base_backup.is_some_and(process::is_alive);
        let was_copying = copying();
        while Instant::now() < deadline
            && !stop.load(Ordering::Relaxed)
            && self.workdir.pending_requests() == before
            && copying() == was_copying
        {
            tokio::time::sleep(Duration::from_millis(100).min(deadline - Instant::now())).await;
        }
    }

    /// Carries out one action and says what it found.
    async fn execute(&mut self, action: Action) -> Result<Found, LocalError> {
        let found = match action {
            Action::Validate => self.validate().await?,
            Action::EnsureMount => Found::Mount(self.ensure_mount().await?),
            Action::EnsurePublished => self.ensure_published().await?,
            Action::EnsureStandby => self.ensure_standby().await?,
            Action::Switchover => self.switchover().await?,
            Action::Cleanup => Found::Cleanup(self.cleanup().await),
            Action::Teardown => Found::Teardown(self.teardown().await),
            Action::RestartPublished => Found::Restarted(self.restart_published().await?),
            Action::RestartCopy => Found::Standby(self.copy_again().await?),
        };
        if self.persisted {
            self.workdir.save(&self.state)?;
        }
        Ok(found)
    }

    async fn validate(&mut self) -> Result<Found, LocalError> {
        let checked =
            validate::validate(&self.state.spec, &self.workdir.root, self.persisted).await;
        Ok(match checked {
            Ok((info, point_in_time)) => {
                // The pinned backup, not `latest`: a rerun must not switch backups under the
                // cache.
                self.state.spec.backup = info.id.clone();
                self.persist()?;
                self.lay_out(true)?;
                // A publish has no target; one that goes on to a recovery makes it then.
                let made = match self.state.spec.target_pgdata {
                    Some(_) => self.make_target(),
                    None => Ok(()),
                };
                let step = match made {
                    Err(failure) => Step::Failed(failure),
                    Ok(()) => Step::Ready(info),
                };
                match point_in_time {
                    Some(point) => Found::ToPoint(Box::new(Found::Validation(step)), point),
                    None => Found::Validation(step),
                }
            }
            // A recovery that waits for its repository exists: `irctl status` and `irctl retry`
            // need its workdir. Only a permanent refusal creates nothing.
            Err(failure) if failure.transient => {
                self.persist()?;
                Found::Validation(Step::Failed(failure))
            }
            Err(failure) => Found::Validation(Step::Failed(failure)),
        })
    }
}

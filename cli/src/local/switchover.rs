//! The switchover from the published instance to the target, and the restart of the published
//! instance when one stopped it.

use std::time::Duration;

use ir_engine::machine::{Step, SwitchoverReport};
use ir_engine::postgres::{LocalPublished, Switchover, SwitchoverTimeouts};
use ir_engine::round::{Found, Interruption};

use super::error::LocalError;
use super::recovery::LocalRecovery;
use super::workdir::Which;

impl LocalRecovery {
    pub(super) async fn switchover(&mut self) -> Result<Found, LocalError> {
        if let Some(ms) = self.state.resources.switchover_downtime_ms {
            return Ok(Found::Switchover(Step::Ready(SwitchoverReport {
                downtime: Duration::from_millis(ms),
            })));
        }
        let (bins, target) = match (self.bins(), self.target_path()) {
            (Ok(b), Ok(t)) => (b, t),
            (Err(f), _) | (_, Err(f)) => return Ok(Found::Switchover(Step::Failed(f))),
        };
        self.state.resources.switchover_attempted = true;
        self.workdir.save(&self.state)?;
        let published = self.published_instance();
        let published_endpoint = self.endpoint(&published);
        let standby_endpoint = self.endpoint(&self.target_instance(target));
        let timeouts = SwitchoverTimeouts {
            catch_up: Duration::from_secs(self.state.spec.catch_up_timeout_secs),
            ..Default::default()
        };
        let local = LocalPublished {
            bins: &bins,
            instance: &published,
            stop_timeout: timeouts.stop,
        };
        let switchover = Switchover {
            published: &local,
            published_endpoint: &published_endpoint,
            standby_endpoint: &standby_endpoint,
            timeouts,
        };
        match switchover.run().await {
            Ok(outcome) => {
                tracing::info!(
                    downtime_ms = outcome.downtime.as_millis() as u64,
                    old_timeline = outcome.old_timeline,
                    new_timeline = outcome.new_timeline,
                    "switched over"
                );
                self.state.resources.switchover_downtime_ms =
                    Some(outcome.downtime.as_millis() as u64);
                self.state.resources.switchover_attempted = false;
                Ok(Found::Switchover(Step::Ready(SwitchoverReport {
                    downtime: outcome.downtime,
                })))
            }
            Err(e) => Ok(Found::SwitchoverInterrupted(
                Interruption::after(&e, &standby_endpoint, published.running_pid().is_some()).await,
            )),
        }
    }

    /// Starts the published instance again after a switchover stopped it, writable; says why
    /// not when it does not serve again.
    pub(super) async fn restart_published(&mut self) -> Result<Result<(), String>, LocalError> {
        let published = self.published_instance();
        if let Err(f) = self.ensure_running(&published, Which::Published).await? {
            return Ok(Err(format!(
                "the published instance did not start again: {}",
                f.message
            )));
        }
        if let Err(e) = self.serve_writes_again(&published).await {
            return Ok(Err(format!(
                "the published instance serves again, read-only: {e}"
            )));
        }
        self.workdir.save(&self.state)?;
        Ok(Ok(()))
    }
}

//! The switchover to the target, and the published instance started again when a switchover
//! stopped it and gave up; the published Pod as the switchover stops it.

use std::time::Duration;

use ir_api::Reason;
use ir_api::crd::RecoveryMount;
use ir_engine::machine::{Failure, Step, SwitchoverReport};
use ir_engine::postgres::{self, ControlData, PgError, PublishedControl, Reached, Switchover};
use ir_engine::round::{Found, Interruption};
use k8s_openapi::api::core::v1::Pod;
use kube::Api;
use kube::api::DeleteParams;

use super::Driver;
use crate::k8s::context::Error;
use crate::k8s::resources;

impl Driver<'_> {
    pub(super) async fn switchover(&mut self) -> Result<Found, Error> {
        let target = resources::target_name(&self.name);
        let published_name = resources::published_pod_name(&self.name);
        let Some(standby_ip) = self.pod_ip(&target).await? else {
            return Ok(Found::SwitchoverInterrupted(Interruption {
                failure: Failure::new(
                    Reason::StandbyUnavailable,
                    format!("Pod {target} has no IP"),
                ),
                reached: Reached::BeforeStop,
                published_present: self.api::<Pod>().get_opt(&published_name).await?.is_some(),
                standby_in_recovery: None,
            }));
        };
        let published_ip = self.pod_ip(&published_name).await?.unwrap_or_default();
        let (published_endpoint, standby_endpoint) = match (
            self.endpoint(&published_ip).await,
            self.endpoint(&standby_ip).await,
        ) {
            (Ok(p), Ok(s)) => (p, s),
            (Err(f), _) | (_, Err(f)) => return Ok(Found::Switchover(Step::Failed(f))),
        };
        let control = PodPublished {
            pods: self.api::<Pod>(),
            name: published_name,
            timeout: self.ctx.settings.switchover.stop,
        };
        let switchover = Switchover {
            published: &control,
            published_endpoint: &published_endpoint,
            standby_endpoint: &standby_endpoint,
            timeouts: self.ctx.settings.switchover,
        };
        match switchover.run().await {
            Ok(outcome) => {
                tracing::info!(
                    recovery = %self.name,
                    downtime_ms = outcome.downtime.as_millis() as u64,
                    old_timeline = outcome.old_timeline,
                    new_timeline = outcome.new_timeline,
                    "switched over"
                );
                self.label_primary(&target).await?;
                Ok(Found::Switchover(Step::Ready(SwitchoverReport {
                    downtime: outcome.downtime,
                })))
            }
            Err(e) => {
                let published_present = self.api::<Pod>().get_opt(&control.name).await?.is_some();
                Ok(Found::SwitchoverInterrupted(
                    Interruption::after(&e, &standby_endpoint, published_present).await,
                ))
            }
        }
    }

    /// Starts the published instance again after a switchover stopped it, writable; says why
    /// not when it does not serve again.
    pub(super) async fn restart_published(&mut self) -> Result<Result<(), String>, Error> {
        self.mount = self.api::<RecoveryMount>().get_opt(&self.name).await?;
        let deadline = std::time::Instant::now() + self.ctx.settings.switchover.stop;
        loop {
            match self.ensure_published().await? {
                Step::Ready(_) => break,
                Step::Failed(f) => {
                    return Ok(Err(format!(
                        "the published instance did not start again: {}",
                        f.message
                    )));
                }
                Step::InProgress | Step::Unknown => {}
            }
            if std::time::Instant::now() >= deadline {
                return Ok(Err(format!(
                    "the published instance was not serving again within {:?}",
                    self.ctx.settings.switchover.stop
                )));
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        // The switchover made it read-only in its configuration, which the restart kept.
        if let Some(published) = self.published_client.take()
            && let Err(e) = postgres::set_read_only(&published, false).await
        {
            return Ok(Err(format!(
                "the published instance serves again, read-only: {e}"
            )));
        }
        Ok(Ok(()))
    }
}

/// The published instance as a Pod: stopping it is deleting it (the kubelet sends the image's
/// stop signal, SIGINT for PostgreSQL: a fast shutdown).
struct PodPublished {
    pods: Api<Pod>,
    name: String,
    timeout: Duration,
}

impl PublishedControl for PodPublished {
    async fn is_running(&self) -> Result<bool, PgError> {
        self.pods
            .get_opt(&self.name)
            .await
            .map(|p| p.is_some())
            .map_err(|e| PgError::Unexpected(format!("reading Pod {}: {e}", self.name)))
    }

    async fn stop(&self) -> Result<(), PgError> {
        let failed =
            |e: kube::Error| PgError::Unexpected(format!("deleting Pod {}: {e}", self.name));
        match self.pods.delete(&self.name, &DeleteParams::default()).await {
            Ok(_) => {}
            Err(kube::Error::Api(e)) if e.code == 404 => return Ok(()),
            Err(e) => return Err(failed(e)),
        }
        let deadline = std::time::Instant::now() + self.timeout;
        loop {
            if self
                .pods
                .get_opt(&self.name)
                .await
                .map_err(failed)?
                .is_none()
            {
                return Ok(());
            }
            if std::time::Instant::now() >= deadline {
                return Err(PgError::Timeout {
                    what: format!("Pod {} going away", self.name),
                    timeout: self.timeout,
                });
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    fn final_checkpoint(&self) -> Result<Option<ControlData>, PgError> {
        Ok(None)
    }
}

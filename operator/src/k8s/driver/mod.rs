//! Carrying out the state machine's actions against the cluster for one reconcile: each action
//! is idempotent (get, create when missing, look at what is there) and fills in what it observed.
//!
//! One job a module: [`validate`] the spec and what it names, [`mount`] the backup on a node
//! (RecoveryMount), [`publish`] PostgreSQL on it (the published Pod), copy it to the target as a
//! [`standby`], [`switchover`] to the target, and [`cleanup`] once it completed, or [`teardown`] what an
//! abort ends. All of them read
//! what the spec refers to through [`dereference`] and look at Pods through [`pods`].

mod cleanup;
mod dereference;
mod mount;
mod pods;
mod publish;
mod standby;
mod switchover;
mod teardown;
mod validate;

use ir_api::crd::{ABORT_ANNOTATION, InstantRecovery, RETRY_ANNOTATION, RecoveryMount};
use ir_api::recovery::RecoveryStatus;
use kube::{Api, Resource, ResourceExt};
use tokio_postgres::Client as PgClient;

use super::context::{Context, Error};
use super::report;
use ir_engine::machine::{self, Action, EndRequest, Step};
use ir_engine::round::{self, Found, Requests, RoundInfo};

/// Carries out the machine's actions for one reconcile.
pub(super) struct Driver<'a> {
    ctx: &'a Context,
    ir: &'a InstantRecovery,
    namespace: String,
    name: String,
    /// The status the actions of this round were planned from.
    status: RecoveryStatus,
    /// The machine has just left Waiting: failed parts get a fresh attempt.
    retrying: bool,
    /// The status as last written to the cluster.
    written: RecoveryStatus,
    mount: Option<RecoveryMount>,
    published_ip: Option<String>,
    published_client: Option<PgClient>,
    /// Where the published instance has replayed to, while it replays to a point in time.
    replayed_lsn: Option<u64>,
    /// Something is about to change (a Pod starting, a copy running): look again soon.
    pub(super) requeue_soon: bool,
}

impl round::Driver for Driver<'_> {
    type Error = Error;

    async fn requests(&mut self) -> Result<Requests, Error> {
        Ok(Requests {
            retry: self.ir.annotations().get(RETRY_ANNOTATION).cloned(),
            // Approval is part of the spec's policy.
            approved: false,
            end: self
                .ir
                .annotations()
                .contains_key(ABORT_ANNOTATION)
                .then_some(EndRequest::Abort),
        })
    }

    async fn execute(&mut self, action: Action, round: RoundInfo<'_>) -> Result<Found, Error> {
        self.status = round.status.clone();
        self.retrying = round.retrying;
        self.found(action).await
    }

    async fn persist(&mut self, status: &RecoveryStatus) -> Result<(), Error> {
        let mut status = status.clone();
        status.observed_generation = self.ir.metadata.generation;
        if status != self.written {
            report::write_status(self.ctx, self.ir, &status).await?;
            self.ctx
                .metrics
                .timings_reached(&self.written.timings, &status.timings);
            self.written = status;
        }
        Ok(())
    }

    async fn report(&mut self, events: &[machine::Event], _: &RecoveryStatus) {
        for event in events {
            report::publish(self.ctx, self.ir, event).await;
        }
    }
}

impl<'a> Driver<'a> {
    /// The driver of one reconcile of `ir`, whose status in the cluster is `written`.
    pub(super) fn new(ctx: &'a Context, ir: &'a InstantRecovery, written: RecoveryStatus) -> Self {
        Driver {
            ctx,
            ir,
            namespace: ir.namespace().unwrap_or_default(),
            name: ir.name_any(),
            status: written.clone(),
            retrying: false,
            written,
            mount: None,
            published_ip: None,
            published_client: None,
            replayed_lsn: None,
            requeue_soon: false,
        }
    }

    pub(super) fn api<K>(&self) -> Api<K>
    where
        K: Resource<Scope = k8s_openapi::NamespaceResourceScope, DynamicType = ()>,
    {
        Api::namespaced(self.ctx.client.clone(), &self.namespace)
    }

    async fn found(&mut self, action: Action) -> Result<Found, Error> {
        Ok(match action {
            Action::Validate => match self.validate().await {
                Ok((info, None)) => Found::Validation(Step::Ready(info)),
                Ok((info, Some(point))) => {
                    Found::ToPoint(Box::new(Found::Validation(Step::Ready(info))), point)
                }
                Err(f) => Found::Validation(Step::Failed(f)),
            },
            Action::EnsureMount => Found::Mount(self.ensure_mount().await?),
            Action::EnsurePublished => self.published().await?,
            Action::EnsureStandby => self.ensure_standby().await?,
            Action::Switchover => self.switchover().await?,
            Action::Cleanup => Found::Cleanup(self.cleanup().await?),
            Action::RestartPublished => Found::Restarted(self.restart_published().await?),
            Action::RestartCopy => self.restart_copy().await?,
            Action::Teardown => Found::Teardown(self.teardown().await?),
        })
    }
}

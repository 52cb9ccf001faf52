//! Carrying out the state machine's actions against the cluster for one reconcile: each action
//! is idempotent (get, create when missing, look at what is there) and fills in what it observed.

use std::time::Duration;

use ir_api::crd::{
    AGENT_HEARTBEAT_ANNOTATION, BackupRepository, CACHE_FREE_ANNOTATION, InstantRecovery,
    MountPhase, RecoveryMount,
};
use ir_api::recovery::{BackupInfo, RecoveryStatus};
use jiff::Timestamp;
use k8s_openapi::api::core::v1::{Node, PersistentVolumeClaim, Pod};
use k8s_openapi::api::networking::v1::NetworkPolicy;
use kube::api::{DeleteParams, Patch, PatchParams, PostParams};
use kube::{Api, Resource, ResourceExt};
use tokio_postgres::Client as PgClient;

use super::objects::{delete, ensure};
use super::report::{publish, write_status};
use super::resources::{self, POSTGRES_PORT, PRIMARY_LABEL, PublishedMount};
use super::{Context, Error};
use ir_api::Reason;
use ir_api::crd::RETRY_ANNOTATION;
use ir_engine::machine::{self, Action, EventKind, Failure, Standby, Step, SwitchoverReport};
use ir_engine::postgres::{
    self, ControlData, Endpoint, Host, PgError, PublishedControl, Reached, Switchover, quote_ident,
    quote_literal,
};
use ir_engine::round::{self, CopyAttempt, Found, Interruption, Requests, RoundInfo};

/// Restarts of the base-backup container after which the copy counts as failed.
const BASE_BACKUP_RESTARTS: u32 = 3;

/// The database the operator connects to: every cluster has it, so its name is not configurable.
const OPERATOR_DATABASE: &str = "postgres";

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
            write_status(self.ctx, self.ir, &status).await?;
            self.ctx
                .metrics
                .timings_reached(&self.written.timings, &status.timings);
            self.written = status;
        }
        Ok(())
    }

    async fn report(&mut self, events: &[machine::Event], _: &RecoveryStatus) {
        for event in events {
            publish(self.ctx, self.ir, event).await;
        }
    }
}

/// A Kubernetes call that failed while observing: the cluster may answer later.
fn kube_failure(what: &str, e: kube::Error) -> Failure {
    Failure::new(Reason::KubernetesUnavailable, format!("{what}: {e}"))
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
            requeue_soon: false,
        }
    }

    fn api<K>(&self) -> Api<K>
    where
        K: Resource<Scope = k8s_openapi::NamespaceResourceScope, DynamicType = ()>,
    {
        Api::namespaced(self.ctx.client.clone(), &self.namespace)
    }

    async fn found(&mut self, action: Action) -> Result<Found, Error> {
        Ok(match action {
            Action::Validate => Found::Validation(match self.validate().await {
                Ok(info) => Step::Ready(info),
                Err(f) => Step::Failed(f),
            }),
            Action::EnsureMount => Found::Mount(self.ensure_mount().await?),
            Action::EnsurePublished => Found::Published(self.ensure_published().await?),
            Action::EnsureStandby => self.ensure_standby().await?,
            Action::Switchover => self.switchover().await?,
            Action::Cleanup => Found::Cleanup(self.cleanup().await?),
            Action::RestartPublished => Found::Restarted(self.restart_published().await?),
            Action::RestartCopy => {
                delete(&self.api::<Pod>(), &resources::target_name(&self.name)).await?;
                self.requeue_soon = true;
                Found::Standby(Standby::Absent)
            }
        })
    }

    // ---- validate ----

    async fn repository(&self) -> Result<BackupRepository, Failure> {
        let name = &self.ir.spec.backup.repository_ref.name;
        match self.api::<BackupRepository>().get_opt(name).await {
            Ok(Some(repo)) => Ok(repo),
            Ok(None) => Err(Failure::new(
                Reason::RepositoryNotFound,
                format!(
                    "spec.backup.repositoryRef: BackupRepository {}/{name} does not exist",
                    self.namespace
                ),
            )),
            Err(e) => Err(kube_failure("reading the BackupRepository", e)),
        }
    }

    async fn validate(&self) -> Result<BackupInfo, Failure> {
        let spec = &self.ir.spec;
        let repo = self.repository().await?;
        // A fault of the repository's own spec (a path outside the file roots, no credentials)
        // is named as a field of the BackupRepository.
        let about_repository = |f: Failure| {
            let f = super::naming_repository_field(f);
            let prefix = if f.message.starts_with("spec.") {
                format!(
                    "spec.backup.repositoryRef: BackupRepository {}/{}: ",
                    self.namespace,
                    repo.name_any()
                )
            } else {
                "spec.backup: ".to_owned()
            };
            Failure {
                message: format!("{prefix}{}", f.message),
                ..f
            }
        };
        let location = super::repository_location(
            &self.ctx.client,
            &self.namespace,
            &repo.spec,
            &self.ctx.settings,
        )
        .await
        .map_err(about_repository)?;
        let backup = ir_engine::backup::find_backup(&location, &spec.backup.id)
            .await
            .map_err(about_repository)?;
        self.credentials().await?;
        if let Some(secret) = &spec.postgres.replication_secret {
            super::read_secret(
                &self.ctx.client,
                &self.namespace,
                &secret.name,
                &["username", "password"],
                "spec.postgres.replicationSecret",
            )
            .await?;
        }
        let image = resources::postgres_image(self.ir, backup.pg_major);
        if let Some(major) = resources::image_major(&image)
            && major != backup.pg_major
        {
            return Err(Failure::new(
                Reason::ImageMismatch,
                format!(
                    "spec.postgres.image: {image} runs PostgreSQL {major}, but backup {} is \
                     PostgreSQL {}",
                    backup.id, backup.pg_major
                ),
            ));
        }
        if let Some(size) = &spec.target.size {
            let bytes = ir_api::quantity_bytes(&size.0).ok_or_else(|| {
                Failure::new(
                    Reason::InvalidSpec,
                    format!("spec.target.size: {:?} is not a quantity", size.0),
                )
            })?;
            if bytes < backup.size_bytes {
                return Err(Failure::new(
                    Reason::TargetTooSmall,
                    format!(
                        "spec.target.size: {} is smaller than backup {} ({} bytes)",
                        size.0, backup.id, backup.size_bytes
                    ),
                ));
            }
        }
        if self
            .api::<RecoveryMount>()
            .get_opt(&self.name)
            .await
            .ok()
            .flatten()
            .is_none()
        {
            self.choose_node().await?;
        }
        Ok(backup)
    }

    /// The superuser the operator connects as.
    async fn credentials(&self) -> Result<(String, String), Failure> {
        let values = super::read_secret(
            &self.ctx.client,
            &self.namespace,
            &self.ir.spec.postgres.credentials_secret.name,
            &["username", "password"],
            "spec.postgres.credentialsSecret",
        )
        .await?;
        Ok((values[0].clone(), values[1].clone()))
    }

    /// The published instance turned the operator's first connection down.
    fn first_query_rejected(&self, rejection: postgres::Rejection) -> Failure {
        first_query_failure(
            rejection,
            &self.namespace,
            &self.ir.spec.postgres.credentials_secret.name,
            &self.ir.spec.backup.id,
        )
    }

    /// `spec.nodeName`, or the node whose live agent has the most free cache space.
    async fn choose_node(&self) -> Result<String, Failure> {
        let nodes: Api<Node> = Api::all(self.ctx.client.clone());
        let needed = match &self.ir.spec.cache.size_limit {
            Some(q) => ir_api::quantity_bytes(&q.0).ok_or_else(|| {
                Failure::new(
                    Reason::InvalidSpec,
                    format!("spec.cache.sizeLimit: {:?} is not a quantity", q.0),
                )
            })?,
            None => 0,
        };
        let now = Timestamp::now();
        let agent = |node: &Node| -> Option<u64> {
            let annotations = node.metadata.annotations.as_ref()?;
            let beat: Timestamp = annotations.get(AGENT_HEARTBEAT_ANNOTATION)?.parse().ok()?;
            let age = now.duration_since(beat).unsigned_abs();
            (age <= self.ctx.settings.agent_timeout)
                .then(|| annotations.get(CACHE_FREE_ANNOTATION)?.parse().ok())
                .flatten()
        };
        if let Some(name) = &self.ir.spec.node_name {
            let node = nodes
                .get_opt(name)
                .await
                .map_err(|e| kube_failure("reading the node", e))?
                .ok_or_else(|| {
                    Failure::new(
                        Reason::NodeNotFound,
                        format!("spec.nodeName: node {name} does not exist"),
                    )
                })?;
            let free = agent(&node).ok_or_else(|| {
                Failure::new(
                    Reason::AgentUnavailable,
                    format!(
                        "spec.nodeName: node {name} has no running instant-recovery agent \
                         (no heartbeat within {:?})",
                        self.ctx.settings.agent_timeout
                    ),
                )
            })?;
            if free < needed {
                return Err(Failure::new(
                    Reason::InsufficientCacheSpace,
                    format!(
                        "spec.cache.sizeLimit: node {name} has {free} bytes free for the IRCache, \
                         {needed} needed"
                    ),
                ));
            }
            return Ok(name.clone());
        }
        let list = nodes
            .list(&Default::default())
            .await
            .map_err(|e| kube_failure("listing nodes", e))?;
        let mut with_agent = 0;
        let best = list
            .items
            .iter()
            .filter_map(|n| agent(n).map(|free| (free, n.name_any())))
            .inspect(|_| with_agent += 1)
            .filter(|(free, _)| *free >= needed)
            .max();
        match best {
            Some((_, name)) => Ok(name),
            None if with_agent == 0 => Err(Failure::new(
                Reason::AgentUnavailable,
                "no node runs an instant-recovery agent (is the DaemonSet installed?)",
            )),
            None => Err(Failure::new(
                Reason::InsufficientCacheSpace,
                format!(
                    "spec.cache.sizeLimit: no node with an agent has {needed} bytes free for the \
                     IRCache"
                ),
            )),
        }
    }

    // ---- mount ----

    async fn ensure_mount(&mut self) -> Result<Step, Error> {
        let api = self.api::<RecoveryMount>();
        let mount = match api.get_opt(&self.name).await? {
            Some(mount) => mount,
            None => {
                let Some(backup) = &self.status.backup else {
                    return Ok(Step::Failed(Failure::new(
                        Reason::NotValidated,
                        "the recovery has no validated backup",
                    )));
                };
                let repo = match self.repository().await {
                    Ok(repo) => repo,
                    Err(f) => return Ok(Step::Failed(f)),
                };
                let node = match self.choose_node().await {
                    Ok(node) => node,
                    Err(f) => return Ok(Step::Failed(f)),
                };
                let mount = resources::recovery_mount(
                    self.ir,
                    &node,
                    &repo.spec,
                    &backup.id,
                    self.ctx.settings.postgres_user,
                );
                self.requeue_soon = true;
                return match api.create(&PostParams::default(), &mount).await {
                    Ok(_) => Ok(Step::InProgress),
                    Err(kube::Error::Api(e)) if e.code == 409 => Ok(Step::InProgress),
                    Err(e) => Err(e.into()),
                };
            }
        };
        if mount.metadata.deletion_timestamp.is_some() {
            self.requeue_soon = true;
            return Ok(Step::InProgress);
        }
        let status = mount.status.clone().unwrap_or_default();
        if status.attempt != mount.spec.attempt {
            // The agent has not answered this attempt yet.
            return Ok(Step::InProgress);
        }
        let step = match status.phase {
            MountPhase::Pending => Step::InProgress,
            MountPhase::Mounted => {
                if let Err(f) = self.agent_alive(&mount.spec.node_name).await {
                    return Ok(Step::Failed(f));
                }
                self.mount = Some(mount);
                Step::Ready(())
            }
            MountPhase::Failed if self.retrying => {
                let patch = serde_json::json!({"spec": {"attempt": mount.spec.attempt + 1}});
                api.patch(&self.name, &PatchParams::default(), &Patch::Merge(&patch))
                    .await?;
                Step::InProgress
            }
            MountPhase::Failed => Step::Failed(Failure::relayed(
                status
                    .reason
                    .and_then(|r| r.parse().ok())
                    .unwrap_or(Reason::MountFailed),
                status.transient,
                format!(
                    "node {}: {}",
                    mount.spec.node_name,
                    status.message.unwrap_or_default()
                ),
            )),
        };
        Ok(step)
    }

    async fn agent_alive(&self, node: &str) -> Result<(), Failure> {
        let nodes: Api<Node> = Api::all(self.ctx.client.clone());
        let node_obj = nodes
            .get_opt(node)
            .await
            .map_err(|e| kube_failure("reading the node", e))?;
        let beat = node_obj
            .as_ref()
            .and_then(|n| n.metadata.annotations.as_ref())
            .and_then(|a| a.get(AGENT_HEARTBEAT_ANNOTATION))
            .and_then(|v| v.parse::<Timestamp>().ok());
        match beat {
            Some(beat)
                if Timestamp::now().duration_since(beat).unsigned_abs()
                    <= self.ctx.settings.agent_timeout =>
            {
                Ok(())
            }
            _ => Err(Failure::new(
                Reason::AgentUnavailable,
                format!("the instant-recovery agent on node {node} stopped reporting"),
            )),
        }
    }

    // ---- publish ----

    fn image(&self) -> String {
        let major = self.status.backup.as_ref().map_or(0, |b| b.pg_major);
        resources::postgres_image(self.ir, major)
    }

    async fn endpoint(&self, ip: &str) -> Result<Endpoint, Failure> {
        let (user, password) = self.credentials().await?;
        Ok(Endpoint {
            host: Host::Tcp(ip.to_owned()),
            port: POSTGRES_PORT,
            user,
            password: Some(password),
            dbname: OPERATOR_DATABASE.to_owned(),
        })
    }

    async fn ensure_published(&mut self) -> Result<Step<Timestamp>, Error> {
        let Some(mount) = &self.mount else {
            return Ok(Step::InProgress);
        };
        let mount_status = mount.status.clone().unwrap_or_default();
        let (Some(host_path), Some(mounted_at)) =
            (mount_status.mount_path, mount_status.mounted_at)
        else {
            return Ok(Step::InProgress);
        };
        if let Err(why) = check_mount_path(mount, &host_path) {
            return Ok(Step::Failed(Failure::new(
                Reason::MountPathInvalid,
                format!(
                    "RecoveryMount {}/{}: status.mountPath {host_path:?} {why}",
                    self.namespace, self.name
                ),
            )));
        }
        let mounted_at = mounted_at.to_string();
        let node = mount.spec.node_name.clone();
        // Who may reach PostgreSQL, before there is one.
        self.ensure_network_policy().await?;
        ensure(&self.api(), resources::config_map(self.ir)).await?;
        ensure(&self.api(), resources::service(self.ir)).await?;
        let pods = self.api::<Pod>();
        let pod_name = resources::published_pod_name(&self.name);
        let Some(pod) = pods.get_opt(&pod_name).await? else {
            let pod = resources::published_pod(
                self.ir,
                &self.image(),
                self.ctx.settings.postgres_user,
                &PublishedMount {
                    node: &node,
                    host_path: &host_path,
                    mounted_at: &mounted_at,
                },
            );
            self.requeue_soon = true;
            match pods.create(&PostParams::default(), &pod).await {
                Ok(_) => {}
                Err(kube::Error::Api(e)) if e.code == 409 => {}
                Err(e) => return Err(e.into()),
            }
            return Ok(Step::InProgress);
        };
        if pod.metadata.deletion_timestamp.is_some() {
            self.requeue_soon = true;
            return Ok(Step::InProgress);
        }
        let started_on = pod
            .annotations()
            .get(resources::MOUNTED_AT_ANNOTATION)
            .cloned();
        if started_on.as_deref() != Some(mounted_at.as_str()) {
            // The agent mounted again: files PostgreSQL had open are gone with the old session.
            tracing::info!(pod = %pod_name, "the mount was renewed: restarting the published instance");
            self.publish_note(
                Reason::MountRenewed,
                "the agent mounted the backup again; restarting the published instance (crash \
                 recovery from the IRCache)",
            )
            .await;
            delete(&pods, &pod_name).await?;
            self.requeue_soon = true;
            return Ok(Step::InProgress);
        }
        let status = pod.status.clone().unwrap_or_default();
        match status.phase.as_deref() {
            Some("Failed") | Some("Succeeded") => {
                return self.published_exited(&pods, &pod).await;
            }
            Some("Running") => {}
            _ => {
                if let Some(f) = waiting_failure(&pod) {
                    return Ok(Step::Failed(f));
                }
                self.requeue_soon = true;
                return Ok(Step::InProgress);
            }
        }
        let Some(ip) = status.pod_ip.filter(|ip| !ip.is_empty()) else {
            self.requeue_soon = true;
            return Ok(Step::InProgress);
        };
        let endpoint = match self.endpoint(&ip).await {
            Ok(e) => e,
            Err(f) => return Ok(Step::Failed(f)),
        };
        // Poll briefly: the moment of the first answer is the headline figure.
        let deadline = std::time::Instant::now() + Duration::from_secs(5);
        loop {
            match endpoint.probe().await {
                Ok(Some(client)) => {
                    let answered = Timestamp::now();
                    self.published_ip = Some(ip);
                    self.published_client = Some(client);
                    return Ok(Step::Ready(answered));
                }
                Ok(None) => {}
                Err(rejection) => return Ok(Step::Failed(self.first_query_rejected(rejection))),
            }
            if std::time::Instant::now() >= deadline {
                self.requeue_soon = true;
                return Ok(Step::InProgress);
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// The recovery's NetworkPolicy as the spec says now (`spec.network.clients` may change).
    async fn ensure_network_policy(&self) -> Result<(), Error> {
        let Some(operator) = &self.ctx.settings.network_policy else {
            return Ok(());
        };
        let wanted = resources::network_policy(self.ir, operator);
        let existing = ensure(&self.api(), wanted.clone()).await?;
        if existing.spec != wanted.spec {
            let name = resources::network_policy_name(&self.name);
            let patch = serde_json::json!({
                "apiVersion": "networking.k8s.io/v1",
                "kind": "NetworkPolicy",
                "metadata": {"name": name, "labels": wanted.metadata.labels},
                "spec": wanted.spec,
            });
            self.api::<NetworkPolicy>()
                .patch(
                    &name,
                    &PatchParams::apply(super::FIELD_MANAGER).force(),
                    &Patch::Apply(&patch),
                )
                .await?;
        }
        Ok(())
    }

    /// The published PostgreSQL exited. Its agent may be restarting (the mount died with it):
    /// that gets `agent_timeout` to show a new mount session before this counts as a failure.
    async fn published_exited(
        &mut self,
        pods: &Api<Pod>,
        pod: &Pod,
    ) -> Result<Step<Timestamp>, Error> {
        let name = pod.name_any();
        if self.retrying {
            delete(pods, &name).await?;
            self.requeue_soon = true;
            return Ok(Step::InProgress);
        }
        let terminated = pod
            .status
            .as_ref()
            .and_then(|s| s.container_statuses.as_ref())
            .and_then(|c| c.first())
            .and_then(|c| c.state.as_ref())
            .and_then(|s| s.terminated.clone());
        let finished = terminated
            .as_ref()
            .and_then(|t| t.finished_at.as_ref())
            .map(|t| t.0);
        if let Some(finished) = finished
            && Timestamp::now().duration_since(finished).unsigned_abs()
                < self.ctx.settings.agent_timeout
        {
            self.requeue_soon = true;
            return Ok(Step::InProgress);
        }
        let detail = terminated.map_or_else(String::new, |t| {
            format!(
                " (exit code {}{}{})",
                t.exit_code,
                t.reason.map(|r| format!(", {r}")).unwrap_or_default(),
                t.message.map(|m| format!(": {m}")).unwrap_or_default()
            )
        });
        Ok(Step::Failed(Failure::new(
            Reason::PublishedInstanceExited,
            format!(
                "PostgreSQL in Pod {name} exited{detail}; see `kubectl logs {name}`; a retry \
                 starts it again"
            ),
        )))
    }

    async fn publish_note(&self, reason: Reason, message: &str) {
        publish(
            self.ctx,
            self.ir,
            &machine::Event {
                kind: EventKind::Normal,
                reason,
                message: message.to_owned(),
            },
        )
        .await;
    }

    // ---- sync ----

    /// (user, password, generated by the operator).
    async fn replication_credentials(
        &self,
    ) -> Result<Result<(String, String, bool), Failure>, Error> {
        let (name, generated) = match &self.ir.spec.postgres.replication_secret {
            Some(secret) => (secret.name.clone(), false),
            None => (resources::replication_secret_name(&self.name), true),
        };
        if generated {
            ensure(
                &self.api(),
                resources::replication_secret(self.ir, &random_password()),
            )
            .await?;
        }
        let values = super::read_secret(
            &self.ctx.client,
            &self.namespace,
            &name,
            &["username", "password"],
            "spec.postgres.replicationSecret",
        )
        .await;
        Ok(values.map(|v| (v[0].clone(), v[1].clone(), generated)))
    }

    async fn ensure_standby(&mut self) -> Result<Found, Error> {
        let (Some(published_ip), Some(published)) =
            (self.published_ip.clone(), self.published_client.take())
        else {
            // Nothing to copy from or to ask: the published instance is not ready.
            return Ok(Found::Standby(Standby::Unknown));
        };
        let (repl_user, repl_password, generated) = match self.replication_credentials().await? {
            Ok(credentials) => credentials,
            Err(f) => return Ok(Found::Standby(Standby::Failed(f))),
        };
        if let Err(f) =
            ensure_replication_role(&published, &repl_user, &repl_password, generated).await
        {
            if published.is_closed() {
                // The published instance went away under the query (its mount died, say): its
                // own check reports that, and the standby was not looked at. Failing the standby
                // would wait for the retry interval instead of replacing the published Pod.
                self.requeue_soon = true;
                return Ok(Found::Standby(Standby::Unknown));
            }
            return Ok(Found::Standby(Standby::Failed(f)));
        }
        let backup_bytes = self.status.backup.as_ref().map_or(0, |b| b.size_bytes);
        let size = self
            .ir
            .spec
            .target
            .size
            .clone()
            .unwrap_or_else(|| resources::default_target_size(backup_bytes));
        ensure(&self.api(), resources::target_pvc(self.ir, size)).await?;
        let pods = self.api::<Pod>();
        let target = resources::target_name(&self.name);
        let secret = self
            .ir
            .spec
            .postgres
            .replication_secret
            .as_ref()
            .map_or_else(
                || resources::replication_secret_name(&self.name),
                |s| s.name.clone(),
            );
        let Some(pod) = pods.get_opt(&target).await? else {
            let pod = resources::target_pod(
                self.ir,
                &self.image(),
                self.ctx.settings.postgres_user,
                &published_ip,
                &secret,
            );
            match pods.create(&PostParams::default(), &pod).await {
                Ok(_) => {}
                Err(kube::Error::Api(e)) if e.code == 409 => {}
                Err(e) => return Err(e.into()),
            }
            self.requeue_soon = true;
            return Ok(Found::Standby(Standby::Absent));
        };
        if pod.metadata.deletion_timestamp.is_some() {
            self.requeue_soon = true;
            return Ok(Found::Standby(Standby::Absent));
        }
        if let Some(f) = waiting_failure(&pod) {
            return Ok(Found::Standby(Standby::Failed(f)));
        }
        let status = pod.status.clone().unwrap_or_default();
        let init = status
            .init_container_statuses
            .as_ref()
            .and_then(|s| s.first())
            .cloned();
        let copied = init
            .as_ref()
            .and_then(|s| s.state.as_ref())
            .and_then(|s| s.terminated.as_ref())
            .is_some_and(|t| t.exit_code == 0);
        if !copied {
            let restarts = init.as_ref().map_or(0, |s| s.restart_count);
            let copying_from = init_env(&pod, resources::SOURCE_HOST_ENV);
            self.requeue_soon = true;
            let (copied_bytes, total_bytes) = postgres::base_backup_progress(&published)
                .await
                .ok()
                .flatten()
                .unwrap_or((0, 0));
            return Ok(Found::Copy(CopyAttempt {
                copied_bytes,
                total_bytes,
                failures: u32::try_from(restarts).unwrap_or(0),
                // The kubelet restarts the copy container by itself.
                gives_up_after: BASE_BACKUP_RESTARTS,
                source_moved: copying_from.as_deref() != Some(published_ip.as_str()),
                failure_detail: format!(
                    "pg_basebackup in Pod {target} failed {restarts} times; see `kubectl logs \
                     {target} -c base-backup`"
                ),
            }));
        }
        let Some(ip) = status
            .pod_ip
            .filter(|ip| !ip.is_empty() && status.phase.as_deref() == Some("Running"))
        else {
            self.requeue_soon = true;
            return Ok(Found::Standby(Standby::Connecting));
        };
        let app = resources::standby_application_name(&self.name);
        let lag = postgres::replication_lag(&published, &app).await?;
        if lag.is_none() {
            // Not streaming: make sure it follows the published instance where it is now.
            if let Ok(endpoint) = self.endpoint(&ip).await
                && let Ok(standby) = endpoint.connect().await
            {
                follow(&standby, &published_ip, &repl_user, &repl_password, &app).await?;
            }
            self.requeue_soon = true;
        }
        Ok(Found::Standby(match lag {
            Some(lag_bytes) => Standby::Streaming { lag_bytes },
            None => Standby::Connecting,
        }))
    }

    // ---- switchover ----

    async fn pod_ip(&self, name: &str) -> Result<Option<String>, Error> {
        Ok(self
            .api::<Pod>()
            .get_opt(name)
            .await?
            .and_then(|p| p.status)
            .and_then(|s| s.pod_ip)
            .filter(|ip| !ip.is_empty()))
    }

    async fn switchover(&mut self) -> Result<Found, Error> {
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
                // The standby gets the last word on whether it was promoted.
                let standby_in_recovery = match standby_endpoint.connect().await {
                    Ok(client) => postgres::in_recovery(&client).await.ok(),
                    Err(_) => None,
                };
                Ok(Found::SwitchoverInterrupted(Interruption {
                    failure: Failure::new(Reason::SwitchoverFailed, e.to_string()),
                    reached: e.reached,
                    published_present: self.api::<Pod>().get_opt(&control.name).await?.is_some(),
                    standby_in_recovery,
                }))
            }
        }
    }

    /// Starts the published instance again after a switchover stopped it, writable; says why
    /// not when it does not serve again.
    async fn restart_published(&mut self) -> Result<Result<(), String>, Error> {
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

    /// Points the Service at `pod`.
    async fn label_primary(&self, pod: &str) -> Result<(), Error> {
        let patch = serde_json::json!({"metadata": {"labels": {PRIMARY_LABEL: "true"}}});
        self.api::<Pod>()
            .patch(pod, &PatchParams::default(), &Patch::Merge(&patch))
            .await?;
        Ok(())
    }

    // ---- completed ----

    async fn cleanup(&mut self) -> Result<Step, Error> {
        let target = resources::target_name(&self.name);
        self.label_primary(&target).await?;
        // The target is the database now: it outlives the recovery object.
        let release = serde_json::json!({"metadata": {"ownerReferences": null}});
        self.api::<PersistentVolumeClaim>()
            .patch(&target, &PatchParams::default(), &Patch::Merge(&release))
            .await?;
        let pods = self.api::<Pod>();
        let published = resources::published_pod_name(&self.name);
        if pods.get_opt(&published).await?.is_some() {
            delete(&pods, &published).await?;
            self.requeue_soon = true;
            return Ok(Step::InProgress);
        }
        if !self.ir.spec.retain.cache {
            let mounts = self.api::<RecoveryMount>();
            if mounts.get_opt(&self.name).await?.is_some() {
                delete(&mounts, &self.name).await?;
                self.requeue_soon = true;
                return Ok(Step::InProgress);
            }
        }
        // Once completed, the role is gone: leave the production database alone.
        if self.ir.spec.postgres.replication_secret.is_none()
            && self.status.timings.completed_at.is_none()
        {
            return self.drop_generated_replication_role(&target).await;
        }
        Ok(Step::Ready(()))
    }

    /// Drops the role of the generated replication Secret from the promoted target: the copy
    /// carried it there, and its password goes away with the Secret.
    async fn drop_generated_replication_role(&mut self, target: &str) -> Result<Step, Error> {
        let Some(ip) = self.pod_ip(target).await? else {
            self.requeue_soon = true;
            return Ok(Step::InProgress);
        };
        let endpoint = match self.endpoint(&ip).await {
            Ok(endpoint) => endpoint,
            Err(f) => return Ok(Step::Failed(f)),
        };
        let statement = format!(
            "DROP ROLE IF EXISTS {}",
            quote_ident(resources::GENERATED_REPLICATION_USER)
        );
        let dropped = match endpoint.connect().await {
            Ok(client) => client.batch_execute(&statement).await,
            Err(e) => Err(e),
        };
        Ok(match dropped {
            Ok(()) => Step::Ready(()),
            Err(e) => Step::Failed(Failure::new(
                Reason::PostgresUnavailable,
                postgres::describe(&e),
            )),
        })
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

/// The host path a RecoveryMount's status names is a mount of this RecoveryMount: an absolute
/// path without `.` or `..` whose last part is the RecoveryMount's uid (or, from an agent of an
/// earlier version, `<namespace>-<name>`). The published Pod mounts it from the host, so a path
/// any writer of the status chose (`/`, `/etc`) must not pass.
fn check_mount_path(mount: &RecoveryMount, path: &str) -> Result<(), &'static str> {
    use std::path::{Component, Path};
    let path = Path::new(path);
    if !path.is_absolute() {
        return Err("is not an absolute path");
    }
    if path
        .components()
        .any(|c| !matches!(c, Component::RootDir | Component::Normal(_)))
    {
        return Err("has '.' or '..' in it");
    }
    let last = path.file_name().and_then(|n| n.to_str());
    let uid = mount.metadata.uid.as_deref();
    let legacy = format!(
        "{}-{}",
        mount.metadata.namespace.as_deref().unwrap_or_default(),
        mount.name_any()
    );
    match last {
        Some(last) if Some(last) == uid || last == legacy => Ok(()),
        _ => Err(
            "is not a mount of this RecoveryMount (its last part is not the RecoveryMount's uid)",
        ),
    }
}

/// A rejected first connection is permanent: a refused login needs another Secret, a missing
/// database (its name is fixed) another backup.
fn first_query_failure(
    rejection: postgres::Rejection,
    namespace: &str,
    credentials_secret: &str,
    backup: &str,
) -> Failure {
    let message = if rejection.reason == Reason::DatabaseMissing {
        format!(
            "spec.backup: backup {backup} has no database {OPERATOR_DATABASE:?}, which the \
             operator always connects to (the name is not configurable): {}",
            rejection.message
        )
    } else {
        format!(
            "spec.postgres.credentialsSecret: Secret {namespace}/{credentials_secret} (keys \
             \"username\", \"password\"): {}",
            rejection.message
        )
    };
    Failure::new(rejection.reason, message)
}

/// A container that cannot start for a reason a wait will not fix soon (bad image, missing
/// Secret key), or a main container that keeps crashing. The init container's crashes are the
/// copy failing: `BASE_BACKUP_RESTARTS` judges those.
fn waiting_failure(pod: &Pod) -> Option<Failure> {
    let status = pod.status.as_ref()?;
    let init = status.init_container_statuses.iter().flatten();
    let main = status.container_statuses.iter().flatten();
    let all = init.map(|c| (c, false)).chain(main.map(|c| (c, true)));
    for (container, is_main) in all {
        let waiting = container.state.as_ref().and_then(|s| s.waiting.as_ref());
        if let Some(w) = waiting
            && let Some(reason) = w.reason.as_deref()
            && (matches!(
                reason,
                "ErrImagePull"
                    | "ImagePullBackOff"
                    | "InvalidImageName"
                    | "CreateContainerConfigError"
            ) || (is_main && reason == "CrashLoopBackOff"))
        {
            return Some(Failure::new(
                Reason::PodCannotStart,
                format!(
                    "Pod {}: container {} {reason}: {}",
                    pod.name_any(),
                    container.name,
                    w.message.clone().unwrap_or_default()
                ),
            ));
        }
    }
    None
}

/// The value of env `name` of the Pod's first init container.
fn init_env(pod: &Pod, name: &str) -> Option<String> {
    pod.spec
        .as_ref()?
        .init_containers
        .as_ref()?
        .first()?
        .env
        .as_ref()?
        .iter()
        .find(|e| e.name == name)?
        .value
        .clone()
}

/// Creates (or repairs) the replication role of a generated Secret; a role of a given Secret
/// must exist already.
async fn ensure_replication_role(
    client: &PgClient,
    user: &str,
    password: &str,
    generated: bool,
) -> Result<(), Failure> {
    let pg = |e: tokio_postgres::Error| {
        Failure::new(Reason::PostgresUnavailable, postgres::describe(&e))
    };
    let row = client
        .query_opt(
            "SELECT rolreplication AND rolcanlogin FROM pg_roles WHERE rolname = $1",
            &[&user],
        )
        .await
        .map_err(pg)?;
    match (row.map(|r| r.get::<_, bool>(0)), generated) {
        (Some(true), _) => Ok(()),
        (state, true) => {
            let verb = if state.is_some() { "ALTER" } else { "CREATE" };
            client
                .batch_execute(&postgres::replication_role_sql(verb, user, password))
                .await
                .map_err(pg)
        }
        (_, false) => Err(Failure::new(
            Reason::ReplicationRoleMissing,
            format!(
                "spec.postgres.replicationSecret: role {user:?} does not exist in the backup or \
                 cannot log in for replication"
            ),
        )),
    }
}

/// Points a standby at the published instance (its IP changes when its Pod is replaced).
async fn follow(
    standby: &PgClient,
    host: &str,
    user: &str,
    password: &str,
    application_name: &str,
) -> Result<(), Error> {
    let current: String = standby
        .query_one("SHOW primary_conninfo", &[])
        .await
        .map_err(PgError::db("SHOW primary_conninfo"))?
        .get(0);
    if current
        .split_whitespace()
        .any(|kv| kv == format!("host={host}"))
    {
        return Ok(());
    }
    let conninfo = format!(
        "host={host} port={POSTGRES_PORT} user={} password={} application_name={}",
        conninfo_value(user),
        conninfo_value(password),
        conninfo_value(application_name)
    );
    postgres::alter_system(
        standby,
        &format!(
            "ALTER SYSTEM SET primary_conninfo = {}",
            quote_literal(&conninfo)
        ),
        "setting primary_conninfo",
    )
    .await?;
    Ok(())
}

fn conninfo_value(value: &str) -> String {
    format!("'{}'", value.replace('\\', "\\\\").replace('\'', "\\'"))
}

fn random_password() -> String {
    use std::io::Read;
    let mut bytes = [0u8; 24];
    std::fs::File::open("/dev/urandom")
        .and_then(|mut f| f.read_exact(&mut bytes))
        .expect("/dev/urandom is readable");
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::core::v1::{
        ContainerState, ContainerStateRunning, ContainerStateWaiting, ContainerStatus, PodStatus,
    };

    fn target_pod() -> Pod {
        let ir = resources::tests::recovery();
        let user = resources::PostgresUser { uid: 999, gid: 998 };
        resources::target_pod(&ir, "postgres:15-typo", user, "10.0.0.7", "orders-repl")
    }

    fn container(name: &str, state: Option<ContainerState>) -> ContainerStatus {
        ContainerStatus {
            name: name.to_owned(),
            state,
            ..Default::default()
        }
    }

    fn waiting(reason: &str, message: &str) -> Option<ContainerState> {
        Some(ContainerState {
            waiting: Some(ContainerStateWaiting {
                reason: Some(reason.to_owned()),
                message: Some(message.to_owned()),
            }),
            ..Default::default()
        })
    }

    fn with_status(
        mut pod: Pod,
        init: Vec<ContainerStatus>,
        containers: Vec<ContainerStatus>,
    ) -> Pod {
        pod.status = Some(PodStatus {
            phase: Some("Pending".to_owned()),
            init_container_statuses: Some(init),
            container_statuses: Some(containers),
            ..Default::default()
        });
        pod
    }

    #[test]
    fn a_target_pod_that_cannot_start_is_a_failure() {
        // The copy's init container is the first to pull the image.
        let pod = with_status(
            target_pod(),
            vec![container(
                "base-backup",
                waiting(
                    "ImagePullBackOff",
                    "Back-off pulling image \"postgres:15-typo\"",
                ),
            )],
            vec![container("postgres", None)],
        );
        let f = waiting_failure(&pod).expect("a failure");
        assert_eq!((f.reason.as_str(), f.transient), ("PodCannotStart", true));
        assert!(f.message.contains("orders-target"), "{}", f.message);
        assert!(
            f.message.contains("base-backup ImagePullBackOff"),
            "{}",
            f.message
        );

        // A container without a state yet does not hide a later one that cannot start.
        let pod = with_status(
            target_pod(),
            vec![container("base-backup", None)],
            vec![container(
                "postgres",
                waiting(
                    "CreateContainerConfigError",
                    "secret \"orders-repl\" not found",
                ),
            )],
        );
        let f = waiting_failure(&pod).expect("a failure");
        assert!(f.message.contains("orders-repl"), "{}", f.message);
    }

    #[test]
    fn a_target_pod_on_its_way_is_no_failure() {
        let running = Some(ContainerState {
            running: Some(ContainerStateRunning::default()),
            ..Default::default()
        });
        let pod = with_status(
            target_pod(),
            vec![container("base-backup", running)],
            vec![container("postgres", waiting("PodInitializing", ""))],
        );
        assert_eq!(waiting_failure(&pod), None);
        assert_eq!(waiting_failure(&target_pod()), None, "no status yet");
    }

    #[test]
    fn a_crashing_standby_is_a_failure_a_crashing_copy_is_counted_elsewhere() {
        let back_off = "back-off 40s restarting failed container";
        let pod = with_status(
            target_pod(),
            vec![container(
                "base-backup",
                waiting("CrashLoopBackOff", back_off),
            )],
            vec![container("postgres", waiting("PodInitializing", ""))],
        );
        assert_eq!(waiting_failure(&pod), None);

        let pod = with_status(
            target_pod(),
            vec![container("base-backup", None)],
            vec![container("postgres", waiting("CrashLoopBackOff", back_off))],
        );
        let f = waiting_failure(&pod).expect("a failure");
        assert_eq!(f.reason, "PodCannotStart");
        assert!(
            f.message.contains("postgres CrashLoopBackOff"),
            "{}",
            f.message
        );
    }

    #[test]
    fn only_a_mount_path_of_the_recovery_mount_reaches_the_published_pod() {
        let ir = resources::tests::recovery();
        let mut mount = resources::recovery_mount(
            &ir,
            "node-a",
            &serde_json::from_value(serde_json::json!({"url": "file:///r"})).unwrap(),
            "b1",
            resources::PostgresUser { uid: 999, gid: 999 },
        );
        mount.metadata.uid = Some("7c0a1e2f-uid".to_owned());
        assert_eq!(
            check_mount_path(&mount, "/run/media/instant-recovery/7c0a1e2f-uid"),
            Ok(())
        );
        // What an agent of an earlier version reports.
        assert_eq!(
            check_mount_path(&mount, "/run/media/instant-recovery/shop-orders"),
            Ok(())
        );
        for bad in [
            "/",
            "/etc",
            "relative/7c0a1e2f-uid",
            "/run/media/../../etc/7c0a1e2f-uid",
            "/run/media/instant-recovery/other-uid",
            "",
        ] {
            assert!(check_mount_path(&mount, bad).is_err(), "{bad:?} passed");
        }
    }

    #[test]
    fn a_missing_database_is_blamed_on_the_backup_a_refused_login_on_the_secret() {
        let rejected = |reason, message: &str| postgres::Rejection {
            reason,
            message: message.to_owned(),
        };
        let f = first_query_failure(
            rejected(
                Reason::DatabaseMissing,
                "database \"postgres\" does not exist",
            ),
            "shop",
            "db-superuser",
            "20260101T000000Z",
        );
        assert_eq!((f.reason.as_str(), f.transient), ("DatabaseMissing", false));
        assert_eq!(
            f.message,
            "spec.backup: backup 20260101T000000Z has no database \"postgres\", which the \
             operator always connects to (the name is not configurable): database \"postgres\" \
             does not exist"
        );

        let f = first_query_failure(
            rejected(
                Reason::AuthenticationFailed,
                "password authentication failed for user \"postgres\"",
            ),
            "shop",
            "db-superuser",
            "20260101T000000Z",
        );
        assert_eq!(
            (f.reason.as_str(), f.transient),
            ("AuthenticationFailed", false)
        );
        assert_eq!(
            f.message,
            "spec.postgres.credentialsSecret: Secret shop/db-superuser (keys \"username\", \
             \"password\"): password authentication failed for user \"postgres\""
        );
    }
}

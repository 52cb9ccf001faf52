//! PostgreSQL published on the mount: its NetworkPolicy, ConfigMap and Service, the published Pod
//! on the mount's node, a new Pod when the agent mounted again, the Pod's exits, and the first
//! answer of PostgreSQL.

use std::time::Duration;

use ir_api::Reason;
use ir_api::crd::RecoveryMount;
use ir_api::point_in_time::PointInTimeStatus;
use ir_engine::machine::{self, EventKind, Failure, Step};
use ir_engine::round::Found;
use ir_engine::{point_in_time, postgres};
use ir_repository::format_lsn;
use jiff::Timestamp;
use k8s_openapi::api::core::v1::Pod;
use k8s_openapi::api::networking::v1::NetworkPolicy;
use kube::api::{Patch, PatchParams, PostParams};
use kube::{Api, ResourceExt};

use super::Driver;
use super::dereference::OPERATOR_DATABASE;
use super::pods::waiting_failure;
use crate::k8s::context::{Error, FIELD_MANAGER};
use crate::k8s::objects::{delete, ensure};
use crate::k8s::report;
use crate::k8s::resources::{self, PublishedMount, Replay};

impl Driver<'_> {
    /// The published instance serving; for a recovery to a point in time, with the replay's
    /// progress, and serving only once promoted at the target.
    pub(super) async fn published(&mut self) -> Result<Found, Error> {
        let step = self.ensure_published().await?;
        let Some(point) = self.status.point_in_time.clone() else {
            return Ok(Found::Published(step));
        };
        let progress = PointInTimeStatus {
            replayed_lsn: self.replayed_lsn.map(format_lsn),
            reached_at: match &step {
                Step::Ready(first_query_at) => point.reached_at.or(Some(*first_query_at)),
                _ => point.reached_at,
            },
            ..point
        };
        Ok(Found::ToPoint(Box::new(Found::Published(step)), progress))
    }

    pub(super) async fn ensure_published(&mut self) -> Result<Step<Timestamp>, Error> {
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
            let repository = match &self.ir.spec.point_in_time {
                Some(_) => match self.repository().await {
                    Ok(repo) => Some(repo.spec),
                    Err(f) => return Ok(Step::Failed(f)),
                },
                None => None,
            };
            let replay = self
                .ir
                .spec
                .point_in_time
                .as_ref()
                .zip(repository.as_ref())
                .map(|(point, repository)| Replay {
                    tools_image: &self.ctx.settings.tools_image,
                    point,
                    repository,
                });
            let pod = resources::published_pod(
                self.ir,
                &self.image(),
                self.ctx.settings.postgres_user,
                &PublishedMount {
                    node: &node,
                    host_path: &host_path,
                    mounted_at: &mounted_at,
                },
                replay.as_ref(),
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
                Ok(Some(client)) if let Some(point) = &self.ir.spec.point_in_time => {
                    // It answers while it replays (hot standby): serving means promoted, or
                    // paused at the target when it is held there.
                    let hold = point_in_time::holds_at_target(point, self.ir.spec.mode);
                    match postgres::replay_progress(&client, hold).await {
                        Ok(postgres::Replay::Replaying(replayed)) => {
                            self.replayed_lsn = Some(replayed);
                            self.requeue_soon = true;
                            return Ok(Step::InProgress);
                        }
                        Ok(postgres::Replay::Paused(_) | postgres::Replay::Promoted) => {
                            let answered = Timestamp::now();
                            self.published_ip = Some(ip);
                            self.published_client = Some(client);
                            return Ok(Step::Ready(answered));
                        }
                        Err(_) => {}
                    }
                }
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
                    &PatchParams::apply(FIELD_MANAGER).force(),
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
        let last_lines = terminated
            .as_ref()
            .and_then(|t| t.message.as_deref())
            .unwrap_or_default();
        if point_in_time::ended_short(last_lines) {
            return Ok(Step::Failed(point_in_time::unreached(
                self.status.point_in_time.as_ref(),
                &format!("spec.pointInTime: PostgreSQL in Pod {name}"),
                last_lines,
            )));
        }
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

    pub(super) async fn publish_note(&self, reason: Reason, message: &str) {
        report::publish(
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

    /// The published instance turned the operator's first connection down.
    fn first_query_rejected(&self, rejection: postgres::Rejection) -> Failure {
        first_query_failure(
            rejection,
            &self.namespace,
            &self.ir.spec.postgres.credentials_secret.name,
            &self.ir.spec.backup.id,
        )
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

#[cfg(test)]
mod tests {
    use super::*;

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

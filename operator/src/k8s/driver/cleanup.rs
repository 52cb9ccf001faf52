//! After the switchover: the target is the database (the Service selects it, its PVC outlives
//! the recovery), the published Pod and the mount go, and so does the generated replication role.

use ir_api::Reason;
use ir_api::crd::RecoveryMount;
use ir_engine::machine::{Failure, Step};
use ir_engine::postgres;
use k8s_openapi::api::core::v1::{PersistentVolumeClaim, Pod};
use kube::api::{Patch, PatchParams};

use super::Driver;
use crate::k8s::context::Error;
use crate::k8s::objects::delete;
use crate::k8s::resources;

impl Driver<'_> {
    pub(super) async fn cleanup(&mut self) -> Result<Step, Error> {
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
        let dropped = match endpoint.connect().await {
            Ok(client) => postgres::drop_role(&client, resources::GENERATED_REPLICATION_USER).await,
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

//! An aborted recovery (or an ended publish) before its switchover: the Pods, the target's PVC
//! and the mount go, in that order, so that nothing writes to what is deleted next. The target
//! never served as the database yet, so its PVC is the recovery's to delete.

use ir_api::crd::RecoveryMount;
use ir_engine::machine::Step;
use k8s_openapi::api::core::v1::{PersistentVolumeClaim, Pod};

use super::Driver;
use crate::k8s::context::Error;
use crate::k8s::objects::delete;
use crate::k8s::resources;

impl Driver<'_> {
    pub(super) async fn teardown(&mut self) -> Result<Step, Error> {
        let pods = self.api::<Pod>();
        let mut present = false;
        for pod in [
            resources::target_name(&self.name),
            resources::published_pod_name(&self.name),
        ] {
            if pods.get_opt(&pod).await?.is_some() {
                delete(&pods, &pod).await?;
                present = true;
            }
        }
        if present {
            self.requeue_soon = true;
            return Ok(Step::InProgress);
        }
        let pvcs = self.api::<PersistentVolumeClaim>();
        let target = resources::target_name(&self.name);
        if pvcs.get_opt(&target).await?.is_some() {
            delete(&pvcs, &target).await?;
        }
        let mounts = self.api::<RecoveryMount>();
        if mounts.get_opt(&self.name).await?.is_some() {
            // The agent's finalizer unmounts and wipes the IRCache before it goes.
            delete(&mounts, &self.name).await?;
            self.requeue_soon = true;
            return Ok(Step::InProgress);
        }
        Ok(Step::Ready(()))
    }
}

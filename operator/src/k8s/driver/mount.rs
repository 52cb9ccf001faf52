//! The backup mounted on a node: the RecoveryMount the node's agent answers, on a node whose
//! agent is alive and has the cache space.

use ir_api::Reason;
use ir_api::crd::{AGENT_HEARTBEAT_ANNOTATION, CACHE_FREE_ANNOTATION, MountPhase, RecoveryMount};
use ir_engine::machine::{Failure, Step};
use jiff::Timestamp;
use k8s_openapi::api::core::v1::Node;
use kube::api::{Patch, PatchParams, PostParams};
use kube::{Api, ResourceExt};

use super::Driver;
use super::dereference::kube_failure;
use crate::k8s::context::Error;
use crate::k8s::resources;

impl Driver<'_> {
    pub(super) async fn ensure_mount(&mut self) -> Result<Step, Error> {
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

    /// `spec.nodeName`, or the node whose live agent has the most free cache space.
    pub(super) async fn choose_node(&self) -> Result<String, Failure> {
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
}

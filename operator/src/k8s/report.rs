//! What the operator reports of a recovery: its status, written by server-side apply, and its
//! Events. The reconcile and the driver both report through here.

use ir_api::crd::InstantRecovery;
use ir_api::recovery::RecoveryStatus;
use kube::api::{Patch, PatchParams};
use kube::runtime::events::{Event as KubeEvent, EventType};
use kube::{Api, Resource, ResourceExt};

use super::context::{Context, Error, FIELD_MANAGER};
use ir_engine::machine::{self, EventKind};

/// The recovery as its log lines and backoff name it.
pub(super) fn key(ir: &InstantRecovery) -> String {
    format!(
        "InstantRecovery/{}/{}",
        ir.namespace().unwrap_or_default(),
        ir.name_any()
    )
}

pub(super) async fn write_status(
    ctx: &Context,
    ir: &InstantRecovery,
    status: &RecoveryStatus,
) -> Result<(), Error> {
    let api: Api<InstantRecovery> =
        Api::namespaced(ctx.client.clone(), &ir.namespace().unwrap_or_default());
    let patch = serde_json::json!({
        "apiVersion": "instantrecovery.dev/v1alpha1",
        "kind": "InstantRecovery",
        "status": status,
    });
    api.patch_status(
        &ir.name_any(),
        &PatchParams::apply(FIELD_MANAGER).force(),
        &Patch::Apply(&patch),
    )
    .await?;
    Ok(())
}

pub(super) async fn publish(ctx: &Context, ir: &InstantRecovery, event: &machine::Event) {
    let kube_event = KubeEvent {
        type_: match event.kind {
            EventKind::Normal => EventType::Normal,
            EventKind::Warning => EventType::Warning,
        },
        reason: event.reason.to_string(),
        note: Some(event.message.chars().take(1000).collect()),
        action: "Reconcile".to_owned(),
        secondary: None,
    };
    tracing::info!(recovery = %key(ir), reason = %event.reason, "{}", event.message);
    if let Err(e) = ctx.recorder.publish(&kube_event, &ir.object_ref(&())).await {
        tracing::warn!(error = %e, "could not publish an event");
    }
}

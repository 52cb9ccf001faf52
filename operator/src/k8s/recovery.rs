//! InstantRecovery: the state machine driven against the cluster.
//!
//! Each reconcile asks the machine what the current phase ensures, carries those actions out
//! against the cluster (every one idempotent: get, create when missing, look), lets the machine
//! decide with what was observed, and writes the status by server-side apply. The finalizer
//! tears down in order: the Pods, then the mount (the agent unmounts and wipes the IRCache),
//! then the rest.

use std::sync::Arc;
use std::time::{Duration, Instant};

use ir_api::crd::{InstantRecovery, OPERATOR_FINALIZER, RecoveryMount};
use ir_api::recovery::Phase;
use jiff::Timestamp;
use k8s_openapi::api::core::v1::{ConfigMap, PersistentVolumeClaim, Pod, Secret, Service};
use k8s_openapi::api::networking::v1::NetworkPolicy;
use kube::runtime::controller::Action as Requeue;
use kube::runtime::finalizer::{self, Event as Finalize};
use kube::{Api, ResourceExt};
use tracing::Instrument;

use super::context::{Context, Error};
use super::driver::Driver;
use super::objects::delete;
use super::report::key;
use super::resources;
use ir_engine::machine::{Decision, Policy};
use ir_engine::round;

/// The span of everything done for one recovery: its log lines carry its namespace and name
/// (as `object`: JSON log lines already use `name` for the span's own name).
fn span(ir: &InstantRecovery) -> tracing::Span {
    tracing::info_span!(
        "reconcile",
        kind = "InstantRecovery",
        namespace = %ir.namespace().unwrap_or_default(),
        object = %ir.name_any()
    )
}

fn teardown_pending(error: &Error) -> bool {
    matches!(error, Error::Finalizer(e) if matches!(
        **e,
        finalizer::Error::CleanupFailed(Error::TeardownPending(_))
    ))
}

pub async fn reconcile(ir: Arc<InstantRecovery>, ctx: Arc<Context>) -> Result<Requeue, Error> {
    let namespace = ir.namespace().unwrap_or_default();
    let api: Api<InstantRecovery> = Api::namespaced(ctx.client.clone(), &namespace);
    let key = key(&ir);
    let phase = ir.status.as_ref().map(|s| s.phase).unwrap_or_default();
    let started = Instant::now();
    let span = span(&ir);
    let result = finalizer::finalizer(&api, OPERATOR_FINALIZER, ir, |event| async {
        match event {
            Finalize::Apply(ir) => apply(&ir, &ctx).await,
            Finalize::Cleanup(ir) => teardown(&ir, &ctx).await,
        }
    })
    .instrument(span)
    .await
    .map_err(|e| Error::Finalizer(Box::new(e)));
    if result.is_ok() {
        ctx.succeeded(&key);
    }
    let failed = result.as_ref().is_err_and(|e| !teardown_pending(e));
    ctx.metrics
        .reconciled("InstantRecovery", Some(phase), started.elapsed(), failed);
    result
}

pub fn error_policy(ir: Arc<InstantRecovery>, error: &Error, ctx: Arc<Context>) -> Requeue {
    let _span = span(&ir).entered();
    let wait = ctx.backoff(&key(&ir));
    match error {
        error if teardown_pending(error) => {
            tracing::info!(recovery = %key(&ir), %error, "teardown in progress");
            Requeue::requeue(Duration::from_secs(1))
        }
        _ => {
            tracing::warn!(recovery = %key(&ir), %error, retry_in = ?wait, "reconcile failed");
            Requeue::requeue(wait)
        }
    }
}

async fn apply(ir: &InstantRecovery, ctx: &Context) -> Result<Requeue, Error> {
    let before = ir.status.clone().unwrap_or_default();
    let policy = Policy {
        switchover: ir.spec.switchover.clone(),
        retry: ir.spec.retry.clone(),
        mode: ir.spec.mode,
        publish_ttl: ir.spec.publish.ttl.map(|ttl| ttl.0),
    };
    let mut driver = Driver::new(ctx, ir, before.clone());
    let round = round::round(&mut driver, &policy, &before, Timestamp::now).await?;
    Ok(requeue(
        &round.decision,
        driver.requeue_soon || round.moved_on,
    ))
}

fn requeue(decision: &Decision, soon: bool) -> Requeue {
    let poll = Duration::from_secs(1);
    match decision.requeue_after {
        Some(after) if soon => Requeue::requeue(after.min(poll)),
        Some(after) => Requeue::requeue(after),
        None if soon => Requeue::requeue(poll),
        None => Requeue::await_change(),
    }
}

// ---- teardown ----

/// Deletion: Pods first (PostgreSQL stops writing), then the mount (the agent unmounts and
/// wipes the IRCache), then the rest. The target PVC stays once the recovery completed.
async fn teardown(ir: &InstantRecovery, ctx: &Context) -> Result<Requeue, Error> {
    let namespace = ir.namespace().unwrap_or_default();
    let name = ir.name_any();
    let client = &ctx.client;
    let pods: Api<Pod> = Api::namespaced(client.clone(), &namespace);
    let mut pending = Vec::new();
    for pod in [
        resources::published_pod_name(&name),
        resources::target_name(&name),
    ] {
        if pods.get_opt(&pod).await?.is_some() {
            delete(&pods, &pod).await?;
            pending.push(format!("Pod {pod}"));
        }
    }
    if !pending.is_empty() {
        return Err(Error::TeardownPending(pending.join(", ")));
    }
    let mounts: Api<RecoveryMount> = Api::namespaced(client.clone(), &namespace);
    if mounts.get_opt(&name).await?.is_some() {
        delete(&mounts, &name).await?;
        return Err(Error::TeardownPending(format!(
            "RecoveryMount {name} (its agent unmounts and wipes the IRCache)"
        )));
    }
    delete(
        &Api::<Service>::namespaced(client.clone(), &namespace),
        &name,
    )
    .await?;
    delete(
        &Api::<ConfigMap>::namespaced(client.clone(), &namespace),
        &resources::config_map_name(&name),
    )
    .await?;
    if ctx.settings.network_policy.is_some() {
        delete(
            &Api::<NetworkPolicy>::namespaced(client.clone(), &namespace),
            &resources::network_policy_name(&name),
        )
        .await?;
    }
    if ir.spec.postgres.replication_secret.is_none() {
        delete(
            &Api::<Secret>::namespaced(client.clone(), &namespace),
            &resources::replication_secret_name(&name),
        )
        .await?;
    }
    let completed = ir
        .status
        .as_ref()
        .is_some_and(|s| s.phase == Phase::Completed);
    if !completed {
        delete(
            &Api::<PersistentVolumeClaim>::namespaced(client.clone(), &namespace),
            &resources::target_name(&name),
        )
        .await?;
    }
    tracing::info!(recovery = %key(ir), "torn down");
    Ok(Requeue::await_change())
}

#[cfg(test)]
mod tests {
    use std::io::Write;
    use std::sync::{Arc, Mutex};

    use super::*;

    #[derive(Clone, Default)]
    struct Buffer(Arc<Mutex<Vec<u8>>>);

    impl Write for Buffer {
        fn write(&mut self, data: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(data);
            Ok(data.len())
        }

        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn json_log_lines_of_a_reconcile_name_the_recovery() {
        let ir = crate::k8s::resources::tests::recovery();
        let buffer = Buffer::default();
        let writer = buffer.clone();
        let subscriber = tracing_subscriber::fmt()
            .json()
            .with_writer(move || writer.clone())
            .finish();
        tracing::subscriber::with_default(subscriber, || {
            span(&ir).in_scope(|| tracing::info!("something happened"));
        });
        let text = String::from_utf8(buffer.0.lock().unwrap().clone()).unwrap();
        let line: serde_json::Value = serde_json::from_str(text.trim()).unwrap();
        assert_eq!(line["span"]["name"], "reconcile", "{line}");
        assert_eq!(line["span"]["kind"], "InstantRecovery", "{line}");
        assert_eq!(line["span"]["namespace"], "shop", "{line}");
        assert_eq!(line["span"]["object"], "orders", "{line}");
        assert_eq!(line["fields"]["message"], "something happened", "{line}");
    }
}

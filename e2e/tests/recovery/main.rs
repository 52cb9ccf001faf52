//! `InstantRecovery` end to end on the real node: the operator and the agent as processes with
//! the chart's RBAC, real FUSE mounts, real PostgreSQL in Pods run by the kubelet and containerd.

use std::collections::BTreeSet;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use ir_api::crd::{BackupRepository, RecoveryMount};
use ir_api::recovery::{ConditionType, Phase};
use ir_e2e::installation::{
    Installation, NAMESPACE, Options, SAMPLE_ROWS, SYSTEM_NAMESPACE, connect, query_one,
};
use k8s_openapi::api::authorization::v1::{
    ResourceAttributes, SubjectAccessReview, SubjectAccessReviewSpec,
};
use k8s_openapi::api::core::v1::{PersistentVolumeClaim, Pod, Secret, Service};
use k8s_openapi::api::events::v1::Event;
use k8s_openapi::api::networking::v1::NetworkPolicy;
use kube::Api;
use kube::api::{DeleteParams, ListParams, Patch, PatchParams, PostParams};

mod completion;
mod faults;
mod namespaced;
mod point_in_time;
mod publish;
mod refusals;

const FLOW: Duration = Duration::from_secs(240);

async fn recovery_pods(fx: &Installation, name: &str) -> Vec<String> {
    fx.pods()
        .list(&ListParams::default().labels(&format!("instantrecovery.dev/recovery={name}")))
        .await
        .expect("list pods")
        .items
        .into_iter()
        .filter_map(|p| p.metadata.name)
        .collect()
}

async fn wait_gone<F, Fut>(what: &str, timeout: Duration, mut gone: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = Instant::now() + timeout;
    while !gone().await {
        assert!(
            Instant::now() < deadline,
            "{what} still there after {timeout:?}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Deletes the InstantRecovery `name`, waits until it is gone, and checks that it left no Pod,
/// RecoveryMount, FUSE mount, target PVC or Service behind (a recovery that never completed).
async fn delete_leaves_nothing(fx: &Installation, name: &str) {
    fx.recoveries()
        .delete(name, &DeleteParams::default())
        .await
        .unwrap();
    wait_gone(&format!("InstantRecovery {name}"), FLOW, || async {
        fx.recoveries().get_opt(name).await.unwrap().is_none()
    })
    .await;
    assert!(recovery_pods(fx, name).await.is_empty());
    let mounts: Api<RecoveryMount> = Api::namespaced(fx.plane.admin(), NAMESPACE);
    assert!(mounts.get_opt(name).await.unwrap().is_none());
    assert!(fx.mounts_left().is_empty(), "{:?}", fx.mounts_left());
    let pvcs: Api<PersistentVolumeClaim> = Api::namespaced(fx.plane.admin(), NAMESPACE);
    assert!(
        pvcs.get_opt(&format!("{name}-target"))
            .await
            .unwrap()
            .is_none()
    );
    let services: Api<Service> = Api::namespaced(fx.plane.admin(), NAMESPACE);
    assert!(services.get_opt(name).await.unwrap().is_none());
    let policies: Api<NetworkPolicy> = Api::namespaced(fx.plane.admin(), NAMESPACE);
    assert!(
        policies
            .get_opt(&format!("{name}-postgres"))
            .await
            .unwrap()
            .is_none()
    );
}

/// The published Pod of `name` mounts the host path its RecoveryMount's status names, which is
/// named by the RecoveryMount's uid; the NetworkPolicy `<name>-postgres` admits the operator,
/// the recovery's own Pods and the Pods of its namespace to both of its Pods, on 5432 only.
async fn check_mount_path_and_network_policy(fx: &Installation, name: &str) {
    let mounts: Api<RecoveryMount> = Api::namespaced(fx.plane.admin(), NAMESPACE);
    let mount = mounts.get(name).await.expect("the RecoveryMount");
    let mount_path = mount.status.unwrap().mount_path.expect("status.mountPath");
    let uid = mount.metadata.uid.unwrap();
    assert!(mount_path.ends_with(&format!("/{uid}")), "{mount_path}");
    let published = fx.pods().get(&format!("{name}-published")).await.unwrap();
    let spec = published.spec.unwrap();
    let host_path = spec
        .volumes
        .unwrap()
        .into_iter()
        .find_map(|v| v.host_path)
        .expect("the published Pod's hostPath");
    assert_eq!(host_path.path, mount_path);

    let policy = Api::<NetworkPolicy>::namespaced(fx.plane.admin(), NAMESPACE)
        .get(&format!("{name}-postgres"))
        .await
        .expect("the recovery's NetworkPolicy");
    let owner = &policy.metadata.owner_references.unwrap()[0];
    assert_eq!(
        (owner.kind.as_str(), owner.name.as_str()),
        ("InstantRecovery", name)
    );
    let spec = serde_json::to_value(policy.spec.unwrap()).unwrap();
    assert_eq!(
        spec,
        serde_json::json!({
            "podSelector": {"matchLabels": {"instantrecovery.dev/recovery": name}},
            "policyTypes": ["Ingress"],
            "ingress": [{
                "ports": [{"port": 5432, "protocol": "TCP"}],
                "from": [
                    {"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": SYSTEM_NAMESPACE}},
                     "podSelector": {"matchLabels": {
                        "app.kubernetes.io/name": "instant-recovery",
                        "app.kubernetes.io/instance": "instant-recovery",
                        "app.kubernetes.io/component": "operator"}}},
                    {"podSelector": {"matchLabels": {"instantrecovery.dev/recovery": name}}},
                    {"podSelector": {}},
                ],
            }],
        })
    );
    for pod in recovery_pods(fx, name).await {
        let labels = fx.pods().get(&pod).await.unwrap().metadata.labels.unwrap();
        assert_eq!(
            labels
                .get("instantrecovery.dev/recovery")
                .map(String::as_str),
            Some(name),
            "{pod} is selected"
        );
    }
}

/// An InstantRecovery of backup `backup` of the installation's repository; `extra` is YAML of
/// further `spec` fields, two spaces deep.
fn recovery_yaml(name: &str, backup: &str, extra: &str) -> String {
    format!(
        "apiVersion: instantrecovery.dev/v1alpha1\nkind: InstantRecovery\nmetadata:\n  \
         name: {name}\n  namespace: {NAMESPACE}\nspec:\n  backup:\n    repositoryRef:\n      \
         name: backups\n    id: {backup}\n{extra}"
    )
}

//! `InstantRecovery` end to end on a real control plane: the operator and the agent as
//! processes with the chart's RBAC, real FUSE mounts, real PostgreSQL run by the kubelet
//! stand-in.

use std::collections::BTreeSet;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use ir_api::crd::RecoveryMount;
use ir_api::recovery::{ConditionType, Phase};
use ir_e2e::installation::{Installation, NAMESPACE, SAMPLE_ROWS, connect, query_one};
use k8s_openapi::api::core::v1::{PersistentVolumeClaim, Pod, Service};
use kube::Api;
use kube::api::{DeleteParams, ListParams, Patch, PatchParams};

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

#[tokio::test(flavor = "multi_thread")]
async fn automatic_recovery_completes_and_deletion_leaves_the_target() {
    let fx = Installation::start().await;
    fx.apply_recovery("orders", "    mode: Automatic").await;
    let published = fx.wait_phase("orders", Phase::Syncing, FLOW).await;
    let status = published.status.unwrap();
    assert!(status.is_true(ConditionType::Published));
    assert_eq!(status.backup.as_ref().unwrap().id, fx.backup_id);
    let ttfq = status
        .timings
        .time_to_first_query_ms
        .expect("time to first query");
    println!("apply to first query on the published instance: {ttfq} ms");

    let done = fx.wait_phase("orders", Phase::Completed, FLOW).await;
    let status = done.status.unwrap();
    assert!(status.timings.switchover_downtime_ms.is_some());
    // Completed with its cleanup done: Ready.
    let deadline = Instant::now() + FLOW;
    while !fx
        .recoveries()
        .get("orders")
        .await
        .unwrap()
        .status
        .unwrap()
        .is_true(ConditionType::Ready)
    {
        assert!(
            Instant::now() < deadline,
            "{}",
            fx.diagnostics("orders").await
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }

    // The target is a read-write primary with the backup's data, behind the Service.
    let target_ip = fx.pod_ip("orders-target", FLOW).await;
    assert_eq!(
        query_one(&target_ip, "SELECT pg_is_in_recovery()").await,
        "f"
    );
    assert_eq!(
        query_one(&target_ip, "SELECT count(*) FROM accounts").await,
        SAMPLE_ROWS.to_string()
    );
    query_one(
        &target_ip,
        "INSERT INTO accounts VALUES (-1, 'after the switchover')",
    )
    .await;
    let target = fx.pods().get("orders-target").await.unwrap();
    let selector = Api::<Service>::namespaced(fx.plane.admin(), NAMESPACE)
        .get("orders")
        .await
        .unwrap()
        .spec
        .unwrap()
        .selector
        .unwrap();
    let labels = target.metadata.labels.unwrap();
    assert!(
        selector.iter().all(|(k, v)| labels.get(k) == Some(v)),
        "the Service selects the target: {selector:?} vs {labels:?}"
    );
    assert!(
        fx.pods()
            .get_opt("orders-published")
            .await
            .unwrap()
            .is_none()
    );
    let mounts: Api<RecoveryMount> = Api::namespaced(fx.plane.admin(), NAMESPACE);
    assert!(mounts.get_opt("orders").await.unwrap().is_none());
    assert!(fx.mounts_left().is_empty(), "{:?}", fx.mounts_left());

    // Deleting the finished recovery stops its Pods and keeps the database's volume.
    fx.recoveries()
        .delete("orders", &DeleteParams::default())
        .await
        .unwrap();
    wait_gone("InstantRecovery orders", FLOW, || async {
        fx.recoveries().get_opt("orders").await.unwrap().is_none()
    })
    .await;
    assert!(recovery_pods(&fx, "orders").await.is_empty());
    let pvcs: Api<PersistentVolumeClaim> = Api::namespaced(fx.plane.admin(), NAMESPACE);
    let pvc = pvcs
        .get("orders-target")
        .await
        .expect("the target PVC stays");
    assert!(pvc.metadata.owner_references.unwrap_or_default().is_empty());
}

#[tokio::test(flavor = "multi_thread")]
async fn the_operator_killed_mid_sync_resumes() {
    let mut fx = Installation::start().await;
    fx.apply_recovery("resume", "    mode: Automatic").await;
    fx.wait_phase("resume", Phase::Syncing, FLOW).await;
    fx.operator.take().unwrap().kill();
    tokio::time::sleep(Duration::from_secs(1)).await;
    fx.start_operator();
    fx.wait_phase("resume", Phase::Completed, FLOW).await;
    let ip = fx.pod_ip("resume-target", FLOW).await;
    assert_eq!(
        query_one(&ip, "SELECT count(*) FROM accounts").await,
        SAMPLE_ROWS.to_string()
    );
}

/// Inserts rows one by one into the published instance (reconnecting to wherever its Pod is)
/// and records the ids whose commit was acknowledged.
async fn write_load(pods: Api<Pod>, stop: Arc<AtomicBool>) -> BTreeSet<i64> {
    let mut acked = BTreeSet::new();
    let mut next = 1_000_000i32;
    while !stop.load(Ordering::Relaxed) {
        let ip = match pods.get_opt("agentkill-published").await {
            Ok(Some(pod)) => pod.status.and_then(|s| s.pod_ip).unwrap_or_default(),
            _ => String::new(),
        };
        let Ok(client) = connect(&ip).await else {
            tokio::time::sleep(Duration::from_millis(100)).await;
            continue;
        };
        while !stop.load(Ordering::Relaxed) {
            next += 1;
            match client
                .execute("INSERT INTO accounts VALUES ($1, 'load')", &[&next])
                .await
            {
                Ok(_) => {
                    acked.insert(i64::from(next));
                }
                Err(_) => break,
            }
        }
    }
    acked
}

#[tokio::test(flavor = "multi_thread")]
async fn the_agent_killed_under_write_load_loses_no_commit() {
    let mut fx = Installation::start().await;
    fx.apply_recovery("agentkill", "    mode: Manual").await;
    fx.wait_phase("agentkill", Phase::ReadyForSwitchover, FLOW)
        .await;
    let first_pod = fx.pods().get("agentkill-published").await.unwrap();

    // Kill the agent while writes flow (the mount dies with it), then start it again as the
    // DaemonSet would.
    let stop = Arc::new(AtomicBool::new(false));
    let load = tokio::spawn(write_load(fx.pods(), stop.clone()));
    tokio::time::sleep(Duration::from_secs(2)).await;
    fx.agent.take().expect("agent running").kill();
    tokio::time::sleep(Duration::from_secs(1)).await;
    fx.start_agent();

    // The operator replaces the published Pod on the new mount session.
    let deadline = Instant::now() + FLOW;
    loop {
        let pod = fx.pods().get_opt("agentkill-published").await.unwrap();
        let renewed = pod.as_ref().is_some_and(|p| {
            p.metadata.uid != first_pod.metadata.uid
                && p.status.as_ref().and_then(|s| s.phase.as_deref()) == Some("Running")
        });
        if renewed {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "{}",
            fx.diagnostics("agentkill").await
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    fx.wait_phase("agentkill", Phase::ReadyForSwitchover, FLOW)
        .await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    stop.store(true, Ordering::Relaxed);
    let acked = load.await.unwrap();
    assert!(
        acked.len() > 10,
        "the load committed only {} rows",
        acked.len()
    );

    // Every acknowledged commit is on the restarted published instance ...
    let ip = fx.pod_ip("agentkill-published", FLOW).await;
    let present = ids(&ip).await;
    let lost: Vec<_> = acked.difference(&present).collect();
    assert!(
        lost.is_empty(),
        "{} acknowledged commits lost: {lost:?}",
        lost.len()
    );

    // ... and on the target after the approved switchover.
    let patch = serde_json::json!({"spec": {"switchover": {"approved": true}}});
    fx.recoveries()
        .patch("agentkill", &PatchParams::default(), &Patch::Merge(&patch))
        .await
        .unwrap();
    fx.wait_phase("agentkill", Phase::Completed, FLOW).await;
    let target = fx.pod_ip("agentkill-target", FLOW).await;
    let present = ids(&target).await;
    let lost: Vec<_> = acked.difference(&present).collect();
    assert!(
        lost.is_empty(),
        "{} acknowledged commits lost on the target",
        lost.len()
    );
}

async fn ids(ip: &str) -> BTreeSet<i64> {
    let client = connect(ip).await.expect("connect");
    client
        .query("SELECT id FROM accounts WHERE id > 1000000", &[])
        .await
        .expect("read ids")
        .iter()
        .map(|r| i64::from(r.get::<_, i32>(0)))
        .collect()
}

#[tokio::test(flavor = "multi_thread")]
async fn deleting_a_recovery_mid_sync_leaves_nothing_behind() {
    let fx = Installation::start().await;
    fx.apply_recovery("abort", "    mode: Manual").await;
    fx.wait_phase("abort", Phase::ReadyForSwitchover, FLOW)
        .await;
    let cache_dirs = |fx: &Installation| {
        std::fs::read_dir(fx.cache_root.join("ircache"))
            .map(|d| d.count())
            .unwrap_or(0)
    };
    assert_eq!(cache_dirs(&fx), 1, "one IRCache while it runs");
    fx.recoveries()
        .delete("abort", &DeleteParams::default())
        .await
        .unwrap();
    wait_gone("InstantRecovery abort", FLOW, || async {
        fx.recoveries().get_opt("abort").await.unwrap().is_none()
    })
    .await;
    assert!(recovery_pods(&fx, "abort").await.is_empty());
    let mounts: Api<RecoveryMount> = Api::namespaced(fx.plane.admin(), NAMESPACE);
    assert!(mounts.get_opt("abort").await.unwrap().is_none());
    assert!(fx.mounts_left().is_empty(), "{:?}", fx.mounts_left());
    assert_eq!(cache_dirs(&fx), 0, "the IRCache is wiped");
    let pvcs: Api<PersistentVolumeClaim> = Api::namespaced(fx.plane.admin(), NAMESPACE);
    assert!(pvcs.get_opt("abort-target").await.unwrap().is_none());
    let pods: Api<Pod> = Api::namespaced(fx.plane.admin(), NAMESPACE);
    assert!(
        pods.list(&ListParams::default())
            .await
            .unwrap()
            .items
            .is_empty()
    );
}

//! `InstantRecovery` end to end on a real control plane: the operator and the agent as
//! processes with the chart's RBAC, real FUSE mounts, real PostgreSQL run by the kubelet
//! stand-in.

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

#[tokio::test(flavor = "multi_thread")]
async fn automatic_recovery_completes_and_deletion_leaves_the_target() {
    let fx = Installation::start().await;
    fx.apply_recovery("orders", "    mode: Automatic").await;
    let published = fx.wait_phase("orders", Phase::Syncing, FLOW).await;
    let status = published.status.unwrap();
    assert!(status.is_true(ConditionType::Published));
    assert!(status.is_true(ConditionType::Reconciling), "{status:?}");
    assert_eq!(status.condition(ConditionType::Stalled), None);
    assert_eq!(status.backup.as_ref().unwrap().id, fx.backup_id);
    let ttfq = status
        .timings
        .time_to_first_query_ms
        .expect("time to first query");
    println!("apply to first query on the published instance: {ttfq} ms");
    check_mount_path_and_network_policy(&fx, "orders").await;

    // The repository's own status lists the backup.
    let repos: Api<BackupRepository> = Api::namespaced(fx.plane.admin(), NAMESPACE);
    let repo = repos
        .get("backups")
        .await
        .unwrap()
        .status
        .unwrap_or_default();
    assert_eq!(repo.backup_count, 1, "{repo:?}");
    assert_eq!(repo.backups[0].info.id, fx.backup_id);
    // The id starts with the creation time, to the second.
    let created = repo.backups[0].created_at.expect("createdAt");
    let stamp = created.strftime("%Y%m%dT%H%M%SZ").to_string();
    assert!(fx.backup_id.starts_with(&stamp), "{stamp} {repo:?}");
    let summary: Vec<_> = repo
        .conditions
        .iter()
        .map(|c| (c.type_.as_str(), c.status.as_str(), c.reason.as_str()))
        .collect();
    assert_eq!(
        summary,
        [("Reachable", "True", "Listed"), ("Ready", "True", "Listed")]
    );

    let done = fx.wait_phase("orders", Phase::Completed, FLOW).await;
    let status = done.status.unwrap();
    assert!(status.timings.switchover_downtime_ms.is_some());
    // Completed with its cleanup done: Ready, and neither Reconciling nor Stalled for kstatus.
    let ready = fx
        .wait_status("orders", FLOW, |s| s.is_true(ConditionType::Ready))
        .await;
    for gone in [ConditionType::Reconciling, ConditionType::Stalled] {
        assert_eq!(ready.condition(gone), None, "{ready:?}");
    }

    // The target is a read-write primary with the backup's data, behind the Service.
    let target_ip = fx.pod_ip("orders-target", FLOW).await;
    assert_eq!(
        query_one(&target_ip, "SELECT pg_is_in_recovery()").await,
        "f"
    );
    // The copy carried the generated replication role over; its password went with its Secret.
    assert_eq!(
        query_one(
            &target_ip,
            "SELECT count(*) FROM pg_roles WHERE rolname = 'instant_recovery_replication'"
        )
        .await,
        "0"
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

    // Every transition is an Event on the recovery.
    let events: Api<Event> = Api::namespaced(fx.plane.admin(), NAMESPACE);
    let reasons: BTreeSet<String> = events
        .list(&ListParams::default())
        .await
        .unwrap()
        .items
        .into_iter()
        .filter(|e| e.regarding.as_ref().and_then(|r| r.name.as_deref()) == Some("orders"))
        .filter_map(|e| e.reason)
        .collect();
    for reason in [
        "Started",
        "BackupValid",
        "Mounted",
        "Published",
        "StandbyStreaming",
        "Promoted",
    ] {
        assert!(reasons.contains(reason), "no {reason} event: {reasons:?}");
    }

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
async fn write_load(pods: Api<Pod>, pod: &'static str, stop: Arc<AtomicBool>) -> BTreeSet<i64> {
    let mut acked = BTreeSet::new();
    let mut next = 1_000_000i32;
    while !stop.load(Ordering::Relaxed) {
        let ip = match pods.get_opt(pod).await {
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
    let load = tokio::spawn(write_load(fx.pods(), "agentkill-published", stop.clone()));
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
    fx.approve_switchover("agentkill").await;
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
    delete_leaves_nothing(&fx, "abort").await;
    assert_eq!(cache_dirs(&fx), 0, "the IRCache is wiped");
    let pods: Api<Pod> = Api::namespaced(fx.plane.admin(), NAMESPACE);
    assert!(
        pods.list(&ListParams::default())
            .await
            .unwrap()
            .items
            .is_empty()
    );
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

#[tokio::test(flavor = "multi_thread")]
async fn bad_recoveries_fail_naming_the_field_and_create_nothing() {
    let fx = Installation::start().await;
    let credentials = "  postgres:\n    credentialsSecret:\n      name: db-superuser\n";
    fx.plane
        .apply_yaml(&format!(
            "apiVersion: v1\nkind: Secret\nmetadata:\n  name: no-password\n  \
             namespace: {NAMESPACE}\nstringData:\n  username: postgres\n"
        ))
        .await
        .unwrap();
    let cases = [
        (
            "wrong-image",
            recovery_yaml(
                "wrong-image",
                &fx.backup_id,
                &format!("{credentials}    image: postgres:16\n"),
            ),
            "ImageMismatch",
            "spec.postgres.image",
        ),
        (
            "no-such-backup",
            recovery_yaml("no-such-backup", "no-such-backup", credentials),
            "BackupNotFound",
            "spec.backup",
        ),
        (
            "no-password",
            recovery_yaml(
                "no-password",
                &fx.backup_id,
                "  postgres:\n    credentialsSecret:\n      name: no-password\n",
            ),
            "SecretKeyMissing",
            "spec.postgres.credentialsSecret",
        ),
        (
            "too-small",
            recovery_yaml(
                "too-small",
                &fx.backup_id,
                &format!("{credentials}  target:\n    size: 1Ki\n"),
            ),
            "TargetTooSmall",
            "spec.target.size",
        ),
    ];
    // Repositories the operator must not read: outside the installation's file root by path,
    // by `..`, by a symlink inside the root (each a good repository, but out of bounds), and
    // S3 with the operator's own credentials, which this installation does not lend.
    let root = fx.file_roots[0].clone();
    let outside = fx.root.path().join("outside");
    let copied = std::process::Command::new("cp")
        .arg("-a")
        .arg(fx.repo_url.strip_prefix("file://").unwrap())
        .arg(&outside)
        .status()
        .unwrap();
    assert!(copied.success());
    std::os::unix::fs::symlink(&outside, root.join("escape")).unwrap();
    let hostile = [
        (
            "etc",
            "url: file:///etc".to_owned(),
            "RepositoryPathNotAllowed",
            "spec.url",
        ),
        (
            "outside",
            format!("url: file://{}", outside.display()),
            "RepositoryPathNotAllowed",
            "spec.url",
        ),
        (
            "dotdot",
            format!("url: file://{}/../outside", root.display()),
            "RepositoryPathNotAllowed",
            "spec.url",
        ),
        (
            "symlink",
            format!("url: file://{}", root.join("escape").display()),
            "RepositoryPathNotAllowed",
            "spec.url",
        ),
        (
            "ambient",
            "url: s3://backups/prod\n  s3:\n    endpoint: http://127.0.0.1:9\n    \
             useAmbientCredentials: true"
                .to_owned(),
            "AmbientCredentialsNotAllowed",
            "spec.s3.useAmbientCredentials",
        ),
    ];
    let mut cases: Vec<(String, String, &str, String)> = cases
        .into_iter()
        .map(|(name, yaml, reason, field)| (name.to_owned(), yaml, reason, field.to_owned()))
        .collect();
    for (name, spec, reason, field) in &hostile {
        fx.plane
            .apply_yaml(&format!(
                "apiVersion: instantrecovery.dev/v1alpha1\nkind: BackupRepository\nmetadata:\n  \
                 name: {name}\n  namespace: {NAMESPACE}\nspec:\n  {spec}\n"
            ))
            .await
            .unwrap_or_else(|e| panic!("BackupRepository {name}: {e}"));
        let recovery = format!("from-{name}");
        let yaml = recovery_yaml(&recovery, "latest", credentials)
            .replace("name: backups", &format!("name: {name}"));
        // The recovery fails at once, naming the repository and its field.
        let named =
            format!("spec.backup.repositoryRef: BackupRepository {NAMESPACE}/{name}: {field}: ");
        cases.push((recovery, yaml, reason, named));
    }
    for (_, yaml, _, _) in &cases {
        fx.plane.apply_yaml(yaml).await.unwrap();
    }
    // Each repository says what is wrong, naming its field.
    let repos: Api<BackupRepository> = Api::namespaced(fx.plane.admin(), NAMESPACE);
    for (name, _, reason, field) in &hostile {
        let deadline = Instant::now() + FLOW;
        let reachable = loop {
            let status = repos.get(name).await.unwrap().status.unwrap_or_default();
            if let Some(c) = status.conditions.iter().find(|c| c.type_ == "Reachable") {
                break c.clone();
            }
            assert!(
                Instant::now() < deadline,
                "BackupRepository {name}: no status"
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
        };
        assert_eq!(
            (reachable.status.as_str(), reachable.reason.as_str()),
            ("False", *reason),
            "{name}: {reachable:?}"
        );
        assert!(
            reachable.message.starts_with(&format!("{field}: ")),
            "{name}: {}",
            reachable.message
        );
    }
    for (name, _, reason, field) in &cases {
        let name = name.as_str();
        let reason = *reason;
        let status = fx
            .wait_status(name, FLOW, |s| s.phase == Phase::Failed)
            .await;
        assert_eq!(status.reason.as_deref(), Some(reason), "{name}: {status:?}");
        let message = status.message.clone().unwrap_or_default();
        assert!(message.contains(field.as_str()), "{name}: {message}");
        // Permanent: failed at once, with no retry.
        assert_eq!(status.retry.attempt, 0, "{name}: {status:?}");
        assert!(!status.is_true(ConditionType::Validated));
        let stalled = status.condition(ConditionType::Stalled);
        assert_eq!(stalled.map(|c| c.reason.as_str()), Some(reason), "{name}");
        assert!(status.is_true(ConditionType::Stalled), "{name}: {status:?}");
        assert_eq!(status.condition(ConditionType::Reconciling), None, "{name}");
    }
    // Nothing was created for them.
    let mounts: Api<RecoveryMount> = Api::namespaced(fx.plane.admin(), NAMESPACE);
    assert!(
        mounts
            .list(&ListParams::default())
            .await
            .unwrap()
            .items
            .is_empty()
    );
    assert!(
        fx.pods()
            .list(&ListParams::default())
            .await
            .unwrap()
            .items
            .is_empty()
    );

    // A repository that does not exist yet: Waiting with retries, then Failed once they are
    // spent; created afterwards, a manual retry goes on from there.
    fx.plane
        .apply_yaml(&format!(
            "{}  retry:\n    limit: 2\n    interval: 1s\n",
            recovery_yaml("later", &fx.backup_id, credentials)
                .replace("name: backups", "name: arrives-later")
        ))
        .await
        .unwrap();
    fx.wait_phase_any("later", &[Phase::Waiting, Phase::Failed], FLOW)
        .await;
    let failed = fx
        .wait_status("later", FLOW, |s| s.phase == Phase::Failed)
        .await;
    assert_eq!(failed.retry.attempt, 2, "{failed:?}");
    assert!(
        failed
            .retry
            .last_error
            .as_deref()
            .is_some_and(|e| e.starts_with("RepositoryNotFound")),
        "{failed:?}"
    );
    assert_eq!(failed.reason.as_deref(), Some("RetriesExhausted"));
    fx.plane
        .apply_yaml(&format!(
            "apiVersion: instantrecovery.dev/v1alpha1\nkind: BackupRepository\nmetadata:\n  \
             name: arrives-later\n  namespace: {NAMESPACE}\nspec:\n  url: {}\n",
            fx.repo_url
        ))
        .await
        .unwrap();
    let retry =
        serde_json::json!({"metadata": {"annotations": {"instantrecovery.dev/retry": "1"}}});
    fx.recoveries()
        .patch("later", &PatchParams::default(), &Patch::Merge(&retry))
        .await
        .unwrap();
    // Failed until the operator takes the request.
    fx.wait_status("later", FLOW, |s| {
        s.retry.last_manual_request.as_deref() == Some("1")
    })
    .await;
    let resumed = fx
        .wait_phase("later", Phase::Syncing, FLOW)
        .await
        .status
        .unwrap();
    assert!(resumed.is_true(ConditionType::Reconciling), "{resumed:?}");
    assert_eq!(resumed.condition(ConditionType::Stalled), None);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_wrong_superuser_password_fails_naming_the_secret_and_leaves_nothing() {
    let fx = Installation::start().await;
    fx.plane
        .apply_yaml(&format!(
            "apiVersion: v1\nkind: Secret\nmetadata:\n  name: wrong-password\n  \
             namespace: {NAMESPACE}\nstringData:\n  username: postgres\n  \
             password: not-the-password\n"
        ))
        .await
        .unwrap();
    fx.plane
        .apply_yaml(&recovery_yaml(
            "badpass",
            &fx.backup_id,
            "  postgres:\n    credentialsSecret:\n      name: wrong-password\n",
        ))
        .await
        .unwrap();
    let status = fx
        .wait_status("badpass", FLOW, |s| s.phase == Phase::Failed)
        .await;
    assert_eq!(
        status.reason.as_deref(),
        Some("AuthenticationFailed"),
        "{status:?}"
    );
    let message = status.message.clone().unwrap_or_default();
    for part in [
        "spec.postgres.credentialsSecret",
        "wrong-password",
        "password authentication failed for user \"postgres\"",
    ] {
        assert!(message.contains(part), "{part:?} not in {message}");
    }
    // Not transient: failed at once, with no retry.
    assert_eq!(status.retry.attempt, 0, "{status:?}");
    assert!(status.is_true(ConditionType::Validated), "{status:?}");
    assert!(
        recovery_pods(&fx, "badpass")
            .await
            .contains(&"badpass-published".to_owned()),
        "the published instance ran and turned the password down"
    );

    delete_leaves_nothing(&fx, "badpass").await;
}

/// The pids of the process `root` and of all its descendants, with their command lines.
fn process_tree(root: u32) -> Vec<(u32, String)> {
    let mut all = Vec::new();
    for entry in std::fs::read_dir("/proc").expect("read /proc").flatten() {
        let Some(pid) = entry
            .file_name()
            .to_str()
            .and_then(|n| n.parse::<u32>().ok())
        else {
            continue;
        };
        // The parent pid follows the command name in parentheses, which may hold spaces.
        let stat = std::fs::read_to_string(entry.path().join("stat")).unwrap_or_default();
        let ppid = stat
            .rsplit_once(')')
            .and_then(|(_, rest)| rest.split_whitespace().nth(1))
            .and_then(|p| p.parse::<u32>().ok());
        let cmdline = std::fs::read(entry.path().join("cmdline")).unwrap_or_default();
        let cmdline = String::from_utf8_lossy(&cmdline).replace('\0', " ");
        all.push((pid, ppid, cmdline));
    }
    let mut tree = vec![root];
    let mut next = 0;
    while let Some(&parent) = tree.get(next) {
        tree.extend(
            all.iter()
                .filter(|(_, ppid, _)| *ppid == Some(parent))
                .map(|(pid, _, _)| *pid),
        );
        next += 1;
    }
    all.into_iter()
        .filter(|(pid, _, _)| tree.contains(pid))
        .map(|(pid, _, cmdline)| (pid, cmdline))
        .collect()
}

/// The startup process (WAL replay) of the standby in Pod `pod`.
async fn standby_replay_pid(fx: &Installation, pod: &str) -> u32 {
    let pod = fx.pods().get(pod).await.expect("get the target Pod");
    let main = pod
        .status
        .and_then(|s| s.container_statuses)
        .and_then(|c| c.into_iter().find(|c| c.name == "postgres"))
        .and_then(|c| c.container_id)
        .and_then(|id| id.strip_prefix("kubelet-stand-in://")?.parse::<u32>().ok())
        .expect("the target's postgres container runs");
    let tree = process_tree(main);
    tree.iter()
        .find(|(_, cmdline)| cmdline.contains(": startup recovering"))
        .map(|(pid, _)| *pid)
        .unwrap_or_else(|| panic!("no startup process among the target's processes: {tree:?}"))
}

fn signal(pid: u32, signal: i32) {
    // SAFETY: kill(2) on a pid we looked up; no memory is involved.
    let rc = unsafe { libc::kill(pid as i32, signal) };
    assert_eq!(
        rc,
        0,
        "kill({pid}, {signal}): {}",
        std::io::Error::last_os_error()
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_switchover_failing_after_the_stop_brings_the_published_instance_back_at_once() {
    let mut fx = Installation::start().await;
    fx.start_operator_with(&["--switchover-catch-up-timeout", "5s"]);
    fx.apply_recovery("stopfail", "    mode: Manual").await;
    fx.wait_phase("stopfail", Phase::ReadyForSwitchover, FLOW)
        .await;
    let first_pod = fx.pods().get("stopfail-published").await.unwrap();
    let stop = Arc::new(AtomicBool::new(false));
    let load = tokio::spawn(write_load(fx.pods(), "stopfail-published", stop.clone()));
    tokio::time::sleep(Duration::from_secs(2)).await;

    // Once the published Pod is being deleted, the standby stops replaying: the catch-up on
    // the shutdown checkpoint times out after the stop, before any promotion.
    fx.approve_switchover("stopfail").await;
    let deadline = Instant::now() + FLOW;
    loop {
        let pod = fx.pods().get_opt("stopfail-published").await.unwrap();
        if pod.is_none_or(|p| p.metadata.deletion_timestamp.is_some()) {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "{}",
            fx.diagnostics("stopfail").await
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let replay = standby_replay_pid(&fx, "stopfail-target").await;
    signal(replay, libc::SIGSTOP);
    let stopped_at = Instant::now();
    let status = fx
        .wait_status("stopfail", FLOW, |s| s.phase == Phase::Waiting)
        .await;
    signal(replay, libc::SIGCONT);
    assert_eq!(
        status.reason.as_deref(),
        Some("SwitchoverFailed"),
        "{status:?}"
    );
    let last_error = status.retry.last_error.clone().unwrap_or_default();
    assert!(last_error.contains("replay"), "{status:?}");

    // A new published Pod serves, long before the automatic retry.
    let restarted = loop {
        let pod = fx.pods().get_opt("stopfail-published").await.unwrap();
        let ip = pod
            .filter(|p| p.metadata.uid != first_pod.metadata.uid)
            .and_then(|p| p.status)
            .and_then(|s| s.pod_ip)
            .filter(|ip| !ip.is_empty());
        if let Some(ip) = ip
            && let Ok(client) = connect(&ip).await
            && client
                .execute("INSERT INTO accounts VALUES (999999999, 'after')", &[])
                .await
                .is_ok()
        {
            break ip;
        }
        assert!(
            stopped_at.elapsed() < Duration::from_secs(60),
            "no writable published Pod within 60 s:\n{}",
            fx.diagnostics("stopfail").await
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    let waiting = fx
        .recoveries()
        .get("stopfail")
        .await
        .unwrap()
        .status
        .unwrap();
    assert_eq!(waiting.phase, Phase::Waiting, "{waiting:?}");
    assert!(
        last_error.ends_with("the published instance serves again"),
        "{waiting:?}"
    );
    tokio::time::sleep(Duration::from_secs(2)).await;
    stop.store(true, Ordering::Relaxed);
    let mut acked = load.await.unwrap();
    acked.insert(999_999_999);
    assert!(
        acked.len() > 10,
        "the load committed only {} rows",
        acked.len()
    );
    let present = ids(&restarted).await;
    let lost: Vec<_> = acked.difference(&present).collect();
    assert!(
        lost.is_empty(),
        "{} acknowledged commits lost: {lost:?}",
        lost.len()
    );

    // No second primary: the target is still a standby.
    let target = fx.pod_ip("stopfail-target", FLOW).await;
    assert_eq!(query_one(&target, "SELECT pg_is_in_recovery()").await, "t");

    // A manual retry switches over, with every acknowledged commit.
    let retry =
        serde_json::json!({"metadata": {"annotations": {"instantrecovery.dev/retry": "1"}}});
    fx.recoveries()
        .patch("stopfail", &PatchParams::default(), &Patch::Merge(&retry))
        .await
        .expect("request a retry");
    fx.wait_phase("stopfail", Phase::Completed, FLOW).await;
    let target = fx.pod_ip("stopfail-target", FLOW).await;
    assert_eq!(query_one(&target, "SELECT pg_is_in_recovery()").await, "f");
    let present = ids(&target).await;
    let lost: Vec<_> = acked.difference(&present).collect();
    assert!(
        lost.is_empty(),
        "{} acknowledged commits lost on the target",
        lost.len()
    );
}

/// Whether ServiceAccount `account` of the installation may `verb` `group`/`resource` in
/// `namespace` (cluster-wide when `None`), as the API server's authorizer answers.
async fn may(
    fx: &Installation,
    account: &str,
    verb: &str,
    (group, resource): (&str, &str),
    namespace: Option<&str>,
) -> bool {
    let review = SubjectAccessReview {
        spec: SubjectAccessReviewSpec {
            user: Some(format!(
                "system:serviceaccount:{SYSTEM_NAMESPACE}:{account}"
            )),
            groups: Some(vec![
                "system:serviceaccounts".to_owned(),
                format!("system:serviceaccounts:{SYSTEM_NAMESPACE}"),
                "system:authenticated".to_owned(),
            ]),
            resource_attributes: Some(ResourceAttributes {
                verb: Some(verb.to_owned()),
                group: Some(group.to_owned()),
                resource: Some(resource.to_owned()),
                namespace: namespace.map(str::to_owned),
                ..Default::default()
            }),
            ..Default::default()
        },
        ..Default::default()
    };
    Api::<SubjectAccessReview>::all(fx.plane.admin())
        .create(&PostParams::default(), &review)
        .await
        .expect("a SubjectAccessReview")
        .status
        .expect("its answer")
        .allowed
}

#[tokio::test(flavor = "multi_thread")]
async fn an_operator_serving_one_namespace_recovers_there_with_its_roles_alone() {
    let fx = Installation::start_with(Options {
        watch_namespaces: vec![NAMESPACE.to_owned()],
    })
    .await;
    // A namespace the installation does not serve, with a recovery of its own.
    const ELSEWHERE: &str = "elsewhere";
    fx.plane.create_namespace(ELSEWHERE).await;
    fx.plane
        .apply_yaml(&format!(
            "apiVersion: instantrecovery.dev/v1alpha1\nkind: BackupRepository\nmetadata:\n  \
             name: backups\n  namespace: {ELSEWHERE}\nspec:\n  url: {}\n---\n{}",
            fx.repo_url,
            recovery_yaml(
                "ignored",
                &fx.backup_id,
                "  postgres:\n    credentialsSecret:\n      name: db-superuser\n"
            )
            .replace(
                &format!("namespace: {NAMESPACE}"),
                &format!("namespace: {ELSEWHERE}")
            )
        ))
        .await
        .unwrap();

    // With exactly the chart's Roles in its namespace, the operator and the agent recover.
    fx.apply_recovery("scoped", "    mode: Automatic").await;
    fx.wait_phase("scoped", Phase::Syncing, FLOW).await;
    check_mount_path_and_network_policy(&fx, "scoped").await;
    fx.wait_phase("scoped", Phase::Completed, FLOW).await;
    let ip = fx.pod_ip("scoped-target", FLOW).await;
    assert_eq!(
        query_one(&ip, "SELECT count(*) FROM accounts").await,
        SAMPLE_ROWS.to_string()
    );

    // The other namespace was left alone: no status, nothing created there.
    let ignored = Api::<ir_api::crd::InstantRecovery>::namespaced(fx.plane.admin(), ELSEWHERE)
        .get("ignored")
        .await
        .unwrap();
    assert_eq!(ignored.status, None, "{ignored:?}");
    assert_eq!(ignored.metadata.finalizers, None, "{ignored:?}");
    let repository = Api::<BackupRepository>::namespaced(fx.plane.admin(), ELSEWHERE)
        .get("backups")
        .await
        .unwrap();
    assert_eq!(repository.status, None);
    let mounts: Api<RecoveryMount> = Api::namespaced(fx.plane.admin(), ELSEWHERE);
    assert!(
        mounts
            .list(&ListParams::default())
            .await
            .unwrap()
            .items
            .is_empty()
    );

    // What the chart's namespaced RBAC allows, and what it does not.
    let operator = "instant-recovery-operator";
    let agent = "instant-recovery-agent";
    let core = |resource| ("", resource);
    let ir = |resource| ("instantrecovery.dev", resource);
    let leases = ("coordination.k8s.io", "leases");
    let allowed = [
        (operator, "get", core("secrets"), Some(NAMESPACE)),
        (operator, "create", core("pods"), Some(NAMESPACE)),
        (operator, "watch", ir("instantrecoveries"), Some(NAMESPACE)),
        (operator, "list", core("nodes"), None),
        (operator, "update", leases, Some(SYSTEM_NAMESPACE)),
        (agent, "get", core("secrets"), Some(NAMESPACE)),
        (agent, "watch", ir("recoverymounts"), Some(NAMESPACE)),
        (agent, "patch", core("nodes"), None),
    ];
    let denied = [
        // Never the cluster's Secrets, nor a watch of the Secrets of its own namespace.
        (operator, "list", core("secrets"), None),
        (operator, "get", core("secrets"), None),
        (operator, "list", core("secrets"), Some(NAMESPACE)),
        (operator, "watch", core("secrets"), Some(NAMESPACE)),
        (operator, "get", core("secrets"), Some(ELSEWHERE)),
        (operator, "list", core("pods"), None),
        (operator, "create", core("pods"), Some(ELSEWHERE)),
        (operator, "list", ir("instantrecoveries"), None),
        (operator, "update", leases, Some(NAMESPACE)),
        (agent, "get", core("secrets"), None),
        (agent, "get", core("secrets"), Some(ELSEWHERE)),
        (agent, "list", core("secrets"), Some(NAMESPACE)),
        (agent, "list", ir("recoverymounts"), None),
    ];
    let mut wrong = Vec::new();
    for (expected, cases) in [(true, &allowed[..]), (false, &denied[..])] {
        for (account, verb, resource, namespace) in cases {
            if may(&fx, account, verb, *resource, *namespace).await != expected {
                wrong.push(format!(
                    "{account} {verb} {resource:?} in {namespace:?}: expected allowed={expected}"
                ));
            }
        }
    }
    assert!(wrong.is_empty(), "{}", wrong.join("\n"));

    // And as the operator itself: listing the cluster's Secrets is forbidden.
    let listed = Api::<Secret>::all(fx.operator_client())
        .list(&ListParams::default())
        .await;
    assert!(
        matches!(&listed, Err(kube::Error::Api(e)) if e.code == 403),
        "{listed:?}"
    );
    let listed = Api::<Secret>::namespaced(fx.agent_client(), ELSEWHERE)
        .get_opt("db-superuser")
        .await;
    assert!(
        matches!(&listed, Err(kube::Error::Api(e)) if e.code == 403),
        "{listed:?}"
    );
}

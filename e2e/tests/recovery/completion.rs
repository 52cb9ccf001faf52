//! Recoveries that run to the end, or are deleted on the way: nothing is left behind.

use super::*;

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

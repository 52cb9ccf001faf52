//! `spec.mode: Publish`: the backup serves and nothing is copied; its TTL, or an abort, tears
//! down everything but the InstantRecovery and its record; a Publish changed to Recover goes on
//! to the switchover with what was written meanwhile.

use super::*;

/// Waits until nothing of `name` runs or is mounted and its IRCache is gone; the
/// InstantRecovery itself stays, ended in `phase`.
async fn torn_down(fx: &Installation, name: &str, phase: Phase) {
    let ended = fx.wait_phase(name, phase, FLOW).await;
    assert!(ended.status.unwrap().expires_at.is_none());
    wait_gone(&format!("the Pods of {name}"), FLOW, || async {
        recovery_pods(fx, name).await.is_empty()
    })
    .await;
    let mounts: Api<RecoveryMount> = Api::namespaced(fx.plane.admin(), NAMESPACE);
    wait_gone(&format!("RecoveryMount {name}"), FLOW, || async {
        mounts.get_opt(name).await.unwrap().is_none()
    })
    .await;
    assert!(fx.mounts_left().is_empty(), "{:?}", fx.mounts_left());
    let pvcs: Api<PersistentVolumeClaim> = Api::namespaced(fx.plane.admin(), NAMESPACE);
    wait_gone(&format!("PVC {name}-target"), FLOW, || async {
        pvcs.get_opt(&format!("{name}-target"))
            .await
            .unwrap()
            .is_none()
    })
    .await;
    let caches = std::fs::read_dir(fx.cache_root.join("ircache"))
        .map(|d| d.count())
        .unwrap_or(0);
    assert_eq!(caches, 0, "the IRCache is wiped");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_publish_serves_until_its_ttl_and_an_abort_tears_a_recovery_down() {
    let fx = Installation::start().await;
    fx.apply_recovery(
        "look",
        "    mode: Automatic\n  mode: Publish\n  publish:\n    ttl: 20s",
    )
    .await;
    let published = fx.wait_phase("look", Phase::Published, FLOW).await;
    let status = published.status.unwrap();
    assert_eq!(status.reason.as_deref(), Some("PublishReady"));
    let published_at = status.timings.published_at.expect("publishedAt");
    let expires_at = status.expires_at.expect("expiresAt");
    assert_eq!(expires_at.duration_since(published_at).as_secs(), 20);
    let ip = fx.pod_ip("look-published", FLOW).await;
    assert_eq!(
        query_one(&ip, "SELECT count(*) FROM accounts").await,
        SAMPLE_ROWS.to_string()
    );
    // Nothing is copied while published.
    let pvcs: Api<PersistentVolumeClaim> = Api::namespaced(fx.plane.admin(), NAMESPACE);
    assert!(pvcs.get_opt("look-target").await.unwrap().is_none());
    assert_eq!(recovery_pods(&fx, "look").await, ["look-published"]);
    torn_down(&fx, "look", Phase::Unpublished).await;
    assert!(fx.recoveries().get_opt("look").await.unwrap().is_some());

    // An abort of a recovery waiting for its approval tears it down, its target included.
    fx.apply_recovery("giveup", "    mode: Manual").await;
    fx.wait_phase("giveup", Phase::ReadyForSwitchover, FLOW)
        .await;
    fx.recoveries()
        .patch(
            "giveup",
            &PatchParams::default(),
            &Patch::Merge(serde_json::json!({
                "metadata": {"annotations": {ir_api::crd::ABORT_ANNOTATION: "true"}}
            })),
        )
        .await
        .unwrap();
    torn_down(&fx, "giveup", Phase::Aborted).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_publish_changed_to_recover_switches_over_with_what_was_written() {
    let fx = Installation::start().await;
    fx.apply_recovery("promote", "    mode: Automatic\n  mode: Publish")
        .await;
    fx.wait_phase("promote", Phase::Published, FLOW).await;
    let ip = fx.pod_ip("promote-published", FLOW).await;
    connect(&ip)
        .await
        .unwrap()
        .batch_execute("CREATE TABLE written_while_published AS SELECT 42 AS answer")
        .await
        .unwrap();
    // Publish may go on to Recover, and not back.
    fx.recoveries()
        .patch(
            "promote",
            &PatchParams::default(),
            &Patch::Merge(serde_json::json!({"spec": {"mode": "Recover"}})),
        )
        .await
        .unwrap();
    let back = fx
        .recoveries()
        .patch(
            "promote",
            &PatchParams::default(),
            &Patch::Merge(serde_json::json!({"spec": {"mode": "Publish"}})),
        )
        .await
        .unwrap_err();
    assert!(
        back.to_string()
            .contains("spec.mode may only change from Publish to Recover"),
        "{back}"
    );
    fx.wait_phase("promote", Phase::Completed, FLOW).await;
    let target_ip = fx.pod_ip("promote-target", FLOW).await;
    assert_eq!(
        query_one(&target_ip, "SELECT answer FROM written_while_published").await,
        "42"
    );
    assert_eq!(
        query_one(&target_ip, "SELECT count(*) FROM accounts").await,
        SAMPLE_ROWS.to_string()
    );
}

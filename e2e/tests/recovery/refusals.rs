//! Recoveries refused for a bad field or a wrong password: named, and nothing is created.

use super::*;

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

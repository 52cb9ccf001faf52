//! A recovery to a point in time on Kubernetes: the repository holds a backup and the WAL a
//! source archived after it with `irctl wal push`; the published Pod fetches that WAL with
//! the irctl its init container copies from the operator's image, replays up to a named restore
//! point, promotes, and the recovery goes on to the switchover.

use std::path::Path;
use std::process::Command;

use ir_e2e::installation::{PASSWORD, irctl, workspace_binary};
use ir_e2e::pg::{PgCluster, pg_user};
use ir_e2e::s3::S3Server;

use super::*;

/// Rows of `t` the backup holds; rows up to [`BEFORE_DROP`] are committed before the restore
/// point.
const IN_BACKUP: i64 = 100;
const BEFORE_DROP: i64 = 250;

/// A file:// repository `name` in the installation's file root, made by `repo init` with
/// `flags` and `env`, writable by PostgreSQL's user (who runs archive_command).
fn file_repository(root: &Path, name: &str, flags: &[&str], env: &[(String, String)]) -> String {
    let repo_dir = root.join("repositories").join(name);
    let url = format!("file://{}", repo_dir.display());
    irctl(&[&["repo", "init", "--repo", &url], flags].concat(), env);
    let (uid, gid) = pg_user();
    let chown = Command::new("chown")
        .args(["-R", &format!("{uid}:{gid}")])
        .arg(&repo_dir)
        .status()
        .expect("run chown");
    assert!(chown.success());
    url
}

/// A backup into repository `url` (reached with `env`) of a source that then archives rows up
/// to [`BEFORE_DROP`], the restore point `before_drop`, a dropped table and a table made after
/// the drop. A file:// repository is then given to the Pods' PostgreSQL user, who fetches the
/// WAL. Returns the backup id.
fn archived_history(root: &Path, url: &str, env: &[(String, String)]) -> String {
    let mut source = PgCluster::init(&root.join("source"));
    let env_words: Vec<String> = env.iter().map(|(k, v)| format!("{k}={v}")).collect();
    let push = format!(
        "archive_command=env {} {} wal push --repo {url} %p",
        env_words.join(" "),
        workspace_binary("irctl").display()
    );
    source.start(&["archive_mode=on", &push]);
    source.psql(&format!("ALTER ROLE postgres PASSWORD '{PASSWORD}'"));
    source.psql(&format!(
        "CREATE TABLE t(id int PRIMARY KEY); INSERT INTO t SELECT generate_series(1, {IN_BACKUP})"
    ));
    let id = ir_e2e::installation::backup_of(&source, url, env);
    source.psql(&format!(
        "INSERT INTO t SELECT generate_series({}, {BEFORE_DROP})",
        IN_BACKUP + 1
    ));
    source.psql("SELECT pg_create_restore_point('before_drop')");
    source.psql("DROP TABLE t");
    source.psql("CREATE TABLE after_drop(x int); INSERT INTO after_drop VALUES (1)");
    source.archive_current_segment();
    source.stop();
    if let Some(path) = url.strip_prefix("file://") {
        ir_e2e::installation::give_to_pod_postgres(Path::new(path));
    }
    id
}

#[tokio::test(flavor = "multi_thread")]
async fn recovery_to_a_restore_point_replays_the_archived_wal_in_the_published_pod() {
    // (A target beyond the archived WAL is refused first, in the same installation.)
    ir_e2e::require_root();
    let root = ir_e2e::shared_tempdir();
    let url = file_repository(root.path(), "pitr", &[], &[]);
    let backup = archived_history(root.path(), &url, &[]);
    let fx = Installation::with_backup(root, url, backup.clone()).await;

    // The repository's status shows what the backup can be recovered to.
    let repos: Api<BackupRepository> = Api::namespaced(fx.plane.admin(), NAMESPACE);
    let deadline = Instant::now() + FLOW;
    let window = loop {
        let status = repos.get("backups").await.unwrap().status;
        if let Some(w) = status
            .and_then(|s| s.backups.into_iter().next())
            .and_then(|b| b.recoverable_window)
        {
            break w;
        }
        assert!(Instant::now() < deadline, "no recoverable window listed");
        tokio::time::sleep(Duration::from_millis(300)).await;
    };
    assert!(window.latest.is_some(), "{window:?}");
    assert_eq!(window.first_missing_segment, None, "{window:?}");

    // A point the repository's WAL does not reach yet: Waiting, naming the window.
    fx.plane
        .apply_yaml(&recovery_yaml(
            "too-late",
            "latest",
            "  postgres:\n    credentialsSecret:\n      name: db-superuser\n  pointInTime:\n    \
             lsn: FF/0\n",
        ))
        .await
        .expect("apply the InstantRecovery");
    let waiting = fx
        .wait_status("too-late", FLOW, |s| s.phase == Phase::Waiting)
        .await;
    let validated = waiting
        .condition(ConditionType::Validated)
        .expect("the Validated condition");
    assert_eq!(validated.reason, "PointInTimeNotArchived", "{validated:?}");
    assert!(
        validated
            .message
            .starts_with("spec.pointInTime: LSN FF/0 lies after the end of the archived WAL"),
        "{validated:?}"
    );
    assert!(validated.message.contains("can recover"), "{validated:?}");
    // Nothing was created.
    assert!(recovery_pods(&fx, "too-late").await.is_empty());

    fx.plane
        .apply_yaml(&recovery_yaml(
            "to-point",
            "latest",
            "  postgres:\n    credentialsSecret:\n      name: db-superuser\n  target:\n    \
             size: 1Gi\n  switchover:\n    mode: Automatic\n  pointInTime:\n    \
             name: before_drop\n",
        ))
        .await
        .expect("apply the InstantRecovery");
    let published = fx.wait_phase("to-point", Phase::Syncing, FLOW).await;
    let status = published.status.unwrap();
    assert_eq!(status.backup.as_ref().unwrap().id, backup);
    let condition = status
        .condition(ConditionType::PointInTime)
        .expect("the PointInTime condition");
    assert!(status.is_true(ConditionType::PointInTime), "{condition:?}");
    assert_eq!(condition.reason, "TargetReached", "{condition:?}");
    let point = status.point_in_time.clone().expect("status.pointInTime");
    assert_eq!(point.target, "restore point \"before_drop\"");
    assert!(point.reached_at.is_some(), "{point:?}");
    assert_eq!(point.window.as_ref(), Some(&window));

    // The published Pod fetched WAL with irctl from the operator's image.
    let pod = fx.pods().get("to-point-published").await.unwrap();
    let init = &pod.spec.unwrap().init_containers.unwrap()[0];
    assert_eq!(
        init.image.as_deref(),
        Some(ir_e2e::installation::TOOLS_IMAGE)
    );

    let published_ip = fx.pod_ip("to-point-published", FLOW).await;
    assert_eq!(
        query_one(&published_ip, "SELECT count(*) || ':' || max(id) FROM t").await,
        format!("{BEFORE_DROP}:{BEFORE_DROP}")
    );
    assert_eq!(
        query_one(&published_ip, "SELECT to_regclass('after_drop') IS NULL").await,
        "t"
    );

    fx.wait_phase("to-point", Phase::Completed, FLOW).await;
    let target_ip = fx.pod_ip("to-point-target", FLOW).await;
    assert_eq!(
        query_one(&target_ip, "SELECT count(*) FROM t").await,
        BEFORE_DROP.to_string()
    );
    assert_eq!(
        query_one(&target_ip, "SELECT pg_is_in_recovery()").await,
        "f"
    );
}

/// The same from an S3 repository: the published Pod fetches WAL with the BackupRepository's
/// credentials Secret and S3 settings.
#[tokio::test(flavor = "multi_thread")]
async fn recovery_to_a_restore_point_fetches_wal_from_s3_with_the_repositorys_credentials() {
    ir_e2e::require_root();
    let root = ir_e2e::shared_tempdir();
    // The installation's own repository is not used here.
    let unused = format!("file://{}/repositories/unused", root.path().display());
    let fx = Installation::with_backup(root, unused, "unused".to_owned()).await;
    // On the node's IP, which exists once the node is up: the published Pod fetches from it.
    let s3 = S3Server::start_on(ir_e2e::node::NODE_IP);
    let url = s3.url("pitr");
    let env = s3.env();
    irctl(&["repo", "init", "--repo", &url], &env);
    let backup = archived_history(fx.root.path(), &url, &env);
    fx.plane
        .apply_yaml(&format!(
            "{}---\n\
             apiVersion: instantrecovery.dev/v1alpha1\nkind: BackupRepository\nmetadata:\n  \
             name: wal-s3\n  namespace: {NAMESPACE}\nspec:\n  url: {url}\n  s3:\n    \
             endpoint: {}\n    allowHttp: true\n  credentialsSecret:\n    name: s3-keys\n---\n\
             apiVersion: instantrecovery.dev/v1alpha1\nkind: InstantRecovery\nmetadata:\n  \
             name: from-s3\n  namespace: {NAMESPACE}\nspec:\n  backup:\n    repositoryRef:\n      \
             name: wal-s3\n  postgres:\n    credentialsSecret:\n      name: db-superuser\n  \
             switchover:\n    mode: Manual\n  pointInTime:\n    name: before_drop\n",
            s3.credentials_secret_yaml("s3-keys", NAMESPACE),
            s3.endpoint(),
        ))
        .await
        .expect("apply the S3 repository and the recovery");
    let published = fx.wait_phase("from-s3", Phase::Syncing, FLOW).await;
    let status = published.status.unwrap();
    assert_eq!(status.backup.as_ref().unwrap().id, backup);
    assert!(status.is_true(ConditionType::PointInTime), "{status:?}");
    let published_ip = fx.pod_ip("from-s3-published", FLOW).await;
    assert_eq!(
        query_one(&published_ip, "SELECT count(*) || ':' || max(id) FROM t").await,
        format!("{BEFORE_DROP}:{BEFORE_DROP}")
    );
    // The keys reached the Pod from the Secret, not written into its spec.
    assert_env_from_secret(&fx, "from-s3-published", "AWS_SECRET_ACCESS_KEY", "s3-keys").await;
}

/// Variable `name` of Pod `pod`'s container comes from Secret `secret`, its value never written
/// into the Pod's spec.
async fn assert_env_from_secret(fx: &Installation, pod: &str, name: &str, secret: &str) {
    let pod = fx.pods().get(pod).await.unwrap();
    let env = pod.spec.unwrap().containers[0].env.clone().unwrap();
    let var = env
        .iter()
        .find(|e| e.name == name)
        .unwrap_or_else(|| panic!("no variable {name}"));
    assert_eq!(var.value, None);
    assert_eq!(
        var.value_from
            .as_ref()
            .and_then(|v| v.secret_key_ref.as_ref())
            .map(|r| r.name.as_str()),
        Some(secret)
    );
}

/// From an encrypted repository: without its password the repository is refused naming
/// `spec.encryptionSecret`, with a wrong one too; with the right one the operator lists it, the
/// agent mounts the backup and the published Pod fetches the sealed WAL.
#[tokio::test(flavor = "multi_thread")]
async fn recovery_from_an_encrypted_repository_reads_its_password_from_a_secret() {
    ir_e2e::require_root();
    let root = ir_e2e::shared_tempdir();
    let password = "correct-horse-battery-staple";
    let env = [("IR_REPO_PASSWORD".to_owned(), password.to_owned())];
    let url = file_repository(root.path(), "sealed", &["--encryption"], &env);
    let backup = archived_history(root.path(), &url, &env);
    let fx = Installation::with_backup(root, url.clone(), backup.clone()).await;
    let repos: Api<BackupRepository> = Api::namespaced(fx.plane.admin(), NAMESPACE);
    let reachable = |name: &'static str| {
        let repos = repos.clone();
        async move {
            let deadline = Instant::now() + FLOW;
            loop {
                let repo = repos.get(name).await.unwrap();
                let status = repo.status.unwrap_or_default();
                if let Some(c) = status.conditions.iter().find(|c| c.type_ == "Reachable")
                    && c.observed_generation == repo.metadata.generation
                {
                    return c.clone();
                }
                assert!(Instant::now() < deadline, "{name}: no Reachable condition");
                tokio::time::sleep(Duration::from_millis(300)).await;
            }
        }
    };
    let refused = reachable("backups").await;
    assert_eq!(refused.reason, "KeyRequired", "{refused:?}");
    assert!(
        refused.message.starts_with("spec.encryptionSecret: "),
        "{refused:?}"
    );

    fx.plane
        .apply_yaml(&format!(
            "apiVersion: v1\nkind: Secret\nmetadata:\n  name: repo-key\n  namespace: {NAMESPACE}\n\
             stringData:\n  password: {password}\n---\n\
             apiVersion: v1\nkind: Secret\nmetadata:\n  name: wrong-key\n  namespace: {NAMESPACE}\n\
             stringData:\n  password: not the password\n---\n\
             apiVersion: instantrecovery.dev/v1alpha1\nkind: BackupRepository\nmetadata:\n  \
             name: wrong\n  namespace: {NAMESPACE}\nspec:\n  url: {url}\n  encryptionSecret:\n    \
             name: wrong-key\n"
        ))
        .await
        .expect("apply the Secrets");
    let wrong = reachable("wrong").await;
    assert_eq!(wrong.reason, "WrongKey", "{wrong:?}");
    repos
        .patch(
            "backups",
            &PatchParams::default(),
            &Patch::Merge(serde_json::json!({"spec": {"encryptionSecret": {"name": "repo-key"}}})),
        )
        .await
        .unwrap();
    let listed = reachable("backups").await;
    assert_eq!(listed.status, "True", "{listed:?}");

    fx.plane
        .apply_yaml(&recovery_yaml(
            "sealed",
            "latest",
            "  postgres:\n    credentialsSecret:\n      name: db-superuser\n  target:\n    \
             size: 1Gi\n  pointInTime:\n    name: before_drop\n",
        ))
        .await
        .expect("apply the InstantRecovery");
    fx.wait_phase("sealed", Phase::Syncing, FLOW).await;
    // The password reached the published Pod from the Secret, not written into its spec.
    assert_env_from_secret(&fx, "sealed-published", "IR_REPO_PASSWORD", "repo-key").await;
    fx.wait_phase("sealed", Phase::Completed, FLOW).await;
    let target_ip = fx.pod_ip("sealed-target", FLOW).await;
    assert_eq!(
        query_one(&target_ip, "SELECT count(*) FROM t").await,
        BEFORE_DROP.to_string()
    );
}

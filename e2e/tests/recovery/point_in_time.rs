//! A recovery to a point in time on Kubernetes: the repository holds a backup and the WAL a
//! source archived after it with `irctl wal push`; the published Pod fetches that WAL with
//! the irctl its init container copies from the operator's image, replays up to a named restore
//! point, promotes, and the recovery goes on to the switchover.

use std::path::Path;
use std::process::Command;

use ir_e2e::installation::{PASSWORD, workspace_binary};
use ir_e2e::pg::{PgCluster, pg_user};

use super::*;

/// Rows of `t` the backup holds; rows up to [`BEFORE_DROP`] are committed before the restore
/// point.
const IN_BACKUP: i64 = 100;
const BEFORE_DROP: i64 = 250;

fn irctl(args: &[&str]) -> String {
    let out = Command::new(workspace_binary("irctl"))
        .args(args)
        .output()
        .expect("run irctl");
    assert!(
        out.status.success(),
        "irctl {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).trim().to_owned()
}

/// A backup of a source that then archives rows up to [`BEFORE_DROP`], the restore point
/// `before_drop`, a dropped table and a table made after the drop. Returns the repository URL
/// and the backup id.
fn archived_history(root: &Path) -> (String, String) {
    let repo_dir = root.join("repositories").join("pitr");
    let url = format!("file://{}", repo_dir.display());
    irctl(&["repo", "init", "--repo", &url]);
    // archive_command runs as PostgreSQL's user.
    let (uid, gid) = pg_user();
    let chown = Command::new("chown")
        .args(["-R", &format!("{uid}:{gid}")])
        .arg(&repo_dir)
        .status()
        .expect("run chown");
    assert!(chown.success());

    let mut source = PgCluster::init(&root.join("source"));
    let push = format!(
        "archive_command={} wal push --repo {url} %p",
        workspace_binary("irctl").display()
    );
    source.start(&["archive_mode=on", &push]);
    source.psql(&format!("ALTER ROLE postgres PASSWORD '{PASSWORD}'"));
    source.psql(&format!(
        "CREATE TABLE t(id int PRIMARY KEY); INSERT INTO t SELECT generate_series(1, {IN_BACKUP})"
    ));
    let id = irctl(&[
        "backup",
        "create",
        "--repo",
        &url,
        "--from-pg",
        &source.conninfo(),
    ]);
    source.psql(&format!(
        "INSERT INTO t SELECT generate_series({}, {BEFORE_DROP})",
        IN_BACKUP + 1
    ));
    source.psql("SELECT pg_create_restore_point('before_drop')");
    source.psql("DROP TABLE t");
    source.psql("CREATE TABLE after_drop(x int); INSERT INTO after_drop VALUES (1)");
    let last = source.psql("SELECT pg_walfile_name(pg_current_wal_lsn())");
    source.psql("SELECT pg_switch_wal()");
    let deadline = Instant::now() + Duration::from_secs(60);
    while source.psql("SELECT coalesce(last_archived_wal, '') FROM pg_stat_archiver") < last {
        assert!(
            Instant::now() < deadline,
            "{last} not archived: {}",
            source.psql("SELECT * FROM pg_stat_archiver")
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    source.stop();
    (url, id)
}

#[tokio::test(flavor = "multi_thread")]
async fn recovery_to_a_restore_point_replays_the_archived_wal_in_the_published_pod() {
    // (A target beyond the archived WAL is refused first, in the same installation.)
    ir_e2e::require_root();
    let root = ir_e2e::shared_tempdir();
    let (url, backup) = archived_history(root.path());
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

//! Backups made from Kubernetes on the real node: a `Backup` runs `irctl backup create
//! --from-pg` as a Job, in a Pod of the `postgres` image, against a real PostgreSQL server on
//! the machine (listening on the node's IP) that checks passwords, and a `ScheduledBackup`
//! makes them on a cron schedule into a real S3 server and prunes what it made, and only that.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use ir_api::backup::{
    BACKUP_UID_LABEL, Backup, BackupPhase, SCHEDULED_BACKUP_LABEL, ScheduledBackup,
};
use ir_api::crd::BackupRepository;
use ir_e2e::installation::{self, Installation, NAMESPACE, workspace_binary};
use ir_e2e::node::NODE_IP;
use ir_e2e::pg::PgCluster;
use ir_e2e::s3::S3Server;
use kube::api::{ListParams, Patch, PatchParams};
use kube::{Api, ResourceExt};
use serde_json::Value;

const BACKUP_ROLE_PASSWORD: &str = "backup-s3cret";
/// A Job's three attempts with the Job controller's back-off between them, and the backups.
const ENDS_WITHIN: Duration = Duration::from_secs(240);

/// A running PostgreSQL server that takes passwords over TCP (scram-sha-256), with a
/// replication role `backup` and a marker table.
fn password_checking_source(root: &Path) -> PgCluster {
    let mut source = PgCluster::init(&root.join("live-source"));
    std::fs::write(
        source.datadir.join("pg_hba.conf"),
        "local all all trust\nlocal replication all trust\n\
         host all all 127.0.0.1/32 scram-sha-256\n\
         host replication all 127.0.0.1/32 scram-sha-256\n\
         host all all 10.244.0.0/24 scram-sha-256\n\
         host replication all 10.244.0.0/24 scram-sha-256\n",
    )
    .expect("write pg_hba.conf");
    // Also on the node's IP, for the Jobs' Pods.
    source.start(&[&format!("listen_addresses=127.0.0.1,{NODE_IP}")]);
    source.psql(&format!(
        "CREATE ROLE backup LOGIN REPLICATION PASSWORD '{BACKUP_ROLE_PASSWORD}'; \
         CREATE TABLE marker AS SELECT 'made-from-kubernetes' AS note"
    ));
    source
}

/// Repository credentials for irctl: none for file://, the keys for S3.
type Env = [(String, String)];

fn irctl(args: &[&str]) -> String {
    installation::irctl(args, &[])
}

/// A new file:// repository inside the installation's file root, writable by the PostgreSQL
/// user that the Jobs run as.
fn writable_repository(fx: &Installation, name: &str) -> (PathBuf, String) {
    let path = fx.file_roots[0].join(name);
    let url = format!("file://{}", path.display());
    irctl(&["repo", "init", "--repo", &url]);
    installation::give_to_pod_postgres(&path);
    (path, url)
}

/// The repository's backups (`irctl backup list --output json`).
fn backups_in(url: &str, env: &Env) -> Vec<Value> {
    let json = installation::irctl(&["backup", "list", "--repo", url, "--output", "json"], env);
    match serde_json::from_str(&json).expect("backup list JSON") {
        Value::Array(list) => list,
        other => panic!("backup list is not an array: {other}"),
    }
}

fn label_of<'a>(backup: &'a Value, key: &str) -> Option<&'a str> {
    backup["labels"][key].as_str()
}

/// The BackupRepository `name` with `spec` (YAML fields two spaces deep), and the Secrets of
/// the right and of a wrong password.
async fn apply_repository_and_secrets(fx: &Installation, name: &str, spec: &str) {
    fx.plane
        .apply_yaml(&format!(
            "apiVersion: instantrecovery.dev/v1alpha1\nkind: BackupRepository\nmetadata:\n  \
             name: {name}\n  namespace: {NAMESPACE}\nspec:\n{spec}---\n\
             apiVersion: v1\nkind: Secret\nmetadata:\n  name: backup-role\n  \
             namespace: {NAMESPACE}\ntype: kubernetes.io/basic-auth\nstringData:\n  \
             username: backup\n  password: {BACKUP_ROLE_PASSWORD}\n---\n\
             apiVersion: v1\nkind: Secret\nmetadata:\n  name: wrong-password\n  \
             namespace: {NAMESPACE}\ntype: kubernetes.io/basic-auth\nstringData:\n  \
             username: backup\n  password: not-the-password\n"
        ))
        .await
        .expect("apply the repository and the Secrets");
}

/// `spec` of a Backup of `source` into `repository` with the credentials of `secret`, as YAML
/// `indent` spaces deep.
fn backup_spec(repository: &str, source: &PgCluster, secret: &str, indent: usize) -> String {
    let pad = " ".repeat(indent);
    format!(
        "{pad}repositoryRef:\n{pad}  name: {repository}\n{pad}cluster:\n{pad}  host: {NODE_IP}\n\
         {pad}  port: {}\n{pad}  credentialsSecret:\n{pad}    name: {secret}\n\
         {pad}  postgresVersion: 15\n",
        source.port
    )
}

/// A Backup `name` of `source` into the repository `from-kubernetes` with the credentials of
/// `secret`.
async fn apply_backup(fx: &Installation, name: &str, source: &PgCluster, secret: &str) {
    fx.plane
        .apply_yaml(&format!(
            "apiVersion: instantrecovery.dev/v1alpha1\nkind: Backup\nmetadata:\n  name: {name}\n  \
             namespace: {NAMESPACE}\nspec:\n{}",
            backup_spec("from-kubernetes", source, secret, 2)
        ))
        .await
        .expect("apply the Backup");
}

/// What to read when a Backup does not end as expected.
async fn diagnostics(fx: &Installation, name: &str) -> String {
    let mut text = fx.node().log_tail("kube-controller-manager");
    if let Some(operator) = &fx.operator {
        text.push_str(&format!("\n--- operator:\n{}", operator.tail()));
    }
    let pods = fx.pods().list(&ListParams::default()).await;
    for pod in pods.into_iter().flat_map(|l| l.items) {
        let pod = pod.name_any();
        if pod.starts_with(name) {
            let log = fx.pod_log(&pod, "backup").await.unwrap_or_default();
            text.push_str(&format!("\n--- {pod}/backup:\n{log}"));
        }
    }
    text
}

/// Waits until the Backup ends (Completed or Failed) and returns it.
async fn wait_ended(fx: &Installation, name: &str) -> Backup {
    let api: Api<Backup> = Api::namespaced(fx.plane.admin(), NAMESPACE);
    let deadline = Instant::now() + ENDS_WITHIN;
    loop {
        let backup = api.get(name).await.expect("read the Backup");
        if backup.status.as_ref().is_some_and(|s| s.phase.is_final()) {
            return backup;
        }
        if Instant::now() > deadline {
            panic!(
                "Backup {name} has not ended after {ENDS_WITHIN:?}: {:?}\n{}",
                backup.status,
                diagnostics(fx, name).await
            );
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_backup_runs_as_a_job_into_the_repository_and_a_wrong_password_fails_it() {
    let fx = Installation::start().await;
    let source = password_checking_source(fx.root.path());
    let (_, url) = writable_repository(&fx, "from-kubernetes");
    apply_repository_and_secrets(&fx, "from-kubernetes", &format!("  url: {url}\n")).await;

    apply_backup(&fx, "first", &source, "backup-role").await;
    let first = wait_ended(&fx, "first").await;
    let status = first.status.clone().unwrap();
    assert_eq!(
        status.phase,
        BackupPhase::Completed,
        "{status:?}\n{}",
        diagnostics(&fx, "first").await
    );
    let id = status.backup_id.clone().expect("status.backupId");
    assert!(status.size_bytes.unwrap() > 0, "{status:?}");
    assert_eq!(status.pg_major, Some(15));
    assert!(status.duration_seconds.is_some() && status.completed_at.is_some());
    assert_eq!(status.job_name.as_deref(), Some("first-backup"));
    let completed = status
        .conditions
        .iter()
        .find(|c| c.type_ == "Completed")
        .expect("condition Completed");
    assert_eq!(completed.status, "True");
    // The backup is in the repository, labelled with the Backup's uid, and restores the marker.
    let listed = backups_in(&url, &[]);
    assert_eq!(listed.len(), 1, "{listed:?}");
    assert_eq!(listed[0]["id"], id.as_str());
    assert_eq!(
        label_of(&listed[0], BACKUP_UID_LABEL),
        first.uid().as_deref()
    );
    let restored = fx.root.path().join("restored");
    irctl(&[
        "backup",
        "restore",
        &id,
        "--repo",
        &url,
        "--target",
        restored.to_str().unwrap(),
    ]);
    assert!(restored.join("PG_VERSION").exists());

    // `kubectl ir backup create --wait`: the same through the plugin.
    let out = Command::new(workspace_binary("kubectl-ir"))
        .env("KUBECONFIG", fx.plane.admin_kubeconfig())
        .args(["backup", "create", "second", "-n", NAMESPACE])
        .args(["--repository", "from-kubernetes", "--host", NODE_IP])
        .args(["--port", &source.port.to_string()])
        .args([
            "--credentials-secret",
            "backup-role",
            "--postgres-version",
            "15",
        ])
        .args(["--wait", "4m", "--output", "json"])
        .output()
        .expect("run kubectl-ir");
    assert!(
        out.status.success(),
        "kubectl ir backup create: {}{}",
        String::from_utf8_lossy(&out.stderr),
        diagnostics(&fx, "second").await
    );
    let created: Value = serde_json::from_slice(&out.stdout).expect("kubectl ir JSON");
    assert_eq!(created["name"], "second");
    assert_eq!(created["status"]["phase"], "Completed");
    let second_id = created["status"]["backupId"].as_str().expect("backupId");
    assert_ne!(second_id, id);
    assert_eq!(backups_in(&url, &[]).len(), 2);

    // A wrong password: the Job fails after its retries and the Backup says why.
    apply_backup(&fx, "denied", &source, "wrong-password").await;
    let denied = wait_ended(&fx, "denied").await.status.unwrap();
    assert_eq!(denied.phase, BackupPhase::Failed, "{denied:?}");
    let message = denied.message.clone().unwrap_or_default();
    assert!(
        message.contains("password authentication failed"),
        "{message}"
    );
    assert_eq!(
        backups_in(&url, &[]).len(),
        2,
        "a failed backup adds nothing"
    );

    // A Backup's spec cannot change.
    let api: Api<Backup> = Api::namespaced(fx.plane.admin(), NAMESPACE);
    let change = serde_json::json!({"spec": {"cluster": {"port": 1}}});
    let refused = api
        .patch("first", &PatchParams::default(), &Patch::Merge(&change))
        .await
        .unwrap_err();
    assert!(
        refused
            .to_string()
            .contains("a Backup's spec cannot change"),
        "{refused}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_scheduled_backup_makes_backups_and_prunes_only_its_own() {
    let fx = Installation::start().await;
    let mut source = password_checking_source(fx.root.path());
    // On a real S3 server: the Jobs write there, the operator prunes and collects there.
    let s3 = S3Server::start_on(NODE_IP);
    let url = s3.url("scheduled");
    let env = s3.env();
    installation::irctl(&["repo", "init", "--repo", &url], &env);
    // A backup made outside the schedule: its retention must leave it alone.
    let outside = installation::backup_of(&source, &url, &env);
    fx.plane
        .apply_yaml(&s3.credentials_secret_yaml("s3-keys", NAMESPACE))
        .await
        .expect("apply the S3 keys");
    let spec = format!(
        "  url: {url}\n  s3:\n    endpoint: {}\n    allowHttp: true\n  credentialsSecret:\n    \
         name: s3-keys\n",
        s3.endpoint()
    );
    apply_repository_and_secrets(&fx, "scheduled", &spec).await;
    fx.plane
        .apply_yaml(&format!(
            "apiVersion: instantrecovery.dev/v1alpha1\nkind: ScheduledBackup\nmetadata:\n  \
             name: often\n  namespace: {NAMESPACE}\nspec:\n  schedule: \"*/15 * * * * *\"\n  \
             retention:\n    keepLast: 2\n  historyLimit: 3\n  backup:\n{}",
            backup_spec("scheduled", &source, "backup-role", 4)
        ))
        .await
        .expect("apply the ScheduledBackup");

    // Until a retention run has deleted a backup of the schedule.
    let schedules: Api<ScheduledBackup> = Api::namespaced(fx.plane.admin(), NAMESPACE);
    let deadline = Instant::now() + 2 * ENDS_WITHIN;
    let retention = loop {
        let s = schedules
            .get("often")
            .await
            .expect("read the ScheduledBackup");
        let status = s.status.unwrap_or_default();
        if let Some(r) = status.last_retention.filter(|r| !r.deleted.is_empty()) {
            break r;
        }
        if Instant::now() > deadline {
            panic!(
                "no retention run deleted a backup of the schedule: {:?}\n{}",
                backups_in(&url, &env),
                diagnostics(&fx, "often").await
            );
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    };
    assert_eq!(retention.scheduled_backup, format!("{NAMESPACE}/often"));
    assert_eq!(retention.kept.len(), 2, "{retention:?}");
    assert!(!retention.kept.contains(&outside), "{retention:?}");

    let listed = backups_in(&url, &env);
    let ids: Vec<&str> = listed.iter().filter_map(|b| b["id"].as_str()).collect();
    assert!(ids.contains(&outside.as_str()), "{ids:?}");
    for deleted in &retention.deleted {
        assert!(!ids.contains(&deleted.as_str()), "{deleted} was pruned");
    }
    for b in listed.iter().filter(|b| b["id"] != outside.as_str()) {
        assert_eq!(
            label_of(b, SCHEDULED_BACKUP_LABEL),
            Some(format!("{NAMESPACE}/often").as_str()),
            "{b}"
        );
    }
    // The repository reports the schedule's runs: that one, or one after it (the schedule runs
    // every 15 s, and a later run may have had nothing to delete).
    let repositories: Api<BackupRepository> = Api::namespaced(fx.plane.admin(), NAMESPACE);
    let reported = loop {
        let reported = repositories
            .get("scheduled")
            .await
            .unwrap()
            .status
            .and_then(|s| s.retention);
        if let Some(r) = reported.filter(|r| r.time >= retention.time) {
            break r;
        }
        assert!(
            Instant::now() < deadline,
            "BackupRepository status.retention never reported {retention:?}"
        );
        tokio::time::sleep(Duration::from_secs(1)).await;
    };
    assert_eq!(reported.scheduled_backup, format!("{NAMESPACE}/often"));
    if reported.time == retention.time {
        assert_eq!(reported.deleted, retention.deleted, "{reported:?}");
    }

    // Suspended: no new Backup is created; at most historyLimit Backups are kept.
    schedules
        .patch(
            "often",
            &PatchParams::default(),
            &Patch::Merge(serde_json::json!({"spec": {"suspend": true}})),
        )
        .await
        .unwrap();
    let backups: Api<Backup> = Api::namespaced(fx.plane.admin(), NAMESPACE);
    let mine = ListParams::default().labels(&format!("{SCHEDULED_BACKUP_LABEL}=often"));
    let suspended_deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let s = schedules.get("often").await.unwrap();
        let ready = s.status.unwrap_or_default().conditions;
        if ready.iter().any(|c| c.reason == "Suspended") {
            break;
        }
        assert!(
            Instant::now() < suspended_deadline,
            "not Suspended: {ready:?}"
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    // A run may have begun before the suspension: let it end, then nothing more starts.
    tokio::time::sleep(Duration::from_secs(20)).await;
    let names = |list: Vec<Backup>| -> Vec<String> { list.iter().map(|b| b.name_any()).collect() };
    let before = names(backups.list(&mine).await.unwrap().items);
    assert!(before.len() <= 3, "historyLimit 3: {before:?}");
    tokio::time::sleep(Duration::from_secs(20)).await;
    let after = names(backups.list(&mine).await.unwrap().items);
    assert_eq!(before, after, "a suspended schedule makes no Backup");
    source.stop();
}

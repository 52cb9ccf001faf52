//! The Job of a Backup: `irctl backup create --from-pg` against the cluster, into the
//! repository. irctl comes from the operator's image (copied in by an init container, as for
//! the published Pod); `pg_basebackup` from the PostgreSQL image of the server's major
//! version, which the main container runs.

use std::collections::BTreeMap;

use ir_api::backup::{BACKUP_UID_LABEL, Backup, SCHEDULED_BACKUP_LABEL};
use ir_api::crd::BackupRepositorySpec;
use ir_engine::postgres::quote_conninfo_value;
use k8s_openapi::api::batch::v1::{Job, JobSpec};
use k8s_openapi::api::core::v1::{
    Container, EmptyDirVolumeSource, EnvVar, PodSpec, PodTemplateSpec, Volume,
};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use kube::{Resource, ResourceExt};

use super::{
    MANAGED_BY_LABEL, PostgresUser, TOOLS_DIR, container_security_context, copy_irctl_container,
    file_repository, mount, repository_env, secret_env, security_context,
};

/// Label with the Backup's name on its Job and Pods.
pub const BACKUP_LABEL: &str = "instantrecovery.dev/backup";
/// Attempts of the Job's Pod: a connection refused during a failover gets another try, a wrong
/// password fails in minutes, not hours.
const BACKOFF_LIMIT: i32 = 2;

/// `<backup>-backup`, cut to fit a label value (the Job controller labels Pods with it).
pub fn job_name(backup: &str) -> String {
    let mut name: String = backup.chars().take(63 - "-backup".len()).collect();
    name = name.trim_end_matches(['-', '.']).to_owned();
    format!("{name}-backup")
}

/// The cluster's host: the Service's cluster DNS name, or the host as given.
pub fn cluster_host(backup: &Backup) -> String {
    let cluster = &backup.spec.cluster;
    match (&cluster.host, &cluster.service) {
        (Some(host), _) => host.clone(),
        (None, Some(service)) => format!(
            "{}.{}.svc",
            service.name,
            backup.namespace().unwrap_or_default()
        ),
        // The schema requires one of them.
        (None, None) => String::new(),
    }
}

/// The labels `irctl backup create` writes into the manifest: the Backup's uid, by which the
/// operator finds it, and the ScheduledBackup that made it, whose retention selects by it.
pub fn manifest_labels(backup: &Backup) -> BTreeMap<String, String> {
    let mut labels = BTreeMap::from([(
        BACKUP_UID_LABEL.to_owned(),
        backup.uid().unwrap_or_default(),
    )]);
    if let Some(schedule) = backup.labels().get(SCHEDULED_BACKUP_LABEL) {
        labels.insert(
            SCHEDULED_BACKUP_LABEL.to_owned(),
            format!("{}/{schedule}", backup.namespace().unwrap_or_default()),
        );
    }
    labels
}

pub fn backup_job(
    backup: &Backup,
    repository: &BackupRepositorySpec,
    tools_image: &str,
    user: PostgresUser,
) -> Job {
    let name = backup.name_any();
    let cluster = &backup.spec.cluster;
    let image = cluster
        .image
        .clone()
        .unwrap_or_else(|| format!("postgres:{}", cluster.postgres_version));
    let labels = BTreeMap::from([
        (MANAGED_BY_LABEL.0.to_owned(), MANAGED_BY_LABEL.1.to_owned()),
        (BACKUP_LABEL.to_owned(), name.clone()),
    ]);
    let mut command = vec![
        format!("{TOOLS_DIR}/irctl"),
        "backup".to_owned(),
        "create".to_owned(),
    ];
    command.extend(repository.address().cli_args());
    command.extend([
        "--from-pg".to_owned(),
        // Quoted: the host comes from the spec and must not add keywords of its own.
        format!(
            "host={} port={}",
            quote_conninfo_value(&cluster_host(backup)),
            cluster.port
        ),
    ]);
    for (key, value) in manifest_labels(backup) {
        command.extend(["--label".to_owned(), format!("{key}={value}")]);
    }
    // libpq (pg_basebackup) reads the role and password from these.
    let credentials = &cluster.credentials_secret.name;
    let mut env = vec![
        secret_env("PGUSER", credentials, "username"),
        secret_env("PGPASSWORD", credentials, "password"),
        EnvVar {
            name: "RUST_LOG".to_owned(),
            value: Some("info".to_owned()),
            ..Default::default()
        },
    ];
    env.extend(repository_env(repository));
    let mut volumes = vec![Volume {
        name: "tools".to_owned(),
        empty_dir: Some(EmptyDirVolumeSource::default()),
        ..Default::default()
    }];
    let mut mounts = vec![mount("tools", TOOLS_DIR)];
    if let Some((volume, repository_mount)) = file_repository(repository, false) {
        volumes.push(volume);
        mounts.push(repository_mount);
    }
    let pod = PodSpec {
        restart_policy: Some("Never".to_owned()),
        security_context: Some(security_context(user)),
        automount_service_account_token: Some(false),
        init_containers: Some(vec![copy_irctl_container(tools_image, user)]),
        containers: vec![Container {
            name: "backup".to_owned(),
            image: Some(image),
            command: Some(command),
            env: Some(env),
            volume_mounts: Some(mounts),
            security_context: Some(container_security_context(user)),
            // The operator reports why a backup failed from here.
            termination_message_policy: Some("FallbackToLogsOnError".to_owned()),
            ..Default::default()
        }],
        volumes: Some(volumes),
        ..Default::default()
    };
    Job {
        metadata: ObjectMeta {
            name: Some(job_name(&name)),
            namespace: backup.namespace(),
            labels: Some(labels.clone()),
            owner_references: backup.controller_owner_ref(&()).map(|o| vec![o]),
            ..Default::default()
        },
        spec: Some(JobSpec {
            backoff_limit: Some(BACKOFF_LIMIT),
            template: PodTemplateSpec {
                metadata: Some(ObjectMeta {
                    labels: Some(labels),
                    ..Default::default()
                }),
                spec: Some(pod),
            },
            ..Default::default()
        }),
        ..Default::default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ir_api::backup::{BackupSpec, ClusterRef};
    use ir_api::crd::LocalRef;

    fn backup(host: Option<&str>, service: Option<&str>) -> Backup {
        let mut b = Backup::new(
            "nightly-20261205030000",
            BackupSpec {
                repository_ref: LocalRef {
                    name: "prod".into(),
                },
                cluster: ClusterRef {
                    host: host.map(str::to_owned),
                    service: service.map(|name| LocalRef { name: name.into() }),
                    port: 5433,
                    credentials_secret: LocalRef {
                        name: "db-replication".into(),
                    },
                    postgres_version: 16,
                    image: None,
                },
            },
        );
        b.metadata.namespace = Some("db".into());
        b.metadata.uid = Some("0b9d".into());
        b.metadata
            .labels
            .get_or_insert_default()
            .insert(SCHEDULED_BACKUP_LABEL.into(), "nightly".into());
        b
    }

    fn repository(url: &str) -> BackupRepositorySpec {
        serde_json::from_value(serde_json::json!({
            "url": url, "credentialsSecret": {"name": "s3"}, "encryptionSecret": {"name": "key"}
        }))
        .unwrap()
    }

    fn user() -> PostgresUser {
        PostgresUser { uid: 999, gid: 999 }
    }

    #[test]
    fn the_job_backs_up_the_cluster_with_pg_basebackup_of_its_major_into_the_repository() {
        let b = backup(None, Some("db-rw"));
        let job = backup_job(&b, &repository("s3://bucket/prod"), "ir:1", user());
        assert_eq!(
            job.metadata.name.as_deref(),
            Some("nightly-20261205030000-backup")
        );
        let owner = &job.metadata.owner_references.as_ref().unwrap()[0];
        assert_eq!(
            (owner.kind.as_str(), owner.controller),
            ("Backup", Some(true))
        );
        let pod = job.spec.as_ref().unwrap().template.spec.as_ref().unwrap();
        assert_eq!(pod.restart_policy.as_deref(), Some("Never"));
        let init = &pod.init_containers.as_ref().unwrap()[0];
        assert_eq!(init.image.as_deref(), Some("ir:1"));
        let main = &pod.containers[0];
        assert_eq!(main.image.as_deref(), Some("postgres:16"));
        let command = main.command.as_ref().unwrap().join(" ");
        assert!(
            command.starts_with(
                "/var/lib/instant-recovery/tools/irctl backup create --repo=s3://bucket/prod"
            ),
            "{command}"
        );
        assert!(
            command.contains("--from-pg host='db-rw.db.svc' port=5433 --label"),
            "{command}"
        );
        assert!(
            command.contains("--label instantrecovery.dev/backup-uid=0b9d"),
            "{command}"
        );
        assert!(
            command.contains("--label instantrecovery.dev/scheduled-backup=db/nightly"),
            "{command}"
        );
        let env: Vec<_> = main
            .env
            .as_ref()
            .unwrap()
            .iter()
            .map(|e| {
                let from = e
                    .value_from
                    .as_ref()
                    .and_then(|f| f.secret_key_ref.as_ref());
                (
                    e.name.as_str(),
                    from.map(|s| (s.name.as_str(), s.key.as_str())),
                )
            })
            .collect();
        for expected in [
            ("PGUSER", Some(("db-replication", "username"))),
            ("PGPASSWORD", Some(("db-replication", "password"))),
            ("AWS_ACCESS_KEY_ID", Some(("s3", "AWS_ACCESS_KEY_ID"))),
            ("IR_REPO_PASSWORD", Some(("key", "password"))),
        ] {
            assert!(env.contains(&expected), "{expected:?} in {env:?}");
        }
        assert!(
            !command.contains("password"),
            "no secret in the command: {command}"
        );
    }

    #[test]
    fn a_file_repository_is_mounted_writable_and_a_host_is_used_as_given() {
        let b = backup(Some("10.0.0.7"), None);
        let job = backup_job(&b, &repository("file:///srv/backups"), "ir:1", user());
        let pod = job.spec.unwrap().template.spec.unwrap();
        let main = &pod.containers[0];
        let repo_mount = main
            .volume_mounts
            .as_ref()
            .unwrap()
            .iter()
            .find(|m| m.name == "repository")
            .unwrap();
        assert_eq!(
            (repo_mount.mount_path.as_str(), repo_mount.read_only),
            ("/srv/backups", Some(false))
        );
        assert!(
            main.command
                .as_ref()
                .unwrap()
                .join(" ")
                .contains("host='10.0.0.7' ")
        );
    }

    #[test]
    fn job_names_fit_a_label_value() {
        let long = "a".repeat(80);
        let name = job_name(&long);
        assert!(name.len() <= 63 && name.ends_with("-backup"), "{name}");
        assert_eq!(job_name("x"), "x-backup");
    }

    #[test]
    fn a_host_cannot_add_connection_keywords() {
        let b = backup(Some("db' password='x"), None);
        let job = backup_job(&b, &repository("s3://bucket/prod"), "ir:1", user());
        let pod = job.spec.unwrap().template.spec.unwrap();
        let command = pod.containers[0].command.clone().unwrap();
        let conninfo = &command[command.iter().position(|a| a == "--from-pg").unwrap() + 1];
        assert_eq!(conninfo, r"host='db\' password=\'x' port=5433");
    }
}

//! The CRDs of ir_api on a real API server: they install, document every field for `kubectl
//! explain`, accept good manifests with the defaults the types expect, and refuse bad ones with
//! a message that names the field.

use ir_api::crd::{
    BackupRepository, InstantRecovery, MountPhase, RecoveryMount, RecoveryMountStatus,
};
use ir_e2e::cluster::ControlPlane;
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::{
    CustomResourceDefinition, JSONSchemaProps, JSONSchemaPropsOrArray, JSONSchemaPropsOrBool,
};
use kube::api::{Api, Patch, PatchParams};
use kube::{CustomResourceExt, ResourceExt};
use serde_json::{Value, json};

const NS: &str = "crds";

async fn plane() -> ControlPlane {
    let plane = ControlPlane::start().await;
    plane.install_crds().await;
    plane.create_namespace(NS).await;
    plane
}

/// An InstantRecovery that sets every field a user may set.
fn recovery(name: &str) -> Value {
    json!({
        "apiVersion": "instantrecovery.dev/v1alpha1",
        "kind": "InstantRecovery",
        "metadata": {"name": name, "namespace": NS},
        "spec": {
            "backup": {"repositoryRef": {"name": "prod"}, "id": "20260101T000000Z-1a2b"},
            "nodeName": "node-1",
            "postgres": {
                "image": "postgres:15",
                "credentialsSecret": {"name": "orders-superuser"},
                "replicationSecret": {"name": "orders-replication"},
                "resources": {"requests": {"cpu": "500m", "memory": "1Gi"}},
            },
            "cache": {"sizeLimit": "20Gi"},
            "target": {"storageClassName": "fast", "size": "100Gi"},
            "switchover": {"mode": "Scheduled", "at": "2030-01-01T02:00:00Z", "maxLagBytes": 16777216},
            "retry": {"limit": 3, "interval": "30s"},
            "retain": {"cache": true},
            "network": {"clients": [
                {"podSelector": {"matchLabels": {"app": "orders-api"}}},
                {"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "reports"}}},
                {"ipBlock": {"cidr": "10.20.0.0/16"}},
            ]},
        },
    })
}

fn repository(name: &str) -> Value {
    json!({
        "apiVersion": "instantrecovery.dev/v1alpha1",
        "kind": "BackupRepository",
        "metadata": {"name": name, "namespace": NS},
        "spec": {
            "url": "s3://backups/prod",
            "s3": {"endpoint": "https://s3.example.com", "region": "eu-west-1", "allowHttp": false},
            "credentialsSecret": {"name": "backup-reader"},
            "readDeadline": "1m",
        },
    })
}

fn mount(name: &str) -> Value {
    json!({
        "apiVersion": "instantrecovery.dev/v1alpha1",
        "kind": "RecoveryMount",
        "metadata": {"name": name, "namespace": NS, "labels": {"instantrecovery.dev/node": "node-1"}},
        "spec": {
            "nodeName": "node-1",
            "repository": {"url": "file:///srv/backups"},
            "backupId": "20260101T000000Z-1a2b",
            "sizeLimit": "20Gi",
            "uid": 999,
            "gid": 999,
            "attempt": 1,
        },
    })
}

fn backup(name: &str) -> Value {
    json!({
        "apiVersion": "instantrecovery.dev/v1alpha1",
        "kind": "Backup",
        "metadata": {"name": name, "namespace": NS},
        "spec": {
            "repositoryRef": {"name": "prod"},
            "cluster": {
                "host": "orders-db.db.svc",
                "port": 5432,
                "credentialsSecret": {"name": "orders-replication"},
                "postgresVersion": 16,
            },
        },
    })
}

fn schedule(name: &str) -> Value {
    let spec = backup(name)["spec"].clone();
    json!({
        "apiVersion": "instantrecovery.dev/v1alpha1",
        "kind": "ScheduledBackup",
        "metadata": {"name": name, "namespace": NS},
        "spec": {"schedule": "30 2 * * *", "retention": {"keepLast": 7}, "backup": spec},
    })
}

/// `doc` with the value at JSON pointer `at` replaced, or removed when `value` is None.
fn with(mut doc: Value, at: &str, value: Option<Value>) -> Value {
    let (parent, key) = at.rsplit_once('/').expect("a JSON pointer");
    let parent = doc
        .pointer_mut(parent)
        .unwrap_or_else(|| panic!("{parent} exists in the manifest"))
        .as_object_mut()
        .expect("an object");
    match value {
        Some(v) => parent.insert(key.to_owned(), v),
        None => parent.remove(key),
    };
    doc
}

/// JSON is YAML: what `apply_yaml` takes.
async fn apply(plane: &ControlPlane, doc: &Value) -> Result<(), kube::Error> {
    plane.apply_yaml(&doc.to_string()).await
}

#[tokio::test]
async fn every_field_is_documented_for_kubectl_explain() {
    fn undocumented(schema: &JSONSchemaProps, path: &str, out: &mut Vec<String>) {
        for (name, property) in schema.properties.iter().flatten() {
            let path = format!("{path}.{name}");
            if property.description.as_deref().is_none_or(str::is_empty) {
                out.push(path.clone());
            }
            undocumented(property, &path, out);
        }
        match &schema.items {
            Some(JSONSchemaPropsOrArray::Schema(item)) => {
                undocumented(item, &format!("{path}[]"), out)
            }
            Some(JSONSchemaPropsOrArray::Schemas(items)) => {
                for item in items {
                    undocumented(item, &format!("{path}[]"), out);
                }
            }
            None => {}
        }
        if let Some(JSONSchemaPropsOrBool::Schema(values)) = &schema.additional_properties {
            undocumented(values, &format!("{path}{{}}"), out);
        }
    }

    let plane = plane().await;
    // As the API server serves them, which is what `kubectl explain` reads.
    let api: Api<CustomResourceDefinition> = Api::all(plane.admin());
    let mut missing = Vec::new();
    for name in [
        InstantRecovery::crd_name(),
        BackupRepository::crd_name(),
        RecoveryMount::crd_name(),
    ] {
        let crd = api.get(name).await.unwrap();
        let kind = &crd.spec.names.kind;
        for version in &crd.spec.versions {
            let schema = version
                .schema
                .as_ref()
                .and_then(|s| s.open_api_v3_schema.as_ref())
                .unwrap_or_else(|| panic!("{kind} {} has a schema", version.name));
            if schema
                .description
                .as_deref()
                .is_none_or(|d| d.starts_with("Auto-generated"))
            {
                missing.push(format!("{kind} (the kind itself)"));
            }
            let mut fields = Vec::new();
            undocumented(schema, "", &mut fields);
            missing.extend(fields.into_iter().map(|f| format!("{kind} {f}")));
        }
    }
    assert!(
        missing.is_empty(),
        "fields without a description (add a doc comment in api/src):\n{}",
        missing.join("\n")
    );
}

#[tokio::test]
async fn good_manifests_are_accepted_with_the_defaults_the_types_expect() {
    let plane = plane().await;
    for doc in [
        recovery("full"),
        repository("prod"),
        // Without readDeadline: the server fills in the default.
        with(
            with(
                repository("files"),
                "/spec/url",
                Some(json!("file:///srv/backups")),
            ),
            "/spec/readDeadline",
            None,
        ),
        // An S3 repository that opts in to the installation's own credentials needs no Secret.
        with(
            with(repository("ambient"), "/spec/credentialsSecret", None),
            "/spec/s3/useAmbientCredentials",
            Some(json!(true)),
        ),
        mount("full"),
        // A size may be a plain number of bytes.
        with(
            mount("bytes"),
            "/spec/sizeLimit",
            Some(json!(21474836480u64)),
        ),
        backup("full"),
        schedule("full"),
    ] {
        apply(&plane, &doc)
            .await
            .unwrap_or_else(|e| panic!("{doc} refused: {e}"));
    }
    let minimal = json!({
        "apiVersion": "instantrecovery.dev/v1alpha1",
        "kind": "InstantRecovery",
        "metadata": {"name": "minimal", "namespace": NS},
        "spec": {
            "backup": {"repositoryRef": {"name": "prod"}},
            "postgres": {"credentialsSecret": {"name": "orders-superuser"}},
        },
    });
    apply(&plane, &minimal).await.unwrap();

    // What the server stored reads back into the types, with the server's defaults equal to
    // the ones serde fills in.
    let recoveries: Api<InstantRecovery> = Api::namespaced(plane.admin(), NS);
    let stored = recoveries.get("minimal").await.unwrap();
    let local: ir_api::crd::InstantRecoverySpec =
        serde_json::from_value(minimal["spec"].clone()).unwrap();
    assert_eq!(stored.spec, local);
    assert_eq!(stored.spec.backup.id, "latest");
    assert_eq!(stored.spec.retry.limit, 10);
    let full = recoveries.get("full").await.unwrap();
    assert_eq!(full.spec.retry.interval.to_string(), "30s");
    assert_eq!(full.spec.network.clients.as_ref().map(Vec::len), Some(3));
    assert_eq!(
        stored.spec.network.clients, None,
        "unset: the namespace's Pods"
    );
    assert_eq!(full.spec.cache.size_limit.unwrap().0, "20Gi");
    let repositories: Api<BackupRepository> = Api::namespaced(plane.admin(), NS);
    let files = repositories.get("files").await.unwrap();
    assert_eq!(files.spec.read_deadline.to_string(), "30s");
    let prod = repositories.get("prod").await.unwrap();
    assert!(
        !prod.spec.s3.unwrap().use_ambient_credentials,
        "off by default"
    );
    let mounts: Api<RecoveryMount> = Api::namespaced(plane.admin(), NS);
    assert_eq!(
        mounts
            .get("bytes")
            .await
            .unwrap()
            .spec
            .size_limit
            .unwrap()
            .0,
        "21474836480"
    );

    // The agent's status, written as it writes it (server-side apply on the status
    // subresource), is accepted and reads back the same.
    let status = RecoveryMountStatus {
        phase: MountPhase::Mounted,
        attempt: 1,
        mount_path: Some("/run/media/instant-recovery/crds-full".into()),
        mounted_at: Some("2026-01-01T00:00:00Z".parse().unwrap()),
        bytes_fetched: 1 << 20,
        cache_used_bytes: 4096,
        cache_free_bytes: Some(1 << 30),
        ..Default::default()
    };
    let patch = json!({
        "apiVersion": "instantrecovery.dev/v1alpha1",
        "kind": "RecoveryMount",
        "status": status,
    });
    mounts
        .patch_status(
            "full",
            &PatchParams::apply("instant-recovery-agent"),
            &Patch::Apply(&patch),
        )
        .await
        .unwrap();
    assert_eq!(mounts.get("full").await.unwrap().status, Some(status));
}

#[tokio::test]
async fn bad_manifests_are_refused_naming_the_field() {
    let plane = plane().await;
    // (what, manifest, words the API server's message must contain)
    let ir = recovery;
    let br = repository;
    let rm = mount;
    let cases: Vec<(&str, Value, &[&str])> = vec![
        (
            "Scheduled switchover without at",
            with(ir("a"), "/spec/switchover/at", None),
            &["spec.switchover", "switchover.at is required"],
        ),
        (
            "retry limit above 1000",
            with(ir("a"), "/spec/retry/limit", Some(json!(5000))),
            &["spec.retry.limit", "1000"],
        ),
        (
            "negative retry limit",
            with(ir("a"), "/spec/retry/limit", Some(json!(-1))),
            &["spec.retry.limit"],
        ),
        (
            "retry interval in words",
            with(ir("a"), "/spec/retry/interval", Some(json!("5 minutes"))),
            &["spec.retry.interval"],
        ),
        (
            "negative retry interval",
            with(ir("a"), "/spec/retry/interval", Some(json!("-5m"))),
            &["spec.retry.interval"],
        ),
        (
            "retry interval without a unit",
            with(ir("a"), "/spec/retry/interval", Some(json!("300"))),
            &["spec.retry.interval"],
        ),
        (
            "backup id with a slash",
            with(ir("a"), "/spec/backup/id", Some(json!("../etc"))),
            &["spec.backup.id"],
        ),
        (
            "empty backup id",
            with(ir("a"), "/spec/backup/id", Some(json!(""))),
            &["spec.backup.id"],
        ),
        (
            "missing repositoryRef",
            with(ir("a"), "/spec/backup/repositoryRef", None),
            &["spec.backup.repositoryRef", "Required"],
        ),
        (
            "point in time with two targets",
            with(
                ir("a"),
                "/spec/pointInTime",
                Some(json!({"name": "before", "xid": 700})),
            ),
            &[
                "spec.pointInTime",
                "exactly one of time, lsn, xid, name or immediate",
            ],
        ),
        (
            "point in time without a target",
            with(
                ir("a"),
                "/spec/pointInTime",
                Some(json!({"inclusive": false, "immediate": false})),
            ),
            &["spec.pointInTime", "exactly one of"],
        ),
        (
            "point in time at a malformed LSN",
            with(
                ir("a"),
                "/spec/pointInTime",
                Some(json!({"lsn": "0x3000000"})),
            ),
            &["spec.pointInTime.lsn"],
        ),
        (
            "point in time at a time without a zone",
            with(
                ir("a"),
                "/spec/pointInTime",
                Some(json!({"time": "2026-12-04 14:02"})),
            ),
            &["spec.pointInTime.time"],
        ),
        (
            "point in time on timeline 0",
            with(
                ir("a"),
                "/spec/pointInTime",
                Some(json!({"immediate": true, "timeline": "0"})),
            ),
            &["spec.pointInTime.timeline"],
        ),
        (
            "restore point name longer than PostgreSQL's",
            with(
                ir("a"),
                "/spec/pointInTime",
                Some(json!({"name": "x".repeat(64)})),
            ),
            &["spec.pointInTime.name"],
        ),
        (
            "empty repositoryRef name",
            with(ir("a"), "/spec/backup/repositoryRef/name", Some(json!(""))),
            &["spec.backup.repositoryRef.name"],
        ),
        (
            "missing postgres.credentialsSecret",
            with(ir("a"), "/spec/postgres/credentialsSecret", None),
            &["spec.postgres.credentialsSecret", "Required"],
        ),
        (
            "unknown switchover mode",
            with(ir("a"), "/spec/switchover/mode", Some(json!("Soon"))),
            &["spec.switchover.mode", "Unsupported value"],
        ),
        (
            "switchover time that is not a time",
            with(ir("a"), "/spec/switchover/at", Some(json!("tomorrow"))),
            &["spec.switchover.at"],
        ),
        (
            "negative maxLagBytes",
            with(ir("a"), "/spec/switchover/maxLagBytes", Some(json!(-1))),
            &["spec.switchover.maxLagBytes"],
        ),
        (
            "maxLagBytes beyond what the server stores",
            with(
                ir("a"),
                "/spec/switchover/maxLagBytes",
                Some(json!(18446744073709551615u64)),
            ),
            &["spec.switchover.maxLagBytes"],
        ),
        (
            "maxLagBytes as a quantity",
            with(ir("a"), "/spec/switchover/maxLagBytes", Some(json!("16Mi"))),
            &["spec.switchover.maxLagBytes"],
        ),
        (
            "cache size limit that is not a quantity",
            with(ir("a"), "/spec/cache/sizeLimit", Some(json!("lots"))),
            &["spec.cache.sizeLimit", "positive quantity"],
        ),
        (
            "negative cache size limit",
            with(ir("a"), "/spec/cache/sizeLimit", Some(json!("-20Gi"))),
            &["spec.cache.sizeLimit", "positive quantity"],
        ),
        (
            "zero cache size limit",
            with(ir("a"), "/spec/cache/sizeLimit", Some(json!(0))),
            &["spec.cache.sizeLimit", "positive quantity"],
        ),
        (
            "target size with a space",
            with(ir("a"), "/spec/target/size", Some(json!("100 GB"))),
            &["spec.target.size", "positive quantity"],
        ),
        (
            "zero target size",
            with(ir("a"), "/spec/target/size", Some(json!("0Gi"))),
            &["spec.target.size", "positive quantity"],
        ),
        (
            "repository url of another scheme",
            with(
                br("a"),
                "/spec/url",
                Some(json!("https://backups.example.com/prod")),
            ),
            &["spec.url", "s3://<bucket>/<prefix> or file:///<path>"],
        ),
        (
            "s3 url without a bucket",
            with(br("a"), "/spec/url", Some(json!("s3://"))),
            &["spec.url", "s3://<bucket>"],
        ),
        (
            "relative file url",
            with(br("a"), "/spec/url", Some(json!("file://backups"))),
            &["spec.url", "file:///<path>"],
        ),
        (
            "missing repository url",
            with(br("a"), "/spec/url", None),
            &["spec.url", "Required"],
        ),
        (
            "s3 endpoint without a scheme",
            with(br("a"), "/spec/s3/endpoint", Some(json!("minio:9000"))),
            &["spec.s3.endpoint", "http:// or https://"],
        ),
        (
            "read deadline in words",
            with(br("a"), "/spec/readDeadline", Some(json!("30 seconds"))),
            &["spec.readDeadline"],
        ),
        (
            "s3 repository without credentialsSecret",
            with(br("a"), "/spec/credentialsSecret", None),
            &[
                "spec.credentialsSecret",
                "Required value",
                "s3.useAmbientCredentials",
            ],
        ),
        (
            "s3 repository that refuses ambient credentials and has no Secret",
            with(
                with(br("a"), "/spec/credentialsSecret", None),
                "/spec/s3/useAmbientCredentials",
                Some(json!(false)),
            ),
            &["spec.credentialsSecret", "Required value"],
        ),
        (
            "RecoveryMount of an s3 repository without credentialsSecret",
            with(
                rm("a"),
                "/spec/repository",
                Some(json!({"url": "s3://backups/prod"})),
            ),
            &["spec.repository.credentialsSecret", "Required value"],
        ),
        (
            "RecoveryMount with an empty nodeName",
            with(rm("a"), "/spec/nodeName", Some(json!(""))),
            &["spec.nodeName"],
        ),
        (
            "RecoveryMount without nodeName",
            with(rm("a"), "/spec/nodeName", None),
            &["spec.nodeName", "Required"],
        ),
        (
            "RecoveryMount backup id with a slash",
            with(rm("a"), "/spec/backupId", Some(json!("a/b"))),
            &["spec.backupId"],
        ),
        (
            "RecoveryMount negative size limit",
            with(rm("a"), "/spec/sizeLimit", Some(json!("-1"))),
            &["spec.sizeLimit", "positive quantity"],
        ),
        (
            "RecoveryMount negative uid",
            with(rm("a"), "/spec/uid", Some(json!(-1))),
            &["spec.uid"],
        ),
        (
            "RecoveryMount gid beyond 32 bits",
            with(rm("a"), "/spec/gid", Some(json!(4294967296u64))),
            &["spec.gid", "4294967295"],
        ),
        (
            "RecoveryMount attempt beyond 32 bits",
            with(rm("a"), "/spec/attempt", Some(json!(4294967296u64))),
            &["spec.attempt", "4294967295"],
        ),
        (
            "RecoveryMount repository of another scheme",
            with(
                rm("a"),
                "/spec/repository/url",
                Some(json!("ftp://backups")),
            ),
            &["spec.repository.url"],
        ),
        (
            "Backup of a host and a Service",
            with(
                backup("a"),
                "/spec/cluster/service",
                Some(json!({"name": "orders-db"})),
            ),
            &["spec.cluster", "give exactly one of host and service"],
        ),
        (
            "Backup of neither a host nor a Service",
            with(backup("a"), "/spec/cluster/host", None),
            &["spec.cluster", "give exactly one of host and service"],
        ),
        (
            "Backup of PostgreSQL 9",
            with(backup("a"), "/spec/cluster/postgresVersion", Some(json!(9))),
            &["spec.cluster.postgresVersion"],
        ),
        (
            "Backup on port 0",
            with(backup("a"), "/spec/cluster/port", Some(json!(0))),
            &["spec.cluster.port"],
        ),
        (
            "Backup without credentials",
            with(backup("a"), "/spec/cluster/credentialsSecret", None),
            &["spec.cluster.credentialsSecret", "Required"],
        ),
        (
            "ScheduledBackup with a retention of no rule",
            with(schedule("a"), "/spec/retention", Some(json!({}))),
            &["spec.retention", "at least one of keepLast"],
        ),
        (
            "ScheduledBackup keeping a negative number",
            with(schedule("a"), "/spec/retention/keepLast", Some(json!(-1))),
            &["spec.retention.keepLast"],
        ),
        (
            "ScheduledBackup keeping within a time in words",
            with(
                schedule("a"),
                "/spec/retention/keepWithin",
                Some(json!("a week")),
            ),
            &["spec.retention.keepWithin"],
        ),
        (
            "Backup named longer than a label value",
            with(backup("a"), "/metadata/name", Some(json!("b".repeat(64)))),
            &["at most 63 characters"],
        ),
        (
            "ScheduledBackup whose Backups' names would not fit",
            with(schedule("a"), "/metadata/name", Some(json!("s".repeat(49)))),
            &["at most 48 characters"],
        ),
        (
            "ScheduledBackup without a schedule",
            with(schedule("a"), "/spec/schedule", None),
            &["spec.schedule", "Required"],
        ),
    ];
    let mut wrong = Vec::new();
    for (what, doc, words) in cases {
        match apply(&plane, &doc).await {
            Ok(()) => wrong.push(format!("{what}: accepted")),
            Err(e) => {
                let message = e.to_string();
                if !words.iter().all(|w| message.contains(w)) {
                    wrong.push(format!("{what}: {message:?} does not name {words:?}"));
                }
            }
        }
    }
    assert!(wrong.is_empty(), "{}", wrong.join("\n"));
    // Nothing refused was stored.
    let recoveries: Api<InstantRecovery> = Api::namespaced(plane.admin(), NS);
    assert!(recoveries.get_opt("a").await.unwrap().is_none());
}

#[tokio::test]
async fn the_backup_of_a_recovery_cannot_change() {
    let plane = plane().await;
    apply(&plane, &recovery("orders")).await.unwrap();
    for (what, at, value) in [
        (
            "backup id",
            "/spec/backup/id",
            json!("20260202T000000Z-3c4d"),
        ),
        (
            "repository",
            "/spec/backup/repositoryRef",
            json!({"name": "other"}),
        ),
    ] {
        let err = apply(&plane, &with(recovery("orders"), at, Some(value)))
            .await
            .expect_err(what);
        assert!(
            err.to_string()
                .contains("spec.backup cannot change once the recovery exists"),
            "{what}: {err}"
        );
    }
    // Nor the point in time it recovers to, once there.
    let at_point = with(
        recovery("to-point"),
        "/spec/pointInTime",
        Some(json!({"name": "before"})),
    );
    apply(&plane, &at_point).await.unwrap();
    for (what, value, words) in [
        (
            "another target",
            Some(json!({"name": "after"})),
            "spec.pointInTime cannot change once the recovery exists",
        ),
        (
            "no target",
            None,
            "spec.pointInTime cannot be added or removed once the recovery exists",
        ),
    ] {
        let err = apply(&plane, &with(at_point.clone(), "/spec/pointInTime", value))
            .await
            .expect_err(what);
        assert!(err.to_string().contains(words), "{what}: {err}");
    }
    let err = apply(
        &plane,
        &with(
            recovery("orders"),
            "/spec/pointInTime",
            Some(json!({"immediate": true})),
        ),
    )
    .await
    .expect_err("a point in time added");
    assert!(
        err.to_string().contains("cannot be added or removed"),
        "{err}"
    );
    // The rest of the spec may change, e.g. approving a manual switchover.
    let manual = with(
        recovery("orders"),
        "/spec/switchover",
        Some(json!({"mode": "Manual", "approved": true})),
    );
    apply(&plane, &manual).await.unwrap();
    let recoveries: Api<InstantRecovery> = Api::namespaced(plane.admin(), NS);
    let stored = recoveries.get("orders").await.unwrap();
    assert!(stored.spec.switchover.approved);
    assert_eq!(stored.spec.backup.id, "20260101T000000Z-1a2b");
    assert_eq!(stored.name_any(), "orders");
}

/// The manifests the docs show (docs/examples/, checked against the docs by ir-api's
/// doc_examples test) are accepted by the API server as they are.
#[tokio::test]
async fn the_documented_examples_are_accepted() {
    let plane = ControlPlane::start().await;
    plane.install_crds().await;
    plane.create_namespace("db").await;
    let dir = ir_e2e::helm::repo_root().join("docs/examples");
    let mut files: Vec<_> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|entry| entry.expect("a docs/examples entry").path())
        .collect();
    files.sort();
    assert!(files.len() >= 5, "docs/examples holds {files:?}");
    for file in files {
        let yaml = std::fs::read_to_string(&file).expect("read the example");
        plane
            .apply_yaml(&yaml)
            .await
            .unwrap_or_else(|e| panic!("{} is refused: {e}", file.display()));
    }
    let recoveries: Api<InstantRecovery> = Api::namespaced(plane.admin(), "db");
    assert!(
        !recoveries
            .list(&Default::default())
            .await
            .unwrap()
            .items
            .is_empty()
    );
}

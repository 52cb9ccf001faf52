use super::*;
use ir_api::crd::InstantRecoverySpec;

/// A recovery `shop/orders` with the fields every test needs; the Kubernetes tests share it.
pub(crate) fn recovery() -> InstantRecovery {
    let spec: InstantRecoverySpec = serde_json::from_value(serde_json::json!({
        "backup": {"repositoryRef": {"name": "prod"}},
        "postgres": {"credentialsSecret": {"name": "db-superuser"}},
        "target": {"storageClassName": "fast"}
    }))
    .unwrap();
    let mut ir = InstantRecovery::new("orders", spec);
    ir.metadata.namespace = Some("shop".into());
    ir.metadata.uid = Some("0f1e2d3c".into());
    ir
}

const USER: PostgresUser = PostgresUser { uid: 999, gid: 998 };

fn published(ir: &InstantRecovery, mounted_at: &str) -> Pod {
    published_replaying(ir, mounted_at, None)
}

fn published_replaying(ir: &InstantRecovery, mounted_at: &str, replay: Option<&Replay>) -> Pod {
    published_pod(
        ir,
        "postgres:15",
        USER,
        &PublishedMount {
            node: "node-a",
            host_path: "/run/media/instant-recovery/5a7c1e2f-mount-uid",
            mounted_at,
        },
        replay,
    )
}

#[test]
fn image_majors() {
    assert_eq!(image_major("postgres:15"), Some(15));
    assert_eq!(image_major("postgres:15.4-bookworm"), Some(15));
    assert_eq!(
        image_major("registry:5000/db/postgres:16@sha256:abc"),
        Some(16)
    );
    assert_eq!(image_major("postgres"), None);
    assert_eq!(image_major("postgres:latest"), None);
    assert_eq!(postgres_image(&recovery(), 15), "postgres:15");
}

#[test]
fn default_target_sizes() {
    assert_eq!(default_target_size(1 << 30), Quantity("2Gi".into()));
    assert_eq!(default_target_size(100), Quantity("1Gi".into()));
}

#[test]
fn everything_is_owned_and_labelled() {
    let ir = recovery();
    let mount = recovery_mount(
        &ir,
        "node-a",
        &serde_json::from_value(serde_json::json!({"url": "file:///backups"})).unwrap(),
        "b1",
        USER,
    );
    let labels = mount.metadata.labels.as_ref().unwrap();
    assert_eq!(labels[NODE_LABEL], "node-a");
    assert_eq!(labels[RECOVERY_LABEL], "orders");
    assert_eq!((mount.spec.uid, mount.spec.gid), (999, 998));
    let owner = &mount.metadata.owner_references.as_ref().unwrap()[0];
    assert_eq!(
        (owner.kind.as_str(), owner.controller),
        ("InstantRecovery", Some(true))
    );
    assert_eq!(mount.metadata.namespace.as_deref(), Some("shop"));
    assert_eq!(
        target_pvc(&ir, Quantity("2Gi".into()))
            .spec
            .unwrap()
            .storage_class_name
            .as_deref(),
        Some("fast")
    );
}

#[test]
fn the_service_selects_the_primary_pod() {
    let ir = recovery();
    let selector = service(&ir).spec.unwrap().selector.unwrap();
    let published = published(&ir, "2026-01-01T00:00:00Z");
    let labels = published.metadata.labels.unwrap();
    assert!(selector.iter().all(|(k, v)| labels.get(k) == Some(v)));
    let target = target_pod(&ir, "postgres:15", USER, "10.0.0.7", "orders-replication");
    let labels = target.metadata.labels.unwrap();
    assert!(
        !selector.iter().all(|(k, v)| labels.get(k) == Some(v)),
        "the standby is not the primary yet"
    );
}

#[test]
fn the_published_pod_runs_postgres_on_the_mount() {
    let ir = recovery();
    let pod = published(&ir, "t1");
    assert_eq!(
        pod.metadata.annotations.unwrap()[MOUNTED_AT_ANNOTATION],
        "t1"
    );
    let spec = pod.spec.unwrap();
    assert_eq!(spec.node_name.as_deref(), Some("node-a"));
    assert_eq!(spec.restart_policy.as_deref(), Some("Never"));
    assert_eq!(spec.security_context.unwrap().run_as_user, Some(999));
    let data = spec
        .volumes
        .unwrap()
        .into_iter()
        .find(|v| v.name == "data")
        .unwrap();
    assert_eq!(
        data.host_path.unwrap().path,
        "/run/media/instant-recovery/5a7c1e2f-mount-uid",
        "the path the RecoveryMount's status names"
    );
    let container = &spec.containers[0];
    let mount = container
        .volume_mounts
        .as_ref()
        .unwrap()
        .iter()
        .find(|m| m.name == "data")
        .unwrap();
    assert_eq!(mount.mount_propagation.as_deref(), Some("HostToContainer"));
    let args = container.args.as_ref().unwrap().join(" ");
    assert!(args.contains("listen_addresses=$(POD_IP)"), "{args}");
    assert!(args.contains("archive_mode=off"), "{args}");
    assert!(args.contains(&format!("{DATA_DIR} ")), "{args}");
}

#[test]
fn the_target_pod_copies_then_streams() {
    let ir = recovery();
    let pod = target_pod(&ir, "postgres:15", USER, "10.0.0.7", "orders-replication");
    let spec = pod.spec.unwrap();
    assert_eq!(
        spec.node_name, None,
        "the scheduler places it with its volume"
    );
    assert_eq!(spec.restart_policy.as_deref(), Some("Always"));
    let init = &spec.init_containers.unwrap()[0];
    let env = init.env.as_ref().unwrap();
    assert!(
        env.iter()
            .any(|e| e.name == SOURCE_HOST_ENV && e.value.as_deref() == Some("10.0.0.7"))
    );
    let password = env.iter().find(|e| e.name == "PGPASSWORD").unwrap();
    assert_eq!(
        password
            .value_from
            .as_ref()
            .unwrap()
            .secret_key_ref
            .as_ref()
            .unwrap()
            .name,
        "orders-replication"
    );
    let args = spec.containers[0].args.as_ref().unwrap().join(" ");
    assert!(
        args.contains("cluster_name=orders-target") && args.contains("hot_standby=on"),
        "{args}"
    );
    let claim = spec
        .volumes
        .unwrap()
        .into_iter()
        .find_map(|v| v.persistent_volume_claim)
        .unwrap();
    assert_eq!(claim.claim_name, "orders-target");
}

/// Every container of a Pod, init containers included.
fn all_containers(spec: &PodSpec) -> Vec<&Container> {
    spec.init_containers
        .iter()
        .flatten()
        .chain(&spec.containers)
        .collect()
}

#[test]
fn both_pods_run_without_capabilities_privilege_escalation_or_root() {
    let ir = recovery();
    let pods = [
        published(&ir, "t1"),
        target_pod(&ir, "postgres:15", USER, "10.0.0.7", "orders-replication"),
    ];
    for pod in pods {
        let name = pod.metadata.name.clone().unwrap();
        let spec = pod.spec.unwrap();
        let pod_security = spec.security_context.as_ref().unwrap();
        assert_eq!(pod_security.run_as_non_root, Some(true), "{name}");
        assert_eq!(
            pod_security
                .seccomp_profile
                .as_ref()
                .map(|p| p.type_.as_str()),
            Some("RuntimeDefault"),
            "{name}"
        );
        let containers = all_containers(&spec);
        let expected = if name.ends_with("-target") { 2 } else { 1 };
        assert_eq!(
            containers.len(),
            expected,
            "{name}: init containers included"
        );
        for container in containers {
            let what = format!("{name}/{}", container.name);
            let security = container.security_context.as_ref().expect(&what);
            assert_eq!(security.allow_privilege_escalation, Some(false), "{what}");
            assert_eq!(security.run_as_non_root, Some(true), "{what}");
            assert_eq!(security.privileged, None, "{what}");
            let capabilities = security.capabilities.as_ref().expect(&what);
            assert_eq!(
                capabilities.drop.as_deref(),
                Some(&["ALL".to_owned()][..]),
                "{what}"
            );
            assert_eq!(capabilities.add, None, "{what}");
            assert_eq!(
                security.seccomp_profile.as_ref().map(|p| p.type_.as_str()),
                Some("RuntimeDefault"),
                "{what}"
            );
        }
    }
}

fn operator_peer() -> OperatorPeer {
    OperatorPeer {
        namespace: "ir-system".into(),
        labels: BTreeMap::from([
            ("app.kubernetes.io/name".into(), "instant-recovery".into()),
            ("app.kubernetes.io/component".into(), "operator".into()),
        ]),
    }
}

#[test]
fn the_network_policy_admits_the_operator_the_recovery_and_its_clients_only() {
    let ir = recovery();
    let policy = network_policy(&ir, &operator_peer());
    assert_eq!(policy.metadata.name.as_deref(), Some("orders-postgres"));
    assert_eq!(policy.metadata.namespace.as_deref(), Some("shop"));
    let labels = policy.metadata.labels.as_ref().unwrap();
    assert_eq!(labels[MANAGED_BY_LABEL.0], MANAGED_BY_LABEL.1);
    let owner = &policy.metadata.owner_references.as_ref().unwrap()[0];
    assert_eq!(owner.kind, "InstantRecovery");
    let spec = policy.spec.unwrap();
    // It selects both Pods of the recovery.
    let selected = spec.pod_selector.unwrap().match_labels.unwrap();
    for pod in [
        published(&ir, "t1"),
        target_pod(&ir, "postgres:15", USER, "10.0.0.7", "orders-replication"),
    ] {
        let pod_labels = pod.metadata.labels.unwrap();
        assert!(selected.iter().all(|(k, v)| pod_labels.get(k) == Some(v)));
    }
    assert_eq!(spec.policy_types, Some(vec!["Ingress".to_owned()]));
    let ingress = spec.ingress.unwrap();
    assert_eq!(ingress.len(), 1);
    let port = &ingress[0].ports.as_ref().unwrap()[0];
    assert_eq!(port.port, Some(IntOrString::Int(5432)));
    assert_eq!(port.protocol.as_deref(), Some("TCP"));
    let from = ingress[0].from.clone().unwrap();
    let expected: Vec<NetworkPolicyPeer> = serde_json::from_value(serde_json::json!([
        {"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "ir-system"}},
         "podSelector": {"matchLabels": {"app.kubernetes.io/name": "instant-recovery",
                                         "app.kubernetes.io/component": "operator"}}},
        {"podSelector": {"matchLabels": {"instantrecovery.dev/recovery": "orders"}}},
        // By default, every Pod of the recovery's namespace.
        {"podSelector": {}},
    ]))
    .unwrap();
    assert_eq!(from, expected);

    // spec.network.clients replaces the namespace's Pods; an empty list admits no client.
    let mut ir = recovery();
    ir.spec.network.clients = Some(
        serde_json::from_value(serde_json::json!([
            {"podSelector": {"matchLabels": {"app": "orders-api"}}}
        ]))
        .unwrap(),
    );
    let from = network_policy(&ir, &operator_peer())
        .spec
        .unwrap()
        .ingress
        .unwrap()[0]
        .from
        .clone()
        .unwrap();
    assert_eq!(from.len(), 3);
    assert_eq!(from[..2], expected[..2]);
    assert_eq!(
        from[2]
            .pod_selector
            .as_ref()
            .unwrap()
            .match_labels
            .as_ref()
            .unwrap()["app"],
        "orders-api"
    );
    ir.spec.network.clients = Some(Vec::new());
    let from = network_policy(&ir, &operator_peer())
        .spec
        .unwrap()
        .ingress
        .unwrap()[0]
        .from
        .clone()
        .unwrap();
    // Never an empty `from`, which would admit everyone.
    assert_eq!(from, expected[..2]);
}

#[test]
fn everything_the_operator_creates_is_selected_by_its_watches() {
    let ir = recovery();
    let (key, value) = MANAGED_BY_SELECTOR.split_once('=').unwrap();
    let mount = recovery_mount(
        &ir,
        "node-a",
        &serde_json::from_value(serde_json::json!({"url": "file:///backups"})).unwrap(),
        "b1",
        USER,
    );
    let metas = [
        mount.metadata,
        published(&ir, "t1").metadata,
        target_pod(&ir, "postgres:15", USER, "10.0.0.7", "orders-replication").metadata,
        service(&ir).metadata,
        config_map(&ir).metadata,
        target_pvc(&ir, Quantity("2Gi".into())).metadata,
        replication_secret(&ir, "pw").metadata,
        network_policy(&ir, &operator_peer()).metadata,
    ];
    for meta in metas {
        assert_eq!(
            meta.labels
                .as_ref()
                .and_then(|l| l.get(key))
                .map(String::as_str),
            Some(value),
            "{:?}",
            meta.name
        );
    }
}

#[test]
fn the_published_pod_tolerates_the_recovery_node_taint() {
    let spec = published(&recovery(), "t1").spec.unwrap();
    let tolerations = spec.tolerations.unwrap();
    assert!(tolerations.iter().any(|t| {
        t.key.as_deref() == Some(RECOVERY_NODE_LABEL) && t.operator.as_deref() == Some("Exists")
    }));
}

fn env_names(c: &Container) -> impl Iterator<Item = &str> {
    c.env.iter().flatten().map(|e| e.name.as_str())
}

#[test]
fn a_published_pod_to_a_point_in_time_fetches_wal_with_the_repository_credentials() {
    let ir = recovery();
    let repository: BackupRepositorySpec = serde_json::from_value(serde_json::json!({
        "url": "s3://backups/shop",
        "s3": {"endpoint": "http://minio:9000", "allowHttp": true},
        "credentialsSecret": {"name": "s3-creds"}
    }))
    .unwrap();
    let point = PointInTime {
        name: Some("before-drop".into()),
        ..Default::default()
    };
    let replay = Replay {
        tools_image: "ghcr.io/instant-recovery/instant-recovery:9.9.9",
        point: &point,
        repository: &repository,
    };
    let pod = published_replaying(&ir, "t1", Some(&replay));
    let spec = pod.spec.unwrap();
    let init = &spec.init_containers.as_ref().unwrap()[0];
    assert_eq!(init.image.as_deref(), Some(replay.tools_image));
    assert!(init.command.as_ref().unwrap()[2].contains("command -v irctl"));
    let postgres = &spec.containers[0];
    let args = postgres.args.as_ref().unwrap();
    let setting = |name: &str| {
        args.iter()
            .find_map(|a| a.strip_prefix(&format!("{name}=")))
            .unwrap_or_else(|| panic!("{name} in {args:?}"))
            .to_owned()
    };
    assert_eq!(
        setting("restore_command"),
        "'/var/lib/instant-recovery/tools/irctl' 'wal' 'fetch' '--repo=s3://backups/shop' \
         '--read-deadline=30' '--s3-endpoint=http://minio:9000' '--s3-allow-http' %f %p"
    );
    assert_eq!(setting("recovery_target_name"), "before-drop");
    assert_eq!(setting("recovery_target_action"), "promote");
    assert_eq!(setting("archive_mode"), "off");
    let env: Vec<_> = postgres.env.as_ref().unwrap().iter().collect();
    let secret_of = |name: &str| {
        env.iter()
            .find(|e| e.name == name)
            .and_then(|e| e.value_from.as_ref())
            .and_then(|v| v.secret_key_ref.as_ref())
            .map(|s| (s.name.clone(), s.key.clone()))
    };
    assert_eq!(
        secret_of("AWS_ACCESS_KEY_ID"),
        Some(("s3-creds".into(), "AWS_ACCESS_KEY_ID".into()))
    );
    assert_eq!(
        secret_of("AWS_SECRET_ACCESS_KEY"),
        Some(("s3-creds".into(), "AWS_SECRET_ACCESS_KEY".into()))
    );
    assert!(env.iter().any(|e| e.name == "IR_RECOVERY_SIGNAL"));
    assert_eq!(
        postgres.termination_message_policy.as_deref(),
        Some("FallbackToLogsOnError")
    );
    // irctl reaches the PostgreSQL container through an emptyDir; no hostPath but the mount's.
    let volumes = spec.volumes.unwrap();
    assert!(
        volumes
            .iter()
            .any(|v| v.name == "tools" && v.empty_dir.is_some())
    );
    assert_eq!(volumes.iter().filter(|v| v.host_path.is_some()).count(), 1);

    // A file:// repository is read through its directory, read-only.
    let repository: BackupRepositorySpec =
        serde_json::from_value(serde_json::json!({"url": "file:///srv/backups"})).unwrap();
    let replay = Replay {
        repository: &repository,
        ..replay
    };
    let pod = published_replaying(&ir, "t1", Some(&replay));
    let spec = pod.spec.unwrap();
    let mount = spec.containers[0]
        .volume_mounts
        .as_ref()
        .unwrap()
        .iter()
        .find(|m| m.name == "repository")
        .cloned()
        .unwrap();
    assert_eq!(
        (mount.mount_path.as_str(), mount.read_only),
        ("/srv/backups", Some(true))
    );
    assert!(!env_names(&spec.containers[0]).any(|n| n.starts_with("AWS_")));
}

#[test]
fn a_published_pod_of_a_whole_backup_replays_nothing() {
    let pod = published(&recovery(), "t1");
    let spec = pod.spec.unwrap();
    assert!(spec.init_containers.is_none());
    let args = spec.containers[0].args.as_ref().unwrap();
    assert!(!args.iter().any(|a| a.starts_with("restore_command=")));
    assert!(!env_names(&spec.containers[0]).any(|n| n == "IR_RECOVERY_SIGNAL"));
}

//! The objects the operator creates for one InstantRecovery, built from its spec as pure
//! functions (unit-tested here, applied by the driver).
//!
//! Names: RecoveryMount `<name>`, published Pod `<name>-published`, standby/target Pod and PVC
//! `<name>-target`, Service `<name>` (the stable endpoint), ConfigMap `<name>-postgres` (hba and a
//! fallback postgresql.conf), NetworkPolicy `<name>-postgres` (who may reach PostgreSQL),
//! generated replication Secret `<name>-replication`. Every one carries the label
//! [`MANAGED_BY_SELECTOR`] selects, by which the operator watches them.

use std::collections::BTreeMap;

use ir_api::crd::{
    BackupRepositorySpec, ENCRYPTION_PASSWORD_KEY, InstantRecovery, NODE_LABEL,
    RECOVERY_NODE_LABEL, RecoveryMount, RecoveryMountSpec,
};
use ir_api::point_in_time::PointInTime;
use ir_repository::PASSWORD_ENV;
use k8s_openapi::api::core::v1::{
    Capabilities, ConfigMap, ConfigMapVolumeSource, Container, ContainerPort, EmptyDirVolumeSource,
    EnvVar, EnvVarSource, HostPathVolumeSource, ObjectFieldSelector, PersistentVolumeClaim,
    PersistentVolumeClaimSpec, PersistentVolumeClaimVolumeSource, Pod, PodSecurityContext, PodSpec,
    Probe, ResourceRequirements, SeccompProfile, Secret, SecretKeySelector, SecurityContext,
    Service, ServicePort, ServiceSpec, TCPSocketAction, Toleration, Volume, VolumeMount,
    VolumeResourceRequirements,
};
use k8s_openapi::api::networking::v1::{
    NetworkPolicy, NetworkPolicyIngressRule, NetworkPolicyPeer, NetworkPolicyPort,
    NetworkPolicySpec,
};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{LabelSelector, ObjectMeta, OwnerReference};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use kube::Resource;

pub mod backup_job;

/// Port of every PostgreSQL the operator runs (each Pod has its own IP).
pub const POSTGRES_PORT: u16 = 5432;
pub use ir_api::crd::{POSTGRES_CONTAINER, PRIMARY_LABEL, RECOVERY_LABEL};
/// `published` or `target`.
pub const ROLE_LABEL: &str = "instantrecovery.dev/role";
/// On the published Pod: the mount session (RecoveryMount status.mountedAt) it started on.
pub const MOUNTED_AT_ANNOTATION: &str = "instantrecovery.dev/mounted-at";
/// On the target Pod: the published Pod IP its base backup was taken from.
pub const SOURCE_HOST_ENV: &str = "SOURCE_HOST";
/// The label (and value) on everything the operator creates.
pub const MANAGED_BY_LABEL: (&str, &str) =
    ("app.kubernetes.io/managed-by", "instant-recovery-operator");
/// The label selector of everything the operator creates: its watches of Pods, Services, PVCs,
/// ConfigMaps, RecoveryMounts and NetworkPolicies see nothing else.
pub const MANAGED_BY_SELECTOR: &str = "app.kubernetes.io/managed-by=instant-recovery-operator";

const DATA_DIR: &str = "/var/lib/instant-recovery/data";
const TARGET_MOUNT: &str = "/var/lib/instant-recovery/target";
const TARGET_DATA_DIR: &str = "/var/lib/instant-recovery/target/pgdata";
const CONFIG_DIR: &str = "/etc/instant-recovery";
const SOCKET_DIR: &str = "/var/run/instant-recovery";

/// The user's PostgreSQL uid and gid in the image (999 in the official `postgres` images).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PostgresUser {
    pub uid: u32,
    pub gid: u32,
}

/// The operator's Pods, as a NetworkPolicy peer: its namespace and the labels of its Pods.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OperatorPeer {
    pub namespace: String,
    pub labels: BTreeMap<String, String>,
}

pub fn published_pod_name(recovery: &str) -> String {
    format!("{recovery}-published")
}

pub fn target_name(recovery: &str) -> String {
    format!("{recovery}-target")
}

pub fn config_map_name(recovery: &str) -> String {
    format!("{recovery}-postgres")
}

pub fn replication_secret_name(recovery: &str) -> String {
    format!("{recovery}-replication")
}

pub fn network_policy_name(recovery: &str) -> String {
    format!("{recovery}-postgres")
}

/// `cluster_name` of the standby: the application name it streams under.
pub fn standby_application_name(recovery: &str) -> String {
    format!("{recovery}-target")
}

/// The image for the backup's major version unless the spec names one.
pub fn postgres_image(ir: &InstantRecovery, pg_major: u32) -> String {
    ir.spec
        .postgres
        .image
        .clone()
        .unwrap_or_else(|| format!("postgres:{pg_major}"))
}

/// The major version an image tag says, for `postgres:15`, `postgres:15.4-bookworm`,
/// `registry/x/postgres:16@sha256:..`; `None` when the tag does not say.
pub fn image_major(image: &str) -> Option<u32> {
    let without_digest = image.split('@').next()?;
    let name_end = without_digest.rfind('/').map_or(0, |i| i + 1);
    let tag = without_digest[name_end..].split_once(':')?.1;
    let digits: String = tag.chars().take_while(char::is_ascii_digit).collect();
    digits.parse().ok()
}

/// Default target size: the backup plus a quarter, rounded up to whole GiB.
pub fn default_target_size(backup_bytes: u64) -> Quantity {
    const GIB: u64 = 1 << 30;
    let want = backup_bytes + backup_bytes / 4;
    Quantity(format!("{}Gi", want.div_ceil(GIB).max(1)))
}

fn labels(ir: &InstantRecovery, role: Option<&str>) -> BTreeMap<String, String> {
    let mut labels = BTreeMap::from([
        (
            "app.kubernetes.io/name".to_owned(),
            "instant-recovery".to_owned(),
        ),
        (MANAGED_BY_LABEL.0.to_owned(), MANAGED_BY_LABEL.1.to_owned()),
        (RECOVERY_LABEL.to_owned(), recovery_name(ir).to_owned()),
    ]);
    if let Some(role) = role {
        labels.insert(ROLE_LABEL.to_owned(), role.to_owned());
    }
    labels
}

fn recovery_name(ir: &InstantRecovery) -> &str {
    ir.metadata.name.as_deref().unwrap_or_default()
}

fn owner(ir: &InstantRecovery) -> Vec<OwnerReference> {
    ir.controller_owner_ref(&()).into_iter().collect()
}

fn meta(ir: &InstantRecovery, name: String, role: Option<&str>) -> ObjectMeta {
    ObjectMeta {
        name: Some(name),
        namespace: ir.metadata.namespace.clone(),
        labels: Some(labels(ir, role)),
        owner_references: Some(owner(ir)),
        ..Default::default()
    }
}

/// The request to the agent of `node`.
pub fn recovery_mount(
    ir: &InstantRecovery,
    node: &str,
    repository: &BackupRepositorySpec,
    backup_id: &str,
    user: PostgresUser,
) -> RecoveryMount {
    let mut mount = RecoveryMount::new(
        recovery_name(ir),
        RecoveryMountSpec {
            node_name: node.to_owned(),
            repository: repository.clone(),
            backup_id: backup_id.to_owned(),
            size_limit: ir.spec.cache.size_limit.clone(),
            uid: user.uid,
            gid: user.gid,
            attempt: 0,
        },
    );
    mount.metadata = meta(ir, recovery_name(ir).to_owned(), None);
    mount
        .metadata
        .labels
        .get_or_insert_default()
        .insert(NODE_LABEL.to_owned(), node.to_owned());
    mount
}

/// hba for both instances: password authentication for every TCP client (md5 also accepts
/// SCRAM-stored passwords), peer on the socket inside the Pod. The backup's own pg_hba.conf is
/// not used: its addresses mean nothing in the cluster.
const PG_HBA: &str = "# Written by instant-recovery.\n\
local all all peer\n\
local replication all peer\n\
host all all all md5\n\
host replication all all md5\n";

/// Used only when the backup has no postgresql.conf of its own (Debian-style layouts).
const FALLBACK_CONF: &str = "# Written by instant-recovery: the backup has no postgresql.conf; settings come from the\n\
     # command line.\n";

pub fn config_map(ir: &InstantRecovery) -> ConfigMap {
    ConfigMap {
        metadata: meta(ir, config_map_name(recovery_name(ir)), None),
        data: Some(BTreeMap::from([
            ("pg_hba.conf".to_owned(), PG_HBA.to_owned()),
            ("postgresql.conf".to_owned(), FALLBACK_CONF.to_owned()),
        ])),
        ..Default::default()
    }
}

/// The role of the generated replication Secret.
pub const GENERATED_REPLICATION_USER: &str = "instant_recovery_replication";

/// Replication credentials generated when the spec names none.
pub fn replication_secret(ir: &InstantRecovery, password: &str) -> Secret {
    Secret {
        metadata: meta(ir, replication_secret_name(recovery_name(ir)), None),
        type_: Some("kubernetes.io/basic-auth".to_owned()),
        string_data: Some(BTreeMap::from([
            ("username".to_owned(), GENERATED_REPLICATION_USER.to_owned()),
            ("password".to_owned(), password.to_owned()),
        ])),
        ..Default::default()
    }
}

/// The stable endpoint: whichever Pod carries the primary label.
pub fn service(ir: &InstantRecovery) -> Service {
    let name = recovery_name(ir);
    Service {
        metadata: meta(ir, name.to_owned(), None),
        spec: Some(ServiceSpec {
            selector: Some(BTreeMap::from([
                (RECOVERY_LABEL.to_owned(), name.to_owned()),
                (PRIMARY_LABEL.to_owned(), "true".to_owned()),
            ])),
            ports: Some(vec![ServicePort {
                name: Some("postgres".to_owned()),
                port: POSTGRES_PORT.into(),
                target_port: Some(IntOrString::String("postgres".to_owned())),
                ..Default::default()
            }]),
            ..Default::default()
        }),
        ..Default::default()
    }
}

/// Who may reach PostgreSQL of the recovery, on port 5432: the operator's Pods, the
/// recovery's own Pods (the standby copies from and streams from the published instance), and
/// `spec.network.clients`, by default every Pod of the recovery's namespace. Only ingress is
/// restricted. The kubelet's probes come from the node, which a NetworkPolicy always admits.
pub fn network_policy(ir: &InstantRecovery, operator: &OperatorPeer) -> NetworkPolicy {
    let name = recovery_name(ir);
    let own_pods = BTreeMap::from([(RECOVERY_LABEL.to_owned(), name.to_owned())]);
    let mut from = vec![
        NetworkPolicyPeer {
            namespace_selector: Some(LabelSelector {
                match_labels: Some(BTreeMap::from([(
                    "kubernetes.io/metadata.name".to_owned(),
                    operator.namespace.clone(),
                )])),
                ..Default::default()
            }),
            pod_selector: Some(LabelSelector {
                match_labels: Some(operator.labels.clone()),
                ..Default::default()
            }),
            ..Default::default()
        },
        NetworkPolicyPeer {
            pod_selector: Some(LabelSelector {
                match_labels: Some(own_pods.clone()),
                ..Default::default()
            }),
            ..Default::default()
        },
    ];
    match &ir.spec.network.clients {
        Some(clients) => from.extend(clients.iter().cloned()),
        // Every Pod of the namespace (an empty podSelector, no namespaceSelector).
        None => from.push(NetworkPolicyPeer {
            pod_selector: Some(LabelSelector::default()),
            ..Default::default()
        }),
    }
    NetworkPolicy {
        metadata: meta(ir, network_policy_name(name), None),
        spec: Some(NetworkPolicySpec {
            pod_selector: Some(LabelSelector {
                match_labels: Some(own_pods),
                ..Default::default()
            }),
            policy_types: Some(vec!["Ingress".to_owned()]),
            ingress: Some(vec![NetworkPolicyIngressRule {
                ports: Some(vec![NetworkPolicyPort {
                    port: Some(IntOrString::Int(POSTGRES_PORT.into())),
                    protocol: Some("TCP".to_owned()),
                    ..Default::default()
                }]),
                from: Some(from),
            }]),
            ..Default::default()
        }),
    }
}

pub fn target_pvc(ir: &InstantRecovery, size: Quantity) -> PersistentVolumeClaim {
    PersistentVolumeClaim {
        metadata: meta(ir, target_name(recovery_name(ir)), Some("target")),
        spec: Some(PersistentVolumeClaimSpec {
            access_modes: Some(vec!["ReadWriteOnce".to_owned()]),
            storage_class_name: ir.spec.target.storage_class_name.clone(),
            resources: Some(VolumeResourceRequirements {
                requests: Some(BTreeMap::from([("storage".to_owned(), size)])),
                ..Default::default()
            }),
            ..Default::default()
        }),
        ..Default::default()
    }
}

/// Runs PostgreSQL on `$1` with the data directory's postgresql.conf, or the fallback when the
/// backup has none; `exec` so that the stop signal reaches the postmaster. With
/// [`RECOVERY_SIGNAL_ENV`] set, first puts `recovery.signal` in the data directory, once: the
/// marker [`RECOVERY_REQUESTED`] (written after the signal is durable) keeps a Pod started
/// after the promotion from replaying again.
///
/// In crash recovery (no signal file) PostgreSQL cannot resume a recovery from the backup that
/// an earlier Pod left before the backup's end (its mount went away, it was replaced): it has
/// renamed `backup_label` and refuses every later start. When pg_control still recovers from
/// the backup that `backup_label.old` names, the script puts the label back, and the recovery
/// starts over from the backup's checkpoint (as `ir_engine`'s
/// `resume_cut_short_backup_recovery` does for a server it starts).
const POSTGRES_SCRIPT: &str = "set -e; pgdata=\"$1\"; shift; conf=\"$pgdata/postgresql.conf\"; \
if [ -n \"$IR_RECOVERY_SIGNAL\" ] && [ ! -e \"$pgdata/instant-recovery.recovery-requested\" ]; then \
echo \"$IR_RECOVERY_SIGNAL\" > \"$pgdata/recovery.signal\"; sync \"$pgdata/recovery.signal\"; \
: > \"$pgdata/instant-recovery.recovery-requested\"; sync \"$pgdata/instant-recovery.recovery-requested\"; fi; \
if [ ! -e \"$pgdata/recovery.signal\" ] && [ ! -e \"$pgdata/standby.signal\" ] && [ ! -e \"$pgdata/backup_label\" ] \
&& [ -f \"$pgdata/backup_label.old\" ] && [ ! -L \"$pgdata/backup_label.old\" ]; then \
start=$(head -c 65536 \"$pgdata/backup_label.old\" | sed -n 's|^START WAL LOCATION: \\([0-9A-F]*/[0-9A-F]*\\) .*|\\1|p' | head -n 1); \
if [ -n \"$start\" ] && LC_ALL=C pg_controldata \"$pgdata\" | grep -qx \"Backup start location: *$start\"; then \
if [ -e \"$pgdata/tablespace_map.old\" ] && [ ! -e \"$pgdata/tablespace_map\" ]; then \
mv \"$pgdata/tablespace_map.old\" \"$pgdata/tablespace_map\"; fi; \
mv \"$pgdata/backup_label.old\" \"$pgdata/backup_label\"; sync \"$pgdata\"; \
echo \"instant-recovery: the recovery from the backup stopped before the backup's end (at $start): it starts over from backup_label\" >&2; \
fi; fi; \
[ -f \"$conf\" ] || conf=/etc/instant-recovery/postgresql.conf; \
exec postgres -D \"$pgdata\" -c config_file=\"$conf\" \"$@\"";

/// Set in the published Pod of a recovery to a point in time: the text of its `recovery.signal`.
const RECOVERY_SIGNAL_ENV: &str = "IR_RECOVERY_SIGNAL";
/// Where the published Pod's init container puts irctl for `restore_command`.
const TOOLS_DIR: &str = "/var/lib/instant-recovery/tools";
/// Copies irctl from the tools image into the Pod (the PostgreSQL image has none).
const COPY_IRCTL_SCRIPT: &str =
    "set -e; cp \"$(command -v irctl)\" /var/lib/instant-recovery/tools/irctl";

/// The init container that copies irctl from the operator's image into the `tools` volume.
fn copy_irctl_container(tools_image: &str, user: PostgresUser) -> Container {
    Container {
        name: "tools".to_owned(),
        image: Some(tools_image.to_owned()),
        command: Some(vec![
            "sh".to_owned(),
            "-c".to_owned(),
            COPY_IRCTL_SCRIPT.to_owned(),
        ]),
        volume_mounts: Some(vec![mount("tools", TOOLS_DIR)]),
        security_context: Some(container_security_context(user)),
        ..Default::default()
    }
}

fn postgres_container(
    image: &str,
    user: PostgresUser,
    datadir: &str,
    settings: &[(&str, String)],
    resources: Option<ResourceRequirements>,
    mounts: Vec<VolumeMount>,
    env: Vec<EnvVar>,
) -> Container {
    let mut args = vec!["postgres".to_owned(), datadir.to_owned()];
    let base = [
        ("listen_addresses", "$(POD_IP)".to_owned()),
        ("port", POSTGRES_PORT.to_string()),
        ("unix_socket_directories", SOCKET_DIR.to_owned()),
        ("hba_file", format!("{CONFIG_DIR}/pg_hba.conf")),
    ];
    for (name, value) in base.iter().chain(settings) {
        args.push("-c".to_owned());
        args.push(format!("{name}={value}"));
    }
    Container {
        name: POSTGRES_CONTAINER.to_owned(),
        image: Some(image.to_owned()),
        command: Some(vec![
            "sh".to_owned(),
            "-c".to_owned(),
            POSTGRES_SCRIPT.to_owned(),
        ]),
        args: Some(args),
        env: Some(
            std::iter::once(field_env("POD_IP", "status.podIP"))
                .chain(env)
                .collect(),
        ),
        ports: Some(vec![ContainerPort {
            name: Some("postgres".to_owned()),
            container_port: POSTGRES_PORT.into(),
            ..Default::default()
        }]),
        readiness_probe: Some(Probe {
            tcp_socket: Some(TCPSocketAction {
                port: IntOrString::Int(POSTGRES_PORT.into()),
                ..Default::default()
            }),
            period_seconds: Some(2),
            ..Default::default()
        }),
        resources,
        volume_mounts: Some(mounts),
        security_context: Some(container_security_context(user)),
        ..Default::default()
    }
}

fn field_env(name: &str, path: &str) -> EnvVar {
    EnvVar {
        name: name.to_owned(),
        value_from: Some(EnvVarSource {
            field_ref: Some(ObjectFieldSelector {
                field_path: path.to_owned(),
                ..Default::default()
            }),
            ..Default::default()
        }),
        ..Default::default()
    }
}

fn secret_env(name: &str, secret: &str, key: &str) -> EnvVar {
    EnvVar {
        name: name.to_owned(),
        value_from: Some(EnvVarSource {
            secret_key_ref: Some(SecretKeySelector {
                name: secret.to_owned(),
                key: key.to_owned(),
                optional: Some(false),
            }),
            ..Default::default()
        }),
        ..Default::default()
    }
}

fn mount(name: &str, path: &str) -> VolumeMount {
    VolumeMount {
        name: name.to_owned(),
        mount_path: path.to_owned(),
        ..Default::default()
    }
}

fn config_volume(ir: &InstantRecovery) -> Volume {
    Volume {
        name: "config".to_owned(),
        config_map: Some(ConfigMapVolumeSource {
            name: config_map_name(recovery_name(ir)),
            ..Default::default()
        }),
        ..Default::default()
    }
}

fn socket_volume() -> Volume {
    Volume {
        name: "run".to_owned(),
        empty_dir: Some(EmptyDirVolumeSource::default()),
        ..Default::default()
    }
}

fn runtime_default() -> SeccompProfile {
    SeccompProfile {
        type_: "RuntimeDefault".to_owned(),
        ..Default::default()
    }
}

fn security_context(user: PostgresUser) -> PodSecurityContext {
    PodSecurityContext {
        run_as_user: Some(user.uid.into()),
        run_as_group: Some(user.gid.into()),
        fs_group: Some(user.gid.into()),
        // A recursive regroup at every start would give the data directory group write again,
        // and PostgreSQL refuses to start on it.
        fs_group_change_policy: Some("OnRootMismatch".to_owned()),
        run_as_non_root: Some(user.uid != 0),
        seccomp_profile: Some(runtime_default()),
        ..Default::default()
    }
}

/// Every container of both Pods: PostgreSQL and its tools need no capability and no way to
/// gain privileges (no setuid), under the runtime's default seccomp filter.
fn container_security_context(user: PostgresUser) -> SecurityContext {
    SecurityContext {
        allow_privilege_escalation: Some(false),
        capabilities: Some(Capabilities {
            drop: Some(vec!["ALL".to_owned()]),
            ..Default::default()
        }),
        run_as_non_root: Some(user.uid != 0),
        seccomp_profile: Some(runtime_default()),
        ..Default::default()
    }
}

/// The published Pod stays on a node tainted for recoveries (a `NoExecute` taint of the
/// chart's node label); its node is set, so no scheduler looks at `NoSchedule`.
fn recovery_node_toleration() -> Toleration {
    Toleration {
        key: Some(RECOVERY_NODE_LABEL.to_owned()),
        operator: Some("Exists".to_owned()),
        ..Default::default()
    }
}

/// What the published Pod needs from the mount.
pub struct PublishedMount<'a> {
    pub node: &'a str,
    /// The mount's host path (RecoveryMount status.mountPath).
    pub host_path: &'a str,
    /// The mount session (status.mountedAt): a new one means this Pod must be replaced.
    pub mounted_at: &'a str,
}

/// What the published Pod of a recovery to a point in time needs to replay the repository's WAL.
pub struct Replay<'a> {
    /// The image whose irctl runs `restore_command` (the operator's own).
    pub tools_image: &'a str,
    pub point: &'a PointInTime,
    pub repository: &'a BackupRepositorySpec,
}

impl Replay<'_> {
    /// `irctl wal fetch` with the flags that name the repository.
    fn fetch_command(&self) -> Vec<String> {
        let mut words = vec![
            format!("{TOOLS_DIR}/irctl"),
            "wal".to_owned(),
            "fetch".to_owned(),
        ];
        words.extend(self.repository.address().cli_args());
        words
    }
}

/// The repository's credentials and password, as irctl reads them from its environment.
fn repository_env(repository: &BackupRepositorySpec) -> Vec<EnvVar> {
    let password = repository
        .encryption_secret
        .as_ref()
        .map(|secret| secret_env(PASSWORD_ENV, &secret.name, ENCRYPTION_PASSWORD_KEY));
    let Some(secret) = &repository.credentials_secret else {
        return password.into_iter().collect();
    };
    let mut env: Vec<EnvVar> = ["AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"]
        .into_iter()
        .map(|key| secret_env(key, &secret.name, key))
        .chain(password)
        .collect();
    if repository.s3.as_ref().is_none_or(|s3| s3.region.is_none()) {
        env.push(EnvVar {
            name: "AWS_REGION".to_owned(),
            value: Some("us-east-1".to_owned()),
            ..Default::default()
        });
    }
    env
}

/// The repository's directory for a file:// repository, which every node has at the same
/// place.
fn file_repository(
    repository: &BackupRepositorySpec,
    read_only: bool,
) -> Option<(Volume, VolumeMount)> {
    let path = repository.url.strip_prefix("file://")?;
    Some((
        Volume {
            name: "repository".to_owned(),
            host_path: Some(HostPathVolumeSource {
                path: path.to_owned(),
                type_: Some("Directory".to_owned()),
            }),
            ..Default::default()
        },
        VolumeMount {
            read_only: Some(read_only),
            ..mount("repository", path)
        },
    ))
}

/// PostgreSQL on the mount, pinned to the mount's node. It is not restarted in place: when it
/// exits the operator decides (a new mount session needs a new Pod anyway). To a point in time
/// (`replay`), it replays the repository's WAL through irctl, copied in by an init container
/// from the operator's image, and promotes at the target.
pub fn published_pod(
    ir: &InstantRecovery,
    image: &str,
    user: PostgresUser,
    mount_point: &PublishedMount<'_>,
    replay: Option<&Replay<'_>>,
) -> Pod {
    let name = recovery_name(ir);
    let mut metadata = meta(ir, published_pod_name(name), Some("published"));
    metadata
        .labels
        .get_or_insert_default()
        .insert(PRIMARY_LABEL.to_owned(), "true".to_owned());
    metadata.annotations = Some(BTreeMap::from([(
        MOUNTED_AT_ANNOTATION.to_owned(),
        mount_point.mounted_at.to_owned(),
    )]));
    let data_mount = VolumeMount {
        mount_propagation: Some("HostToContainer".to_owned()),
        ..mount("data", DATA_DIR)
    };
    let mut settings = vec![
        // Its WAL continues the original's timeline: never into the original's archive.
        ("archive_mode".to_owned(), "off".to_owned()),
        ("cluster_name".to_owned(), format!("{name}-published")),
    ];
    let mut mounts = vec![
        data_mount,
        mount("config", CONFIG_DIR),
        mount("run", SOCKET_DIR),
    ];
    let mut volumes = vec![
        Volume {
            name: "data".to_owned(),
            host_path: Some(HostPathVolumeSource {
                path: mount_point.host_path.to_owned(),
                type_: Some("Directory".to_owned()),
            }),
            ..Default::default()
        },
        config_volume(ir),
        socket_volume(),
    ];
    let mut env = Vec::new();
    let mut init_containers = None;
    if let Some(replay) = replay {
        settings.extend(ir_engine::point_in_time::recovery_settings(
            replay.point,
            &replay.fetch_command(),
        ));
        env.push(EnvVar {
            name: RECOVERY_SIGNAL_ENV.to_owned(),
            value: Some(
                "# instant-recovery: replay to the point in time, then promote.".to_owned(),
            ),
            ..Default::default()
        });
        env.extend(repository_env(replay.repository));
        volumes.push(Volume {
            name: "tools".to_owned(),
            empty_dir: Some(EmptyDirVolumeSource::default()),
            ..Default::default()
        });
        mounts.push(mount("tools", TOOLS_DIR));
        // Read-only: the published instance only fetches.
        if let Some((volume, repository_mount)) = file_repository(replay.repository, true) {
            volumes.push(volume);
            mounts.push(repository_mount);
        }
        init_containers = Some(vec![copy_irctl_container(replay.tools_image, user)]);
    }
    let settings: Vec<(&str, String)> = settings
        .iter()
        .map(|(name, value)| (name.as_str(), value.clone()))
        .collect();
    let mut postgres = postgres_container(
        image,
        user,
        DATA_DIR,
        &settings,
        ir.spec.postgres.resources.clone(),
        mounts,
        env,
    );
    // A replay that ends short says so in its last lines, which the operator reads from here.
    postgres.termination_message_policy = Some("FallbackToLogsOnError".to_owned());
    Pod {
        metadata,
        spec: Some(PodSpec {
            node_name: Some(mount_point.node.to_owned()),
            restart_policy: Some("Never".to_owned()),
            termination_grace_period_seconds: Some(60),
            security_context: Some(security_context(user)),
            tolerations: Some(vec![recovery_node_toleration()]),
            init_containers,
            containers: vec![postgres],
            volumes: Some(volumes),
            ..Default::default()
        }),
        ..Default::default()
    }
}

/// Copies the published instance once (a finished copy is kept across restarts), then runs
/// it as a hot standby streaming from the published instance.
const BASE_BACKUP_SCRIPT: &str = "set -e; d=/var/lib/instant-recovery/target/pgdata; \
if [ -f \"$d/backup_manifest\" ] && [ -f \"$d/standby.signal\" ]; then exit 0; fi; \
rm -rf \"$d\"; \
exec pg_basebackup --pgdata=\"$d\" --wal-method=stream --write-recovery-conf \
--checkpoint=fast --progress --no-password --host=\"$SOURCE_HOST\" --port=5432";

/// The standby on the target PVC, the primary after the switchover. Scheduled by the cluster
/// (its volume may bind anywhere).
pub fn target_pod(
    ir: &InstantRecovery,
    image: &str,
    user: PostgresUser,
    source_host: &str,
    replication_secret: &str,
) -> Pod {
    let name = recovery_name(ir);
    let target = target_name(name);
    let mounts = || {
        vec![
            mount("target", TARGET_MOUNT),
            mount("config", CONFIG_DIR),
            mount("run", SOCKET_DIR),
        ]
    };
    let base_backup = Container {
        name: "base-backup".to_owned(),
        image: Some(image.to_owned()),
        command: Some(vec![
            "sh".to_owned(),
            "-c".to_owned(),
            BASE_BACKUP_SCRIPT.to_owned(),
        ]),
        env: Some(vec![
            EnvVar {
                name: SOURCE_HOST_ENV.to_owned(),
                value: Some(source_host.to_owned()),
                ..Default::default()
            },
            secret_env("PGUSER", replication_secret, "username"),
            secret_env("PGPASSWORD", replication_secret, "password"),
        ]),
        volume_mounts: Some(mounts()),
        security_context: Some(container_security_context(user)),
        ..Default::default()
    };
    let settings = [
        ("cluster_name", standby_application_name(name)),
        ("hot_standby", "on".to_owned()),
        ("archive_mode", "off".to_owned()),
    ];
    Pod {
        metadata: meta(ir, target.clone(), Some("target")),
        spec: Some(PodSpec {
            restart_policy: Some("Always".to_owned()),
            termination_grace_period_seconds: Some(60),
            security_context: Some(security_context(user)),
            init_containers: Some(vec![base_backup]),
            containers: vec![postgres_container(
                image,
                user,
                TARGET_DATA_DIR,
                &settings,
                ir.spec.target.resources.clone(),
                mounts(),
                Vec::new(),
            )],
            volumes: Some(vec![
                Volume {
                    name: "target".to_owned(),
                    persistent_volume_claim: Some(PersistentVolumeClaimVolumeSource {
                        claim_name: target,
                        read_only: Some(false),
                    }),
                    ..Default::default()
                },
                config_volume(ir),
                socket_volume(),
            ]),
            ..Default::default()
        }),
        ..Default::default()
    }
}

#[cfg(test)]
pub(crate) mod tests;

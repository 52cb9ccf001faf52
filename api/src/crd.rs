//! The custom resources of group `instantrecovery.dev`, version `v1alpha1`. Doc comments are
//! what `kubectl explain` shows; schema rules (patterns, ranges, CEL) make the API server refuse
//! a bad manifest with a message that names the field.

use k8s_openapi::api::core::v1::ResourceRequirements;
use k8s_openapi::api::networking::v1::NetworkPolicyPeer;
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition;
use kube::{CustomResource, KubeSchema};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::GoDuration;
use crate::point_in_time::{PointInTime, RecoverableWindow};
use crate::recovery::{PublishPolicy, RecoveryMode, RecoveryStatus, RetryPolicy, SwitchoverPolicy};

pub const GROUP: &str = "instantrecovery.dev";
/// Label with the InstantRecovery's name on everything the operator makes for it.
pub const RECOVERY_LABEL: &str = "instantrecovery.dev/recovery";
/// `"true"` on the Pod the recovery's Service sends clients to: the published one, then the
/// target after the switchover.
pub const PRIMARY_LABEL: &str = "instantrecovery.dev/primary";
/// The container of a recovery's Pods that runs PostgreSQL.
pub const POSTGRES_CONTAINER: &str = "postgres";

/// CEL rule for an optional int-or-string quantity: well formed and greater than zero.
const POSITIVE_QUANTITY: &str =
    "isQuantity(string(self)) && quantity(string(self)).isGreaterThan(quantity('0'))";

/// Label on a RecoveryMount naming its node: the agent of that node selects its mounts by it.
pub const NODE_LABEL: &str = "instantrecovery.dev/node";
/// Finalizer of the node agent on a RecoveryMount: unmount and wipe the IRCache first.
pub const AGENT_FINALIZER: &str = "instantrecovery.dev/agent";
/// Finalizer of the operator on an InstantRecovery: tear down in order first.
pub const OPERATOR_FINALIZER: &str = "instantrecovery.dev/operator";
/// The key of a BackupRepository's `encryptionSecret` that holds the repository's password.
pub const ENCRYPTION_PASSWORD_KEY: &str = "password";
/// Annotation of an InstantRecovery a manual retry sets (any new value starts a new round of
/// attempts).
pub const RETRY_ANNOTATION: &str = "instantrecovery.dev/retry";
/// Annotation of an InstantRecovery that gives it up: before the switchover began everything it
/// made is torn down and it ends Aborted; after, it is refused (a Warning Event says so).
pub const ABORT_ANNOTATION: &str = "instantrecovery.dev/abort";
/// Node annotation the agent refreshes: RFC 3339 time of its last heartbeat. A node without a
/// recent one has no working agent.
pub const AGENT_HEARTBEAT_ANNOTATION: &str = "instantrecovery.dev/agent-heartbeat";
/// Node annotation the agent refreshes: free bytes on its IRCache file system.
pub const CACHE_FREE_ANNOTATION: &str = "instantrecovery.dev/cache-free-bytes";
/// Node label the chart's agent DaemonSet selects by default: the nodes that serve recoveries.
pub const RECOVERY_NODE_LABEL: &str = "instantrecovery.dev/recovery-node";

fn mount_reason_schema(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
    crate::reason::reason_schema(
        "CamelCase cause of a failure; `transient` says whether a retry may succeed.",
        true,
    )
}

/// Kubernetes' conditions, their `reason` listing every reason as `kubectl explain` shows it.
fn conditions_schema(generator: &mut schemars::SchemaGenerator) -> schemars::Schema {
    let mut schema = generator.subschema_for::<Vec<Condition>>();
    let reason = schema
        .pointer_mut("/items/properties/reason")
        .expect("metav1.Condition has a reason");
    *reason = crate::reason::reason_schema("CamelCase word a program can match on.", false).into();
    schema
}

/// CEL rule of a point in time: exactly one target.
const ONE_TARGET: &str = "[has(self.time), has(self.lsn), has(self.xid), has(self.name), has(self.immediate) && self.immediate].filter(t, t).size() == 1";

/// CEL rule of a repository: an S3 repository names a credentials Secret, or opts in to the
/// operator's and agents' own credentials.
const S3_CREDENTIALS_RULE: &str = "!self.url.startsWith('s3://') || has(self.credentialsSecret) || (has(self.s3) && has(self.s3.useAmbientCredentials) && self.s3.useAmbientCredentials)";

/// What to recover and how: the backup, the node it is served from, the production storage its
/// data moves to, and when to switch over.
#[derive(CustomResource, KubeSchema, Serialize, Deserialize, Debug, Clone, PartialEq)]
#[x_kube(validation = Rule::new("has(self.pointInTime) == has(oldSelf.pointInTime)").message("spec.pointInTime cannot be added or removed once the recovery exists"))]
#[kube(
    group = "instantrecovery.dev",
    version = "v1alpha1",
    kind = "InstantRecovery",
    doc = "Brings a PostgreSQL backup online at once from its repository, copies it to production storage while it serves, and switches over to the copy.",
    namespaced,
    status = "RecoveryStatus",
    shortname = "ir",
    category = "instantrecovery",
    printcolumn = r#"{"name": "Phase", "type": "string", "jsonPath": ".status.phase"}"#,
    printcolumn = r#"{"name": "Progress", "type": "integer", "jsonPath": ".status.progress.percentCopied", "description": "percent of the data copied to the target"}"#,
    printcolumn = r#"{"name": "Lag", "type": "integer", "jsonPath": ".status.progress.lagBytes", "description": "bytes of WAL the target has still to replay"}"#,
    printcolumn = r#"{"name": "Reason", "type": "string", "jsonPath": ".status.reason", "priority": 1}"#,
    printcolumn = r#"{"name": "Age", "type": "date", "jsonPath": ".metadata.creationTimestamp"}"#
)]
#[serde(rename_all = "camelCase")]
pub struct InstantRecoverySpec {
    /// `Recover` (the default) brings the backup online, copies it to the target and switches
    /// over. `Publish` brings it online to look at (query it, dump tables) and stops at phase
    /// Published until `publish.ttl` ends or the recovery is deleted. A Publish may change to
    /// Recover, which goes on from the published instance to sync and switchover; not back.
    #[x_kube(validation = Rule::new("self == oldSelf || (oldSelf == 'Publish' && self == 'Recover')").message("spec.mode may only change from Publish to Recover"))]
    #[serde(default)]
    pub mode: RecoveryMode,
    /// How a Publish ends.
    #[serde(default, skip_serializing_if = "PublishPolicy::is_default")]
    pub publish: PublishPolicy,
    /// The backup to bring online. It cannot change once the recovery exists.
    #[x_kube(validation = Rule::new("self == oldSelf").message("spec.backup cannot change once the recovery exists"))]
    pub backup: BackupSource,
    /// Node to run the published instance on. Empty: the operator picks a node whose agent has
    /// room for the IRCache.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub node_name: Option<String>,
    pub postgres: PostgresSpec,
    #[serde(default)]
    pub cache: CacheSpec,
    /// Production storage the data moves to.
    #[serde(default)]
    pub target: TargetSpec,
    #[serde(default)]
    pub switchover: SwitchoverPolicy,
    #[serde(default)]
    pub retry: RetryPolicy,
    /// Recover to a point in time: the published instance replays the repository's WAL up to
    /// the target, then promotes; sync and switchover go on from there. With `backup.id:
    /// latest` the newest backup that ends before the target is chosen. It cannot change once
    /// the recovery exists.
    #[x_kube(validation = Rule::new(ONE_TARGET).message("spec.pointInTime: give exactly one of time, lsn, xid, name or immediate"))]
    #[x_kube(validation = Rule::new("self == oldSelf").message("spec.pointInTime cannot change once the recovery exists"))]
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub point_in_time: Option<PointInTime>,
    /// What stays after the switchover; by default nothing but the target.
    #[serde(default)]
    pub retain: RetainSpec,
    /// Who may reach PostgreSQL over the network.
    #[serde(default, skip_serializing_if = "NetworkSpec::is_default")]
    pub network: NetworkSpec,
}

/// The NetworkPolicy `<name>-postgres` the operator writes for the recovery's Pods (when the
/// installation has recovery NetworkPolicies on, the chart's `networkPolicy.recoveries`). It
/// always admits the operator and the recovery's own Pods (the standby copies from the
/// published instance) to port 5432.
#[derive(Serialize, Deserialize, JsonSchema, Debug, Clone, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct NetworkSpec {
    /// The clients admitted to port 5432, as NetworkPolicy peers (`podSelector`,
    /// `namespaceSelector`, `ipBlock`). Unset: every Pod of the recovery's namespace. An empty
    /// list: no client but the operator and the recovery's own Pods.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub clients: Option<Vec<NetworkPolicyPeer>>,
}

impl NetworkSpec {
    fn is_default(&self) -> bool {
        *self == NetworkSpec::default()
    }
}

/// Which backup, from which repository.
#[derive(Serialize, Deserialize, JsonSchema, Debug, Clone, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct BackupSource {
    /// A BackupRepository in the same namespace.
    pub repository_ref: LocalRef,
    /// Backup id (as `irctl backup list` shows it), or `latest`, resolved once at validation.
    #[serde(default = "latest")]
    #[schemars(regex(pattern = r"^(latest|[A-Za-z0-9-]+)$"))]
    pub id: String,
}

fn latest() -> String {
    "latest".to_owned()
}

/// A reference to an object of the same namespace.
#[derive(Serialize, Deserialize, JsonSchema, Debug, Clone, PartialEq, Eq)]
pub struct LocalRef {
    /// Name of the object.
    #[schemars(length(min = 1, max = 253))]
    pub name: String,
}

/// The PostgreSQL that serves the backup and then the target.
#[derive(Serialize, Deserialize, JsonSchema, Debug, Clone, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct PostgresSpec {
    /// Container image; default `postgres:<major version of the backup>`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub image: Option<String>,
    /// Secret with `username` and `password` of a superuser role of the backed-up database.
    /// The operator connects as it to watch progress and to switch over.
    pub credentials_secret: LocalRef,
    /// Secret with `username` and `password` of the replication user the standby connects as.
    /// Default: a generated Secret `<name>-replication`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub replication_secret: Option<LocalRef>,
    /// Resources of the published instance's container.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resources: Option<ResourceRequirements>,
}

/// The IRCache on the node: every write of the published instance until the switchover.
#[derive(Serialize, Deserialize, KubeSchema, Debug, Clone, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct CacheSpec {
    /// Most space the IRCache may use on the node (a quantity such as `20Gi`); the node must
    /// have it free at validation.
    #[x_kube(validation = Rule::new(POSITIVE_QUANTITY).message("spec.cache.sizeLimit must be a positive quantity such as 20Gi"))]
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub size_limit: Option<Quantity>,
}

/// The standby on production storage, the primary after the switchover.
#[derive(Serialize, Deserialize, KubeSchema, Debug, Clone, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct TargetSpec {
    /// StorageClass of the target PVC; empty: the cluster's default.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub storage_class_name: Option<String>,
    /// Size of the target PVC (a quantity such as `100Gi`); default: the backup's size plus 25 %.
    #[x_kube(validation = Rule::new(POSITIVE_QUANTITY).message("spec.target.size must be a positive quantity such as 100Gi"))]
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub size: Option<Quantity>,
    /// Resources of the standby's container.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resources: Option<ResourceRequirements>,
}

/// Parts of the recovery kept after the switchover. The target PVC is always kept: it is the
/// database now, and deleting the InstantRecovery does not delete it.
#[derive(Serialize, Deserialize, JsonSchema, Debug, Clone, Default, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct RetainSpec {
    /// Keep the RecoveryMount (the backup stays mounted over its IRCache, holding every write
    /// the published instance made) until the InstantRecovery is deleted, for inspection.
    #[serde(default)]
    pub cache: bool,
}

/// Where the repository is and how to reach it.
#[derive(CustomResource, KubeSchema, Serialize, Deserialize, Debug, Clone, PartialEq)]
#[kube(
    group = "instantrecovery.dev",
    version = "v1alpha1",
    kind = "BackupRepository",
    doc = "A backup repository the recoveries of this namespace read from.",
    namespaced,
    status = "BackupRepositoryStatus",
    shortname = "brepo",
    category = "instantrecovery",
    printcolumn = r#"{"name": "URL", "type": "string", "jsonPath": ".spec.url"}"#,
    printcolumn = r#"{"name": "Reachable", "type": "string", "jsonPath": ".status.conditions[?(@.type==\"Reachable\")].status"}"#,
    printcolumn = r#"{"name": "Backups", "type": "integer", "jsonPath": ".status.backupCount"}"#,
    printcolumn = r#"{"name": "Age", "type": "date", "jsonPath": ".metadata.creationTimestamp"}"#
)]
#[x_kube(validation = Rule::new(S3_CREDENTIALS_RULE).field_path(".credentialsSecret").reason(Reason::FieldValueRequired).message("an s3:// repository needs a credentials Secret, unless s3.useAmbientCredentials is true"))]
#[serde(rename_all = "camelCase")]
pub struct BackupRepositorySpec {
    /// `s3://bucket/prefix`, or `file:///path` for a path every node mounts at the same place.
    /// A `file://` path must lie inside one of the directories the installation allows (the
    /// chart's `repositories.fileRoots`), symlinks resolved; no `.` or `..` in it.
    #[x_kube(validation = Rule::new("self.matches('^s3://[^/]+') || self.matches('^file:///.')").message("url must be s3://<bucket>/<prefix> or file:///<path>"))]
    pub url: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub s3: Option<S3Spec>,
    /// Secret with `AWS_ACCESS_KEY_ID` and `AWS_SECRET_ACCESS_KEY`. Required for an `s3://`
    /// repository unless `s3.useAmbientCredentials` is true.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub credentials_secret: Option<LocalRef>,
    /// An encrypted repository (`irctl repo init --encryption`): the Secret whose key
    /// `password` holds its password. The operator (to list and validate), the agents (to
    /// mount) and the published Pods of recoveries to a point in time (to fetch WAL) read it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub encryption_secret: Option<LocalRef>,
    /// How long one read may retry an unreachable repository before it fails.
    #[serde(default = "default_read_deadline")]
    pub read_deadline: GoDuration,
}

fn default_read_deadline() -> GoDuration {
    GoDuration(std::time::Duration::from_secs(30))
}

/// Settings for S3-compatible servers.
#[derive(Serialize, Deserialize, KubeSchema, Debug, Clone, Default, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct S3Spec {
    /// Endpoint URL (`https://...`, or `http://...` with `allowHttp`); default AWS.
    #[x_kube(validation = Rule::new("self.startsWith('https://') || self.startsWith('http://')").message("endpoint must be an http:// or https:// URL"))]
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub endpoint: Option<String>,
    /// Region of the bucket; when unset, `us-east-1` (with `useAmbientCredentials`, the reading
    /// process's `AWS_REGION` first).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub region: Option<String>,
    /// Allow plain http to the endpoint.
    #[serde(default)]
    pub allow_http: bool,
    /// Without `credentialsSecret`, read the bucket with the operator's and the agents' own
    /// credentials (their environment, instance profile or workload identity). Off by default:
    /// a repository without a Secret is refused. The installation must allow it too (the
    /// chart's `repositories.allowAmbientCredentials`), since everyone who may create a
    /// BackupRepository could then read what those credentials reach.
    #[serde(default)]
    pub use_ambient_credentials: bool,
}

/// What the operator last saw of the repository.
#[derive(Serialize, Deserialize, JsonSchema, Debug, Clone, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct BackupRepositoryStatus {
    /// The `metadata.generation` this status is about.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    /// `Reachable`: the repository answered the last check. `Ready` says the same for tools
    /// that read `Ready` (Argo CD, kstatus, `kubectl wait`).
    #[serde(default)]
    #[schemars(schema_with = "conditions_schema")]
    pub conditions: Vec<Condition>,
    /// Number of backups in the repository.
    #[serde(default)]
    pub backup_count: u32,
    /// The most recent backups, newest first.
    #[serde(default)]
    pub backups: Vec<ListedBackup>,
    /// The last retention run of a ScheduledBackup writing to this repository.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retention: Option<crate::backup::RetentionResult>,
}

/// One backup of the repository.
#[derive(Serialize, Deserialize, JsonSchema, Debug, Clone, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct ListedBackup {
    #[serde(flatten)]
    pub info: crate::recovery::BackupInfo,
    /// When the backup was taken (RFC 3339).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(with = "Option<String>", extend("format" = "date-time"))]
    pub created_at: Option<jiff::Timestamp>,
    /// What the backup can be recovered to (`spec.pointInTime` of a recovery), from the WAL
    /// the repository holds for it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub recoverable_window: Option<RecoverableWindow>,
}

/// The backup to mount, on which node, for which file owner.
#[derive(CustomResource, KubeSchema, Serialize, Deserialize, Debug, Clone, PartialEq)]
#[kube(
    group = "instantrecovery.dev",
    version = "v1alpha1",
    kind = "RecoveryMount",
    doc = "The operator's request to the agent of one node: mount a backup with an IRCache. Created and deleted by the operator, one per InstantRecovery.",
    namespaced,
    status = "RecoveryMountStatus",
    shortname = "rmount",
    category = "instantrecovery",
    printcolumn = r#"{"name": "Node", "type": "string", "jsonPath": ".spec.nodeName"}"#,
    printcolumn = r#"{"name": "Phase", "type": "string", "jsonPath": ".status.phase"}"#,
    printcolumn = r#"{"name": "Cache used", "type": "integer", "jsonPath": ".status.cacheUsedBytes"}"#,
    printcolumn = r#"{"name": "Age", "type": "date", "jsonPath": ".metadata.creationTimestamp"}"#
)]
#[serde(rename_all = "camelCase")]
pub struct RecoveryMountSpec {
    /// The node whose agent mounts.
    #[schemars(length(min = 1))]
    pub node_name: String,
    /// Repository URL and settings, copied from the BackupRepository.
    pub repository: BackupRepositorySpec,
    /// The resolved backup id.
    #[schemars(regex(pattern = r"^[A-Za-z0-9-]+$"))]
    pub backup_id: String,
    /// Most space the IRCache may use, from the recovery's `spec.cache.sizeLimit`.
    #[x_kube(validation = Rule::new(POSITIVE_QUANTITY).message("spec.sizeLimit must be a positive quantity such as 20Gi"))]
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub size_limit: Option<Quantity>,
    /// Owner of the mounted files (the PostgreSQL container's user).
    #[schemars(range(max = u32::MAX))]
    pub uid: u32,
    /// Group of the mounted files (the PostgreSQL container's group).
    #[schemars(range(max = u32::MAX))]
    pub gid: u32,
    /// Bumped by the operator to ask for a new attempt after a failure.
    #[serde(default)]
    #[schemars(range(max = u32::MAX))]
    pub attempt: u32,
}

/// `Pending` until the agent has mounted, `Mounted` while it serves, `Failed` when it cannot
/// (see `reason`, `message` and `transient`).
#[derive(Serialize, Deserialize, JsonSchema, Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum MountPhase {
    #[default]
    Pending,
    Mounted,
    Failed,
}

/// The agent's report on the mount.
#[derive(Serialize, Deserialize, JsonSchema, Debug, Clone, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct RecoveryMountStatus {
    #[serde(default)]
    pub phase: MountPhase,
    /// The attempt this status is about.
    #[serde(default)]
    pub attempt: u32,
    /// Host path of the mount.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mount_path: Option<String>,
    /// When the current FUSE session started. A new value means the agent mounted again (after
    /// a restart): processes that had files open on the old session must restart.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mounted_at: Option<jiff::Timestamp>,
    /// Bytes read from the repository since the mount.
    #[serde(default)]
    pub bytes_fetched: u64,
    /// Bytes the IRCache uses on the node.
    #[serde(default)]
    pub cache_used_bytes: u64,
    /// Free bytes on the node's IRCache file system.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cache_free_bytes: Option<u64>,
    // CamelCase cause of a failure; the schema lists every reason.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(schema_with = "mount_reason_schema")]
    pub reason: Option<String>,
    /// What failed, for people.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
    /// Whether a new attempt may succeed where this one failed.
    #[serde(default)]
    pub transient: bool,
    /// `Mounted`: the backup is mounted and served.
    #[serde(default)]
    #[schemars(schema_with = "conditions_schema")]
    pub conditions: Vec<Condition>,
}

/// Every CRD as (file name, YAML), as `crdgen` writes them into `crds/`.
pub fn all_yaml() -> Vec<(String, String)> {
    use kube::CustomResourceExt;
    [
        InstantRecovery::crd(),
        BackupRepository::crd(),
        RecoveryMount::crd(),
        crate::backup::Backup::crd(),
        crate::backup::ScheduledBackup::crd(),
    ]
    .into_iter()
    .map(|crd| {
        let file = format!("{}.yaml", crd.spec.names.plural);
        let yaml = serde_norway::to_string(&crd).expect("a CRD serialises to YAML");
        let header =
            "# Generated by `cargo run -p ir-api --bin crdgen` from api/src/crd.rs: do not edit.\n";
        (file, format!("{header}{yaml}"))
    })
    .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use kube::CustomResourceExt;

    #[test]
    fn names_follow_the_contract() {
        for (crd, kind, short) in [
            (InstantRecovery::crd(), "InstantRecovery", "ir"),
            (BackupRepository::crd(), "BackupRepository", "brepo"),
            (RecoveryMount::crd(), "RecoveryMount", "rmount"),
            (crate::backup::Backup::crd(), "Backup", "irbackup"),
            (
                crate::backup::ScheduledBackup::crd(),
                "ScheduledBackup",
                "irsched",
            ),
        ] {
            assert_eq!(crd.spec.group, GROUP);
            assert_eq!(crd.spec.scope, "Namespaced");
            assert_eq!(crd.spec.names.kind, kind);
            assert_eq!(
                crd.spec.names.short_names.as_deref(),
                Some(&[short.to_owned()][..])
            );
            let version = &crd.spec.versions[0];
            assert_eq!(version.name, "v1alpha1");
            assert!(
                version
                    .subresources
                    .as_ref()
                    .and_then(|s| s.status.as_ref())
                    .is_some()
            );
        }
        let columns: Vec<_> = InstantRecovery::crd().spec.versions[0]
            .additional_printer_columns
            .clone()
            .unwrap()
            .into_iter()
            .map(|c| c.name)
            .collect();
        assert_eq!(columns, ["Phase", "Progress", "Lag", "Reason", "Age"]);
    }

    #[test]
    fn a_minimal_manifest_gets_the_defaults() {
        let spec: InstantRecoverySpec = serde_json::from_str(
            r#"{"backup": {"repositoryRef": {"name": "prod"}},
                "postgres": {"credentialsSecret": {"name": "db-superuser"}}}"#,
        )
        .unwrap();
        assert_eq!(spec.backup.id, "latest");
        assert_eq!(spec.retry, RetryPolicy::default());
        assert_eq!(spec.switchover, SwitchoverPolicy::default());
    }

    /// `kubectl explain` lists every reason under each `reason` of every status.
    #[test]
    fn every_status_reason_lists_the_reasons() {
        fn reasons(schema: &serde_json::Value, path: String, found: &mut Vec<String>) {
            let Some(properties) = schema.get("properties").and_then(|p| p.as_object()) else {
                if let Some(items) = schema.get("items") {
                    reasons(items, format!("{path}[]"), found);
                }
                return;
            };
            for (name, property) in properties {
                let path = format!("{path}.{name}");
                if name == "reason" {
                    let description = property["description"].as_str().unwrap_or_default();
                    assert!(
                        description.contains(&crate::reason::reasons_for_explain()),
                        "{path} does not list the reasons"
                    );
                    found.push(path);
                } else {
                    reasons(property, path, found);
                }
            }
        }
        for crd in [
            InstantRecovery::crd(),
            BackupRepository::crd(),
            RecoveryMount::crd(),
        ] {
            let schema = serde_json::to_value(&crd.spec.versions[0].schema).unwrap();
            let status = &schema["openAPIV3Schema"]["properties"]["status"];
            let mut found = Vec::new();
            reasons(status, "status".into(), &mut found);
            assert!(
                found.contains(&"status.conditions[].reason".to_owned()),
                "{}: {found:?}",
                crd.spec.names.kind
            );
        }
    }
}

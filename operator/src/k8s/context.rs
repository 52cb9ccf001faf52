//! What every part of the operator shares: how it runs (its settings), the context of each
//! reconcile (client, Event recorder, metrics, error backoff), and its error.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use ir_api::RepositoryPolicy;
use ir_engine::postgres::{PgError, SwitchoverTimeouts};
use kube::runtime::controller::Action;
use kube::runtime::events::{Recorder, Reporter};
use kube::{Client, Resource, ResourceExt};

use super::metrics::Metrics;
use super::resources::{OperatorPeer, PostgresUser};

/// Field manager of everything the operator applies.
pub const FIELD_MANAGER: &str = "instant-recovery-operator";

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("Kubernetes API: {0}")]
    Kube(#[from] kube::Error),
    #[error(transparent)]
    Finalizer(Box<kube::runtime::finalizer::Error<Error>>),
    #[error("teardown is waiting for {0}")]
    TeardownPending(String),
    #[error(transparent)]
    Postgres(#[from] PgError),
    #[error("{0}")]
    Serialize(#[from] serde_json::Error),
}

/// How the operator runs; the defaults suit the official `postgres` images.
#[derive(Debug, Clone)]
pub struct Settings {
    pub postgres_user: PostgresUser,
    /// A node's agent counts as alive while its heartbeat is younger than this; a published
    /// instance that exited gets this long for its agent to come back before it counts as failed.
    pub agent_timeout: Duration,
    pub switchover: SwitchoverTimeouts,
    /// How often BackupRepositories are checked.
    pub repository_poll: Duration,
    /// Only these namespaces; all when empty.
    pub namespaces: Vec<String>,
    /// Where `file://` repositories may lie, and whether a repository may opt in to the
    /// operator's own S3 credentials.
    pub repositories: RepositoryPolicy,
    /// Write a NetworkPolicy for each recovery's Pods, admitting the operator's Pods named here.
    pub network_policy: Option<OperatorPeer>,
    /// The image whose irctl a published instance replaying to a point in time fetches WAL with.
    pub tools_image: String,
}

/// The tools image of this release: the operator's own.
pub const DEFAULT_TOOLS_IMAGE: &str = concat!(
    "ghcr.io/instant-recovery/instant-recovery:",
    env!("CARGO_PKG_VERSION")
);

impl Default for Settings {
    fn default() -> Self {
        Settings {
            postgres_user: PostgresUser { uid: 999, gid: 999 },
            agent_timeout: Duration::from_secs(90),
            switchover: SwitchoverTimeouts::default(),
            repository_poll: Duration::from_secs(300),
            namespaces: Vec::new(),
            repositories: RepositoryPolicy::default(),
            network_policy: None,
            tools_image: DEFAULT_TOOLS_IMAGE.to_owned(),
        }
    }
}

pub struct Context {
    pub client: Client,
    pub settings: Settings,
    pub recorder: Recorder,
    pub metrics: Arc<Metrics>,
    /// Consecutive reconcile errors per object, for the error backoff.
    failures: Mutex<HashMap<String, u32>>,
}

impl Context {
    pub fn new(
        client: Client,
        settings: Settings,
        instance: String,
        metrics: Arc<Metrics>,
    ) -> Context {
        let reporter = Reporter {
            controller: FIELD_MANAGER.to_owned(),
            instance: Some(instance),
        };
        Context {
            recorder: Recorder::new(client.clone(), reporter),
            client,
            settings,
            metrics,
            failures: Mutex::default(),
        }
    }

    /// Exponential backoff from 1 s to 5 min over consecutive errors of one object.
    pub(super) fn backoff(&self, key: &str) -> Duration {
        let mut failures = self.failures.lock().expect("backoff map");
        let n = failures.entry(key.to_owned()).or_default();
        *n = n.saturating_add(1);
        Duration::from_secs(1u64 << (*n - 1).min(8)).min(Duration::from_secs(300))
    }

    pub(super) fn succeeded(&self, key: &str) {
        self.failures.lock().expect("backoff map").remove(key);
    }
}

/// `Kind/namespace/name`: an object's key in the back-off map and in logs.
pub(super) fn object_key<K: Resource<DynamicType = ()>>(object: &K) -> String {
    format!(
        "{}/{}/{}",
        K::kind(&()),
        object.namespace().unwrap_or_default(),
        object.name_any()
    )
}

/// The span of one reconcile of `object`.
pub(super) fn reconcile_span<K: Resource<DynamicType = ()>>(object: &K) -> tracing::Span {
    tracing::info_span!(
        "reconcile",
        kind = %K::kind(&()),
        namespace = %object.namespace().unwrap_or_default(),
        object = %object.name_any()
    )
}

/// The error policy the Backup, ScheduledBackup and BackupRepository controllers share: log
/// it, and try the object again after its back-off.
pub(super) fn back_off<K: Resource<DynamicType = ()>>(
    object: Arc<K>,
    error: &Error,
    ctx: Arc<Context>,
) -> Action {
    let _span = reconcile_span(object.as_ref()).entered();
    let key = object_key(object.as_ref());
    let wait = ctx.backoff(&key);
    tracing::warn!(object = %key, %error, retry_in = ?wait, "reconcile failed");
    Action::requeue(wait)
}

//! The Kubernetes driver: controllers for InstantRecovery (through the same state machine as
//! the local driver) and BackupRepository, run by the `ir-operator` binary.
//!
//! The operator never touches a node: the agent of the chosen node mounts (RecoveryMount), the
//! kubelet runs PostgreSQL in Pods, and the operator reaches PostgreSQL over TCP at the Pod IPs
//! as the superuser named by `spec.postgres.credentialsSecret`.

mod driver;
pub mod leader;
pub mod metrics;
mod objects;
pub mod recovery;
mod report;
pub mod repository;
pub mod resources;

use std::collections::{BTreeMap, HashMap};
use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::StreamExt;
use ir_api::crd::{BackupRepository, BackupRepositorySpec, InstantRecovery, RecoveryMount};
use ir_repository::{RepoLocation, S3Credentials};
use k8s_openapi::api::core::v1::{ConfigMap, PersistentVolumeClaim, Pod, Secret, Service};
use k8s_openapi::api::networking::v1::NetworkPolicy;
use kube::runtime::controller::Controller;
use kube::runtime::events::{Recorder, Reporter};
use kube::runtime::reflector::Store;
use kube::runtime::watcher;
use kube::{Api, Client};
use tokio::signal::unix::{SignalKind, signal};
use tokio::sync::watch;

use ir_api::{Reason, RepositoryPolicy};
use ir_engine::machine::Failure;
use ir_engine::postgres::{PgError, SwitchoverTimeouts};
use leader::{Elector, LeaderError, LeaseConfig};
use metrics::Metrics;
use resources::PostgresUser;

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
}

/// The operator's Pods, as a NetworkPolicy peer: its namespace and the labels of its Pods.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OperatorPeer {
    pub namespace: String,
    pub labels: BTreeMap<String, String>,
}

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
    fn backoff(&self, key: &str) -> Duration {
        let mut failures = self.failures.lock().expect("backoff map");
        let n = failures.entry(key.to_owned()).or_default();
        *n = n.saturating_add(1);
        Duration::from_secs(1u64 << (*n - 1).min(8)).min(Duration::from_secs(300))
    }

    fn succeeded(&self, key: &str) {
        self.failures.lock().expect("backoff map").remove(key);
    }
}

fn api<K>(client: &Client, namespace: Option<&str>) -> Api<K>
where
    K: kube::Resource<Scope = k8s_openapi::NamespaceResourceScope, DynamicType = ()>,
{
    match namespace {
        Some(ns) => Api::namespaced(client.clone(), ns),
        None => Api::all(client.clone()),
    }
}

/// Resolves once SIGTERM or SIGINT came; clones share the signal.
#[derive(Clone)]
struct Shutdown(watch::Receiver<bool>);

impl Shutdown {
    fn on_signals() -> std::io::Result<Shutdown> {
        let mut term = signal(SignalKind::terminate())?;
        let mut int = signal(SignalKind::interrupt())?;
        let (tx, rx) = watch::channel(false);
        tokio::spawn(async move {
            tokio::select! {
                _ = term.recv() => tracing::info!("SIGTERM: stopping"),
                _ = int.recv() => tracing::info!("SIGINT: stopping"),
            }
            let _ = tx.send(true);
        });
        Ok(Shutdown(rx))
    }

    fn wait(&self) -> impl Future<Output = ()> + Send + Sync + 'static {
        let mut rx = self.0.clone();
        async move {
            // An error means the sender is gone, which it is only after sending.
            let _ = rx.wait_for(|stop| *stop).await;
        }
    }
}

/// Runs both controllers until SIGTERM or SIGINT. With `election`, only while this process
/// holds the leader Lease: it waits for it first, and gives it up when it stops. Fails when
/// the Lease was lost: the caller should exit, as the controllers were stopped mid-work.
pub async fn run(
    client: Client,
    settings: Settings,
    instance: String,
    metrics: Arc<Metrics>,
    election: Option<LeaseConfig>,
) -> Result<(), LeaderError> {
    let shutdown = Shutdown::on_signals().expect("installing signal handlers");
    let mut elector = election.map(|config| Elector::new(client.clone(), config));
    if let Some(elector) = &mut elector {
        tracing::info!("waiting for the leader Lease");
        tokio::select! {
            _ = elector.acquire() => {}
            _ = shutdown.wait() => return Ok(()),
        }
    }
    metrics.set_leader(true);
    let ctx = Arc::new(Context::new(
        client.clone(),
        settings,
        instance,
        metrics.clone(),
    ));
    let controllers = controllers(&client, ctx, shutdown);
    let outcome = match &mut elector {
        None => {
            controllers.await;
            Ok(())
        }
        Some(elector) => {
            let lost = tokio::select! {
                _ = controllers => None,
                lost = elector.hold() => Some(lost),
            };
            match lost {
                None => {
                    elector.release().await;
                    Ok(())
                }
                Some(lost) => Err(lost),
            }
        }
    };
    metrics.set_leader(false);
    outcome
}

/// The controllers, one set per watched namespace (or one for all namespaces). The objects a
/// recovery owns are watched by the label the operator puts on them, so that the operator never
/// lists other objects of those kinds; Secrets are not watched at all (the operator only gets
/// the ones a spec names, and creates the replication Secret again whenever it is missing).
async fn controllers(client: &Client, ctx: Arc<Context>, shutdown: Shutdown) {
    let scopes: Vec<Option<String>> = if ctx.settings.namespaces.is_empty() {
        vec![None]
    } else {
        ctx.settings.namespaces.iter().cloned().map(Some).collect()
    };
    let mut stores: Vec<Store<InstantRecovery>> = Vec::new();
    let mut running = Vec::new();
    for scope in &scopes {
        let (store, work) = scope_controllers(client, ctx.clone(), &shutdown, scope.as_deref());
        stores.push(store);
        running.push(work);
    }
    ctx.metrics.watch_recoveries(stores);
    futures::future::join_all(running).await;
}

/// The controllers of one namespace (all when `None`): the store of its InstantRecoveries and
/// the work that runs them until shutdown.
fn scope_controllers(
    client: &Client,
    ctx: Arc<Context>,
    shutdown: &Shutdown,
    ns: Option<&str>,
) -> (
    Store<InstantRecovery>,
    impl Future<Output = ()> + Send + 'static,
) {
    let owned = || watcher::Config::default().labels(resources::MANAGED_BY_SELECTOR);
    let recoveries = Controller::new(
        api::<InstantRecovery>(client, ns),
        watcher::Config::default(),
    );
    let store = recoveries.store();
    let mut recoveries = recoveries
        .owns(api::<RecoveryMount>(client, ns), owned())
        .owns(api::<Pod>(client, ns), owned())
        .owns(api::<Service>(client, ns), owned())
        .owns(api::<PersistentVolumeClaim>(client, ns), owned())
        .owns(api::<ConfigMap>(client, ns), owned());
    if ctx.settings.network_policy.is_some() {
        recoveries = recoveries.owns(api::<NetworkPolicy>(client, ns), owned());
    }
    let recoveries = recoveries
        .graceful_shutdown_on(shutdown.wait())
        .run(recovery::reconcile, recovery::error_policy, ctx.clone())
        .for_each(|result| async move {
            if let Err(e) = result {
                tracing::debug!(error = %e, "InstantRecovery reconcile");
            }
        });
    let repositories = Controller::new(
        api::<BackupRepository>(client, ns),
        watcher::Config::default(),
    )
    .graceful_shutdown_on(shutdown.wait())
    .run(repository::reconcile, repository::error_policy, ctx)
    .for_each(|result| async move {
        if let Err(e) = result {
            tracing::debug!(error = %e, "BackupRepository reconcile");
        }
    });
    let work = async move {
        tokio::join!(recoveries, repositories);
    };
    (store, work)
}

/// A key of a Secret, from `data` or `stringData`.
pub fn secret_value(secret: &Secret, key: &str) -> Option<String> {
    if let Some(value) = secret.data.as_ref().and_then(|d| d.get(key)) {
        return String::from_utf8(value.0.clone()).ok();
    }
    secret
        .string_data
        .as_ref()
        .and_then(|d| d.get(key))
        .cloned()
}

/// Reads `keys` of Secret `name`: a missing Secret may still come (transient), a missing key
/// will not (permanent). `field` names the spec field in messages.
pub async fn read_secret(
    client: &Client,
    namespace: &str,
    name: &str,
    keys: &[&str],
    field: &str,
) -> Result<Vec<String>, Failure> {
    let secrets: Api<Secret> = Api::namespaced(client.clone(), namespace);
    let secret = match secrets.get_opt(name).await {
        Ok(Some(secret)) => secret,
        Ok(None) => {
            return Err(Failure::new(
                Reason::SecretNotFound,
                format!("{field}: Secret {namespace}/{name} does not exist"),
            ));
        }
        Err(e) => {
            return Err(Failure::new(
                Reason::KubernetesUnavailable,
                format!("reading Secret {namespace}/{name}: {e}"),
            ));
        }
    };
    keys.iter()
        .map(|key| {
            secret_value(&secret, key).ok_or_else(|| {
                Failure::new(
                    Reason::SecretKeyMissing,
                    format!("{field}: Secret {namespace}/{name} has no key {key:?}"),
                )
            })
        })
        .collect()
}

/// The failure of a repository check with the BackupRepository field it is about in front of
/// its message (`spec.url` of a path outside the file roots, `spec.credentialsSecret`...).
pub fn naming_repository_field(failure: Failure) -> Failure {
    let field = match failure.reason {
        Reason::RepositoryPathNotAllowed => "spec.url",
        Reason::CredentialsRequired => "spec.credentialsSecret",
        Reason::AmbientCredentialsNotAllowed => "spec.s3.useAmbientCredentials",
        _ => return failure,
    };
    if failure.message.starts_with(field) {
        return failure;
    }
    Failure {
        message: format!("{field}: {}", failure.message),
        ..failure
    }
}

/// Where a BackupRepository is and how to reach it, the key pair of its credentials Secret
/// included (see [`BackupRepositorySpec::location`]).
pub async fn repository_location(
    client: &Client,
    namespace: &str,
    spec: &BackupRepositorySpec,
    settings: &Settings,
) -> Result<RepoLocation, Failure> {
    let credentials = match &spec.credentials_secret {
        Some(secret) => {
            let values = read_secret(
                client,
                namespace,
                &secret.name,
                &["AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"],
                "spec.credentialsSecret",
            )
            .await?;
            Some(S3Credentials {
                access_key_id: values[0].clone(),
                secret_access_key: values[1].clone(),
            })
        }
        None => None,
    };
    spec.location(credentials, &settings.repositories, "spec")
}

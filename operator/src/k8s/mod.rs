//! The Kubernetes driver: controllers for InstantRecovery (through the same state machine as
//! the local driver), BackupRepository, Backup (a Job each) and ScheduledBackup, run by the
//! `ir-operator` binary.
//!
//! The operator never touches a node: the agent of the chosen node mounts (RecoveryMount), the
//! kubelet runs PostgreSQL in Pods, and the operator reaches PostgreSQL over TCP at the Pod IPs
//! as the superuser named by `spec.postgres.credentialsSecret`.

mod backup;
mod context;
mod driver;
pub mod leader;
mod location;
pub mod metrics;
mod objects;
pub mod recovery;
mod report;
pub mod repository;
pub mod resources;
mod scheduled;
mod secrets;

pub use context::{Context, DEFAULT_TOOLS_IMAGE, Error, FIELD_MANAGER, Settings};
pub use location::repository_location;
pub use resources::OperatorPeer;
pub use secrets::{read_secret, secret_value};

use std::future::Future;
use std::sync::Arc;

use futures::StreamExt;
use ir_api::backup::{Backup, ScheduledBackup};
use ir_api::crd::{BackupRepository, InstantRecovery, RecoveryMount};
use k8s_openapi::api::batch::v1::Job;
use k8s_openapi::api::core::v1::{ConfigMap, PersistentVolumeClaim, Pod, Service};
use k8s_openapi::api::networking::v1::NetworkPolicy;
use kube::runtime::controller::Controller;
use kube::runtime::reflector::Store;
use kube::runtime::watcher;
use kube::{Api, Client};
use tokio::signal::unix::{SignalKind, signal};
use tokio::sync::watch;

use leader::{Elector, LeaderError, LeaseConfig};
use metrics::Metrics;

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
    .run(repository::reconcile, context::back_off, ctx.clone())
    .for_each(|result| async move {
        if let Err(e) = result {
            tracing::debug!(error = %e, "BackupRepository reconcile");
        }
    });
    let backups = Controller::new(api::<Backup>(client, ns), watcher::Config::default())
        .owns(api::<Job>(client, ns), owned())
        .graceful_shutdown_on(shutdown.wait())
        .run(backup::reconcile, context::back_off, ctx.clone())
        .for_each(|result| async move {
            if let Err(e) = result {
                tracing::debug!(error = %e, "Backup reconcile");
            }
        });
    let schedules = Controller::new(
        api::<ScheduledBackup>(client, ns),
        watcher::Config::default(),
    )
    .owns(api::<Backup>(client, ns), owned())
    .graceful_shutdown_on(shutdown.wait())
    .run(scheduled::reconcile, context::back_off, ctx)
    .for_each(|result| async move {
        if let Err(e) = result {
            tracing::debug!(error = %e, "ScheduledBackup reconcile");
        }
    });
    let work = async move {
        tokio::join!(recoveries, repositories, backups, schedules);
    };
    (store, work)
}

//! The node agent (one per node, a DaemonSet): mounts the RecoveryMounts of its node and
//! reports on them, unmounts and wipes their IRCache when they go, and tells the operator it is
//! alive through annotations on its Node.
//!
//! The FUSE sessions live in this process. When it exits, however it exits, the kernel ends
//! them: PostgreSQL on a mount sees ENOTCONN and stops. The IRCache keeps everything that was
//! fsynced, and on SIGTERM everything written; the next agent clears the stale mount, mounts
//! the same cache again and reports a new `mountedAt`, from which the operator knows to restart
//! PostgreSQL.

mod disk;
mod metrics;
pub mod plan;

use std::collections::HashMap;
use std::future::Future;
use std::io;
use std::os::unix::fs::DirBuilderExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::StreamExt;
use ir_api::crd::{
    AGENT_FINALIZER, AGENT_HEARTBEAT_ANNOTATION, CACHE_FREE_ANNOTATION, ENCRYPTION_PASSWORD_KEY,
    NODE_LABEL, RecoveryMount, RecoveryMountStatus,
};
use ir_repository::{RepoError, Repository, S3Credentials};
use jiff::{Timestamp, Unit};
use k8s_openapi::api::core::v1::{Node, Secret};
use kube::api::{Api, Patch, PatchParams};
use kube::runtime::controller::{Action, Controller};
use kube::runtime::finalizer::{self, Event, finalizer};
use kube::runtime::watcher;
use kube::{Client, Resource, ResourceExt};
use prometheus_client::registry::Registry;
use tokio::runtime::Handle;
use tracing::Instrument;

use crate::{MountError, MountOptions, Mounted, clear_stale_mount, is_fuse_mount, mount_backup};
use ir_api::{Failure, Reason, RepositoryPolicy};
use plan::{CacheFigures, Decision, LocalMount};

/// Field manager of everything the agent writes.
pub const FIELD_MANAGER: &str = "instant-recovery-agent";
/// Keys of the repository credentials Secret.
pub const ACCESS_KEY_ID: &str = "AWS_ACCESS_KEY_ID";
pub const SECRET_ACCESS_KEY: &str = "AWS_SECRET_ACCESS_KEY";

/// How often a mounted RecoveryMount's figures are refreshed.
const REFRESH: Duration = Duration::from_secs(10);
/// How often the Node's annotations are refreshed.
const HEARTBEAT: Duration = Duration::from_secs(30);
/// How long an unmount waits for the FUSE session to end before detaching it.
const UNMOUNT_WAIT: Duration = Duration::from_secs(10);
/// Longest wait between retries of a RecoveryMount whose reconciliation keeps failing.
const MAX_BACKOFF: Duration = Duration::from_secs(60);

#[derive(Debug, Clone)]
pub struct AgentConfig {
    pub node_name: String,
    /// Mounts go to `<mount_root>/<RecoveryMount uid>`: unique, unlike `<namespace>-<name>`
    /// (`a-b/c` and `a/b-c` would share one).
    pub mount_root: PathBuf,
    /// IRCaches go to `<cache_root>/ircache/<RecoveryMount uid>`.
    pub cache_root: PathBuf,
    /// Where `file://` repositories may lie, and whether a repository may opt in to this
    /// process's own S3 credentials.
    pub repositories: RepositoryPolicy,
    /// Only the RecoveryMounts of these namespaces; all when empty.
    pub namespaces: Vec<String>,
    /// Each mount's in-memory chunk cache, bytes: most of what a mount adds to the agent's
    /// memory.
    pub memory_cache_bytes: u64,
    /// What the agent's mounts may take of memory in all, bytes: a mount that would pass it gets
    /// a smaller memory cache, or waits (`AgentMemoryFull`). `None`: mounts are not counted.
    pub memory_budget_bytes: Option<u64>,
}

#[derive(Debug, thiserror::Error)]
pub enum AgentError {
    #[error("Kubernetes API: {0}")]
    Kube(#[from] kube::Error),
    #[error("{}: {source}", path.display())]
    Io {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("RecoveryMount {0} has no namespace or uid")]
    Incomplete(String),
    #[error("{} is still mounted after unmounting it", .0.display())]
    StillMounted(PathBuf),
    #[error("a blocking task failed: {0}")]
    Join(#[from] tokio::task::JoinError),
    #[error(transparent)]
    Finalizer(Box<finalizer::Error<AgentError>>),
}

fn io_err(path: &Path) -> impl FnOnce(io::Error) -> AgentError + '_ {
    move |source| AgentError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// What this process did for a RecoveryMount. `uid` is its `metadata.uid`: a recreated object
/// of the same name is another mount.
enum Held {
    Mount {
        uid: String,
        mounted_at: Timestamp,
        mounted: Mounted,
        /// What its IRCache took on disk when last measured.
        ircache_bytes: u64,
        /// The memory cache it was given within the agent's memory budget.
        memory_cache_bytes: u64,
    },
    Failed {
        uid: String,
        attempt: u32,
    },
}

/// Where one RecoveryMount lives on this node.
struct Target {
    /// `namespace/name`.
    key: String,
    namespace: String,
    name: String,
    uid: String,
    mount_path: PathBuf,
    cache_dir: PathBuf,
}

pub struct Agent {
    client: Client,
    config: AgentConfig,
    /// By `namespace/name`; shared with the metrics, which read the mounts' counters.
    held: Arc<Mutex<HashMap<String, Held>>>,
    /// Consecutive failed reconciliations per RecoveryMount, for the backoff.
    failures: Mutex<HashMap<String, u32>>,
    /// The memory cache of each mount held or being mounted, by `namespace/name`: what the
    /// memory budget is shared among.
    memory_caches: Mutex<HashMap<String, u64>>,
    mount_failures: metrics::MountFailures,
}

impl Agent {
    /// Creates the mount and cache roots if needed. Paths are made canonical, as the kernel's
    /// mount table shows them.
    pub fn new(client: Client, mut config: AgentConfig) -> Result<Agent, AgentError> {
        let ircache = config.cache_root.join("ircache");
        std::fs::DirBuilder::new()
            .recursive(true)
            // IRCaches hold database files: for root only.
            .mode(0o700)
            .create(&ircache)
            .map_err(io_err(&ircache))?;
        std::fs::create_dir_all(&config.mount_root).map_err(io_err(&config.mount_root))?;
        config.mount_root = config
            .mount_root
            .canonicalize()
            .map_err(io_err(&config.mount_root))?;
        config.cache_root = config
            .cache_root
            .canonicalize()
            .map_err(io_err(&config.cache_root))?;
        Ok(Agent {
            client,
            config,
            held: Arc::default(),
            failures: Mutex::new(HashMap::new()),
            memory_caches: Mutex::new(HashMap::new()),
            mount_failures: metrics::MountFailures::default(),
        })
    }

    /// The agent's metrics, read from its mounts at each scrape.
    pub fn metrics(&self) -> Registry {
        metrics::registry(
            self.held.clone(),
            self.config.memory_budget_bytes,
            self.mount_failures.clone(),
        )
    }

    /// Reconciles the RecoveryMounts of this node until `shutdown` resolves, then returns
    /// without unmounting: see the module documentation.
    pub async fn run(self, shutdown: impl Future<Output = ()> + Send + Sync + 'static) {
        let agent = Arc::new(self);
        let heartbeat = tokio::spawn(heartbeat(agent.clone()));
        let selector = format!("{NODE_LABEL}={}", agent.config.node_name);
        tracing::info!(
            node = %agent.config.node_name,
            mount_root = %agent.config.mount_root.display(),
            cache_root = %agent.config.cache_root.display(),
            file_roots = ?agent.config.repositories.file_roots,
            allow_ambient_credentials = agent.config.repositories.allow_ambient_credentials,
            namespaces = ?agent.config.namespaces,
            "agent started"
        );
        let apis: Vec<Api<RecoveryMount>> = if agent.config.namespaces.is_empty() {
            vec![Api::all(agent.client.clone())]
        } else {
            agent
                .config
                .namespaces
                .iter()
                .map(|ns| Api::namespaced(agent.client.clone(), ns))
                .collect()
        };
        let shutdown = futures::FutureExt::shared(shutdown);
        let controllers = apis.into_iter().map(|api| {
            Controller::new(api, watcher::Config::default().labels(&selector))
                .graceful_shutdown_on(shutdown.clone())
                .run(reconcile, error_policy, agent.clone())
                .for_each(|result| async move {
                    match result {
                        Ok((obj, _)) => tracing::debug!(mount = %obj, "reconciled"),
                        // error_policy has logged it.
                        Err(kube::runtime::controller::Error::ReconcilerFailed(..)) => {}
                        Err(e) => tracing::warn!(error = %e, "watching RecoveryMounts"),
                    }
                })
        });
        futures::future::join_all(controllers).await;
        heartbeat.abort();
        agent.leave_mounts().await;
    }

    /// Flushes every mount, then keeps the sessions out of reach of any destructor: dropping
    /// one unmounts, which would pull the data directory from under PostgreSQL for nothing,
    /// since the mount ends with the process anyway and the next agent mounts the same IRCache
    /// again. Only what is written between the flush and the exit is lost.
    async fn leave_mounts(&self) {
        let mounts: Vec<(String, Mounted)> = self
            .held
            .lock()
            .expect("held lock")
            .drain()
            .filter_map(|(key, held)| match held {
                Held::Mount { mounted, .. } => Some((key, mounted)),
                Held::Failed { .. } => None,
            })
            .collect();
        let count = mounts.len();
        let left = tokio::task::spawn_blocking(move || {
            for (key, mounted) in mounts {
                if let Err(e) = mounted.flush() {
                    tracing::error!(mount = %key, error = %e, "flushing the IRCache at shutdown");
                }
                std::mem::forget(mounted);
            }
        })
        .await;
        if let Err(e) = left {
            tracing::error!(error = %e, "flushing the IRCaches at shutdown");
        }
        tracing::info!(mounts = count, "stopping; the mounts end with this process");
    }

    /// Records the size of the IRCache of `key` and returns the bytes its mount has read from
    /// the repository; 0 when this process holds none.
    fn refresh_figures(&self, key: &str, figures: &CacheFigures) -> u64 {
        match self.held.lock().expect("held lock").get_mut(key) {
            Some(Held::Mount {
                mounted,
                ircache_bytes,
                ..
            }) => {
                *ircache_bytes = figures.used_bytes;
                mounted.bytes_fetched()
            }
            _ => 0,
        }
    }

    fn target(&self, rm: &RecoveryMount) -> Result<Target, AgentError> {
        let name = rm.name_any();
        let (Some(namespace), Some(uid)) = (rm.namespace(), rm.uid()) else {
            return Err(AgentError::Incomplete(name));
        };
        Ok(Target {
            key: format!("{namespace}/{name}"),
            mount_path: self.config.mount_root.join(&uid),
            cache_dir: self.config.cache_root.join("ircache").join(&uid),
            namespace,
            name,
            uid,
        })
    }

    fn local_mount(&self, target: &Target) -> LocalMount {
        match self.held.lock().expect("held lock").get(&target.key) {
            None => LocalMount::None,
            Some(Held::Mount {
                uid, mounted_at, ..
            }) if *uid == target.uid => {
                if is_fuse_mount(&target.mount_path) {
                    LocalMount::Alive {
                        mounted_at: *mounted_at,
                    }
                } else {
                    LocalMount::Dead
                }
            }
            Some(Held::Failed { uid, attempt }) if *uid == target.uid => {
                LocalMount::Failed { attempt: *attempt }
            }
            // Left from an object of the same name that was deleted and created again.
            Some(Held::Mount { .. }) => LocalMount::Dead,
            Some(Held::Failed { .. }) => LocalMount::None,
        }
    }

    async fn apply(
        &self,
        api: &Api<RecoveryMount>,
        rm: &RecoveryMount,
    ) -> Result<Action, AgentError> {
        let target = self.target(rm)?;
        let decision = plan::decide(
            rm.spec.attempt,
            rm.status.as_ref(),
            self.local_mount(&target),
        );
        match decision {
            Decision::Refresh { mounted_at } => {
                let figures = self.cache_figures(&target.cache_dir).await?;
                let bytes_fetched = self.refresh_figures(&target.key, &figures);
                let status = plan::mounted_status(
                    rm.spec.attempt,
                    &target.mount_path.display().to_string(),
                    mounted_at,
                    bytes_fetched,
                    figures,
                    rm.status.as_ref(),
                    Timestamp::now(),
                );
                write_status(api, &target.name, &status).await?;
                Ok(Action::requeue(REFRESH))
            }
            Decision::KeepFailed => Ok(Action::await_change()),
            Decision::Mount => self.mount(api, rm, &target).await,
        }
    }

    async fn mount(
        &self,
        api: &Api<RecoveryMount>,
        rm: &RecoveryMount,
        target: &Target,
    ) -> Result<Action, AgentError> {
        let lost = self.held.lock().expect("held lock").remove(&target.key);
        if let Some(Held::Mount { mounted, .. }) = lost {
            tracing::warn!(mount = %target.key, path = %target.mount_path.display(), "the mount was lost; mounting again");
            unmount(mounted).await?;
        }
        let attempt = rm.spec.attempt;
        let mount_path = target.mount_path.display().to_string();
        let figures = self.cache_figures(&target.cache_dir).await?;
        let pending = plan::pending_status(
            attempt,
            &mount_path,
            figures,
            rm.status.as_ref(),
            Timestamp::now(),
        );
        write_status(api, &target.name, &pending).await?;

        match self.try_mount(rm, target).await? {
            Ok((mounted, memory_cache_bytes)) => {
                let mounted_at = Timestamp::now();
                let bytes_fetched = mounted.bytes_fetched();
                let figures = self.cache_figures(&target.cache_dir).await?;
                self.held.lock().expect("held lock").insert(
                    target.key.clone(),
                    Held::Mount {
                        uid: target.uid.clone(),
                        mounted_at,
                        mounted,
                        ircache_bytes: figures.used_bytes,
                        memory_cache_bytes,
                    },
                );
                tracing::info!(mount = %target.key, attempt, path = %mount_path, backup = %rm.spec.backup_id, memory_cache_mib = memory_cache_bytes >> 20, "mounted");
                let status = plan::mounted_status(
                    attempt,
                    &mount_path,
                    mounted_at,
                    bytes_fetched,
                    figures,
                    Some(&pending),
                    mounted_at,
                );
                write_status(api, &target.name, &status).await?;
                Ok(Action::requeue(REFRESH))
            }
            Err(failure) => {
                tracing::warn!(mount = %target.key, attempt, reason = %failure.reason, transient = failure.transient, "{}", failure.message);
                self.mount_failures
                    .get_or_create(&[("reason", failure.reason.as_str())])
                    .inc();
                let status = plan::failed_status(
                    attempt,
                    &failure,
                    figures,
                    Some(&pending),
                    Timestamp::now(),
                );
                write_status(api, &target.name, &status).await?;
                self.held.lock().expect("held lock").insert(
                    target.key.clone(),
                    Held::Failed {
                        uid: target.uid.clone(),
                        attempt,
                    },
                );
                Ok(Action::await_change())
            }
        }
    }

    /// The mount and the memory cache it was given, or why this attempt failed; `Err` only for
    /// what a retry of the reconciliation should settle (the API server, a failed task).
    async fn try_mount(
        &self,
        rm: &RecoveryMount,
        target: &Target,
    ) -> Result<Result<(Mounted, u64), Failure>, AgentError> {
        let spec = &rm.spec;
        let credentials = match &spec.repository.credentials_secret {
            None => None,
            Some(secret) => match self.credentials(&target.namespace, &secret.name).await? {
                Ok(credentials) => Some(credentials),
                Err(failure) => return Ok(Err(failure)),
            },
        };
        let password = match &spec.repository.encryption_secret {
            None => None,
            Some(secret) => match self.password(&target.namespace, &secret.name).await? {
                Ok(password) => Some(password),
                Err(failure) => return Ok(Err(failure)),
            },
        };
        let repositories = &self.config.repositories;
        let location =
            match spec
                .repository
                .location(credentials, password, repositories, "spec.repository")
            {
                Ok(location) => location,
                Err(failure) => return Ok(Err(failure)),
            };
        let url = spec.repository.url.as_str();
        let opened = tokio::time::timeout(location.read_deadline, async {
            let repo = Repository::open(&location).await?;
            let manifest = repo.load_manifest(&spec.backup_id).await?;
            Ok::<_, RepoError>((repo, manifest))
        })
        .await;
        let (repo, manifest) = match opened {
            Ok(Ok(found)) => found,
            Ok(Err(e)) => return Ok(Err(Failure::from(&e).naming("spec.repository"))),
            Err(_) => {
                return Ok(Err(Failure::new(
                    Reason::RepositoryUnavailable,
                    format!(
                        "repository {url} did not answer within {} (spec.repository.readDeadline)",
                        spec.repository.read_deadline
                    ),
                )));
            }
        };
        if let Some(limit) = &spec.size_limit
            && let Err(failure) = self.check_room(&limit.0, &target.cache_dir).await?
        {
            return Ok(Err(failure));
        }
        if let Err(e) = prepare_mount_point(&target.mount_path) {
            return Ok(Err(Failure::new(
                Reason::MountPointError,
                format!("mount point {}: {e}", target.mount_path.display()),
            )));
        }
        let mut options = MountOptions::new(target.mount_path.clone(), target.cache_dir.clone());
        options.uid = Some(spec.uid);
        options.gid = Some(spec.gid);
        let memory_cache_bytes = match self.reserve_memory_cache(&target.key) {
            Ok(bytes) => bytes,
            Err(failure) => return Ok(Err(failure)),
        };
        options.memory_cache_bytes = memory_cache_bytes;
        let runtime = Handle::current();
        let mounted =
            tokio::task::spawn_blocking(move || mount_backup(repo, manifest, &options, runtime))
                .await?;
        if mounted.is_err() {
            self.release_memory_cache(&target.key);
        }
        Ok(mounted
            .map(|mounted| (mounted, memory_cache_bytes))
            .map_err(|e: MountError| plan::mount_failure(&e)))
    }

    /// The memory cache of the mount `key` is about to make, counted against the budget until
    /// released; a mount that does not fit is a transient failure.
    fn reserve_memory_cache(&self, key: &str) -> Result<u64, Failure> {
        let mut caches = self.memory_caches.lock().expect("memory caches lock");
        let mut others: Vec<u64> = caches
            .iter()
            .filter(|(held, _)| held.as_str() != key)
            .map(|(_, &bytes)| bytes)
            .collect();
        let configured = self.config.memory_cache_bytes;
        let budget = self.config.memory_budget_bytes;
        let Some(bytes) = plan::memory_cache_within(budget, configured, &others) else {
            let mib = |bytes: u64| bytes >> 20;
            others.sort_unstable();
            let held: Vec<String> = others.iter().map(|&b| mib(b).to_string()).collect();
            return Err(Failure::new(
                Reason::AgentMemoryFull,
                format!(
                    "the memory budget of the agent of node {} ({} MiB, --memory-budget-mib) is \
                     held by {} mounts (memory caches of {} MiB, each mount {} MiB besides, the \
                     agent {} MiB): another needs {} MiB; retried when one ends",
                    self.config.node_name,
                    mib(budget.unwrap_or_default()),
                    others.len(),
                    held.join(", "),
                    mib(plan::MOUNT_OVERHEAD_BYTES),
                    mib(plan::AGENT_BASE_BYTES),
                    mib(plan::MOUNT_OVERHEAD_BYTES + plan::MIN_MEMORY_CACHE_BYTES.min(configured)),
                ),
            ));
        };
        if bytes < configured {
            tracing::info!(
                mount = key,
                memory_cache_mib = bytes >> 20,
                "memory cache made smaller to fit the agent's memory budget"
            );
        }
        caches.insert(key.to_owned(), bytes);
        Ok(bytes)
    }

    fn release_memory_cache(&self, key: &str) {
        self.memory_caches
            .lock()
            .expect("memory caches lock")
            .remove(key);
    }

    /// The access key pair in the repository's Secret.
    async fn credentials(
        &self,
        namespace: &str,
        name: &str,
    ) -> Result<Result<S3Credentials, Failure>, AgentError> {
        let field = "spec.repository.credentialsSecret";
        let keys = [ACCESS_KEY_ID, SECRET_ACCESS_KEY];
        // A trailing newline is a common slip when the Secret is made by hand.
        Ok(self
            .secret_texts(namespace, name, field, &keys, str::trim)
            .await?
            .map(|mut values| S3Credentials {
                secret_access_key: values.pop().unwrap_or_default(),
                access_key_id: values.pop().unwrap_or_default(),
            }))
    }

    /// The password of an encrypted repository, byte for byte as the Secret holds it (as the
    /// operator and the published Pod's `IR_REPO_PASSWORD` read it).
    async fn password(
        &self,
        namespace: &str,
        name: &str,
    ) -> Result<Result<String, Failure>, AgentError> {
        let field = "spec.repository.encryptionSecret";
        Ok(self
            .secret_texts(namespace, name, field, &[ENCRYPTION_PASSWORD_KEY], |t| t)
            .await?
            .map(|mut values| values.pop().unwrap_or_default()))
    }

    /// The values of `keys` in Secret `namespace/name` (named by `field`) as text, each passed
    /// through `clean`; a missing Secret or key, or a value that is not text or is empty once
    /// cleaned, is a failure naming it.
    async fn secret_texts(
        &self,
        namespace: &str,
        name: &str,
        field: &str,
        keys: &[&str],
        clean: fn(&str) -> &str,
    ) -> Result<Result<Vec<String>, Failure>, AgentError> {
        let secrets: Api<Secret> = Api::namespaced(self.client.clone(), namespace);
        let what = format!("Secret {namespace}/{name} ({field})");
        let invalid = |message: String| Failure::new(Reason::InvalidCredentialsSecret, message);
        let Some(secret) = secrets.get_opt(name).await? else {
            return Ok(Err(invalid(format!("{what} not found"))));
        };
        Ok(keys
            .iter()
            .map(|key| {
                let bytes = secret.data.as_ref().and_then(|data| data.get(*key));
                match bytes.map(|b| std::str::from_utf8(&b.0).map(clean)) {
                    Some(Ok(text)) if !text.is_empty() => Ok(text.to_owned()),
                    Some(Err(_)) => Err(invalid(format!("{what}: {key} is not UTF-8 text"))),
                    _ => Err(invalid(format!("{what} has no {key}"))),
                }
            })
            .collect())
    }

    /// The cache file system has room for `size_limit`, counting what this IRCache already
    /// holds (a remount after a restart).
    async fn check_room(
        &self,
        size_limit: &str,
        cache_dir: &Path,
    ) -> Result<Result<(), Failure>, AgentError> {
        let Some(limit) = ir_api::quantity_bytes(size_limit) else {
            return Ok(Err(Failure::new(
                Reason::InvalidSizeLimit,
                format!("spec.sizeLimit {size_limit:?} is not a quantity of bytes"),
            )));
        };
        let figures = self.cache_figures(cache_dir).await?;
        let free = figures.free_bytes.unwrap_or(0);
        if free.saturating_add(figures.used_bytes) < limit {
            return Ok(Err(Failure::new(
                Reason::CacheTooSmall,
                format!(
                    "spec.sizeLimit is {size_limit} but the IRCache file system of node {} ({}) has {free} bytes free",
                    self.config.node_name,
                    self.config.cache_root.display()
                ),
            )));
        }
        Ok(Ok(()))
    }

    /// Unmounts (lazily if files are still open) and wipes the IRCache. Idempotent, and fine
    /// when nothing was ever mounted or the mount is stale after a restart.
    async fn cleanup(&self, rm: &RecoveryMount) -> Result<Action, AgentError> {
        let target = self.target(rm)?;
        let held = self.held.lock().expect("held lock").remove(&target.key);
        if let Some(Held::Mount { mounted, .. }) = held {
            unmount(mounted).await?;
        }
        self.release_memory_cache(&target.key);
        let path = target.mount_path.clone();
        let cache_dir = target.cache_dir.clone();
        tokio::task::spawn_blocking(move || {
            clear_stale_mount(&path).map_err(io_err(&path))?;
            if is_fuse_mount(&path) {
                return Err(AgentError::StillMounted(path));
            }
            remove(&path, |p| std::fs::remove_dir(p))?;
            remove(&cache_dir, |p| std::fs::remove_dir_all(p))
        })
        .await??;
        tracing::info!(mount = %target.key, path = %target.mount_path.display(), "unmounted; IRCache wiped");
        Ok(Action::await_change())
    }

    async fn cache_figures(&self, cache_dir: &Path) -> Result<CacheFigures, AgentError> {
        let cache_dir = cache_dir.to_path_buf();
        let root = self.config.cache_root.clone();
        tokio::task::spawn_blocking(move || {
            Ok(CacheFigures {
                used_bytes: disk::used_bytes(&cache_dir).map_err(io_err(&cache_dir))?,
                free_bytes: Some(disk::free_bytes(&root).map_err(io_err(&root))?),
            })
        })
        .await?
    }
}

/// Ends a session of this process; what is left mounted (files still open) is detached.
async fn unmount(mounted: Mounted) -> Result<(), AgentError> {
    let result = tokio::task::spawn_blocking(move || mounted.unmount(UNMOUNT_WAIT)).await?;
    match result {
        Ok(()) => Ok(()),
        Err(MountError::MountPoint(path, source)) => Err(AgentError::Io { path, source }),
        // Flushing failed: the cache is about to be wiped or mounted again, which finds what
        // was made durable.
        Err(e) => {
            tracing::warn!(error = %e, "unmounting");
            Ok(())
        }
    }
}

fn remove(path: &Path, remove: impl FnOnce(&Path) -> io::Result<()>) -> Result<(), AgentError> {
    match remove(path) {
        Err(e) if e.kind() != io::ErrorKind::NotFound => Err(io_err(path)(e)),
        _ => Ok(()),
    }
}

/// A directory to mount on; a dead mount there (the previous agent's) is cleared first.
fn prepare_mount_point(path: &Path) -> io::Result<()> {
    clear_stale_mount(path)?;
    std::fs::create_dir_all(path)
}

async fn write_status(
    api: &Api<RecoveryMount>,
    name: &str,
    status: &RecoveryMountStatus,
) -> Result<(), AgentError> {
    let patch = serde_json::json!({
        "apiVersion": RecoveryMount::api_version(&()),
        "kind": RecoveryMount::kind(&()),
        "status": status,
    });
    api.patch_status(
        name,
        &PatchParams::apply(FIELD_MANAGER).force(),
        &Patch::Apply(&patch),
    )
    .await?;
    Ok(())
}

async fn reconcile(rm: Arc<RecoveryMount>, agent: Arc<Agent>) -> Result<Action, AgentError> {
    let namespace = rm
        .namespace()
        .ok_or_else(|| AgentError::Incomplete(rm.name_any()))?;
    let key = format!("{namespace}/{}", rm.name_any());
    let api: Api<RecoveryMount> = Api::namespaced(agent.client.clone(), &namespace);
    let (agent_ref, api_ref) = (&agent, &api);
    let span = tracing::info_span!("reconcile", namespace = %namespace, object = %rm.name_any());
    let action = finalizer(&api, AGENT_FINALIZER, rm, |event| async move {
        match event {
            Event::Apply(rm) => agent_ref.apply(api_ref, &rm).await,
            Event::Cleanup(rm) => agent_ref.cleanup(&rm).await,
        }
    })
    .instrument(span)
    .await
    .map_err(|e| AgentError::Finalizer(Box::new(e)))?;
    agent.failures.lock().expect("failures lock").remove(&key);
    Ok(action)
}

fn error_policy(rm: Arc<RecoveryMount>, error: &AgentError, agent: Arc<Agent>) -> Action {
    let key = format!("{}/{}", rm.namespace().unwrap_or_default(), rm.name_any());
    let failures = {
        let mut all = agent.failures.lock().expect("failures lock");
        let n = all.entry(key.clone()).or_default();
        *n = n.saturating_add(1);
        *n
    };
    let delay = Duration::from_secs(1 << failures.min(6)).min(MAX_BACKOFF);
    tracing::warn!(mount = %key, error = %error, retry_in = ?delay, "reconciliation failed");
    Action::requeue(delay)
}

/// Refreshes the Node's annotations: the operator picks nodes whose agent is alive and whose
/// cache file system has room.
async fn heartbeat(agent: Arc<Agent>) {
    let nodes: Api<Node> = Api::all(agent.client.clone());
    let params = PatchParams {
        field_manager: Some(FIELD_MANAGER.to_owned()),
        ..Default::default()
    };
    let mut tick = tokio::time::interval(HEARTBEAT);
    loop {
        tick.tick().await;
        let free = match disk::free_bytes(&agent.config.cache_root) {
            Ok(free) => free,
            Err(e) => {
                tracing::warn!(error = %e, cache_root = %agent.config.cache_root.display(), "statvfs");
                continue;
            }
        };
        let now = Timestamp::now()
            .round(Unit::Second)
            .unwrap_or_else(|_| Timestamp::now());
        let patch = serde_json::json!({"metadata": {"annotations": {
            AGENT_HEARTBEAT_ANNOTATION: now.to_string(),
            CACHE_FREE_ANNOTATION: free.to_string(),
        }}});
        match nodes
            .patch(&agent.config.node_name, &params, &Patch::Merge(&patch))
            .await
        {
            Ok(_) => tracing::debug!(free, "heartbeat"),
            Err(e) => {
                tracing::warn!(node = %agent.config.node_name, error = %e, "heartbeat on the Node")
            }
        }
    }
}

//! The node agent as a child process against a real control plane: mount, files and writes,
//! restart with the same IRCache, failures (missing backup, unreachable repository, bad
//! Secret, no room), new attempts, deletion, Node heartbeat; RecoveryMounts whose
//! `<namespace>-<name>` collide mounted apart; repositories outside the file roots and S3
//! without a Secret refused.

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::net::SocketAddr;
use std::os::unix::fs::{FileExt, MetadataExt};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use ir_api::GoDuration;
use ir_api::crd::{
    AGENT_FINALIZER, AGENT_HEARTBEAT_ANNOTATION, BackupRepositorySpec, CACHE_FREE_ANNOTATION,
    LocalRef, MountPhase, NODE_LABEL, RecoveryMount, RecoveryMountSpec, RecoveryMountStatus,
    S3Spec,
};
use ir_e2e::cluster::{ControlPlane, Identity};
use ir_e2e::pattern;
use ir_repository::{Progress, RepoLocation, Repository};
use k8s_openapi::ByteString;
use k8s_openapi::api::core::v1::{Node, Secret};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use kube::api::{Api, DeleteParams, ObjectMeta, Patch, PatchParams, PostParams};

const NODE: &str = "node-a";
const NAMESPACE: &str = "db";
const UID: u32 = 4321;
const GID: u32 = 4322;
const WAIT: Duration = Duration::from_secs(60);

/// The rules the agent needs, bound to its ServiceAccount.
const AGENT_RBAC: &str = r#"
apiVersion: rbac.authorization.k8s.io/v1
kind: ClusterRole
metadata:
  name: instant-recovery-agent
rules:
  - apiGroups: ["instantrecovery.dev"]
    resources: ["recoverymounts"]
    verbs: ["list", "watch", "patch"]
  - apiGroups: ["instantrecovery.dev"]
    resources: ["recoverymounts/status"]
    verbs: ["patch"]
  - apiGroups: [""]
    resources: ["secrets"]
    verbs: ["get"]
  - apiGroups: [""]
    resources: ["nodes"]
    verbs: ["patch"]
---
apiVersion: rbac.authorization.k8s.io/v1
kind: ClusterRoleBinding
metadata:
  name: instant-recovery-agent
roleRef:
  apiGroup: rbac.authorization.k8s.io
  kind: ClusterRole
  name: instant-recovery-agent
subjects:
  - kind: ServiceAccount
    name: ir-agent
    namespace: ir-system
"#;

/// A cleanly shut down pg_control: system identifier, state 1 (shut down), checkpoint, timeline.
fn pg_control() -> Vec<u8> {
    let mut b = vec![0u8; 8192];
    b[0..8].copy_from_slice(&7_311_234_567_890_123_456u64.to_le_bytes());
    b[16..20].copy_from_slice(&1u32.to_le_bytes());
    b[32..40].copy_from_slice(&0x1_0000_0028u64.to_le_bytes());
    b[48..52].copy_from_slice(&1u32.to_le_bytes());
    b
}

fn backup_files() -> BTreeMap<&'static str, Vec<u8>> {
    BTreeMap::from([
        ("PG_VERSION", b"16\n".to_vec()),
        ("global/pg_control", pg_control()),
        ("base/1/1259", pattern(300_000, 1)),
        ("postgresql.conf", b"shared_buffers = 128MB\n".to_vec()),
    ])
}

/// A file:// repository in `dir/repo` with one backup of `backup_files`; returns (URL, backup
/// id).
async fn make_backup(dir: &Path) -> (String, String) {
    make_marked_backup(dir, b"").await
}

/// As [`make_backup`], with a file `marker` holding `marker` (when not empty), which tells the
/// backups apart.
async fn make_marked_backup(dir: &Path, marker: &[u8]) -> (String, String) {
    let data = dir.join("data");
    let mut files = backup_files();
    if !marker.is_empty() {
        files.insert("marker", marker.to_vec());
    }
    for (path, content) in files {
        let p = data.join(path);
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        std::fs::write(&p, content).unwrap();
    }
    let url = format!("file://{}", dir.join("repo").display());
    let repo = Repository::init(&RepoLocation::new(&url), 64 * 1024)
        .await
        .expect("init repository");
    let manifest = repo
        .ingest_dir(&data, Arc::new(Progress::default()))
        .await
        .expect("ingest the data directory");
    (url, manifest.id)
}

/// The agent binary running for NODE; killed (SIGKILL) on drop.
struct AgentProcess {
    child: Child,
    log: PathBuf,
    metrics: SocketAddr,
}

impl AgentProcess {
    /// `file_root`: the only directory file:// repositories may lie in.
    fn start(
        kubeconfig: &Path,
        mount_root: &Path,
        cache_root: &Path,
        file_root: &Path,
        log: &Path,
    ) -> Self {
        Self::start_with(kubeconfig, mount_root, cache_root, file_root, log, &[])
    }

    /// [`AgentProcess::start`] with `extra` flags.
    fn start_with(
        kubeconfig: &Path,
        mount_root: &Path,
        cache_root: &Path,
        file_root: &Path,
        log: &Path,
        extra: &[&str],
    ) -> Self {
        let log_file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(log)
            .expect("open the agent log");
        // Tests run side by side: a free port.
        let metrics = SocketAddr::from(([127, 0, 0, 1], ir_e2e::free_port()));
        let child = Command::new(env!("CARGO_BIN_EXE_ir-agent"))
            .env("KUBECONFIG", kubeconfig)
            .env("NODE_NAME", NODE)
            .env("RUST_LOG", "info")
            .arg("--mount-root")
            .arg(mount_root)
            .arg("--cache-root")
            .arg(cache_root)
            .arg(format!("--file-roots={}", file_root.display()))
            .args(["--log-format", "text"])
            .arg("--metrics-address")
            .arg(metrics.to_string())
            .args(extra)
            .stdin(Stdio::null())
            .stdout(log_file.try_clone().unwrap())
            .stderr(log_file)
            .spawn()
            .expect("start ir-agent");
        AgentProcess {
            child,
            log: log.to_path_buf(),
            metrics,
        }
    }

    fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// SIGTERM, then the exit status.
    fn terminate(&mut self) -> std::process::ExitStatus {
        // SAFETY: kill(2) on our own child's pid.
        unsafe { libc::kill(self.child.id() as libc::pid_t, libc::SIGTERM) };
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                return status;
            }
            assert!(
                Instant::now() < deadline,
                "ir-agent still runs 20 s after SIGTERM\n{}",
                self.log_tail()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    fn log_tail(&self) -> String {
        let log = std::fs::read(&self.log).unwrap_or_default();
        String::from_utf8_lossy(&log[log.len().saturating_sub(4000)..]).into_owned()
    }
}

impl Drop for AgentProcess {
    fn drop(&mut self) {
        self.kill();
    }
}

/// Whatever a failing test leaves mounted under the root is stale once the agent is gone.
struct MountRoot(PathBuf);

impl Drop for MountRoot {
    fn drop(&mut self) {
        for entry in std::fs::read_dir(&self.0).into_iter().flatten().flatten() {
            let _ = ir_fuse::clear_stale_mount(&entry.path());
        }
    }
}

fn file_repository(url: &str) -> BackupRepositorySpec {
    BackupRepositorySpec {
        url: url.to_owned(),
        s3: None,
        credentials_secret: None,
        encryption_secret: None,
        read_deadline: GoDuration(Duration::from_secs(5)),
    }
}

fn recovery_mount(name: &str, repository: BackupRepositorySpec, backup_id: &str) -> RecoveryMount {
    let mut rm = RecoveryMount::new(
        name,
        RecoveryMountSpec {
            node_name: NODE.to_owned(),
            repository,
            backup_id: backup_id.to_owned(),
            size_limit: None,
            uid: UID,
            gid: GID,
            attempt: 0,
        },
    );
    rm.metadata.namespace = Some(NAMESPACE.to_owned());
    rm.metadata.labels = Some(BTreeMap::from([(NODE_LABEL.to_owned(), NODE.to_owned())]));
    rm
}

/// Polls until `done` holds for the RecoveryMount's status; panics with what it saw and the
/// agent's log otherwise.
async fn wait_status(
    api: &Api<RecoveryMount>,
    name: &str,
    agent: &AgentProcess,
    what: &str,
    done: impl Fn(&RecoveryMountStatus) -> bool,
) -> RecoveryMountStatus {
    let deadline = Instant::now() + WAIT;
    loop {
        let rm = api.get(name).await.expect("get the RecoveryMount");
        if let Some(status) = rm.status.as_ref().filter(|s| done(s)) {
            return status.clone();
        }
        if Instant::now() > deadline {
            panic!(
                "RecoveryMount {name}: not {what} after {WAIT:?}; status {:#?}\nagent log:\n{}",
                rm.status,
                agent.log_tail()
            );
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// The content of the IRCache's data files.
fn cache_data(cache_dir: &Path) -> Vec<Vec<u8>> {
    std::fs::read_dir(cache_dir.join("data"))
        .expect("the IRCache has a data directory")
        .map(|e| std::fs::read(e.unwrap().path()).unwrap())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn agent_mounts_survives_a_restart_reports_failures_and_cleans_up() {
    ir_e2e::require_fuse();
    let started = Instant::now();
    let cp = ControlPlane::start().await;
    cp.install_crds().await;
    cp.create_namespace(NAMESPACE).await;
    cp.create_namespace("ir-system").await;
    cp.apply_yaml(AGENT_RBAC)
        .await
        .expect("apply the agent's RBAC");
    let identity = cp.service_account("ir-system", "ir-agent").await;
    let admin = cp.admin();
    let node = Node {
        metadata: ObjectMeta {
            name: Some(NODE.to_owned()),
            ..Default::default()
        },
        ..Default::default()
    };
    let nodes: Api<Node> = Api::all(admin.clone());
    nodes
        .create(&PostParams::default(), &node)
        .await
        .expect("create the Node");
    let control_plane_ready = started.elapsed();

    let work = ir_e2e::shared_tempdir();
    let (url, backup_id) = make_backup(work.path()).await;
    let mount_root = work.path().join("mnt");
    let cache_root = work.path().join("cache");
    let _mounts = MountRoot(mount_root.clone());
    let log = work.path().join("agent.log");
    let start = || {
        AgentProcess::start(
            &identity.kubeconfig,
            &mount_root,
            &cache_root,
            work.path(),
            &log,
        )
    };
    let mut agent = start();

    let rms: Api<RecoveryMount> = Api::namespaced(admin.clone(), NAMESPACE);
    let main = rms
        .create(
            &PostParams::default(),
            &recovery_mount("main", file_repository(&url), &backup_id),
        )
        .await
        .expect("create RecoveryMount main");
    let uid = main.metadata.uid.clone().unwrap();

    // Mounted: the backup's files, owned by uid/gid, writes into the IRCache.
    let status = wait_status(&rms, "main", &agent, "Mounted", |s| {
        s.phase == MountPhase::Mounted
    })
    .await;
    let mounted_in = started.elapsed() - control_plane_ready;
    // Named by the RecoveryMount's uid, not its name.
    let mount_path = mount_root.canonicalize().unwrap().join(&uid);
    let cache_dir = cache_root
        .canonicalize()
        .unwrap()
        .join("ircache")
        .join(&uid);
    assert_eq!(status.attempt, 0);
    assert_eq!(
        status.mount_path.as_deref(),
        Some(mount_path.to_str().unwrap())
    );
    let first_mounted_at = status.mounted_at.expect("mountedAt is set");
    assert!(status.cache_free_bytes.is_some_and(|free| free > 0));
    assert!(status.cache_used_bytes > 0, "{status:?}");
    let condition = &status.conditions[0];
    assert_eq!(
        (condition.type_.as_str(), condition.status.as_str()),
        ("Mounted", "True")
    );
    let finalizers = rms.get("main").await.unwrap().metadata.finalizers;
    assert_eq!(finalizers, Some(vec![AGENT_FINALIZER.to_owned()]));
    assert!(ir_fuse::is_fuse_mount(&mount_path));

    // Reading a file fetches its chunks from the repository, and the status says so.
    let relation = mount_path.join("base/1/1259");
    let relation_len = backup_files()["base/1/1259"].len() as u64;
    assert!(status.bytes_fetched < relation_len, "{status:?}");
    assert_eq!(
        std::fs::read(&relation).unwrap(),
        backup_files()["base/1/1259"]
    );
    wait_status(&rms, "main", &agent, "counting the bytes read", |s| {
        s.bytes_fetched >= relation_len
    })
    .await;
    for path in ["base/1/1259", "PG_VERSION", "base"] {
        let meta = std::fs::metadata(mount_path.join(path)).unwrap();
        assert_eq!((meta.uid(), meta.gid()), (UID, GID), "{path}");
    }
    let written = pattern(100_000, 7);
    let mut new_file = std::fs::File::create(mount_path.join("base/1/new")).unwrap();
    new_file.write_all(&written).unwrap();
    new_file.sync_all().unwrap();
    drop(new_file);
    let overwrite = b"rewritten by the test".to_vec();
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .open(&relation)
        .unwrap();
    file.write_all(&overwrite).unwrap();
    file.sync_all().unwrap();
    drop(file);
    assert!(
        cache_data(&cache_dir).contains(&written),
        "the new file is in {}",
        cache_dir.display()
    );

    // The Node's annotations.
    let deadline = Instant::now() + WAIT;
    let annotations = loop {
        let annotations = nodes.get(NODE).await.unwrap().metadata.annotations;
        if let Some(a) = annotations.filter(|a| {
            a.contains_key(AGENT_HEARTBEAT_ANNOTATION) && a.contains_key(CACHE_FREE_ANNOTATION)
        }) {
            break a;
        }
        assert!(
            Instant::now() < deadline,
            "no heartbeat on the Node\n{}",
            agent.log_tail()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    let beat: jiff::Timestamp = annotations[AGENT_HEARTBEAT_ANNOTATION].parse().unwrap();
    assert!(jiff::Timestamp::now().duration_since(beat).as_secs() < 120);
    assert!(annotations[CACHE_FREE_ANNOTATION].parse::<u64>().unwrap() > 0);

    // SIGKILL: the mount dies with the agent; the next one mounts the same IRCache again.
    agent.kill();
    let err = std::fs::write(mount_path.join("after-kill"), b"x").unwrap_err();
    assert_eq!(err.raw_os_error(), Some(libc::ENOTCONN), "{err}");
    let restart = Instant::now();
    let mut agent = start();
    let status = wait_status(&rms, "main", &agent, "mounted again", |s| {
        s.phase == MountPhase::Mounted && s.mounted_at != Some(first_mounted_at)
    })
    .await;
    let remounted_in = restart.elapsed();
    assert!(status.mounted_at.unwrap() > first_mounted_at);
    assert_eq!(
        std::fs::read(mount_path.join("base/1/new")).unwrap(),
        written
    );
    let mut head = vec![0u8; overwrite.len() + 10];
    let mut file = std::fs::File::open(&relation).unwrap();
    file.read_exact(&mut head).unwrap();
    assert_eq!(&head[..overwrite.len()], &overwrite[..]);
    assert_eq!(
        &head[overwrite.len()..],
        &backup_files()["base/1/1259"][overwrite.len()..overwrite.len() + 10]
    );
    drop(file);

    // SIGTERM: the agent flushes and stops without unmounting; the mount ends with it, and the
    // next agent mounts again. What was written without fsync survives: an overwrite in a
    // backup file already closed (its block map), a new file still open (its size).
    let second_mounted_at = status.mounted_at.unwrap();
    let mut expected_relation = backup_files()["base/1/1259"].clone();
    expected_relation[..overwrite.len()].copy_from_slice(&overwrite);
    let unsynced = pattern(5000, 11);
    let unsynced_at = 200_000;
    expected_relation[unsynced_at..unsynced_at + unsynced.len()].copy_from_slice(&unsynced);
    let file = std::fs::OpenOptions::new()
        .write(true)
        .open(&relation)
        .unwrap();
    file.write_all_at(&unsynced, unsynced_at as u64).unwrap();
    drop(file);
    let open_data = pattern(70_000, 13);
    let mut open_file = std::fs::File::create(mount_path.join("base/1/open")).unwrap();
    open_file.write_all(&open_data).unwrap();
    let exit = agent.terminate();
    assert!(exit.success(), "{exit}\n{}", agent.log_tail());
    drop(open_file);
    assert!(ir_fuse::is_fuse_mount(&mount_path), "left mounted");
    let err = std::fs::write(mount_path.join("after-term"), b"x").unwrap_err();
    assert_eq!(err.raw_os_error(), Some(libc::ENOTCONN), "{err}");
    let mut agent = start();
    wait_status(&rms, "main", &agent, "mounted a third time", |s| {
        s.phase == MountPhase::Mounted && s.mounted_at > Some(second_mounted_at)
    })
    .await;
    assert_eq!(
        std::fs::read(mount_path.join("base/1/new")).unwrap(),
        written
    );
    assert!(
        std::fs::read(&relation).unwrap() == expected_relation,
        "the write made without fsync before SIGTERM is lost"
    );
    assert!(
        std::fs::read(mount_path.join("base/1/open")).unwrap() == open_data,
        "the file open at SIGTERM lost what was written to it"
    );

    // Failures, each named; a new attempt tries again.
    let missing_id = "20000101-000000-0000";
    rms.create(
        &PostParams::default(),
        &recovery_mount("missing", file_repository(&url), missing_id),
    )
    .await
    .unwrap();
    let secrets: Api<Secret> = Api::namespaced(admin.clone(), NAMESPACE);
    let secret = Secret {
        metadata: ObjectMeta {
            name: Some("s3-credentials".to_owned()),
            ..Default::default()
        },
        data: Some(BTreeMap::from([
            ("AWS_ACCESS_KEY_ID".to_owned(), ByteString(b"key".to_vec())),
            (
                "AWS_SECRET_ACCESS_KEY".to_owned(),
                ByteString(b"secret".to_vec()),
            ),
        ])),
        ..Default::default()
    };
    secrets
        .create(&PostParams::default(), &secret)
        .await
        .unwrap();
    let closed_port = ir_e2e::free_port();
    let unreachable = BackupRepositorySpec {
        url: "s3://ir-test/backups".to_owned(),
        s3: Some(S3Spec {
            endpoint: Some(format!("http://127.0.0.1:{closed_port}")),
            region: Some("us-east-1".to_owned()),
            allow_http: true,
            use_ambient_credentials: false,
        }),
        credentials_secret: Some(LocalRef {
            name: "s3-credentials".to_owned(),
        }),
        encryption_secret: None,
        read_deadline: GoDuration(Duration::from_secs(3)),
    };
    rms.create(
        &PostParams::default(),
        &recovery_mount("unreachable", unreachable.clone(), &backup_id),
    )
    .await
    .unwrap();
    let bad_secret = BackupRepositorySpec {
        credentials_secret: Some(LocalRef {
            name: "no-such-secret".to_owned(),
        }),
        ..unreachable
    };
    rms.create(
        &PostParams::default(),
        &recovery_mount("bad-secret", bad_secret, &backup_id),
    )
    .await
    .unwrap();
    let mut too_large = recovery_mount("too-large", file_repository(&url), &backup_id);
    too_large.spec.size_limit = Some(Quantity("1Ei".to_owned()));
    rms.create(&PostParams::default(), &too_large)
        .await
        .unwrap();

    let failed = |s: &RecoveryMountStatus| s.phase == MountPhase::Failed;
    let status = wait_status(&rms, "missing", &agent, "Failed", failed).await;
    assert_eq!(status.reason.as_deref(), Some("BackupNotFound"));
    assert!(!status.transient);
    assert!(
        status.message.as_deref().unwrap().contains(missing_id),
        "{status:?}"
    );
    let status = wait_status(&rms, "unreachable", &agent, "Failed", failed).await;
    assert_eq!(status.reason.as_deref(), Some("RepositoryUnavailable"));
    assert!(status.transient, "{status:?}");
    let status = wait_status(&rms, "bad-secret", &agent, "Failed", failed).await;
    assert_eq!(status.reason.as_deref(), Some("InvalidCredentialsSecret"));
    assert!(!status.transient);
    assert!(
        status
            .message
            .as_deref()
            .unwrap()
            .contains("db/no-such-secret"),
        "{status:?}"
    );
    let status = wait_status(&rms, "too-large", &agent, "Failed", failed).await;
    assert_eq!(status.reason.as_deref(), Some("CacheTooSmall"));
    assert!(!status.transient);
    assert!(
        status.message.as_deref().unwrap().contains("1Ei"),
        "{status:?}"
    );

    rms.patch(
        "missing",
        &PatchParams::default(),
        &Patch::Merge(serde_json::json!({"spec": {"attempt": 1}})),
    )
    .await
    .unwrap();
    let status = wait_status(&rms, "missing", &agent, "Failed for attempt 1", |s| {
        s.phase == MountPhase::Failed && s.attempt == 1
    })
    .await;
    assert_eq!(status.reason.as_deref(), Some("BackupNotFound"));

    // Deletion: unmounted, IRCache wiped, finalizer gone, object gone.
    for name in ["main", "missing", "unreachable", "bad-secret", "too-large"] {
        rms.delete(name, &DeleteParams::default()).await.unwrap();
    }
    let deadline = Instant::now() + WAIT;
    while !rms
        .list(&Default::default())
        .await
        .unwrap()
        .items
        .is_empty()
    {
        assert!(
            Instant::now() < deadline,
            "RecoveryMounts still there after deletion\n{}",
            agent.log_tail()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert!(!ir_fuse::is_fuse_mount(&mount_path));
    assert!(!mount_path.exists(), "{} is left", mount_path.display());
    assert!(!cache_dir.exists(), "{} is left", cache_dir.display());
    agent.kill();
    eprintln!(
        "control plane ready in {control_plane_ready:?}; first mount {mounted_in:?}; remount after SIGKILL {remounted_in:?}; total {:?}",
        started.elapsed()
    );
}

/// A control plane with the CRDs, `namespaces`, the agent's namespace, RBAC and identity, and
/// NODE; the identity and an admin client.
async fn agent_cluster(namespaces: &[&str]) -> (ControlPlane, Identity, kube::Client) {
    let cp = ControlPlane::start().await;
    cp.install_crds().await;
    for namespace in namespaces.iter().chain(&["ir-system"]) {
        cp.create_namespace(namespace).await;
    }
    cp.apply_yaml(AGENT_RBAC)
        .await
        .expect("apply the agent's RBAC");
    let identity = cp.service_account("ir-system", "ir-agent").await;
    let admin = cp.admin();
    let node: Node =
        serde_json::from_value(serde_json::json!({"metadata": {"name": NODE}})).unwrap();
    Api::<Node>::all(admin.clone())
        .create(&PostParams::default(), &node)
        .await
        .expect("create the Node");
    (cp, identity, admin)
}

/// The agent's memory budget, with room for the agent, one mount with its whole memory cache
/// and a second with a smaller one: a third waits (`AgentMemoryFull`, transient) and mounts once
/// another ends and its attempt is retried.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mounts_past_the_memory_budget_wait_until_one_ends() {
    ir_e2e::require_fuse();
    let (_cp, identity, admin) = agent_cluster(&[NAMESPACE]).await;
    let work = ir_e2e::shared_tempdir();
    let repositories = work.path().join("repositories");
    let (url, backup_id) = make_marked_backup(&repositories.join("one"), b"backup one").await;
    let mount_root = work.path().join("mnt");
    let _mounts = MountRoot(mount_root.clone());
    // 32 MiB for the agent, 96 + 256 for the first mount, 96 + 64 for the second.
    let agent = AgentProcess::start_with(
        &identity.kubeconfig,
        &mount_root,
        &work.path().join("cache"),
        &repositories,
        &work.path().join("agent.log"),
        &["--memory-budget-mib=544"],
    );
    let rms: Api<RecoveryMount> = Api::namespaced(admin, NAMESPACE);
    let mounted = |s: &RecoveryMountStatus| s.phase == MountPhase::Mounted;
    for name in ["first", "second", "third"] {
        let rm = recovery_mount(name, file_repository(&url), &backup_id);
        rms.create(&PostParams::default(), &rm).await.unwrap();
        if name != "third" {
            wait_status(&rms, name, &agent, "Mounted", mounted).await;
        }
    }
    assert!(
        agent.log_tail().contains("memory_cache_mib=64"),
        "the second mount's cache is made smaller\n{}",
        agent.log_tail()
    );
    let failed = |s: &RecoveryMountStatus| s.phase == MountPhase::Failed;
    let status = wait_status(&rms, "third", &agent, "Failed", failed).await;
    assert_eq!(
        status.reason.as_deref(),
        Some("AgentMemoryFull"),
        "{status:?}"
    );
    assert!(status.transient, "{status:?}");
    let message = status.message.unwrap();
    assert!(
        message.contains("544 MiB, --memory-budget-mib") && message.contains("64, 256"),
        "{message}"
    );
    let metrics = ir_e2e::http::scrape(agent.metrics).await;
    let agent_metric = |name: &str| format!("instant_recovery_agent_{name}");
    assert_eq!(
        metrics.sum(&agent_metric("memory_budget_bytes"), &[]),
        (544u64 << 20) as f64
    );
    assert_eq!(
        metrics.sum(
            &agent_metric("mount_failures_total"),
            &[("reason", "AgentMemoryFull")]
        ),
        1.0
    );
    assert_eq!(
        metrics.sum(
            &agent_metric("memory_cache_bytes"),
            &[("mount", &format!("{NAMESPACE}/second"))]
        ),
        (64u64 << 20) as f64
    );

    rms.delete("first", &DeleteParams::default()).await.unwrap();
    wait_deleted(&rms, "first", &agent).await;
    rms.patch(
        "third",
        &PatchParams::default(),
        &Patch::Merge(serde_json::json!({"spec": {"attempt": 1}})),
    )
    .await
    .unwrap();
    let status = wait_status(&rms, "third", &agent, "Mounted for attempt 1", |s| {
        mounted(s) && s.attempt == 1
    })
    .await;
    let path = PathBuf::from(status.mount_path.unwrap());
    assert_eq!(std::fs::read(path.join("marker")).unwrap(), b"backup one");
    for name in ["second", "third"] {
        rms.delete(name, &DeleteParams::default()).await.unwrap();
        wait_deleted(&rms, name, &agent).await;
    }
}

/// Waits until the RecoveryMount `namespace/name` is gone (its agent unmounted and wiped).
async fn wait_deleted(api: &Api<RecoveryMount>, name: &str, agent: &AgentProcess) {
    let deadline = Instant::now() + WAIT;
    while api.get_opt(name).await.unwrap().is_some() {
        assert!(
            Instant::now() < deadline,
            "RecoveryMount {name} still there after deletion\n{}",
            agent.log_tail()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn colliding_names_mount_apart_and_repositories_out_of_bounds_are_refused() {
    ir_e2e::require_fuse();
    // `a-b/c` and `a/b-c` are both `a-b-c` as `<namespace>-<name>`.
    let (_cp, identity, admin) = agent_cluster(&["a-b", "a", NAMESPACE]).await;

    let work = ir_e2e::shared_tempdir();
    let repositories = work.path().join("repositories");
    let (one_url, one_id) = make_marked_backup(&repositories.join("one"), b"backup one").await;
    let (two_url, two_id) = make_marked_backup(&repositories.join("two"), b"backup two").await;
    // A good repository, but outside the file root.
    let outside = work.path().join("outside");
    let (_, outside_id) = make_marked_backup(&outside, b"outside").await;
    std::os::unix::fs::symlink(outside.join("repo"), repositories.join("escape")).unwrap();
    let mount_root = work.path().join("mnt");
    let cache_root = work.path().join("cache");
    let _mounts = MountRoot(mount_root.clone());
    let agent = AgentProcess::start(
        &identity.kubeconfig,
        &mount_root,
        &cache_root,
        &repositories,
        &work.path().join("agent.log"),
    );

    let in_ab: Api<RecoveryMount> = Api::namespaced(admin.clone(), "a-b");
    let in_a: Api<RecoveryMount> = Api::namespaced(admin.clone(), "a");
    let mut c = recovery_mount("c", file_repository(&one_url), &one_id);
    c.metadata.namespace = Some("a-b".to_owned());
    let c = in_ab.create(&PostParams::default(), &c).await.unwrap();
    let mut b_c = recovery_mount("b-c", file_repository(&two_url), &two_id);
    b_c.metadata.namespace = Some("a".to_owned());
    let b_c = in_a.create(&PostParams::default(), &b_c).await.unwrap();

    let mounted = |s: &RecoveryMountStatus| s.phase == MountPhase::Mounted;
    let c_status = wait_status(&in_ab, "c", &agent, "Mounted", mounted).await;
    let b_c_status = wait_status(&in_a, "b-c", &agent, "Mounted", mounted).await;
    let root = mount_root.canonicalize().unwrap();
    let c_path = PathBuf::from(c_status.mount_path.unwrap());
    let b_c_path = PathBuf::from(b_c_status.mount_path.unwrap());
    assert_eq!(c_path, root.join(c.metadata.uid.as_ref().unwrap()));
    assert_eq!(b_c_path, root.join(b_c.metadata.uid.as_ref().unwrap()));
    assert_ne!(c_path, b_c_path);
    // Each serves its own backup.
    assert_eq!(std::fs::read(c_path.join("marker")).unwrap(), b"backup one");
    assert_eq!(
        std::fs::read(b_c_path.join("marker")).unwrap(),
        b"backup two"
    );
    // A write to one is not seen in the other.
    std::fs::write(c_path.join("written"), b"into c").unwrap();
    assert!(!b_c_path.join("written").exists());

    // Repositories the agent must not read: outside the file root, by path, by `..`, by a
    // symlink inside the root; S3 with the agent's own credentials, which it does not lend.
    let outside_url = format!("file://{}", outside.join("repo").display());
    let dotdot_url = format!("file://{}/../outside/repo", repositories.display());
    let symlink_url = format!("file://{}", repositories.join("escape").display());
    let ambient = BackupRepositorySpec {
        url: "s3://ir-test/backups".to_owned(),
        s3: Some(S3Spec {
            endpoint: Some("http://127.0.0.1:9".to_owned()),
            region: Some("us-east-1".to_owned()),
            allow_http: true,
            use_ambient_credentials: true,
        }),
        ..file_repository("")
    };
    let hostile = [
        (
            "etc",
            file_repository("file:///etc"),
            "spec.repository.url",
            "RepositoryPathNotAllowed",
        ),
        (
            "outside",
            file_repository(&outside_url),
            "spec.repository.url",
            "RepositoryPathNotAllowed",
        ),
        (
            "dotdot",
            file_repository(&dotdot_url),
            "spec.repository.url",
            "RepositoryPathNotAllowed",
        ),
        (
            "symlink",
            file_repository(&symlink_url),
            "spec.repository.url",
            "RepositoryPathNotAllowed",
        ),
        (
            "ambient",
            ambient,
            "spec.repository.s3.useAmbientCredentials",
            "AmbientCredentialsNotAllowed",
        ),
    ];
    let hostile_api: Api<RecoveryMount> = Api::namespaced(admin.clone(), NAMESPACE);
    for (name, repository, _, _) in &hostile {
        hostile_api
            .create(
                &PostParams::default(),
                &recovery_mount(name, repository.clone(), &outside_id),
            )
            .await
            .unwrap_or_else(|e| panic!("create RecoveryMount {name}: {e}"));
    }
    for (name, _, field, reason) in &hostile {
        let failed = |s: &RecoveryMountStatus| s.phase == MountPhase::Failed;
        let status = wait_status(&hostile_api, name, &agent, "Failed", failed).await;
        assert_eq!(
            status.reason.as_deref(),
            Some(*reason),
            "{name}: {status:?}"
        );
        assert!(!status.transient, "{name}: {status:?}");
        let message = status.message.unwrap_or_default();
        assert!(message.starts_with(field), "{name}: {message}");
        assert_eq!(status.mount_path, None, "{name}");
    }
    let mounts = ir_e2e::mounts_under(&mount_root);
    assert_eq!(
        mounts.len(),
        2,
        "only the two good ones are mounted: {mounts:?}"
    );

    for (api, name) in [(&in_ab, "c"), (&in_a, "b-c")] {
        api.delete(name, &DeleteParams::default()).await.unwrap();
        wait_deleted(api, name, &agent).await;
    }
    for (name, ..) in &hostile {
        hostile_api
            .delete(name, &DeleteParams::default())
            .await
            .unwrap();
        wait_deleted(&hostile_api, name, &agent).await;
    }
    assert!(ir_e2e::mounts_under(&mount_root).is_empty());
    assert!(!c_path.exists() && !b_c_path.exists());
}

//! A real single-node Kubernetes cluster (scripts/node/up.sh): etcd, kube-apiserver, the
//! controllers, the scheduler, containerd, a real kubelet and kube-proxy, with the local
//! images `postgres:15`, the pause image and the project's own `localhost/instant-recovery:e2e`
//! (scripts/node/project-image.sh, from the workspace's built binaries) imported into its
//! containerd. The chart runs on it as it would anywhere: the operator, the agent DaemonSet,
//! the recoveries' Pods and Jobs are real Pods.
//!
//! The cluster is machine-wide (a bridge, fixed addresses, iptables chains): one test at a time
//! has a turn on it ([`NodeTurn`]). A test has a node of its own ([`NodeTurn::own`], torn down
//! by scripts/node/down.sh when the turn ends, also when the test panics), or a turn on the node
//! its test process shares ([`NodeTurn::shared`]: started at the first turn, torn down when the
//! process exits, and cleared of what the last turn made at the start of each turn).

use std::ops::Deref;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use ir_api::backup::{Backup, ScheduledBackup};
use ir_api::crd::{BackupRepository, InstantRecovery, RecoveryMount};
use k8s_openapi::api::core::v1::{Namespace, PersistentVolume, Pod};
use k8s_openapi::api::rbac::v1::{ClusterRole, ClusterRoleBinding};
use kube::api::{Api, DeleteParams, ListParams, Patch, PatchParams};

use crate::helm::repo_root;
use crate::installation::workspace_binary;

/// The project's image on the node, as scripts/node/project-image.sh names it.
pub const IMAGE_REPOSITORY: &str = "localhost/instant-recovery";
pub const IMAGE_TAG: &str = "e2e";
/// The node's name, as up.sh registers it.
pub const NODE_NAME: &str = "ir-node";
/// The node's IP address on its bridge, as up.sh sets it: the Pods' gateway, so a server on
/// the machine that listens there is reachable from the Pods.
pub const NODE_IP: &str = "10.244.0.1";

/// Namespaces a fresh cluster has, which a shared node's turn keeps.
const SYSTEM_NAMESPACES: [&str; 4] = ["default", "kube-system", "kube-public", "kube-node-lease"];

/// One turn at a time; a tokio lock, so that a test waiting for its turn blocks no thread of
/// another test's runtime.
static ONE_AT_A_TIME: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());
static SHARED: OnceLock<RealNode> = OnceLock::new();

/// A running cluster (scripts/node/up.sh) and its directory. Dropping it runs
/// scripts/node/down.sh.
pub struct RealNode {
    dir: tempfile::TempDir,
    kubeconfig: PathBuf,
    kubectl: PathBuf,
}

/// Runs a script of the repository; its stdout, or a panic with its stderr.
fn script(what: &str, path: &str, args: &[&Path]) -> String {
    let started = Instant::now();
    let out = Command::new(repo_root().join(path))
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("{what}: cannot run {path}: {e}"));
    assert!(
        out.status.success(),
        "{what}: {path} failed ({}); this machine cannot run the real node (see \
         scripts/node/NOTES.md; scripts/setup-test-deps.sh installs what it needs):\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    eprintln!("real node: {what} in {:.1?}", started.elapsed());
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// One test's turn on a node; it derefs to the node.
pub struct NodeTurn {
    node: Turned,
    client: kube::Client,
    _turn: tokio::sync::MutexGuard<'static, ()>,
}

enum Turned {
    Own(RealNode),
    Shared(&'static RealNode),
}

impl NodeTurn {
    /// A node of this test's own, torn down when the turn ends: for tests that install the
    /// chart or reboot the node.
    pub async fn own() -> NodeTurn {
        let turn = ONE_AT_A_TIME.lock().await;
        let node = RealNode::boot();
        let client = crate::cluster::client_from(&node.kubeconfig).await;
        NodeTurn {
            node: Turned::Own(node),
            client,
            _turn: turn,
        }
    }

    /// A turn on the node this test process shares, started at the first turn and torn down
    /// when the process exits. Whatever the last turn made is cleared first: every namespace
    /// but the cluster's own (their Pods deleted at once, the finalizers of the project's
    /// objects dropped), the PersistentVolumes and the chart's cluster-wide RBAC objects.
    pub async fn shared() -> NodeTurn {
        let turn = ONE_AT_A_TIME.lock().await;
        let node = SHARED.get_or_init(|| {
            let node = RealNode::boot();
            // SAFETY: registers a function that takes nothing, to run at exit.
            unsafe { libc::atexit(tear_down_shared) };
            node
        });
        let client = crate::cluster::client_from(&node.kubeconfig).await;
        clear(&client).await;
        NodeTurn {
            node: Turned::Shared(node),
            client,
            _turn: turn,
        }
    }

    /// A client acting as the admin (group `system:masters`), made for this turn.
    pub fn admin(&self) -> kube::Client {
        self.client.clone()
    }
}

impl Deref for NodeTurn {
    type Target = RealNode;

    fn deref(&self) -> &RealNode {
        match &self.node {
            Turned::Own(node) => node,
            Turned::Shared(node) => node,
        }
    }
}

extern "C" fn tear_down_shared() {
    if let Some(node) = SHARED.get() {
        node.down();
        let _ = std::fs::remove_dir_all(node.dir.path());
    }
}

/// Drops the finalizers of every object of kind `K`, so that none waits for an operator or an
/// agent that is gone.
async fn drop_finalizers<K>(client: &kube::Client)
where
    K: kube::Resource<DynamicType = (), Scope = k8s_openapi::NamespaceResourceScope>
        + Clone
        + serde::de::DeserializeOwned
        + std::fmt::Debug,
{
    let none = serde_json::json!({"metadata": {"finalizers": null}});
    let objects = Api::<K>::all(client.clone())
        .list_metadata(&ListParams::default())
        .await
        .map(|l| l.items)
        .unwrap_or_default();
    for object in objects {
        let meta = object.metadata;
        if let (Some(namespace), Some(name), Some(_)) = (meta.namespace, meta.name, meta.finalizers)
        {
            let _ = Api::<K>::namespaced(client.clone(), &namespace)
                .patch(&name, &PatchParams::default(), &Patch::Merge(&none))
                .await;
        }
    }
}

/// The namespaces a turn made (all but [`SYSTEM_NAMESPACES`]).
async fn made_namespaces(namespaces: &Api<Namespace>) -> Vec<String> {
    namespaces
        .list(&ListParams::default())
        .await
        .expect("list the namespaces")
        .items
        .into_iter()
        .filter_map(|n| n.metadata.name)
        .filter(|n| !SYSTEM_NAMESPACES.contains(&n.as_str()))
        .collect()
}

/// Clears what the last turn on a shared node made (see [`NodeTurn::shared`]).
async fn clear(client: &kube::Client) {
    let started = Instant::now();
    drop_finalizers::<InstantRecovery>(client).await;
    drop_finalizers::<RecoveryMount>(client).await;
    drop_finalizers::<BackupRepository>(client).await;
    drop_finalizers::<Backup>(client).await;
    drop_finalizers::<ScheduledBackup>(client).await;
    let namespaces: Api<Namespace> = Api::all(client.clone());
    let made = made_namespaces(&namespaces).await;
    for namespace in &made {
        let _ = Api::<Pod>::namespaced(client.clone(), namespace)
            .delete_collection(
                &DeleteParams::default().grace_period(0),
                &ListParams::default(),
            )
            .await;
        let _ = namespaces.delete(namespace, &DeleteParams::default()).await;
    }
    let chart = ListParams::default().labels("app.kubernetes.io/name=instant-recovery");
    let _ = Api::<ClusterRoleBinding>::all(client.clone())
        .delete_collection(&DeleteParams::default(), &chart)
        .await;
    let _ = Api::<ClusterRole>::all(client.clone())
        .delete_collection(&DeleteParams::default(), &chart)
        .await;
    let _ = Api::<PersistentVolume>::all(client.clone())
        .delete_collection(&DeleteParams::default(), &ListParams::default())
        .await;
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let left = made_namespaces(&namespaces).await;
        if left.is_empty() {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the shared node's namespaces {left:?} are not gone after 120 s"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    if !made.is_empty() {
        eprintln!("real node: {made:?} cleared in {:.1?}", started.elapsed());
    }
}

impl RealNode {
    /// Builds (or takes from the cache) the node binaries and the images, starts the cluster
    /// and imports the project's image. Panics with the failing script's stderr when the
    /// machine cannot run it; a half-started cluster is torn down.
    fn boot() -> RealNode {
        crate::require_root();
        let binaries = script("node binaries", "scripts/node/build.sh", &[]);
        let kubectl = binaries
            .lines()
            .find(|l| l.contains("kubectl"))
            .map(|l| PathBuf::from(l.trim()))
            .expect("scripts/node/build.sh prints kubectl's path");
        let bin_dir = workspace_binary("ir-operator")
            .parent()
            .expect("a binary lives in a directory")
            .to_owned();
        // Built before the cluster starts: an image build failure leaves nothing to tear down.
        // It prints "<reference> <archive>"; up.sh imports the archive before the kubelet starts.
        let built = script(
            "project image",
            "scripts/node/project-image.sh",
            &[&bin_dir],
        );
        let archive = built
            .split_whitespace()
            .nth(1)
            .map(PathBuf::from)
            .expect("scripts/node/project-image.sh prints the image's archive");
        let dir = crate::shared_tempdir();
        // From here on, a failure tears the cluster down (Drop of the half-made RealNode).
        let node = RealNode {
            kubeconfig: dir.path().join("admin.kubeconfig"),
            kubectl,
            dir,
        };
        script("up", "scripts/node/up.sh", &[node.dir.path(), &archive]);
        node
    }

    /// scripts/node/down.sh; a failure is reported, not raised (it runs on drop and at exit).
    fn down(&self) {
        let started = Instant::now();
        match Command::new(repo_root().join("scripts/node/down.sh"))
            .arg(self.dir.path())
            .output()
        {
            Ok(out) if out.status.success() => {
                eprintln!("real node: down in {:.1?}", started.elapsed());
            }
            Ok(out) => eprintln!(
                "real node: scripts/node/down.sh {} failed ({}):\n{}",
                self.dir.path().display(),
                out.status,
                String::from_utf8_lossy(&out.stderr)
            ),
            Err(e) => eprintln!("real node: cannot run scripts/node/down.sh: {e}"),
        }
    }

    /// The admin's kubeconfig file.
    pub fn kubeconfig(&self) -> &Path {
        &self.kubeconfig
    }

    /// A reboot of the node (scripts/node/reboot.sh): the kubelet, containerd, every container
    /// and every mount of the node die at once, then containerd and the kubelet start again
    /// and restart the Pods; the control plane runs on. Returns once the new kubelet reports
    /// the Node Ready.
    pub fn reboot(&self) {
        script("reboot", "scripts/node/reboot.sh", &[self.dir.path()]);
    }

    /// The end of the log of the cluster's component `name` (`kubelet`, `containerd`,
    /// `kube-controller-manager`, ...), headed by its name.
    pub fn log_tail(&self, name: &str) -> String {
        let log = self.dir.path().join(format!("logs/{name}.log"));
        format!("--- {name}:\n{}", crate::installation::log_tail(&log))
    }

    /// The cluster's directory (logs in `logs/`).
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// `program` to run in the node's mount namespace, where the Pods' and the agent's mounts
    /// live (nsenter execs it, so the child is the program itself).
    pub fn command_in_mount_ns(&self, program: impl AsRef<std::ffi::OsStr>) -> Command {
        let pid = std::fs::read_to_string(self.dir.path().join("run/mountns.pid"))
            .expect("the mount namespace's pid");
        let mut command = Command::new("nsenter");
        command.args(["-m", "-t", pid.trim(), "--"]).arg(program);
        command
    }

    /// `ARGS` run in the node's mount namespace: its stdout, or a panic with its stderr.
    pub fn in_mount_ns(&self, args: &[&str]) -> String {
        let out = self
            .command_in_mount_ns(args[0])
            .args(&args[1..])
            .output()
            .unwrap_or_else(|e| panic!("nsenter {args:?}: {e}"));
        assert!(
            out.status.success(),
            "nsenter {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// The mount points at or below `root` in the node's mount namespace.
    pub fn mounts_under(&self, root: &Path) -> Vec<String> {
        let root = root.display().to_string();
        self.in_mount_ns(&["findmnt", "-rn", "-o", "TARGET"])
            .lines()
            .filter(|target| target.starts_with(&root))
            .map(str::to_owned)
            .collect()
    }

    /// The FUSE mounts of the node's mount namespace, one `TARGET SOURCE FSTYPE` a line.
    pub fn fuse_mounts(&self) -> String {
        let all = self.in_mount_ns(&["findmnt", "-rn", "-o", "TARGET,SOURCE,FSTYPE"]);
        all.lines()
            .filter(|l| {
                l.split(' ')
                    .nth(2)
                    .is_some_and(|t| t == "fuse" || t.starts_with("fuse."))
            })
            .map(|l| format!("{l}\n"))
            .collect()
    }

    /// `kubectl ARGS` as the admin: its stdout and stderr, whether it succeeded or not (for
    /// diagnostics).
    pub fn kubectl(&self, args: &[&str]) -> String {
        match Command::new(&self.kubectl)
            .arg("--kubeconfig")
            .arg(&self.kubeconfig)
            .arg("--cache-dir")
            .arg(self.dir.path().join("kubectl-cache"))
            .args(args)
            .output()
        {
            Ok(out) => format!(
                "{}{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            ),
            Err(e) => format!("kubectl {args:?}: {e}"),
        }
    }
}

impl Drop for RealNode {
    fn drop(&mut self) {
        self.down();
    }
}

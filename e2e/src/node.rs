//! A real single-node Kubernetes cluster (scripts/node/up.sh): etcd, kube-apiserver, the
//! controllers, the scheduler, containerd, a real kubelet and kube-proxy, with the local
//! images `postgres:15`, the pause image and the project's own `localhost/instant-recovery:e2e`
//! (scripts/node/project-image.sh, from the workspace's built binaries) imported into its
//! containerd. The chart runs on it as it would anywhere: the operator, the agent DaemonSet,
//! the recoveries' Pods and Jobs are real Pods.
//!
//! The cluster is machine-wide (a bridge, fixed addresses, iptables chains): only one
//! [`RealNode`] exists at a time in a process ([`RealNode::start`] waits for the previous one to
//! go), and tests that use it run in one test binary. Dropping it runs scripts/node/down.sh,
//! also when the test panics.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::{Mutex, MutexGuard};
use std::time::Instant;

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

static ONE_AT_A_TIME: Mutex<()> = Mutex::new(());

pub struct RealNode {
    dir: tempfile::TempDir,
    kubeconfig: PathBuf,
    kubectl: PathBuf,
    client: kube::Client,
    _turn: MutexGuard<'static, ()>,
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

impl RealNode {
    /// Builds (or takes from the cache) the node binaries and the images, starts the cluster
    /// and imports the project's image. Panics with the failing script's stderr when the
    /// machine cannot run it.
    pub async fn start() -> RealNode {
        crate::require_root();
        let turn = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
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
        script(
            "project image",
            "scripts/node/project-image.sh",
            &[&bin_dir],
        );
        let dir = crate::shared_tempdir();
        let kubeconfig = dir.path().join("admin.kubeconfig");
        // From here on, a failure tears the cluster down (Drop of the half-made RealNode).
        let mut node = RealNode {
            kubeconfig: kubeconfig.clone(),
            kubectl,
            client: kube::Client::try_from(kube::Config::new(
                "http://127.0.0.1:1".parse().expect("a URL"),
            ))
            .expect("a placeholder client"),
            dir,
            _turn: turn,
        };
        script("up", "scripts/node/up.sh", &[node.dir.path()]);
        let socket = node.dir.path().join("containerd/containerd.sock");
        script(
            "project image import",
            "scripts/node/project-image.sh",
            &[&bin_dir, &socket],
        );
        node.client = crate::cluster::client_from(&kubeconfig).await;
        node
    }

    /// A client acting as the admin (group `system:masters`).
    pub fn admin(&self) -> kube::Client {
        self.client.clone()
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
}

//! A real Kubernetes control plane for tests, with RBAC on and the CRDs of `ir_api` at hand:
//! either etcd and kube-apiserver alone on loopback, built by scripts/build-control-plane.sh
//! from the Go modules pinned in tools/k8s, where objects are stored and validated but nothing
//! acts on them unless the test runs it (the operator, the agent); or the cluster of a real
//! node ([`crate::node`]), where controllers, a scheduler and a kubelet act on them.

use std::fs::File;
use std::io::{self, Read, Write};
use std::net::TcpStream;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::OnceLock;
use std::sync::mpsc;
use std::time::{Duration, Instant};

use k8s_openapi::ByteString;
use k8s_openapi::api::authentication::v1::{TokenRequest, TokenRequestSpec};
use k8s_openapi::api::core::v1::{Namespace, ServiceAccount};
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::api::{Api, DynamicObject, ListParams, Patch, PatchParams, PostParams};
use kube::config::{KubeConfigOptions, Kubeconfig};
use kube::core::{GroupVersionKind, ObjectMeta};
use kube::discovery::Scope;
use kube::runtime::wait::{await_condition, conditions};
use kube::{CustomResourceExt, ResourceExt};
use serde::Deserialize;

use ir_api::backup::{Backup, ScheduledBackup};
use ir_api::crd::{BackupRepository, InstantRecovery, RecoveryMount};

use crate::node::{NodeTurn, RealNode};

const ETCD_GO_MOD: &str = include_str!("../../tools/k8s/etcd/go.mod");
const APISERVER_GO_MOD: &str = include_str!("../../tools/k8s/apiserver/go.mod");

/// Field manager of every server-side apply made here.
const FIELD_MANAGER: &str = "ir-e2e";
/// How long one start attempt may take before it counts as failed (a busy 2-core machine is
/// much slower than the usual 3 s).
const READY_TIMEOUT: Duration = Duration::from_secs(90);
/// Admission plugins that wait for controllers this control plane does not run:
/// `ServiceAccount` (no namespace gets its `default` ServiceAccount, so every Pod would be
/// refused), `TaintNodesByCondition` (new Nodes keep a not-ready taint no node controller
/// removes) and `StorageObjectInUseProtection` (a deleted PVC keeps a finalizer no controller
/// removes).
const DISABLED_ADMISSION: &str =
    "ServiceAccount,TaintNodesByCondition,StorageObjectInUseProtection";
/// Lifetime asked for service-account tokens: longer than any test.
const TOKEN_SECONDS: i64 = 24 * 3600;

/// The version of `module` a go.mod under tools/ pins.
pub(crate) fn pinned<'a>(go_mod: &'a str, module: &str) -> &'a str {
    go_mod
        .lines()
        .find_map(|l| l.trim().strip_prefix(module)?.strip_prefix(' '))
        .and_then(|rest| rest.split_whitespace().next())
        .unwrap_or_else(|| panic!("the go.mod under tools/ pins {module}"))
}

/// The Kubernetes release the harness runs (`v1.37.2`), as pinned in tools/k8s/apiserver/go.mod.
pub fn kubernetes_version() -> &'static str {
    pinned(APISERVER_GO_MOD, "k8s.io/kubernetes")
}

/// The etcd release the harness runs (`v3.6.16`), as pinned in tools/k8s/etcd/go.mod.
pub fn etcd_version() -> &'static str {
    pinned(ETCD_GO_MOD, "go.etcd.io/etcd/server/v3")
}

/// `$env`, or the build scripts/build-control-plane.sh cached under the pinned version, so a
/// stale build of another version is never picked up.
/// Spawns `cmd` from one thread that lives as long as the test process, with
/// `PR_SET_PDEATHSIG`: a test binary killed by a timeout or ^C takes its servers with it, and
/// not earlier (the signal follows the thread that spawned, not the process).
fn spawn_tied_to_process(mut cmd: Command) -> io::Result<Child> {
    type Job = (Command, mpsc::Sender<io::Result<Child>>);
    static SPAWNER: OnceLock<mpsc::Sender<Job>> = OnceLock::new();
    // SAFETY: prctl is async-signal-safe and the closure allocates nothing.
    unsafe {
        cmd.pre_exec(|| {
            if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) == 0 {
                Ok(())
            } else {
                Err(io::Error::last_os_error())
            }
        });
    }
    let spawner = SPAWNER.get_or_init(|| {
        let (tx, rx) = mpsc::channel::<Job>();
        std::thread::Builder::new()
            .name("ir-e2e-spawner".into())
            .spawn(move || {
                for (mut cmd, reply) in rx {
                    let _ = reply.send(cmd.spawn());
                }
            })
            .expect("start the process spawner thread");
        tx
    });
    let (reply, answer) = mpsc::channel();
    spawner
        .send((cmd, reply))
        .expect("the spawner thread runs for the whole process");
    answer
        .recv()
        .expect("the spawner thread answers every request")
}

/// A server process, killed and reaped on drop.
struct Process {
    child: Child,
    log: PathBuf,
}

impl Process {
    fn spawn(mut cmd: Command, log: PathBuf) -> Process {
        let out = File::options()
            .create(true)
            .append(true)
            .open(&log)
            .expect("open the process log");
        cmd.stdin(Stdio::null())
            .stdout(out.try_clone().expect("dup the log fd"))
            .stderr(out);
        let program = cmd.get_program().to_owned();
        let child = spawn_tied_to_process(cmd)
            .unwrap_or_else(|e| panic!("start {}: {e}", program.display()));
        Process { child, log }
    }

    fn exited(&mut self) -> Option<std::process::ExitStatus> {
        self.child.try_wait().ok().flatten()
    }

    /// The last lines of the process log.
    fn log_tail(&self) -> String {
        let text = std::fs::read_to_string(&self.log).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(40)..].join("\n")
    }
}

impl Drop for Process {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Why one start attempt failed; a port taken between `free_port` and the bind is worth a retry.
struct StartError {
    port_taken: bool,
    message: String,
}

impl StartError {
    fn from_process(what: &str, process: &Process, problem: String) -> StartError {
        let tail = process.log_tail();
        StartError {
            port_taken: tail.contains("address already in use"),
            message: format!("{what} {problem}; last lines of its log:\n{tail}"),
        }
    }
}

struct Ports {
    etcd: u16,
    etcd_peer: u16,
    apiserver: u16,
}

impl Ports {
    /// Three distinct loopback ports that were free a moment ago.
    fn free() -> Ports {
        loop {
            let [etcd, etcd_peer, apiserver] =
                [crate::free_port(), crate::free_port(), crate::free_port()];
            if etcd != etcd_peer && etcd_peer != apiserver && etcd != apiserver {
                return Ports {
                    etcd,
                    etcd_peer,
                    apiserver,
                };
            }
        }
    }
}

/// An identity of the control plane: a client acting as it, and a kubeconfig file (server,
/// certificate-authority-data, token) for child processes (`KUBECONFIG`).
#[derive(Clone)]
pub struct Identity {
    pub client: kube::Client,
    pub kubeconfig: PathBuf,
}

/// What serves a [`ControlPlane`].
enum Servers {
    /// etcd and kube-apiserver on free loopback ports, and no controllers. Fields drop in this
    /// order: the API server before etcd.
    Own { _apiserver: Process, _etcd: Process },
    /// The cluster of a real node (scripts/node/up.sh), which runs every default controller,
    /// the scheduler, a kubelet and containerd.
    Node(NodeTurn),
}

/// A control plane: either etcd and kube-apiserver on free loopback ports over a temporary
/// directory ([`ControlPlane::start`]), or the cluster of a real node
/// ([`ControlPlane::on_real_node`]). Drop stops what it started (and waits for it) and removes
/// the directory.
pub struct ControlPlane {
    servers: Servers,
    server: String,
    ca_pem: String,
    admin: Identity,
    dir: tempfile::TempDir,
}

impl ControlPlane {
    /// Starts etcd and kube-apiserver and waits until the API server is ready (`/readyz`, which
    /// includes the RBAC bootstrap roles). Panics with a clear message when the binaries are
    /// missing, or with the log tail when they do not start.
    pub async fn start() -> ControlPlane {
        let dir = crate::shared_tempdir();
        let ca_pem = write_pki(dir.path());
        let admin_token = crate::random_hex(16);
        std::fs::write(
            dir.path().join("tokens.csv"),
            format!("{admin_token},admin,admin,\"system:masters\"\n"),
        )
        .expect("write the token file");
        for attempt in 1..=3 {
            let ports = Ports::free();
            let server = format!("https://127.0.0.1:{}", ports.apiserver);
            let kubeconfig = dir.path().join("admin.kubeconfig");
            write_kubeconfig(&kubeconfig, &server, &ca_pem, "admin", &admin_token, None);
            let client = client_from(&kubeconfig).await;
            match launch(dir.path(), attempt, ports, &client).await {
                Ok((apiserver, etcd)) => {
                    return ControlPlane {
                        servers: Servers::Own {
                            _apiserver: apiserver,
                            _etcd: etcd,
                        },
                        server,
                        ca_pem,
                        admin: Identity { client, kubeconfig },
                        dir,
                    };
                }
                Err(e) if e.port_taken && attempt < 3 => {
                    eprintln!("control plane: a port was taken ({}); new ports", e.message);
                }
                Err(e) => panic!("the test control plane did not start: {}", e.message),
            }
        }
        unreachable!("the last attempt returns or panics")
    }

    /// A turn on the real node this test process shares ([`NodeTurn::shared`]): Pods really
    /// run, on node [`crate::node::NODE_NAME`].
    pub async fn on_real_node() -> ControlPlane {
        let node = NodeTurn::shared().await;
        let kubeconfig = Kubeconfig::read_from(node.kubeconfig())
            .unwrap_or_else(|e| panic!("the node's admin kubeconfig: {e}"));
        let server = kubeconfig
            .clusters
            .first()
            .and_then(|c| c.cluster.as_ref())
            .and_then(|c| c.server.clone())
            .expect("the node's admin kubeconfig names its server");
        let ca_pem = std::fs::read_to_string(node.dir().join("pki/ca.crt"))
            .unwrap_or_else(|e| panic!("the node's CA certificate: {e}"));
        ControlPlane {
            admin: Identity {
                client: node.admin(),
                kubeconfig: node.kubeconfig().to_owned(),
            },
            servers: Servers::Node(node),
            server,
            ca_pem,
            dir: crate::shared_tempdir(),
        }
    }

    /// The real node this control plane belongs to, if any.
    pub fn node(&self) -> Option<&RealNode> {
        match &self.servers {
            Servers::Node(node) => Some(node),
            Servers::Own { .. } => None,
        }
    }

    /// A client acting as the admin (group `system:masters`).
    pub fn admin(&self) -> kube::Client {
        self.admin.client.clone()
    }

    /// The admin's kubeconfig file, for child processes (`KUBECONFIG`).
    pub fn admin_kubeconfig(&self) -> &Path {
        &self.admin.kubeconfig
    }

    /// Installs the CRDs of `ir_api` and waits until the API server serves them (Established).
    pub async fn install_crds(&self) {
        let api: Api<CustomResourceDefinition> = Api::all(self.admin());
        let crds = [
            InstantRecovery::crd(),
            BackupRepository::crd(),
            RecoveryMount::crd(),
            Backup::crd(),
            ScheduledBackup::crd(),
        ];
        for crd in &crds {
            api.patch(&crd.name_any(), &apply(), &Patch::Apply(crd))
                .await
                .unwrap_or_else(|e| panic!("install CRD {}: {e}", crd.name_any()));
        }
        for crd in &crds {
            let name = crd.name_any();
            let established = await_condition(api.clone(), &name, conditions::is_crd_established());
            match tokio::time::timeout(Duration::from_secs(60), established).await {
                Ok(Ok(_)) => {}
                Ok(Err(e)) => panic!("watch CRD {name}: {e}"),
                Err(_) => panic!("CRD {name} not Established after 60 s"),
            }
        }
    }

    /// Creates a namespace (no error if it exists).
    pub async fn create_namespace(&self, name: &str) {
        let namespace = Namespace {
            metadata: ObjectMeta {
                name: Some(name.to_owned()),
                ..Default::default()
            },
            ..Default::default()
        };
        Api::<Namespace>::all(self.admin())
            .patch(name, &apply(), &Patch::Apply(&namespace))
            .await
            .unwrap_or_else(|e| panic!("create namespace {name}: {e}"));
    }

    /// Creates the ServiceAccount if needed and returns a client and a kubeconfig acting as it,
    /// with a token from the TokenRequest API valid for a day. It has no permissions but those
    /// RBAC gives it.
    pub async fn service_account(&self, namespace: &str, name: &str) -> Identity {
        let api: Api<ServiceAccount> = Api::namespaced(self.admin(), namespace);
        let account = ServiceAccount {
            metadata: ObjectMeta {
                name: Some(name.to_owned()),
                namespace: Some(namespace.to_owned()),
                ..Default::default()
            },
            ..Default::default()
        };
        api.patch(name, &apply(), &Patch::Apply(&account))
            .await
            .unwrap_or_else(|e| panic!("create ServiceAccount {namespace}/{name}: {e}"));
        let request = TokenRequest {
            spec: Some(TokenRequestSpec {
                expiration_seconds: Some(TOKEN_SECONDS),
                ..Default::default()
            }),
            ..Default::default()
        };
        let token = api
            .create_token_request(name, &PostParams::default(), &request)
            .await
            .unwrap_or_else(|e| panic!("TokenRequest for {namespace}/{name}: {e}"))
            .status
            .and_then(|status| status.token)
            .unwrap_or_else(|| panic!("TokenRequest for {namespace}/{name} returned no token"));
        let kubeconfig = self
            .dir
            .path()
            .join(format!("sa-{namespace}-{name}.kubeconfig"));
        let user = format!("system:serviceaccount:{namespace}:{name}");
        write_kubeconfig(
            &kubeconfig,
            &self.server,
            &self.ca_pem,
            &user,
            &token,
            Some(namespace),
        );
        let client = client_from(&kubeconfig).await;
        Identity { client, kubeconfig }
    }

    /// Server-side applies every document of a multi-document YAML as admin (field manager
    /// `ir-e2e`, forced), in order; namespaced objects without a namespace go to `default`.
    /// Returns the first error of the API server, whose message names what it refused.
    /// Panics on YAML that is not a list of objects with apiVersion, kind and name.
    pub async fn apply_yaml(&self, yaml: &str) -> Result<(), kube::Error> {
        for document in serde_norway::Deserializer::from_str(yaml) {
            let value = serde_json::Value::deserialize(document)
                .unwrap_or_else(|e| panic!("apply_yaml: not YAML: {e}"));
            if value.is_null() {
                continue;
            }
            let object: DynamicObject = serde_json::from_value(value)
                .unwrap_or_else(|e| panic!("apply_yaml: not a Kubernetes object: {e}"));
            let types = object
                .types
                .as_ref()
                .expect("apply_yaml: every object has apiVersion and kind");
            let gvk = GroupVersionKind::try_from(types)
                .unwrap_or_else(|e| panic!("apply_yaml: apiVersion {}: {e}", types.api_version));
            let (resource, capabilities) =
                kube::discovery::pinned_kind(&self.admin.client, &gvk).await?;
            let api: Api<DynamicObject> = match capabilities.scope {
                Scope::Namespaced => Api::namespaced_with(
                    self.admin(),
                    object.namespace().as_deref().unwrap_or("default"),
                    &resource,
                ),
                Scope::Cluster => Api::all_with(self.admin(), &resource),
            };
            let name = object
                .metadata
                .name
                .as_deref()
                .expect("apply_yaml: every object has metadata.name");
            api.patch(name, &apply(), &Patch::Apply(&object)).await?;
        }
        Ok(())
    }
}

fn apply() -> PatchParams {
    PatchParams::apply(FIELD_MANAGER).force()
}

/// One attempt: etcd, then kube-apiserver, until `/readyz` answers ok to `client` (which
/// includes the RBAC bootstrap roles). Returns (kube-apiserver, etcd).
async fn launch(
    dir: &Path,
    attempt: u32,
    ports: Ports,
    client: &kube::Client,
) -> Result<(Process, Process), StartError> {
    let deadline = Instant::now() + READY_TIMEOUT;
    let etcd_url = format!("http://127.0.0.1:{}", ports.etcd);
    let peer_url = format!("http://127.0.0.1:{}", ports.etcd_peer);
    let mut cmd = Command::new(crate::cached_tool("IR_ETCD_BIN", "etcd", etcd_version()));
    cmd.arg("--name=test")
        .arg(format!(
            "--data-dir={}",
            dir.join(format!("etcd-{attempt}")).display()
        ))
        .arg(format!("--listen-client-urls={etcd_url}"))
        .arg(format!("--advertise-client-urls={etcd_url}"))
        .arg(format!("--listen-peer-urls={peer_url}"))
        .arg(format!("--initial-advertise-peer-urls={peer_url}"))
        .arg(format!("--initial-cluster=test={peer_url}"))
        .args(["--unsafe-no-fsync", "--log-level=warn"]);
    let mut etcd = Process::spawn(cmd, dir.join("etcd.log"));
    while !etcd_healthy(ports.etcd) {
        if let Some(status) = etcd.exited() {
            let problem = format!("exited ({status})");
            return Err(StartError::from_process("etcd", &etcd, problem));
        }
        if Instant::now() > deadline {
            let problem = format!("not healthy after {READY_TIMEOUT:?}");
            return Err(StartError::from_process("etcd", &etcd, problem));
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }

    let file = |name: &str| dir.join(name).display().to_string();
    let mut cmd = Command::new(crate::cached_tool(
        "IR_KUBE_APISERVER_BIN",
        "kube-apiserver",
        kubernetes_version(),
    ));
    cmd.arg(format!("--etcd-servers={etcd_url}"))
        .args(["--bind-address=127.0.0.1", "--advertise-address=127.0.0.1"])
        .arg(format!("--secure-port={}", ports.apiserver))
        .arg(format!("--tls-cert-file={}", file("apiserver.crt")))
        .arg(format!("--tls-private-key-file={}", file("apiserver.key")))
        .arg(format!("--client-ca-file={}", file("ca.crt")))
        .arg(format!("--token-auth-file={}", file("tokens.csv")))
        .arg("--authorization-mode=RBAC")
        .arg("--service-account-issuer=https://kubernetes.default.svc.cluster.local")
        .arg(format!("--service-account-key-file={}", file("sa.pub")))
        .arg(format!(
            "--service-account-signing-key-file={}",
            file("sa.key")
        ))
        .arg("--service-cluster-ip-range=10.96.0.0/16")
        .arg("--endpoint-reconciler-type=none")
        .arg("--allow-privileged=true")
        .arg(format!("--disable-admission-plugins={DISABLED_ADMISSION}"));
    let mut apiserver = Process::spawn(cmd, dir.join("kube-apiserver.log"));
    // `/readyz?`: a GET built by kube's request builder, which leaves an empty query.
    let readyz = || {
        kube::core::Request::new("/readyz")
            .list(&ListParams::default())
            .expect("build the /readyz request")
    };
    loop {
        // Bounded: if another process won the port race, it may never answer.
        let answer = tokio::time::timeout(Duration::from_secs(5), client.request_text(readyz()));
        let last = match answer.await {
            Ok(Ok(_)) => return Ok((apiserver, etcd)),
            Ok(Err(e)) => e.to_string(),
            Err(_) => "no answer within 5 s".to_owned(),
        };
        if let Some(status) = apiserver.exited() {
            let problem = format!("exited ({status})");
            return Err(StartError::from_process(
                "kube-apiserver",
                &apiserver,
                problem,
            ));
        }
        if Instant::now() > deadline {
            let problem = format!("not ready after {READY_TIMEOUT:?} (last answer: {last})");
            return Err(StartError::from_process(
                "kube-apiserver",
                &apiserver,
                problem,
            ));
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn etcd_healthy(port: u16) -> bool {
    let Ok(mut conn) = TcpStream::connect(("127.0.0.1", port)) else {
        return false;
    };
    let _ = conn.set_read_timeout(Some(Duration::from_secs(2)));
    let mut answer = String::new();
    conn.write_all(b"GET /health HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n")
        .is_ok()
        && conn.read_to_string(&mut answer).is_ok()
        && answer.contains(r#""health":"true""#)
}

/// Writes the CA, the API server's serving certificate (127.0.0.1, localhost) and the
/// service-account signing key into `dir`; returns the CA certificate (PEM).
fn write_pki(dir: &Path) -> String {
    use rcgen::{
        BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer,
        KeyPair, KeyUsagePurpose,
    };
    let params = |cn: &str, names: &[&str]| {
        let names: Vec<String> = names.iter().map(|n| n.to_string()).collect();
        let mut p = CertificateParams::new(names).expect("certificate names");
        p.distinguished_name = rcgen::DistinguishedName::new();
        p.distinguished_name.push(DnType::CommonName, cn);
        p
    };
    let key = || KeyPair::generate().expect("generate a key");
    let write = |name: &str, pem: String| {
        std::fs::write(dir.join(name), pem).unwrap_or_else(|e| panic!("write {name}: {e}"))
    };

    let ca_key = key();
    let mut ca = params("ir-test-ca", &[]);
    ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    let ca_pem = ca.self_signed(&ca_key).expect("sign the CA").pem();
    let issuer = Issuer::new(ca, &ca_key);

    let serving_key = key();
    let mut serving = params("kube-apiserver", &["127.0.0.1", "localhost"]);
    serving.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    serving.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
    let serving_cert = serving
        .signed_by(&serving_key, &issuer)
        .expect("sign the serving certificate");

    let sa_key = key();
    write("ca.crt", ca_pem.clone());
    write("apiserver.crt", serving_cert.pem());
    write("apiserver.key", serving_key.serialize_pem());
    write("sa.key", sa_key.serialize_pem());
    write("sa.pub", sa_key.public_key_pem());
    ca_pem
}

/// A kubeconfig file as kubectl and `kube::Config` read it.
fn write_kubeconfig(
    path: &Path,
    server: &str,
    ca_pem: &str,
    user: &str,
    token: &str,
    namespace: Option<&str>,
) {
    let ca_data = serde_json::to_value(ByteString(ca_pem.as_bytes().to_vec()))
        .expect("base64 of the CA certificate");
    let mut context = serde_json::json!({"cluster": "ir-test", "user": user});
    if let Some(ns) = namespace {
        context["namespace"] = ns.into();
    }
    let config = serde_json::json!({
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [{
            "name": "ir-test",
            "cluster": {"server": server, "certificate-authority-data": ca_data},
        }],
        "users": [{"name": user, "user": {"token": token}}],
        "contexts": [{"name": "ir-test", "context": context}],
        "current-context": "ir-test",
    });
    let yaml = serde_norway::to_string(&config).expect("kubeconfig as YAML");
    std::fs::write(path, yaml)
        .unwrap_or_else(|e| panic!("write kubeconfig {}: {e}", path.display()));
}

/// A client built from a kubeconfig file, the way the operator and agent binaries build theirs.
pub(crate) async fn client_from(path: &Path) -> kube::Client {
    let kubeconfig = Kubeconfig::read_from(path)
        .unwrap_or_else(|e| panic!("read kubeconfig {}: {e}", path.display()));
    let config = kube::Config::from_custom_kubeconfig(kubeconfig, &KubeConfigOptions::default())
        .await
        .unwrap_or_else(|e| panic!("kubeconfig {}: {e}", path.display()));
    kube::Client::try_from(config).expect("a client from the kubeconfig")
}

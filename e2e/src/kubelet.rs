//! **Test double for the kubelet** of one node. End-to-end tests have a real kube-apiserver but
//! no kubelet, scheduler or container runtime; [`KubeletStandIn`] plays the kubelet of one test
//! node so that the operator's real Pods (PostgreSQL on a FUSE mount, a standby built with
//! `pg_basebackup`) run, as plain local processes. It is not a kubelet and isolates nothing.
//!
//! One file of far more than 800 lines on purpose: the stand-in is one piece that goes whole
//! once the end-to-end tests run a real kubelet with containerd; splitting it first would be
//! work thrown away.
//!
//! What it emulates:
//! - the Node: registered with a Ready condition, capacity, label `kubernetes.io/hostname` and
//!   address 127.0.0.1; its Ready heartbeat (`lastHeartbeatTime`) is kept fresh. Node
//!   annotations are left alone (the node agent writes its own);
//! - optionally ([`StandInConfig::schedule_unbound`]) a one-node scheduler: Pods without a
//!   node whose nodeSelector and required node affinity match get bound through `pods/binding`;
//! - the Pods bound to the node (field selector `spec.nodeName`), each with its own loopback
//!   address as pod IP: init containers one after the other, then the containers, each as a
//!   process in its own session, as runAsUser/runAsGroup with fsGroup and supplementalGroups,
//!   PATH starting with the bin directory its image maps to; env (values, fieldRef,
//!   secretKeyRef, configMapKeyRef, envFrom) and `$(VAR)` expansion by Kubernetes' rules;
//!   output to [`KubeletStandIn::log_path`];
//! - volumes: emptyDir; persistentVolumeClaim (the claim must exist) as
//!   `<work>/pvc/<namespace>/<claim>`, kept across Pods as a volume would be; configMap and
//!   secret written as files; hostPath as the same host path, its `type` checked (a missing
//!   `Directory` holds the Pod in ContainerCreating with a FailedMount event until it exists).
//!   fsGroup is applied as a kubelet does: group, group read/write and setgid on directories,
//!   recursively at every Pod start unless `fsGroupChangePolicy: OnRootMismatch`; owners are
//!   left alone. So, as on a real node, PostgreSQL needs its data directory below a volume's
//!   root (which root owns), and a data directory on a volume gets group write access at the
//!   next Pod's start, which PostgreSQL refuses;
//! - Pod status as a kubelet writes it: phase, pod IP, conditions, init and container
//!   statuses (container ID `kubelet-stand-in://<pid>`, the pid of the process group leader);
//!   readiness from tcpSocket or exec readiness probes, else from the process running;
//!   restarts with a short backoff (0.5 s doubling to 8 s) under restartPolicy
//!   Always/OnFailure; a failed container's termination message under
//!   `terminationMessagePolicy: FallbackToLogsOnError` (the end of its log);
//! - graceful deletion: the image's stop signal (SIGINT for `postgres` images, as the official
//!   image's STOPSIGNAL; SIGTERM otherwise; `lifecycle.stopSignal` wins) to the main process,
//!   SIGKILL to its process group after the grace period, then the Pod is deleted with grace
//!   period 0. Pods deleted outright get their processes killed.
//!
//! What it does not emulate: containers. There is no mount, PID, network or user namespace, no
//! cgroup, no resource limit and no image: an image is a directory of host binaries
//! ([`StandInConfig::images`]), and a container needs an explicit `command` (no entrypoint).
//! Because there is no mount namespace, each volumeMount's container path is rewritten to its
//! host directory in command, args, env values and workingDir (longest mount path first, only
//! at path boundaries); paths a program builds or reads from files are not rewritten, and any
//! other path is the host's (for PostgreSQL, `/var/run/postgresql` is shared by every Pod: put
//! `unix_socket_directories` in a volume). Pods listen on their own loopback IP, ports are not
//! isolated. readOnly mounts are not enforced, configMap and secret volumes are not refreshed.
//! Not emulated at all: Services, DNS, service environment variables, liveness and startup
//! probes, lifecycle hooks, ephemeral containers, node leases, eviction, and the kubelet API
//! (`kubectl logs`/`exec`: read the log files instead). httpGet/grpc probes, sidecar init
//! containers and volume types other than the five above are refused with a clear waiting
//! message or event rather than ignored.

use std::collections::hash_map::RandomState;
use std::collections::{BTreeMap, HashMap, HashSet};
use std::hash::BuildHasher;
use std::io;
use std::net::Ipv4Addr;
use std::os::unix::fs::{FileTypeExt, MetadataExt, PermissionsExt};
use std::os::unix::process::ExitStatusExt;
use std::path::{Component, Path, PathBuf};
use std::process::{ExitStatus, Stdio};
use std::sync::{Arc, Mutex, OnceLock, PoisonError};
use std::time::{Duration, SystemTime};

use futures::StreamExt;
use k8s_openapi::api::core::v1::{
    Binding, ConfigMap, Container, ContainerState, ContainerStateRunning, ContainerStateTerminated,
    ContainerStateWaiting, ContainerStatus, Event as CoreEvent, EventSource, HostIP, KeyToPath,
    Node, NodeAddress, NodeCondition, NodeSelectorRequirement, NodeStatus, NodeSystemInfo,
    ObjectReference, PersistentVolumeClaim, Pod, PodCondition, PodIP, PodStatus, Probe, Secret,
};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, Time};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use k8s_openapi::jiff::Timestamp;
use kube::Client;
use kube::api::{Api, DeleteParams, Patch, PatchParams, PostParams, Preconditions};
use kube::runtime::{WatchStreamExt, watcher};
use serde_json::json;
use tokio::sync::{mpsc, watch};
use tokio::task::{JoinHandle, JoinSet};
use tokio::time::{Instant, sleep, sleep_until, timeout};
use tracing::{debug, info, warn};

const FIELD_MANAGER: &str = "kubelet-stand-in";
const HOST_IP: &str = "127.0.0.1";
const HEARTBEAT: Duration = Duration::from_secs(10);
/// Pause before retrying an API call or a volume set-up that failed.
const RETRY: Duration = Duration::from_secs(1);
const BACKOFF_START: Duration = Duration::from_millis(500);
const BACKOFF_MAX: Duration = Duration::from_secs(8);
/// A container that ran this long restarts with the shortest backoff again.
const BACKOFF_RESET: Duration = Duration::from_secs(10);
const DEFAULT_PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";
/// Conditions this stand-in writes; others (readiness gates, disruption) are kept as found.
const OWN_CONDITIONS: [&str; 5] = [
    "PodReadyToStartContainers",
    "Initialized",
    "Ready",
    "ContainersReady",
    "PodScheduled",
];

/// What the stand-in is and runs.
#[derive(Clone, Debug)]
pub struct StandInConfig {
    pub node_name: String,
    /// Per-Pod directories: volumes, PVCs, logs.
    pub work_dir: PathBuf,
    /// Image name (`postgres:15`) to the directory of its binaries, put first on PATH.
    pub images: BTreeMap<String, PathBuf>,
    /// Also bind Pods that have no node to this one, as a one-node scheduler would.
    pub schedule_unbound: bool,
}

/// The kubelet of one test node (see the module documentation). Dropping it, or
/// [`KubeletStandIn::stop`], kills every process it started.
pub struct KubeletStandIn {
    node_name: String,
    work_dir: PathBuf,
    shutdown: watch::Sender<bool>,
    task: Option<JoinHandle<()>>,
    groups: Arc<ProcessGroups>,
}

impl KubeletStandIn {
    /// Registers the Node (panics if the API server does not accept it within 30 s) and starts
    /// running the Pods bound to it.
    pub async fn start(client: Client, config: StandInConfig) -> KubeletStandIn {
        std::fs::create_dir_all(&config.work_dir).unwrap_or_else(|e| {
            panic!(
                "kubelet stand-in: create work dir {}: {e}",
                config.work_dir.display()
            )
        });
        let groups = Arc::new(ProcessGroups::default());
        let ctx = Arc::new(Ctx {
            client,
            node: config.node_name.clone(),
            work_dir: config.work_dir.clone(),
            images: config.images,
            groups: groups.clone(),
            registered: now(),
        });
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            match register_node(&ctx).await {
                Ok(()) => break,
                Err(e) if Instant::now() < deadline => {
                    debug!(node = %ctx.node, "registering node: {e}");
                    sleep(RETRY).await;
                }
                Err(e) => panic!("kubelet stand-in: cannot register node {}: {e}", ctx.node),
            }
        }
        info!(node = %ctx.node, "kubelet stand-in registered its node");
        let (shutdown, shutdown_rx) = watch::channel(false);
        let task = tokio::spawn(run_node(ctx, config.schedule_unbound, shutdown_rx));
        KubeletStandIn {
            node_name: config.node_name,
            work_dir: config.work_dir,
            shutdown,
            task: Some(task),
            groups,
        }
    }

    pub fn node_name(&self) -> &str {
        &self.node_name
    }

    /// Where the output (stdout and stderr) of a container goes, appended across restarts and
    /// across Pods of the same name.
    pub fn log_path(&self, namespace: &str, pod: &str, container: &str) -> PathBuf {
        log_path(&self.work_dir, namespace, pod, container)
    }

    /// Kills every process and waits until they are reaped. The Node and the Pods stay as they
    /// are in the API, as when a kubelet dies.
    pub async fn stop(mut self) {
        self.shutdown.send_replace(true);
        if let Some(task) = self.task.take()
            && let Err(e) = task.await
        {
            warn!("kubelet stand-in task ended badly: {e}");
        }
        self.groups.close();
    }
}

impl Drop for KubeletStandIn {
    fn drop(&mut self) {
        self.groups.close();
        if let Some(task) = self.task.take() {
            task.abort();
        }
    }
}

fn pod_log_dir(work_dir: &Path, namespace: &str, pod: &str) -> PathBuf {
    work_dir.join("pods").join(format!("{namespace}_{pod}"))
}

fn log_path(work_dir: &Path, namespace: &str, pod: &str, container: &str) -> PathBuf {
    pod_log_dir(work_dir, namespace, pod).join(format!("{container}.log"))
}

struct Ctx {
    client: Client,
    node: String,
    work_dir: PathBuf,
    images: BTreeMap<String, PathBuf>,
    groups: Arc<ProcessGroups>,
    registered: Time,
}

fn now() -> Time {
    Time(Timestamp::now())
}

fn patch_params() -> PatchParams {
    PatchParams {
        field_manager: Some(FIELD_MANAGER.into()),
        ..PatchParams::default()
    }
}

// ---------------------------------------------------------------------------------------------
// Processes

/// Process groups of live containers and probes, so that dropping the stand-in kills them
/// synchronously, without the runtime.
#[derive(Default)]
struct ProcessGroups(Mutex<Groups>);

#[derive(Default)]
struct Groups {
    live: HashSet<i32>,
    closed: bool,
}

impl ProcessGroups {
    /// Tracks a new process group; once closed, kills it at once (a spawn raced the close).
    fn register(self: &Arc<Self>, pgid: i32) -> GroupGuard {
        let mut groups = self.0.lock().unwrap_or_else(PoisonError::into_inner);
        if groups.closed {
            kill_group(pgid);
        } else {
            groups.live.insert(pgid);
        }
        GroupGuard {
            groups: self.clone(),
            pgid,
        }
    }

    fn close(&self) {
        let mut groups = self.0.lock().unwrap_or_else(PoisonError::into_inner);
        groups.closed = true;
        for pgid in groups.live.drain() {
            kill_group(pgid);
        }
    }
}

/// Kills what is left of a process group when its leader is done with (a container's
/// processes do not outlive it).
struct GroupGuard {
    groups: Arc<ProcessGroups>,
    pgid: i32,
}

impl Drop for GroupGuard {
    fn drop(&mut self) {
        let mut groups = self.groups.0.lock().unwrap_or_else(PoisonError::into_inner);
        groups.live.remove(&self.pgid);
        kill_group(self.pgid);
    }
}

fn kill_group(pgid: i32) {
    // SAFETY: kill has no memory preconditions; a negative pid names the process group.
    unsafe { libc::kill(-pgid, libc::SIGKILL) };
}

fn signal_process(pid: i32, signal: i32) {
    // SAFETY: kill has no memory preconditions.
    unsafe { libc::kill(pid, signal) };
}

#[derive(Clone, Debug, PartialEq, Eq)]
struct Identity {
    uid: u32,
    gid: u32,
    groups: Vec<u32>,
}

/// A process ready to start: argv, env and paths already expanded and rewritten to host paths.
#[derive(Clone, Debug)]
struct ProcessSpec {
    argv: Vec<String>,
    env: Vec<(String, String)>,
    cwd: PathBuf,
    identity: Identity,
}

struct Spawned {
    child: tokio::process::Child,
    pid: i32,
    _group: GroupGuard,
}

fn env_value<'a>(env: &'a [(String, String)], name: &str) -> Option<&'a str> {
    env.iter()
        .rev()
        .find(|(n, _)| n == name)
        .map(|(_, v)| v.as_str())
}

/// The executable `argv0` names, looked up in the process' own PATH as a runtime would.
fn resolve_program(argv0: &str, path: &str) -> io::Result<PathBuf> {
    let executable = |p: &Path| {
        std::fs::metadata(p).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
    };
    if argv0.contains('/') {
        return Ok(PathBuf::from(argv0));
    }
    path.split(':')
        .filter(|dir| !dir.is_empty())
        .map(|dir| Path::new(dir).join(argv0))
        .find(|p| executable(p))
        .ok_or_else(|| {
            io::Error::new(
                io::ErrorKind::NotFound,
                format!("exec: \"{argv0}\": executable file not found in $PATH ({path})"),
            )
        })
}

fn spawn(
    registry: &Arc<ProcessGroups>,
    spec: &ProcessSpec,
    output: Option<&Path>,
) -> io::Result<Spawned> {
    let Some(argv0) = spec.argv.first() else {
        return Err(io::Error::new(io::ErrorKind::InvalidInput, "empty command"));
    };
    let program = resolve_program(argv0, env_value(&spec.env, "PATH").unwrap_or(DEFAULT_PATH))?;
    let mut cmd = tokio::process::Command::new(&program);
    cmd.arg0(argv0)
        .args(&spec.argv[1..])
        .env_clear()
        .envs(spec.env.iter().map(|(k, v)| (k, v)))
        .current_dir(&spec.cwd)
        .stdin(Stdio::null())
        .kill_on_drop(true);
    match output {
        Some(log) => {
            let file = std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(log)?;
            cmd.stdout(file.try_clone()?).stderr(file);
        }
        None => {
            cmd.stdout(Stdio::null()).stderr(Stdio::null());
        }
    }
    let Identity { uid, gid, groups } = spec.identity.clone();
    // SAFETY: geteuid has no preconditions.
    let root = unsafe { libc::geteuid() } == 0;
    // SAFETY: the closure only makes async-signal-safe system calls on data allocated before
    // the fork.
    unsafe {
        cmd.pre_exec(move || {
            if libc::setsid() == -1 {
                return Err(io::Error::last_os_error());
            }
            libc::umask(0o022);
            if root && libc::setgroups(groups.len(), groups.as_ptr()) == -1 {
                return Err(io::Error::last_os_error());
            }
            if (root || libc::getegid() != gid) && libc::setgid(gid) == -1 {
                return Err(io::Error::last_os_error());
            }
            if (root || libc::geteuid() != uid) && libc::setuid(uid) == -1 {
                return Err(io::Error::last_os_error());
            }
            Ok(())
        });
    }
    let child = cmd.spawn()?;
    let pid = child
        .id()
        .and_then(|id| i32::try_from(id).ok())
        .ok_or_else(|| io::Error::other("spawned process has no pid"))?;
    Ok(Spawned {
        _group: registry.register(pid),
        child,
        pid,
    })
}

/// The last `lines` lines of `text`, cut to its last `bytes` bytes (at a character boundary).
fn log_tail(text: &str, lines: usize, bytes: usize) -> String {
    let trimmed = text.trim_end_matches('\n');
    let start = trimmed
        .rmatch_indices('\n')
        .nth(lines.saturating_sub(1))
        .map_or(0, |(i, _)| i + 1);
    let mut tail = &trimmed[start..];
    while tail.len() > bytes {
        let mut cut = tail.len() - bytes;
        while !tail.is_char_boundary(cut) {
            cut += 1;
        }
        tail = &tail[cut..];
    }
    tail.to_owned()
}

fn exit_code(status: ExitStatus) -> i32 {
    status
        .code()
        .unwrap_or_else(|| 128 + status.signal().unwrap_or(0))
}

fn append_log(path: &Path, line: &str) {
    use std::io::Write;
    let written = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
        .and_then(|mut f| writeln!(f, "{line}"));
    if let Err(e) = written {
        debug!("append to {}: {e}", path.display());
    }
}

/// uid's primary gid and home directory in the host's user database.
fn passwd(uid: u32) -> Option<(u32, String)> {
    let mut buf = vec![0 as libc::c_char; 16 * 1024];
    // SAFETY: all-zero is a valid libc::passwd (null pointers, zero ids).
    let mut entry: libc::passwd = unsafe { std::mem::zeroed() };
    let mut result = std::ptr::null_mut();
    // SAFETY: every pointer is valid for the call and buf's length is passed along.
    let rc = unsafe { libc::getpwuid_r(uid, &mut entry, buf.as_mut_ptr(), buf.len(), &mut result) };
    if rc != 0 || result.is_null() {
        return None;
    }
    // SAFETY: getpwuid_r succeeded, so pw_dir points to a C string inside buf.
    let home = unsafe { std::ffi::CStr::from_ptr(entry.pw_dir) };
    Some((entry.pw_gid, home.to_string_lossy().into_owned()))
}

// ---------------------------------------------------------------------------------------------
// Kubernetes rules: expansion, paths, images, identity

/// `$(VAR)` expansion by Kubernetes' rules: `$$` is a literal `$`; a reference to an unknown
/// variable, or one not closed, stays as written.
fn expand(input: &str, lookup: &dyn Fn(&str) -> Option<String>) -> String {
    let mut out = String::with_capacity(input.len());
    let mut rest = input;
    while let Some(at) = rest.find('$') {
        out.push_str(&rest[..at]);
        let after = &rest[at + 1..];
        match after.chars().next() {
            None => {
                out.push('$');
                rest = after;
            }
            Some('$') => {
                out.push('$');
                rest = &after[1..];
            }
            Some('(') => match after.find(')') {
                Some(close) => {
                    let name = &after[1..close];
                    match lookup(name) {
                        Some(value) => out.push_str(&value),
                        None => {
                            out.push_str("$(");
                            out.push_str(name);
                            out.push(')');
                        }
                    }
                    rest = &after[close + 1..];
                }
                None => {
                    out.push_str("$(");
                    rest = &after[1..];
                }
            },
            Some(c) => {
                out.push('$');
                out.push(c);
                rest = &after[c.len_utf8()..];
            }
        }
    }
    out.push_str(rest);
    out
}

fn is_path_char(c: char) -> bool {
    c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-' | '~' | '/' | '$')
}

/// Rewrites container paths to host paths. `mounts` (container path, host path) is sorted
/// longest container path first; a container path is replaced only where a path starts (at the
/// beginning or after a character that cannot be part of a path) and ends (at the end, at `/`
/// or before such a character), so `/data` leaves `/database` and `/x/data` alone.
fn rewrite_paths(s: &str, mounts: &[(String, String)]) -> String {
    let mut out = String::with_capacity(s.len());
    let mut i = 0;
    while let Some(c) = s[i..].chars().next() {
        let starts_path = c == '/' && s[..i].chars().next_back().is_none_or(|p| !is_path_char(p));
        if starts_path
            && let Some((from, to)) = mounts.iter().find(|(from, _)| {
                s[i..].starts_with(from.as_str())
                    && s[i + from.len()..]
                        .chars()
                        .next()
                        .is_none_or(|n| n == '/' || !is_path_char(n))
            })
        {
            out.push_str(to);
            i += from.len();
            continue;
        }
        out.push(c);
        i += c.len_utf8();
    }
    out
}

fn is_relative_inside(path: &str) -> bool {
    !path.is_empty()
        && Path::new(path)
            .components()
            .all(|c| matches!(c, Component::Normal(_) | Component::CurDir))
}

/// An image's repository name without registry, path or tag: `postgres` for
/// `docker.io/library/postgres:15`.
fn image_name(image: &str) -> &str {
    let image = image.split('@').next().unwrap_or(image);
    let last = image.rsplit('/').next().unwrap_or(image);
    last.split(':').next().unwrap_or(last)
}

fn is_postgres_image(image: &str) -> bool {
    image_name(image) == "postgres"
}

/// What the image itself would put in the environment.
fn image_env(image: &str, bin: &Path, pod_name: &str, home: &str) -> Vec<(String, String)> {
    let mut env = vec![
        (
            "PATH".to_string(),
            format!("{}:{DEFAULT_PATH}", bin.display()),
        ),
        ("HOSTNAME".to_string(), pod_name.to_string()),
        ("HOME".to_string(), home.to_string()),
    ];
    if is_postgres_image(image) {
        // The official image says en_US.utf8, which hosts seldom have.
        env.push(("LANG".into(), "C.UTF-8".into()));
        env.push(("PGDATA".into(), "/var/lib/postgresql/data".into()));
    }
    env
}

fn signal_by_name(name: &str) -> Option<i32> {
    Some(match name.strip_prefix("SIG").unwrap_or(name) {
        "INT" => libc::SIGINT,
        "TERM" => libc::SIGTERM,
        "QUIT" => libc::SIGQUIT,
        "KILL" => libc::SIGKILL,
        "HUP" => libc::SIGHUP,
        "USR1" => libc::SIGUSR1,
        "USR2" => libc::SIGUSR2,
        "WINCH" => libc::SIGWINCH,
        _ => return None,
    })
}

/// `lifecycle.stopSignal`, else the image's STOPSIGNAL (SIGINT for PostgreSQL's image, whose
/// SIGINT is a fast shutdown), else SIGTERM.
fn stop_signal(c: &Container) -> i32 {
    c.lifecycle
        .as_ref()
        .and_then(|l| l.stop_signal.as_deref())
        .and_then(signal_by_name)
        .unwrap_or_else(|| {
            if is_postgres_image(c.image.as_deref().unwrap_or_default()) {
                libc::SIGINT
            } else {
                libc::SIGTERM
            }
        })
}

/// Why a container could not start; shown as its waiting reason and message.
#[derive(Debug)]
struct StartError {
    reason: &'static str,
    message: String,
}

impl StartError {
    fn config(message: impl Into<String>) -> StartError {
        StartError {
            reason: "CreateContainerConfigError",
            message: message.into(),
        }
    }
}

/// The user, group and supplementary groups a container runs as, and its home directory.
fn identity(pod: &Pod, c: &Container) -> Result<(Identity, String), StartError> {
    let psc = pod.spec.as_ref().and_then(|s| s.security_context.as_ref());
    let csc = c.security_context.as_ref();
    let id = |what: &str, v: i64| {
        u32::try_from(v).map_err(|_| StartError::config(format!("{what} {v} is out of range")))
    };
    // Images run as root unless told otherwise (the official PostgreSQL image does).
    let uid = match csc
        .and_then(|s| s.run_as_user)
        .or(psc.and_then(|s| s.run_as_user))
    {
        Some(v) => id("runAsUser", v)?,
        None => 0,
    };
    let account = passwd(uid);
    let gid = match csc
        .and_then(|s| s.run_as_group)
        .or(psc.and_then(|s| s.run_as_group))
    {
        Some(v) => id("runAsGroup", v)?,
        None => account.as_ref().map_or(0, |a| a.0),
    };
    let non_root = csc
        .and_then(|s| s.run_as_non_root)
        .or(psc.and_then(|s| s.run_as_non_root))
        .unwrap_or(false);
    if non_root && uid == 0 {
        return Err(StartError::config(
            "container has runAsNonRoot and image will run as root",
        ));
    }
    let mut groups = vec![gid];
    let extra = psc.and_then(|s| s.fs_group).into_iter().chain(
        psc.and_then(|s| s.supplemental_groups.clone())
            .into_iter()
            .flatten(),
    );
    for g in extra {
        let g = id("group", g)?;
        if !groups.contains(&g) {
            groups.push(g);
        }
    }
    let home = account.map_or_else(|| "/".to_string(), |a| a.1);
    Ok((Identity { uid, gid, groups }, home))
}

/// A unique loopback address per Pod: a random /16 inside 127.64.0.0 - 127.243.255.255 per
/// test process (clear of 127.0.0.x, where local services listen), then a counter, so that
/// parallel stand-ins in one process never share one and other processes seldom do.
fn allocate_pod_ip() -> Ipv4Addr {
    static NEXT: OnceLock<Mutex<u32>> = OnceLock::new();
    const FIRST: u32 = 0x7f40_0001;
    let next = NEXT.get_or_init(|| {
        let random = RandomState::new().hash_one((std::process::id(), SystemTime::now()));
        let second = 64 + (random % 180) as u32;
        let third = ((random >> 16) % 256) as u32;
        Mutex::new(0x7f00_0000 | second << 16 | third << 8 | 1)
    });
    let mut next = next.lock().unwrap_or_else(PoisonError::into_inner);
    let ip = *next;
    // Skip .255 and .0 of each /24.
    *next = if ip & 0xff >= 254 {
        (ip & !0xff) + 0x101
    } else {
        ip + 1
    };
    if *next >> 24 != 127 {
        *next = FIRST;
    }
    Ipv4Addr::from(ip)
}

// ---------------------------------------------------------------------------------------------
// The Node and the scheduler stand-in

fn arch() -> &'static str {
    match std::env::consts::ARCH {
        "x86_64" => "amd64",
        "aarch64" => "arm64",
        other => other,
    }
}

fn node_labels(node: &str) -> BTreeMap<String, String> {
    BTreeMap::from([
        ("kubernetes.io/hostname".to_string(), node.to_string()),
        ("kubernetes.io/os".to_string(), "linux".to_string()),
        ("kubernetes.io/arch".to_string(), arch().to_string()),
    ])
}

fn read_trimmed(path: &str) -> String {
    std::fs::read_to_string(path)
        .map(|s| s.trim().to_string())
        .unwrap_or_default()
}

fn capacity(work_dir: &Path) -> BTreeMap<String, Quantity> {
    let cpus = std::thread::available_parallelism().map_or(1, |n| n.get());
    let memory_kib = std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|m| {
            m.lines()
                .find_map(|l| l.strip_prefix("MemTotal:"))
                .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        })
        .unwrap_or(0);
    let mut out = BTreeMap::from([
        ("cpu".to_string(), Quantity(cpus.to_string())),
        ("memory".to_string(), Quantity(format!("{memory_kib}Ki"))),
        ("pods".to_string(), Quantity("110".into())),
    ]);
    if let Ok(dir) = std::ffi::CString::new(work_dir.as_os_str().as_encoded_bytes()) {
        // SAFETY: all-zero is a valid statvfs; dir is a valid C string.
        let mut fs: libc::statvfs = unsafe { std::mem::zeroed() };
        // SAFETY: as above.
        if unsafe { libc::statvfs(dir.as_ptr(), &mut fs) } == 0 {
            let bytes = fs.f_blocks.saturating_mul(fs.f_frsize);
            out.insert("ephemeral-storage".into(), Quantity(bytes.to_string()));
        }
    }
    out
}

fn node_status(ctx: &Ctx) -> NodeStatus {
    let heartbeat = now();
    let condition = |type_: &str, status: &str, reason: &str, message: &str| NodeCondition {
        type_: type_.into(),
        status: status.into(),
        reason: Some(reason.into()),
        message: Some(message.into()),
        last_heartbeat_time: Some(heartbeat.clone()),
        last_transition_time: Some(ctx.registered.clone()),
    };
    let os_image = std::fs::read_to_string("/etc/os-release")
        .ok()
        .and_then(|r| {
            r.lines()
                .find_map(|l| l.strip_prefix("PRETTY_NAME="))
                .map(|v| v.trim_matches('"').to_string())
        })
        .unwrap_or_else(|| "Linux".into());
    let capacity = capacity(&ctx.work_dir);
    NodeStatus {
        addresses: Some(vec![
            NodeAddress {
                type_: "InternalIP".into(),
                address: HOST_IP.into(),
            },
            NodeAddress {
                type_: "Hostname".into(),
                address: ctx.node.clone(),
            },
        ]),
        allocatable: Some(capacity.clone()),
        capacity: Some(capacity),
        conditions: Some(vec![
            condition(
                "MemoryPressure",
                "False",
                "KubeletHasSufficientMemory",
                "kubelet has sufficient memory available",
            ),
            condition(
                "DiskPressure",
                "False",
                "KubeletHasNoDiskPressure",
                "kubelet has no disk pressure",
            ),
            condition(
                "PIDPressure",
                "False",
                "KubeletHasSufficientPID",
                "kubelet has sufficient PID available",
            ),
            condition(
                "Ready",
                "True",
                "KubeletReady",
                "kubelet stand-in is posting ready status (Pods run as local processes)",
            ),
        ]),
        node_info: Some(NodeSystemInfo {
            architecture: arch().into(),
            boot_id: read_trimmed("/proc/sys/kernel/random/boot_id"),
            container_runtime_version: "kubelet-stand-in://local-processes".into(),
            kernel_version: read_trimmed("/proc/sys/kernel/osrelease"),
            kube_proxy_version: String::new(),
            kubelet_version: "v1.37.2-stand-in".into(),
            machine_id: read_trimmed("/etc/machine-id"),
            operating_system: "linux".into(),
            os_image,
            system_uuid: String::new(),
            ..NodeSystemInfo::default()
        }),
        ..NodeStatus::default()
    }
}

async fn post_node_status(ctx: &Ctx) -> Result<(), kube::Error> {
    let nodes: Api<Node> = Api::all(ctx.client.clone());
    nodes
        .patch_status(
            &ctx.node,
            &patch_params(),
            &Patch::Merge(json!({ "status": node_status(ctx) })),
        )
        .await
        .map(drop)
}

/// Creates the Node (or adds its labels to an existing one), then posts its status.
async fn register_node(ctx: &Ctx) -> Result<(), kube::Error> {
    let nodes: Api<Node> = Api::all(ctx.client.clone());
    let node = Node {
        metadata: ObjectMeta {
            name: Some(ctx.node.clone()),
            labels: Some(node_labels(&ctx.node)),
            ..ObjectMeta::default()
        },
        ..Node::default()
    };
    match nodes.create(&PostParams::default(), &node).await {
        Ok(_) => {}
        Err(kube::Error::Api(s)) if s.is_already_exists() => {
            let labels = json!({ "metadata": { "labels": node_labels(&ctx.node) } });
            nodes
                .patch(&ctx.node, &patch_params(), &Patch::Merge(labels))
                .await?;
        }
        Err(e) => return Err(e),
    }
    post_node_status(ctx).await
}

async fn heartbeat(ctx: Arc<Ctx>, mut shutdown: watch::Receiver<bool>) {
    loop {
        tokio::select! {
            _ = shutdown.changed() => return,
            () = sleep(HEARTBEAT) => {}
        }
        let posted = match post_node_status(&ctx).await {
            Err(kube::Error::Api(s)) if s.is_not_found() => register_node(&ctx).await,
            other => other,
        };
        if let Err(e) = posted {
            warn!(node = %ctx.node, "node heartbeat: {e}");
        }
    }
}

fn requirement_holds(r: &NodeSelectorRequirement, values_of: &BTreeMap<String, String>) -> bool {
    let value = values_of.get(&r.key);
    let values = r.values.as_deref().unwrap_or_default();
    let number = |s: &str| s.parse::<i64>().ok();
    match r.operator.as_str() {
        "In" => value.is_some_and(|v| values.contains(v)),
        "NotIn" => value.is_none_or(|v| !values.contains(v)),
        "Exists" => value.is_some(),
        "DoesNotExist" => value.is_none(),
        "Gt" | "Lt" => {
            let (Some(have), Some(bound)) = (
                value.and_then(|v| number(v)),
                values.first().and_then(|v| number(v)),
            ) else {
                return false;
            };
            if r.operator == "Gt" {
                have > bound
            } else {
                have < bound
            }
        }
        _ => false,
    }
}

/// Whether a scheduler would put this unbound Pod on the node: default scheduler, not
/// finished or deleted, nodeSelector and required node affinity satisfied (the node has no
/// taints and unlimited room).
fn fits(pod: &Pod, node: &str, labels: &BTreeMap<String, String>) -> bool {
    let Some(spec) = &pod.spec else {
        return false;
    };
    let finished = pod
        .status
        .as_ref()
        .and_then(|s| s.phase.as_deref())
        .is_some_and(|p| p == "Succeeded" || p == "Failed");
    if finished
        || pod.metadata.deletion_timestamp.is_some()
        || spec
            .scheduler_name
            .as_deref()
            .is_some_and(|s| s != "default-scheduler")
        || !spec
            .node_selector
            .iter()
            .flatten()
            .all(|(k, v)| labels.get(k) == Some(v))
    {
        return false;
    }
    let fields = BTreeMap::from([("metadata.name".to_string(), node.to_string())]);
    spec.affinity
        .as_ref()
        .and_then(|a| a.node_affinity.as_ref())
        .and_then(|a| {
            a.required_during_scheduling_ignored_during_execution
                .as_ref()
        })
        .is_none_or(|selector| {
            selector.node_selector_terms.iter().any(|term| {
                let expressions = term.match_expressions.as_deref().unwrap_or_default();
                let field_reqs = term.match_fields.as_deref().unwrap_or_default();
                // An empty term matches no node.
                !(expressions.is_empty() && field_reqs.is_empty())
                    && expressions.iter().all(|r| requirement_holds(r, labels))
                    && field_reqs.iter().all(|r| requirement_holds(r, &fields))
            })
        })
}

async fn bind(ctx: &Ctx, pod: &Pod) -> Result<(), kube::Error> {
    let namespace = pod.metadata.namespace.clone().unwrap_or_default();
    let name = pod.metadata.name.clone().unwrap_or_default();
    let binding = Binding {
        metadata: ObjectMeta {
            name: Some(name.clone()),
            namespace: Some(namespace.clone()),
            uid: pod.metadata.uid.clone(),
            ..ObjectMeta::default()
        },
        target: ObjectReference {
            api_version: Some("v1".into()),
            kind: Some("Node".into()),
            name: Some(ctx.node.clone()),
            ..ObjectReference::default()
        },
    };
    let pods: Api<Pod> = Api::namespaced(ctx.client.clone(), &namespace);
    pods.create_subresource::<Binding, serde_json::Value>(
        "binding",
        &name,
        &PostParams::default(),
        &binding,
    )
    .await?;
    info!(node = %ctx.node, "bound pod {namespace}/{name}");
    Ok(())
}

/// The one-node scheduler stand-in: binds the unbound Pods that fit, retrying every second
/// (a Pod may start to fit when the node's labels change).
async fn schedule(ctx: Arc<Ctx>, mut shutdown: watch::Receiver<bool>) {
    let pods: Api<Pod> = Api::all(ctx.client.clone());
    let stream =
        watcher(pods, watcher::Config::default().fields("spec.nodeName=")).default_backoff();
    tokio::pin!(stream);
    let mut pending: BTreeMap<(String, String), Pod> = BTreeMap::new();
    let key = |p: &Pod| {
        (
            p.metadata.namespace.clone().unwrap_or_default(),
            p.metadata.name.clone().unwrap_or_default(),
        )
    };
    let mut tick = tokio::time::interval(RETRY);
    loop {
        tokio::select! {
            _ = shutdown.changed() => return,
            event = stream.next() => match event {
                Some(Ok(watcher::Event::Apply(pod) | watcher::Event::InitApply(pod))) => {
                    pending.insert(key(&pod), pod);
                }
                Some(Ok(watcher::Event::Delete(pod))) => {
                    pending.remove(&key(&pod));
                }
                Some(Ok(watcher::Event::Init)) => pending.clear(),
                Some(Ok(watcher::Event::InitDone)) => {}
                Some(Err(e)) => warn!(node = %ctx.node, "unbound pod watch: {e}"),
                None => return,
            },
            _ = tick.tick() => {}
        }
        if pending.is_empty() {
            continue;
        }
        let nodes: Api<Node> = Api::all(ctx.client.clone());
        let labels = match nodes.get(&ctx.node).await {
            Ok(node) => node.metadata.labels.unwrap_or_default(),
            Err(e) => {
                debug!(node = %ctx.node, "get node for scheduling: {e}");
                continue;
            }
        };
        let mut done = Vec::new();
        for (key, pod) in &pending {
            if !fits(pod, &ctx.node, &labels) {
                continue;
            }
            match bind(&ctx, pod).await {
                Ok(()) => done.push(key.clone()),
                // Bound elsewhere meanwhile, or gone.
                Err(kube::Error::Api(s)) if s.is_conflict() || s.is_not_found() => {
                    done.push(key.clone());
                }
                Err(e) => warn!(node = %ctx.node, "bind {}/{}: {e}", key.0, key.1),
            }
        }
        for key in done {
            pending.remove(&key);
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Pods bound to the node

async fn run_node(ctx: Arc<Ctx>, schedule_unbound: bool, mut shutdown: watch::Receiver<bool>) {
    let mut tasks = JoinSet::new();
    tasks.spawn(heartbeat(ctx.clone(), shutdown.clone()));
    if schedule_unbound {
        tasks.spawn(schedule(ctx.clone(), shutdown.clone()));
    }
    let pods: Api<Pod> = Api::all(ctx.client.clone());
    let selector = format!("spec.nodeName={}", ctx.node);
    let stream = watcher(pods, watcher::Config::default().fields(&selector)).default_backoff();
    tokio::pin!(stream);
    // One worker per Pod uid; it gets the latest object, or None once the Pod is gone.
    let mut workers = Workers::new();
    let mut listed: Option<HashSet<String>> = None;
    let worker_shutdown = shutdown.clone();
    loop {
        tokio::select! {
            _ = shutdown.changed() => break,
            event = stream.next() => match event {
                Some(Ok(watcher::Event::Apply(pod))) => admit(&ctx, &worker_shutdown, pod, &mut tasks, &mut workers),
                Some(Ok(watcher::Event::InitApply(pod))) => {
                    if let (Some(listed), Some(uid)) = (listed.as_mut(), pod.metadata.uid.clone()) {
                        listed.insert(uid);
                    }
                    admit(&ctx, &worker_shutdown, pod, &mut tasks, &mut workers);
                }
                Some(Ok(watcher::Event::Delete(pod))) => {
                    if let Some(tx) = pod.metadata.uid.as_ref().and_then(|uid| workers.remove(uid)) {
                        tx.send_replace(None);
                    }
                }
                Some(Ok(watcher::Event::Init)) => listed = Some(HashSet::new()),
                Some(Ok(watcher::Event::InitDone)) => {
                    // Pods missing from a fresh list were deleted while the watch was down.
                    if let Some(listed) = listed.take() {
                        workers.retain(|uid, tx| {
                            let present = listed.contains(uid);
                            if !present {
                                tx.send_replace(None);
                            }
                            present
                        });
                    }
                }
                Some(Err(e)) => warn!(node = %ctx.node, "pod watch: {e}"),
                None => break,
            },
            Some(joined) = tasks.join_next() => {
                if let Err(e) = joined {
                    warn!(node = %ctx.node, "kubelet stand-in task failed: {e}");
                }
            }
        }
    }
    // Workers see the shutdown themselves and kill their processes.
    while let Some(joined) = tasks.join_next().await {
        if let Err(e) = joined {
            warn!(node = %ctx.node, "kubelet stand-in task failed: {e}");
        }
    }
}

type Workers = HashMap<String, watch::Sender<Option<Arc<Pod>>>>;

/// Hands a Pod to its worker, starting one for a new uid.
fn admit(
    ctx: &Arc<Ctx>,
    shutdown: &watch::Receiver<bool>,
    pod: Pod,
    tasks: &mut JoinSet<()>,
    workers: &mut Workers,
) {
    let Some(uid) = pod.metadata.uid.clone() else {
        return;
    };
    let pod = Arc::new(pod);
    match workers.get(&uid) {
        Some(tx) => {
            tx.send_replace(Some(pod));
        }
        None => {
            let (tx, rx) = watch::channel(Some(pod));
            tasks.spawn(run_pod(ctx.clone(), rx, shutdown.clone()));
            workers.insert(uid, tx);
        }
    }
}

/// How the containers of a Pod are to stop.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Stop {
    Run,
    /// Stop signal now, SIGKILL at the deadline.
    Graceful(Instant),
    Kill,
}

impl Stop {
    fn requested(self) -> bool {
        self != Stop::Run
    }

    /// Keeps the stricter request (a kill over a grace period, the earlier deadline); says
    /// whether it changed.
    fn tighten(&mut self, other: Stop) -> bool {
        match (*self, other) {
            (_, Stop::Run) | (Stop::Kill, _) => false,
            (Stop::Graceful(have), Stop::Graceful(new)) if have <= new => false,
            _ => {
                *self = other;
                true
            }
        }
    }
}

fn deletion_stop(pod: &Pod) -> Option<Stop> {
    pod.metadata.deletion_timestamp.as_ref()?;
    let grace = pod
        .metadata
        .deletion_grace_period_seconds
        .or_else(|| pod.spec.as_ref()?.termination_grace_period_seconds)
        .unwrap_or(30);
    Some(match u64::try_from(grace) {
        Ok(secs) if secs > 0 => Stop::Graceful(Instant::now() + Duration::from_secs(secs)),
        _ => Stop::Kill,
    })
}

/// Sleeps, unless a stop is requested first; says whether one was.
async fn wait_or_stop(delay: Duration, stop: &mut watch::Receiver<Stop>) -> bool {
    let stopped = tokio::select! {
        () = sleep(delay) => false,
        // An error means the Pod's worker is gone: stop as well.
        _ = stop.wait_for(|s| s.requested()) => true,
    };
    stopped || stop.borrow().requested()
}

async fn delete_now(api: &Api<Pod>, name: &str, uid: &str) -> Result<(), kube::Error> {
    let params = DeleteParams {
        grace_period_seconds: Some(0),
        preconditions: Some(Preconditions {
            uid: Some(uid.into()),
            resource_version: None,
        }),
        ..DeleteParams::default()
    };
    match api.delete(name, &params).await {
        Ok(_) => Ok(()),
        Err(kube::Error::Api(s)) if s.is_not_found() || s.is_conflict() => Ok(()),
        Err(e) => Err(e),
    }
}

/// One Pod, from admission to deletion: runs its containers and reports its status.
async fn run_pod(
    ctx: Arc<Ctx>,
    mut pod_rx: watch::Receiver<Option<Arc<Pod>>>,
    mut shutdown: watch::Receiver<bool>,
) {
    let Some(first) = pod_rx.borrow_and_update().clone() else {
        return;
    };
    let namespace = first.metadata.namespace.clone().unwrap_or_default();
    let name = first.metadata.name.clone().unwrap_or_default();
    let uid = first.metadata.uid.clone().unwrap_or_default();
    let api: Api<Pod> = Api::namespaced(ctx.client.clone(), &namespace);
    // A Pod that already ended (a previous stand-in ran it) is not run again.
    let ended = first
        .status
        .as_ref()
        .and_then(|s| s.phase.as_deref())
        .is_some_and(|p| p == "Succeeded" || p == "Failed");
    let mut model = Model::new(first.clone());
    let (tx, mut rx) = mpsc::unbounded_channel();
    let (stop_tx, stop_rx) = watch::channel(deletion_stop(&first).unwrap_or(Stop::Run));
    let run = {
        let (ctx, tx) = (ctx.clone(), tx.clone());
        async move {
            if !ended {
                run_containers(ctx, first, tx, stop_rx).await;
            }
        }
    };
    tokio::pin!(run);
    info!(node = %ctx.node, "running pod {namespace}/{name}");
    let (mut finished, mut gone, mut shutting_down) = (false, false, false);
    let mut tick = tokio::time::interval(RETRY);
    loop {
        tokio::select! {
            () = &mut run, if !finished => {
                finished = true;
                model.finished = true;
            }
            Some(update) = rx.recv() => model.apply(update),
            changed = pod_rx.changed(), if !gone => {
                let pod = match changed {
                    Ok(()) => pod_rx.borrow_and_update().clone(),
                    Err(_) => None,
                };
                match pod {
                    Some(pod) => {
                        if let Some(stop) = deletion_stop(&pod) {
                            stop_tx.send_if_modified(|s| s.tighten(stop));
                        }
                        model.pod = pod;
                    }
                    None => {
                        gone = true;
                        stop_tx.send_replace(Stop::Kill);
                    }
                }
            }
            _ = shutdown.changed(), if !shutting_down => {
                shutting_down = true;
                stop_tx.send_replace(Stop::Kill);
            }
            _ = tick.tick() => {}
        }
        while let Ok(update) = rx.try_recv() {
            model.apply(update);
        }
        if gone || shutting_down {
            if finished {
                break;
            }
            continue;
        }
        if !ended {
            model.sync(&api).await;
        }
        if finished && model.pod.metadata.deletion_timestamp.is_some() {
            match delete_now(&api, &name, &uid).await {
                Ok(()) => {
                    info!(node = %ctx.node, "deleted pod {namespace}/{name}");
                    gone = true;
                    break;
                }
                Err(e) => warn!(node = %ctx.node, "delete pod {namespace}/{name}: {e}"),
            }
        }
    }
    if gone {
        // emptyDir, configMap and secret volumes end with their Pod; PVCs and logs stay.
        let volumes = ctx.work_dir.join("volumes").join(&uid);
        if let Err(e) = std::fs::remove_dir_all(&volumes)
            && e.kind() != io::ErrorKind::NotFound
        {
            warn!("remove {}: {e}", volumes.display());
        }
    }
}

/// Which container a status belongs to.
#[derive(Clone, Copy, Debug)]
enum Slot {
    Init(usize),
    Main(usize),
}

#[derive(Debug)]
enum Update {
    /// Volumes could not be set up (retried).
    SetupFailed(String),
    /// Volumes are ready and the Pod has its IP.
    Sandbox(String),
    Container(Slot, Box<ContainerStatus>),
}

fn waiting(reason: &str, message: Option<String>) -> ContainerState {
    ContainerState {
        waiting: Some(ContainerStateWaiting {
            reason: Some(reason.into()),
            message,
        }),
        ..ContainerState::default()
    }
}

fn exit_of(s: &ContainerStatus) -> Option<i32> {
    s.state.as_ref()?.terminated.as_ref().map(|t| t.exit_code)
}

fn ever_started(s: &ContainerStatus) -> bool {
    s.restart_count > 0
        || s.last_state.is_some()
        || s.state.as_ref().is_some_and(|st| st.waiting.is_none())
}

/// The Pod status as a kubelet computes it from its containers.
struct Model {
    pod: Arc<Pod>,
    start_time: Time,
    pod_ip: Option<String>,
    sandbox: bool,
    /// No process runs and none will: the phase is final.
    finished: bool,
    init: Vec<ContainerStatus>,
    main: Vec<ContainerStatus>,
    /// Condition type -> (status, since when).
    transitions: HashMap<&'static str, (bool, Time)>,
    /// The status last accepted by the API server.
    sent: Option<serde_json::Value>,
}

impl Model {
    fn new(pod: Arc<Pod>) -> Model {
        let spec = pod.spec.as_ref();
        let init_specs = spec
            .and_then(|s| s.init_containers.as_deref())
            .unwrap_or_default();
        let main_specs = spec.map(|s| s.containers.as_slice()).unwrap_or_default();
        let fresh = |c: &Container, reason: &str| ContainerStatus {
            name: c.name.clone(),
            image: c.image.clone().unwrap_or_default(),
            started: Some(false),
            state: Some(waiting(reason, None)),
            ..ContainerStatus::default()
        };
        let main_reason = if init_specs.is_empty() {
            "ContainerCreating"
        } else {
            "PodInitializing"
        };
        Model {
            init: init_specs
                .iter()
                .map(|c| fresh(c, "PodInitializing"))
                .collect(),
            main: main_specs.iter().map(|c| fresh(c, main_reason)).collect(),
            start_time: pod
                .status
                .as_ref()
                .and_then(|s| s.start_time.clone())
                .unwrap_or_else(now),
            pod,
            pod_ip: None,
            sandbox: false,
            finished: false,
            transitions: HashMap::new(),
            sent: None,
        }
    }

    fn apply(&mut self, update: Update) {
        match update {
            Update::SetupFailed(message) => {
                for s in self.init.iter_mut().chain(self.main.iter_mut()) {
                    if !ever_started(s) {
                        s.state = Some(waiting("ContainerCreating", Some(message.clone())));
                    }
                }
            }
            Update::Sandbox(ip) => {
                self.sandbox = true;
                self.pod_ip = Some(ip);
                let main_reason = if self.init.is_empty() {
                    "ContainerCreating"
                } else {
                    "PodInitializing"
                };
                for s in &mut self.init {
                    if !ever_started(s) {
                        s.state = Some(waiting("PodInitializing", None));
                    }
                }
                for s in &mut self.main {
                    if !ever_started(s) {
                        s.state = Some(waiting(main_reason, None));
                    }
                }
            }
            Update::Container(slot, status) => {
                let target = match slot {
                    Slot::Init(i) => self.init.get_mut(i),
                    Slot::Main(i) => self.main.get_mut(i),
                };
                if let Some(target) = target {
                    *target = *status;
                }
            }
        }
    }

    fn init_done(&self) -> bool {
        self.init.iter().all(|s| exit_of(s) == Some(0))
    }

    fn phase(&self) -> &'static str {
        if self.finished {
            let succeeded = self.init_done() && self.main.iter().all(|s| exit_of(s) == Some(0));
            return if succeeded { "Succeeded" } else { "Failed" };
        }
        if self.sandbox && self.init_done() && self.main.iter().any(ever_started) {
            "Running"
        } else {
            "Pending"
        }
    }

    fn condition(
        &mut self,
        type_: &'static str,
        ok: bool,
        reason: Option<String>,
        message: Option<String>,
    ) -> PodCondition {
        let since = match self.transitions.get(type_) {
            Some((was, since)) if *was == ok => since.clone(),
            _ => {
                let since = now();
                self.transitions.insert(type_, (ok, since.clone()));
                since
            }
        };
        let (reason, message) = if ok { (None, None) } else { (reason, message) };
        PodCondition {
            type_: type_.into(),
            status: if ok { "True" } else { "False" }.into(),
            last_transition_time: Some(since),
            reason,
            message,
            observed_generation: self.pod.metadata.generation,
            last_probe_time: None,
        }
    }

    fn conditions(&mut self, terminal: bool) -> Vec<PodCondition> {
        let current = self.pod.status.as_ref().and_then(|s| s.conditions.clone());
        let gate_true = |type_: &str| {
            current
                .iter()
                .flatten()
                .any(|c| c.type_ == type_ && c.status == "True")
        };
        let gates_unready: Vec<String> = self
            .pod
            .spec
            .iter()
            .flat_map(|s| s.readiness_gates.iter().flatten())
            .map(|g| g.condition_type.clone())
            .filter(|t| !gate_true(t))
            .collect();
        let names = |list: &[&ContainerStatus]| {
            list.iter()
                .map(|s| s.name.as_str())
                .collect::<Vec<_>>()
                .join(" ")
        };
        let uninitialized: Vec<&ContainerStatus> =
            self.init.iter().filter(|s| exit_of(s) != Some(0)).collect();
        let unready: Vec<&ContainerStatus> = self.main.iter().filter(|s| !s.ready).collect();
        let (not_ready_reason, not_ready_message) = if terminal {
            ("PodCompleted".to_string(), String::new())
        } else {
            (
                "ContainersNotReady".to_string(),
                format!("containers with unready status: [{}]", names(&unready)),
            )
        };
        let initialized = uninitialized.is_empty();
        let uninitialized_message = format!(
            "containers with incomplete status: [{}]",
            names(&uninitialized)
        );
        let containers_ready = unready.is_empty() && !terminal;
        let mut out: Vec<PodCondition> = current
            .iter()
            .flatten()
            .filter(|c| !OWN_CONDITIONS.contains(&c.type_.as_str()))
            .cloned()
            .collect();
        let sandbox = self.sandbox && !terminal;
        out.push(self.condition("PodReadyToStartContainers", sandbox, None, None));
        out.push(self.condition(
            "Initialized",
            initialized,
            Some("ContainersNotInitialized".into()),
            Some(uninitialized_message),
        ));
        let (ready_reason, ready_message) = if containers_ready {
            (
                "ReadinessGatesNotReady".to_string(),
                format!("the status of pod readiness gates {gates_unready:?} is not \"True\""),
            )
        } else {
            (not_ready_reason.clone(), not_ready_message.clone())
        };
        out.push(self.condition(
            "Ready",
            containers_ready && gates_unready.is_empty(),
            Some(ready_reason),
            Some(ready_message).filter(|m| !m.is_empty()),
        ));
        out.push(self.condition(
            "ContainersReady",
            containers_ready,
            Some(not_ready_reason),
            Some(not_ready_message).filter(|m| !m.is_empty()),
        ));
        out.push(self.condition("PodScheduled", true, None, None));
        out
    }

    fn status(&mut self) -> PodStatus {
        let phase = self.phase();
        let conditions = self.conditions(matches!(phase, "Succeeded" | "Failed"));
        PodStatus {
            phase: Some(phase.into()),
            conditions: Some(conditions),
            host_ip: Some(HOST_IP.into()),
            host_ips: Some(vec![HostIP { ip: HOST_IP.into() }]),
            pod_ip: self.pod_ip.clone(),
            pod_ips: self
                .pod_ip
                .as_ref()
                .map(|ip| vec![PodIP { ip: ip.clone() }]),
            start_time: Some(self.start_time.clone()),
            init_container_statuses: (!self.init.is_empty()).then(|| self.init.clone()),
            container_statuses: Some(self.main.clone()),
            observed_generation: self.pod.metadata.generation,
            ..PodStatus::default()
        }
    }

    /// Writes the status if it changed since the last accepted write (a failed write is
    /// retried on the next call).
    async fn sync(&mut self, api: &Api<Pod>) {
        let status = match serde_json::to_value(self.status()) {
            Ok(status) => status,
            Err(e) => {
                warn!("serialize pod status: {e}");
                return;
            }
        };
        if self.sent.as_ref() == Some(&status) {
            return;
        }
        let name = self.pod.metadata.name.clone().unwrap_or_default();
        let patch = Patch::Merge(json!({ "status": status }));
        match api.patch_status(&name, &patch_params(), &patch).await {
            Ok(_) => self.sent = Some(status),
            Err(kube::Error::Api(s)) if s.is_not_found() => {}
            Err(e) => warn!("update status of pod {name}: {e}"),
        }
    }
}

/// Warning events of one Pod, each reason and message once.
#[derive(Default)]
struct Events(Mutex<HashSet<(String, String)>>);

impl Events {
    async fn warn(&self, ctx: &Ctx, pod: &Pod, reason: &str, message: &str) {
        let fresh = self
            .0
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .insert((reason.to_string(), message.to_string()));
        if !fresh {
            return;
        }
        let namespace = pod.metadata.namespace.clone().unwrap_or_default();
        let name = pod.metadata.name.clone().unwrap_or_default();
        warn!(node = %ctx.node, "pod {namespace}/{name}: {reason}: {message}");
        let at = now();
        let event = CoreEvent {
            metadata: ObjectMeta {
                generate_name: Some(format!("{name}.")),
                namespace: Some(namespace.clone()),
                ..ObjectMeta::default()
            },
            involved_object: ObjectReference {
                api_version: Some("v1".into()),
                kind: Some("Pod".into()),
                name: Some(name),
                namespace: Some(namespace.clone()),
                uid: pod.metadata.uid.clone(),
                ..ObjectReference::default()
            },
            reason: Some(reason.into()),
            message: Some(message.into()),
            type_: Some("Warning".into()),
            source: Some(EventSource {
                component: Some("kubelet".into()),
                host: Some(ctx.node.clone()),
            }),
            reporting_component: Some("kubelet".into()),
            reporting_instance: Some(ctx.node.clone()),
            first_timestamp: Some(at.clone()),
            last_timestamp: Some(at),
            count: Some(1),
            ..CoreEvent::default()
        };
        let events: Api<CoreEvent> = Api::namespaced(ctx.client.clone(), &namespace);
        if let Err(e) = events.create(&PostParams::default(), &event).await {
            debug!("record event: {e}");
        }
    }
}

/// What the containers of a started Pod share.
struct Sandbox {
    pod: Arc<Pod>,
    pod_ip: String,
    volumes: HashMap<String, PathBuf>,
    events: Events,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Restart {
    Never,
    OnFailure,
    Always,
}

impl Restart {
    fn of(pod: &Pod) -> Restart {
        match pod.spec.as_ref().and_then(|s| s.restart_policy.as_deref()) {
            Some("Never") => Restart::Never,
            Some("OnFailure") => Restart::OnFailure,
            _ => Restart::Always,
        }
    }

    fn restarts(self, exit_code: i32) -> bool {
        match self {
            Restart::Never => false,
            Restart::OnFailure => exit_code != 0,
            Restart::Always => true,
        }
    }
}

/// Sets up the volumes, then runs the init containers one after the other and the containers
/// side by side, until they are done or told to stop.
async fn run_containers(
    ctx: Arc<Ctx>,
    pod: Arc<Pod>,
    tx: mpsc::UnboundedSender<Update>,
    mut stop: watch::Receiver<Stop>,
) {
    let events = Events::default();
    let volumes = loop {
        if stop.borrow().requested() {
            return;
        }
        match setup_volumes(&ctx, &pod).await {
            Ok(volumes) => break volumes,
            Err(message) => {
                events.warn(&ctx, &pod, "FailedMount", &message).await;
                // The receiver lives as long as this future.
                let _ = tx.send(Update::SetupFailed(message));
                if wait_or_stop(RETRY * 2, &mut stop).await {
                    return;
                }
            }
        }
    };
    let pod_ip = allocate_pod_ip().to_string();
    let _ = tx.send(Update::Sandbox(pod_ip.clone()));
    let policy = Restart::of(&pod);
    let sandbox = Arc::new(Sandbox {
        pod,
        pod_ip,
        volumes,
        events,
    });
    let spec = sandbox.pod.spec.clone().unwrap_or_default();
    let supervisor = |container: &Container, slot: Slot, restart: Restart| Supervisor {
        ctx: ctx.clone(),
        sandbox: sandbox.clone(),
        container: container.clone(),
        slot,
        restart,
        tx: tx.clone(),
        stop: stop.clone(),
    };
    // Init containers are retried on failure unless the Pod never restarts anything.
    let init_restart = if policy == Restart::Never {
        Restart::Never
    } else {
        Restart::OnFailure
    };
    for (i, c) in spec.init_containers.iter().flatten().enumerate() {
        if supervisor(c, Slot::Init(i), init_restart).run().await != Exit::Code(0) {
            return;
        }
    }
    let runs = spec
        .containers
        .iter()
        .enumerate()
        .map(|(i, c)| supervisor(c, Slot::Main(i), policy).run());
    futures::future::join_all(runs).await;
}

/// Fetches a namespaced object; a missing one is an error unless optional.
async fn get_named<K>(
    ctx: &Ctx,
    namespace: &str,
    kind: &str,
    name: &str,
    optional: Option<bool>,
) -> Result<Option<K>, String>
where
    K: kube::Resource<Scope = k8s_openapi::NamespaceResourceScope>
        + Clone
        + serde::de::DeserializeOwned
        + std::fmt::Debug,
    K::DynamicType: Default,
{
    let api: Api<K> = Api::namespaced(ctx.client.clone(), namespace);
    match api.get_opt(name).await {
        Ok(Some(object)) => Ok(Some(object)),
        Ok(None) if optional == Some(true) => Ok(None),
        Ok(None) => Err(format!("{kind} \"{name}\" not found")),
        Err(e) => Err(format!("get {kind} \"{name}\": {e}")),
    }
}

/// Applies fsGroup to a volume as a kubelet does: group fsGroup, group read (and write unless
/// read-only), setgid and group execute on directories, recursively; with OnRootMismatch only
/// when the root does not have them yet.
fn set_volume_ownership(
    root: &Path,
    gid: u32,
    read_only: bool,
    on_root_mismatch: bool,
) -> io::Result<()> {
    let mask = if read_only { 0o440 } else { 0o660 };
    if on_root_mismatch {
        let meta = std::fs::metadata(root)?;
        if meta.gid() == gid && meta.mode() & mask == mask && meta.mode() & 0o2000 != 0 {
            return Ok(());
        }
    }
    let mut stack = vec![root.to_path_buf()];
    while let Some(path) = stack.pop() {
        let meta = std::fs::symlink_metadata(&path)?;
        std::os::unix::fs::lchown(&path, None, Some(gid))?;
        if meta.file_type().is_symlink() {
            continue;
        }
        let add = if meta.is_dir() { mask | 0o2110 } else { mask };
        std::fs::set_permissions(
            &path,
            std::fs::Permissions::from_mode((meta.mode() | add) & 0o7777),
        )?;
        if meta.is_dir() {
            for entry in std::fs::read_dir(&path)? {
                stack.push(entry?.path());
            }
        }
    }
    Ok(())
}

/// Writes a configMap's or secret's keys as files, afresh.
fn write_key_files(
    dir: &Path,
    kind: &str,
    data: &BTreeMap<String, Vec<u8>>,
    items: Option<&[KeyToPath]>,
    default_mode: Option<i32>,
    optional: bool,
) -> Result<(), String> {
    let io_err = |e: io::Error| format!("write {}: {e}", dir.display());
    if dir.exists() {
        std::fs::remove_dir_all(dir).map_err(io_err)?;
    }
    std::fs::create_dir_all(dir).map_err(io_err)?;
    let default_mode = default_mode.unwrap_or(0o644);
    let files: Vec<(&str, &[u8], i32)> = match items {
        Some(items) => {
            let mut files = Vec::new();
            for item in items {
                match data.get(&item.key) {
                    Some(bytes) => {
                        files.push((
                            item.path.as_str(),
                            bytes.as_slice(),
                            item.mode.unwrap_or(default_mode),
                        ));
                    }
                    None if optional => {}
                    None => {
                        return Err(format!("{kind} references non-existent key: {}", item.key));
                    }
                }
            }
            files
        }
        None => data
            .iter()
            .map(|(k, v)| (k.as_str(), v.as_slice(), default_mode))
            .collect(),
    };
    for (path, bytes, mode) in files {
        if !is_relative_inside(path) {
            return Err(format!(
                "{kind} volume path {path:?} must be relative, without .."
            ));
        }
        let file = dir.join(path);
        if let Some(parent) = file.parent() {
            std::fs::create_dir_all(parent).map_err(io_err)?;
        }
        std::fs::write(&file, bytes).map_err(io_err)?;
        let mode = u32::try_from(mode).unwrap_or(0o644) & 0o7777;
        std::fs::set_permissions(&file, std::fs::Permissions::from_mode(mode)).map_err(io_err)?;
    }
    Ok(())
}

/// Checks (or creates) a hostPath by its `type`, as a kubelet does.
fn check_host_path(path: &str, kind: Option<&str>) -> Result<(), String> {
    let p = Path::new(path);
    let meta = std::fs::metadata(p);
    let kind = kind.unwrap_or_default();
    let fail = |what: &str| {
        let why = match &meta {
            Ok(_) => String::new(),
            Err(e) => format!(" ({e})"),
        };
        Err(format!(
            "hostPath type check failed: {path} is not a {what}{why}"
        ))
    };
    let is = |check: fn(&std::fs::Metadata) -> bool| meta.as_ref().is_ok_and(check);
    match kind {
        "" => Ok(()),
        "Directory" if is(|m| m.is_dir()) => Ok(()),
        "Directory" => fail("directory"),
        "DirectoryOrCreate" if is(|m| m.is_dir()) => Ok(()),
        "DirectoryOrCreate" => std::fs::create_dir_all(p)
            .map_err(|e| format!("hostPath: create directory {path}: {e}")),
        "File" if is(|m| m.is_file()) => Ok(()),
        "File" => fail("file"),
        "FileOrCreate" if meta.is_ok() => Ok(()),
        "FileOrCreate" => p
            .parent()
            .map_or(Ok(()), std::fs::create_dir_all)
            .and_then(|()| std::fs::File::create(p).map(drop))
            .map_err(|e| format!("hostPath: create file {path}: {e}")),
        "Socket" if is(|m| m.file_type().is_socket()) => Ok(()),
        "Socket" => fail("socket"),
        "CharDevice" if is(|m| m.file_type().is_char_device()) => Ok(()),
        "CharDevice" => fail("character device"),
        "BlockDevice" if is(|m| m.file_type().is_block_device()) => Ok(()),
        "BlockDevice" => fail("block device"),
        other => Err(format!("hostPath type {other} is not known")),
    }
}

/// The host directory of each volume of the Pod, set up as a kubelet mounts them.
async fn setup_volumes(ctx: &Ctx, pod: &Pod) -> Result<HashMap<String, PathBuf>, String> {
    let namespace = pod.metadata.namespace.clone().unwrap_or_default();
    let name = pod.metadata.name.clone().unwrap_or_default();
    let uid = pod.metadata.uid.clone().unwrap_or_default();
    let spec = pod.spec.as_ref().ok_or("the pod has no spec")?;
    let logs = pod_log_dir(&ctx.work_dir, &namespace, &name);
    std::fs::create_dir_all(&logs).map_err(|e| format!("create {}: {e}", logs.display()))?;
    let security = spec.security_context.as_ref();
    let fs_group = security
        .and_then(|s| s.fs_group)
        .and_then(|g| u32::try_from(g).ok());
    let on_root_mismatch =
        security.and_then(|s| s.fs_group_change_policy.as_deref()) == Some("OnRootMismatch");
    let ownership = |dir: &Path, read_only: bool| match fs_group {
        Some(gid) => set_volume_ownership(dir, gid, read_only, on_root_mismatch)
            .map_err(|e| format!("set fsGroup {gid} on {}: {e}", dir.display())),
        None => Ok(()),
    };
    let pod_dir = ctx.work_dir.join("volumes").join(&uid);
    let mut volumes = HashMap::new();
    for v in spec.volumes.iter().flatten() {
        let fail = |e: String| format!("MountVolume.SetUp failed for volume \"{}\": {e}", v.name);
        let dir = if v.empty_dir.is_some() {
            let dir = pod_dir.join(&v.name);
            std::fs::create_dir_all(&dir)
                .and_then(|()| {
                    std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o777))
                })
                .map_err(|e| fail(e.to_string()))?;
            ownership(&dir, false).map_err(fail)?;
            dir
        } else if let Some(claim) = &v.persistent_volume_claim {
            get_named::<PersistentVolumeClaim>(
                ctx,
                &namespace,
                "persistentvolumeclaim",
                &claim.claim_name,
                None,
            )
            .await
            .map_err(fail)?;
            // Per claim, not per Pod: the data outlives the Pod as a PV would.
            let dir = ctx
                .work_dir
                .join("pvc")
                .join(&namespace)
                .join(&claim.claim_name);
            std::fs::create_dir_all(&dir).map_err(|e| fail(e.to_string()))?;
            ownership(&dir, claim.read_only.unwrap_or(false)).map_err(fail)?;
            dir
        } else if let Some(source) = &v.config_map {
            let found: Option<ConfigMap> =
                get_named(ctx, &namespace, "configmap", &source.name, source.optional)
                    .await
                    .map_err(fail)?;
            let mut data: BTreeMap<String, Vec<u8>> = BTreeMap::new();
            if let Some(cm) = found {
                data.extend(
                    cm.data
                        .into_iter()
                        .flatten()
                        .map(|(k, v)| (k, v.into_bytes())),
                );
                data.extend(cm.binary_data.into_iter().flatten().map(|(k, v)| (k, v.0)));
            }
            let dir = pod_dir.join(&v.name);
            write_key_files(
                &dir,
                "configmap",
                &data,
                source.items.as_deref(),
                source.default_mode,
                source.optional == Some(true),
            )
            .map_err(fail)?;
            ownership(&dir, true).map_err(fail)?;
            dir
        } else if let Some(source) = &v.secret {
            let secret_name = source.secret_name.clone().unwrap_or_default();
            let found: Option<Secret> =
                get_named(ctx, &namespace, "secret", &secret_name, source.optional)
                    .await
                    .map_err(fail)?;
            let data: BTreeMap<String, Vec<u8>> = found
                .and_then(|s| s.data)
                .into_iter()
                .flatten()
                .map(|(k, v)| (k, v.0))
                .collect();
            let dir = pod_dir.join(&v.name);
            write_key_files(
                &dir,
                "secret",
                &data,
                source.items.as_deref(),
                source.default_mode,
                source.optional == Some(true),
            )
            .map_err(fail)?;
            ownership(&dir, true).map_err(fail)?;
            dir
        } else if let Some(host) = &v.host_path {
            check_host_path(&host.path, host.type_.as_deref()).map_err(fail)?;
            PathBuf::from(&host.path)
        } else {
            return Err(fail(
                "only emptyDir, persistentVolumeClaim, configMap, secret and hostPath volumes \
                 are emulated by the kubelet stand-in"
                    .into(),
            ));
        };
        volumes.insert(v.name.clone(), dir);
    }
    Ok(volumes)
}

/// The value of a `fieldRef` env source.
fn field_ref(pod: &Pod, node: &str, pod_ip: &str, path: &str) -> Result<String, StartError> {
    let meta = &pod.metadata;
    let keyed = |map: &Option<BTreeMap<String, String>>, prefix: &str| {
        let key = path
            .strip_prefix(prefix)?
            .strip_prefix("['")?
            .strip_suffix("']")?;
        Some(map.as_ref()?.get(key).cloned().unwrap_or_default())
    };
    let value = match path {
        "metadata.name" => meta.name.clone(),
        "metadata.namespace" => meta.namespace.clone(),
        "metadata.uid" => meta.uid.clone(),
        "spec.nodeName" => Some(node.to_string()),
        "spec.serviceAccountName" => pod
            .spec
            .as_ref()
            .and_then(|s| s.service_account_name.clone()),
        "status.hostIP" | "status.hostIPs" => Some(HOST_IP.to_string()),
        "status.podIP" | "status.podIPs" => Some(pod_ip.to_string()),
        _ => match keyed(&meta.labels, "metadata.labels")
            .or_else(|| keyed(&meta.annotations, "metadata.annotations"))
        {
            Some(value) => Some(value),
            None => {
                return Err(StartError::config(format!(
                    "fieldRef {path} is not supported by the kubelet stand-in"
                )));
            }
        },
    };
    Ok(value.unwrap_or_default())
}

/// The container's environment as Kubernetes defines it (envFrom, then env in order, each
/// value expanded against the variables before it), without the image's.
async fn resolve_env(
    ctx: &Ctx,
    sandbox: &Sandbox,
    c: &Container,
) -> Result<BTreeMap<String, String>, StartError> {
    let pod = &sandbox.pod;
    let namespace = pod.metadata.namespace.clone().unwrap_or_default();
    let mut env = BTreeMap::new();
    for from in c.env_from.iter().flatten() {
        let prefix = from.prefix.as_deref().unwrap_or_default();
        if let Some(r) = &from.config_map_ref {
            let cm: Option<ConfigMap> =
                get_named(ctx, &namespace, "configmap", &r.name, r.optional)
                    .await
                    .map_err(StartError::config)?;
            for (k, v) in cm.and_then(|cm| cm.data).into_iter().flatten() {
                env.insert(format!("{prefix}{k}"), v);
            }
        }
        if let Some(r) = &from.secret_ref {
            let secret: Option<Secret> = get_named(ctx, &namespace, "secret", &r.name, r.optional)
                .await
                .map_err(StartError::config)?;
            for (k, v) in secret.and_then(|s| s.data).into_iter().flatten() {
                env.insert(
                    format!("{prefix}{k}"),
                    String::from_utf8_lossy(&v.0).into_owned(),
                );
            }
        }
    }
    for var in c.env.iter().flatten() {
        let value = match &var.value_from {
            None => expand(var.value.as_deref().unwrap_or_default(), &|n| {
                env.get(n).cloned()
            }),
            Some(from) => {
                if let Some(f) = &from.field_ref {
                    field_ref(pod, &ctx.node, &sandbox.pod_ip, &f.field_path)?
                } else if let Some(s) = &from.secret_key_ref {
                    let secret: Option<Secret> =
                        get_named(ctx, &namespace, "secret", &s.name, s.optional)
                            .await
                            .map_err(StartError::config)?;
                    match secret
                        .and_then(|x| x.data)
                        .and_then(|mut d| d.remove(&s.key))
                    {
                        Some(v) => String::from_utf8_lossy(&v.0).into_owned(),
                        None if s.optional == Some(true) => continue,
                        None => {
                            return Err(StartError::config(format!(
                                "couldn't find key {} in Secret {namespace}/{}",
                                s.key, s.name
                            )));
                        }
                    }
                } else if let Some(s) = &from.config_map_key_ref {
                    let cm: Option<ConfigMap> =
                        get_named(ctx, &namespace, "configmap", &s.name, s.optional)
                            .await
                            .map_err(StartError::config)?;
                    match cm.and_then(|x| x.data).and_then(|mut d| d.remove(&s.key)) {
                        Some(v) => v,
                        None if s.optional == Some(true) => continue,
                        None => {
                            return Err(StartError::config(format!(
                                "couldn't find key {} in ConfigMap {namespace}/{}",
                                s.key, s.name
                            )));
                        }
                    }
                } else {
                    return Err(StartError::config(format!(
                        "env {}: only fieldRef, secretKeyRef and configMapKeyRef are supported \
                         by the kubelet stand-in",
                        var.name
                    )));
                }
            }
        };
        env.insert(var.name.clone(), value);
    }
    Ok(env)
}

/// The container's volumeMounts as (container path, host path), longest container path first.
fn container_mounts(
    sandbox: &Sandbox,
    c: &Container,
    env: &BTreeMap<String, String>,
) -> Result<Vec<(String, String)>, StartError> {
    let mut mounts = Vec::new();
    for m in c.volume_mounts.iter().flatten() {
        let base = sandbox.volumes.get(&m.name).ok_or_else(|| {
            StartError::config(format!(
                "volumeMount {}: the pod has no such volume",
                m.name
            ))
        })?;
        let sub = match (&m.sub_path, &m.sub_path_expr) {
            (Some(p), _) if !p.is_empty() => p.clone(),
            (_, Some(e)) if !e.is_empty() => expand(e, &|n| env.get(n).cloned()),
            _ => String::new(),
        };
        let dir = if sub.is_empty() {
            base.clone()
        } else {
            if !is_relative_inside(&sub) {
                return Err(StartError::config(format!(
                    "volumeMount {}: subPath {sub:?} must be relative, without ..",
                    m.name
                )));
            }
            let dir = base.join(&sub);
            std::fs::create_dir_all(&dir).map_err(|e| {
                StartError::config(format!("create subPath {}: {e}", dir.display()))
            })?;
            dir
        };
        let host = dir.to_str().ok_or_else(|| {
            StartError::config(format!("volume path {} is not UTF-8", dir.display()))
        })?;
        let target = m.mount_path.trim_end_matches('/');
        if !target.is_empty() {
            mounts.push((target.to_string(), host.to_string()));
        }
    }
    mounts.sort_by_key(|m| std::cmp::Reverse(m.0.len()));
    Ok(mounts)
}

#[derive(Debug)]
enum ProbeCheck {
    Tcp { host: String, port: u16 },
    Exec(ProcessSpec),
}

#[derive(Debug)]
struct ProbeRun {
    check: ProbeCheck,
    initial_delay: Duration,
    period: Duration,
    timeout: Duration,
    success_threshold: i32,
    failure_threshold: i32,
}

impl ProbeRun {
    fn new(
        probe: &Probe,
        c: &Container,
        process: &ProcessSpec,
        env: &BTreeMap<String, String>,
        mounts: &[(String, String)],
        pod_ip: &str,
    ) -> Result<ProbeRun, StartError> {
        let check = if let Some(tcp) = &probe.tcp_socket {
            let port = match &tcp.port {
                IntOrString::Int(p) => u16::try_from(*p).ok(),
                IntOrString::String(name) => c
                    .ports
                    .iter()
                    .flatten()
                    .find(|p| p.name.as_deref() == Some(name))
                    .and_then(|p| u16::try_from(p.container_port).ok()),
            }
            .ok_or_else(|| StartError::config(format!("readinessProbe: no port {:?}", tcp.port)))?;
            ProbeCheck::Tcp {
                host: tcp.host.clone().unwrap_or_else(|| pod_ip.to_string()),
                port,
            }
        } else if let Some(exec) = &probe.exec {
            let argv: Vec<String> = exec
                .command
                .iter()
                .flatten()
                .map(|a| rewrite_paths(&expand(a, &|n| env.get(n).cloned()), mounts))
                .collect();
            if argv.is_empty() {
                return Err(StartError::config("readinessProbe: exec without a command"));
            }
            ProbeCheck::Exec(ProcessSpec {
                argv,
                ..process.clone()
            })
        } else {
            return Err(StartError::config(
                "readinessProbe: only tcpSocket and exec probes are emulated by the kubelet stand-in",
            ));
        };
        let seconds = |v: Option<i32>, default: u64| {
            Duration::from_secs(v.and_then(|v| u64::try_from(v).ok()).unwrap_or(default))
        };
        Ok(ProbeRun {
            check,
            initial_delay: seconds(probe.initial_delay_seconds, 0),
            period: seconds(probe.period_seconds, 10).max(Duration::from_secs(1)),
            timeout: seconds(probe.timeout_seconds, 1).max(Duration::from_secs(1)),
            success_threshold: probe.success_threshold.unwrap_or(1).max(1),
            failure_threshold: probe.failure_threshold.unwrap_or(3).max(1),
        })
    }

    async fn succeeds(&self, registry: &Arc<ProcessGroups>) -> bool {
        match &self.check {
            ProbeCheck::Tcp { host, port } => matches!(
                timeout(
                    self.timeout,
                    tokio::net::TcpStream::connect((host.as_str(), *port))
                )
                .await,
                Ok(Ok(_))
            ),
            ProbeCheck::Exec(spec) => match spawn(registry, spec, None) {
                // Dropping a probe that timed out kills it.
                Ok(mut probe) => matches!(
                    timeout(self.timeout, probe.child.wait()).await,
                    Ok(Ok(status)) if status.success()
                ),
                Err(e) => {
                    debug!("readiness probe: {e}");
                    false
                }
            },
        }
    }
}

/// Runs a readiness probe for as long as it is polled, publishing readiness with the probe's
/// thresholds; returns at once without a probe.
async fn probe_loop(
    probe: Option<ProbeRun>,
    registry: Arc<ProcessGroups>,
    ready: watch::Sender<bool>,
) {
    let Some(probe) = probe else {
        return;
    };
    sleep(probe.initial_delay).await;
    let (mut successes, mut failures) = (0, 0);
    loop {
        if probe.succeeds(&registry).await {
            successes += 1;
            failures = 0;
            if successes >= probe.success_threshold {
                ready.send_if_modified(|r| !std::mem::replace(r, true));
            }
        } else {
            failures += 1;
            successes = 0;
            if failures >= probe.failure_threshold {
                ready.send_if_modified(|r| std::mem::replace(r, false));
            }
        }
        sleep(probe.period).await;
    }
}

/// How a container's supervision ended.
#[derive(Debug, PartialEq, Eq)]
enum Exit {
    /// Exited for good with this code.
    Code(i32),
    /// Stopped on request (deletion, shutdown).
    Stopped,
}

struct Prepared {
    bin: PathBuf,
    process: ProcessSpec,
    probe: Option<ProbeRun>,
}

/// Runs one container: starts it, restarts it as the policy says, reports its status.
struct Supervisor {
    ctx: Arc<Ctx>,
    sandbox: Arc<Sandbox>,
    container: Container,
    slot: Slot,
    restart: Restart,
    tx: mpsc::UnboundedSender<Update>,
    stop: watch::Receiver<Stop>,
}

impl Supervisor {
    fn send(&self, status: &ContainerStatus) {
        // The receiver outlives every supervisor.
        let _ = self
            .tx
            .send(Update::Container(self.slot, Box::new(status.clone())));
    }

    fn log(&self) -> PathBuf {
        let meta = &self.sandbox.pod.metadata;
        log_path(
            &self.ctx.work_dir,
            meta.namespace.as_deref().unwrap_or_default(),
            meta.name.as_deref().unwrap_or_default(),
            &self.container.name,
        )
    }

    /// What is needed to start the container now (env and files may have changed since the
    /// last start, as with a kubelet).
    /// A failed container's termination message: with `FallbackToLogsOnError`, the end of
    /// its log, as a kubelet takes it (the last 80 lines, at most 2 KiB).
    fn termination_message(&self, log: &Path) -> Option<String> {
        if self.container.termination_message_policy.as_deref() != Some("FallbackToLogsOnError") {
            return None;
        }
        let text = std::fs::read(log).ok()?;
        Some(log_tail(&String::from_utf8_lossy(&text), 80, 2048))
    }

    async fn prepare(&self) -> Result<Prepared, StartError> {
        let c = &self.container;
        let pod = &self.sandbox.pod;
        let image = c.image.as_deref().unwrap_or_default();
        let bin = self
            .ctx
            .images
            .get(image)
            .cloned()
            .ok_or_else(|| StartError {
                reason: "ErrImagePull",
                message: format!(
                    "image {image:?} is not in the kubelet stand-in's image map (it has: {})",
                    self.ctx
                        .images
                        .keys()
                        .cloned()
                        .collect::<Vec<_>>()
                        .join(", ")
                ),
            })?;
        if matches!(self.slot, Slot::Init(_)) && c.restart_policy.is_some() {
            return Err(StartError::config(
                "sidecar init containers (restartPolicy on an init container) are not emulated \
                 by the kubelet stand-in",
            ));
        }
        let command = c.command.as_deref().unwrap_or_default();
        if command.is_empty() {
            return Err(StartError {
                reason: "CreateContainerError",
                message: "the container has no command; the kubelet stand-in does not emulate \
                          image entrypoints"
                    .into(),
            });
        }
        let (identity, home) = identity(pod, c)?;
        let env = resolve_env(&self.ctx, &self.sandbox, c).await?;
        let mounts = container_mounts(&self.sandbox, c, &env)?;
        let lookup = |name: &str| env.get(name).cloned();
        let argv = command
            .iter()
            .chain(c.args.iter().flatten())
            .map(|a| rewrite_paths(&expand(a, &lookup), &mounts))
            .collect();
        let pod_name = pod.metadata.name.as_deref().unwrap_or_default();
        let mut process_env = image_env(image, &bin, pod_name, &home);
        process_env.retain(|(k, _)| !env.contains_key(k));
        process_env.extend(env.iter().map(|(k, v)| (k.clone(), v.clone())));
        for (_, value) in &mut process_env {
            *value = rewrite_paths(value, &mounts);
        }
        let cwd = c
            .working_dir
            .as_deref()
            .map_or_else(|| "/".to_string(), |d| rewrite_paths(d, &mounts));
        let process = ProcessSpec {
            argv,
            env: process_env,
            cwd: PathBuf::from(cwd),
            identity,
        };
        let probe = c
            .readiness_probe
            .as_ref()
            .map(|p| ProbeRun::new(p, c, &process, &env, &mounts, &self.sandbox.pod_ip))
            .transpose()?;
        Ok(Prepared {
            bin,
            process,
            probe,
        })
    }

    async fn run(mut self) -> Exit {
        let signal = stop_signal(&self.container);
        let pod_name = self.sandbox.pod.metadata.name.clone().unwrap_or_default();
        let mut status = ContainerStatus {
            name: self.container.name.clone(),
            image: self.container.image.clone().unwrap_or_default(),
            started: Some(false),
            ..ContainerStatus::default()
        };
        let mut backoff = BACKOFF_START;
        loop {
            if self.stop.borrow().requested() {
                return Exit::Stopped;
            }
            let prepared = match self.prepare().await {
                Ok(prepared) => prepared,
                Err(e) => {
                    let event = format!("Error: {}: {}", e.reason, e.message);
                    self.sandbox
                        .events
                        .warn(&self.ctx, &self.sandbox.pod, "Failed", &event)
                        .await;
                    status.state = Some(waiting(e.reason, Some(e.message)));
                    self.send(&status);
                    if wait_or_stop(backoff, &mut self.stop).await {
                        return Exit::Stopped;
                    }
                    backoff = (backoff * 2).min(BACKOFF_MAX);
                    continue;
                }
            };
            // Deletion may have come while the environment was read.
            if self.stop.borrow().requested() {
                return Exit::Stopped;
            }
            status.image_id = format!("file://{}", prepared.bin.display());
            let started_at = now();
            let started = Instant::now();
            let log = self.log();
            let outcome = match spawn(&self.ctx.groups, &prepared.process, Some(&log)) {
                Ok(mut process) => {
                    status.container_id = Some(format!("kubelet-stand-in://{}", process.pid));
                    status.state = Some(ContainerState {
                        running: Some(ContainerStateRunning {
                            started_at: Some(started_at.clone()),
                        }),
                        ..ContainerState::default()
                    });
                    status.started = Some(true);
                    status.ready = prepared.probe.is_none();
                    self.send(&status);
                    self.wait_exit(&mut process, &mut status, prepared.probe, signal)
                        .await
                        .map(exit_code)
                        .map_err(|e| format!("wait for the process: {e}"))
                    // Leftover processes of the group die with `process` here.
                }
                Err(e) => Err(e.to_string()),
            };
            let (code, reason, message) = match outcome {
                Ok(0) => (0, "Completed", None),
                Ok(code) => (code, "Error", self.termination_message(&log)),
                Err(message) => {
                    append_log(&log, &format!("kubelet stand-in: cannot start: {message}"));
                    (128, "StartError", Some(message))
                }
            };
            let terminated = ContainerState {
                terminated: Some(ContainerStateTerminated {
                    exit_code: code,
                    reason: Some(reason.into()),
                    message,
                    started_at: Some(started_at),
                    finished_at: Some(now()),
                    container_id: status.container_id.clone(),
                    signal: None,
                }),
                ..ContainerState::default()
            };
            status.ready = false;
            status.started = Some(false);
            let stopping = self.stop.borrow().requested();
            if stopping || !self.restart.restarts(code) {
                status.state = Some(terminated);
                self.send(&status);
                return if stopping {
                    Exit::Stopped
                } else {
                    Exit::Code(code)
                };
            }
            if started.elapsed() >= BACKOFF_RESET {
                backoff = BACKOFF_START;
            }
            status.last_state = Some(terminated);
            status.state = Some(waiting(
                "CrashLoopBackOff",
                Some(format!(
                    "back-off {backoff:?} restarting failed container={} pod={pod_name}",
                    self.container.name
                )),
            ));
            self.send(&status);
            if wait_or_stop(backoff, &mut self.stop).await {
                return Exit::Stopped;
            }
            backoff = (backoff * 2).min(BACKOFF_MAX);
            status.restart_count += 1;
        }
    }

    /// Waits for the container's main process to exit, keeping its readiness up to date and
    /// stopping it when asked: stop signal, then SIGKILL to the group at the deadline.
    async fn wait_exit(
        &mut self,
        process: &mut Spawned,
        status: &mut ContainerStatus,
        probe: Option<ProbeRun>,
        signal: i32,
    ) -> io::Result<ExitStatus> {
        let (ready_tx, mut ready_rx) = watch::channel(probe.is_none());
        let probing = probe_loop(probe, self.ctx.groups.clone(), ready_tx);
        tokio::pin!(probing);
        let (mut probing_live, mut ready_live, mut stop_live) = (true, true, true);
        let (mut signalled, mut killed) = (false, false);
        let mut kill_at: Option<Instant> = None;
        loop {
            let stop = *self.stop.borrow();
            match stop {
                Stop::Run => {}
                Stop::Graceful(deadline) if !killed => {
                    if !signalled {
                        signal_process(process.pid, signal);
                        signalled = true;
                    }
                    kill_at = Some(deadline);
                }
                Stop::Kill if !killed => {
                    kill_group(process.pid);
                    killed = true;
                    kill_at = None;
                }
                Stop::Graceful(_) | Stop::Kill => {}
            }
            tokio::select! {
                exited = process.child.wait() => return exited,
                changed = self.stop.changed(), if stop_live => {
                    if changed.is_err() {
                        // The Pod's worker is gone.
                        stop_live = false;
                        kill_group(process.pid);
                        killed = true;
                    }
                }
                () = sleep_until(kill_at.unwrap_or_else(Instant::now)), if kill_at.is_some() => {
                    kill_group(process.pid);
                    killed = true;
                    kill_at = None;
                }
                () = &mut probing, if probing_live => probing_live = false,
                changed = ready_rx.changed(), if ready_live => match changed {
                    Ok(()) => {
                        status.ready = *ready_rx.borrow_and_update();
                        self.send(status);
                    }
                    Err(_) => ready_live = false,
                },
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn vars(pairs: &[(&str, &str)]) -> impl Fn(&str) -> Option<String> {
        let map: BTreeMap<String, String> = pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        move |name| map.get(name).cloned()
    }

    #[test]
    fn expansion_follows_kubernetes_rules() {
        let lookup = vars(&[("A", "x"), ("B", "$(A)")]);
        let cases = [
            ("$(A)", "x"),
            ("pre-$(A)-post", "pre-x-post"),
            ("$$(A)", "$(A)"),
            ("$$$(A)", "$x"),
            ("$(MISSING)", "$(MISSING)"),
            ("$(A", "$(A"),
            ("$()", "$()"),
            ("$A", "$A"),
            ("a$", "a$"),
            ("$(B)", "$(A)"),
            ("$(cat /etc/x)", "$(cat /etc/x)"),
            ("é$é", "é$é"),
        ];
        for (input, expected) in cases {
            assert_eq!(expand(input, &lookup), expected, "expand {input:?}");
        }
    }

    #[test]
    fn rewriting_replaces_mount_paths_at_path_boundaries_longest_first() {
        let mut mounts = vec![
            ("/data".to_string(), "/host/d".to_string()),
            ("/data/sub".to_string(), "/host/s".to_string()),
            ("/etc/app".to_string(), "/host/e".to_string()),
        ];
        mounts.sort_by_key(|m| std::cmp::Reverse(m.0.len()));
        let cases = [
            ("/data", "/host/d"),
            ("/data/pg", "/host/d/pg"),
            ("/data/sub/x", "/host/s/x"),
            ("/data/subway", "/host/d/subway"),
            ("/database", "/database"),
            ("/x/data", "/x/data"),
            ("rel/data", "rel/data"),
            (
                "-c hba_file=/etc/app/hba.conf",
                "-c hba_file=/host/e/hba.conf",
            ),
            (
                "cat '/data' \"/data/x\" $(ls /data)",
                "cat '/host/d' \"/host/d/x\" $(ls /host/d)",
            ),
            ("/data:/etc/app", "/host/d:/host/e"),
            ("/etc/app-secret", "/etc/app-secret"),
            ("/data.bak", "/data.bak"),
        ];
        for (input, expected) in cases {
            assert_eq!(rewrite_paths(input, &mounts), expected, "rewrite {input:?}");
        }
        // A host path that contains a mount path is not rewritten twice.
        let nested = vec![("/var/tmp".to_string(), "/var/tmp/work/v".to_string())];
        assert_eq!(rewrite_paths("/var/tmp/x", &nested), "/var/tmp/work/v/x");
    }

    #[test]
    fn a_termination_message_is_the_end_of_the_log() {
        let log: String = (1..=100).map(|i| format!("line {i}\n")).collect();
        let tail = log_tail(&log, 80, 2048);
        assert!(tail.starts_with("line 21\n"), "{tail}");
        assert!(tail.ends_with("line 100"), "{tail}");
        assert_eq!(log_tail(&log, 80, 8), "line 100");
        assert_eq!(log_tail("é", 80, 1), "");
        assert_eq!(log_tail("", 80, 2048), "");
    }

    #[test]
    fn images_and_stop_signals() {
        assert_eq!(image_name("docker.io/library/postgres:15"), "postgres");
        assert_eq!(image_name("postgres@sha256:abc"), "postgres");
        assert_eq!(
            image_name("registry:5000/postgres-exporter:1"),
            "postgres-exporter"
        );
        let container = |image: &str, signal: Option<&str>| Container {
            image: Some(image.into()),
            lifecycle: signal.map(|s| k8s_openapi::api::core::v1::Lifecycle {
                stop_signal: Some(s.into()),
                ..Default::default()
            }),
            ..Container::default()
        };
        assert_eq!(stop_signal(&container("postgres:15", None)), libc::SIGINT);
        assert_eq!(stop_signal(&container("busybox:1", None)), libc::SIGTERM);
        assert_eq!(
            stop_signal(&container("postgres:15", Some("SIGQUIT"))),
            libc::SIGQUIT
        );
    }

    #[test]
    fn stop_requests_only_tighten() {
        let soon = Instant::now();
        let later = soon + Duration::from_secs(30);
        let mut stop = Stop::Run;
        assert!(stop.tighten(Stop::Graceful(later)));
        assert!(!stop.tighten(Stop::Graceful(later + Duration::from_secs(1))));
        assert!(stop.tighten(Stop::Graceful(soon)));
        assert!(!stop.tighten(Stop::Run));
        assert!(stop.tighten(Stop::Kill));
        assert!(!stop.tighten(Stop::Graceful(soon)));
        assert_eq!(stop, Stop::Kill);
    }

    #[test]
    fn pod_ips_are_unique_loopback_addresses() {
        let ips: Vec<Ipv4Addr> = (0..600).map(|_| allocate_pod_ip()).collect();
        let distinct: HashSet<_> = ips.iter().collect();
        assert_eq!(distinct.len(), ips.len());
        for ip in ips {
            let [a, b, _, d] = ip.octets();
            assert_eq!(a, 127);
            assert!(b >= 64, "{ip}");
            assert!(d != 0 && d != 255, "{ip}");
        }
    }

    fn pod_for_scheduling(yaml: serde_json::Value) -> Pod {
        serde_json::from_value(yaml).unwrap()
    }

    #[test]
    fn scheduling_honours_selectors_and_affinity() {
        let labels = node_labels("n1");
        let fits_spec = |spec: serde_json::Value| {
            fits(
                &pod_for_scheduling(json!({ "metadata": { "name": "p" }, "spec": spec })),
                "n1",
                &labels,
            )
        };
        let containers = json!([{ "name": "c" }]);
        assert!(fits_spec(json!({ "containers": containers })));
        assert!(fits_spec(json!({
            "containers": containers,
            "nodeSelector": { "kubernetes.io/hostname": "n1" },
        })));
        assert!(!fits_spec(json!({
            "containers": containers,
            "nodeSelector": { "kubernetes.io/hostname": "n2" },
        })));
        assert!(!fits_spec(
            json!({ "containers": containers, "schedulerName": "other" })
        ));
        let affinity = |term: serde_json::Value| {
            json!({
                "containers": containers,
                "affinity": { "nodeAffinity": { "requiredDuringSchedulingIgnoredDuringExecution": {
                    "nodeSelectorTerms": [term]
                } } },
            })
        };
        assert!(fits_spec(affinity(json!({ "matchFields": [
            { "key": "metadata.name", "operator": "In", "values": ["n1"] }
        ] }))));
        assert!(!fits_spec(affinity(json!({ "matchExpressions": [
            { "key": "kubernetes.io/hostname", "operator": "NotIn", "values": ["n1"] }
        ] }))));
        assert!(fits_spec(affinity(json!({ "matchExpressions": [
            { "key": "kubernetes.io/os", "operator": "Exists" },
            { "key": "disk", "operator": "DoesNotExist" }
        ] }))));
        assert!(!fits_spec(affinity(json!({}))));
    }

    fn status(state: ContainerState, restart_count: i32) -> Box<ContainerStatus> {
        Box::new(ContainerStatus {
            name: "c".into(),
            state: Some(state),
            restart_count,
            ..ContainerStatus::default()
        })
    }

    fn terminated(code: i32) -> ContainerState {
        ContainerState {
            terminated: Some(ContainerStateTerminated {
                exit_code: code,
                ..Default::default()
            }),
            ..Default::default()
        }
    }

    #[test]
    fn phase_follows_the_containers() {
        let pod: Pod = serde_json::from_value(json!({
            "metadata": { "name": "p" },
            "spec": { "initContainers": [{ "name": "i" }], "containers": [{ "name": "c" }] },
        }))
        .unwrap();
        let mut model = Model::new(Arc::new(pod));
        assert_eq!(model.phase(), "Pending");
        model.apply(Update::Sandbox("127.64.0.1".into()));
        assert_eq!(model.phase(), "Pending");
        model.apply(Update::Container(Slot::Init(0), status(terminated(0), 0)));
        assert_eq!(model.phase(), "Pending", "init done, container not started");
        let running = ContainerState {
            running: Some(ContainerStateRunning::default()),
            ..Default::default()
        };
        model.apply(Update::Container(Slot::Main(0), status(running, 0)));
        assert_eq!(model.phase(), "Running");
        let backoff = waiting("CrashLoopBackOff", None);
        model.apply(Update::Container(Slot::Main(0), status(backoff, 1)));
        assert_eq!(model.phase(), "Running", "restarting counts as running");
        model.apply(Update::Container(Slot::Main(0), status(terminated(0), 1)));
        model.finished = true;
        assert_eq!(model.phase(), "Succeeded");
        model.apply(Update::Container(Slot::Main(0), status(terminated(137), 1)));
        assert_eq!(model.phase(), "Failed");
        let conditions = model.conditions(true);
        let ready = conditions.iter().find(|c| c.type_ == "Ready").unwrap();
        assert_eq!(
            (ready.status.as_str(), ready.reason.as_deref()),
            ("False", Some("PodCompleted"))
        );
    }
}

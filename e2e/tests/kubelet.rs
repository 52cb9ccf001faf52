//! The kubelet stand-in against a real control plane: Pods bound to its node run as local
//! processes with their env, volumes, users and restart policy; unbound Pods get bound;
//! PostgreSQL Pods become Ready and serve on their own pod IPs; deletion and stop leave no
//! process behind.

use std::collections::BTreeMap;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use ir_e2e::cluster::ControlPlane;
use ir_e2e::kubelet::{KubeletStandIn, StandInConfig};
use k8s_openapi::api::core::v1::{ContainerStatus, Node, Pod};
use kube::api::{Api, DeleteParams};

const NS: &str = "kubelet-test";
const WAIT: Duration = Duration::from_secs(90);
const SHELL_IMAGE: &str = "busybox:1.36";

struct Setup {
    plane: ControlPlane,
    kubelet: KubeletStandIn,
    work: tempfile::TempDir,
    pods: Api<Pod>,
}

async fn setup(node: &str, schedule_unbound: bool) -> Setup {
    ir_e2e::require_root();
    let plane = ControlPlane::start().await;
    plane.create_namespace(NS).await;
    let work = ir_e2e::shared_tempdir();
    let images = BTreeMap::from([
        ("postgres:15".to_string(), ir_e2e::pg::bindir()),
        (SHELL_IMAGE.to_string(), PathBuf::from("/usr/bin")),
    ]);
    let kubelet = KubeletStandIn::start(
        plane.admin(),
        StandInConfig {
            node_name: node.to_string(),
            work_dir: work.path().to_path_buf(),
            images,
            schedule_unbound,
        },
    )
    .await;
    let pods = Api::namespaced(plane.admin(), NS);
    Setup {
        plane,
        kubelet,
        work,
        pods,
    }
}

fn phase(pod: &Pod) -> &str {
    pod.status
        .as_ref()
        .and_then(|s| s.phase.as_deref())
        .unwrap_or_default()
}

fn container<'a>(pod: &'a Pod, name: &str) -> Option<&'a ContainerStatus> {
    let status = pod.status.as_ref()?;
    status
        .container_statuses
        .iter()
        .chain(status.init_container_statuses.iter())
        .flatten()
        .find(|c| c.name == name)
}

fn waiting_reason<'a>(pod: &'a Pod, name: &str) -> Option<&'a str> {
    container(pod, name)?
        .state
        .as_ref()?
        .waiting
        .as_ref()?
        .reason
        .as_deref()
}

fn condition(pod: &Pod, type_: &str) -> Option<String> {
    pod.status
        .as_ref()?
        .conditions
        .iter()
        .flatten()
        .find(|c| c.type_ == type_)
        .map(|c| c.status.clone())
}

fn pod_ip(pod: &Pod) -> String {
    pod.status
        .as_ref()
        .and_then(|s| s.pod_ip.clone())
        .expect("pod has an IP")
}

/// The pid in the stand-in's container ID.
fn pid(pod: &Pod, name: &str) -> i32 {
    let id = container(pod, name)
        .and_then(|c| c.container_id.clone())
        .unwrap_or_else(|| panic!("container {name} has an ID"));
    id.strip_prefix("kubelet-stand-in://")
        .and_then(|p| p.parse().ok())
        .unwrap_or_else(|| panic!("container ID {id} names a pid"))
}

/// A live process (not a zombie) with this pid.
fn alive(pid: i32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .ok()
        .and_then(|stat| {
            let state = stat.rsplit_once(") ")?.1.chars().next()?;
            Some(state != 'Z')
        })
        .unwrap_or(false)
}

fn read_log(path: &Path) -> String {
    std::fs::read_to_string(path).unwrap_or_else(|e| format!("<{}: {e}>", path.display()))
}

async fn wait_pod(api: &Api<Pod>, name: &str, what: &str, check: impl Fn(&Pod) -> bool) -> Pod {
    let deadline = Instant::now() + WAIT;
    loop {
        let pod = api.get_opt(name).await.expect("get pod");
        if let Some(pod) = &pod
            && check(pod)
        {
            return pod.clone();
        }
        assert!(
            Instant::now() < deadline,
            "pod {name} is not {what} after {WAIT:?}; last status: {:#?}",
            pod.and_then(|p| p.status)
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

async fn wait_gone(api: &Api<Pod>, name: &str, within: Duration) {
    let deadline = Instant::now() + within;
    while api.get_opt(name).await.expect("get pod").is_some() {
        assert!(
            Instant::now() < deadline,
            "pod {name} still exists after {within:?}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shell_pods_get_env_volumes_users_restarts_and_binding() {
    let node = "node-shell";
    let Setup {
        plane,
        kubelet,
        work,
        pods,
    } = setup(node, true).await;
    let (uid, gid) = ir_e2e::pg::pg_user();

    // The Node is registered and Ready, with its hostname label and loopback address.
    let registered = Api::<Node>::all(plane.admin())
        .get(node)
        .await
        .expect("node registered");
    let labels = registered.metadata.labels.clone().unwrap_or_default();
    assert_eq!(
        labels.get("kubernetes.io/hostname").map(String::as_str),
        Some(node)
    );
    let status = registered.status.expect("node status");
    let ready = status
        .conditions
        .iter()
        .flatten()
        .find(|c| c.type_ == "Ready")
        .expect("Ready condition");
    assert_eq!(ready.status, "True");
    assert!(ready.last_heartbeat_time.is_some());
    assert!(
        status
            .addresses
            .iter()
            .flatten()
            .any(|a| a.type_ == "InternalIP" && a.address == "127.0.0.1")
    );

    let report_host_dir = work.path().join("pvc").join(NS).join("report");
    std::fs::create_dir_all(&report_host_dir).unwrap();
    let later_dir = work.path().join("appears-later");
    plane
        .apply_yaml(&format!(
            r#"
apiVersion: v1
kind: ConfigMap
metadata: {{name: app-config, namespace: {NS}}}
data: {{greeting: hello}}
---
apiVersion: v1
kind: Secret
metadata: {{name: app-secret, namespace: {NS}}}
stringData: {{password: s3cret}}
---
apiVersion: v1
kind: PersistentVolumeClaim
metadata: {{name: report, namespace: {NS}}}
spec:
  accessModes: [ReadWriteOnce]
  resources: {{requests: {{storage: 1Gi}}}}
---
apiVersion: v1
kind: Pod
metadata: {{name: shell, namespace: {NS}}}
spec:
  nodeName: {node}
  restartPolicy: Never
  securityContext: {{runAsUser: {uid}, runAsGroup: {gid}, fsGroup: {gid}}}
  volumes:
  - {{name: report, persistentVolumeClaim: {{claimName: report}}}}
  - {{name: config, configMap: {{name: app-config}}}}
  - {{name: secret, secret: {{secretName: app-secret}}}}
  - {{name: scratch, emptyDir: {{}}}}
  containers:
  - name: main
    image: {SHELL_IMAGE}
    workingDir: /var/lib/app/report
    command: [sh, -c]
    args:
    - |
      set -e
      echo scratch > /tmp/app/scratch/file
      {{
        echo "name=$(POD_NAME) ns=$(POD_NAMESPACE) node=$(NODE) ip=$POD_IP"
        echo "combo=$COMBO escaped=$ESCAPED unknown=$UNKNOWN"
        echo "config=$(cat /etc/app/greeting) secret=$(cat /etc/app-secret/password) env=$PASSWORD"
        echo "dir=$REPORT_DIR pwd=$(pwd)"
        echo "uid=$(id -u) gid=$(id -g) groups=$(id -G)"
        echo "scratch=$(cat /tmp/app/scratch/file) boundary=/var/lib/app/reports"
      }} > /var/lib/app/report/out
    env:
    - {{name: POD_NAME, valueFrom: {{fieldRef: {{fieldPath: metadata.name}}}}}}
    - {{name: POD_NAMESPACE, valueFrom: {{fieldRef: {{fieldPath: metadata.namespace}}}}}}
    - {{name: POD_IP, valueFrom: {{fieldRef: {{fieldPath: status.podIP}}}}}}
    - {{name: NODE, valueFrom: {{fieldRef: {{fieldPath: spec.nodeName}}}}}}
    - {{name: PASSWORD, valueFrom: {{secretKeyRef: {{name: app-secret, key: password}}}}}}
    - {{name: GREETING, valueFrom: {{configMapKeyRef: {{name: app-config, key: greeting}}}}}}
    - {{name: COMBO, value: "$(POD_NAME)-$(GREETING)"}}
    - {{name: ESCAPED, value: "$$(POD_NAME)"}}
    - {{name: UNKNOWN, value: "$(NOPE)"}}
    - {{name: REPORT_DIR, value: /var/lib/app/report}}
    volumeMounts:
    - {{name: report, mountPath: /var/lib/app/report}}
    - {{name: config, mountPath: /etc/app}}
    - {{name: secret, mountPath: /etc/app-secret}}
    - {{name: scratch, mountPath: /tmp/app/scratch}}
---
apiVersion: v1
kind: Pod
metadata: {{name: crasher, namespace: {NS}}}
spec:
  nodeName: {node}
  restartPolicy: Always
  containers:
  - {{name: main, image: {SHELL_IMAGE}, command: [sh, -c, "echo started; exit 3"]}}
---
apiVersion: v1
kind: Pod
metadata: {{name: survivor, namespace: {NS}}}
spec:
  nodeName: {node}
  volumes: [{{name: flags, emptyDir: {{}}}}]
  containers:
  - name: main
    image: {SHELL_IMAGE}
    command: [sh, -c, "sleep 1; touch /run/flags/ready; exec sleep 1000"]
    readinessProbe: {{exec: {{command: [test, -f, /run/flags/ready]}}, periodSeconds: 1}}
    volumeMounts: [{{name: flags, mountPath: /run/flags}}]
---
apiVersion: v1
kind: Pod
metadata: {{name: stubborn, namespace: {NS}}}
spec:
  nodeName: {node}
  terminationGracePeriodSeconds: 2
  containers:
  - {{name: main, image: {SHELL_IMAGE}, command: [sh, -c, "trap '' TERM; while :; do sleep 1; done"]}}
---
apiVersion: v1
kind: Pod
metadata: {{name: unbound, namespace: {NS}}}
spec:
  restartPolicy: Never
  containers:
  - {{name: main, image: {SHELL_IMAGE}, command: [sleep, "1000"]}}
---
apiVersion: v1
kind: Pod
metadata: {{name: elsewhere, namespace: {NS}}}
spec:
  nodeSelector: {{kubernetes.io/hostname: another-node}}
  containers:
  - {{name: main, image: {SHELL_IMAGE}, command: [sleep, "1000"]}}
---
apiVersion: v1
kind: Pod
metadata: {{name: no-image, namespace: {NS}}}
spec:
  nodeName: {node}
  containers:
  - {{name: main, image: "nginx:1", command: [nginx]}}
---
apiVersion: v1
kind: Pod
metadata: {{name: host-dir, namespace: {NS}}}
spec:
  nodeName: {node}
  restartPolicy: Never
  volumes:
  - {{name: host, hostPath: {{path: {later}, type: Directory}}}}
  containers:
  - {{name: main, image: {SHELL_IMAGE}, command: [sh, -c, "echo seen > /mnt/host/file"], volumeMounts: [{{name: host, mountPath: /mnt/host}}]}}
"#,
            later = later_dir.display(),
        ))
        .await
        .expect("apply test objects");

    // Env, $(VAR) expansion, volume path rewriting, configMap, secret, PVC, emptyDir, user.
    let shell = wait_pod(&pods, "shell", "Succeeded", |p| phase(p) == "Succeeded").await;
    let ip = pod_ip(&shell);
    let report = std::fs::read_to_string(report_host_dir.join("out")).unwrap_or_else(|e| {
        panic!(
            "no report ({e}); log:\n{}",
            read_log(&kubelet.log_path(NS, "shell", "main"))
        )
    });
    let lines: Vec<&str> = report.lines().collect();
    let report_dir = report_host_dir.display().to_string();
    assert_eq!(lines[0], format!("name=shell ns={NS} node={node} ip={ip}"));
    assert_eq!(
        lines[1],
        "combo=shell-hello escaped=$(POD_NAME) unknown=$(NOPE)"
    );
    assert_eq!(lines[2], "config=hello secret=s3cret env=s3cret");
    assert_eq!(lines[3], format!("dir={report_dir} pwd={report_dir}"));
    assert!(
        lines[4].starts_with(&format!("uid={uid} gid={gid} groups={gid}")),
        "{}",
        lines[4]
    );
    assert_eq!(lines[5], "scratch=scratch boundary=/var/lib/app/reports");
    assert!(ip.starts_with("127.") && ip != "127.0.0.1", "pod IP {ip}");
    let main = container(&shell, "main").expect("container status");
    let terminated = main
        .state
        .as_ref()
        .and_then(|s| s.terminated.as_ref())
        .expect("terminated");
    assert_eq!(
        (terminated.exit_code, terminated.reason.as_deref()),
        (0, Some("Completed"))
    );
    assert_eq!(condition(&shell, "Ready").as_deref(), Some("False"));
    // fsGroup as a kubelet applies it: the volume's group, setgid directory.
    let meta = std::fs::metadata(&report_host_dir).unwrap();
    assert_eq!(meta.gid(), gid);
    assert_eq!(meta.mode() & 0o2070, 0o2070, "mode {:o}", meta.mode());

    // restartPolicy Always restarts a crashing container and counts.
    let crasher = wait_pod(&pods, "crasher", "restarted twice", |p| {
        container(p, "main").is_some_and(|c| c.restart_count >= 2)
    })
    .await;
    assert_eq!(phase(&crasher), "Running");
    let last = container(&crasher, "main")
        .and_then(|c| c.last_state.as_ref())
        .and_then(|s| s.terminated.as_ref())
        .expect("last state terminated");
    assert_eq!(last.exit_code, 3);
    let log = read_log(&kubelet.log_path(NS, "crasher", "main"));
    assert!(log.matches("started").count() >= 3, "log:\n{log}");

    // An unbound Pod that fits is bound to the node and runs; one that does not stays unbound.
    let unbound = wait_pod(&pods, "unbound", "Running", |p| {
        phase(p) == "Running" && condition(p, "Ready").as_deref() == Some("True")
    })
    .await;
    assert_eq!(
        unbound.spec.as_ref().and_then(|s| s.node_name.as_deref()),
        Some(node)
    );
    let elsewhere = pods.get("elsewhere").await.unwrap();
    assert_eq!(elsewhere.spec.and_then(|s| s.node_name), None);

    // An image the stand-in does not know leaves the Pod Pending with ErrImagePull.
    let no_image = wait_pod(&pods, "no-image", "failing to pull", |p| {
        waiting_reason(p, "main") == Some("ErrImagePull")
    })
    .await;
    assert_eq!(phase(&no_image), "Pending");

    // A missing hostPath Directory holds the Pod in ContainerCreating until it appears.
    let held = wait_pod(&pods, "host-dir", "held for its hostPath", |p| {
        container(p, "main")
            .and_then(|c| c.state.as_ref()?.waiting.as_ref()?.message.clone())
            .is_some_and(|m| m.contains("hostPath type check failed"))
    })
    .await;
    assert_eq!(phase(&held), "Pending");
    assert_eq!(waiting_reason(&held, "main"), Some("ContainerCreating"));
    std::fs::create_dir(&later_dir).unwrap();
    wait_pod(&pods, "host-dir", "Succeeded", |p| phase(p) == "Succeeded").await;
    assert_eq!(
        std::fs::read_to_string(later_dir.join("file")).unwrap(),
        "seen\n"
    );

    // Deletion stops the process and removes the Pod.
    let sleeper = pid(&unbound, "main");
    assert!(alive(sleeper));
    pods.delete("unbound", &DeleteParams::default())
        .await
        .unwrap();
    wait_gone(&pods, "unbound", Duration::from_secs(20)).await;
    assert!(!alive(sleeper), "process {sleeper} outlived its Pod");

    // A process that ignores the stop signal is killed when the grace period ends.
    let stubborn = wait_pod(&pods, "stubborn", "Running", |p| phase(p) == "Running").await;
    let stubborn = pid(&stubborn, "main");
    let deleted = Instant::now();
    pods.delete("stubborn", &DeleteParams::default())
        .await
        .unwrap();
    wait_gone(&pods, "stubborn", Duration::from_secs(20)).await;
    assert!(
        deleted.elapsed() >= Duration::from_secs(2),
        "grace period not honoured"
    );
    assert!(!alive(stubborn), "process {stubborn} outlived its Pod");

    // An exec readiness probe decides readiness; stopping the stand-in kills what still runs.
    let survivor = wait_pod(&pods, "survivor", "Ready", |p| {
        condition(p, "Ready").as_deref() == Some("True")
    })
    .await;
    let flag = container(&survivor, "main").expect("container status");
    let started = flag
        .state
        .as_ref()
        .and_then(|s| s.running.as_ref())
        .and_then(|r| r.started_at.clone());
    let ready_at = survivor
        .status
        .as_ref()
        .and_then(|s| s.conditions.as_ref())
        .and_then(|c| c.iter().find(|c| c.type_ == "Ready"))
        .and_then(|c| c.last_transition_time.clone());
    assert!(
        ready_at.unwrap().0 > started.unwrap().0,
        "ready before the probe could pass"
    );
    let survivor = pid(&survivor, "main");
    assert!(alive(survivor));
    kubelet.stop().await;
    assert!(!alive(survivor), "process {survivor} outlived the stand-in");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_pods_serve_on_their_pod_ips_and_stop_on_deletion() {
    let node = "node-pg";
    let Setup {
        plane,
        kubelet,
        work: _work,
        pods,
    } = setup(node, false).await;
    let (uid, gid) = ir_e2e::pg::pg_user();
    let pod = |name: &str| {
        format!(
            r#"
---
apiVersion: v1
kind: Pod
metadata: {{name: {name}, namespace: {NS}}}
spec:
  nodeName: {node}
  restartPolicy: Always
  securityContext: {{runAsUser: {uid}, runAsGroup: {gid}, fsGroup: {gid}}}
  volumes:
  - {{name: data, emptyDir: {{}}}}
  - {{name: run, emptyDir: {{}}}}
  - {{name: config, configMap: {{name: pg-config}}}}
  initContainers:
  - name: initdb
    image: postgres:15
    command: [initdb]
    args: [-D, /var/lib/instant-recovery/data/pgdata, -U, postgres, -A, trust, -E, UTF8]
    volumeMounts: [{{name: data, mountPath: /var/lib/instant-recovery/data}}]
  containers:
  - name: postgres
    image: postgres:15
    command: [postgres]
    args:
    - -D
    - /var/lib/instant-recovery/data/pgdata
    - -c
    - listen_addresses=$(POD_IP)
    - -c
    - unix_socket_directories=/var/run/instant-recovery
    - -c
    - hba_file=/etc/instant-recovery/pg_hba.conf
    - -c
    - fsync=off
    env:
    - {{name: POD_IP, valueFrom: {{fieldRef: {{fieldPath: status.podIP}}}}}}
    ports: [{{name: postgres, containerPort: 5432}}]
    readinessProbe: {{tcpSocket: {{port: postgres}}, periodSeconds: 1}}
    volumeMounts:
    - {{name: data, mountPath: /var/lib/instant-recovery/data}}
    - {{name: run, mountPath: /var/run/instant-recovery}}
    - {{name: config, mountPath: /etc/instant-recovery}}
"#
        )
    };
    plane
        .apply_yaml(&format!(
            r#"
apiVersion: v1
kind: ConfigMap
metadata: {{name: pg-config, namespace: {NS}}}
data:
  pg_hba.conf: |
    local all all trust
    host all all 127.0.0.0/8 trust
{}{}"#,
            pod("pg-a"),
            pod("pg-b")
        ))
        .await
        .expect("apply PostgreSQL pods");

    let mut clients = Vec::new();
    let mut ips = Vec::new();
    for name in ["pg-a", "pg-b"] {
        let ready = wait_pod(&pods, name, "Ready", |p| {
            condition(p, "Ready").as_deref() == Some("True")
        })
        .await;
        assert_eq!(phase(&ready), "Running");
        let init = container(&ready, "initdb").expect("init container status");
        assert_eq!(
            init.state
                .as_ref()
                .and_then(|s| s.terminated.as_ref())
                .map(|t| t.exit_code),
            Some(0)
        );
        assert!(container(&ready, "postgres").is_some_and(|c| c.ready));
        let ip = pod_ip(&ready);
        let (client, connection) = tokio_postgres::connect(
            &format!("host={ip} port=5432 user=postgres dbname=postgres"),
            tokio_postgres::NoTls,
        )
        .await
        .unwrap_or_else(|e| {
            panic!(
                "connect to {name} on {ip}: {e}; log:\n{}",
                read_log(&kubelet.log_path(NS, name, "postgres"))
            )
        });
        tokio::spawn(connection);
        let row = client
            .query_one("select host(inet_server_addr())", &[])
            .await
            .expect("query");
        assert_eq!(row.get::<_, String>(0), ip, "{name} answers on its pod IP");
        clients.push(client);
        ips.push(ip);
    }
    assert_ne!(ips[0], ips[1], "each Pod has its own IP");

    // Deletion with the default grace period: SIGINT (a fast shutdown, which does not wait for
    // the open session), then the Pod is removed well before the 30 s grace period.
    let pg_a = pods.get("pg-a").await.unwrap();
    let postmaster = pid(&pg_a, "postgres");
    assert!(alive(postmaster));
    pods.delete("pg-a", &DeleteParams::default()).await.unwrap();
    wait_gone(&pods, "pg-a", Duration::from_secs(20)).await;
    assert!(
        !alive(postmaster),
        "postmaster {postmaster} outlived its Pod"
    );
    let log = read_log(&kubelet.log_path(NS, "pg-a", "postgres"));
    assert!(
        log.contains("received fast shutdown request"),
        "log:\n{log}"
    );
    assert!(clients[0].simple_query("select 1").await.is_err());

    // The other one is untouched, until the stand-in stops.
    clients[1]
        .simple_query("select 1")
        .await
        .expect("pg-b still serves");
    let pg_b = pods.get("pg-b").await.unwrap();
    let postmaster = pid(&pg_b, "postgres");
    kubelet.stop().await;
    assert!(
        !alive(postmaster),
        "postmaster {postmaster} outlived the stand-in"
    );
}

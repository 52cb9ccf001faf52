//! The real control plane of the tests, as ir_e2e::cluster starts it: the pinned Kubernetes
//! release, RBAC enforced, independent planes, nothing left behind.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use ir_e2e::cluster::{ControlPlane, kubernetes_version};
use k8s_openapi::api::core::v1::{ConfigMap, Node, PersistentVolumeClaim, Pod};
use k8s_openapi::k8s_match;
use kube::ResourceExt;
use kube::api::{Api, ListParams};

/// Pids and command lines of the processes whose arguments mention `dir`.
fn processes_under(dir: &Path) -> Vec<(u32, String)> {
    let needle = dir.to_str().expect("temp dir path is UTF-8");
    std::fs::read_dir("/proc")
        .expect("read /proc")
        .filter_map(|entry| {
            let entry = entry.ok()?;
            let pid: u32 = entry.file_name().to_str()?.parse().ok()?;
            let cmdline = std::fs::read(entry.path().join("cmdline")).ok()?;
            let cmdline = String::from_utf8_lossy(&cmdline).replace('\0', " ");
            cmdline.contains(needle).then_some((pid, cmdline))
        })
        .collect()
}

fn plane_dir(plane: &ControlPlane) -> PathBuf {
    plane
        .admin_kubeconfig()
        .parent()
        .expect("the kubeconfig lives in the plane's directory")
        .to_owned()
}

fn is_forbidden(e: &kube::Error) -> bool {
    matches!(e, kube::Error::Api(s) if s.code == 403)
}

#[tokio::test]
async fn serves_the_pinned_kubernetes_release() {
    let started = Instant::now();
    let plane = ControlPlane::start().await;
    eprintln!("control plane ready in {:?}", started.elapsed());
    let info = plane.admin().apiserver_version().await.unwrap();
    assert_eq!(info.git_version, kubernetes_version());
    assert!(kubernetes_version().starts_with("v1.37."));
    assert_eq!((info.major.as_str(), info.minor.as_str()), ("1", "37"));
    // The types the operator compiles against are those of the server it talks to.
    let k8s_openapi_matches = k8s_match!(info.minor.as_str(), {
        k8s_if_1_37!("37" => true),
        _ => false,
    });
    assert!(
        k8s_openapi_matches,
        "k8s-openapi is not built for Kubernetes 1.{}",
        info.minor
    );
}

#[tokio::test]
async fn rbac_is_enforced_for_service_accounts() {
    let plane = ControlPlane::start().await;
    plane.create_namespace("team").await;
    plane.create_namespace("other").await;
    let robot = plane.service_account("team", "robot").await;
    // The client acts as the account, in its namespace by default.
    assert_eq!(robot.client.default_namespace(), "team");
    let pods: Api<Pod> = Api::default_namespaced(robot.client.clone());
    let err = pods.list(&ListParams::default()).await.unwrap_err();
    assert!(is_forbidden(&err), "{err}");
    assert!(
        err.to_string().contains("system:serviceaccount:team:robot"),
        "{err}"
    );

    plane
        .apply_yaml(
            r#"
apiVersion: rbac.authorization.k8s.io/v1
kind: Role
metadata: {name: pod-reader, namespace: team}
rules:
  - {apiGroups: [""], resources: [pods], verbs: [get, list, watch]}
---
apiVersion: rbac.authorization.k8s.io/v1
kind: RoleBinding
metadata: {name: robot-reads-pods, namespace: team}
roleRef: {apiGroup: rbac.authorization.k8s.io, kind: Role, name: pod-reader}
subjects:
  - {kind: ServiceAccount, name: robot, namespace: team}
"#,
        )
        .await
        .unwrap();
    // The authorizer reads RBAC objects through an informer: allow it a moment.
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        match pods.list(&ListParams::default()).await {
            Ok(list) => {
                assert!(list.items.is_empty());
                break;
            }
            Err(e) if is_forbidden(&e) && Instant::now() < deadline => {
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            Err(e) => panic!("the RoleBinding did not take effect: {e}"),
        }
    }
    // The Role grants reading pods in its namespace only, and nothing else.
    let elsewhere: Api<Pod> = Api::namespaced(robot.client.clone(), "other");
    let err = elsewhere.list(&ListParams::default()).await.unwrap_err();
    assert!(is_forbidden(&err), "{err}");
    let config_maps: Api<ConfigMap> = Api::default_namespaced(robot.client.clone());
    let err = config_maps.list(&ListParams::default()).await.unwrap_err();
    assert!(is_forbidden(&err), "{err}");

    // The kubeconfig file, as a child process reads it, carries the same identity.
    let from_file = kube::Client::try_from(
        kube::Config::from_custom_kubeconfig(
            kube::config::Kubeconfig::read_from(&robot.kubeconfig).unwrap(),
            &Default::default(),
        )
        .await
        .unwrap(),
    )
    .unwrap();
    let pods: Api<Pod> = Api::namespaced(from_file, "team");
    pods.list(&ListParams::default()).await.unwrap();
}

/// What admission would otherwise leave for the missing kube-controller-manager to finish.
#[tokio::test]
async fn objects_do_not_wait_for_controllers_that_do_not_run() {
    let plane = ControlPlane::start().await;
    plane.create_namespace("apps").await;
    plane
        .apply_yaml(
            r#"
apiVersion: v1
kind: Node
metadata: {name: node-1}
---
apiVersion: v1
kind: PersistentVolumeClaim
metadata: {name: data, namespace: apps}
spec:
  accessModes: [ReadWriteOnce]
  resources: {requests: {storage: 1Gi}}
---
apiVersion: v1
kind: Pod
metadata: {name: agent, namespace: apps}
spec:
  nodeName: node-1
  containers:
    - name: agent
      image: instant-recovery:test
      securityContext: {privileged: true}
"#,
        )
        .await
        .expect("a privileged Pod without a default ServiceAccount is accepted");
    let node = Api::<Node>::all(plane.admin()).get("node-1").await.unwrap();
    let taints = node.spec.and_then(|s| s.taints).unwrap_or_default();
    assert!(taints.is_empty(), "{taints:?}");
    let claims: Api<PersistentVolumeClaim> = Api::namespaced(plane.admin(), "apps");
    let claim = claims.get("data").await.unwrap();
    assert!(claim.finalizers().is_empty(), "{:?}", claim.finalizers());
    claims.delete("data", &Default::default()).await.unwrap();
    assert!(claims.get_opt("data").await.unwrap().is_none());
}

#[tokio::test]
async fn two_planes_do_not_share_anything() {
    let (a, b) = tokio::join!(ControlPlane::start(), ControlPlane::start());
    assert_ne!(plane_dir(&a), plane_dir(&b));
    a.create_namespace("shared-name").await;
    a.apply_yaml(
        "apiVersion: v1\nkind: ConfigMap\nmetadata: {name: only-in-a, namespace: shared-name}\n",
    )
    .await
    .unwrap();
    let in_b: Api<ConfigMap> = Api::namespaced(b.admin(), "shared-name");
    let err = in_b.get("only-in-a").await.unwrap_err();
    assert!(
        matches!(&err, kube::Error::Api(s) if s.code == 404),
        "{err}"
    );

    // Each plane has its own CA, token signing key and admin token.
    let a_robot = a.service_account("shared-name", "robot").await;
    let a_user = kube::config::Kubeconfig::read_from(&a_robot.kubeconfig)
        .unwrap()
        .auth_infos
        .remove(0);
    // b's server and CA, a's service-account token.
    let mut mixed = kube::config::Kubeconfig::read_from(b.admin_kubeconfig()).unwrap();
    mixed.contexts[0].context.as_mut().unwrap().user = Some(a_user.name.clone());
    mixed.auth_infos = vec![a_user];
    let config = kube::Config::from_custom_kubeconfig(mixed, &Default::default())
        .await
        .unwrap();
    let a_token_on_b = kube::Client::try_from(config).unwrap();
    let err = a_token_on_b.apiserver_version().await.unwrap_err();
    assert!(
        matches!(&err, kube::Error::Api(s) if s.code == 401),
        "{err}"
    );

    drop(a);
    // b keeps serving when a is gone.
    b.create_namespace("still-here").await;
}

#[tokio::test]
async fn drop_kills_the_servers_and_removes_the_directory() {
    let plane = ControlPlane::start().await;
    let dir = plane_dir(&plane);
    let processes = processes_under(&dir);
    let commands: Vec<&str> = processes.iter().map(|(_, c)| c.as_str()).collect();
    assert_eq!(processes.len(), 2, "{commands:#?}");
    assert!(commands.iter().any(|c| c.contains("etcd")), "{commands:#?}");
    assert!(
        commands.iter().any(|c| c.contains("kube-apiserver")),
        "{commands:#?}"
    );
    drop(plane);
    for (pid, command) in &processes {
        // Reaped, not only killed: a zombie would still have its /proc entry.
        assert!(
            !Path::new(&format!("/proc/{pid}")).exists(),
            "pid {pid} ({command}) outlived the control plane"
        );
    }
    assert!(!dir.exists(), "{} was not removed", dir.display());
}

#[tokio::test]
async fn a_panicking_test_leaves_nothing_behind() {
    let (tx, rx) = tokio::sync::oneshot::channel();
    let failed = tokio::spawn(async move {
        let plane = ControlPlane::start().await;
        let dir = plane_dir(&plane);
        tx.send((dir.clone(), processes_under(&dir))).unwrap();
        panic!("a failing test");
    })
    .await;
    assert!(failed.unwrap_err().is_panic());
    let (dir, processes) = rx.await.unwrap();
    assert_eq!(processes.len(), 2);
    for (pid, command) in &processes {
        assert!(
            !Path::new(&format!("/proc/{pid}")).exists(),
            "pid {pid} ({command}) outlived the panicking test"
        );
    }
    assert!(!dir.exists(), "{} was not removed", dir.display());
}

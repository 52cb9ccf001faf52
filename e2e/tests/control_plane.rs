//! The real control plane of the tests: etcd and kube-apiserver as ir_e2e::cluster starts them.

use std::time::Instant;

use ir_e2e::cluster::ControlPlane;
use k8s_openapi::api::core::v1::ConfigMap;
use kube::Api;

#[tokio::test]
async fn starts_and_serves_the_api() {
    let started = Instant::now();
    let plane = ControlPlane::start().await;
    eprintln!("control plane ready in {:?}", started.elapsed());
    plane.install_crds().await;
    plane.create_namespace("smoke").await;
    plane
        .apply_yaml(
            "apiVersion: v1\nkind: ConfigMap\nmetadata: {name: c, namespace: smoke}\ndata: {k: v}\n",
        )
        .await
        .unwrap();
    let cm = Api::<ConfigMap>::namespaced(plane.admin(), "smoke")
        .get("c")
        .await
        .unwrap();
    assert_eq!(cm.data.unwrap()["k"], "v");
    let sa = plane.service_account("smoke", "robot").await;
    assert!(sa.kubeconfig.exists());
}

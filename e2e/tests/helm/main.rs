//! The Helm chart, verified with the real tools: `helm lint`, `helm template` with default and
//! custom values, every rendered object (and the chart's CRDs, and custom resources) validated
//! by kubeconform against the schemas a real kube-apiserver serves, `helm install`, upgrade and
//! uninstall on a real control plane, and values.schema.json refusing bad values.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use ir_e2e::cluster::ControlPlane;
use ir_e2e::helm::{self, Helm, Verdict};
use ir_e2e::http::{http_get, loopback};
use ir_e2e::installation::workspace_binary;
use k8s_openapi::api::apps::v1::{DaemonSet, Deployment};
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::{
    Container as ContainerSpec, Node, ResourceFieldSelector, Service, ServiceAccount,
};
use k8s_openapi::api::rbac::v1::{ClusterRole, ClusterRoleBinding, PolicyRule, Role};
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::api::{Api, ListParams, PostParams};
use kube::core::ObjectMeta;
use serde_json::{Value, json};

mod install;
mod render;
mod rights;
mod values;

/// Values that change every setting the templates read.
const CUSTOM_VALUES: &str = r#"
fullnameOverride: ir
image: {repository: registry.example.com/db/instant-recovery, tag: "1.2.3", pullPolicy: Always}

imagePullSecrets: [{name: regcred}]
logFormat: text
metrics:
  port: 9090
  serviceMonitor: {enabled: true, interval: 15s, scrapeTimeout: 5s, labels: {release: prometheus}}
watchNamespaces: [databases, analytics]
repositories:
  fileRoots: [/srv/backups, /mnt/nfs/instant-recovery]
  mountFileRoots: false
  allowAmbientCredentials: true
networkPolicy:
  enabled: true
  metricsFrom: [{namespaceSelector: {matchLabels: {kubernetes.io/metadata.name: monitoring}}}]
  recoveries: false
operator:
  replicas: 3
  watchNamespace: databases
  postgres: {uid: 26, gid: 26}
  extraArgs: [--agent-timeout=2m]
  extraVolumes: [{name: backups, hostPath: {path: /srv/backups, type: Directory}}]
  extraVolumeMounts: [{name: backups, mountPath: /srv/backups, readOnly: true}]
  extraEnv: [{name: AWS_CA_BUNDLE, value: /srv/backups/ca.pem}]
  serviceAccount: {create: true, name: ir-op, annotations: {example.com/role: operator}}
  resources: {requests: {cpu: 1, memory: 128Mi}, limits: {cpu: 2, memory: 1Gi}}
  podAnnotations: {example.com/scrape: "true"}
  podLabels: {team: dba}
  tolerations: [{key: dedicated, operator: Equal, value: infra, effect: NoSchedule}]
  affinity:
    podAntiAffinity:
      preferredDuringSchedulingIgnoredDuringExecution:
        - weight: 100
          podAffinityTerm:
            topologyKey: kubernetes.io/hostname
            labelSelector: {matchLabels: {app.kubernetes.io/component: operator}}
  priorityClassName: high
agent:
  mountRoot: /mnt/instant-recovery
  cacheRoot: /data/ir-cache
  terminationGracePeriodSeconds: 120
  nodeSelector: {example.com/postgres: "true"}
  tolerations: []
  podSecurityContext: {fsGroup: 999}
  extraVolumes: [{name: backups, hostPath: {path: /srv/backups, type: Directory}}]
  extraVolumeMounts: [{name: backups, mountPath: /srv/backups, readOnly: true}]
  extraEnv: [{name: RUST_LOG, value: debug}]
  priorityClassName: system-node-critical
"#;

/// ServiceMonitor's CRD belongs to the Prometheus Operator, which this control plane does not
/// have, so kubeconform has no schema for it; the tests check the object themselves instead.
const SERVICE_MONITOR: &str = "monitoring.coreos.com/v1/ServiceMonitor";

fn write_values(dir: &Path) -> String {
    let path = dir.join("custom-values.yaml");
    std::fs::write(&path, CUSTOM_VALUES).expect("write the custom values");
    path.to_str().expect("a UTF-8 path").to_owned()
}

/// The chart's crds/ directory as one multi-document YAML.
fn chart_crds() -> String {
    let dir = helm::chart_dir().join("crds");
    let mut files: Vec<_> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("read {}: {e}", dir.display()))
        .map(|entry| entry.expect("a directory entry").path())
        .collect();
    files.sort();
    let kinds = ir_api::crd::all_yaml().len();
    assert!(
        files.len() == kinds,
        "the chart ships the {kinds} CRDs of ir_api: {files:?}"
    );
    files
        .iter()
        .map(|f| std::fs::read_to_string(f).expect("read a CRD"))
        .collect::<Vec<_>>()
        .join("\n---\n")
}

/// `(kind, name)` of every document.
fn kinds_and_names(documents: &[Value]) -> BTreeSet<(String, String)> {
    documents
        .iter()
        .map(|d| {
            let field = |v: &Value| v.as_str().expect("a string").to_owned();
            (field(&d["kind"]), field(&d["metadata"]["name"]))
        })
        .collect()
}

/// The rules of files/rbac/`file`.
fn chart_rules(file: &str) -> Vec<PolicyRule> {
    let path = helm::chart_dir().join("files/rbac").join(file);
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    serde_norway::from_str(&text).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

fn find<'a>(documents: &'a [Value], kind: &str) -> &'a Value {
    documents
        .iter()
        .find(|d| d["kind"] == kind)
        .unwrap_or_else(|| panic!("no {kind} rendered"))
}

fn expect_all_valid(verdicts: &[Verdict], what: &str) {
    let bad: Vec<_> = verdicts
        .iter()
        .filter(|v| v.status != "statusValid")
        .filter(|v| !(v.status == "statusSkipped" && v.kind == "ServiceMonitor"))
        .collect();
    assert!(bad.is_empty(), "{what}: not valid: {bad:#?}");
}

fn repository() -> Value {
    json!({
        "apiVersion": "instantrecovery.dev/v1alpha1",
        "kind": "BackupRepository",
        "metadata": {"name": "prod", "namespace": "databases"},
        "spec": {
            "url": "s3://backups/prod",
            "s3": {"endpoint": "https://s3.example.com", "region": "eu-west-1"},
            "credentialsSecret": {"name": "backup-reader"},
        },
    })
}

fn recovery() -> Value {
    json!({
        "apiVersion": "instantrecovery.dev/v1alpha1",
        "kind": "InstantRecovery",
        "metadata": {"name": "orders", "namespace": "databases"},
        "spec": {
            "backup": {"repositoryRef": {"name": "prod"}, "id": "20260101T000000Z-1a2b"},
            "postgres": {
                "image": "postgres:15",
                "credentialsSecret": {"name": "orders-superuser"},
                "resources": {"requests": {"cpu": "500m", "memory": "1Gi"}},
            },
            "target": {"storageClassName": "fast", "size": "100Gi"},
            "switchover": {"mode": "Scheduled", "at": "2030-01-01T02:00:00Z"},
        },
    })
}

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
use ir_e2e::installation::{http_get, loopback, workspace_binary};
use k8s_openapi::api::apps::v1::{DaemonSet, Deployment};
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::{Container as ContainerSpec, Node, Service, ServiceAccount};
use k8s_openapi::api::rbac::v1::{ClusterRole, ClusterRoleBinding, PolicyRule, Role};
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::api::{Api, ListParams, PostParams};
use kube::core::ObjectMeta;
use serde_json::{Value, json};

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
    assert!(files.len() == 3, "the chart ships 3 CRDs: {files:?}");
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

#[test]
fn chart_lints_strictly_with_default_and_custom_values() {
    let dir = tempfile::tempdir().unwrap();
    let values = write_values(dir.path());
    let helm = Helm::new();
    let chart = helm::chart_dir();
    let chart = chart.to_str().unwrap();
    for extra in [vec![], vec!["--values", &values]] {
        let mut args = vec!["lint", "--strict", chart];
        args.extend(extra.iter().copied());
        let out = helm.run(&args).expect_success("helm lint --strict");
        assert!(
            out.contains("1 chart(s) linted, 0 chart(s) failed"),
            "helm lint: {out}"
        );
    }
}

#[tokio::test]
async fn rendered_objects_crds_and_resources_validate_against_the_served_schemas() {
    let plane = ControlPlane::start().await;
    plane
        .apply_yaml(&chart_crds())
        .await
        .expect("apply the chart's CRDs");
    let schemas = tempfile::tempdir().unwrap();
    let written = helm::write_schemas(
        &plane.admin(),
        schemas.path(),
        &[
            ("apps/v1", "Deployment"),
            ("instantrecovery.dev/v1alpha1", "InstantRecovery"),
            ("instantrecovery.dev/v1alpha1", "BackupRepository"),
            ("instantrecovery.dev/v1alpha1", "RecoveryMount"),
        ],
    )
    .await;
    assert!(written > 50, "only {written} schemas from /openapi/v2");

    let dir = tempfile::tempdir().unwrap();
    let values = write_values(dir.path());
    let helm = Helm::new();
    let default = helm.template("ir", "ir-system", &[]);
    let custom = helm.template("prod", "databases", &["--values", &values]);

    let verdicts = helm::kubeconform(schemas.path(), &default, &[SERVICE_MONITOR]);
    expect_all_valid(&verdicts, "default values");
    let validated: BTreeSet<_> = verdicts
        .iter()
        .map(|v| (v.kind.clone(), v.name.clone()))
        .collect();
    let expected: BTreeSet<(String, String)> = [
        ("ServiceAccount", "ir-instant-recovery-operator"),
        ("ServiceAccount", "ir-instant-recovery-agent"),
        ("ClusterRole", "ir-instant-recovery-operator"),
        ("ClusterRole", "ir-instant-recovery-agent"),
        ("ClusterRoleBinding", "ir-instant-recovery-operator"),
        ("ClusterRoleBinding", "ir-instant-recovery-agent"),
        ("Role", "ir-instant-recovery-operator-leader-election"),
        (
            "RoleBinding",
            "ir-instant-recovery-operator-leader-election",
        ),
        ("NetworkPolicy", "ir-instant-recovery"),
        ("Service", "ir-instant-recovery-operator-metrics"),
        ("Service", "ir-instant-recovery-agent-metrics"),
        ("Deployment", "ir-instant-recovery-operator"),
        ("DaemonSet", "ir-instant-recovery-agent"),
    ]
    .into_iter()
    .map(|(k, n)| (k.to_owned(), n.to_owned()))
    .collect();
    assert_eq!(validated, expected, "the objects of the default values");
    assert_eq!(kinds_and_names(&helm::yaml_documents(&default)), expected);

    let verdicts = helm::kubeconform(schemas.path(), &custom, &[SERVICE_MONITOR]);
    expect_all_valid(&verdicts, "custom values");
    // Roles and bindings in both watched namespaces for both, and the leader election's.
    assert_eq!(verdicts.len(), 22, "21 objects and the ServiceMonitor");
    let skipped: Vec<_> = verdicts
        .iter()
        .filter(|v| v.status == "statusSkipped")
        .map(|v| v.kind.as_str())
        .collect();
    assert_eq!(
        skipped,
        ["ServiceMonitor"],
        "only the ServiceMonitor is skipped"
    );
    check_service_monitor(&helm::yaml_documents(&custom));

    let verdicts = helm::kubeconform(schemas.path(), &chart_crds(), &[]);
    expect_all_valid(&verdicts, "the chart's CRDs");
    assert_eq!(verdicts.len(), 3);

    let resources = [repository(), recovery()]
        .iter()
        .map(|r| serde_norway::to_string(r).unwrap())
        .collect::<Vec<_>>()
        .join("---\n");
    let verdicts = helm::kubeconform(schemas.path(), &resources, &[]);
    expect_all_valid(&verdicts, "custom resources");
    assert_eq!(verdicts.len(), 2);

    // The schemas refuse what the API server would: a string for an integer, an unknown field.
    let broken = default.replace("replicas: 2", "replicas: two");
    assert_ne!(broken, default);
    let verdicts = helm::kubeconform(schemas.path(), &broken, &[]);
    let deployment = verdicts.iter().find(|v| v.kind == "Deployment").unwrap();
    assert_eq!(deployment.status, "statusInvalid", "{deployment:?}");
    assert!(deployment.msg.contains("/spec/replicas"), "{deployment:?}");
    let misspelt = default.replacen("imagePullPolicy:", "imagePullPolice:", 1);
    let verdicts = helm::kubeconform(schemas.path(), &misspelt, &[]);
    let daemonset = verdicts.iter().find(|v| v.kind == "DaemonSet").unwrap();
    assert_eq!(daemonset.status, "statusInvalid", "{daemonset:?}");
    assert!(daemonset.msg.contains("imagePullPolice"), "{daemonset:?}");
    let mut typo = recovery();
    typo["spec"]["postgres"]["imag"] = json!("postgres:15");
    let verdicts = helm::kubeconform(
        schemas.path(),
        &serde_norway::to_string(&typo).unwrap(),
        &[],
    );
    assert_eq!(verdicts[0].status, "statusInvalid", "{:?}", verdicts[0]);
    assert!(verdicts[0].msg.contains("imag"), "{:?}", verdicts[0]);
}

/// The documents of `kind` named `name` (in any namespace).
fn all_named<'a>(documents: &'a [Value], kind: &str, name: &str) -> Vec<&'a Value> {
    documents
        .iter()
        .filter(|d| d["kind"] == kind && d["metadata"]["name"] == name)
        .collect()
}

fn container_args(workload: &Value) -> Vec<String> {
    serde_json::from_value(workload["spec"]["template"]["spec"]["containers"][0]["args"].clone())
        .unwrap()
}

/// The rules of a rendered (Cluster)Role.
fn rules_of(role: &Value) -> Vec<PolicyRule> {
    serde_json::from_value(role["rules"].clone()).unwrap()
}

fn grants(rules: &[PolicyRule], resource: &str, verb: &str) -> bool {
    rules.iter().any(|r| {
        r.resources.iter().flatten().any(|x| x == resource)
            && r.verbs.iter().any(|v| v == verb || v == "*")
    })
}

#[test]
fn default_values_confine_the_agents_repositories_credentials_and_network() {
    let documents = helm::yaml_documents(&Helm::new().template("ir", "ir-system", &[]));
    let daemonset = find(&documents, "DaemonSet");
    let pod = &daemonset["spec"]["template"]["spec"];
    // Agents run on the nodes labelled for recoveries, not on every node, and tolerate only
    // the taint of that label.
    assert_eq!(
        pod["nodeSelector"],
        json!({"kubernetes.io/os": "linux", "instantrecovery.dev/recovery-node": "true"})
    );
    assert_eq!(
        pod["tolerations"],
        json!([{"key": "instantrecovery.dev/recovery-node", "operator": "Exists"}])
    );

    // file:// only inside the default file root, mounted read-only in both at the same path.
    let deployment = find(&documents, "Deployment");
    for workload in [daemonset, deployment] {
        let args = container_args(workload);
        assert!(
            args.contains(&"--file-roots=/var/lib/instant-recovery/repositories".to_owned()),
            "{args:?}"
        );
        assert!(
            !args.iter().any(|a| a == "--allow-ambient-credentials"),
            "{args:?}"
        );
        assert!(
            !args.iter().any(|a| a.starts_with("--watch-namespaces")),
            "{args:?}"
        );
        let spec = &workload["spec"]["template"]["spec"];
        let mount = spec["containers"][0]["volumeMounts"]
            .as_array()
            .unwrap()
            .iter()
            .find(|m| m["mountPath"] == "/var/lib/instant-recovery/repositories")
            .expect("the file root is mounted");
        assert_eq!(mount["readOnly"], true);
        let volume = spec["volumes"]
            .as_array()
            .unwrap()
            .iter()
            .find(|v| v["name"] == mount["name"])
            .unwrap();
        assert_eq!(
            volume["hostPath"]["path"],
            "/var/lib/instant-recovery/repositories"
        );
    }
    // The operator writes a NetworkPolicy for each recovery, admitting its own Pods.
    let args = container_args(deployment);
    for arg in [
        "--network-policy",
        "--operator-namespace=$(POD_NAMESPACE)",
        "--operator-pod-labels=app.kubernetes.io/name=instant-recovery,app.kubernetes.io/instance=ir,app.kubernetes.io/component=operator",
    ] {
        assert!(
            args.iter().any(|a| a == arg),
            "operator args lack {arg}: {args:?}"
        );
    }
    let operator_labels = &deployment["spec"]["template"]["metadata"]["labels"];
    for pair in [
        "app.kubernetes.io/name=instant-recovery",
        "app.kubernetes.io/instance=ir",
        "app.kubernetes.io/component=operator",
    ] {
        let (key, value) = pair.split_once('=').unwrap();
        assert_eq!(
            operator_labels[key], value,
            "the operator's Pods carry {pair}"
        );
    }

    // The chart's own Pods: nothing but the metrics port reaches them.
    let policy = find(&documents, "NetworkPolicy");
    assert_eq!(policy["metadata"]["namespace"], "ir-system");
    let spec = &policy["spec"];
    assert_eq!(spec["policyTypes"], json!(["Ingress"]));
    assert_eq!(
        spec["ingress"],
        json!([{"ports": [{"port": "metrics", "protocol": "TCP"}]}])
    );
    for workload in [daemonset, deployment] {
        let labels = workload["spec"]["template"]["metadata"]["labels"]
            .as_object()
            .unwrap();
        let selector = &spec["podSelector"];
        for (key, value) in selector["matchLabels"].as_object().unwrap() {
            assert_eq!(labels.get(key), Some(value));
        }
        let component = &labels["app.kubernetes.io/component"];
        assert!(
            selector["matchExpressions"][0]["values"]
                .as_array()
                .unwrap()
                .contains(component)
        );
    }
    let port = &deployment["spec"]["template"]["spec"]["containers"][0]["ports"][0];
    assert_eq!(port["name"], "metrics");

    // Neither may list or watch Secrets; neither holds a Lease right outside its namespace.
    for name in ["ir-instant-recovery-operator", "ir-instant-recovery-agent"] {
        let rules = rules_of(all_named(&documents, "ClusterRole", name)[0]);
        for verb in ["list", "watch"] {
            assert!(
                !grants(&rules, "secrets", verb),
                "{name} may {verb} Secrets"
            );
        }
        assert!(
            !grants(&rules, "leases", "update"),
            "{name}: leases cluster-wide"
        );
    }
}

#[test]
fn watched_namespaces_get_roles_and_nothing_namespaced_is_granted_cluster_wide() {
    let documents = helm::yaml_documents(&Helm::new().template(
        "ir",
        "ir-system",
        &[
            "--set",
            "watchNamespaces={db,shop}",
            // The old single namespace is one more.
            "--set",
            "operator.watchNamespace=legacy",
            "--set-json",
            "repositories.fileRoots=[]",
            "--set",
            "repositories.allowAmbientCredentials=true",
        ],
    ));
    let namespaces = ["db", "shop", "legacy"];
    for component in ["operator", "agent"] {
        let name = format!("ir-instant-recovery-{component}");
        // Cluster-wide: only what concerns Nodes.
        let cluster = all_named(&documents, "ClusterRole", &name);
        assert_eq!(cluster.len(), 1);
        assert_eq!(
            rules_of(cluster[0]),
            chart_rules(&format!("{component}-cluster-rules.yaml")),
            "{name}'s ClusterRole"
        );
        for rule in rules_of(cluster[0]) {
            assert_eq!(
                rule.resources,
                Some(vec!["nodes".to_owned()]),
                "{name}: {rule:?}"
            );
        }
        // In each watched namespace, a Role with the namespaced rules and its binding.
        let roles = all_named(&documents, "Role", &name);
        let mut in_namespaces: Vec<&str> = roles
            .iter()
            .map(|r| r["metadata"]["namespace"].as_str().unwrap())
            .collect();
        in_namespaces.sort();
        let mut expected = namespaces.to_vec();
        expected.sort();
        assert_eq!(in_namespaces, expected, "{name}'s Roles");
        for role in &roles {
            assert_eq!(
                rules_of(role),
                chart_rules(&format!("{component}-rules.yaml"))
            );
        }
        let bindings = all_named(&documents, "RoleBinding", &name);
        assert_eq!(bindings.len(), namespaces.len());
        for binding in bindings {
            assert_eq!(binding["roleRef"]["kind"], "Role");
            assert_eq!(binding["roleRef"]["name"], name.as_str());
            assert_eq!(binding["subjects"][0]["namespace"], "ir-system");
        }
    }
    // Both are told which namespaces they serve; file:// is refused; ambient credentials lent.
    for kind in ["Deployment", "DaemonSet"] {
        let args = container_args(find(&documents, kind));
        for arg in [
            "--watch-namespaces=db,shop,legacy",
            "--file-roots=",
            "--allow-ambient-credentials",
        ] {
            assert!(
                args.iter().any(|a| a == arg),
                "{kind} args lack {arg}: {args:?}"
            );
        }
    }
}

/// The ServiceMonitor scrapes the port named `metrics` of both metrics Services.
fn check_service_monitor(documents: &[Value]) {
    let monitor = find(documents, "ServiceMonitor");
    assert_eq!(monitor["metadata"]["labels"]["release"], "prometheus");
    assert_eq!(
        monitor["spec"]["namespaceSelector"]["matchNames"],
        json!(["databases"])
    );
    let endpoint = &monitor["spec"]["endpoints"][0];
    assert_eq!(endpoint["interval"], "15s");
    let selector = &monitor["spec"]["selector"];
    let services: Vec<&Value> = documents
        .iter()
        .filter(|d| d["kind"] == "Service")
        .collect();
    assert_eq!(services.len(), 2);
    for service in services {
        let labels = service["metadata"]["labels"].as_object().unwrap();
        for (key, value) in selector["matchLabels"].as_object().unwrap() {
            assert_eq!(
                labels.get(key),
                Some(value),
                "{} lacks {key}",
                service["metadata"]["name"]
            );
        }
        for expression in selector["matchExpressions"].as_array().unwrap() {
            let label = &labels[expression["key"].as_str().unwrap()];
            assert!(
                expression["values"].as_array().unwrap().contains(label),
                "{} not selected by {expression}",
                service["metadata"]["name"]
            );
        }
        let port = &service["spec"]["ports"][0];
        assert_eq!(port["name"], endpoint["port"]);
        assert_eq!(port["port"], 9090);
    }
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

#[tokio::test]
async fn helm_install_creates_the_objects_the_crds_serve_and_the_operator_holds_its_rights() {
    const NS: &str = "ir-system";
    let plane = ControlPlane::start().await;
    let helm = Helm::with_kubeconfig(plane.admin_kubeconfig());
    let chart = helm::chart_dir();
    let chart = chart.to_str().unwrap();
    let out = helm
        .run(&[
            "install",
            "ir",
            chart,
            "--namespace",
            NS,
            "--create-namespace",
        ])
        .expect_success("helm install");
    assert!(out.contains("STATUS: deployed"), "{out}");
    assert!(
        out.contains("Deployment ir-instant-recovery-operator, 2 replica(s)"),
        "the NOTES: {out}"
    );

    let client = plane.admin();
    let crds: Api<CustomResourceDefinition> = Api::all(client.clone());
    for name in [
        "instantrecoveries.instantrecovery.dev",
        "backuprepositories.instantrecovery.dev",
        "recoverymounts.instantrecovery.dev",
    ] {
        let crd = crds
            .get(name)
            .await
            .unwrap_or_else(|e| panic!("CRD {name}: {e}"));
        let established = crd
            .status
            .and_then(|s| s.conditions)
            .unwrap_or_default()
            .iter()
            .any(|c| c.type_ == "Established" && c.status == "True");
        assert!(established, "CRD {name} is not Established");
    }

    let deployment = Api::<Deployment>::namespaced(client.clone(), NS)
        .get("ir-instant-recovery-operator")
        .await
        .expect("the operator's Deployment");
    let spec = deployment.spec;
    assert_eq!(spec.replicas, Some(2));
    let pod = spec.template.spec.unwrap();
    assert_eq!(
        pod.service_account_name.as_deref(),
        Some("ir-instant-recovery-operator")
    );
    let container = &pod.containers[0];
    let args = container.args.clone().unwrap();
    for arg in [
        "--leader-election",
        "--leader-election-namespace=$(POD_NAMESPACE)",
        "--metrics-address=0.0.0.0:8080",
    ] {
        assert!(
            args.iter().any(|a| a == arg),
            "operator args lack {arg}: {args:?}"
        );
    }
    let env: Vec<_> = container.env.clone().unwrap();
    for (name, field) in [
        ("POD_NAMESPACE", "metadata.namespace"),
        ("POD_NAME", "metadata.name"),
    ] {
        let var = env.iter().find(|e| e.name == name).expect(name);
        let from = var.value_from.as_ref().and_then(|v| v.field_ref.as_ref());
        assert_eq!(from.map(|f| f.field_path.as_str()), Some(field));
    }
    let security = container.security_context.as_ref().unwrap();
    assert_eq!(security.read_only_root_filesystem, Some(true));
    assert_eq!(security.allow_privilege_escalation, Some(false));
    assert_eq!(
        security.capabilities.as_ref().unwrap().drop.as_deref(),
        Some(&["ALL".to_owned()][..])
    );
    assert_eq!(pod.security_context.unwrap().run_as_non_root, Some(true));
    let probe_path = |p: &Option<k8s_openapi::api::core::v1::Probe>| {
        p.as_ref()
            .and_then(|p| p.http_get.as_ref())
            .and_then(|h| h.path.clone())
    };
    assert_eq!(
        probe_path(&container.liveness_probe).as_deref(),
        Some("/healthz")
    );
    assert_eq!(
        probe_path(&container.readiness_probe).as_deref(),
        Some("/readyz")
    );

    let daemonset = Api::<DaemonSet>::namespaced(client.clone(), NS)
        .get("ir-instant-recovery-agent")
        .await
        .expect("the agent's DaemonSet");
    let spec = daemonset.spec;
    assert_eq!(
        spec.update_strategy.unwrap().type_.as_deref(),
        Some("OnDelete")
    );
    let pod = spec.template.spec.unwrap();
    let container = &pod.containers[0];
    let mounts = container.volume_mounts.as_ref().unwrap();
    let media = mounts
        .iter()
        .find(|m| m.mount_path == "/run/media/instant-recovery")
        .expect("the mount root");
    assert_eq!(media.mount_propagation.as_deref(), Some("Bidirectional"));
    assert!(
        mounts
            .iter()
            .any(|m| m.mount_path == "/var/lib/instant-recovery")
    );
    assert!(mounts.iter().any(|m| m.mount_path == "/dev/fuse"));
    // Root, unlike the image's default user: FUSE mounts need it.
    let security = container.security_context.as_ref().unwrap();
    assert_eq!(
        (security.run_as_user, security.privileged),
        (Some(0), Some(true))
    );
    let node_name = container
        .env
        .as_ref()
        .unwrap()
        .iter()
        .find(|e| e.name == "NODE_NAME")
        .and_then(|e| e.value_from.as_ref())
        .and_then(|v| v.field_ref.as_ref())
        .map(|f| f.field_path.clone());
    assert_eq!(node_name.as_deref(), Some("spec.nodeName"));

    // Serving every namespace, the ClusterRoles hold exactly the rules in files/rbac, which the
    // other e2e tests bind; the leader election's rules are the operator's in its namespace.
    let roles: Api<ClusterRole> = Api::all(client.clone());
    for component in ["operator", "agent"] {
        let mut rules = chart_rules(&format!("{component}-cluster-rules.yaml"));
        rules.extend(chart_rules(&format!("{component}-rules.yaml")));
        let role = roles
            .get(&format!("ir-instant-recovery-{component}"))
            .await
            .unwrap();
        assert_eq!(role.rules, Some(rules), "{component}'s ClusterRole");
        let binding = Api::<ClusterRoleBinding>::all(client.clone())
            .get(&format!("ir-instant-recovery-{component}"))
            .await
            .unwrap();
        let subject = &binding.subjects.unwrap()[0];
        assert_eq!(
            (subject.kind.as_str(), subject.namespace.as_deref()),
            ("ServiceAccount", Some(NS))
        );
        Api::<ServiceAccount>::namespaced(client.clone(), NS)
            .get(&subject.name)
            .await
            .unwrap_or_else(|e| panic!("ServiceAccount {}: {e}", subject.name));
    }
    let leader_election = Api::<Role>::namespaced(client.clone(), NS)
        .get("ir-instant-recovery-operator-leader-election")
        .await
        .expect("the leader election's Role");
    assert_eq!(
        leader_election.rules,
        Some(chart_rules("operator-leader-election-rules.yaml"))
    );
    for service in [
        "ir-instant-recovery-operator-metrics",
        "ir-instant-recovery-agent-metrics",
    ] {
        let service = Api::<Service>::namespaced(client.clone(), NS)
            .get(service)
            .await
            .unwrap();
        assert_eq!(
            service.spec.unwrap().ports.unwrap()[0].name.as_deref(),
            Some("metrics")
        );
    }

    // As the operator's ServiceAccount: the CRDs serve and its Lease is within its rights.
    let operator = plane
        .service_account(NS, "ir-instant-recovery-operator")
        .await
        .client;
    let recoveries: Api<ir_api::crd::InstantRecovery> = Api::all(operator.clone());
    let listed = recoveries.list(&ListParams::default()).await;
    assert!(
        listed
            .expect("list InstantRecoveries as the operator")
            .items
            .is_empty()
    );
    let repositories: Api<ir_api::crd::BackupRepository> = Api::all(operator.clone());
    repositories
        .list(&ListParams::default())
        .await
        .expect("list BackupRepositories as the operator");
    let lease = Lease {
        metadata: ObjectMeta {
            name: Some("instant-recovery-operator".into()),
            ..Default::default()
        },
        ..Default::default()
    };
    Api::<Lease>::namespaced(operator, NS)
        .create(&PostParams::default(), &lease)
        .await
        .expect("create the leader-election Lease as the operator");

    // An upgrade changes the Deployment and keeps the agents' OnDelete strategy.
    helm.run(&[
        "upgrade",
        "ir",
        chart,
        "--namespace",
        NS,
        "--set",
        "operator.replicas=3",
    ])
    .expect_success("helm upgrade");
    let deployment = Api::<Deployment>::namespaced(client.clone(), NS)
        .get("ir-instant-recovery-operator")
        .await
        .unwrap();
    assert_eq!(deployment.spec.replicas, Some(3));

    helm.run(&["uninstall", "ir", "--namespace", NS])
        .expect_success("helm uninstall");
    let left = Api::<Deployment>::namespaced(client.clone(), NS)
        .get_opt("ir-instant-recovery-operator")
        .await
        .unwrap();
    assert!(left.is_none(), "the Deployment outlives helm uninstall");
    assert!(
        roles
            .get_opt("ir-instant-recovery-operator")
            .await
            .unwrap()
            .is_none(),
        "the ClusterRole outlives helm uninstall"
    );
    // Helm keeps CRDs (and so every recovery) on uninstall.
    crds.get("instantrecoveries.instantrecovery.dev")
        .await
        .expect("the CRD stays after uninstall");
}

#[test]
fn values_schema_refuses_bad_values_naming_the_field() {
    let helm = Helm::new();
    let chart = helm::chart_dir();
    let chart = chart.to_str().unwrap();
    for (set, field, problem) in [
        (
            "operator.replicas=two",
            "/operator/replicas",
            "want integer",
        ),
        ("operator.replica=2", "/operator", "'replica' not allowed"),
        (
            "image.pullPolicy=Sometimes",
            "/image/pullPolicy",
            "must be one of",
        ),
        (
            "agent.mountRoot=relative",
            "/agent/mountRoot",
            "does not match pattern",
        ),
        (
            "metrics.serviceMonitor.enabled=maybe",
            "/metrics/serviceMonitor/enabled",
            "want boolean",
        ),
        (
            "operator.resources.requests.cpu=lots",
            "/operator/resources/requests/cpu",
            "",
        ),
        (
            "watchNamespaces={db,Not_A_Namespace}",
            "/watchNamespaces/1",
            "does not match pattern",
        ),
        (
            "operator.watchNamespace=-db",
            "/operator/watchNamespace",
            "does not match pattern",
        ),
        (
            "repositories.fileRoots={relative/dir}",
            "/repositories/fileRoots/0",
            "does not match pattern",
        ),
        (
            "repositories.fileRoots={/}",
            "/repositories/fileRoots/0",
            "does not match pattern",
        ),
        (
            "repositories.fileRoots={/srv/../etc}",
            "/repositories/fileRoots/0",
            "",
        ),
        (
            "repositories.allowAmbientCredentials=yes",
            "/repositories/allowAmbientCredentials",
            "want boolean",
        ),
    ] {
        let run = helm.run(&["template", "ir", chart, "--set", set]);
        assert!(!run.success, "helm accepted --set {set}:\n{}", run.stdout);
        assert!(
            run.stderr.contains(&format!("at '{field}'")) && run.stderr.contains(problem),
            "--set {set}: helm's message does not name {field} ({problem}):\n{}",
            run.stderr
        );
    }
    // --set-string keeps a number a string, which the schema refuses as well.
    let run = helm.run(&["template", "ir", chart, "--set-string", "metrics.port=8080"]);
    assert!(
        !run.success && run.stderr.contains("at '/metrics/port'"),
        "{}",
        run.stderr
    );
}

/// A workspace binary started the way a container of the installed chart would start it; killed
/// on drop.
struct Container {
    child: Child,
    log: PathBuf,
}

impl Container {
    /// Runs `container`'s command and args (`$(VAR)` expanded) with its env, which may only come
    /// from the downward API fields of `pod` (name, namespace, node), as `identity`.
    fn start(
        container: &ContainerSpec,
        pod: [(&str, &str); 3],
        identity: &Path,
        log: PathBuf,
    ) -> Container {
        let env: Vec<(String, String)> = container
            .env
            .iter()
            .flatten()
            .map(|var| {
                let field = var
                    .value_from
                    .as_ref()
                    .and_then(|from| from.field_ref.as_ref())
                    .unwrap_or_else(|| panic!("env {} is not from the downward API", var.name));
                let value = pod
                    .iter()
                    .find(|(path, _)| *path == field.field_path)
                    .unwrap_or_else(|| panic!("env {} from {}", var.name, field.field_path))
                    .1;
                (var.name.clone(), value.to_owned())
            })
            .collect();
        let expand = |arg: &String| {
            env.iter().fold(arg.clone(), |arg, (name, value)| {
                arg.replace(&format!("$({name})"), value)
            })
        };
        let command = container.command.as_ref().expect("an explicit command");
        let out = std::fs::File::create(&log).expect("create the log");
        let child = Command::new(workspace_binary(&command[0]))
            .args(
                command[1..]
                    .iter()
                    .chain(container.args.iter().flatten())
                    .map(expand),
            )
            .envs(env.iter().map(|(k, v)| (k, v)))
            .env("KUBECONFIG", identity)
            .stdin(Stdio::null())
            .stdout(out.try_clone().unwrap())
            .stderr(out)
            .spawn()
            .unwrap_or_else(|e| panic!("start {}: {e}", command[0]));
        Container { child, log }
    }

    /// Waits up to 60 s until `path` on the metrics port answers 200.
    async fn wait_ok(&mut self, port: u16, path: &str) {
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let address = loopback(port);
            if let Ok((200, _)) = http_get(address, path).await {
                return;
            }
            let log = || std::fs::read_to_string(&self.log).unwrap_or_default();
            if let Ok(Some(status)) = self.child.try_wait() {
                panic!("exited ({status}) before {path} answered 200:\n{}", log());
            }
            assert!(
                Instant::now() < deadline,
                "{path} did not answer 200 in 60 s:\n{}",
                log()
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }
}

impl Drop for Container {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Without a kubelet no Pod runs, so the test runs the chart's containers itself: the real
/// ir-operator and ir-agent with exactly the installed command line, env and RBAC rights (the
/// chart's ServiceAccounts) start, serve their probes, and the operator takes the Lease.
#[tokio::test]
async fn the_installed_operator_and_agent_start_with_the_charts_arguments_and_rights() {
    const NS: &str = "ir-system";
    let plane = ControlPlane::start().await;
    let helm = Helm::with_kubeconfig(plane.admin_kubeconfig());
    let dir = ir_e2e::shared_tempdir();
    let port = ir_e2e::free_port();
    let chart = helm::chart_dir();
    let (mounts, caches) = (dir.path().join("mounts"), dir.path().join("caches"));
    helm.run(&[
        "install".as_ref(),
        "ir".as_ref(),
        chart.as_os_str(),
        "--namespace".as_ref(),
        NS.as_ref(),
        "--create-namespace".as_ref(),
        "--set".as_ref(),
        format!("metrics.port={port}").as_ref(),
        "--set".as_ref(),
        format!("agent.mountRoot={}", mounts.display()).as_ref(),
        "--set".as_ref(),
        format!("agent.cacheRoot={}", caches.display()).as_ref(),
    ])
    .expect_success("helm install");
    let client = plane.admin();

    let deployment = Api::<Deployment>::namespaced(client.clone(), NS)
        .get("ir-instant-recovery-operator")
        .await
        .unwrap();
    let pod = deployment.spec.template.spec.unwrap();
    let account = pod.service_account_name.unwrap();
    let identity = plane.service_account(NS, &account).await;
    let pod_name = "ir-instant-recovery-operator-5d8f7c9b6-x2x7q";
    let mut operator = Container::start(
        &pod.containers[0],
        [
            ("metadata.name", pod_name),
            ("metadata.namespace", NS),
            ("spec.nodeName", "node-1"),
        ],
        &identity.kubeconfig,
        dir.path().join("operator.log"),
    );
    operator.wait_ok(port, "/healthz").await;
    operator.wait_ok(port, "/readyz").await;
    let leases = Api::<Lease>::namespaced(client.clone(), NS);
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let holder = leases
            .get_opt("instant-recovery-operator")
            .await
            .unwrap()
            .and_then(|l| l.spec)
            .and_then(|s| s.holder_identity);
        if holder.as_deref() == Some(pod_name) {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the operator holds no Lease after 60 s (holder {holder:?}):\n{}",
            std::fs::read_to_string(&operator.log).unwrap_or_default()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    drop(operator);

    // The agent heartbeats on its own Node, which only a kubelet would register here; the
    // node is labelled for recoveries, as the docs ask, and the DaemonSet selects it alone.
    let node: Node = serde_json::from_value(json!({"metadata": {
        "name": "node-1",
        "labels": {"kubernetes.io/os": "linux", "instantrecovery.dev/recovery-node": "true"},
    }}))
    .unwrap();
    Api::<Node>::all(client.clone())
        .create(&PostParams::default(), &node)
        .await
        .expect("create the Node");
    let daemonset = Api::<DaemonSet>::namespaced(client.clone(), NS)
        .get("ir-instant-recovery-agent")
        .await
        .unwrap();
    let pod = daemonset.spec.template.spec.unwrap();
    let selector = pod.node_selector.clone().unwrap_or_default();
    let labels = node.metadata.labels.clone().unwrap_or_default();
    assert!(
        selector.iter().all(|(k, v)| labels.get(k) == Some(v)),
        "the agents' nodeSelector {selector:?} selects the labelled node"
    );
    assert!(
        selector.contains_key(ir_api::crd::RECOVERY_NODE_LABEL),
        "an unlabelled node gets no agent: {selector:?}"
    );
    let identity = plane
        .service_account(NS, &pod.service_account_name.unwrap())
        .await;
    let mut agent = Container::start(
        &pod.containers[0],
        [
            ("metadata.name", "ir-instant-recovery-agent-7xk2p"),
            ("metadata.namespace", NS),
            ("spec.nodeName", "node-1"),
        ],
        &identity.kubeconfig,
        dir.path().join("agent.log"),
    );
    agent.wait_ok(port, "/healthz").await;
    let nodes = Api::<Node>::all(client);
    let deadline = Instant::now() + Duration::from_secs(60);
    while !nodes
        .get("node-1")
        .await
        .unwrap()
        .metadata
        .annotations
        .unwrap_or_default()
        .contains_key(ir_api::crd::AGENT_HEARTBEAT_ANNOTATION)
    {
        assert!(
            Instant::now() < deadline,
            "no agent heartbeat on the Node after 60 s:\n{}",
            std::fs::read_to_string(&agent.log).unwrap_or_default()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

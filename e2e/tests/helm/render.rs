//! `helm lint` and `helm template`: every rendered object, CRD and sample resource validates
//! against the schemas the real kube-apiserver serves.

use super::*;

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
    assert_eq!(verdicts.len(), ir_api::crd::all_yaml().len());

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

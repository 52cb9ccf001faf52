//! What the rendered chart grants and confines: RBAC per mode, agents' placement, repositories,
//! credentials and network.

use super::*;

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

//! `helm install`, upgrade and uninstall on a real control plane, and the installed containers
//! started with exactly their command lines and rights.

use super::*;

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
    let env_from = |name: &str| {
        container
            .env
            .as_ref()
            .unwrap()
            .iter()
            .find(|e| e.name == name)
            .and_then(|e| e.value_from.clone())
            .unwrap_or_else(|| panic!("the agent's {name} comes from the API"))
    };
    let node_name = env_from("NODE_NAME").field_ref.map(|f| f.field_path);
    assert_eq!(node_name.as_deref(), Some("spec.nodeName"));
    // The agent keeps its mounts within its own memory limit, in MiB.
    let budget = env_from("IR_MEMORY_BUDGET_MIB").resource_field_ref.unwrap();
    assert_eq!(
        (budget.resource.as_str(), budget.divisor.map(|d| d.0)),
        ("limits.memory", Some("1Mi".to_owned()))
    );

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

/// A workspace binary started the way a container of the installed chart would start it; killed
/// on drop.
/// A container's limit as the kubelet gives it through `resource` (`limits.<name>` in units of
/// its divisor, rounded up); binary suffixes only, as the chart's limits.
fn limit_in(container: &ContainerSpec, resource: &ResourceFieldSelector) -> String {
    let bytes = |quantity: &str| {
        let units = [("Ki", 10), ("Mi", 20), ("Gi", 30), ("Ti", 40)];
        let (number, shift) = units
            .iter()
            .find_map(|(suffix, shift)| Some((quantity.strip_suffix(suffix)?, *shift)))
            .unwrap_or((quantity, 0));
        number.parse::<u64>().expect("a whole quantity") << shift
    };
    let name = resource.resource.strip_prefix("limits.").expect("a limit");
    let limits = container.resources.as_ref().and_then(|r| r.limits.as_ref());
    let limit = limits
        .and_then(|l| l.get(name))
        .unwrap_or_else(|| panic!("the container has no {name} limit"));
    let divisor = resource.divisor.as_ref().map_or(1, |d| bytes(&d.0));
    bytes(&limit.0).div_ceil(divisor).to_string()
}

struct Container {
    child: Child,
    log: PathBuf,
}

impl Container {
    /// Runs `container`'s command and args (`$(VAR)` expanded) with its env, which may only come
    /// from the downward API: fields of `pod` (name, namespace, node) or the container's limits,
    /// as `identity`.
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
                let from = var
                    .value_from
                    .as_ref()
                    .unwrap_or_else(|| panic!("env {} is not from the downward API", var.name));
                let value = match (&from.field_ref, &from.resource_field_ref) {
                    (Some(field), _) => pod
                        .iter()
                        .find(|(path, _)| *path == field.field_path)
                        .unwrap_or_else(|| panic!("env {} from {}", var.name, field.field_path))
                        .1
                        .to_owned(),
                    (None, Some(resource)) => limit_in(container, resource),
                    (None, None) => panic!("env {} is not from the downward API", var.name),
                };
                (var.name.clone(), value)
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

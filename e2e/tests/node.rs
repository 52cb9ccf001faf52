//! The real chart on a real node (scripts/node/up.sh): `helm install` with the project's image
//! built from the workspace's binaries, then a recovery of a real PostgreSQL 15 backup from a
//! file:// repository, published from the agent's FUSE mount and switched over to its PVC, all
//! of it in real Pods. One test: the node is machine-wide.

use std::os::unix::fs::PermissionsExt;
use std::time::{Duration, Instant};

use ir_api::crd::{InstantRecovery, RECOVERY_LABEL, RECOVERY_NODE_LABEL, RecoveryMount};
use ir_api::recovery::Phase;
use ir_e2e::helm::{self, Helm};
use ir_e2e::installation::{PASSWORD, SAMPLE_ROWS, query_one, sample_backup, workspace_binary};
use ir_e2e::node::{IMAGE_REPOSITORY, IMAGE_TAG, NODE_NAME, NodeTurn, RealNode};
use ir_e2e::pg::{PgCluster, bindir};
use k8s_openapi::api::apps::v1::{DaemonSet, Deployment};
use k8s_openapi::api::batch::v1::Job;
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::{Node, PersistentVolumeClaim, Pod, Service};
use kube::api::{DeleteParams, ListParams, Patch, PatchParams, PostParams};
use kube::{Api, Client};

const SYSTEM: &str = "ir-system";
const NS: &str = "db";
const RELEASE: &str = "ir";
const NAME: &str = "orders";
const MANUAL: &str = "manual";
const SCHEDULED: &str = "scheduled";
/// How long after its apply the Scheduled recovery switches over.
const SCHEDULED_AFTER: Duration = Duration::from_secs(30);
const DELETED: &str = "deleted";
const RESTARTED: &str = "restarted";
/// The operators' leader-election Lease (ir-operator's --leader-election-name default).
const OPERATOR_LEASE: &str = "instant-recovery-operator";
const AGENTLESS: &str = "agentless";
const REBOOTED: &str = "rebooted";
/// The chart's `agent.cacheRoot`: IRCaches are in `ircache/<RecoveryMount uid>` under it.
const CACHE_ROOT: &str = "/var/lib/instant-recovery";

struct Phases(Instant, Instant);

impl Phases {
    fn new() -> Phases {
        Phases(Instant::now(), Instant::now())
    }
    fn done(&mut self, what: &str) {
        eprintln!(
            "timing: {what}: {:.1?} (total {:.1?})",
            self.1.elapsed(),
            self.0.elapsed()
        );
        self.1 = Instant::now();
    }
}

async fn apply(client: &Client, yaml: &str) {
    let ssapply = PatchParams::apply("ir-e2e").force();
    for doc in helm::yaml_documents(yaml) {
        let obj: kube::api::DynamicObject =
            serde_json::from_value(doc.clone()).expect("a Kubernetes object");
        let gvk = kube::api::GroupVersionKind::try_from(obj.types.as_ref().expect("typed"))
            .expect("a group, version and kind");
        let (resource, _) = kube::discovery::pinned_kind(client, &gvk)
            .await
            .unwrap_or_else(|e| panic!("discover {gvk:?}: {e}"));
        let api: Api<kube::api::DynamicObject> = match obj.metadata.namespace.as_deref() {
            Some(ns) => Api::namespaced_with(client.clone(), ns, &resource),
            None => Api::all_with(client.clone(), &resource),
        };
        let name = obj.metadata.name.clone().expect("a name");
        api.patch(&name, &ssapply, &Patch::Apply(&doc))
            .await
            .unwrap_or_else(|e| panic!("apply {gvk:?} {name}: {e}"));
    }
}

/// Pod states, events and the logs of the chart's and the recovery's Pods.
fn diagnostics(node: &RealNode) -> String {
    let mut text = String::new();
    for args in [
        &[
            "get",
            "pods,pvc,pv,svc,jobs,recoverymounts",
            "-A",
            "-o",
            "wide",
        ][..],
        &["get", "instantrecoveries", "-A", "-o", "yaml"],
        &["get", "events", "-A", "--sort-by=.lastTimestamp"],
    ] {
        text.push_str(&format!(
            "--- kubectl {}\n{}\n",
            args.join(" "),
            node.kubectl(args)
        ));
    }
    for ns in [SYSTEM, NS] {
        let pods = node.kubectl(&["get", "pods", "-n", ns, "-o", "name"]);
        for pod in pods.lines().filter(|l| l.starts_with("pod/")) {
            let args = [
                "logs",
                "-n",
                ns,
                pod,
                "--all-containers",
                "--prefix",
                "--tail=60",
            ];
            text.push_str(&format!(
                "--- kubectl {}\n{}\n",
                args.join(" "),
                node.kubectl(&args)
            ));
        }
    }
    text
}

async fn wait_for<T, F>(node: &RealNode, what: &str, timeout: Duration, mut probe: F) -> T
where
    F: AsyncFnMut() -> Option<T>,
{
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(value) = probe().await {
            return value;
        }
        if Instant::now() >= deadline {
            panic!("{what}: not within {timeout:?}\n{}", diagnostics(node));
        }
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
}

fn pod_ready(pod: &Pod) -> bool {
    pod.status
        .as_ref()
        .and_then(|s| s.conditions.as_ref())
        .is_some_and(|c| c.iter().any(|c| c.type_ == "Ready" && c.status == "True"))
}

#[tokio::test]
async fn the_chart_recovers_a_backup_on_a_real_node() {
    ir_e2e::require_fuse();
    let mut phases = Phases::new();
    let root = ir_e2e::shared_tempdir();
    let (repo_url, backup_id) = sample_backup(root.path());
    let file_root = root.path().join("repositories");
    phases.done("sample backup");

    let node = NodeTurn::own().await;
    phases.done("node up, images imported");
    let client = node.admin();

    let label = serde_json::json!({"metadata": {"labels": {RECOVERY_NODE_LABEL: "true"}}});
    Api::<Node>::all(client.clone())
        .patch(NODE_NAME, &PatchParams::default(), &Patch::Merge(&label))
        .await
        .expect("label the node for recoveries");
    let helm = Helm::with_kubeconfig(node.kubeconfig());
    let chart = helm::chart_dir();
    let set = [
        format!("image.repository={IMAGE_REPOSITORY}"),
        format!("image.tag={IMAGE_TAG}"),
        "image.pullPolicy=Never".to_owned(),
        format!("repositories.fileRoots[0]={}", file_root.display()),
        "logFormat=text".to_owned(),
    ];
    let mut args = vec![
        "install".to_owned(),
        RELEASE.to_owned(),
        chart.to_str().expect("a UTF-8 path").to_owned(),
        "--namespace".to_owned(),
        SYSTEM.to_owned(),
        "--create-namespace".to_owned(),
    ];
    for s in &set {
        args.extend(["--set".to_owned(), s.clone()]);
    }
    helm.run(&args).expect_success("helm install");
    phases.done("helm install");

    // The operator and the agent run as Pods of the local image and become Ready.
    let system_pods: Api<Pod> = Api::namespaced(client.clone(), SYSTEM);
    let ready = wait_for(
        &node,
        "the operator and agent Pods Ready",
        Duration::from_secs(90),
        async || {
            let pods = system_pods.list(&ListParams::default()).await.ok()?;
            let ready: Vec<Pod> = pods.items.into_iter().filter(pod_ready).collect();
            let role =
                |p: &Pod, part: &str| p.metadata.name.as_deref().is_some_and(|n| n.contains(part));
            (ready.iter().any(|p| role(p, "operator")) && ready.iter().any(|p| role(p, "agent")))
                .then_some(ready)
        },
    )
    .await;
    phases.done("operator and agent Pods Ready");
    let deployment = Api::<Deployment>::namespaced(client.clone(), SYSTEM)
        .get(&format!("{RELEASE}-instant-recovery-operator"))
        .await
        .expect("the operator's Deployment");
    let image = format!("{IMAGE_REPOSITORY}:{IMAGE_TAG}");
    assert_eq!(
        deployment.spec.template.spec.unwrap().containers[0]
            .image
            .as_deref(),
        Some(image.as_str())
    );
    // The agent runs privileged with /dev/fuse.
    let daemonsets = Api::<DaemonSet>::namespaced(client.clone(), SYSTEM)
        .list(&ListParams::default())
        .await
        .expect("list DaemonSets");
    assert_eq!(daemonsets.items.len(), 1, "the agent's DaemonSet");
    let agent = ready
        .iter()
        .find(|p| {
            p.metadata
                .name
                .as_deref()
                .is_some_and(|n| n.contains("agent"))
        })
        .expect("an agent Pod");
    let spec = agent.spec.as_ref().expect("a Pod spec");
    assert_eq!(spec.node_name.as_deref(), Some(NODE_NAME));
    let container = &spec.containers[0];
    assert_eq!(
        container
            .security_context
            .as_ref()
            .and_then(|s| s.privileged),
        Some(true),
        "the agent runs privileged"
    );
    let fuse_volume = spec
        .volumes
        .iter()
        .flatten()
        .find(|v| v.host_path.as_ref().is_some_and(|h| h.path == "/dev/fuse"))
        .expect("a /dev/fuse hostPath volume");
    assert!(
        container
            .volume_mounts
            .iter()
            .flatten()
            .any(|m| m.name == fuse_volume.name && m.mount_path == "/dev/fuse"),
        "the agent mounts /dev/fuse"
    );
    let exec = node.kubectl(&[
        "exec",
        "-n",
        SYSTEM,
        agent.metadata.name.as_deref().unwrap(),
        "--",
        "sh",
        "-c",
        "test -c /dev/fuse && test -w /dev/fuse && id -u && echo fuse-ok",
    ]);
    assert!(exec.contains("fuse-ok"), "the agent's /dev/fuse: {exec}");

    Api::<k8s_openapi::api::core::v1::Namespace>::all(client.clone())
        .create(
            &PostParams::default(),
            &serde_json::from_value(serde_json::json!({"metadata": {"name": NS}})).unwrap(),
        )
        .await
        .expect("create the namespace");
    apply(
        &client,
        &format!(
            "apiVersion: instantrecovery.dev/v1alpha1\nkind: BackupRepository\n\
             metadata:\n  name: backups\n  namespace: {NS}\nspec:\n  url: {repo_url}\n---\n\
             apiVersion: v1\nkind: Secret\nmetadata:\n  name: db-superuser\n  namespace: {NS}\n\
             type: kubernetes.io/basic-auth\nstringData:\n  username: postgres\n  \
             password: {PASSWORD}\n"
        ),
    )
    .await;
    // Four recoveries of the same backup: `orders` (Automatic), `manual` (approved with the
    // plugin) and `deleted` (deleted while it syncs) run side by side; `restarted` (the
    // leading operator's Pod deleted while it syncs) runs alone afterwards, so that the
    // failover interrupts it only.
    let switchover_at = jiff::Timestamp::now() + SCHEDULED_AFTER;
    let switchover_at = jiff::Timestamp::from_second(switchover_at.as_second()).unwrap();
    let scheduled = format!("Scheduled\n    at: \"{switchover_at}\"");
    for (name, mode) in [
        (NAME, "Automatic"),
        (MANUAL, "Manual"),
        (DELETED, "Automatic"),
        (SCHEDULED, scheduled.as_str()),
    ] {
        apply_recovery(&node, &client, name, mode, &backup_id).await;
    }
    phases.done("recoveries applied");

    let recoveries: Api<InstantRecovery> = Api::namespaced(client.clone(), NS);
    let phase = async |name: &str| -> Option<Phase> {
        let ir = recoveries.get_opt(name).await.ok().flatten()?;
        Some(ir.status?.phase)
    };

    // `deleted`: deleted once it syncs, with its FUSE mount in place; everything it made goes,
    // on the API server and on the node.
    let seen = wait_phase_from(&node, &recoveries, DELETED, Phase::Syncing).await;
    let mounts: Api<RecoveryMount> = Api::namespaced(client.clone(), NS);
    let of_deleted = ListParams::default().labels(&format!("{RECOVERY_LABEL}={DELETED}"));
    let mount_uid = mounts
        .list(&of_deleted)
        .await
        .expect("list RecoveryMounts")
        .items
        .first()
        .and_then(|m| m.metadata.uid.clone())
        .unwrap_or_else(|| panic!("{DELETED}'s RecoveryMount\n{}", diagnostics(&node)));
    let fuse = node.fuse_mounts();
    assert!(
        fuse.contains(&mount_uid),
        "{DELETED}'s FUSE mount {mount_uid} on the node: {fuse}"
    );
    let cache_dir = format!("{CACHE_ROOT}/ircache/{mount_uid}");
    assert!(
        node.in_mount_ns(&["ls", "-d", &cache_dir])
            .contains(&mount_uid),
        "{DELETED}'s IRCache"
    );
    recoveries
        .delete(DELETED, &DeleteParams::default())
        .await
        .expect("delete the recovery");
    phases.done(&format!("{DELETED} deleted in phase {seen:?}"));

    let orders_ip = service_ip(&node, &client, NAME).await;
    // Published: the backup answers from the FUSE mount, through the ClusterIP.
    let mut published = None;
    wait_for(
        &node,
        "a published answer",
        Duration::from_secs(120),
        async || {
            if phase(NAME).await == Some(Phase::Failed) {
                panic!("{NAME} failed:\n{}", diagnostics(&node));
            }
            let rows = query_count(&orders_ip).await?;
            published = phase(NAME).await;
            Some(rows)
        },
    )
    .await;
    phases.done(&format!("published answer (phase {published:?})"));
    assert_eq!(
        query_one(&orders_ip, "SELECT count(*) FROM accounts").await,
        SAMPLE_ROWS.to_string()
    );

    wait_completed(&node, &recoveries, NAME).await;
    phases.done("switchover, phase Completed");
    let rows = wait_for(
        &node,
        "an answer after the switchover",
        Duration::from_secs(60),
        async || query_count(&orders_ip).await,
    )
    .await;
    assert_eq!(rows, SAMPLE_ROWS.to_string());
    let recovery = query_one(&orders_ip, "SELECT pg_is_in_recovery()").await;
    assert_eq!(recovery, "f", "the switched-over primary accepts writes");
    query_one(&orders_ip, "CREATE TABLE after_switchover(id int)").await;
    phases.done("answer after the switchover");

    // `deleted` is gone, and so is everything it made: Pods, PVC, Service, RecoveryMount, the
    // FUSE mount and the IRCache on the node.
    wait_for(
        &node,
        "deleted gone",
        Duration::from_secs(120),
        async || {
            recoveries
                .get_opt(DELETED)
                .await
                .ok()?
                .is_none()
                .then_some(())
        },
    )
    .await;
    let pods: Api<Pod> = Api::namespaced(client.clone(), NS);
    let pvcs: Api<PersistentVolumeClaim> = Api::namespaced(client.clone(), NS);
    let services: Api<Service> = Api::namespaced(client.clone(), NS);
    let jobs: Api<Job> = Api::namespaced(client.clone(), NS);
    let left = wait_for(
        &node,
        "nothing of deleted left",
        Duration::from_secs(60),
        async || {
            let mut left = names_of(&pods, &of_deleted).await?;
            left.extend(names_of(&pvcs, &of_deleted).await?);
            left.extend(names_of(&services, &of_deleted).await?);
            left.extend(names_of(&jobs, &of_deleted).await?);
            left.extend(names_of(&mounts, &of_deleted).await?);
            let target = format!("{DELETED}-target");
            if pvcs.get_opt(&target).await.ok()?.is_some() {
                left.push(target);
            }
            if services.get_opt(DELETED).await.ok()?.is_some() {
                left.push(format!("service {DELETED}"));
            }
            left.is_empty().then_some(left)
        },
    )
    .await;
    assert!(left.is_empty());
    let fuse = node.fuse_mounts();
    assert!(
        !fuse.contains(&mount_uid),
        "{DELETED}'s FUSE mount is left on the node: {fuse}"
    );
    let caches = node.in_mount_ns(&["ls", "-a", &format!("{CACHE_ROOT}/ircache")]);
    assert!(
        !caches.contains(&mount_uid),
        "{DELETED}'s IRCache is left on the node: {caches}"
    );
    phases.done(&format!("{DELETED} gone, nothing of it left"));

    // `manual`: waits in ReadyForSwitchover until `kubectl ir switchover` approves it.
    wait_for(
        &node,
        "manual ReadyForSwitchover",
        Duration::from_secs(120),
        async || match phase(MANUAL).await {
            Some(Phase::ReadyForSwitchover) => Some(()),
            Some(p) if p > Phase::ReadyForSwitchover => {
                panic!(
                    "{MANUAL} went on without approval: {p:?}\n{}",
                    diagnostics(&node)
                )
            }
            _ => None,
        },
    )
    .await;
    phases.done(&format!("{MANUAL} ReadyForSwitchover"));
    for _ in 0..6 {
        tokio::time::sleep(Duration::from_millis(500)).await;
        assert_eq!(
            phase(MANUAL).await,
            Some(Phase::ReadyForSwitchover),
            "{MANUAL} waits for its approval"
        );
    }
    kubectl_ir(&node, &["switchover", MANUAL, "-n", NS]);
    wait_completed(&node, &recoveries, MANUAL).await;
    let manual_ip = service_ip(&node, &client, MANUAL).await;
    let rows = wait_for(
        &node,
        "an answer from manual",
        Duration::from_secs(60),
        async || query_count(&manual_ip).await,
    )
    .await;
    assert_eq!(rows, SAMPLE_ROWS.to_string());
    assert_eq!(
        query_one(&manual_ip, "SELECT pg_is_in_recovery()").await,
        "f"
    );
    phases.done(&format!(
        "{MANUAL}: kubectl ir switchover, Completed, answer"
    ));

    // `scheduled`: switches over at its time, not before.
    wait_completed(&node, &recoveries, SCHEDULED).await;
    let timings = recoveries
        .get(SCHEDULED)
        .await
        .unwrap()
        .status
        .unwrap()
        .timings;
    let started = timings.switchover_started_at.expect("switchoverStartedAt");
    assert!(
        started >= switchover_at,
        "switched over at {started}, before its time {switchover_at} (synced at {:?})",
        timings.synced_at
    );
    let scheduled_ip = service_ip(&node, &client, SCHEDULED).await;
    let rows = wait_for(
        &node,
        "an answer from scheduled",
        Duration::from_secs(60),
        async || query_count(&scheduled_ip).await,
    )
    .await;
    assert_eq!(rows, SAMPLE_ROWS.to_string());
    phases.done(&format!("{SCHEDULED}: switched over at {switchover_at}"));

    // kubectl ir export: pg_dump in the serving Pod, streamed through the API server (exec),
    // restores with pg_restore into a fresh cluster.
    let dump = node.dir().join("accounts.dump");
    let dump_path = dump.to_str().expect("a UTF-8 path");
    kubectl_ir(
        &node,
        &[
            "export", NAME, "-n", NS, "--table", "accounts", "-o", dump_path,
        ],
    );
    let fresh_root = ir_e2e::shared_tempdir();
    let mut fresh = PgCluster::init(fresh_root.path());
    fresh.start(&[]);
    let restore = std::process::Command::new(bindir().join("pg_restore"))
        .args(["--no-owner", "--dbname", &fresh.conninfo()])
        .arg(&dump)
        .output()
        .expect("run pg_restore");
    assert!(
        restore.status.success(),
        "pg_restore: {}",
        String::from_utf8_lossy(&restore.stderr)
    );
    assert_eq!(
        fresh.psql("SELECT count(*) FROM accounts"),
        SAMPLE_ROWS.to_string()
    );
    assert!(
        fresh.try_psql("SELECT 1 FROM after_switchover").is_err(),
        "--table exports that table only"
    );
    fresh.stop();
    phases.done("kubectl ir export and pg_restore");

    // `restarted`: the leading operator's Pod (of the chart's two replicas) is deleted with
    // grace period 0 while the recovery syncs; the other replica takes the Lease over and
    // brings the recovery to Completed.
    apply_recovery(&node, &client, RESTARTED, "Automatic", &backup_id).await;
    let seen = wait_phase_from(&node, &recoveries, RESTARTED, Phase::Syncing).await;
    let leases: Api<Lease> = Api::namespaced(client.clone(), SYSTEM);
    let holder = async || -> Option<String> {
        leases
            .get_opt(OPERATOR_LEASE)
            .await
            .ok()??
            .spec?
            .holder_identity
            .filter(|h| !h.is_empty())
    };
    let leader = wait_for(
        &node,
        "an operator leading",
        Duration::from_secs(60),
        holder,
    )
    .await;
    system_pods
        .delete(&leader, &DeleteParams::default().grace_period(0))
        .await
        .expect("delete the leading operator's Pod");
    phases.done(&format!(
        "{RESTARTED}: leading operator Pod {leader} deleted (grace 0) in phase {seen:?}"
    ));
    let successor = wait_for(
        &node,
        "another operator leading",
        Duration::from_secs(90),
        async || holder().await.filter(|h| *h != leader),
    )
    .await;
    phases.done(&format!("{successor} leads"));
    wait_completed(&node, &recoveries, RESTARTED).await;
    let restarted_ip = service_ip(&node, &client, RESTARTED).await;
    let rows = wait_for(
        &node,
        "an answer from restarted",
        Duration::from_secs(60),
        async || query_count(&restarted_ip).await,
    )
    .await;
    assert_eq!(rows, SAMPLE_ROWS.to_string());
    phases.done(&format!("{RESTARTED}: Completed, answer"));

    agent_pod_deleted_while_publishing(&node, &client, &backup_id, &mut phases).await;
    node_rebooted_while_waiting_for_switchover(&node, &client, &backup_id, &mut phases).await;
    drop(node);
    phases.done("node down");
}

/// `agentless`: the agent's Pod is deleted while the recovery publishes. Its FUSE session ends
/// with it; the DaemonSet's new Pod mounts the same IRCache again (a new `mountedAt`), the
/// operator replaces the published Pod on the new session, and the recovery goes on to
/// Completed with the backup's data.
async fn agent_pod_deleted_while_publishing(
    node: &RealNode,
    client: &Client,
    backup_id: &str,
    phases: &mut Phases,
) {
    let recoveries: Api<InstantRecovery> = Api::namespaced(client.clone(), NS);
    let system_pods: Api<Pod> = Api::namespaced(client.clone(), SYSTEM);
    let agents = ListParams::default().labels("app.kubernetes.io/component=agent");
    apply_recovery(node, client, AGENTLESS, "Automatic", backup_id).await;
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let phase = recoveries
            .get_opt(AGENTLESS)
            .await
            .expect("read the recovery")
            .and_then(|ir| ir.status)
            .map(|s| s.phase)
            .unwrap_or_default();
        match phase {
            Phase::Publishing => break,
            p if p > Phase::Publishing => {
                panic!("{AGENTLESS} passed Publishing unseen: {p:?}")
            }
            _ => {}
        }
        assert!(
            Instant::now() < deadline,
            "{AGENTLESS} not Publishing\n{}",
            diagnostics(node)
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let old = system_pods.list(&agents).await.expect("list agents").items;
    assert_eq!(old.len(), 1, "one agent Pod");
    let old_name = old[0].metadata.name.clone().expect("a name");
    let deleted_at = jiff::Timestamp::now();
    system_pods
        .delete(&old_name, &DeleteParams::default())
        .await
        .expect("delete the agent's Pod");
    phases.done(&format!("{AGENTLESS}: agent Pod deleted while Publishing"));
    // The new agent's mount session: the RecoveryMount's `mountedAt` moves past the deletion
    // (read before Completed, which removes the RecoveryMount).
    let mounts: Api<RecoveryMount> = Api::namespaced(client.clone(), NS);
    wait_for(
        node,
        "agentless mounted again by the new agent",
        Duration::from_secs(120),
        async || {
            let mounted_at = mounts.get_opt(AGENTLESS).await.ok()??.status?.mounted_at?;
            (mounted_at > deleted_at).then_some(())
        },
    )
    .await;
    wait_completed(node, &recoveries, AGENTLESS).await;
    let ip = service_ip(node, client, AGENTLESS).await;
    let rows = wait_for(
        node,
        "an answer from agentless",
        Duration::from_secs(60),
        async || query_count(&ip).await,
    )
    .await;
    assert_eq!(rows, SAMPLE_ROWS.to_string());
    phases.done(&format!("{AGENTLESS}: new agent, Completed, answer"));
}

/// `rebooted`: a Manual recovery waiting for its approval, with a row committed on the
/// published instance; the node reboots (every process and mount of it dies, the kubelet and
/// containerd start again). The agent comes back and mounts the IRCache again, the operator
/// (its Pod restarted too) brings the published instance back, the committed row is there,
/// and after `kubectl ir switchover` the target has it too.
async fn node_rebooted_while_waiting_for_switchover(
    node: &RealNode,
    client: &Client,
    backup_id: &str,
    phases: &mut Phases,
) {
    let recoveries: Api<InstantRecovery> = Api::namespaced(client.clone(), NS);
    apply_recovery(node, client, REBOOTED, "Manual", backup_id).await;
    wait_phase(node, &recoveries, REBOOTED, Phase::ReadyForSwitchover).await;
    let ip = service_ip(node, client, REBOOTED).await;
    query_one(&ip, "CREATE TABLE before_reboot AS SELECT 42 AS answer").await;
    phases.done(&format!("{REBOOTED}: ReadyForSwitchover, row committed"));
    node.reboot();
    phases.done("node rebooted");
    // The kubelet started the same Pods again: their containers were killed with the node.
    let agents = ListParams::default().labels("app.kubernetes.io/component=agent");
    let system_pods: Api<Pod> = Api::namespaced(client.clone(), SYSTEM);
    wait_for(
        node,
        "the agent's container restarted after the reboot",
        Duration::from_secs(120),
        async || {
            let pods = system_pods.list(&agents).await.ok()?.items;
            let restarts = pods
                .first()?
                .status
                .as_ref()?
                .container_statuses
                .as_ref()?
                .first()?
                .restart_count;
            (restarts >= 1 && pods.first().is_some_and(pod_ready)).then_some(())
        },
    )
    .await;
    let answer = wait_for(
        node,
        "the committed row after the reboot",
        Duration::from_secs(180),
        async || query_value(&ip, "SELECT answer FROM before_reboot").await,
    )
    .await;
    assert_eq!(answer, "42");
    phases.done(&format!("{REBOOTED}: published again, row there"));
    wait_phase(node, &recoveries, REBOOTED, Phase::ReadyForSwitchover).await;
    kubectl_ir(node, &["switchover", REBOOTED, "-n", NS]);
    wait_completed(node, &recoveries, REBOOTED).await;
    let answer = wait_for(
        node,
        "the committed row on the target",
        Duration::from_secs(60),
        async || {
            let sql = "SELECT answer FROM before_reboot WHERE NOT pg_is_in_recovery()";
            query_value(&ip, sql).await
        },
    )
    .await;
    assert_eq!(answer, "42");
    phases.done(&format!(
        "{REBOOTED}: kubectl ir switchover, Completed, row there"
    ));
}

/// `kubectl ir ARGS` as the admin; panics with its stderr and the diagnostics if it fails.
fn kubectl_ir(node: &RealNode, args: &[&str]) {
    let out = std::process::Command::new(workspace_binary("kubectl-ir"))
        .env("KUBECONFIG", node.kubeconfig())
        .args(args)
        .output()
        .expect("run kubectl-ir");
    assert!(
        out.status.success(),
        "kubectl ir {}: {}\n{}",
        args.join(" "),
        String::from_utf8_lossy(&out.stderr),
        diagnostics(node)
    );
}

/// Waits until NAME is in `phase`; panics if it fails.
async fn wait_phase(node: &RealNode, recoveries: &Api<InstantRecovery>, name: &str, phase: Phase) {
    wait_phase_where(node, recoveries, name, &format!("{phase:?}"), |p| {
        p == phase
    })
    .await;
}

/// Waits until NAME is in `phase` or a later one of the flow, and returns it; panics if it
/// fails.
async fn wait_phase_from(
    node: &RealNode,
    recoveries: &Api<InstantRecovery>,
    name: &str,
    phase: Phase,
) -> Phase {
    let what = format!("{phase:?} or later");
    wait_phase_where(node, recoveries, name, &what, |p| p >= phase).await
}

/// Waits until NAME's phase satisfies `wanted` (`what` names it), and returns it; panics if
/// it fails.
async fn wait_phase_where(
    node: &RealNode,
    recoveries: &Api<InstantRecovery>,
    name: &str,
    what: &str,
    wanted: impl Fn(Phase) -> bool,
) -> Phase {
    wait_for(
        node,
        &format!("{name} {what}"),
        Duration::from_secs(240),
        async || {
            let ir = recoveries.get_opt(name).await.ok().flatten()?;
            match ir.status?.phase {
                Phase::Failed => panic!("{name} failed:\n{}", diagnostics(node)),
                p if wanted(p) => Some(p),
                _ => None,
            }
        },
    )
    .await
}

/// A hostPath PersistentVolume of class `manual` bound ahead to NAME's target PVC, owned by
/// PostgreSQL's uid (999, as in the postgres image), and the InstantRecovery NAME.
async fn apply_recovery(node: &RealNode, client: &Client, name: &str, mode: &str, backup_id: &str) {
    let storage = node.dir().join("storage").join(name);
    std::fs::create_dir_all(&storage).expect("create the volume's directory");
    std::os::unix::fs::chown(&storage, Some(999), Some(999)).expect("chown the volume");
    std::fs::set_permissions(&storage, std::fs::Permissions::from_mode(0o700))
        .expect("chmod the volume");
    apply(
        client,
        &format!(
            "apiVersion: v1\nkind: PersistentVolume\nmetadata:\n  name: {name}-target\nspec:\n  \
             storageClassName: manual\n  capacity: {{storage: 1Gi}}\n  \
             accessModes: [ReadWriteOnce]\n  \
             claimRef: {{namespace: {NS}, name: {name}-target}}\n  \
             hostPath: {{path: {}, type: Directory}}\n---\n\
             apiVersion: instantrecovery.dev/v1alpha1\nkind: InstantRecovery\n\
             metadata:\n  name: {name}\n  namespace: {NS}\nspec:\n  backup:\n    \
             repositoryRef:\n      name: backups\n    id: {backup_id}\n  postgres:\n    \
             credentialsSecret:\n      name: db-superuser\n  target:\n    size: 1Gi\n    \
             storageClassName: manual\n  switchover:\n    mode: {mode}\n",
            storage.display()
        ),
    )
    .await;
}

/// The ClusterIP of NAME's Service.
async fn service_ip(node: &RealNode, client: &Client, name: &str) -> String {
    wait_for(
        node,
        &format!("{name}'s Service"),
        Duration::from_secs(60),
        async || {
            let svc = Api::<Service>::namespaced(client.clone(), NS)
                .get_opt(name)
                .await
                .ok()??;
            svc.spec?
                .cluster_ip
                .filter(|ip| !ip.is_empty() && ip != "None")
        },
    )
    .await
}

/// Waits for NAME's phase Completed; panics if it fails.
async fn wait_completed(node: &RealNode, recoveries: &Api<InstantRecovery>, name: &str) {
    wait_phase(node, recoveries, name, Phase::Completed).await;
}

/// `kind/name` of each object `selector` lists, or None when the list fails.
async fn names_of<K>(api: &Api<K>, selector: &ListParams) -> Option<Vec<String>>
where
    K: kube::Resource<DynamicType = ()> + Clone + serde::de::DeserializeOwned + std::fmt::Debug,
{
    let list = api.list_metadata(selector).await.ok()?;
    Some(
        list.items
            .into_iter()
            .map(|o| format!("{}/{}", K::kind(&()), o.metadata.name.unwrap_or_default()))
            .collect(),
    )
}

/// `SELECT count(*) FROM accounts` through `ip`, or None while it does not answer.
async fn query_count(ip: &str) -> Option<String> {
    query_value(ip, "SELECT count(*) FROM accounts").await
}

/// The first value `sql` returns through `ip`, or None while it does not answer.
async fn query_value(ip: &str, sql: &str) -> Option<String> {
    let client = ir_e2e::installation::connect(ip).await.ok()?;
    let rows = client.simple_query(sql).await.ok()?;
    rows.iter().find_map(|m| match m {
        tokio_postgres::SimpleQueryMessage::Row(r) => r.get(0).map(str::to_owned),
        _ => None,
    })
}

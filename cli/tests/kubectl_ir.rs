//! `kubectl-ir` against a real kube-apiserver with the CRDs installed: statuses written through
//! the status subresource (the Argo CD health samples, one per phase) as `kubectl ir status`
//! shows them, the kubeconfig, context and namespace it picks, the changes `switchover` and
//! `retry` make to the stored object, `backups`, and errors that name the object.

use std::path::{Path, PathBuf};
use std::process::Output;

use ir_api::crd::{ABORT_ANNOTATION, RETRY_ANNOTATION};
use ir_api::crd::{BackupRepository, InstantRecovery};
use ir_api::recovery::RecoveryMode;
use ir_e2e::cluster::ControlPlane;
use jiff::Timestamp;
use kube::ResourceExt;
use kube::api::{Api, Patch, PatchParams, PostParams};
use serde_json::{Value, json};

const NS: &str = "demo";

fn samples_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../gitops/argocd/instantrecovery.dev/InstantRecovery/testdata")
}

/// The sample `testdata/<file>.yaml` of the Argo CD health check.
fn sample(file: &str) -> Value {
    let path = samples_dir().join(format!("{file}.yaml"));
    let text =
        std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("read {}: {e}", path.display()));
    serde_norway::from_str(&text).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// The control plane with the CRDs, namespace `demo`, and a kubeconfig for the plugin.
struct Fixture {
    plane: ControlPlane,
    dir: tempfile::TempDir,
    /// Current context `ir-test` (no namespace), and `in-demo` (namespace `demo`).
    kubeconfig: PathBuf,
}

impl Fixture {
    async fn start() -> Fixture {
        let plane = ControlPlane::start().await;
        plane.install_crds().await;
        plane.create_namespace(NS).await;
        let dir = tempfile::tempdir().expect("temp dir");
        let admin = std::fs::read_to_string(plane.admin_kubeconfig()).expect("admin kubeconfig");
        let mut config: Value = serde_norway::from_str(&admin).expect("kubeconfig YAML");
        let mut in_demo = config["contexts"][0].clone();
        in_demo["name"] = "in-demo".into();
        in_demo["context"]["namespace"] = NS.into();
        config["contexts"]
            .as_array_mut()
            .expect("contexts")
            .push(in_demo);
        let kubeconfig = dir.path().join("kubeconfig");
        std::fs::write(&kubeconfig, serde_norway::to_string(&config).unwrap()).unwrap();
        Fixture {
            plane,
            dir,
            kubeconfig,
        }
    }

    fn recoveries(&self) -> Api<InstantRecovery> {
        Api::namespaced(self.plane.admin(), NS)
    }

    /// Creates the recovery `name` from `object`, then writes its status through the status
    /// subresource, as the operator does.
    async fn create(&self, name: &str, mut object: Value) -> InstantRecovery {
        let status = object.as_object_mut().expect("an object").remove("status");
        object["metadata"] = json!({"name": name, "namespace": NS});
        let ir: InstantRecovery = serde_json::from_value(object).expect("an InstantRecovery");
        let api = self.recoveries();
        api.create(&PostParams::default(), &ir)
            .await
            .unwrap_or_else(|e| panic!("create {name}: {e}"));
        if let Some(status) = status {
            api.patch_status(
                name,
                &PatchParams::default(),
                &Patch::Merge(json!({"status": status})),
            )
            .await
            .unwrap_or_else(|e| panic!("write the status of {name}: {e}"));
        }
        api.get(name).await.unwrap()
    }

    /// Runs the plugin with `KUBECONFIG` set to the fixture's, and nothing in `HOME`.
    async fn run(&self, args: &[&str]) -> Output {
        self.run_with(args, Some(&self.kubeconfig)).await
    }

    async fn run_with(&self, args: &[&str], kubeconfig_env: Option<&Path>) -> Output {
        let mut cmd = tokio::process::Command::new(env!("CARGO_BIN_EXE_kubectl-ir"));
        cmd.args(args)
            .env("HOME", self.dir.path())
            .env_remove("KUBECONFIG");
        if let Some(path) = kubeconfig_env {
            cmd.env("KUBECONFIG", path);
        }
        cmd.output().await.expect("run kubectl-ir")
    }

    /// stdout of a run that must succeed.
    async fn ok(&self, args: &[&str]) -> String {
        let out = self.run(args).await;
        assert!(
            out.status.success(),
            "kubectl-ir {args:?} failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).expect("utf-8")
    }

    /// stderr of a run that must fail.
    async fn fails(&self, args: &[&str]) -> String {
        let out = self.run(args).await;
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert!(
            !out.status.success(),
            "kubectl-ir {args:?} succeeded: {stdout}"
        );
        String::from_utf8(out.stderr).expect("utf-8")
    }
}

/// Every condition shows with its status, reason and message.
fn assert_conditions(text: &str, status: &Value) {
    for c in status["conditions"].as_array().expect("conditions") {
        let mark = if c["status"] == "True" {
            "True "
        } else {
            "False"
        };
        let line = format!(
            "  {:<13} {mark} {:<22} {}",
            c["type"].as_str().unwrap(),
            c["reason"].as_str().unwrap(),
            c["message"].as_str().unwrap()
        );
        assert!(text.contains(&line), "missing {line:?} in\n{text}");
    }
}

#[tokio::test]
async fn status_shows_every_phase_from_the_usual_kubeconfig() {
    let fx = Fixture::start().await;
    for entry in std::fs::read_dir(samples_dir()).unwrap() {
        let path = entry.unwrap().path();
        let file = path.file_stem().unwrap().to_str().unwrap().to_owned();
        let object = sample(&file);
        let name = file.replace('_', "-");
        fx.create(&name, object.clone()).await;
        let text = fx.ok(&["status", &name, "-n", NS]).await;
        assert!(
            text.starts_with(&format!("recovery:    demo/{name}")),
            "{text}"
        );
        let Some(status) = object.get("status") else {
            assert!(text.contains("no status yet"), "{text}");
            assert!(text.contains("phase:       Pending\n"), "{text}");
            continue;
        };
        let mut phase = format!("phase:       {}", status["phase"].as_str().unwrap());
        if let Some(resume) = status["resumePhase"].as_str() {
            phase.push_str(&format!(" (resumes in {resume})"));
        }
        assert!(text.contains(&format!("{phase}\n")), "{text}");
        if let Some(message) = status["message"].as_str() {
            let reason = status["reason"].as_str().unwrap();
            assert!(
                text.contains(&format!("reason:      {reason}: {message}\n")),
                "{text}"
            );
        }
        assert_conditions(&text, status);
    }

    let syncing = fx.ok(&["status", "syncing", "-n", NS]).await;
    assert!(
        syncing.contains("\nprogress:    [########............] sync 42.0% ("),
        "{syncing}"
    );
    assert!(
        syncing.contains("backup:      20261125T101500Z-3f2a (PostgreSQL 17, "),
        "{syncing}"
    );
    assert!(
        syncing.contains("timings:     started 2026-11-25T11:00:00Z, first query after 9120 ms"),
        "{syncing}"
    );
    let approval = fx.ok(&["status", "awaiting-approval", "-n", NS]).await;
    assert!(
        approval.contains("switchover:  Manual, not approved yet\n"),
        "{approval}"
    );
    assert!(
        approval.contains(
            "next:        approve the switchover with `kubectl ir switchover awaiting-approval -n demo`"
        ),
        "{approval}"
    );
    assert!(approval.contains(", lag 0 B"), "{approval}");
    let waiting = fx.ok(&["status", "waiting", "-n", NS]).await;
    assert!(
        waiting.contains("retries:     2 of 10, next at 2026-11-25T11:10:00Z\n"),
        "{waiting}"
    );
    assert!(
        waiting.contains("`kubectl ir retry waiting -n demo`"),
        "{waiting}"
    );
    let completed = fx.ok(&["status", "completed", "-n", NS]).await;
    assert!(
        completed.contains("switchover downtime 840 ms"),
        "{completed}"
    );
    assert!(
        completed.contains("completed 2026-11-25T12:00:05Z"),
        "{completed}"
    );

    // For programs: the status with what the spec says about switchover and retries.
    let json: Value = serde_json::from_str(
        &fx.ok(&["status", "syncing", "-n", NS, "--output", "json"])
            .await,
    )
    .expect("JSON");
    assert_eq!(json["namespace"], NS);
    assert_eq!(json["name"], "syncing");
    assert_eq!(json["generation"], 1);
    assert_eq!(json["phase"], "Syncing");
    assert_eq!(json["progress"]["percentCopied"], 42);
    assert_eq!(json["switchover"]["mode"], "Automatic");
    assert_eq!(json["retryLimit"], 10);
    assert_eq!(json["conditions"][3]["type"], "Ready");

    // A spec change the operator has not seen yet.
    fx.recoveries()
        .patch(
            "syncing",
            &PatchParams::default(),
            &Patch::Merge(json!({"spec": {"retry": {"limit": 3}}})),
        )
        .await
        .unwrap();
    let stale = fx.ok(&["status", "syncing", "-n", NS]).await;
    assert!(
        stale.contains("(generation 2; the status is still about generation 1)"),
        "{stale}"
    );

    // The namespace: the context's (none: `default`), `--context`'s, or `-n`.
    let stderr = fx.fails(&["status", "syncing"]).await;
    assert!(
        stderr.contains("error: instantrecovery default/syncing not found"),
        "{stderr}"
    );
    // Flags before the command, as `kubectl ir -n demo status syncing` passes them.
    let text = fx.ok(&["-n", NS, "status", "syncing"]).await;
    assert!(text.starts_with("recovery:    demo/syncing"), "{text}");
    let text = fx.ok(&["status", "syncing", "--context", "in-demo"]).await;
    assert!(text.starts_with("recovery:    demo/syncing"), "{text}");
    let text = fx
        .ok(&["status", "awaiting-approval", "--context", "in-demo"])
        .await;
    assert!(
        text.contains("with `kubectl ir switchover awaiting-approval`\n"),
        "hints repeat -n only when it was given: {text}"
    );
    // `--kubeconfig` without KUBECONFIG; then neither: ~/.kube/config, here missing.
    let kubeconfig = fx.kubeconfig.to_str().unwrap();
    let out = fx
        .run_with(
            &["status", "syncing", "-n", NS, "--kubeconfig", kubeconfig],
            None,
        )
        .await;
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let out = fx.run_with(&["status", "syncing", "-n", NS], None).await;
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("error: loading the kubeconfig"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let stderr = fx
        .fails(&["status", "syncing", "--context", "elsewhere"])
        .await;
    assert!(stderr.contains("elsewhere"), "{stderr}");

    let stderr = fx.fails(&["status", "pg1", "-n", NS]).await;
    assert_eq!(stderr, "error: instantrecovery demo/pg1 not found\n");
}

#[tokio::test]
async fn switchover_retry_and_backups_act_on_the_stored_objects() {
    let fx = Fixture::start().await;
    let api = fx.recoveries();

    // switchover: approves a Manual one once, by a patch the API server records.
    let before = fx.create("manual", sample("awaiting_approval")).await;
    let text = fx.ok(&["switchover", "manual", "-n", NS]).await;
    assert!(
        text.contains("switchover of instantrecovery demo/manual approved"),
        "{text}"
    );
    let after = api.get("manual").await.unwrap();
    assert!(after.spec.switchover.approved);
    assert_eq!(
        after.metadata.generation,
        before.metadata.generation.map(|g| g + 1)
    );
    assert!(
        after
            .managed_fields()
            .iter()
            .any(|m| m.manager.as_deref() == Some("kubectl-ir")),
        "the change is the plugin's: {:?}",
        after.managed_fields()
    );
    let text = fx.ok(&["switchover", "manual", "-n", NS]).await;
    assert!(text.contains("already approved"), "{text}");

    // ... and refuses the others, changing nothing.
    let automatic = fx.create("automatic", sample("catching_up")).await;
    let stderr = fx.fails(&["switchover", "automatic", "-n", NS]).await;
    assert_eq!(
        stderr,
        "error: instantrecovery demo/automatic switches over Automatic (spec.switchover.mode), not Manual: there is nothing to approve\n"
    );
    let mut done = sample("completed");
    done["spec"]["switchover"] = json!({"mode": "Manual"});
    fx.create("done", done).await;
    let stderr = fx.fails(&["switchover", "done", "-n", NS]).await;
    assert_eq!(
        stderr,
        "error: instantrecovery demo/done has already switched over\n"
    );
    assert!(!api.get("done").await.unwrap().spec.switchover.approved);
    assert_eq!(
        api.get("automatic").await.unwrap().resource_version(),
        automatic.resource_version()
    );
    let stderr = fx.fails(&["switchover", "absent", "-n", NS]).await;
    assert_eq!(stderr, "error: instantrecovery demo/absent not found\n");

    // retry: a new value of the annotation the operator reads, each time.
    fx.create("waiting", sample("waiting")).await;
    let text = fx.ok(&["retry", "waiting", "-n", NS]).await;
    assert!(
        text.contains("retry of instantrecovery demo/waiting requested; the operator resumes it in phase Mounting"),
        "{text}"
    );
    let first = api.get("waiting").await.unwrap().annotations()[RETRY_ANNOTATION].clone();
    first.parse::<Timestamp>().expect("the request is a time");
    fx.ok(&["retry", "waiting", "-n", NS]).await;
    let second = api.get("waiting").await.unwrap().annotations()[RETRY_ANNOTATION].clone();
    assert_ne!(first, second, "a second retry is a new request");
    fx.create("failed", sample("failed")).await;
    fx.ok(&["retry", "failed", "--context", "in-demo"]).await;
    assert!(
        api.get("failed")
            .await
            .unwrap()
            .annotations()
            .contains_key(RETRY_ANNOTATION)
    );
    fx.create("syncing", sample("syncing")).await;
    let stderr = fx.fails(&["retry", "syncing", "-n", NS]).await;
    assert_eq!(
        stderr,
        "error: instantrecovery demo/syncing is Syncing: only a Waiting or Failed recovery can be retried\n"
    );
    assert!(
        !api.get("syncing")
            .await
            .unwrap()
            .annotations()
            .contains_key(RETRY_ANNOTATION)
    );
    let stderr = fx.fails(&["retry", "absent", "-n", NS]).await;
    assert_eq!(stderr, "error: instantrecovery demo/absent not found\n");

    // abort: the annotation the operator tears down by, refused once the switchover began.
    let text = fx.ok(&["abort", "syncing", "-n", NS]).await;
    assert!(
        text.contains("abort of instantrecovery demo/syncing requested"),
        "{text}"
    );
    assert!(
        api.get("syncing")
            .await
            .unwrap()
            .annotations()
            .contains_key(ABORT_ANNOTATION)
    );
    let stderr = fx.fails(&["abort", "done", "-n", NS]).await;
    assert!(stderr.contains("the switchover began"), "{stderr}");
    assert!(
        !api.get("done")
            .await
            .unwrap()
            .annotations()
            .contains_key(ABORT_ANNOTATION)
    );

    // recover: a Publish goes on to a recovery, once.
    fx.create("look", sample("published")).await;
    let text = fx.ok(&["recover", "look", "-n", NS]).await;
    assert!(text.contains("goes on from the published backup"), "{text}");
    assert_eq!(
        api.get("look").await.unwrap().spec.mode,
        RecoveryMode::Recover
    );
    let text = fx.ok(&["recover", "look", "-n", NS]).await;
    assert!(text.contains("is a recovery already"), "{text}");

    // export: only of a serving recovery, and only from a running Pod that serves it.
    let stderr = fx.fails(&["export", "waiting", "-n", NS, "-o", "-"]).await;
    assert_eq!(
        stderr,
        "error: instantrecovery demo/waiting has no instance serving (phase Waiting)\n"
    );
    let stderr = fx.fails(&["export", "done", "-n", NS, "-o", "-"]).await;
    assert_eq!(
        stderr,
        "error: no running Pod serves done (instantrecovery.dev/recovery=done,instantrecovery.dev/primary=true)\n"
    );
    let stderr = fx.fails(&["export", "absent", "-n", NS, "-o", "-"]).await;
    assert_eq!(stderr, "error: instantrecovery demo/absent not found\n");

    // backups: the repository's status, as the operator writes it.
    let repos: Api<BackupRepository> = Api::namespaced(fx.plane.admin(), NS);
    let repo: BackupRepository = serde_json::from_value(json!({
        "apiVersion": "instantrecovery.dev/v1alpha1",
        "kind": "BackupRepository",
        "metadata": {"name": "prod", "namespace": NS},
        "spec": {"url": "s3://backups/prod", "credentialsSecret": {"name": "backup-reader"}},
    }))
    .unwrap();
    repos.create(&PostParams::default(), &repo).await.unwrap();
    let stderr = fx.fails(&["backups", "prod", "-n", NS]).await;
    assert_eq!(
        stderr,
        "error: backuprepository demo/prod has no status yet: the operator has not checked it\n"
    );
    let reachable = |status: &str, reason: &str, message: &str| {
        json!({"status": {
            "observedGeneration": 1,
            "conditions": [{"type": "Reachable", "status": status, "reason": reason,
                            "message": message, "lastTransitionTime": "2026-11-25T12:00:00Z"}],
            "backupCount": 12,
            "backups": [
                {"id": "20261125T101500Z-3f2a", "pgMajor": 17, "sizeBytes": 53687091200u64,
                 "createdAt": "2026-11-25T10:15:00.250Z"},
                {"id": "20261124T101500Z-0b1c", "pgMajor": 17, "sizeBytes": 52613349376u64,
                 "createdAt": "2026-11-24T10:15:00Z"},
                // Listed by an operator that did not record the time yet.
                {"id": "20261001T000000Z-ffff", "pgMajor": 16, "sizeBytes": 1048576},
            ],
        }})
    };
    let write = |status: Value| {
        let repos = repos.clone();
        async move {
            repos
                .patch_status("prod", &PatchParams::default(), &Patch::Merge(status))
                .await
                .unwrap()
        }
    };
    write(reachable("True", "Listed", "12 backups")).await;
    let out = fx.run(&["backups", "prod", "-n", NS]).await;
    assert!(out.status.success());
    assert!(
        out.stderr.is_empty(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let lines: Vec<String> = String::from_utf8(out.stdout)
        .unwrap()
        .lines()
        .map(|l| l.split_whitespace().collect::<Vec<_>>().join(" "))
        .collect();
    assert_eq!(lines[0], "ID CREATED PG SIZE");
    assert!(
        lines[1].starts_with("20261125T101500Z-3f2a 2026-11-25 10:15:00 17 "),
        "{lines:?}"
    );
    assert!(
        lines[2].starts_with("20261124T101500Z-0b1c 2026-11-24 10:15:00 17 "),
        "{lines:?}"
    );
    assert!(
        lines[3].starts_with("20261001T000000Z-ffff - 16 1"),
        "{lines:?}"
    );
    assert_eq!(lines[4], "(the 3 most recent of 12 backups)");
    let json: Value =
        serde_json::from_str(&fx.ok(&["backups", "prod", "-n", NS, "-o", "json"]).await).unwrap();
    assert_eq!(json["repository"], "prod");
    assert_eq!(json["backupCount"], 12);
    assert_eq!(
        json["backups"][0],
        json!({"id": "20261125T101500Z-3f2a", "created": "2026-11-25T10:15:00.25Z",
               "pgMajor": 17, "sizeBytes": 53687091200u64})
    );
    assert_eq!(json["backups"][2].get("created"), None);
    write(reachable("False", "Unreachable", "connection refused")).await;
    let out = fx.run(&["backups", "prod", "-n", NS]).await;
    assert!(out.status.success());
    assert_eq!(
        String::from_utf8_lossy(&out.stderr),
        "warning: backuprepository demo/prod was not reachable at the last check (Unreachable: connection refused); the list is from an earlier one\n"
    );
    let stderr = fx.fails(&["backups", "staging", "-n", NS]).await;
    assert_eq!(stderr, "error: backuprepository demo/staging not found\n");

    // window: what each listed backup can be recovered to.
    write(json!({"status": {
        "conditions": [{"type": "Reachable", "status": "True", "reason": "Listed",
                        "message": "3 backups", "lastTransitionTime": "2026-11-25T12:00:00Z"}],
        "backupCount": 3,
        "backups": [
            {"id": "20261125T101500Z-3f2a", "pgMajor": 17, "sizeBytes": 1,
             "recoverableWindow": {"earliest": "2026-11-25T10:15:02Z", "earliestLsn": "0/3000100",
                                   "latest": "2026-11-25T12:00:00Z", "latestLsn": "0/7000000"}},
            {"id": "20261124T101500Z-0b1c", "pgMajor": 17, "sizeBytes": 1,
             "recoverableWindow": {"earliest": "2026-11-24T10:15:01Z", "earliestLsn": "0/2000100",
                                   "latest": "2026-11-24T11:00:00Z", "latestLsn": "0/2800000",
                                   "firstMissingSegment": "000000010000000000000002"}},
            {"id": "20261001T000000Z-ffff", "pgMajor": 16, "sizeBytes": 1},
        ],
    }}))
    .await;
    let lines: Vec<String> = fx
        .ok(&["window", "prod", "-n", NS])
        .await
        .lines()
        .map(|l| l.split_whitespace().collect::<Vec<_>>().join(" "))
        .collect();
    assert_eq!(
        lines,
        [
            "BACKUP FROM TO NOTE",
            "20261125T101500Z-3f2a 2026-11-25 10:15:02 (0/3000100) 2026-11-25 12:00:00 (0/7000000)",
            "20261124T101500Z-0b1c 2026-11-24 10:15:01 (0/2000100) 2026-11-24 11:00:00 (0/2800000) \
             WAL segment 000000010000000000000002 missing",
            "20261001T000000Z-ffff - - WAL not listed",
        ]
    );
    let json: Value =
        serde_json::from_str(&fx.ok(&["window", "prod", "-n", NS, "-o", "json"]).await).unwrap();
    assert_eq!(
        json["backups"][0],
        json!({"backup": "20261125T101500Z-3f2a", "recoverableWindow": {
            "earliest": "2026-11-25T10:15:02Z", "earliestLsn": "0/3000100",
            "latest": "2026-11-25T12:00:00Z", "latestLsn": "0/7000000"}})
    );
    assert_eq!(
        json["backups"][2],
        json!({"backup": "20261001T000000Z-ffff"})
    );

    // The manifests docs/gitops.md keeps in Git are accepted as they are.
    fx.plane.create_namespace("db").await;
    for file in ["backuprepository.yaml", "instantrecovery.yaml"] {
        let path = Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../docs/gitops/orders")
            .join(file);
        let yaml = std::fs::read_to_string(&path).unwrap();
        fx.plane
            .apply_yaml(&yaml)
            .await
            .unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    }
    let orders: Api<InstantRecovery> = Api::namespaced(fx.plane.admin(), "db");
    assert!(!orders.get("orders").await.unwrap().spec.switchover.approved);
}

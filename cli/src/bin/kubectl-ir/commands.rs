//! The plugin's commands, each on one object of the namespace.

use std::fmt;

use anyhow::{Context, anyhow, bail};
use ir_api::crd::{ABORT_ANNOTATION, RETRY_ANNOTATION};
use ir_api::crd::{BackupRepository, BackupRepositoryStatus, InstantRecovery};
use ir_api::point_in_time::RecoverableWindow;
use ir_api::recovery::{
    ConditionType, Phase, RecoveryMode, RecoveryStatus, SwitchoverMode, SwitchoverPolicy,
};
use ir_cli::output::{Output, print_json};
use ir_cli::status_view::StatusView;
use ir_repository::size::format_size;
use jiff::Timestamp;
use kube::api::{Patch, PatchParams};
use kube::{Api, Resource, ResourceExt};
use serde::Serialize;
use serde_json::json;

/// Field manager of the plugin's changes, as `kubectl get --show-managed-fields` lists them.
const FIELD_MANAGER: &str = "kubectl-ir";
/// Reads and patches of one change before giving up on an object that keeps changing.
const CONFLICT_ATTEMPTS: usize = 5;

/// Where the commands work: the client and the namespace.
pub struct Namespace {
    pub client: kube::Client,
    pub namespace: String,
    /// Whether `-n` was given: hints then repeat it.
    pub explicit: bool,
}

/// An object as errors name it: `instantrecovery demo/pg1`.
struct Named<'a> {
    kind: &'static str,
    namespace: &'a str,
    name: &'a str,
}

impl fmt::Display for Named<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} {}/{}", self.kind, self.namespace, self.name)
    }
}

impl Namespace {
    fn named<'a>(&'a self, kind: &'static str, name: &'a str) -> Named<'a> {
        Named {
            kind,
            namespace: &self.namespace,
            name,
        }
    }

    /// The object, or an error that names it.
    async fn get<K>(&self, named: &Named<'_>) -> anyhow::Result<K>
    where
        K: Resource<Scope = kube::core::NamespaceResourceScope>
            + Clone
            + fmt::Debug
            + serde::de::DeserializeOwned,
        K::DynamicType: Default,
    {
        let api: Api<K> = Api::namespaced(self.client.clone(), &self.namespace);
        api.get_opt(named.name)
            .await
            .with_context(|| format!("reading {named}"))?
            .with_context(|| format!("{named} not found"))
    }

    /// Reads the recovery, lets `decide` check it and give the merge patch to make (`None`:
    /// nothing to do), and patches it on the condition that it is still the object `decide`
    /// saw. The operator writes the status often, so a conflict means: read and decide again.
    /// Returns the recovery as `decide` last saw it, and whether it was patched.
    async fn update_recovery(
        &self,
        named: &Named<'_>,
        decide: impl Fn(&InstantRecovery) -> anyhow::Result<Option<serde_json::Value>>,
    ) -> anyhow::Result<(InstantRecovery, bool)> {
        let api: Api<InstantRecovery> = Api::namespaced(self.client.clone(), &self.namespace);
        let params = PatchParams {
            field_manager: Some(FIELD_MANAGER.to_owned()),
            ..Default::default()
        };
        for _ in 0..CONFLICT_ATTEMPTS {
            let ir: InstantRecovery = self.get(named).await?;
            let Some(mut patch) = decide(&ir)? else {
                return Ok((ir, false));
            };
            patch["metadata"]["resourceVersion"] = json!(ir.resource_version());
            match api.patch(named.name, &params, &Patch::Merge(&patch)).await {
                Ok(_) => return Ok((ir, true)),
                Err(kube::Error::Api(status)) if status.code == 409 => continue,
                Err(e) => return Err(e).with_context(|| format!("updating {named}")),
            }
        }
        bail!(
            "{named} kept changing while this command ran ({CONFLICT_ATTEMPTS} attempts); run it again"
        )
    }

    /// `kubectl ir VERB NAME`, with `-n` when it was given.
    fn command(&self, verb: &str, name: &str) -> String {
        match self.explicit {
            true => format!("kubectl ir {verb} {name} -n {}", self.namespace),
            false => format!("kubectl ir {verb} {name}"),
        }
    }
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct StatusOutput<'a> {
    namespace: &'a str,
    name: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    generation: Option<i64>,
    switchover: &'a SwitchoverPolicy,
    retry_limit: u32,
    #[serde(flatten)]
    status: &'a RecoveryStatus,
}

pub async fn status(at: &Namespace, name: &str, output: Output) -> anyhow::Result<()> {
    let named = at.named("instantrecovery", name);
    let ir: InstantRecovery = at.get(&named).await?;
    let status = ir.status.clone().unwrap_or_default();
    let generation = ir.metadata.generation;
    if output == Output::Json {
        return Ok(print_json(&StatusOutput {
            namespace: &at.namespace,
            name,
            generation,
            switchover: &ir.spec.switchover,
            retry_limit: ir.spec.retry.limit,
            status: &status,
        })?);
    }
    let mut recovery = format!("{}/{name}", at.namespace);
    match (ir.status.is_some(), status.observed_generation, generation) {
        (false, _, _) => recovery.push_str(" (no status yet: the operator has not seen it)"),
        (true, Some(observed), Some(generation)) if observed < generation => {
            recovery.push_str(&format!(
                " (generation {generation}; the status is still about generation {observed})"
            ));
        }
        _ => {}
    }
    let source = &ir.spec.backup;
    let view = StatusView {
        about: vec![
            ("recovery", recovery),
            (
                "source",
                format!(
                    "backup {} of BackupRepository {}",
                    source.id, source.repository_ref.name
                ),
            ),
            ("switchover", describe_switchover(&ir.spec.switchover)),
        ],
        status: &status,
        retry_limit: ir.spec.retry.limit,
        switchover_command: at.command("switchover", name),
        retry_command: at.command("retry", name),
    };
    print!("{view}");
    Ok(())
}

fn describe_switchover(policy: &SwitchoverPolicy) -> String {
    match (policy.mode, policy.at) {
        (SwitchoverMode::Automatic, _) => "Automatic, once the standby has caught up".to_owned(),
        (SwitchoverMode::Manual, _) if policy.approved => "Manual, approved".to_owned(),
        (SwitchoverMode::Manual, _) => "Manual, not approved yet".to_owned(),
        (SwitchoverMode::Scheduled, Some(at)) => {
            format!("Scheduled at {at}, once the standby has caught up")
        }
        (SwitchoverMode::Scheduled, None) => "Scheduled, without a time".to_owned(),
    }
}

pub async fn switchover(at: &Namespace, name: &str) -> anyhow::Result<()> {
    let named = at.named("instantrecovery", name);
    let (ir, approved_now) = at
        .update_recovery(&named, |ir| {
            let policy = &ir.spec.switchover;
            if policy.mode != SwitchoverMode::Manual {
                bail!(
                    "{named} switches over {:?} (spec.switchover.mode), not Manual: there is nothing to approve",
                    policy.mode
                );
            }
            let status = ir.status.clone().unwrap_or_default();
            if status.is_true(ConditionType::SwitchedOver) || status.phase == Phase::Completed {
                bail!("{named} has already switched over");
            }
            if status.phase == Phase::SwitchingOver {
                bail!("{named} is switching over already");
            }
            Ok((!policy.approved).then(|| json!({"spec": {"switchover": {"approved": true}}})))
        })
        .await?;
    if approved_now {
        let phase = ir.status.map(|s| s.phase).unwrap_or_default();
        println!(
            "switchover of {named} approved; it starts once the standby has caught up (phase now {phase})"
        );
    } else {
        println!("the switchover of {named} is already approved");
    }
    Ok(())
}

pub async fn retry(at: &Namespace, name: &str) -> anyhow::Result<()> {
    let named = at.named("instantrecovery", name);
    let (ir, _) = at
        .update_recovery(&named, |ir| {
            let phase = ir.status.as_ref().map(|s| s.phase).unwrap_or_default();
            if !matches!(phase, Phase::Waiting | Phase::Failed) {
                bail!("{named} is {phase}: only a Waiting or Failed recovery can be retried");
            }
            // Any new value starts one new round; the operator remembers the last one it
            // acted on.
            let request = Timestamp::now().to_string();
            Ok(Some(
                json!({"metadata": {"annotations": {RETRY_ANNOTATION: request}}}),
            ))
        })
        .await?;
    let resume = ir
        .status
        .and_then(|s| s.resume_phase)
        .unwrap_or(Phase::Validating);
    println!("retry of {named} requested; the operator resumes it in phase {resume}");
    Ok(())
}

pub async fn abort(at: &Namespace, name: &str) -> anyhow::Result<()> {
    let named = at.named("instantrecovery", name);
    let (ir, _) = at
        .update_recovery(&named, |ir| {
            let status = ir.status.clone().unwrap_or_default();
            if status.switchover_began() {
                bail!(
                    "{named} is {}: the switchover began, the target may be the primary",
                    status.phase
                );
            }
            Ok((!ir.annotations().contains_key(ABORT_ANNOTATION))
                .then(|| json!({"metadata": {"annotations": {ABORT_ANNOTATION: "true"}}})))
        })
        .await?;
    let phase = ir.status.map(|s| s.phase).unwrap_or_default();
    println!(
        "abort of {named} requested (phase now {phase}); the operator tears it down and it ends \
         Aborted"
    );
    Ok(())
}

pub async fn recover(at: &Namespace, name: &str) -> anyhow::Result<()> {
    let named = at.named("instantrecovery", name);
    let (_, changed) = at
        .update_recovery(&named, |ir| match ir.spec.mode {
            RecoveryMode::Recover => Ok(None),
            RecoveryMode::Publish => Ok(Some(json!({"spec": {"mode": "Recover"}}))),
        })
        .await?;
    if changed {
        println!("{named} goes on from the published backup to sync and switchover");
    } else {
        println!("{named} is a recovery already");
    }
    Ok(())
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct BackupRow<'a> {
    id: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    created: Option<Timestamp>,
    pg_major: u32,
    size_bytes: u64,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct BackupsOutput<'a> {
    namespace: &'a str,
    repository: &'a str,
    /// Backups in the repository; `backups` lists the most recent ones.
    backup_count: u32,
    backups: Vec<BackupRow<'a>>,
}

/// The status of a BackupRepository the operator has checked.
async fn checked_repository(
    at: &Namespace,
    repository: &str,
) -> anyhow::Result<BackupRepositoryStatus> {
    let named = at.named("backuprepository", repository);
    let repo: BackupRepository = at.get(&named).await?;
    repo.status
        .ok_or_else(|| anyhow!("{named} has no status yet: the operator has not checked it"))
}

/// Says on stderr that the status is older than the last check, which failed.
fn warn_if_unreachable(at: &Namespace, repository: &str, status: &BackupRepositoryStatus) {
    if let Some(c) = status
        .conditions
        .iter()
        .find(|c| c.type_ == "Reachable" && c.status != "True")
    {
        eprintln!(
            "warning: {} was not reachable at the last check ({}: {}); the list is from an earlier one",
            at.named("backuprepository", repository),
            c.reason,
            c.message
        );
    }
}

pub async fn backups(at: &Namespace, repository: &str, output: Output) -> anyhow::Result<()> {
    let status = checked_repository(at, repository).await?;
    let rows: Vec<BackupRow> = status
        .backups
        .iter()
        .map(|b| BackupRow {
            id: &b.info.id,
            created: b.created_at,
            pg_major: b.info.pg_major,
            size_bytes: b.info.size_bytes,
        })
        .collect();
    if output == Output::Json {
        return Ok(print_json(&BackupsOutput {
            namespace: &at.namespace,
            repository,
            backup_count: status.backup_count,
            backups: rows,
        })?);
    }
    warn_if_unreachable(at, repository, &status);
    println!("{:<22} {:<20} {:<4} {:>10}", "ID", "CREATED", "PG", "SIZE");
    for row in &rows {
        let created = row.created.map_or("-".to_owned(), |t| {
            t.strftime("%Y-%m-%d %H:%M:%S").to_string()
        });
        println!(
            "{:<22} {:<20} {:<4} {:>10}",
            row.id,
            created,
            row.pg_major,
            format_size(row.size_bytes)
        );
    }
    if status.backup_count as usize > rows.len() {
        println!(
            "(the {} most recent of {} backups)",
            rows.len(),
            status.backup_count
        );
    }
    Ok(())
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct WindowRow<'a> {
    backup: &'a str,
    /// Absent when the operator could not list the backup's WAL.
    #[serde(skip_serializing_if = "Option::is_none")]
    recoverable_window: Option<&'a RecoverableWindow>,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct WindowOutput<'a> {
    namespace: &'a str,
    repository: &'a str,
    backups: Vec<WindowRow<'a>>,
}

/// A moment of a window for people: `2026-11-25 10:15:02 (0/3000100)`.
fn window_end(at: Option<Timestamp>, lsn: &str) -> String {
    match at {
        Some(t) => format!("{} ({lsn})", t.strftime("%Y-%m-%d %H:%M:%S")),
        None => format!("- ({lsn})"),
    }
}

/// What each listed backup can be recovered to (`spec.pointInTime`), newest first.
pub async fn window(at: &Namespace, repository: &str, output: Output) -> anyhow::Result<()> {
    let status = checked_repository(at, repository).await?;
    let rows: Vec<WindowRow> = status
        .backups
        .iter()
        .map(|b| WindowRow {
            backup: &b.info.id,
            recoverable_window: b.recoverable_window.as_ref(),
        })
        .collect();
    if output == Output::Json {
        return Ok(print_json(&WindowOutput {
            namespace: &at.namespace,
            repository,
            backups: rows,
        })?);
    }
    warn_if_unreachable(at, repository, &status);
    println!("{:<22} {:<34} {:<34} NOTE", "BACKUP", "FROM", "TO");
    for row in &rows {
        let Some(w) = row.recoverable_window else {
            println!("{:<22} {:<34} {:<34} WAL not listed", row.backup, "-", "-");
            continue;
        };
        let note = match (&w.first_missing_segment, w.latest) {
            (Some(segment), _) => format!("WAL segment {segment} missing"),
            (None, None) => "no WAL archived after the backup".to_owned(),
            (None, Some(_)) => String::new(),
        };
        println!(
            "{:<22} {:<34} {:<34} {note}",
            row.backup,
            window_end(Some(w.earliest), &w.earliest_lsn),
            window_end(w.latest, &w.latest_lsn),
        );
    }
    Ok(())
}

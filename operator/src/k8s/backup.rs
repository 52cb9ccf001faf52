//! Backup: runs its Job once and reports the backup it made. The Job is the source of truth
//! for running and failed; the repository, for what was made: the manifest carries the
//! Backup's uid as a label, so a completed Job's backup is found even after an operator
//! restart, and a Job that succeeded without a backup is not taken for one.

use futures::future::BoxFuture;
use std::sync::Arc;
use std::time::{Duration, Instant};

use ir_api::Reason;
use ir_api::backup::{BACKUP_UID_LABEL, Backup, BackupPhase, BackupStatus};
use ir_api::crd::BackupRepository;
use ir_repository::{BackupManifest, Repository};
use jiff::Timestamp;
use k8s_openapi::api::batch::v1::Job;
use k8s_openapi::api::core::v1::Pod;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use kube::api::{ListParams, Patch, PatchParams, PostParams};
use kube::runtime::controller::Action;
use kube::runtime::events::{Event, EventType};
use kube::{Api, Resource, ResourceExt};
use tracing::Instrument;

use super::context::{Context, Error, FIELD_MANAGER, object_key, reconcile_span};
use super::location::repository_location;
use super::resources::backup_job::{backup_job, job_name};
use ir_engine::machine::Failure;

/// How often a running Backup is looked at besides the Job's own events.
const POLL: Duration = Duration::from_secs(30);
/// Longest failure message taken from a Pod's log.
const MESSAGE_CHARS: usize = 1000;

/// Boxed so that the future is proven `Send` here, where its types are concrete: the
/// controller's generic bounds cannot see through the repository calls' closures.
pub fn reconcile(
    backup: Arc<Backup>,
    ctx: Arc<Context>,
) -> BoxFuture<'static, Result<Action, Error>> {
    Box::pin(async move {
        let started = Instant::now();
        let result = step(&backup, &ctx)
            .instrument(reconcile_span(backup.as_ref()))
            .await;
        ctx.metrics
            .reconciled("Backup", None, started.elapsed(), result.is_err());
        if result.is_ok() {
            ctx.succeeded(&object_key(backup.as_ref()));
        }
        result
    })
}

/// One look: create the Job if there is none, else follow it to its end.
async fn step(backup: &Backup, ctx: &Context) -> Result<Action, Error> {
    let before = backup.status.clone().unwrap_or_default();
    if before.phase.is_final() {
        return Ok(Action::await_change());
    }
    let namespace = backup.namespace().unwrap_or_default();
    let jobs: Api<Job> = Api::namespaced(ctx.client.clone(), &namespace);
    let name = job_name(&backup.name_any());
    let mut status = before.clone();
    let job = match jobs.get_opt(&name).await? {
        Some(job) => job,
        None => {
            let repository = match repository_of(backup, ctx, &namespace).await {
                Ok(repository) => repository,
                Err(f) => {
                    // Missing objects may still come (GitOps applies in any order).
                    let requeue = f.reason.class() == ir_api::reason::Class::Transient;
                    set(&mut status, backup, phase_of(requeue), f.reason, &f.message);
                    write_status(ctx, backup, &before, status).await?;
                    return Ok(if requeue {
                        Action::requeue(POLL)
                    } else {
                        Action::await_change()
                    });
                }
            };
            let job = backup_job(
                backup,
                &repository.spec,
                &ctx.settings.tools_image,
                ctx.settings.postgres_user,
            );
            let created = jobs.create(&PostParams::default(), &job).await?;
            tracing::info!(job = %name, "Backup Job created");
            created
        }
    };
    status.job_name = Some(name.clone());
    let job_status = job.status.clone().unwrap_or_default();
    status.started_at = job_status
        .start_time
        .as_ref()
        .map(|t| t.0)
        .or(status.started_at);
    let finished = |type_: &str| {
        job_status
            .conditions
            .iter()
            .flatten()
            .find(|c| c.type_ == type_ && c.status == "True")
            .map(|c| c.last_transition_time.as_ref().map(|t| t.0))
    };
    if let Some(at) = finished("Complete") {
        let at = at.unwrap_or_else(Timestamp::now);
        match find_backup(backup, ctx, &namespace).await {
            Ok(Some(m)) => {
                status.backup_id = Some(m.id.clone());
                status.size_bytes = Some(m.total_size);
                status.pg_major = m.pg_version.split('.').next().and_then(|v| v.parse().ok());
                finish(&mut status, at);
                let message = format!("backup {} ({} bytes)", m.id, m.total_size);
                set(
                    &mut status,
                    backup,
                    BackupPhase::Completed,
                    Reason::BackupCompleted,
                    &message,
                );
            }
            Ok(None) => {
                finish(&mut status, at);
                let message = format!(
                    "Job {name} succeeded but the repository holds no backup labelled \
                     {BACKUP_UID_LABEL}={}",
                    backup.uid().unwrap_or_default()
                );
                set(
                    &mut status,
                    backup,
                    BackupPhase::Failed,
                    Reason::BackupNotInRepository,
                    &message,
                );
            }
            // The repository may answer later: look again.
            Err(f) => {
                tracing::warn!(reason = %f.reason, message = %f.message, "the repository cannot be listed");
                write_status(ctx, backup, &before, status).await?;
                return Ok(Action::requeue(POLL));
            }
        }
    } else if let Some(at) = finished("Failed") {
        finish(&mut status, at.unwrap_or_else(Timestamp::now));
        let why = last_words(ctx, &namespace, &name).await;
        let message = format!("Job {name} failed: {why}");
        set(
            &mut status,
            backup,
            BackupPhase::Failed,
            Reason::BackupFailed,
            &message,
        );
    } else if job_status.active.unwrap_or(0) > 0 {
        let message = format!("Job {name} runs irctl backup create");
        set(
            &mut status,
            backup,
            BackupPhase::Running,
            Reason::BackupRunning,
            &message,
        );
    } else {
        let message = format!("Job {name} waits for its Pod");
        set(
            &mut status,
            backup,
            BackupPhase::Pending,
            Reason::BackupPending,
            &message,
        );
    }
    let done = status.phase.is_final().then(|| done_event(&status));
    write_status(ctx, backup, &before, status).await?;
    if let Some(event) = done {
        if let Err(e) = ctx.recorder.publish(&event, &backup.object_ref(&())).await {
            tracing::warn!(error = %e, "could not publish an event");
        }
        return Ok(Action::await_change());
    }
    Ok(Action::requeue(POLL))
}

fn phase_of(transient: bool) -> BackupPhase {
    if transient {
        BackupPhase::Pending
    } else {
        BackupPhase::Failed
    }
}

fn finish(status: &mut BackupStatus, at: Timestamp) {
    status.completed_at = Some(at);
    status.duration_seconds = status
        .started_at
        .map(|start| (at.as_millisecond() - start.as_millisecond()) as f64 / 1000.0);
}

/// The BackupRepository of `spec.repositoryRef`, checked against the installation's policy.
async fn repository_of(
    backup: &Backup,
    ctx: &Context,
    namespace: &str,
) -> Result<BackupRepository, Failure> {
    let name = &backup.spec.repository_ref.name;
    let api: Api<BackupRepository> = Api::namespaced(ctx.client.clone(), namespace);
    let repository = match api.get_opt(name).await {
        Ok(Some(r)) => r,
        Ok(None) => {
            return Err(Failure::new(
                Reason::RepositoryNotFound,
                format!("spec.repositoryRef: no BackupRepository {namespace}/{name}"),
            ));
        }
        Err(e) => {
            return Err(Failure::new(
                Reason::KubernetesUnavailable,
                format!("reading BackupRepository {namespace}/{name}: {e}"),
            ));
        }
    };
    // The same checks as a recovery's: the path allowed, the Secrets there.
    repository_location(&ctx.client, namespace, &repository.spec, &ctx.settings)
        .await
        .map_err(|f| f.naming("spec.repositoryRef"))?;
    Ok(repository)
}

/// The backup the Job made, by the Backup's uid in its manifest's labels.
async fn find_backup(
    backup: &Backup,
    ctx: &Context,
    namespace: &str,
) -> Result<Option<BackupManifest>, Failure> {
    let repository = repository_of(backup, ctx, namespace).await?;
    let location =
        repository_location(&ctx.client, namespace, &repository.spec, &ctx.settings).await?;
    let opened = Repository::open(&location)
        .await
        .map_err(ir_api::Failure::from)?;
    let list = opened.list_backups().await.map_err(ir_api::Failure::from)?;
    let uid = backup.uid().unwrap_or_default();
    Ok(list
        .backups
        .into_iter()
        .find(|m| m.labels.get(BACKUP_UID_LABEL) == Some(&uid)))
}

/// The termination message of the Job's newest failed Pod: the end of its log.
async fn last_words(ctx: &Context, namespace: &str, job: &str) -> String {
    let pods: Api<Pod> = Api::namespaced(ctx.client.clone(), namespace);
    let selector = format!("batch.kubernetes.io/job-name={job}");
    let Ok(list) = pods.list(&ListParams::default().labels(&selector)).await else {
        return "its Pods cannot be listed".to_owned();
    };
    let mut messages: Vec<(Option<Timestamp>, String)> = list
        .items
        .iter()
        .flat_map(|pod| {
            pod.status
                .iter()
                .flat_map(|s| s.container_statuses.iter().flatten())
        })
        .filter_map(|c| {
            let t = c.state.as_ref()?.terminated.as_ref()?;
            let message = t
                .message
                .clone()
                .unwrap_or_else(|| format!("exit code {}", t.exit_code));
            Some((t.finished_at.as_ref().map(|f| f.0), message))
        })
        .collect();
    messages.sort();
    messages
        .pop()
        .map(|(_, m)| last_lines(&m))
        .unwrap_or_else(|| "no Pod of it reported why".to_owned())
}

/// The last lines of a log as one line for a status: no control characters, at most
/// [`MESSAGE_CHARS`].
fn last_lines(log: &str) -> String {
    let lines: Vec<&str> = log
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .collect();
    let text = lines[lines.len().saturating_sub(3)..].join(" / ");
    let clean: String = text.chars().filter(|c| !c.is_control()).collect();
    let skip = clean.chars().count().saturating_sub(MESSAGE_CHARS);
    clean.chars().skip(skip).collect()
}

fn set(
    status: &mut BackupStatus,
    backup: &Backup,
    phase: BackupPhase,
    reason: Reason,
    message: &str,
) {
    status.phase = phase;
    status.message = (phase == BackupPhase::Failed).then(|| message.to_owned());
    let state = match phase {
        BackupPhase::Completed => "True",
        BackupPhase::Failed => "False",
        BackupPhase::Pending | BackupPhase::Running => "Unknown",
    };
    status.conditions = ["Completed", "Ready"]
        .map(|type_| {
            let last_transition_time = match status.conditions.iter().find(|c| c.type_ == type_) {
                Some(c) if c.status == state => c.last_transition_time.clone(),
                _ => Time(Timestamp::now()),
            };
            Condition {
                type_: type_.to_owned(),
                status: state.to_owned(),
                reason: reason.to_string(),
                message: message.to_owned(),
                last_transition_time,
                observed_generation: backup.metadata.generation,
            }
        })
        .into();
}

async fn write_status(
    ctx: &Context,
    backup: &Backup,
    before: &BackupStatus,
    status: BackupStatus,
) -> Result<(), Error> {
    if &status == before {
        return Ok(());
    }
    let api: Api<Backup> =
        Api::namespaced(ctx.client.clone(), &backup.namespace().unwrap_or_default());
    let patch = serde_json::json!({
        "apiVersion": "instantrecovery.dev/v1alpha1",
        "kind": "Backup",
        "status": status,
    });
    api.patch_status(
        &backup.name_any(),
        &PatchParams::apply(FIELD_MANAGER).force(),
        &Patch::Apply(&patch),
    )
    .await?;
    Ok(())
}

fn done_event(status: &BackupStatus) -> Event {
    let completed = status.phase == BackupPhase::Completed;
    let reason = status
        .conditions
        .first()
        .map(|c| c.reason.clone())
        .unwrap_or_default();
    let note = status
        .conditions
        .first()
        .map(|c| c.message.clone())
        .unwrap_or_default();
    tracing::info!(%reason, "{note}");
    Event {
        type_: if completed {
            EventType::Normal
        } else {
            EventType::Warning
        },
        reason,
        note: Some(note),
        action: "Backup".to_owned(),
        secondary: None,
    }
}

#[cfg(test)]
mod tests {
    use super::last_lines;

    #[test]
    fn a_failure_message_is_the_end_of_the_log_on_one_line() {
        let log = "starting\n\npg_basebackup: error: connection refused\n\u{1b}[31mirctl: \
                   --from-pg: pg_basebackup failed\n";
        assert_eq!(
            last_lines(log),
            "starting / pg_basebackup: error: connection refused / [31mirctl: --from-pg: \
             pg_basebackup failed"
        );
        let long = "x".repeat(5000);
        assert_eq!(last_lines(&long).len(), super::MESSAGE_CHARS);
    }
}

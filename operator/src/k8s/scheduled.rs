//! ScheduledBackup: creates a Backup at each time of its cron schedule (missed times collapse
//! into one, as a CronJob's do), and after each Backup that completes, prunes the backups the
//! schedule made by its retention policy and collects the chunks they alone used. The result
//! goes to its status and to the BackupRepository's.

use futures::future::BoxFuture;
use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use croner::Cron;
use croner::parser::{CronParser, Seconds, Year};
use ir_api::Reason;
use ir_api::backup::{
    Backup, BackupPhase, RetentionResult, RetentionSpec, SCHEDULED_BACKUP_LABEL, ScheduledBackup,
    ScheduledBackupStatus,
};
use ir_api::crd::BackupRepository;
use ir_repository::{PruneAction, PruneScope, Repository, RetentionPolicy};
use jiff::Timestamp;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, ObjectMeta, Time};
use kube::api::{DeleteParams, ListParams, Patch, PatchParams, PostParams};
use kube::runtime::controller::Action;
use kube::{Api, Resource, ResourceExt};
use tracing::Instrument;

use super::context::{Context, Error, FIELD_MANAGER, object_key, reconcile_span};
use super::location::repository_location;
use super::resources::MANAGED_BY_LABEL;
use ir_engine::machine::Failure;

/// The field manager of a BackupRepository's `status.retention`: apart from the repository
/// controller's, so that its status writes leave the field alone.
const RETENTION_MANAGER: &str = "instant-recovery-operator-retention";
/// Unreferenced chunks younger than this are kept by the collection after a prune: they may
/// belong to a backup being written.
const GC_GRACE: Duration = Duration::from_secs(3600);
/// A schedule is looked at least this often, in case a watch event was missed.
const MAX_WAIT: Duration = Duration::from_secs(300);

/// Boxed so that the future is proven `Send` here, where its types are concrete: the
/// controller's generic bounds cannot see through the repository calls' closures.
pub fn reconcile(
    s: Arc<ScheduledBackup>,
    ctx: Arc<Context>,
) -> BoxFuture<'static, Result<Action, Error>> {
    Box::pin(async move {
        let started = Instant::now();
        let result = step(&s, &ctx).instrument(reconcile_span(s.as_ref())).await;
        ctx.metrics
            .reconciled("ScheduledBackup", None, started.elapsed(), result.is_err());
        if result.is_ok() {
            ctx.succeeded(&object_key(s.as_ref()));
        }
        result
    })
}

/// Five fields, or six with seconds first; no year field.
pub fn parse_schedule(text: &str) -> Result<Cron, String> {
    CronParser::builder()
        .seconds(Seconds::Optional)
        .year(Year::Disallowed)
        .build()
        .parse(text)
        .map_err(|e| format!("spec.schedule {text:?}: {e}"))
}

fn to_chrono(t: Timestamp) -> DateTime<Utc> {
    DateTime::from_timestamp(t.as_second(), t.subsec_nanosecond().max(0) as u32).unwrap_or_default()
}

fn to_jiff(t: DateTime<Utc>) -> Timestamp {
    Timestamp::new(t.timestamp(), t.timestamp_subsec_nanos() as i32).unwrap_or_default()
}

/// What the schedule asks for at `now`, having last run at `last` (or been created then):
/// the time to run at now, if one is due (the latest due, when several were missed), and the
/// next time after.
pub fn plan(
    cron: &Cron,
    last: Timestamp,
    now: Timestamp,
) -> (Option<Timestamp>, Option<Timestamp>) {
    let due = cron
        .find_next_occurrence(&to_chrono(last), false)
        .ok()
        .map(to_jiff)
        .filter(|due| *due <= now);
    let run = due.and_then(|_| {
        cron.find_previous_occurrence(&to_chrono(now), true)
            .ok()
            .map(to_jiff)
    });
    let next = cron
        .find_next_occurrence(&to_chrono(now), false)
        .ok()
        .map(to_jiff);
    (run, next)
}

/// The Backup of the run at `at`: named by the time, so that creating it twice is harmless.
fn backup_name(schedule: &str, at: Timestamp) -> String {
    let stamp = at.strftime("%Y%m%d%H%M%S").to_string();
    let base: String = schedule.chars().take(253 - stamp.len() - 1).collect();
    format!("{base}-{stamp}")
}

fn policy(spec: &RetentionSpec) -> RetentionPolicy {
    RetentionPolicy {
        keep_last: spec.keep_last.map(|n| n as usize),
        keep_daily: spec.keep_daily.map(|n| n as usize),
        keep_weekly: spec.keep_weekly.map(|n| n as usize),
        keep_within: spec.keep_within.map(|d| d.0),
    }
}

async fn step(s: &ScheduledBackup, ctx: &Context) -> Result<Action, Error> {
    let namespace = s.namespace().unwrap_or_default();
    let name = s.name_any();
    let before = s.status.clone().unwrap_or_default();
    let mut status = before.clone();
    let cron = match parse_schedule(&s.spec.schedule) {
        Ok(cron) => cron,
        Err(message) => {
            status.next_schedule_time = None;
            set_ready(&mut status, s, false, Reason::InvalidSchedule, &message);
            write_status(ctx, s, &before, status).await?;
            return Ok(Action::await_change());
        }
    };
    let backups: Api<Backup> = Api::namespaced(ctx.client.clone(), &namespace);
    let mine = backups
        .list(&ListParams::default().labels(&format!("{SCHEDULED_BACKUP_LABEL}={name}")))
        .await?
        .items;
    retain_after_new_backup(s, ctx, &mine, &mut status).await?;
    trim_history(s, &backups, &mine).await?;

    let now = Timestamp::now();
    if s.spec.suspend {
        status.next_schedule_time = None;
        set_ready(
            &mut status,
            s,
            true,
            Reason::Suspended,
            "spec.suspend is true",
        );
        write_status(ctx, s, &before, status).await?;
        return Ok(Action::await_change());
    }
    let created = s.meta().creation_timestamp.as_ref().map_or(now, |t| t.0);
    let last = status.last_schedule_time.unwrap_or(created);
    let (run, next) = plan(&cron, last, now);
    if let Some(at) = run {
        let backup_name = backup_name(&name, at);
        create_backup(s, &backups, &backup_name).await?;
        status.last_schedule_time = Some(at);
        status.last_backup = Some(backup_name);
    }
    status.next_schedule_time = next;
    let last_failed = mine
        .iter()
        .max_by_key(|b| b.meta().creation_timestamp.as_ref().map(|t| t.0))
        .and_then(|b| b.status.as_ref())
        .filter(|st| st.phase == BackupPhase::Failed);
    let retention_failed = status
        .conditions
        .iter()
        .any(|c| c.type_ == "Ready" && c.reason == Reason::RetentionFailed.as_str());
    if let Some(failed) = last_failed {
        let message = failed.message.clone().unwrap_or_default();
        set_ready(&mut status, s, false, Reason::BackupFailed, &message);
    } else if !retention_failed {
        let message = match next {
            Some(next) => format!("next backup at {next}"),
            None => "the schedule has no next time".to_owned(),
        };
        set_ready(&mut status, s, true, Reason::Scheduled, &message);
    }
    write_status(ctx, s, &before, status).await?;
    let wait = next
        .map(|next| {
            let millis = next.as_millisecond() - Timestamp::now().as_millisecond();
            Duration::from_millis(millis.max(0) as u64 + 50)
        })
        .unwrap_or(MAX_WAIT);
    Ok(Action::requeue(wait.min(MAX_WAIT)))
}

async fn create_backup(s: &ScheduledBackup, api: &Api<Backup>, name: &str) -> Result<(), Error> {
    let backup = Backup {
        metadata: ObjectMeta {
            name: Some(name.to_owned()),
            namespace: s.namespace(),
            labels: Some(BTreeMap::from([
                (SCHEDULED_BACKUP_LABEL.to_owned(), s.name_any()),
                (MANAGED_BY_LABEL.0.to_owned(), MANAGED_BY_LABEL.1.to_owned()),
            ])),
            owner_references: s.controller_owner_ref(&()).map(|o| vec![o]),
            ..Default::default()
        },
        spec: s.spec.backup.clone(),
        status: None,
    };
    match api.create(&PostParams::default(), &backup).await {
        Ok(_) => {
            tracing::info!(backup = %name, "scheduled Backup created");
            Ok(())
        }
        Err(kube::Error::Api(e)) if e.code == 409 => Ok(()),
        Err(e) => Err(e.into()),
    }
}

/// After a Backup of the schedule completed that the last run did not see: prune and collect.
async fn retain_after_new_backup(
    s: &ScheduledBackup,
    ctx: &Context,
    mine: &[Backup],
    status: &mut ScheduledBackupStatus,
) -> Result<(), Error> {
    let newest = mine
        .iter()
        .filter_map(|b| b.status.as_ref())
        .filter(|st| st.phase == BackupPhase::Completed)
        .max_by_key(|st| st.completed_at);
    let Some(id) = newest.and_then(|st| st.backup_id.clone()) else {
        return Ok(());
    };
    if status.last_successful_backup_id.as_ref() == Some(&id) {
        return Ok(());
    }
    status.last_successful_backup_id = Some(id);
    let Some(retention) = &s.spec.retention else {
        return Ok(());
    };
    match retain(s, ctx, retention).await {
        Ok((result, repository)) => {
            tracing::info!(
                kept = result.kept.len(),
                deleted = result.deleted.len(),
                in_use = result.in_use.len(),
                "retention applied"
            );
            report_to_repository(ctx, &repository, &result).await?;
            status.last_retention = Some(result);
        }
        Err(f) => {
            let message = format!("retention: {}", f.message);
            set_ready(status, s, false, Reason::RetentionFailed, &message);
        }
    }
    Ok(())
}

async fn retain(
    s: &ScheduledBackup,
    ctx: &Context,
    retention: &RetentionSpec,
) -> Result<(RetentionResult, BackupRepository), Failure> {
    let namespace = s.namespace().unwrap_or_default();
    let name = &s.spec.backup.repository_ref.name;
    let repository = Api::<BackupRepository>::namespaced(ctx.client.clone(), &namespace)
        .get_opt(name)
        .await
        .map_err(|e| Failure::new(Reason::KubernetesUnavailable, e.to_string()))?
        .ok_or_else(|| {
            Failure::new(
                Reason::RepositoryNotFound,
                format!("spec.backup.repositoryRef: no BackupRepository {namespace}/{name}"),
            )
        })?;
    let location =
        repository_location(&ctx.client, &namespace, &repository.spec, &ctx.settings).await?;
    let opened = Repository::open(&location)
        .await
        .map_err(ir_api::Failure::from)?;
    let label = format!("{namespace}/{}", s.name_any());
    let scope = PruneScope {
        label: Some((SCHEDULED_BACKUP_LABEL, &label)),
    };
    let pruned = opened
        .prune(&policy(retention), scope, false)
        .await
        .map_err(ir_api::Failure::from)?;
    let gc = opened
        .gc(GC_GRACE, false)
        .await
        .map_err(ir_api::Failure::from)?;
    let ids = |action: PruneAction| -> Vec<String> {
        pruned
            .iter()
            .filter(|p| p.action == action)
            .map(|p| p.id.clone())
            .collect()
    };
    let result = RetentionResult {
        time: Timestamp::now(),
        scheduled_backup: label.clone(),
        kept: ids(PruneAction::Keep),
        deleted: ids(PruneAction::Delete),
        in_use: ids(PruneAction::InUse),
        chunks_deleted: gc.chunks_deleted,
        bytes_freed: gc.bytes_deleted,
    };
    Ok((result, repository))
}

async fn report_to_repository(
    ctx: &Context,
    repository: &BackupRepository,
    result: &RetentionResult,
) -> Result<(), Error> {
    let api: Api<BackupRepository> = Api::namespaced(
        ctx.client.clone(),
        &repository.namespace().unwrap_or_default(),
    );
    let patch = serde_json::json!({
        "apiVersion": "instantrecovery.dev/v1alpha1",
        "kind": "BackupRepository",
        "status": {"retention": result},
    });
    api.patch_status(
        &repository.name_any(),
        &PatchParams::apply(RETENTION_MANAGER).force(),
        &Patch::Apply(&patch),
    )
    .await?;
    Ok(())
}

/// Deletes the oldest finished Backups beyond `spec.historyLimit` (the backups they made stay
/// in the repository, which retention governs).
async fn trim_history(
    s: &ScheduledBackup,
    api: &Api<Backup>,
    mine: &[Backup],
) -> Result<(), Error> {
    let mut finished: Vec<&Backup> = mine
        .iter()
        .filter(|b| b.status.as_ref().is_some_and(|st| st.phase.is_final()))
        .collect();
    finished.sort_by_key(|b| b.meta().creation_timestamp.as_ref().map(|t| t.0));
    let excess = finished.len().saturating_sub(s.spec.history_limit as usize);
    for old in &finished[..excess] {
        match api
            .delete(&old.name_any(), &DeleteParams::background())
            .await
        {
            Ok(_) => tracing::info!(backup = %old.name_any(), "old Backup deleted"),
            Err(kube::Error::Api(e)) if e.code == 404 => {}
            Err(e) => return Err(e.into()),
        }
    }
    Ok(())
}

fn set_ready(
    status: &mut ScheduledBackupStatus,
    s: &ScheduledBackup,
    ready: bool,
    reason: Reason,
    message: &str,
) {
    let state = if ready { "True" } else { "False" };
    let last_transition_time = match status.conditions.iter().find(|c| c.type_ == "Ready") {
        Some(c) if c.status == state => c.last_transition_time.clone(),
        _ => Time(Timestamp::now()),
    };
    status.conditions = vec![Condition {
        type_: "Ready".to_owned(),
        status: state.to_owned(),
        reason: reason.to_string(),
        message: message.to_owned(),
        last_transition_time,
        observed_generation: s.metadata.generation,
    }];
}

async fn write_status(
    ctx: &Context,
    s: &ScheduledBackup,
    before: &ScheduledBackupStatus,
    status: ScheduledBackupStatus,
) -> Result<(), Error> {
    if &status == before {
        return Ok(());
    }
    let api: Api<ScheduledBackup> =
        Api::namespaced(ctx.client.clone(), &s.namespace().unwrap_or_default());
    let patch = serde_json::json!({
        "apiVersion": "instantrecovery.dev/v1alpha1",
        "kind": "ScheduledBackup",
        "status": status,
    });
    api.patch_status(
        &s.name_any(),
        &PatchParams::apply(FIELD_MANAGER).force(),
        &Patch::Apply(&patch),
    )
    .await?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(text: &str) -> Timestamp {
        text.parse().unwrap()
    }

    #[test]
    fn schedules_take_five_or_six_fields_and_name_the_field_when_wrong() {
        parse_schedule("0 3 * * *").unwrap();
        parse_schedule("*/20 * * * * *").unwrap();
        let wrong = parse_schedule("every night").unwrap_err();
        assert!(
            wrong.starts_with("spec.schedule \"every night\""),
            "{wrong}"
        );
        assert!(parse_schedule("0 0 3 * * * 2030").is_err(), "no year field");
    }

    #[test]
    fn the_plan_runs_once_for_missed_times_and_names_the_next() {
        let nightly = parse_schedule("0 3 * * *").unwrap();
        // Not due yet.
        let (run, next) = plan(
            &nightly,
            at("2026-12-05T03:00:00Z"),
            at("2026-12-05T12:00:00Z"),
        );
        assert_eq!(run, None);
        assert_eq!(next, Some(at("2026-12-06T03:00:00Z")));
        // Three nights missed: one run, for the latest.
        let (run, next) = plan(
            &nightly,
            at("2026-12-01T03:00:00Z"),
            at("2026-12-05T04:00:00Z"),
        );
        assert_eq!(run, Some(at("2026-12-05T03:00:00Z")));
        assert_eq!(next, Some(at("2026-12-06T03:00:00Z")));
        // Exactly on time.
        let (run, _) = plan(
            &nightly,
            at("2026-12-04T03:00:00Z"),
            at("2026-12-05T03:00:00Z"),
        );
        assert_eq!(run, Some(at("2026-12-05T03:00:00Z")));
    }

    #[test]
    fn backup_names_carry_the_time_and_fit() {
        assert_eq!(
            backup_name("nightly", at("2026-12-05T03:00:00Z")),
            "nightly-20261205030000"
        );
        assert!(backup_name(&"n".repeat(300), at("2026-12-05T03:00:00Z")).len() <= 253);
    }

    #[test]
    fn the_retention_spec_is_prunes_policy() {
        let spec = RetentionSpec {
            keep_last: Some(2),
            keep_daily: None,
            keep_weekly: Some(4),
            keep_within: Some(ir_api::GoDuration(Duration::from_secs(3600))),
        };
        assert_eq!(
            policy(&spec),
            RetentionPolicy {
                keep_last: Some(2),
                keep_daily: None,
                keep_weekly: Some(4),
                keep_within: Some(Duration::from_secs(3600)),
            }
        );
    }
}

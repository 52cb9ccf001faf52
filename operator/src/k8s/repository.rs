//! BackupRepository: checks that the repository answers and lists its recent backups in status,
//! each with the window it can be recovered to from the archived WAL.

use std::sync::Arc;
use std::time::{Duration, Instant};

use ir_api::Reason;
use ir_api::crd::{BackupRepository, BackupRepositoryStatus, ListedBackup};
use ir_api::recovery::BackupInfo;
use ir_repository::Repository;
use jiff::Timestamp;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use kube::api::{Patch, PatchParams};
use kube::runtime::controller::Action;
use kube::{Api, ResourceExt};
use tracing::Instrument;

use super::context::{Context, Error, FIELD_MANAGER, object_key, reconcile_span};
use super::location::repository_location;
use ir_engine::machine::Failure;

/// How many backups the status lists, newest first.
const LISTED: usize = 10;

pub async fn reconcile(repo: Arc<BackupRepository>, ctx: Arc<Context>) -> Result<Action, Error> {
    let started = Instant::now();
    let result = check_and_report(&repo, &ctx)
        .instrument(reconcile_span(repo.as_ref()))
        .await;
    ctx.metrics
        .reconciled("BackupRepository", None, started.elapsed(), result.is_err());
    result
}

/// Checks the repository and writes what was found into its status.
async fn check_and_report(repo: &BackupRepository, ctx: &Context) -> Result<Action, Error> {
    let namespace = repo.namespace().unwrap_or_default();
    let checked = check(ctx, &namespace, repo).await;
    let before = repo.status.clone().unwrap_or_default();
    let (status, reason, message, backups) = match checked {
        Ok((count, backups)) => (
            "True",
            Reason::Listed.to_string(),
            format!("{count} backups"),
            Some((count, backups)),
        ),
        Err(f) => ("False", f.reason.to_string(), f.message, None),
    };
    // `Ready` mirrors `Reachable` for tools that only read `Ready`.
    let conditions = ["Reachable", "Ready"].map(|type_| {
        // The transition time moves only when the status flips.
        let last_transition_time = match before.conditions.iter().find(|c| c.type_ == type_) {
            Some(c) if c.status == status => c.last_transition_time.clone(),
            _ => Time(k8s_openapi::jiff::Timestamp::now()),
        };
        Condition {
            type_: type_.to_owned(),
            status: status.to_owned(),
            reason: reason.clone(),
            message: message.clone(),
            last_transition_time,
            observed_generation: repo.metadata.generation,
        }
    });
    // `retention` is the ScheduledBackup controller's, written under its own field manager.
    let before = BackupRepositoryStatus {
        retention: None,
        ..before
    };
    let mut new_status = before.clone();
    new_status.observed_generation = repo.metadata.generation;
    new_status.conditions = conditions.into();
    if let Some((count, backups)) = backups {
        new_status.backup_count = count as u32;
        new_status.backups = backups;
    }
    if new_status != before {
        let api: Api<BackupRepository> = Api::namespaced(ctx.client.clone(), &namespace);
        let patch = serde_json::json!({
            "apiVersion": "instantrecovery.dev/v1alpha1",
            "kind": "BackupRepository",
            "status": new_status,
        });
        api.patch_status(
            &repo.name_any(),
            &PatchParams::apply(FIELD_MANAGER).force(),
            &Patch::Apply(&patch),
        )
        .await?;
    }
    ctx.succeeded(&object_key(repo));
    Ok(Action::requeue(if status == "True" {
        ctx.settings.repository_poll
    } else {
        ctx.settings.repository_poll.min(Duration::from_secs(60))
    }))
}

async fn check(
    ctx: &Context,
    namespace: &str,
    repo: &BackupRepository,
) -> Result<(usize, Vec<ListedBackup>), Failure> {
    let location = repository_location(&ctx.client, namespace, &repo.spec, &ctx.settings).await?;
    let opened = Repository::open(&location)
        .await
        .map_err(ir_api::Failure::from)
        .map_err(|f| f.naming("spec"))?;
    let list = opened.list_backups().await.map_err(ir_api::Failure::from)?;
    for invalid in &list.invalid {
        tracing::warn!(repository = %repo.spec.url, backup = %invalid.id, reason = %invalid.reason, "invalid backup manifest; left out");
    }
    // Only the listed ones get a window: each lists WAL, once per system.
    let count = list.backups.len();
    let listed: Vec<_> = list.backups.into_iter().rev().take(LISTED).collect();
    let windows = ir_engine::backup::recoverable_windows(&opened, &listed).await;
    let listed = listed
        .into_iter()
        .zip(windows)
        .map(|(m, recoverable_window)| ListedBackup {
            created_at: Timestamp::from_nanosecond(m.created.unix_timestamp_nanos()).ok(),
            info: BackupInfo {
                pg_major: m.pg_version.trim().parse().unwrap_or_default(),
                size_bytes: m.entries.iter().map(|e| e.size).sum(),
                id: m.id,
            },
            recoverable_window,
        })
        .collect();
    Ok((count, listed))
}

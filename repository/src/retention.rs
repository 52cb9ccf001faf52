//! Which backups a retention policy keeps, in restic's vocabulary, and the leases that protect
//! a backup in use from being deleted.
//!
//! A lease is `leases/<backup id>/<holder>.json`: who uses the backup and until when. A mount
//! takes one and refreshes it while it serves; delete and prune skip a backup with a lease that
//! has not expired, and say so. A holder that dies leaves a lease that expires by itself.

use std::collections::BTreeSet;
use std::time::Duration;

use futures::TryStreamExt;
use object_store::path::Path;
use object_store::{ObjectStoreExt, PutPayload};
use serde::{Deserialize, Serialize};
use time::OffsetDateTime;

use crate::error::RepoError;
use crate::repo::{Repository, check_backup_id, manifest_path};

const LEASES_DIR: &str = "leases";
/// A lease file is small; anything larger is not one.
const MAX_LEASE_BYTES: u64 = 4096;

/// Which backups to keep; a backup any rule keeps is kept. At least one rule must be given.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RetentionPolicy {
    /// The newest N.
    pub keep_last: Option<usize>,
    /// The newest of each of the N most recent days (UTC) that have a backup.
    pub keep_daily: Option<usize>,
    /// The newest of each of the N most recent ISO weeks that have a backup.
    pub keep_weekly: Option<usize>,
    /// Every backup taken within this long before the newest one.
    pub keep_within: Option<Duration>,
}

impl RetentionPolicy {
    pub fn is_empty(&self) -> bool {
        *self == RetentionPolicy::default()
    }
}

/// What the policy makes of one backup.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Verdict {
    pub id: String,
    #[serde(with = "time::serde::rfc3339")]
    pub created: OffsetDateTime,
    pub keep: bool,
    /// The rules that keep it (`last`, `daily`, `weekly`, `within`).
    pub reasons: Vec<&'static str>,
}

/// The policy's verdict on each of `backups` (id and creation time, any order), newest first.
pub fn decide(backups: &[(String, OffsetDateTime)], policy: &RetentionPolicy) -> Vec<Verdict> {
    let mut sorted: Vec<&(String, OffsetDateTime)> = backups.iter().collect();
    sorted.sort_by(|a, b| (b.1, &b.0).cmp(&(a.1, &a.0)));
    let newest = sorted.first().map(|b| b.1);
    let mut days = BTreeSet::new();
    let mut weeks = BTreeSet::new();
    sorted
        .into_iter()
        .enumerate()
        .map(|(i, (id, created))| {
            let mut reasons = Vec::new();
            if policy.keep_last.is_some_and(|n| i < n) {
                reasons.push("last");
            }
            // Newest first: the first backup of a day or week is its newest.
            let day = created.date();
            if let Some(n) = policy.keep_daily
                && !days.contains(&day)
                && days.len() < n
            {
                days.insert(day);
                reasons.push("daily");
            }
            let (year, week, _) = created.to_iso_week_date();
            if let Some(n) = policy.keep_weekly
                && !weeks.contains(&(year, week))
                && weeks.len() < n
            {
                weeks.insert((year, week));
                reasons.push("weekly");
            }
            if let (Some(within), Some(newest)) = (policy.keep_within, newest)
                && newest - *created <= within
            {
                reasons.push("within");
            }
            Verdict {
                id: id.clone(),
                created: *created,
                keep: !reasons.is_empty(),
                reasons,
            }
        })
        .collect()
}

/// Who uses a backup, until when.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Lease {
    pub holder: String,
    #[serde(with = "time::serde::rfc3339")]
    pub expires: OffsetDateTime,
}

/// A lease holder's name as it may appear in a path: letters, digits, `-`, `_`, `.`.
fn check_holder(holder: &str) -> Result<(), RepoError> {
    let fine = !holder.is_empty()
        && holder.len() <= 128
        && !holder.starts_with('.')
        && holder
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'));
    if fine {
        Ok(())
    } else {
        Err(RepoError::InvalidLeaseHolder {
            holder: holder.to_string(),
        })
    }
}

fn lease_path(id: &str, holder: &str) -> Path {
    Path::from(format!("{LEASES_DIR}/{id}/{holder}.json"))
}

impl Repository {
    /// Takes or refreshes `holder`'s lease on backup `id` for `ttl` from now, at most
    /// [`MAX_LEASE_TTL`].
    pub async fn take_lease(&self, id: &str, holder: &str, ttl: Duration) -> Result<(), RepoError> {
        check_backup_id(id)?;
        check_holder(holder)?;
        let lease = Lease {
            holder: holder.to_string(),
            expires: OffsetDateTime::now_utc() + ttl.min(MAX_LEASE_TTL),
        };
        let path = lease_path(id, holder);
        let body = serde_json::to_vec(&lease).expect("a lease serialises");
        self.store()
            .put(&path, PutPayload::from(body))
            .await
            .map_err(|e| self.store_err(&path, e))?;
        Ok(())
    }

    /// Gives `holder`'s lease on `id` up; one that is not there is no error.
    pub async fn release_lease(&self, id: &str, holder: &str) -> Result<(), RepoError> {
        check_backup_id(id)?;
        check_holder(holder)?;
        let path = lease_path(id, holder);
        match self.store().delete(&path).await {
            Ok(()) | Err(object_store::Error::NotFound { .. }) => Ok(()),
            Err(e) => Err(self.store_err(&path, e)),
        }
    }

    /// The leases on backup `id` that have not expired. A lease object is untrusted: one too
    /// large to be a lease is not read, and no lease counts for longer than
    /// [`MAX_LEASE_TTL`] after it was written, so neither a far-future expiry nor damage holds
    /// a backup for ever. An unreadable one counts as held for that long: damage must not let
    /// a backup in use be deleted.
    pub async fn active_leases(&self, id: &str) -> Result<Vec<Lease>, RepoError> {
        check_backup_id(id)?;
        let prefix = Path::from(format!("{LEASES_DIR}/{id}"));
        let metas: Vec<_> = self
            .store()
            .list(Some(&prefix))
            .try_collect()
            .await
            .map_err(|e| self.store_err(&prefix, e))?;
        let now = OffsetDateTime::now_utc();
        let mut active = Vec::new();
        for meta in metas {
            let latest_expiry = latest_expiry(meta.last_modified.timestamp());
            let parsed = if meta.size <= MAX_LEASE_BYTES {
                let body = match self.store().get(&meta.location).await {
                    Ok(got) => got.bytes().await,
                    Err(e) => Err(e),
                };
                match body {
                    Ok(b) => serde_json::from_slice::<Lease>(&b).ok(),
                    Err(object_store::Error::NotFound { .. }) => continue,
                    Err(e) => return Err(self.store_err(&meta.location, e)),
                }
            } else {
                None
            };
            let lease = match parsed {
                Some(lease) => Lease {
                    expires: lease.expires.min(latest_expiry),
                    ..lease
                },
                None => Lease {
                    holder: format!("{} (unreadable)", meta.location),
                    expires: latest_expiry,
                },
            };
            if lease.expires > now {
                active.push(lease);
            }
        }
        active.sort_by(|a, b| a.holder.cmp(&b.holder));
        Ok(active)
    }

    /// Deletes backup `id` (its manifest: chunks go with the next `gc`), unless a lease holds
    /// it. The chunks it alone used stay until [`Repository::gc`].
    pub async fn delete_backup(&self, id: &str) -> Result<(), RepoError> {
        check_backup_id(id)?;
        // Only an existing backup is deleted: a typo is an error, not a no-op.
        let path = manifest_path(id);
        match self.store().head(&path).await {
            Ok(_) => {}
            Err(object_store::Error::NotFound { .. }) => {
                return Err(RepoError::BackupNotFound {
                    id: id.to_string(),
                    url: self.url().to_string(),
                });
            }
            Err(e) => return Err(self.store_err(&path, e)),
        }
        let leases = self.active_leases(id).await?;
        if let Some(lease) = leases.first() {
            return Err(RepoError::BackupLeased {
                id: id.to_string(),
                holder: lease.holder.clone(),
                expires: lease.expires,
            });
        }
        match self.store().delete(&path).await {
            Ok(()) | Err(object_store::Error::NotFound { .. }) => Ok(()),
            Err(e) => Err(self.store_err(&path, e)),
        }
    }
}

/// What prune did with one backup.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PruneAction {
    Keep,
    Delete,
    /// A dry run's delete.
    WouldDelete,
    /// Not kept by the policy, but a lease holds it.
    InUse,
}

impl PruneAction {
    /// As `irctl backup prune` prints it, in its table and its JSON.
    pub fn as_str(self) -> &'static str {
        match self {
            PruneAction::Keep => "keep",
            PruneAction::Delete => "delete",
            PruneAction::WouldDelete => "would delete",
            PruneAction::InUse => "in use",
        }
    }
}

impl Serialize for PruneAction {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(self.as_str())
    }
}

/// One backup as prune judged it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Pruned {
    pub id: String,
    #[serde(with = "time::serde::rfc3339")]
    pub created: OffsetDateTime,
    pub action: PruneAction,
    /// The rules that keep it, or the lease that holds it.
    pub reasons: Vec<String>,
}

/// What [`Repository::prune`] applies its policy to: every valid backup, or those labelled so.
#[derive(Debug, Clone, Copy, Default)]
pub struct PruneScope<'a> {
    pub label: Option<(&'a str, &'a str)>,
}

impl Repository {
    /// Applies `policy` to the valid backups in `scope` (invalid ones are left alone: delete
    /// them by id) and deletes those it does not keep, except those a lease holds; with
    /// `dry_run`, deletes nothing. Newest first. The chunks go with the next [`Repository::gc`].
    pub async fn prune(
        &self,
        policy: &RetentionPolicy,
        scope: PruneScope<'_>,
        dry_run: bool,
    ) -> Result<Vec<Pruned>, RepoError> {
        if policy.is_empty() {
            return Err(RepoError::EmptyRetentionPolicy);
        }
        let list = self.list_backups().await?;
        let backups: Vec<_> = list
            .backups
            .iter()
            .filter(|m| {
                scope
                    .label
                    .is_none_or(|(k, v)| m.labels.get(k).is_some_and(|have| have == v))
            })
            .map(|m| (m.id.clone(), m.created))
            .collect();
        let mut pruned = Vec::new();
        for verdict in decide(&backups, policy) {
            let (action, reasons) = if verdict.keep {
                let reasons = verdict.reasons.iter().map(|r| r.to_string()).collect();
                (PruneAction::Keep, reasons)
            } else if dry_run {
                match self.active_leases(&verdict.id).await?.first() {
                    Some(l) => (PruneAction::InUse, vec![lease_reason(l)]),
                    None => (PruneAction::WouldDelete, Vec::new()),
                }
            } else {
                match self.delete_backup(&verdict.id).await {
                    Ok(()) => (PruneAction::Delete, Vec::new()),
                    Err(RepoError::BackupLeased {
                        holder, expires, ..
                    }) => {
                        let lease = Lease { holder, expires };
                        (PruneAction::InUse, vec![lease_reason(&lease)])
                    }
                    Err(e) => return Err(e),
                }
            };
            pruned.push(Pruned {
                id: verdict.id,
                created: verdict.created,
                action,
                reasons,
            });
        }
        Ok(pruned)
    }
}

fn lease_reason(lease: &Lease) -> String {
    format!("lease of {} until {}", lease.holder, lease.expires)
}

/// The longest lease a holder takes; an unreadable lease counts this long from its writing.
pub const MAX_LEASE_TTL: Duration = Duration::from_secs(3600);

/// The latest a lease written at `written` (Unix seconds, as the store says) may count: the
/// longest lease after it. The store's time is untrusted too: one out of range counts from the
/// epoch, and one at the end of time does not overflow.
fn latest_expiry(written: i64) -> OffsetDateTime {
    let written =
        OffsetDateTime::from_unix_timestamp(written).unwrap_or(OffsetDateTime::UNIX_EPOCH);
    written.saturating_add(time::Duration::seconds(MAX_LEASE_TTL.as_secs() as i64))
}

#[cfg(test)]
mod tests {
    use super::*;
    use time::macros::datetime;

    fn backups(times: &[OffsetDateTime]) -> Vec<(String, OffsetDateTime)> {
        times
            .iter()
            .enumerate()
            .map(|(i, t)| (format!("b{i}"), *t))
            .collect()
    }

    fn kept(verdicts: &[Verdict]) -> Vec<(&str, String)> {
        verdicts
            .iter()
            .filter(|v| v.keep)
            .map(|v| (v.id.as_str(), v.reasons.join("+")))
            .collect()
    }

    #[test]
    fn a_lease_counts_an_hour_from_a_store_time_even_at_the_ends_of_time() {
        assert_eq!(
            latest_expiry(1_800_000_000),
            datetime!(2027-01-15 09:00 UTC)
        );
        // The last second time can hold: an hour on would overflow.
        let end = latest_expiry(253_402_300_799);
        assert!(end >= datetime!(9999-12-31 23:59:59 UTC), "{end}");
        // Beyond what time can hold: counted from the epoch.
        assert_eq!(latest_expiry(i64::MAX), datetime!(1970-01-01 01:00 UTC));
    }

    #[test]
    fn each_rule_keeps_what_restic_would() {
        // Two a day on Mon 2026-11-23 .. Thu 2026-11-26, one on Mon 2026-11-30.
        let times = [
            datetime!(2026-11-23 01:00 UTC),
            datetime!(2026-11-23 13:00 UTC),
            datetime!(2026-11-24 01:00 UTC),
            datetime!(2026-11-24 13:00 UTC),
            datetime!(2026-11-25 01:00 UTC),
            datetime!(2026-11-25 13:00 UTC),
            datetime!(2026-11-26 01:00 UTC),
            datetime!(2026-11-26 13:00 UTC),
            datetime!(2026-11-30 09:00 UTC),
        ];
        let b = backups(&times);
        let cases: Vec<(RetentionPolicy, Vec<(&str, &str)>)> = vec![
            (
                RetentionPolicy {
                    keep_last: Some(2),
                    ..Default::default()
                },
                vec![("b8", "last"), ("b7", "last")],
            ),
            (
                RetentionPolicy {
                    keep_daily: Some(3),
                    ..Default::default()
                },
                vec![("b8", "daily"), ("b7", "daily"), ("b5", "daily")],
            ),
            (
                RetentionPolicy {
                    keep_weekly: Some(2),
                    ..Default::default()
                },
                vec![("b8", "weekly"), ("b7", "weekly")],
            ),
            (
                RetentionPolicy {
                    keep_within: Some(Duration::from_secs(4 * 86400)),
                    ..Default::default()
                },
                vec![("b8", "within"), ("b7", "within")],
            ),
            (
                RetentionPolicy {
                    keep_last: Some(1),
                    keep_daily: Some(2),
                    keep_weekly: Some(2),
                    ..Default::default()
                },
                vec![("b8", "last+daily+weekly"), ("b7", "daily+weekly")],
            ),
            (
                RetentionPolicy {
                    keep_daily: Some(100),
                    ..Default::default()
                },
                vec![
                    ("b8", "daily"),
                    ("b7", "daily"),
                    ("b5", "daily"),
                    ("b3", "daily"),
                    ("b1", "daily"),
                ],
            ),
        ];
        for (policy, expected) in cases {
            let verdicts = decide(&b, &policy);
            let expected: Vec<(&str, String)> = expected
                .into_iter()
                .map(|(i, r)| (i, r.to_owned()))
                .collect();
            assert_eq!(kept(&verdicts), expected, "{policy:?}");
            assert_eq!(verdicts.len(), b.len());
            assert_eq!(verdicts[0].id, "b8", "newest first");
        }
    }

    #[test]
    fn no_backups_no_verdicts_and_an_empty_policy_is_empty() {
        assert!(
            decide(
                &[],
                &RetentionPolicy {
                    keep_last: Some(3),
                    ..Default::default()
                }
            )
            .is_empty()
        );
        assert!(RetentionPolicy::default().is_empty());
    }

    #[test]
    fn lease_holders_are_names_not_paths() {
        for good in ["node-1", "irctl-mount-4242", "host.example_1"] {
            assert!(check_holder(good).is_ok(), "{good}");
        }
        for bad in ["", "../x", "a/b", ".hidden", &"x".repeat(129)] {
            assert!(check_holder(bad).is_err(), "{bad:?}");
        }
    }
}

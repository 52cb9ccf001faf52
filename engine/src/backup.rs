//! Finding the backup to recover: the repository opened, `latest` resolved, the manifest read,
//! and every repository fault turned into a [`Failure`] that reads the same in both drivers
//! and in the node agent.

use ir_api::point_in_time::{PointInTime, PointInTimeStatus, RecoverableWindow, Target};
use ir_api::recovery::BackupInfo;
use std::collections::HashMap;
use std::collections::hash_map::Entry;

use ir_repository::wal::{SegmentName, WalError, WalListing, Window};
use ir_repository::{BackupManifest, RepoLocation, Repository, format_lsn, parse_lsn};
use jiff::Timestamp;

use ir_api::{Failure, Reason};

/// Opens the repository and reads the backup's manifest (`latest` resolved).
pub async fn find_backup(
    location: &RepoLocation,
    id_or_latest: &str,
) -> Result<BackupInfo, Failure> {
    let repo = Repository::open(location).await.map_err(Failure::from)?;
    let id = repo
        .resolve_backup(id_or_latest)
        .await
        .map_err(Failure::from)?;
    let manifest = repo.load_manifest(&id).await.map_err(Failure::from)?;
    backup_info(&manifest)
}

fn backup_info(manifest: &BackupManifest) -> Result<BackupInfo, Failure> {
    let pg_major: u32 = manifest.pg_version.trim().parse().map_err(|_| {
        Failure::new(
            Reason::UnsupportedBackup,
            format!(
                "backup {}: unrecognised PostgreSQL version {:?}",
                manifest.id, manifest.pg_version
            ),
        )
    })?;
    Ok(BackupInfo {
        id: manifest.id.clone(),
        pg_major,
        size_bytes: manifest.entries.iter().map(|e| e.size).sum(),
    })
}

/// Finds the backup to recover to `point` from: the one named, or for `latest` the newest that
/// ends before the target; checks the target against the WAL the repository holds for it.
pub async fn find_backup_for(
    location: &RepoLocation,
    id_or_latest: &str,
    point: &PointInTime,
) -> Result<(BackupInfo, PointInTimeStatus), Failure> {
    let target = point
        .target()
        .map_err(|e| Failure::new(Reason::InvalidSpec, format!("point in time: {e}")))?;
    let repo = Repository::open(location).await.map_err(Failure::from)?;
    let (manifest, named) = if id_or_latest == "latest" {
        let list = repo.list_backups().await.map_err(Failure::from)?;
        let named = match list.backups.last() {
            Some(newest) => restore_points(&repo, newest, &target).await?,
            None => Vec::new(),
        };
        // A restore point the archive knows is placed like its LSN: the newest backup before
        // the last one of that name (replay stops at the first one after the backup).
        let placed = named.last().map_or(target.clone(), |&lsn| Target::Lsn(lsn));
        (choose_backup(&list.backups, &placed)?.clone(), named)
    } else {
        let id = repo
            .resolve_backup(id_or_latest)
            .await
            .map_err(Failure::from)?;
        let manifest = repo.load_manifest(&id).await.map_err(Failure::from)?;
        let named = restore_points(&repo, &manifest, &target).await?;
        (manifest, named)
    };
    let info = backup_info(&manifest)?;
    let sysid = system_identifier(&manifest)?;
    let listing = repo.wal(sysid).list().await.map_err(wal_failure)?;
    let follow = point.timeline.as_deref();
    let mut window = window_of(&listing, &manifest, follow);
    if !named.is_empty() {
        check_restore_point(&target, &named, &manifest, &window)?;
    }
    if let Target::Time(t) = target
        && window.latest.is_some_and(|latest| t <= latest)
        && let Some(last) = last_transaction_end(&repo, sysid, &listing, &manifest, follow).await
    {
        // The listing's latest is when the last segment was archived, later than its last
        // transaction: a time in between would pass here and never be reached.
        window.latest = Some(last);
    }
    check_target(&target, &manifest.id, &window)?;
    let consistent = consistent_lsn(&manifest);
    let end_lsn = match target {
        Target::Lsn(lsn) => format_lsn(lsn),
        _ => match named.iter().find(|&&lsn| lsn >= consistent) {
            Some(&lsn) => format_lsn(lsn),
            None => window.latest_lsn.clone(),
        },
    };
    Ok((
        info,
        PointInTimeStatus {
            target: target.to_string(),
            window: Some(window),
            end_lsn: Some(end_lsn),
            ..Default::default()
        },
    ))
}

fn system_identifier(manifest: &BackupManifest) -> Result<u64, Failure> {
    manifest.system_identifier.parse().map_err(|_| {
        Failure::new(
            Reason::UnsupportedBackup,
            format!(
                "backup {}: system identifier {:?} is not a number",
                manifest.id, manifest.system_identifier
            ),
        )
    })
}

fn wal_failure(e: WalError) -> Failure {
    match e {
        WalError::Repo(e) => Failure::from(e),
        e => Failure::new(Reason::RepositoryError, format!("listing the WAL: {e}")),
    }
}

/// The LSNs of the archived restore points named as `target` is (oldest first), from the
/// index `irctl wal push` keeps for the system of `manifest`; empty for other targets, and
/// for a name the index lacks (WAL archived before restore points were indexed: only replay
/// can place it then).
async fn restore_points(
    repo: &Repository,
    manifest: &BackupManifest,
    target: &Target,
) -> Result<Vec<u64>, Failure> {
    let Target::Name(name) = target else {
        return Ok(Vec::new());
    };
    let points = repo
        .wal(system_identifier(manifest)?)
        .restore_points_named(name)
        .await
        .map_err(wal_failure)?;
    Ok(points.iter().filter_map(|p| p.lsn_value()).collect())
}

/// Checks a restore point target against the window, by the LSN of the first restore point of
/// that name after the backup is consistent (where replay stops).
fn check_restore_point(
    target: &Target,
    named: &[u64],
    manifest: &BackupManifest,
    window: &RecoverableWindow,
) -> Result<(), Failure> {
    let consistent = consistent_lsn(manifest);
    let Some(&lsn) = named.iter().find(|&&lsn| lsn >= consistent) else {
        return Err(Failure::new(
            Reason::PointInTimeBeforeBackup,
            format!(
                "{target} lies before backup {} is consistent ({}); it can recover {window}",
                manifest.id,
                format_lsn(consistent)
            ),
        ));
    };
    check_target(&Target::Lsn(lsn), &manifest.id, window).map_err(|mut f| {
        f.message = format!("{target} at {}: {}", format_lsn(lsn), f.message);
        f
    })
}

/// How many segments back from the end of a window its last transaction is looked for.
const LAST_TRANSACTION_LOOKBACK: usize = 4;

/// When the last transaction archived in `manifest`'s window ended: PostgreSQL stops a
/// recovery to a time at the first commit or abort after it, so no later time can be reached.
/// Read from the window's last segments; `None` when none of them holds one, or they cannot be
/// read (the listing's archive time then stands).
async fn last_transaction_end(
    repo: &Repository,
    sysid: u64,
    listing: &WalListing,
    manifest: &BackupManifest,
    follow: Option<&str>,
) -> Option<Timestamp> {
    let size = listing.segment_size?;
    let window = listing.window_following(manifest, follow);
    window.latest?;
    let last = window.end_lsn.checked_sub(1)? / size;
    let first = window.start_lsn / size;
    let wal = repo.wal(sysid);
    for segno in (first..=last).rev().take(LAST_TRANSACTION_LOOKBACK) {
        let name = SegmentName::from_segno(window.timeline, segno, size).to_string();
        let bytes = match wal.fetch(&name).await {
            Ok(bytes) => bytes,
            Err(e) => {
                tracing::warn!(segment = %name, error = %e, "cannot read the end of the window");
                return None;
            }
        };
        if let Some(end) = ir_repository::wal::last_transaction_end(&bytes) {
            return Some(timestamp(end));
        }
    }
    None
}

/// What `manifest`'s backup can be recovered to from the WAL of `listing`, following the
/// timeline `follow` (`recovery_target_timeline`; `None`: latest).
fn window_of(
    listing: &WalListing,
    manifest: &BackupManifest,
    follow: Option<&str>,
) -> RecoverableWindow {
    let window = listing.window_following(manifest, follow);
    // The segment after the window is missing; it is a gap when WAL beyond it is archived.
    let gap = listing.gaps().into_iter().any(|g| {
        g.timeline == window.timeline && Some(&g.first_missing) == window.first_missing.as_ref()
    });
    recoverable_window(&window, gap)
}

/// The recoverable window of each of `backups`, listing the WAL of each system once; `None`
/// for a backup whose WAL could not be listed.
pub async fn recoverable_windows(
    repo: &Repository,
    backups: &[BackupManifest],
) -> Vec<Option<RecoverableWindow>> {
    let mut listings: HashMap<u64, Option<WalListing>> = HashMap::new();
    let mut windows = Vec::with_capacity(backups.len());
    for manifest in backups {
        let Ok(sysid) = system_identifier(manifest) else {
            windows.push(None);
            continue;
        };
        let listing = match listings.entry(sysid) {
            Entry::Occupied(known) => known.into_mut(),
            Entry::Vacant(new) => {
                let listing = repo.wal(sysid).list().await;
                if let Err(e) = &listing {
                    tracing::warn!(system_identifier = sysid, error = %e, "listing the WAL failed");
                }
                new.insert(listing.ok())
            }
        };
        windows.push(listing.as_ref().map(|l| window_of(l, manifest, None)));
    }
    windows
}

fn timestamp(t: time::OffsetDateTime) -> Timestamp {
    i64::try_from(t.unix_timestamp_nanos())
        .ok()
        .and_then(|ns| Timestamp::from_nanosecond(ns as i128).ok())
        .unwrap_or(Timestamp::UNIX_EPOCH)
}

fn recoverable_window(w: &Window, gap: bool) -> RecoverableWindow {
    RecoverableWindow {
        earliest: timestamp(w.earliest),
        earliest_lsn: format_lsn(w.start_lsn),
        latest: w.latest.map(timestamp),
        latest_lsn: format_lsn(w.end_lsn),
        first_missing_segment: w.first_missing.clone().filter(|_| gap),
    }
}

/// Where a backup becomes consistent: nothing before it can be recovered from it.
fn consistent_lsn(m: &BackupManifest) -> u64 {
    m.stop_lsn
        .as_deref()
        .or(Some(&m.start_lsn))
        .and_then(parse_lsn)
        .unwrap_or(0)
}

/// The newest backup that ends before `target` (`backups` oldest first); for a transaction or
/// a restore point, which only replay can place, the newest.
fn choose_backup<'a>(
    backups: &'a [BackupManifest],
    target: &Target,
) -> Result<&'a BackupManifest, Failure> {
    let newest = backups
        .last()
        .ok_or_else(|| Failure::new(Reason::BackupNotFound, "the repository holds no backup"))?;
    let before = |ends_before: &dyn Fn(&BackupManifest) -> bool| {
        backups
            .iter()
            .rev()
            .find(|m| ends_before(m))
            .ok_or_else(|| {
                let oldest = &backups[0];
                Failure::new(
                    Reason::PointInTimeBeforeBackup,
                    format!(
                        "{target} lies before the end of the oldest backup, {} ({}, {})",
                        oldest.id,
                        oldest.consistent_by(),
                        format_lsn(consistent_lsn(oldest))
                    ),
                )
            })
    };
    match target {
        Target::Time(t) => before(&|m| timestamp(m.consistent_by()) <= *t),
        Target::Lsn(lsn) => before(&|m| consistent_lsn(m) <= *lsn),
        Target::Xid(_) | Target::Name(_) | Target::Immediate => Ok(newest),
    }
}

/// Refuses a target the backup's window cannot reach, naming the window, or the missing
/// segment when a gap cuts the window short.
fn check_target(target: &Target, id: &str, window: &RecoverableWindow) -> Result<(), Failure> {
    let before = match target {
        Target::Time(t) => *t < window.earliest,
        Target::Lsn(lsn) => *lsn < parse_lsn(&window.earliest_lsn).unwrap_or(0),
        Target::Xid(_) | Target::Name(_) | Target::Immediate => false,
    };
    if before {
        return Err(Failure::new(
            Reason::PointInTimeBeforeBackup,
            format!("{target} lies before backup {id} is consistent; it can recover {window}"),
        ));
    }
    let after = match target {
        Target::Time(t) => window.latest.is_none_or(|latest| *t > latest),
        Target::Lsn(lsn) => *lsn > parse_lsn(&window.latest_lsn).unwrap_or(0),
        Target::Xid(_) | Target::Name(_) | Target::Immediate => false,
    };
    if !after {
        return Ok(());
    }
    Err(match &window.first_missing_segment {
        Some(segment) => Failure::new(
            Reason::WalSegmentMissing,
            format!(
                "{target} lies beyond WAL segment {segment}, which the repository lacks; \
                 backup {id} can recover {window}"
            ),
        ),
        None => {
            // A time is reached only at a commit or abort after it.
            let end = match target {
                Target::Time(_) => "the last transaction in the archived WAL",
                _ => "the end of the archived WAL",
            };
            Failure::new(
                Reason::PointInTimeNotArchived,
                format!("{target} lies after {end}; backup {id} can recover {window}"),
            )
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use ir_repository::RepoError;

    fn backup(id: &str, created_secs: i64, stop_lsn: &str) -> BackupManifest {
        BackupManifest {
            format_version: ir_repository::manifest::FORMAT_VERSION,
            id: id.into(),
            created: time::OffsetDateTime::from_unix_timestamp(created_secs).unwrap(),
            ended: None,
            pg_version: "15".into(),
            system_identifier: "7".into(),
            start_lsn: "0/1000028".into(),
            stop_lsn: Some(stop_lsn.into()),
            timeline: 1,
            total_size: 0,
            chunk_size: 64 * 1024,
            root_mode: 0o700,
            root_uid: 26,
            root_gid: 26,
            labels: Default::default(),
            entries: vec![],
        }
    }

    fn at(secs: i64) -> Timestamp {
        Timestamp::from_second(secs).unwrap()
    }

    #[test]
    fn the_newest_backup_that_ends_before_the_target_is_chosen() {
        let backups = [
            backup("a", 1000, "0/2000100"),
            backup("b", 2000, "0/5000100"),
        ];
        let chosen = |t: Target| choose_backup(&backups, &t).map(|m| m.id.clone());
        assert_eq!(chosen(Target::Time(at(1500))).unwrap(), "a");
        assert_eq!(chosen(Target::Time(at(2000))).unwrap(), "b");
        assert_eq!(chosen(Target::Lsn(0x4000000)).unwrap(), "a");
        assert_eq!(chosen(Target::Lsn(0x5000100)).unwrap(), "b");
        assert_eq!(chosen(Target::Name("before".into())).unwrap(), "b");
        let f = chosen(Target::Time(at(999))).unwrap_err();
        assert_eq!(f.reason, Reason::PointInTimeBeforeBackup);
        assert!(f.message.contains("oldest backup, a"), "{}", f.message);
        let f = choose_backup(&[], &Target::Immediate).unwrap_err();
        assert_eq!(f.reason, Reason::BackupNotFound);
    }

    #[test]
    fn a_backup_counts_from_when_it_ended_not_when_it_started() {
        let mut long = backup("b", 2000, "0/5000100");
        long.ended = Some(time::OffsetDateTime::from_unix_timestamp(2600).unwrap());
        let backups = [backup("a", 1000, "0/2000100"), long];
        let chosen = |t: Target| choose_backup(&backups, &t).map(|m| m.id.clone());
        // During b's run b is not consistent yet: a replays to it.
        assert_eq!(chosen(Target::Time(at(2300))).unwrap(), "a");
        assert_eq!(chosen(Target::Time(at(2600))).unwrap(), "b");
    }

    #[test]
    fn a_restore_point_is_checked_by_the_first_of_its_name_after_the_backup() {
        let b = backup("b", 2000, "0/5000100");
        let window = RecoverableWindow {
            earliest: at(2000),
            earliest_lsn: "0/5000100".into(),
            latest: Some(at(5000)),
            latest_lsn: "0/9000000".into(),
            first_missing_segment: None,
        };
        let name = Target::Name("rp".into());
        assert!(check_restore_point(&name, &[0x3000000, 0x6000000], &b, &window).is_ok());
        let f = check_restore_point(&name, &[0x3000000], &b, &window).unwrap_err();
        assert_eq!(f.reason, Reason::PointInTimeBeforeBackup, "{}", f.message);
        let f = check_restore_point(&name, &[0xA000000], &b, &window).unwrap_err();
        assert_eq!(f.reason, Reason::PointInTimeNotArchived, "{}", f.message);
        assert!(
            f.message.starts_with("restore point \"rp\" at 0/A000000"),
            "{}",
            f.message
        );
    }

    #[test]
    fn a_target_outside_the_window_is_refused_naming_it() {
        let window = RecoverableWindow {
            earliest: at(1000),
            earliest_lsn: "0/2000100".into(),
            latest: Some(at(5000)),
            latest_lsn: "0/9000000".into(),
            first_missing_segment: None,
        };
        let check = |t: Target, w: &RecoverableWindow| check_target(&t, "b", w);
        assert!(check(Target::Time(at(3000)), &window).is_ok());
        assert!(check(Target::Lsn(0x9000000), &window).is_ok());
        assert!(check(Target::Xid(900), &window).is_ok());
        for early in [Target::Time(at(999)), Target::Lsn(0x2000000)] {
            let f = check(early, &window).unwrap_err();
            assert_eq!(f.reason, Reason::PointInTimeBeforeBackup);
            assert!(
                f.message.contains("0/9000000"),
                "names the window: {}",
                f.message
            );
        }
        for late in [Target::Time(at(5001)), Target::Lsn(0x9000001)] {
            let f = check(late, &window).unwrap_err();
            assert_eq!(f.reason, Reason::PointInTimeNotArchived, "{}", f.message);
        }
        let gap = RecoverableWindow {
            first_missing_segment: Some("000000010000000000000009".into()),
            ..window.clone()
        };
        let f = check(Target::Time(at(6000)), &gap).unwrap_err();
        assert_eq!(f.reason, Reason::WalSegmentMissing);
        assert!(
            f.message.contains("000000010000000000000009"),
            "{}",
            f.message
        );
        let nothing_archived = RecoverableWindow {
            latest: None,
            latest_lsn: "0/2000100".into(),
            ..window
        };
        let f = check(Target::Time(at(1001)), &nothing_archived).unwrap_err();
        assert_eq!(f.reason, Reason::PointInTimeNotArchived);
    }

    #[test]
    fn repository_faults_read_as_the_agent_reports_them() {
        let url = "file:///srv/repo".to_owned();
        let f = Failure::from(RepoError::NotARepository { url: url.clone() });
        assert_eq!((f.reason.as_str(), f.transient), ("NotARepository", false));
        assert!(f.message.contains(&url), "{}", f.message);
        let f = Failure::from(RepoError::UnsupportedFormat {
            url,
            found: 9,
            supported: 1,
        });
        assert_eq!(f.reason, "UnsupportedRepositoryFormat");
    }
}

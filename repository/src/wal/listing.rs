//! What one system's WAL archive holds, and what it makes of a backup: the recoverable window
//! and the gaps.

use std::collections::{BTreeMap, BTreeSet};

use serde::Serialize;
use time::OffsetDateTime;

use super::name::SegmentName;
use crate::manifest::BackupManifest;

/// One stored file as listed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct StoredWal {
    pub name: String,
    /// When the store last wrote the object (its last-modified time). A segment is archived
    /// once it is complete, so this is an upper bound of the time of every commit it holds.
    #[serde(with = "time::serde::rfc3339")]
    pub archived: OffsetDateTime,
    /// Bytes of the stored object (compressed, with its header).
    pub stored_size: u64,
}

/// The archive of one timeline.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct TimelineWal {
    /// Complete segments by segment number.
    pub segments: BTreeMap<u64, StoredWal>,
    /// `.partial` segments archived at promotion, by segment number.
    pub partial: BTreeMap<u64, StoredWal>,
    /// Backup history files (`.backup`).
    pub backup_files: Vec<StoredWal>,
}

/// Everything archived for one system identifier, as [`super::WalArchive::list`] finds it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct WalListing {
    pub system_identifier: u64,
    /// The segment size, read from a stored segment's header; `None` when nothing is stored (or
    /// no segment could be read: `segments` are then empty and every segment is in `unreadable`).
    pub segment_size: Option<u64>,
    pub timelines: BTreeMap<u32, TimelineWal>,
    /// Timelines whose history file is stored.
    pub history: BTreeSet<u32>,
    /// What the readable history files say: per timeline, its ancestors oldest first, each with
    /// the LSN where the next timeline branched off it.
    #[serde(skip)]
    pub ancestors: BTreeMap<u32, Vec<(u32, u64)>>,
    /// Stored objects whose name is no WAL file's, or which sit under another timeline's
    /// directory, by path; and segments that could not be placed because no segment could be
    /// read to learn the segment size.
    pub unreadable: Vec<String>,
}

/// What a backup can be recovered to with the archived WAL.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Window {
    pub timeline: u32,
    /// The backup's consistency point: its stop LSN, or its start LSN when it has none.
    pub start_lsn: u64,
    /// The backup's creation time: no earlier point can be recovered to.
    #[serde(with = "time::serde::rfc3339")]
    pub earliest: OffsetDateTime,
    /// The end of the WAL archived contiguously from the backup's start segment (the backup's
    /// consistency point when that ends before it).
    pub end_lsn: u64,
    /// When the last segment of that run was archived: an upper bound of the time of the last
    /// commit it holds. `None` when no WAL past the backup is archived.
    #[serde(with = "time::serde::rfc3339::option")]
    pub latest: Option<OffsetDateTime>,
    /// The first segment after the contiguous run: what stops recovery there. `None` only when
    /// the segment size is unknown (nothing of this system could be read).
    pub first_missing: Option<String>,
}

/// Missing segments of a timeline, between the first and the last stored.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Gap {
    pub timeline: u32,
    pub first_missing: String,
    pub last_missing: String,
}

impl WalListing {
    /// What `backup` can be recovered to: from its consistency point (`stop_lsn`, or `start_lsn`
    /// when absent; at the earliest the time it was consistent by, [`BackupManifest::consistent_by`]) to the end of the WAL archived
    /// contiguously from its start segment, across the timelines that branched off the backup's
    /// after it, up to the latest one (as PostgreSQL follows `recovery_target_timeline =
    /// latest`). A backup of another system, or whose LSNs do not parse, gets the window of no
    /// archived WAL.
    pub fn window(&self, backup: &BackupManifest) -> Window {
        self.window_following(backup, None)
    }

    /// [`WalListing::window`] for a recovery that follows `follow` (its
    /// `recovery_target_timeline`): `latest` (or `None`) as there, `current` the backup's own
    /// timeline only, a number the timelines up to that one (only the backup's own when that
    /// one does not descend from it).
    pub fn window_following(&self, backup: &BackupManifest, follow: Option<&str>) -> Window {
        let start = crate::parse_lsn(&backup.start_lsn).unwrap_or(0);
        let consistent = backup
            .stop_lsn
            .as_deref()
            .and_then(crate::parse_lsn)
            .unwrap_or(start);
        let mut window = Window {
            timeline: backup.timeline,
            start_lsn: consistent,
            earliest: backup.consistent_by(),
            end_lsn: consistent,
            latest: None,
            first_missing: None,
        };
        let Some(size) = self.segment_size else {
            return window;
        };
        let mut next = start / size;
        let mut latest = None;
        let ours = backup.system_identifier == self.system_identifier.to_string();
        let mut timeline = backup.timeline;
        let path = match follow {
            None | Some("latest") => self.path_from(backup.timeline, consistent),
            Some(number) => match number.parse::<u32>() {
                Ok(n) if n != backup.timeline => self.path_to(n, backup.timeline, consistent),
                _ => vec![(backup.timeline, None)],
            },
        };
        for (tli, branched_at) in path {
            // The segment of the branch point is read from the new timeline. Never below where
            // the walk is: a manifest whose start lies after its stop must not turn the range
            // around (a panic).
            let until = branched_at.map_or(u64::MAX, |lsn| lsn / size).max(next);
            if let Some(tl) = self.timelines.get(&tli).filter(|_| ours) {
                for (&segno, stored) in tl.segments.range(next..until) {
                    if segno != next {
                        break;
                    }
                    latest = latest.max(Some(stored.archived));
                    next += 1;
                }
            }
            timeline = tli;
            if next < until {
                break;
            }
        }
        window.timeline = timeline;
        window.first_missing = Some(SegmentName::from_segno(timeline, next, size).to_string());
        let end = next.saturating_mul(size);
        if end > consistent {
            window.end_lsn = end;
            window.latest = latest;
        }
        window
    }

    /// The timelines recovery from `timeline` at `from` goes through, each with where the next
    /// one branched off it (none for the last): to the newest timeline whose history passes
    /// through `timeline` after `from`.
    fn path_from(&self, timeline: u32, from: u64) -> Vec<(u32, Option<u64>)> {
        let newest = self.ancestors.iter().rev().find_map(|(&tli, ancestors)| {
            let i = ancestors
                .iter()
                .position(|&(t, branched_at)| t == timeline && branched_at >= from)?;
            Some((tli, &ancestors[i..]))
        });
        match newest {
            Some((tli, ancestors)) => ancestors
                .iter()
                .map(|&(t, at)| (t, Some(at)))
                .chain([(tli, None)])
                .collect(),
            None => vec![(timeline, None)],
        }
    }

    /// The timelines from `timeline` at `from` to `to`, as [`WalListing::path_from`] gives
    /// them; only `timeline` when `to` does not branch off it after `from`.
    fn path_to(&self, to: u32, timeline: u32, from: u64) -> Vec<(u32, Option<u64>)> {
        let path = self.ancestors.get(&to).and_then(|ancestors| {
            let i = ancestors
                .iter()
                .position(|&(t, branched_at)| t == timeline && branched_at >= from)?;
            Some(&ancestors[i..])
        });
        match path {
            Some(ancestors) => ancestors
                .iter()
                .map(|&(t, at)| (t, Some(at)))
                .chain([(to, None)])
                .collect(),
            None => vec![(timeline, None)],
        }
    }

    /// Per timeline, the runs of segments missing between the first and the last stored.
    pub fn gaps(&self) -> Vec<Gap> {
        let Some(size) = self.segment_size else {
            return Vec::new();
        };
        let mut gaps = Vec::new();
        for (&timeline, tl) in &self.timelines {
            let numbers: Vec<u64> = tl.segments.keys().copied().collect();
            for pair in numbers.windows(2) {
                if pair[1] > pair[0] + 1 {
                    gaps.push(Gap {
                        timeline,
                        first_missing: SegmentName::from_segno(timeline, pair[0] + 1, size)
                            .to_string(),
                        last_missing: SegmentName::from_segno(timeline, pair[1] - 1, size)
                            .to_string(),
                    });
                }
            }
        }
        gaps
    }

    /// The segment holding `lsn`, named on `timeline`; `None` when the segment size is unknown.
    pub fn segment_of(&self, timeline: u32, lsn: u64) -> Option<String> {
        let size = self.segment_size?;
        Some(SegmentName::from_segno(timeline, lsn / size, size).to_string())
    }
}

/// The history file of `timeline`, its lines `<parent timeline> <LSN> <reason>` (`#`
/// comments): the ancestors oldest first, each with the LSN where the next timeline branched
/// off it. Timelines must rise and stay below `timeline`, and LSNs must not fall.
pub(super) fn parse_history(text: &str, timeline: u32) -> Result<Vec<(u32, u64)>, String> {
    let mut ancestors: Vec<(u32, u64)> = Vec::new();
    for line in text.lines() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let mut fields = line.split_whitespace();
        let (Some(tli), Some(lsn)) = (fields.next(), fields.next()) else {
            return Err(format!("line {line:?} has no timeline and LSN"));
        };
        let tli: u32 = tli
            .parse()
            .map_err(|_| format!("line {line:?}: {tli:?} is not a timeline"))?;
        let lsn =
            crate::parse_lsn(lsn).ok_or_else(|| format!("line {line:?}: {lsn:?} is not an LSN"))?;
        if tli >= timeline {
            return Err(format!(
                "line {line:?}: timeline {tli} is not an ancestor of {timeline}"
            ));
        }
        if let Some(&(last_tli, last_lsn)) = ancestors.last()
            && (tli <= last_tli || lsn < last_lsn)
        {
            return Err(format!("line {line:?} does not follow the line before it"));
        }
        ancestors.push((tli, lsn));
    }
    Ok(ancestors)
}

#[cfg(test)]
mod tests {
    use super::*;
    use time::macros::datetime;

    pub(super) const MIB16: u64 = 16 << 20;

    fn stored(name: &str, minute: u8) -> StoredWal {
        StoredWal {
            name: name.to_string(),
            archived: datetime!(2026-11-25 07:00 UTC) + time::Duration::minutes(minute.into()),
            stored_size: 100,
        }
    }

    /// A listing of system 42, 16 MiB segments, holding `segnos` of timeline `tli`.
    pub(super) fn listing(tli: u32, segnos: &[u64]) -> WalListing {
        let mut tl = TimelineWal::default();
        for (i, &n) in segnos.iter().enumerate() {
            let name = SegmentName::from_segno(tli, n, MIB16).to_string();
            tl.segments.insert(n, stored(&name, i as u8));
        }
        WalListing {
            system_identifier: 42,
            segment_size: Some(MIB16),
            timelines: BTreeMap::from([(tli, tl)]),
            history: BTreeSet::new(),
            ancestors: BTreeMap::new(),
            unreadable: Vec::new(),
        }
    }

    pub(super) fn backup(start: &str, stop: Option<&str>, tli: u32) -> BackupManifest {
        BackupManifest {
            format_version: 1,
            id: "20261125T063512Z-3fa2".into(),
            created: datetime!(2026-11-25 06:35:12 UTC),
            ended: None,
            pg_version: "15".into(),
            system_identifier: "42".into(),
            start_lsn: start.into(),
            stop_lsn: stop.map(str::to_string),
            timeline: tli,
            total_size: 0,
            chunk_size: 1 << 20,
            root_mode: 0o700,
            root_uid: 26,
            root_gid: 26,
            labels: Default::default(),
            entries: vec![],
        }
    }

    #[test]
    fn the_window_runs_to_the_first_missing_segment() {
        // Segments 2..=5 and 7 of timeline 1; the backup starts in 2 and is consistent in 3.
        let l = listing(1, &[1, 2, 3, 4, 5, 7]);
        let w = l.window(&backup("0/2000028", Some("0/3000100"), 1));
        assert_eq!(w.timeline, 1);
        assert_eq!(w.start_lsn, 0x3000100);
        assert_eq!(w.earliest, datetime!(2026-11-25 06:35:12 UTC));
        assert_eq!(w.end_lsn, 0x6000000);
        assert_eq!(w.latest, Some(datetime!(2026-11-25 07:04 UTC)));
        assert_eq!(w.first_missing.as_deref(), Some("000000010000000000000006"));
        assert_eq!(
            l.gaps(),
            [Gap {
                timeline: 1,
                first_missing: "000000010000000000000006".into(),
                last_missing: "000000010000000000000006".into(),
            }]
        );
        assert_eq!(
            l.segment_of(1, 0x3000100).as_deref(),
            Some("000000010000000000000003")
        );
    }

    #[test]
    fn no_wal_past_the_backup_is_no_latest() {
        // The start segment is missing: nothing archived counts.
        let l = listing(1, &[3, 4]);
        let w = l.window(&backup("0/2000028", Some("0/3000100"), 1));
        assert_eq!((w.end_lsn, w.latest), (0x3000100, None));
        assert_eq!(w.first_missing.as_deref(), Some("000000010000000000000002"));
        // Without a stop LSN the start LSN is the consistency point.
        let w = l.window(&backup("0/5000028", None, 1));
        assert_eq!(
            (w.start_lsn, w.end_lsn, w.latest),
            (0x5000028, 0x5000028, None)
        );
        // Another timeline, another system: nothing.
        let w = l.window(&backup("0/3000028", None, 2));
        assert_eq!((w.end_lsn, w.latest), (0x3000028, None));
        let mut other = backup("0/3000028", None, 1);
        other.system_identifier = "43".into();
        assert_eq!(l.window(&other).latest, None);
        // Nothing readable: no segment size, no names.
        let empty = WalListing {
            segment_size: None,
            timelines: BTreeMap::new(),
            ..l
        };
        let w = empty.window(&backup("0/3000028", None, 1));
        assert_eq!((w.end_lsn, w.first_missing), (0x3000028, None));
        assert!(empty.gaps().is_empty());
    }

    #[test]
    fn runs_cross_log_boundaries() {
        // 0/FF000000 is the last 16 MiB segment of log 0; 1/00000000 the first of log 1.
        let l = listing(3, &[0xFE, 0xFF, 0x100, 0x101, 0x104]);
        let w = l.window(&backup("0/FE000028", Some("0/FF000100"), 3));
        assert_eq!(w.end_lsn, 0x1_0200_0000);
        assert_eq!(w.first_missing.as_deref(), Some("000000030000000100000002"));
        assert_eq!(
            l.gaps(),
            [Gap {
                timeline: 3,
                first_missing: "000000030000000100000002".into(),
                last_missing: "000000030000000100000003".into(),
            }]
        );
    }
}

#[cfg(test)]
mod timeline_tests {
    use super::tests::{MIB16, backup, listing};
    use super::*;

    #[test]
    fn history_files_are_parsed_strictly() {
        let text = "1\t0/5000100\tno recovery target specified\n\n# c\n2\t0/9000000\tbefore x\n";
        assert_eq!(
            parse_history(text, 3),
            Ok(vec![(1, 0x5000100), (2, 0x9000000)])
        );
        for bad in [
            "1",
            "x\t0/1\tr",
            "1\tzz\tr",
            "2\t0/5\tr\n1\t0/6\tr",
            "1\t0/6\tr\n2\t0/5\tr",
            "3\t0/6\tr",
            "1\t0/6\tr\n4\t0/7\tr",
        ] {
            assert!(parse_history(bad, 3).is_err(), "{bad:?}");
        }
    }

    /// Timeline 1 segments 3..=5, branched at 0/5000100 into timeline 2 (segments 5..=7).
    fn branched() -> WalListing {
        let mut l = listing(1, &[3, 4, 5]);
        let two = listing(2, &[5, 6, 7]);
        l.timelines.extend(two.timelines);
        l.history.insert(2);
        l.ancestors.insert(2, vec![(1, 0x5000100)]);
        l
    }

    #[test]
    fn the_window_follows_a_timeline_that_branched_after_the_backup() {
        let w = branched().window(&backup("0/3000028", Some("0/3000100"), 1));
        assert_eq!(w.timeline, 2);
        assert_eq!(w.end_lsn, 8 * MIB16);
        assert_eq!(w.first_missing.as_deref(), Some("000000020000000000000008"));
    }

    #[test]
    fn a_gap_before_the_branch_stops_the_window_on_the_old_timeline() {
        let mut l = branched();
        l.timelines.get_mut(&1).unwrap().segments.remove(&4);
        let w = l.window(&backup("0/3000028", Some("0/3000100"), 1));
        assert_eq!(w.timeline, 1);
        assert_eq!(w.end_lsn, 4 * MIB16);
        assert_eq!(w.first_missing.as_deref(), Some("000000010000000000000004"));
    }

    #[test]
    fn a_backup_whose_start_lies_after_its_stop_gets_a_window_not_a_panic() {
        // Manifests are validated before use; the window does not rely on it.
        let w = branched().window(&backup("0/6000028", Some("0/5000100"), 1));
        assert!(w.end_lsn >= 0x5000100, "{w:?}");
    }

    #[test]
    fn a_timeline_that_branched_before_the_backup_is_not_followed() {
        let mut l = branched();
        l.ancestors.insert(2, vec![(1, 0x2000000)]);
        let w = l.window(&backup("0/3000028", Some("0/3000100"), 1));
        assert_eq!(w.timeline, 1);
        // Segment 6 of timeline 1 was never archived: the old timeline ends there.
        assert_eq!(w.end_lsn, 6 * MIB16);
    }
}

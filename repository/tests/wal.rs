//! The WAL archive on a file:// repository: push, fetch, list, verify and prune with segments
//! made by hand (1 MiB, PostgreSQL's smallest segment size), and hostile stored objects.
//! `cli/tests/wal.rs` runs the same against a real PostgreSQL server.

mod common;

use std::path::{Path, PathBuf};

use common::{SEG, SYSID, fuzz_cases, segment, temp_repo};
use ir_repository::wal::{Gap, PushOutcome, WalError};
use ir_repository::{BackupManifest, Repository};
use proptest::prelude::*;

fn object_path(dir: &Path, sysid: u64, rel: &str) -> PathBuf {
    dir.join("repo/wal").join(sysid.to_string()).join(rel)
}

fn stored_files(dir: &Path) -> Vec<String> {
    let root = dir.join("repo/wal");
    let mut out = Vec::new();
    let mut stack = vec![root.clone()];
    while let Some(d) = stack.pop() {
        let Ok(entries) = std::fs::read_dir(&d) else {
            continue;
        };
        for e in entries {
            let p = e.unwrap().path();
            if p.is_dir() {
                stack.push(p);
            } else {
                out.push(p.strip_prefix(&root).unwrap().display().to_string());
            }
        }
    }
    out.sort();
    out
}

async fn push_all(repo: &Repository, timeline: u32, segnos: impl IntoIterator<Item = u64>) {
    for n in segnos {
        let (name, bytes) = segment(timeline, n, SYSID, n as u8);
        let outcome = repo.wal(SYSID).push(&name, &bytes).await.unwrap();
        assert_eq!(outcome, PushOutcome::Stored, "{name}");
    }
}

fn backup(start_lsn: &str, stop_lsn: &str, timeline: u32) -> BackupManifest {
    BackupManifest {
        format_version: 1,
        id: "20261125T063512Z-3fa2".into(),
        created: time::macros::datetime!(2026-11-25 06:35:12 UTC),
        ended: None,
        pg_version: "15".into(),
        system_identifier: SYSID.to_string(),
        start_lsn: start_lsn.into(),
        stop_lsn: Some(stop_lsn.into()),
        timeline,
        total_size: 0,
        chunk_size: common::CHUNK,
        root_mode: 0o700,
        root_uid: 26,
        root_gid: 26,
        labels: Default::default(),
        entries: vec![],
    }
}

#[tokio::test]
async fn push_is_idempotent_and_fetch_gives_the_bytes_back() {
    let dir = tempfile::tempdir().unwrap();
    let repo = temp_repo(dir.path()).await;
    let wal = repo.wal(SYSID);
    let (name, bytes) = segment(1, 3, SYSID, 0xAB);
    assert_eq!(wal.push(&name, &bytes).await.unwrap(), PushOutcome::Stored);
    assert_eq!(
        wal.push(&name, &bytes).await.unwrap(),
        PushOutcome::AlreadyStored
    );
    assert_eq!(wal.fetch(&name).await.unwrap(), bytes);
    assert_eq!(
        stored_files(dir.path()),
        [format!("{SYSID}/00000001/{name}.zst")]
    );
    // Compressed: the fill byte repeats.
    let stored = std::fs::metadata(object_path(
        dir.path(),
        SYSID,
        &format!("00000001/{name}.zst"),
    ))
    .unwrap()
    .len();
    assert!(stored < SEG / 10, "{stored}");

    let missing = wal.fetch("000000010000000000000004").await.unwrap_err();
    assert!(
        matches!(&missing, WalError::Missing { name } if name == "000000010000000000000004"),
        "{missing:?}"
    );
    // Another system's archive does not hold it.
    let other = repo.wal(SYSID + 1).fetch(&name).await.unwrap_err();
    assert!(matches!(other, WalError::Missing { .. }), "{other:?}");
    assert_eq!(repo.wal_systems().await.unwrap(), [SYSID]);
}

#[tokio::test]
async fn other_bytes_under_a_stored_name_are_a_conflict() {
    let dir = tempfile::tempdir().unwrap();
    let repo = temp_repo(dir.path()).await;
    let wal = repo.wal(SYSID);
    let (name, bytes) = segment(1, 3, SYSID, 1);
    wal.push(&name, &bytes).await.unwrap();
    let (_, other) = segment(1, 3, SYSID, 2);
    let err = wal.push(&name, &other).await.unwrap_err();
    assert!(matches!(err, WalError::Conflict { .. }), "{err:?}");
    assert!(err.to_string().contains(&name), "{err}");
    assert!(err.to_string().contains(repo.url()), "{err}");
    assert_eq!(wal.fetch(&name).await.unwrap(), bytes);
}

#[tokio::test]
async fn what_is_not_the_named_segment_is_refused_before_anything_is_stored() {
    let dir = tempfile::tempdir().unwrap();
    let repo = temp_repo(dir.path()).await;
    let wal = repo.wal(SYSID);
    let (name, good) = segment(2, 5, SYSID, 0);
    for bad_name in [
        "../../../../etc/passwd",
        "00000002000000000000000/",
        "00000002/../00000000000005",
        "000000020000000000000005.zst",
        "00000002000000000000000s",
        "00000002000000000000005",
        "",
    ] {
        let err = wal.push(bad_name, &good).await.unwrap_err();
        assert!(
            matches!(err, WalError::InvalidName { .. }),
            "{bad_name:?}: {err:?}"
        );
        let err = wal.fetch(bad_name).await.unwrap_err();
        assert!(
            matches!(err, WalError::InvalidName { .. }),
            "{bad_name:?}: {err:?}"
        );
    }
    type Mutation = Box<dyn Fn(&mut Vec<u8>)>;
    let cases: Vec<(&str, Mutation)> = vec![
        (
            "timeline 3",
            Box::new(|b| b[4..8].copy_from_slice(&3u32.to_le_bytes())),
        ),
        (
            "LSN 0/600000",
            Box::new(|b| b[8..16].copy_from_slice(&(6 * SEG).to_le_bytes())),
        ),
        ("belongs to system", Box::new(|b| b[24] ^= 1)),
        (
            "segments of",
            Box::new(|b| b[32..36].copy_from_slice(&(16u32 << 20).to_le_bytes())),
        ),
        (
            "long header",
            Box::new(|b| b[2..4].copy_from_slice(&0u16.to_le_bytes())),
        ),
        (
            "power of two",
            Box::new(|b| b.truncate(SEG as usize - 8192)),
        ),
        ("power of two", Box::new(|b| b.truncate(0))),
    ];
    for (expect, mutate) in cases {
        let mut bad = good.clone();
        mutate(&mut bad);
        let err = wal.push(&name, &bad).await.unwrap_err();
        assert!(matches!(err, WalError::Invalid { .. }), "{expect}: {err:?}");
        assert!(err.to_string().contains(expect), "{expect}: {err}");
        assert!(err.to_string().contains(&name), "{err}");
    }
    // A segment is not a history file, nor the other way round.
    let err = wal.push("00000002.history", &good).await.unwrap_err();
    assert!(matches!(err, WalError::Invalid { .. }), "{err:?}");
    assert!(stored_files(dir.path()).is_empty());
    assert_eq!(wal.push(&name, &good).await.unwrap(), PushOutcome::Stored);
}

#[tokio::test]
async fn history_backup_and_partial_files_round_trip() {
    let dir = tempfile::tempdir().unwrap();
    let repo = temp_repo(dir.path()).await;
    let wal = repo.wal(SYSID);
    let history = b"1\t0/3000158\tno recovery target specified\n".to_vec();
    let label = b"START WAL LOCATION: 0/2000028 (file 000000010000000000000002)\n".to_vec();
    let (partial_seg, partial) = segment(1, 3, SYSID, 9);
    let partial_name = format!("{partial_seg}.partial");
    let files = [
        ("00000002.history".to_string(), history),
        (
            "000000010000000000000002.00000028.backup".to_string(),
            label,
        ),
        (partial_name.clone(), partial),
    ];
    for (name, bytes) in &files {
        assert_eq!(wal.push(name, bytes).await.unwrap(), PushOutcome::Stored);
        assert_eq!(&wal.fetch(name).await.unwrap(), bytes);
    }
    assert_eq!(
        stored_files(dir.path()),
        [
            format!("{SYSID}/00000001/000000010000000000000002.00000028.backup.zst"),
            format!("{SYSID}/00000001/{partial_name}.zst"),
            format!("{SYSID}/history/00000002.history.zst"),
        ]
    );
    // The partial segment is not the segment: recovery never gets it by the segment's name.
    let err = wal.fetch(&partial_seg).await.unwrap_err();
    assert!(matches!(err, WalError::Missing { .. }), "{err:?}");
    let listing = wal.list().await.unwrap();
    assert_eq!(listing.history.iter().copied().collect::<Vec<_>>(), [2]);
    let tl = &listing.timelines[&1];
    assert!(tl.segments.is_empty());
    assert_eq!(tl.partial[&3].name, partial_name);
    assert_eq!(tl.backup_files.len(), 1);
    // A history file must read as one.
    let err = wal
        .push("00000003.history", b"3\t0/1\tloop\n")
        .await
        .unwrap_err();
    assert!(matches!(err, WalError::Invalid { .. }), "{err:?}");
    let err = wal
        .push("00000003.history", &vec![b'#'; (2 << 20) as usize])
        .await
        .unwrap_err();
    assert!(matches!(err, WalError::Invalid { .. }), "{err:?}");
}

#[tokio::test]
async fn listing_windows_gaps_and_prune() {
    let dir = tempfile::tempdir().unwrap();
    let repo = temp_repo(dir.path()).await;
    let wal = repo.wal(SYSID);
    // Timeline 1: 1..=6, then 8; timeline 2 (after a promotion): 8..=9.
    push_all(&repo, 1, (1..=6).chain([8])).await;
    push_all(&repo, 2, [8, 9]).await;
    wal.push("00000002.history", b"1\t0/800100\tpromoted\n")
        .await
        .unwrap();
    let listing = wal.list().await.unwrap();
    assert_eq!(listing.segment_size, Some(SEG));
    assert_eq!(
        listing.gaps(),
        [Gap {
            timeline: 1,
            first_missing: "000000010000000000000007".into(),
            last_missing: "000000010000000000000007".into(),
        }]
    );
    let b = backup("0/300028", "0/400100", 1);
    let w = listing.window(&b);
    assert_eq!((w.timeline, w.start_lsn, w.end_lsn), (1, 0x400100, 7 * SEG));
    assert_eq!(w.first_missing.as_deref(), Some("000000010000000000000007"));
    let latest = w.latest.expect("WAL past the backup is archived");
    let archived = listing.timelines[&1].segments[&6].archived;
    assert!(latest >= archived, "{latest} {archived}");

    let dry = wal.prune(&b, true).await.unwrap();
    assert_eq!(
        dry.removed,
        ["000000010000000000000001", "000000010000000000000002"]
    );
    assert_eq!(dry.keep_from.as_deref(), Some("000000010000000000000003"));
    assert_eq!(wal.list().await.unwrap(), listing);
    let done = wal.prune(&b, false).await.unwrap();
    assert_eq!(done.removed, dry.removed);
    assert!(done.bytes_removed > 0);
    let after = wal.list().await.unwrap();
    let kept: Vec<u64> = after.timelines[&1].segments.keys().copied().collect();
    assert_eq!(kept, [3, 4, 5, 6, 8]);
    assert_eq!(after.timelines[&2].segments.len(), 2);
    assert!(after.history.contains(&2));
    // The window of the backup is unchanged by the prune.
    assert_eq!(after.window(&b), w);

    // A backup on timeline 2 prunes timeline 1 before its start as well.
    let on_two = backup("0/900028", "0/900100", 2);
    let r = wal.prune(&on_two, false).await.unwrap();
    assert_eq!(
        r.removed,
        [
            "000000010000000000000003",
            "000000010000000000000004",
            "000000010000000000000005",
            "000000010000000000000006",
            "000000010000000000000008",
            "000000020000000000000008",
        ]
    );
    let mut foreign = on_two.clone();
    foreign.system_identifier = "1".into();
    let err = wal.prune(&foreign, true).await.unwrap_err();
    assert!(matches!(err, WalError::OtherSystem { .. }), "{err:?}");
}

/// Writes `bytes` as the stored object at `rel` under the archive of SYSID.
fn plant(dir: &Path, rel: &str, bytes: &[u8]) {
    let path = object_path(dir, SYSID, rel);
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    std::fs::write(path, bytes).unwrap();
}

#[tokio::test]
async fn damaged_and_hostile_objects_are_errors_named_by_verify() {
    let dir = tempfile::tempdir().unwrap();
    let repo = temp_repo(dir.path()).await;
    let wal = repo.wal(SYSID);
    push_all(&repo, 1, 1..=8).await;
    let rel = |segno: u64| format!("00000001/{}.zst", segment(1, segno, SYSID, 0).0);
    let read = |segno: u64| std::fs::read(object_path(dir.path(), SYSID, &rel(segno))).unwrap();
    let corrupt = |err: WalError, expect: &str| {
        assert!(matches!(err, WalError::Corrupt { .. }), "{expect}: {err:?}");
        assert!(err.to_string().contains(expect), "{expect}: {err}");
    };

    // A flipped byte in the compressed body.
    let mut flipped = read(2);
    let at = flipped.len() - 10;
    flipped[at] ^= 0x40;
    plant(dir.path(), &rel(2), &flipped);
    // Truncated.
    let truncated = read(3);
    plant(dir.path(), &rel(3), &truncated[..truncated.len() / 2]);
    // A zstd bomb: a small frame of 64 MiB of zeros, declared as a 1 MiB segment.
    let mut bomb = read(4)[..48].to_vec();
    bomb.extend(zstd::bulk::compress(&vec![0u8; 64 << 20], 19).unwrap());
    plant(dir.path(), &rel(4), &bomb);
    // A header declaring far more than a segment may have.
    let mut huge = read(5);
    huge[8..16].copy_from_slice(&(1u64 << 40).to_le_bytes());
    plant(dir.path(), &rel(5), &huge);
    // Another segment's object, valid in itself, under segment 6's name.
    plant(dir.path(), &rel(6), &read(7));
    // A sparse object far larger than any segment could be stored as: refused unread.
    let big = object_path(dir.path(), SYSID, &rel(8));
    std::fs::File::options()
        .write(true)
        .open(&big)
        .unwrap()
        .set_len(4 << 30)
        .unwrap();

    let name = |segno: u64| segment(1, segno, SYSID, 0).0;
    corrupt(wal.fetch(&name(2)).await.unwrap_err(), &name(2));
    corrupt(wal.fetch(&name(3)).await.unwrap_err(), "decompress");
    corrupt(wal.fetch(&name(4)).await.unwrap_err(), "decompress");
    corrupt(wal.fetch(&name(5)).await.unwrap_err(), "more than");
    corrupt(
        wal.fetch(&name(6)).await.unwrap_err(),
        "its name for 0/600000",
    );
    corrupt(wal.fetch(&name(8)).await.unwrap_err(), "more than");

    // Objects where no WAL file belongs.
    plant(
        dir.path(),
        "00000002/000000010000000000000009.zst",
        &read(7),
    );
    plant(dir.path(), "00000001/notes.txt", b"hello");
    let report = wal.verify().await.unwrap();
    assert!(!report.is_ok());
    assert!(report.gaps.is_empty(), "{:?}", report.gaps);
    let damaged: Vec<&str> = report.damaged.iter().map(|d| d.name.as_str()).collect();
    assert_eq!(
        damaged,
        [
            name(2).as_str(),
            &name(3),
            &name(4),
            &name(5),
            &name(6),
            &name(8),
            &format!("wal/{SYSID}/00000001/notes.txt"),
            &format!("wal/{SYSID}/00000002/000000010000000000000009.zst"),
        ]
    );
    assert_eq!(report.objects_checked, 8);

    // A push of the real segment writes a damaged copy again.
    let (n2, b2) = segment(1, 2, SYSID, 2);
    assert_eq!(wal.push(&n2, &b2).await.unwrap(), PushOutcome::Stored);
    assert_eq!(wal.fetch(&n2).await.unwrap(), b2);

    // A deleted middle segment is a gap, named.
    std::fs::remove_file(object_path(dir.path(), SYSID, &rel(7))).unwrap();
    let gaps = wal.verify().await.unwrap().gaps;
    assert_eq!(
        gaps,
        [Gap {
            timeline: 1,
            first_missing: name(7),
            last_missing: name(7),
        }]
    );
}

#[tokio::test]
async fn a_listing_survives_a_damaged_first_segment() {
    let dir = tempfile::tempdir().unwrap();
    let repo = temp_repo(dir.path()).await;
    push_all(&repo, 1, 1..=3).await;
    let first = format!("00000001/{}.zst", segment(1, 1, SYSID, 0).0);
    plant(dir.path(), &first, b"short");
    let listing = repo.wal(SYSID).list().await.unwrap();
    assert_eq!(listing.segment_size, Some(SEG));
    assert_eq!(listing.timelines[&1].segments.len(), 3);
    // Nothing readable at all: listed apart, no sizes guessed.
    for segno in 2..=3 {
        let rel = format!("00000001/{}.zst", segment(1, segno, SYSID, 0).0);
        plant(dir.path(), &rel, b"IRWAL");
    }
    let listing = repo.wal(SYSID).list().await.unwrap();
    assert_eq!(listing.segment_size, None);
    assert_eq!(listing.unreadable.len(), 3);
    assert!(listing.gaps().is_empty());
}

proptest! {
    #![proptest_config(ProptestConfig {
        cases: fuzz_cases(64),
        failure_persistence: None,
        ..ProptestConfig::default()
    })]

    /// Byte edits and cuts of stored objects: a fetch gives the pushed bytes back or says the
    /// object is damaged, never panics, never returns other bytes; a listing still answers.
    #[test]
    fn damaged_objects_never_pass_for_wal(
        history in any::<bool>(),
        edits in prop::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 0..6),
        cut in prop::option::of(any::<prop::sample::Index>()),
    ) {
        let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        runtime.block_on(async {
            let dir = tempfile::tempdir().unwrap();
            let repo = temp_repo(dir.path()).await;
            let wal = repo.wal(SYSID);
            let (name, bytes) = if history {
                ("00000003.history".to_string(), b"1\t0/3000158\tx\n2\t0/5000000\ty\n".to_vec())
            } else {
                segment(1, 4, SYSID, 3)
            };
            wal.push(&name, &bytes).await.unwrap();
            let rel = if history {
                format!("history/{name}.zst")
            } else {
                format!("00000001/{name}.zst")
            };
            let path = object_path(dir.path(), SYSID, &rel);
            let mut stored = std::fs::read(&path).unwrap();
            for (at, byte) in &edits {
                let i = at.index(stored.len());
                stored[i] = *byte;
            }
            if let Some(cut) = cut {
                stored.truncate(cut.index(stored.len()));
            }
            std::fs::write(&path, &stored).unwrap();
            match wal.fetch(&name).await {
                Ok(back) => prop_assert_eq!(back, bytes),
                Err(WalError::Corrupt { .. }) => {}
                Err(e) => prop_assert!(false, "{e:?}"),
            }
            prop_assert!(wal.list().await.is_ok());
            prop_assert!(wal.verify().await.is_ok());
            Ok(())
        })?;
    }

    /// Any text as a name: refused, or a name that prints as given.
    #[test]
    fn names_parse_or_are_refused(name in "[0-9A-Fa-f./x]{0,40}") {
        if let Ok(parsed) = ir_repository::wal::WalFileName::parse(&name) {
            prop_assert_eq!(parsed.to_string(), name);
        }
    }
}

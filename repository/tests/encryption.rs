//! Encrypted repositories on file://: backups and WAL round trip, a wrong or missing key is
//! refused before anything is written, nothing on disk holds the plain data or its hashes,
//! and damaged, swapped or planted objects are errors that name them.

mod common;

use std::collections::{BTreeMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use common::{
    CHUNK, SEG, SYSID, cluster_files, entry, label_and_manifest, noise, read_back, segment, tar_of,
};
use ir_repository::wal::{PushOutcome, WalError};
use ir_repository::{
    BackupManifest, EntryKind, Progress, RepoError, RepoKey, RepoLocation, Repository,
    RestoreOwner, Secret,
};

const PASSWORD: &str = "correct horse battery staple";
const MARKER: &[u8] = b"IR-PLAINTEXT-MARKER-5c1e";
const MARKED_FILE: &str = "base/1/IR-PLAINTEXT-MARKER-5c1e-name";

fn url(dir: &Path) -> String {
    format!("file://{}", dir.join("repo").display())
}

fn password(p: &str) -> RepoKey {
    RepoKey::Password(Secret::new(p.as_bytes().to_vec()))
}

fn location(dir: &Path, key: RepoKey) -> RepoLocation {
    RepoLocation {
        key,
        ..RepoLocation::new(url(dir))
    }
}

async fn encrypted_repo(dir: &Path) -> Repository {
    Repository::init_encrypted(&location(dir, password(PASSWORD)), CHUNK)
        .await
        .expect("init encrypted repository")
}

async fn reopen(dir: &Path) -> Repository {
    Repository::open(&location(dir, password(PASSWORD)))
        .await
        .expect("open with the password")
}

/// A file whose chunks hold the marker among bytes that do not compress away.
fn marked_content() -> Vec<u8> {
    let mut data = Vec::new();
    let mut seed = 100;
    while data.len() < 2 * CHUNK as usize + 5000 {
        data.extend(noise(700, seed));
        data.extend_from_slice(MARKER);
        seed += 1;
    }
    data
}

fn marked_files() -> BTreeMap<&'static str, Vec<u8>> {
    let mut files = cluster_files();
    files.insert(MARKED_FILE, marked_content());
    files
}

/// A WAL segment with the marker in its records.
fn marked_segment(segno: u64) -> (String, Vec<u8>) {
    let (name, mut bytes) = segment(1, segno, SYSID, segno as u8);
    for (i, at) in (64..bytes.len() - MARKER.len()).step_by(4096).enumerate() {
        let noise = noise(1000, segno * 1000 + i as u64);
        bytes[at..at + MARKER.len()].copy_from_slice(MARKER);
        let end = (at + MARKER.len() + noise.len()).min(bytes.len());
        let from = at + MARKER.len();
        bytes[from..end].copy_from_slice(&noise[..end - from]);
    }
    (name, bytes)
}

async fn ingest(
    repo: &Repository,
    files: &BTreeMap<&str, Vec<u8>>,
) -> (BackupManifest, Arc<Progress>) {
    let progress = Arc::new(Progress::default());
    let tar = tar_of(files, &label_and_manifest());
    let m = repo
        .ingest_tar(std::io::Cursor::new(tar), progress.clone())
        .await
        .expect("ingest");
    (m, progress)
}

/// Every file under `root`: relative path, bytes and modification time.
fn snapshot(root: &Path) -> BTreeMap<PathBuf, (Vec<u8>, SystemTime)> {
    let mut out = BTreeMap::new();
    let mut stack = vec![root.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).unwrap() {
            let p = e.unwrap().path();
            if p.is_dir() {
                stack.push(p);
            } else {
                let meta = std::fs::metadata(&p).unwrap();
                out.insert(
                    p.strip_prefix(root).unwrap().to_path_buf(),
                    (std::fs::read(&p).unwrap(), meta.modified().unwrap()),
                );
            }
        }
    }
    out
}

fn chunk_files(repo_dir: &Path) -> BTreeMap<String, PathBuf> {
    snapshot(&repo_dir.join("chunks"))
        .into_keys()
        .map(|rel| {
            let name = rel.file_name().unwrap().to_str().unwrap().to_string();
            (name, repo_dir.join("chunks").join(rel))
        })
        .collect()
}

/// The BLAKE3 hashes (hex) of the plain chunks of `files`.
fn plain_hashes(files: &BTreeMap<&str, Vec<u8>>) -> HashSet<String> {
    let extra = label_and_manifest();
    files
        .values()
        .chain(extra.iter().map(|(_, data)| data))
        .flat_map(|data| data.chunks(CHUNK as usize))
        .map(|c| blake3::hash(c).to_hex().to_string())
        .collect()
}

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    haystack.windows(needle.len()).any(|w| w == needle)
}

#[tokio::test]
async fn an_encrypted_repository_round_trips_backups_and_wal() {
    let dir = tempfile::tempdir().unwrap();
    let repo = encrypted_repo(dir.path()).await;
    assert!(repo.is_encrypted());
    let config = repo.config();
    assert_eq!(config.format_version, 2);
    let encryption = config.encryption.as_ref().unwrap();
    assert_eq!(encryption.cipher, "xchacha20poly1305");
    assert_eq!(encryption.kdf.algorithm, "argon2id");
    let text = std::fs::read_to_string(dir.path().join("repo/ir-repo.json")).unwrap();
    assert!(
        text.contains("\"wrapped_key\"") && !text.contains(PASSWORD),
        "{text}"
    );

    let files = marked_files();
    let (m, _) = ingest(&repo, &files).await;

    // A key file holding the password (and a newline) opens the same repository.
    let key_file = dir.path().join("key");
    std::fs::write(&key_file, format!("{PASSWORD}\n")).unwrap();
    let again = Repository::open(&location(dir.path(), RepoKey::File(key_file)))
        .await
        .unwrap();
    assert_eq!(again.identity(), repo.identity());
    assert_eq!(again.identity().len(), 32);
    let loaded = again.load_manifest(&m.id).await.unwrap();
    assert_eq!(loaded, m);
    for (path, content) in &files {
        assert_eq!(
            &read_back(&again, &m, entry(&m, path)).await,
            content,
            "{path}"
        );
    }
    let target = dir.path().join("restored");
    again
        .restore(
            &m.id,
            &target,
            RestoreOwner::default(),
            Arc::new(Progress::default()),
        )
        .await
        .unwrap();
    for (path, content) in &files {
        assert_eq!(
            &std::fs::read(target.join(path)).unwrap(),
            content,
            "{path}"
        );
    }
    assert!(again.verify(&m.id, Arc::default()).await.unwrap().is_ok());
    assert!(
        again
            .verify_repository(Arc::default())
            .await
            .unwrap()
            .is_ok()
    );

    // Equal chunks share one object: a second backup of the same data stores no chunk.
    let (second, progress) = ingest(&again, &files).await;
    let snap = progress.snapshot();
    assert_eq!(snap.chunks_new, 0, "{snap:?}");
    assert!(snap.chunks_deduped > 0, "{snap:?}");
    let gc = again.gc(Duration::ZERO, false).await.unwrap();
    assert_eq!((gc.backups, gc.chunks_deleted), (2, 0), "{gc:?}");

    // WAL: push, push again, fetch, list (the segment size read through the seal), verify.
    let wal = again.wal(SYSID);
    let segments: Vec<(String, Vec<u8>)> = (1..=3).map(marked_segment).collect();
    for (name, bytes) in &segments {
        assert_eq!(wal.push(name, bytes).await.unwrap(), PushOutcome::Stored);
        assert_eq!(
            wal.push(name, bytes).await.unwrap(),
            PushOutcome::AlreadyStored
        );
    }
    let mut other = segments[0].1.clone();
    other[5000] ^= 1;
    let conflict = wal.push(&segments[0].0, &other).await.unwrap_err();
    assert!(
        matches!(conflict, WalError::Conflict { .. }),
        "{conflict:?}"
    );
    for (name, bytes) in &segments {
        assert_eq!(&wal.fetch(name).await.unwrap(), bytes, "{name}");
    }
    let history = b"1\t0/3000000\tno recovery target specified\n";
    wal.push("00000002.history", history).await.unwrap();
    assert_eq!(wal.fetch("00000002.history").await.unwrap(), history);
    let listing = wal.list().await.unwrap();
    assert_eq!(listing.segment_size, Some(SEG));
    assert!(listing.unreadable.is_empty(), "{:?}", listing.unreadable);
    assert_eq!(listing.ancestors.len(), 1);
    let verified = wal.verify().await.unwrap();
    assert!(verified.is_ok(), "{verified:?}");
    assert_eq!(verified.objects_checked, 4);

    // Retention: a lease holds a backup, prune removes WAL before it, delete removes it.
    again
        .take_lease(&m.id, "mount-1", Duration::from_secs(60))
        .await
        .unwrap();
    let held = again.delete_backup(&m.id).await.unwrap_err();
    assert!(matches!(held, RepoError::BackupLeased { .. }), "{held:?}");
    again.release_lease(&m.id, "mount-1").await.unwrap();
    // The backup starts in segment 32 (0/2000028 with 1 MiB segments): all three go.
    let pruned = wal.prune(&m, false).await.unwrap();
    let names: Vec<String> = segments.iter().map(|(n, _)| n.clone()).collect();
    assert_eq!(pruned.removed, names);
    again.delete_backup(&m.id).await.unwrap();
    let left: Vec<String> = again
        .list_backups()
        .await
        .unwrap()
        .backups
        .into_iter()
        .map(|b| b.id)
        .collect();
    assert_eq!(left, [second.id]);
}

#[tokio::test]
async fn a_wrong_or_missing_key_is_refused_before_anything_is_written() {
    let dir = tempfile::tempdir().unwrap();
    let repo = encrypted_repo(dir.path()).await;
    ingest(&repo, &cluster_files()).await;
    repo.wal(SYSID)
        .push(&segment(1, 1, SYSID, 1).0, &segment(1, 1, SYSID, 1).1)
        .await
        .unwrap();
    let repo_dir = dir.path().join("repo");
    let before = snapshot(&repo_dir);

    let err = Repository::open(&location(dir.path(), password("wrong")))
        .await
        .unwrap_err();
    assert!(matches!(err, RepoError::WrongKey { .. }), "{err:?}");
    let msg = err.to_string();
    assert!(
        msg.contains(repo.url()) && msg.contains("does not open"),
        "{msg}"
    );
    let wrong_file = dir.path().join("wrong-key");
    std::fs::write(&wrong_file, noise(64, 9)).unwrap();
    let err = Repository::open(&location(dir.path(), RepoKey::File(wrong_file)))
        .await
        .unwrap_err();
    assert!(matches!(err, RepoError::WrongKey { .. }), "{err:?}");

    let err = Repository::open(&location(dir.path(), RepoKey::None))
        .await
        .unwrap_err();
    assert!(matches!(err, RepoError::KeyRequired { .. }), "{err:?}");
    let msg = err.to_string();
    assert!(
        msg.contains("IR_REPO_PASSWORD") && msg.contains("--key-file") && msg.contains(repo.url()),
        "{msg}"
    );
    let err = Repository::init_encrypted(&location(dir.path(), password("other")), CHUNK)
        .await
        .unwrap_err();
    assert!(matches!(err, RepoError::AlreadyExists { .. }), "{err:?}");
    assert_eq!(snapshot(&repo_dir), before, "nothing was written");

    // A key for an unencrypted repository is refused, and so is encryption without a key.
    let plain_dir = tempfile::tempdir().unwrap();
    let err = Repository::init(&location(plain_dir.path(), password(PASSWORD)), CHUNK)
        .await
        .unwrap_err();
    assert!(matches!(err, RepoError::InvalidKey { .. }), "{err:?}");
    let err = Repository::init_encrypted(&location(plain_dir.path(), RepoKey::None), CHUNK)
        .await
        .unwrap_err();
    assert!(matches!(err, RepoError::InvalidKey { .. }), "{err:?}");
    assert!(!plain_dir.path().join("repo").exists());
    common::temp_repo(plain_dir.path()).await;
    let err = Repository::open(&location(plain_dir.path(), password(PASSWORD)))
        .await
        .unwrap_err();
    assert!(matches!(err, RepoError::NotEncrypted { .. }), "{err:?}");
    assert!(err.to_string().contains("not encrypted"), "{err}");
}

#[tokio::test]
async fn ciphertext_on_disk_holds_no_plaintext_nor_its_hashes() {
    let files = marked_files();
    let hashes = plain_hashes(&files);
    let (name, wal_bytes) = marked_segment(1);

    // The control: an unencrypted repository holds the marker (once decompressed) and names
    // chunks by the hash of their plain bytes.
    let plain_dir = tempfile::tempdir().unwrap();
    let plain = common::temp_repo(plain_dir.path()).await;
    let (m, _) = ingest(&plain, &files).await;
    plain.wal(SYSID).push(&name, &wal_bytes).await.unwrap();
    let plain_repo = plain_dir.path().join("repo");
    let chunks = chunk_files(&plain_repo);
    let marked_chunks = chunks
        .values()
        .filter(|p| {
            let data = zstd::decode_all(&std::fs::read(p).unwrap()[..]).unwrap();
            contains(&data, MARKER)
        })
        .count();
    assert!(marked_chunks >= 2, "{marked_chunks}");
    assert!(chunks.keys().all(|n| hashes.contains(n)));
    let manifest = std::fs::read(plain_repo.join(format!("backups/{}.json.zst", m.id))).unwrap();
    assert!(contains(&zstd::decode_all(&manifest[..]).unwrap(), MARKER));
    let wal_object =
        std::fs::read(plain_repo.join(format!("wal/{SYSID}/00000001/{name}.zst"))).unwrap();
    assert!(contains(
        &zstd::decode_all(&wal_object[48..]).unwrap(),
        MARKER
    ));

    // Encrypted: no file holds the marker, the plain hashes or the names of chunks.
    let dir = tempfile::tempdir().unwrap();
    let repo = encrypted_repo(dir.path()).await;
    let (m, _) = ingest(&repo, &files).await;
    repo.wal(SYSID).push(&name, &wal_bytes).await.unwrap();
    let repo_dir = dir.path().join("repo");
    let stored = snapshot(&repo_dir);
    assert!(stored.len() > 5, "{:?}", stored.keys());
    for (path, (bytes, _)) in &stored {
        let text = path.to_string_lossy();
        assert!(!contains(text.as_bytes(), MARKER), "{text}");
        assert!(!contains(bytes, MARKER), "{text} holds the marker");
        if let Ok(plain) = zstd::decode_all(&bytes[..]) {
            assert!(
                !contains(&plain, MARKER),
                "{text} holds the marker compressed"
            );
        }
        for hash in &hashes {
            assert!(
                !text.contains(hash.as_str()),
                "{text} is named by a plain hash"
            );
            assert!(
                !contains(bytes, hash.as_bytes()),
                "{text} holds a plain hash"
            );
        }
        let raw: Vec<[u8; 32]> = hashes.iter().map(|h| hex_bytes(h)).collect();
        assert!(
            !raw.iter().any(|h| contains(bytes, h)),
            "{text} holds a raw plain hash"
        );
    }
    let encrypted_chunks = chunk_files(&repo_dir);
    assert_eq!(encrypted_chunks.len(), chunks.len(), "the same dedup");
    assert!(encrypted_chunks.keys().all(|n| !hashes.contains(n)));
    // Yet the repository reads it all back.
    let marked = entry(&m, MARKED_FILE);
    assert_eq!(read_back(&repo, &m, marked).await, files[MARKED_FILE]);
    let EntryKind::File { chunks: ids } = &marked.kind else {
        panic!()
    };
    assert_eq!(
        ids[0],
        Some(repo.chunk_id(&files[MARKED_FILE][..CHUNK as usize]))
    );
    assert_eq!(repo.wal(SYSID).fetch(&name).await.unwrap(), wal_bytes);
}

fn hex_bytes(hex: &str) -> [u8; 32] {
    let mut out = [0u8; 32];
    for (i, b) in out.iter_mut().enumerate() {
        *b = u8::from_str_radix(&hex[2 * i..2 * i + 2], 16).unwrap();
    }
    out
}

#[tokio::test]
async fn damaged_swapped_and_planted_objects_are_errors_that_name_them() {
    let dir = tempfile::tempdir().unwrap();
    let repo = encrypted_repo(dir.path()).await;
    let repo_dir = dir.path().join("repo");
    let (first, _) = ingest(&repo, &cluster_files()).await;
    let (second, _) = ingest(&repo, &marked_files()).await;

    // Chunks: swapped, truncated, flipped, and one stored as an unencrypted repository would.
    let mut ids: Vec<(ir_repository::ChunkId, usize)> = Vec::new();
    for e in &second.entries {
        if let EntryKind::File { chunks } = &e.kind {
            for (i, c) in chunks.iter().enumerate() {
                if let Some(c) = c
                    && !ids.iter().any(|(id, _)| id == c)
                {
                    ids.push((*c, second.chunk_len(e.size, i as u64)));
                }
            }
        }
    }
    assert!(ids.len() >= 5, "{}", ids.len());
    let path_of = |id: &ir_repository::ChunkId| {
        let hex = id.to_hex();
        repo_dir.join(format!("chunks/{}/{hex}", &hex[..2]))
    };
    let (swapped, truncated, flipped, planted) = (ids[0], ids[1], ids[2], ids[3]);
    std::fs::copy(path_of(&ids[4].0), path_of(&swapped.0)).unwrap();
    let bytes = std::fs::read(path_of(&truncated.0)).unwrap();
    std::fs::write(path_of(&truncated.0), &bytes[..bytes.len() / 2]).unwrap();
    let mut bytes = std::fs::read(path_of(&flipped.0)).unwrap();
    bytes[40] ^= 1;
    std::fs::write(path_of(&flipped.0), bytes).unwrap();
    std::fs::write(
        path_of(&planted.0),
        zstd::bulk::compress(&noise(planted.1, 5), 3).unwrap(),
    )
    .unwrap();
    for ((id, len), expect) in [
        (swapped, "another name"),
        (truncated, "authentication"),
        (flipped, "authentication"),
        (planted, "not an encrypted object"),
    ] {
        let err = repo.read_chunk(&id, len).await.unwrap_err();
        assert!(matches!(err, RepoError::CorruptChunk { .. }), "{err:?}");
        let msg = err.to_string();
        assert!(
            msg.contains(&id.to_hex()) && msg.contains(expect),
            "{expect}: {msg}"
        );
    }
    let report = repo.verify_repository(Arc::default()).await.unwrap();
    let damaged: HashSet<_> = report.damaged.iter().map(|d| d.chunk).collect();
    assert_eq!(
        damaged,
        HashSet::from([swapped.0, truncated.0, flipped.0, planted.0])
    );

    // Manifests: one copied over another, then one cut short.
    let manifest = |id: &str| repo_dir.join(format!("backups/{id}.json.zst"));
    std::fs::copy(manifest(&first.id), manifest(&second.id)).unwrap();
    let err = repo.load_manifest(&second.id).await.unwrap_err();
    assert!(matches!(err, RepoError::InvalidManifest { .. }), "{err:?}");
    let msg = err.to_string();
    assert!(
        msg.contains(&second.id) && msg.contains("cannot decrypt"),
        "{msg}"
    );
    let list = repo.list_backups().await.unwrap();
    assert_eq!(list.backups.len(), 1);
    assert_eq!(list.invalid[0].id, second.id);
    // Its chunks cannot be told: gc deletes nothing.
    let gc = repo.gc(Duration::ZERO, false).await.unwrap();
    assert_eq!(gc.unreadable_backups, std::slice::from_ref(&second.id));
    assert_eq!(gc.chunks_deleted, 0);
    let bytes = std::fs::read(manifest(&first.id)).unwrap();
    std::fs::write(manifest(&first.id), &bytes[..20]).unwrap();
    let err = repo.load_manifest(&first.id).await.unwrap_err();
    assert!(err.to_string().contains("shorter than"), "{err}");

    // WAL: an object copied under another segment's name, one cut short.
    let wal = repo.wal(SYSID);
    let segs: Vec<_> = (1..=3).map(|n| segment(1, n, SYSID, n as u8)).collect();
    for (name, bytes) in &segs {
        wal.push(name, bytes).await.unwrap();
    }
    let object = |name: &str| repo_dir.join(format!("wal/{SYSID}/00000001/{name}.zst"));
    std::fs::copy(object(&segs[0].0), object(&segs[1].0)).unwrap();
    let bytes = std::fs::read(object(&segs[2].0)).unwrap();
    std::fs::write(object(&segs[2].0), &bytes[..bytes.len() - 1]).unwrap();
    for (name, expect) in [(&segs[1].0, "another name"), (&segs[2].0, "authentication")] {
        let err = wal.fetch(name).await.unwrap_err();
        assert!(matches!(err, WalError::Corrupt { .. }), "{err:?}");
        let msg = err.to_string();
        assert!(msg.contains(name.as_str()) && msg.contains(expect), "{msg}");
    }
    let report = wal.verify().await.unwrap();
    let named: Vec<&str> = report.damaged.iter().map(|d| d.name.as_str()).collect();
    assert_eq!(named, [segs[1].0.as_str(), segs[2].0.as_str()]);

    // The config: an altered wrapped key reads as a wrong key; absurd costs and a format that
    // contradicts its encryption section are refused before any key derivation.
    let config_path = repo_dir.join("ir-repo.json");
    let original = std::fs::read_to_string(&config_path).unwrap();
    let mut value: serde_json::Value = serde_json::from_str(&original).unwrap();
    let wrapped = value["encryption"]["wrapped_key"]["ciphertext"]
        .as_str()
        .unwrap()
        .to_string();
    let flipped_digit = if wrapped.starts_with('0') { "1" } else { "0" };
    value["encryption"]["wrapped_key"]["ciphertext"] =
        format!("{flipped_digit}{}", &wrapped[1..]).into();
    std::fs::write(&config_path, value.to_string()).unwrap();
    let err = Repository::open(&location(dir.path(), password(PASSWORD)))
        .await
        .unwrap_err();
    assert!(matches!(err, RepoError::WrongKey { .. }), "{err:?}");
    for (pointer, replacement) in [
        ("/encryption/kdf/memory_kib", serde_json::json!(u32::MAX)),
        ("/encryption/cipher", serde_json::json!("rot13")),
        ("/format_version", serde_json::json!(1)),
    ] {
        let mut value: serde_json::Value = serde_json::from_str(&original).unwrap();
        *value.pointer_mut(pointer).unwrap() = replacement;
        std::fs::write(&config_path, value.to_string()).unwrap();
        let err = Repository::open(&location(dir.path(), password(PASSWORD)))
            .await
            .unwrap_err();
        assert!(
            matches!(err, RepoError::InvalidObject { .. }),
            "{pointer}: {err:?}"
        );
        assert!(err.to_string().contains("ir-repo.json"), "{err}");
    }
    let mut value: serde_json::Value = serde_json::from_str(&original).unwrap();
    value.as_object_mut().unwrap().remove("encryption");
    std::fs::write(&config_path, value.to_string()).unwrap();
    let err = Repository::open(&location(dir.path(), RepoKey::None))
        .await
        .unwrap_err();
    assert!(matches!(err, RepoError::InvalidObject { .. }), "{err:?}");
    std::fs::write(&config_path, &original).unwrap();
    reopen(dir.path()).await;
}

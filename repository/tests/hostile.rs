//! Hostile repository bytes. Every case of the corpus (`tests/corpus/manifests/*.json`: the
//! manifest and the refusal it must get), of `tests/corpus/tars` and of `tests/corpus/chunks`
//! (each file's refusal in the `expect.json` beside it) names its refusal; the fuzz tests
//! mutate the same seeds and demand that nothing panics, and keep what they find failing in
//! `tests/hostile.proptest-regressions`.

mod common;

use std::path::{Path, PathBuf};
use std::sync::Arc;

use common::{CHUNK, fuzz_cases, temp_repo};
use ir_repository::{
    BackupManifest, ChunkId, MAX_MANIFEST_BYTES, MAX_MANIFEST_OBJECT_BYTES, Progress, RepoError,
    Repository, RestoreOwner,
};
use proptest::prelude::*;
use proptest::test_runner::FileFailurePersistence;
use serde_json::Value;

const CORPUS: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/corpus/manifests");
const DEFAULT_ID: &str = "20261125T063512Z-3fa2";
/// Failures the fuzz tests found, replayed first on every run (relative to the crate, where
/// cargo runs its tests).
const REGRESSIONS: &str = "tests/hostile.proptest-regressions";

struct Case {
    name: String,
    /// A part of the refusal's message; empty for the valid seed.
    expect: String,
    /// The manifest's JSON text: `manifest` of the case, or `manifest_text` for text no JSON
    /// value can hold (nesting past any parser's limit).
    json: Vec<u8>,
    store_as: String,
}

fn corpus() -> Vec<Case> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(CORPUS)
        .expect("the corpus is in the repository")
        .map(|e| e.unwrap().path())
        .collect();
    files.sort();
    assert!(files.len() >= 30, "corpus incomplete: {files:?}");
    files
        .into_iter()
        .map(|path| {
            let case: Value = serde_json::from_slice(&std::fs::read(&path).unwrap()).unwrap();
            let json = match case["manifest_text"].as_str() {
                Some(text) => text.as_bytes().to_vec(),
                None => serde_json::to_vec(&case["manifest"]).unwrap(),
            };
            Case {
                name: path.file_stem().unwrap().to_string_lossy().into_owned(),
                expect: case["expect"].as_str().unwrap().to_owned(),
                json,
                store_as: case["store_as"].as_str().unwrap_or(DEFAULT_ID).to_owned(),
            }
        })
        .collect()
}

fn compress(json: &[u8]) -> Vec<u8> {
    zstd::bulk::compress(json, 3).unwrap()
}

fn store_manifest(repo_dir: &Path, id: &str, body: &[u8]) {
    let dir = repo_dir.join("repo/backups");
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join(format!("{id}.json.zst")), body).unwrap();
}

/// Paths, types, sizes and modes of everything under `dir`.
fn tree(dir: &Path) -> Vec<String> {
    use std::os::unix::fs::MetadataExt;
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).unwrap() {
            let p = e.unwrap().path();
            let m = std::fs::symlink_metadata(&p).unwrap();
            if m.is_dir() {
                stack.push(p.clone());
            }
            out.push(format!(
                "{} {:o} {} {}",
                p.display(),
                m.mode(),
                m.len(),
                m.uid()
            ));
        }
    }
    out.sort();
    out
}

#[test]
fn every_corpus_manifest_gets_its_refusal() {
    for case in corpus() {
        let result = BackupManifest::decode(&compress(&case.json), &case.store_as, CHUNK);
        match (case.expect.as_str(), result) {
            ("", Ok(_)) => {}
            ("", Err(e)) => panic!("{}: refused: {e}", case.name),
            (want, Ok(_)) => panic!("{}: accepted; expected {want:?}", case.name),
            (want, Err(e)) => assert!(
                e.to_string().contains(want),
                "{}: expected {want:?} in {e:?}",
                case.name
            ),
        }
    }
}

/// Every reader of a repository (list, show, verify, restore, gc) refuses each bad manifest
/// with a message naming the backup and the field, and goes on with the good backups.
#[tokio::test]
async fn readers_refuse_bad_manifests_and_go_on_with_the_others() {
    let dir = tempfile::tempdir().unwrap();
    let repo = temp_repo(dir.path()).await;
    let good = repo
        .ingest_dir(&common::cluster_dir(dir.path()), Arc::default())
        .await
        .unwrap();
    let mut bad = Vec::new();
    for (i, case) in corpus()
        .into_iter()
        .filter(|c| !c.expect.is_empty())
        .enumerate()
    {
        // Each case under an id of its own, unless the case is about the id.
        let id = if case.store_as == DEFAULT_ID {
            let id = format!("20261125T063512Z-{i:04}");
            let json = match serde_json::from_slice::<Value>(&case.json) {
                Ok(mut m) if m.get("id").is_some() => {
                    m["id"] = Value::String(id.clone());
                    serde_json::to_vec(&m).unwrap()
                }
                _ => case.json.clone(),
            };
            store_manifest(dir.path(), &id, &compress(&json));
            id
        } else {
            store_manifest(dir.path(), &case.store_as, &compress(&case.json));
            case.store_as.clone()
        };
        bad.push((id, case));
    }
    let before = tree(dir.path());
    for (id, case) in &bad {
        let err = repo.load_manifest(id).await.unwrap_err();
        let msg = err.to_string();
        assert!(
            matches!(err, RepoError::InvalidManifest { .. }) && msg.contains(id.as_str()),
            "{}: {msg}",
            case.name
        );
        if case.name != "not-an-object" && case.name != "id-not-an-id" {
            // The id's own case is found by id, the others by the field.
            assert!(
                msg.contains(&case.expect) || case.expect.starts_with("id:"),
                "{}: {msg}",
                case.name
            );
        }
        let verify = repo.verify(id, Arc::default()).await.unwrap_err();
        assert!(
            matches!(verify, RepoError::InvalidManifest { .. }),
            "{verify}"
        );
        let target = dir.path().join("restore").join(id);
        let restore = repo
            .restore(id, &target, RestoreOwner::default(), Arc::default())
            .await
            .unwrap_err();
        assert!(
            matches!(restore, RepoError::InvalidManifest { .. }),
            "{restore}"
        );
        assert!(
            !target.exists(),
            "{}: a refused restore made its target",
            case.name
        );
    }
    assert_eq!(tree(dir.path()), before, "a refused reader wrote something");

    let list = repo.list_backups().await.unwrap();
    assert_eq!(list.backups, std::slice::from_ref(&good));
    let mut invalid: Vec<&str> = list.invalid.iter().map(|b| b.id.as_str()).collect();
    invalid.sort();
    let mut want: Vec<&str> = bad.iter().map(|(id, _)| id.as_str()).collect();
    want.sort();
    assert_eq!(invalid, want);
    assert_eq!(repo.resolve_backup("latest").await.unwrap(), good.id);

    // gc keeps every chunk a readable bad manifest names, and the good backup whole.
    let report = repo.gc(std::time::Duration::ZERO, false).await.unwrap();
    assert_eq!(report.invalid_backups.len(), bad.len());
    // Nesting past any JSON parser's limit cannot even be read leniently.
    let nesting: Vec<&str> = bad
        .iter()
        .filter(|(_, c)| c.name == "nesting")
        .map(|(id, _)| id.as_str())
        .collect();
    assert_eq!(report.unreadable_backups, nesting, "{report:?}");
    assert!(repo.verify(&good.id, Arc::default()).await.unwrap().is_ok());
}

#[tokio::test]
async fn gc_deletes_nothing_while_a_manifest_cannot_be_read_at_all() {
    let dir = tempfile::tempdir().unwrap();
    let repo = temp_repo(dir.path()).await;
    let good = repo
        .ingest_dir(&common::cluster_dir(dir.path()), Arc::default())
        .await
        .unwrap();
    // An orphan chunk gc would delete, and a manifest that is not even zstd.
    let orphan = ChunkId::of(b"orphan");
    let path = dir.path().join("repo/chunks").join(&orphan.to_hex()[..2]);
    std::fs::create_dir_all(&path).unwrap();
    std::fs::write(path.join(orphan.to_hex()), compress(b"orphan")).unwrap();
    store_manifest(dir.path(), "20261125T063512Z-dead", b"garbage, not zstd");
    let report = repo.gc(std::time::Duration::ZERO, false).await.unwrap();
    assert_eq!(report.unreadable_backups, ["20261125T063512Z-dead"]);
    assert_eq!(report.chunks_deleted, 0);
    assert!(path.join(orphan.to_hex()).exists());
    assert_eq!(report.backups, 1);
    assert!(repo.verify(&good.id, Arc::default()).await.unwrap().is_ok());
}

#[test]
fn a_manifest_bomb_is_refused_at_the_limit() {
    use std::io::Write;
    // A few kilobytes that decompress to more than the limit: never decompressed whole.
    let mut enc = zstd::stream::write::Encoder::new(Vec::new(), 19).unwrap();
    let block = vec![b' '; 1 << 20];
    for _ in 0..=(MAX_MANIFEST_BYTES >> 20) {
        enc.write_all(&block).unwrap();
    }
    let bomb = enc.finish().unwrap();
    assert!(bomb.len() < 1 << 20, "{} bytes", bomb.len());
    let err = BackupManifest::decode(&bomb, DEFAULT_ID, CHUNK).unwrap_err();
    assert!(
        err.to_string().contains("decompresses to more than"),
        "{err}"
    );
    for (bytes, want) in [
        (&b"not zstd"[..], "cannot decompress"),
        (&bomb[..bomb.len() / 2], "cannot decompress"),
        (&b""[..], "manifest"),
    ] {
        let err = BackupManifest::decode(bytes, DEFAULT_ID, CHUNK).unwrap_err();
        assert!(err.to_string().contains(want), "{want}: {err}");
    }
}

/// A valid zstd frame of `blocks` run-length blocks of 128 KiB of spaces, declaring its size or
/// not: 4 bytes a block, so a few kilobytes make gigabytes.
fn rle_bomb(declare_size: bool, blocks: u32) -> Vec<u8> {
    const BLOCK: u32 = 128 << 10;
    let mut out = 0xFD2F_B528u32.to_le_bytes().to_vec();
    if declare_size {
        // Single segment, 8-byte content size.
        out.push(0b1110_0000);
        out.extend_from_slice(&(u64::from(blocks) * u64::from(BLOCK)).to_le_bytes());
    } else {
        // No content size; a 128 KiB window.
        out.extend_from_slice(&[0, 7 << 3]);
    }
    for i in 0..blocks {
        let last = u32::from(i + 1 == blocks);
        out.extend_from_slice(&((BLOCK << 3) | (1 << 1) | last).to_le_bytes()[..3]);
        out.push(b' ');
    }
    out
}

#[test]
fn a_manifest_declaring_more_than_the_limit_is_refused_before_decompressing() {
    let bomb = rle_bomb(true, 8192); // 1 GiB in 32 KiB
    assert!(bomb.len() < 40 << 10);
    let started = std::time::Instant::now();
    let err = BackupManifest::decode(&bomb, DEFAULT_ID, CHUNK).unwrap_err();
    assert!(
        err.to_string().contains("declares 1073741824 bytes"),
        "{err}"
    );
    assert!(started.elapsed() < std::time::Duration::from_millis(100));
    // Declaring a size within the limit and holding more is refused as well.
    let mut lying = rle_bomb(true, 2);
    lying[5..13].copy_from_slice(&(128u64 << 10).to_le_bytes());
    let err = BackupManifest::decode(&lying, DEFAULT_ID, CHUNK).unwrap_err();
    assert!(err.to_string().contains("cannot decompress"), "{err}");
}

/// Both kinds of bomb, decoded in a child whose address space has room for one manifest at
/// the limit and little more: a decoder that allocates what a frame declares, or grows its
/// buffer past the limit, dies there.
#[test]
fn manifest_bombs_decode_within_a_memory_limit() {
    const CHILD: &str = "IR_HOSTILE_RLIMIT_CHILD";
    if std::env::var_os(CHILD).is_some() {
        let status = std::fs::read_to_string("/proc/self/status").unwrap();
        let vm_kib: u64 = status
            .lines()
            .find_map(|l| l.strip_prefix("VmSize:"))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
            .unwrap();
        let room = vm_kib * 1024 + MAX_MANIFEST_BYTES + (32 << 20);
        let declared = rle_bomb(true, 8192);
        let undeclared = rle_bomb(false, 8192);
        rustix::process::setrlimit(
            rustix::process::Resource::As,
            rustix::process::Rlimit {
                current: Some(room),
                maximum: Some(room),
            },
        )
        .unwrap();
        let err = BackupManifest::decode(&declared, DEFAULT_ID, CHUNK).unwrap_err();
        assert!(err.to_string().contains("declares"), "{err}");
        let err = BackupManifest::decode(&undeclared, DEFAULT_ID, CHUNK).unwrap_err();
        assert!(
            err.to_string().contains("decompresses to more than"),
            "{err}"
        );
        return;
    }
    let out = std::process::Command::new(std::env::current_exe().unwrap())
        .args([
            "manifest_bombs_decode_within_a_memory_limit",
            "--exact",
            "--test-threads=1",
            "--nocapture",
        ])
        .env(CHILD, "1")
        .output()
        .unwrap();
    assert!(
        out.status.success() && String::from_utf8_lossy(&out.stdout).contains("1 passed"),
        "{:?}\n{}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A manifest object larger than any manifest can be is refused from its size, naming the
/// backup, and listed apart as invalid.
#[tokio::test]
async fn an_oversized_manifest_object_is_invalid() {
    let dir = tempfile::tempdir().unwrap();
    let repo = temp_repo(dir.path()).await;
    let id = "20261125T063512Z-b16b";
    let mut body = compress(b"{}");
    body.resize(MAX_MANIFEST_OBJECT_BYTES as usize + 1, 0);
    store_manifest(dir.path(), id, &body);
    let err = repo.load_manifest(id).await.unwrap_err();
    assert!(
        matches!(err, RepoError::InvalidManifest { .. })
            && err.to_string().contains(id)
            && err.to_string().contains("bytes, more than the"),
        "{err}"
    );
    let list = repo.list_backups().await.unwrap();
    assert_eq!(list.invalid.len(), 1);
    assert!(list.invalid[0].reason.contains("more than the"), "{list:?}");
}

/// Chunk objects that lie (`tests/corpus/chunks/*.zst`, each stored in place of the chunk of
/// `"page"` x 2048): each is refused as corrupt, for its reason, never returned.
#[tokio::test]
async fn hostile_chunks_are_corrupt() {
    let dir = tempfile::tempdir().unwrap();
    let repo = temp_repo(dir.path()).await;
    let content = b"page".repeat(2048);
    let id = ChunkId::of(&content);
    let path = dir.path().join("repo/chunks").join(&id.to_hex()[..2]);
    std::fs::create_dir_all(&path).unwrap();
    let cases = corpus_files("chunks", "zst");
    assert!(cases.len() >= 7, "chunk corpus incomplete");
    for (name, bytes, want) in cases {
        std::fs::write(path.join(id.to_hex()), bytes).unwrap();
        let err = repo.read_chunk(&id, content.len()).await.unwrap_err();
        assert!(
            matches!(err, RepoError::CorruptChunk { .. }) && err.to_string().contains(&want),
            "{name}: expected {want:?} in {err:?}"
        );
    }
}

/// A chunk's place in a `file://` repository taken by what is not a regular file: a link to a
/// valid chunk object outside it, a FIFO (which would block a reader that opens it plainly), a
/// directory. Each is refused as corrupt, neither followed nor waited on; an absent one is
/// missing.
#[tokio::test]
async fn chunk_objects_that_are_not_regular_files_are_corrupt() {
    let dir = tempfile::tempdir().unwrap();
    let repo = temp_repo(dir.path()).await;
    let content = b"page".repeat(2048);
    let id = ChunkId::of(&content);
    let parent = dir.path().join("repo/chunks").join(&id.to_hex()[..2]);
    std::fs::create_dir_all(&parent).unwrap();
    let place = parent.join(id.to_hex());
    let read = || {
        tokio::time::timeout(
            std::time::Duration::from_secs(10),
            repo.read_chunk(&id, content.len()),
        )
    };
    let err = read().await.expect("answers").unwrap_err();
    assert!(matches!(err, RepoError::MissingChunk { .. }), "{err:?}");

    let outside = dir.path().join("outside.zst");
    std::fs::write(&outside, zstd::encode_all(&content[..], 1).unwrap()).unwrap();
    std::os::unix::fs::symlink(&outside, &place).unwrap();
    let err = read().await.expect("answers").unwrap_err();
    assert!(err.to_string().contains("symbolic link"), "{err:?}");
    std::fs::remove_file(&place).unwrap();

    let made = std::process::Command::new("mkfifo").arg(&place).status();
    assert!(made.unwrap().success(), "mkfifo");
    let err = read().await.expect("a FIFO is not waited on").unwrap_err();
    assert!(err.to_string().contains("not a regular file"), "{err:?}");
    std::fs::remove_file(&place).unwrap();

    std::fs::create_dir(&place).unwrap();
    let err = read().await.expect("answers").unwrap_err();
    assert!(
        matches!(err, RepoError::CorruptChunk { .. })
            && err.to_string().contains("not a regular file"),
        "{err:?}"
    );
    std::fs::remove_dir(&place).unwrap();

    // The same object in its place is read.
    std::fs::rename(&outside, &place).unwrap();
    assert_eq!(read().await.unwrap().unwrap(), content);
}

/// The files of `tests/corpus/<kind>` ending in `.<ext>`, with the refusal each must get
/// (`expect.json` names one for every file, and every file it names exists).
fn corpus_files(kind: &str, ext: &str) -> Vec<(String, Vec<u8>, String)> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/corpus")
        .join(kind);
    let expect: serde_json::Map<String, Value> =
        serde_json::from_slice(&std::fs::read(dir.join("expect.json")).unwrap()).unwrap();
    let mut files: Vec<String> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|name| name.ends_with(&format!(".{ext}")))
        .collect();
    files.sort();
    let named: Vec<&String> = expect.keys().collect();
    assert_eq!(
        files.iter().collect::<Vec<_>>(),
        named,
        "{kind}: expect.json and the files differ"
    );
    files
        .into_iter()
        .map(|name| {
            let bytes = std::fs::read(dir.join(&name)).unwrap();
            let want = expect[&name].as_str().unwrap().to_owned();
            (name, bytes, want)
        })
        .collect()
}

/// Tars that try to leave the data directory or confuse the reader (`tests/corpus/tars`).
fn hostile_tars() -> Vec<(String, Vec<u8>, String)> {
    let tars = corpus_files("tars", "tar");
    assert!(tars.len() >= 15, "tar corpus incomplete");
    tars
}

#[tokio::test]
async fn hostile_tars_are_refused_naming_the_entry() {
    let dir = tempfile::tempdir().unwrap();
    let repo = temp_repo(dir.path()).await;
    for (name, tar, want) in hostile_tars() {
        let err = repo
            .ingest_tar(std::io::Cursor::new(tar), Arc::default())
            .await
            .unwrap_err();
        assert!(
            err.to_string().contains(&want),
            "{name}: expected {want:?} in {err}"
        );
    }
    assert!(repo.list_backups().await.unwrap().backups.is_empty());
}

/// Hostile values put in place of one scalar of a seed manifest.
const HOSTILE_VALUES: &[&str] = &[
    "0",
    "-1",
    "18446744073709551615",
    "-9223372036854775808",
    "1e308",
    "null",
    "true",
    "\"\"",
    "\"../..\"",
    "\"/etc/passwd\"",
    "\"a\\u0000b\"",
    "\"base/..\"",
    "[]",
    "{}",
    "\"PG_VERSION\"",
    "\"symlink\"",
    "\"dir\"",
];

fn seeds() -> Vec<Vec<u8>> {
    corpus().into_iter().map(|c| c.json).collect()
}

/// Replaces the `n`-th scalar (in a depth-first walk) of `v` with `with`.
fn replace_scalar(v: &mut Value, n: &mut usize, with: &Value) -> bool {
    match v {
        Value::Array(items) => items.iter_mut().any(|i| replace_scalar(i, n, with)),
        Value::Object(map) => map.values_mut().any(|i| replace_scalar(i, n, with)),
        _ if *n == 0 => {
            *v = with.clone();
            true
        }
        _ => {
            *n -= 1;
            false
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig {
        cases: fuzz_cases(512),
        failure_persistence: Some(Box::new(FileFailurePersistence::Direct(REGRESSIONS))),
        ..ProptestConfig::default()
    })]

    /// Byte edits of the JSON and of the compressed object: decoding returns, never panics.
    #[test]
    fn manifest_decoding_never_panics(
        seed in any::<prop::sample::Index>(),
        json_edits in prop::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 0..8),
        zstd_edits in prop::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 0..4),
        cut in any::<prop::sample::Index>(),
    ) {
        let seeds = seeds();
        let mut json = seeds[seed.index(seeds.len())].clone();
        for (at, byte) in &json_edits {
            let i = at.index(json.len());
            json[i] = *byte;
        }
        let _ = BackupManifest::decode(&compress(&json), DEFAULT_ID, CHUNK);
        let mut z = compress(&json);
        for (at, byte) in &zstd_edits {
            let i = at.index(z.len());
            z[i] = *byte;
        }
        let _ = BackupManifest::decode(&z, DEFAULT_ID, CHUNK);
        let keep = cut.index(z.len() + 1);
        let _ = BackupManifest::decode(&z[..keep], DEFAULT_ID, CHUNK);
    }

    /// Structured edits: one scalar of a seed becomes a hostile value. Whatever validation
    /// accepts stays within its limits.
    #[test]
    fn hostile_values_never_panic_and_what_passes_is_sound(
        seed in any::<prop::sample::Index>(),
        at in 0usize..400,
        value in any::<prop::sample::Index>(),
    ) {
        let seeds: Vec<Value> = seeds().iter().filter_map(|s| serde_json::from_slice(s).ok()).collect();
        let mut v = seeds[seed.index(seeds.len())].clone();
        let with: Value = serde_json::from_str(HOSTILE_VALUES[value.index(HOSTILE_VALUES.len())]).unwrap();
        let mut n = at;
        replace_scalar(&mut v, &mut n, &with);
        let json = serde_json::to_vec(&v).unwrap();
        if let Ok(m) = BackupManifest::decode(&compress(&json), DEFAULT_ID, CHUNK) {
            prop_assert_eq!(m.chunk_size, CHUNK);
            for e in &m.entries {
                prop_assert!(!e.path.starts_with('/') && !e.path.split('/').any(|p| p == ".."));
                prop_assert!(e.mode <= 0o7777);
            }
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig {
        cases: fuzz_cases(128),
        failure_persistence: Some(Box::new(FileFailurePersistence::Direct(REGRESSIONS))),
        ..ProptestConfig::default()
    })]

    /// Byte edits of good and hostile tars: an ingest returns (a backup or an error), never
    /// panics, and what it stores passes validation.
    #[test]
    fn tar_ingest_never_panics(
        seed in any::<prop::sample::Index>(),
        edits in prop::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 1..6),
    ) {
        let mut seeds: Vec<Vec<u8>> = hostile_tars().into_iter().map(|(_, t, _)| t).collect();
        seeds.push(common::cluster_tar());
        let mut tar = seeds[seed.index(seeds.len())].clone();
        for (at, byte) in &edits {
            let i = at.index(tar.len());
            tar[i] = *byte;
        }
        let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        runtime.block_on(async {
            let dir = tempfile::tempdir().unwrap();
            let repo = temp_repo(dir.path()).await;
            if let Ok(m) = repo.ingest_tar(std::io::Cursor::new(tar), Arc::new(Progress::default())).await {
                let again: Repository = Repository::open(&ir_repository::RepoLocation::new(repo.url())).await.unwrap();
                assert_eq!(again.load_manifest(&m.id).await.unwrap(), m);
            }
        });
    }
}

/// What an S3 server answers with an error is summarised, never repeated whole: its XML body
/// is left out but for the error code.
#[tokio::test]
async fn s3_error_bodies_are_left_out_of_messages() {
    let s3 = ir_e2e::s3::S3Server::start();
    let location = ir_repository::RepoLocation {
        s3_endpoint: Some(s3.endpoint()),
        s3_region: Some("us-east-1".into()),
        allow_http: Some(true),
        credentials: ir_repository::Credentials::Keys(ir_repository::S3Credentials {
            access_key_id: "nobody".into(),
            secret_access_key: "wrong-secret".into(),
        }),
        ..ir_repository::RepoLocation::new(s3.url("repo"))
    };
    let err = Repository::open(&location).await.unwrap_err();
    let msg = err.to_string();
    assert!(!msg.contains('<') && !msg.contains('\n'), "{msg}");
    assert!(
        msg.contains("403") && msg.contains("(InvalidAccessKeyId)"),
        "{msg}"
    );
    assert!(msg.len() < 600, "{msg}");
}

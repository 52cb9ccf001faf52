//! Helpers shared by the integration tests.
#![allow(dead_code)] // each test binary uses its own part of this module

use std::collections::BTreeMap;
use std::io;
use std::path::{Path, PathBuf};

use ir_repository::{BackupManifest, Entry, EntryKind, RepoLocation, Repository};

pub const CHUNK: u64 = 64 * 1024;

pub async fn temp_repo(dir: &Path) -> Repository {
    let url = format!("file://{}", dir.join("repo").display());
    Repository::init(&RepoLocation::new(url), CHUNK)
        .await
        .expect("init repository")
}

/// The bytes of a file of a backup, read through `read_chunk`.
pub async fn read_back(repo: &Repository, m: &BackupManifest, e: &Entry) -> Vec<u8> {
    let EntryKind::File { chunks } = &e.kind else {
        panic!("{} is not a file", e.path)
    };
    assert_eq!(chunks.len() as u64, m.chunk_count(e.size), "{}", e.path);
    let mut out = Vec::with_capacity(e.size as usize);
    for (i, c) in chunks.iter().enumerate() {
        let len = m.chunk_len(e.size, i as u64);
        match c {
            Some(id) => out.extend_from_slice(&repo.read_chunk(id, len).await.expect("read chunk")),
            None => out.resize(out.len() + len, 0),
        }
    }
    out
}

pub fn entry<'a>(m: &'a BackupManifest, path: &str) -> &'a Entry {
    m.entries
        .iter()
        .find(|e| e.path == path)
        .unwrap_or_else(|| panic!("{path} not in the backup"))
}

/// Files under `dir`, recursively (chunk objects of a file:// repository).
pub fn count_files(dir: &Path) -> usize {
    if !dir.exists() {
        return 0;
    }
    std::fs::read_dir(dir)
        .unwrap()
        .map(|e| {
            let e = e.unwrap();
            if e.file_type().unwrap().is_dir() {
                count_files(&e.path())
            } else {
                1
            }
        })
        .sum()
}

pub fn control(state: u32, checkpoint: u64, timeline: u32) -> Vec<u8> {
    let mut b = vec![0u8; 8192];
    b[0..8].copy_from_slice(&7_311_234_567_890_123_456u64.to_le_bytes());
    b[16..20].copy_from_slice(&state.to_le_bytes());
    b[32..40].copy_from_slice(&checkpoint.to_le_bytes());
    b[48..52].copy_from_slice(&timeline.to_le_bytes());
    b
}

/// Pseudo-random bytes that do not compress away.
pub fn noise(len: usize, seed: u64) -> Vec<u8> {
    let mut x = seed
        .wrapping_mul(6364136223846793005)
        .wrapping_add(1442695040888963407)
        | 1;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect()
}

/// A small data directory: path -> content; directories are implied.
pub fn cluster_files() -> BTreeMap<&'static str, Vec<u8>> {
    let mut big = noise(3 * CHUNK as usize + 100, 1);
    // An all-zero chunk in the middle.
    big[CHUNK as usize..2 * CHUNK as usize].fill(0);
    let mut files = BTreeMap::new();
    files.insert("PG_VERSION", b"15\n".to_vec());
    files.insert("global/pg_control", control(1, 0x1_0000_0028, 1));
    files.insert("base/1/1259", big);
    files.insert("base/1/1249", noise(CHUNK as usize, 2));
    files.insert("base/1/empty", Vec::new());
    files.insert("pg_wal/000000010000000000000002", noise(200_000, 3));
    files.insert("postgresql.conf", b"shared_buffers = 128MB\n".to_vec());
    files
}

pub fn tar_of(files: &BTreeMap<&str, Vec<u8>>, extra: &[(&str, Vec<u8>)]) -> Vec<u8> {
    let mut b = tar::Builder::new(Vec::new());
    let mut h = tar::Header::new_gnu();
    h.set_entry_type(tar::EntryType::Directory);
    h.set_mode(0o700);
    h.set_uid(26);
    h.set_gid(27);
    h.set_size(0);
    b.append_data(&mut h, "./", io::empty()).unwrap();
    for dir in ["base", "base/1", "global", "pg_wal", "pg_tblspc"] {
        b.append_data(&mut h, dir, io::empty()).unwrap();
    }
    let mut h = tar::Header::new_gnu();
    h.set_entry_type(tar::EntryType::Symlink);
    h.set_mode(0o777);
    h.set_uid(26);
    h.set_gid(27);
    h.set_mtime(0);
    h.set_size(0);
    b.append_link(&mut h, "pg_log", "/var/log/postgresql")
        .unwrap();
    for (path, data) in files
        .iter()
        .map(|(p, d)| (*p, d))
        .chain(extra.iter().map(|(p, d)| (*p, d)))
    {
        let mut h = tar::Header::new_gnu();
        h.set_mode(0o600);
        h.set_uid(26);
        h.set_gid(27);
        h.set_mtime(1_700_000_000);
        h.set_size(data.len() as u64);
        b.append_data(&mut h, path, &data[..]).unwrap();
    }
    b.into_inner().unwrap()
}

pub fn label_and_manifest() -> Vec<(&'static str, Vec<u8>)> {
    vec![
        (
            "backup_label",
            b"START WAL LOCATION: 0/2000028 (file 000000010000000000000002)\n\
              CHECKPOINT LOCATION: 0/2000060\nSTART TIMELINE: 1\n"
                .to_vec(),
        ),
        (
            "backup_manifest",
            br#"{"PostgreSQL-Backup-Manifest-Version": 1, "Files": [],
"WAL-Ranges": [{ "Timeline": 1, "Start-LSN": "0/2000028", "End-LSN": "0/2000100" }],
"Manifest-Checksum": "00"}
"#
            .to_vec(),
        ),
    ]
}

/// The small cluster of [`cluster_files`] as a cold data directory under `parent`.
pub fn cluster_dir(parent: &Path) -> PathBuf {
    let data = parent.join("cluster");
    for (path, content) in cluster_files() {
        let p = data.join(path);
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        std::fs::write(&p, content).unwrap();
    }
    data
}

/// The small cluster of [`cluster_files`] as `pg_basebackup -Ft` would stream it.
pub fn cluster_tar() -> Vec<u8> {
    tar_of(&cluster_files(), &label_and_manifest())
}

/// Cases per property test: `default`, or `PROPTEST_CASES` for longer runs.
pub fn fuzz_cases(default: u32) -> u32 {
    std::env::var("PROPTEST_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

pub const SYSID: u64 = 7_311_234_567_890_123_456;
pub const SEG: u64 = 1 << 20;

/// Segment `segno` of `timeline` as PostgreSQL 15 writes its first page, with `fill` after
/// the header so that segments differ.
pub fn segment(timeline: u32, segno: u64, sysid: u64, fill: u8) -> (String, Vec<u8>) {
    let per_log = 0x1_0000_0000 / SEG;
    let name = format!(
        "{timeline:08X}{:08X}{:08X}",
        segno / per_log,
        segno % per_log
    );
    let mut b = vec![fill; SEG as usize];
    b[0..2].copy_from_slice(&0xD110u16.to_le_bytes());
    b[2..4].copy_from_slice(&0x0006u16.to_le_bytes());
    b[4..8].copy_from_slice(&timeline.to_le_bytes());
    b[8..16].copy_from_slice(&(segno * SEG).to_le_bytes());
    b[16..24].fill(0);
    b[24..32].copy_from_slice(&sysid.to_le_bytes());
    b[32..36].copy_from_slice(&(SEG as u32).to_le_bytes());
    b[36..40].copy_from_slice(&8192u32.to_le_bytes());
    (name, b)
}

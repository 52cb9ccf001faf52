//! Helpers shared by the integration tests.
#![allow(dead_code)] // each test binary uses its own part of this module

use std::path::Path;

use ir_repository::{BackupManifest, Entry, EntryKind, Repository, StoreOptions};

pub const CHUNK: u64 = 64 * 1024;

pub async fn temp_repo(dir: &Path) -> Repository {
    let url = format!("file://{}", dir.join("repo").display());
    Repository::init(&url, CHUNK, &StoreOptions::default())
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

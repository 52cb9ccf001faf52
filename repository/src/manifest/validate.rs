//! A manifest is checked whole before anything uses it: every reader (list, show, verify,
//! restore, mount, gc) gets either a manifest whose every field is consistent or an error that
//! names the field.

use std::collections::{BTreeMap, HashMap};

use super::{BackupManifest, EntryKind, FORMAT_VERSION, is_backup_id};
use crate::lsn::parse_lsn;

/// Entries one manifest may list: far more than any PostgreSQL data directory has, few enough
/// that the checks and the IRCache's namespace stay in memory.
pub const MAX_ENTRIES: usize = 10_000_000;
/// Modification times outside years 0 to 9999 are refused: they do not fit every time type a
/// reader converts them to.
const MIN_MTIME: i64 = -62_167_219_200;
const MAX_MTIME: i64 = 253_402_300_799;
/// Largest file: what `off_t` can address.
const MAX_FILE_SIZE: u64 = i64::MAX as u64;
/// uid and gid `-1` mean "leave unchanged" to chown(2): never an owner.
const NO_ID: u32 = u32::MAX;

/// Labels one backup may carry, and their sizes: enough to say who made it and why, small
/// next to the manifest's entries.
pub const MAX_LABELS: usize = 32;
const MAX_LABEL_KEY: usize = 253;
const MAX_LABEL_VALUE: usize = 1024;

/// What is wrong with a manifest: the field (`entries[12].chunks`) and why.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{field}: {reason}")]
pub struct ManifestError {
    pub field: String,
    pub reason: String,
}

fn bad(field: impl Into<String>, reason: impl Into<String>) -> ManifestError {
    ManifestError {
        field: field.into(),
        reason: reason.into(),
    }
}

impl BackupManifest {
    /// Checks the manifest as a whole against the repository's chunk size.
    pub fn validate(&self, repo_chunk_size: u64) -> Result<(), ManifestError> {
        if self.format_version != FORMAT_VERSION {
            return Err(bad(
                "format_version",
                format!(
                    "{} is not supported (this build reads {FORMAT_VERSION})",
                    self.format_version
                ),
            ));
        }
        if !is_backup_id(&self.id) {
            return Err(bad("id", "expected letters, digits and '-' only"));
        }
        if self.chunk_size != repo_chunk_size {
            return Err(bad(
                "chunk_size",
                format!(
                    "{} differs from the repository's chunk size {repo_chunk_size}",
                    self.chunk_size
                ),
            ));
        }
        let major = self.pg_version.split('.').next().unwrap_or_default();
        if self.pg_version.len() > 5
            || major.is_empty()
            || !self
                .pg_version
                .chars()
                .all(|c| c.is_ascii_digit() || c == '.')
        {
            return Err(bad(
                "pg_version",
                format!("{:?} is not a PostgreSQL version", self.pg_version),
            ));
        }
        if self.ended.is_some_and(|ended| ended < self.created) {
            return Err(bad("ended", "lies before created"));
        }
        if self.system_identifier.parse::<u64>().is_err() {
            return Err(bad(
                "system_identifier",
                format!("{:?} is not a decimal number", self.system_identifier),
            ));
        }
        let start = parse_lsn(&self.start_lsn)
            .ok_or_else(|| bad("start_lsn", format!("{:?} is not an LSN", self.start_lsn)))?;
        if let Some(stop) = &self.stop_lsn {
            let stop = parse_lsn(stop)
                .ok_or_else(|| bad("stop_lsn", format!("{stop:?} is not an LSN")))?;
            if stop < start {
                return Err(bad("stop_lsn", "lies before start_lsn"));
            }
        }
        if self.timeline == 0 {
            return Err(bad("timeline", "0 is not a timeline"));
        }
        check_owner_mode("root", self.root_mode, self.root_uid, self.root_gid)?;
        check_labels(&self.labels)?;
        if self.entries.len() > MAX_ENTRIES {
            return Err(bad(
                "entries",
                format!("{} entries, more than {MAX_ENTRIES}", self.entries.len()),
            ));
        }
        let mut seen: HashMap<&str, (usize, &EntryKind)> = HashMap::new();
        let mut total: u64 = 0;
        for (i, e) in self.entries.iter().enumerate() {
            let field = |name: &str| format!("entries[{i}].{name} ({})", e.path);
            check_owner_mode(&format!("entries[{i}] ({})", e.path), e.mode, e.uid, e.gid)?;
            if !(MIN_MTIME..=MAX_MTIME).contains(&e.mtime) {
                return Err(bad(field("mtime"), format!("{} is out of range", e.mtime)));
            }
            if let Some(parent) = e.path.parent() {
                match seen.get(parent) {
                    Some((_, EntryKind::Dir)) => {}
                    Some((j, EntryKind::Symlink { .. })) => {
                        return Err(bad(
                            field("path"),
                            format!("lies below entries[{j}], a symbolic link"),
                        ));
                    }
                    Some((j, EntryKind::File { .. })) => {
                        return Err(bad(
                            field("path"),
                            format!("lies below entries[{j}], a file"),
                        ));
                    }
                    None => {
                        return Err(bad(
                            field("path"),
                            format!("its directory {parent} is not listed before it"),
                        ));
                    }
                }
            }
            if let Some((j, _)) = seen.insert(&e.path, (i, &e.kind)) {
                return Err(bad(field("path"), format!("also listed as entries[{j}]")));
            }
            match &e.kind {
                EntryKind::Dir if e.size != 0 => {
                    return Err(bad(field("size"), "a directory has size 0"));
                }
                EntryKind::Dir => {}
                EntryKind::Symlink { target } => {
                    check_symlink_target(target).map_err(|reason| bad(field("target"), reason))?;
                    if e.size != target.len() as u64 {
                        return Err(bad(field("size"), "differs from the target's length"));
                    }
                }
                EntryKind::File { chunks } => {
                    if e.size > MAX_FILE_SIZE {
                        return Err(bad(field("size"), format!("{} is too large", e.size)));
                    }
                    let want = e.size.div_ceil(self.chunk_size);
                    if chunks.len() as u64 != want {
                        return Err(bad(
                            field("chunks"),
                            format!(
                                "{} chunks for {} bytes; {want} expected",
                                chunks.len(),
                                e.size
                            ),
                        ));
                    }
                    total = total
                        .checked_add(e.size)
                        .ok_or_else(|| bad("total_size", "the file sizes overflow"))?;
                }
            }
        }
        if total != self.total_size {
            return Err(bad(
                "total_size",
                format!(
                    "{} differs from the sum of the file sizes, {total}",
                    self.total_size
                ),
            ));
        }
        Ok(())
    }
}

/// Labels are printed in listings and matched by prune: printable keys of letters, digits and
/// `-_./`, values without control characters, and few of them.
pub fn check_labels(labels: &BTreeMap<String, String>) -> Result<(), ManifestError> {
    if labels.len() > MAX_LABELS {
        return Err(bad(
            "labels",
            format!("{} labels, more than {MAX_LABELS}", labels.len()),
        ));
    }
    for (key, value) in labels {
        let key_ok = !key.is_empty()
            && key.len() <= MAX_LABEL_KEY
            && key
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || "-_./".contains(c));
        if !key_ok {
            return Err(bad(
                "labels",
                format!(
                    "key {:?} is not 1 to {MAX_LABEL_KEY} letters, digits, '-', '_', '.' or '/'",
                    key.escape_debug().to_string()
                ),
            ));
        }
        if value.len() > MAX_LABEL_VALUE || value.chars().any(char::is_control) {
            return Err(bad(
                format!("labels.{key}"),
                format!("longer than {MAX_LABEL_VALUE} bytes or holds a control character"),
            ));
        }
    }
    Ok(())
}

fn check_owner_mode(what: &str, mode: u32, uid: u32, gid: u32) -> Result<(), ManifestError> {
    if mode & !0o7777 != 0 {
        return Err(bad(
            format!("{what}.mode"),
            format!("{mode:#o} has bits besides the permission bits"),
        ));
    }
    if uid == NO_ID || gid == NO_ID {
        return Err(bad(format!("{what}.uid/gid"), "4294967295 is not an owner"));
    }
    Ok(())
}

/// A symlink target as the kernel takes it. Where it points is the backup's business: a restore
/// creates it without following it, and PostgreSQL follows it with its own rights, as it did on
/// the source host (`pg_log -> /var/log/postgresql` is common).
fn check_symlink_target(target: &str) -> Result<(), String> {
    if target.is_empty() || target.len() > super::path::MAX_PATH_BYTES || target.contains('\0') {
        return Err("empty, longer than 4095 bytes or with a NUL byte".to_string());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::chunk_id::ChunkId;
    use crate::manifest::{Entry, EntryPath};

    const CS: u64 = 64 * 1024;

    fn entry(path: &str, kind: EntryKind, size: u64) -> Entry {
        Entry {
            path: EntryPath::new(path).unwrap(),
            kind,
            mode: 0o700,
            uid: 26,
            gid: 26,
            size,
            mtime: 1_700_000_000,
        }
    }

    fn file(path: &str, size: u64) -> Entry {
        let chunks = vec![Some(ChunkId([1; 32])); size.div_ceil(CS) as usize];
        entry(path, EntryKind::File { chunks }, size)
    }

    fn link(path: &str, target: &str) -> Entry {
        let kind = EntryKind::Symlink {
            target: target.into(),
        };
        entry(path, kind, target.len() as u64)
    }

    fn manifest(entries: Vec<Entry>) -> BackupManifest {
        let total_size = entries
            .iter()
            .filter(|e| matches!(e.kind, EntryKind::File { .. }))
            .map(|e| e.size)
            .sum();
        BackupManifest {
            format_version: FORMAT_VERSION,
            id: "20261125T063512Z-3fa2".into(),
            created: time::OffsetDateTime::UNIX_EPOCH,
            ended: None,
            pg_version: "15".into(),
            system_identifier: "7311234567890123456".into(),
            start_lsn: "0/2000028".into(),
            stop_lsn: Some("0/2000100".into()),
            timeline: 1,
            total_size,
            chunk_size: CS,
            root_mode: 0o700,
            root_uid: 26,
            root_gid: 26,
            labels: Default::default(),
            entries,
        }
    }

    fn good() -> BackupManifest {
        manifest(vec![
            file("PG_VERSION", 3),
            entry("base", EntryKind::Dir, 0),
            entry("base/1", EntryKind::Dir, 0),
            file("base/1/1259", 3 * CS + 1),
            link("base/1/up", "../../PG_VERSION"),
        ])
    }

    fn refusal(m: &BackupManifest) -> String {
        m.validate(CS).expect_err("refused").to_string()
    }

    #[test]
    fn a_consistent_manifest_passes() {
        good().validate(CS).unwrap();
    }

    #[test]
    fn each_inconsistency_names_its_field() {
        type Spoil = fn(&mut BackupManifest);
        let cases: Vec<(Spoil, &str)> = vec![
            (|m| m.format_version = 2, "format_version"),
            (|m| m.id = "../x".into(), "id"),
            (|m| m.chunk_size = 0, "chunk_size: 0 differs"),
            (|m| m.chunk_size = 1 << 40, "chunk_size"),
            (|m| m.pg_version = "15; rm".into(), "pg_version"),
            (|m| m.system_identifier = "-1".into(), "system_identifier"),
            (|m| m.start_lsn = "zz".into(), "start_lsn"),
            (|m| m.stop_lsn = Some("0/1".into()), "stop_lsn: lies before"),
            (|m| m.timeline = 0, "timeline"),
            (|m| m.root_mode = 0o100700, "root.mode"),
            (|m| m.root_uid = u32::MAX, "root.uid/gid"),
            (
                |m| drop(m.labels.insert("a b".into(), "x".into())),
                "labels: key",
            ),
            (
                |m| drop(m.labels.insert("k".into(), "\u{1b}[2J".into())),
                "labels.k: longer",
            ),
            (
                |m| {
                    m.labels = (0..=MAX_LABELS)
                        .map(|i| (i.to_string(), String::new()))
                        .collect()
                },
                "labels: 33 labels",
            ),
            (|m| m.total_size += 1, "total_size"),
            (
                |m| m.entries[0].mode = 0o170777,
                "entries[0] (PG_VERSION).mode",
            ),
            (|m| m.entries[0].mtime = i64::MAX, "entries[0].mtime"),
            (|m| m.entries[1].size = 4096, "entries[1].size"),
            (
                |m| m.entries.swap(1, 2),
                "entries[1].path (base/1): its directory base",
            ),
            (
                |m| m.entries[3].kind = EntryKind::File { chunks: vec![] },
                "entries[3].chunks (base/1/1259): 0 chunks for 196609 bytes; 4 expected",
            ),
            (
                |m| {
                    m.entries[3].size = u64::MAX;
                },
                "entries[3].size",
            ),
            (
                |m| m.entries.push(file("PG_VERSION", 0)),
                "entries[5].path (PG_VERSION): also listed as entries[0]",
            ),
            (
                |m| m.entries.push(file("PG_VERSION/x", 0)),
                "lies below entries[0], a file",
            ),
            (
                |m| {
                    m.entries.push(link("lnk", "base"));
                    m.entries.push(file("lnk/f", 0));
                },
                "entries[6].path (lnk/f): lies below entries[5], a symbolic link",
            ),
            (
                |m| {
                    m.entries[4].kind = EntryKind::Symlink {
                        target: "x\0y".into(),
                    }
                },
                "NUL",
            ),
        ];
        for (spoil, want) in cases {
            let mut m = good();
            spoil(&mut m);
            let err = refusal(&m);
            assert!(err.contains(want), "expected {want:?} in {err:?}");
        }
    }

    #[test]
    fn symlinks_keep_their_targets() {
        let mut m = good();
        m.entries.push(link("pg_log", "/var/log/postgresql"));
        m.entries.push(link("base/1/up2", "../../../elsewhere"));
        m.validate(CS).unwrap();
        assert!(check_symlink_target("").is_err());
        assert!(check_symlink_target(&"a".repeat(4096)).is_err());
    }
}

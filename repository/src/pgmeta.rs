//! What a backup says about its cluster: PG_VERSION, global/pg_control, backup_label and
//! backup_manifest, captured while the files stream past.

use serde::Deserialize;

use crate::error::RepoError;
use crate::lsn::parse_lsn;

/// pg_control's DBState for a cluster stopped by a clean shutdown.
const DB_SHUTDOWNED: u32 = 1;
/// Bytes of the files kept from their start (PG_VERSION, pg_control, backup_label).
const HEAD_LIMIT: usize = 64 * 1024;
/// Bytes kept from the end of backup_manifest: WAL-Ranges is its last section, and the whole
/// file (one line per data file) can be large.
const TAIL_LIMIT: usize = 1024 * 1024;

#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct PgMeta {
    pub pg_version: String,
    pub system_identifier: u64,
    pub start_lsn: u64,
    pub stop_lsn: Option<u64>,
    pub timeline: u32,
}

/// What the engine needs of a `backup_label`.
#[derive(Debug, PartialEq, Eq)]
pub struct BackupLabel {
    pub start_lsn: u64,
    pub timeline: u32,
}

pub fn parse_backup_label(text: &str) -> Result<BackupLabel, String> {
    let mut start_lsn = None;
    let mut timeline = None;
    for line in text.lines() {
        if let Some(rest) = line.strip_prefix("START WAL LOCATION:") {
            // `0/2000028 (file 000000010000000000000002)`
            let lsn = rest.split_whitespace().next().unwrap_or("");
            start_lsn = Some(parse_lsn(lsn).ok_or_else(|| format!("bad start LSN {lsn:?}"))?);
        } else if let Some(rest) = line.strip_prefix("START TIMELINE:") {
            let t = rest.trim();
            timeline = Some(t.parse().map_err(|_| format!("bad timeline {t:?}"))?);
        }
    }
    Ok(BackupLabel {
        start_lsn: start_lsn.ok_or("no START WAL LOCATION line")?,
        // Labels before PostgreSQL 11 have no START TIMELINE; the WAL file name has it too.
        timeline: match timeline {
            Some(t) => t,
            None => timeline_from_label_file(text).ok_or("no START TIMELINE line")?,
        },
    })
}

fn timeline_from_label_file(text: &str) -> Option<u32> {
    let at = text.find("(file ")? + "(file ".len();
    u32::from_str_radix(text.get(at..at + 8)?, 16).ok()
}

/// End-LSN of the last WAL range in (the tail of) a backup_manifest.
pub(crate) fn parse_manifest_stop_lsn(tail: &[u8]) -> Result<Option<u64>, String> {
    #[derive(Deserialize)]
    struct Tail {
        #[serde(rename = "WAL-Ranges")]
        wal_ranges: Vec<Range>,
    }
    #[derive(Deserialize)]
    struct Range {
        #[serde(rename = "End-LSN")]
        end_lsn: String,
    }
    let text = String::from_utf8_lossy(tail);
    let Some(at) = text.rfind("\"WAL-Ranges\"") else {
        return Ok(None);
    };
    // From the key to the end is the rest of the top-level object: make it an object again.
    let parsed: Tail = serde_json::from_str(&format!("{{{}", &text[at..]))
        .map_err(|e| format!("cannot parse WAL-Ranges: {e}"))?;
    match parsed.wal_ranges.last() {
        None => Ok(None),
        Some(r) => parse_lsn(&r.end_lsn)
            .map(Some)
            .ok_or_else(|| format!("bad End-LSN {:?}", r.end_lsn)),
    }
}

#[derive(Debug, PartialEq, Eq)]
pub(crate) struct ControlFile {
    pub system_identifier: u64,
    pub state: u32,
    pub checkpoint: u64,
    pub timeline: u32,
}

impl ControlFile {
    pub fn shut_down_cleanly(&self) -> bool {
        self.state == DB_SHUTDOWNED
    }
}

/// The fields of ControlFileData that have kept their offsets since PostgreSQL 9.x (checked
/// against PostgreSQL 15): system identifier at 0, state at 16, checkpoint LSN at 32, and the
/// checkpoint copy's timeline at 48. Host byte order, which is little-endian on our targets.
pub(crate) fn parse_pg_control(b: &[u8]) -> Result<ControlFile, String> {
    if b.len() < 52 {
        return Err(format!("{} bytes, too short for pg_control", b.len()));
    }
    let u64_at = |o: usize| u64::from_le_bytes(b[o..o + 8].try_into().expect("8 bytes"));
    let u32_at = |o: usize| u32::from_le_bytes(b[o..o + 4].try_into().expect("4 bytes"));
    Ok(ControlFile {
        system_identifier: u64_at(0),
        state: u32_at(16),
        checkpoint: u64_at(32),
        timeline: u32_at(48),
    })
}

/// The files whose contents the manifest metadata comes from.
#[derive(Default)]
pub(crate) struct Captured {
    pg_version: Option<Vec<u8>>,
    pg_control: Option<Vec<u8>>,
    backup_label: Option<Vec<u8>>,
    backup_manifest: Option<Vec<u8>>,
}

impl Captured {
    /// Whether the file at `path` is one to keep (from its start or its end).
    pub fn wants(path: &str) -> bool {
        matches!(
            path,
            "PG_VERSION" | "global/pg_control" | "backup_label" | "backup_manifest"
        )
    }

    /// Records the next piece of the file at `path`, which `wants`.
    pub fn feed(&mut self, path: &str, data: &[u8]) {
        let (slot, tail) = match path {
            "PG_VERSION" => (&mut self.pg_version, false),
            "global/pg_control" => (&mut self.pg_control, false),
            "backup_label" => (&mut self.backup_label, false),
            "backup_manifest" => (&mut self.backup_manifest, true),
            _ => return,
        };
        let buf = slot.get_or_insert_with(Vec::new);
        if tail {
            buf.extend_from_slice(data);
            if buf.len() > 2 * TAIL_LIMIT {
                buf.drain(..buf.len() - TAIL_LIMIT);
            }
        } else {
            let room = HEAD_LIMIT.saturating_sub(buf.len());
            buf.extend_from_slice(&data[..room.min(data.len())]);
        }
    }

    /// Marks an empty file as seen (`feed` is not called for files without data).
    pub fn seen(&mut self, path: &str) {
        self.feed(path, &[]);
    }

    pub fn derive(&self) -> Result<PgMeta, RepoError> {
        let pg_version = self.pg_version.as_ref().ok_or_else(|| {
            RepoError::unsupported(
                "PG_VERSION",
                "not found: this is not a PostgreSQL data directory",
            )
        })?;
        let pg_version = String::from_utf8_lossy(pg_version).trim().to_string();
        if pg_version.is_empty() {
            return Err(RepoError::unsupported("PG_VERSION", "file is empty"));
        }
        let control = self.pg_control.as_ref().ok_or_else(|| {
            RepoError::unsupported(
                "global/pg_control",
                "not found: this is not a PostgreSQL data directory",
            )
        })?;
        let control = parse_pg_control(control)
            .map_err(|e| RepoError::unsupported("global/pg_control", e))?;
        let stop_from_manifest = match &self.backup_manifest {
            Some(tail) => parse_manifest_stop_lsn(tail)
                .map_err(|e| RepoError::unsupported("backup_manifest", e))?,
            None => None,
        };
        match &self.backup_label {
            Some(label) => {
                let label = parse_backup_label(&String::from_utf8_lossy(label))
                    .map_err(|e| RepoError::unsupported("backup_label", e))?;
                Ok(PgMeta {
                    pg_version,
                    system_identifier: control.system_identifier,
                    start_lsn: label.start_lsn,
                    stop_lsn: stop_from_manifest,
                    timeline: label.timeline,
                })
            }
            None => {
                check_cold_copy(&control)?;
                Ok(PgMeta {
                    pg_version,
                    system_identifier: control.system_identifier,
                    start_lsn: control.checkpoint,
                    stop_lsn: Some(control.checkpoint),
                    timeline: control.timeline,
                })
            }
        }
    }
}

/// Without a backup_label, the files are only consistent if the server was stopped cleanly.
pub(crate) fn check_cold_copy(control: &ControlFile) -> Result<(), RepoError> {
    if control.shut_down_cleanly() {
        Ok(())
    } else {
        Err(RepoError::unsupported(
            "global/pg_control",
            format!(
                "data directory was not shut down cleanly (state {}); back it up with --from-pg",
                control.state
            ),
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn control_bytes(sysid: u64, state: u32, checkpoint: u64, tli: u32) -> Vec<u8> {
        let mut b = vec![0u8; 8192];
        b[0..8].copy_from_slice(&sysid.to_le_bytes());
        b[16..20].copy_from_slice(&state.to_le_bytes());
        b[32..40].copy_from_slice(&checkpoint.to_le_bytes());
        b[48..52].copy_from_slice(&tli.to_le_bytes());
        b
    }

    #[test]
    fn backup_label() {
        let text = "START WAL LOCATION: 0/2000028 (file 000000010000000000000002)\n\
                    CHECKPOINT LOCATION: 0/2000060\n\
                    BACKUP METHOD: streamed\n\
                    BACKUP FROM: primary\n\
                    START TIME: 2025-11-25 06:35:12 UTC\n\
                    LABEL: pg_basebackup base backup\n\
                    START TIMELINE: 3\n";
        assert_eq!(
            parse_backup_label(text),
            Ok(BackupLabel {
                start_lsn: 0x2000028,
                timeline: 3
            })
        );
        let old = "START WAL LOCATION: 0/9000028 (file 000000020000000000000009)\n";
        assert_eq!(parse_backup_label(old).unwrap().timeline, 2);
        assert!(parse_backup_label("LABEL: x\n").is_err());
        assert!(
            parse_backup_label("START WAL LOCATION: zz (file x)\nSTART TIMELINE: 1\n").is_err()
        );
    }

    #[test]
    fn backup_manifest_stop_lsn() {
        let m = br#"{ "PostgreSQL-Backup-Manifest-Version": 1,
"Files": [
{ "Path": "backup_label", "Size": 225, "Last-Modified": "2025-11-25 06:35:12 GMT", "Checksum-Algorithm": "CRC32C", "Checksum": "c1b2e3f4" }
],
"WAL-Ranges": [
{ "Timeline": 1, "Start-LSN": "0/2000028", "End-LSN": "0/2000100" },
{ "Timeline": 2, "Start-LSN": "0/2000100", "End-LSN": "0/3000138" }
],
"Manifest-Checksum": "8f1e"}
"#;
        assert_eq!(parse_manifest_stop_lsn(m), Ok(Some(0x3000138)));
        // Only the tail was kept: the start of the document is gone.
        let tail = &m[m.len() - 200..];
        assert_eq!(parse_manifest_stop_lsn(tail), Ok(Some(0x3000138)));
        assert_eq!(parse_manifest_stop_lsn(b"{\"Files\": []}"), Ok(None));
        assert!(parse_manifest_stop_lsn(b"{\"WAL-Ranges\": [{\"End-LSN\": \"x\"}]}").is_err());
    }

    #[test]
    fn pg_control_fields() {
        let b = control_bytes(7_300_000_000_000_000_001, 1, 0x1_0000_0028, 4);
        let c = parse_pg_control(&b).unwrap();
        assert_eq!(c.system_identifier, 7_300_000_000_000_000_001);
        assert!(c.shut_down_cleanly());
        assert_eq!(c.checkpoint, 0x1_0000_0028);
        assert_eq!(c.timeline, 4);
        assert!(parse_pg_control(&b[..40]).is_err());
    }

    #[test]
    fn derive_from_label_and_manifest() {
        let mut cap = Captured::default();
        cap.feed("PG_VERSION", b"15\n");
        cap.feed("global/pg_control", &control_bytes(42, 6, 0x500, 1));
        cap.feed(
            "backup_label",
            b"START WAL LOCATION: 0/2000028 (file 000000010000000000000002)\nSTART TIMELINE: 1\n",
        );
        cap.feed(
            "backup_manifest",
            br#"{"WAL-Ranges": [{"End-LSN": "0/2000100"}]}"#,
        );
        assert_eq!(
            cap.derive().unwrap(),
            PgMeta {
                pg_version: "15".to_string(),
                system_identifier: 42,
                start_lsn: 0x2000028,
                stop_lsn: Some(0x2000100),
                timeline: 1,
            }
        );
    }

    #[test]
    fn derive_cold_copy() {
        let mut cap = Captured::default();
        cap.feed("PG_VERSION", b"15\n");
        cap.feed("global/pg_control", &control_bytes(42, 1, 0x1500028, 2));
        let meta = cap.derive().unwrap();
        assert_eq!(
            (meta.start_lsn, meta.stop_lsn, meta.timeline),
            (0x1500028, Some(0x1500028), 2)
        );

        let mut running = Captured::default();
        running.feed("PG_VERSION", b"15\n");
        running.feed("global/pg_control", &control_bytes(42, 6, 0x1500028, 2));
        let err = running.derive().unwrap_err().to_string();
        assert!(err.contains("not shut down cleanly"), "{err}");
    }

    #[test]
    fn derive_requires_pg_files() {
        let err = Captured::default().derive().unwrap_err().to_string();
        assert!(err.contains("PG_VERSION"), "{err}");
        let mut cap = Captured::default();
        cap.feed("PG_VERSION", b"15\n");
        let err = cap.derive().unwrap_err().to_string();
        assert!(err.contains("global/pg_control"), "{err}");
    }

    #[test]
    fn manifest_tail_is_bounded() {
        let mut cap = Captured::default();
        let piece = vec![b' '; 512 * 1024];
        for _ in 0..10 {
            cap.feed("backup_manifest", &piece);
        }
        cap.feed(
            "backup_manifest",
            br#""WAL-Ranges": [{"End-LSN": "0/10"}]}"#,
        );
        assert!(cap.backup_manifest.as_ref().unwrap().len() <= 2 * TAIL_LIMIT);
        assert!(cap.derive().unwrap_err().to_string().contains("PG_VERSION"));
        assert_eq!(
            parse_manifest_stop_lsn(cap.backup_manifest.as_ref().unwrap()),
            Ok(Some(0x10))
        );
    }
}

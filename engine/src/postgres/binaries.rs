//! The server binaries of a PostgreSQL major version, and what `pg_controldata` reads from a
//! data directory.

use std::path::{Path, PathBuf};
use std::process::Command;

use super::PgError;

/// The server binaries of one PostgreSQL major version.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PgBinaries {
    pub bindir: PathBuf,
}

impl PgBinaries {
    /// Finds the binaries of `major`: in `explicit` when given, else in the usual Debian and
    /// RPM locations. The version `postgres --version` reports must match.
    pub fn find(major: u32, explicit: Option<&Path>) -> Result<PgBinaries, PgError> {
        let candidates: Vec<PathBuf> = match explicit {
            Some(dir) => vec![dir.to_path_buf()],
            None => vec![
                PathBuf::from(format!("/usr/lib/postgresql/{major}/bin")),
                PathBuf::from(format!("/usr/pgsql-{major}/bin")),
            ],
        };
        for dir in &candidates {
            let required = ["postgres", "pg_basebackup", "pg_controldata"];
            if !required.iter().all(|b| dir.join(b).is_file()) {
                continue;
            }
            let out = Command::new(dir.join("postgres")).arg("--version").output();
            let found = out
                .ok()
                .and_then(|o| parse_major(&String::from_utf8_lossy(&o.stdout)));
            if found == Some(major) {
                return Ok(PgBinaries {
                    bindir: dir.clone(),
                });
            }
        }
        let searched = candidates
            .iter()
            .map(|d| d.display().to_string())
            .collect::<Vec<_>>()
            .join(", ");
        Err(PgError::BinariesMissing { major, searched })
    }

    pub fn path(&self, program: &str) -> PathBuf {
        self.bindir.join(program)
    }
}

/// `postgres (PostgreSQL) 15.14 (Debian 15.14-1)` -> 15.
fn parse_major(version: &str) -> Option<u32> {
    let number = version
        .split_whitespace()
        .find(|w| w.starts_with(|c: char| c.is_ascii_digit()))?;
    number.split(['.', 'b', 'r']).next()?.parse().ok()
}

/// The fields of `pg_controldata` the switchover needs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ControlData {
    /// State: "shut down", "in production", ...
    pub state: String,
    pub checkpoint_lsn: u64,
    pub timeline: u32,
    /// Where the backup being recovered from began; `None` once its end was replayed (or when
    /// the cluster never was a backup).
    pub backup_start_lsn: Option<u64>,
}

pub fn control_data(bins: &PgBinaries, datadir: &Path) -> Result<ControlData, PgError> {
    let out = Command::new(bins.path("pg_controldata"))
        .arg(datadir)
        .env("LC_ALL", "C")
        .output()
        .map_err(|e| PgError::io(&bins.path("pg_controldata"), e))?;
    if !out.status.success() {
        return Err(PgError::Unexpected(format!(
            "pg_controldata {}: {}",
            datadir.display(),
            String::from_utf8_lossy(&out.stderr).trim()
        )));
    }
    parse_control_data(&String::from_utf8_lossy(&out.stdout)).ok_or_else(|| {
        PgError::Unexpected(format!(
            "cannot read pg_controldata output for {}",
            datadir.display()
        ))
    })
}

fn parse_control_data(text: &str) -> Option<ControlData> {
    let field = |name: &str| {
        text.lines()
            .find_map(|l| l.strip_prefix(name)?.strip_prefix(':').map(str::trim))
    };
    Some(ControlData {
        state: field("Database cluster state")?.to_owned(),
        checkpoint_lsn: ir_repository::parse_lsn(field("Latest checkpoint location")?)?,
        timeline: field("Latest checkpoint's TimeLineID")?.parse().ok()?,
        backup_start_lsn: match ir_repository::parse_lsn(field("Backup start location")?)? {
            0 => None,
            lsn => Some(lsn),
        },
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn major_version_from_version_string() {
        assert_eq!(
            parse_major("postgres (PostgreSQL) 15.14 (Debian 15.14-1.pgdg13+1)\n"),
            Some(15)
        );
        assert_eq!(parse_major("postgres (PostgreSQL) 17beta2"), Some(17));
        assert_eq!(parse_major("postgres (PostgreSQL) 9.6.24"), Some(9));
        assert_eq!(parse_major("nonsense"), None);
    }

    #[test]
    fn control_data_fields() {
        let text = "pg_control version number:            1300\n\
                    Database cluster state:               shut down\n\
                    Latest checkpoint location:           0/3000028\n\
                    Latest checkpoint's REDO location:    0/3000028\n\
                    Latest checkpoint's TimeLineID:       1\n\
                    Backup start location:                0/0\n";
        assert_eq!(
            parse_control_data(text),
            Some(ControlData {
                state: "shut down".into(),
                checkpoint_lsn: 0x3000028,
                timeline: 1,
                backup_start_lsn: None,
            })
        );
        let recovering = text.replace("shut down", "in crash recovery").replace(
            "Backup start location:                0/0",
            "Backup start location:                0/2002038",
        );
        assert_eq!(
            parse_control_data(&recovering).and_then(|c| c.backup_start_lsn),
            Some(0x2002038)
        );
    }
}

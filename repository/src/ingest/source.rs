//! What an ingest reads: a tar stream, a directory or a live server through `pg_basebackup`.

use std::io::{self, Read};
use std::path::{Path as FsPath, PathBuf};
use std::process::{Command, Stdio};

use super::walk::{Walker, walk_dir, walk_tar};
use crate::error::RepoError;

/// `pg_basebackup` from `bindir` when given, else `PATH`, else the newest
/// `/usr/lib/postgresql/*/bin` (a newer pg_basebackup can copy an older server).
fn find_pg_basebackup(bindir: Option<&FsPath>) -> Result<PathBuf, RepoError> {
    const NAME: &str = "pg_basebackup";
    if let Some(dir) = bindir {
        let p = dir.join(NAME);
        return if p.is_file() {
            Ok(p)
        } else {
            Err(RepoError::Spawn {
                program: p.display().to_string(),
                source: io::Error::new(io::ErrorKind::NotFound, "not found"),
            })
        };
    }
    let on_path = std::env::var_os("PATH")
        .map(|path| {
            std::env::split_paths(&path)
                .map(|d| d.join(NAME))
                .collect::<Vec<_>>()
        })
        .unwrap_or_default();
    let mut versioned: Vec<(u32, PathBuf)> = std::fs::read_dir("/usr/lib/postgresql")
        .map(|it| {
            it.filter_map(|e| e.ok())
                .filter_map(|e| {
                    let v = e.file_name().to_str()?.parse().ok()?;
                    Some((v, e.path().join("bin").join(NAME)))
                })
                .collect()
        })
        .unwrap_or_default();
    versioned.sort();
    on_path
        .into_iter()
        .chain(versioned.into_iter().rev().map(|(_, p)| p))
        .find(|p| p.is_file())
        .ok_or_else(|| RepoError::Spawn {
            program: NAME.to_string(),
            source: io::Error::new(
                io::ErrorKind::NotFound,
                "not on PATH nor in /usr/lib/postgresql/*/bin; name the directory (--pg-bindir)",
            ),
        })
}

/// What an ingest (or a repair) reads.
pub enum Source {
    /// A tar stream, e.g. the output of `pg_basebackup -Ft -X fetch -D -`.
    Tar(Box<dyn Read + Send>),
    /// A plain-format `pg_basebackup` directory or a cleanly shut down data directory.
    Dir(PathBuf),
    /// A live server, through `pg_basebackup`.
    Pg {
        conninfo: String,
        checkpoint: Checkpoint,
        /// Holds `pg_basebackup`; by default it is found on `PATH` or under /usr/lib/postgresql.
        pg_bindir: Option<PathBuf>,
    },
}

pub(super) type Walk = Box<dyn FnOnce(&mut Walker) -> Result<(), RepoError> + Send>;

impl Source {
    pub(super) fn into_walk(self) -> Result<Walk, RepoError> {
        Ok(match self {
            Source::Tar(reader) => Box::new(move |w| walk_tar(reader, "tar stream", w)),
            Source::Dir(dir) => Box::new(move |w| walk_dir(&dir, w)),
            Source::Pg {
                conninfo,
                checkpoint,
                pg_bindir,
            } => pg_walk(&conninfo, checkpoint, pg_bindir.as_deref())?,
        })
    }
}

/// Runs `pg_basebackup` against a live server and walks its output. `checkpoint` is
/// pg_basebackup's `-c`: `fast` starts at once, `spread` waits for a paced checkpoint (up to
/// `checkpoint_timeout * checkpoint_completion_target`, minutes by default). A password in
/// `conninfo` goes to `pg_basebackup` through its environment, never its arguments, which
/// every local user can read.
fn pg_walk(
    conninfo: &str,
    checkpoint: Checkpoint,
    pg_bindir: Option<&FsPath>,
) -> Result<Walk, RepoError> {
    let program = find_pg_basebackup(pg_bindir)?;
    let spawn_err = |source| RepoError::Spawn {
        program: program.display().to_string(),
        source,
    };
    let (conninfo, password) = crate::conninfo::take_password(conninfo)
        .map_err(|reason| RepoError::unsupported("--from-pg", reason))?;
    let mut command = Command::new(&program);
    command
        .args([
            "-Ft",
            "-X",
            "fetch",
            "-D",
            "-",
            "-c",
            checkpoint.as_arg(),
            "-d",
            &conninfo,
        ])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    if let Some(password) = password {
        command.env("PGPASSWORD", password);
    }
    let mut child = command.spawn().map_err(spawn_err)?;
    let stdout = child.stdout.take().expect("stdout is piped");
    let mut stderr = child.stderr.take().expect("stderr is piped");
    let stderr_reader = std::thread::spawn(move || {
        let mut text = String::new();
        let _ = stderr.read_to_string(&mut text);
        text.trim().to_string()
    });
    Ok(Box::new(move |w| {
        let walked = walk_tar(stdout, "pg_basebackup output", w);
        // A broken stream is most likely pg_basebackup failing: its message is the useful
        // one. Any other error is ours, and pg_basebackup has to stop.
        if matches!(walked, Err(ref e) if !matches!(e, RepoError::Io { .. })) {
            let _ = child.kill();
        }
        let status = child.wait();
        let stderr = stderr_reader.join().unwrap_or_default();
        match status {
            Ok(s) if s.success() => walked,
            Ok(s) if walked.is_ok() || matches!(walked, Err(RepoError::Io { .. })) => {
                Err(RepoError::PgBasebackup {
                    status: s.to_string(),
                    stderr,
                })
            }
            Ok(_) => walked,
            Err(e) => Err(RepoError::io("pg_basebackup", e)),
        }
    }))
}

/// How the source server starts the backup's checkpoint.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Checkpoint {
    #[default]
    Fast,
    Spread,
}

impl Checkpoint {
    fn as_arg(self) -> &'static str {
        match self {
            Checkpoint::Fast => "fast",
            Checkpoint::Spread => "spread",
        }
    }
}

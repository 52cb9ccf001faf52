//! Checks made before a local recovery creates anything.

use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr, TcpListener, ToSocketAddrs};
use std::path::Path;

use ir_api::point_in_time::PointInTimeStatus;
use ir_api::recovery::BackupInfo;

use super::dir::{Ancestors, Dir, WalkError};
use super::spec::LocalSpec;
use super::workdir::STATE_TMP_FILE;
use ir_api::Reason;
use ir_engine::backup::{find_backup, find_backup_for};
use ir_engine::machine::Failure;
use ir_engine::postgres::PgBinaries;
use ir_engine::process::{self, OsUser};

/// Room the target needs beyond the backup's size: WAL written while syncing, plus slack.
const TARGET_HEADROOM: f64 = 1.1;
const TARGET_EXTRA_BYTES: u64 = 256 << 20;

/// `resuming`: the workdir already holds this recovery (a rerun that stopped while validating).
pub(super) async fn validate(
    spec: &LocalSpec,
    workdir: &Path,
    resuming: bool,
) -> Result<(BackupInfo, Option<PointInTimeStatus>), Failure> {
    let user = OsUser::by_name(&spec.pg_user).ok_or_else(|| {
        Failure::new(
            Reason::UnknownUser,
            format!("--pg-user: no such OS user {:?}", spec.pg_user),
        )
    })?;
    if !process::is_root() {
        let me = OsUser::current();
        let same_user = me.as_ref().is_some_and(|me| me.uid == user.uid);
        let me = me.map_or_else(|| "an unknown user".to_owned(), |me| me.name);
        if !same_user {
            return Err(Failure::new(
                Reason::NotPermitted,
                format!(
                    "--pg-user {}: irctl runs as {me}, which can run PostgreSQL only as itself: \
                     run irctl as root, or as {} (or leave --pg-user out)",
                    spec.pg_user, spec.pg_user
                ),
            ));
        }
        if let Some(why) = ir_fuse::mount::unprivileged_mount_unsupported() {
            return Err(Failure::new(
                Reason::NotPermitted,
                format!("mounting the backup as {me}: {why}; or run irctl as root"),
            ));
        }
    }
    if user.uid == 0 {
        return Err(Failure::new(
            Reason::NotPermitted,
            "--pg-user root: PostgreSQL refuses to run as root; name an unprivileged user",
        ));
    }
    if let Some(target) = &spec.target_pgdata {
        check_target(target)?;
    }
    if !resuming {
        check_workdir(workdir)?;
    }
    check_port_free(
        "--published-port",
        spec.published_port,
        &spec.listen_addresses,
    )?;
    if spec.target_pgdata.is_some() {
        check_target_port(spec)?;
    }

    let location = spec.repo.location();
    let (backup, point_in_time) = match &spec.point_in_time {
        Some(point) => {
            let (backup, status) = find_backup_for(&location, &spec.backup, point).await?;
            (backup, Some(status))
        }
        None => (find_backup(&location, &spec.backup).await?, None),
    };
    let (id, pg_major, size_bytes) = (backup.id, backup.pg_major, backup.size_bytes);
    PgBinaries::find(pg_major, spec.pg_bindir.as_deref())
        .map_err(|e| Failure::new(Reason::PostgresBinariesMissing, e.to_string()))?;

    let need_cache = spec.cache_min_free_bytes;
    match &spec.target_pgdata {
        Some(target) => check_target_space(target, size_bytes, Some(need_cache), workdir)?,
        None => check_space("--workdir (IRCache)", workdir, need_cache)?,
    }
    let info = BackupInfo {
        id,
        pg_major,
        size_bytes,
    };
    Ok((info, point_in_time))
}

/// A publish that goes on to a recovery: the target it takes now, its port and its room (the
/// IRCache is in use already).
pub(super) fn check_new_target(
    spec: &LocalSpec,
    workdir: &Path,
    size_bytes: u64,
) -> Result<(), Failure> {
    let target = spec.target_pgdata.as_deref().ok_or_else(|| {
        Failure::new(
            Reason::InvalidSpec,
            "--target-pgdata is needed for a recovery",
        )
    })?;
    check_target(target)?;
    check_target_port(spec)?;
    check_target_space(target, size_bytes, None, workdir)
}

fn check_target_port(spec: &LocalSpec) -> Result<(), Failure> {
    if spec.published_port == spec.target_port {
        return Err(Failure::new(
            Reason::PortConflict,
            format!(
                "--published-port and --target-port are both {}",
                spec.target_port
            ),
        ));
    }
    check_port_free("--target-port", spec.target_port, &spec.listen_addresses)
}

/// Room for the copy of a backup of `size_bytes` in `target`, and for an IRCache that still
/// needs `cache` bytes in `workdir` when one is to be made.
fn check_target_space(
    target: &Path,
    size_bytes: u64,
    cache: Option<u64>,
    workdir: &Path,
) -> Result<(), Failure> {
    let need_target = (size_bytes as f64 * TARGET_HEADROOM) as u64 + TARGET_EXTRA_BYTES;
    let Some(need_cache) = cache else {
        return check_space("--target-pgdata", target, need_target);
    };
    if same_file_system(target, workdir) {
        check_space(
            "--target-pgdata and --workdir (IRCache), on one file system,",
            target,
            need_target + need_cache,
        )
    } else {
        check_space("--target-pgdata", target, need_target)?;
        check_space("--workdir (IRCache)", workdir, need_cache)
    }
}

fn check_target(target: &Path) -> Result<(), Failure> {
    let flag = "--target-pgdata";
    if !target.is_absolute() {
        return Err(Failure::new(
            Reason::InvalidSpec,
            format!("{flag} {}: must be an absolute path", target.display()),
        ));
    }
    let refuse = |reason: Reason, why: &dyn std::fmt::Display| {
        Failure::new(reason, format!("{flag} {}: {why}", target.display()))
    };
    // Root empties and chowns it later: a link would lead that elsewhere.
    let link = |e: &WalkError| {
        refuse(
            Reason::TargetUnsafe,
            &format!("{e}; name the directory by its real path, without symbolic links"),
        )
    };
    let (parent, name) = match Dir::open_parent(target, Ancestors::Any) {
        Ok(found) => found,
        Err(e @ WalkError::Symlink(_)) => return Err(link(&e)),
        Err(e) if e.is_not_found() => {
            let parent = target.parent().unwrap_or(Path::new("/"));
            return Err(refuse(
                Reason::TargetMissing,
                &format!("parent directory {} does not exist", parent.display()),
            ));
        }
        Err(e) => return Err(refuse(Reason::TargetUnusable, &e)),
    };
    match parent.open_dir(&name) {
        Ok(dir) => match dir.is_empty() {
            Ok(true) => Ok(()),
            Ok(false) => Err(refuse(
                Reason::TargetNotEmpty,
                &"the directory is not empty",
            )),
            Err(e) => Err(refuse(Reason::TargetUnusable, &e)),
        },
        Err(e) if e.is_not_found() => Ok(()),
        Err(e @ WalkError::Symlink(_)) => Err(link(&e)),
        Err(e) => Err(refuse(Reason::TargetUnusable, &e)),
    }
}

fn check_workdir(workdir: &Path) -> Result<(), Failure> {
    let flag = "--workdir";
    if !workdir.is_absolute() {
        return Err(Failure::new(
            Reason::InvalidSpec,
            format!("{flag} {}: must be an absolute path", workdir.display()),
        ));
    }
    // A state file half written by a command killed at once is no recovery yet.
    if let Ok(entries) = std::fs::read_dir(workdir)
        && entries.flatten().any(|e| e.file_name() != STATE_TMP_FILE)
    {
        return Err(Failure::new(
            Reason::WorkdirNotEmpty,
            format!(
                "{flag} {}: the directory holds other files and no recovery",
                workdir.display()
            ),
        ));
    }
    Ok(())
}

/// The nearest existing ancestor of `path` (itself when it exists).
fn existing_ancestor(path: &Path) -> &Path {
    path.ancestors()
        .find(|p| p.exists())
        .unwrap_or(Path::new("/"))
}

fn same_file_system(a: &Path, b: &Path) -> bool {
    use std::os::unix::fs::MetadataExt;
    let dev = |p: &Path| {
        std::fs::metadata(existing_ancestor(p))
            .map(|m| m.dev())
            .ok()
    };
    dev(a).is_some_and(|d| Some(d) == dev(b))
}

/// Refuses a port something already listens on, at any address PostgreSQL will listen on
/// (`localhost` is 127.0.0.1 and ::1, `*` every address). Addresses this host lacks are left
/// to PostgreSQL, which reports them itself.
fn check_port_free(flag: &str, port: u16, listen_addresses: &str) -> Result<(), Failure> {
    let mut addresses: Vec<SocketAddr> = Vec::new();
    for host in listen_addresses.split(',').map(str::trim) {
        match host {
            "" => {}
            "*" => addresses.extend([
                SocketAddr::from((Ipv4Addr::UNSPECIFIED, port)),
                SocketAddr::from((Ipv6Addr::UNSPECIFIED, port)),
            ]),
            "localhost" => addresses.extend([
                SocketAddr::from((Ipv4Addr::LOCALHOST, port)),
                SocketAddr::from((Ipv6Addr::LOCALHOST, port)),
            ]),
            host => addresses.extend((host, port).to_socket_addrs().into_iter().flatten()),
        }
    }
    for address in addresses {
        if let Err(e) = TcpListener::bind(address)
            && e.kind() == std::io::ErrorKind::AddrInUse
        {
            return Err(Failure::new(
                Reason::PortInUse,
                format!("{flag} {port}: the port is in use on {}", address.ip()),
            ));
        }
    }
    Ok(())
}

/// Free bytes on the file system that holds `path` (or would: its nearest existing ancestor).
pub(super) fn free_bytes(path: &Path) -> std::io::Result<u64> {
    let existing = existing_ancestor(path);
    let c = std::ffi::CString::new(existing.as_os_str().as_encoded_bytes())?;
    let mut st: libc::statvfs = unsafe { std::mem::zeroed() };
    // SAFETY: valid C string and a zeroed out-parameter.
    if unsafe { libc::statvfs(c.as_ptr(), &mut st) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(st.f_bavail as u64 * st.f_frsize as u64)
}

fn check_space(flag: &str, path: &Path, need: u64) -> Result<(), Failure> {
    let free = free_bytes(path).map_err(|e| {
        Failure::new(
            Reason::InvalidSpec,
            format!("{flag} {}: {e}", path.display()),
        )
    })?;
    if free < need {
        return Err(Failure::new(
            Reason::InsufficientSpace,
            format!(
                "{flag} {}: {} MiB free, {} MiB needed",
                path.display(),
                free >> 20,
                need.div_ceil(1 << 20)
            ),
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn target_must_be_empty_or_creatable() {
        let dir = tempfile::tempdir().unwrap();
        assert!(check_target(&dir.path().join("new")).is_ok());
        assert!(
            check_target(dir.path()).is_ok(),
            "an empty directory is fine"
        );
        std::fs::write(dir.path().join("PG_VERSION"), "15").unwrap();
        let err = check_target(dir.path()).unwrap_err();
        assert_eq!(err.reason, "TargetNotEmpty");
        assert!(err.message.contains("--target-pgdata"), "{}", err.message);
        let err = check_target(&dir.path().join("a/b")).unwrap_err();
        assert_eq!(err.reason, "TargetMissing");
        std::fs::remove_file(dir.path().join("PG_VERSION")).unwrap();
        let real = dir.path().join("real");
        std::fs::create_dir(&real).unwrap();
        std::os::unix::fs::symlink(&real, dir.path().join("link")).unwrap();
        for path in [dir.path().join("link"), dir.path().join("link/new")] {
            let err = check_target(&path).unwrap_err();
            assert_eq!(err.reason, "TargetUnsafe", "{}", err.message);
            assert!(
                err.message.contains("--target-pgdata") && err.message.contains("symbolic link"),
                "{}",
                err.message
            );
        }
        assert!(check_target(&real.join("new")).is_ok());
        assert_eq!(
            check_target(Path::new("rel")).unwrap_err().reason,
            "InvalidSpec"
        );
    }

    #[test]
    fn workdir_must_be_empty_but_for_a_half_written_state() {
        let dir = tempfile::tempdir().unwrap();
        assert!(check_workdir(dir.path()).is_ok());
        std::fs::write(dir.path().join(STATE_TMP_FILE), "{").unwrap();
        assert!(check_workdir(dir.path()).is_ok());
        std::fs::create_dir(dir.path().join("mnt")).unwrap();
        assert_eq!(
            check_workdir(dir.path()).unwrap_err().reason,
            "WorkdirNotEmpty"
        );
    }

    #[test]
    fn ports_are_checked_on_every_listen_address() {
        let v6 = TcpListener::bind((Ipv6Addr::LOCALHOST, 0)).expect("IPv6 loopback");
        let port = v6.local_addr().unwrap().port();
        let err = check_port_free("--target-port", port, "localhost").unwrap_err();
        assert_eq!(err.reason, "PortInUse");
        assert!(err.message.contains("--target-port") && err.message.contains("::1"));
        assert_eq!(
            check_port_free("--target-port", port, "*")
                .unwrap_err()
                .reason,
            "PortInUse"
        );
        assert!(check_port_free("--target-port", port, "127.0.0.1").is_ok());
        assert!(
            check_port_free("--target-port", port, "").is_ok(),
            "unix sockets only"
        );
    }

    #[test]
    fn one_file_system_is_recognised() {
        let dir = tempfile::tempdir().unwrap();
        assert!(same_file_system(&dir.path().join("a/b"), dir.path()));
        assert!(!same_file_system(dir.path(), Path::new("/proc")));
    }

    #[test]
    fn space_is_measured_on_the_nearest_existing_ancestor() {
        let dir = tempfile::tempdir().unwrap();
        let free = free_bytes(&dir.path().join("not/yet")).unwrap();
        assert!(free > 0);
        let err = check_space("--workdir", dir.path(), u64::MAX).unwrap_err();
        assert_eq!(err.reason, "InsufficientSpace");
        assert!(err.message.starts_with("--workdir"), "{}", err.message);
    }
}

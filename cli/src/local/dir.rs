//! Directories handled through open descriptors. Root empties, chmods and chowns the target
//! and the workdir's directories: a symbolic link planted at or inside one, or a directory
//! swapped for another after it was checked, must not lead it anywhere else. Paths are walked
//! from `/` one name at a time, never following a link, and everything after the walk goes
//! through the descriptor.

use std::ffi::{OsStr, OsString};
use std::fs::File;
use std::io;
use std::os::fd::OwnedFd;
use std::os::unix::ffi::OsStrExt as _;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Component, Path, PathBuf};

use rustix::fs::{AtFlags, FileType, Mode, OFlags};
use serde::{Deserialize, Serialize};

/// Who may own the directories on the way to a path.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Ancestors {
    /// Anyone: only symbolic links are refused.
    Any,
    /// Only root or this uid, and writable by no one else unless sticky (as /tmp): no other
    /// user can swap a directory on the way.
    OwnedBy(u32),
}

/// Why a path could not be walked.
#[derive(Debug, thiserror::Error)]
pub(crate) enum WalkError {
    #[error("{0} is a symbolic link")]
    Symlink(PathBuf),
    #[error("{path} {why}, so another user could swap what lies below it")]
    Untrusted { path: PathBuf, why: String },
    #[error("{0}: {1}")]
    Io(PathBuf, #[source] io::Error),
}

impl WalkError {
    pub(crate) fn is_not_found(&self) -> bool {
        matches!(self, WalkError::Io(_, e) if e.kind() == io::ErrorKind::NotFound)
    }
}

/// A file's identity on this host: what a path must still lead to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct FileId {
    pub dev: u64,
    pub ino: u64,
}

/// An open directory.
#[derive(Debug)]
pub(crate) struct Dir {
    file: File,
    path: PathBuf,
}

const WALK: OFlags = OFlags::PATH
    .union(OFlags::DIRECTORY)
    .union(OFlags::NOFOLLOW)
    .union(OFlags::CLOEXEC);
const OPEN_DIR: OFlags = OFlags::RDONLY
    .union(OFlags::DIRECTORY)
    .union(OFlags::NOFOLLOW)
    .union(OFlags::CLOEXEC);

impl Dir {
    /// Opens the directory at `path` (a relative one from the current directory), refusing a
    /// symbolic link at it or on the way.
    pub(crate) fn open(path: &Path, ancestors: Ancestors) -> Result<Dir, WalkError> {
        let (parent, name) = Dir::open_parent(path, ancestors)?;
        parent.open_dir(&name)
    }

    /// The directory holding `path`, walked as [`Dir::open`] does, and `path`'s last name.
    pub(crate) fn open_parent(
        path: &Path,
        ancestors: Ancestors,
    ) -> Result<(Dir, OsString), WalkError> {
        let absolute = if path.is_absolute() {
            path.to_path_buf()
        } else {
            let cwd = std::env::current_dir().map_err(|e| WalkError::Io(path.into(), e))?;
            cwd.join(path)
        };
        let mut names = Vec::new();
        for component in absolute.components() {
            match component {
                Component::Normal(name) => names.push(name),
                Component::RootDir | Component::CurDir => {}
                Component::ParentDir | Component::Prefix(_) => {
                    return Err(WalkError::Io(
                        absolute.clone(),
                        io::Error::new(io::ErrorKind::InvalidInput, "'..' in the path"),
                    ));
                }
            }
        }
        let Some((last, parents)) = names.split_last() else {
            return Err(WalkError::Io(
                absolute,
                io::Error::new(io::ErrorKind::InvalidInput, "the root directory"),
            ));
        };
        let mut at = PathBuf::from("/");
        let root = rustix::fs::open("/", WALK, Mode::empty())
            .map_err(|e| WalkError::Io(at.clone(), e.into()))?;
        let mut dir = Dir::from_fd(root, at.clone());
        dir.judge(ancestors)?;
        for name in parents {
            at.push(name);
            let fd = dir.open_at(name, WALK)?;
            dir = Dir::from_fd(fd, at.clone());
            dir.judge(ancestors)?;
        }
        Ok((dir, last.to_os_string()))
    }

    fn from_fd(fd: OwnedFd, path: PathBuf) -> Dir {
        Dir {
            file: File::from(fd),
            path,
        }
    }

    fn open_at(&self, name: &OsStr, flags: OFlags) -> Result<OwnedFd, WalkError> {
        let path = self.path.join(name);
        rustix::fs::openat(&self.file, name, flags, Mode::empty()).map_err(|e| {
            // O_NOFOLLOW|O_DIRECTORY meets a link as ENOTDIR or ELOOP: say which it was.
            let link = rustix::fs::statat(&self.file, name, AtFlags::SYMLINK_NOFOLLOW)
                .is_ok_and(|st| FileType::from_raw_mode(st.st_mode) == FileType::Symlink);
            if link {
                WalkError::Symlink(path)
            } else {
                WalkError::Io(path, e.into())
            }
        })
    }

    /// Refuses a directory another user could change, when `ancestors` asks for that.
    fn judge(&self, ancestors: Ancestors) -> Result<(), WalkError> {
        let Ancestors::OwnedBy(uid) = ancestors else {
            return Ok(());
        };
        let meta = self
            .file
            .metadata()
            .map_err(|e| WalkError::Io(self.path.clone(), e))?;
        let untrusted = |why: String| WalkError::Untrusted {
            path: self.path.clone(),
            why,
        };
        if meta.uid() != 0 && meta.uid() != uid {
            return Err(untrusted(format!("belongs to uid {}", meta.uid())));
        }
        let mode = meta.mode();
        let sticky = mode & libc::S_ISVTX != 0;
        // SAFETY: getegid has no preconditions.
        let own_group = meta.gid() == 0 || meta.gid() == unsafe { libc::getegid() };
        if !sticky && (mode & 0o002 != 0 || (mode & 0o020 != 0 && !own_group)) {
            return Err(untrusted(format!(
                "is writable by other users (mode {:o})",
                mode & 0o7777
            )));
        }
        Ok(())
    }

    pub(crate) fn path(&self) -> &Path {
        &self.path
    }

    pub(crate) fn id(&self) -> io::Result<FileId> {
        let meta = self.file.metadata()?;
        Ok(FileId {
            dev: meta.dev(),
            ino: meta.ino(),
        })
    }

    /// The uid of its owner.
    pub(crate) fn owner(&self) -> io::Result<u32> {
        Ok(self.file.metadata()?.uid())
    }

    /// The directory `name` in this one; a symbolic link is refused.
    pub(crate) fn open_dir(&self, name: &OsStr) -> Result<Dir, WalkError> {
        let fd = self.open_at(name, OPEN_DIR)?;
        Ok(Dir::from_fd(fd, self.path.join(name)))
    }

    /// Makes the directory `name` in this one with `mode` (less the umask) unless it exists.
    pub(crate) fn mkdir(&self, name: &OsStr, mode: u32) -> Result<(), WalkError> {
        match rustix::fs::mkdirat(&self.file, name, Mode::from_raw_mode(mode)) {
            Ok(()) | Err(rustix::io::Errno::EXIST) => Ok(()),
            Err(e) => Err(WalkError::Io(self.path.join(name), e.into())),
        }
    }

    /// The directory `name` in this one, made unless it exists; a symbolic link is refused.
    pub(crate) fn make_dir(&self, name: &OsStr, mode: u32) -> Result<Dir, WalkError> {
        self.mkdir(name, mode)?;
        self.open_dir(name)
    }

    pub(crate) fn is_empty(&self) -> io::Result<bool> {
        Ok(self.names()?.is_empty())
    }

    /// The names in the directory, read before any is removed.
    fn names(&self) -> io::Result<Vec<OsString>> {
        let mut names = Vec::new();
        for entry in rustix::fs::Dir::read_from(&self.file)? {
            let entry = entry?;
            let name = OsStr::from_bytes(entry.file_name().to_bytes());
            if name != "." && name != ".." {
                names.push(name.to_os_string());
            }
        }
        Ok(names)
    }

    pub(crate) fn set_mode(&self, mode: u32) -> io::Result<()> {
        self.file
            .set_permissions(std::fs::Permissions::from_mode(mode))
    }

    pub(crate) fn set_owner(&self, uid: Option<u32>, gid: Option<u32>) -> io::Result<()> {
        std::os::unix::fs::fchown(&self.file, uid, gid)
    }

    /// Removes everything in the directory. A symbolic link is removed, never followed; a
    /// directory of another file system (a mount planted inside) is refused.
    pub(crate) fn clear(&self) -> io::Result<()> {
        let dev = self.file.metadata()?.dev();
        for name in self.names()? {
            let name = name.as_os_str();
            let st = rustix::fs::statat(&self.file, name, AtFlags::SYMLINK_NOFOLLOW)?;
            if FileType::from_raw_mode(st.st_mode) != FileType::Directory {
                rustix::fs::unlinkat(&self.file, name, AtFlags::empty())?;
                continue;
            }
            let sub = self.open_dir(name).map_err(|e| match e {
                WalkError::Io(_, e) => e,
                other => io::Error::other(other.to_string()),
            })?;
            if sub.file.metadata()?.dev() != dev {
                return Err(io::Error::other(format!(
                    "{} is another file system mounted here",
                    sub.path.display()
                )));
            }
            sub.clear()?;
            rustix::fs::unlinkat(&self.file, name, AtFlags::REMOVEDIR)?;
        }
        Ok(())
    }

    /// Removes the empty directory `name`.
    pub(crate) fn remove_dir(&self, name: &OsStr) -> io::Result<()> {
        Ok(rustix::fs::unlinkat(&self.file, name, AtFlags::REMOVEDIR)?)
    }

    /// Creates (or truncates) the file `name` with `mode` for writing; a symbolic link is
    /// refused.
    pub(crate) fn create_file(&self, name: &OsStr, mode: u32) -> io::Result<File> {
        let flags =
            OFlags::WRONLY | OFlags::CREATE | OFlags::TRUNC | OFlags::NOFOLLOW | OFlags::CLOEXEC;
        let fd = rustix::fs::openat(&self.file, name, flags, Mode::from_raw_mode(mode))?;
        let file = File::from(fd);
        // An existing file keeps its mode through O_CREAT.
        file.set_permissions(std::fs::Permissions::from_mode(mode))?;
        Ok(file)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::symlink;

    fn canary(root: &Path) -> PathBuf {
        let canary = root.join("canary");
        std::fs::create_dir(&canary).unwrap();
        std::fs::write(canary.join("file"), "keep").unwrap();
        canary
    }

    /// Whether `path` leads, without a link, to `dir`.
    fn still_at(dir: &Dir, path: &Path) -> bool {
        let there = Dir::open(path, Ancestors::Any)
            .ok()
            .map(|d| d.id().unwrap());
        there == Some(dir.id().unwrap())
    }

    fn intact(canary: &Path) {
        assert_eq!(
            std::fs::read_to_string(canary.join("file")).unwrap(),
            "keep"
        );
    }

    #[test]
    fn a_link_at_or_above_the_path_is_refused() {
        let root = tempfile::tempdir().unwrap();
        let canary = canary(root.path());
        symlink(&canary, root.path().join("link")).unwrap();
        let err = Dir::open(&root.path().join("link"), Ancestors::Any).unwrap_err();
        assert!(
            matches!(&err, WalkError::Symlink(p) if p.ends_with("link")),
            "{err}"
        );
        let err = Dir::open(&root.path().join("link/sub"), Ancestors::Any).unwrap_err();
        assert!(
            matches!(&err, WalkError::Symlink(p) if p.ends_with("link")),
            "{err}"
        );
        let err = Dir::open(&root.path().join("a/../canary"), Ancestors::Any).unwrap_err();
        assert!(err.to_string().contains(".."), "{err}");
        assert!(
            Dir::open(&root.path().join("absent"), Ancestors::Any)
                .unwrap_err()
                .is_not_found()
        );
        let dir = Dir::open(&canary, Ancestors::Any).unwrap();
        assert!(!dir.is_empty().unwrap());
        assert!(still_at(&dir, &canary));
        assert!(!still_at(&dir, &root.path().join("link")));
    }

    #[test]
    fn clearing_removes_links_without_following_them() {
        let root = tempfile::tempdir().unwrap();
        let canary = canary(root.path());
        let target = root.path().join("target");
        std::fs::create_dir_all(target.join("base/1")).unwrap();
        std::fs::write(target.join("PG_VERSION"), "15").unwrap();
        symlink(&canary, target.join("evil")).unwrap();
        symlink(&canary, target.join("base/evil")).unwrap();
        symlink(canary.join("file"), target.join("base/1/evil")).unwrap();
        let dir = Dir::open(&target, Ancestors::Any).unwrap();
        dir.clear().unwrap();
        assert!(dir.is_empty().unwrap());
        assert!(still_at(&dir, &target), "the directory itself stays");
        intact(&canary);
    }

    #[test]
    fn a_directory_swapped_for_a_link_is_not_what_the_handle_holds() {
        let root = tempfile::tempdir().unwrap();
        let canary = canary(root.path());
        let target = root.path().join("target");
        std::fs::create_dir(&target).unwrap();
        let dir = Dir::open(&target, Ancestors::Any).unwrap();
        std::fs::rename(&target, root.path().join("moved")).unwrap();
        symlink(&canary, &target).unwrap();
        assert!(!still_at(&dir, &target));
        // What the handle does stays in the directory it opened.
        dir.set_mode(0o700).unwrap();
        dir.clear().unwrap();
        intact(&canary);
        let mode = std::fs::metadata(&canary).unwrap().mode() & 0o7777;
        assert_ne!(mode, 0o700);
    }

    #[test]
    fn files_are_made_with_their_mode_and_never_through_a_link() {
        let root = tempfile::tempdir().unwrap();
        let canary = canary(root.path());
        let dir = Dir::open(root.path(), Ancestors::Any).unwrap();
        symlink(canary.join("file"), root.path().join("conf")).unwrap();
        assert!(dir.create_file(OsStr::new("conf"), 0o600).is_err());
        intact(&canary);
        std::fs::write(root.path().join("old"), "x").unwrap();
        std::fs::set_permissions(
            root.path().join("old"),
            std::fs::Permissions::from_mode(0o644),
        )
        .unwrap();
        dir.create_file(OsStr::new("old"), 0o600).unwrap();
        let meta = std::fs::metadata(root.path().join("old")).unwrap();
        assert_eq!((meta.mode() & 0o7777, meta.len()), (0o600, 0));
        let sub = dir.make_dir(OsStr::new("sub"), 0o700).unwrap();
        assert_eq!(
            sub.id().unwrap(),
            dir.make_dir(OsStr::new("sub"), 0o700)
                .unwrap()
                .id()
                .unwrap()
        );
        assert!(dir.make_dir(OsStr::new("conf"), 0o700).is_err());
    }

    #[test]
    fn ancestors_another_user_could_change_are_refused() {
        let root = tempfile::tempdir().unwrap();
        let me = unsafe { libc::geteuid() };
        let open = || Dir::open(&root.path().join("wd"), Ancestors::OwnedBy(me));
        std::fs::create_dir(root.path().join("wd")).unwrap();
        open().unwrap();
        std::fs::set_permissions(root.path(), std::fs::Permissions::from_mode(0o777)).unwrap();
        let err = open().unwrap_err();
        assert!(matches!(err, WalkError::Untrusted { .. }), "{err}");
        assert!(err.to_string().contains("writable by other users"), "{err}");
        std::fs::set_permissions(root.path(), std::fs::Permissions::from_mode(0o1777)).unwrap();
        open().expect("a sticky directory keeps others from swapping ours");
        std::fs::set_permissions(root.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
        if me == 0 {
            std::os::unix::fs::chown(root.path(), Some(65534), None).unwrap();
            let err = open().unwrap_err();
            assert!(err.to_string().contains("belongs to uid 65534"), "{err}");
        }
    }
}

//! A real, size-limited tmpfs: a disk that really fills up, for full-disk tests.

use std::ffi::CString;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

/// A tmpfs mounted at a directory while this lives; detached on drop.
pub struct Tmpfs(PathBuf);

impl Tmpfs {
    /// Mounts a tmpfs of `size` (as the `size=` mount option takes it, e.g. "16m") at `dir`,
    /// creating `dir` first. Needs root.
    pub fn mount(dir: &Path, size: &str) -> Tmpfs {
        crate::require_root();
        std::fs::create_dir_all(dir).expect("create the tmpfs mount point");
        let c = |s: &[u8]| CString::new(s).expect("no NUL byte");
        let (tmpfs, target, data) = (
            c(b"tmpfs"),
            c(dir.as_os_str().as_bytes()),
            c(format!("size={size}").as_bytes()),
        );
        // SAFETY: valid C strings for the duration of the call.
        let ret = unsafe {
            libc::mount(
                tmpfs.as_ptr(),
                target.as_ptr(),
                tmpfs.as_ptr(),
                0,
                data.as_ptr().cast(),
            )
        };
        assert_eq!(
            ret,
            0,
            "mount a tmpfs at {}: {}",
            dir.display(),
            std::io::Error::last_os_error()
        );
        Tmpfs(dir.to_path_buf())
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let Ok(target) = CString::new(self.0.as_os_str().as_bytes()) else {
            return;
        };
        // SAFETY: valid C string; MNT_DETACH only detaches.
        unsafe { libc::umount2(target.as_ptr(), libc::MNT_DETACH) };
    }
}

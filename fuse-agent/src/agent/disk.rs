//! Space on the node: free bytes of the cache file system and bytes an IRCache takes.

use std::io;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::MetadataExt;
use std::path::Path;

/// Bytes available to unprivileged users on the file system holding `path`.
pub fn free_bytes(path: &Path) -> io::Result<u64> {
    let c = std::ffi::CString::new(path.as_os_str().as_bytes())?;
    // SAFETY: all-zero is a valid statvfs; it is only an out-parameter.
    let mut s: libc::statvfs = unsafe { std::mem::zeroed() };
    // SAFETY: `c` is a valid C string and `s` a properly sized out-parameter.
    if unsafe { libc::statvfs(c.as_ptr(), &mut s) } != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(s.f_bavail.saturating_mul(s.f_frsize))
}

/// Disk space allocated under `dir` (sparse files count what they hold); 0 when it is missing.
pub fn used_bytes(dir: &Path) -> io::Result<u64> {
    let meta = match std::fs::symlink_metadata(dir) {
        Ok(m) => m,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(0),
        Err(e) => return Err(e),
    };
    let mut total = meta.blocks() * 512;
    if meta.is_dir() {
        for entry in std::fs::read_dir(dir)? {
            // Entries may go while we walk (files the mount deletes).
            match used_bytes(&entry?.path()) {
                Ok(n) => total += n,
                Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                Err(e) => return Err(e),
            }
        }
    }
    Ok(total)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_allocated_bytes() {
        let dir = tempfile::tempdir().unwrap();
        assert_eq!(used_bytes(&dir.path().join("missing")).unwrap(), 0);
        let empty = used_bytes(dir.path()).unwrap();
        std::fs::create_dir(dir.path().join("sub")).unwrap();
        std::fs::write(dir.path().join("sub/f"), vec![1u8; 1 << 20]).unwrap();
        // A sparse file holds almost nothing.
        std::fs::File::create(dir.path().join("sparse"))
            .unwrap()
            .set_len(1 << 30)
            .unwrap();
        let used = used_bytes(dir.path()).unwrap();
        assert!(used >= empty + (1 << 20), "{used}");
        assert!(used < 1 << 29, "{used}");
        assert!(free_bytes(dir.path()).unwrap() > 0);
    }
}

//! Test support for instant-recovery: real PostgreSQL clusters run as an unprivileged user, a
//! real S3-protocol server on loopback, and checks that fail loudly when a prerequisite is
//! missing (tests must not skip silently in CI).

pub mod pg;
pub mod s3;

use std::net::TcpListener;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;

/// Panics unless the test runs as root (FUSE mounts, PostgreSQL as another user).
pub fn require_root() {
    // SAFETY: geteuid has no preconditions.
    assert_eq!(
        unsafe { libc::geteuid() },
        0,
        "this test needs root (FUSE mounts, PostgreSQL as user postgres); run scripts/test.sh as root"
    );
}

/// Panics unless FUSE mounts can be made here.
pub fn require_fuse() {
    require_root();
    assert!(
        Path::new("/dev/fuse").exists(),
        "this test needs /dev/fuse; install fuse3 (scripts/setup-test-deps.sh)"
    );
}

/// A TCP port on 127.0.0.1 that was free a moment ago.
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("bind a loopback port")
        .port()
}

/// A temporary directory that other users (PostgreSQL's) may traverse.
pub fn shared_tempdir() -> tempfile::TempDir {
    let dir = tempfile::Builder::new()
        .prefix("ir-test-")
        .tempdir_in("/var/tmp")
        .expect("create temp dir");
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755))
        .expect("chmod temp dir");
    dir
}

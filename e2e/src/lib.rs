//! Test support for instant-recovery: real PostgreSQL clusters run as an unprivileged user, a
//! real S3-protocol server on loopback, and checks that fail loudly when a prerequisite is
//! missing (tests must not skip silently in CI). Prerequisites come from
//! `scripts/setup-test-deps.sh`.

pub mod cluster;
pub mod helm;
pub mod http;
pub mod installation;
pub mod node;
pub mod pg;
pub mod s3;
pub mod tmpfs;

use std::net::TcpListener;
use std::os::unix::fs::PermissionsExt;

/// Panics unless the test runs as root (FUSE mounts, PostgreSQL as another user).
pub fn require_root() {
    // SAFETY: geteuid has no preconditions.
    assert_eq!(
        unsafe { libc::geteuid() },
        0,
        "this test needs root (FUSE mounts, PostgreSQL as user postgres); run scripts/test.sh as root"
    );
}

/// Panics unless FUSE mounts can be made here: root, and a usable `/dev/fuse`.
pub fn require_fuse() {
    require_root();
    if let Err(e) = std::fs::File::options()
        .read(true)
        .write(true)
        .open("/dev/fuse")
    {
        panic!(
            "this test needs FUSE but /dev/fuse cannot be opened ({e}); load the fuse module and run scripts/setup-test-deps.sh"
        );
    }
}

/// A TCP port on 127.0.0.1 that was free a moment ago, and not handed out before by this
/// process: the kernel may give a just-released port again, and a test that asks for two ports
/// needs two.
pub fn free_port() -> u16 {
    static HANDED_OUT: std::sync::Mutex<Vec<u16>> = std::sync::Mutex::new(Vec::new());
    let mut handed_out = HANDED_OUT.lock().unwrap_or_else(|e| e.into_inner());
    loop {
        let port = TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .expect("bind a loopback port")
            .port();
        if !handed_out.contains(&port) {
            handed_out.push(port);
            return port;
        }
    }
}

/// A temporary directory (mode 0755) that other users, PostgreSQL's, may traverse. Under
/// /var/tmp rather than /tmp, which may be a small tmpfs.
pub fn shared_tempdir() -> tempfile::TempDir {
    let dir = tempfile::Builder::new()
        .prefix("ir-test-")
        .tempdir_in("/var/tmp")
        .expect("create temp dir");
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755))
        .expect("chmod temp dir");
    dir
}

/// A tool scripts/setup-test-deps.sh builds and caches by version
/// (`$IR_CACHE_DIR/bin/<name>-<version>`, IR_CACHE_DIR defaulting to
/// ~/.cache/instant-recovery), or the path in env `env`.
pub(crate) fn cached_tool(env: &str, name: &str, version: &str) -> std::path::PathBuf {
    if let Some(p) = std::env::var_os(env) {
        return p.into();
    }
    let cache = std::env::var_os("IR_CACHE_DIR")
        .map(std::path::PathBuf::from)
        .unwrap_or_else(|| {
            std::path::PathBuf::from(std::env::var_os("HOME").expect("HOME or IR_CACHE_DIR is set"))
                .join(".cache/instant-recovery")
        });
    let bin = cache.join(format!("bin/{name}-{version}"));
    assert!(
        bin.exists(),
        "{name} {version} not found at {} (run scripts/setup-test-deps.sh, which builds it, or set {env})",
        bin.display()
    );
    bin
}

/// `bytes` random bytes as hex.
pub(crate) fn random_hex(bytes: usize) -> String {
    use std::io::Read;
    let mut buf = vec![0u8; bytes];
    std::fs::File::open("/dev/urandom")
        .and_then(|mut f| f.read_exact(&mut buf))
        .expect("read /dev/urandom");
    buf.iter().map(|b| format!("{b:02x}")).collect()
}

/// `len` pseudo-random bytes (xorshift) that do not compress away; the same for the same `seed`.
pub fn pattern(len: usize, seed: u64) -> Vec<u8> {
    let mut x = seed.wrapping_mul(6364136223846793005) | 1;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect()
}

/// Mount points at or below `root`, from /proc/self/mountinfo.
pub fn mounts_under(root: &std::path::Path) -> Vec<String> {
    let root = root.display().to_string();
    std::fs::read_to_string("/proc/self/mountinfo")
        .unwrap_or_default()
        .lines()
        .filter_map(|l| l.split(' ').nth(4))
        .filter(|p| p.starts_with(&root))
        .map(str::to_owned)
        .collect()
}

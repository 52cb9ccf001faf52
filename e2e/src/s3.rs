//! A real S3-protocol server on loopback (Versity S3 Gateway over a temporary directory), built
//! by scripts/setup-test-deps.sh from its pinned Go module.

use std::net::TcpStream;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

const ACCESS_KEY: &str = "instantrecoverytest";
const SECRET_KEY: &str = "instantrecoverytestsecret";

fn server_binary() -> PathBuf {
    if let Some(p) = std::env::var_os("IR_S3_SERVER_BIN") {
        return PathBuf::from(p);
    }
    let cache = std::env::var_os("IR_CACHE_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            PathBuf::from(std::env::var_os("HOME").expect("HOME is set"))
                .join(".cache/instant-recovery")
        });
    let bin = cache.join("bin/versitygw");
    assert!(
        bin.exists(),
        "S3 test server not found at {} (run scripts/setup-test-deps.sh, or set IR_S3_SERVER_BIN)",
        bin.display()
    );
    bin
}

/// The server process and its bucket; killed on drop.
pub struct S3Server {
    child: Child,
    port: u16,
    bucket: String,
    _root: tempfile::TempDir,
}

impl S3Server {
    /// Starts the server on 127.0.0.1 with one empty bucket, `ir-test`.
    pub fn start() -> S3Server {
        let root = crate::shared_tempdir();
        let bucket = "ir-test".to_string();
        std::fs::create_dir(root.path().join(&bucket)).expect("create bucket dir");
        let port = crate::free_port();
        let child = Command::new(server_binary())
            .args(["--port", &format!("127.0.0.1:{port}")])
            .args(["--access", ACCESS_KEY, "--secret", SECRET_KEY])
            .arg("posix")
            .arg(root.path())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start the S3 test server");
        let mut server = S3Server {
            child,
            port,
            bucket,
            _root: root,
        };
        server.wait_ready();
        server
    }

    fn wait_ready(&mut self) {
        let deadline = Instant::now() + Duration::from_secs(30);
        while TcpStream::connect(("127.0.0.1", self.port)).is_err() {
            if let Ok(Some(status)) = self.child.try_wait() {
                panic!("S3 test server exited: {status}");
            }
            assert!(
                Instant::now() < deadline,
                "S3 test server did not listen on {}",
                self.port
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    pub fn endpoint(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    pub fn bucket(&self) -> &str {
        &self.bucket
    }

    /// `s3://bucket/prefix`
    pub fn url(&self, prefix: &str) -> String {
        format!("s3://{}/{prefix}", self.bucket)
    }

    /// Environment for a client of this server (the usual AWS variables).
    pub fn env(&self) -> Vec<(String, String)> {
        [
            ("AWS_ACCESS_KEY_ID", ACCESS_KEY.to_string()),
            ("AWS_SECRET_ACCESS_KEY", SECRET_KEY.to_string()),
            ("AWS_REGION", "us-east-1".to_string()),
            ("AWS_ENDPOINT_URL", self.endpoint()),
            ("AWS_ALLOW_HTTP", "true".to_string()),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v))
        .collect()
    }

    /// Stops the server, like an outage; `restart` brings it back on the same port and data.
    pub fn stop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for S3Server {
    fn drop(&mut self) {
        self.stop();
    }
}

//! A real S3-protocol server on loopback: MinIO over a temporary directory, built by
//! scripts/setup-test-deps.sh from the Go module pinned in tools/s3/go.mod.

use std::fs::File;
use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// The pin the setup script builds; the binary's cache name carries it, so a stale build of
/// another version is never picked up.
const GO_MOD: &str = include_str!("../../tools/s3/go.mod");

fn minio_version() -> &'static str {
    GO_MOD
        .lines()
        .find_map(|l| l.trim().strip_prefix("github.com/minio/minio "))
        .and_then(|rest| rest.split_whitespace().next())
        .expect("tools/s3/go.mod pins github.com/minio/minio")
}

/// `IR_S3_SERVER_BIN`, or the build cached by scripts/setup-test-deps.sh.
pub fn server_binary() -> PathBuf {
    crate::cached_tool("IR_S3_SERVER_BIN", "minio", minio_version())
}

/// The server process, its data directory and one bucket; killed on drop.
pub struct S3Server {
    child: Option<Child>,
    ip: String,
    port: u16,
    bucket: String,
    access_key: String,
    secret_key: String,
    root: tempfile::TempDir,
}

impl S3Server {
    /// Starts the server on 127.0.0.1 with fresh credentials and one empty bucket, `ir-test`.
    pub fn start() -> S3Server {
        S3Server::start_on("127.0.0.1")
    }

    /// As [`S3Server::start`], listening on `ip` (the real node's IP, for Pods to reach it).
    pub fn start_on(ip: &str) -> S3Server {
        let root = crate::shared_tempdir();
        let bucket = "ir-test".to_string();
        // MinIO serves a top-level directory of its data directory as a bucket.
        std::fs::create_dir_all(root.path().join("data").join(&bucket)).expect("create bucket dir");
        let mut server = S3Server {
            child: None,
            ip: ip.to_owned(),
            port: crate::free_port(),
            bucket,
            access_key: format!("ir{}", crate::random_hex(8)),
            secret_key: crate::random_hex(16),
            root,
        };
        // free_port() can race with another process taking the port: try a few.
        for attempt in 1..=3 {
            match server.launch() {
                Ok(()) => return server,
                Err(e) if attempt < 3 => {
                    eprintln!("S3 test server on port {}: {e}; new port", server.port);
                    server.port = crate::free_port();
                }
                Err(e) => panic!("S3 test server did not start: {e}"),
            }
        }
        unreachable!()
    }

    fn launch(&mut self) -> Result<(), String> {
        let log_path = self.root.path().join("server.log");
        let log = File::options()
            .create(true)
            .append(true)
            .open(&log_path)
            .expect("open server log");
        let log_start = log.metadata().map(|m| m.len()).unwrap_or(0);
        let child = Command::new(server_binary())
            .args(["server", "--quiet", "--address"])
            .arg(format!("{}:{}", self.ip, self.port))
            .arg(self.root.path().join("data"))
            .env("MINIO_ROOT_USER", &self.access_key)
            .env("MINIO_ROOT_PASSWORD", &self.secret_key)
            .env("MINIO_BROWSER", "off")
            .env("MINIO_UPDATE", "off")
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("dup log fd"))
            .stderr(log)
            .spawn()
            .unwrap_or_else(|e| {
                panic!(
                    "start the S3 test server {}: {e}",
                    server_binary().display()
                )
            });
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            if self.health_ready() {
                return Ok(());
            }
            let exited = self
                .child
                .as_mut()
                .and_then(|c| c.try_wait().ok().flatten());
            if exited.is_some() || Instant::now() > deadline {
                self.stop();
                let log = std::fs::read(&log_path).unwrap_or_default();
                return Err(format!(
                    "{}; log:\n{}",
                    exited.map_or("not ready after 60 s".into(), |s| format!("exited ({s})")),
                    String::from_utf8_lossy(&log[log_start as usize..])
                ));
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    fn health_ready(&self) -> bool {
        let Ok(mut conn) = TcpStream::connect((self.ip.as_str(), self.port)) else {
            return false;
        };
        let _ = conn.set_read_timeout(Some(Duration::from_secs(2)));
        let request = format!(
            "GET /minio/health/ready HTTP/1.0\r\nHost: {}\r\n\r\n",
            self.ip
        );
        let mut status = [0u8; 12];
        conn.write_all(request.as_bytes()).is_ok()
            && conn.read_exact(&mut status).is_ok()
            && status.ends_with(b" 200")
    }

    /// `http://<ip>:<port>`
    pub fn endpoint(&self) -> String {
        format!("http://{}:{}", self.ip, self.port)
    }

    pub fn bucket(&self) -> &str {
        &self.bucket
    }

    /// `s3://<bucket>/<prefix>`
    pub fn url(&self, prefix: &str) -> String {
        format!("s3://{}/{prefix}", self.bucket)
    }

    /// Environment for a client process of this server (what `AmazonS3Builder::from_env` and
    /// the AWS SDKs read).
    pub fn env(&self) -> Vec<(String, String)> {
        [
            ("AWS_ACCESS_KEY_ID", self.access_key.clone()),
            ("AWS_SECRET_ACCESS_KEY", self.secret_key.clone()),
            ("AWS_REGION", "us-east-1".to_string()),
            ("AWS_ENDPOINT_URL", self.endpoint()),
            ("AWS_ALLOW_HTTP", "true".to_string()),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v))
        .collect()
    }

    /// A Secret `name` in `namespace` with this server's keys, as a BackupRepository's
    /// `credentialsSecret` wants them.
    pub fn credentials_secret_yaml(&self, name: &str, namespace: &str) -> String {
        format!(
            "apiVersion: v1\nkind: Secret\nmetadata:\n  name: {name}\n  namespace: {namespace}\n\
             stringData:\n  AWS_ACCESS_KEY_ID: {}\n  AWS_SECRET_ACCESS_KEY: {}\n",
            self.access_key, self.secret_key
        )
    }

    /// Kills the server, like an outage; [`S3Server::restart`] brings it back.
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Starts the server again on the same port, data and credentials.
    pub fn restart(&mut self) {
        self.stop();
        if let Err(e) = self.launch() {
            panic!("S3 test server did not restart on port {}: {e}", self.port);
        }
    }
}

impl Drop for S3Server {
    fn drop(&mut self) {
        self.stop();
    }
}

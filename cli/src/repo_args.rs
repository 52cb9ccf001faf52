//! Where the repository is: the flags every repository command takes.

use anyhow::Context;
use clap::Args;
use ir_repository::{Repository, StoreOptions};

#[derive(Debug, Args)]
pub struct RepoArgs {
    /// Repository URL: file:///abs/path (or /abs/path) or s3://bucket/prefix.
    #[arg(long, env = "IR_REPO", value_name = "URL")]
    pub repo: String,
    #[command(flatten)]
    pub store: StoreArgs,
}

/// How to reach a repository's storage.
#[derive(Debug, Args)]
pub struct StoreArgs {
    /// S3 endpoint URL, for S3-compatible servers (default: AWS_ENDPOINT_URL or AWS).
    #[arg(long, value_name = "URL")]
    pub s3_endpoint: Option<String>,
    /// S3 region (default: AWS_REGION).
    #[arg(long, value_name = "REGION")]
    pub s3_region: Option<String>,
    /// Allow plain http to the S3 endpoint.
    #[arg(long)]
    pub s3_allow_http: bool,
    /// How long one read of backup data may keep retrying an unreachable repository before it
    /// fails (EIO on a mount), in seconds. Default: 30.
    #[arg(long, value_name = "SECONDS")]
    pub read_deadline: Option<u64>,
}

const DEFAULT_READ_DEADLINE_SECS: u64 = 30;

impl StoreArgs {
    pub fn store_options(&self) -> StoreOptions {
        StoreOptions {
            s3_endpoint: self.s3_endpoint.clone(),
            s3_region: self.s3_region.clone(),
            // Unset leaves the choice to AWS_ALLOW_HTTP.
            allow_http: self.s3_allow_http.then_some(true),
            s3_credentials: None,
            // A command line runs with its user's own AWS settings.
            ambient_credentials: true,
            file_roots: None,
            read_deadline: std::time::Duration::from_secs(self.read_deadline_secs()),
        }
    }
}

impl StoreArgs {
    /// The repository as the recovery engine records it.
    pub fn repo_spec(&self, url: &str) -> ir_cli::local::RepoSpec {
        let options = self.store_options();
        ir_cli::local::RepoSpec {
            url: url.to_owned(),
            s3_endpoint: options.s3_endpoint,
            s3_region: options.s3_region,
            allow_http: options.allow_http,
            read_deadline_secs: self.read_deadline_secs(),
        }
    }

    fn read_deadline_secs(&self) -> u64 {
        self.read_deadline.unwrap_or(DEFAULT_READ_DEADLINE_SECS)
    }
}

impl RepoArgs {
    pub fn store_options(&self) -> StoreOptions {
        self.store.store_options()
    }

    pub async fn open(&self) -> anyhow::Result<Repository> {
        Repository::open(&self.repo, &self.store_options())
            .await
            .context("--repo")
    }
}

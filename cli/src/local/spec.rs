//! What a local recovery was asked to do ([`LocalSpec`]) and which settings a rerun may change
//! ([`Rerun`]).

use std::path::PathBuf;

use ir_api::GoDuration;
use ir_api::point_in_time::PointInTime;
use ir_api::recovery::{RecoveryMode, RetryPolicy, SwitchoverPolicy};
use serde::{Deserialize, Serialize};

use super::error::LocalError;
use crate::repo_args::RepoSpec;

/// What `irctl recover` was asked to do.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct LocalSpec {
    pub repo: RepoSpec,
    /// Backup id or `latest` (resolved once, at validation).
    pub backup: String,
    /// What the recovery is for; a Publish has no target until it becomes a Recover.
    #[serde(default)]
    pub mode: RecoveryMode,
    /// Mode Publish: how long the backup stays published after its first query.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub publish_ttl: Option<GoDuration>,
    /// Mode Publish: the published instance runs as a hot standby that refuses every write.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub read_only: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub target_pgdata: Option<PathBuf>,
    pub published_port: u16,
    pub target_port: u16,
    /// `listen_addresses` of both instances.
    pub listen_addresses: String,
    /// OS user PostgreSQL runs as (and owner of the mounted files).
    pub pg_user: String,
    /// Database superuser the engine connects as.
    pub db_user: String,
    pub db_name: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pg_bindir: Option<PathBuf>,
    pub switchover: SwitchoverPolicy,
    pub retry: RetryPolicy,
    /// Free space the IRCache's file system must have at the start.
    pub cache_min_free_bytes: u64,
    /// How long PostgreSQL may take to answer its first query (recovery from the backup).
    pub start_timeout_secs: u64,
    /// Time allowed for the standby to replay the last LSN during the switchover.
    pub catch_up_timeout_secs: u64,
    /// Recover to this point: the published instance replays the repository's WAL up to it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub point_in_time: Option<PointInTime>,
}

/// Settings given again when a recorded recovery is run again; `None` keeps what the workdir
/// records, so that a default never overwrites a choice made on the first run.
///
/// What the mount, the instances and the target were made with is the recovery's identity and
/// must match what the workdir records when given. Policies, the login and the engine's waits
/// may change between runs.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Rerun {
    pub repo: Option<String>,
    /// `latest` matches the backup pinned at validation.
    pub backup: Option<String>,
    pub target_pgdata: Option<PathBuf>,
    pub pg_user: Option<String>,
    pub listen_addresses: Option<String>,
    pub pg_bindir: Option<PathBuf>,
    pub s3_endpoint: Option<String>,
    pub s3_region: Option<String>,
    /// `Some(true)` when `--s3-allow-http` is given.
    pub s3_allow_http: Option<bool>,
    /// The running mount was started with it.
    pub read_deadline_secs: Option<u64>,
    /// Checked once, at validation.
    pub cache_min_free_bytes: Option<u64>,
    pub published_port: Option<u16>,
    pub target_port: Option<u16>,
    /// Policies may change between runs (approve, reschedule, retry settings).
    pub switchover: Option<SwitchoverPolicy>,
    pub retry_limit: Option<u32>,
    pub retry_interval: Option<ir_api::GoDuration>,
    /// The login may change, so that a rerun can correct an AuthenticationFailed.
    pub db_user: Option<String>,
    pub db_name: Option<String>,
    /// Waits of the engine, used from the next start or switchover on.
    pub start_timeout_secs: Option<u64>,
    pub catch_up_timeout_secs: Option<u64>,
    /// The point in time (`--target-*`), which the mount's cache was made for.
    pub point_in_time: Option<PointInTime>,
    /// The command's mode: `irctl recover` on a publish goes on to a recovery (with
    /// `--target-pgdata`); `irctl publish` on a recovery is refused.
    pub mode: Option<RecoveryMode>,
}

impl Rerun {
    pub(super) fn apply(mut self, spec: &mut LocalSpec) -> Result<(), LocalError> {
        match (spec.mode, self.mode) {
            (RecoveryMode::Publish, Some(RecoveryMode::Recover)) => self.go_on_to_recover(spec)?,
            (RecoveryMode::Recover, Some(RecoveryMode::Publish)) => {
                return Err(LocalError::Conflict(
                    "the workdir holds a recovery, not a publish: use irctl recover or \
                     irctl abort with it"
                        .into(),
                ));
            }
            _ => {}
        }
        let text = |s: &String| s.clone();
        let path = |p: &PathBuf| p.display().to_string();
        let unset = |s: Option<String>| s.unwrap_or_else(|| "not given".into());
        let repo = &spec.repo;
        unchanged("--repo", &repo.url, self.repo, text)?;
        unchanged(
            "--backup",
            &spec.backup,
            self.backup.filter(|b| b != "latest"),
            text,
        )?;
        let target = |p: &Option<PathBuf>| unset(p.as_ref().map(path));
        unchanged(
            "--target-pgdata",
            &spec.target_pgdata,
            self.target_pgdata.map(Some),
            target,
        )?;
        unchanged("--pg-user", &spec.pg_user, self.pg_user, text)?;
        let listen = self.listen_addresses;
        unchanged("--listen-addresses", &spec.listen_addresses, listen, text)?;
        let bindir = |p: &Option<PathBuf>| unset(p.as_ref().map(path));
        unchanged(
            "--pg-bindir",
            &spec.pg_bindir,
            self.pg_bindir.map(Some),
            bindir,
        )?;
        let given = |s: &Option<String>| unset(s.clone());
        unchanged(
            "--s3-endpoint",
            &repo.s3_endpoint,
            self.s3_endpoint.map(Some),
            given,
        )?;
        unchanged(
            "--s3-region",
            &repo.s3_region,
            self.s3_region.map(Some),
            given,
        )?;
        let allow_http = repo.allow_http.unwrap_or(false);
        unchanged(
            "--s3-allow-http",
            &allow_http,
            self.s3_allow_http,
            bool::to_string,
        )?;
        let deadline = self.read_deadline_secs;
        unchanged(
            "--read-deadline",
            &repo.read_deadline_secs,
            deadline,
            u64::to_string,
        )?;
        let cache = self.cache_min_free_bytes;
        unchanged("--cache-min-free", &spec.cache_min_free_bytes, cache, |b| {
            format!("{b} bytes")
        })?;
        let port = u16::to_string;
        unchanged(
            "--published-port",
            &spec.published_port,
            self.published_port,
            port,
        )?;
        unchanged("--target-port", &spec.target_port, self.target_port, port)?;
        unchanged(
            "--target-time/--target-lsn/--target-xid/--target-name/--target-immediate",
            &spec.point_in_time,
            self.point_in_time.map(Some),
            |p| format!("{p:?}"),
        )?;
        if let Some(switchover) = self.switchover {
            spec.switchover = switchover;
        }
        if let Some(limit) = self.retry_limit {
            spec.retry.limit = limit;
        }
        if let Some(interval) = self.retry_interval {
            spec.retry.interval = interval;
        }
        if let Some(db_user) = self.db_user {
            spec.db_user = db_user;
        }
        if let Some(db_name) = self.db_name {
            spec.db_name = db_name;
        }
        if let Some(secs) = self.start_timeout_secs {
            spec.start_timeout_secs = secs;
        }
        if let Some(secs) = self.catch_up_timeout_secs {
            spec.catch_up_timeout_secs = secs;
        }
        Ok(())
    }
}

impl Rerun {
    /// A publish becomes a recovery: it takes the target given now.
    fn go_on_to_recover(&mut self, spec: &mut LocalSpec) -> Result<(), LocalError> {
        if spec.read_only {
            return Err(LocalError::Conflict(
                "the publish is read-only (--read-only), a hot standby that cannot be copied \
                 and switched over: unpublish it and recover the backup anew"
                    .into(),
            ));
        }
        let target = self.target_pgdata.take().ok_or_else(|| {
            LocalError::Conflict(
                "the workdir holds a publish: give --target-pgdata to go on from it to a \
                 recovery"
                    .into(),
            )
        })?;
        spec.target_pgdata = Some(target);
        spec.mode = RecoveryMode::Recover;
        spec.publish_ttl = None;
        if let Some(port) = self.target_port.take() {
            spec.target_port = port;
        }
        Ok(())
    }
}

/// Refuses a `given` value of `flag` other than the `recorded` one.
fn unchanged<T: PartialEq>(
    flag: &str,
    recorded: &T,
    given: Option<T>,
    show: impl Fn(&T) -> String,
) -> Result<(), LocalError> {
    match given {
        Some(given) if given != *recorded => Err(LocalError::Conflict(format!(
            "{flag} {} differs from the recovery recorded in the workdir ({}); it cannot \
             change on a rerun: leave it out, or use another --workdir for another recovery",
            show(&given),
            show(recorded)
        ))),
        _ => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn recorded() -> LocalSpec {
        LocalSpec {
            repo: RepoSpec {
                url: "s3://bucket/prefix".into(),
                s3_endpoint: Some("http://127.0.0.1:9000".into()),
                s3_region: None,
                allow_http: Some(true),
                read_deadline_secs: 30,
                key_file: None,
            },
            backup: "20260101T000000Z-abcd".into(),
            mode: RecoveryMode::Recover,
            publish_ttl: None,
            read_only: false,
            target_pgdata: Some("/srv/pg/main".into()),
            published_port: 5433,
            target_port: 5434,
            listen_addresses: "localhost".into(),
            pg_user: "postgres".into(),
            db_user: "postgres".into(),
            db_name: "postgres".into(),
            pg_bindir: None,
            switchover: SwitchoverPolicy::default(),
            retry: RetryPolicy::default(),
            cache_min_free_bytes: 1 << 30,
            start_timeout_secs: 600,
            catch_up_timeout_secs: 60,
            point_in_time: None,
        }
    }

    #[test]
    fn a_rerun_may_not_change_what_the_recovery_was_made_with() {
        let cases: Vec<(&str, Rerun, &str, &str)> = vec![
            (
                "--repo",
                Rerun {
                    repo: Some("s3://other".into()),
                    ..Default::default()
                },
                "s3://other",
                "s3://bucket/prefix",
            ),
            (
                "--backup",
                Rerun {
                    backup: Some("20260202T000000Z-ef01".into()),
                    ..Default::default()
                },
                "20260202T000000Z-ef01",
                "20260101T000000Z-abcd",
            ),
            (
                "--target-pgdata",
                Rerun {
                    target_pgdata: Some("/srv/other".into()),
                    ..Default::default()
                },
                "/srv/other",
                "/srv/pg/main",
            ),
            (
                "--pg-user",
                Rerun {
                    pg_user: Some("alice".into()),
                    ..Default::default()
                },
                "alice",
                "postgres",
            ),
            (
                "--listen-addresses",
                Rerun {
                    listen_addresses: Some("*".into()),
                    ..Default::default()
                },
                "*",
                "localhost",
            ),
            (
                "--pg-bindir",
                Rerun {
                    pg_bindir: Some("/opt/pg/bin".into()),
                    ..Default::default()
                },
                "/opt/pg/bin",
                "not given",
            ),
            (
                "--s3-endpoint",
                Rerun {
                    s3_endpoint: Some("http://evil:9000".into()),
                    ..Default::default()
                },
                "http://evil:9000",
                "http://127.0.0.1:9000",
            ),
            (
                "--s3-region",
                Rerun {
                    s3_region: Some("eu-west-1".into()),
                    ..Default::default()
                },
                "eu-west-1",
                "not given",
            ),
            (
                "--read-deadline",
                Rerun {
                    read_deadline_secs: Some(5),
                    ..Default::default()
                },
                "5",
                "30",
            ),
            (
                "--cache-min-free",
                Rerun {
                    cache_min_free_bytes: Some(1),
                    ..Default::default()
                },
                "1 bytes",
                "1073741824 bytes",
            ),
            (
                "--published-port",
                Rerun {
                    published_port: Some(6000),
                    ..Default::default()
                },
                "6000",
                "5433",
            ),
        ];
        for (flag, rerun, given, was) in cases {
            let mut spec = recorded();
            let err = rerun.apply(&mut spec).unwrap_err().to_string();
            assert!(
                err.starts_with(&format!("{flag} {given} differs"))
                    && err.contains(&format!("({was})")),
                "{err}"
            );
            assert_eq!(spec, recorded(), "{flag}: the recorded spec changed");
        }
    }

    #[test]
    fn a_rerun_may_repeat_the_identity_and_change_policies_and_waits() {
        let mut spec = recorded();
        let rerun = Rerun {
            repo: Some("s3://bucket/prefix".into()),
            backup: Some("latest".into()),
            target_pgdata: Some("/srv/pg/main/".into()),
            s3_allow_http: Some(true),
            read_deadline_secs: Some(30),
            retry_limit: Some(3),
            db_user: Some("admin".into()),
            start_timeout_secs: Some(1200),
            catch_up_timeout_secs: Some(5),
            ..Default::default()
        };
        rerun.apply(&mut spec).unwrap();
        let expected = LocalSpec {
            retry: RetryPolicy {
                limit: 3,
                ..RetryPolicy::default()
            },
            db_user: "admin".into(),
            start_timeout_secs: 1200,
            catch_up_timeout_secs: 5,
            ..recorded()
        };
        assert_eq!(spec, expected);
    }
}

//! The switchover: the published instance read-only, drained and stopped once the standby has
//! all it wrote, then the standby promoted and checked.

use std::time::{Duration, Instant};

use tokio_postgres::Client;

use super::binaries::{ControlData, PgBinaries, control_data};
use super::instance::Instance;
use super::sql::{
    alter_system, checkpoint_timeline, current_timeline, in_recovery, lsn, set_read_only,
};
use super::{Endpoint, PgError};

/// Time limits of the switchover steps.
#[derive(Debug, Clone, Copy)]
pub struct SwitchoverTimeouts {
    /// The checkpoint before read-only (not downtime: writes still flow).
    pub checkpoint: Duration,
    /// Ending open sessions after read-only.
    pub drain: Duration,
    /// The standby replaying the last LSN, before and after the published instance stops.
    pub catch_up: Duration,
    pub stop: Duration,
    pub promote: Duration,
}

impl Default for SwitchoverTimeouts {
    fn default() -> Self {
        SwitchoverTimeouts {
            checkpoint: Duration::from_secs(300),
            drain: Duration::from_secs(10),
            catch_up: Duration::from_secs(60),
            stop: Duration::from_secs(60),
            promote: Duration::from_secs(60),
        }
    }
}

/// Where a failed switchover left things.
#[derive(Debug, thiserror::Error)]
#[error("switchover failed while {stage}: {source}")]
pub struct SwitchoverError {
    pub stage: &'static str,
    pub reached: Reached,
    #[source]
    pub source: PgError,
}

/// How far a failed switchover got.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reached {
    /// The published instance was not stopped; it serves writes again.
    BeforeStop,
    /// This call stopped the published instance (so no attempt asked the standby to promote)
    /// and did not ask either: nothing serves until the driver starts it again.
    Stopped,
    /// The standby may be a primary, or become one: it was asked to promote, or the published
    /// instance was stopped before this call (an earlier attempt may have asked). The published
    /// instance must stay stopped.
    MaybePromoted,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SwitchoverOutcome {
    /// Read-only to promoted, as measured by this call.
    pub downtime: Duration,
    pub old_timeline: u32,
    pub new_timeline: u32,
}

/// How a driver stops the published instance and reads what it wrote last.
pub trait PublishedControl {
    /// Whether the published instance still runs (or is still stopping).
    fn is_running(&self) -> impl Future<Output = Result<bool, PgError>> + Send;
    /// Stops it with a fast shutdown and returns once it is gone.
    fn stop(&self) -> impl Future<Output = Result<(), PgError>> + Send;
    /// The control file of the stopped instance where the driver can read it. `None`: the
    /// standby's flushed WAL is the measure instead, since on a clean shutdown the walsender
    /// exits only once the standby has flushed everything up to the shutdown checkpoint.
    fn final_checkpoint(&self) -> Result<Option<ControlData>, PgError>;
}

/// The published instance of the local driver: a postmaster this host runs.
pub struct LocalPublished<'a> {
    pub bins: &'a PgBinaries,
    pub instance: &'a Instance,
    pub stop_timeout: Duration,
}

impl PublishedControl for LocalPublished<'_> {
    async fn is_running(&self) -> Result<bool, PgError> {
        Ok(self.instance.running_pid().is_some())
    }

    async fn stop(&self) -> Result<(), PgError> {
        match self.instance.running_pid() {
            Some(pid) => self.instance.stop(pid, self.stop_timeout).await,
            None => Ok(()),
        }
    }

    fn final_checkpoint(&self) -> Result<Option<ControlData>, PgError> {
        control_data(self.bins, &self.instance.datadir).map(Some)
    }
}

/// The parts of a switchover.
pub struct Switchover<'a, P> {
    pub published: &'a P,
    pub published_endpoint: &'a Endpoint,
    pub standby_endpoint: &'a Endpoint,
    pub timeouts: SwitchoverTimeouts,
}

impl<P: PublishedControl + Sync> Switchover<'_, P> {
    /// Read-only, drain, catch up, stop, promote, check. Safe to call again after a failure or a
    /// crash of the caller: a promoted standby is recognised, a stopped published instance is
    /// checked against the standby from its control file.
    pub async fn run(&self) -> Result<SwitchoverOutcome, SwitchoverError> {
        // Downtime starts at read-only; when resuming after the stop, at this call.
        let mut read_only_since = Instant::now();
        let standby = self
            .standby_endpoint
            .connect()
            .await
            .map_err(PgError::db("connecting to the standby"))
            .map_err(|e| fail("connecting to the standby", Reached::BeforeStop, e))?;
        let running = self
            .published
            .is_running()
            .await
            .map_err(|e| fail("looking at the published instance", Reached::BeforeStop, e))?;
        let old_timeline = if running {
            let (timeline, since) = self.stop_published_cleanly(&standby).await?;
            read_only_since = since;
            timeline
        } else {
            // Stopped earlier (a previous attempt): what it wrote last must be on the standby.
            // That attempt may have asked the standby to promote just before it ended.
            let control = self.published.final_checkpoint().map_err(|e| {
                fail(
                    "reading the published instance's control file",
                    Reached::MaybePromoted,
                    e,
                )
            })?;
            if !in_recovery(&standby)
                .await
                .map_err(|e| fail("checking the standby", Reached::MaybePromoted, e))?
            {
                let new_timeline = current_timeline(&standby).await.map_err(|e| {
                    fail("checking the promoted standby", Reached::MaybePromoted, e)
                })?;
                return Ok(SwitchoverOutcome {
                    downtime: read_only_since.elapsed(),
                    old_timeline: control.map_or(new_timeline.saturating_sub(1), |c| c.timeline),
                    new_timeline,
                });
            }
            match control {
                Some(control) => {
                    if control.state != "shut down" {
                        return Err(fail(
                            "checking the stopped published instance",
                            Reached::MaybePromoted,
                            PgError::Unexpected(format!(
                                "the published instance is not running and was not shut down \
                                 cleanly (state {:?}); it must be started again before a \
                                 switchover",
                                control.state
                            )),
                        ));
                    }
                    self.wait_replayed(&standby, control.checkpoint_lsn, Reached::MaybePromoted)
                        .await?;
                    control.timeline
                }
                None => {
                    self.wait_flushed_replayed(&standby, Reached::MaybePromoted)
                        .await?;
                    checkpoint_timeline(&standby)
                        .await
                        .map_err(|e| fail("checking the standby", Reached::MaybePromoted, e))?
                }
            }
        };
        self.promote(&standby, old_timeline, read_only_since).await
    }

    /// Steps up to and including the stop; returns the published instance's timeline and when
    /// it became read-only.
    async fn stop_published_cleanly(
        &self,
        standby: &Client,
    ) -> Result<(u32, Instant), SwitchoverError> {
        let published = self
            .published_endpoint
            .connect()
            .await
            .map_err(PgError::db("connecting to the published instance"))
            .map_err(|e| {
                fail(
                    "connecting to the published instance",
                    Reached::BeforeStop,
                    e,
                )
            })?;
        // Flush dirty buffers while writes still flow, so that the shutdown checkpoint, which
        // counts as downtime, has little left to write through the mount.
        match tokio::time::timeout(
            self.timeouts.checkpoint,
            published.batch_execute("CHECKPOINT"),
        )
        .await
        {
            Ok(done) => done.map_err(PgError::db("checkpoint before the switchover")),
            Err(_) => Err(PgError::Timeout {
                what: "the checkpoint before the switchover".into(),
                timeout: self.timeouts.checkpoint,
            }),
        }
        .map_err(|e| {
            fail(
                "checkpointing the published instance",
                Reached::BeforeStop,
                e,
            )
        })?;
        let read_only_since = Instant::now();
        let ready_to_stop = async {
            set_read_only(&published, true).await.map_err(|e| {
                fail(
                    "making the published instance read-only",
                    Reached::BeforeStop,
                    e,
                )
            })?;
            self.drain(&published).await?;
            let final_lsn = lsn(
                &published,
                "SELECT pg_current_wal_lsn()::text",
                "reading the final LSN",
            )
            .await
            .map_err(|e| fail("reading the final LSN", Reached::BeforeStop, e))?;
            self.wait_replayed(standby, final_lsn, Reached::BeforeStop)
                .await?;
            checkpoint_timeline(&published).await.map_err(|e| {
                fail(
                    "reading the published instance's timeline",
                    Reached::BeforeStop,
                    e,
                )
            })
        }
        .await;
        let timeline = match ready_to_stop {
            Ok(timeline) => timeline,
            Err(e) => {
                // Serve writes again: the switchover is off. Also after a failed or timed-out
                // read-only change, which may have taken effect anyway.
                if let Err(undo) = set_read_only(&published, false).await {
                    tracing::warn!(error = %undo, "could not make the published instance writable again");
                }
                return Err(e);
            }
        };
        drop(published);
        self.published
            .stop()
            .await
            .map_err(|e| fail("stopping the published instance", Reached::Stopped, e))?;
        // A clean shutdown ends with a checkpoint record the standby must have as well.
        match self.published.final_checkpoint().map_err(|e| {
            fail(
                "reading the published instance's control file",
                Reached::Stopped,
                e,
            )
        })? {
            Some(control) => {
                self.wait_replayed(standby, control.checkpoint_lsn, Reached::Stopped)
                    .await?
            }
            None => {
                self.wait_flushed_replayed(standby, Reached::Stopped)
                    .await?
            }
        }
        Ok((timeline, read_only_since))
    }

    /// Ends the client sessions that started before read-only: they may hold a write
    /// transaction. Sessions opened since start read-only and may stay; anything one of them
    /// still commits by overriding the setting is caught by the check after the stop.
    async fn drain(&self, published: &Client) -> Result<(), SwitchoverError> {
        let stage = "ending client sessions";
        let rows = published
            .query(
                "SELECT pid FROM pg_stat_activity \
                 WHERE backend_type = 'client backend' AND pid <> pg_backend_pid()",
                &[],
            )
            .await
            .map_err(PgError::db(stage))
            .map_err(|e| fail(stage, Reached::BeforeStop, e))?;
        let pids: Vec<i32> = rows.iter().map(|r| r.get(0)).collect();
        let deadline = Instant::now() + self.timeouts.drain;
        loop {
            let left: i64 = published
                .query_one(
                    "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity \
                     WHERE pid = ANY($1)",
                    &[&pids],
                )
                .await
                .map_err(PgError::db(stage))
                .map_err(|e| fail(stage, Reached::BeforeStop, e))?
                .get(0);
            if left == 0 {
                return Ok(());
            }
            if Instant::now() >= deadline {
                return Err(fail(
                    stage,
                    Reached::BeforeStop,
                    PgError::Timeout {
                        what: format!("{left} client sessions ending"),
                        timeout: self.timeouts.drain,
                    },
                ));
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    async fn wait_replayed(
        &self,
        standby: &Client,
        target: u64,
        reached: Reached,
    ) -> Result<(), SwitchoverError> {
        let stage = "waiting for the standby to replay the last LSN";
        let deadline = Instant::now() + self.timeouts.catch_up;
        loop {
            let replayed = lsn(
                standby,
                "SELECT pg_last_wal_replay_lsn()::text",
                "reading the standby's replay LSN",
            )
            .await
            .map_err(|e| fail(stage, reached, e))?;
            if replayed >= target {
                return Ok(());
            }
            if Instant::now() >= deadline {
                return Err(fail(
                    stage,
                    reached,
                    PgError::Timeout {
                        what: format!(
                            "the standby replaying up to {} (it is at {})",
                            ir_repository::format_lsn(target),
                            ir_repository::format_lsn(replayed)
                        ),
                        timeout: self.timeouts.catch_up,
                    },
                ));
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }

    /// Waits until the standby has replayed all the WAL it flushed.
    async fn wait_flushed_replayed(
        &self,
        standby: &Client,
        reached: Reached,
    ) -> Result<(), SwitchoverError> {
        let flushed = lsn(
            standby,
            "SELECT pg_last_wal_receive_lsn()::text",
            "reading the standby's flushed LSN",
        )
        .await
        .map_err(|e| fail("waiting for the standby to replay the last LSN", reached, e))?;
        self.wait_replayed(standby, flushed, reached).await
    }

    async fn promote(
        &self,
        standby: &Client,
        old_timeline: u32,
        started: Instant,
    ) -> Result<SwitchoverOutcome, SwitchoverError> {
        let stage = "promoting the standby";
        let wait = self.timeouts.promote.as_secs().clamp(1, i32::MAX as u64) as i32;
        let promoted: bool = standby
            .query_one("SELECT pg_promote(true, $1)", &[&wait])
            .await
            .map_err(PgError::db("pg_promote"))
            .map_err(|e| fail(stage, Reached::MaybePromoted, e))?
            .get(0);
        if !promoted {
            return Err(fail(
                stage,
                Reached::MaybePromoted,
                PgError::Timeout {
                    what: "pg_promote".into(),
                    timeout: self.timeouts.promote,
                },
            ));
        }
        let downtime = started.elapsed();
        let check = "checking the promoted standby";
        let new_timeline = current_timeline(standby)
            .await
            .map_err(|e| fail(check, Reached::MaybePromoted, e))?;
        let read_only: String = standby
            .query_one("SHOW transaction_read_only", &[])
            .await
            .map_err(PgError::db("SHOW transaction_read_only"))
            .map_err(|e| fail(check, Reached::MaybePromoted, e))?
            .get(0);
        if in_recovery(standby)
            .await
            .map_err(|e| fail(check, Reached::MaybePromoted, e))?
            || read_only != "off"
            || new_timeline <= old_timeline
        {
            return Err(fail(
                check,
                Reached::MaybePromoted,
                PgError::Unexpected(format!(
                    "after promotion the standby is not a read-write primary on a new timeline \
                     (timeline {new_timeline}, was {old_timeline}; transaction_read_only {read_only})"
                )),
            ));
        }
        // A standalone primary: it no longer follows anyone.
        alter_system(
            standby,
            "ALTER SYSTEM RESET primary_conninfo",
            "resetting primary_conninfo",
        )
        .await
        .map_err(|e| fail(check, Reached::MaybePromoted, e))?;
        Ok(SwitchoverOutcome {
            downtime,
            old_timeline,
            new_timeline,
        })
    }
}

fn fail(stage: &'static str, reached: Reached, source: PgError) -> SwitchoverError {
    SwitchoverError {
        stage,
        reached,
        source,
    }
}

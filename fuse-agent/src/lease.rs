//! The lease a mount holds on its backup while it serves (`leases/<backup>/<holder>.json` in
//! the repository), so that `irctl backup delete` and `prune` leave a backup in use alone. It
//! is refreshed well before it expires and given up at unmount; a mount that dies leaves one
//! that expires by itself. A repository the mount may not write to (read-only credentials)
//! gets no lease: a warning, not a failure.

use std::path::Path;
use std::time::Duration;

use ir_repository::Repository;
use tokio::runtime::Handle;
use tokio::task::JoinHandle;

/// How long a lease lasts, and how often it is refreshed.
const LEASE_TTL: Duration = Duration::from_secs(15 * 60);
const REFRESH_EVERY: Duration = Duration::from_secs(5 * 60);
/// How long unmount waits for the lease to be given up.
const RELEASE_WAIT: Duration = Duration::from_secs(5);

pub struct BackupLease {
    repo: Repository,
    backup: String,
    holder: String,
    runtime: Handle,
    refresher: JoinHandle<()>,
}

/// The lease holder of a mount over `cache_dir` on this host: the host name and a hash of the
/// cache directory, unique per mount and stable across its restarts.
fn holder(cache_dir: &Path) -> String {
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname").unwrap_or_default();
    let host: String = host
        .trim()
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '-' {
                c
            } else {
                '_'
            }
        })
        .take(64)
        .collect();
    let hash = blake3::hash(cache_dir.as_os_str().as_encoded_bytes()).to_hex();
    let host = if host.is_empty() {
        "host".to_owned()
    } else {
        host
    };
    format!("{host}-{}", &hash[..12])
}

impl BackupLease {
    /// Takes the lease now (on `runtime`) and keeps refreshing it.
    pub fn take(repo: Repository, backup: &str, cache_dir: &Path, runtime: Handle) -> BackupLease {
        let holder = holder(cache_dir);
        let refresher = {
            let (repo, backup, holder) = (repo.clone(), backup.to_owned(), holder.clone());
            runtime.spawn(async move {
                let mut warned = false;
                loop {
                    match repo.take_lease(&backup, &holder, LEASE_TTL).await {
                        Ok(()) => warned = false,
                        Err(e) if !warned => {
                            warned = true;
                            tracing::warn!(%backup, %holder, error = %e, "cannot take a lease on the backup: `irctl backup prune` may delete it while it is mounted");
                        }
                        Err(e) => tracing::debug!(%backup, error = %e, "lease refresh failed"),
                    }
                    tokio::time::sleep(REFRESH_EVERY).await;
                }
            })
        };
        BackupLease {
            repo,
            backup: backup.to_owned(),
            holder,
            runtime,
            refresher,
        }
    }

    /// Stops refreshing and gives the lease up, waiting a little for the repository.
    pub fn release(self) {
        self.refresher.abort();
        let (repo, backup, holder) = (self.repo.clone(), self.backup.clone(), self.holder.clone());
        let runtime = self.runtime.clone();
        let (tx, rx) = std::sync::mpsc::channel();
        // A thread of its own: unmount may run on one of the runtime's threads.
        std::thread::spawn(move || {
            let released = runtime.block_on(repo.release_lease(&backup, &holder));
            let _ = tx.send(released);
        });
        match rx.recv_timeout(RELEASE_WAIT) {
            Ok(Ok(())) => {}
            Ok(Err(e)) => {
                tracing::warn!(error = %e, "giving the backup's lease up failed; it expires by itself")
            }
            Err(_) => {
                tracing::warn!("giving the backup's lease up took too long; it expires by itself")
            }
        }
    }
}

/// A mount dropped without an unmount stops refreshing; its lease expires by itself.
impl Drop for BackupLease {
    fn drop(&mut self) {
        self.refresher.abort();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn holders_differ_by_cache_and_are_valid_names() {
        let a = holder(Path::new("/var/lib/instant-recovery/ircache/uid-a"));
        let b = holder(Path::new("/var/lib/instant-recovery/ircache/uid-b"));
        assert_ne!(a, b);
        assert_eq!(
            a,
            holder(Path::new("/var/lib/instant-recovery/ircache/uid-a"))
        );
        assert!(
            a.chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_'))
        );
    }
}

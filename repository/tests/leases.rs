//! Leases on backups, as read back from a repository whose bytes are not to be trusted: a lease
//! never holds a backup longer than the longest lease anyone takes, an oversized or garbled one
//! still protects the backup for that long, and names cannot leave `leases/`.

mod common;

use std::time::Duration;

use ir_repository::{MAX_LEASE_TTL, RepoError};
use time::OffsetDateTime;

/// `expires` no later than an hour (the longest lease) from now, give or take the test's time.
fn within_the_longest_lease(expires: OffsetDateTime) -> bool {
    expires <= OffsetDateTime::now_utc() + MAX_LEASE_TTL + Duration::from_secs(60)
}

#[tokio::test]
async fn leases_from_the_repository_are_bounded_whatever_they_say() {
    let dir = tempfile::tempdir().unwrap();
    let repo = common::temp_repo(dir.path()).await;
    let leases = dir.path().join("repo/leases/b1");

    repo.take_lease("b1", "node-a", Duration::from_secs(600))
        .await
        .unwrap();
    let held = repo.active_leases("b1").await.unwrap();
    assert_eq!(held.len(), 1);
    assert_eq!(held[0].holder, "node-a");
    repo.release_lease("b1", "node-a").await.unwrap();
    assert!(repo.active_leases("b1").await.unwrap().is_empty());
    // Given up twice: nothing to give up is no error.
    repo.release_lease("b1", "node-a").await.unwrap();

    // Asked for longer than anyone may hold one: the longest lease.
    repo.take_lease("b1", "greedy", Duration::from_secs(10 * 3600))
        .await
        .unwrap();
    let held = repo.active_leases("b1").await.unwrap();
    assert!(within_the_longest_lease(held[0].expires), "{held:?}");
    repo.release_lease("b1", "greedy").await.unwrap();

    // Written by someone else: a far-future expiry, an oversized object, garbage, an old lease.
    std::fs::write(
        leases.join("forever.json"),
        r#"{"holder": "forever", "expires": "9999-12-31T00:00:00Z"}"#,
    )
    .unwrap();
    std::fs::write(leases.join("huge.json"), vec![b' '; 1 << 20]).unwrap();
    std::fs::write(leases.join("garbage.json"), b"\x00\xffnot json").unwrap();
    std::fs::write(
        leases.join("old.json"),
        r#"{"holder": "old", "expires": "2001-01-01T00:00:00Z"}"#,
    )
    .unwrap();
    let held = repo.active_leases("b1").await.unwrap();
    let holders: Vec<&str> = held.iter().map(|l| l.holder.as_str()).collect();
    assert_eq!(holders.len(), 3, "{held:?}");
    assert!(holders.contains(&"forever"), "{holders:?}");
    assert!(
        holders
            .iter()
            .filter(|h| h.ends_with("(unreadable)"))
            .count()
            == 2,
        "{holders:?}"
    );
    assert!(
        held.iter().all(|l| within_the_longest_lease(l.expires)),
        "{held:?}"
    );
}

#[tokio::test]
async fn lease_and_backup_names_cannot_leave_their_place() {
    let dir = tempfile::tempdir().unwrap();
    let repo = common::temp_repo(dir.path()).await;
    for holder in ["../escape", "a/b", ".hidden", ""] {
        let e = repo
            .take_lease("b1", holder, Duration::from_secs(60))
            .await
            .unwrap_err();
        assert!(matches!(e, RepoError::InvalidLeaseHolder { .. }), "{e}");
    }
    for id in ["../b1", "b/1", ""] {
        let e = repo
            .take_lease(id, "node-a", Duration::from_secs(60))
            .await
            .unwrap_err();
        assert!(matches!(e, RepoError::InvalidBackupId { .. }), "{e}");
        let e = repo.delete_backup(id).await.unwrap_err();
        assert!(matches!(e, RepoError::InvalidBackupId { .. }), "{e}");
    }
    assert!(!dir.path().join("escape.json").exists());
    let e = repo.delete_backup("absent").await.unwrap_err();
    assert!(matches!(e, RepoError::BackupNotFound { .. }), "{e}");
}

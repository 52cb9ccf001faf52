//! Sync progress: bytes copied, rate and lag, and a standby copied again.

use super::*;

#[test]
fn a_standby_that_stops_streaming_is_synced_again() {
    let mut ready = status_in(Phase::ReadyForSwitchover);
    ready.backup = Some(info());
    let d = reconcile(&Policy::default(), &ready, &streaming(42), t(10));
    assert_eq!(d.status.phase, Phase::ReadyForSwitchover);
    let mut ready = d.status;
    ready.set_condition(
        ConditionType::Synced,
        ConditionStatus::True,
        Reason::StandbyStreaming,
        "",
        t(1),
    );
    assert_eq!(
        (ready.progress.percent_copied, ready.progress.lag_bytes),
        (Some(100), Some(42))
    );

    let copied_again = Observed {
        standby: Standby::Copying {
            copied_bytes: 100,
            total_bytes: 1000,
        },
        ..streaming(0)
    };
    let gone = Observed {
        standby: Standby::Absent,
        ..streaming(0)
    };
    for (observed, copied_bytes, percent) in [(copied_again, 100, 10), (gone, 0, 0)] {
        let d = reconcile(&Policy::default(), &ready, &observed, t(20));
        assert_eq!(d.status.phase, Phase::Syncing, "{observed:?}");
        assert_eq!(d.status.reason.as_deref(), Some("StandbyNotStreaming"));
        let synced = d.status.condition(ConditionType::Synced).unwrap();
        assert_eq!(
            (synced.status, synced.reason.as_str()),
            (ConditionStatus::False, "StandbyNotStreaming")
        );
        let progress = &d.status.progress;
        assert_eq!(progress.copied_bytes, copied_bytes, "{observed:?}");
        assert_eq!(progress.percent_copied, Some(percent), "{observed:?}");
        assert_eq!(progress.lag_bytes, None, "{observed:?}");
        assert_eq!(progress.rate_bytes_per_second, None, "{observed:?}");
    }
}

#[test]
fn sync_progress_and_rate() {
    let copying = |copied_bytes| Observed {
        standby: Standby::Copying {
            copied_bytes,
            total_bytes: 1000,
        },
        ..streaming(0)
    };
    let d = reconcile(
        &Policy::default(),
        &status_in(Phase::Syncing),
        &copying(100),
        t(10),
    );
    assert_eq!(d.status.progress.copied_bytes, 100);
    assert_eq!(d.status.progress.percent(), Some(10.0));
    assert_eq!(d.status.progress.rate_bytes_per_second, None);
    let d = reconcile(&Policy::default(), &d.status, &copying(500), t(12));
    assert_eq!(d.status.progress.rate_bytes_per_second, Some(200));
    // The copy started over: no rate until there are two figures of the new one.
    let restarted = reconcile(&Policy::default(), &d.status, &copying(100), t(14));
    assert_eq!(restarted.status.progress.copied_bytes, 100);
    assert_eq!(restarted.status.progress.rate_bytes_per_second, None);
    let d = reconcile(&Policy::default(), &restarted.status, &copying(500), t(16));
    assert_eq!(d.status.progress.rate_bytes_per_second, Some(200));
    let d = reconcile(&Policy::default(), &d.status, &streaming(42), t(18));
    assert_eq!(d.status.phase, Phase::ReadyForSwitchover);
    assert_eq!(d.status.progress.lag_bytes, Some(42));
    assert_eq!(d.status.progress.copied_bytes, 1000);
    assert_eq!(d.status.timings.synced_at, Some(t(18)));
}

#[test]
fn replay_to_a_point_in_time_is_reported_until_reached() {
    use ir_api::point_in_time::{PointInTimeStatus, RecoverableWindow};
    let window = RecoverableWindow {
        earliest: t(-100),
        earliest_lsn: "0/2000100".into(),
        latest: Some(t(-10)),
        latest_lsn: "0/9000000".into(),
        first_missing_segment: None,
    };
    let validated = Observed {
        validation: Step::Ready(info()),
        point_in_time: Some(PointInTimeStatus {
            target: "restore point \"before\"".into(),
            window: Some(window.clone()),
            ..Default::default()
        }),
        ..Default::default()
    };
    let d = reconcile(
        &Policy::default(),
        &status_in(Phase::Validating),
        &validated,
        t(1),
    );
    assert_eq!(d.status.phase, Phase::Mounting);
    assert_eq!(
        d.status.point_in_time.as_ref().unwrap().window,
        Some(window.clone())
    );

    let mut publishing = d.status;
    publishing.phase = Phase::Publishing;
    let replaying = |replayed: &str| Observed {
        mount: Step::Ready(()),
        published: Step::InProgress,
        point_in_time: Some(PointInTimeStatus {
            target: "restore point \"before\"".into(),
            replayed_lsn: Some(replayed.into()),
            end_lsn: Some("0/9000000".into()),
            ..Default::default()
        }),
        ..Default::default()
    };
    let d = reconcile(
        &Policy::default(),
        &publishing,
        &replaying("0/5000000"),
        t(2),
    );
    assert_eq!(d.status.phase, Phase::Publishing);
    let p = d.status.point_in_time.as_ref().unwrap();
    assert_eq!(
        p.window,
        Some(window),
        "the window seen at validation stays"
    );
    assert_eq!(p.replayed_lsn.as_deref(), Some("0/5000000"));
    let c = d.status.condition(ConditionType::PointInTime).unwrap();
    assert_eq!(
        (c.status, c.reason.as_str()),
        (ConditionStatus::False, "Replaying")
    );
    assert!(
        c.message.contains("replayed 0/5000000 of 0/9000000"),
        "{}",
        c.message
    );

    let reached = Observed {
        published: Step::Ready(t(3)),
        point_in_time: Some(PointInTimeStatus {
            target: "restore point \"before\"".into(),
            replayed_lsn: Some("0/7000028".into()),
            reached_at: Some(t(3)),
            ..Default::default()
        }),
        ..replaying("0/7000028")
    };
    let d = reconcile(&Policy::default(), &d.status, &reached, t(4));
    assert_eq!(d.status.phase, Phase::Syncing);
    let c = d.status.condition(ConditionType::PointInTime).unwrap();
    assert_eq!(
        (c.status, c.reason.as_str()),
        (ConditionStatus::True, "TargetReached")
    );
    assert_eq!(d.status.timings.published_at, Some(t(3)));
}

#[test]
fn no_point_in_time_condition_without_a_point_in_time() {
    let publishing = Observed {
        mount: Step::Ready(()),
        published: Step::InProgress,
        ..Default::default()
    };
    let d = reconcile(
        &Policy::default(),
        &status_in(Phase::Publishing),
        &publishing,
        t(2),
    );
    assert_eq!(d.status.condition(ConditionType::PointInTime), None);
    assert_eq!(d.status.point_in_time, None);
}

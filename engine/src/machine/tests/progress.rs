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
        "StandbyStreaming",
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

//! Recovery to a point in time: where the published instance stops replaying WAL from the
//! repository, as asked (`irctl recover --target-*`, `spec.pointInTime`) and as reported
//! (`status.pointInTime`).

use std::fmt;

use ir_repository::{format_lsn, parse_lsn};
use jiff::Timestamp;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// PostgreSQL's limit on a restore point's name (`MAXFNAMELEN` - 1).
const MAX_RESTORE_POINT_NAME: usize = 63;

/// Where to stop replaying WAL: exactly one of `time`, `lsn`, `xid`, `name` or `immediate`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct PointInTime {
    /// Replay the transactions committed up to this time (RFC 3339).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(with = "Option<String>", extend("format" = "date-time"))]
    pub time: Option<Timestamp>,
    /// Replay up to this write-ahead log location (`X/Y`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(regex(pattern = r"^[0-9A-Fa-f]{1,8}/[0-9A-Fa-f]{1,8}$"))]
    pub lsn: Option<String>,
    /// Replay up to the commit of this transaction id.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 3))]
    pub xid: Option<u64>,
    /// Replay up to the restore point of this name (`pg_create_restore_point`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 63))]
    pub name: Option<String>,
    /// Stop as soon as the backup is consistent.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub immediate: bool,
    /// Stop just after the target (true, the default) or just before it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub inclusive: Option<bool>,
    /// The timeline to follow: `latest` (the default), `current`, or a timeline number.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(regex(pattern = r"^(latest|current|[1-9][0-9]*)$"))]
    pub timeline: Option<String>,
    /// What the published instance does at the target: `Promote` (the default) ends recovery
    /// on a new timeline; `Pause` stops there, still in recovery and read-only, so that the
    /// point can be looked at (mode Publish) without starting a timeline. Going on to a
    /// recovery (mode Recover) resumes it, which promotes it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub action: Option<TargetAction>,
}

/// `recovery_target_action`, of the two a recovery can use.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub enum TargetAction {
    #[default]
    Promote,
    Pause,
}

impl TargetAction {
    pub fn as_str(self) -> &'static str {
        match self {
            TargetAction::Promote => "promote",
            TargetAction::Pause => "pause",
        }
    }
}

/// The one target of a [`PointInTime`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Target {
    Time(Timestamp),
    Lsn(u64),
    Xid(u64),
    Name(String),
    Immediate,
}

/// What is wrong with a [`PointInTime`], naming the field.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{field}: {message}")]
pub struct PointInTimeError {
    pub field: &'static str,
    pub message: String,
}

fn invalid(field: &'static str, message: impl Into<String>) -> PointInTimeError {
    PointInTimeError {
        field,
        message: message.into(),
    }
}

impl PointInTime {
    /// The target, once the whole request is checked: exactly one target, each value in a
    /// form PostgreSQL takes.
    pub fn target(&self) -> Result<Target, PointInTimeError> {
        let mut targets = Vec::new();
        if let Some(t) = self.time {
            targets.push(("time", Target::Time(t)));
        }
        if let Some(lsn) = &self.lsn {
            let parsed =
                parse_lsn(lsn).ok_or_else(|| invalid("lsn", format!("{lsn:?} is not an LSN")))?;
            targets.push(("lsn", Target::Lsn(parsed)));
        }
        if let Some(xid) = self.xid {
            // 0 to 2 are never a transaction's (invalid, bootstrap, frozen).
            if xid < 3 {
                return Err(invalid("xid", format!("{xid} is not a transaction id")));
            }
            targets.push(("xid", Target::Xid(xid)));
        }
        if let Some(name) = &self.name {
            if name.is_empty() || name.len() > MAX_RESTORE_POINT_NAME || name.contains('\0') {
                return Err(invalid(
                    "name",
                    format!("a restore point name has 1 to {MAX_RESTORE_POINT_NAME} bytes"),
                ));
            }
            targets.push(("name", Target::Name(name.clone())));
        }
        if self.immediate {
            targets.push(("immediate", Target::Immediate));
        }
        if let Some(timeline) = &self.timeline
            && !matches!(timeline.as_str(), "latest" | "current")
            && !timeline.parse::<u32>().is_ok_and(|t| t > 0)
        {
            return Err(invalid(
                "timeline",
                format!("{timeline:?} is neither latest, current nor a timeline number"),
            ));
        }
        match targets.len() {
            1 => Ok(targets.remove(0).1),
            0 => Err(invalid(
                "target",
                "give one of time, lsn, xid, name or immediate",
            )),
            _ => Err(invalid(
                "target",
                format!(
                    "give only one of {}",
                    targets
                        .iter()
                        .map(|(f, _)| *f)
                        .collect::<Vec<_>>()
                        .join(", ")
                ),
            )),
        }
    }

    /// PostgreSQL's recovery settings for this target; the instance promotes (or pauses) once
    /// it is reached. `restore_command` is the driver's.
    pub fn settings(&self) -> Result<Vec<(String, String)>, PointInTimeError> {
        let mut settings = vec![match self.target()? {
            // PostgreSQL's own form: it refuses some RFC 3339 spellings.
            Target::Time(t) => (
                "recovery_target_time".to_owned(),
                t.strftime("%Y-%m-%d %H:%M:%S%.f+00").to_string(),
            ),
            Target::Lsn(lsn) => ("recovery_target_lsn".to_owned(), format_lsn(lsn)),
            Target::Xid(xid) => ("recovery_target_xid".to_owned(), xid.to_string()),
            Target::Name(name) => ("recovery_target_name".to_owned(), name),
            Target::Immediate => ("recovery_target".to_owned(), "immediate".to_owned()),
        }];
        if let Some(inclusive) = self.inclusive {
            settings.push(("recovery_target_inclusive".into(), inclusive.to_string()));
        }
        settings.push((
            "recovery_target_timeline".into(),
            self.timeline.clone().unwrap_or_else(|| "latest".into()),
        ));
        settings.push((
            "recovery_target_action".into(),
            self.action.unwrap_or_default().as_str().into(),
        ));
        Ok(settings)
    }
}

impl fmt::Display for Target {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Target::Time(t) => write!(f, "time {t}"),
            Target::Lsn(lsn) => write!(f, "LSN {}", format_lsn(*lsn)),
            Target::Xid(xid) => write!(f, "transaction {xid}"),
            Target::Name(name) => write!(f, "restore point {name:?}"),
            Target::Immediate => f.write_str("the end of the backup"),
        }
    }
}

/// What a backup can be recovered to, from the WAL the repository holds.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct RecoverableWindow {
    /// When the backup was consistent by (its ingest ended): nothing earlier can be recovered
    /// from it.
    #[schemars(with = "String", extend("format" = "date-time"))]
    pub earliest: Timestamp,
    /// The backup's consistency point as a WAL location.
    pub earliest_lsn: String,
    /// The latest time a recovery can reach. In a listing, when the last WAL segment archived
    /// without a gap after the backup was archived (an upper bound); in a recovery's status,
    /// when the last transaction in those segments ended, read from them at validation. Absent
    /// when no WAL after the backup is archived.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(with = "Option<String>", extend("format" = "date-time"))]
    pub latest: Option<Timestamp>,
    /// End of the WAL archived without a gap after the backup.
    pub latest_lsn: String,
    /// The first segment missing after that, if any WAL beyond it is archived.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub first_missing_segment: Option<String>,
}

impl fmt::Display for RecoverableWindow {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} ({})", self.earliest, self.earliest_lsn)?;
        match self.latest {
            Some(latest) => write!(f, " to {latest} ({})", self.latest_lsn),
            None => write!(
                f,
                " to {} (no WAL archived after the backup)",
                self.latest_lsn
            ),
        }
    }
}

/// How the recovery to a point in time goes.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct PointInTimeStatus {
    /// The target, for people (`time 2026-12-04T14:02:00Z`, `restore point "before"`).
    pub target: String,
    /// What the chosen backup can be recovered to, as validation saw it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub window: Option<RecoverableWindow>,
    /// The WAL location the published instance has replayed up to.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub replayed_lsn: Option<String>,
    /// Where replay ends at the latest: the target's LSN, or the end of the archived WAL.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub end_lsn: Option<String>,
    /// When the published instance reached the target and was promoted.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(with = "Option<String>", extend("format" = "date-time"))]
    pub reached_at: Option<Timestamp>,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn settings(p: PointInTime) -> Vec<(String, String)> {
        p.settings().unwrap()
    }

    #[test]
    fn exactly_one_target() {
        let none = PointInTime::default();
        assert_eq!(none.target().unwrap_err().field, "target");
        let two = PointInTime {
            xid: Some(700),
            name: Some("before".into()),
            ..Default::default()
        };
        let e = two.target().unwrap_err();
        assert!(e.message.contains("xid, name"), "{e}");
    }

    #[test]
    fn values_are_checked_naming_the_field() {
        let cases = [
            (
                PointInTime {
                    lsn: Some("zz".into()),
                    ..Default::default()
                },
                "lsn",
            ),
            (
                PointInTime {
                    xid: Some(2),
                    ..Default::default()
                },
                "xid",
            ),
            (
                PointInTime {
                    name: Some(String::new()),
                    ..Default::default()
                },
                "name",
            ),
            (
                PointInTime {
                    name: Some("x".repeat(64)),
                    ..Default::default()
                },
                "name",
            ),
            (
                PointInTime {
                    immediate: true,
                    timeline: Some("0".into()),
                    ..Default::default()
                },
                "timeline",
            ),
        ];
        for (p, field) in cases {
            assert_eq!(p.target().unwrap_err().field, field, "{p:?}");
        }
    }

    #[test]
    fn settings_promote_at_the_target() {
        let at: Timestamp = "2026-12-04T14:02:00Z".parse().unwrap();
        let s = settings(PointInTime {
            time: Some(at),
            inclusive: Some(false),
            ..Default::default()
        });
        assert_eq!(
            s[0],
            (
                "recovery_target_time".into(),
                "2026-12-04 14:02:00+00".into()
            )
        );
        assert!(s.contains(&("recovery_target_inclusive".into(), "false".into())));
        assert!(s.contains(&("recovery_target_timeline".into(), "latest".into())));
        assert!(s.contains(&("recovery_target_action".into(), "promote".into())));

        let s = settings(PointInTime {
            lsn: Some("0/3000028".into()),
            timeline: Some("2".into()),
            ..Default::default()
        });
        assert_eq!(s[0], ("recovery_target_lsn".into(), "0/3000028".into()));
        assert!(s.contains(&("recovery_target_timeline".into(), "2".into())));
        let s = settings(PointInTime {
            immediate: true,
            ..Default::default()
        });
        assert_eq!(s[0], ("recovery_target".into(), "immediate".into()));
    }
}

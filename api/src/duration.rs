//! Durations written the way Kubernetes users write them: `30s`, `5m`, `1h30m`, `500ms`.

use std::borrow::Cow;
use std::fmt;
use std::str::FromStr;
use std::time::Duration;

use schemars::{JsonSchema, Schema, SchemaGenerator, json_schema};
use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// The pattern the schema enforces; [`GoDuration::from_str`] accepts exactly this language.
pub const DURATION_PATTERN: &str = r"^([0-9]+(ms|s|m|h))+$";

/// A duration in Go's notation (`time.ParseDuration`), restricted to non-negative whole units.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct GoDuration(pub Duration);

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("invalid duration {input:?}: {problem} (examples: 30s, 5m, 1h30m, 500ms)")]
pub struct DurationError {
    input: String,
    problem: &'static str,
}

impl FromStr for GoDuration {
    type Err = DurationError;

    fn from_str(input: &str) -> Result<Self, Self::Err> {
        let err = |problem| DurationError {
            input: input.to_owned(),
            problem,
        };
        if input.is_empty() {
            return Err(err("empty"));
        }
        let mut total = Duration::ZERO;
        let mut rest = input;
        while !rest.is_empty() {
            let digits = rest.bytes().take_while(u8::is_ascii_digit).count();
            if digits == 0 {
                return Err(err("expected a number"));
            }
            let value: u64 = rest[..digits]
                .parse()
                .map_err(|_| err("number too large"))?;
            rest = &rest[digits..];
            let (unit, len) = if rest.starts_with("ms") {
                (Duration::from_millis(1), 2)
            } else if rest.starts_with('s') {
                (Duration::from_secs(1), 1)
            } else if rest.starts_with('m') {
                (Duration::from_secs(60), 1)
            } else if rest.starts_with('h') {
                (Duration::from_secs(3600), 1)
            } else {
                return Err(err("expected a unit: ms, s, m or h"));
            };
            rest = &rest[len..];
            let part = u32::try_from(value)
                .ok()
                .and_then(|v| unit.checked_mul(v))
                .ok_or_else(|| err("too large"))?;
            total = total.checked_add(part).ok_or_else(|| err("too large"))?;
        }
        Ok(GoDuration(total))
    }
}

impl fmt::Display for GoDuration {
    /// The shortest form that parses back to the same value: `5m`, `1h30m`, `1m500ms`, `0s`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let total_ms = self.0.as_millis();
        if total_ms == 0 {
            return f.write_str("0s");
        }
        let (h, rem) = (total_ms / 3_600_000, total_ms % 3_600_000);
        let (m, rem) = (rem / 60_000, rem % 60_000);
        let (s, ms) = (rem / 1000, rem % 1000);
        for (value, unit) in [(h, "h"), (m, "m"), (s, "s"), (ms, "ms")] {
            if value > 0 {
                write!(f, "{value}{unit}")?;
            }
        }
        Ok(())
    }
}

impl From<Duration> for GoDuration {
    fn from(d: Duration) -> Self {
        GoDuration(d)
    }
}

impl Serialize for GoDuration {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for GoDuration {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let text = Cow::<str>::deserialize(deserializer)?;
        text.parse().map_err(serde::de::Error::custom)
    }
}

impl JsonSchema for GoDuration {
    fn schema_name() -> Cow<'static, str> {
        "Duration".into()
    }

    fn json_schema(_: &mut SchemaGenerator) -> Schema {
        json_schema!({
            "type": "string",
            "pattern": DURATION_PATTERN,
        })
    }

    fn inline_schema() -> bool {
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_go_notation() {
        let cases = [
            ("0s", 0),
            ("500ms", 500),
            ("30s", 30_000),
            ("5m", 300_000),
            ("1h30m", 5_400_000),
            ("1m500ms", 60_500),
        ];
        for (text, ms) in cases {
            let d: GoDuration = text.parse().unwrap();
            assert_eq!(d.0, Duration::from_millis(ms), "{text}");
            assert_eq!(d.to_string(), text, "round trip of {text}");
        }
    }

    #[test]
    fn rejects_other_notations() {
        for bad in ["", "5", "m", "5 m", "-5m", "1.5h", "5min", "5d"] {
            assert!(bad.parse::<GoDuration>().is_err(), "{bad:?} parsed");
        }
    }

    #[test]
    fn serde_uses_the_text_form() {
        let d: GoDuration = serde_json::from_str("\"10m\"").unwrap();
        assert_eq!(d.0, Duration::from_secs(600));
        assert_eq!(serde_json::to_string(&d).unwrap(), "\"10m\"");
        let err = serde_json::from_str::<GoDuration>("\"ten minutes\"").unwrap_err();
        assert!(err.to_string().contains("ten minutes"), "{err}");
    }
}

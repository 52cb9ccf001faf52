//! The names of the files PostgreSQL archives, parsed before any path is built from them.

use std::fmt;

use super::WalError;

/// A WAL segment's place: timeline, and the log and segment parts of its name
/// (`TTTTTTTTLLLLLLLLSSSSSSSS`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct SegmentName {
    pub timeline: u32,
    pub log: u32,
    pub seg: u32,
}

/// Segments of `segment_size` bytes in one 4 GiB "log" of the LSN space.
pub(crate) fn segments_per_log(segment_size: u64) -> u64 {
    0x1_0000_0000 / segment_size
}

impl SegmentName {
    /// The segment of `timeline` with number `segno` (its start LSN over the segment size).
    pub fn from_segno(timeline: u32, segno: u64, segment_size: u64) -> SegmentName {
        let per_log = segments_per_log(segment_size);
        SegmentName {
            timeline,
            log: (segno / per_log) as u32,
            seg: (segno % per_log) as u32,
        }
    }

    /// The segment number: segments from LSN 0, whatever the log.
    pub fn segno(&self, segment_size: u64) -> u64 {
        u64::from(self.log) * segments_per_log(segment_size) + u64::from(self.seg)
    }

    /// The LSN of the segment's first byte.
    pub fn start_lsn(&self, segment_size: u64) -> u64 {
        self.segno(segment_size) * segment_size
    }
}

impl fmt::Display for SegmentName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:08X}{:08X}{:08X}", self.timeline, self.log, self.seg)
    }
}

/// A file PostgreSQL hands to `archive_command`, by its name.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum WalFileName {
    /// `TTTTTTTTLLLLLLLLSSSSSSSS`: a complete segment.
    Segment(SegmentName),
    /// `<segment>.partial`: the last, incomplete segment of the old timeline, archived at
    /// promotion. Stored as it is (a full-size segment file); recovery never asks for it.
    Partial(SegmentName),
    /// `<segment>.XXXXXXXX.backup`: the backup history file a base backup leaves, naming its
    /// start and stop; small text.
    Backup { segment: SegmentName, offset: u32 },
    /// `TTTTTTTT.history`: the history of a timeline (its parents and where it branched off).
    History { timeline: u32 },
}

/// `s` as `len` upper-case hex digits: PostgreSQL writes names with `%08X`, and accepting other
/// spellings would give one file two names.
fn hex_field(s: &str) -> Option<u32> {
    if s.len() != 8 || !s.bytes().all(|b| matches!(b, b'0'..=b'9' | b'A'..=b'F')) {
        return None;
    }
    u32::from_str_radix(s, 16).ok()
}

fn segment_name(s: &str) -> Option<SegmentName> {
    if s.len() != 24 || !s.is_ascii() {
        return None;
    }
    Some(SegmentName {
        timeline: hex_field(&s[..8])?,
        log: hex_field(&s[8..16])?,
        seg: hex_field(&s[16..])?,
    })
}

impl WalFileName {
    /// Parses a name as PostgreSQL gives it (`%f`); anything else, a path included, is refused.
    pub fn parse(name: &str) -> Result<WalFileName, WalError> {
        let invalid = |reason: &str| WalError::InvalidName {
            name: name.to_string(),
            reason: reason.to_string(),
        };
        let parsed = if let Some(seg) = name.strip_suffix(".partial") {
            segment_name(seg).map(WalFileName::Partial)
        } else if let Some(rest) = name.strip_suffix(".backup") {
            match rest.split_once('.') {
                Some((seg, offset)) => match (segment_name(seg), hex_field(offset)) {
                    (Some(segment), Some(offset)) => Some(WalFileName::Backup { segment, offset }),
                    _ => None,
                },
                None => None,
            }
        } else if let Some(tli) = name.strip_suffix(".history") {
            hex_field(tli).map(|timeline| WalFileName::History { timeline })
        } else {
            segment_name(name).map(WalFileName::Segment)
        };
        let parsed = parsed.ok_or_else(|| {
            invalid(
                "expected a WAL segment (24 upper-case hex digits), <segment>.partial, \
                 <segment>.XXXXXXXX.backup or TTTTTTTT.history",
            )
        })?;
        if parsed.timeline() == 0 {
            return Err(invalid("timeline 0 does not exist"));
        }
        Ok(parsed)
    }

    pub fn timeline(&self) -> u32 {
        match self {
            WalFileName::Segment(s) | WalFileName::Partial(s) => s.timeline,
            WalFileName::Backup { segment, .. } => segment.timeline,
            WalFileName::History { timeline } => *timeline,
        }
    }

    /// The segment a segment or partial segment file holds.
    pub fn segment(&self) -> Option<SegmentName> {
        match self {
            WalFileName::Segment(s) | WalFileName::Partial(s) => Some(*s),
            _ => None,
        }
    }
}

impl fmt::Display for WalFileName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            WalFileName::Segment(s) => write!(f, "{s}"),
            WalFileName::Partial(s) => write!(f, "{s}.partial"),
            WalFileName::Backup { segment, offset } => write!(f, "{segment}.{offset:08X}.backup"),
            WalFileName::History { timeline } => write!(f, "{timeline:08X}.history"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip() {
        for name in [
            "000000010000000000000002",
            "0000000A00000001000000FF",
            "000000010000000000000002.partial",
            "000000010000000000000002.00000028.backup",
            "00000002.history",
        ] {
            assert_eq!(WalFileName::parse(name).unwrap().to_string(), name);
        }
        assert_eq!(
            WalFileName::parse("0000000300000001000000FE").unwrap(),
            WalFileName::Segment(SegmentName {
                timeline: 3,
                log: 1,
                seg: 0xFE
            })
        );
    }

    #[test]
    fn only_postgresql_names_pass() {
        for bad in [
            "",
            "00000001000000000000000",
            "0000000100000000000000020",
            "00000001000000000000000a",
            "../00000001000000000002",
            "00000001/../000000000002",
            "000000010000000000000002/",
            "/000000010000000000000002",
            "00000000.history",
            "000000000000000000000002",
            "0000000G.history",
            "1.history",
            "000000010000000000000002.backup",
            "000000010000000000000002.0000028.backup",
            "000000010000000000000002.partial.partial",
            "00000001000000000000000\u{e9}",
            "+0000001000000000000000002",
            "00000001 000000000000002",
        ] {
            let err = WalFileName::parse(bad).unwrap_err();
            assert!(
                matches!(err, WalError::InvalidName { .. }),
                "{bad:?}: {err:?}"
            );
        }
    }

    #[test]
    fn segment_numbers_follow_the_segment_size() {
        let mib16 = 16 << 20;
        let s = WalFileName::parse("000000010000000100000002")
            .unwrap()
            .segment()
            .unwrap();
        assert_eq!(s.segno(mib16), 256 + 2);
        assert_eq!(s.start_lsn(mib16), 0x1_0200_0000);
        assert_eq!(SegmentName::from_segno(1, 258, mib16), s);
        // 1 GiB segments: four per log.
        let gib = 1 << 30;
        assert_eq!(s.segno(gib), 4 + 2);
        assert_eq!(
            SegmentName::from_segno(7, 5, gib).to_string(),
            "000000070000000100000001"
        );
    }
}

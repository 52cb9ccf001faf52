//! What is checked of a WAL file's content before it is stored and after it is read back.

use super::name::{SegmentName, segments_per_log};

/// PostgreSQL's smallest and largest `wal_segment_size`.
pub const MIN_SEGMENT_SIZE: u64 = 1 << 20;
pub const MAX_SEGMENT_SIZE: u64 = 1 << 30;
/// Largest history or backup history file stored: they hold a line per timeline switch or a
/// few lines about one backup.
pub const MAX_SMALL_FILE: u64 = 1 << 20;

/// `XLP_LONG_HEADER` in `xlp_info`: the page starts with an XLogLongPageHeaderData, as the
/// first page of every segment does.
const XLP_LONG_HEADER: u16 = 0x0002;
/// Size of XLogLongPageHeaderData.
const LONG_HEADER_LEN: usize = 40;

/// The long page header that starts every WAL segment (XLogLongPageHeaderData), in the
/// server's byte order (little-endian on the machines we run on).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SegmentHeader {
    /// `xlp_magic`: the WAL format version of the server that wrote it.
    pub magic: u16,
    pub info: u16,
    /// `xlp_tli`: the timeline of the page.
    pub timeline: u32,
    /// `xlp_pageaddr`: the LSN of the page, here the segment's start.
    pub page_addr: u64,
    pub system_identifier: u64,
    pub segment_size: u32,
    /// `xlp_xlog_blcksz`: the WAL page size.
    pub block_size: u32,
}

impl SegmentHeader {
    pub fn parse(b: &[u8]) -> Result<SegmentHeader, String> {
        if b.len() < LONG_HEADER_LEN {
            return Err(format!(
                "{} bytes, too short for a WAL page header",
                b.len()
            ));
        }
        let u16_at = |o: usize| u16::from_le_bytes([b[o], b[o + 1]]);
        let u32_at = |o: usize| u32::from_le_bytes(b[o..o + 4].try_into().expect("4 bytes"));
        let u64_at = |o: usize| u64::from_le_bytes(b[o..o + 8].try_into().expect("8 bytes"));
        Ok(SegmentHeader {
            magic: u16_at(0),
            info: u16_at(2),
            timeline: u32_at(4),
            page_addr: u64_at(8),
            system_identifier: u64_at(24),
            segment_size: u32_at(32),
            block_size: u32_at(36),
        })
    }
}

/// Checks that `bytes` is the segment `name` says: a power-of-two size PostgreSQL allows, and a
/// first page whose long header agrees with the name and the size.
pub(crate) fn check_segment(name: &SegmentName, bytes: &[u8]) -> Result<SegmentHeader, String> {
    let size = bytes.len() as u64;
    if !size.is_power_of_two() || !(MIN_SEGMENT_SIZE..=MAX_SEGMENT_SIZE).contains(&size) {
        return Err(format!(
            "{size} bytes: a WAL segment is a power of two between 1 MiB and 1 GiB"
        ));
    }
    let h = SegmentHeader::parse(bytes)?;
    if h.info & XLP_LONG_HEADER == 0 {
        return Err(format!(
            "its first page has no long header (xlp_info {:#06x})",
            h.info
        ));
    }
    if u64::from(h.segment_size) != size {
        return Err(format!(
            "its header says segments of {} bytes, the file has {size}",
            h.segment_size
        ));
    }
    if !h.block_size.is_power_of_two() || !(1024..=65536).contains(&h.block_size) {
        return Err(format!("WAL page size {} in its header", h.block_size));
    }
    // The first segment of a new timeline starts with the pages of its parent timeline up to
    // the switch point (PostgreSQL copies them over), so its first page may carry an older
    // timeline, never a newer one.
    if h.timeline == 0 || h.timeline > name.timeline {
        return Err(format!(
            "its header says timeline {}, its name timeline {}",
            h.timeline, name.timeline
        ));
    }
    if u64::from(name.seg) >= segments_per_log(size) {
        return Err(format!(
            "segment part {:08X} of its name is past the last segment of a log at {size} bytes \
             per segment",
            name.seg
        ));
    }
    let start = name.start_lsn(size);
    if h.page_addr != start {
        return Err(format!(
            "its header is for LSN {}, its name for {}",
            crate::format_lsn(h.page_addr),
            crate::format_lsn(start)
        ));
    }
    Ok(h)
}

/// Checks a timeline history file the way PostgreSQL reads one: each line not blank or a
/// `#` comment starts with a parent timeline and the LSN where it ended; parents increase and
/// come before `timeline` itself.
pub(crate) fn check_history(timeline: u32, bytes: &[u8]) -> Result<(), String> {
    check_small(bytes)?;
    let mut last = 0u32;
    for (n, line) in bytes.split(|&b| b == b'\n').enumerate() {
        let text = String::from_utf8_lossy(line);
        let text = text.trim_start();
        if text.is_empty() || text.starts_with('#') {
            continue;
        }
        let mut fields = text.split_whitespace();
        let bad = |what: &str| format!("line {}: {what}", n + 1);
        let parent: u32 = fields
            .next()
            .and_then(|f| f.parse().ok())
            .ok_or_else(|| bad("expected a timeline id"))?;
        fields
            .next()
            .and_then(crate::parse_lsn)
            .ok_or_else(|| bad("expected a switch-point LSN"))?;
        if parent <= last || parent >= timeline {
            return Err(bad(&format!(
                "timeline {parent} out of sequence (parents increase, below {timeline})"
            )));
        }
        last = parent;
    }
    Ok(())
}

/// The size limit of history and backup history files.
pub(crate) fn check_small(bytes: &[u8]) -> Result<(), String> {
    if bytes.len() as u64 > MAX_SMALL_FILE {
        return Err(format!(
            "{} bytes, more than the {MAX_SMALL_FILE} a history file may have",
            bytes.len()
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A segment of `size` bytes with a long page header as PostgreSQL 15 writes it.
    fn segment(name: &SegmentName, size: u64, sysid: u64) -> Vec<u8> {
        let mut b = vec![0u8; size as usize];
        b[0..2].copy_from_slice(&0xD110u16.to_le_bytes());
        b[2..4].copy_from_slice(&(XLP_LONG_HEADER | 0x0004).to_le_bytes());
        b[4..8].copy_from_slice(&name.timeline.to_le_bytes());
        b[8..16].copy_from_slice(&name.start_lsn(size).to_le_bytes());
        b[24..32].copy_from_slice(&sysid.to_le_bytes());
        b[32..36].copy_from_slice(&(size as u32).to_le_bytes());
        b[36..40].copy_from_slice(&8192u32.to_le_bytes());
        // Some record bytes past the header, so that content differs between segments.
        b[40..48].copy_from_slice(&name.start_lsn(size).to_be_bytes());
        b
    }

    fn name(s: &str) -> SegmentName {
        super::super::WalFileName::parse(s)
            .unwrap()
            .segment()
            .unwrap()
    }

    #[test]
    fn a_segment_agrees_with_its_name() {
        let n = name("000000020000000100000003");
        let b = segment(&n, 16 << 20, 42);
        let h = check_segment(&n, &b).unwrap();
        assert_eq!(h.magic, 0xD110);
        assert_eq!(h.system_identifier, 42);
        assert_eq!(h.page_addr, 0x1_0300_0000);
        assert_eq!((h.segment_size, h.block_size), (16 << 20, 8192));

        // The first segment of timeline 2 may begin with pages of timeline 1.
        let mut copied = b.clone();
        copied[4..8].copy_from_slice(&1u32.to_le_bytes());
        assert!(check_segment(&n, &copied).is_ok());

        let refused = |mutate: &dyn Fn(&mut Vec<u8>), expect: &str| {
            let mut bad = b.clone();
            mutate(&mut bad);
            let err = check_segment(&n, &bad).unwrap_err();
            assert!(err.contains(expect), "{expect}: {err}");
        };
        refused(
            &|b| b[2..4].copy_from_slice(&4u16.to_le_bytes()),
            "long header",
        );
        refused(
            &|b| b[4..8].copy_from_slice(&3u32.to_le_bytes()),
            "timeline 3",
        );
        refused(
            &|b| b[4..8].copy_from_slice(&0u32.to_le_bytes()),
            "timeline 0",
        );
        refused(&|b| b[8] = 1, "LSN 1/3000001");
        refused(&|b| b[33] ^= 1, "segments of");
        refused(
            &|b| b[36..40].copy_from_slice(&1000u32.to_le_bytes()),
            "page size",
        );
        refused(&|b| b.truncate(8 << 20), "segments of");
        refused(&|b| b.truncate(3 << 20), "power of two");
        refused(&|b| b.truncate(39), "power of two");

        // 1 GiB segments have four per log: segment part 3 is the last there is (the
        // zeroed gigabyte is not touched past its first page).
        let past = name("000000010000000000000004");
        let err = check_segment(&past, &segment(&past, 1 << 30, 1)).unwrap_err();
        assert!(err.contains("past the last segment"), "{err}");
        assert!(SegmentHeader::parse(&[0; 39]).is_err());
    }

    #[test]
    fn history_files_as_postgresql_reads_them() {
        let ok = b"1\t0/3000158\tno recovery target specified\n\n\
                   # a comment\n2\t0/5000000\tat restore point \"x\"\n";
        assert_eq!(check_history(3, ok), Ok(()));
        assert_eq!(check_history(2, b""), Ok(()));
        for (tli, bad) in [
            (3, &b"2\t0/1\tx\n1\t0/2\tx\n"[..]),
            (2, b"2\t0/1\tx\n"),
            (2, b"x\t0/1\n"),
            (2, b"1\tnope\n"),
            (2, b"1\n"),
        ] {
            assert!(
                check_history(tli, bad).is_err(),
                "{}",
                String::from_utf8_lossy(bad)
            );
        }
        assert!(check_history(2, &vec![b'#'; (MAX_SMALL_FILE + 1) as usize]).is_err());
    }
}

//! Reading the records of one WAL segment, as far as a recovery to a point needs: when its last
//! transaction ended (PostgreSQL stops a recovery to a time at the first commit or abort after
//! it, so a time after the last one archived can never be reached), and the restore points
//! created in it (so that a recovery to a named one starts from the backup before it).
//!
//! The reader follows the record chain (`xl_prev`) from the first record that starts in the
//! segment; it stops at the first record that does not link up, or that runs past the
//! segment's end. Only records without block references are decoded (commits, aborts and
//! restore points carry none), so the version-dependent block image headers are never read.

use time::OffsetDateTime;

const XLP_FIRST_IS_CONTRECORD: u16 = 0x0001;
const XLP_LONG_HEADER: u16 = 0x0002;
const SHORT_HEADER: usize = 24;
const LONG_HEADER: usize = 40;
const RECORD_HEADER: usize = 24;
const RM_XLOG_ID: u8 = 0;
const RM_XACT_ID: u8 = 1;
/// The info bits that say which record of its resource manager a record is.
const XLR_INFO_MASK_OUT: u8 = 0xF0;
const XLOG_RESTORE_POINT: u8 = 0x70;
/// The size of a restore point's name field (`MAXFNAMELEN`).
const MAXFNAMELEN: usize = 64;
const XLOG_XACT_OPMASK: u8 = 0x70;
/// Commit, abort, commit prepared, abort prepared: the records a time target stops at.
const XACT_ENDS: [u8; 4] = [0x00, 0x20, 0x30, 0x40];
const BLOCK_ID_DATA_SHORT: u8 = 255;
const BLOCK_ID_DATA_LONG: u8 = 254;
const BLOCK_ID_ORIGIN: u8 = 253;
const BLOCK_ID_TOPLEVEL_XID: u8 = 252;
/// PostgreSQL counts time in microseconds from 2000-01-01 UTC.
const PG_EPOCH_UNIX_SECS: i64 = 946_684_800;

fn u16_at(b: &[u8], at: usize) -> Option<u16> {
    Some(u16::from_le_bytes(b.get(at..at + 2)?.try_into().ok()?))
}

fn u32_at(b: &[u8], at: usize) -> Option<u32> {
    Some(u32::from_le_bytes(b.get(at..at + 4)?.try_into().ok()?))
}

fn u64_at(b: &[u8], at: usize) -> Option<u64> {
    Some(u64::from_le_bytes(b.get(at..at + 8)?.try_into().ok()?))
}

fn maxalign(n: usize) -> usize {
    n.div_ceil(8) * 8
}

/// The segment's record bytes without page headers, and the LSN each page's part starts at.
struct Stream {
    bytes: Vec<u8>,
    /// (offset in `bytes`, LSN of that byte) for each page.
    pages: Vec<(usize, u64)>,
    /// Where the first record starting in the segment begins in `bytes`.
    first_record: usize,
}

impl Stream {
    fn read(segment: &[u8]) -> Option<Stream> {
        let page_size = usize::try_from(u32_at(segment, 36)?).ok()?;
        if u16_at(segment, 2)? & XLP_LONG_HEADER == 0
            || !(1024..=65536).contains(&page_size)
            || !page_size.is_power_of_two()
        {
            return None;
        }
        let mut bytes = Vec::with_capacity(segment.len());
        let mut pages = Vec::new();
        let mut first_record = None;
        for (i, page) in segment.chunks_exact(page_size).enumerate() {
            let info = u16_at(page, 2)?;
            let header = if i == 0 { LONG_HEADER } else { SHORT_HEADER };
            let page_lsn = u64_at(page, 8)?;
            if first_record.is_none() {
                // A record continued from the previous segment (or page) is not ours to read.
                let rest = if info & XLP_FIRST_IS_CONTRECORD != 0 {
                    usize::try_from(u32_at(page, 16)?).ok()?
                } else {
                    0
                };
                let payload = page_size - header;
                if rest < payload {
                    first_record = Some(bytes.len() + maxalign(rest));
                }
            }
            // Page addresses are the segment's bytes: one at the end of the LSN space must
            // not overflow.
            pages.push((bytes.len(), page_lsn.saturating_add(header as u64)));
            bytes.extend_from_slice(&page[header..]);
        }
        Some(Stream {
            bytes,
            pages,
            first_record: first_record?,
        })
    }

    fn lsn(&self, offset: usize) -> u64 {
        let i = self.pages.partition_point(|(start, _)| *start <= offset) - 1;
        let (start, lsn) = self.pages[i];
        lsn.saturating_add((offset - start) as u64)
    }
}

/// Calls `each` with the LSN and bytes of every whole record that starts in `segment`, in
/// order, while they link up; false when `segment` is not one this reader understands.
fn each_record(segment: &[u8], mut each: impl FnMut(u64, &[u8])) -> bool {
    let Some(stream) = Stream::read(segment) else {
        return false;
    };
    let bytes = &stream.bytes;
    let mut at = stream.first_record;
    let mut prev: Option<u64> = None;
    while at + RECORD_HEADER <= bytes.len() {
        let Some(total) = u32_at(bytes, at).and_then(|t| usize::try_from(t).ok()) else {
            break;
        };
        if total < RECORD_HEADER || at + total > bytes.len() {
            break;
        }
        let lsn = stream.lsn(at);
        if prev.is_some_and(|p| Some(p) != u64_at(bytes, at + 8)) {
            break;
        }
        each(lsn, &bytes[at..at + total]);
        prev = Some(lsn);
        at += maxalign(total);
    }
    true
}

fn from_pg_time(micros: i64) -> Option<OffsetDateTime> {
    let secs = micros
        .div_euclid(1_000_000)
        .checked_add(PG_EPOCH_UNIX_SECS)?;
    let nanos = u32::try_from(micros.rem_euclid(1_000_000) * 1000).ok()?;
    OffsetDateTime::from_unix_timestamp(secs)
        .ok()?
        .replace_nanosecond(nanos)
        .ok()
}

/// The time the last transaction (commit or abort) in `segment` ended; `None` when it holds
/// none, or is not a segment this reader understands.
pub fn last_transaction_end(segment: &[u8]) -> Option<OffsetDateTime> {
    let mut last = None;
    each_record(segment, |_, record| {
        if let Some(time) = transaction_end(record) {
            last = Some(time);
        }
    });
    from_pg_time(last?)
}

/// A restore point (`pg_create_restore_point`) as its WAL record has it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RestorePointRecord {
    pub name: String,
    pub lsn: u64,
    pub time: OffsetDateTime,
}

/// The restore points created in `segment`, in order.
pub fn restore_points(segment: &[u8]) -> Vec<RestorePointRecord> {
    let mut points = Vec::new();
    each_record(segment, |lsn, record| {
        if let Some((name, time)) = restore_point(record) {
            points.push(RestorePointRecord { name, lsn, time });
        }
    });
    points
}

/// The name and time of an `XLOG_RESTORE_POINT` record (`xl_restore_point`: the time, then
/// the name in a NUL-padded `MAXFNAMELEN` field).
fn restore_point(record: &[u8]) -> Option<(String, OffsetDateTime)> {
    let (info, rmid) = (record[16], record[17]);
    if rmid != RM_XLOG_ID || info & XLR_INFO_MASK_OUT != XLOG_RESTORE_POINT {
        return None;
    }
    let main = main_data(record)?;
    let time = from_pg_time(i64::from_le_bytes(main.get(..8)?.try_into().ok()?))?;
    let field = main.get(8..8 + MAXFNAMELEN)?;
    let name = &field[..field.iter().position(|&b| b == 0)?];
    Some((std::str::from_utf8(name).ok()?.to_owned(), time))
}

/// The main data of a record without block references (the last bytes of the record).
fn main_data(record: &[u8]) -> Option<&[u8]> {
    let mut at = RECORD_HEADER;
    let main_len = loop {
        match *record.get(at)? {
            BLOCK_ID_DATA_SHORT => break usize::from(*record.get(at + 1)?),
            BLOCK_ID_DATA_LONG => break usize::try_from(u32_at(record, at + 1)?).ok()?,
            BLOCK_ID_ORIGIN => at += 3,
            BLOCK_ID_TOPLEVEL_XID => at += 5,
            // A block reference: not a record of the kinds read here.
            _ => return None,
        }
    };
    record.get(record.len().checked_sub(main_len)?..)
}

/// The end time (PostgreSQL microseconds) of a commit or abort record.
fn transaction_end(record: &[u8]) -> Option<i64> {
    let (info, rmid) = (record[16], record[17]);
    if rmid != RM_XACT_ID || !XACT_ENDS.contains(&(info & XLOG_XACT_OPMASK)) {
        return None;
    }
    Some(i64::from_le_bytes(
        main_data(record)?.get(..8)?.try_into().ok()?,
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn what_is_not_a_segment_has_no_transaction_and_never_panics() {
        assert_eq!(last_transaction_end(&[]), None);
        assert_eq!(last_transaction_end(&[0xff; 100]), None);
        let mut page = vec![0u8; 8192 * 2];
        page[2] = XLP_LONG_HEADER as u8;
        page[36..40].copy_from_slice(&8192u32.to_le_bytes());
        assert_eq!(last_transaction_end(&page), None);
        // A record that claims to run past the end.
        page[LONG_HEADER..LONG_HEADER + 4].copy_from_slice(&u32::MAX.to_le_bytes());
        assert_eq!(last_transaction_end(&page), None);
        // A continuation longer than the segment.
        page[0] = XLP_FIRST_IS_CONTRECORD as u8;
        page[16..20].copy_from_slice(&u32::MAX.to_le_bytes());
        assert_eq!(last_transaction_end(&page), None);
    }

    #[test]
    fn page_addresses_at_the_end_of_the_lsn_space_do_not_overflow() {
        let mut seg = vec![0u8; 8192 * 2];
        seg[2] = XLP_LONG_HEADER as u8;
        seg[8..16].copy_from_slice(&u64::MAX.to_le_bytes());
        seg[36..40].copy_from_slice(&8192u32.to_le_bytes());
        seg[8192 + 8..8192 + 16].copy_from_slice(&u64::MAX.to_le_bytes());
        // A record header at the start, so that an LSN is worked out from the page address.
        seg[LONG_HEADER..LONG_HEADER + 4].copy_from_slice(&(RECORD_HEADER as u32).to_le_bytes());
        assert_eq!(last_transaction_end(&seg), None);
        assert!(restore_points(&seg).is_empty());
    }

    #[test]
    fn records_that_do_not_link_up_end_the_reading() {
        // Two commit records; the second's xl_prev does not point at the first.
        let mut seg = vec![0u8; 8192];
        seg[2] = XLP_LONG_HEADER as u8;
        seg[8..16].copy_from_slice(&0x0100_0000u64.to_le_bytes());
        seg[36..40].copy_from_slice(&8192u32.to_le_bytes());
        let commit = |time: i64, prev: u64| {
            let mut r = vec![0u8; RECORD_HEADER + 2 + 8];
            let len = r.len() as u32;
            r[0..4].copy_from_slice(&len.to_le_bytes());
            r[8..16].copy_from_slice(&prev.to_le_bytes());
            r[17] = RM_XACT_ID;
            r[RECORD_HEADER] = BLOCK_ID_DATA_SHORT;
            r[RECORD_HEADER + 1] = 8;
            r[RECORD_HEADER + 2..].copy_from_slice(&time.to_le_bytes());
            r
        };
        let first = commit(1_000_000, 0);
        seg[LONG_HEADER..LONG_HEADER + first.len()].copy_from_slice(&first);
        let second_at = LONG_HEADER + maxalign(first.len());
        let second = commit(2_000_000, 0xdead);
        seg[second_at..second_at + second.len()].copy_from_slice(&second);
        let t = last_transaction_end(&seg).unwrap();
        assert_eq!(t.unix_timestamp(), PG_EPOCH_UNIX_SECS + 1);
        // Linked, the second counts.
        let second = commit(2_000_000, 0x0100_0000 + LONG_HEADER as u64);
        seg[second_at..second_at + second.len()].copy_from_slice(&second);
        let t = last_transaction_end(&seg).unwrap();
        assert_eq!(t.unix_timestamp(), PG_EPOCH_UNIX_SECS + 2);
    }
}

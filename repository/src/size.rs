//! Byte sizes as people write them (`4MiB`, `512KiB`, `1048576`) and chunk size limits.

use crate::error::RepoError;

pub const MIN_CHUNK_SIZE: u64 = 64 * 1024;
pub const MAX_CHUNK_SIZE: u64 = 64 * 1024 * 1024;
/// PostgreSQL pages are 8 KiB: a chunk boundary never splits a page.
pub const CHUNK_ALIGN: u64 = 8192;

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("invalid size {0:?}: expected a number of bytes, optionally followed by KiB, MiB or GiB")]
pub struct InvalidSize(pub String);

/// Parses `4MiB`, `512KiB`, `1GiB`, `65536`, `65536B`. Units are binary; `K`, `M`, `G`, `KB`...
/// are accepted as the same binary units since nobody means 1000-byte chunks.
pub fn parse_size(s: &str) -> Result<u64, InvalidSize> {
    let err = || InvalidSize(s.to_string());
    let t = s.trim();
    let split = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
    let (num, unit) = t.split_at(split);
    let n: u64 = num.parse().map_err(|_| err())?;
    let mult: u64 = match unit.trim().to_ascii_lowercase().as_str() {
        "" | "b" => 1,
        "k" | "kb" | "kib" => 1 << 10,
        "m" | "mb" | "mib" => 1 << 20,
        "g" | "gb" | "gib" => 1 << 30,
        _ => return Err(err()),
    };
    n.checked_mul(mult).ok_or_else(err)
}

pub fn validate_chunk_size(size: u64) -> Result<(), RepoError> {
    let reason = if !size.is_multiple_of(CHUNK_ALIGN) {
        format!("must be a multiple of {CHUNK_ALIGN} bytes")
    } else if !(MIN_CHUNK_SIZE..=MAX_CHUNK_SIZE).contains(&size) {
        "must be between 64KiB and 64MiB".to_string()
    } else {
        return Ok(());
    };
    Err(RepoError::InvalidChunkSize { size, reason })
}

/// `1.5 GiB`-style rendering for messages and tables.
pub fn format_size(bytes: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut v = bytes as f64;
    let mut unit = 0;
    while v >= 1024.0 && unit < UNITS.len() - 1 {
        v /= 1024.0;
        unit += 1;
    }
    if unit == 0 {
        format!("{bytes} B")
    } else {
        format!("{v:.1} {}", UNITS[unit])
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_sizes() {
        assert_eq!(parse_size("4MiB"), Ok(4 << 20));
        assert_eq!(parse_size("512KiB"), Ok(512 << 10));
        assert_eq!(parse_size("1048576"), Ok(1 << 20));
        assert_eq!(parse_size("2 GiB"), Ok(2 << 30));
        assert_eq!(parse_size("64k"), Ok(64 << 10));
        assert!(parse_size("").is_err());
        assert!(parse_size("MiB").is_err());
        assert!(parse_size("1.5MiB").is_err());
        assert!(parse_size("4XB").is_err());
        assert!(parse_size("99999999999999999999GiB").is_err());
    }

    #[test]
    fn chunk_size_limits() {
        assert!(validate_chunk_size(1 << 20).is_ok());
        assert!(validate_chunk_size(MIN_CHUNK_SIZE).is_ok());
        assert!(validate_chunk_size(MAX_CHUNK_SIZE).is_ok());
        assert!(validate_chunk_size(MIN_CHUNK_SIZE - CHUNK_ALIGN).is_err());
        assert!(validate_chunk_size(MAX_CHUNK_SIZE + CHUNK_ALIGN).is_err());
        assert!(validate_chunk_size((1 << 20) + 1).is_err());
    }

    #[test]
    fn formats_sizes() {
        assert_eq!(format_size(512), "512 B");
        assert_eq!(format_size(1536), "1.5 KiB");
        assert_eq!(format_size(3 << 30), "3.0 GiB");
    }
}

//! A stored WAL object: a 48-byte header, then the file compressed as one zstd frame.
//!
//! ```text
//! offset  0  magic "IRWAL\0\0\x01" (format version 1 in the last byte)
//! offset  8  length of the plain file, u64 little-endian
//! offset 16  BLAKE3 hash of the plain file, 32 bytes
//! offset 48  zstd frame
//! ```
//!
//! The length and the hash are checked on every read: a damaged object is an error, never
//! wrong WAL.

use std::io::Cursor;

const MAGIC: [u8; 8] = *b"IRWAL\0\0\x01";
pub(crate) const HEADER_LEN: usize = 48;
/// zstd's fastest level: WAL archiving runs once per segment on the database server, where
/// CPU time is the database's, and level 1 already shrinks WAL several fold.
const ZSTD_LEVEL: i32 = 1;
/// From this size on (every segment) the hash runs on a thread of its own and zstd compresses
/// with two: archiving is on the critical path of a busy server's WAL, and a segment takes
/// tens of milliseconds of CPU to compress.
const PARALLEL_MIN: usize = 1 << 20;
const ZSTD_WORKERS: u32 = 2;

/// The largest object a file of at most `max_plain` bytes can be stored as: what a read takes
/// before it looks inside.
pub(crate) fn max_stored_len(max_plain: u64) -> u64 {
    HEADER_LEN as u64 + zstd::zstd_safe::compress_bound(max_plain as usize) as u64
}

/// The stored object for `plain`, and the plain bytes' hash. Compressing and hashing run side by
/// side: together they are most of the cost of archiving a segment.
pub(crate) fn encode(plain: &[u8]) -> std::io::Result<(Vec<u8>, [u8; 32])> {
    let compress = || -> std::io::Result<Vec<u8>> {
        let mut out = Vec::with_capacity(max_stored_len(plain.len() as u64) as usize);
        out.resize(HEADER_LEN, 0);
        let mut cursor = Cursor::new(out);
        cursor.set_position(HEADER_LEN as u64);
        let mut compressor = zstd::bulk::Compressor::new(ZSTD_LEVEL)?;
        let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
        if plain.len() >= PARALLEL_MIN && cores > 1 {
            compressor.multithread(ZSTD_WORKERS)?;
        }
        compressor.compress_to_buffer(plain, &mut cursor)?;
        Ok(cursor.into_inner())
    };
    let (out, hash) = if plain.len() >= PARALLEL_MIN {
        std::thread::scope(|s| {
            let hasher = s.spawn(|| blake3::hash(plain));
            let out = compress();
            (out, hasher.join().expect("hashing does not panic"))
        })
    } else {
        (compress(), blake3::hash(plain))
    };
    let mut out = out?;
    let hash = *hash.as_bytes();
    out[..8].copy_from_slice(&MAGIC);
    out[8..16].copy_from_slice(&(plain.len() as u64).to_le_bytes());
    out[16..48].copy_from_slice(&hash);
    Ok((out, hash))
}

/// The plain length and hash an object's header declares.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct ObjectHeader {
    pub len: u64,
    pub hash: [u8; 32],
}

pub(crate) fn decode_header(stored: &[u8]) -> Result<ObjectHeader, String> {
    if stored.len() < HEADER_LEN {
        return Err(format!(
            "{} bytes, shorter than the {HEADER_LEN}-byte header",
            stored.len()
        ));
    }
    if stored[..8] != MAGIC {
        return Err("no WAL object header (wrong magic or format version)".to_string());
    }
    Ok(ObjectHeader {
        len: u64::from_le_bytes(stored[8..16].try_into().expect("8 bytes")),
        hash: stored[16..48].try_into().expect("32 bytes"),
    })
}

/// The plain bytes of a stored object of at most `max_plain` bytes, checked against its header:
/// never more is decompressed than the header declares and `max_plain` allows, whatever the
/// zstd frame claims.
pub(crate) fn decode(stored: &[u8], max_plain: u64) -> Result<Vec<u8>, String> {
    let header = decode_header(stored)?;
    if header.len > max_plain {
        return Err(format!(
            "its header declares {} bytes, more than the {max_plain} such a file may have",
            header.len
        ));
    }
    let mut plain = Vec::with_capacity(header.len as usize);
    zstd::bulk::Decompressor::new()
        .and_then(|mut d| d.decompress_to_buffer(&stored[HEADER_LEN..], &mut plain))
        .map_err(|e| format!("cannot decompress: {e}"))?;
    if plain.len() as u64 != header.len {
        return Err(format!(
            "{} bytes after decompression, its header declares {}",
            plain.len(),
            header.len
        ));
    }
    if *blake3::hash(&plain).as_bytes() != header.hash {
        return Err("content does not match its checksum".to_string());
    }
    Ok(plain)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_small_and_large() {
        for plain in [b"1\t0/3000158\tx\n".to_vec(), vec![7u8; 3 << 20]] {
            let (stored, hash) = encode(&plain).unwrap();
            assert_eq!(hash, *blake3::hash(&plain).as_bytes());
            assert_eq!(decode_header(&stored).unwrap().len, plain.len() as u64);
            assert_eq!(decode(&stored, plain.len() as u64).unwrap(), plain);
            assert!(stored.len() as u64 <= max_stored_len(plain.len() as u64));
        }
    }

    #[test]
    fn damage_is_an_error() {
        let plain: Vec<u8> = (0..200_000u32)
            .flat_map(|i| (i % 251).to_le_bytes())
            .collect();
        let (stored, _) = encode(&plain).unwrap();
        let max = plain.len() as u64;
        let fails = |bytes: &[u8], max: u64, expect: &str| {
            let err = decode(bytes, max).unwrap_err();
            assert!(err.contains(expect), "{expect}: {err}");
        };
        fails(&stored[..20], max, "shorter than");
        fails(&stored[..stored.len() - 1], max, "decompress");
        fails(&stored, max - 1, "more than");
        let mut magic = stored.clone();
        magic[7] = 2;
        fails(&magic, max, "magic");
        let mut hash = stored.clone();
        hash[20] ^= 1;
        fails(&hash, max, "checksum");
        let mut len = stored.clone();
        len[8..16].copy_from_slice(&(max - 1).to_le_bytes());
        fails(&len, max, "decompress");
        len[8..16].copy_from_slice(&(max + 1).to_le_bytes());
        fails(&len, max + 1, "after decompression");
        let mut trailing = stored.clone();
        trailing.extend_from_slice(b"garbage");
        fails(&trailing, max, "decompress");
    }

    #[test]
    fn a_bomb_stops_at_the_declared_length() {
        // 64 MiB of zeros compress to a few kilobytes; the header claims 1 MiB.
        let bomb = zstd::bulk::compress(&vec![0u8; 64 << 20], 19).unwrap();
        let mut stored = Vec::from(MAGIC);
        stored.extend_from_slice(&(1u64 << 20).to_le_bytes());
        stored.extend_from_slice(blake3::hash(&[0u8; 1 << 20]).as_bytes());
        stored.extend_from_slice(&bomb);
        let err = decode(&stored, 1 << 30).unwrap_err();
        assert!(err.contains("decompress"), "{err}");
        // Claiming the whole 64 MiB is refused before any decompression when the cap is lower.
        stored[8..16].copy_from_slice(&(64u64 << 20).to_le_bytes());
        let err = decode(&stored, 16 << 20).unwrap_err();
        assert!(err.contains("more than"), "{err}");
    }
}

//! Reading repository objects within fixed memory. An object larger than its kind can be is
//! refused from the size the store reports, before its body is read, and again while reading
//! should the store lie; manifests are held and decompressed within byte budgets shared by the
//! whole process, so that listing many backups at once never multiplies the worst case.

use bytes::{Bytes, BytesMut};
use futures::StreamExt;
use object_store::path::Path;
use object_store::{GetResultPayload, ObjectStore, ObjectStoreExt};
use tokio::sync::{Semaphore, SemaphorePermit};

use crate::manifest::{MAX_MANIFEST_BYTES, MAX_MANIFEST_OBJECT_BYTES};

/// Compressed manifest bytes the process holds at once: one of the largest, or many small ones.
static MANIFEST_OBJECTS: Semaphore = Semaphore::const_new(MAX_MANIFEST_OBJECT_BYTES as usize);
/// Decompressed manifest bytes the process holds at once, likewise.
static MANIFEST_JSON: Semaphore = Semaphore::const_new(MAX_MANIFEST_BYTES as usize);

/// What a bounded read found.
pub(crate) enum Fetched {
    /// The body, and the share of a budget it holds while it lives.
    Body(Bytes, Option<SemaphorePermit<'static>>),
    /// Larger than the limit: why, for the caller's error.
    TooLarge(String),
}

/// Which budget an object's body is held in.
#[derive(Clone, Copy)]
pub(crate) enum Budget {
    None,
    ManifestObjects,
}

/// Reads `path`, refusing a body past `limit` bytes.
pub(crate) async fn get_bounded(
    store: &dyn ObjectStore,
    path: &Path,
    limit: u64,
    budget: Budget,
) -> Result<Fetched, object_store::Error> {
    let got = store.get(path).await?;
    let size = got.meta.size;
    if size > limit {
        return Ok(Fetched::TooLarge(format!(
            "the object is {size} bytes, more than the {limit} it can be"
        )));
    }
    // `size <= limit`, and every limit fits the semaphores' u32 permits.
    let permit = match budget {
        Budget::None => None,
        Budget::ManifestObjects => Some(acquire(&MANIFEST_OBJECTS, size).await),
    };
    // A local file is read for the length its metadata gave, not to its end.
    if matches!(got.payload, GetResultPayload::File(..)) {
        return Ok(Fetched::Body(got.bytes().await?, permit));
    }
    let mut body = BytesMut::with_capacity(size as usize);
    let mut stream = got.into_stream();
    while let Some(part) = stream.next().await {
        let part = part?;
        if (body.len() + part.len()) as u64 > limit.min(size) {
            return Ok(Fetched::TooLarge(format!(
                "the store sent more than the {} bytes it announced",
                limit.min(size)
            )));
        }
        body.extend_from_slice(&part);
    }
    Ok(Fetched::Body(body.freeze(), permit))
}

/// A share of the decompressed-manifest budget, for `bytes` of JSON.
pub(crate) async fn manifest_json_permit(bytes: u64) -> SemaphorePermit<'static> {
    acquire(&MANIFEST_JSON, bytes.min(MAX_MANIFEST_BYTES)).await
}

async fn acquire(budget: &'static Semaphore, bytes: u64) -> SemaphorePermit<'static> {
    budget
        .acquire_many(u32::try_from(bytes).unwrap_or(u32::MAX))
        .await
        .expect("the budgets are never closed")
}

/// Largest stored chunk object of a repository with chunks of `chunk_size` bytes: what zstd's
/// worst case (incompressible bytes) makes of one, its frame header included. Chunk objects
/// are bare zstd frames.
pub(crate) fn chunk_object_limit(chunk_size: u64) -> u64 {
    zstd::zstd_safe::compress_bound(chunk_size as usize) as u64
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn budgets_are_shared_by_bytes_not_by_count() {
        let big = manifest_json_permit(MAX_MANIFEST_BYTES).await;
        assert!(MANIFEST_JSON.try_acquire_many(1).is_err());
        drop(big);
        let small: Vec<_> =
            futures::future::join_all((0..64).map(|_| manifest_json_permit(1 << 20))).await;
        assert_eq!(small.len(), 64);
        assert!(MANIFEST_JSON.try_acquire_many(1).is_err());
    }

    #[test]
    fn an_incompressible_chunk_fits_the_limit() {
        let mut x = 0x9e37_79b9_7f4a_7c15u64;
        let noise: Vec<u8> = (0..65536)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                x as u8
            })
            .collect();
        let compressed = zstd::bulk::compress(&noise, 3).unwrap();
        assert!(compressed.len() as u64 <= chunk_object_limit(65536));
    }
}

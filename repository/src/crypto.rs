//! Client-side encryption of a repository's objects.
//!
//! An encrypted repository has a master key made of two random 256-bit keys: the data key,
//! which seals chunks, manifests and WAL with XChaCha20-Poly1305, and the id key, with which a
//! chunk is named by the keyed BLAKE3 hash of its plain bytes (equal chunks still share one
//! object, and a name reveals nothing of the content). `ir-repo.json` holds the master key
//! wrapped (sealed) by a key derived with Argon2id from the password or key file, with the
//! salt and cost parameters of the derivation.
//!
//! A sealed object is:
//!
//! ```text
//! offset  0  magic "IRE" and format version 1 (4 bytes)
//! offset  4  random nonce (24 bytes)
//! offset 28  ciphertext of the object's plain form (zstd as an unencrypted repository stores
//!            it), then the 16-byte Poly1305 tag
//! ```
//!
//! The associated data is the first four bytes and the object's path in the repository
//! (`chunks/ab/ab…`, `backups/<id>.json.zst`, `wal/<sysid>/…`): an object copied or moved
//! under another name fails authentication like a damaged one.

use std::sync::Arc;

use argon2::{Algorithm, Argon2, Params, Version};
use bytes::Bytes;
use chacha20poly1305::aead::inout::InOutBuf;
use chacha20poly1305::aead::{AeadInOut, KeyInit};
use chacha20poly1305::{Tag, XChaCha20Poly1305, XNonce};
use serde::{Deserialize, Serialize};
use zeroize::Zeroizing;

use crate::chunk_id::ChunkId;

pub(crate) const CIPHER: &str = "xchacha20poly1305";
const KDF: &str = "argon2id";
const MAGIC: [u8; 4] = *b"IRE\x01";
const NONCE_LEN: usize = 24;
const TAG_LEN: usize = 16;
const HEADER_LEN: usize = MAGIC.len() + NONCE_LEN;
/// Bytes a sealed object has more than its plain form.
pub(crate) const OVERHEAD: u64 = (HEADER_LEN + TAG_LEN) as u64;
const KEY_LEN: usize = 32;
const SALT_LEN: usize = 16;
/// Associated data of the wrapped master key, before the repository id.
const WRAP_CONTEXT: &[u8] = b"instant-recovery master key v1\0";

/// Argon2id costs for new repositories: 64 MiB and three passes take 0.1 to 0.3 s on a
/// current core, once per command, which is what a guess at the password costs too.
const DEFAULT_MEMORY_KIB: u32 = 64 * 1024;
const DEFAULT_ITERATIONS: u32 = 3;
const DEFAULT_PARALLELISM: u32 = 1;
/// Costs above these are refused when read back: a tampered config must not make every
/// command use gigabytes or minutes before it can say the key is wrong.
const MAX_MEMORY_KIB: u32 = 1024 * 1024;
const MAX_ITERATIONS: u32 = 64;
const MAX_PARALLELISM: u32 = 16;

/// `ir-repo.json`'s `encryption`: how the objects are sealed and how the master key is
/// unwrapped. Nothing here is secret.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct EncryptionConfig {
    /// Always `xchacha20poly1305`.
    pub cipher: String,
    pub kdf: KdfParams,
    pub wrapped_key: WrappedKey,
}

/// Argon2id's parameters and salt, as the wrapping key was derived with them.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct KdfParams {
    /// Always `argon2id`.
    pub algorithm: String,
    /// Argon2 version, 19 (0x13).
    pub version: u32,
    pub memory_kib: u32,
    pub iterations: u32,
    pub parallelism: u32,
    /// Random, hex.
    pub salt: String,
}

/// The master key (data key, then id key) sealed with the wrapping key; the associated data
/// binds it to the repository id.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct WrappedKey {
    /// 24 bytes, hex.
    pub nonce: String,
    /// 64 bytes and the 16-byte tag, hex.
    pub ciphertext: String,
}

/// Why the master key could not be unwrapped.
#[derive(Debug)]
pub(crate) enum UnlockError {
    /// The config cannot be used as it is (unknown cipher, costs out of bounds, bad hex).
    Invalid(String),
    /// Authentication failed: another key, or the wrapped key or its parameters altered.
    WrongKey,
}

/// A repository's unwrapped keys. Both are wiped from memory when dropped (the cipher
/// zeroizes its key itself).
pub(crate) struct Keys {
    data: XChaCha20Poly1305,
    id: Zeroizing<[u8; KEY_LEN]>,
}

impl std::fmt::Debug for Keys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Keys(..)")
    }
}

fn random<const N: usize>() -> Zeroizing<[u8; N]> {
    let mut buf = Zeroizing::new([0u8; N]);
    // As for identities (random.rs): no weaker fallback exists for key material and nonces.
    getrandom::fill(buf.as_mut_slice()).expect("the OS random number generator is available");
    buf
}

fn argon2(params: &KdfParams) -> Result<Argon2<'static>, UnlockError> {
    let invalid = |reason: String| UnlockError::Invalid(reason);
    if params.algorithm != KDF || params.version != u32::from(Version::V0x13) {
        return Err(invalid(format!(
            "unsupported key derivation {:?} version {}",
            params.algorithm, params.version
        )));
    }
    if params.memory_kib > MAX_MEMORY_KIB
        || params.iterations > MAX_ITERATIONS
        || params.parallelism > MAX_PARALLELISM
    {
        return Err(invalid(format!(
            "key derivation costs {} KiB, {} passes, {} lanes exceed the {MAX_MEMORY_KIB} KiB, \
             {MAX_ITERATIONS} passes, {MAX_PARALLELISM} lanes allowed",
            params.memory_kib, params.iterations, params.parallelism
        )));
    }
    let costs = Params::new(
        params.memory_kib,
        params.iterations,
        params.parallelism,
        Some(KEY_LEN),
    )
    .map_err(|e| invalid(format!("key derivation parameters: {e}")))?;
    Ok(Argon2::new(Algorithm::Argon2id, Version::V0x13, costs))
}

/// The key that wraps the master key, derived from `secret` (password or key file content).
fn wrapping_key(
    params: &KdfParams,
    secret: &[u8],
) -> Result<Zeroizing<[u8; KEY_LEN]>, UnlockError> {
    let argon2 = argon2(params)?;
    let salt = hex::decode(&params.salt)
        .map_err(|_| UnlockError::Invalid("the key derivation salt is not hex".into()))?;
    let mut out = Zeroizing::new([0u8; KEY_LEN]);
    argon2
        .hash_password_into(secret, &salt, out.as_mut_slice())
        .map_err(|e| UnlockError::Invalid(format!("key derivation: {e}")))?;
    Ok(out)
}

fn wrap_aad(repository_id: &str) -> Vec<u8> {
    [WRAP_CONTEXT, repository_id.as_bytes()].concat()
}

/// New keys for a repository with `repository_id`, and the config that unwraps them with
/// `secret`.
pub(crate) fn create(secret: &[u8], repository_id: &str) -> (EncryptionConfig, Keys) {
    let master = random::<{ 2 * KEY_LEN }>();
    let kdf = KdfParams {
        algorithm: KDF.to_string(),
        version: u32::from(Version::V0x13),
        memory_kib: DEFAULT_MEMORY_KIB,
        iterations: DEFAULT_ITERATIONS,
        parallelism: DEFAULT_PARALLELISM,
        salt: hex::encode(*random::<SALT_LEN>()),
    };
    let kek = wrapping_key(&kdf, secret).expect("the default parameters are valid");
    let wrapper = XChaCha20Poly1305::new(&(*kek).into());
    let nonce = random::<NONCE_LEN>();
    let mut sealed = master.to_vec();
    let tag = wrapper
        .encrypt_inout_detached(
            &XNonce::from(*nonce),
            &wrap_aad(repository_id),
            sealed.as_mut_slice().into(),
        )
        .expect("64 bytes are within the cipher's limits");
    sealed.extend_from_slice(&tag);
    let config = EncryptionConfig {
        cipher: CIPHER.to_string(),
        kdf,
        wrapped_key: WrappedKey {
            nonce: hex::encode(*nonce),
            ciphertext: hex::encode(&sealed),
        },
    };
    (config, Keys::from_master(&master))
}

/// The keys `config` wraps, unwrapped with `secret`. Slow on purpose (Argon2id): run it off
/// the async runtime.
pub(crate) fn unlock(
    config: &EncryptionConfig,
    secret: &[u8],
    repository_id: &str,
) -> Result<Keys, UnlockError> {
    if config.cipher != CIPHER {
        return Err(UnlockError::Invalid(format!(
            "unsupported cipher {:?}",
            config.cipher
        )));
    }
    let nonce = hex::decode(&config.wrapped_key.nonce)
        .ok()
        .and_then(|n| XNonce::try_from(n.as_slice()).ok())
        .ok_or_else(|| {
            UnlockError::Invalid("the wrapped key's nonce is not 24 hex bytes".into())
        })?;
    let sealed = hex::decode(&config.wrapped_key.ciphertext)
        .ok()
        .filter(|s| s.len() == 2 * KEY_LEN + TAG_LEN)
        .ok_or_else(|| UnlockError::Invalid("the wrapped key is not 80 hex bytes".into()))?;
    let kek = wrapping_key(&config.kdf, secret)?;
    let wrapper = XChaCha20Poly1305::new(&(*kek).into());
    let (body, tag) = sealed.split_at(2 * KEY_LEN);
    let mut master = Zeroizing::new([0u8; 2 * KEY_LEN]);
    let buf = InOutBuf::new(body, master.as_mut_slice()).expect("equal lengths");
    let tag = Tag::try_from(tag).expect("16 bytes");
    wrapper
        .decrypt_inout_detached(&nonce, &wrap_aad(repository_id), buf, &tag)
        .map_err(|_| UnlockError::WrongKey)?;
    Ok(Keys::from_master(&master))
}

impl Keys {
    fn from_master(master: &[u8; 2 * KEY_LEN]) -> Keys {
        let (data, id) = master.split_at(KEY_LEN);
        let mut id_key = Zeroizing::new([0u8; KEY_LEN]);
        id_key.copy_from_slice(id);
        Keys {
            data: XChaCha20Poly1305::new_from_slice(data).expect("32 bytes"),
            id: id_key,
        }
    }

    fn aad(path: &str) -> Vec<u8> {
        [&MAGIC[..], path.as_bytes()].concat()
    }

    /// `plain` sealed as the object at `path`.
    fn seal(&self, path: &str, plain: &[u8]) -> Vec<u8> {
        let nonce = random::<NONCE_LEN>();
        let mut out = Vec::with_capacity(plain.len() + OVERHEAD as usize);
        out.extend_from_slice(&MAGIC);
        out.extend_from_slice(nonce.as_slice());
        out.resize(HEADER_LEN + plain.len(), 0);
        let buf = InOutBuf::new(plain, &mut out[HEADER_LEN..]).expect("equal lengths");
        let tag = self
            .data
            .encrypt_inout_detached(&XNonce::from(*nonce), &Self::aad(path), buf)
            .expect("an object is within the cipher's limits (256 GiB)");
        out.extend_from_slice(&tag);
        out
    }

    /// The plain form of the object stored at `path`, or why it cannot be had.
    fn open(&self, path: &str, stored: &[u8]) -> Result<Vec<u8>, String> {
        if stored.len() < OVERHEAD as usize {
            return Err(format!(
                "{} bytes, shorter than an encrypted object's {OVERHEAD}-byte envelope",
                stored.len()
            ));
        }
        if stored[..MAGIC.len()] != MAGIC {
            return Err(
                "not an encrypted object (wrong magic or format version): stored unencrypted, \
                 or damaged"
                    .to_string(),
            );
        }
        let nonce = XNonce::try_from(&stored[MAGIC.len()..HEADER_LEN]).expect("24 bytes");
        let (body, tag) = stored[HEADER_LEN..].split_at(stored.len() - HEADER_LEN - TAG_LEN);
        let tag = Tag::try_from(tag).expect("16 bytes");
        let mut plain = vec![0u8; body.len()];
        let buf = InOutBuf::new(body, plain.as_mut_slice()).expect("equal lengths");
        self.data
            .decrypt_inout_detached(&nonce, &Self::aad(path), buf, &tag)
            .map_err(|_| {
                "authentication failed: the object is damaged, or was stored under another name"
                    .to_string()
            })?;
        Ok(plain)
    }
}

/// How a repository's objects are stored: as they are, or sealed with its keys. Cheap to
/// clone, to take to a blocking thread.
#[derive(Clone, Debug, Default)]
pub(crate) struct ObjectCodec(Option<Arc<Keys>>);

impl ObjectCodec {
    pub(crate) fn encrypted(keys: Keys) -> ObjectCodec {
        ObjectCodec(Some(Arc::new(keys)))
    }

    pub(crate) fn is_encrypted(&self) -> bool {
        self.0.is_some()
    }

    /// What is stored at `path` for an object whose plain form is `plain`.
    pub(crate) fn seal(&self, path: &str, plain: Vec<u8>) -> Vec<u8> {
        match &self.0 {
            Some(keys) => keys.seal(path, &plain),
            None => plain,
        }
    }

    /// The plain form of what is stored at `path`.
    pub(crate) fn open(&self, path: &str, stored: Bytes) -> Result<Bytes, String> {
        match &self.0 {
            Some(keys) => keys
                .open(path, &stored)
                .map(Bytes::from)
                .map_err(|e| format!("cannot decrypt: {e}")),
            None => Ok(stored),
        }
    }

    /// The largest stored object whose plain form takes at most `plain` bytes.
    pub(crate) fn max_stored(&self, plain: u64) -> u64 {
        match &self.0 {
            Some(_) => plain + OVERHEAD,
            None => plain,
        }
    }

    /// The name of a chunk with these plain bytes: BLAKE3, keyed in an encrypted repository.
    pub(crate) fn chunk_id(&self, data: &[u8]) -> ChunkId {
        match &self.0 {
            Some(keys) => ChunkId(*blake3::keyed_hash(&keys.id, data).as_bytes()),
            None => ChunkId::of(data),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn keys() -> (EncryptionConfig, Keys) {
        create(b"correct horse", "0123456789abcdef0123456789abcdef")
    }

    #[test]
    fn the_master_key_opens_with_its_secret_only() {
        let (config, keys) = keys();
        let id = "0123456789abcdef0123456789abcdef";
        let again = unlock(&config, b"correct horse", id).unwrap();
        let sealed = keys.seal("chunks/ab/x", b"page");
        assert_eq!(again.open("chunks/ab/x", &sealed).unwrap(), b"page");
        assert_eq!(
            *blake3::keyed_hash(&again.id, b"x").as_bytes(),
            *blake3::keyed_hash(&keys.id, b"x").as_bytes()
        );
        assert!(matches!(
            unlock(&config, b"correct horse ", id),
            Err(UnlockError::WrongKey)
        ));
        // Bound to the repository it was made for.
        assert!(matches!(
            unlock(&config, b"correct horse", "another"),
            Err(UnlockError::WrongKey)
        ));
        let mut tampered = config.clone();
        let mut wrapped = hex::decode(&config.wrapped_key.ciphertext).unwrap();
        wrapped[0] ^= 1;
        tampered.wrapped_key.ciphertext = hex::encode(wrapped);
        assert!(matches!(
            unlock(&tampered, b"correct horse", id),
            Err(UnlockError::WrongKey)
        ));
        let mut salted = config.clone();
        salted.kdf.salt = hex::encode([7u8; SALT_LEN]);
        assert!(matches!(
            unlock(&salted, b"correct horse", id),
            Err(UnlockError::WrongKey)
        ));
        for broken in [
            EncryptionConfig {
                cipher: "aes".into(),
                ..config.clone()
            },
            EncryptionConfig {
                kdf: KdfParams {
                    memory_kib: u32::MAX,
                    ..config.kdf.clone()
                },
                ..config.clone()
            },
            EncryptionConfig {
                kdf: KdfParams {
                    salt: "zz".into(),
                    ..config.kdf.clone()
                },
                ..config.clone()
            },
            EncryptionConfig {
                wrapped_key: WrappedKey {
                    nonce: "00".into(),
                    ..config.wrapped_key.clone()
                },
                ..config.clone()
            },
            EncryptionConfig {
                wrapped_key: WrappedKey {
                    ciphertext: "00".into(),
                    ..config.wrapped_key.clone()
                },
                ..config.clone()
            },
        ] {
            assert!(
                matches!(
                    unlock(&broken, b"correct horse", id),
                    Err(UnlockError::Invalid(_))
                ),
                "{broken:?}"
            );
        }
    }

    #[test]
    fn objects_are_bound_to_their_name_and_checked_whole() {
        let (_, keys) = keys();
        let plain = b"IR-PLAINTEXT-MARKER ".repeat(100);
        let sealed = keys.seal("backups/a.json.zst", &plain);
        assert_eq!(sealed.len(), plain.len() + OVERHEAD as usize);
        assert!(!sealed.windows(19).any(|w| w == &plain[..19]));
        assert_eq!(keys.open("backups/a.json.zst", &sealed).unwrap(), plain);
        // A fresh nonce each time: equal objects are not equal bytes.
        assert_ne!(keys.seal("backups/a.json.zst", &plain), sealed);

        let fails = |bytes: &[u8], path: &str, expect: &str| {
            let err = keys.open(path, bytes).unwrap_err();
            assert!(err.contains(expect), "{expect}: {err}");
        };
        fails(&sealed, "backups/b.json.zst", "another name");
        fails(
            &sealed[..sealed.len() - 1],
            "backups/a.json.zst",
            "authentication",
        );
        fails(
            &sealed[..OVERHEAD as usize - 1],
            "backups/a.json.zst",
            "shorter",
        );
        fails(&plain, "backups/a.json.zst", "magic");
        for at in [3, 4, 27, 28, sealed.len() - 1] {
            let mut flipped = sealed.clone();
            flipped[at] ^= 1;
            let err = keys.open("backups/a.json.zst", &flipped).unwrap_err();
            assert!(
                err.contains("magic") || err.contains("authentication"),
                "{at}: {err}"
            );
        }
        let mut longer = sealed.clone();
        longer.push(0);
        fails(&longer, "backups/a.json.zst", "authentication");
        // The empty object has an envelope too.
        let empty = keys.seal("x", b"");
        assert_eq!(keys.open("x", &empty).unwrap(), b"");

        let (_, other) = create(b"correct horse", "0123456789abcdef0123456789abcdef");
        assert!(other.open("backups/a.json.zst", &sealed).is_err());
    }

    #[test]
    fn codecs_name_chunks_by_their_keyed_hash() {
        let plain = ObjectCodec::default();
        let (_, keys) = keys();
        let sealed = ObjectCodec::encrypted(keys);
        assert_eq!(plain.chunk_id(b"x"), ChunkId::of(b"x"));
        assert_ne!(sealed.chunk_id(b"x"), ChunkId::of(b"x"));
        assert_eq!(sealed.chunk_id(b"x"), sealed.chunk_id(b"x"));
        assert_eq!(plain.seal("p", b"abc".to_vec()), b"abc");
        let stored = sealed.seal("p", b"abc".to_vec());
        assert_eq!(sealed.open("p", Bytes::from(stored)).unwrap(), &b"abc"[..]);
        assert_eq!(sealed.max_stored(10), 10 + OVERHEAD);
        assert!(format!("{sealed:?}").contains("Keys(..)"));
    }
}

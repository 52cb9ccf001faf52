//! The one path type of backup entries.

use std::fmt;
use std::ops::Deref;

use serde::{Deserialize, Deserializer, Serialize};

/// Longest entry path, in bytes (Linux's PATH_MAX less the terminating NUL).
pub const MAX_PATH_BYTES: usize = 4095;
/// Longest name of one path component, in bytes (Linux's NAME_MAX).
pub const MAX_NAME_BYTES: usize = 255;

/// Where an entry sits in the data directory: relative, `/`-separated, normalised (no empty,
/// `.` or `..` part, no NUL), within Linux's length limits. Whatever reads a manifest gets these
/// from deserialisation, so no code path can meet an absolute or climbing path; that it never
/// lies below a symlink or a file of the same backup is a property of the whole manifest, checked
/// by [`BackupManifest::validate`](super::BackupManifest::validate).
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
#[serde(transparent)]
pub struct EntryPath(String);

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid entry path {path:?}: {reason}")]
pub struct InvalidPath {
    pub path: String,
    pub reason: &'static str,
}

impl EntryPath {
    pub fn new(path: impl Into<String>) -> Result<Self, InvalidPath> {
        let path = path.into();
        let reason = if path.is_empty() {
            Some("empty")
        } else if path.starts_with('/') {
            Some("absolute")
        } else if path.len() > MAX_PATH_BYTES {
            Some("longer than 4095 bytes")
        } else if path.contains('\0') {
            Some("contains a NUL byte")
        } else if path
            .split('/')
            .any(|c| c.is_empty() || c == "." || c == "..")
        {
            Some("has an empty, '.' or '..' part")
        } else if path.split('/').any(|c| c.len() > MAX_NAME_BYTES) {
            Some("has a part longer than 255 bytes")
        } else {
            None
        };
        match reason {
            Some(reason) => Err(InvalidPath { path, reason }),
            None => Ok(EntryPath(path)),
        }
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The containing directory's path; `None` for an entry of the data directory itself.
    pub fn parent(&self) -> Option<&str> {
        self.0.rfind('/').map(|i| &self.0[..i])
    }

    /// The last component.
    pub fn name(&self) -> &str {
        match self.0.rfind('/') {
            Some(i) => &self.0[i + 1..],
            None => &self.0,
        }
    }

    /// Every ancestor's path, nearest last (`a/b/c` gives `a`, `a/b`).
    pub fn ancestors(&self) -> impl Iterator<Item = &str> {
        self.0.match_indices('/').map(|(i, _)| &self.0[..i])
    }
}

impl Deref for EntryPath {
    type Target = str;
    fn deref(&self) -> &str {
        &self.0
    }
}

impl AsRef<str> for EntryPath {
    fn as_ref(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for EntryPath {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl fmt::Debug for EntryPath {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(&self.0, f)
    }
}

impl PartialEq<str> for EntryPath {
    fn eq(&self, other: &str) -> bool {
        self.0 == other
    }
}

impl PartialEq<&str> for EntryPath {
    fn eq(&self, other: &&str) -> bool {
        self.0 == *other
    }
}

impl From<EntryPath> for String {
    fn from(p: EntryPath) -> String {
        p.0
    }
}

impl<'de> Deserialize<'de> for EntryPath {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        EntryPath::new(String::deserialize(d)?).map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_normal_relative_paths() {
        let p = EntryPath::new("base/1/1259").unwrap();
        assert_eq!(p.parent(), Some("base/1"));
        assert_eq!(p.name(), "1259");
        assert_eq!(p.ancestors().collect::<Vec<_>>(), ["base", "base/1"]);
        assert_eq!(EntryPath::new("PG_VERSION").unwrap().parent(), None);
        assert!(
            EntryPath::new("..a/b..c/.d").is_ok(),
            "dots inside names are names"
        );
    }

    #[test]
    fn refuses_every_escape() {
        for (path, reason) in [
            ("", "empty"),
            ("/etc/passwd", "absolute"),
            ("../x", "'..'"),
            ("base/../../x", "'..'"),
            ("base/..", "'..'"),
            ("./base", "'.'"),
            ("base//1", "empty"),
            ("base/", "empty"),
            ("base/1\0/x", "NUL"),
        ] {
            let err = EntryPath::new(path).unwrap_err();
            assert!(err.reason.contains(reason), "{path:?}: {err}");
        }
        assert!(EntryPath::new("a".repeat(256)).is_err());
        assert!(EntryPath::new(vec!["a"; 2049].join("/")).is_err());
        let json = serde_json::from_str::<EntryPath>("\"../../x\"");
        assert!(json.unwrap_err().to_string().contains("'..'"));
    }
}

//! Randomness for identities (repository ids, backup id suffixes), from the OS.

/// `bytes` random bytes as lower-case hex.
pub(crate) fn hex(bytes: usize) -> String {
    let mut buf = vec![0u8; bytes];
    // The OS generator does not fail on Linux once booted; an identity must never be guessable
    // or repeated, so there is no fallback to something weaker.
    getrandom::fill(&mut buf).expect("the OS random number generator is available");
    hex::encode(buf)
}

/// A 128-bit identity, as 32 hex digits.
pub(crate) fn hex_id() -> String {
    hex(16)
}

#[cfg(test)]
mod tests {
    #[test]
    fn ids_are_hex_and_distinct() {
        let a = super::hex_id();
        let b = super::hex_id();
        assert_eq!(a.len(), 32);
        assert!(a.chars().all(|c| c.is_ascii_hexdigit()));
        assert_ne!(a, b);
    }
}

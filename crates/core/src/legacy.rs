//! Keys brought from a system that kept only bcrypt hashes of them (Blnk). keygate never
//! sees such a key's plaintext until a client presents it, so the key waits under a
//! placeholder digest that no text hashes to, and is found by the prefix the old system
//! kept beside the hash. The first presentation that bcrypt accepts stores the key's blake3
//! digest in place of the placeholder; from then on it is an ordinary key, found by
//! one lookup, and bcrypt is never run for it again.

use std::fmt;

use crate::api_key::{ApiKeyId, ValidationError};
use crate::secret::KeyHash;

/// How many leading characters of a key its old system kept in the clear (Blnk's
/// `key_prefix`): what finds the bcrypt hash to check a presented key against.
pub const LEGACY_PREFIX_LEN: usize = 16;

/// The highest bcrypt cost accepted: each check at cost 14 takes about a second of CPU,
/// and a hash of a higher cost would let one presented key occupy a core for minutes.
pub const MAX_BCRYPT_COST: u32 = 14;

/// The most legacy hashes one presented key is read with and checked against. Prefixes
/// are 16 characters of random keys: two keys share one only in a doctored table, and
/// then no more than this many bcrypt checks are run, nor rows read.
pub const MAX_LEGACY_CANDIDATES: usize = 2;

/// The most bytes of a key bcrypt reads (Blnk could not hash longer ones).
const BCRYPT_MAX_BYTES: usize = 72;

/// A key's hash in its old system, kept until the key is first presented.
#[derive(Clone, PartialEq, Eq)]
pub struct LegacyHash {
    /// The key it belongs to.
    pub key: ApiKeyId,
    /// The key's first [`LEGACY_PREFIX_LEN`] characters.
    pub prefix: String,
    /// The bcrypt hash of the whole key (`$2b$10$...`).
    pub bcrypt: String,
}

impl LegacyHash {
    /// Checks what an old system kept of key `key`: a prefix of [`LEGACY_PREFIX_LEN`]
    /// printable ASCII characters and a bcrypt hash of cost at most [`MAX_BCRYPT_COST`].
    /// Reasons name the field, never its value.
    pub fn new(key: ApiKeyId, prefix: &str, bcrypt: &str) -> Result<Self, ValidationError> {
        let printable = prefix.bytes().all(|b| (b'!'..=b'~').contains(&b));
        if prefix.len() != LEGACY_PREFIX_LEN || !printable {
            return Err(ValidationError::new(
                "key_prefix",
                format!(
                    "must be the key's first {LEGACY_PREFIX_LEN} characters (without it the key could only be found by a bcrypt check against every key)"
                ),
            ));
        }
        let cost = bcrypt
            .parse::<bcrypt::HashParts>()
            .map(|parts| parts.get_cost())
            .map_err(|_| ValidationError::new("key", "must be a bcrypt hash"))?;
        if cost > MAX_BCRYPT_COST {
            return Err(ValidationError::new(
                "key",
                format!("bcrypt cost {cost} is above {MAX_BCRYPT_COST}"),
            ));
        }
        Ok(LegacyHash {
            key,
            prefix: prefix.to_owned(),
            bcrypt: bcrypt.to_owned(),
        })
    }

    /// The prefix under which a presented key's legacy hash would be kept, if it is long
    /// enough to have one.
    pub fn prefix_of(presented: &str) -> Option<&str> {
        presented.get(..LEGACY_PREFIX_LEN)
    }

    /// Whether `presented` is the key this hash was made from: it starts with the prefix
    /// and bcrypt accepts it. Costs one bcrypt check (tens of milliseconds): run it off
    /// any async worker, and only for a presented key whose prefix matched.
    pub fn matches(&self, presented: &str) -> bool {
        // bcrypt reads 72 bytes at most: past them, texts that differ only in their tail
        // would all match, and each would be stored as a digest of its own.
        presented.len() <= BCRYPT_MAX_BYTES
            && presented.starts_with(&self.prefix)
            && bcrypt::verify(presented.as_bytes(), &self.bcrypt).unwrap_or(false)
    }

    /// A short, non-secret reminder of the key for listings, like
    /// [`crate::PlainKey::hint`]: its first four characters.
    pub fn hint(&self) -> String {
        let start: String = self.prefix.chars().take(4).collect();
        format!("{start}...")
    }

    /// The digest a legacy key is stored under until its first use: 32 random bytes,
    /// which no presented text hashes to.
    pub fn placeholder() -> Result<KeyHash, rand::rand_core::OsError> {
        KeyHash::unguessable()
    }
}

impl fmt::Debug for LegacyHash {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("LegacyHash")
            .field("key", &self.key)
            .finish_non_exhaustive()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const KEY: &str = "Zm9vYmFyYmF6cXV4MDEyMzQ1Njc4OWFiY2RlZmdoaWo=";

    fn legacy(cost: u32) -> LegacyHash {
        let hash = bcrypt::hash(KEY, cost).expect("a hash");
        LegacyHash::new(ApiKeyId::new("api_key_1"), &KEY[..16], &hash).expect("valid")
    }

    #[test]
    fn only_the_key_itself_matches() {
        let legacy = legacy(4);
        assert!(legacy.matches(KEY));
        // Same prefix, another ending; another prefix; the prefix alone.
        let mut other = KEY.to_owned();
        other.replace_range(40..41, "x");
        assert!(!legacy.matches(&other));
        assert!(!legacy.matches(&format!("A{}", &KEY[1..])));
        assert!(!legacy.matches(&KEY[..16]));
        assert_eq!(LegacyHash::prefix_of(KEY), Some(&KEY[..16]));
        assert_eq!(LegacyHash::prefix_of("short"), None);
        assert_eq!(legacy.hint(), "Zm9v...");
        assert!(!format!("{legacy:?}").contains("$2"), "no hash in Debug");
    }

    #[test]
    fn only_texts_bcrypt_reads_whole_can_match() {
        let long = format!("{KEY}{}", "x".repeat(28));
        assert_eq!(long.len(), 72);
        let hash = bcrypt::hash(&long, 4).expect("a hash");
        let legacy =
            LegacyHash::new(ApiKeyId::new("api_key_1"), &long[..16], &hash).expect("valid");
        assert!(legacy.matches(&long));
        // bcrypt alone would accept any tail past 72 bytes.
        let longer = format!("{long}tail");
        assert!(bcrypt::verify(&longer, &hash).expect("verifies"));
        assert!(!legacy.matches(&longer));
    }

    #[test]
    fn what_cannot_be_checked_cheaply_is_refused() {
        let id = || ApiKeyId::new("api_key_1");
        let good = bcrypt::hash(KEY, 4).expect("a hash");
        let cases = [
            (&KEY[..15], good.as_str(), "key_prefix"),
            ("", good.as_str(), "key_prefix"),
            ("Zm9vYmFy YmF6cXV", good.as_str(), "key_prefix"),
            (&KEY[..16], "not a hash", "key"),
            (&KEY[..16], KEY, "key"),
            (
                &KEY[..16],
                "$2b$31$abcdefghijklmnopqrstuuabcdefghijklmnopqrstuvwxyz01234",
                "key",
            ),
        ];
        for (prefix, hash, field) in cases {
            let error = LegacyHash::new(id(), prefix, hash).expect_err(prefix);
            assert_eq!(error.field, field, "{prefix:?}");
            assert!(!error.message.contains(KEY), "no value quoted");
        }
        assert!(LegacyHash::new(id(), &KEY[..16], &good).is_ok());
    }

    #[test]
    fn placeholders_are_all_different() {
        let a = LegacyHash::placeholder().expect("random");
        let b = LegacyHash::placeholder().expect("random");
        assert_ne!(a, b);
    }
}

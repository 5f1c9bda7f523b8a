//! The key's secret and its digest: [`PlainKey`] exists only between generation and the
//! response that hands it over; [`KeyHash`] is all that is ever stored or compared.

use std::fmt;

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE;
use rand::TryRngCore;
use rand::rngs::OsRng;
use secrecy::{ExposeSecret, SecretString};
use zeroize::Zeroize;

/// How many random bytes a key carries.
pub const KEY_BYTES: usize = 32;
/// How long a key is as text: 32 bytes in padded base64.
pub const KEY_LEN: usize = 44;

/// A plaintext API key. Its `Debug` is redacted and its memory is zeroed on drop.
#[derive(Clone)]
pub struct PlainKey(SecretString);

/// The lengths a key brought from elsewhere may have.
pub const IMPORTED_LEN: std::ops::RangeInclusive<usize> = 16..=512;

impl PlainKey {
    /// A new key: 32 bytes from the operating system's CSPRNG, URL-safe base64 with padding.
    pub fn generate() -> Result<Self, rand::rand_core::OsError> {
        let mut bytes = [0u8; KEY_BYTES];
        OsRng.try_fill_bytes(&mut bytes)?;
        let key = PlainKey(URL_SAFE.encode(bytes).into());
        bytes.zeroize();
        Ok(key)
    }

    /// Whether `text` has the shape of a key keygate issues (44 characters of padded
    /// URL-safe base64), so that anything else is refused without a lookup.
    pub fn could_be_issued(text: &str) -> bool {
        let bytes = text.as_bytes();
        bytes.len() == KEY_LEN
            && bytes[KEY_LEN - 1] == b'='
            && bytes[..KEY_LEN - 1]
                .iter()
                .all(|b| b.is_ascii_alphanumeric() || *b == b'-' || *b == b'_')
    }

    /// Whether `text` could be a key brought from elsewhere (`keygate keys import`):
    /// 16 to 512 characters of printable ASCII, neither starting nor ending with a space.
    pub fn could_be_imported(text: &str) -> bool {
        let bytes = text.as_bytes();
        (IMPORTED_LEN).contains(&bytes.len())
            && bytes.iter().all(|b| (b' '..=b'~').contains(b))
            && bytes.first() != Some(&b' ')
            && bytes.last() != Some(&b' ')
    }

    /// Wraps a key received from a client or a configuration.
    pub fn from_presented(text: &str) -> Self {
        PlainKey(text.into())
    }

    /// The digest under which the key is stored and looked up.
    pub fn hash(&self) -> KeyHash {
        KeyHash::of(self.expose())
    }

    /// A short, non-secret reminder of which key this is, for listings: the first four
    /// characters. Far too little to rebuild or check the key.
    pub fn hint(&self) -> String {
        let text = self.expose();
        let prefix: String = text.chars().take(4).collect();
        format!("{prefix}...")
    }

    /// The plaintext, for the one response that hands the key over.
    pub fn expose(&self) -> &str {
        self.0.expose_secret()
    }
}

impl fmt::Debug for PlainKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("PlainKey(REDACTED)")
    }
}

/// The blake3 digest of a key. Equality is constant-time.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct KeyHash(blake3::Hash);

impl KeyHash {
    /// Hashes presented key text.
    pub fn of(text: &str) -> Self {
        KeyHash(blake3::hash(text.as_bytes()))
    }

    /// Rebuilds a digest read from storage; `None` unless it is exactly 32 bytes.
    pub fn from_bytes(bytes: &[u8]) -> Option<Self> {
        <[u8; 32]>::try_from(bytes)
            .ok()
            .map(|array| KeyHash(blake3::Hash::from_bytes(array)))
    }

    /// 32 random bytes from the operating system's CSPRNG in place of a digest: no text
    /// is known to hash to it, so it stands for a key that cannot be presented.
    pub fn unguessable() -> Result<Self, rand::rand_core::OsError> {
        let mut bytes = [0u8; 32];
        OsRng.try_fill_bytes(&mut bytes)?;
        Ok(KeyHash(blake3::Hash::from_bytes(bytes)))
    }

    /// The digest's 32 bytes, as stored.
    pub fn as_bytes(&self) -> &[u8; 32] {
        self.0.as_bytes()
    }
}

impl fmt::Debug for KeyHash {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("KeyHash(..)")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generated_keys_are_44_chars_of_url_safe_padded_base64() {
        let key = PlainKey::generate().expect("the OS has randomness");
        let text = key.expose();
        assert_eq!(text.len(), KEY_LEN);
        assert!(text.ends_with('='));
        assert!(
            text.trim_end_matches('=')
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
        );
        assert_eq!(URL_SAFE.decode(text).expect("decodes").len(), KEY_BYTES);
    }

    #[test]
    fn imported_keys_are_printable_ascii_of_16_to_512_characters() {
        for good in [
            "sixteen-chars-ok",
            "blnk_0123456789abcdef",
            "a key with spaces in it",
            &"x".repeat(512),
        ] {
            assert!(PlainKey::could_be_imported(good), "{good}");
        }
        let long = "x".repeat(513);
        for bad in [
            "fifteen-chars-x",
            " leading-space-key",
            "trailing-space-key ",
            "tab\there-0123456789",
            "caf\u{e9}-0123456789-x",
            long.as_str(),
            "",
        ] {
            assert!(!PlainKey::could_be_imported(bad), "{bad:?}");
        }
    }

    #[test]
    fn only_the_shape_of_issued_keys_could_be_issued() {
        let issued = PlainKey::generate().expect("randomness");
        assert!(PlainKey::could_be_issued(issued.expose()));
        let cases = [
            ("", false),
            ("YVLIhuIplUzLRCcT9r7DQ_jsGKCXAn39JQ3n_o-Ll2Q=", true),
            ("YVLIhuIplUzLRCcT9r7DQ_jsGKCXAn39JQ3n_o-Ll2Q", false),
            ("YVLIhuIplUzLRCcT9r7DQ_jsGKCXAn39JQ3n_o-Ll2QQ", false),
            ("YVLIhuIplUzLRCcT9r7DQ+jsGKCXAn39JQ3n_o/Ll2Q=", false),
            ("YVLIhuIplUzLRCcT9r7DQ_jsGKCXAn39JQ3n_o-Ll2Q==", false),
            ("YVLIhuIplUzLRCcT9r7DQ_jsGKCXAn39JQ3n_o-Ll\u{e9}=", false),
            ("' OR 1=1 -- ' OR 1=1 -- ' OR 1=1 -- ' OR 1==", false),
        ];
        for (text, expected) in cases {
            assert_eq!(PlainKey::could_be_issued(text), expected, "{text:?}");
        }
    }

    #[test]
    fn generated_keys_differ() {
        let a = PlainKey::generate().expect("randomness");
        let b = PlainKey::generate().expect("randomness");
        assert_ne!(a.expose(), b.expose());
        assert_ne!(a.hash(), b.hash());
    }

    #[test]
    fn debug_output_reveals_neither_key_nor_hash() {
        let key = PlainKey::from_presented("YVLIhuIplUzLRCcT9r7DQ_jsGKCXAn39JQ3n_o-Ll2Q=");
        let shown = format!("{key:?} {:?}", key.hash());
        assert!(!shown.contains("YVLI"), "{shown}");
        assert!(!shown.contains(&blake3::hash(key.expose().as_bytes()).to_hex().to_string()));
    }

    #[test]
    fn the_hash_is_blake3_of_the_text_and_survives_storage() {
        let key = PlainKey::from_presented("abc");
        let hash = key.hash();
        assert_eq!(hash.as_bytes(), blake3::hash(b"abc").as_bytes());
        assert_eq!(KeyHash::from_bytes(hash.as_bytes()), Some(hash));
        assert_eq!(KeyHash::from_bytes(&[0; 31]), None);
    }

    #[test]
    fn the_hint_is_a_short_prefix() {
        let key = PlainKey::from_presented("YVLIhuIplUzLRCcT9r7DQ_jsGKCXAn39JQ3n_o-Ll2Q=");
        assert_eq!(key.hint(), "YVLI...");
    }
}

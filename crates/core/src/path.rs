//! The path an upstream will see: a gateway's original request target made canonical, or
//! refused when upstreams could read it in different ways.
//!
//! A gateway asks about the raw target its client sent (`/ledgers/%2e%2e/balances/b1`),
//! but the API behind it routes on its own reading of that target, usually after
//! percent-decoding and removing dot segments. If keygate judged the raw text, a key for
//! one resource could reach another. So the resource is read from the path as RFC 3986
//! makes it canonical (unreserved characters decoded, dot segments removed, §6.2.2 and
//! §5.2.4), and every spelling on which common upstreams disagree is refused instead of
//! guessed at: encoded separators, backslashes, `;` parameters, control characters,
//! double encoding, dot segments that climb above the root or that change the first
//! segment, and dot segments beside empty segments (which upstreams that merge slashes
//! resolve differently).

use std::fmt;

use thiserror::Error;

/// Why a path is refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Error)]
pub enum PathError {
    /// The target does not start with `/`.
    #[error("must be an absolute path starting with /")]
    NotAbsolute,
    /// A control character, raw or percent-encoded.
    #[error("must not contain control characters")]
    Control,
    /// A backslash, which some upstreams treat as a separator.
    #[error("must not contain a backslash")]
    Backslash,
    /// `%2F` or `%5C`: a separator that some upstreams decode and others do not.
    #[error("must not contain an encoded / or \\")]
    EncodedSeparator,
    /// `;` (raw or encoded), which some upstreams strip as a path parameter.
    #[error("must not contain ; parameters")]
    Parameter,
    /// A `#`, which never belongs in a request target, and after which some upstreams
    /// keep reading the path.
    #[error("must not contain #")]
    Fragment,
    /// A segment made only of dots and spaces, or of characters that stand for dots or
    /// separators elsewhere (`..%20`, `...`, fullwidth `．．`, `¥`): Windows trims trailing
    /// dots and spaces, and some servers map look-alike characters to ASCII.
    #[error("has a segment that some upstreams read as . or .. or a separator")]
    LookAlike,
    /// A `%` not followed by two hexadecimal digits.
    #[error("has a malformed percent-encoding")]
    BadEscape,
    /// `%25` followed by two hexadecimal digits, which a second decoding changes.
    #[error("must not be percent-encoded twice")]
    DoubleEncoded,
    /// Percent-encoded bytes that are not UTF-8.
    #[error("must percent-encode UTF-8 only")]
    NotUtf8,
    /// Dot segments climbing above the root.
    #[error("must not climb above the root with ..")]
    EscapesRoot,
    /// Dot segments that change the first segment, or that stand beside empty segments.
    #[error("has dot segments that upstreams resolve differently")]
    AmbiguousDots,
}

/// A path made canonical: it starts with `/`, holds no dot segment, and every
/// percent-encoding left in it encodes a character outside the unreserved set.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CanonicalPath(String);

impl CanonicalPath {
    /// The canonical form of a request target (an absolute path, optionally followed by a
    /// query, which is cut off), or why no upstream could be trusted to read it the same
    /// way.
    pub fn parse(target: &str) -> Result<Self, PathError> {
        if target.contains('#') {
            return Err(PathError::Fragment);
        }
        let path = target.split('?').next().unwrap_or_default();
        let rest = path.strip_prefix('/').ok_or(PathError::NotAbsolute)?;
        // Most paths are plain (unreserved characters and slashes, no segment of dots):
        // already canonical, so one check and one copy, on every guarded request.
        let plain = rest.bytes().all(|byte| is_unreserved(byte) || byte == b'/')
            && !rest
                .split('/')
                .any(|segment| !segment.is_empty() && segment.bytes().all(|byte| byte == b'.'));
        if plain {
            return Ok(CanonicalPath(path.to_owned()));
        }
        let mut segments = Vec::new();
        let mut has_dots = false;
        let mut has_inner_empty = false;
        let raw_segments: Vec<&str> = rest.split('/').collect();
        let last = raw_segments.len() - 1;
        for (index, raw) in raw_segments.iter().enumerate() {
            let segment = decode_unreserved(raw)?;
            let is_dots = segment == "." || segment == "..";
            if !is_dots && looks_like_dots_or_separator(&segment) {
                return Err(PathError::LookAlike);
            }
            has_dots |= is_dots;
            has_inner_empty |= segment.is_empty() && index != last;
            segments.push(segment);
        }
        if !has_dots {
            return Ok(CanonicalPath(format!("/{}", segments.join("/"))));
        }
        if has_inner_empty {
            return Err(PathError::AmbiguousDots);
        }
        let first = segments[0].clone();
        let mut kept: Vec<String> = Vec::with_capacity(segments.len());
        let mut trailing_slash = false;
        for segment in segments {
            trailing_slash = false;
            match segment.as_str() {
                "." => trailing_slash = true,
                ".." => {
                    kept.pop().ok_or(PathError::EscapesRoot)?;
                    trailing_slash = true;
                }
                _ => kept.push(segment),
            }
        }
        if trailing_slash {
            kept.push(String::new());
        }
        // An upstream that does not remove dot segments routes on the first segment as
        // sent: it must be the one judged.
        if kept.first() != Some(&first) {
            return Err(PathError::AmbiguousDots);
        }
        Ok(CanonicalPath(format!("/{}", kept.join("/"))))
    }

    /// The canonical path's text.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// Its first segment, which names the resource.
    pub fn first_segment(&self) -> &str {
        self.0[1..].split('/').next().unwrap_or_default()
    }
}

impl fmt::Display for CanonicalPath {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// Whether a segment (other than `.` and `..` themselves) could be read as a dot segment
/// or hold a separator by an upstream that trims trailing dots and spaces (Windows) or
/// maps look-alike characters to ASCII (Unicode compatibility forms, East Asian code
/// pages where the yen and won signs are the backslash).
fn looks_like_dots_or_separator(segment: &str) -> bool {
    let decoded = percent_decoded(segment);
    let mut only_dots_and_spaces = !decoded.is_empty();
    for c in decoded.chars() {
        match c {
            '\u{FF0F}' | '\u{FF3C}' | '\u{A5}' | '\u{20A9}' | '\u{2215}' | '\u{29F5}' => {
                return true;
            }
            '.' | ' ' | '\u{FF0E}' | '\u{2024}' | '\u{2025}' | '\u{2026}' | '\u{FE52}'
            | '\u{3002}' | '\u{FF61}' | '\u{3000}' => {}
            _ => only_dots_and_spaces = false,
        }
    }
    only_dots_and_spaces
}

/// `text` with every well-formed `%XX` escape decoded, as UTF-8 where it is and with
/// U+FFFD where it is not; malformed escapes are kept as they are.
pub fn percent_decoded(text: &str) -> String {
    percent_encoding::percent_decode_str(text)
        .decode_utf8_lossy()
        .into_owned()
}

fn is_unreserved(byte: u8) -> bool {
    byte.is_ascii_alphanumeric() || matches!(byte, b'-' | b'.' | b'_' | b'~')
}

fn hex(byte: u8) -> Option<u8> {
    match byte {
        b'0'..=b'9' => Some(byte - b'0'),
        b'a'..=b'f' => Some(byte - b'a' + 10),
        b'A'..=b'F' => Some(byte - b'A' + 10),
        _ => None,
    }
}

/// One segment with its unreserved characters decoded and other escapes upper-cased,
/// refusing what upstreams read differently.
fn decode_unreserved(segment: &str) -> Result<String, PathError> {
    let bytes = segment.as_bytes();
    let mut out = String::with_capacity(segment.len());
    // Every byte the segment stands for, to check that escapes encode UTF-8.
    let mut decoded = Vec::with_capacity(segment.len());
    let mut index = 0;
    while index < bytes.len() {
        let byte = bytes[index];
        match byte {
            b'%' => {
                let value = match (bytes.get(index + 1), bytes.get(index + 2)) {
                    (Some(&high), Some(&low)) => match (hex(high), hex(low)) {
                        (Some(high), Some(low)) => high * 16 + low,
                        _ => return Err(PathError::BadEscape),
                    },
                    _ => return Err(PathError::BadEscape),
                };
                check_byte(value)?;
                if is_unreserved(value) {
                    out.push(char::from(value));
                } else {
                    out.push('%');
                    out.push(char::from(b"0123456789ABCDEF"[usize::from(value >> 4)]));
                    out.push(char::from(b"0123456789ABCDEF"[usize::from(value & 15)]));
                }
                decoded.push(value);
                index += 3;
            }
            b'\\' => return Err(PathError::Backslash),
            _ => {
                check_byte(byte)?;
                let width = utf8_width(byte);
                let end = (index + width).min(bytes.len());
                out.push_str(&segment[index..end]);
                decoded.extend_from_slice(&bytes[index..end]);
                index = end;
            }
        }
    }
    std::str::from_utf8(&decoded).map_err(|_| PathError::NotUtf8)?;
    // An encoded `%` before two hex digits, however those digits were spelled
    // (`%252e`, `%25%32%65`), becomes another character when decoded again.
    let escaped = out.as_bytes();
    let twice = escaped.windows(5).any(|window| {
        window.starts_with(b"%25") && hex(window[3]).is_some() && hex(window[4]).is_some()
    });
    if twice {
        return Err(PathError::DoubleEncoded);
    }
    Ok(out)
}

/// Refuses a byte, raw or decoded, that upstreams treat inconsistently.
fn check_byte(byte: u8) -> Result<(), PathError> {
    match byte {
        0..=0x1f | 0x7f => Err(PathError::Control),
        b'/' | b'\\' => Err(PathError::EncodedSeparator),
        b';' => Err(PathError::Parameter),
        _ => Ok(()),
    }
}

/// How many bytes the UTF-8 sequence starting with `lead` takes (1 for a stray byte).
fn utf8_width(lead: u8) -> usize {
    match lead {
        0xc0..=0xdf => 2,
        0xe0..=0xef => 3,
        0xf0..=0xf7 => 4,
        _ => 1,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn canonical(target: &str) -> Result<String, PathError> {
        CanonicalPath::parse(target).map(|path| path.0)
    }

    #[test]
    fn plain_paths_stay_as_they_are() {
        let cases = [
            ("/ledgers", "/ledgers"),
            ("/ledgers/ldg_1", "/ledgers/ldg_1"),
            ("/ledgers/", "/ledgers/"),
            ("/", "/"),
            ("/ledgers/ldg_1?expand=true", "/ledgers/ldg_1"),
            ("/ledgers?q=/../balances", "/ledgers"),
            ("//ledgers", "//ledgers"),
            ("/ledgers//x", "/ledgers//x"),
            ("/ledgers/a.b.c", "/ledgers/a.b.c"),
            ("/ledgers/..x", "/ledgers/..x"),
            ("/caf%C3%A9", "/caf%C3%A9"),
            ("/caf%c3%a9", "/caf%C3%A9"),
            ("/a%20b", "/a%20b"),
            ("/ledgers/é", "/ledgers/é"),
        ];
        for (target, expected) in cases {
            assert_eq!(canonical(target), Ok(expected.to_owned()), "{target:?}");
        }
    }

    #[test]
    fn unreserved_characters_are_decoded() {
        let cases = [
            ("/%6Cedgers", "/ledgers"),
            ("/%6cedgers/%7E%2D%5F%2E", "/ledgers/~-_."),
            ("/ledgers/%41%42", "/ledgers/AB"),
        ];
        for (target, expected) in cases {
            assert_eq!(canonical(target), Ok(expected.to_owned()), "{target:?}");
        }
    }

    #[test]
    fn dot_segments_inside_the_first_segment_are_removed() {
        let cases = [
            ("/ledgers/x/../y", "/ledgers/y"),
            ("/ledgers/./y", "/ledgers/y"),
            ("/ledgers/x/..", "/ledgers/"),
            ("/ledgers/x/.", "/ledgers/x/"),
            ("/ledgers/x/%2e%2e/y", "/ledgers/y"),
            ("/ledgers/x/../../ledgers/y", "/ledgers/y"),
        ];
        for (target, expected) in cases {
            assert_eq!(canonical(target), Ok(expected.to_owned()), "{target:?}");
        }
    }

    #[test]
    fn every_spelling_that_reaches_another_resource_is_refused() {
        let cases = [
            ("/ledgers/../balances/b1", PathError::AmbiguousDots),
            ("/ledgers/%2e%2e/balances/b1", PathError::AmbiguousDots),
            ("/ledgers/%2E%2E/balances/b1", PathError::AmbiguousDots),
            ("/ledgers/.%2e/balances/b1", PathError::AmbiguousDots),
            ("/ledgers/x/../../balances/b1", PathError::AmbiguousDots),
            ("/./balances", PathError::AmbiguousDots),
            ("/ledgers/..;/balances/b1", PathError::Parameter),
            ("/ledgers/..%2fbalances/b1", PathError::EncodedSeparator),
            ("/ledgers/..%2Fbalances/b1", PathError::EncodedSeparator),
            ("/ledgers/..\\balances/b1", PathError::Backslash),
            ("/ledgers/..%5cbalances", PathError::EncodedSeparator),
            ("/..", PathError::EscapesRoot),
            ("/ledgers/../..", PathError::EscapesRoot),
            ("/%2e%2e/etc", PathError::EscapesRoot),
            ("/ledgers//../balances", PathError::AmbiguousDots),
            ("//ledgers/../balances", PathError::AmbiguousDots),
            ("/ledgers;x", PathError::Parameter),
            ("/ledgers%3bx", PathError::Parameter),
            ("/ledgers/a\0b", PathError::Control),
            ("/ledgers/%00", PathError::Control),
            ("/ledgers/%0a", PathError::Control),
            ("/ledgers/\t", PathError::Control),
            ("/ledgers/%7f", PathError::Control),
            ("/ledgers/%252e%252e", PathError::DoubleEncoded),
            ("/ledgers/%25%32%65", PathError::DoubleEncoded),
            ("/]l`%25%3532&", PathError::DoubleEncoded),
            ("/ledgers/%zz", PathError::BadEscape),
            ("/ledgers/%4", PathError::BadEscape),
            ("/ledgers/%", PathError::BadEscape),
            ("/ledgers/%c0%ae%c0%ae", PathError::NotUtf8),
            ("/ledgers/%ff", PathError::NotUtf8),
            ("ledgers", PathError::NotAbsolute),
            ("", PathError::NotAbsolute),
            ("*", PathError::NotAbsolute),
            ("http://evil/balances", PathError::NotAbsolute),
            ("/ledgers#/../balances/b1", PathError::Fragment),
            ("/ledgers/x#", PathError::Fragment),
            ("/...", PathError::LookAlike),
            ("/ledgers/..%20/balances", PathError::LookAlike),
            ("/ledgers/.. /balances", PathError::LookAlike),
            ("/ledgers/%EF%BC%8E%EF%BC%8E/balances", PathError::LookAlike),
            ("/ledgers/\u{2025}/balances", PathError::LookAlike),
            ("/ledgers/..%E3%80%82/balances", PathError::LookAlike),
            ("/ledgers/..%EF%BC%8Fbalances", PathError::LookAlike),
            ("/ledgers/..%C2%A5balances", PathError::LookAlike),
        ];
        for (target, expected) in cases {
            assert_eq!(canonical(target), Err(expected), "{target:?}");
        }
    }

    #[test]
    fn a_lone_percent_sign_stays_encoded() {
        assert_eq!(canonical("/ledgers/%25"), Ok("/ledgers/%25".to_owned()));
        assert_eq!(canonical("/ledgers/%25x"), Ok("/ledgers/%25x".to_owned()));
    }

    #[test]
    fn the_first_segment_names_the_resource() {
        let path = CanonicalPath::parse("/ledgers/x/../y?z").expect("canonical");
        assert_eq!(path.first_segment(), "ledgers");
        assert_eq!(CanonicalPath::parse("/").expect("root").first_segment(), "");
    }
}

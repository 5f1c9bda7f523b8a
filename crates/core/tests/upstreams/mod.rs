//! How real upstreams read a request target, as models: the property test and the fuzz
//! target check that whenever keygate allows a resource, every one of these readings
//! addresses that same resource.

#![allow(dead_code)]

/// One upstream's way of turning a raw target into the path it routes on.
pub struct Upstream {
    /// Who reads it this way.
    pub name: &'static str,
    /// The path it routes on, or `None` where it refuses the target itself.
    pub read: fn(&str) -> Option<String>,
}

/// Routers that decode unreserved characters and route on the path as sent.
fn as_sent(target: &str) -> Option<String> {
    Some(decode(path_of(target), true))
}

/// RFC 3986 §5.2.4 after decoding unreserved characters (actix, hyper-based routers).
fn rfc(target: &str) -> Option<String> {
    Some(remove_dots(&decode(path_of(target), true), false))
}

/// Decode everything, merge slashes, resolve dots (nginx, Python's http.server).
fn decoding_merging(target: &str) -> Option<String> {
    Some(remove_dots(&decode(path_of(target), false), true))
}

/// Strip `;` parameters from each segment, then decode and resolve dots (Tomcat, Jetty).
fn parameter_stripping(target: &str) -> Option<String> {
    let stripped: Vec<&str> = path_of(target)
        .split('/')
        .map(|segment| segment.split(';').next().unwrap_or_default())
        .collect();
    Some(remove_dots(&decode(&stripped.join("/"), false), false))
}

/// Backslashes are separators too (IIS, and Windows file servers).
fn backslash_separating(target: &str) -> Option<String> {
    let decoded = decode(path_of(target), false).replace('\\', "/");
    Some(remove_dots(&decoded, true))
}

/// Windows: look-alike characters mapped to ASCII, backslashes as separators, and
/// trailing dots and spaces trimmed from each segment.
fn windows(target: &str) -> Option<String> {
    let decoded = decode(path_of(target), false)
        .replace(
            ['\u{FF0E}', '\u{2024}', '\u{FE52}', '\u{3002}', '\u{FF61}'],
            ".",
        )
        .replace('\u{2025}', "..")
        .replace('\u{2026}', "...")
        .replace(['\u{FF0F}', '\u{2215}'], "/")
        .replace(['\u{FF3C}', '\u{A5}', '\u{20A9}', '\u{29F5}', '\\'], "/");
    let trimmed: Vec<&str> = decoded
        .split('/')
        .map(|segment| match segment.trim_end_matches(['.', ' ']) {
            // Windows reads a segment of dots as the dot segment it starts with.
            "" if segment.starts_with("..") => "..",
            "" if segment.starts_with('.') => ".",
            kept => kept,
        })
        .collect();
    Some(remove_dots(&trimmed.join("/"), true))
}

/// Decode twice (a proxy and then an application, each decoding once).
fn decoding_twice(target: &str) -> Option<String> {
    Some(remove_dots(
        &decode(&decode(path_of(target), false), false),
        false,
    ))
}

/// Every model.
pub const UPSTREAMS: [Upstream; 7] = [
    Upstream {
        name: "as sent",
        read: as_sent,
    },
    Upstream {
        name: "RFC 3986",
        read: rfc,
    },
    Upstream {
        name: "decoding and merging slashes",
        read: decoding_merging,
    },
    Upstream {
        name: "stripping ; parameters",
        read: parameter_stripping,
    },
    Upstream {
        name: "backslash as separator",
        read: backslash_separating,
    },
    Upstream {
        name: "decoding twice",
        read: decoding_twice,
    },
    Upstream {
        name: "Windows",
        read: windows,
    },
];

/// The path: before the query. Some upstreams (Go's `path.Clean` on a parsed URL) keep
/// a `#` and what follows as part of the path.
fn path_of(target: &str) -> &str {
    target.split('?').next().unwrap_or_default()
}

fn decode(text: &str, unreserved_only: bool) -> String {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut index = 0;
    while index < bytes.len() {
        let escaped = (bytes[index] == b'%')
            .then(|| bytes.get(index + 1..index + 3))
            .flatten()
            .and_then(|hex| std::str::from_utf8(hex).ok())
            .and_then(|hex| u8::from_str_radix(hex, 16).ok());
        match escaped {
            Some(value)
                if !unreserved_only
                    || value.is_ascii_alphanumeric()
                    || b"-._~".contains(&value) =>
            {
                out.push(value);
                index += 3;
            }
            _ => {
                out.push(bytes[index]);
                index += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

fn remove_dots(path: &str, merge_slashes: bool) -> String {
    let mut kept: Vec<&str> = Vec::new();
    for segment in path.trim_start_matches('/').split('/') {
        match segment {
            "." => {}
            ".." => {
                kept.pop();
            }
            "" if merge_slashes => {}
            other => kept.push(other),
        }
    }
    format!("/{}", kept.join("/"))
}

/// The first segment of a routed path.
pub fn first_segment(path: &str) -> &str {
    path.trim_start_matches('/')
        .split('/')
        .next()
        .unwrap_or_default()
}

//! The original request a gateway asks about: its method and its path as the upstream
//! will read it, from exactly one family of headers.
//!
//! nginx sends `X-Original-Method`/`X-Original-URI`; Traefik and Caddy send
//! `X-Forwarded-Method`/`X-Forwarded-Uri`. A gateway that passes its client's headers
//! through may deliver the client's own copy of the other family beside its real one, so a
//! request that carries headers of both families, or any of them twice, is refused rather
//! than guessed at.

use actix_web::http::header::{HeaderMap, HeaderName};
use keygate_core::{CanonicalPath, PathError, ValidationError};

use crate::error::GuardError;

/// One way a gateway names the original method and URI.
struct Family {
    /// The headers' names as errors spell them.
    method: &'static str,
    uri: &'static str,
    /// The same names, parsed once rather than on every lookup.
    method_header: HeaderName,
    uri_header: HeaderName,
    gateway: &'static str,
}

static FAMILIES: [Family; 2] = [
    Family {
        method: "X-Original-Method",
        uri: "X-Original-URI",
        method_header: HeaderName::from_static("x-original-method"),
        uri_header: HeaderName::from_static("x-original-uri"),
        gateway: "nginx",
    },
    Family {
        method: "X-Forwarded-Method",
        uri: "X-Forwarded-Uri",
        method_header: HeaderName::from_static("x-forwarded-method"),
        uri_header: HeaderName::from_static("x-forwarded-uri"),
        gateway: "Traefik, Caddy",
    },
];

/// The longest method accepted; real ones are a few letters.
const MAX_METHOD: usize = 32;

/// The request a gateway is about to pass on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OriginalRequest {
    /// The method, exactly as the client sent it (methods are case-sensitive).
    pub method: String,
    /// The path as the upstream will read it.
    pub path: CanonicalPath,
}

impl OriginalRequest {
    /// Reads the original request from a gateway's headers.
    pub fn from_headers(headers: &HeaderMap) -> Result<Self, GuardError> {
        let mut present = FAMILIES.iter().filter(|family| {
            headers.contains_key(&family.method_header) || headers.contains_key(&family.uri_header)
        });
        let family = match (present.next(), present.next()) {
            (Some(family), None) => family,
            (None, _) => {
                return Err(GuardError::Malformed(
                    "X-Original-Method and X-Original-URI (nginx), or X-Forwarded-Method and \
                     X-Forwarded-Uri (Traefik, Caddy), are required"
                        .into(),
                ));
            }
            (Some(_), Some(other)) => {
                return Err(ValidationError::new(
                    other.uri,
                    "the original request is named by both X-Original-* and X-Forwarded-* \
                     headers; a gateway must send one family and drop its client's copies",
                )
                .into());
            }
        };
        let method = single(
            headers,
            &family.method_header,
            family.method,
            family.gateway,
        )?;
        let uri = single(headers, &family.uri_header, family.uri, family.gateway)?;
        Self::new(method, uri, family.method, family.uri)
    }

    /// The original request from its `method` and request `target` (path and query), as
    /// every gateway entry point reads it: the method must be an HTTP token, the path is
    /// judged as the upstream will read it, and a `_method` query parameter is refused.
    /// Errors name `method_field` or `target_field`.
    pub fn new(
        method: &str,
        target: &str,
        method_field: &'static str,
        target_field: &'static str,
    ) -> Result<Self, GuardError> {
        if method.is_empty() || method.len() > MAX_METHOD || !method.bytes().all(is_token_byte) {
            return Err(ValidationError::new(method_field, "is not an HTTP method").into());
        }
        let path = canonical(target, target_field)?;
        if let Some((_, query)) = target.split_once('?') {
            crate::middleware::refuse_method_parameter(query, target_field)?;
        }
        Ok(OriginalRequest {
            method: method.to_owned(),
            path,
        })
    }
}

/// `target` as the upstream will read it, or a 400 naming `field`.
pub fn canonical(target: &str, field: &'static str) -> Result<CanonicalPath, GuardError> {
    CanonicalPath::parse(target)
        .map_err(|error: PathError| ValidationError::new(field, error.to_string()).into())
}

/// The one value of header `header` (spelled `name` in errors), required.
fn single<'a>(
    headers: &'a HeaderMap,
    header: &HeaderName,
    name: &'static str,
    gateway: &str,
) -> Result<&'a str, GuardError> {
    let mut values = headers.get_all(header);
    let value = values
        .next()
        .ok_or_else(|| GuardError::Malformed(format!("{name} ({gateway}) is required")))?;
    if values.next().is_some() {
        return Err(ValidationError::new(name, "must be sent once").into());
    }
    value
        .to_str()
        .map_err(|_| ValidationError::new(name, "is not valid text").into())
}

/// A character of an HTTP token (RFC 9110 §5.6.2).
fn is_token_byte(byte: u8) -> bool {
    byte.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&byte)
}

#[cfg(test)]
mod tests {
    use super::*;
    use actix_web::http::header::{HeaderName, HeaderValue};

    fn headers(pairs: &[(&str, &str)]) -> HeaderMap {
        let mut map = HeaderMap::new();
        for (name, value) in pairs {
            map.append(
                HeaderName::try_from(*name).expect("a header name"),
                HeaderValue::from_str(value).expect("a header value"),
            );
        }
        map
    }

    fn field(error: GuardError) -> &'static str {
        match error {
            GuardError::Validation(error) => error.field,
            other => panic!("a validation error, got {other:?}"),
        }
    }

    #[test]
    fn either_family_names_the_original_request() {
        for (method, uri) in FAMILIES.iter().map(|f| (f.method, f.uri)) {
            let original =
                OriginalRequest::from_headers(&headers(&[(method, "GET"), (uri, "/ledgers/x?y")]))
                    .expect("readable");
            assert_eq!(original.method, "GET");
            assert_eq!(original.path.as_str(), "/ledgers/x");
        }
    }

    #[test]
    fn both_families_at_once_are_refused() {
        let forged = headers(&[
            ("X-Original-Method", "GET"),
            ("X-Original-URI", "/ledgers"),
            ("X-Forwarded-Method", "DELETE"),
            ("X-Forwarded-Uri", "/balances/b1"),
        ]);
        let error = OriginalRequest::from_headers(&forged).expect_err("ambiguous");
        assert_eq!(field(error), "X-Forwarded-Uri");
        let half = headers(&[
            ("X-Original-Method", "GET"),
            ("X-Forwarded-Uri", "/balances/b1"),
        ]);
        assert!(OriginalRequest::from_headers(&half).is_err());
    }

    #[test]
    fn a_header_sent_twice_is_refused() {
        let twice = headers(&[
            ("X-Original-Method", "GET"),
            ("X-Original-URI", "/ledgers"),
            ("X-Original-URI", "/balances"),
        ]);
        let error = OriginalRequest::from_headers(&twice).expect_err("ambiguous");
        assert_eq!(field(error), "X-Original-URI");
    }

    #[test]
    fn odd_methods_and_paths_name_their_header() {
        let cases = [
            ("G ET", "/ledgers", "X-Original-Method"),
            ("", "/ledgers", "X-Original-Method"),
            ("GET", "/ledgers/../balances", "X-Original-URI"),
            ("GET", "ledgers", "X-Original-URI"),
        ];
        for (method, uri, expected) in cases {
            let error = OriginalRequest::from_headers(&headers(&[
                ("X-Original-Method", method),
                ("X-Original-URI", uri),
            ]))
            .expect_err("refused");
            assert_eq!(field(error), expected, "{method:?} {uri:?}");
        }
    }

    #[test]
    fn methods_keep_their_case() {
        let original = OriginalRequest::from_headers(&headers(&[
            ("X-Original-Method", "get"),
            ("X-Original-URI", "/ledgers"),
        ]))
        .expect("readable");
        assert_eq!(original.method, "get");
    }
}

//! How a request maps onto the scope vocabulary: its method to an [`Action`], its path to
//! a [`Resource`].

use crate::path::CanonicalPath;
use crate::scope::{Action, Resource};

/// The action a request method performs, or `None` for methods no API key may use.
pub fn action_for_method(method: &str) -> Option<Action> {
    match method {
        "GET" | "HEAD" => Some(Action::Read),
        "POST" | "PUT" | "PATCH" => Some(Action::Write),
        "DELETE" => Some(Action::Delete),
        _ => None,
    }
}

/// Path segments that name a resource under another name.
const ALIASES: [(&str, Resource); 3] = [
    ("mocked-account", Resource::Accounts),
    ("multi-search", Resource::Search),
    ("refund-transaction", Resource::Transactions),
];

/// Whether `segment` is one of Blnk's built-in path aliases.
pub fn is_builtin_alias(segment: &str) -> bool {
    ALIASES.iter().any(|(alias, _)| *alias == segment)
}

/// The resource a request path addresses: its first segment, through Blnk's aliases.
/// `None` when that segment names no resource (the wildcard `*` is not a path).
/// The path is taken as it is: a gateway's original path is made canonical first
/// ([`resource_for`]).
pub fn resource_for_path(path: &str) -> Option<Resource> {
    let first = path
        .strip_prefix('/')
        .unwrap_or(path)
        .split(['/', '?', '#'])
        .next()
        .unwrap_or_default();
    resource_for_segment(first)
}

/// The resource a canonical path addresses.
pub fn resource_for(path: &CanonicalPath) -> Option<Resource> {
    resource_for_segment(path.first_segment())
}

/// The resource a path's first segment names, through Blnk's aliases and the configured
/// catalogue.
pub fn resource_for_segment(first: &str) -> Option<Resource> {
    if let Some((_, resource)) = ALIASES.iter().find(|(alias, _)| *alias == first) {
        return Some(*resource);
    }
    if let Some(resource) = crate::catalogue::alias(first) {
        return Some(resource);
    }
    match Resource::try_from(first) {
        Ok(Resource::All) | Err(_) => None,
        Ok(resource) => Some(resource),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn methods_map_to_actions() {
        let cases = [
            ("GET", Some(Action::Read)),
            ("HEAD", Some(Action::Read)),
            ("POST", Some(Action::Write)),
            ("PUT", Some(Action::Write)),
            ("PATCH", Some(Action::Write)),
            ("DELETE", Some(Action::Delete)),
            ("OPTIONS", None),
            ("TRACE", None),
            ("CONNECT", None),
            ("get", None),
            ("", None),
        ];
        for (method, expected) in cases {
            assert_eq!(action_for_method(method), expected, "{method}");
        }
    }

    #[test]
    fn paths_map_to_resources() {
        let cases = [
            ("/ledgers", Some(Resource::Ledgers)),
            ("/ledgers/ldg_1", Some(Resource::Ledgers)),
            ("/ledgers/", Some(Resource::Ledgers)),
            ("ledgers", Some(Resource::Ledgers)),
            ("/balances/b/history", Some(Resource::Balances)),
            ("/balance-monitors/x", Some(Resource::BalanceMonitors)),
            ("/api-keys", Some(Resource::ApiKeys)),
            ("/api-keys/api_key_1", Some(Resource::ApiKeys)),
            ("/mocked-account", Some(Resource::Accounts)),
            ("/multi-search", Some(Resource::Search)),
            ("/refund-transaction/txn_1", Some(Resource::Transactions)),
            ("/search?q=1", Some(Resource::Search)),
            ("/", None),
            ("", None),
            ("/*", None),
            ("/ledger", None),
            ("/Ledgers", None),
            ("//ledgers", None),
            ("/unknown/ledgers", None),
        ];
        for (path, expected) in cases {
            assert_eq!(resource_for_path(path), expected, "{path:?}");
        }
    }
}

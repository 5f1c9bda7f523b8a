//! Scopes: `resource:action` pairs, their parser, and the algebra of `permits` and `covers`.

use std::fmt;

use serde::{Deserialize, Serialize};
use thiserror::Error;

/// A protected resource, named by the first segment of a request path; `*` is all of them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Resource {
    /// `*`: every resource.
    All,
    /// `ledgers`
    Ledgers,
    /// `balances`
    Balances,
    /// `accounts`
    Accounts,
    /// `identities`
    Identities,
    /// `transactions`
    Transactions,
    /// `balance-monitors`
    BalanceMonitors,
    /// `hooks`
    Hooks,
    /// `api-keys`
    ApiKeys,
    /// `search`
    Search,
    /// `reconciliation`
    Reconciliation,
    /// `metadata`
    Metadata,
    /// `backup`
    Backup,
    /// `verify`: keygate's own `POST /verify`, for applications that check keys in code.
    Verify,
    /// A resource added to the catalogue by configuration, to guard APIs other than
    /// Blnk's (see [`crate::catalogue`]).
    Custom(&'static str),
}

impl Resource {
    /// Every built-in resource (Blnk's catalogue), the wildcard first.
    pub const ALL: [Resource; 14] = [
        Resource::All,
        Resource::Ledgers,
        Resource::Balances,
        Resource::Accounts,
        Resource::Identities,
        Resource::Transactions,
        Resource::BalanceMonitors,
        Resource::Hooks,
        Resource::ApiKeys,
        Resource::Search,
        Resource::Reconciliation,
        Resource::Metadata,
        Resource::Backup,
        Resource::Verify,
    ];

    /// The resource's name as it appears in scopes and paths.
    pub const fn as_str(self) -> &'static str {
        match self {
            Resource::All => "*",
            Resource::Ledgers => "ledgers",
            Resource::Balances => "balances",
            Resource::Accounts => "accounts",
            Resource::Identities => "identities",
            Resource::Transactions => "transactions",
            Resource::BalanceMonitors => "balance-monitors",
            Resource::Hooks => "hooks",
            Resource::ApiKeys => "api-keys",
            Resource::Search => "search",
            Resource::Reconciliation => "reconciliation",
            Resource::Metadata => "metadata",
            Resource::Backup => "backup",
            Resource::Verify => "verify",
            Resource::Custom(name) => name,
        }
    }

    /// Whether this resource, as a scope's resource, includes `other`.
    pub fn includes(self, other: Resource) -> bool {
        self == Resource::All || self == other
    }
}

impl TryFrom<&str> for Resource {
    type Error = ScopeError;

    fn try_from(name: &str) -> Result<Self, ScopeError> {
        Resource::ALL
            .into_iter()
            .find(|resource| resource.as_str() == name)
            .or_else(|| crate::catalogue::custom_resource(name))
            .ok_or_else(|| ScopeError::UnknownResource(name.to_owned()))
    }
}

impl fmt::Display for Resource {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// What a request does to a resource; `*` is every action.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Action {
    /// `*`: every action.
    All,
    /// `read`: GET and HEAD.
    Read,
    /// `write`: POST, PUT and PATCH.
    Write,
    /// `delete`: DELETE.
    Delete,
}

impl Action {
    /// Every action, the wildcard first.
    pub const ALL: [Action; 4] = [Action::All, Action::Read, Action::Write, Action::Delete];

    /// The action's name as it appears in scopes.
    pub const fn as_str(self) -> &'static str {
        match self {
            Action::All => "*",
            Action::Read => "read",
            Action::Write => "write",
            Action::Delete => "delete",
        }
    }

    /// Whether this action, as a scope's action, includes `other`.
    pub fn includes(self, other: Action) -> bool {
        self == Action::All || self == other
    }
}

impl TryFrom<&str> for Action {
    type Error = ScopeError;

    fn try_from(name: &str) -> Result<Self, ScopeError> {
        Action::ALL
            .into_iter()
            .find(|action| action.as_str() == name)
            .ok_or_else(|| ScopeError::UnknownAction(name.to_owned()))
    }
}

impl fmt::Display for Action {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Why a string is not a scope.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum ScopeError {
    /// The string is not of the form `resource:action`.
    #[error("scope {0:?} is not of the form resource:action")]
    Malformed(String),
    /// The resource is not in the catalogue.
    #[error("unknown resource {0:?}")]
    UnknownResource(String),
    /// The action is not read, write, delete or `*`.
    #[error("unknown action {0:?}")]
    UnknownAction(String),
}

/// One permission: an action (or all) on a resource (or all).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Scope {
    /// The resource it applies to.
    pub resource: Resource,
    /// The action it allows.
    pub action: Action,
}

impl Scope {
    /// `*:*`, the scope that permits and covers everything.
    pub const EVERYTHING: Scope = Scope::new(Resource::All, Action::All);

    /// A scope from its parts.
    pub const fn new(resource: Resource, action: Action) -> Self {
        Scope { resource, action }
    }

    /// Whether this scope allows `action` on `resource`.
    pub fn permits(self, resource: Resource, action: Action) -> bool {
        self.resource.includes(resource) && self.action.includes(action)
    }

    /// Whether holding this scope is enough to grant `other`: everything `other`
    /// permits, this permits too.
    pub fn covers(self, other: Scope) -> bool {
        self.resource.includes(other.resource) && self.action.includes(other.action)
    }
}

impl TryFrom<&str> for Scope {
    type Error = ScopeError;

    fn try_from(text: &str) -> Result<Self, ScopeError> {
        let mut parts = text.split(':');
        match (parts.next(), parts.next(), parts.next()) {
            (Some(resource), Some(action), None) => Ok(Scope::new(
                Resource::try_from(resource)?,
                Action::try_from(action)?,
            )),
            _ => Err(ScopeError::Malformed(text.to_owned())),
        }
    }
}

impl std::str::FromStr for Scope {
    type Err = ScopeError;

    fn from_str(text: &str) -> Result<Self, ScopeError> {
        Scope::try_from(text)
    }
}

impl fmt::Display for Scope {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}", self.resource, self.action)
    }
}

impl Serialize for Scope {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for Scope {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let text = <std::borrow::Cow<'de, str>>::deserialize(deserializer)?;
        Scope::try_from(text.as_ref()).map_err(serde::de::Error::custom)
    }
}

/// The scopes of one key: no duplicates, in the order they were first given.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(from = "Vec<Scope>", into = "Vec<Scope>")]
pub struct ScopeSet(Vec<Scope>);

impl ScopeSet {
    /// Parses every string, failing on the first that is not a scope.
    pub fn parse<S: AsRef<str>>(texts: &[S]) -> Result<Self, ScopeError> {
        texts
            .iter()
            .map(|text| Scope::try_from(text.as_ref()))
            .collect::<Result<Vec<_>, _>>()
            .map(ScopeSet::from)
    }

    /// Whether any scope in the set allows `action` on `resource`.
    pub fn permits(&self, resource: Resource, action: Action) -> bool {
        self.0.iter().any(|scope| scope.permits(resource, action))
    }

    /// Whether some scope in the set covers `scope`.
    pub fn covers(&self, scope: Scope) -> bool {
        self.0.iter().any(|own| own.covers(scope))
    }

    /// The first scope of `requested` that this set does not cover, if any.
    pub fn first_uncovered(&self, requested: &ScopeSet) -> Option<Scope> {
        requested.iter().find(|scope| !self.covers(*scope))
    }

    /// The scopes, in order.
    pub fn iter(&self) -> impl Iterator<Item = Scope> + '_ {
        self.0.iter().copied()
    }

    /// How many distinct scopes the set holds.
    pub fn len(&self) -> usize {
        self.0.len()
    }

    /// Whether the set holds no scope.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

impl From<Vec<Scope>> for ScopeSet {
    fn from(scopes: Vec<Scope>) -> Self {
        let mut unique: Vec<Scope> = Vec::with_capacity(scopes.len());
        for scope in scopes {
            if !unique.contains(&scope) {
                unique.push(scope);
            }
        }
        ScopeSet(unique)
    }
}

impl From<ScopeSet> for Vec<Scope> {
    fn from(set: ScopeSet) -> Self {
        set.0
    }
}

impl FromIterator<Scope> for ScopeSet {
    fn from_iter<I: IntoIterator<Item = Scope>>(iter: I) -> Self {
        ScopeSet::from(iter.into_iter().collect::<Vec<_>>())
    }
}

impl ScopeSet {
    /// The scopes separated by single spaces, the form they are stored in (as
    /// [`Display`](fmt::Display) writes them), built in one allocation: gateways send it
    /// with every admitted request.
    pub fn text(&self) -> String {
        let parts = |scope: &Scope| [scope.resource.as_str(), ":", scope.action.as_str()];
        let length: usize = self
            .0
            .iter()
            .map(|scope| parts(scope).iter().map(|part| part.len()).sum::<usize>() + 1)
            .sum();
        let mut text = String::with_capacity(length);
        for (i, scope) in self.0.iter().enumerate() {
            if i > 0 {
                text.push(' ');
            }
            parts(scope).iter().for_each(|part| text.push_str(part));
        }
        text
    }
}

impl fmt::Display for ScopeSet {
    /// The scopes separated by single spaces, the form they are stored in.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, scope) in self.0.iter().enumerate() {
            if i > 0 {
                f.write_str(" ")?;
            }
            write!(f, "{scope}")?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn scope(text: &str) -> Scope {
        Scope::try_from(text).expect("test scope parses")
    }

    fn set(texts: &[&str]) -> ScopeSet {
        ScopeSet::parse(texts).expect("test scopes parse")
    }

    #[test]
    fn every_catalogued_scope_round_trips_through_its_text() {
        for resource in Resource::ALL {
            for action in Action::ALL {
                let scope = Scope::new(resource, action);
                assert_eq!(Scope::try_from(scope.to_string().as_str()), Ok(scope));
            }
        }
    }

    #[test]
    fn junk_is_refused_by_the_parser() {
        let cases: &[(&str, ScopeError)] = &[
            ("", ScopeError::Malformed("".into())),
            ("ledgers", ScopeError::Malformed("ledgers".into())),
            (
                "ledgers:read:x",
                ScopeError::Malformed("ledgers:read:x".into()),
            ),
            (
                "ledgers::read",
                ScopeError::Malformed("ledgers::read".into()),
            ),
            (":read", ScopeError::UnknownResource("".into())),
            ("ledgers:", ScopeError::UnknownAction("".into())),
            ("ledger:read", ScopeError::UnknownResource("ledger".into())),
            (
                "Ledgers:read",
                ScopeError::UnknownResource("Ledgers".into()),
            ),
            (
                " ledgers:read",
                ScopeError::UnknownResource(" ledgers".into()),
            ),
            ("ledgers:read ", ScopeError::UnknownAction("read ".into())),
            ("ledgers:READ", ScopeError::UnknownAction("READ".into())),
            ("ledgers:update", ScopeError::UnknownAction("update".into())),
            (
                "mocked-account:read",
                ScopeError::UnknownResource("mocked-account".into()),
            ),
            ("**:*", ScopeError::UnknownResource("**".into())),
        ];
        for (text, expected) in cases {
            assert_eq!(Scope::try_from(*text).as_ref(), Err(expected), "{text:?}");
        }
    }

    #[test]
    fn permits_follows_blnk_semantics() {
        use Action::*;
        use Resource::*;
        let cases: &[(&[&str], Resource, Action, bool)] = &[
            (&["ledgers:read"], Ledgers, Read, true),
            (&["ledgers:read"], Ledgers, Write, false),
            (&["ledgers:read"], Balances, Read, false),
            (&["ledgers:*"], Ledgers, Delete, true),
            (&["ledgers:*"], Balances, Delete, false),
            (&["*:read"], Transactions, Read, true),
            (&["*:read"], Transactions, Write, false),
            (&["*:*"], Backup, Delete, true),
            (&["balances:write", "ledgers:read"], Ledgers, Read, true),
            (&["balances:write", "ledgers:read"], Balances, Read, false),
            (&["api-keys:write"], ApiKeys, Write, true),
            (&[], Ledgers, Read, false),
        ];
        for (scopes, resource, action, expected) in cases {
            assert_eq!(
                set(scopes).permits(*resource, *action),
                *expected,
                "{scopes:?} on {resource}:{action}"
            );
        }
    }

    #[test]
    fn covers_follows_the_granting_rule() {
        let cases: &[(&str, &str, bool)] = &[
            ("ledgers:read", "ledgers:read", true),
            ("ledgers:read", "ledgers:write", false),
            ("ledgers:read", "ledgers:*", false),
            ("ledgers:read", "*:read", false),
            ("ledgers:*", "ledgers:delete", true),
            ("ledgers:*", "*:delete", false),
            ("*:read", "balances:read", true),
            ("*:read", "balances:*", false),
            ("*:read", "*:*", false),
            ("*:*", "*:*", true),
            ("*:*", "backup:delete", true),
        ];
        for (own, requested, expected) in cases {
            assert_eq!(
                scope(own).covers(scope(requested)),
                *expected,
                "{own} covers {requested}"
            );
        }
    }

    #[test]
    fn a_set_keeps_first_occurrences_in_order() {
        let scopes = set(&["ledgers:read", "balances:write", "ledgers:read", "*:*"]);
        assert_eq!(scopes.to_string(), "ledgers:read balances:write *:*");
    }

    #[test]
    fn first_uncovered_names_the_escalating_scope() {
        let own = set(&["ledgers:*", "balances:read"]);
        let requested = set(&["ledgers:write", "balances:write", "*:read"]);
        assert_eq!(
            own.first_uncovered(&requested),
            Some(scope("balances:write"))
        );
        assert_eq!(own.first_uncovered(&set(&["ledgers:delete"])), None);
    }

    #[test]
    fn scopes_serialize_as_their_strings() {
        let scopes = set(&["ledgers:read", "*:*", "ledgers:read"]);
        let json = serde_json::to_string(&scopes).expect("serializes");
        assert_eq!(json, r#"["ledgers:read","*:*"]"#);
        assert_eq!(
            serde_json::from_str::<ScopeSet>(&json).expect("parses"),
            scopes
        );
        assert!(serde_json::from_str::<ScopeSet>(r#"["ledgers:update"]"#).is_err());
    }

    fn any_scope() -> impl Strategy<Value = Scope> {
        (0..Resource::ALL.len(), 0..Action::ALL.len())
            .prop_map(|(r, a)| Scope::new(Resource::ALL[r], Action::ALL[a]))
    }

    fn any_set() -> impl Strategy<Value = ScopeSet> {
        proptest::collection::vec(any_scope(), 0..6).prop_map(ScopeSet::from)
    }

    fn every_scope() -> impl Iterator<Item = Scope> {
        Resource::ALL.into_iter().flat_map(|resource| {
            Action::ALL
                .into_iter()
                .map(move |action| Scope::new(resource, action))
        })
    }

    #[test]
    fn covers_is_reflexive_and_transitive_over_the_whole_catalogue() {
        for a in every_scope() {
            assert!(a.covers(a), "{a} covers itself");
            for b in every_scope().filter(|b| a.covers(*b)) {
                for c in every_scope().filter(|c| b.covers(*c)) {
                    assert!(a.covers(c), "{a} covers {b} covers {c}");
                }
            }
        }
    }

    /// A set and a scope that one of its members covers: the member, narrowed or not.
    fn set_and_covered_scope() -> impl Strategy<Value = (ScopeSet, Scope)> {
        (
            proptest::collection::vec(any_scope(), 1..6),
            any::<prop::sample::Index>(),
            any_scope(),
            any::<(bool, bool)>(),
        )
            .prop_map(|(scopes, pick, other, (narrow_resource, narrow_action))| {
                let mut covered = scopes[pick.index(scopes.len())];
                if narrow_resource && covered.resource == Resource::All {
                    covered.resource = other.resource;
                }
                if narrow_action && covered.action == Action::All {
                    covered.action = other.action;
                }
                (ScopeSet::from(scopes), covered)
            })
    }

    proptest! {
        #[test]
        fn text_is_what_display_writes_in_one_allocation(set in any_set()) {
            let text = set.text();
            prop_assert_eq!(&text, &set.to_string());
            prop_assert_eq!(text.capacity(), text.len() + usize::from(!set.is_empty()));
        }

        #[test]
        fn whatever_a_holder_may_grant_it_was_permitted((own, requested) in set_and_covered_scope()) {
            prop_assert!(own.covers(requested));
            for resource in Resource::ALL {
                for action in Action::ALL {
                    if requested.permits(resource, action) {
                        prop_assert!(own.permits(resource, action), "{} grants {} but lacks {}:{}", own, requested, resource, action);
                    }
                }
            }
        }

        #[test]
        fn a_grant_that_is_not_covered_permits_something_the_holder_lacks(own in any_set(), requested in any_scope()) {
            if !own.covers(requested) {
                let lacking = Resource::ALL.into_iter().any(|resource| {
                    Action::ALL.into_iter().any(|action| requested.permits(resource, action) && !own.permits(resource, action))
                });
                prop_assert!(lacking, "{} refuses {} needlessly", own, requested);
            }
        }

        #[test]
        fn covers_is_reflexive(scope in any_scope()) {
            prop_assert!(scope.covers(scope));
        }

        #[test]
        fn covers_is_transitive(a in any_scope(), b in any_scope(), c in any_scope()) {
            if a.covers(b) && b.covers(c) {
                prop_assert!(a.covers(c));
            }
        }

        #[test]
        fn everything_covers_and_permits_all(scope in any_scope()) {
            prop_assert!(Scope::EVERYTHING.covers(scope));
            prop_assert!(Scope::EVERYTHING.permits(scope.resource, scope.action));
        }

        #[test]
        fn a_set_round_trips_through_its_stored_form(scopes in any_set()) {
            let stored = scopes.to_string();
            let texts: Vec<&str> = stored.split_whitespace().collect();
            prop_assert_eq!(ScopeSet::parse(&texts), Ok(scopes));
        }

        #[test]
        fn arbitrary_text_never_panics_the_parser(text in ".{0,40}") {
            if let Ok(scope) = Scope::try_from(text.as_str()) {
                prop_assert_eq!(scope.to_string(), text);
            }
        }
    }
}

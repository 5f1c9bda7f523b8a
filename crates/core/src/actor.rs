//! Who made a change to a key, as the audit trail records it.

use std::fmt;

use crate::api_key::ApiKeyId;
use crate::principal::Principal;

/// The author of a change.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Actor {
    /// The master key (or any caller with secure mode off).
    Master,
    /// An operator working on the database directly, through the command line.
    Cli,
    /// An API key acting within its scopes.
    Key(ApiKeyId),
    /// `keygate keys import`: keys brought from elsewhere, their secrets kept.
    Import,
}

impl Actor {
    /// The actor as the audit trail records it (the inverse of its `Display`).
    pub fn parse(text: &str) -> Self {
        match text {
            "master" => Actor::Master,
            "cli" => Actor::Cli,
            "import" => Actor::Import,
            id => Actor::Key(ApiKeyId::new(id)),
        }
    }
}

impl From<&Principal> for Actor {
    fn from(principal: &Principal) -> Self {
        match principal {
            Principal::Master => Actor::Master,
            Principal::Key(key) => Actor::Key(key.id.clone()),
        }
    }
}

impl fmt::Display for Actor {
    /// `master`, `cli`, `import`, or the acting key's id.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Actor::Master => f.write_str("master"),
            Actor::Cli => f.write_str("cli"),
            Actor::Import => f.write_str("import"),
            Actor::Key(id) => f.write_str(id.as_str()),
        }
    }
}

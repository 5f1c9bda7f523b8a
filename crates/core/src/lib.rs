//! keygate's domain, free of I/O: what a scope is, what a key is, who a caller is, and
//! the rules that decide what a caller may do.
//!
//! A request is judged in three steps, each a pure function here. The presented key is
//! hashed ([`KeyHash`]) and looked up through the [`KeyStore`] port, which the storage
//! crate implements; the result becomes a [`Principal`]: the master key, or an
//! [`ApiKey`]. The request's method and path become an [`Action`] and a [`Resource`]
//! ([`route`]), and the principal's [`ScopeSet`] must permit them. Handlers then apply
//! the owner rules of [`Principal`]: which owner a call acts on, and which scopes a
//! caller may grant.
//!
//! Scopes are closed types: a [`Scope`] can only be built by parsing one of the known
//! `resource:action` strings, so junk never reaches storage or a permission check.

pub mod actor;
pub mod api_key;
pub mod catalogue;
pub mod clock;
pub mod legacy;
pub mod metering;
pub mod path;
pub mod principal;
pub mod route;
pub mod scope;
pub mod secret;
pub mod store;

pub use actor::Actor;
pub use api_key::{ApiKey, ApiKeyId, Change, KeyPatch, KeySpec, KeyStatus, ValidationError};
pub use clock::{Clock, ShiftedClock, SystemClock};
pub use legacy::LegacyHash;
pub use metering::{
    CreditAccount, CreditGrant, CreditRequest, Credits, RateLimit, Refill, RefillInterval,
    UsageCount, UsageOutcome,
};
pub use path::{CanonicalPath, PathError};
pub use principal::{Principal, RuleError};
pub use scope::{Action, Resource, Scope, ScopeError, ScopeSet};
pub use secret::{KeyHash, PlainKey};
pub use store::{
    ChangeCursor, Changes, EventDetails, EventKind, ImportBatch, KeyEvent, KeyShapes, KeyStore,
    NewEvent, StoreError,
};

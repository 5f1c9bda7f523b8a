//! Who is calling, and the rules of what they may do: reach a resource, act for an
//! owner, grant scopes.

use std::sync::Arc;

use thiserror::Error;

use crate::api_key::{ApiKey, KeySpec};
use crate::metering::{Credits, RateLimit};
use crate::scope::{Action, Resource, Scope, ScopeSet};

/// The authenticated caller of a request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Principal {
    /// The configured master key (or any caller when secure mode is off): may do everything.
    Master,
    /// An active API key, confined to its owner and its scopes.
    Key(Arc<ApiKey>),
}

/// Why a principal may not do what it asked.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum RuleError {
    /// The request's path names no known resource.
    #[error("Unknown resource type")]
    UnknownResource,
    /// The request's method maps to no action.
    #[error("Insufficient permissions: method {0} is not available to API keys")]
    MethodNotAllowed(String),
    /// The key's scopes do not permit the action on the resource.
    #[error("Insufficient permissions for {0}")]
    InsufficientPermissions(Scope),
    /// The master key must say which owner it acts on.
    #[error("owner is required")]
    OwnerRequired,
    /// An API key tried to act on another owner's keys.
    #[error("API keys may only manage keys of their own owner")]
    CrossOwnerAccess,
    /// An API key tried to grant a scope it does not hold.
    #[error("Cannot grant scope {0}: it is not covered by the caller's scopes")]
    ScopeEscalation(Scope),
    /// A metered API key tried to give a key more than its own metering allows: a
    /// looser rate limit, none, or credits of its own.
    #[error("Cannot set {0}: it would be looser than the caller's own")]
    MeteringEscalation(&'static str),
}

impl Principal {
    /// May this principal perform `method` on `path`'s resource? The master key may do
    /// anything, anywhere; an API key needs a known resource, a mapped method and a scope
    /// that permits them.
    pub fn authorize(
        &self,
        resource: Option<Resource>,
        action: Result<Action, &str>,
    ) -> Result<(), RuleError> {
        let Principal::Key(key) = self else {
            return Ok(());
        };
        let resource = resource.ok_or(RuleError::UnknownResource)?;
        let action = action.map_err(|method| RuleError::MethodNotAllowed(method.to_owned()))?;
        if key.scopes.permits(resource, action) {
            Ok(())
        } else {
            Err(RuleError::InsufficientPermissions(Scope::new(
                resource, action,
            )))
        }
    }

    /// The owner a management call acts on, from the optional `owner` it named. The master
    /// key must name one; an API key acts on its own owner and may name no other.
    pub fn target_owner<'a>(&'a self, requested: Option<&'a str>) -> Result<&'a str, RuleError> {
        match (self, requested) {
            (Principal::Master, Some(owner)) => Ok(owner),
            (Principal::Master, None) => Err(RuleError::OwnerRequired),
            (Principal::Key(key), None) => Ok(&key.owner_id),
            (Principal::Key(key), Some(owner)) if owner == key.owner_id => Ok(owner),
            (Principal::Key(_), Some(_)) => Err(RuleError::CrossOwnerAccess),
        }
    }

    /// May this principal create a key for `owner_id` carrying `scopes`? An API key only
    /// for its own owner, and only scopes each covered by one of its own.
    pub fn may_grant(&self, owner_id: &str, scopes: &ScopeSet) -> Result<(), RuleError> {
        let Principal::Key(key) = self else {
            return Ok(());
        };
        if owner_id != key.owner_id {
            return Err(RuleError::CrossOwnerAccess);
        }
        match key.scopes.first_uncovered(scopes) {
            Some(scope) => Err(RuleError::ScopeEscalation(scope)),
            None => Ok(()),
        }
    }

    /// Checks, and completes, the metering of a key this principal creates, so that no
    /// key escapes its own metering by minting another: a key with a rate limit creates
    /// keys limited at least as tightly (its own limit when none is asked for), and a
    /// key with credits creates keys that spend its own credits.
    pub fn meter_new_key(&self, spec: &mut KeySpec) -> Result<(), RuleError> {
        let Principal::Key(key) = self else {
            return Ok(());
        };
        if let Some(own) = key.ratelimit {
            match spec.ratelimit {
                None => spec.ratelimit = Some(own),
                Some(asked) if own.covers(&asked) => {}
                Some(_) => return Err(RuleError::MeteringEscalation("ratelimit")),
            }
            // In the creator's window: a key cannot multiply its rate by minting keys.
            spec.ratelimit_bucket = Some(key.rate_bucket().clone());
        }
        if let Some(account) = &key.credits {
            if spec.credits.is_some() {
                return Err(RuleError::MeteringEscalation("credits"));
            }
            spec.credit_pool = Some(account.clone());
        }
        Ok(())
    }

    /// Checks a change of a key's metering by this principal (on itself or another
    /// key): a key with a rate limit may set only limits its own covers, never none;
    /// a key with credits may not set or remove credits.
    pub fn may_meter(
        &self,
        ratelimit: Option<Option<RateLimit>>,
        credits: Option<Option<Credits>>,
    ) -> Result<(), RuleError> {
        let Principal::Key(key) = self else {
            return Ok(());
        };
        if let (Some(own), Some(asked)) = (key.ratelimit, ratelimit)
            && !asked.is_some_and(|asked| own.covers(&asked))
        {
            return Err(RuleError::MeteringEscalation("ratelimit"));
        }
        if key.credits.is_some() && credits.is_some() {
            return Err(RuleError::MeteringEscalation("credits"));
        }
        Ok(())
    }

    /// Checks that this principal's metering covers `target`'s, before it hands out a
    /// key like `target` (a rotation): a key with a rate limit may rotate only keys
    /// limited at least as tightly, and a key with credits only keys spending its own.
    pub fn may_rotate(&self, target: &ApiKey) -> Result<(), RuleError> {
        let Principal::Key(key) = self else {
            return Ok(());
        };
        if let Some(own) = key.ratelimit
            && !target.ratelimit.is_some_and(|theirs| own.covers(&theirs))
        {
            return Err(RuleError::MeteringEscalation("ratelimit"));
        }
        if let Some(own) = &key.credits
            && target.credits.as_ref().map(|theirs| &theirs.pool) != Some(&own.pool)
        {
            return Err(RuleError::MeteringEscalation("credits"));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api_key::KeySpec;
    use crate::secret::PlainKey;
    use chrono::{Duration, Utc};

    fn key_principal(owner: &str, scopes: &[&str]) -> Principal {
        let now = Utc::now();
        let spec =
            KeySpec::new("k", owner, scopes, now + Duration::hours(1), now).expect("valid spec");
        let plain = PlainKey::generate().expect("randomness");
        Principal::Key(Arc::new(ApiKey::issue(spec, &plain, now)))
    }

    fn scopes(texts: &[&str]) -> ScopeSet {
        ScopeSet::parse(texts).expect("valid scopes")
    }

    #[test]
    fn the_master_key_is_authorized_everywhere() {
        assert_eq!(Principal::Master.authorize(None, Err("OPTIONS")), Ok(()));
        assert_eq!(
            Principal::Master.authorize(Some(Resource::Backup), Ok(Action::Delete)),
            Ok(())
        );
    }

    #[test]
    fn an_api_key_is_authorized_by_its_scopes() {
        let reader = key_principal("o", &["ledgers:read"]);
        let cases = [
            (Some(Resource::Ledgers), Ok(Action::Read), Ok(())),
            (
                Some(Resource::Ledgers),
                Ok(Action::Write),
                Err(RuleError::InsufficientPermissions(Scope::new(
                    Resource::Ledgers,
                    Action::Write,
                ))),
            ),
            (None, Ok(Action::Read), Err(RuleError::UnknownResource)),
            (
                Some(Resource::Ledgers),
                Err("OPTIONS"),
                Err(RuleError::MethodNotAllowed("OPTIONS".into())),
            ),
        ];
        for (resource, action, expected) in cases {
            assert_eq!(
                reader.authorize(resource, action),
                expected,
                "{resource:?} {action:?}"
            );
        }
    }

    #[test]
    fn insufficient_permissions_reads_like_blnk() {
        let error =
            RuleError::InsufficientPermissions(Scope::new(Resource::Ledgers, Action::Write));
        assert_eq!(
            error.to_string(),
            "Insufficient permissions for ledgers:write"
        );
    }

    #[test]
    fn target_owner_rules() {
        let key = key_principal("alice", &["api-keys:*"]);
        assert_eq!(Principal::Master.target_owner(Some("bob")), Ok("bob"));
        assert_eq!(
            Principal::Master.target_owner(None),
            Err(RuleError::OwnerRequired)
        );
        assert_eq!(key.target_owner(None), Ok("alice"));
        assert_eq!(key.target_owner(Some("alice")), Ok("alice"));
        assert_eq!(
            key.target_owner(Some("bob")),
            Err(RuleError::CrossOwnerAccess)
        );
    }

    #[test]
    fn granting_rules() {
        type Case<'a> = (&'a [&'a str], &'a str, &'a [&'a str], Result<(), RuleError>);
        let cases: &[Case] = &[
            (&["*:*"], "alice", &["*:*"], Ok(())),
            (
                &["*:*"],
                "bob",
                &["ledgers:read"],
                Err(RuleError::CrossOwnerAccess),
            ),
            (
                &["api-keys:write", "ledgers:read"],
                "alice",
                &["ledgers:read"],
                Ok(()),
            ),
            (
                &["api-keys:write", "ledgers:read"],
                "alice",
                &["ledgers:write"],
                Err(RuleError::ScopeEscalation(Scope::new(
                    Resource::Ledgers,
                    Action::Write,
                ))),
            ),
            (
                &["api-keys:write", "ledgers:read"],
                "alice",
                &["*:*"],
                Err(RuleError::ScopeEscalation(Scope::EVERYTHING)),
            ),
            (
                &["api-keys:write", "*:read"],
                "alice",
                &["balances:read", "*:read"],
                Ok(()),
            ),
            (
                &["api-keys:write", "*:read"],
                "alice",
                &["*:write"],
                Err(RuleError::ScopeEscalation(Scope::new(
                    Resource::All,
                    Action::Write,
                ))),
            ),
        ];
        for (own, owner, requested, expected) in cases {
            let caller = key_principal("alice", own);
            assert_eq!(
                &caller.may_grant(owner, &scopes(requested)),
                expected,
                "{own:?} grants {requested:?}"
            );
        }
        assert_eq!(
            Principal::Master.may_grant("anyone", &scopes(&["*:*"])),
            Ok(())
        );
    }
}

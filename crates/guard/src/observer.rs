//! How the guard reports what it decides, without depending on a metrics library: the
//! embedding app implements [`Observer`] over its own registry.

/// Receives the guard's decisions; every method does nothing unless overridden.
pub trait Observer: Send + Sync + 'static {
    /// An authentication decision: `ok`, or the refusal's error code.
    fn auth_decision(&self, _outcome: &'static str) {}

    /// A key verification answered from memory (`true`) or from the database.
    fn cache(&self, _hit: bool) {}

    /// A bcrypt check of a presented key against a legacy (imported) hash, and whether
    /// it matched. Each costs tens of milliseconds of CPU; a key is checked so once.
    fn legacy_check(&self, _matched: bool) {}

    /// A metered key's request: `allowed`, `rate_limited` or `usage_exceeded`.
    fn metering_decision(&self, _outcome: &'static str) {}

    /// Rate limits began (`true`) or ceased (`false`) to be counted in this process
    /// because Redis could not be reached.
    fn redis_fallback(&self, _falling_back: bool) {}
}

/// An observer that ignores everything.
#[derive(Debug, Default, Clone, Copy)]
pub struct Unobserved;

impl Observer for Unobserved {}

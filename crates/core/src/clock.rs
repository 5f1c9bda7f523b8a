//! Where "now" comes from: the system's clock in the service, a clock that tests can move
//! forward, so that expiry and grace periods are tested without waiting for them.

use std::sync::atomic::{AtomicI64, Ordering};

use chrono::{DateTime, TimeDelta, Utc};

/// A source of the current time.
pub trait Clock: Send + Sync + 'static {
    /// The current time.
    fn now(&self) -> DateTime<Utc>;
}

/// The system's wall clock.
#[derive(Debug, Default, Clone, Copy)]
pub struct SystemClock;

impl Clock for SystemClock {
    fn now(&self) -> DateTime<Utc> {
        Utc::now()
    }
}

/// The system's clock moved forward by an amount that only grows: for tests and
/// simulations that need time to pass faster than it does.
#[derive(Debug, Default)]
pub struct ShiftedClock {
    ahead_ms: AtomicI64,
}

impl ShiftedClock {
    /// Moves this clock `by` further ahead of the system's.
    pub fn advance(&self, by: TimeDelta) {
        self.ahead_ms
            .fetch_add(by.num_milliseconds(), Ordering::SeqCst);
    }
}

impl Clock for ShiftedClock {
    fn now(&self) -> DateTime<Utc> {
        Utc::now() + TimeDelta::milliseconds(self.ahead_ms.load(Ordering::SeqCst))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_shifted_clock_runs_ahead_by_what_it_was_advanced() {
        let clock = ShiftedClock::default();
        let before = Utc::now();
        clock.advance(TimeDelta::hours(2));
        let shifted = clock.now();
        assert!(shifted >= before + TimeDelta::hours(2));
        assert!(shifted < Utc::now() + TimeDelta::hours(2) + TimeDelta::seconds(5));
    }
}

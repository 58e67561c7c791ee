//! The clock: where "now" comes from, passed in rather than read.
//!
//! The decision core never reads the clock; the layers around it (the check
//! listener for a check without `at`, the admin write path for commit times
//! and defaults, the store, the command line) ask the [`Clock`] they were
//! given. The binary gives them [`Clock::system`] and has no way to change
//! it; tests give them a [`Clock::manual`] pinned to an instant of their
//! choosing and move it when they need time to pass, so no test depends on
//! today's date.

use std::sync::Arc;
use std::sync::atomic::{AtomicI64, Ordering::Relaxed};
use std::time::Duration;

use crate::core::time::Instant;

/// Where "now" comes from. Cloning shares it.
#[derive(Debug, Clone, Default)]
pub struct Clock(Source);

#[derive(Debug, Clone, Default)]
enum Source {
    /// The system's wall clock.
    #[default]
    System,
    /// An instant held in memory, moved only by [`Clock::set`] and
    /// [`Clock::advance`].
    Manual(Arc<AtomicI64>),
}

impl Clock {
    /// The system's wall clock.
    pub fn system() -> Clock {
        Clock(Source::System)
    }

    /// A clock that reads `at` until it is moved.
    pub fn manual(at: Instant) -> Clock {
        Clock(Source::Manual(Arc::new(AtomicI64::new(at.as_nanos()))))
    }

    /// The current instant. The system clock outside the range of
    /// [`Instant`] (centuries away) reads as [`Instant::MAX`].
    pub fn now(&self) -> Instant {
        match &self.0 {
            Source::System => Instant::from_timestamp(jiff::Timestamp::now()).unwrap_or(Instant::MAX),
            Source::Manual(at) => Instant::from_nanos(at.load(Relaxed)),
        }
    }

    /// Whether this is the system clock.
    pub fn is_system(&self) -> bool {
        matches!(self.0, Source::System)
    }

    /// Moves a manual clock to `at`; the system clock cannot be moved and
    /// ignores this.
    pub fn set(&self, at: Instant) {
        if let Source::Manual(now) = &self.0 {
            now.store(at.as_nanos(), Relaxed);
        }
    }

    /// Moves a manual clock forward by `d`; the system clock ignores this.
    pub fn advance(&self, d: Duration) {
        if let Source::Manual(now) = &self.0 {
            let nanos = i64::try_from(d.as_nanos()).unwrap_or(i64::MAX);
            let _ = now.fetch_update(Relaxed, Relaxed, |n| Some(n.saturating_add(nanos)));
        }
    }

    /// The current instant as a jiff timestamp (for ages of things).
    pub fn timestamp(&self) -> jiff::Timestamp {
        self.now().to_timestamp()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_manual_clock_stays_where_it_is_put() {
        let at = Instant::from_nanos(1_800_000_000_000_000_000);
        let c = Clock::manual(at);
        assert_eq!(c.now(), at);
        assert_eq!(c.clone().now(), at, "clones share the instant");
        c.advance(Duration::from_secs(2));
        assert_eq!(c.now(), Instant::from_nanos(at.as_nanos() + 2_000_000_000));
        c.set(at);
        assert_eq!(c.now(), at);
        assert!(!c.is_system());
    }

    #[test]
    fn the_system_clock_moves_and_cannot_be_set() {
        let c = Clock::system();
        let before = c.now();
        c.set(Instant::from_nanos(0));
        assert!(c.now() >= before);
        assert!(c.now() > Instant::from_nanos(0));
        assert!(c.is_system());
    }
}

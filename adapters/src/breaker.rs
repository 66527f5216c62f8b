//! A circuit breaker per backend: after `failures` consecutive faults the backend is not called
//! for `open_for`; then one trial call is let through (half-open), and its outcome closes or
//! re-opens the circuit. A backend that is down then costs a fan-out nothing instead of a
//! time-out on every request.

use std::sync::Mutex;
use std::time::{Duration, Instant};

#[derive(Debug)]
pub struct Breaker {
    failures: u32,
    open_for: Duration,
    state: Mutex<State>,
}

#[derive(Debug, Clone, Copy, PartialEq)]
enum State {
    Closed {
        failures: u32,
    },
    Open {
        until: Instant,
    },
    /// A trial call is out; others are refused until it returns.
    HalfOpen,
}

impl Breaker {
    pub fn new(failures: u32, open_for: Duration) -> Breaker {
        Breaker {
            failures: failures.max(1),
            open_for,
            state: Mutex::new(State::Closed { failures: 0 }),
        }
    }

    /// Whether a call may go out now.
    pub fn allow(&self) -> bool {
        self.allow_at(Instant::now())
    }

    fn allow_at(&self, now: Instant) -> bool {
        let mut s = self.state.lock().expect("breaker lock");
        match *s {
            State::Closed { .. } => true,
            State::Open { until } if now >= until => {
                *s = State::HalfOpen;
                true
            }
            State::Open { .. } | State::HalfOpen => false,
        }
    }

    /// The outcome of a call that [`allow`](Self::allow) let through.
    pub fn record(&self, ok: bool) {
        self.record_at(ok, Instant::now())
    }

    fn record_at(&self, ok: bool, now: Instant) {
        let mut s = self.state.lock().expect("breaker lock");
        *s = match (*s, ok) {
            (_, true) => State::Closed { failures: 0 },
            (State::Closed { failures }, false) if failures + 1 < self.failures => State::Closed {
                failures: failures + 1,
            },
            (_, false) => State::Open {
                until: now + self.open_for,
            },
        };
    }

    /// Whether calls are being refused.
    pub fn is_open(&self) -> bool {
        !matches!(
            *self.state.lock().expect("breaker lock"),
            State::Closed { .. }
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn opens_after_consecutive_failures_and_recovers_through_one_trial() {
        let b = Breaker::new(3, Duration::from_secs(10));
        let t0 = Instant::now();
        for _ in 0..2 {
            assert!(b.allow_at(t0));
            b.record_at(false, t0);
        }
        // A success resets the count.
        b.record_at(true, t0);
        for _ in 0..3 {
            assert!(b.allow_at(t0));
            b.record_at(false, t0);
        }
        assert!(!b.allow_at(t0 + Duration::from_secs(9)), "open");
        let later = t0 + Duration::from_secs(10);
        assert!(b.allow_at(later), "one trial after the open period");
        assert!(!b.allow_at(later), "only one trial at a time");
        b.record_at(false, later);
        assert!(!b.allow_at(later + Duration::from_secs(1)), "re-opened");
        let again = later + Duration::from_secs(10);
        assert!(b.allow_at(again));
        b.record_at(true, again);
        assert!(b.allow_at(again) && b.allow_at(again), "closed again");
        assert!(!b.is_open());
    }
}

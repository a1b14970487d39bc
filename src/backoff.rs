//! Capped, jittered exponential backoff: the one policy behind every retry loop of the service
//! (the writer's database writes, start-up connections, dead letters).

use std::time::Duration;

/// Delays that double from `first` up to `max`, each drawn from 50–100% of its step, so that
/// instances failing together do not retry in step.
#[derive(Debug, Clone)]
pub(crate) struct Backoff {
    first: Duration,
    max: Duration,
    failures: u32,
}

impl Backoff {
    pub(crate) const fn new(first: Duration, max: Duration) -> Backoff {
        Backoff {
            first,
            max,
            failures: 0,
        }
    }

    /// Counts one more failure and answers how long to wait before the next attempt.
    pub(crate) fn next_delay(&mut self) -> Duration {
        let step = self
            .first
            .saturating_mul(1 << self.failures.min(16))
            .min(self.max);
        self.failures += 1;
        step.mul_f64(0.5 + fastrand::f64() * 0.5)
    }

    /// Failures since the last success.
    pub(crate) fn failures(&self) -> u32 {
        self.failures
    }

    /// After a success: the next failure waits the shortest delay again.
    pub(crate) fn reset(&mut self) {
        self.failures = 0;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn delays_double_up_to_the_cap_with_jitter_and_reset() {
        let first = Duration::from_millis(100);
        let max = Duration::from_millis(1000);
        let mut backoff = Backoff::new(first, max);
        for step in [100u64, 200, 400, 800, 1000, 1000] {
            let delay = backoff.next_delay();
            let step = Duration::from_millis(step);
            assert!(
                delay >= step / 2 && delay <= step,
                "{delay:?} outside {step:?}/2..={step:?}"
            );
        }
        assert_eq!(backoff.failures(), 6);
        backoff.reset();
        assert_eq!(backoff.failures(), 0);
        assert!(backoff.next_delay() <= first);
    }
}

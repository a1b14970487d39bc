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

/// The start-up connections' retries (the database, the Kafka broker): capped backoff from
/// a second to 30 s, each failure logged once, then again only when it changes or a minute has
/// passed.
pub(crate) struct Retry {
    /// What is unreachable, as the log line names it.
    what: &'static str,
    backoff: Backoff,
    /// The failure last logged and when: the same one is not logged again within a minute.
    last_logged: Option<(String, std::time::Instant)>,
}

impl Retry {
    pub(crate) fn new(what: &'static str) -> Retry {
        Retry {
            what,
            backoff: Backoff::new(Duration::from_millis(1000), Duration::from_secs(30)),
            last_logged: None,
        }
    }

    /// Logs `error` unless it is the one logged less than a minute ago, and waits before the
    /// next attempt.
    pub(crate) async fn failed(&mut self, error: &str) {
        let delay = self.backoff.next_delay();
        let repeat = self
            .last_logged
            .as_ref()
            .is_some_and(|(last, at)| last == error && at.elapsed() < Duration::from_secs(60));
        if !repeat {
            log::error!(
                "{} unreachable: {error}; retrying in {} s (attempt {})",
                self.what,
                delay.as_secs_f32(),
                self.backoff.failures()
            );
            self.last_logged = Some((error.to_owned(), std::time::Instant::now()));
        }
        tokio::time::sleep(delay).await;
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

//! Caps how many lines of one kind are logged a second, so that logging never becomes the
//! bottleneck at high rates; what was left out is summed up in one line.

use std::time::{Duration, Instant};

/// A per-second budget of log lines.
#[derive(Debug)]
pub(crate) struct LogLimit {
    /// What the summary line calls the lines it stands for.
    what: &'static str,
    max_per_sec: u32,
    window_start: Instant,
    printed: u32,
    suppressed: u64,
}

impl LogLimit {
    pub(crate) fn new(what: &'static str, max_per_sec: u32) -> LogLimit {
        LogLimit {
            what,
            max_per_sec,
            window_start: Instant::now(),
            printed: 0,
            suppressed: 0,
        }
    }

    /// Whether one more line may be printed now.
    pub(crate) fn allow(&mut self) -> bool {
        self.allow_many(1) == 1
    }

    /// How many of `lines` more lines may be printed now (the first ones): one look at the
    /// clock for all of them.
    pub(crate) fn allow_many(&mut self, lines: usize) -> usize {
        self.roll_window();
        let left = self.max_per_sec.saturating_sub(self.printed) as usize;
        let allowed = lines.min(left);
        self.printed += allowed as u32;
        self.suppressed += (lines - allowed) as u64;
        allowed
    }

    /// Prints the summary of a finished window; call it now and then when no line is logged.
    pub(crate) fn roll_window(&mut self) {
        if self.window_start.elapsed() < Duration::from_secs(1) {
            return;
        }
        if self.suppressed > 0 {
            log::info!(
                "{} more {} were not printed in the last {:.1}s (cap {} lines a second)",
                self.suppressed,
                self.what,
                self.window_start.elapsed().as_secs_f64(),
                self.max_per_sec
            );
        }
        self.window_start = Instant::now();
        self.printed = 0;
        self.suppressed = 0;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn allows_up_to_the_cap_in_one_window() {
        let mut limit = LogLimit::new("lines", 3);
        let allowed = (0..10).filter(|_| limit.allow()).count();
        assert_eq!(allowed, 3);
        assert_eq!(limit.suppressed, 7);
    }

    #[test]
    fn allows_many_up_to_what_is_left_of_the_cap() {
        let mut limit = LogLimit::new("lines", 5);
        assert!(limit.allow());
        assert_eq!(limit.allow_many(3), 3);
        assert_eq!(limit.allow_many(4), 1);
        assert_eq!(limit.allow_many(2), 0);
        assert!(!limit.allow());
        assert_eq!(limit.suppressed, 6);
    }
}

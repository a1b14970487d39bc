//! Per-minute summaries of `system_metrics` (`system_metrics_minutes`) and the sample times
//! changed since they were made (`system_metrics_pending`); see the migration
//! `2026-12-07-100000_minute_summaries` for what a reader may take from them.
//!
//! Two sides keep them. The writer adds the time range of every batch it stores to the
//! pending ranges, in the batch's own transaction ([`time_range`], [`LOG_PENDING`]). The
//! summarizer ([`summarize`]) later recomputes the minutes pending ranges touch from the raw
//! samples and deletes the ranges it saw.

use super::AsMetric;

/// Adds one pending range; the writer sends it with the batch's offset moves.
pub const LOG_PENDING: &str =
    "INSERT INTO system_metrics_pending (from_ms, to_ms) VALUES ($1::int8, $2::int8)";

/// The first and last sample time of `rows` in Unix milliseconds, `None` for no rows.
/// Validated times are whole milliseconds already, as readers floor them.
pub fn time_range(rows: &[impl AsMetric]) -> Option<(i64, i64)> {
    rows.iter()
        .map(|row| row.metric().time_ms())
        .fold(None, |range, ms| match range {
            None => Some((ms, ms)),
            Some((from, to)) => Some((from.min(ms), to.max(ms))),
        })
}

//! Per-minute summaries of `system_metrics` (`system_metrics_minutes`) and the sample times
//! changed since they were made (`system_metrics_pending`); see the migration
//! `2026-12-07-100000_minute_summaries` for what a reader may take from them.
//!
//! Two sides keep them. The writer adds the time range of every batch it stores to the
//! pending ranges, in the batch's own transaction ([`time_range`], [`LOG_PENDING`]). The
//! summarizer ([`summarize`]) later recomputes the minutes pending ranges touch from the raw
//! samples and deletes the ranges it saw.

use std::time::Duration;

use chrono::{DateTime, Utc};
use tokio_postgres::Client;

use super::{AsMetric, DbError, Timeouts, within};

/// Adds one pending range; the writer sends it with the batch's offset moves.
pub(crate) const LOG_PENDING: &str =
    "INSERT INTO system_metrics_pending (from_ms, to_ms) VALUES ($1::int8, $2::int8)";

/// The first and last sample time of `rows` in Unix milliseconds, `None` for no rows.
/// Validated times are whole milliseconds already, as readers floor them.
pub(crate) fn time_range(rows: &[impl AsMetric]) -> Option<(i64, i64)> {
    rows.iter()
        .map(|row| row.metric().time_ms())
        .fold(None, |range, ms| match range {
            None => Some((ms, ms)),
            Some((from, to)) => Some((from.min(ms), to.max(ms))),
        })
}

/// Drops the triggers of the plain table that older TimescaleDB versions refuse on a hypertable
/// (transition tables), where it refuses to convert the table; see the migration.
pub(crate) const DROP_REFUSED_TRIGGERS: &str = "DROP TRIGGER IF EXISTS system_metrics_deleted ON system_metrics; \
     DROP TRIGGER IF EXISTS system_metrics_updated ON system_metrics";

/// How many minutes one pass recomputes at most, so that a pass is bounded in time and
/// memory whatever is pending (a day of rows loaded by hand is 24 passes).
pub(crate) const SLICE_MINUTES: i64 = 60;

/// How many pending ranges one pass reads at most. The writer adds one per batch; more than
/// this wait for the next pass.
const MAX_PENDING_ROWS: i64 = 10_000;

/// Any number that fits in a bigint, the same for every Panopticon and different from the
/// migrations' and the lifecycle's: one instance summarises at a time.
const LOCK_KEY: i64 = 0x5041_4e4f_5054_4945;

/// The length of a summary's minute, in Unix milliseconds.
pub(crate) const MINUTE_MS: i64 = 60_000;

/// Summaries whose first sample is older than the oldest raw sample lost samples to a
/// dropped chunk (TimescaleDB's retention drops chunks without firing any trigger): they are
/// deleted, and the minute of the oldest raw sample, which such a drop may have cut in two,
/// is made pending so that it is recomputed. Minutes wholly before it hold no sample: their
/// summaries go and none is needed.
const DROP_STALE: &str = "
    WITH oldest AS (
        SELECT floor(extract(epoch FROM min(time)) * 1000)::int8 AS ms FROM system_metrics
    ), stale AS (
        DELETE FROM system_metrics_minutes
        WHERE minute_ms < coalesce((SELECT ms + 60000 FROM oldest), 9223372036854775807)
          AND first_ms < coalesce((SELECT ms FROM oldest), 9223372036854775807)
        RETURNING 1
    )
    INSERT INTO system_metrics_pending (from_ms, to_ms)
    SELECT ms, ms FROM oldest WHERE ms IS NOT NULL AND EXISTS (SELECT 1 FROM stale)";

const OLDEST_PENDING: &str = "SELECT min(from_ms) FROM system_metrics_pending";

const READ_PENDING: &str = "
    SELECT id, from_ms, to_ms FROM system_metrics_pending
    WHERE from_ms <= $1::int8 ORDER BY from_ms LIMIT $2::int8";

/// Deletes the summaries of the minutes `[first, last]` of each pair of arrays.
const DELETE_MINUTES: &str = "
    DELETE FROM system_metrics_minutes m
    USING unnest($1::int8[], $2::int8[]) AS r (first_minute, last_minute)
    WHERE m.minute_ms BETWEEN r.first_minute AND r.last_minute";

/// Summarises the raw samples with `from_time <= time < to_time`, for each pair of arrays
/// (whole right-closed minutes, see [`sample_times`]). First and last are taken by time: the
/// table's unique key makes a series' sample times distinct. `ceil` in float8 is exact
/// here: a whole number of milliseconds below 2^53 divided by 60000 is a whole number
/// exactly when it is a multiple.
pub(crate) const SUMMARIZE: &str = "
    INSERT INTO system_metrics_minutes (service, pod_name, namespace, node_name, minute_ms,
        samples, first_ms, last_ms, cpu_first, cpu_last, cpu_min, cpu_max, cpu_sum,
        memory_first, memory_last, memory_min, memory_max, memory_sum)
    SELECT service, pod_name, namespace, node_name,
           (ceil(ms::float8 / 60000) * 60000)::int8 AS minute_ms,
           count(*)::int4, min(ms), max(ms),
           (array_agg(cpu ORDER BY time))[1], (array_agg(cpu ORDER BY time DESC))[1],
           min(cpu), max(cpu), sum(cpu),
           (array_agg(memory ORDER BY time))[1], (array_agg(memory ORDER BY time DESC))[1],
           min(memory), max(memory), sum(memory)
    FROM (
        SELECT s.service, s.pod_name, s.namespace, s.node_name, s.time, s.cpu, s.memory,
               floor(extract(epoch FROM s.time) * 1000)::int8 AS ms
        FROM unnest($1::timestamptz[], $2::timestamptz[]) AS r (from_time, to_time)
        JOIN system_metrics s ON s.time >= r.from_time AND s.time < r.to_time
    ) samples
    GROUP BY service, pod_name, namespace, node_name, 5";

const DELETE_PENDING: &str = "DELETE FROM system_metrics_pending WHERE id = ANY($1::int8[])";

const REPEND: &str = "INSERT INTO system_metrics_pending (from_ms, to_ms)
    SELECT * FROM unnest($1::int8[], $2::int8[])";

/// How many hours one pass packs at most (an hour of 500 series is 30,000 summary rows).
const PACK_HOURS: i64 = 6;

/// An hour is packed once it ended this long ago, by the clock: samples a little late are
/// common, and each would have the hour packed again.
const PACK_AFTER_MS: i64 = 2 * MINUTE_MS;

/// The length of an hour of summaries, in Unix milliseconds.
pub(crate) const HOUR_MS: i64 = 60 * MINUTE_MS;

/// The hours before `$1` whose packed rows are not of their version and that no pending
/// range touches (the summaries of a pending minute are about to change), newest first: a
/// dashboard reads the newest hours most. The hour `h` holds the minutes (h × 1 h, (h + 1) ×
/// 1 h], so the samples (h × 1 h - 1 min, (h + 1) × 1 h].
const PACKABLE: &str = "
    SELECT v.hour FROM system_metrics_minutes_versions v
    WHERE v.packed IS DISTINCT FROM v.version AND v.hour < $1::int8
      AND NOT EXISTS (
          SELECT 1 FROM system_metrics_pending p
          WHERE p.to_ms > v.hour * 3600000 - 60000 AND p.from_ms <= (v.hour + 1) * 3600000)
    ORDER BY v.hour DESC LIMIT $2::int8";

const UNPACK: &str = "DELETE FROM system_metrics_hours WHERE hour = ANY($1::int8[])";

/// Packs the summaries of each hour of `$1` into one row per series (see the migration
/// `2026-12-08-000000_summary_hours`).
const PACK: &str = "
    INSERT INTO system_metrics_hours
    SELECT h.hour, m.service, m.pod_name, m.namespace, m.node_name,
           string_agg(int8send(m.minute_ms), ''::bytea ORDER BY m.minute_ms),
           string_agg(int4send(m.samples), ''::bytea ORDER BY m.minute_ms),
           string_agg(int8send(m.last_ms), ''::bytea ORDER BY m.minute_ms),
           string_agg(float8send(m.cpu_first), ''::bytea ORDER BY m.minute_ms),
           string_agg(float8send(m.cpu_last), ''::bytea ORDER BY m.minute_ms),
           string_agg(float8send(m.cpu_min), ''::bytea ORDER BY m.minute_ms),
           string_agg(float8send(m.cpu_max), ''::bytea ORDER BY m.minute_ms),
           string_agg(float8send(m.cpu_sum), ''::bytea ORDER BY m.minute_ms),
           string_agg(float8send(m.memory_first), ''::bytea ORDER BY m.minute_ms),
           string_agg(float8send(m.memory_last), ''::bytea ORDER BY m.minute_ms),
           string_agg(float8send(m.memory_min), ''::bytea ORDER BY m.minute_ms),
           string_agg(float8send(m.memory_max), ''::bytea ORDER BY m.minute_ms),
           string_agg(float8send(m.memory_sum), ''::bytea ORDER BY m.minute_ms)
    FROM unnest($1::int8[]) AS h (hour)
    JOIN system_metrics_minutes m
      ON m.minute_ms > h.hour * 3600000 AND m.minute_ms <= (h.hour + 1) * 3600000
    GROUP BY h.hour, m.service, m.pod_name, m.namespace, m.node_name";

const MARK_PACKED: &str =
    "UPDATE system_metrics_minutes_versions SET packed = version WHERE hour = ANY($1::int8[])";

const PENDING_FIGURES: &str = "SELECT count(*), min(from_ms) FROM system_metrics_pending";

/// The right-closed minute `(minute_ms - 60000, minute_ms]` a sample time falls in.
pub(crate) fn minute_of(ms: i64) -> i64 {
    ms.saturating_add(MINUTE_MS - 1).div_euclid(MINUTE_MS) * MINUTE_MS
}

/// The sample times of the minutes `first_minute..=last_minute`, as the half-open range of
/// timestamps `[from, to)` whose millisecond floors lie in them.
fn sample_times(first_minute: i64, last_minute: i64) -> (DateTime<Utc>, DateTime<Utc>) {
    let at = |ms: i64| DateTime::from_timestamp_millis(ms).unwrap_or_default();
    (at(first_minute - MINUTE_MS + 1), at(last_minute + 1))
}

/// A pending range as read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct PendingRange {
    id: i64,
    from_ms: i64,
    to_ms: i64,
}

/// What one pass does with the pending ranges it read: the minutes to recompute, as merged
/// ranges of whole minutes `(first, last)`, and the parts of ranges past the slice, pending
/// again.
#[derive(Debug, Default, PartialEq, Eq)]
struct Plan {
    minutes: Vec<(i64, i64)>,
    rest: Vec<(i64, i64)>,
}

/// Plans a pass over the slice of minutes ending at `last_minute`. Every range read starts
/// in the slice or before it (none starts before its first minute: the slice begins at the
/// oldest pending time).
fn plan(ranges: &[PendingRange], last_minute: i64) -> Plan {
    let mut spans: Vec<(i64, i64)> = ranges
        .iter()
        .map(|r| (minute_of(r.from_ms), minute_of(r.to_ms).min(last_minute)))
        .collect();
    spans.sort_unstable();
    let mut minutes: Vec<(i64, i64)> = Vec::with_capacity(spans.len());
    for (first, last) in spans {
        match minutes.last_mut() {
            Some((_, end)) if first <= *end + MINUTE_MS => *end = (*end).max(last),
            _ => minutes.push((first, last)),
        }
    }
    let rest = ranges
        .iter()
        .filter(|r| r.to_ms > last_minute)
        .map(|r| (last_minute + 1, r.to_ms))
        .collect();
    Plan { minutes, rest }
}

/// What a pass did, for `/status`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct Pass {
    /// Minutes recomputed from raw samples.
    pub minutes: u64,
    /// Summary rows written (one per series and minute holding samples).
    pub rows: u64,
    /// Hours packed.
    pub hours: u64,
    /// Pending ranges left, and the oldest sample time they hold.
    pub pending_ranges: i64,
    pub oldest_pending_ms: Option<i64>,
    /// Whether the pass left pending ranges it could have taken had it not been bounded:
    /// the next pass may come sooner.
    pub more: bool,
}

/// One pass of the summarizer, in one REPEATABLE READ transaction under an advisory lock:
/// `None` if another instance holds the lock (it does the same work).
///
/// Why a reader never takes a stale summary for an exact one: a change to `system_metrics`
/// commits together with its pending range (the writer's transaction, or the triggers of a
/// plain table). This pass reads everything from one snapshot: each pending range it sees
/// belongs to a committed change that the same snapshot shows in the raw samples, so the
/// summaries it writes include that change, and it deletes exactly the ranges it saw. A change
/// committed after the snapshot is not in these summaries, but its pending range is not
/// visible here either, so it is not deleted: it keeps those minutes pending until a later
/// pass. Ids are not compared (`id <= max`), since ids are drawn before their transactions
/// commit, out of order. Two instances: the lock lets one work; should another's snapshot
/// predate a pass that committed just before it took the lock, its deletes meet rows that
/// pass changed and fail with a serialization error, leaving nothing half done.
pub(crate) async fn summarize(
    client: &Client,
    timeouts: &Timeouts,
) -> Result<Option<Pass>, DbError> {
    let limit = timeouts.statement;
    // The server cancels a statement past the bound too, rather than run on after this side
    // gave up waiting.
    let begin = format!(
        "BEGIN ISOLATION LEVEL REPEATABLE READ; SET LOCAL statement_timeout = {}",
        limit.as_millis()
    );
    within(limit, "the summary pass", client.batch_execute(&begin)).await?;
    let outcome = pass(client, limit).await;
    let end = match &outcome {
        Ok(Some(_)) => "COMMIT",
        _ => "ROLLBACK",
    };
    match (
        outcome,
        within(limit, "the summary commit", client.batch_execute(end)).await,
    ) {
        (Err(e), _) | (Ok(_), Err(e)) => Err(e),
        (Ok(pass), Ok(())) => Ok(pass),
    }
}

async fn pass(client: &Client, limit: Duration) -> Result<Option<Pass>, DbError> {
    let locked: bool = within(
        limit,
        "the summary lock",
        client.query_one("SELECT pg_try_advisory_xact_lock($1)", &[&LOCK_KEY]),
    )
    .await?
    .get(0);
    if !locked {
        return Ok(None);
    }
    within(
        limit,
        "the stale summaries",
        client.execute(DROP_STALE, &[]),
    )
    .await?;
    let oldest: Option<i64> = within(
        limit,
        "the pending ranges",
        client.query_one(OLDEST_PENDING, &[]),
    )
    .await?
    .get(0);
    let mut done = Pass::default();
    if let Some(oldest) = oldest {
        recompute(client, limit, oldest, &mut done).await?;
    }
    let packed = pack(client, limit, Utc::now().timestamp_millis()).await?;
    done.hours = packed as u64;
    done.more |= packed == PACK_HOURS as usize;
    let figures = within(
        limit,
        "the pending ranges",
        client.query_one(PENDING_FIGURES, &[]),
    )
    .await?;
    done.pending_ranges = figures.get(0);
    done.oldest_pending_ms = figures.get(1);
    Ok(Some(done))
}

/// Recomputes the minutes of the slice starting at the oldest pending time `oldest` and
/// deletes the pending ranges read; what it did goes into `done`.
async fn recompute(
    client: &Client,
    limit: Duration,
    oldest: i64,
    done: &mut Pass,
) -> Result<(), DbError> {
    let last_minute = minute_of(oldest) + (SLICE_MINUTES - 1) * MINUTE_MS;
    let ranges: Vec<PendingRange> = within(
        limit,
        "the pending ranges",
        client.query(READ_PENDING, &[&last_minute, &MAX_PENDING_ROWS]),
    )
    .await?
    .iter()
    .map(|row| PendingRange {
        id: row.get(0),
        from_ms: row.get(1),
        to_ms: row.get(2),
    })
    .collect();
    let plan = plan(&ranges, last_minute);
    let (firsts, lasts): (Vec<i64>, Vec<i64>) = plan.minutes.iter().copied().unzip();
    let (from_times, to_times): (Vec<_>, Vec<_>) = plan
        .minutes
        .iter()
        .map(|&(first, last)| sample_times(first, last))
        .unzip();
    let ids: Vec<i64> = ranges.iter().map(|r| r.id).collect();
    let (rest_from, rest_to): (Vec<i64>, Vec<i64>) = plan.rest.iter().copied().unzip();
    within(
        limit,
        "the summary delete",
        client.execute(DELETE_MINUTES, &[&firsts, &lasts]),
    )
    .await?;
    done.rows = within(
        limit,
        "the summary insert",
        client.execute(SUMMARIZE, &[&from_times, &to_times]),
    )
    .await?;
    within(
        limit,
        "the pending delete",
        client.execute(DELETE_PENDING, &[&ids]),
    )
    .await?;
    if !rest_from.is_empty() {
        within(
            limit,
            "the pending split",
            client.execute(REPEND, &[&rest_from, &rest_to]),
        )
        .await?;
    }
    done.minutes = plan
        .minutes
        .iter()
        .map(|(first, last)| ((last - first) / MINUTE_MS + 1) as u64)
        .sum();
    done.more = !plan.rest.is_empty() || ranges.len() as i64 == MAX_PENDING_ROWS;
    Ok(())
}

/// Packs at most [`PACK_HOURS`] hours that ended [`PACK_AFTER_MS`] before `now_ms` and
/// need it, in the pass's transaction; returns how many. The versions read here are those
/// the hours' rows are packed from: a concurrent change to an hour's summaries conflicts
/// with the update of its version and fails the pass, leaving nothing half done.
async fn pack(client: &Client, limit: Duration, now_ms: i64) -> Result<usize, DbError> {
    let before = (now_ms - PACK_AFTER_MS).div_euclid(HOUR_MS);
    let hours: Vec<i64> = within(
        limit,
        "the hours to pack",
        client.query(PACKABLE, &[&before, &PACK_HOURS]),
    )
    .await?
    .iter()
    .map(|row| row.get(0))
    .collect();
    if hours.is_empty() {
        return Ok(0);
    }
    for (what, statement) in [
        ("the packed hours' delete", UNPACK),
        ("the hours' packing", PACK),
        ("the packed hours' versions", MARK_PACKED),
    ] {
        within(limit, what, client.execute(statement, &[&hours])).await?;
    }
    Ok(hours.len())
}

/// Packs every hour that ended [`PACK_AFTER_MS`] before `now_ms` and needs it, in one
/// transaction; returns how many. For tests and benchmarks that summarise by hand: the
/// summarizer packs a few hours a pass.
pub async fn pack_every_hour(
    client: &Client,
    timeouts: &Timeouts,
    now_ms: i64,
) -> Result<usize, DbError> {
    let limit = timeouts.statement;
    within(limit, "the packing", client.batch_execute("BEGIN")).await?;
    let mut packed = 0;
    let outcome = loop {
        match pack(client, limit, now_ms).await {
            Ok(0) => break Ok(packed),
            Ok(n) => packed += n,
            Err(e) => break Err(e),
        }
    };
    let end = if outcome.is_ok() {
        "COMMIT"
    } else {
        "ROLLBACK"
    };
    within(limit, "the packing", client.batch_execute(end)).await?;
    outcome
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_minute_is_right_closed() {
        assert_eq!(minute_of(0), 0);
        assert_eq!(minute_of(1), 60_000);
        assert_eq!(minute_of(60_000), 60_000);
        assert_eq!(minute_of(60_001), 120_000);
        assert_eq!(minute_of(-1), 0);
        assert_eq!(minute_of(-60_000), -60_000);
        assert_eq!(minute_of(-60_001), -60_000);
        let (from, to) = sample_times(120_000, 180_000);
        assert_eq!(
            (from.timestamp_millis(), to.timestamp_millis()),
            (60_001, 180_001)
        );
    }

    #[test]
    fn ranges_merge_into_minutes_and_what_lies_past_the_slice_stays_pending() {
        let range = |id, from_ms, to_ms| PendingRange { id, from_ms, to_ms };
        let ranges = [
            range(3, 60_001, 61_000),
            range(1, 1, 60_000),
            range(2, 250_000, 10_000_000),
            range(4, 130_000, 130_000),
        ];
        let last_minute = 300_000;
        assert_eq!(
            plan(&ranges, last_minute),
            Plan {
                // Adjoining minutes merge; 240 000 is pending in no range.
                minutes: vec![(60_000, 180_000), (300_000, 300_000)],
                rest: vec![(300_001, 10_000_000)],
            }
        );
    }
}

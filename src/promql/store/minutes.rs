//! Selections answered from `system_metrics_minutes`, the exact per-minute summaries, where
//! their [`Need`] allows ([`Need::minutes`]): one summary row per series and minute in place
//! of its samples, and the raw samples of the minutes that are pending.
//!
//! A minute is pending while a row of `system_metrics_pending` touches it: its summary is
//! missing or older than its samples. Pending ranges, summaries and the raw samples of the
//! pending minutes are read in one repeatable-read transaction, so that they are of one
//! snapshot: a summary the summarizer replaces meanwhile, or rows written meanwhile, cannot
//! mix with what the pending ranges said. Reading raw a minute that is not pending is always
//! exact, so pending ranges may be merged (few, wide ranges read instead of many narrow).

use std::collections::HashMap;
use std::sync::Arc;

use futures_util::{StreamExt, TryStreamExt};

use super::cache::{Hour, Row, hour_of};
use super::{
    Budget, Frames, Metric, PromError, Reader, Scan, Selection, Spans, copy_raw, database_error,
    float_field, int8_field, labels_of, malformed, matches, may_match, pushed,
};
use crate::db::queries::DbPool;
use crate::promql::Labels;
use crate::promql::engine::summaries::{
    Answer, MINUTE_MS, Minutes, Need, Part, Summarised, Summary, minute_of,
};

/// The most separate pending ranges one read sends as conditions; more are merged.
const MAX_RANGES: usize = 32;

/// Reads the selections `members` from summaries over one connection, in one snapshot;
/// answers them in the same order.
pub(super) async fn read(
    pool: &DbPool,
    selections: &[Selection],
    members: &[usize],
    budget: &Budget,
) -> Result<Vec<Answer>, PromError> {
    let reader = Reader::open(pool).await?;
    let wide = members.iter().any(|&m| {
        let s = &selections[m];
        s.end_ms - s.start_ms >= SPLIT_MS
    });
    // A second connection for the older half of wide reads, in the same snapshot.
    let second = if wide {
        Reader::open_if_free(pool).await?
    } else {
        None
    };
    reader
        .within(async {
            reader.set_timeout().await?;
            let client = &reader.client;
            client
                .batch_execute("BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY")
                .await
                .map_err(|e| database_error(&e))?;
            if let Some(second) = &second {
                let snapshot: String = client
                    .query_one("SELECT pg_export_snapshot()", &[])
                    .await
                    .map_err(|e| database_error(&e))?
                    .get(0);
                second.set_timeout().await?;
                second
                    .client
                    .batch_execute(&format!(
                        "BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY; SET TRANSACTION SNAPSHOT {}",
                        super::literal(&snapshot).ok_or_else(malformed)?
                    ))
                    .await
                    .map_err(|e| database_error(&e))?;
            }
            let second = second.as_ref().map(|r| &r.client);
            let mut answers = Vec::with_capacity(members.len());
            for &member in members {
                answers.push(read_one(client, second, selections, member, budget).await?);
            }
            for c in std::iter::once(client).chain(second) {
                c.batch_execute("COMMIT")
                    .await
                    .map_err(|e| database_error(&e))?;
            }
            Ok(answers)
        })
        .await
}

/// Reads at least this wide are split between two connections.
const SPLIT_MS: i64 = 6 * 3_600_000;

/// The pending minutes within `(from, to]` of minute ends, as merged inclusive ranges of
/// minute ends, at most [`MAX_RANGES`] of them.
async fn pending(
    client: &tokio_postgres::Client,
    from_ms: i64,
    to_ms: i64,
) -> Result<Vec<(i64, i64)>, PromError> {
    // The samples of minutes (from, to] lie in (from - 1 min, to]; a pending range
    // [a, b] of sample times touches the minutes from minute_of(a) to minute_of(b).
    let rows = client
        .query(
            "SELECT from_ms, to_ms FROM system_metrics_pending \
             WHERE to_ms > $1::int8 AND from_ms <= $2::int8 ORDER BY from_ms",
            &[&from_ms, &to_ms],
        )
        .await
        .map_err(|e| database_error(&e))?;
    let mut ranges: Vec<(i64, i64)> = Vec::new();
    for row in rows {
        let (a, b): (i64, i64) = (row.get(0), row.get(1));
        let (a, b) = (
            minute_of(a).max(from_ms + MINUTE_MS),
            minute_of(b).min(to_ms),
        );
        if a > b {
            continue;
        }
        match ranges.last_mut() {
            Some(last) if a <= last.1 + MINUTE_MS => last.1 = last.1.max(b),
            _ => ranges.push((a, b)),
        }
    }
    if ranges.len() > MAX_RANGES {
        // Merge across the narrowest gaps: reading their minutes raw too is still exact.
        let mut gaps: Vec<i64> = ranges.windows(2).map(|w| w[1].0 - w[0].1).collect();
        gaps.sort_unstable();
        let widest_merged = gaps[gaps.len() - MAX_RANGES];
        let mut merged: Vec<(i64, i64)> = Vec::new();
        for (a, b) in ranges {
            match merged.last_mut() {
                Some(last) if a - last.1 <= widest_merged => last.1 = b,
                _ => merged.push((a, b)),
            }
        }
        ranges = merged;
    }
    Ok(ranges)
}

fn is_pending(ranges: &[(i64, i64)], minute_ms: i64) -> bool {
    let i = ranges.partition_point(|r| r.1 < minute_ms);
    i < ranges.len() && ranges[i].0 <= minute_ms
}

/// One series' parts, per metric, by its label values.
#[derive(Default)]
struct Parts {
    labels: [String; 4],
    parts: [Vec<Part>; 2],
}

async fn read_one(
    client: &tokio_postgres::Client,
    second: Option<&tokio_postgres::Client>,
    selections: &[Selection],
    member: usize,
    budget: &Budget,
) -> Result<Answer, PromError> {
    let selection = &selections[member];
    let Some(minutes) = selection.need.minutes() else {
        return Err(PromError::Unavailable(
            "summaries asked for a selection they cannot answer".into(),
        ));
    };
    let metrics = Metric::ALL.map(|m| may_match(&selection.matchers, m));
    if !metrics.iter().any(|m| *m) {
        return Ok(Answer::from_parts(&selection.need, Vec::new()));
    }
    let conditions = pushed(&selection.matchers);
    let pending = pending(client, minutes.after_ms(), minutes.last).await?;
    let copy = Copy::new(selection, metrics, minutes, &pending, budget, &conditions);
    let sources = sources(client, &copy).await?;
    let mut joined = Joined::of(read_sources(&copy, client, second, sources).await?);
    if !pending.is_empty() {
        let scan = Scan {
            conditions: conditions.clone(),
            metrics,
            from_ms: selection.start_ms,
            to_ms: selection.end_ms,
            members: vec![member],
        };
        joined.add_pending(client, &copy, &scan, selections).await?;
    }
    Ok(joined.answer(selection))
}

/// Where the summaries of a read come from.
struct Sources {
    /// Whole hours kept in memory at the version the snapshot gives them.
    kept: Vec<Arc<Hour>>,
    /// Whole hours to keep once read, with the version they are read at.
    fill: HashMap<i64, String>,
    /// Whole hours read from their packed rows, ascending.
    packed: Vec<i64>,
    /// The minutes read from minute rows, as ranges `(a, b]` of minute ends.
    ranges: Ranges,
}

/// Each whole hour comes, at the version the snapshot gives it, from the cache (a read of
/// every minute), else from its packed rows where they are of that version, else from its
/// minutes; the hours the cache misses are kept once read.
async fn sources(client: &tokio_postgres::Client, copy: &Copy<'_>) -> Result<Sources, PromError> {
    let (after, last) = (copy.minutes.after_ms(), copy.minutes.last);
    let cache = super::summary_cache();
    let keep = copy.minutes.contiguous() && cache.enabled();
    let mut sources = Sources {
        kept: Vec::new(),
        fill: HashMap::new(),
        packed: Vec::new(),
        ranges: Vec::new(),
    };
    let whole = whole_hours(after, last);
    if let (Some(&first), Some(&last)) = (whole.first(), whole.last()) {
        for (hour, version, is_packed) in versions(client, first, last).await? {
            if keep {
                if let Some(found) = cache.get(&copy.read, hour, &version) {
                    sources.kept.push(found);
                    continue;
                }
                sources.fill.insert(hour, version);
            }
            if is_packed {
                sources.packed.push(hour);
            }
        }
    }
    sources.packed.sort_unstable();
    let mut taken: Vec<i64> = sources.kept.iter().map(|h| h.number).collect();
    taken.extend_from_slice(&sources.packed);
    taken.sort_unstable();
    sources.ranges = without_hours(after, last, &taken);
    Ok(sources)
}

/// Reads every source, keeping in the cache the hours it was asked to fill. Two connections
/// share a wide read: halves of the minutes where many are read from minute rows, else
/// halves of the packed hours.
async fn read_sources(
    copy: &Copy<'_>,
    client: &tokio_postgres::Client,
    second: Option<&tokio_postgres::Client>,
    sources: Sources,
) -> Result<Vec<Series>, PromError> {
    let Sources {
        kept,
        fill,
        packed,
        ranges,
    } = sources;
    let width = |ranges: &[(i64, i64)]| ranges.iter().map(|(a, b)| b - a).sum::<i64>();
    let mut read: Vec<Series> = match second {
        Some(second) if width(&ranges) >= SPLIT_MS => {
            let (older, newer) = split(&ranges);
            let (mut older, newer) = futures_util::future::try_join(
                copy.read_all(second, &older, &[], &fill),
                copy.read_all(client, &newer, &packed, &fill),
            )
            .await?;
            older.extend(newer);
            older
        }
        Some(second) if packed.len() >= 2 => {
            let (older, newer) = packed.split_at(packed.len() / 2);
            let (mut older, newer) = futures_util::future::try_join(
                copy.read_all(second, &[], older, &fill),
                copy.read_all(client, &ranges, newer, &fill),
            )
            .await?;
            older.extend(newer);
            older
        }
        _ => copy.read_all(client, &ranges, &packed, &fill).await?,
    };
    // Each read kept what it read of every hour to fill: the hours split between the two
    // reads are kept whole, both halves joined.
    let mut filled: HashMap<i64, Hour> = HashMap::new();
    for got in &mut read {
        for (number, hour) in got.filled.drain() {
            match filled.get_mut(&number) {
                Some(have) => have.absorb(hour),
                None => {
                    filled.insert(number, hour);
                }
            }
        }
    }
    let cache = super::summary_cache();
    for (number, hour) in filled {
        if let Some(version) = fill.get(&number) {
            cache.put(&copy.read, number, version, hour);
        }
    }
    if !kept.is_empty() {
        let mut rows = SummaryRows::new(copy, None);
        for hour in &kept {
            rows.hour(hour)?;
        }
        read.push(rows.finish());
    }
    Ok(read)
}

/// The series of several reads, joined by their label values.
struct Joined {
    series: Vec<Parts>,
    index: HashMap<[String; 4], usize>,
}

impl Joined {
    fn of(read: Vec<Series>) -> Joined {
        let mut joined = Joined {
            series: Vec::new(),
            index: HashMap::new(),
        };
        for got in read {
            for more in got.series {
                match joined.index.get(&more.labels) {
                    Some(&i) => {
                        for m in 0..2 {
                            joined.series[i].parts[m].extend_from_slice(&more.parts[m]);
                        }
                    }
                    None => {
                        joined
                            .index
                            .insert(more.labels.clone(), joined.series.len());
                        joined.series.push(more);
                    }
                }
            }
        }
        joined
    }

    /// The place of the series of `labels`, made if new.
    fn at(&mut self, labels: &[String; 4]) -> usize {
        if let Some(&i) = self.index.get(labels) {
            return i;
        }
        self.index.insert(labels.clone(), self.series.len());
        self.series.push(Parts {
            labels: labels.clone(),
            ..Parts::default()
        });
        self.series.len() - 1
    }

    /// Adds the raw samples of the pending minutes.
    async fn add_pending(
        &mut self,
        client: &tokio_postgres::Client,
        copy: &Copy<'_>,
        scan: &Scan,
        selections: &[Selection],
    ) -> Result<(), PromError> {
        let times: Vec<String> = copy
            .pending
            .iter()
            .map(|(a, b)| {
                format!(
                    "(time > {} AND time < {})",
                    super::time_literal(a - MINUTE_MS),
                    super::time_literal(b + 1)
                )
            })
            .collect();
        let reads = copy_raw(
            client,
            scan,
            selections,
            copy.budget,
            copy.minutes.after_ms(),
            copy.minutes.last,
            Some(format!("({})", times.join(" OR "))),
        )
        .await?;
        for read in reads {
            let at = self.at(&read.labels);
            for m in 0..2 {
                if read.keep[m] {
                    let samples = read.timestamps.iter().zip(&read.values[m]);
                    self.series[at].parts[m].extend(samples.map(|(&t, &v)| Part::Sample { t, v }));
                }
            }
        }
        Ok(())
    }

    fn answer(self, selection: &Selection) -> Answer {
        let mut out: Vec<(Labels, Vec<Part>)> = Vec::new();
        for s in self.series {
            for (metric, mut parts) in Metric::ALL.into_iter().zip(s.parts) {
                let labels = labels_of(metric, &s.labels);
                if parts.is_empty() || !matches(&selection.matchers, &labels) {
                    continue;
                }
                parts.sort_by_key(Part::key);
                out.push((labels, parts));
            }
        }
        Answer::from_parts(&selection.need, out)
    }
}

pub(super) use crate::db::summaries::HOUR_MS;

/// The hours whose every minute lies in `(from, to]` (minute ends).
fn whole_hours(from_ms: i64, to_ms: i64) -> Vec<i64> {
    let first = hour_of(from_ms + MINUTE_MS);
    let first = if first * HOUR_MS < from_ms {
        first + 1
    } else {
        first
    };
    let last = hour_of(to_ms);
    let last = if (last + 1) * HOUR_MS > to_ms {
        last - 1
    } else {
        last
    };
    (first..=last).collect()
}

/// The minutes of `(from, to]` but those of `hours` (ascending), as ranges `(a, b]`.
fn without_hours(from_ms: i64, to_ms: i64, hours: &[i64]) -> Vec<(i64, i64)> {
    let mut ranges = Vec::new();
    let mut at = from_ms;
    for &hour in hours {
        if hour * HOUR_MS > at {
            ranges.push((at, hour * HOUR_MS));
        }
        at = at.max((hour + 1) * HOUR_MS);
    }
    if at < to_ms {
        ranges.push((at, to_ms));
    }
    ranges
}

/// Ranges `(a, b]` of minute ends, ascending.
type Ranges = Vec<(i64, i64)>;

/// Ranges `(a, b]` of minute ends cut in two halves of about the same width, on a minute.
fn split(ranges: &[(i64, i64)]) -> (Ranges, Ranges) {
    let total: i64 = ranges.iter().map(|(a, b)| b - a).sum();
    let mut left = total / 2 / MINUTE_MS * MINUTE_MS;
    let (mut older, mut newer) = (Vec::new(), Vec::new());
    for &(a, b) in ranges {
        if left <= 0 {
            newer.push((a, b));
        } else if b - a <= left {
            older.push((a, b));
            left -= b - a;
        } else {
            older.push((a, a + left));
            newer.push((a + left, b));
            left = 0;
        }
    }
    (older, newer)
}

/// The versions of the hours `first..=last` that have one, in the reader's snapshot, and
/// whether the hour's packed rows are of that version.
async fn versions(
    client: &tokio_postgres::Client,
    first: i64,
    last: i64,
) -> Result<Vec<(i64, String, bool)>, PromError> {
    let rows = client
        .query(
            "SELECT hour, version::text, coalesce(packed = version, false) \
             FROM system_metrics_minutes_versions WHERE hour >= $1::int8 AND hour <= $2::int8",
            &[&first, &last],
        )
        .await
        .map_err(|e| database_error(&e))?;
    Ok(rows
        .iter()
        .map(|row| (row.get(0), row.get(1), row.get(2)))
        .collect())
}

/// The summary fields a need reads of each metric.
fn fields(need: &Need) -> &'static [&'static str] {
    match need {
        Need::Samples => &[],
        Need::Latest { .. } => &["last"],
        Need::Window { function, .. } => match function {
            Summarised::Sum | Summarised::Avg => &["sum"],
            Summarised::Min => &["min"],
            Summarised::Max => &["max"],
            Summarised::Last => &["last"],
            Summarised::First => &["first"],
            Summarised::Count | Summarised::Present => &[],
        },
    }
}

/// What one read of summaries needs to know.
struct Copy<'a> {
    selection: &'a Selection,
    metrics: [bool; 2],
    minutes: Minutes,
    pending: &'a [(i64, i64)],
    budget: &'a Budget,
    conditions: &'a [String],
    fields: &'static [&'static str],
    /// The columns read of a minute row.
    columns: String,
    /// The value columns read, each after a comma.
    values: String,
    /// What is read, columns and conditions: the cache keeps hours by it.
    read: Arc<str>,
}

/// The series one read made, and the hours it was asked to keep.
struct Series {
    series: Vec<Parts>,
    filled: HashMap<i64, Hour>,
}

impl<'a> Copy<'a> {
    fn new(
        selection: &'a Selection,
        metrics: [bool; 2],
        minutes: Minutes,
        pending: &'a [(i64, i64)],
        budget: &'a Budget,
        conditions: &'a [String],
    ) -> Copy<'a> {
        let fields = fields(&selection.need);
        let mut values = Vec::new();
        for (metric, read) in Metric::ALL.iter().zip(metrics) {
            if read {
                values.extend(fields.iter().map(|f| format!(", {}_{f}", metric.column())));
            }
        }
        let values = values.concat();
        let columns = format!(
            "minute_ms, service, pod_name, namespace, node_name, samples::int8, last_ms{values}"
        );
        Copy {
            selection,
            metrics,
            minutes,
            pending,
            budget,
            conditions,
            fields,
            read: format!("{columns} | {}", conditions.join(" AND ")).into(),
            columns,
            values,
        }
    }

    /// Reads the packed `hours`, then the minutes of `ranges`, over one connection.
    async fn read_all(
        &self,
        client: &tokio_postgres::Client,
        ranges: &[(i64, i64)],
        hours: &[i64],
        fill: &HashMap<i64, String>,
    ) -> Result<Vec<Series>, PromError> {
        let mut read = Vec::new();
        if !hours.is_empty() {
            read.push(self.read_packed(client, hours, fill).await?);
        }
        if !ranges.is_empty() {
            read.push(self.read(client, ranges, fill).await?);
        }
        Ok(read)
    }

    /// Reads the packed rows of `hours`, keeping aside every minute of the hours `fill`
    /// names.
    async fn read_packed(
        &self,
        client: &tokio_postgres::Client,
        hours: &[i64],
        fill: &HashMap<i64, String>,
    ) -> Result<Series, PromError> {
        let hours: Vec<String> = hours.iter().map(i64::to_string).collect();
        let mut sql_conditions = vec![format!("hour IN ({})", hours.join(", "))];
        sql_conditions.extend(self.conditions.iter().cloned());
        let sql = format!(
            "COPY (SELECT hour, service, pod_name, namespace, node_name, minute_ms, samples, \
             last_ms{} FROM system_metrics_hours WHERE {}) TO STDOUT (FORMAT binary)",
            self.values,
            sql_conditions.join(" AND ")
        );
        self.copy_rows(client, &sql, fill, true).await
    }

    /// Turns the rows of a binary COPY out into series, minute rows or `packed` ones,
    /// keeping aside every minute of the hours `fill` names.
    async fn copy_rows(
        &self,
        client: &tokio_postgres::Client,
        sql: &str,
        fill: &HashMap<i64, String>,
        packed: bool,
    ) -> Result<Series, PromError> {
        let mut rows = SummaryRows::new(self, Some(fill));
        // Packed rows carry the hour and the minutes' ends besides a minute row's fields.
        let mut frames = Frames::new(rows.stride + if packed { 8 } else { 7 });
        let stream = client.copy_out(sql).await.map_err(|e| database_error(&e))?;
        let mut stream = std::pin::pin!(stream.map_err(|e| database_error(&e)));
        while let Some(chunk) = stream.next().await {
            frames.feed(&chunk?, &mut |data, spans| {
                if packed {
                    rows.packed_row(data, spans)
                } else {
                    rows.row(data, spans)
                }
            })?;
        }
        frames.finish()?;
        Ok(rows.finish())
    }

    /// Reads the summaries of the minutes in each `(from, to]` (minute ends) of `ranges`,
    /// keeping aside every row of the hours `fill` names.
    async fn read(
        &self,
        client: &tokio_postgres::Client,
        ranges: &[(i64, i64)],
        fill: &HashMap<i64, String>,
    ) -> Result<Series, PromError> {
        let minutes = self.minutes;
        let within: Vec<String> = ranges
            .iter()
            .map(|(from_ms, to_ms)| format!("(minute_ms > {from_ms} AND minute_ms <= {to_ms})"))
            .collect();
        let mut sql_conditions = vec![format!("({})", within.join(" OR "))];
        if !minutes.contiguous() {
            sql_conditions.push(format!(
                "(({} - minute_ms) % {step} + {step}) % {step} < {}",
                minutes.first,
                minutes.width,
                step = minutes.step
            ));
        }
        sql_conditions.extend(self.conditions.iter().cloned());
        let sql = format!(
            "COPY (SELECT {} FROM system_metrics_minutes WHERE {}) TO STDOUT (FORMAT binary)",
            self.columns,
            sql_conditions.join(" AND ")
        );
        self.copy_rows(client, &sql, fill, false).await
    }
}

/// An hour being kept aside as it is read.
struct Filling {
    hour: Hour,
    /// The place in `hour.series` of each series of the read, by its place in `seen`.
    series_at: Vec<u32>,
}

/// Summary rows turned into parts as they arrive.
struct SummaryRows<'a> {
    copy: &'a Copy<'a>,
    /// The fields read of each row: those of the need for each metric read.
    stride: usize,
    /// Each series by the raw bytes of its label fields: its place in `seen`.
    keys: HashMap<Box<[u8]>, usize>,
    /// The series in order of first appearance: the raw bytes of their label fields, their
    /// place in `series` and which metrics the selection keeps.
    seen: Vec<(Box<[u8]>, usize, [bool; 2])>,
    /// The place in `seen` of the previous row's series. The summarizer writes a pass's rows
    /// series by series, each pass in the same order of series, so a row is most often of
    /// the previous row's series or of the one seen after it; comparing its bytes to theirs
    /// costs less than hashing them.
    last: usize,
    series: Vec<Parts>,
    index: HashMap<[String; 4], usize>,
    /// The hours kept aside, by number.
    filling: HashMap<i64, Filling>,
}

impl<'a> SummaryRows<'a> {
    fn new(copy: &'a Copy<'a>, fill: Option<&HashMap<i64, String>>) -> SummaryRows<'a> {
        let stride = copy.metrics.iter().filter(|m| **m).count() * copy.fields.len();
        let filling = fill
            .into_iter()
            .flatten()
            .map(|(&number, _)| {
                let hour = Hour {
                    number,
                    stride,
                    ..Hour::default()
                };
                (
                    number,
                    Filling {
                        hour,
                        series_at: Vec::new(),
                    },
                )
            })
            .collect();
        SummaryRows {
            copy,
            stride,
            keys: HashMap::new(),
            seen: Vec::new(),
            last: usize::MAX,
            series: Vec::new(),
            index: HashMap::new(),
            filling,
        }
    }

    /// One row: minute_ms, the four label columns, samples, last_ms, then the fields read of
    /// each metric read.
    fn row(&mut self, data: &[u8], spans: &Spans) -> Result<(), PromError> {
        let minute_ms = int8_field(data, spans[0])?;
        let key = &data[spans[1].0 - 4..spans[5].0 - 4];
        let seen = self.seen_of(key, || super::label_values(data, spans))?;
        let count = int8_field(data, spans[5])? as f64;
        let last_ms = int8_field(data, spans[6])?;
        let mut values = [0.0; 2];
        for (i, value) in values.iter_mut().take(self.stride).enumerate() {
            *value = float_field(data, spans[7 + i])?;
        }
        self.minute(seen, minute_ms, count, last_ms, &values[..self.stride])
    }

    /// One packed row: hour, the four label columns, then minute_ms, samples, last_ms and the
    /// fields read of each metric read, each the hour's minutes side by side in binary form.
    fn packed_row(&mut self, data: &[u8], spans: &Spans) -> Result<(), PromError> {
        let key = &data[spans[1].0 - 4..spans[5].0 - 4];
        let seen = self.seen_of(key, || super::label_values(data, spans))?;
        let field = |i: usize| match spans[i] {
            (at, length) if length >= 0 => Ok(&data[at..at + length as usize]),
            _ => Err(malformed()),
        };
        let (minute_ms, samples, last_ms) = (field(5)?, field(6)?, field(7)?);
        let n = minute_ms.len() / 8;
        let mut columns: [&[u8]; 2] = [&[], &[]];
        for (i, column) in columns.iter_mut().take(self.stride).enumerate() {
            *column = field(8 + i)?;
        }
        let columns = &columns[..self.stride];
        if minute_ms.len() != n * 8
            || samples.len() != n * 4
            || last_ms.len() != n * 8
            || columns.iter().any(|c| c.len() != n * 8)
        {
            return Err(malformed());
        }
        let eight = |bytes: &[u8], i: usize| -> [u8; 8] {
            bytes[i * 8..i * 8 + 8].try_into().unwrap_or_default()
        };
        let mut values = [0.0; 2];
        for i in 0..n {
            let four: [u8; 4] = samples[i * 4..i * 4 + 4].try_into().unwrap_or_default();
            for (value, column) in values.iter_mut().zip(columns) {
                *value = f64::from_be_bytes(eight(column, i));
            }
            self.minute(
                seen,
                i64::from_be_bytes(eight(minute_ms, i)),
                f64::from(i32::from_be_bytes(four)),
                i64::from_be_bytes(eight(last_ms, i)),
                &values[..self.stride],
            )?;
        }
        Ok(())
    }

    /// A minute's summary of the series `seen`: kept aside if its hour is being filled, and
    /// taken.
    fn minute(
        &mut self,
        seen: usize,
        minute_ms: i64,
        count: f64,
        last_ms: i64,
        values: &[f64],
    ) -> Result<(), PromError> {
        if !self.filling.is_empty()
            && let Some(filling) = self.filling.get_mut(&hour_of(minute_ms))
        {
            if filling.series_at.len() <= seen {
                filling.series_at.resize(seen + 1, u32::MAX);
            }
            if filling.series_at[seen] == u32::MAX {
                filling.series_at[seen] = filling.hour.series.len() as u32;
                let (key, at, _) = &self.seen[seen];
                let labels = self.series[*at].labels.clone();
                filling.hour.series.push((key.clone(), labels));
            }
            filling.hour.rows.push(Row {
                series: filling.series_at[seen],
                minute_ms,
                count,
                last_ms,
            });
            filling.hour.values.extend_from_slice(values);
        }
        self.take(seen, minute_ms, count, last_ms, values)
    }

    /// The rows of a kept hour.
    fn hour(&mut self, hour: &Hour) -> Result<(), PromError> {
        for (i, row) in hour.rows.iter().enumerate() {
            let (key, labels) = &hour.series[row.series as usize];
            let seen = self.seen_of(key, || Ok(labels.clone()))?;
            self.take(
                seen,
                row.minute_ms,
                row.count,
                row.last_ms,
                hour.values_of(i),
            )?;
        }
        Ok(())
    }

    /// The place in `seen` of the series of a row's label bytes, made when first seen.
    fn seen_of(
        &mut self,
        key: &[u8],
        labels: impl FnOnce() -> Result<[String; 4], PromError>,
    ) -> Result<usize, PromError> {
        let same = |i: usize| {
            self.seen
                .get(i)
                .is_some_and(|(bytes, _, _)| **bytes == *key)
        };
        let seen = if same(self.last) {
            self.last
        } else if same(self.last.wrapping_add(1)) {
            self.last.wrapping_add(1)
        } else {
            match self.keys.get(key) {
                Some(&found) => found,
                None => {
                    let (at, keep) = self.series_of(labels()?);
                    self.keys.insert(key.into(), self.seen.len());
                    self.seen.push((key.into(), at, keep));
                    self.seen.len() - 1
                }
            }
        };
        self.last = seen;
        Ok(seen)
    }

    /// Adds a row of the series `seen` to its parts, if the query reads its minute and the
    /// minute is not pending.
    fn take(
        &mut self,
        seen: usize,
        minute_ms: i64,
        count: f64,
        last_ms: i64,
        values: &[f64],
    ) -> Result<(), PromError> {
        if !self.copy.minutes.contains(minute_ms) || is_pending(self.copy.pending, minute_ms) {
            return Ok(());
        }
        let (_, at, keep) = self.seen[seen];
        if !keep[0] && !keep[1] {
            return Ok(());
        }
        let mut kept = 0;
        let mut column = 0;
        for (m, read) in self.copy.metrics.into_iter().enumerate() {
            if !read {
                continue;
            }
            let mut summary = Summary {
                count,
                first: f64::NAN,
                last: f64::NAN,
                min: f64::NAN,
                max: f64::NAN,
                sum: f64::NAN,
                last_ms,
            };
            for field in self.copy.fields {
                let value = values[column];
                column += 1;
                match *field {
                    "first" => summary.first = value,
                    "last" => summary.last = value,
                    "min" => summary.min = value,
                    "max" => summary.max = value,
                    _ => summary.sum = value,
                }
            }
            if keep[m] {
                self.series[at].parts[m].push(Part::Minute { minute_ms, summary });
                kept += 1;
            }
        }
        self.copy.budget.take(kept)
    }

    /// The series of a row's labels, and which of its metrics the selection keeps.
    fn series_of(&mut self, labels: [String; 4]) -> (usize, [bool; 2]) {
        let keep = Metric::ALL.map(|metric| {
            self.copy.metrics[super::metric_index(metric)]
                && matches(&self.copy.selection.matchers, &labels_of(metric, &labels))
        });
        let at = match self.index.get(&labels) {
            Some(&i) => i,
            None => {
                self.index.insert(labels.clone(), self.series.len());
                self.series.push(Parts {
                    labels,
                    ..Parts::default()
                });
                self.series.len() - 1
            }
        };
        (at, keep)
    }

    fn finish(self) -> Series {
        Series {
            series: self.series,
            filled: self
                .filling
                .into_iter()
                .map(|(number, filling)| (number, filling.hour))
                .collect(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn whole_hours_are_those_inside_and_the_rest_is_read() {
        let h = HOUR_MS;
        assert_eq!(whole_hours(0, 3 * h), vec![0, 1, 2]);
        assert_eq!(whole_hours(60_000, 3 * h - 60_000), vec![1]);
        assert!(whole_hours(60_000, h).is_empty());
        assert_eq!(
            without_hours(60_000, 3 * h + 60_000, &[1]),
            vec![(60_000, h), (2 * h, 3 * h + 60_000)]
        );
        assert_eq!(without_hours(0, 2 * h, &[0, 1]), vec![]);
        let (older, newer) = split(&[(0, 2 * h), (3 * h, 4 * h)]);
        assert_eq!(older, vec![(0, 3 * h / 2)]);
        assert_eq!(newer, vec![(3 * h / 2, 2 * h), (3 * h, 4 * h)]);
    }
}

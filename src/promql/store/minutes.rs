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

use futures_util::{StreamExt, TryStreamExt};

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
    let copy = Copy {
        selection,
        metrics,
        minutes,
        pending: &pending,
        budget,
        conditions: &conditions,
    };
    let (mut series, mut index) = match second {
        Some(second) if minutes.last - minutes.after_ms() >= SPLIT_MS => {
            let middle = minutes.after_ms()
                + (minutes.last - minutes.after_ms()) / 2 / MINUTE_MS * MINUTE_MS;
            let (older, newer) = futures_util::future::try_join(
                copy.read(second, minutes.after_ms(), middle),
                copy.read(client, middle, minutes.last),
            )
            .await?;
            let (mut series, mut index) = older;
            for newer in newer.0 {
                match index.get(&newer.labels) {
                    Some(&i) => {
                        for m in 0..2 {
                            series[i].parts[m].extend_from_slice(&newer.parts[m]);
                        }
                    }
                    None => {
                        index.insert(newer.labels.clone(), series.len());
                        series.push(newer);
                    }
                }
            }
            (series, index)
        }
        _ => copy.read(client, minutes.after_ms(), minutes.last).await?,
    };

    // The raw samples of the pending minutes.
    if !pending.is_empty() {
        let times: Vec<String> = pending
            .iter()
            .map(|(a, b)| {
                format!(
                    "(time > {} AND time < {})",
                    super::time_literal(a - MINUTE_MS),
                    super::time_literal(b + 1)
                )
            })
            .collect();
        let scan = Scan {
            conditions,
            metrics,
            from_ms: selection.start_ms,
            to_ms: selection.end_ms,
            members: vec![member],
        };
        let reads = copy_raw(
            client,
            &scan,
            selections,
            budget,
            minutes.after_ms(),
            minutes.last,
            Some(format!("({})", times.join(" OR "))),
        )
        .await?;
        for read in reads {
            let at = match index.get(&read.labels) {
                Some(&i) => i,
                None => {
                    index.insert(read.labels.clone(), series.len());
                    series.push(Parts {
                        labels: read.labels.clone(),
                        ..Parts::default()
                    });
                    series.len() - 1
                }
            };
            for m in 0..2 {
                if read.keep[m] {
                    let samples = read.timestamps.iter().zip(&read.values[m]);
                    series[at].parts[m].extend(samples.map(|(&t, &v)| Part::Sample { t, v }));
                }
            }
        }
    }

    let mut out: Vec<(Labels, Vec<Part>)> = Vec::new();
    for s in series {
        for (metric, mut parts) in Metric::ALL.into_iter().zip(s.parts) {
            let labels = labels_of(metric, &s.labels);
            if parts.is_empty() || !matches(&selection.matchers, &labels) {
                continue;
            }
            parts.sort_by_key(Part::key);
            out.push((labels, parts));
        }
    }
    Ok(Answer::from_parts(&selection.need, out))
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
}

type Series = (Vec<Parts>, HashMap<[String; 4], usize>);

impl Copy<'_> {
    /// Reads the summaries of the minutes in `(from, to]` (minute ends).
    async fn read(
        &self,
        client: &tokio_postgres::Client,
        from_ms: i64,
        to_ms: i64,
    ) -> Result<Series, PromError> {
        let minutes = self.minutes;
        let mut sql_conditions = vec![
            format!("minute_ms > {from_ms}"),
            format!("minute_ms <= {to_ms}"),
        ];
        if !minutes.contiguous() {
            sql_conditions.push(format!(
                "(({} - minute_ms) % {step} + {step}) % {step} < {}",
                minutes.first,
                minutes.width,
                step = minutes.step
            ));
        }
        sql_conditions.extend(self.conditions.iter().cloned());
        let fields = fields(&self.selection.need);
        let mut columns = vec![
            "minute_ms, service, pod_name, namespace, node_name, samples::int8, last_ms".to_owned(),
        ];
        for (metric, read) in Metric::ALL.iter().zip(self.metrics) {
            if read {
                columns.extend(fields.iter().map(|f| format!("{}_{f}", metric.column())));
            }
        }
        let sql = format!(
            "COPY (SELECT {} FROM system_metrics_minutes WHERE {}) TO STDOUT (FORMAT binary)",
            columns.join(", "),
            sql_conditions.join(" AND ")
        );
        let stream = client
            .copy_out(&sql)
            .await
            .map_err(|e| database_error(&e))?;
        let mut series = Vec::new();
        let mut index = HashMap::new();
        let mut rows = SummaryRows {
            copy: self,
            fields,
            keys: HashMap::new(),
            series: &mut series,
            index: &mut index,
        };
        let read = self.metrics.iter().filter(|m| **m).count();
        let mut frames = Frames::new(7 + read * fields.len());
        let mut stream = std::pin::pin!(stream.map_err(|e| database_error(&e)));
        while let Some(chunk) = stream.next().await {
            frames.feed(&chunk?, &mut |data, spans| rows.row(data, spans))?;
        }
        frames.finish()?;
        Ok((series, index))
    }
}

/// Summary rows turned into parts as they arrive.
struct SummaryRows<'a> {
    copy: &'a Copy<'a>,
    fields: &'static [&'static str],
    /// Each series by the raw bytes of its label fields, with which metrics it keeps.
    keys: HashMap<Box<[u8]>, (usize, [bool; 2])>,
    series: &'a mut Vec<Parts>,
    index: &'a mut HashMap<[String; 4], usize>,
}

impl SummaryRows<'_> {
    /// One row: minute_ms, the four label columns, samples, last_ms, then the fields read of
    /// each metric read.
    fn row(&mut self, data: &[u8], spans: &Spans) -> Result<(), PromError> {
        let minute_ms = int8_field(data, spans[0])?;
        if !self.copy.minutes.contains(minute_ms) || is_pending(self.copy.pending, minute_ms) {
            return Ok(());
        }
        let key = &data[spans[1].0 - 4..spans[5].0 - 4];
        let (at, keep) = match self.keys.get(key) {
            Some(&found) => found,
            None => {
                let found = self.series_of(data, spans)?;
                self.keys.insert(key.into(), found);
                found
            }
        };
        if !keep[0] && !keep[1] {
            return Ok(());
        }
        let count = int8_field(data, spans[5])? as f64;
        let last_ms = int8_field(data, spans[6])?;
        let mut kept = 0;
        let mut column = 7;
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
            for field in self.fields {
                let value = float_field(data, spans[column])?;
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
    fn series_of(&mut self, data: &[u8], spans: &Spans) -> Result<(usize, [bool; 2]), PromError> {
        let labels = super::label_values(data, spans)?;
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
        Ok((at, keep))
    }
}

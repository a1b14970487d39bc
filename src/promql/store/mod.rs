//! The PostgreSQL [`Storage`] of the PromQL engine: raw samples of `system_metrics`, read by
//! binary `COPY (SELECT …) TO STDOUT`, which is the fastest way this server hands out rows
//! (measured over 4.32 M rows: 2.4 s for a COPY of the labels and one metric to a client that
//! discards it, where the same rows through a cursor of a plain query cost more per row on
//! both ends).
//!
//! How a read is shaped, and why:
//! - Rows are read by a sequential scan of the time range, in no order: the samples of a
//!   series arrive in time order anyway (they are written so), and ordering by series would
//!   make the server sort millions of rows. A series is sorted here only if a sample came
//!   out of order.
//! - Equality, inequality and literal-set matchers (`pod=~"a|b"`, what Grafana makes of a
//!   multi-value variable) are pushed into SQL, which only narrows the rows; every matcher is
//!   then applied exactly by [`matches`] (RE2 semantics) to each distinct label set, once,
//!   when the series is first seen: rows of series no selection wants are skipped unread.
//! - A time range is split among [`PARTS`] connections read at once (the server scans with
//!   one process each), within a process-wide bound of [`READERS`] connections.
//! - Selections with the same pushed conditions and overlapping ranges (`cpu / memory` of the
//!   same pods) share one scan: both metrics are columns of the same rows.
//! - Every round trip is bounded by the statement timeout, on the server as on the client;
//!   more than `max_samples` samples kept is refused while reading, not after.
//!
//! COPY takes no bind parameters, so the few values written into its SQL are literals made
//! here: times as exact UTC timestamps, label values as escape strings (`E'…'`, whose meaning
//! does not depend on `standard_conforming_strings`); a value that cannot be written safely is
//! simply not pushed down.

use std::collections::HashMap;
use std::time::Duration;

use futures_util::{StreamExt, TryStreamExt};
use promql_parser::label::{MatchOp, Matcher, Matchers};
use tokio::sync::Semaphore;

mod cache;
mod minutes;

pub(crate) use cache::Cache;

use super::{JOB, Labels, Limits, Metric, NAME_LABEL, PromError, label_column};
use crate::db::queries::DbPool;

pub(crate) use super::engine::{Answer, SampleSeries, Selection, Storage, matches};

/// Connections one scan splits its time range among.
const PARTS: usize = 2;

/// Reader connections open at once in the process: each is a server process scanning, and
/// the server has few cores.
const READERS: usize = 4;

static READER_PERMITS: Semaphore = Semaphore::const_new(READERS);

/// The bound of the summaries' cache where the process sets none: a day of 500 pods read
/// four ways (CPU and memory, last values and sums) takes about 100 MiB.
pub(crate) const SUMMARY_CACHE_BYTES: usize = 256 << 20;

static SUMMARY_CACHE: std::sync::OnceLock<Cache> = std::sync::OnceLock::new();

/// Bounds the summaries' cache to `bytes` (0: none kept); only the first call, before any
/// query, counts.
pub(crate) fn set_summary_cache_bytes(bytes: usize) {
    let _ = SUMMARY_CACHE.set(Cache::new(bytes));
}

/// The process's cache of summaries read.
pub(crate) fn summary_cache() -> &'static Cache {
    SUMMARY_CACHE.get_or_init(|| Cache::new(SUMMARY_CACHE_BYTES))
}

/// The label columns in the order a scan reads them, with their label names.
const COLUMNS: [(&str, &str); 4] = [
    ("service", "service"),
    ("pod_name", "pod"),
    ("namespace", "namespace"),
    ("node_name", "node"),
];

/// Samples of `system_metrics` over the pool's database.
pub(crate) struct PgStorage<'a> {
    pool: &'a DbPool,
}

impl<'a> PgStorage<'a> {
    pub(crate) fn new(pool: &'a DbPool) -> PgStorage<'a> {
        PgStorage { pool }
    }
}

impl Storage for PgStorage<'_> {
    fn select(
        &self,
        selections: &[Selection],
        limits: Limits,
    ) -> impl std::future::Future<Output = Result<Vec<Answer>, PromError>> + Send {
        select(self.pool, selections, limits)
    }
}

/// One sequential read of the table: the rows of a time range under some pushed conditions,
/// for the selections it serves.
struct Scan {
    conditions: Vec<String>,
    /// Which metrics are read: `cpu`, `memory`.
    metrics: [bool; 2],
    /// The range read, `(from, to]` in ms.
    from_ms: i64,
    to_ms: i64,
    /// The selections served, by index.
    members: Vec<usize>,
}

/// One series as a scan read it: its label values (in [`COLUMNS`] order) and samples of the
/// metrics kept, in time order.
struct Read {
    labels: [String; 4],
    /// Whether each metric's series is wanted by some selection.
    keep: [bool; 2],
    timestamps: Vec<i64>,
    values: [Vec<f64>; 2],
}

fn metric_index(metric: Metric) -> usize {
    match metric {
        Metric::Cpu => 0,
        Metric::Memory => 1,
    }
}

/// The labels of a series of `metric` read with `values`.
fn labels_of(metric: Metric, values: &[String; 4]) -> Labels {
    let mut labels = Labels::new();
    labels.insert(NAME_LABEL.into(), metric.name().into());
    labels.insert("job".into(), JOB.into());
    for ((_, label), value) in COLUMNS.iter().zip(values) {
        labels.insert((*label).into(), value.clone());
    }
    labels
}

/// The groups of matchers any of which a series must satisfy.
fn groups(matchers: &Matchers) -> Vec<Vec<&Matcher>> {
    if matchers.or_matchers.is_empty() {
        vec![matchers.matchers.iter().collect()]
    } else {
        matchers
            .or_matchers
            .iter()
            .map(|group| group.iter().chain(&matchers.matchers).collect())
            .collect()
    }
}

/// Whether a series of `metric` may match: the matchers on what is the same for every series
/// of it (its name, `job`, labels no series has) hold.
fn may_match(matchers: &Matchers, metric: Metric) -> bool {
    groups(matchers).iter().any(|group| {
        group.iter().all(|m| match m.name.as_str() {
            NAME_LABEL => m.is_match(metric.name()),
            "job" => m.is_match(JOB),
            name if label_column(name).is_some() => true,
            _ => m.is_match(""),
        })
    })
}

/// A string as a PostgreSQL escape-string literal, or `None` where it cannot be one (a NUL,
/// which no text value holds).
fn literal(value: &str) -> Option<String> {
    if value.contains('\0') {
        return None;
    }
    let mut out = String::with_capacity(value.len() + 3);
    out.push_str("E'");
    for c in value.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '\'' => out.push_str("''"),
            c => out.push(c),
        }
    }
    out.push('\'');
    Some(out)
}

/// The values a regular expression matches exactly, if it is a plain alternation of
/// literals (`a|b|c`, `(a|b)`, `a\.b`): the sets Grafana writes for multi-value variables.
fn literal_set(regex: &str) -> Option<Vec<String>> {
    let inner = regex
        .strip_prefix('(')
        .and_then(|r| r.strip_suffix(')'))
        .unwrap_or(regex);
    let mut values = Vec::new();
    for alternative in inner.split('|') {
        let mut value = String::new();
        let mut chars = alternative.chars();
        while let Some(c) = chars.next() {
            match c {
                '\\' => match chars.next() {
                    Some(e @ ('.' | '-' | '/' | ':' | '_')) => value.push(e),
                    _ => return None,
                },
                c if c.is_ascii_alphanumeric()
                    || matches!(c, '-' | '_' | '/' | ':' | '@' | '=' | ',') =>
                {
                    value.push(c)
                }
                _ => return None,
            }
        }
        values.push(value);
    }
    Some(values)
}

/// The SQL conditions a selection's matchers imply on the label columns: each narrows the
/// rows to a superset of what the matchers select. Alternatives (`or`) are not pushed.
fn pushed(matchers: &Matchers) -> Vec<String> {
    if !matchers.or_matchers.is_empty() {
        return Vec::new();
    }
    let mut conditions = Vec::new();
    for m in &matchers.matchers {
        let Some(column) = label_column(&m.name) else {
            continue;
        };
        let condition = match &m.op {
            MatchOp::Equal => literal(&m.value).map(|v| format!("{column} = {v}")),
            MatchOp::NotEqual => literal(&m.value).map(|v| format!("{column} <> {v}")),
            MatchOp::Re(_) => literal_set(&m.value).and_then(|values| {
                let literals: Option<Vec<String>> = values.iter().map(|v| literal(v)).collect();
                literals.map(|l| format!("{column} IN ({})", l.join(", ")))
            }),
            MatchOp::NotRe(_) => None,
        };
        conditions.extend(condition);
    }
    conditions.sort();
    conditions.dedup();
    conditions
}

/// A time as an exact `timestamptz` literal; times beyond PostgreSQL's range are its
/// infinities (no sample lies there).
fn time_literal(ms: i64) -> String {
    match chrono::DateTime::from_timestamp_millis(ms) {
        Some(t) if (-62_135_596_800_000..=253_402_300_799_999).contains(&ms) => {
            format!("'{}'::timestamptz", t.format("%Y-%m-%d %H:%M:%S%.3f+00"))
        }
        _ if ms < 0 => "'-infinity'::timestamptz".into(),
        _ => "'infinity'::timestamptz".into(),
    }
}

/// Whether summaries answer a selection: its need allows them, and it reads something.
fn from_summaries(selection: &Selection) -> bool {
    selection.need.minutes().is_some() && selection.start_ms < selection.end_ms
}

/// The scans of raw rows that serve `selections` (but those summaries answer).
fn plan(selections: &[Selection]) -> Vec<Scan> {
    let mut scans: Vec<Scan> = Vec::new();
    for (index, selection) in selections.iter().enumerate() {
        if from_summaries(selection) {
            continue;
        }
        let metrics = Metric::ALL.map(|m| may_match(&selection.matchers, m));
        if !metrics.iter().any(|m| *m) || selection.end_ms <= selection.start_ms {
            continue;
        }
        let conditions = pushed(&selection.matchers);
        let shared = scans.iter_mut().find(|s| {
            s.conditions == conditions
                && s.from_ms <= selection.end_ms
                && selection.start_ms <= s.to_ms
        });
        match shared {
            Some(scan) => {
                scan.from_ms = scan.from_ms.min(selection.start_ms);
                scan.to_ms = scan.to_ms.max(selection.end_ms);
                scan.metrics = [scan.metrics[0] || metrics[0], scan.metrics[1] || metrics[1]];
                scan.members.push(index);
            }
            None => scans.push(Scan {
                conditions,
                metrics,
                from_ms: selection.start_ms,
                to_ms: selection.end_ms,
                members: vec![index],
            }),
        }
    }
    scans
}

fn too_many(limit: usize) -> PromError {
    PromError::Execution(format!(
        "the query would load more than {limit} samples (PROMETHEUS_MAX_SAMPLES): narrow the selectors or the range, or widen the step"
    ))
}

/// A database error as the API reports it: the server refusing the statement itself is the
/// query's (422); a lost connection, a cancelled or timed-out statement, a server out of
/// resources is the database being unavailable (503).
fn database_error(e: &tokio_postgres::Error) -> PromError {
    let text = crate::db::describe(e);
    log::warn!("PromQL read failed: {text}");
    match e.code() {
        Some(code) if !matches!(&code.code()[..2], "08" | "53" | "57" | "58" | "40") => {
            PromError::Execution(format!("the database refused the query: {text}"))
        }
        _ => PromError::Unavailable(format!("database unavailable: {text}")),
    }
}

fn timed_out(limit: Duration) -> PromError {
    log::warn!(
        "PromQL read failed: the database did not answer within {} ms",
        limit.as_millis()
    );
    PromError::Unavailable(format!(
        "database unavailable: the database did not answer within {} ms",
        limit.as_millis()
    ))
}

/// Answers `selections`: from summaries where they give the same answer, otherwise each
/// with its series that have at least one sample in its range `(start, end]`, sorted by
/// labels.
pub(crate) async fn select(
    pool: &DbPool,
    selections: &[Selection],
    limits: Limits,
) -> Result<Vec<Answer>, PromError> {
    let scans = plan(selections);
    let summarised: Vec<usize> = (0..selections.len())
        .filter(|&i| from_summaries(&selections[i]))
        .collect();
    let budget = Budget {
        left: std::sync::atomic::AtomicI64::new(limits.max_samples as i64),
        limit: limits.max_samples,
    };
    let raw = futures_util::future::try_join_all(
        scans
            .iter()
            .map(|scan| read_scan(pool, scan, selections, &budget)),
    );
    let minutes = async {
        if summarised.is_empty() {
            Ok(Vec::new())
        } else {
            minutes::read(pool, selections, &summarised, &budget).await
        }
    };
    let (reads, answered) = futures_util::future::try_join(raw, minutes).await?;
    let mut out: Vec<Vec<SampleSeries>> = selections.iter().map(|_| Vec::new()).collect();
    for (scan, series) in scans.iter().zip(reads) {
        for read in &series {
            for metric in Metric::ALL {
                let m = metric_index(metric);
                if !read.keep[m] {
                    continue;
                }
                let labels = labels_of(metric, &read.labels);
                for &member in &scan.members {
                    let selection = &selections[member];
                    if !matches(&selection.matchers, &labels) {
                        continue;
                    }
                    let first = read
                        .timestamps
                        .partition_point(|t| *t <= selection.start_ms);
                    let last = read.timestamps.partition_point(|t| *t <= selection.end_ms);
                    if first == last {
                        continue;
                    }
                    out[member].push(SampleSeries {
                        labels: labels.clone(),
                        timestamps: read.timestamps[first..last].to_vec(),
                        values: read.values[m][first..last].to_vec(),
                    });
                }
            }
        }
    }
    for series in &mut out {
        series.sort_by(|a, b| a.labels.cmp(&b.labels));
    }
    let mut answers: Vec<Answer> = out.into_iter().map(Answer::Samples).collect();
    for (member, answer) in summarised.into_iter().zip(answered) {
        answers[member] = answer;
    }
    Ok(answers)
}

/// The samples a query may still keep, shared by the scans read at once.
struct Budget {
    left: std::sync::atomic::AtomicI64,
    limit: usize,
}

impl Budget {
    fn take(&self, n: usize) -> Result<(), PromError> {
        let before = self
            .left
            .fetch_sub(n as i64, std::sync::atomic::Ordering::Relaxed);
        if before < n as i64 {
            return Err(too_many(self.limit));
        }
        Ok(())
    }
}

/// Reads one scan, its range split among [`PARTS`] connections, and joins the parts of each
/// series in time order.
async fn read_scan(
    pool: &DbPool,
    scan: &Scan,
    selections: &[Selection],
    budget: &Budget,
) -> Result<Vec<Read>, PromError> {
    let span = scan.to_ms - scan.from_ms;
    // A short range is not worth a second connection.
    let parts = if span >= 3_600_000 { PARTS } else { 1 };
    let bounds: Vec<i64> = (0..=parts)
        .map(|i| scan.from_ms + (span as i128 * i as i128 / parts as i128) as i64)
        .collect();
    let pieces = futures_util::future::try_join_all(
        bounds
            .windows(2)
            .map(|w| read_part(pool, scan, selections, budget, w[0], w[1])),
    )
    .await?;
    let mut joined: Vec<Read> = Vec::new();
    let mut index: HashMap<[String; 4], usize> = HashMap::new();
    for piece in pieces {
        for read in piece {
            match index.get(&read.labels) {
                Some(&i) => {
                    let have = &mut joined[i];
                    have.timestamps.extend(read.timestamps);
                    for m in 0..2 {
                        have.values[m].extend_from_slice(&read.values[m]);
                    }
                }
                None => {
                    index.insert(read.labels.clone(), joined.len());
                    joined.push(read);
                }
            }
        }
    }
    Ok(joined)
}

/// Reads the rows of `(from, to]` of a scan over one connection of its own.
async fn read_part(
    pool: &DbPool,
    scan: &Scan,
    selections: &[Selection],
    budget: &Budget,
    from_ms: i64,
    to_ms: i64,
) -> Result<Vec<Read>, PromError> {
    let reader = Reader::open(pool).await?;
    reader
        .within(async {
            reader.set_timeout().await?;
            copy_raw(
                &reader.client,
                scan,
                selections,
                budget,
                from_ms,
                to_ms,
                None,
            )
            .await
        })
        .await
}

/// A reader connection of its own, held within the process-wide bound.
struct Reader {
    client: tokio_postgres::Client,
    limit: Duration,
    _permit: tokio::sync::SemaphorePermit<'static>,
}

impl Reader {
    async fn open(pool: &DbPool) -> Result<Reader, PromError> {
        let permit = READER_PERMITS
            .acquire()
            .await
            .map_err(|_| PromError::Unavailable("database unavailable: readers closed".into()))?;
        Reader::connect(pool, permit).await
    }

    /// A reader if one is free at once: for a read that holds one already and would help
    /// itself with another, which must not wait (two such reads could wait for each other).
    async fn open_if_free(pool: &DbPool) -> Result<Option<Reader>, PromError> {
        match READER_PERMITS.try_acquire() {
            Ok(permit) => Ok(Some(Reader::connect(pool, permit).await?)),
            Err(_) => Ok(None),
        }
    }

    async fn connect(
        pool: &DbPool,
        permit: tokio::sync::SemaphorePermit<'static>,
    ) -> Result<Reader, PromError> {
        let timeouts = pool.timeouts();
        let client = crate::db::connect(pool.url(), &timeouts)
            .await
            .map_err(|e| {
                log::warn!("PromQL read failed: {e}");
                PromError::Unavailable(format!("database unavailable: {e}"))
            })?;
        Ok(Reader {
            client,
            limit: timeouts.statement,
            _permit: permit,
        })
    }

    /// Bounds every statement by the statement timeout on the server.
    async fn set_timeout(&self) -> Result<(), PromError> {
        self.client
            .batch_execute(&format!(
                "SET statement_timeout = {}",
                self.limit.as_millis().max(1)
            ))
            .await
            .map_err(|e| database_error(&e))
    }

    /// Runs `reading`, bounded by the statement timeout on the client as well.
    async fn within<T>(
        &self,
        reading: impl std::future::Future<Output = Result<T, PromError>>,
    ) -> Result<T, PromError> {
        match tokio::time::timeout(self.limit, reading).await {
            Ok(result) => result,
            Err(_) => Err(timed_out(self.limit)),
        }
    }
}

/// Reads the raw rows of `(from, to]` of a scan, and only those `times` selects if given.
async fn copy_raw(
    client: &tokio_postgres::Client,
    scan: &Scan,
    selections: &[Selection],
    budget: &Budget,
    from_ms: i64,
    to_ms: i64,
    times: Option<String>,
) -> Result<Vec<Read>, PromError> {
    let mut conditions = vec![
        format!("time > {}", time_literal(from_ms)),
        // Times finer than a millisecond are read as their millisecond (floored), so the
        // last millisecond of the range is read whole and the rest cut here.
        format!("time < {}", time_literal(to_ms.saturating_add(1))),
    ];
    conditions.extend(times);
    conditions.extend(scan.conditions.iter().cloned());
    let columns: Vec<&str> = Metric::ALL
        .iter()
        .zip(scan.metrics)
        .map(|(m, read)| if read { m.column() } else { "NULL::float8" })
        .collect();
    let sql = format!(
        "COPY (SELECT time, service, pod_name, namespace, node_name, {} FROM system_metrics WHERE {}) TO STDOUT (FORMAT binary)",
        columns.join(", "),
        conditions.join(" AND ")
    );
    let stream = client
        .copy_out(&sql)
        .await
        .map_err(|e| database_error(&e))?;
    let mut decoder = Decoder::new(scan, selections, budget, from_ms, to_ms);
    let mut stream = std::pin::pin!(stream.map_err(|e| database_error(&e)));
    while let Some(chunk) = stream.next().await {
        decoder.feed(&chunk?)?;
    }
    decoder.finish()
}

/// The framing of a binary COPY stream: its header, then rows of a known number of fields,
/// whatever the chunks they arrive split into.
struct Frames {
    fields: usize,
    /// Bytes of a row split across chunks.
    carry: Vec<u8>,
    /// The field spans of the row being parsed, kept across rows: the server sends each row
    /// as a message of its own, so a fresh vector per call would be an allocation per row.
    spans: Vec<(usize, i32)>,
    header_seen: bool,
    ended: bool,
}

/// The fields of one row: (start, length), length −1 for NULL.
type Spans = [(usize, i32)];

impl Frames {
    fn new(fields: usize) -> Frames {
        Frames {
            fields,
            carry: Vec::new(),
            spans: vec![(0, 0); fields],
            header_seen: false,
            ended: false,
        }
    }

    /// Hands each complete row of `chunk` (and of the bytes carried before it) to `row`.
    fn feed(
        &mut self,
        chunk: &[u8],
        row: &mut impl FnMut(&[u8], &Spans) -> Result<(), PromError>,
    ) -> Result<(), PromError> {
        if self.carry.is_empty() {
            let used = self.parse(chunk, row)?;
            self.carry.extend_from_slice(&chunk[used..]);
        } else {
            let mut data = std::mem::take(&mut self.carry);
            data.extend_from_slice(chunk);
            let used = self.parse(&data, row)?;
            data.drain(..used);
            self.carry = data;
        }
        Ok(())
    }

    /// Parses the complete rows at the start of `data`; answers how many bytes they took.
    fn parse(
        &mut self,
        data: &[u8],
        row: &mut impl FnMut(&[u8], &Spans) -> Result<(), PromError>,
    ) -> Result<usize, PromError> {
        let mut at = 0;
        if !self.header_seen {
            if data.len() < SIGNATURE.len() + 8 {
                return Ok(0);
            }
            if &data[..SIGNATURE.len()] != SIGNATURE {
                return Err(malformed());
            }
            let extension = i32::from_be_bytes(read4(data, SIGNATURE.len() + 4)?) as usize;
            let end = SIGNATURE.len() + 8 + extension;
            if data.len() < end {
                return Ok(0);
            }
            at = end;
            self.header_seen = true;
        }
        let mut spans = std::mem::take(&mut self.spans);
        let parsed = self.rows(data, at, &mut spans, row);
        self.spans = spans;
        parsed
    }

    /// Hands each complete row from `at` on to `row`; answers where the rows handed end.
    fn rows(
        &mut self,
        data: &[u8],
        mut at: usize,
        spans: &mut Spans,
        row: &mut impl FnMut(&[u8], &Spans) -> Result<(), PromError>,
    ) -> Result<usize, PromError> {
        while !self.ended {
            match self.frame(&data[at..], spans)? {
                Some(used) => {
                    if !self.ended {
                        row(&data[at..at + used], spans)?;
                    }
                    at += used;
                }
                None => break,
            }
        }
        Ok(at)
    }

    /// The field spans of the row at the start of `data`, if it is complete: answers the
    /// bytes it took.
    fn frame(&mut self, data: &[u8], spans: &mut Spans) -> Result<Option<usize>, PromError> {
        if data.len() < 2 {
            return Ok(None);
        }
        let fields = i16::from_be_bytes([data[0], data[1]]);
        if fields == -1 {
            self.ended = true;
            return Ok(Some(2));
        }
        if fields as usize != self.fields {
            return Err(malformed());
        }
        let mut at = 2;
        for span in spans.iter_mut() {
            if data.len() < at + 4 {
                return Ok(None);
            }
            let length = i32::from_be_bytes(read4(data, at)?);
            at += 4;
            *span = (at, length);
            if length > 0 {
                at += length as usize;
            }
            if data.len() < at {
                return Ok(None);
            }
        }
        Ok(Some(at))
    }

    /// Whether the stream ended where it should.
    fn finish(&self) -> Result<(), PromError> {
        if !self.ended || !self.carry.is_empty() {
            return Err(malformed());
        }
        Ok(())
    }
}

/// An 8-byte field of a row, or NaN where it is NULL.
fn float_field(data: &[u8], (at, length): (usize, i32)) -> Result<f64, PromError> {
    match length {
        -1 => Ok(f64::NAN),
        8 => Ok(f64::from_be_bytes(read8(data, at)?)),
        _ => Err(malformed()),
    }
}

fn int8_field(data: &[u8], (at, length): (usize, i32)) -> Result<i64, PromError> {
    match length {
        8 => Ok(i64::from_be_bytes(read8(data, at)?)),
        _ => Err(malformed()),
    }
}

/// Binary COPY rows turned into series as they arrive.
struct Decoder<'a> {
    frames: Frames,
    rows: Rows<'a>,
}

/// The series of raw rows read so far.
struct Rows<'a> {
    scan: &'a Scan,
    selections: &'a [Selection],
    budget: &'a Budget,
    from_ms: i64,
    to_ms: i64,
    /// Each series by the raw bytes of its label fields.
    index: HashMap<Box<[u8]>, usize>,
    /// The raw label bytes of each series, in order of first appearance.
    keys: Vec<Box<[u8]>>,
    series: Vec<Read>,
    /// The series of the previous row: rows come round the series in the same order at each
    /// time, so the next row is most often of the next series.
    last: usize,
    /// Series that got a sample older than one they had.
    unsorted: Vec<bool>,
}

const SIGNATURE: &[u8] = b"PGCOPY\n\xff\r\n\0";

/// Microseconds from the Unix epoch to PostgreSQL's, 2000-01-01.
const PG_EPOCH_MS: i64 = 946_684_800_000;

fn malformed() -> PromError {
    PromError::Unavailable("database unavailable: malformed COPY data".into())
}

/// The four label columns of a row (service, pod, namespace, node: fields 1 to 4 of `spans`),
/// each checked to be present and UTF-8.
fn label_values(data: &[u8], spans: &Spans) -> Result<[String; 4], PromError> {
    let mut labels: [String; 4] = Default::default();
    for (label, &(at, length)) in labels.iter_mut().zip(&spans[1..5]) {
        if length < 0 {
            return Err(malformed());
        }
        *label = std::str::from_utf8(&data[at..at + length as usize])
            .map_err(|_| malformed())?
            .to_owned();
    }
    Ok(labels)
}

impl<'a> Decoder<'a> {
    fn new(
        scan: &'a Scan,
        selections: &'a [Selection],
        budget: &'a Budget,
        from_ms: i64,
        to_ms: i64,
    ) -> Decoder<'a> {
        Decoder {
            frames: Frames::new(7),
            rows: Rows {
                scan,
                selections,
                budget,
                from_ms,
                to_ms,
                index: HashMap::new(),
                keys: Vec::new(),
                series: Vec::new(),
                last: usize::MAX,
                unsorted: Vec::new(),
            },
        }
    }

    fn feed(&mut self, chunk: &[u8]) -> Result<(), PromError> {
        let rows = &mut self.rows;
        self.frames
            .feed(chunk, &mut |data, spans| rows.row(data, spans))
    }

    fn finish(self) -> Result<Vec<Read>, PromError> {
        self.frames.finish()?;
        self.rows.finish()
    }
}

impl<'a> Rows<'a> {
    /// One row: time, the four label columns, cpu, memory.
    fn row(&mut self, data: &[u8], spans: &Spans) -> Result<(), PromError> {
        let (time_at, time_len) = spans[0];
        if time_len != 8 {
            return Err(malformed());
        }
        let micros = i64::from_be_bytes(read8(data, time_at)?);
        let t = micros.div_euclid(1000) + PG_EPOCH_MS;
        if t <= self.from_ms || t > self.to_ms {
            return Ok(());
        }
        // The label fields, lengths included, are contiguous: they are the series' key.
        let key = &data[spans[1].0 - 4..spans[5].0 - 4];
        let series = self.series_of(key, data, spans)?;
        let read = &mut self.series[series];
        if !read.keep[0] && !read.keep[1] {
            return Ok(());
        }
        let mut kept = 0;
        for m in 0..2 {
            if !read.keep[m] {
                continue;
            }
            let (value_at, value_len) = spans[5 + m];
            if value_len != 8 {
                return Err(malformed());
            }
            read.values[m].push(f64::from_be_bytes(read8(data, value_at)?));
            kept += 1;
        }
        self.budget.take(kept)?;
        if read.timestamps.last().is_some_and(|last| *last > t) {
            self.unsorted[series] = true;
        }
        read.timestamps.push(t);
        Ok(())
    }

    /// The series of a row's label bytes, made (and checked against the selections) when
    /// first seen.
    fn series_of(&mut self, key: &[u8], data: &[u8], spans: &Spans) -> Result<usize, PromError> {
        let guess = self.last.wrapping_add(1);
        if guess < self.keys.len() && &*self.keys[guess] == key {
            self.last = guess;
            return Ok(guess);
        }
        if let Some(&i) = self.index.get(key) {
            self.last = i;
            return Ok(i);
        }
        let labels = label_values(data, spans)?;
        let keep = Metric::ALL.map(|metric| {
            let m = metric_index(metric);
            self.scan.metrics[m] && {
                let full = labels_of(metric, &labels);
                self.scan
                    .members
                    .iter()
                    .any(|&s| matches(&self.selections[s].matchers, &full))
            }
        });
        let i = self.series.len();
        self.series.push(Read {
            labels,
            keep,
            timestamps: Vec::new(),
            values: [Vec::new(), Vec::new()],
        });
        self.keys.push(key.into());
        self.index.insert(key.into(), i);
        self.unsorted.push(false);
        self.last = i;
        Ok(i)
    }

    fn finish(mut self) -> Result<Vec<Read>, PromError> {
        for (read, unsorted) in self.series.iter_mut().zip(&self.unsorted) {
            if *unsorted {
                let mut order: Vec<usize> = (0..read.timestamps.len()).collect();
                order.sort_by_key(|&i| read.timestamps[i]);
                read.timestamps = order.iter().map(|&i| read.timestamps[i]).collect();
                for m in 0..2 {
                    if read.keep[m] {
                        read.values[m] = order.iter().map(|&i| read.values[m][i]).collect();
                    }
                }
            }
        }
        self.series
            .retain(|r| (r.keep[0] || r.keep[1]) && !r.timestamps.is_empty());
        Ok(self.series)
    }
}

fn read4(data: &[u8], at: usize) -> Result<[u8; 4], PromError> {
    data.get(at..at + 4)
        .and_then(|b| b.try_into().ok())
        .ok_or_else(malformed)
}

fn read8(data: &[u8], at: usize) -> Result<[u8; 8], PromError> {
    data.get(at..at + 8)
        .and_then(|b| b.try_into().ok())
        .ok_or_else(malformed)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn matchers(selector: &str) -> Matchers {
        match crate::promql::parse(selector) {
            Ok(promql_parser::parser::Expr::VectorSelector(vs)) => {
                let mut m = vs.matchers;
                if let Some(name) = vs.name {
                    m.matchers
                        .push(Matcher::new(MatchOp::Equal, NAME_LABEL, &name));
                }
                m
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn literal_sets_are_only_plain_alternations() {
        assert_eq!(
            literal_set("(ns-1|ns\\.2|)"),
            Some(vec!["ns-1".into(), "ns.2".into(), "".into()])
        );
        assert_eq!(literal_set("a"), Some(vec!["a".into()]));
        for regex in [".*", "a.b", "a|b.*", "(a|b))", "[ab]", "a+", "(?i)a", "a b"] {
            assert_eq!(literal_set(regex), None, "{regex}");
        }
    }

    #[test]
    fn literals_escape_quotes_and_backslashes() {
        assert_eq!(literal("it's a\\b").as_deref(), Some("E'it''s a\\\\b'"));
        assert_eq!(literal("a\0b"), None);
    }

    #[test]
    fn matchers_push_down_only_what_narrows_exactly() {
        assert_eq!(
            pushed(&matchers(
                r#"pod_cpu_usage_percent{namespace=~"ns-1|ns-2", pod!="p", service=~".*", node!~"x", job="panopticon"}"#
            )),
            vec![
                "namespace IN (E'ns-1', E'ns-2')".to_owned(),
                "pod_name <> E'p'".to_owned()
            ]
        );
        assert!(pushed(&matchers(r#"{pod="a" or pod="b"}"#)).is_empty());
    }

    #[test]
    fn metrics_are_chosen_by_name_job_and_absent_labels() {
        let m = matchers(r#"{__name__=~"pod_.*_mib"}"#);
        assert_eq!(Metric::ALL.map(|x| may_match(&m, x)), [false, true]);
        let m = matchers(r#"pod_cpu_usage_percent{job="other"}"#);
        assert_eq!(Metric::ALL.map(|x| may_match(&m, x)), [false, false]);
        let m = matchers(r#"pod_cpu_usage_percent{missing=""}"#);
        assert_eq!(Metric::ALL.map(|x| may_match(&m, x)), [true, false]);
        let m = matchers(r#"{pod="a", missing="x"}"#);
        assert_eq!(Metric::ALL.map(|x| may_match(&m, x)), [false, false]);
    }

    #[test]
    fn times_are_exact_literals() {
        assert_eq!(
            time_literal(1_765_000_000_123),
            "'2025-12-06 05:46:40.123+00'::timestamptz"
        );
        assert_eq!(time_literal(i64::MIN), "'-infinity'::timestamptz");
        assert_eq!(time_literal(i64::MAX), "'infinity'::timestamptz");
    }

    /// A binary COPY stream of rows (time µs from 2000, labels, cpu, memory).
    fn copy_data(rows: &[(i64, [&str; 4], f64, f64)]) -> Vec<u8> {
        let mut out = SIGNATURE.to_vec();
        out.extend_from_slice(&0i32.to_be_bytes());
        out.extend_from_slice(&0i32.to_be_bytes());
        for (t, labels, cpu, memory) in rows {
            out.extend_from_slice(&7i16.to_be_bytes());
            out.extend_from_slice(&8i32.to_be_bytes());
            out.extend_from_slice(&t.to_be_bytes());
            for l in labels {
                out.extend_from_slice(&(l.len() as i32).to_be_bytes());
                out.extend_from_slice(l.as_bytes());
            }
            for v in [cpu, memory] {
                out.extend_from_slice(&8i32.to_be_bytes());
                out.extend_from_slice(&v.to_be_bytes());
            }
        }
        out.extend_from_slice(&(-1i16).to_be_bytes());
        out
    }

    #[test]
    fn rows_split_anywhere_make_the_same_sorted_series() {
        let a = ["s", "pod-a", "ns", "n"];
        let b = ["s", "pod-b", "ns", "n"];
        let ms = |t: i64| (t - PG_EPOCH_MS) * 1000;
        let data = copy_data(&[
            (ms(2000), a, 1.0, 10.0),
            (ms(2000), b, 2.0, 20.0),
            (ms(1000), a, 3.0, 30.0),
            (ms(3000), b, 4.0, 40.0),
            // Outside the part's range (1000, 3000]: left out.
            (ms(3001), b, 5.0, 50.0),
        ]);
        let selections = [Selection {
            matchers: matchers(r#"pod_cpu_usage_percent{pod=~"pod-a|pod-b"}"#),
            start_ms: 0,
            end_ms: 3000,
            need: crate::promql::engine::Need::Samples,
        }];
        let scan = &plan(&selections)[0];
        for split in [1, 2, 7, 40, data.len() - 1] {
            let budget = Budget {
                left: std::sync::atomic::AtomicI64::new(100),
                limit: 100,
            };
            let mut decoder = Decoder::new(scan, &selections, &budget, 0, 3000);
            for chunk in data.chunks(split) {
                decoder.feed(chunk).unwrap();
            }
            let series = decoder.finish().unwrap();
            assert_eq!(series.len(), 2);
            assert_eq!(series[0].labels[1], "pod-a");
            assert_eq!(series[0].timestamps, vec![1000, 2000]);
            assert_eq!(series[0].values[0], vec![3.0, 1.0]);
            assert!(series[0].values[1].is_empty());
            assert_eq!(series[1].timestamps, vec![2000, 3000]);
            assert_eq!(series[1].values[0], vec![2.0, 4.0]);
        }
    }

    #[test]
    fn the_sample_budget_refuses_while_reading() {
        let a = ["s", "pod-a", "ns", "n"];
        let data = copy_data(&[(0, a, 1.0, 1.0), (1000, a, 1.0, 1.0), (2000, a, 1.0, 1.0)]);
        let selections = [Selection {
            matchers: matchers("pod_cpu_usage_percent"),
            start_ms: i64::MIN / 2,
            end_ms: i64::MAX / 2,
            need: crate::promql::engine::Need::Samples,
        }];
        let scan = &plan(&selections)[0];
        let budget = Budget {
            left: std::sync::atomic::AtomicI64::new(2),
            limit: 2,
        };
        let mut decoder = Decoder::new(scan, &selections, &budget, i64::MIN / 2, i64::MAX / 2);
        assert!(matches!(decoder.feed(&data), Err(PromError::Execution(_))));
    }
}

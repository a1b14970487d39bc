//! The selectors of a plan as SQL over `system_metrics`: the database reduces the raw rows to
//! at most one row per series and step, and nothing unbounded comes back (each statement is
//! limited to `PROMETHEUS_MAX_SAMPLES` rows and bounded by the statement timeout of
//! [`queries::bounded`]). Label values are always bound parameters; only column names from
//! [`super::LABEL_COLUMNS`] and functions chosen from closed enums are written into SQL.
//!
//! Steps are numbered from the query's first: step `i` is at `start + i × step`. A sample at
//! `τ` is seen by step `i` when `τ ≤ tᵢ < τ + window` (the window is left-open, as in
//! Prometheus 3), that is for `i` from `⌈(τ − start) / step⌉` to `⌈(τ + window − start) /
//! step⌉ − 1`, computed exactly in `numeric` milliseconds.

use chrono::{DateTime, Utc};
use diesel::QueryableByName;
use diesel::sql_types::{BigInt, Double, Text};
use diesel_async::RunQueryDsl;
use futures_util::FutureExt;

use super::plan::{OverTime, Selector};
use super::{JOB, LOOKBACK_MS, Labels, Metric, NAME_LABEL, PromError, Series, Steps};
use crate::db::queries::{self, Bind, DbPool, Params};

/// One series at one step, as the database computes it.
#[derive(Debug, QueryableByName)]
struct StepRow {
    #[diesel(sql_type = Text)]
    service: String,
    #[diesel(sql_type = Text)]
    pod_name: String,
    #[diesel(sql_type = Text)]
    namespace: String,
    #[diesel(sql_type = Text)]
    node_name: String,
    /// The step the row's value starts at.
    #[diesel(sql_type = BigInt)]
    i: i64,
    /// The last step that still sees it (selectors: within the lookback of its sample).
    #[diesel(sql_type = BigInt)]
    imax: i64,
    #[diesel(sql_type = Double)]
    v: f64,
}

/// One distinct series.
#[derive(Debug, QueryableByName)]
struct SeriesRow {
    #[diesel(sql_type = Text)]
    service: String,
    #[diesel(sql_type = Text)]
    pod_name: String,
    #[diesel(sql_type = Text)]
    namespace: String,
    #[diesel(sql_type = Text)]
    node_name: String,
}

/// One distinct label value.
#[derive(Debug, QueryableByName)]
struct ValueRow {
    #[diesel(sql_type = Text)]
    value: String,
}

fn time(ms: i64) -> Result<DateTime<Utc>, PromError> {
    DateTime::from_timestamp_millis(ms)
        .ok_or_else(|| PromError::BadData("time out of range".into()))
}

/// The labels of a series of `metric` (its name dropped where `name` is false).
fn labels(
    metric: Metric,
    name: bool,
    service: String,
    pod: String,
    namespace: String,
    node: String,
) -> Labels {
    let mut labels = Labels::new();
    if name {
        labels.insert(NAME_LABEL.into(), metric.name().into());
    }
    labels.insert("job".into(), JOB.into());
    labels.insert("service".into(), service);
    labels.insert("pod".into(), pod);
    labels.insert("namespace".into(), namespace);
    labels.insert("node".into(), node);
    labels
}

/// The selector's conditions, and the time range `(from, to]`, as SQL.
fn conditions(
    params: &mut Params,
    selector: &Selector,
    from_ms: i64,
    to_ms: i64,
) -> Result<String, PromError> {
    let mut sql = vec![
        format!("time > {}", params.add(Bind::Time(time(from_ms)?))),
        format!("time <= {}", params.add(Bind::Time(time(to_ms)?))),
    ];
    for c in &selector.conditions {
        let placeholder = params.add(Bind::Text(c.value.clone()));
        sql.push(format!("{} {} {placeholder}", c.column, c.op.sql()));
    }
    Ok(sql.join(" AND "))
}

fn too_many(limit: usize) -> PromError {
    PromError::Execution(format!(
        "the query would load more than {limit} samples (PROMETHEUS_MAX_SAMPLES): narrow the selectors or the range, or widen the step"
    ))
}

/// Runs `sql`; more than `limit` rows is refused.
async fn load<T>(
    pool: &DbPool,
    params: Params,
    sql: String,
    limit: usize,
) -> Result<Vec<T>, PromError>
where
    T: QueryableByName<diesel::pg::Pg> + Send + 'static,
{
    let conn = queries::connection(pool).await?;
    let query = params.bind_to(sql);
    let rows: Vec<T> = queries::bounded(pool, conn, |conn| query.load::<T>(conn).boxed()).await?;
    if rows.len() > limit {
        return Err(too_many(limit));
    }
    Ok(rows)
}

/// Groups rows ordered by series into series over `n` steps, each row filling the steps
/// `i..=imax` it covers (and not past the next row of its series).
fn fill(metric: Metric, name: bool, rows: Vec<StepRow>, n: usize) -> Vec<Series> {
    let mut out: Vec<Series> = Vec::new();
    let mut key: Option<(String, String, String, String)> = None;
    let mut rows = rows.into_iter().peekable();
    while let Some(row) = rows.next() {
        let row_key = (
            row.service.clone(),
            row.pod_name.clone(),
            row.namespace.clone(),
            row.node_name.clone(),
        );
        if key.as_ref() != Some(&row_key) {
            out.push(Series {
                labels: labels(
                    metric,
                    name,
                    row.service,
                    row.pod_name,
                    row.namespace,
                    row.node_name,
                ),
                points: vec![None; n],
            });
            key = Some(row_key);
        }
        let next = rows
            .peek()
            .filter(|next| {
                key.as_ref().is_some_and(|(s, p, ns, nd)| {
                    &next.service == s
                        && &next.pod_name == p
                        && &next.namespace == ns
                        && &next.node_name == nd
                })
            })
            .map(|next| next.i);
        let first = row.i.max(0);
        let mut last = row.imax.min(n as i64 - 1);
        if let Some(next) = next {
            last = last.min(next - 1);
        }
        if let Some(series) = out.last_mut() {
            for i in first..=last {
                series.points[i as usize] = Some(row.v);
            }
        }
    }
    out
}

/// `⌈(ms − start) / step⌉` for the column expression `ms`, in exact numeric arithmetic.
fn step_of(ms: &str, start: &str, step: &str) -> String {
    format!("ceil(({ms} - {start}::numeric) / {step}::numeric)")
}

const MS: &str = "(extract(epoch FROM time) * 1000)";

/// What a leaf of a plan reads: a selector or a `*_over_time` of one metric.
#[derive(Debug, Clone, Copy)]
pub enum Leaf<'a> {
    Instant(&'a Selector),
    OverTime {
        func: OverTime,
        selector: &'a Selector,
        range_ms: i64,
    },
}

impl Leaf<'_> {
    /// Whether the leaf's series keep their metric name (`last_over_time` does, as in
    /// Prometheus; the other functions drop it).
    fn keeps_name(self) -> bool {
        match self {
            Leaf::Instant(_) => true,
            Leaf::OverTime { func, .. } => func == OverTime::Last,
        }
    }

    /// The statement giving one row per series and step at which the leaf's value changes:
    /// its labels, `i`, `imax` (the last step it holds for) and `v`; no order, no limit.
    fn sql(self, params: &mut Params, metric: Metric, steps: Steps) -> Result<String, PromError> {
        match self {
            Leaf::Instant(selector) => instant_sql(params, metric, selector, steps),
            Leaf::OverTime {
                func,
                selector,
                range_ms,
            } => over_time_sql(params, metric, func, selector, range_ms, steps),
        }
    }
}

/// An instant vector selector of `metric` at each step: the newest sample of each series
/// within the lookback. The database keeps one row per series and step at which a newer
/// sample appears; the row holds for the steps after it while its sample is within the
/// lookback and no newer one has come.
fn instant_sql(
    params: &mut Params,
    metric: Metric,
    selector: &Selector,
    steps: Steps,
) -> Result<String, PromError> {
    let start_ms = steps.start_ms - selector.offset_ms;
    let last_ms = steps.last_ms() - selector.offset_ms;
    let start = params.add(Bind::BigInt(start_ms));
    let step = params.add(Bind::BigInt(steps.step_ms));
    let lookback = params.add(Bind::BigInt(LOOKBACK_MS));
    let conditions = conditions(params, selector, start_ms - LOOKBACK_MS, last_ms)?;
    Ok(format!(
        "SELECT service, pod_name, namespace, node_name, i,
                ({imax} - 1)::int8 AS imax,
                (array_agg(v ORDER BY time DESC))[1]::float8 AS v
         FROM (SELECT time, service, pod_name, namespace, node_name, {column} AS v,
                      greatest({first}, 0)::int8 AS i
               FROM system_metrics
               WHERE {conditions}) r
         GROUP BY service, pod_name, namespace, node_name, i",
        imax = step_of(
            &format!("(extract(epoch FROM max(time)) * 1000 + {lookback}::numeric)"),
            &start,
            &step
        ),
        column = metric.column(),
        first = step_of(MS, &start, &step),
    ))
}

/// `<func>_over_time(selector[range])` of `metric` at each step, computed by the database:
/// each sample is counted at every step whose window `(t − range, t]` holds it.
fn over_time_sql(
    params: &mut Params,
    metric: Metric,
    func: OverTime,
    selector: &Selector,
    range_ms: i64,
    steps: Steps,
) -> Result<String, PromError> {
    let start_ms = steps.start_ms - selector.offset_ms;
    let last_ms = steps.last_ms() - selector.offset_ms;
    let start = params.add(Bind::BigInt(start_ms));
    let step = params.add(Bind::BigInt(steps.step_ms));
    let range = params.add(Bind::BigInt(range_ms));
    let n = params.add(Bind::BigInt(steps.n as i64));
    let aggregate = match func {
        OverTime::Avg => "avg(v)".to_owned(),
        OverTime::Min => "min(v)".to_owned(),
        OverTime::Max => "max(v)".to_owned(),
        OverTime::Count => "count(*)".to_owned(),
        OverTime::Last => "(array_agg(v ORDER BY time DESC))[1]".to_owned(),
        OverTime::Quantile(q) => {
            // Prometheus answers −Inf below 0, +Inf above 1, NaN for NaN; PostgreSQL would
            // refuse those, so they are written as constants.
            let q = q.0;
            if q.is_nan() {
                "'NaN'::float8".to_owned()
            } else if q < 0.0 {
                "'-Infinity'::float8".to_owned()
            } else if q > 1.0 {
                "'Infinity'::float8".to_owned()
            } else {
                let q = params.add(Bind::Double(q));
                format!("percentile_cont({q}::float8) WITHIN GROUP (ORDER BY v)")
            }
        }
    };
    let conditions = conditions(params, selector, start_ms - range_ms, last_ms)?;
    Ok(format!(
        "SELECT service, pod_name, namespace, node_name, i, i AS imax, ({aggregate})::float8 AS v
         FROM (SELECT time, service, pod_name, namespace, node_name, {column} AS v,
                      generate_series(greatest({first}, 0)::int8,
                                      least({last} - 1, {n}::numeric - 1)::int8) AS i
               FROM system_metrics
               WHERE {conditions}) r
         GROUP BY service, pod_name, namespace, node_name, i",
        column = metric.column(),
        first = step_of(MS, &start, &step),
        last = step_of(&format!("({MS} + {range}::numeric)"), &start, &step),
    ))
}

/// The leaf's series of `metric` at each step.
pub async fn leaf(
    pool: &DbPool,
    metric: Metric,
    leaf: Leaf<'_>,
    steps: Steps,
    limit: usize,
) -> Result<Vec<Series>, PromError> {
    let mut params = Params::default();
    let inner = leaf.sql(&mut params, metric, steps)?;
    let sql = format!(
        "{inner}
         ORDER BY 1, 2, 3, 4, 5
         LIMIT {limit}",
        limit = params.add(Bind::BigInt(limit as i64 + 1)),
    );
    let rows = load(pool, params, sql, limit).await?;
    Ok(fill(metric, leaf.keeps_name(), rows, steps.n))
}

/// An aggregation the database computes over a leaf.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SqlAggregate {
    Sum,
    Avg,
    Min,
    Max,
    Count,
}

/// `op by (labels) (leaf)` over one metric, for the database to compute.
#[derive(Debug, Clone)]
pub struct Aggregation<'a> {
    pub metric: Metric,
    pub leaf: Leaf<'a>,
    pub op: SqlAggregate,
    /// The label columns grouped by, a subset of [`super::LABEL_COLUMNS`].
    pub by: Vec<&'static str>,
    /// Whether `job` is kept (it is the same on every series).
    pub keep_job: bool,
}

/// An [`Aggregation`] computed by the database: the leaf's rows are spread over the steps
/// they hold for, then grouped by the label columns and step.
pub async fn aggregate(
    pool: &DbPool,
    aggregation: &Aggregation<'_>,
    steps: Steps,
    limit: usize,
) -> Result<Vec<Series>, PromError> {
    let Aggregation {
        metric,
        leaf,
        op,
        ref by,
        keep_job,
    } = *aggregation;
    let mut params = Params::default();
    let inner = leaf.sql(&mut params, metric, steps)?;
    let n = params.add(Bind::BigInt(steps.n as i64));
    let value = match op {
        SqlAggregate::Sum => "sum(v)",
        SqlAggregate::Avg => "avg(v)",
        SqlAggregate::Min => "min(v)",
        SqlAggregate::Max => "max(v)",
        SqlAggregate::Count => "count(*)",
    };
    let column = |c: &'static str| {
        if by.contains(&c) {
            c.to_owned()
        } else {
            format!("''::text AS {c}")
        }
    };
    let sql = format!(
        "WITH leaf AS ({inner}),
         spread AS (
             SELECT service, pod_name, namespace, node_name, g AS i, v
             FROM (SELECT *, lead(i) OVER (PARTITION BY service, pod_name, namespace, node_name ORDER BY i) AS next
                   FROM leaf) l,
                  generate_series(i, least(imax, coalesce(next - 1, imax), {n} - 1)) AS g
         )
         SELECT {service}, {pod_name}, {namespace}, {node_name}, i, i AS imax, ({value})::float8 AS v
         FROM spread
         GROUP BY 1, 2, 3, 4, 5
         ORDER BY 1, 2, 3, 4, 5
         LIMIT {limit}",
        service = column("service"),
        pod_name = column("pod_name"),
        namespace = column("namespace"),
        node_name = column("node_name"),
        limit = params.add(Bind::BigInt(limit as i64 + 1)),
    );
    let rows = load(pool, params, sql, limit).await?;
    let mut series = fill(metric, false, rows, steps.n);
    for s in &mut series {
        s.labels.retain(|label, _| {
            (label == "job" && keep_job)
                || by.iter().any(|c| super::label_column(label) == Some(*c))
        });
    }
    Ok(series)
}

/// The distinct series of `metric` the selector matches with a sample in `(from, to]`.
pub async fn series(
    pool: &DbPool,
    metric: Metric,
    selector: &Selector,
    from_ms: i64,
    to_ms: i64,
    limit: usize,
) -> Result<Vec<Labels>, PromError> {
    let mut params = Params::default();
    let conditions = conditions(&mut params, selector, from_ms, to_ms)?;
    let sql = format!(
        "SELECT DISTINCT service, pod_name, namespace, node_name
         FROM system_metrics WHERE {conditions}
         ORDER BY service, pod_name, namespace, node_name
         LIMIT {limit}",
        limit = params.add(Bind::BigInt(limit as i64 + 1)),
    );
    let rows: Vec<SeriesRow> = load(pool, params, sql, limit).await?;
    Ok(rows
        .into_iter()
        .map(|r| {
            labels(
                metric,
                true,
                r.service,
                r.pod_name,
                r.namespace,
                r.node_name,
            )
        })
        .collect())
}

/// The distinct values of `column` among the rows the selector matches in `(from, to]`.
pub async fn label_values(
    pool: &DbPool,
    column: &'static str,
    selector: &Selector,
    from_ms: i64,
    to_ms: i64,
    limit: usize,
) -> Result<Vec<String>, PromError> {
    let mut params = Params::default();
    let conditions = conditions(&mut params, selector, from_ms, to_ms)?;
    let sql = format!(
        "SELECT DISTINCT {column} AS value FROM system_metrics WHERE {conditions}
         ORDER BY 1 LIMIT {limit}",
        limit = params.add(Bind::BigInt(limit as i64 + 1)),
    );
    let rows: Vec<ValueRow> = load(pool, params, sql, limit).await?;
    Ok(rows.into_iter().map(|r| r.value).collect())
}

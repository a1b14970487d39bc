//! Read queries of the REST API, over the connection pool: SQL text whose filters are all
//! written, and their values bound, by one builder. Filter values are always bound parameters;
//! only column names and aggregate functions chosen from closed enums are ever written into
//! SQL text. Series are planned here too: the [`Storage`] the database offers decides where
//! they are computed from, and what answers when that fails.

use std::future::Future;
use std::sync::{Arc, PoisonError, RwLock};

use chrono::{DateTime, Utc};
use diesel::pg::Pg;
use diesel::prelude::*;
use diesel::query_builder::{BoxedSqlQuery, SqlQuery};
use diesel::sql_types::{BigInt, Double, Text, Timestamptz};
use diesel_async::pooled_connection::deadpool::{Object, Pool};
use diesel_async::pooled_connection::{AsyncDieselConnectionManager, ManagerConfig};
use diesel_async::{AsyncPgConnection, RunQueryDsl};
use futures_util::FutureExt;
use serde::Serialize;
use utoipa::ToSchema;

use super::{Storage, Timeouts};
use crate::schema::system_metrics;

/// The REST API's connections, and how long it waits on them.
#[derive(Clone)]
pub struct DbPool {
    pool: Pool<AsyncPgConnection>,
    timeouts: Timeouts,
    /// Where the pool connects, for readers that need a tokio-postgres connection of their own
    /// (binary COPY, which diesel-async does not offer). Never logged: it may hold a password.
    url: Arc<str>,
}

impl DbPool {
    pub(crate) fn url(&self) -> &str {
        &self.url
    }

    pub(crate) fn timeouts(&self) -> Timeouts {
        self.timeouts
    }
}

/// A pool that connects lazily: building it never touches the network. Its connections are
/// opened like every other of the service, TLS as the URL says. Making a connection is bounded
/// by the connect timeout, checking an idle one before reuse and each query by the statement
/// timeout.
pub fn pool(url: &str, size: usize, timeouts: &Timeouts) -> Result<DbPool, String> {
    let mut config = ManagerConfig::default();
    let connect_timeouts = *timeouts;
    config.custom_setup =
        Box::new(move |url| Box::pin(crate::db::connect_diesel(url, connect_timeouts)));
    let manager = AsyncDieselConnectionManager::<AsyncPgConnection>::new_with_config(url, config);
    let pool = Pool::builder(manager)
        .max_size(size)
        .runtime(deadpool::Runtime::Tokio1)
        .create_timeout(Some(timeouts.connect))
        .recycle_timeout(Some(timeouts.statement))
        // Every connection in use is given back or given up within the statement timeout.
        .wait_timeout(Some(timeouts.connect + timeouts.statement))
        .build()
        .map_err(|e| e.to_string())?;
    Ok(DbPool {
        pool,
        timeouts: *timeouts,
        url: url.into(),
    })
}

#[derive(Debug, thiserror::Error)]
pub enum QueryError {
    #[error("database unavailable: {0}")]
    Pool(String),
    #[error("query failed: {0}")]
    Query(#[from] diesel::result::Error),
    #[error("the database did not answer within {} ms", .0.as_millis())]
    Timeout(std::time::Duration),
}

/// A connection from the pool; a pool that cannot give one means the database is unavailable.
pub(crate) async fn connection(pool: &DbPool) -> Result<Object<AsyncPgConnection>, QueryError> {
    pool.pool
        .get()
        .await
        .map_err(|e| QueryError::Pool(e.to_string()))
}

/// Runs one query on `conn` within the statement timeout. A connection whose query went
/// unanswered is taken out of the pool and closed rather than handed to the next request.
pub(crate) async fn bounded<T>(
    pool: &DbPool,
    mut conn: Object<AsyncPgConnection>,
    query: impl for<'c> FnOnce(
        &'c mut AsyncPgConnection,
    ) -> futures_util::future::BoxFuture<'c, QueryResult<T>>,
) -> Result<T, QueryError> {
    let limit = pool.timeouts.statement;
    match tokio::time::timeout(limit, query(&mut conn)).await {
        Ok(rows) => Ok(rows?),
        Err(_) => {
            drop(Object::take(conn));
            Err(QueryError::Timeout(limit))
        }
    }
}

/// One stored metric.
#[derive(Debug, Clone, QueryableByName, Serialize, ToSchema)]
#[diesel(table_name = system_metrics, check_for_backend(diesel::pg::Pg))]
pub struct MetricRow {
    pub time: DateTime<Utc>,
    pub service: String,
    pub pod_name: String,
    pub cpu: f64,
    pub memory: f64,
    pub namespace: String,
    pub node_name: String,
}

/// Filters every query accepts; `None` matches everything.
#[derive(Debug, Clone, Default)]
pub struct Filters {
    pub service: Option<String>,
    pub namespace: Option<String>,
    pub pod: Option<String>,
    pub node: Option<String>,
    pub from: DateTime<Utc>,
    pub to: DateTime<Utc>,
}

/// A value bound to a placeholder of a statement.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Bind {
    Text(String),
    Time(DateTime<Utc>),
    BigInt(i64),
}

/// The values bound to a statement's placeholders. Each value is added where its placeholder
/// is written into the SQL text, which numbers the placeholder by the value's position: the
/// two cannot disagree.
#[derive(Debug, Default)]
pub(crate) struct Params(Vec<Bind>);

impl Params {
    /// Adds `value`; answers its placeholder, `$n`.
    pub(crate) fn add(&mut self, value: Bind) -> String {
        self.0.push(value);
        format!("${}", self.0.len())
    }

    /// The conditions of `filters`, for a relation whose time column is `time`: the range,
    /// then one equality for each name filter given (none for those not given, so that the
    /// planner sees exactly the filters asked for).
    fn filters(&mut self, filters: &Filters, time: &str) -> String {
        let mut conditions = vec![
            format!("{time} >= {}", self.add(Bind::Time(filters.from))),
            format!("{time} < {}", self.add(Bind::Time(filters.to))),
        ];
        for (column, value) in [
            ("service", &filters.service),
            ("namespace", &filters.namespace),
            ("pod_name", &filters.pod),
            ("node_name", &filters.node),
        ] {
            if let Some(value) = value {
                let placeholder = self.add(Bind::Text(value.clone()));
                conditions.push(format!("{column} = {placeholder}"));
            }
        }
        conditions.join(" AND ")
    }

    /// The statement `sql` with these values bound.
    pub(crate) fn bind_to(self, sql: String) -> BoxedSqlQuery<'static, Pg, SqlQuery> {
        let query = diesel::sql_query(sql).into_boxed();
        self.0.into_iter().fold(query, |query, value| match value {
            Bind::Text(v) => query.bind::<Text, _>(v),
            Bind::Time(v) => query.bind::<Timestamptz, _>(v),
            Bind::BigInt(v) => query.bind::<BigInt, _>(v),
        })
    }
}

/// Where the previous page ended, in the order rows are listed.
#[derive(Debug, Clone, serde::Deserialize, Serialize, PartialEq)]
pub struct Keyset {
    pub time: DateTime<Utc>,
    pub namespace: String,
    pub pod_name: String,
    pub service: String,
}

/// The columns of [`MetricRow`].
const METRIC_COLUMNS: &str = "time, service, pod_name, cpu, memory, namespace, node_name";

/// Raw rows, newest first, after `after` if given.
pub async fn list_metrics(
    pool: &DbPool,
    filters: &Filters,
    after: Option<&Keyset>,
    limit: i64,
) -> Result<Vec<MetricRow>, QueryError> {
    let conn = connection(pool).await?;
    let mut params = Params::default();
    let mut conditions = params.filters(filters, "time");
    if let Some(k) = after {
        // Rows are listed by this key, descending: the page goes on below the last row's.
        let key = [
            params.add(Bind::Time(k.time)),
            params.add(Bind::Text(k.namespace.clone())),
            params.add(Bind::Text(k.pod_name.clone())),
            params.add(Bind::Text(k.service.clone())),
        ];
        conditions.push_str(&format!(
            " AND (time, namespace, pod_name, service) < ({})",
            key.join(", ")
        ));
    }
    let sql = format!(
        "SELECT {METRIC_COLUMNS}
         FROM system_metrics
         WHERE {conditions}
         ORDER BY time DESC, namespace DESC, pod_name DESC, service DESC
         LIMIT {limit}",
        limit = params.add(Bind::BigInt(limit)),
    );
    let query = params.bind_to(sql);
    bounded(pool, conn, |conn| query.load::<MetricRow>(conn).boxed()).await
}

/// The newest row of each pod within the range.
pub async fn latest_per_pod(
    pool: &DbPool,
    filters: &Filters,
    limit: i64,
) -> Result<Vec<MetricRow>, QueryError> {
    let conn = connection(pool).await?;
    let mut params = Params::default();
    let sql = format!(
        "SELECT * FROM (
             SELECT DISTINCT ON (namespace, pod_name) {METRIC_COLUMNS}
             FROM system_metrics
             WHERE {conditions}
             ORDER BY namespace, pod_name, time DESC
         ) latest
         ORDER BY namespace, pod_name
         LIMIT {limit}",
        conditions = params.filters(filters, "time"),
        limit = params.add(Bind::BigInt(limit)),
    );
    let query = params.bind_to(sql);
    bounded(pool, conn, |conn| query.load::<MetricRow>(conn).boxed()).await
}

/// A column rows can be grouped or listed by.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Dimension {
    Pod,
    Service,
    Namespace,
    Node,
}

impl Dimension {
    fn column(self) -> &'static str {
        match self {
            Dimension::Pod => "pod_name",
            Dimension::Service => "service",
            Dimension::Namespace => "namespace",
            Dimension::Node => "node_name",
        }
    }
}

/// How the values of a bucket are combined.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Aggregate {
    Avg,
    Min,
    Max,
    P95,
}

impl Aggregate {
    fn sql(self, column: &str) -> String {
        match self {
            Aggregate::Avg => format!("avg({column})"),
            Aggregate::Min => format!("min({column})"),
            Aggregate::Max => format!("max({column})"),
            Aggregate::P95 => format!("percentile_cont(0.95) WITHIN GROUP (ORDER BY {column})"),
        }
    }
}

#[derive(Debug, QueryableByName)]
pub struct SeriesRow {
    #[diesel(sql_type = Timestamptz)]
    pub bucket: DateTime<Utc>,
    #[diesel(sql_type = Text)]
    pub grp: String,
    #[diesel(sql_type = Double)]
    pub cpu: f64,
    #[diesel(sql_type = Double)]
    pub memory: f64,
}

/// The [`Storage`] the API's queries are planned by, shared by the HTTP server, which is up
/// before the database is reached, and the start-up, which sets it once it is.
#[derive(Debug, Clone, Default)]
pub struct SharedStorage(Arc<RwLock<Storage>>);

impl SharedStorage {
    pub fn set(&self, storage: Storage) {
        *self.0.write().unwrap_or_else(PoisonError::into_inner) = storage;
    }

    pub fn get(&self) -> Storage {
        *self.0.read().unwrap_or_else(PoisonError::into_inner)
    }
}

/// Where a series is computed from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum SeriesSource {
    /// The raw rows, bucketed with `date_bin` (plain PostgreSQL).
    Rows,
    /// The raw rows, bucketed with TimescaleDB's `time_bucket`.
    Hypertable,
    /// TimescaleDB's 1-minute continuous aggregate: for whole minutes, and not for p95.
    MinuteAggregate,
}

impl Storage {
    /// Where a series is computed from on this storage. The 1-minute aggregate covers a
    /// request whose buckets and bounds are whole minutes and whose aggregate can be computed
    /// from per-minute sums, minima and maxima; anything else reads the raw rows.
    fn series_source(
        self,
        filters: &Filters,
        bucket_seconds: i64,
        aggregate: Aggregate,
    ) -> SeriesSource {
        let Storage::Hypertable { minute_aggregate } = self else {
            return SeriesSource::Rows;
        };
        let whole_minutes = bucket_seconds % 60 == 0
            && filters.from.timestamp_millis() % 60_000 == 0
            && filters.to.timestamp_millis() % 60_000 == 0;
        if minute_aggregate && whole_minutes && aggregate.over_minutes("cpu").is_some() {
            SeriesSource::MinuteAggregate
        } else {
            SeriesSource::Hypertable
        }
    }
}

impl SeriesSource {
    /// What answers when this source fails: the raw rows stand in for the 1-minute aggregate
    /// (dropped or broken by hand, say), which holds nothing they do not.
    fn fallback(self) -> Option<SeriesSource> {
        match self {
            SeriesSource::MinuteAggregate => Some(SeriesSource::Hypertable),
            SeriesSource::Rows | SeriesSource::Hypertable => None,
        }
    }
}

impl Aggregate {
    /// The same aggregate over the 1-minute aggregate's columns; `None` for p95.
    fn over_minutes(self, column: &str) -> Option<String> {
        match self {
            Aggregate::Avg => Some(format!("sum({column}_sum) / sum(samples)")),
            Aggregate::Min => Some(format!("min({column}_min)")),
            Aggregate::Max => Some(format!("max({column}_max)")),
            Aggregate::P95 => None,
        }
    }
}

/// Where series buckets start, on both storages: the Unix epoch.
const BUCKET_ORIGIN: &str = "TIMESTAMPTZ '1970-01-01 00:00:00+00'";

/// Time-bucketed aggregates, ordered by group then time, from the best source `storage`
/// offers; where that source fails and another can answer, from the other.
pub async fn series(
    pool: &DbPool,
    storage: Storage,
    filters: &Filters,
    bucket_seconds: i64,
    aggregate: Aggregate,
    group_by: Dimension,
) -> Result<Vec<SeriesRow>, QueryError> {
    let source = storage.series_source(filters, bucket_seconds, aggregate);
    with_fallback(source, |source| {
        series_from(pool, source, filters, bucket_seconds, aggregate, group_by)
    })
    .await
}

/// Runs `query` on `source`, and on its fallback where it fails and has one.
async fn with_fallback<T, F, Fut>(source: SeriesSource, mut query: F) -> Result<T, QueryError>
where
    F: FnMut(SeriesSource) -> Fut,
    Fut: Future<Output = Result<T, QueryError>>,
{
    match (query(source).await, source.fallback()) {
        (Err(e), Some(fallback)) => {
            log::warn!("continuous aggregate query failed, using the raw rows: {e}");
            query(fallback).await
        }
        (result, _) => result,
    }
}

/// [`series`] from one source. Buckets are aligned to the epoch whatever the source:
/// `time_bucket` is given the origin, since its own default is 2000-01-03, where a size that
/// does not divide a day (7 minutes) or a week would start elsewhere than `date_bin`'s.
async fn series_from(
    pool: &DbPool,
    source: SeriesSource,
    filters: &Filters,
    bucket_seconds: i64,
    aggregate: Aggregate,
    group_by: Dimension,
) -> Result<Vec<SeriesRow>, QueryError> {
    let conn = connection(pool).await?;
    let mut params = Params::default();
    let interval = params.add(Bind::Text(format!("{bucket_seconds} seconds")));
    let (bucket, table, time, cpu, memory) = match (source, aggregate.over_minutes("cpu")) {
        (SeriesSource::MinuteAggregate, Some(cpu)) => (
            format!("time_bucket({interval}::interval, bucket, {BUCKET_ORIGIN})"),
            super::timescale::AGGREGATE,
            "bucket",
            cpu,
            aggregate.over_minutes("memory").unwrap_or_default(),
        ),
        (SeriesSource::Hypertable | SeriesSource::MinuteAggregate, _) => (
            format!("time_bucket({interval}::interval, time, {BUCKET_ORIGIN})"),
            "system_metrics",
            "time",
            aggregate.sql("cpu"),
            aggregate.sql("memory"),
        ),
        (SeriesSource::Rows, _) => (
            format!("date_bin({interval}::interval, time, {BUCKET_ORIGIN})"),
            "system_metrics",
            "time",
            aggregate.sql("cpu"),
            aggregate.sql("memory"),
        ),
    };
    let sql = format!(
        "SELECT {bucket} AS bucket, {group} AS grp, {cpu}::float8 AS cpu, {memory}::float8 AS memory
         FROM {table}
         WHERE {conditions}
         GROUP BY 1, 2
         ORDER BY 2, 1",
        group = group_by.column(),
        conditions = params.filters(filters, time),
    );
    let query = params.bind_to(sql);
    bounded(pool, conn, |conn| query.load(conn).boxed()).await
}

/// One distinct pod, service, namespace or node.
#[derive(Debug, QueryableByName, Serialize, ToSchema)]
pub struct DistinctValue {
    #[diesel(sql_type = Text)]
    pub name: String,
    #[diesel(sql_type = Timestamptz)]
    pub first_seen: DateTime<Utc>,
    #[diesel(sql_type = Timestamptz)]
    pub last_seen: DateTime<Utc>,
    #[diesel(sql_type = BigInt)]
    pub samples: i64,
}

pub async fn distinct_values(
    pool: &DbPool,
    dimension: Dimension,
    filters: &Filters,
    limit: i64,
) -> Result<Vec<DistinctValue>, QueryError> {
    let conn = connection(pool).await?;
    let mut params = Params::default();
    let sql = format!(
        "SELECT {col} AS name, min(time) AS first_seen, max(time) AS last_seen, count(*) AS samples
         FROM system_metrics
         WHERE {conditions}
         GROUP BY 1
         ORDER BY 1
         LIMIT {limit}",
        col = dimension.column(),
        conditions = params.filters(filters, "time"),
        limit = params.add(Bind::BigInt(limit)),
    );
    let query = params.bind_to(sql);
    bounded(pool, conn, |conn| query.load(conn).boxed()).await
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(ms: i64) -> DateTime<Utc> {
        DateTime::from_timestamp_millis(ms).unwrap()
    }

    /// A range of whole minutes.
    fn minutes() -> Filters {
        Filters {
            from: at(1_730_707_200_000),
            to: at(1_730_707_200_000 + 3_600_000),
            ..Filters::default()
        }
    }

    #[test]
    fn filters_bind_the_range_and_only_the_names_given() {
        let mut params = Params::default();
        let filters = Filters {
            service: Some("alpha".into()),
            node: Some("n1".into()),
            ..minutes()
        };
        let limit = params.add(Bind::BigInt(10));
        assert_eq!(
            params.filters(&filters, "bucket"),
            "bucket >= $2 AND bucket < $3 AND service = $4 AND node_name = $5"
        );
        assert_eq!(limit, "$1");
        assert_eq!(
            params.0,
            [
                Bind::BigInt(10),
                Bind::Time(filters.from),
                Bind::Time(filters.to),
                Bind::Text("alpha".into()),
                Bind::Text("n1".into()),
            ]
        );
        let mut params = Params::default();
        assert_eq!(
            params.filters(&minutes(), "time"),
            "time >= $1 AND time < $2"
        );
    }

    #[test]
    fn plain_tables_are_always_read_row_by_row() {
        for aggregate in [
            Aggregate::Avg,
            Aggregate::Min,
            Aggregate::Max,
            Aggregate::P95,
        ] {
            assert_eq!(
                Storage::Table.series_source(&minutes(), 60, aggregate),
                SeriesSource::Rows
            );
        }
        assert_eq!(
            Storage::default(),
            Storage::Table,
            "before the database is reached"
        );
    }

    #[test]
    fn the_minute_aggregate_serves_whole_minutes_except_p95() {
        let with = Storage::Hypertable {
            minute_aggregate: true,
        };
        let without = Storage::Hypertable {
            minute_aggregate: false,
        };
        for aggregate in [Aggregate::Avg, Aggregate::Min, Aggregate::Max] {
            assert_eq!(
                with.series_source(&minutes(), 300, aggregate),
                SeriesSource::MinuteAggregate
            );
            assert_eq!(
                without.series_source(&minutes(), 300, aggregate),
                SeriesSource::Hypertable
            );
        }
        let mid_minute = |from: i64, to: i64| Filters {
            from: at(from),
            to: at(to),
            ..Filters::default()
        };
        let whole = 1_730_707_200_000;
        for (filters, bucket, aggregate, why) in [
            (minutes(), 60, Aggregate::P95, "p95 needs every sample"),
            (minutes(), 90, Aggregate::Avg, "a bucket of 1.5 minutes"),
            (minutes(), 30, Aggregate::Max, "a bucket under a minute"),
            (
                mid_minute(whole + 1_000, whole + 60_000),
                60,
                Aggregate::Avg,
                "from mid-minute",
            ),
            (
                mid_minute(whole, whole + 60_001),
                60,
                Aggregate::Min,
                "to mid-minute",
            ),
        ] {
            assert_eq!(
                with.series_source(&filters, bucket, aggregate),
                SeriesSource::Hypertable,
                "{why}"
            );
        }
    }

    /// Runs [`with_fallback`] with a query failing on `failing`; answers the result and the
    /// sources asked, in order.
    async fn fallback_run(
        source: SeriesSource,
        failing: &[SeriesSource],
    ) -> (Result<SeriesSource, QueryError>, Vec<SeriesSource>) {
        let asked = std::cell::RefCell::new(Vec::new());
        let result = with_fallback(source, |source| {
            asked.borrow_mut().push(source);
            let fails = failing.contains(&source);
            async move {
                if fails {
                    Err(QueryError::Timeout(std::time::Duration::from_millis(5)))
                } else {
                    Ok(source)
                }
            }
        })
        .await;
        (result, asked.into_inner())
    }

    #[tokio::test]
    async fn a_failing_minute_aggregate_falls_back_to_the_raw_rows() {
        use SeriesSource::*;
        let (result, asked) = fallback_run(MinuteAggregate, &[MinuteAggregate]).await;
        assert_eq!(result.unwrap(), Hypertable);
        assert_eq!(asked, [MinuteAggregate, Hypertable]);

        let (result, asked) = fallback_run(MinuteAggregate, &[]).await;
        assert_eq!(result.unwrap(), MinuteAggregate);
        assert_eq!(asked, [MinuteAggregate], "no fallback when it answers");

        let (result, asked) = fallback_run(MinuteAggregate, &[MinuteAggregate, Hypertable]).await;
        assert!(matches!(result, Err(QueryError::Timeout(_))));
        assert_eq!(asked, [MinuteAggregate, Hypertable]);
    }

    #[tokio::test]
    async fn the_raw_rows_have_nothing_to_fall_back_to() {
        for source in [SeriesSource::Rows, SeriesSource::Hypertable] {
            let (result, asked) = fallback_run(source, &[source]).await;
            assert!(result.is_err());
            assert_eq!(asked, [source]);
        }
    }
}

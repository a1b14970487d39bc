//! Read queries of the REST API, over the connection pool. Filter values are always bound
//! parameters; only column names and aggregate functions chosen from closed enums are ever
//! written into SQL text.

use chrono::{DateTime, Utc};
use diesel::pg::Pg;
use diesel::prelude::*;
use diesel::query_builder::{BoxedSqlQuery, SqlQuery};
use diesel::sql_types::{BigInt, Double, Nullable, Text, Timestamptz};
use diesel_async::pooled_connection::deadpool::{Object, Pool};
use diesel_async::pooled_connection::{AsyncDieselConnectionManager, ManagerConfig};
use diesel_async::{AsyncPgConnection, RunQueryDsl};
use futures_util::FutureExt;
use serde::Serialize;
use utoipa::ToSchema;

use super::Timeouts;
use crate::schema::system_metrics;

/// The REST API's connections, and how long it waits on them.
#[derive(Clone)]
pub struct DbPool {
    pool: Pool<AsyncPgConnection>,
    timeouts: Timeouts,
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
async fn connection(pool: &DbPool) -> Result<Object<AsyncPgConnection>, QueryError> {
    pool.pool
        .get()
        .await
        .map_err(|e| QueryError::Pool(e.to_string()))
}

/// Runs one query on `conn` within the statement timeout. A connection whose query went
/// unanswered is taken out of the pool and closed rather than handed to the next request.
async fn bounded<T>(
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
#[derive(Debug, Clone, Queryable, QueryableByName, Selectable, Serialize, ToSchema)]
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

/// The name filters as SQL conditions, in the order [`Filters::bind_names`] binds them, their
/// parameters numbered from `first`; each matches everything when not given.
fn name_conditions(first: usize) -> String {
    ["service", "namespace", "pod_name", "node_name"]
        .iter()
        .enumerate()
        .map(|(i, column)| {
            let n = first + i;
            format!("AND (${n}::text IS NULL OR {column} = ${n})")
        })
        .collect::<Vec<_>>()
        .join(" ")
}

impl Filters {
    /// `sql` with the time range bound to `$1` and `$2` and the name filters of
    /// [`name_conditions`]`(3)` to `$3`–`$6`.
    fn bind_range_and_names(&self, sql: String) -> BoxedSqlQuery<'static, Pg, SqlQuery> {
        let query = diesel::sql_query(sql)
            .into_boxed()
            .bind::<Timestamptz, _>(self.from)
            .bind::<Timestamptz, _>(self.to);
        self.bind_names(query)
    }

    /// Binds the name filters of [`name_conditions`].
    fn bind_names<'f>(
        &self,
        query: BoxedSqlQuery<'f, Pg, SqlQuery>,
    ) -> BoxedSqlQuery<'f, Pg, SqlQuery> {
        query
            .bind::<Nullable<Text>, _>(self.service.clone())
            .bind::<Nullable<Text>, _>(self.namespace.clone())
            .bind::<Nullable<Text>, _>(self.pod.clone())
            .bind::<Nullable<Text>, _>(self.node.clone())
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

/// Raw rows, newest first, after `after` if given.
pub async fn list_metrics(
    pool: &DbPool,
    filters: &Filters,
    after: Option<&Keyset>,
    limit: i64,
) -> Result<Vec<MetricRow>, QueryError> {
    use crate::schema::system_metrics::dsl as m;
    let conn = connection(pool).await?;
    let mut query = m::system_metrics
        .select(MetricRow::as_select())
        .filter(m::time.ge(filters.from))
        .filter(m::time.lt(filters.to))
        .into_boxed();
    if let Some(v) = &filters.service {
        query = query.filter(m::service.eq(v.clone()));
    }
    if let Some(v) = &filters.namespace {
        query = query.filter(m::namespace.eq(v.clone()));
    }
    if let Some(v) = &filters.pod {
        query = query.filter(m::pod_name.eq(v.clone()));
    }
    if let Some(v) = &filters.node {
        query = query.filter(m::node_name.eq(v.clone()));
    }
    if let Some(k) = after {
        query = query.filter(
            m::time.lt(k.time).or(m::time.eq(k.time).and(
                m::namespace
                    .lt(k.namespace.clone())
                    .or(m::namespace.eq(k.namespace.clone()).and(
                        m::pod_name.lt(k.pod_name.clone()).or(m::pod_name
                            .eq(k.pod_name.clone())
                            .and(m::service.lt(k.service.clone()))),
                    )),
            )),
        );
    }
    let query = query
        .order((
            m::time.desc(),
            m::namespace.desc(),
            m::pod_name.desc(),
            m::service.desc(),
        ))
        .limit(limit);
    bounded(pool, conn, |conn| query.load(conn).boxed()).await
}

/// The newest row of each pod within the range.
pub async fn latest_per_pod(
    pool: &DbPool,
    filters: &Filters,
    limit: i64,
) -> Result<Vec<MetricRow>, QueryError> {
    let conn = connection(pool).await?;
    let sql = format!(
        "SELECT * FROM (
             SELECT DISTINCT ON (namespace, pod_name)
                    time, service, pod_name, cpu, memory, namespace, node_name
             FROM system_metrics
             WHERE time >= $1 AND time < $2 {names}
             ORDER BY namespace, pod_name, time DESC
         ) latest
         ORDER BY namespace, pod_name
         LIMIT $7",
        names = name_conditions(3),
    );
    let query = filters.bind_range_and_names(sql).bind::<BigInt, _>(limit);
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

/// Where a series is computed from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SeriesSource {
    /// The raw rows, bucketed with `date_bin` (plain PostgreSQL).
    Rows,
    /// The raw rows, bucketed with TimescaleDB's `time_bucket`.
    Hypertable,
    /// TimescaleDB's 1-minute continuous aggregate: for whole minutes, and not for p95.
    MinuteAggregate,
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

/// Time-bucketed aggregates, ordered by group then time. Buckets are aligned to the epoch
/// whatever the source: `time_bucket` is given the origin, since its own default is
/// 2000-01-03, where a size that does not divide a day (7 minutes) or a week would start
/// elsewhere than `date_bin`'s.
pub async fn series(
    pool: &DbPool,
    filters: &Filters,
    bucket_seconds: i64,
    aggregate: Aggregate,
    group_by: Dimension,
    source: SeriesSource,
) -> Result<Vec<SeriesRow>, QueryError> {
    let conn = connection(pool).await?;
    let (bucket, table, time, cpu, memory) = match (source, aggregate.over_minutes("cpu")) {
        (SeriesSource::MinuteAggregate, Some(cpu)) => (
            format!("time_bucket($1::interval, bucket, {BUCKET_ORIGIN})"),
            super::timescale::AGGREGATE,
            "bucket",
            cpu,
            aggregate.over_minutes("memory").unwrap_or_default(),
        ),
        (SeriesSource::Hypertable | SeriesSource::MinuteAggregate, _) => (
            format!("time_bucket($1::interval, time, {BUCKET_ORIGIN})"),
            "system_metrics",
            "time",
            aggregate.sql("cpu"),
            aggregate.sql("memory"),
        ),
        (SeriesSource::Rows, _) => (
            format!("date_bin($1::interval, time, {BUCKET_ORIGIN})"),
            "system_metrics",
            "time",
            aggregate.sql("cpu"),
            aggregate.sql("memory"),
        ),
    };
    let sql = format!(
        "SELECT {bucket} AS bucket, {group} AS grp, {cpu}::float8 AS cpu, {memory}::float8 AS memory
         FROM {table}
         WHERE {time} >= $2 AND {time} < $3 {names}
         GROUP BY 1, 2
         ORDER BY 2, 1",
        group = group_by.column(),
        names = name_conditions(4),
    );
    let query = diesel::sql_query(sql)
        .into_boxed()
        .bind::<Text, _>(format!("{bucket_seconds} seconds"))
        .bind::<Timestamptz, _>(filters.from)
        .bind::<Timestamptz, _>(filters.to);
    let query = filters.bind_names(query);
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
    let sql = format!(
        "SELECT {col} AS name, min(time) AS first_seen, max(time) AS last_seen, count(*) AS samples
         FROM system_metrics
         WHERE time >= $1 AND time < $2 {names}
         GROUP BY 1
         ORDER BY 1
         LIMIT $7",
        col = dimension.column(),
        names = name_conditions(3),
    );
    let query = filters.bind_range_and_names(sql).bind::<BigInt, _>(limit);
    bounded(pool, conn, |conn| query.load(conn).boxed()).await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn name_conditions_number_their_parameters_in_binding_order() {
        assert_eq!(
            name_conditions(3),
            "AND ($3::text IS NULL OR service = $3) AND ($4::text IS NULL OR namespace = $4) \
             AND ($5::text IS NULL OR pod_name = $5) AND ($6::text IS NULL OR node_name = $6)"
        );
    }
}

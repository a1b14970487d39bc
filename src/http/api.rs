//! REST queries of stored metrics under `/api/v1`. Every parameter is parsed here into typed
//! values, and anything unparsable, out of order or beyond the configured caps is answered
//! with 400 `{"error": …, "field": …}` before the database is asked anything.

use actix_web::{HttpResponse, ResponseError, web};
use base64::Engine;
use chrono::{DateTime, Duration, Utc};
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};

use crate::db::queries::{
    self, Aggregate, DbPool, Dimension, DistinctValue, Filters, Keyset, MetricRow, SharedStorage,
};

/// What the API needs: the pool, the storage its queries are planned by, and the caps.
pub struct ApiState {
    pub pool: DbPool,
    pub storage: SharedStorage,
    pub max_limit: u32,
    pub max_range: Duration,
    pub max_buckets: u32,
    /// Most samples one PromQL query may hold or load (`PROMETHEUS_MAX_SAMPLES`).
    pub max_samples: u32,
}

pub fn routes(cfg: &mut web::ServiceConfig) {
    cfg.service(
        web::scope("/api/v1")
            .app_data(web::QueryConfig::default().error_handler(|e, _| {
                ApiError::bad("query", format!("malformed query string: {e}")).into()
            }))
            .route("/metrics", web::get().to(list_metrics))
            .route("/metrics/latest", web::get().to(latest))
            .route("/metrics/series", web::get().to(series))
            .route("/pods", web::get().to(pods))
            .route("/services", web::get().to(services))
            .route("/namespaces", web::get().to(namespaces))
            .route("/nodes", web::get().to(nodes))
            .route("/openapi.json", web::get().to(super::openapi::document)),
    );
}

/// The body of every 4xx and 5xx answer.
#[derive(Debug, Serialize, ToSchema)]
pub struct ErrorBody {
    /// What is wrong, for a person.
    pub error: String,
    /// The parameter at fault, when one is.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub field: Option<String>,
}

#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    #[error("{message}")]
    BadRequest {
        field: &'static str,
        message: String,
    },
    #[error("{0}")]
    Unavailable(String),
}

impl ApiError {
    fn bad(field: &'static str, message: impl Into<String>) -> ApiError {
        ApiError::BadRequest {
            field,
            message: message.into(),
        }
    }
}

impl ResponseError for ApiError {
    fn status_code(&self) -> actix_web::http::StatusCode {
        match self {
            ApiError::BadRequest { .. } => actix_web::http::StatusCode::BAD_REQUEST,
            ApiError::Unavailable(_) => actix_web::http::StatusCode::SERVICE_UNAVAILABLE,
        }
    }

    fn error_response(&self) -> HttpResponse {
        let body = match self {
            ApiError::BadRequest { field, message } => ErrorBody {
                error: message.clone(),
                field: Some((*field).to_owned()),
            },
            ApiError::Unavailable(message) => ErrorBody {
                error: message.clone(),
                field: None,
            },
        };
        HttpResponse::build(self.status_code()).json(body)
    }
}

impl From<queries::QueryError> for ApiError {
    fn from(e: queries::QueryError) -> ApiError {
        log::warn!("API query failed: {e}");
        ApiError::Unavailable(format!("database unavailable: {e}"))
    }
}

/// Filters and paging of `GET /api/v1/metrics`.
#[derive(Debug, Default, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct MetricsQuery {
    /// Only this service.
    service: Option<String>,
    /// Only this namespace.
    namespace: Option<String>,
    /// Only this pod.
    pod: Option<String>,
    /// Only this node.
    node: Option<String>,
    /// Start of the range, inclusive: RFC 3339 or Unix milliseconds (default: `to` − 1 h).
    from: Option<String>,
    /// End of the range, exclusive: RFC 3339 or Unix milliseconds (default: now).
    to: Option<String>,
    /// Most rows (default 100, at most `API_MAX_LIMIT`).
    limit: Option<String>,
    /// `next_cursor` of the previous page.
    cursor: Option<String>,
}

/// Filters and size of `GET /api/v1/metrics/latest` and of the lists of pods, services,
/// namespaces and nodes.
#[derive(Debug, Default, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct ListQuery {
    /// Only this service.
    service: Option<String>,
    /// Only this namespace.
    namespace: Option<String>,
    /// Only this pod.
    pod: Option<String>,
    /// Only this node.
    node: Option<String>,
    /// Start of the range, inclusive: RFC 3339 or Unix milliseconds (default: `to` − 1 h).
    from: Option<String>,
    /// End of the range, exclusive: RFC 3339 or Unix milliseconds (default: now).
    to: Option<String>,
    /// Most rows (default and at most `API_MAX_LIMIT`).
    limit: Option<String>,
}

/// One page of rows, newest first.
#[derive(Debug, Serialize, ToSchema)]
pub struct MetricsPage {
    pub data: Vec<MetricRow>,
    /// Pass as `cursor` for the next page; null on the last page.
    pub next_cursor: Option<String>,
}

/// Rows under `data`.
#[derive(Debug, Serialize, ToSchema)]
pub struct MetricsList {
    pub data: Vec<MetricRow>,
}

/// Distinct values under `data`.
#[derive(Debug, Serialize, ToSchema)]
pub struct DistinctList {
    pub data: Vec<DistinctValue>,
}

/// Parameters of `GET /api/v1/metrics/series`.
#[derive(Debug, Default, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct SeriesQuery {
    /// Bucket width: a number and a unit, `s`, `m`, `h` or `d` (default `1m`).
    bucket: Option<String>,
    /// `avg` (default), `min`, `max` or `p95`.
    agg: Option<String>,
    /// `pod` (default), `service`, `namespace` or `node`.
    group_by: Option<String>,
    service: Option<String>,
    namespace: Option<String>,
    pod: Option<String>,
    node: Option<String>,
    from: Option<String>,
    to: Option<String>,
}

/// One bucket of one group.
#[derive(Debug, Serialize, ToSchema)]
pub struct SeriesPoint {
    pub time: DateTime<Utc>,
    pub cpu: f64,
    pub memory: f64,
}

/// The buckets of one group, oldest first.
#[derive(Debug, Serialize, ToSchema)]
pub struct Series {
    pub group: String,
    pub points: Vec<SeriesPoint>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct SeriesResponse {
    pub bucket: String,
    pub agg: String,
    pub group_by: String,
    pub series: Vec<Series>,
}

/// A time: RFC 3339, or a whole number of Unix milliseconds.
fn parse_time(field: &'static str, value: &str) -> Result<DateTime<Utc>, ApiError> {
    let value = value.trim();
    if !value.is_empty() && value.bytes().all(|b| b.is_ascii_digit()) {
        return value
            .parse::<i64>()
            .ok()
            .and_then(DateTime::from_timestamp_millis)
            .ok_or_else(|| ApiError::bad(field, format!("`{field}` is out of range")));
    }
    DateTime::parse_from_rfc3339(value)
        .map(|t| t.with_timezone(&Utc))
        .map_err(|e| {
            ApiError::bad(
                field,
                format!("`{field}` must be RFC 3339 or Unix milliseconds ({e})"),
            )
        })
}

fn non_empty(value: &Option<String>) -> Option<String> {
    value.as_ref().filter(|v| !v.is_empty()).cloned()
}

impl ApiState {
    /// Builds the filters; the range defaults to the last hour and is capped.
    fn filters(
        &self,
        (service, namespace, pod, node): (
            &Option<String>,
            &Option<String>,
            &Option<String>,
            &Option<String>,
        ),
        from: &Option<String>,
        to: &Option<String>,
    ) -> Result<Filters, ApiError> {
        let to = match non_empty(to) {
            Some(t) => parse_time("to", &t)?,
            None => Utc::now(),
        };
        let from = match non_empty(from) {
            Some(f) => parse_time("from", &f)?,
            None => to - Duration::hours(1),
        };
        if from > to {
            return Err(ApiError::bad("from", "`from` must not be after `to`"));
        }
        if to - from > self.max_range {
            return Err(ApiError::bad(
                "from",
                format!(
                    "the range may span at most {} hours",
                    self.max_range.num_hours()
                ),
            ));
        }
        Ok(Filters {
            service: non_empty(service),
            namespace: non_empty(namespace),
            pod: non_empty(pod),
            node: non_empty(node),
            from,
            to,
        })
    }

    fn limit(&self, value: &Option<String>, default: u32) -> Result<i64, ApiError> {
        let Some(value) = non_empty(value) else {
            return Ok(default.min(self.max_limit) as i64);
        };
        let limit: i64 = value
            .trim()
            .parse()
            .map_err(|_| ApiError::bad("limit", "`limit` must be a whole number"))?;
        if limit < 1 || limit > self.max_limit as i64 {
            return Err(ApiError::bad(
                "limit",
                format!("`limit` must be between 1 and {}", self.max_limit),
            ));
        }
        Ok(limit)
    }
}

fn encode_cursor(keyset: &Keyset) -> String {
    let json = serde_json::to_vec(keyset).unwrap_or_default();
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(json)
}

fn decode_cursor(value: &str) -> Result<Keyset, ApiError> {
    base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(value.trim())
        .ok()
        .and_then(|bytes| serde_json::from_slice(&bytes).ok())
        .ok_or_else(|| ApiError::bad("cursor", "`cursor` is not one this API handed out"))
}

/// Width of a bucket in seconds: `30s`, `1m`, `5m`, `1h`, `1d`.
fn parse_bucket(value: &str) -> Result<i64, ApiError> {
    crate::config::parse_duration_secs(value)
        .map_err(|e| ApiError::bad("bucket", format!("`bucket`: {e}")))
}

#[utoipa::path(
    get, path = "/api/v1/metrics", params(MetricsQuery),
    responses((status = 200, body = MetricsPage), (status = 400, body = ErrorBody), (status = 503, body = ErrorBody)),
    description = "Stored rows, newest first, with keyset pagination."
)]
pub async fn list_metrics(
    state: web::Data<ApiState>,
    query: web::Query<MetricsQuery>,
) -> Result<HttpResponse, ApiError> {
    let q = query.into_inner();
    let filters = state.filters((&q.service, &q.namespace, &q.pod, &q.node), &q.from, &q.to)?;
    let limit = state.limit(&q.limit, 100)?;
    let after = non_empty(&q.cursor)
        .map(|c| decode_cursor(&c))
        .transpose()?;
    let mut rows = queries::list_metrics(&state.pool, &filters, after.as_ref(), limit + 1).await?;
    let next_cursor = if rows.len() as i64 > limit {
        rows.truncate(limit as usize);
        rows.last().map(|last| {
            encode_cursor(&Keyset {
                time: last.time,
                namespace: last.namespace.clone(),
                pod_name: last.pod_name.clone(),
                service: last.service.clone(),
            })
        })
    } else {
        None
    };
    Ok(HttpResponse::Ok().json(MetricsPage {
        data: rows,
        next_cursor,
    }))
}

#[utoipa::path(
    get, path = "/api/v1/metrics/latest", params(ListQuery),
    responses((status = 200, body = MetricsList), (status = 400, body = ErrorBody), (status = 503, body = ErrorBody)),
    description = "The newest row of each pod within the range (default: the last hour)."
)]
pub async fn latest(
    state: web::Data<ApiState>,
    query: web::Query<ListQuery>,
) -> Result<HttpResponse, ApiError> {
    let q = query.into_inner();
    let filters = state.filters((&q.service, &q.namespace, &q.pod, &q.node), &q.from, &q.to)?;
    let limit = state.limit(&q.limit, state.max_limit)?;
    let rows = queries::latest_per_pod(&state.pool, &filters, limit).await?;
    Ok(HttpResponse::Ok().json(MetricsList { data: rows }))
}

#[utoipa::path(
    get, path = "/api/v1/metrics/series", params(SeriesQuery),
    responses((status = 200, body = SeriesResponse), (status = 400, body = ErrorBody), (status = 503, body = ErrorBody)),
    description = "CPU and memory aggregated per time bucket and group."
)]
pub async fn series(
    state: web::Data<ApiState>,
    query: web::Query<SeriesQuery>,
) -> Result<HttpResponse, ApiError> {
    let q = query.into_inner();
    let filters = state.filters((&q.service, &q.namespace, &q.pod, &q.node), &q.from, &q.to)?;
    let bucket_text = non_empty(&q.bucket).unwrap_or_else(|| "1m".into());
    let bucket = parse_bucket(&bucket_text)?;
    let agg_text = non_empty(&q.agg).unwrap_or_else(|| "avg".into());
    let aggregate = match agg_text.as_str() {
        "avg" => Aggregate::Avg,
        "min" => Aggregate::Min,
        "max" => Aggregate::Max,
        "p95" => Aggregate::P95,
        _ => return Err(ApiError::bad("agg", "`agg` must be avg, min, max or p95")),
    };
    let group_text = non_empty(&q.group_by).unwrap_or_else(|| "pod".into());
    let group_by = dimension(&group_text).ok_or_else(|| {
        ApiError::bad(
            "group_by",
            "`group_by` must be pod, service, namespace or node",
        )
    })?;
    let buckets = (filters.to - filters.from).num_seconds() / bucket;
    if buckets > state.max_buckets as i64 {
        return Err(ApiError::bad(
            "bucket",
            format!(
                "`bucket` {bucket_text} is too small for the range: {buckets} buckets, at most {} allowed",
                state.max_buckets
            ),
        ));
    }
    let storage = state.storage.get();
    let rows = queries::series(&state.pool, storage, &filters, bucket, aggregate, group_by).await?;
    let mut series: Vec<Series> = Vec::new();
    for row in rows {
        let point = SeriesPoint {
            time: row.bucket,
            cpu: row.cpu,
            memory: row.memory,
        };
        match series.last_mut() {
            Some(last) if last.group == row.grp => last.points.push(point),
            _ => series.push(Series {
                group: row.grp,
                points: vec![point],
            }),
        }
    }
    Ok(HttpResponse::Ok().json(SeriesResponse {
        bucket: bucket_text,
        agg: agg_text,
        group_by: group_text,
        series,
    }))
}

fn dimension(name: &str) -> Option<Dimension> {
    match name {
        "pod" => Some(Dimension::Pod),
        "service" => Some(Dimension::Service),
        "namespace" => Some(Dimension::Namespace),
        "node" => Some(Dimension::Node),
        _ => None,
    }
}

async fn distinct(
    state: web::Data<ApiState>,
    query: web::Query<ListQuery>,
    dimension: Dimension,
) -> Result<HttpResponse, ApiError> {
    let q = query.into_inner();
    let filters = state.filters((&q.service, &q.namespace, &q.pod, &q.node), &q.from, &q.to)?;
    let limit = state.limit(&q.limit, state.max_limit)?;
    let data = queries::distinct_values(&state.pool, dimension, &filters, limit).await?;
    Ok(HttpResponse::Ok().json(DistinctList { data }))
}

#[utoipa::path(get, path = "/api/v1/pods", params(ListQuery),
    responses((status = 200, body = DistinctList), (status = 400, body = ErrorBody), (status = 503, body = ErrorBody)),
    description = "Pods seen in the range, with first and last sample and sample count.")]
pub async fn pods(
    state: web::Data<ApiState>,
    query: web::Query<ListQuery>,
) -> Result<HttpResponse, ApiError> {
    distinct(state, query, Dimension::Pod).await
}

#[utoipa::path(get, path = "/api/v1/services", params(ListQuery),
    responses((status = 200, body = DistinctList), (status = 400, body = ErrorBody), (status = 503, body = ErrorBody)),
    description = "Services seen in the range.")]
pub async fn services(
    state: web::Data<ApiState>,
    query: web::Query<ListQuery>,
) -> Result<HttpResponse, ApiError> {
    distinct(state, query, Dimension::Service).await
}

#[utoipa::path(get, path = "/api/v1/namespaces", params(ListQuery),
    responses((status = 200, body = DistinctList), (status = 400, body = ErrorBody), (status = 503, body = ErrorBody)),
    description = "Namespaces seen in the range.")]
pub async fn namespaces(
    state: web::Data<ApiState>,
    query: web::Query<ListQuery>,
) -> Result<HttpResponse, ApiError> {
    distinct(state, query, Dimension::Namespace).await
}

#[utoipa::path(get, path = "/api/v1/nodes", params(ListQuery),
    responses((status = 200, body = DistinctList), (status = 400, body = ErrorBody), (status = 503, body = ErrorBody)),
    description = "Nodes seen in the range.")]
pub async fn nodes(
    state: web::Data<ApiState>,
    query: web::Query<ListQuery>,
) -> Result<HttpResponse, ApiError> {
    distinct(state, query, Dimension::Node).await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buckets_parse_with_units() {
        assert_eq!(parse_bucket("30s").unwrap(), 30);
        assert_eq!(parse_bucket("5m").unwrap(), 300);
        assert_eq!(parse_bucket("1h").unwrap(), 3600);
        for bad in ["", "m", "0s", "5w", "-1m", "1.5m"] {
            assert!(parse_bucket(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn times_parse_as_rfc3339_or_milliseconds() {
        let t = parse_time("from", "1730707200000").unwrap();
        assert_eq!(t.timestamp_millis(), 1_730_707_200_000);
        assert_eq!(parse_time("from", "2024-11-04T08:00:00Z").unwrap(), t);
        assert!(parse_time("from", "yesterday").is_err());
        assert!(parse_time("from", "-5").is_err());
    }

    #[test]
    fn cursors_round_trip_and_reject_garbage() {
        let keyset = Keyset {
            time: Utc::now(),
            namespace: "default".into(),
            pod_name: "p".into(),
            service: "s".into(),
        };
        assert_eq!(decode_cursor(&encode_cursor(&keyset)).unwrap(), keyset);
        assert!(decode_cursor("not a cursor").is_err());
    }
}

//! The Prometheus HTTP API under `/prometheus/api/v1`, for Grafana's stock Prometheus data
//! source: PromQL queries ([`crate::promql`]), series, labels and their values, metadata and
//! build information. Every endpoint answers GET and form POST, in Prometheus's envelope:
//! `{"status": "success", "data": …}` or `{"status": "error", "errorType", "error"}` with 400
//! (`bad_data`), 422 (`execution`) or 503 (`unavailable`). (Not to be confused with
//! [`super::prometheus`], the `/metrics` exposition of Panopticon's own figures.)

use actix_web::http::StatusCode;
use actix_web::http::header::CONTENT_TYPE;
use actix_web::{HttpRequest, HttpResponse, guard, web};
use chrono::Utc;
use serde_json::{Value as Json, json};

use promql_parser::label::Matchers;
use promql_parser::parser::Expr;

use super::api::ApiState;
use crate::promql::engine::selector_matchers;
use crate::promql::{
    self, LABEL_NAMES, Labels, Limits, Metric, PromError, Series, Steps, Value, format_value,
    metadata,
};

/// The version Grafana is told: the semantics followed are Prometheus 3's (left-open
/// lookback and range windows).
const PROMETHEUS_VERSION: &str = "3.0.0";

pub(crate) fn routes(cfg: &mut web::ServiceConfig) {
    // Every endpoint by GET and by form POST, as Grafana may use either.
    fn get_or_post() -> actix_web::Route {
        web::route().guard(guard::Any(guard::Get()).or(guard::Post()))
    }
    cfg.service(
        web::scope("/prometheus/api/v1")
            .route("/query", get_or_post().to(instant_query))
            .route("/query_range", get_or_post().to(range_query))
            .route("/series", get_or_post().to(series))
            .route("/labels", get_or_post().to(labels))
            .route("/label/{name}/values", get_or_post().to(label_values))
            .route("/metadata", get_or_post().to(metadata))
            .route("/status/buildinfo", get_or_post().to(buildinfo))
            .route("/query_exemplars", get_or_post().to(exemplars)),
    );
}

/// The Prometheus envelope of a success.
fn success(data: Json) -> HttpResponse {
    HttpResponse::Ok().json(json!({ "status": "success", "data": data }))
}

/// The Prometheus envelope of an error.
fn failure(error: PromError) -> HttpResponse {
    let (status, kind) = match &error {
        PromError::BadData(_) => (StatusCode::BAD_REQUEST, "bad_data"),
        PromError::Execution(_) => (StatusCode::UNPROCESSABLE_ENTITY, "execution"),
        PromError::Unavailable(_) => (StatusCode::SERVICE_UNAVAILABLE, "unavailable"),
    };
    HttpResponse::build(status).json(json!({
        "status": "error",
        "errorType": kind,
        "error": error.to_string(),
    }))
}

fn respond(result: Result<Json, PromError>) -> HttpResponse {
    match result {
        Ok(data) => success(data),
        Err(e) => failure(e),
    }
}

/// The parameters of a request: the query string's, then a form body's (as Prometheus reads
/// them, both count).
struct Params(Vec<(String, String)>);

impl Params {
    fn of(req: &HttpRequest, body: &[u8]) -> Params {
        let mut pairs: Vec<(String, String)> =
            form_urlencoded::parse(req.query_string().as_bytes())
                .into_owned()
                .collect();
        let is_form = req
            .headers()
            .get(CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .is_some_and(|v| v.starts_with("application/x-www-form-urlencoded"));
        if is_form {
            pairs.extend(form_urlencoded::parse(body).into_owned());
        }
        Params(pairs)
    }

    /// The first non-empty value of `name`.
    fn get(&self, name: &str) -> Option<&str> {
        self.0
            .iter()
            .find(|(k, v)| k == name && !v.is_empty())
            .map(|(_, v)| v.as_str())
    }

    fn all(&self, name: &str) -> Vec<&str> {
        self.0
            .iter()
            .filter(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
            .collect()
    }
}

/// The latest time accepted, 9999-12-31T23:59:59.999Z, and the earliest, its mirror.
const MAX_TIME_MS: i64 = 253_402_300_799_999;

/// A time as Prometheus takes it: Unix seconds (a float) or RFC 3339; in ms.
pub(crate) fn parse_time(name: &str, value: &str) -> Result<i64, PromError> {
    let bad = || {
        PromError::BadData(format!(
            "invalid parameter \"{name}\": cannot parse {value:?} to a valid timestamp"
        ))
    };
    if let Ok(seconds) = value.trim().parse::<f64>() {
        let ms = (seconds * 1000.0).round();
        if !ms.is_finite() || ms.abs() > MAX_TIME_MS as f64 {
            return Err(bad());
        }
        return Ok(ms as i64);
    }
    chrono::DateTime::parse_from_rfc3339(value.trim())
        .map(|t| t.timestamp_millis())
        .ok()
        .filter(|ms| ms.abs() <= MAX_TIME_MS)
        .ok_or_else(bad)
}

/// A step or duration as Prometheus takes it: float seconds, or `1m`, `1h30m`…; in ms.
pub(crate) fn parse_step(value: &str) -> Result<i64, PromError> {
    let bad = || {
        PromError::BadData(format!(
            "invalid parameter \"step\": cannot parse {value:?} to a valid duration"
        ))
    };
    let value = value.trim();
    let ms = if let Ok(seconds) = value.parse::<f64>() {
        let ms = (seconds * 1000.0).round();
        if !ms.is_finite() || ms > 1e15 {
            return Err(bad());
        }
        ms as i64
    } else {
        // A float never reaches the parser's own float reading, which panics on some.
        promql_parser::util::parse_duration(value)
            .map_err(|_| bad())
            .map(|d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))?
    };
    if ms <= 0 {
        return Err(PromError::BadData(
            "zero or negative query resolution step widths are not accepted. Try a positive integer".into(),
        ));
    }
    Ok(ms)
}

fn limits(state: &ApiState) -> Limits {
    Limits {
        max_samples: state.max_samples as usize,
        max_range_ms: state.max_range.num_milliseconds(),
    }
}

fn seconds(ms: i64) -> Json {
    json!(ms as f64 / 1000.0)
}

fn metric_json(labels: &Labels) -> Json {
    Json::Object(
        labels
            .iter()
            .map(|(k, v)| (k.clone(), Json::String(v.clone())))
            .collect(),
    )
}

fn the_query(params: &Params) -> Result<&str, PromError> {
    params.get("query").ok_or_else(|| {
        PromError::BadData("invalid parameter \"query\": the query is missing".into())
    })
}

async fn instant_query(
    req: HttpRequest,
    body: web::Bytes,
    state: web::Data<ApiState>,
) -> HttpResponse {
    let params = Params::of(&req, &body);
    respond(instant(&params, &state).await)
}

async fn instant(params: &Params, state: &ApiState) -> Result<Json, PromError> {
    let query = the_query(params)?;
    let at = match params.get("time") {
        Some(t) => parse_time("time", t)?,
        None => Utc::now().timestamp_millis(),
    };
    let value = promql::query(&state.pool, query, Steps::instant(at), limits(state)).await?;
    Ok(match value {
        Value::Scalar(v) => json!({
            "resultType": "scalar",
            "result": [seconds(at), format_value(v.first().copied().unwrap_or(f64::NAN))],
        }),
        Value::String(s) => json!({ "resultType": "string", "result": [seconds(at), s] }),
        Value::Matrix(series) => json!({
            "resultType": "matrix",
            "result": series
                .iter()
                .filter(|s| !s.timestamps.is_empty())
                .map(|s| json!({
                    "metric": metric_json(&s.labels),
                    "values": s
                        .timestamps
                        .iter()
                        .zip(&s.values)
                        .map(|(t, v)| json!([seconds(*t), format_value(*v)]))
                        .collect::<Vec<_>>(),
                }))
                .collect::<Vec<_>>(),
        }),
        Value::Vector(series) => json!({
            "resultType": "vector",
            "result": series
                .iter()
                .filter_map(|s| s.points.first().copied().flatten().map(|v| json!({
                    "metric": metric_json(&s.labels),
                    "value": [seconds(at), format_value(v)],
                })))
                .collect::<Vec<_>>(),
        }),
    })
}

async fn range_query(
    req: HttpRequest,
    body: web::Bytes,
    state: web::Data<ApiState>,
) -> HttpResponse {
    let params = Params::of(&req, &body);
    respond(range(&params, &state).await)
}

/// The steps of a range query, within the caps of the REST API: the range at most
/// `API_MAX_RANGE_HOURS`, the steps at most `API_MAX_BUCKETS`.
fn range_steps(params: &Params, state: &ApiState) -> Result<Steps, PromError> {
    let missing = |name: &str| PromError::BadData(format!("invalid parameter \"{name}\": missing"));
    let start = parse_time(
        "start",
        params.get("start").ok_or_else(|| missing("start"))?,
    )?;
    let end = parse_time("end", params.get("end").ok_or_else(|| missing("end"))?)?;
    let step = parse_step(params.get("step").ok_or_else(|| missing("step"))?)?;
    check_range(start, end, state)?;
    let n = (end - start) / step + 1;
    if n > state.max_buckets as i64 {
        return Err(PromError::BadData(format!(
            "exceeded maximum resolution of {} points per timeseries (API_MAX_BUCKETS): try decreasing the query resolution (?step=XX)",
            state.max_buckets
        )));
    }
    Ok(Steps {
        start_ms: start,
        step_ms: step,
        n: n as usize,
        end_ms: end,
    })
}

async fn range(params: &Params, state: &ApiState) -> Result<Json, PromError> {
    let query = the_query(params)?;
    let steps = range_steps(params, state)?;
    let value = promql::query(&state.pool, query, steps, limits(state)).await?;
    let series = match value {
        Value::Scalar(v) => vec![Series {
            labels: Labels::new(),
            points: v.into_iter().map(Some).collect(),
        }],
        Value::Vector(series) => series,
        Value::String(_) | Value::Matrix(_) => {
            return Err(PromError::BadData(
                "invalid expression type \"string\" for range query, must be Scalar or instant Vector".into(),
            ));
        }
    };
    let result: Vec<Json> = series
        .iter()
        .filter(|s| s.points.iter().any(Option::is_some))
        .map(|s| {
            let values: Vec<Json> = s
                .points
                .iter()
                .enumerate()
                .filter_map(|(i, p)| p.map(|v| json!([seconds(steps.time(i)), format_value(v)])))
                .collect();
            json!({ "metric": metric_json(&s.labels), "values": values })
        })
        .collect();
    Ok(json!({ "resultType": "matrix", "result": result }))
}

/// `start` is not after `end`, and the two are at most `API_MAX_RANGE_HOURS` apart.
fn check_range(start: i64, end: i64, state: &ApiState) -> Result<(), PromError> {
    if end < start {
        return Err(PromError::BadData(
            "invalid parameter \"end\": end timestamp must not be before start time".into(),
        ));
    }
    if end - start > state.max_range.num_milliseconds() {
        return Err(PromError::BadData(format!(
            "the range may span at most {} hours (API_MAX_RANGE_HOURS)",
            state.max_range.num_hours()
        )));
    }
    Ok(())
}

/// The time range of the metadata endpoints: `start` and `end` if given, else the last hour
/// up to now; at most `API_MAX_RANGE_HOURS`.
fn window(params: &Params, state: &ApiState) -> Result<(i64, i64), PromError> {
    let end = match params.get("end") {
        Some(t) => parse_time("end", t)?,
        None => Utc::now().timestamp_millis(),
    };
    let start = match params.get("start") {
        Some(t) => parse_time("start", t)?,
        None => end - 3_600_000,
    };
    check_range(start, end, state)?;
    // The window is inclusive at both ends: (start − 1 ms, end].
    Ok((start - 1, end))
}

/// The selectors of `match[]`; none given: every series.
fn selectors(params: &Params, required: bool) -> Result<Vec<Matchers>, PromError> {
    let matches = params.all("match[]");
    if matches.is_empty() {
        if required {
            return Err(PromError::BadData("no match[] parameter provided".into()));
        }
        return Ok(vec![Matchers::empty()]);
    }
    matches
        .into_iter()
        .map(|m| match promql::parse(m)? {
            Expr::VectorSelector(vs) => Ok(selector_matchers(&vs)),
            _ => Err(PromError::BadData(format!(
                "invalid parameter \"match[]\": {m:?} is not a series selector"
            ))),
        })
        .collect()
}

/// The series that `match[]` selects in the window, each once, sorted.
async fn find_series(
    params: &Params,
    state: &ApiState,
    required: bool,
) -> Result<Vec<Labels>, PromError> {
    let (from, to) = window(params, state)?;
    let selectors = selectors(params, required)?;
    metadata::series(
        &state.pool,
        &selectors,
        from,
        to,
        state.max_samples as usize,
    )
    .await
}

async fn series(req: HttpRequest, body: web::Bytes, state: web::Data<ApiState>) -> HttpResponse {
    let params = Params::of(&req, &body);
    respond(
        find_series(&params, &state, true)
            .await
            .map(|all| Json::Array(all.iter().map(metric_json).collect())),
    )
}

async fn labels(req: HttpRequest, body: web::Bytes, state: web::Data<ApiState>) -> HttpResponse {
    let params = Params::of(&req, &body);
    respond(label_names(&params, &state).await)
}

/// Every series carries the same labels: they are all named where any series matches.
async fn label_names(params: &Params, state: &ApiState) -> Result<Json, PromError> {
    let any = !find_series(params, state, false).await?.is_empty();
    Ok(if any { json!(LABEL_NAMES) } else { json!([]) })
}

async fn label_values(
    req: HttpRequest,
    body: web::Bytes,
    state: web::Data<ApiState>,
) -> HttpResponse {
    let params = Params::of(&req, &body);
    let name = req.match_info().get("name").unwrap_or_default().to_owned();
    respond(values_of(&name, &params, &state).await.map(|v| json!(v)))
}

/// The values of label `name` among the series that `match[]` selects, sorted.
async fn values_of(
    name: &str,
    params: &Params,
    state: &ApiState,
) -> Result<Vec<String>, PromError> {
    if name.is_empty()
        || !name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
        || name.starts_with(|c: char| c.is_ascii_digit())
    {
        return Err(PromError::BadData(format!("invalid label name: {name:?}")));
    }
    let series = find_series(params, state, false).await?;
    let values: std::collections::BTreeSet<String> = series
        .into_iter()
        .filter_map(|mut labels| labels.remove(name))
        .collect();
    Ok(values.into_iter().collect())
}

async fn metadata(req: HttpRequest, body: web::Bytes, _state: web::Data<ApiState>) -> HttpResponse {
    let params = Params::of(&req, &body);
    let only = params.get("metric");
    let mut data = serde_json::Map::new();
    for metric in Metric::ALL {
        if only.is_some_and(|m| m != metric.name()) {
            continue;
        }
        data.insert(
            metric.name().into(),
            json!([{ "type": "gauge", "help": metric.help(), "unit": "" }]),
        );
    }
    success(Json::Object(data))
}

async fn buildinfo(
    _req: HttpRequest,
    _body: web::Bytes,
    _state: web::Data<ApiState>,
) -> HttpResponse {
    success(json!({
        "version": PROMETHEUS_VERSION,
        "revision": format!("panopticon {}", env!("CARGO_PKG_VERSION")),
        "branch": "",
        "buildUser": "",
        "buildDate": "",
        "goVersion": "",
    }))
}

async fn exemplars(
    _req: HttpRequest,
    _body: web::Bytes,
    _state: web::Data<ApiState>,
) -> HttpResponse {
    success(json!([]))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn times_parse_as_seconds_or_rfc3339() {
        assert_eq!(parse_time("time", "1730707200").unwrap(), 1_730_707_200_000);
        assert_eq!(
            parse_time("time", "1730707200.5").unwrap(),
            1_730_707_200_500
        );
        assert_eq!(
            parse_time("time", "2024-11-04T08:00:00Z").unwrap(),
            1_730_707_200_000
        );
        for bad in ["yesterday", "NaN", "inf", "1e300", ""] {
            assert!(parse_time("time", bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn steps_parse_as_seconds_or_durations() {
        assert_eq!(parse_step("15").unwrap(), 15_000);
        assert_eq!(parse_step("0.5").unwrap(), 500);
        assert_eq!(parse_step("1m").unwrap(), 60_000);
        assert_eq!(parse_step("1h30m").unwrap(), 5_400_000);
        for bad in ["0", "-1", "NaN", "inf", "1x", "", "-1m"] {
            assert!(parse_step(bad).is_err(), "{bad}");
        }
    }
}

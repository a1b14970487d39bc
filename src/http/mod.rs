//! The HTTP server: probes, the pipeline's status, Prometheus metrics, the REST API and the
//! dashboard.

pub mod api;
pub mod auth;
pub(crate) mod dashboard;
pub(crate) mod openapi;
pub(crate) mod prometheus;
pub(crate) mod prometheus_api;

use std::sync::Arc;
use std::sync::atomic::Ordering;

use actix_web::body::MessageBody;
use actix_web::dev::{ServiceFactory, ServiceRequest, ServiceResponse};
use actix_web::middleware::from_fn;
use actix_web::{App, HttpResponse, web};
use serde::Serialize;
use serde_json::json;

use crate::stats::{ActorStats, Rates, Stats};
use api::ApiState;
use auth::Access;

/// What the handlers read, made once and shared by every worker of the server.
#[derive(Clone)]
pub struct AppState {
    stats: web::Data<Arc<Stats>>,
    api: web::Data<ApiState>,
    access: web::Data<Access>,
}

impl AppState {
    pub fn new(stats: Arc<Stats>, api: ApiState, access: Access) -> AppState {
        AppState {
            stats: web::Data::new(stats),
            api: web::Data::new(api),
            access: web::Data::new(access),
        }
    }
}

/// The whole HTTP surface: every route, behind the token check. The server builds one for
/// each of its workers; tests serve it in-process (`actix_web::test::init_service`).
pub fn app(
    state: AppState,
) -> App<
    impl ServiceFactory<
        ServiceRequest,
        Config = (),
        Response = ServiceResponse<impl MessageBody>,
        Error = actix_web::Error,
        InitError = (),
    >,
> {
    App::new()
        .app_data(state.stats)
        .app_data(state.api)
        .app_data(state.access)
        .wrap(from_fn(auth::require_token))
        .configure(routes)
}

fn routes(cfg: &mut web::ServiceConfig) {
    cfg.route("/health", web::get().to(health))
        .route("/ready", web::get().to(ready))
        .route("/status", web::get().to(status))
        .route("/metrics", web::get().to(prometheus::metrics))
        .configure(api::routes)
        .configure(prometheus_api::routes)
        .configure(dashboard::routes);
}

async fn health() -> HttpResponse {
    HttpResponse::Ok().json(json!({ "status": "ok" }))
}

/// Why the service cannot take metrics right now, if it cannot.
fn not_ready_reason(stats: &Stats) -> Option<String> {
    if !stats.database_connected.load(Ordering::Relaxed) {
        return Some(match stats.database_error() {
            Some(e) => format!("database unreachable: {e}"),
            None => "database not connected yet".into(),
        });
    }
    if let Some(e) = stats.kafka_access_error() {
        return Some(e);
    }
    if !stats.consumer_joined.load(Ordering::Relaxed) {
        return Some(match stats.kafka_error() {
            Some(e) => format!("Kafka broker unreachable: {e}"),
            None => "Kafka consumer has not joined its group yet".into(),
        });
    }
    if let Some(e) = stats.dead_letter_topic_error() {
        return Some(e);
    }
    let assigned = stats.partitions.lock().map(|p| p.len()).unwrap_or(0);
    if assigned == 0 {
        return Some("no Kafka partition is assigned to this instance".into());
    }
    None
}

async fn ready(stats: web::Data<Arc<Stats>>) -> HttpResponse {
    match not_ready_reason(&stats) {
        None => HttpResponse::Ok().json(json!({ "status": "ready" })),
        Some(reason) => HttpResponse::ServiceUnavailable()
            .json(json!({ "status": "not ready", "reason": reason })),
    }
}

#[derive(Serialize)]
struct ActorReport {
    mailbox_depth: u64,
    mailbox_capacity: u64,
    messages_received: u64,
    messages_handled: u64,
    records: u64,
    errors: u64,
    /// Records a second over the last 10 s.
    rate_10s: f64,
    /// Records a second over the last minute.
    rate_1m: f64,
}

impl ActorReport {
    fn new(stats: &ActorStats, rates: Rates) -> ActorReport {
        ActorReport {
            mailbox_depth: stats.mailbox_depth(),
            mailbox_capacity: stats.capacity.load(Ordering::Relaxed),
            messages_received: stats.enqueued.load(Ordering::Relaxed),
            messages_handled: stats.handled.load(Ordering::Relaxed),
            records: stats.records.load(Ordering::Relaxed),
            errors: stats.errors.load(Ordering::Relaxed),
            rate_10s: rates.rate_10s,
            rate_1m: rates.rate_1m,
        }
    }
}

/// The backpressure state: `paused` when the consumer holds its partitions, `throttled` when
/// a mailbox downstream is at least half full, `ok` otherwise.
fn backpressure(stats: &Stats) -> (&'static str, String) {
    if stats.consumer_paused.load(Ordering::Relaxed) {
        return (
            "paused",
            "validator mailbox full: consumer paused its partitions".into(),
        );
    }
    let connections = stats.connections();
    let writers = connections.iter().enumerate().map(|(index, connection)| {
        let name = match connections.len() {
            1 => "writer".to_owned(),
            _ => format!("writer {index}"),
        };
        (name, &connection.mailbox)
    });
    let validator = std::iter::once(("validator".to_owned(), &stats.validator));
    for (name, actor) in writers.chain(validator) {
        let capacity = actor.capacity.load(Ordering::Relaxed);
        let depth = actor.mailbox_depth();
        if capacity > 0 && depth * 2 >= capacity {
            return (
                "throttled",
                format!("{name} mailbox {depth}/{capacity} full"),
            );
        }
    }
    if stats.database_error().is_some() {
        return (
            "throttled",
            "database writes are failing and being retried".into(),
        );
    }
    ("ok", "keeping up".into())
}

/// The window outside which metrics are rejected as `too_old`, or `null` where none is.
fn retention_window(stats: &Stats) -> serde_json::Value {
    let max_age_ms = stats.max_age_ms.lock().ok().and_then(|m| *m);
    match max_age_ms {
        None => serde_json::Value::Null,
        Some(ms) => json!({
            "seconds": ms / 1000,
            "oldest_accepted": chrono::Utc::now() - chrono::Duration::milliseconds(ms),
        }),
    }
}

async fn status(stats: web::Data<Arc<Stats>>) -> HttpResponse {
    let (state, reason) = backpressure(&stats);
    let partitions = stats
        .partitions
        .lock()
        .map(|p| p.clone())
        .unwrap_or_default();
    let paused = stats.consumer_paused.load(Ordering::Relaxed);
    let last_flush = stats.last_flush.lock().ok().and_then(|f| f.clone());
    let [consumer_rates, validator_rates, writer_rates] = stats.rates();
    HttpResponse::Ok().json(json!({
        "backpressure": { "state": state, "reason": reason },
        "consumer": {
            "actor": ActorReport::new(&stats.consumer, consumer_rates),
            "joined": stats.consumer_joined.load(Ordering::Relaxed),
            "access_error": stats.kafka_access_error(),
            "assigned_partitions": partitions.keys().collect::<Vec<_>>(),
            "paused_partitions": if paused { partitions.keys().collect::<Vec<_>>() } else { Vec::new() },
            "partitions": partitions,
        },
        "validator": {
            "actor": ActorReport::new(&stats.validator, validator_rates),
            "invalid_total": stats.rejected_total(),
            "invalid_by_reason": stats.rejections(),
            "dead_lettered": stats.dead_lettered.load(Ordering::Relaxed),
            "retention_window": retention_window(&stats),
            "dead_letter_topic_error": stats.dead_letter_topic_error(),
            "held_partitions": stats.held_partitions(),
        },
        "writer": {
            "actor": ActorReport::new(&stats.writer, writer_rates),
            "rows_buffered": stats.rows_buffered(),
            "rows_written": stats.rows_written.load(Ordering::Relaxed),
            "duplicates_skipped": stats.duplicates_skipped.load(Ordering::Relaxed),
            "stale_rows_dropped": stats.stale_rows_dropped.load(Ordering::Relaxed),
            "last_flush": last_flush,
            "flushes": {
                "size": stats.flushes_by_size.load(Ordering::Relaxed),
                "time": stats.flushes_by_time.load(Ordering::Relaxed),
                "idle": stats.flushes_when_idle.load(Ordering::Relaxed),
                "shutdown": stats.flushes_on_shutdown.load(Ordering::Relaxed),
            },
            "connections": stats.connections().iter().enumerate().map(|(index, c)| json!({
                "connection": index,
                "partitions": c.partitions.lock().map(|p| p.clone()).unwrap_or_default(),
                "mailbox_depth": c.mailbox.mailbox_depth(),
                "mailbox_capacity": c.mailbox.capacity.load(Ordering::Relaxed),
                "records": c.mailbox.records.load(Ordering::Relaxed),
                "rows_buffered": c.rows_buffered.load(Ordering::Relaxed),
                "rows_written": c.rows_written.load(Ordering::Relaxed),
                "flushes": c.flushes.load(Ordering::Relaxed),
                "last_flush": c.last_flush.lock().ok().and_then(|f| f.clone()),
            })).collect::<Vec<_>>(),
        },
        "summaries": stats.summaries.lock().map(|r| r.clone()).unwrap_or_default(),
        "summary_cache": crate::promql::store::summary_cache().report(),
        "database": {
            "connected": stats.database_connected.load(Ordering::Relaxed),
            "error": stats.database_error(),
            "storage": stats.storage.lock().ok().and_then(|s| s.clone()),
        },
        "ready": not_ready_reason(&stats).is_none(),
    }))
}

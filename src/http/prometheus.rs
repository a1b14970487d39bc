//! `GET /metrics`: the figures of `/status` in Prometheus text exposition. The registry is
//! built from [`Stats`] at each scrape, so there is one source of truth for both endpoints.

use std::sync::Arc;
use std::sync::atomic::Ordering;

use actix_web::{HttpResponse, web};
use prometheus::{
    Encoder, Gauge, GaugeVec, IntCounter, IntCounterVec, IntGauge, IntGaugeVec, Opts, Registry,
    TextEncoder,
};

use crate::stats::Stats;

fn render(stats: &Stats) -> Result<Vec<u8>, prometheus::Error> {
    let registry = Registry::new_custom(Some("panopticon".into()), None)?;
    let actors = [
        ("consumer", &stats.consumer),
        ("validator", &stats.validator),
        ("writer", &stats.writer),
    ];

    let depth = IntGaugeVec::new(
        Opts::new("mailbox_depth", "Actor messages waiting in the mailbox"),
        &["actor"],
    )?;
    let capacity = IntGaugeVec::new(
        Opts::new("mailbox_capacity", "Mailbox capacity in actor messages"),
        &["actor"],
    )?;
    let received = IntCounterVec::new(
        Opts::new("messages_received_total", "Actor messages enqueued"),
        &["actor"],
    )?;
    let handled = IntCounterVec::new(
        Opts::new("messages_handled_total", "Actor messages handled"),
        &["actor"],
    )?;
    let records = IntCounterVec::new(
        Opts::new("records_total", "Kafka records or rows through the actor"),
        &["actor"],
    )?;
    let errors = IntCounterVec::new(
        Opts::new("errors_total", "Failures the actor recovered from"),
        &["actor"],
    )?;
    let rate = GaugeVec::new(
        Opts::new("records_per_second", "Records a second over the window"),
        &["actor", "window"],
    )?;
    let rates = stats.rates();
    for (index, (name, actor)) in actors.iter().enumerate() {
        depth
            .with_label_values(&[name])
            .set(actor.mailbox_depth() as i64);
        capacity
            .with_label_values(&[name])
            .set(actor.capacity.load(Ordering::Relaxed) as i64);
        received
            .with_label_values(&[name])
            .inc_by(actor.enqueued.load(Ordering::Relaxed));
        handled
            .with_label_values(&[name])
            .inc_by(actor.handled.load(Ordering::Relaxed));
        records
            .with_label_values(&[name])
            .inc_by(actor.records.load(Ordering::Relaxed));
        errors
            .with_label_values(&[name])
            .inc_by(actor.errors.load(Ordering::Relaxed));
        rate.with_label_values(&[name, "10s"])
            .set(rates[index].rate_10s);
        rate.with_label_values(&[name, "1m"])
            .set(rates[index].rate_1m);
    }

    let invalid = IntCounterVec::new(
        Opts::new(
            "invalid_messages_total",
            "Messages rejected by the validator",
        ),
        &["reason"],
    )?;
    for (reason, count) in stats.rejections() {
        invalid.with_label_values(&[reason]).inc_by(count);
    }
    let rows_written = IntCounter::new("rows_written_total", "Rows committed to the database")?;
    rows_written.inc_by(stats.rows_written.load(Ordering::Relaxed));
    let dead_lettered = IntCounter::new(
        "dead_letters_total",
        "Messages sent to the dead-letter topic and acknowledged",
    )?;
    dead_lettered.inc_by(stats.dead_lettered.load(Ordering::Relaxed));
    let duplicates = IntCounter::new(
        "duplicates_skipped_total",
        "Rows not stored because the same metric was stored already",
    )?;
    duplicates.inc_by(stats.duplicates_skipped.load(Ordering::Relaxed));
    let rows_buffered = IntGauge::new("rows_buffered", "Rows waiting in the writer's batch")?;
    rows_buffered.set(stats.rows_buffered.load(Ordering::Relaxed) as i64);
    let flushes = IntCounterVec::new(
        Opts::new("flushes_total", "Batches written, by trigger"),
        &["trigger"],
    )?;
    flushes
        .with_label_values(&["size"])
        .inc_by(stats.flushes_by_size.load(Ordering::Relaxed));
    flushes
        .with_label_values(&["time"])
        .inc_by(stats.flushes_by_time.load(Ordering::Relaxed));
    flushes
        .with_label_values(&["shutdown"])
        .inc_by(stats.flushes_on_shutdown.load(Ordering::Relaxed));
    let last_flush = Gauge::new("last_flush_duration_seconds", "Duration of the last flush")?;
    if let Some(flush) = stats.last_flush.lock().ok().and_then(|f| f.clone()) {
        last_flush.set(flush.duration_ms / 1000.0);
    }

    let committed = IntGaugeVec::new(
        Opts::new(
            "partition_committed_offset",
            "Next offset committed, per partition",
        ),
        &["partition"],
    )?;
    let high = IntGaugeVec::new(
        Opts::new("partition_high_watermark", "High watermark, per partition"),
        &["partition"],
    )?;
    let lag = IntGaugeVec::new(
        Opts::new(
            "partition_lag_messages",
            "Messages not yet committed, per partition",
        ),
        &["partition"],
    )?;
    if let Ok(partitions) = stats.partitions.lock() {
        for (id, p) in partitions.iter() {
            let label = id.to_string();
            if let Some(v) = p.committed_offset {
                committed.with_label_values(&[&label]).set(v);
            }
            if let Some(v) = p.high_watermark {
                high.with_label_values(&[&label]).set(v);
            }
            if let Some(v) = p.lag {
                lag.with_label_values(&[&label]).set(v);
            }
        }
    }
    let paused = IntGauge::new(
        "consumer_paused",
        "1 while the consumer holds its partitions paused",
    )?;
    paused.set(stats.consumer_paused.load(Ordering::Relaxed) as i64);
    let database_up = IntGauge::new("database_up", "1 while database writes succeed")?;
    database_up.set(stats.database_connected.load(Ordering::Relaxed) as i64);

    registry.register(Box::new(depth))?;
    registry.register(Box::new(capacity))?;
    registry.register(Box::new(received))?;
    registry.register(Box::new(handled))?;
    registry.register(Box::new(records))?;
    registry.register(Box::new(errors))?;
    registry.register(Box::new(rate))?;
    registry.register(Box::new(invalid))?;
    registry.register(Box::new(rows_written))?;
    registry.register(Box::new(rows_buffered))?;
    registry.register(Box::new(dead_lettered))?;
    registry.register(Box::new(duplicates))?;
    registry.register(Box::new(flushes))?;
    registry.register(Box::new(last_flush))?;
    registry.register(Box::new(committed))?;
    registry.register(Box::new(high))?;
    registry.register(Box::new(lag))?;
    registry.register(Box::new(paused))?;
    registry.register(Box::new(database_up))?;

    let mut buffer = Vec::new();
    TextEncoder::new().encode(&registry.gather(), &mut buffer)?;
    Ok(buffer)
}

pub async fn metrics(stats: web::Data<Arc<Stats>>) -> HttpResponse {
    match render(&stats) {
        Ok(body) => HttpResponse::Ok()
            .content_type(prometheus::TEXT_FORMAT)
            .body(body),
        Err(e) => {
            log::error!("cannot render Prometheus metrics: {e}");
            HttpResponse::InternalServerError().body(e.to_string())
        }
    }
}

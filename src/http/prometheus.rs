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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::Reason;
    use crate::stats::{FlushReport, PartitionReport, Trigger};

    /// Stats with every figure set, and some partitions knowing only part of theirs.
    fn populated() -> Stats {
        let stats = Stats::default();
        for (actor, [enqueued, handled, records, errors, capacity]) in [
            (&stats.consumer, [10, 7, 1234, 1, 0]),
            (&stats.validator, [5, 5, 1200, 0, 4]),
            (&stats.writer, [3, 2, 1190, 2, 8]),
        ] {
            actor.enqueued.store(enqueued, Ordering::Relaxed);
            actor.handled.store(handled, Ordering::Relaxed);
            actor.records.store(records, Ordering::Relaxed);
            actor.errors.store(errors, Ordering::Relaxed);
            actor.capacity.store(capacity, Ordering::Relaxed);
        }
        stats.count_rejection(Reason::InvalidJson);
        stats.count_rejection(Reason::InvalidJson);
        stats.count_rejection(Reason::TooOld);
        stats.dead_lettered.store(3, Ordering::Relaxed);
        stats.duplicates_skipped.store(4, Ordering::Relaxed);
        stats.rows_buffered.store(17, Ordering::Relaxed);
        stats.rows_written.store(1190, Ordering::Relaxed);
        stats.flushes_by_size.store(5, Ordering::Relaxed);
        stats.flushes_by_time.store(6, Ordering::Relaxed);
        stats.flushes_on_shutdown.store(1, Ordering::Relaxed);
        *stats.last_flush.lock().unwrap() = Some(FlushReport {
            at: chrono::Utc::now(),
            rows: 40,
            duration_ms: 12.5,
            trigger: Trigger::Time,
        });
        {
            let mut partitions = stats.partitions.lock().unwrap();
            let mut full = PartitionReport::default();
            full.committed(20);
            full.read(25);
            full.observed(30, 5);
            partitions.insert(0, full);
            let mut estimated = PartitionReport::default();
            estimated.observed(-1, 7);
            partitions.insert(1, estimated);
            partitions.insert(12, PartitionReport::default());
        }
        stats.consumer_paused.store(true, Ordering::Relaxed);
        stats.database_connected.store(true, Ordering::Relaxed);
        stats
    }

    #[test]
    fn renders_every_figure_exactly_as_before() {
        let text = String::from_utf8(render(&populated()).unwrap()).unwrap();
        assert_eq!(text, EXPECTED, "{text}");
    }

    /// A fresh start has no partitions: their families are left out rather than shown empty,
    /// while every other figure is shown at zero.
    #[test]
    fn a_fresh_start_shows_zeros_and_no_partition() {
        let text = String::from_utf8(render(&Stats::default()).unwrap()).unwrap();
        assert!(!text.contains("panopticon_partition_"), "{text}");
        assert!(
            text.contains("\npanopticon_last_flush_duration_seconds 0\n"),
            "{text}"
        );
        assert!(
            text.contains("\npanopticon_records_total{actor=\"writer\"} 0\n"),
            "{text}"
        );
        assert_eq!(text.lines().filter(|l| l.starts_with("# TYPE")).count(), 16);
    }

    /// `/metrics` as it was rendered before its metrics became a table.
    const EXPECTED: &str = r#"# HELP panopticon_consumer_paused 1 while the consumer holds its partitions paused
# TYPE panopticon_consumer_paused gauge
panopticon_consumer_paused 1
# HELP panopticon_database_up 1 while database writes succeed
# TYPE panopticon_database_up gauge
panopticon_database_up 1
# HELP panopticon_dead_letters_total Messages sent to the dead-letter topic and acknowledged
# TYPE panopticon_dead_letters_total counter
panopticon_dead_letters_total 3
# HELP panopticon_duplicates_skipped_total Rows not stored because the same metric was stored already
# TYPE panopticon_duplicates_skipped_total counter
panopticon_duplicates_skipped_total 4
# HELP panopticon_errors_total Failures the actor recovered from
# TYPE panopticon_errors_total counter
panopticon_errors_total{actor="consumer"} 1
panopticon_errors_total{actor="validator"} 0
panopticon_errors_total{actor="writer"} 2
# HELP panopticon_flushes_total Batches written, by trigger
# TYPE panopticon_flushes_total counter
panopticon_flushes_total{trigger="shutdown"} 1
panopticon_flushes_total{trigger="size"} 5
panopticon_flushes_total{trigger="time"} 6
# HELP panopticon_invalid_messages_total Messages rejected by the validator
# TYPE panopticon_invalid_messages_total counter
panopticon_invalid_messages_total{reason="control_character"} 0
panopticon_invalid_messages_total{reason="empty_string"} 0
panopticon_invalid_messages_total{reason="future_timestamp"} 0
panopticon_invalid_messages_total{reason="invalid_json"} 2
panopticon_invalid_messages_total{reason="invalid_utf8"} 0
panopticon_invalid_messages_total{reason="missing_field"} 0
panopticon_invalid_messages_total{reason="not_an_object"} 0
panopticon_invalid_messages_total{reason="out_of_range"} 0
panopticon_invalid_messages_total{reason="too_long"} 0
panopticon_invalid_messages_total{reason="too_old"} 1
panopticon_invalid_messages_total{reason="wrong_type"} 0
# HELP panopticon_last_flush_duration_seconds Duration of the last flush
# TYPE panopticon_last_flush_duration_seconds gauge
panopticon_last_flush_duration_seconds 0.0125
# HELP panopticon_mailbox_capacity Mailbox capacity in actor messages
# TYPE panopticon_mailbox_capacity gauge
panopticon_mailbox_capacity{actor="consumer"} 0
panopticon_mailbox_capacity{actor="validator"} 4
panopticon_mailbox_capacity{actor="writer"} 8
# HELP panopticon_mailbox_depth Actor messages waiting in the mailbox
# TYPE panopticon_mailbox_depth gauge
panopticon_mailbox_depth{actor="consumer"} 3
panopticon_mailbox_depth{actor="validator"} 0
panopticon_mailbox_depth{actor="writer"} 1
# HELP panopticon_messages_handled_total Actor messages handled
# TYPE panopticon_messages_handled_total counter
panopticon_messages_handled_total{actor="consumer"} 7
panopticon_messages_handled_total{actor="validator"} 5
panopticon_messages_handled_total{actor="writer"} 2
# HELP panopticon_messages_received_total Actor messages enqueued
# TYPE panopticon_messages_received_total counter
panopticon_messages_received_total{actor="consumer"} 10
panopticon_messages_received_total{actor="validator"} 5
panopticon_messages_received_total{actor="writer"} 3
# HELP panopticon_partition_committed_offset Next offset committed, per partition
# TYPE panopticon_partition_committed_offset gauge
panopticon_partition_committed_offset{partition="0"} 20
# HELP panopticon_partition_high_watermark High watermark, per partition
# TYPE panopticon_partition_high_watermark gauge
panopticon_partition_high_watermark{partition="0"} 30
# HELP panopticon_partition_lag_messages Messages not yet committed, per partition
# TYPE panopticon_partition_lag_messages gauge
panopticon_partition_lag_messages{partition="0"} 10
panopticon_partition_lag_messages{partition="1"} 7
# HELP panopticon_records_per_second Records a second over the window
# TYPE panopticon_records_per_second gauge
panopticon_records_per_second{actor="consumer",window="10s"} 0
panopticon_records_per_second{actor="consumer",window="1m"} 0
panopticon_records_per_second{actor="validator",window="10s"} 0
panopticon_records_per_second{actor="validator",window="1m"} 0
panopticon_records_per_second{actor="writer",window="10s"} 0
panopticon_records_per_second{actor="writer",window="1m"} 0
# HELP panopticon_records_total Kafka records or rows through the actor
# TYPE panopticon_records_total counter
panopticon_records_total{actor="consumer"} 1234
panopticon_records_total{actor="validator"} 1200
panopticon_records_total{actor="writer"} 1190
# HELP panopticon_rows_buffered Rows waiting in the writer's batch
# TYPE panopticon_rows_buffered gauge
panopticon_rows_buffered 17
# HELP panopticon_rows_written_total Rows committed to the database
# TYPE panopticon_rows_written_total counter
panopticon_rows_written_total 1190
"#;
}

//! `GET /metrics`: the figures of `/status` in Prometheus text exposition. The registry is
//! built from [`Stats`] at each scrape, so there is one source of truth for both endpoints.

use std::sync::Arc;
use std::sync::atomic::Ordering;

use actix_web::{HttpResponse, web};
use prometheus::{CounterVec, Encoder, GaugeVec, Opts, Registry, TextEncoder};

use crate::stats::{ActorStats, ConnectionStats, PartitionReport, Stats, SummaryReport};

/// How Prometheus is told to read a family.
#[derive(Debug, Clone, Copy)]
enum Kind {
    /// Only ever goes up (until the process restarts).
    Counter,
    /// Goes up and down.
    Gauge,
}

/// One sample: its label values, in the order of its family's label names, and its value.
type Sample = (Vec<String>, f64);

/// One metric family of `/metrics`, without the `panopticon_` prefix.
struct Family {
    name: &'static str,
    help: &'static str,
    kind: Kind,
    /// Label names; none for a family of one unlabelled sample.
    labels: &'static [&'static str],
    /// The samples, read from [`Stats`] at each scrape. A family that reads none is left out.
    read: fn(&Stats) -> Vec<Sample>,
}

/// Every figure of `/metrics`. The text lists families by name and samples by label values,
/// whatever the order here.
const FAMILIES: &[Family] = &[
    Family {
        name: "mailbox_depth",
        help: "Actor messages waiting in the mailbox",
        kind: Kind::Gauge,
        labels: &["actor"],
        read: |s| per_actor(s, ActorStats::mailbox_depth),
    },
    Family {
        name: "mailbox_capacity",
        help: "Mailbox capacity in actor messages",
        kind: Kind::Gauge,
        labels: &["actor"],
        read: |s| per_actor(s, |a| a.capacity.load(Ordering::Relaxed)),
    },
    Family {
        name: "messages_received_total",
        help: "Actor messages enqueued",
        kind: Kind::Counter,
        labels: &["actor"],
        read: |s| per_actor(s, |a| a.enqueued.load(Ordering::Relaxed)),
    },
    Family {
        name: "messages_handled_total",
        help: "Actor messages handled",
        kind: Kind::Counter,
        labels: &["actor"],
        read: |s| per_actor(s, |a| a.handled.load(Ordering::Relaxed)),
    },
    Family {
        name: "records_total",
        help: "Kafka records or rows through the actor",
        kind: Kind::Counter,
        labels: &["actor"],
        read: |s| per_actor(s, |a| a.records.load(Ordering::Relaxed)),
    },
    Family {
        name: "errors_total",
        help: "Failures the actor recovered from",
        kind: Kind::Counter,
        labels: &["actor"],
        read: |s| per_actor(s, |a| a.errors.load(Ordering::Relaxed)),
    },
    Family {
        name: "records_per_second",
        help: "Records a second over the window",
        kind: Kind::Gauge,
        labels: &["actor", "window"],
        read: |s| {
            let rates = s.rates();
            ACTORS
                .iter()
                .zip(rates)
                .flat_map(|(actor, rates)| {
                    [("10s", rates.rate_10s), ("1m", rates.rate_1m)]
                        .map(|(window, rate)| (vec![actor.to_string(), window.into()], rate))
                })
                .collect()
        },
    },
    Family {
        name: "invalid_messages_total",
        help: "Messages rejected by the validator",
        kind: Kind::Counter,
        labels: &["reason"],
        read: |s| {
            s.rejections()
                .into_iter()
                .map(|(reason, count)| (vec![reason.to_owned()], count as f64))
                .collect()
        },
    },
    Family {
        name: "rows_written_total",
        help: "Rows committed to the database",
        kind: Kind::Counter,
        labels: &[],
        read: |s| single(s.rows_written.load(Ordering::Relaxed) as f64),
    },
    Family {
        name: "dead_letters_total",
        help: "Messages sent to the dead-letter topic and acknowledged",
        kind: Kind::Counter,
        labels: &[],
        read: |s| single(s.dead_lettered.load(Ordering::Relaxed) as f64),
    },
    Family {
        name: "duplicates_skipped_total",
        help: "Rows not stored because the same metric was stored already",
        kind: Kind::Counter,
        labels: &[],
        read: |s| single(s.duplicates_skipped.load(Ordering::Relaxed) as f64),
    },
    Family {
        name: "rows_buffered",
        help: "Rows waiting in the writers' batches",
        kind: Kind::Gauge,
        labels: &[],
        read: |s| single(s.rows_buffered() as f64),
    },
    Family {
        name: "writer_connection_rows_buffered",
        help: "Rows waiting in the batch, per writer connection",
        kind: Kind::Gauge,
        labels: &["connection"],
        read: |s| per_connection(s, |c| c.rows_buffered.load(Ordering::Relaxed)),
    },
    Family {
        name: "writer_connection_rows_written_total",
        help: "Rows stored, per writer connection",
        kind: Kind::Counter,
        labels: &["connection"],
        read: |s| per_connection(s, |c| c.rows_written.load(Ordering::Relaxed)),
    },
    Family {
        name: "writer_connection_flushes_total",
        help: "Batches written, per writer connection",
        kind: Kind::Counter,
        labels: &["connection"],
        read: |s| per_connection(s, |c| c.flushes.load(Ordering::Relaxed)),
    },
    Family {
        name: "writer_connection_mailbox_depth",
        help: "Chunks waiting in the mailbox, per writer connection",
        kind: Kind::Gauge,
        labels: &["connection"],
        read: |s| per_connection(s, |c| c.mailbox.mailbox_depth()),
    },
    Family {
        name: "writer_connection_partitions",
        help: "Partitions owned, per writer connection",
        kind: Kind::Gauge,
        labels: &["connection"],
        read: |s| per_connection(s, |c| c.partitions.lock().map_or(0, |p| p.len() as u64)),
    },
    Family {
        name: "flushes_total",
        help: "Batches written, by trigger",
        kind: Kind::Counter,
        labels: &["trigger"],
        read: |s| {
            [
                ("size", &s.flushes_by_size),
                ("time", &s.flushes_by_time),
                ("idle", &s.flushes_when_idle),
                ("shutdown", &s.flushes_on_shutdown),
            ]
            .map(|(trigger, count)| (vec![trigger.into()], count.load(Ordering::Relaxed) as f64))
            .into()
        },
    },
    Family {
        name: "last_flush_duration_seconds",
        help: "Duration of the last flush",
        kind: Kind::Gauge,
        labels: &[],
        read: |s| {
            let last = s.last_flush.lock().ok().and_then(|f| f.clone());
            single(last.map_or(0.0, |flush| flush.duration_ms / 1000.0))
        },
    },
    Family {
        name: "partition_committed_offset",
        help: "Next offset committed, per partition",
        kind: Kind::Gauge,
        labels: &["partition"],
        read: |s| per_partition(s, |p| p.committed_offset),
    },
    Family {
        name: "partition_high_watermark",
        help: "High watermark, per partition",
        kind: Kind::Gauge,
        labels: &["partition"],
        read: |s| per_partition(s, |p| p.high_watermark),
    },
    Family {
        name: "partition_lag_messages",
        help: "Messages not yet committed, per partition",
        kind: Kind::Gauge,
        labels: &["partition"],
        read: |s| per_partition(s, |p| p.lag),
    },
    Family {
        name: "consumer_paused",
        help: "1 while the consumer holds its partitions paused",
        kind: Kind::Gauge,
        labels: &[],
        read: |s| single(flag(s.consumer_paused.load(Ordering::Relaxed))),
    },
    Family {
        name: "database_up",
        help: "1 while database writes succeed",
        kind: Kind::Gauge,
        labels: &[],
        read: |s| single(flag(s.database_connected.load(Ordering::Relaxed))),
    },
    Family {
        name: "summaries_pending_ranges",
        help: "Sample-time ranges changed and not yet summarised again, as of the last summary pass",
        kind: Kind::Gauge,
        labels: &[],
        read: |s| summaries(s, |r| r.pending_ranges.map(|n| n as f64)),
    },
    Family {
        name: "summaries_oldest_pending_timestamp_seconds",
        help: "Oldest sample time of the pending ranges, as of the last summary pass",
        kind: Kind::Gauge,
        labels: &[],
        read: |s| {
            summaries(s, |r| {
                r.oldest_pending
                    .map(|at| at.timestamp_millis() as f64 / 1000.0)
            })
        },
    },
    Family {
        name: "summaries_last_pass_duration_seconds",
        help: "Duration of the last summary pass",
        kind: Kind::Gauge,
        labels: &[],
        read: |s| {
            summaries(s, |r| {
                Some(r.last_pass.as_ref().map_or(0.0, |p| p.duration_ms / 1000.0))
            })
        },
    },
    Family {
        name: "summaries_last_pass_minutes",
        help: "Minutes the last summary pass recomputed from raw samples",
        kind: Kind::Gauge,
        labels: &[],
        read: |s| {
            summaries(s, |r| {
                Some(r.last_pass.as_ref().map_or(0, |p| p.minutes) as f64)
            })
        },
    },
    Family {
        name: "summaries_passes_total",
        help: "Summary passes done",
        kind: Kind::Counter,
        labels: &[],
        read: |s| summaries(s, |r| Some(r.passes as f64)),
    },
    Family {
        name: "summaries_deferred_total",
        help: "Summary passes deferred because the writers were behind",
        kind: Kind::Counter,
        labels: &[],
        read: |s| summaries(s, |r| Some(r.deferred as f64)),
    },
    Family {
        name: "summaries_skipped_total",
        help: "Summary passes skipped because another instance held the lock",
        kind: Kind::Counter,
        labels: &[],
        read: |s| summaries(s, |r| Some(r.skipped as f64)),
    },
    Family {
        name: "summaries_up",
        help: "0 while summary passes fail",
        kind: Kind::Gauge,
        labels: &[],
        read: |s| summaries(s, |r| Some(flag(r.error.is_none()))),
    },
];

/// One unlabelled sample of the summarizer's report, or none where it has no such figure.
fn summaries(stats: &Stats, read: fn(&SummaryReport) -> Option<f64>) -> Vec<Sample> {
    let Ok(report) = stats.summaries.lock() else {
        return Vec::new();
    };
    read(&report).map(single).unwrap_or_default()
}

/// The actors, in the order of [`Stats::rates`].
const ACTORS: [&str; 3] = ["consumer", "validator", "writer"];

fn single(value: f64) -> Vec<Sample> {
    vec![(Vec::new(), value)]
}

fn flag(on: bool) -> f64 {
    if on { 1.0 } else { 0.0 }
}

/// One sample per actor, labelled with its name.
fn per_actor(stats: &Stats, read: fn(&ActorStats) -> u64) -> Vec<Sample> {
    ACTORS
        .into_iter()
        .zip([&stats.consumer, &stats.validator, &stats.writer])
        .map(|(name, actor)| (vec![name.to_owned()], read(actor) as f64))
        .collect()
}

/// One sample per writer connection, labelled with its number.
fn per_connection(stats: &Stats, read: fn(&ConnectionStats) -> u64) -> Vec<Sample> {
    stats
        .connections()
        .iter()
        .enumerate()
        .map(|(index, c)| (vec![index.to_string()], read(c) as f64))
        .collect()
}

/// One sample per assigned partition whose figure is known, labelled with its id.
fn per_partition(stats: &Stats, read: fn(&PartitionReport) -> Option<i64>) -> Vec<Sample> {
    let Ok(partitions) = stats.partitions.lock() else {
        return Vec::new();
    };
    partitions
        .iter()
        .filter_map(|(id, p)| Some((vec![id.to_string()], read(p)? as f64)))
        .collect()
}

fn render(stats: &Stats) -> Result<Vec<u8>, prometheus::Error> {
    let registry = Registry::new_custom(Some("panopticon".into()), None)?;
    for family in FAMILIES {
        let opts = Opts::new(family.name, family.help);
        let samples = (family.read)(stats);
        match family.kind {
            Kind::Counter => {
                let counters = CounterVec::new(opts, family.labels)?;
                for (values, value) in &samples {
                    counters
                        .get_metric_with_label_values(values)?
                        .inc_by(*value);
                }
                registry.register(Box::new(counters))?;
            }
            Kind::Gauge => {
                let gauges = GaugeVec::new(opts, family.labels)?;
                for (values, value) in &samples {
                    gauges.get_metric_with_label_values(values)?.set(*value);
                }
                registry.register(Box::new(gauges))?;
            }
        }
    }
    let mut buffer = Vec::new();
    TextEncoder::new().encode(&registry.gather(), &mut buffer)?;
    Ok(buffer)
}

pub(crate) async fn metrics(stats: web::Data<Arc<Stats>>) -> HttpResponse {
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
    use crate::stats::{FlushReport, PartitionReport, PassReport, Trigger};

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
        for (buffered, written, flushes, partitions) in
            [(10, 700, 7, vec![0, 12]), (7, 490, 5, vec![1])]
        {
            let connection = stats.add_connection();
            connection.rows_buffered.store(buffered, Ordering::Relaxed);
            connection.rows_written.store(written, Ordering::Relaxed);
            connection.flushes.store(flushes, Ordering::Relaxed);
            connection.mailbox.enqueued.store(3, Ordering::Relaxed);
            connection.mailbox.handled.store(2, Ordering::Relaxed);
            *connection.partitions.lock().unwrap() = partitions;
        }
        stats.rows_written.store(1190, Ordering::Relaxed);
        stats.flushes_by_size.store(5, Ordering::Relaxed);
        stats.flushes_by_time.store(6, Ordering::Relaxed);
        stats.flushes_when_idle.store(2, Ordering::Relaxed);
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
        *stats.summaries.lock().unwrap() = SummaryReport {
            pending_ranges: Some(3),
            oldest_pending: chrono::DateTime::from_timestamp_millis(1_796_000_000_500),
            last_pass: Some(PassReport {
                at: chrono::Utc::now(),
                duration_ms: 250.0,
                minutes: 2,
                rows: 1000,
                hours: 0,
            }),
            passes: 9,
            deferred: 1,
            skipped: 4,
            error: None,
        };
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
        // The pending ranges are unknown before the first summary pass: left out too.
        assert!(!text.contains("panopticon_summaries_pending"), "{text}");
        assert_eq!(text.lines().filter(|l| l.starts_with("# TYPE")).count(), 22);
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
panopticon_flushes_total{trigger="idle"} 2
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
# HELP panopticon_rows_buffered Rows waiting in the writers' batches
# TYPE panopticon_rows_buffered gauge
panopticon_rows_buffered 17
# HELP panopticon_rows_written_total Rows committed to the database
# TYPE panopticon_rows_written_total counter
panopticon_rows_written_total 1190
# HELP panopticon_summaries_deferred_total Summary passes deferred because the writers were behind
# TYPE panopticon_summaries_deferred_total counter
panopticon_summaries_deferred_total 1
# HELP panopticon_summaries_last_pass_duration_seconds Duration of the last summary pass
# TYPE panopticon_summaries_last_pass_duration_seconds gauge
panopticon_summaries_last_pass_duration_seconds 0.25
# HELP panopticon_summaries_last_pass_minutes Minutes the last summary pass recomputed from raw samples
# TYPE panopticon_summaries_last_pass_minutes gauge
panopticon_summaries_last_pass_minutes 2
# HELP panopticon_summaries_oldest_pending_timestamp_seconds Oldest sample time of the pending ranges, as of the last summary pass
# TYPE panopticon_summaries_oldest_pending_timestamp_seconds gauge
panopticon_summaries_oldest_pending_timestamp_seconds 1796000000.5
# HELP panopticon_summaries_passes_total Summary passes done
# TYPE panopticon_summaries_passes_total counter
panopticon_summaries_passes_total 9
# HELP panopticon_summaries_pending_ranges Sample-time ranges changed and not yet summarised again, as of the last summary pass
# TYPE panopticon_summaries_pending_ranges gauge
panopticon_summaries_pending_ranges 3
# HELP panopticon_summaries_skipped_total Summary passes skipped because another instance held the lock
# TYPE panopticon_summaries_skipped_total counter
panopticon_summaries_skipped_total 4
# HELP panopticon_summaries_up 0 while summary passes fail
# TYPE panopticon_summaries_up gauge
panopticon_summaries_up 1
# HELP panopticon_writer_connection_flushes_total Batches written, per writer connection
# TYPE panopticon_writer_connection_flushes_total counter
panopticon_writer_connection_flushes_total{connection="0"} 7
panopticon_writer_connection_flushes_total{connection="1"} 5
# HELP panopticon_writer_connection_mailbox_depth Chunks waiting in the mailbox, per writer connection
# TYPE panopticon_writer_connection_mailbox_depth gauge
panopticon_writer_connection_mailbox_depth{connection="0"} 1
panopticon_writer_connection_mailbox_depth{connection="1"} 1
# HELP panopticon_writer_connection_partitions Partitions owned, per writer connection
# TYPE panopticon_writer_connection_partitions gauge
panopticon_writer_connection_partitions{connection="0"} 2
panopticon_writer_connection_partitions{connection="1"} 1
# HELP panopticon_writer_connection_rows_buffered Rows waiting in the batch, per writer connection
# TYPE panopticon_writer_connection_rows_buffered gauge
panopticon_writer_connection_rows_buffered{connection="0"} 10
panopticon_writer_connection_rows_buffered{connection="1"} 7
# HELP panopticon_writer_connection_rows_written_total Rows stored, per writer connection
# TYPE panopticon_writer_connection_rows_written_total counter
panopticon_writer_connection_rows_written_total{connection="0"} 700
panopticon_writer_connection_rows_written_total{connection="1"} 490
"#;
}

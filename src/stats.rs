//! Counters shared by the actors and read by the HTTP server. actix exposes no mailbox length,
//! so each sender counts what it enqueues and each handler what it finished; the difference is
//! the mailbox depth.

use std::collections::{BTreeMap, VecDeque};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use serde::Serialize;

use crate::domain::Reason;
use crate::offsets::Position;

/// Counters of one actor.
#[derive(Debug, Default)]
pub struct ActorStats {
    /// Actor messages (chunks) put into the mailbox.
    pub enqueued: AtomicU64,
    /// Actor messages fully handled.
    pub handled: AtomicU64,
    /// Kafka records (or rows) that went through the actor.
    pub records: AtomicU64,
    /// Failures the actor met and recovered from.
    pub errors: AtomicU64,
    /// Mailbox capacity, in actor messages.
    pub capacity: AtomicU64,
}

impl ActorStats {
    pub fn mailbox_depth(&self) -> u64 {
        let handled = self.handled.load(Ordering::Relaxed);
        self.enqueued
            .load(Ordering::Relaxed)
            .saturating_sub(handled)
    }
}

/// Why the last flush happened.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Trigger {
    /// The batch reached `BATCH_MAX_ROWS`.
    Size,
    /// Its oldest row waited `BATCH_MAX_WAIT_MS`.
    Time,
    /// The writer had nothing else to do: what arrived while the last flush ran is written
    /// at once (group commit).
    Idle,
    Shutdown,
}

/// What the last flush did.
#[derive(Debug, Clone, Serialize)]
pub struct FlushReport {
    pub at: DateTime<Utc>,
    pub rows: usize,
    pub duration_ms: f64,
    pub trigger: Trigger,
}

/// What the summarizer knows of the per-minute summaries, as of its last pass.
#[derive(Debug, Clone, Default, Serialize)]
pub struct SummaryReport {
    /// Sample-time ranges changed and not yet summarised again.
    pub pending_ranges: Option<i64>,
    /// The oldest sample time they hold: minutes from there on may be read from raw samples.
    pub oldest_pending: Option<DateTime<Utc>>,
    pub last_pass: Option<PassReport>,
    pub passes: u64,
    /// Periods skipped because the writers were behind.
    pub deferred: u64,
    /// Periods skipped because another instance held the summarizer's lock.
    pub skipped: u64,
    /// Why the last pass failed, cleared by the next one that succeeds.
    pub error: Option<String>,
}

/// What the summarizer's last pass did.
#[derive(Debug, Clone, Serialize)]
pub struct PassReport {
    pub at: DateTime<Utc>,
    pub duration_ms: f64,
    /// Minutes recomputed from raw samples.
    pub minutes: u64,
    /// Summary rows written: one per series and minute holding samples.
    pub rows: u64,
    /// Hours packed into one row per series.
    pub hours: u64,
}

/// What one writer connection does; [`Stats`] holds the sums over all of them.
#[derive(Debug, Default)]
pub struct ConnectionStats {
    /// Its mailbox and the rows through it.
    pub mailbox: ActorStats,
    /// The partitions it owns.
    pub partitions: Mutex<Vec<i32>>,
    pub rows_buffered: AtomicU64,
    pub rows_written: AtomicU64,
    pub flushes: AtomicU64,
    pub last_flush: Mutex<Option<FlushReport>>,
}

/// What the consumer knows of one assigned partition. `/status` and `/metrics` show the three
/// public figures together, so they are worked out together from everything known, each time
/// any input changes (see [`watermark_and_lag`]): the watermark is never behind the committed
/// offset, and the lag is never negative.
#[derive(Debug, Clone, Default, Serialize)]
pub struct PartitionReport {
    /// Next offset whose rows are committed to the database and the offset to Kafka.
    pub committed_offset: Option<i64>,
    /// The end of the partition as far as this instance knows it.
    pub high_watermark: Option<i64>,
    /// Records of the partition not yet committed.
    pub lag: Option<i64>,
    /// The high watermark in librdkafka's last statistics: up to `statistics.interval.ms` old.
    #[serde(skip)]
    reported_high: Option<i64>,
    /// Next offset after the newest record read: the partition reaches at least that far.
    #[serde(skip)]
    read_to: Option<i64>,
    /// librdkafka's own lag estimate, for the time before this instance has committed.
    #[serde(skip)]
    lag_estimate: Option<i64>,
}

impl PartitionReport {
    /// Rows up to `next` are committed.
    pub fn committed(&mut self, next: i64) {
        self.committed_offset = Some(next);
        self.update();
    }

    /// Records up to `next` (exclusive) were read from the partition.
    pub fn read(&mut self, next: i64) {
        self.read_to = self.read_to.max(Some(next));
        self.update();
    }

    /// librdkafka's statistics: the high watermark and its lag estimate; -1 means unknown.
    pub fn observed(&mut self, high_watermark: i64, consumer_lag: i64) {
        self.reported_high = Some(high_watermark).filter(|h| *h >= 0);
        self.lag_estimate = Some(consumer_lag).filter(|l| *l >= 0);
        self.update();
    }

    fn update(&mut self) {
        (self.high_watermark, self.lag) = watermark_and_lag(
            self.reported_high,
            self.read_to,
            self.committed_offset,
            self.lag_estimate,
        );
    }
}

/// A partition whose stored offset waits for a dead letter the broker has not acknowledged.
#[derive(Debug, Clone, Serialize)]
pub struct HeldPartition {
    pub partition: i32,
    /// Offset of the message waiting to be dead-lettered.
    pub offset: i64,
    pub reason: String,
}

/// The high watermark and lag to show for a partition. The broker's high watermark reaches
/// the service only with librdkafka's statistics, every `statistics.interval.ms`, while
/// records are read and committed continuously, so on its own it falls behind what was read.
/// The partition reaches at least as far as the newest record read (`read_to`) and the
/// committed offset: the watermark shown is the greatest of the three, and the lag the
/// distance from the committed offset to it. The lag then counts every record read but not
/// yet committed, and misses only records the broker took since the last statistics. Before
/// anything is committed, librdkafka's estimate stands in.
pub fn watermark_and_lag(
    reported_high: Option<i64>,
    read_to: Option<i64>,
    committed: Option<i64>,
    estimate: Option<i64>,
) -> (Option<i64>, Option<i64>) {
    let high = reported_high.max(read_to).max(committed);
    let lag = match (high, committed) {
        (Some(high), Some(committed)) => Some(high - committed),
        _ => estimate.map(|lag| lag.max(0)),
    };
    (high, lag)
}

/// Everything `/status` reports, updated by the actors as they work.
#[derive(Debug, Default)]
pub struct Stats {
    pub consumer: ActorStats,
    pub validator: ActorStats,
    pub writer: ActorStats,
    rejected: [AtomicU64; Reason::ALL.len()],
    /// Messages sent to the dead-letter topic and acknowledged by the broker.
    pub dead_lettered: AtomicU64,
    /// Partitions held because their dead letters are not acknowledged yet, by partition.
    pub held_partitions: Mutex<BTreeMap<i32, HeldPartition>>,
    /// Why the dead-letter topic is not usable (missing and cannot be created), if it is not.
    pub dead_letter_topic_error: Mutex<Option<String>>,
    /// Rows skipped by the database because the same metric was stored already.
    pub duplicates_skipped: AtomicU64,
    /// Rows dropped because their partition moved to another instance or they were stored.
    pub stale_rows_dropped: AtomicU64,
    pub rows_written: AtomicU64,
    pub flushes_by_size: AtomicU64,
    pub flushes_by_time: AtomicU64,
    pub flushes_when_idle: AtomicU64,
    pub flushes_on_shutdown: AtomicU64,
    pub last_flush: Mutex<Option<FlushReport>>,
    /// Each writer connection's own figures, in the order the writers were made.
    pub connections: Mutex<Vec<Arc<ConnectionStats>>>,
    /// True while the consumer holds its partitions paused because the validator is full.
    pub consumer_paused: AtomicBool,
    /// True once the consumer has joined its group.
    pub consumer_joined: AtomicBool,
    pub partitions: Mutex<BTreeMap<i32, PartitionReport>>,
    /// Last database failure, cleared by the next successful write.
    pub database_error: Mutex<Option<String>>,
    pub database_connected: AtomicBool,
    /// Last failure to reach the Kafka brokers (TLS, authentication, transport), as librdkafka
    /// reported it; cleared once a broker answers.
    pub kafka_error: Mutex<Option<String>>,
    /// Why the brokers refuse this consumer what it needs (an ACL missing), if they do;
    /// cleared once a record is read again.
    pub kafka_access_error: Mutex<Option<String>>,
    pub storage: Mutex<Option<String>>,
    /// The oldest a metric may be, in milliseconds before now, where a retention job would
    /// delete anything older (TimescaleDB only); `None`: any past is accepted.
    pub max_age_ms: Mutex<Option<i64>>,
    /// What the summarizer of the per-minute summaries did last.
    pub summaries: Mutex<SummaryReport>,
    /// Per-second samples of the actors' record counters, for rates.
    rates: Mutex<VecDeque<(Instant, [u64; 3])>>,
}

/// Records a second over the last 10 s and the last minute.
#[derive(Debug, Clone, Copy, Default, Serialize)]
pub struct Rates {
    pub rate_10s: f64,
    pub rate_1m: f64,
}

impl Stats {
    /// Registers one more writer connection and answers with its figures.
    pub fn add_connection(&self) -> Arc<ConnectionStats> {
        let connection = Arc::new(ConnectionStats::default());
        if let Ok(mut connections) = self.connections.lock() {
            connections.push(connection.clone());
        }
        connection
    }

    /// The writer connections' figures.
    pub fn connections(&self) -> Vec<Arc<ConnectionStats>> {
        self.connections
            .lock()
            .map(|c| c.clone())
            .unwrap_or_default()
    }

    /// Rows waiting in all writers' batches.
    pub fn rows_buffered(&self) -> u64 {
        self.connections()
            .iter()
            .map(|c| c.rows_buffered.load(Ordering::Relaxed))
            .sum()
    }

    /// Samples the record counters; called once a second.
    pub fn sample_rates(&self) {
        let counts = [
            self.consumer.records.load(Ordering::Relaxed),
            self.validator.records.load(Ordering::Relaxed),
            self.writer.records.load(Ordering::Relaxed),
        ];
        if let Ok(mut samples) = self.rates.lock() {
            samples.push_back((Instant::now(), counts));
            while samples.len() > 62 {
                samples.pop_front();
            }
        }
    }

    /// Rates of the consumer, validator and writer, in that order.
    pub fn rates(&self) -> [Rates; 3] {
        let mut rates = [Rates::default(); 3];
        let Ok(samples) = self.rates.lock() else {
            return rates;
        };
        let Some(&(now, latest)) = samples.back() else {
            return rates;
        };
        let since = |window: Duration| {
            samples
                .iter()
                .find(|(at, _)| now.duration_since(*at) <= window)
                .filter(|(at, _)| *at < now)
        };
        for (window, pick) in [(Duration::from_secs(10), 0), (Duration::from_secs(60), 1)] {
            if let Some(&(at, earlier)) = since(window) {
                let seconds = now.duration_since(at).as_secs_f64();
                for actor in 0..3 {
                    let rate = (latest[actor] - earlier[actor]) as f64 / seconds;
                    if pick == 0 {
                        rates[actor].rate_10s = rate;
                    } else {
                        rates[actor].rate_1m = rate;
                    }
                }
            }
        }
        rates
    }

    /// Records that rows up to these next offsets are committed to the database.
    pub fn record_committed(&self, offsets: &[Position]) {
        let Ok(mut partitions) = self.partitions.lock() else {
            return;
        };
        for next in offsets {
            if let Some(report) = partitions.get_mut(&next.partition) {
                report.committed(next.offset);
            }
        }
    }

    /// Records that these records were read.
    pub fn record_read(&self, records: impl IntoIterator<Item = Position>) {
        let Ok(mut partitions) = self.partitions.lock() else {
            return;
        };
        for at in records {
            if let Some(report) = partitions.get_mut(&at.partition) {
                report.read(at.offset + 1);
            }
        }
    }

    pub fn count_rejection(&self, reason: Reason) {
        self.rejected[reason.index()].fetch_add(1, Ordering::Relaxed);
    }

    pub fn rejections(&self) -> BTreeMap<&'static str, u64> {
        Reason::ALL
            .iter()
            .map(|r| (r.as_str(), self.rejected[r.index()].load(Ordering::Relaxed)))
            .collect()
    }

    pub fn rejected_total(&self) -> u64 {
        self.rejected
            .iter()
            .map(|c| c.load(Ordering::Relaxed))
            .sum()
    }

    /// The partitions of `sending` now wait for the dead letters in `held`; those of `sending`
    /// not in `held` no longer wait.
    pub fn hold_partitions(
        &self,
        held: Vec<HeldPartition>,
        sending: impl IntoIterator<Item = i32>,
    ) {
        let Ok(mut partitions) = self.held_partitions.lock() else {
            return;
        };
        for partition in sending {
            partitions.remove(&partition);
        }
        for hold in held {
            partitions.entry(hold.partition).or_insert(hold);
        }
    }

    pub fn held_partitions(&self) -> Vec<HeldPartition> {
        self.held_partitions
            .lock()
            .map(|p| p.values().cloned().collect())
            .unwrap_or_default()
    }

    pub fn set_dead_letter_topic_error(&self, error: Option<String>) {
        if let Ok(mut slot) = self.dead_letter_topic_error.lock() {
            *slot = error;
        }
    }

    pub fn dead_letter_topic_error(&self) -> Option<String> {
        self.dead_letter_topic_error
            .lock()
            .ok()
            .and_then(|e| e.clone())
    }

    pub fn set_database_error(&self, error: Option<String>) {
        self.database_connected
            .store(error.is_none(), Ordering::Relaxed);
        if let Ok(mut slot) = self.database_error.lock() {
            *slot = error;
        }
    }

    pub fn database_error(&self) -> Option<String> {
        self.database_error.lock().ok().and_then(|e| e.clone())
    }

    pub fn set_kafka_error(&self, error: Option<String>) {
        if let Ok(mut slot) = self.kafka_error.lock() {
            *slot = error;
        }
    }

    pub fn kafka_error(&self) -> Option<String> {
        self.kafka_error.lock().ok().and_then(|e| e.clone())
    }

    /// Sets why the brokers refuse access, answering what it was before.
    pub fn replace_kafka_access_error(&self, error: Option<String>) -> Option<String> {
        self.kafka_access_error
            .lock()
            .ok()
            .and_then(|mut slot| std::mem::replace(&mut *slot, error))
    }

    pub fn kafka_access_error(&self) -> Option<String> {
        self.kafka_access_error.lock().ok().and_then(|e| e.clone())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lag_is_the_high_watermark_less_the_committed_offset_once_both_are_known() {
        let mut report = PartitionReport::default();
        report.committed(40);
        assert_eq!(
            report.high_watermark,
            Some(40),
            "at least the committed offset"
        );
        assert_eq!(report.lag, Some(0));
        report.observed(100, 75);
        assert_eq!(report.lag, Some(60));
        report.committed(90);
        assert_eq!(report.lag, Some(10));
        report.committed(120);
        assert_eq!(
            report.high_watermark,
            Some(120),
            "never behind the committed offset"
        );
        assert_eq!(report.lag, Some(0), "never negative");

        let mut fresh = PartitionReport::default();
        fresh.observed(100, 75);
        assert_eq!(
            fresh.lag,
            Some(75),
            "librdkafka's estimate before any commit"
        );
        let mut unknown = PartitionReport::default();
        unknown.observed(-1, -1);
        assert_eq!((unknown.high_watermark, unknown.lag), (None, None));
    }

    #[test]
    fn the_watermark_is_never_behind_what_was_read_or_committed() {
        // Statistics 5 s old say 100; since then records up to 250 were read, 200 committed.
        assert_eq!(
            watermark_and_lag(Some(100), Some(250), Some(200), Some(0)),
            (Some(250), Some(50))
        );
        // Everything read is committed, and the statistics have not caught up.
        assert_eq!(
            watermark_and_lag(Some(100), Some(250), Some(250), None),
            (Some(250), Some(0))
        );
        // The statistics know of records not read yet.
        assert_eq!(
            watermark_and_lag(Some(300), Some(250), Some(200), None),
            (Some(300), Some(100))
        );
        // No statistics yet.
        assert_eq!(
            watermark_and_lag(None, Some(10), Some(7), None),
            (Some(10), Some(3))
        );
        // Nothing committed yet: librdkafka's estimate, never negative.
        assert_eq!(
            watermark_and_lag(Some(50), Some(20), None, Some(30)),
            (Some(50), Some(30))
        );
        assert_eq!(watermark_and_lag(None, None, None, None), (None, None));
    }

    #[test]
    fn reading_moves_the_watermark_and_the_lag_with_it() {
        let mut report = PartitionReport::default();
        report.observed(10, 10);
        report.read(25);
        report.committed(20);
        assert_eq!((report.high_watermark, report.lag), (Some(25), Some(5)));
        // An older record read again (a redelivery) does not move the end back.
        report.read(12);
        assert_eq!((report.high_watermark, report.lag), (Some(25), Some(5)));
    }
}

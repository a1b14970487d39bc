//! The batch writer actor: the only code that writes rows.
//!
//! Accepts [`ValidChunk`] from the validator, [`Assigned`] and [`Revoked`] from the consumer's
//! rebalance callback, and [`Flush`] at shutdown. Buffers metrics until the batch holds
//! `BATCH_MAX_ROWS` rows or its oldest row has waited `BATCH_MAX_WAIT_MS`, then stores the rows
//! and the partitions' next offsets in one transaction, logs a `[METRIC]` line per row (capped),
//! and tells the consumer ([`OffsetsStored`]) which offsets may be committed to Kafka. While a
//! flush runs the mailbox is not drained: that is the backpressure.
//!
//! The database is the truth about offsets: each partition's stored offset only moves from the
//! value this writer expects, so a writer that lost a partition in a rebalance cannot store
//! rows or offsets over the new owner's. Rows of partitions it does not own, or below the
//! stored offset, are dropped; the same metric stored twice is skipped by the database.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use actix::prelude::*;
use chrono::{SecondsFormat, Utc};

use crate::backoff::Backoff;
use crate::db::{self, OffsetAdvance, OffsetScope, WriteOutcome};
use crate::dead_letter::{DeadLetter, DeadLetters};
use crate::domain::ValidMetric;
use crate::log_limit::LogLimit;
use crate::stats::{FlushReport, Stats, Trigger};

/// Valid metrics of one consumed chunk with their partitions and offsets, and for each
/// partition the chunk touched the next offset to consume once these metrics are stored
/// (invalid records included: they are dead-lettered and done).
#[derive(Debug, Message)]
#[rtype(result = "()")]
pub struct ValidChunk {
    /// The consumer's assignment number when these records were polled.
    pub epoch: u64,
    pub metrics: Vec<ValidMetric>,
    /// `(partition, offset)` of each metric.
    pub offsets: Vec<(i32, i64)>,
    pub next_offsets: Vec<(i32, i64)>,
}

/// Partitions assigned to this instance by rebalance number `epoch`, with the next offsets
/// stored for them (`None`: nothing stored yet). Sent before any of their records can arrive.
#[derive(Debug, Message)]
#[rtype(result = "()")]
pub struct Assigned {
    pub epoch: u64,
    pub partitions: Vec<(i32, Option<i64>)>,
}

/// Partitions taken from this instance by rebalance number `epoch`: their buffered rows are
/// dropped; the new owner consumes them again from the stored offset.
#[derive(Debug, Message)]
#[rtype(result = "()")]
pub struct Revoked {
    pub epoch: u64,
    pub partitions: Vec<i32>,
}

/// A partition this instance owns.
#[derive(Debug, Clone, Copy)]
struct Ownership {
    /// The stored next offset the next write moves from.
    expected: Option<i64>,
    /// The rebalance that assigned it: records polled before belong to an earlier ownership
    /// and are fetched again from the stored offset.
    since: u64,
}

/// Flush now, whatever the batch holds; answers with every offset stored so far.
#[derive(Debug, Message)]
#[rtype(result = "Vec<(i32, i64)>")]
pub struct Flush(pub Trigger);

/// Who to tell about stored offsets ([`OffsetsStored`]); the consumer starts after the writer.
#[derive(Message)]
#[rtype(result = "()")]
pub struct SetOffsetsRecipient(pub Recipient<OffsetsStored>);

/// Rows up to these next offsets are committed to the database.
#[derive(Debug, Message)]
#[rtype(result = "()")]
pub struct OffsetsStored(pub Vec<(i32, i64)>);

/// How the writer batches and where it writes.
#[derive(Debug, Clone)]
pub struct WriterSettings {
    pub database_url: String,
    pub database_timeouts: db::Timeouts,
    pub max_rows: usize,
    pub max_wait: Duration,
    pub mailbox_capacity: usize,
    pub metric_log_per_sec: u32,
    pub scope: OffsetScope,
}

/// The rows of one flush and the offset moves that go with them.
#[derive(Debug, Default)]
struct Batch {
    rows: Vec<ValidMetric>,
    /// `(partition, offset)` of each row.
    offsets: Vec<(i32, i64)>,
    advances: Vec<OffsetAdvance>,
}

/// Keeps the rows (and their offsets) for which `keep(partition, offset)` holds.
fn retain_rows(
    rows: &mut Vec<ValidMetric>,
    offsets: &mut Vec<(i32, i64)>,
    keep: impl Fn(i32, i64) -> bool,
) {
    let (kept_rows, kept_offsets) = std::mem::take(rows)
        .into_iter()
        .zip(std::mem::take(offsets))
        .filter(|(_, (partition, offset))| keep(*partition, *offset))
        .unzip();
    *rows = kept_rows;
    *offsets = kept_offsets;
}

impl Batch {
    /// After a fenced write: drops what the stored offset says is done and moves from there.
    fn refence(&mut self, partition: i32, stored: Option<i64>) {
        let floor = stored.unwrap_or(i64::MIN);
        retain_rows(&mut self.rows, &mut self.offsets, |p, offset| {
            p != partition || offset >= floor
        });
        for advance in &mut self.advances {
            if advance.partition == partition {
                advance.expected = stored;
            }
        }
        self.advances
            .retain(|a| a.partition != partition || a.expected.is_none_or(|e| a.next > e));
    }
}

pub struct BatchWriter {
    settings: WriterSettings,
    /// Metrics waiting for the next flush, in the order they were consumed.
    buffer: Vec<ValidMetric>,
    /// `(partition, offset)` of each buffered metric.
    buffer_offsets: Vec<(i32, i64)>,
    /// Next offsets covered by `buffer`, per partition; stored with it.
    pending: BTreeMap<i32, i64>,
    /// Partitions this instance owns.
    owned: HashMap<i32, Ownership>,
    /// When the current batch got its first chunk; the time trigger measures from here.
    oldest: Option<Instant>,
    /// The writer's own connection, opened on the writer's thread at the first flush: COPY
    /// needs one that nothing else uses. `None` while a flush holds it or after it broke.
    client: Option<db::Writer>,
    /// Every offset stored since start, so the final commit at shutdown covers all of them.
    stored: BTreeMap<i32, i64>,
    /// Told after each flush which offsets may be committed to Kafka.
    on_stored: Option<Recipient<OffsetsStored>>,
    /// Where rows the database refuses go.
    dead_letters: DeadLetters,
    /// Caps `[METRIC]` lines.
    metric_log: LogLimit,
    stats: Arc<Stats>,
}

impl BatchWriter {
    pub fn new(
        settings: WriterSettings,
        dead_letters: DeadLetters,
        stats: Arc<Stats>,
    ) -> BatchWriter {
        stats
            .writer
            .capacity
            .store(settings.mailbox_capacity as u64, Ordering::Relaxed);
        BatchWriter {
            buffer: Vec::with_capacity(settings.max_rows),
            buffer_offsets: Vec::with_capacity(settings.max_rows),
            pending: BTreeMap::new(),
            owned: HashMap::new(),
            oldest: None,
            client: None,
            stored: BTreeMap::new(),
            on_stored: None,
            dead_letters,
            metric_log: LogLimit::new("[METRIC] lines", settings.metric_log_per_sec),
            settings,
            stats,
        }
    }

    /// Takes the batch and stores it; the actor waits for it (see the module comment).
    fn flush(&mut self, trigger: Trigger) -> impl ActorFuture<Self, Output = ()> + 'static {
        let advances = std::mem::take(&mut self.pending)
            .into_iter()
            .filter_map(|(partition, next)| {
                let expected = self.owned.get(&partition)?.expected;
                (expected.is_none_or(|e| next > e)).then_some(OffsetAdvance {
                    partition,
                    expected,
                    next,
                })
            })
            .collect();
        let batch = Batch {
            rows: std::mem::take(&mut self.buffer),
            offsets: std::mem::take(&mut self.buffer_offsets),
            advances,
        };
        self.oldest = None;
        self.buffer.reserve(self.settings.max_rows);
        self.buffer_offsets.reserve(self.settings.max_rows);
        let client = self.client.take();
        let url = self.settings.database_url.clone();
        let timeouts = self.settings.database_timeouts;
        let scope = self.settings.scope.clone();
        let stats = self.stats.clone();
        let dead_letters = self.dead_letters.clone();
        async move {
            let started = Instant::now();
            let mut batch = batch;
            let target = Target {
                url: &url,
                timeouts: &timeouts,
                scope: &scope,
            };
            let (client, rejected) =
                store(client, &target, &stats, &dead_letters, &mut batch).await;
            (client, batch, rejected, started.elapsed())
        }
        .into_actor(self)
        .map(move |(client, batch, rejected, took), act, _ctx| {
            act.client = client;
            act.finish_flush(batch, &rejected, took, trigger);
        })
    }

    fn finish_flush(&mut self, batch: Batch, rejected: &[usize], took: Duration, trigger: Trigger) {
        let stored_rows = batch.rows.len() - rejected.len();
        let stats = &self.stats;
        stats
            .rows_written
            .fetch_add(stored_rows as u64, Ordering::Relaxed);
        stats
            .rows_buffered
            .store(self.buffer.len() as u64, Ordering::Relaxed);
        let counter = match trigger {
            Trigger::Size => &stats.flushes_by_size,
            Trigger::Time => &stats.flushes_by_time,
            Trigger::Shutdown => &stats.flushes_on_shutdown,
        };
        counter.fetch_add(1, Ordering::Relaxed);
        if let Ok(mut last) = stats.last_flush.lock() {
            *last = Some(FlushReport {
                at: Utc::now(),
                rows: stored_rows,
                duration_ms: took.as_secs_f64() * 1000.0,
                trigger,
            });
        }
        let allowed = self.metric_log.allow_many(stored_rows);
        let logged = batch
            .rows
            .iter()
            .enumerate()
            .filter(|(index, _)| !rejected.contains(index))
            .take(allowed);
        for (_, row) in logged {
            log::info!(
                "[METRIC] service={} pod={} CPU={:.2}% Memory={:.2}Mi timestamp={}",
                row.service(),
                row.pod_name(),
                row.cpu(),
                row.memory(),
                row.time().to_rfc3339_opts(SecondsFormat::Millis, true)
            );
        }
        let mut committed = Vec::with_capacity(batch.advances.len());
        for advance in &batch.advances {
            // A partition revoked during the flush is no longer ours to track.
            if let Some(owned) = self.owned.get_mut(&advance.partition) {
                owned.expected = Some(advance.next);
            }
            self.stored.insert(advance.partition, advance.next);
            committed.push((advance.partition, advance.next));
        }
        if let Some(recipient) = self.on_stored.as_ref().filter(|_| !committed.is_empty()) {
            // Flushes are few a second; the consumer only hands the offsets to librdkafka,
            // so this mailbox never grows.
            self.stats.consumer.enqueued.fetch_add(1, Ordering::Relaxed);
            recipient.do_send(OffsetsStored(committed));
        }
    }
}

/// Where a flush writes.
struct Target<'a> {
    url: &'a str,
    timeouts: &'a db::Timeouts,
    scope: &'a OffsetScope,
}

/// Stores the batch, retrying transient failures until they succeed. A fenced write (the
/// stored offset moved under this writer) is retried without what is already stored. A row
/// the database refuses is isolated by splitting the batch, dead-lettered with the database's
/// error, and skipped, so one bad row never blocks its batch. A connection that stopped
/// answering is given up and its server session ended from the next one. Answers with the
/// connection and the refused rows' indexes.
async fn store(
    mut client: Option<db::Writer>,
    target: &Target<'_>,
    stats: &Stats,
    dead_letters: &DeadLetters,
    batch: &mut Batch,
) -> (Option<db::Writer>, Vec<usize>) {
    let scope = target.scope;
    // The server session of a connection given up, until a new connection has ended it.
    let mut abandoned: Option<db::Session> = None;
    let mut rejected = Vec::new();
    let mut ranges = vec![(0, batch.rows.len())];
    let mut backoff = WriteRetry::default();
    while let Some((start, end)) = ranges.pop() {
        loop {
            // The offsets travel with the last rows, so they are stored only after every row.
            let advances = if end == batch.rows.len() {
                batch.advances.as_slice()
            } else {
                &[]
            };
            if start == end && advances.is_empty() {
                break;
            }
            let conn = match client.as_mut() {
                Some(conn) => conn,
                None => match db::Writer::connect(target.url, target.timeouts).await {
                    Ok(conn) => client.insert(conn),
                    Err(e) => {
                        backoff.wait(stats, &e.to_string()).await;
                        continue;
                    }
                },
            };
            if let Some(stale) = abandoned.take() {
                match conn.end_session(stale).await {
                    Ok(true) => log::info!(
                        "ended the database session of the connection given up pid={}",
                        stale.pid()
                    ),
                    Ok(false) => {}
                    Err(e) if e.is_transient() => {
                        abandoned = Some(stale);
                        if conn.is_closed() {
                            client = None;
                        }
                        backoff.wait(stats, &e.to_string()).await;
                        continue;
                    }
                    Err(e) => log::warn!(
                        "cannot end the database session of the connection given up pid={}: {e}",
                        stale.pid()
                    ),
                }
            }
            match conn
                .write_batch(&batch.rows[start..end], scope, advances)
                .await
            {
                Ok(WriteOutcome::Stored { inserted }) => {
                    if backoff.failures() > 0 {
                        log::info!("database reachable again; writing resumed");
                    }
                    let skipped = (end - start) as u64 - inserted;
                    stats
                        .duplicates_skipped
                        .fetch_add(skipped, Ordering::Relaxed);
                    stats.set_database_error(None);
                    backoff.reset();
                    break;
                }
                Ok(WriteOutcome::Fenced { partition, stored }) => {
                    log::warn!(
                        "partition {partition} was stored up to {stored:?} by another writer; \
                         dropping what it covers and retrying"
                    );
                    let before = batch.rows.len();
                    batch.refence(partition, stored);
                    stats
                        .stale_rows_dropped
                        .fetch_add((before - batch.rows.len()) as u64, Ordering::Relaxed);
                    // Indexes moved: start over on what is left, keeping what was refused out.
                    ranges = vec![(0, batch.rows.len())];
                    rejected.clear();
                    break;
                }
                Err(e) if e.is_transient() => {
                    if conn.is_abandoned() {
                        abandoned = Some(conn.session());
                    }
                    if conn.is_closed() {
                        client = None;
                    }
                    backoff.wait(stats, &e.to_string()).await;
                }
                Err(e) if end - start > 1 => {
                    log::warn!(
                        "database refused a batch of {} rows, splitting it to find the bad ones: {e}",
                        end - start
                    );
                    let mid = start + (end - start) / 2;
                    ranges.push((mid, end));
                    ranges.push((start, mid));
                    break;
                }
                Err(e) if end - start == 1 => {
                    stats.writer.errors.fetch_add(1, Ordering::Relaxed);
                    let row = &batch.rows[start];
                    let (partition, offset) = batch.offsets[start];
                    log::error!(
                        "database refused a row, dead-lettered: partition={partition} offset={offset} {row:?}: {e}"
                    );
                    let payload = serde_json::to_vec(&row.to_wire()).unwrap_or_default();
                    let detail = e.to_string();
                    dead_letters
                        .send_all(
                            &[DeadLetter {
                                key: Some(row.pod_name().as_bytes()),
                                payload: &payload,
                                reason: "database_rejected",
                                detail: &detail,
                                partition,
                                offset,
                            }],
                            stats,
                        )
                        .await;
                    stats.dead_lettered.fetch_add(1, Ordering::Relaxed);
                    rejected.push(start);
                    if !advances.is_empty() {
                        ranges.push((end, end));
                    }
                    break;
                }
                Err(e) => {
                    stats.writer.errors.fetch_add(1, Ordering::Relaxed);
                    log::error!("database refused to store offsets {advances:?}: {e}");
                    break;
                }
            }
        }
    }
    (client, rejected)
}

/// Waits between retries of a failed write, counting and reporting the failure.
#[derive(Debug)]
struct WriteRetry(Backoff);

impl Default for WriteRetry {
    fn default() -> WriteRetry {
        WriteRetry(Backoff::new(
            Duration::from_millis(100),
            Duration::from_secs(10),
        ))
    }
}

impl WriteRetry {
    fn failures(&self) -> u32 {
        self.0.failures()
    }

    fn reset(&mut self) {
        self.0.reset();
    }

    async fn wait(&mut self, stats: &Stats, error: &str) {
        stats.writer.errors.fetch_add(1, Ordering::Relaxed);
        stats.set_database_error(Some(error.to_owned()));
        let delay = self.0.next_delay();
        log::warn!(
            "database write failed (attempt {}), retrying in {} ms: {error}",
            self.0.failures(),
            delay.as_millis()
        );
        tokio::time::sleep(delay).await;
    }
}

impl Actor for BatchWriter {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Self::Context) {
        ctx.set_mailbox_capacity(self.settings.mailbox_capacity);
        // The time trigger fires at most one tick late; a tick costs next to nothing.
        let tick = (self.settings.max_wait / 20)
            .clamp(Duration::from_millis(5), Duration::from_millis(25));
        ctx.run_interval(tick, |act, ctx| {
            act.metric_log.roll_window();
            let due = act
                .oldest
                .is_some_and(|t| t.elapsed() >= act.settings.max_wait);
            if due {
                ctx.wait(act.flush(Trigger::Time));
            }
        });
    }
}

impl Handler<ValidChunk> for BatchWriter {
    type Result = AtomicResponse<Self, ()>;

    fn handle(&mut self, chunk: ValidChunk, _ctx: &mut Self::Context) -> Self::Result {
        let stats = self.stats.clone();
        stats
            .writer
            .records
            .fetch_add(chunk.metrics.len() as u64, Ordering::Relaxed);
        let mut dropped = 0u64;
        let epoch = chunk.epoch;
        let current = |owned: &HashMap<i32, Ownership>, partition: i32| {
            owned.get(&partition).filter(|o| epoch >= o.since).copied()
        };
        for (metric, (partition, offset)) in chunk.metrics.into_iter().zip(chunk.offsets) {
            // Only rows of partitions owned when they were polled, at or past the stored
            // offset, are new.
            let wanted = current(&self.owned, partition)
                .is_some_and(|o| o.expected.is_none_or(|e| offset >= e));
            if wanted {
                self.buffer.push(metric);
                self.buffer_offsets.push((partition, offset));
            } else {
                dropped += 1;
            }
        }
        stats
            .stale_rows_dropped
            .fetch_add(dropped, Ordering::Relaxed);
        for (partition, next) in chunk.next_offsets {
            if current(&self.owned, partition).is_some() {
                let entry = self.pending.entry(partition).or_insert(next);
                *entry = (*entry).max(next);
            }
        }
        if !self.pending.is_empty() {
            self.oldest.get_or_insert_with(Instant::now);
        }
        stats
            .rows_buffered
            .store(self.buffer.len() as u64, Ordering::Relaxed);
        if self.buffer.len() >= self.settings.max_rows {
            AtomicResponse::new(Box::pin(self.flush(Trigger::Size).map(
                move |(), _act, _ctx| {
                    stats.writer.handled.fetch_add(1, Ordering::Relaxed);
                },
            )))
        } else {
            stats.writer.handled.fetch_add(1, Ordering::Relaxed);
            AtomicResponse::new(Box::pin(fut::ready(())))
        }
    }
}

impl Handler<SetOffsetsRecipient> for BatchWriter {
    type Result = ();

    fn handle(
        &mut self,
        SetOffsetsRecipient(recipient): SetOffsetsRecipient,
        _: &mut Context<Self>,
    ) {
        self.on_stored = Some(recipient);
    }
}

impl Handler<Assigned> for BatchWriter {
    type Result = ();

    fn handle(&mut self, Assigned { epoch, partitions }: Assigned, _ctx: &mut Self::Context) {
        for (partition, stored) in partitions {
            // Rows of an earlier ownership still buffered are fetched again from `stored`.
            self.pending.remove(&partition);
            retain_rows(&mut self.buffer, &mut self.buffer_offsets, |p, _| {
                p != partition
            });
            self.owned.insert(
                partition,
                Ownership {
                    expected: stored,
                    since: epoch,
                },
            );
            if let Some(next) = stored {
                self.stored.insert(partition, next);
            }
        }
    }
}

impl Handler<Revoked> for BatchWriter {
    type Result = ();

    fn handle(&mut self, Revoked { partitions, .. }: Revoked, _ctx: &mut Self::Context) {
        let before = self.buffer.len();
        retain_rows(&mut self.buffer, &mut self.buffer_offsets, |p, _| {
            !partitions.contains(&p)
        });
        for partition in &partitions {
            self.owned.remove(partition);
            self.pending.remove(partition);
            self.stored.remove(partition);
        }
        let dropped = before - self.buffer.len();
        if dropped > 0 {
            log::info!(
                "partitions {partitions:?} revoked: {dropped} buffered rows left to their new owner"
            );
        }
        self.stats
            .stale_rows_dropped
            .fetch_add(dropped as u64, Ordering::Relaxed);
        self.stats
            .rows_buffered
            .store(self.buffer.len() as u64, Ordering::Relaxed);
    }
}

impl Handler<Flush> for BatchWriter {
    type Result = AtomicResponse<Self, Vec<(i32, i64)>>;

    fn handle(&mut self, Flush(trigger): Flush, _ctx: &mut Self::Context) -> Self::Result {
        let stored = |act: &mut BatchWriter| act.stored.iter().map(|(p, o)| (*p, *o)).collect();
        if self.oldest.is_none() {
            return AtomicResponse::new(Box::pin(fut::ready(stored(self))));
        }
        AtomicResponse::new(Box::pin(
            self.flush(trigger).map(move |(), act, _ctx| stored(act)),
        ))
    }
}

//! The batch writer actor: the only code that writes rows.
//!
//! Accepts [`ValidChunk`] from the validator and [`Flush`] at shutdown. Buffers metrics until
//! the batch holds `BATCH_MAX_ROWS` rows or its oldest row has waited `BATCH_MAX_WAIT_MS`, then
//! stores the rows and the offsets they cover in one transaction, logs a `[METRIC]` line per
//! row (capped), and tells the consumer ([`OffsetsStored`]) which offsets may be committed to
//! Kafka. While a flush runs the mailbox is not drained: that is the backpressure.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use actix::prelude::*;
use chrono::{SecondsFormat, Utc};
use tokio_postgres::Client;

use crate::db::{self, OffsetScope};
use crate::domain::ValidMetric;
use crate::log_limit::LogLimit;
use crate::stats::{FlushReport, Stats, Trigger};

/// Valid metrics of one consumed chunk, and for each partition the chunk touched the next
/// offset to consume once these metrics are stored (invalid records included: they are done).
#[derive(Debug, Message)]
#[rtype(result = "()")]
pub struct ValidChunk {
    pub metrics: Vec<ValidMetric>,
    pub next_offsets: Vec<(i32, i64)>,
}

/// Flush now, whatever the batch holds; answers with every offset stored so far.
#[derive(Debug, Message)]
#[rtype(result = "Vec<(i32, i64)>")]
pub struct Flush(pub Trigger);

/// Rows up to these next offsets are committed to the database.
#[derive(Debug, Message)]
#[rtype(result = "()")]
pub struct OffsetsStored(pub Vec<(i32, i64)>);

/// How the writer batches and where it writes.
#[derive(Debug, Clone)]
pub struct WriterSettings {
    pub database_url: String,
    pub max_rows: usize,
    pub max_wait: Duration,
    pub mailbox_capacity: usize,
    pub metric_log_per_sec: u32,
    pub scope: OffsetScope,
}

pub struct BatchWriter {
    settings: WriterSettings,
    /// Metrics waiting for the next flush, in the order they were consumed.
    buffer: Vec<ValidMetric>,
    /// Next offsets covered by `buffer`, per partition; stored with it.
    pending: Vec<(i32, i64)>,
    /// When the current batch got its first chunk; the time trigger measures from here.
    oldest: Option<Instant>,
    /// The writer's own connection: COPY needs one that nothing else uses. `None` while a
    /// flush holds it or after it broke.
    client: Option<Client>,
    /// Every offset stored since start, so the final commit at shutdown covers all of them.
    stored: BTreeMap<i32, i64>,
    /// Told after each flush which offsets may be committed to Kafka.
    on_stored: Option<Recipient<OffsetsStored>>,
    /// Caps `[METRIC]` lines.
    metric_log: LogLimit,
    stats: Arc<Stats>,
}

impl BatchWriter {
    pub fn new(settings: WriterSettings, client: Client, stats: Arc<Stats>) -> BatchWriter {
        stats
            .writer
            .capacity
            .store(settings.mailbox_capacity as u64, Ordering::Relaxed);
        BatchWriter {
            buffer: Vec::with_capacity(settings.max_rows),
            pending: Vec::new(),
            oldest: None,
            client: Some(client),
            stored: BTreeMap::new(),
            on_stored: None,
            metric_log: LogLimit::new("[METRIC] lines", settings.metric_log_per_sec),
            settings,
            stats,
        }
    }

    /// Who to tell about stored offsets; the consumer is started after the writer.
    pub fn set_offsets_recipient(&mut self, recipient: Recipient<OffsetsStored>) {
        self.on_stored = Some(recipient);
    }

    /// Takes the batch and stores it; the actor waits for it (see the module comment).
    fn flush(&mut self, trigger: Trigger) -> impl ActorFuture<Self, Output = ()> + 'static {
        let rows = std::mem::take(&mut self.buffer);
        let offsets = std::mem::take(&mut self.pending);
        self.oldest = None;
        self.buffer.reserve(self.settings.max_rows);
        let client = self.client.take();
        let url = self.settings.database_url.clone();
        let scope = self.settings.scope.clone();
        let stats = self.stats.clone();
        async move {
            let started = Instant::now();
            let (client, rejected) = store(client, &url, &scope, &stats, &rows, &offsets).await;
            (client, rows, rejected, offsets, started.elapsed())
        }
        .into_actor(self)
        .map(move |(client, rows, rejected, offsets, took), act, _ctx| {
            act.client = client;
            act.finish_flush(&rows, &rejected, offsets, took, trigger);
        })
    }

    fn finish_flush(
        &mut self,
        rows: &[ValidMetric],
        rejected: &[usize],
        offsets: Vec<(i32, i64)>,
        took: Duration,
        trigger: Trigger,
    ) {
        let stored_rows = rows.len() - rejected.len();
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
        for (index, row) in rows.iter().enumerate() {
            if rejected.contains(&index) || !self.metric_log.allow() {
                continue;
            }
            log::info!(
                "[METRIC] service={} pod={} CPU={:.2}% Memory={:.2}Mi timestamp={}",
                row.service(),
                row.pod_name(),
                row.cpu(),
                row.memory(),
                row.time().to_rfc3339_opts(SecondsFormat::Millis, true)
            );
        }
        for (partition, next) in &offsets {
            self.stored.insert(*partition, *next);
        }
        if let Some(recipient) = self.on_stored.as_ref().filter(|_| !offsets.is_empty()) {
            // Flushes are few a second; the consumer only hands the offsets to librdkafka,
            // so this mailbox never grows.
            self.stats.consumer.enqueued.fetch_add(1, Ordering::Relaxed);
            recipient.do_send(OffsetsStored(offsets));
        }
    }
}

/// Stores the rows and offsets, retrying transient failures until they succeed. A row the
/// database refuses is isolated by splitting the batch, logged whole, and skipped, so one
/// bad row never blocks its batch. Answers with the connection and the refused rows' indexes.
async fn store(
    mut client: Option<Client>,
    url: &str,
    scope: &OffsetScope,
    stats: &Stats,
    rows: &[ValidMetric],
    offsets: &[(i32, i64)],
) -> (Option<Client>, Vec<usize>) {
    let mut rejected = Vec::new();
    let mut ranges = vec![(0, rows.len())];
    let mut backoff = Backoff::default();
    while let Some((start, end)) = ranges.pop() {
        // The offsets travel with the last rows, so they are stored only after every row.
        let covered = if end == rows.len() { offsets } else { &[] };
        loop {
            let conn = match client.as_mut() {
                Some(conn) => conn,
                None => match db::connect(url).await {
                    Ok(conn) => client.insert(conn),
                    Err(e) => {
                        backoff.wait(stats, &e.to_string()).await;
                        continue;
                    }
                },
            };
            match db::write_batch(conn, &rows[start..end], scope, covered).await {
                Ok(()) => {
                    if backoff.failures > 0 {
                        log::info!("database reachable again; writing resumed");
                    }
                    stats.set_database_error(None);
                    backoff = Backoff::default();
                    break;
                }
                Err(e) if e.is_transient() => {
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
                    log::error!("database refused a row, skipped: {:?}: {e}", rows[start]);
                    rejected.push(start);
                    if !covered.is_empty() {
                        ranges.push((end, end));
                    }
                    break;
                }
                Err(e) => {
                    stats.writer.errors.fetch_add(1, Ordering::Relaxed);
                    log::error!("database refused to store offsets {covered:?}: {e}");
                    break;
                }
            }
        }
    }
    (client, rejected)
}

/// Capped, jittered exponential backoff between retries of a failed write.
#[derive(Debug, Default)]
struct Backoff {
    failures: u32,
}

impl Backoff {
    const FIRST: Duration = Duration::from_millis(100);
    const MAX: Duration = Duration::from_secs(10);

    async fn wait(&mut self, stats: &Stats, error: &str) {
        self.failures += 1;
        stats.writer.errors.fetch_add(1, Ordering::Relaxed);
        stats.set_database_error(Some(error.to_owned()));
        let exp = Self::FIRST.saturating_mul(1 << self.failures.min(10));
        let capped = exp.min(Self::MAX);
        let delay = capped.mul_f64(0.5 + fastrand::f64() * 0.5);
        log::warn!(
            "database write failed (attempt {}), retrying in {} ms: {error}",
            self.failures,
            delay.as_millis()
        );
        tokio::time::sleep(delay).await;
    }
}

impl Actor for BatchWriter {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Self::Context) {
        ctx.set_mailbox_capacity(self.settings.mailbox_capacity);
        let tick = (self.settings.max_wait / 4)
            .clamp(Duration::from_millis(5), Duration::from_millis(250));
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
        self.buffer.extend(chunk.metrics);
        for (partition, next) in chunk.next_offsets {
            match self.pending.iter_mut().find(|(p, _)| *p == partition) {
                Some(entry) => entry.1 = entry.1.max(next),
                None => self.pending.push((partition, next)),
            }
        }
        self.oldest.get_or_insert_with(Instant::now);
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

//! The batch writer actor: the only code that writes rows.
//!
//! Accepts [`ValidChunk`] from the validator, [`Rebalanced`] from the consumer's rebalance
//! callback, and [`Flush`] at shutdown, for the partitions it owns (one of
//! `WRITER_CONNECTIONS` writers, see [`crate::actors::writers`]). Stores the rows and the
//! partitions' next offsets in one transaction, logs a `[METRIC]` line per row (capped), and
//! tells the consumer ([`OffsetsStored`]) which offsets may be committed to Kafka. While a flush
//! runs the mailbox is not drained: that is the backpressure.
//!
//! When to flush (group commit): as soon as the writer has nothing else to do, whatever the
//! batch holds, so a row never waits for others at a low rate; while a flush runs, what arrives
//! waits in the mailbox and makes the next batch. A batch is flushed at once when it reaches
//! `BATCH_MAX_ROWS`; `BATCH_MAX_WAIT_MS` bounds a row's wait in the batch. With
//! `BATCH_FLUSH_WHEN_IDLE=false` only those two triggers flush.
//!
//! Which rows are new and which offsets a flush moves is the [`Ledger`]'s to say; a flush
//! writes in steps: [`Plan`] the writes, write each with retry ([`Link::write`]), and where the
//! database refuses rows, isolate them by splitting and dead-letter each alone.

use std::ops::Range;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use actix::prelude::*;
use chrono::{SecondsFormat, Utc};

use crate::actors::messages::{Flush, OffsetsStored, Rebalanced, ValidChunk};
use crate::backoff::Backoff;
use crate::config::BatchSettings;
use crate::db::{self, DbError, OffsetScope, WriteOutcome};
use crate::dead_letter::{DeadLetter, DeadLetters};
use crate::domain::ValidMetric;
use crate::log_limit::LogLimit;
use crate::offsets::{Batch, Ledger, OffsetAdvance, Position};
use crate::stats::{ConnectionStats, FlushReport, Stats, Trigger};

/// Where the writer writes: the database, how its round trips are bounded, and whose offsets
/// are stored with the rows.
#[derive(Debug, Clone)]
pub(crate) struct Target {
    pub url: String,
    pub timeouts: db::Timeouts,
    pub scope: OffsetScope,
}

/// What a writer is made with besides its settings: where it writes, whom it tells, and what
/// it shares with the other writers.
pub(crate) struct Wiring {
    pub target: Target,
    /// Told after each flush which offsets may be committed to Kafka.
    pub on_stored: Recipient<OffsetsStored>,
    /// Where rows the database refuses go.
    pub dead_letters: DeadLetters,
    /// Caps `[METRIC]` lines; one budget for all writers.
    pub metric_log: Arc<std::sync::Mutex<LogLimit>>,
    /// The sums over all writers.
    pub stats: Arc<Stats>,
    /// This writer's own figures.
    pub connection: Arc<ConnectionStats>,
}

pub(crate) struct BatchWriter {
    max_rows: usize,
    max_wait: Duration,
    mailbox_capacity: usize,
    target: Arc<Target>,
    /// The rows waiting for the next flush and the partitions' offsets.
    ledger: Ledger<ValidMetric>,
    /// When the current batch got its first chunk; the time trigger measures from here.
    oldest: Option<Instant>,
    /// Whether to flush as soon as the mailbox is empty (`BATCH_FLUSH_WHEN_IDLE`).
    flush_when_idle: bool,
    /// Whether such a flush is due.
    idle_flush_due: bool,
    /// The writer's own connection, opened on the writer's thread at the first flush: COPY
    /// needs one that nothing else uses. `None` while a flush holds it or after it broke.
    client: Option<db::Writer>,
    /// Told after each flush which offsets may be committed to Kafka.
    on_stored: Recipient<OffsetsStored>,
    /// Where rows the database refuses go.
    dead_letters: DeadLetters,
    /// Caps `[METRIC]` lines; one budget for all writers.
    metric_log: Arc<std::sync::Mutex<LogLimit>>,
    /// The sums over all writers.
    stats: Arc<Stats>,
    /// This writer's own figures.
    connection: Arc<ConnectionStats>,
}

impl BatchWriter {
    pub(crate) fn new(settings: &BatchSettings, wiring: Wiring) -> BatchWriter {
        let Wiring {
            target,
            on_stored,
            dead_letters,
            metric_log,
            stats,
            connection,
        } = wiring;
        let max_rows = settings.max_rows as usize;
        let mailbox_capacity = settings.mailbox_capacity as usize;
        stats
            .writer
            .capacity
            .fetch_add(mailbox_capacity as u64, Ordering::Relaxed);
        connection
            .mailbox
            .capacity
            .store(mailbox_capacity as u64, Ordering::Relaxed);
        BatchWriter {
            max_rows,
            max_wait: settings.max_wait(),
            mailbox_capacity,
            target: Arc::new(target),
            ledger: Ledger::new(max_rows),
            oldest: None,
            flush_when_idle: settings.flush_when_idle,
            idle_flush_due: false,
            client: None,
            on_stored,
            dead_letters,
            metric_log,
            stats,
            connection,
        }
    }

    /// One more actor message handled.
    fn count_handled(&self) {
        self.stats.writer.handled.fetch_add(1, Ordering::Relaxed);
        self.connection
            .mailbox
            .handled
            .fetch_add(1, Ordering::Relaxed);
    }

    fn count_buffered(&self) {
        self.connection
            .rows_buffered
            .store(self.ledger.len() as u64, Ordering::Relaxed);
    }

    /// Flushes once the mailbox is empty: actix handles every queued message before it polls
    /// what the actor spawned, so the chunks that arrived during the last flush join the batch
    /// first.
    fn flush_once_idle(&mut self, ctx: &mut Context<Self>) {
        if self.idle_flush_due {
            return;
        }
        self.idle_flush_due = true;
        ctx.spawn(fut::ready(()).map(|(), act: &mut Self, ctx| {
            act.idle_flush_due = false;
            if act.oldest.is_some() {
                ctx.wait(act.flush(Trigger::Idle));
            }
        }));
    }

    /// Takes the batch and stores it; the actor waits for it (see the module comment).
    fn flush(&mut self, trigger: Trigger) -> impl ActorFuture<Self, Output = ()> + 'static {
        let batch = self.ledger.take_batch();
        self.oldest = None;
        let client = self.client.take();
        let target = self.target.clone();
        let stats = self.stats.clone();
        let dead_letters = self.dead_letters.clone();
        async move {
            let started = Instant::now();
            let mut batch = batch;
            let mut link = Link::new(&target, client, &stats);
            let stored = store(&mut link, &mut batch, &dead_letters).await;
            (link.client, batch, stored, started.elapsed())
        }
        .into_actor(self)
        .map(move |(client, batch, stored, took), act, _ctx| {
            act.client = client;
            act.finish_flush(batch, &stored, took, trigger);
        })
    }

    /// Counts and logs a stored batch, and tells the consumer which offsets to commit: none
    /// when the database refused the offset moves, so that Kafka and `/status` never pass
    /// what the database holds (the next batch's moves start from the last stored offsets).
    fn finish_flush(
        &mut self,
        batch: Batch<ValidMetric>,
        stored: &Stored,
        took: Duration,
        trigger: Trigger,
    ) {
        let rejected = &stored.rejected;
        let stored_rows = batch.rows.len() - rejected.len();
        self.count_flush(stored_rows, took, trigger);
        let allowed = match self.metric_log.lock() {
            Ok(mut log) => log.allow_many(stored_rows),
            Err(_) => 0,
        };
        let logged = batch
            .rows
            .iter()
            .enumerate()
            .filter(|(index, _)| !rejected.contains(index))
            .take(allowed);
        for (_, (row, _)) in logged {
            log::info!(
                "[METRIC] service={} pod={} CPU={:.2}% Memory={:.2}Mi timestamp={}",
                row.service(),
                row.pod_name(),
                row.cpu(),
                row.memory(),
                row.time().to_rfc3339_opts(SecondsFormat::Millis, true)
            );
        }
        if !stored.offsets {
            return;
        }
        let committed = self.ledger.stored(&batch.advances);
        if !committed.is_empty() {
            // Flushes are few a second; the consumer only hands the offsets to librdkafka,
            // so this mailbox never grows.
            self.stats.consumer.enqueued.fetch_add(1, Ordering::Relaxed);
            self.on_stored.do_send(OffsetsStored(committed));
        }
    }

    fn count_flush(&self, stored_rows: usize, took: Duration, trigger: Trigger) {
        let stats = &self.stats;
        let connection = &self.connection;
        for written in [&stats.rows_written, &connection.rows_written] {
            written.fetch_add(stored_rows as u64, Ordering::Relaxed);
        }
        self.count_buffered();
        let counter = match trigger {
            Trigger::Size => &stats.flushes_by_size,
            Trigger::Time => &stats.flushes_by_time,
            Trigger::Idle => &stats.flushes_when_idle,
            Trigger::Shutdown => &stats.flushes_on_shutdown,
        };
        counter.fetch_add(1, Ordering::Relaxed);
        connection.flushes.fetch_add(1, Ordering::Relaxed);
        let report = FlushReport {
            at: Utc::now(),
            rows: stored_rows,
            duration_ms: took.as_secs_f64() * 1000.0,
            trigger,
        };
        for last in [&stats.last_flush, &connection.last_flush] {
            if let Ok(mut last) = last.lock() {
                *last = Some(report.clone());
            }
        }
    }
}

/// Stores the batch. A fenced write (the stored offset moved under this writer) is retried
/// without what is already stored. A row the database refuses is isolated by splitting the
/// batch, dead-lettered with the database's error, and skipped, so one bad row never blocks
/// its batch.
async fn store(
    link: &mut Link<'_>,
    batch: &mut Batch<ValidMetric>,
    dead_letters: &DeadLetters,
) -> Stored {
    let stats = link.stats;
    let mut rejected: Vec<usize> = Vec::new();
    let mut offsets = true;
    let mut plan = Plan::new(batch.rows.len());
    while let Some((range, with_offsets)) = plan.next() {
        let advances: &[OffsetAdvance] = if with_offsets { &batch.advances } else { &[] };
        match link.write(&batch.rows[range.clone()], advances).await {
            Ok(WriteOutcome::Stored { inserted }) => {
                let skipped = range.len() as u64 - inserted;
                stats
                    .duplicates_skipped
                    .fetch_add(skipped, Ordering::Relaxed);
            }
            Ok(WriteOutcome::Fenced(stored)) => {
                log::warn!(
                    "partition {} was stored up to {:?} by another writer; \
                     dropping what it covers and retrying",
                    stored.partition,
                    stored.next
                );
                // The rows refused so far are dead-lettered and done: out of the batch, so
                // that starting over does not send them again.
                let mut index = 0;
                batch.rows.retain(|_| {
                    index += 1;
                    !rejected.contains(&(index - 1))
                });
                rejected.clear();
                let dropped = batch.refence(stored);
                stats
                    .stale_rows_dropped
                    .fetch_add(dropped as u64, Ordering::Relaxed);
                // Indexes moved: start over on what is left.
                plan = Plan::new(batch.rows.len());
            }
            Err(e) => match plan.refused(range.clone(), with_offsets) {
                Refused::Split => log::warn!(
                    "database refused a batch of {} rows, splitting it to find the bad ones: {e}",
                    range.len()
                ),
                Refused::Row(index) => {
                    let (row, at) = &batch.rows[index];
                    dead_letter(row, *at, &e, dead_letters, stats).await;
                    rejected.push(index);
                }
                Refused::Offsets => {
                    offsets = false;
                    stats.writer.errors.fetch_add(1, Ordering::Relaxed);
                    log::error!("database refused to store offsets {advances:?}: {e}");
                }
            },
        }
    }
    Stored { rejected, offsets }
}

/// What a flush stored.
struct Stored {
    /// The indexes of the rows the database refused (dead-lettered).
    rejected: Vec<usize>,
    /// Whether the batch's offset moves are stored.
    offsets: bool,
}

/// Dead-letters a row the database refused, with the database's error.
async fn dead_letter(
    row: &ValidMetric,
    at: Position,
    error: &DbError,
    dead_letters: &DeadLetters,
    stats: &Stats,
) {
    stats.writer.errors.fetch_add(1, Ordering::Relaxed);
    let Position { partition, offset } = at;
    log::error!(
        "database refused a row, dead-lettered: partition={partition} offset={offset} {row:?}: {error}"
    );
    let payload = serde_json::to_vec(&row.to_wire()).unwrap_or_default();
    let detail = error.to_string();
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
}

/// Which rows of a batch the next write covers. It starts with all of them; a range the
/// database refuses is split in two until each refused row stands alone. The offset moves
/// travel with the write that ends at the batch's last row, so they are stored only after
/// every row.
#[derive(Debug)]
struct Plan {
    /// Ranges still to write, the next one last.
    todo: Vec<Range<usize>>,
    rows: usize,
}

/// What a refused write leads to.
#[derive(Debug, PartialEq, Eq)]
enum Refused {
    /// Split in two, both written again.
    Split,
    /// This row alone is refused: dead-letter it.
    Row(usize),
    /// The offset moves alone are refused.
    Offsets,
}

impl Plan {
    fn new(rows: usize) -> Plan {
        let mut todo = Vec::with_capacity(8);
        todo.push(0..rows);
        Plan { todo, rows }
    }

    /// The next rows to write, and whether the offset moves go with them.
    fn next(&mut self) -> Option<(Range<usize>, bool)> {
        while let Some(range) = self.todo.pop() {
            let with_offsets = range.end == self.rows;
            if !range.is_empty() || with_offsets {
                return Some((range, with_offsets));
            }
        }
        None
    }

    /// The database refused to store `range` (with the offset moves, if `with_offsets`).
    fn refused(&mut self, range: Range<usize>, with_offsets: bool) -> Refused {
        match range.len() {
            0 => Refused::Offsets,
            1 => {
                if with_offsets {
                    // The moves are written after, on their own.
                    self.todo.push(range.end..range.end);
                }
                Refused::Row(range.start)
            }
            len => {
                let mid = range.start + len / 2;
                self.todo.push(mid..range.end);
                self.todo.push(range.start..mid);
                Refused::Split
            }
        }
    }
}

/// A flush's way to the database: the writer's connection, the server session of one given up
/// (ended from the next before anything is written again), and the backoff between attempts.
struct Link<'a> {
    target: &'a Target,
    client: Option<db::Writer>,
    abandoned: Option<db::Session>,
    retry: WriteRetry,
    stats: &'a Stats,
}

impl<'a> Link<'a> {
    fn new(target: &'a Target, client: Option<db::Writer>, stats: &'a Stats) -> Link<'a> {
        Link {
            target,
            client,
            abandoned: None,
            retry: WriteRetry::default(),
            stats,
        }
    }

    /// Writes rows and offset moves in one transaction, retrying transient failures until
    /// the database answers. An error is a refusal: the same write would fail again.
    async fn write(
        &mut self,
        rows: &[(ValidMetric, Position)],
        advances: &[OffsetAdvance],
    ) -> Result<WriteOutcome, DbError> {
        let target = self.target;
        loop {
            let conn = match self.ready().await {
                Ok(conn) => conn,
                Err(e) => {
                    self.retry.wait(self.stats, &e.to_string()).await;
                    continue;
                }
            };
            match conn.write_batch(rows, &target.scope, advances).await {
                Ok(outcome) => {
                    if self.retry.failures() > 0 {
                        log::info!("database reachable again; writing resumed");
                    }
                    self.stats.set_database_error(None);
                    self.retry.reset();
                    return Ok(outcome);
                }
                Err(e) if e.is_transient() => {
                    let abandoned = conn.is_abandoned().then(|| conn.session());
                    if conn.is_closed() {
                        self.client = None;
                    }
                    if abandoned.is_some() {
                        self.abandoned = abandoned;
                    }
                    self.retry.wait(self.stats, &e.to_string()).await;
                }
                Err(e) => return Err(e),
            }
        }
    }

    /// A connection ready to write: made if there is none, with the server session of one
    /// given up ended first. A connection that stopped answering is given up and its server
    /// session ended from the next one.
    async fn ready(&mut self) -> Result<&mut db::Writer, DbError> {
        let mut conn = match self.client.take() {
            Some(conn) => conn,
            None => db::Writer::connect(&self.target.url, &self.target.timeouts).await?,
        };
        if let Some(stale) = self.abandoned.take() {
            match conn.end_session(stale).await {
                Ok(true) => log::info!(
                    "ended the database session of the connection given up pid={}",
                    stale.pid()
                ),
                Ok(false) => {}
                Err(e) if e.is_transient() => {
                    self.abandoned = Some(stale);
                    if !conn.is_closed() {
                        self.client = Some(conn);
                    }
                    return Err(e);
                }
                Err(e) => log::warn!(
                    "cannot end the database session of the connection given up pid={}: {e}",
                    stale.pid()
                ),
            }
        }
        Ok(self.client.insert(conn))
    }
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
        ctx.set_mailbox_capacity(self.mailbox_capacity);
        // The time trigger fires at most one tick late; a tick costs next to nothing.
        let tick = (self.max_wait / 20).clamp(Duration::from_millis(5), Duration::from_millis(25));
        ctx.run_interval(tick, |act, ctx| {
            if let Ok(mut log) = act.metric_log.lock() {
                log.roll_window();
            }
            let due = act.oldest.is_some_and(|t| t.elapsed() >= act.max_wait);
            if due {
                ctx.wait(act.flush(Trigger::Time));
            }
        });
    }
}

impl Handler<ValidChunk> for BatchWriter {
    type Result = AtomicResponse<Self, ()>;

    fn handle(&mut self, chunk: ValidChunk, ctx: &mut Self::Context) -> Self::Result {
        let stats = self.stats.clone();
        for records in [&stats.writer.records, &self.connection.mailbox.records] {
            records.fetch_add(chunk.metrics.len() as u64, Ordering::Relaxed);
        }
        let dropped = self
            .ledger
            .take(chunk.epoch, chunk.metrics, &chunk.next_offsets);
        stats
            .stale_rows_dropped
            .fetch_add(dropped as u64, Ordering::Relaxed);
        if self.ledger.has_pending() {
            self.oldest.get_or_insert_with(Instant::now);
        }
        self.count_buffered();
        if self.ledger.len() >= self.max_rows {
            AtomicResponse::new(Box::pin(
                self.flush(Trigger::Size)
                    .map(move |(), act, _ctx| act.count_handled()),
            ))
        } else {
            if self.flush_when_idle && self.oldest.is_some() {
                self.flush_once_idle(ctx);
            }
            self.count_handled();
            AtomicResponse::new(Box::pin(fut::ready(())))
        }
    }
}

impl Handler<Rebalanced> for BatchWriter {
    type Result = ();

    fn handle(&mut self, change: Rebalanced, _ctx: &mut Self::Context) {
        match change {
            Rebalanced::Assigned { epoch, partitions } => self.ledger.assign(epoch, &partitions),
            Rebalanced::Revoked { partitions } => {
                let dropped = self.ledger.revoke(&partitions);
                if dropped > 0 {
                    log::info!(
                        "partitions {partitions:?} revoked: {dropped} buffered rows left to their new owner"
                    );
                }
                self.stats
                    .stale_rows_dropped
                    .fetch_add(dropped as u64, Ordering::Relaxed);
                self.count_buffered();
            }
        }
    }
}

impl Handler<Flush> for BatchWriter {
    type Result = AtomicResponse<Self, Vec<Position>>;

    fn handle(&mut self, _: Flush, _ctx: &mut Self::Context) -> Self::Result {
        if self.oldest.is_none() {
            return AtomicResponse::new(Box::pin(fut::ready(self.ledger.stored_offsets())));
        }
        AtomicResponse::new(Box::pin(
            self.flush(Trigger::Shutdown)
                .map(move |(), act, _ctx| act.ledger.stored_offsets()),
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Drives a plan against a database that refuses every write holding one of `bad`,
    /// answering with the writes made and the rows dead-lettered.
    fn drive(rows: usize, bad: &[usize]) -> (Vec<(Range<usize>, bool)>, Vec<usize>) {
        let mut plan = Plan::new(rows);
        let mut writes = Vec::new();
        let mut dead = Vec::new();
        while let Some((range, with_offsets)) = plan.next() {
            writes.push((range.clone(), with_offsets));
            if bad.iter().any(|b| range.contains(b))
                && let Refused::Row(index) = plan.refused(range, with_offsets)
            {
                dead.push(index);
            }
        }
        (writes, dead)
    }

    #[test]
    fn a_good_batch_is_one_write_with_its_offsets() {
        assert_eq!(drive(5, &[]).0, vec![(0..5, true)]);
    }

    #[test]
    fn offsets_alone_are_written_when_every_record_was_invalid() {
        assert_eq!(drive(0, &[]).0, vec![(0..0, true)]);
    }

    #[test]
    fn refused_rows_are_isolated_and_the_rest_stored_in_order() {
        let (writes, dead) = drive(8, &[2, 7]);
        assert_eq!(dead, vec![2, 7]);
        let stored: Vec<usize> = writes
            .iter()
            .filter(|(range, _)| !range.clone().any(|r| r == 2 || r == 7))
            .flat_map(|(range, _)| range.clone())
            .collect();
        assert_eq!(stored, vec![0, 1, 3, 4, 5, 6]);
        // The offsets go last, once every row is stored or dead-lettered.
        let (last, with_offsets) = writes.last().unwrap();
        assert_eq!((last.clone(), *with_offsets), (8..8, true));
        assert_eq!(writes.iter().filter(|(_, offsets)| *offsets).count(), 5);
    }

    #[test]
    fn a_refused_batch_of_one_row_is_dead_lettered_then_its_offsets_stored() {
        let (writes, dead) = drive(1, &[0]);
        assert_eq!(dead, vec![0]);
        assert_eq!(writes, vec![(0..1, true), (1..1, true)]);
    }

    #[test]
    fn refused_offsets_alone_end_the_plan() {
        let mut plan = Plan::new(0);
        let (range, with_offsets) = plan.next().unwrap();
        assert_eq!(plan.refused(range, with_offsets), Refused::Offsets);
        assert_eq!(plan.next(), None);
    }
}

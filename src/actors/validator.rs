//! The validator actor.
//!
//! Accepts [`RawChunk`] from the consumer and [`Drain`] at shutdown. Parses and checks every
//! record of a chunk, logs, counts and dead-letters each rejected one, and, once the broker has
//! acknowledged the dead letters, sends the valid metrics with the offsets the chunk covers as
//! one [`ValidChunk`] to the [`BatchWriter`]. It owns no data between chunks: the next chunk
//! is taken only once this one is in the writer's mailbox.

use std::sync::Arc;
use std::sync::atomic::Ordering;

use actix::prelude::*;
use chrono::Utc;

use crate::actors::batch_writer::{BatchWriter, Flush, ValidChunk};
use crate::dead_letter::{DeadLetter, DeadLetters};
use crate::domain::{Rejection, Rules, ValidMetric};
use crate::log_limit::LogLimit;
use crate::stats::{Stats, Trigger};

/// Where one record of a [`RawChunk`] lies.
#[derive(Debug, Clone, Copy)]
pub struct RawRecord {
    pub partition: i32,
    pub offset: i64,
    /// Range of the record's key in [`RawChunk::payloads`], if it has one.
    pub key: Option<(usize, usize)>,
    /// Range of the record's payload in [`RawChunk::payloads`].
    pub start: usize,
    pub end: usize,
}

/// Kafka records in the order they were consumed, their payloads packed in one buffer so a
/// chunk costs two allocations whatever its size.
#[derive(Debug, Default, Message)]
#[rtype(result = "()")]
pub struct RawChunk {
    /// The consumer's assignment number when these records were polled.
    pub epoch: u64,
    pub payloads: Vec<u8>,
    pub records: Vec<RawRecord>,
}

impl RawChunk {
    pub fn new(epoch: u64) -> RawChunk {
        RawChunk {
            epoch,
            ..RawChunk::default()
        }
    }

    pub fn push(&mut self, partition: i32, offset: i64, key: Option<&[u8]>, payload: &[u8]) {
        let key = key.map(|key| {
            let start = self.payloads.len();
            self.payloads.extend_from_slice(key);
            (start, self.payloads.len())
        });
        let start = self.payloads.len();
        self.payloads.extend_from_slice(payload);
        self.records.push(RawRecord {
            partition,
            offset,
            key,
            start,
            end: self.payloads.len(),
        });
    }

    fn payload(&self, record: &RawRecord) -> &[u8] {
        &self.payloads[record.start..record.end]
    }

    fn key(&self, record: &RawRecord) -> Option<&[u8]> {
        record.key.map(|(start, end)| &self.payloads[start..end])
    }

    pub fn len(&self) -> usize {
        self.records.len()
    }

    pub fn is_empty(&self) -> bool {
        self.records.is_empty()
    }
}

/// Sent last, at shutdown: flush everything and answer with the offsets now stored.
#[derive(Debug, Message)]
#[rtype(result = "Vec<(i32, i64)>")]
pub struct Drain;

pub struct Validator {
    /// The checks beyond the message's shape.
    rules: Rules,
    /// Where valid metrics go. Shared rather than cloned per chunk: an actix address counts
    /// the mailbox's capacity against each of its copies (a fresh copy may always queue one
    /// more), so only the same copy is held to it.
    writer: Arc<Addr<BatchWriter>>,
    /// Where rejected records go before their offsets may be stored.
    dead_letters: DeadLetters,
    /// Shared counters for `/status`.
    stats: Arc<Stats>,
    /// Keeps a flood of bad messages from flooding the log.
    rejection_log: LogLimit,
    mailbox_capacity: usize,
}

impl Validator {
    pub fn new(
        rules: Rules,
        writer: Addr<BatchWriter>,
        dead_letters: DeadLetters,
        stats: Arc<Stats>,
        mailbox_capacity: usize,
        log_per_sec: u32,
    ) -> Validator {
        stats
            .validator
            .capacity
            .store(mailbox_capacity as u64, Ordering::Relaxed);
        Validator {
            rules,
            writer: Arc::new(writer),
            dead_letters,
            stats,
            rejection_log: LogLimit::new("invalid-message warnings", log_per_sec),
            mailbox_capacity,
        }
    }

    /// Splits a chunk into the valid metrics and the rejections (record index, why).
    fn validate(&mut self, chunk: &RawChunk) -> (ValidChunk, Vec<(usize, Rejection)>) {
        let now_ms = Utc::now().timestamp_millis();
        let mut metrics = Vec::with_capacity(chunk.len());
        let mut offsets = Vec::with_capacity(chunk.len());
        let mut rejected = Vec::new();
        let mut next_offsets: Vec<(i32, i64)> = Vec::new();
        for (index, record) in chunk.records.iter().enumerate() {
            match ValidMetric::parse(chunk.payload(record), &self.rules, now_ms) {
                Ok(metric) => {
                    metrics.push(metric);
                    offsets.push((record.partition, record.offset));
                }
                Err(rejection) => {
                    self.stats.count_rejection(rejection.reason);
                    if self.rejection_log.allow() {
                        log::warn!(
                            "invalid message skipped partition={} offset={} reason={} detail=\"{}\"",
                            record.partition,
                            record.offset,
                            rejection.reason.as_str(),
                            rejection.detail.escape_debug()
                        );
                    }
                    rejected.push((index, rejection));
                }
            }
            match next_offsets
                .iter_mut()
                .find(|(p, _)| *p == record.partition)
            {
                Some(entry) => entry.1 = entry.1.max(record.offset + 1),
                None => next_offsets.push((record.partition, record.offset + 1)),
            }
        }
        let valid = ValidChunk {
            epoch: chunk.epoch,
            metrics,
            offsets,
            next_offsets,
        };
        (valid, rejected)
    }
}

impl Actor for Validator {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Self::Context) {
        ctx.set_mailbox_capacity(self.mailbox_capacity);
    }
}

impl Handler<RawChunk> for Validator {
    type Result = AtomicResponse<Self, ()>;

    fn handle(&mut self, chunk: RawChunk, _ctx: &mut Self::Context) -> Self::Result {
        let (valid, rejected) = self.validate(&chunk);
        self.stats
            .validator
            .records
            .fetch_add(chunk.len() as u64, Ordering::Relaxed);
        let writer = self.writer.clone();
        let dead_letters = self.dead_letters.clone();
        let stats = self.stats.clone();
        // Atomic: the next chunk waits until this one is in the writer's mailbox, which keeps
        // chunks in order and carries the writer's backpressure upstream.
        AtomicResponse::new(Box::pin(
            async move {
                if !rejected.is_empty() {
                    let letters: Vec<DeadLetter<'_>> = rejected
                        .iter()
                        .map(|(index, rejection)| {
                            let record = &chunk.records[*index];
                            DeadLetter {
                                key: chunk.key(record),
                                payload: chunk.payload(record),
                                reason: rejection.reason.as_str(),
                                detail: &rejection.detail,
                                partition: record.partition,
                                offset: record.offset,
                            }
                        })
                        .collect();
                    dead_letters.send_all(&letters, &stats).await;
                    stats.set_dead_letter_topic_error(None);
                    stats
                        .dead_lettered
                        .fetch_add(letters.len() as u64, Ordering::Relaxed);
                }
                drop(chunk);
                stats.writer.enqueued.fetch_add(1, Ordering::Relaxed);
                // Queued without waiting for the writer to handle it, so that parsing the next
                // chunk overlaps the writer's flush. A full mailbox parks this copy of the
                // address: the chunk is then queued by `send`, which waits until the writer has
                // taken it, so the mailbox holds at most its capacity and two.
                let queued = match writer.try_send(valid) {
                    Ok(()) => true,
                    Err(SendError::Full(valid)) => writer.send(valid).await.is_ok(),
                    Err(SendError::Closed(_)) => false,
                };
                if !queued {
                    log::error!("batch writer stopped; chunk not stored and not acknowledged");
                }
                stats.validator.handled.fetch_add(1, Ordering::Relaxed);
            }
            .into_actor(self),
        ))
    }
}

impl Handler<Drain> for Validator {
    type Result = AtomicResponse<Self, Vec<(i32, i64)>>;

    fn handle(&mut self, _: Drain, _ctx: &mut Self::Context) -> Self::Result {
        self.rejection_log.roll_window();
        let writer = self.writer.clone();
        AtomicResponse::new(Box::pin(
            async move {
                writer
                    .send(Flush(Trigger::Shutdown))
                    .await
                    .unwrap_or_default()
            }
            .into_actor(self),
        ))
    }
}

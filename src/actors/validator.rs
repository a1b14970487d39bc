//! The validator actor.
//!
//! Accepts [`RawChunk`] from the consumer and [`Drain`] at shutdown. Parses and checks every
//! record of a chunk, logs, counts and dead-letters each rejected one, and, once the broker has
//! acknowledged the dead letters, sends the valid metrics with the offsets the chunk covers as
//! [`ValidChunk`]s to the batch writers, one to each writer owning a partition of the chunk
//! ([`Writers::route`]). It owns no data between chunks: the next chunk is taken only once
//! this one is in the writers' mailboxes. Between chunks it keeps the names of recent metrics
//! ([`Names`], bounded), so that a metric repeating them shares them.

use std::sync::Arc;
use std::sync::atomic::Ordering;

use actix::prelude::*;
use chrono::Utc;

use crate::actors::messages::{Drain, RawChunk, ValidChunk};
use crate::actors::writers::Writers;
use crate::config::ValidatorSettings;
use crate::dead_letter::{DeadLetter, DeadLetters};
use crate::domain::{NAMES_MAX_BYTES, Names, Rejection, Rules, ValidMetric};
use crate::log_limit::LogLimit;
use crate::offsets::Position;
use crate::stats::Stats;

pub(crate) struct Validator {
    /// The checks beyond the message's shape.
    rules: Rules,
    /// The names of recent metrics, shared by the metrics that repeat them instead of
    /// allocated for each, and checked once.
    names: Names,
    /// Where valid metrics go, and who is asked to flush at shutdown. Shared rather than
    /// cloned per chunk: an actix address counts the mailbox's capacity against each of its
    /// copies (a fresh copy may always queue one more), so only the same copy is held to it.
    writers: Arc<Writers>,
    /// Where rejected records go before their offsets may be stored.
    dead_letters: DeadLetters,
    /// Shared counters for `/status`.
    stats: Arc<Stats>,
    /// Keeps a flood of bad messages from flooding the log.
    rejection_log: LogLimit,
    mailbox_capacity: usize,
}

impl Validator {
    /// `max_age_ms` is the oldest a metric may be, where a retention policy drops older rows.
    pub(crate) fn new(
        settings: &ValidatorSettings,
        max_age_ms: Option<i64>,
        writers: Arc<Writers>,
        dead_letters: DeadLetters,
        stats: Arc<Stats>,
    ) -> Validator {
        let mailbox_capacity = settings.mailbox_capacity as usize;
        stats
            .validator
            .capacity
            .store(mailbox_capacity as u64, Ordering::Relaxed);
        Validator {
            rules: Rules {
                max_future_skew_ms: settings.max_future_skew_ms,
                max_age_ms,
            },
            names: Names::new(NAMES_MAX_BYTES),
            writers,
            dead_letters,
            stats,
            rejection_log: LogLimit::new(
                "invalid-message warnings",
                settings.rejection_log_max_per_sec,
            ),
            mailbox_capacity,
        }
    }

    /// Splits a chunk into the valid metrics and the rejections (record index, why).
    fn validate(&mut self, chunk: &RawChunk) -> (ValidChunk, Vec<(usize, Rejection)>) {
        let now_ms = Utc::now().timestamp_millis();
        let mut metrics = Vec::with_capacity(chunk.len());
        let mut rejected = Vec::new();
        for (index, record) in chunk.records.iter().enumerate() {
            match ValidMetric::parse_with(
                chunk.payload(record),
                &self.rules,
                now_ms,
                &mut self.names,
            ) {
                Ok(metric) => metrics.push((metric, record.at)),
                Err(rejection) => {
                    self.stats.count_rejection(rejection.reason);
                    if self.rejection_log.allow() {
                        log::warn!(
                            "invalid message skipped partition={} offset={} reason={} detail=\"{}\"",
                            record.at.partition,
                            record.at.offset,
                            rejection.reason.as_str(),
                            rejection.detail.escape_debug()
                        );
                    }
                    rejected.push((index, rejection));
                }
            }
        }
        let valid = ValidChunk {
            epoch: chunk.epoch,
            metrics,
            next_offsets: next_offsets(chunk.records.iter().map(|r| r.at)),
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
        let writers = self.writers.clone();
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
                                partition: record.at.partition,
                                offset: record.at.offset,
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
                let (parts, unowned) = writers.route(valid);
                stats
                    .stale_rows_dropped
                    .fetch_add(unowned as u64, Ordering::Relaxed);
                for (writer, part) in parts {
                    let inbox = writers.inbox(writer);
                    stats.writer.enqueued.fetch_add(1, Ordering::Relaxed);
                    inbox.stats.mailbox.enqueued.fetch_add(1, Ordering::Relaxed);
                    // Queued without waiting for the writer to handle it, so that parsing the
                    // next chunk overlaps the writer's flush. A full mailbox parks this copy of
                    // the address: the chunk is then queued by `send`, which waits until the
                    // writer has taken it, so the mailbox holds at most its capacity and two.
                    let queued = match inbox.chunks.try_send(part) {
                        Ok(()) => true,
                        Err(SendError::Full(part)) => inbox.chunks.send(part).await.is_ok(),
                        Err(SendError::Closed(_)) => false,
                    };
                    if !queued {
                        log::error!("batch writer stopped; chunk not stored and not acknowledged");
                    }
                }
                stats.validator.handled.fetch_add(1, Ordering::Relaxed);
            }
            .into_actor(self),
        ))
    }
}

impl Handler<Drain> for Validator {
    type Result = AtomicResponse<Self, Vec<Position>>;

    fn handle(&mut self, _: Drain, _ctx: &mut Self::Context) -> Self::Result {
        self.rejection_log.roll_window();
        let writers = self.writers.clone();
        AtomicResponse::new(Box::pin(
            async move { writers.flush_all().await }.into_actor(self),
        ))
    }
}

/// For each partition among `records`, in order of first appearance, the offset after its
/// last record.
fn next_offsets(records: impl IntoIterator<Item = Position>) -> Vec<Position> {
    let mut next: Vec<Position> = Vec::new();
    for at in records {
        match next.iter_mut().find(|n| n.partition == at.partition) {
            Some(entry) => entry.offset = entry.offset.max(at.offset + 1),
            None => next.push(Position::new(at.partition, at.offset + 1)),
        }
    }
    next
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn next_offsets_cover_each_partition_touched() {
        let records = [(0, 5), (1, 9), (0, 6), (2, 0), (1, 10)]
            .map(|(partition, offset)| Position::new(partition, offset));
        assert_eq!(
            next_offsets(records),
            vec![
                Position::new(0, 7),
                Position::new(1, 11),
                Position::new(2, 1)
            ]
        );
        assert!(next_offsets([]).is_empty());
    }
}

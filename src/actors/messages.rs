//! What the actors send each other. Each actor holds only the recipients of what it sends, so
//! none imports another: the consumer sends [`RawChunk`]s to the validator and
//! [`Rebalanced`] to the writer, the validator sends [`ValidChunk`]s to the writer, the writer
//! sends [`OffsetsStored`] back to the consumer.

use actix::prelude::*;

use crate::domain::ValidMetric;
use crate::offsets::{Epoch, Position, StoredOffset};

/// Where one record of a [`RawChunk`] lies.
#[derive(Debug, Clone, Copy)]
pub(crate) struct RawRecord {
    pub at: Position,
    /// Range of the record's key in [`RawChunk::payloads`], if it has one.
    pub key: Option<(usize, usize)>,
    /// Range of the record's payload in [`RawChunk::payloads`].
    pub start: usize,
    pub end: usize,
}

/// Kafka records in the order they were consumed, their payloads packed in one buffer so a
/// chunk costs two allocations whatever its size. Consumer → validator.
#[derive(Debug, Default, Message)]
#[rtype(result = "()")]
pub(crate) struct RawChunk {
    /// The consumer's assignment when these records were polled.
    pub epoch: Epoch,
    pub payloads: Vec<u8>,
    pub records: Vec<RawRecord>,
}

impl RawChunk {
    pub(crate) fn new(epoch: Epoch) -> RawChunk {
        RawChunk {
            epoch,
            ..RawChunk::default()
        }
    }

    pub(crate) fn push(&mut self, at: Position, key: Option<&[u8]>, payload: &[u8]) {
        let key = key.map(|key| {
            let start = self.payloads.len();
            self.payloads.extend_from_slice(key);
            (start, self.payloads.len())
        });
        let start = self.payloads.len();
        self.payloads.extend_from_slice(payload);
        self.records.push(RawRecord {
            at,
            key,
            start,
            end: self.payloads.len(),
        });
    }

    pub(crate) fn payload(&self, record: &RawRecord) -> &[u8] {
        &self.payloads[record.start..record.end]
    }

    pub(crate) fn key(&self, record: &RawRecord) -> Option<&[u8]> {
        record.key.map(|(start, end)| &self.payloads[start..end])
    }

    pub(crate) fn len(&self) -> usize {
        self.records.len()
    }
}

/// Valid metrics of one consumed chunk with their positions, and for each partition the chunk
/// touched the next offset to consume once these metrics are stored (invalid records
/// included: they are dead-lettered and done). Validator → writer.
#[derive(Debug, Message)]
#[rtype(result = "()")]
pub(crate) struct ValidChunk {
    /// The consumer's assignment when these records were polled.
    pub epoch: Epoch,
    pub metrics: Vec<(ValidMetric, Position)>,
    pub next_offsets: Vec<Position>,
}

/// Partitions that changed hands in a rebalance of the consumer. Consumer's rebalance
/// callback → writer, before any record polled under the new assignment.
#[derive(Debug, Message)]
#[rtype(result = "()")]
pub(crate) enum Rebalanced {
    /// Assigned to this instance by rebalance number `epoch`, with the next offsets stored for
    /// them.
    Assigned {
        epoch: Epoch,
        partitions: Vec<StoredOffset>,
    },
    /// Taken from this instance: their buffered rows are dropped; the new owner consumes them
    /// again from the stored offset.
    Revoked { partitions: Vec<i32> },
}

/// Rows up to these next offsets are committed to the database. Writer → consumer.
#[derive(Debug, Message)]
#[rtype(result = "()")]
pub(crate) struct OffsetsStored(pub Vec<Position>);

/// Flush now, whatever the batch holds, for the service is stopping; answers with every
/// offset stored so far. Validator → writer, at shutdown.
#[derive(Debug, Message)]
#[rtype(result = "Vec<Position>")]
pub(crate) struct Flush;

/// Sent last, at shutdown: flush everything and answer with the offsets now stored.
/// Consumer → validator.
#[derive(Debug, Message)]
#[rtype(result = "Vec<Position>")]
pub(crate) struct Drain;

/// Ends the consumer's read task, flushes what the pipeline holds and commits its offsets.
/// Start-up → consumer, at shutdown.
#[derive(Debug, Message)]
#[rtype(result = "()")]
pub(crate) struct Stop;

//! Partition ownership and offsets, in one place: which partitions this instance owns, which
//! consumed rows are new, which offsets a flush moves, and what is stored.
//!
//! The database is the truth about offsets: each partition's stored offset only moves from the
//! value the [`Ledger`] expects ([`OffsetAdvance`]), so an instance that lost a partition in a
//! rebalance cannot store rows or offsets over the new owner's. The consumer's rebalances number
//! the assignments ([`Epoch`]); chunks carry the number they were polled under, so records of a
//! partition's earlier ownership are told apart from records fetched again after it was
//! assigned anew. Plain data: the batch writer drives it, nothing here waits or talks.

use std::collections::{BTreeMap, HashMap};

/// Where a record lies in the topic: its partition and offset. Also used for "the next offset
/// to consume" of a partition, where that is what it says.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Position {
    pub partition: i32,
    pub offset: i64,
}

impl Position {
    pub fn new(partition: i32, offset: i64) -> Position {
        Position { partition, offset }
    }
}

/// The number of the consumer's latest rebalance when some records were polled.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Epoch(pub u64);

/// A partition's next offset as the database stores it with the rows: consumption resumes
/// there, and the next write moves it from there.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StoredOffset {
    pub partition: i32,
    /// `None`: nothing stored yet for the partition.
    pub next: Option<i64>,
}

impl StoredOffset {
    pub fn new(partition: i32, next: Option<i64>) -> StoredOffset {
        StoredOffset { partition, next }
    }
}

/// Reads the offsets stored with the rows. The consumer resumes newly assigned partitions
/// there, whatever Kafka's committed offsets say.
pub trait StoredOffsets: Send + Sync {
    /// The stored next offset of each partition.
    fn read(&self, partitions: &[i32]) -> Result<Vec<StoredOffset>, String>;
}

/// Moves a partition's stored offset from `expected` (`None`: no row yet) to `next`. The move
/// only happens if the stored offset is still `expected`: a writer that lost the partition to
/// another instance cannot overwrite what that instance stored.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct OffsetAdvance {
    pub partition: i32,
    pub expected: Option<i64>,
    pub next: i64,
}

/// A partition this instance owns.
#[derive(Debug, Clone, Copy)]
struct Ownership {
    /// The stored next offset the next write moves from.
    expected: Option<i64>,
    /// The rebalance that assigned it: records polled before belong to an earlier ownership
    /// and are fetched again from the stored offset.
    since: Epoch,
}

/// The rows of one flush with their positions, and the offset moves stored with them.
#[derive(Debug)]
pub struct Batch<R> {
    pub rows: Vec<(R, Position)>,
    pub advances: Vec<OffsetAdvance>,
}

impl<R> Batch<R> {
    /// After a fenced write (a partition's stored offset is `stored`, not what was expected):
    /// drops the rows the stored offset says are done and moves from there. Answers with the
    /// number of rows dropped.
    pub fn refence(&mut self, stored: StoredOffset) -> usize {
        let StoredOffset {
            partition,
            next: stored,
        } = stored;
        let before = self.rows.len();
        let floor = stored.unwrap_or(i64::MIN);
        self.rows
            .retain(|(_, at)| at.partition != partition || at.offset >= floor);
        for advance in &mut self.advances {
            if advance.partition == partition {
                advance.expected = stored;
            }
        }
        self.advances
            .retain(|a| a.partition != partition || a.expected.is_none_or(|e| a.next > e));
        before - self.rows.len()
    }
}

/// The rows waiting for the next flush and everything known of the partitions they come from.
#[derive(Debug)]
pub struct Ledger<R> {
    /// Rows waiting for the next flush, in the order they were consumed.
    rows: Vec<(R, Position)>,
    /// Next offsets covered by `rows`, per partition; stored with them.
    pending: BTreeMap<i32, i64>,
    /// Partitions this instance owns.
    owned: HashMap<i32, Ownership>,
    /// Every offset stored since start, so the final commit at shutdown covers all of them.
    stored: BTreeMap<i32, i64>,
    /// Rows a batch is expected to hold, reserved again after each one is taken.
    capacity: usize,
}

impl<R> Ledger<R> {
    pub fn new(capacity: usize) -> Ledger<R> {
        Ledger {
            rows: Vec::with_capacity(capacity),
            pending: BTreeMap::new(),
            owned: HashMap::new(),
            stored: BTreeMap::new(),
            capacity,
        }
    }

    /// Partitions assigned by rebalance `epoch`, with their stored next offsets. Rows of an
    /// earlier ownership still waiting are dropped: they are fetched again from the stored
    /// offset.
    pub fn assign(&mut self, epoch: Epoch, partitions: &[StoredOffset]) {
        for &StoredOffset { partition, next } in partitions {
            self.pending.remove(&partition);
            self.rows.retain(|(_, at)| at.partition != partition);
            self.owned.insert(
                partition,
                Ownership {
                    expected: next,
                    since: epoch,
                },
            );
            if let Some(next) = next {
                self.stored.insert(partition, next);
            }
        }
    }

    /// Partitions taken away: their waiting rows are left to the new owner, which consumes
    /// them again from the stored offset. Answers with the number of rows dropped.
    pub fn revoke(&mut self, partitions: &[i32]) -> usize {
        let before = self.rows.len();
        self.rows
            .retain(|(_, at)| !partitions.contains(&at.partition));
        for partition in partitions {
            self.owned.remove(partition);
            self.pending.remove(partition);
            self.stored.remove(partition);
        }
        before - self.rows.len()
    }

    /// Takes the rows of a chunk polled under `epoch` that are new: of partitions owned when
    /// they were polled, at or past the stored offset. `next` holds, per partition the chunk
    /// touched, the next offset to consume once its rows are stored (invalid records count:
    /// they are done). Answers with the number of rows dropped.
    pub fn take(
        &mut self,
        epoch: Epoch,
        rows: impl IntoIterator<Item = (R, Position)>,
        next: &[Position],
    ) -> usize {
        let mut dropped = 0;
        for (row, at) in rows {
            let wanted = self
                .current(epoch, at.partition)
                .is_some_and(|o| o.expected.is_none_or(|e| at.offset >= e));
            if wanted {
                self.rows.push((row, at));
            } else {
                dropped += 1;
            }
        }
        for at in next {
            if self.current(epoch, at.partition).is_some() {
                let entry = self.pending.entry(at.partition).or_insert(at.offset);
                *entry = (*entry).max(at.offset);
            }
        }
        dropped
    }

    /// The ownership of `partition`, if records polled under `epoch` belong to it.
    fn current(&self, epoch: Epoch, partition: i32) -> Option<Ownership> {
        self.owned
            .get(&partition)
            .filter(|o| epoch >= o.since)
            .copied()
    }

    /// Rows waiting for the next flush.
    pub fn len(&self) -> usize {
        self.rows.len()
    }

    pub fn is_empty(&self) -> bool {
        self.rows.is_empty()
    }

    /// Whether anything waits to be stored: rows, or offsets past records that were invalid.
    pub fn has_pending(&self) -> bool {
        !self.pending.is_empty()
    }

    /// Takes what waits as one batch, with the offset moves that go with it.
    pub fn take_batch(&mut self) -> Batch<R> {
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
        let rows = std::mem::replace(&mut self.rows, Vec::with_capacity(self.capacity));
        Batch { rows, advances }
    }

    /// The offset moves of a batch are stored: the next writes move from there. Answers with
    /// the next offsets now committed, to tell Kafka.
    pub fn stored(&mut self, advances: &[OffsetAdvance]) -> Vec<Position> {
        let mut committed = Vec::with_capacity(advances.len());
        for advance in advances {
            // A partition revoked during the flush is no longer ours to track.
            if let Some(owned) = self.owned.get_mut(&advance.partition) {
                owned.expected = Some(advance.next);
            }
            self.stored.insert(advance.partition, advance.next);
            committed.push(Position::new(advance.partition, advance.next));
        }
        committed
    }

    /// Every next offset stored since start (or found stored on assignment).
    pub fn stored_offsets(&self) -> Vec<Position> {
        self.stored
            .iter()
            .map(|(partition, next)| Position::new(*partition, *next))
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(partition: i32, offset: i64) -> Position {
        Position::new(partition, offset)
    }

    fn stored(partition: i32, next: Option<i64>) -> StoredOffset {
        StoredOffset::new(partition, next)
    }

    /// Rows named by their offset, all of one partition unless said otherwise.
    fn rows(partition: i32, offsets: std::ops::Range<i64>) -> Vec<(i64, Position)> {
        offsets.map(|o| (o, at(partition, o))).collect()
    }

    fn offsets(batch: &Batch<i64>) -> Vec<i64> {
        batch.rows.iter().map(|(row, _)| *row).collect()
    }

    #[test]
    fn rows_of_unowned_partitions_are_dropped() {
        let mut ledger = Ledger::new(8);
        ledger.assign(Epoch(1), &[stored(0, None)]);
        let dropped = ledger.take(Epoch(1), rows(1, 0..3), &[at(1, 3)]);
        assert_eq!(dropped, 3);
        assert!(ledger.is_empty());
        assert!(!ledger.has_pending());
    }

    #[test]
    fn rows_below_the_stored_offset_are_dropped() {
        let mut ledger = Ledger::new(8);
        ledger.assign(Epoch(1), &[stored(0, Some(5))]);
        assert_eq!(ledger.take(Epoch(1), rows(0, 3..8), &[at(0, 8)]), 2);
        let batch = ledger.take_batch();
        assert_eq!(offsets(&batch), vec![5, 6, 7]);
        assert_eq!(
            batch.advances,
            vec![OffsetAdvance {
                partition: 0,
                expected: Some(5),
                next: 8
            }]
        );
    }

    #[test]
    fn rows_polled_before_a_new_assignment_are_dropped() {
        let mut ledger = Ledger::new(8);
        ledger.assign(Epoch(1), &[stored(0, None)]);
        ledger.take(Epoch(1), rows(0, 0..2), &[at(0, 2)]);
        // Revoked and assigned again: what was waiting, and what was polled under the old
        // assignment, is fetched again from the stored offset.
        ledger.revoke(&[0]);
        ledger.assign(Epoch(3), &[stored(0, Some(1))]);
        assert!(ledger.is_empty());
        assert_eq!(ledger.take(Epoch(2), rows(0, 2..4), &[at(0, 4)]), 2);
        assert!(!ledger.has_pending());
        assert_eq!(ledger.take(Epoch(3), rows(0, 1..3), &[at(0, 3)]), 0);
        assert_eq!(offsets(&ledger.take_batch()), vec![1, 2]);
    }

    #[test]
    fn revoking_drops_waiting_rows_and_forgets_the_partition() {
        let mut ledger = Ledger::new(8);
        ledger.assign(Epoch(1), &[stored(0, Some(0)), stored(1, Some(10))]);
        ledger.take(Epoch(1), rows(0, 0..3), &[at(0, 3)]);
        ledger.take(Epoch(1), rows(1, 10..12), &[at(1, 12)]);
        assert_eq!(ledger.revoke(&[1]), 2);
        assert_eq!(ledger.stored_offsets(), vec![at(0, 0)]);
        let batch = ledger.take_batch();
        assert_eq!(offsets(&batch), vec![0, 1, 2]);
        assert_eq!(batch.advances.len(), 1);
    }

    #[test]
    fn a_stored_batch_moves_the_expected_offset() {
        let mut ledger = Ledger::new(8);
        ledger.assign(Epoch(1), &[stored(0, None)]);
        ledger.take(Epoch(1), rows(0, 0..4), &[at(0, 4)]);
        let batch = ledger.take_batch();
        assert_eq!(batch.advances[0].expected, None);
        assert_eq!(ledger.stored(&batch.advances), vec![at(0, 4)]);
        ledger.take(Epoch(1), rows(0, 4..6), &[at(0, 6)]);
        let batch = ledger.take_batch();
        assert_eq!(
            batch.advances,
            vec![OffsetAdvance {
                partition: 0,
                expected: Some(4),
                next: 6
            }]
        );
        assert_eq!(ledger.stored_offsets(), vec![at(0, 4)]);
    }

    #[test]
    fn invalid_records_alone_still_move_the_offset() {
        let mut ledger: Ledger<i64> = Ledger::new(8);
        ledger.assign(Epoch(1), &[stored(0, Some(7))]);
        ledger.take(Epoch(1), Vec::new(), &[at(0, 9)]);
        assert!(ledger.has_pending());
        let batch = ledger.take_batch();
        assert!(batch.rows.is_empty());
        assert_eq!(batch.advances[0].next, 9);
        // Nothing new: no move.
        ledger.stored(&batch.advances);
        ledger.take(Epoch(1), Vec::new(), &[at(0, 9)]);
        assert!(ledger.take_batch().advances.is_empty());
    }

    #[test]
    fn a_fenced_batch_keeps_only_what_the_other_writer_did_not_store() {
        let mut ledger = Ledger::new(8);
        ledger.assign(Epoch(1), &[stored(0, Some(0)), stored(1, Some(0))]);
        ledger.take(Epoch(1), rows(0, 0..4), &[at(0, 4)]);
        ledger.take(Epoch(1), rows(1, 0..2), &[at(1, 2)]);
        let mut batch = ledger.take_batch();
        assert_eq!(batch.refence(stored(0, Some(3))), 3);
        assert_eq!(
            batch.rows.iter().map(|(_, at)| *at).collect::<Vec<_>>(),
            vec![at(0, 3), at(1, 0), at(1, 1)]
        );
        assert_eq!(batch.advances[0].expected, Some(3));
        // Stored past everything: the partition's move is dropped too.
        assert_eq!(batch.refence(stored(0, Some(4))), 1);
        assert_eq!(batch.advances.len(), 1);
        assert_eq!(batch.advances[0].partition, 1);
    }
}

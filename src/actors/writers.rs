//! The batch writers as one destination. Each writer has a database connection of its own and
//! owns a disjoint set of the assigned partitions (`WRITER_CONNECTIONS` of them), so each
//! partition's rows and its fenced offset move go through one connection, in order, as with a
//! single writer; the writers' transactions run side by side.
//!
//! A partition is given to a writer when it is assigned (to the writer owning the fewest, so the
//! load spreads whatever partitions this instance gets) and stays there until it is revoked.
//! [`Writers::assigned`] and [`Writers::revoked`] are called by the consumer's rebalance
//! callback, before any record of the new assignment is read; [`Writers::route`] splits each
//! validated chunk by owner.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

use actix::prelude::*;

use crate::actors::messages::{Flush, Rebalanced, ValidChunk};
use crate::offsets::{Epoch, Position, StoredOffset};
use crate::stats::ConnectionStats;

/// What reaches one batch writer.
pub(crate) struct WriterInbox {
    /// Validated rows of its partitions. Held once: an actix address counts the mailbox's
    /// capacity against each of its copies, so every chunk goes through this one.
    pub chunks: Recipient<ValidChunk>,
    /// Its partitions, assigned and revoked.
    pub rebalanced: Recipient<Rebalanced>,
    /// Asked to flush at shutdown.
    pub flush: Recipient<Flush>,
    /// Its own figures.
    pub stats: Arc<ConnectionStats>,
}

/// The batch writers and which partition each owns.
pub(crate) struct Writers {
    inboxes: Vec<WriterInbox>,
    routes: Mutex<Routes>,
}

impl Writers {
    pub(crate) fn new(inboxes: Vec<WriterInbox>) -> Writers {
        let routes = Mutex::new(Routes::new(inboxes.len()));
        Writers { inboxes, routes }
    }

    pub(crate) fn inbox(&self, writer: usize) -> &WriterInbox {
        &self.inboxes[writer]
    }

    /// Gives newly assigned partitions (with their stored next offsets) to writers and tells
    /// each writer its own, before any of their records can reach it.
    pub(crate) fn assigned(&self, epoch: Epoch, partitions: Vec<StoredOffset>) {
        let owners = match self.routes.lock() {
            Ok(mut routes) => routes.assign(partitions.iter().map(|s| s.partition)),
            Err(_) => return,
        };
        let mut each: Vec<Vec<StoredOffset>> = vec![Vec::new(); self.inboxes.len()];
        for (partition, owner) in partitions.into_iter().zip(owners) {
            each[owner].push(partition);
        }
        for (inbox, partitions) in self.inboxes.iter().zip(each) {
            if partitions.is_empty() {
                continue;
            }
            set_partitions(&inbox.stats, |owned| {
                owned.extend(partitions.iter().map(|s| s.partition))
            });
            inbox
                .rebalanced
                .do_send(Rebalanced::Assigned { epoch, partitions });
        }
    }

    /// Takes revoked partitions from their writers, which drop what they buffered of them.
    pub(crate) fn revoked(&self, partitions: &[i32]) {
        let owners = match self.routes.lock() {
            Ok(mut routes) => routes.revoke(partitions),
            Err(_) => return,
        };
        let mut each: Vec<Vec<i32>> = vec![Vec::new(); self.inboxes.len()];
        for (partition, owner) in partitions.iter().zip(owners) {
            if let Some(owner) = owner {
                each[owner].push(*partition);
            }
        }
        for (inbox, partitions) in self.inboxes.iter().zip(each) {
            if partitions.is_empty() {
                continue;
            }
            set_partitions(&inbox.stats, |owned| {
                owned.retain(|p| !partitions.contains(p))
            });
            inbox.rebalanced.do_send(Rebalanced::Revoked { partitions });
        }
    }

    /// Splits a chunk by the writer owning each partition. Rows of a partition no writer owns
    /// (revoked since they were polled) are left out; answers with how many.
    pub(crate) fn route(&self, chunk: ValidChunk) -> (Vec<(usize, ValidChunk)>, usize) {
        let Ok(routes) = self.routes.lock() else {
            return (Vec::new(), chunk.metrics.len());
        };
        if self.inboxes.len() == 1 {
            let owned = chunk
                .next_offsets
                .iter()
                .all(|n| routes.owner(n.partition).is_some());
            if owned {
                return (vec![(0, chunk)], 0);
            }
        }
        let ValidChunk {
            epoch,
            metrics,
            next_offsets,
        } = chunk;
        let mut parts: Vec<Option<ValidChunk>> = (0..self.inboxes.len()).map(|_| None).collect();
        let mut unowned = 0;
        for next in next_offsets {
            if let Some(owner) = routes.owner(next.partition) {
                chunk_of(&mut parts, owner, epoch).next_offsets.push(next);
            }
        }
        for (metric, at) in metrics {
            match routes.owner(at.partition) {
                Some(owner) => chunk_of(&mut parts, owner, epoch)
                    .metrics
                    .push((metric, at)),
                None => unowned += 1,
            }
        }
        let parts = parts
            .into_iter()
            .enumerate()
            .filter_map(|(owner, part)| Some((owner, part?)))
            .collect();
        (parts, unowned)
    }

    /// Flushes every writer at shutdown and answers with every offset stored so far.
    pub(crate) async fn flush_all(&self) -> Vec<Position> {
        let mut stored = Vec::new();
        for inbox in &self.inboxes {
            stored.extend(inbox.flush.send(Flush).await.unwrap_or_default());
        }
        stored
    }
}

fn chunk_of(parts: &mut [Option<ValidChunk>], owner: usize, epoch: Epoch) -> &mut ValidChunk {
    parts[owner].get_or_insert_with(|| ValidChunk {
        epoch,
        metrics: Vec::new(),
        next_offsets: Vec::new(),
    })
}

fn set_partitions(stats: &ConnectionStats, change: impl FnOnce(&mut Vec<i32>)) {
    if let Ok(mut owned) = stats.partitions.lock() {
        change(&mut owned);
        owned.sort_unstable();
        owned.dedup();
    }
}

/// Which writer owns which partition.
#[derive(Debug)]
struct Routes {
    owner: BTreeMap<i32, usize>,
    writers: usize,
}

impl Routes {
    fn new(writers: usize) -> Routes {
        Routes {
            owner: BTreeMap::new(),
            writers: writers.max(1),
        }
    }

    /// Gives each partition not owned yet to the writer owning the fewest (the first of
    /// those); answers with each partition's owner.
    fn assign(&mut self, partitions: impl IntoIterator<Item = i32>) -> Vec<usize> {
        partitions
            .into_iter()
            .map(|partition| {
                if let Some(owner) = self.owner.get(&partition) {
                    return *owner;
                }
                let mut load = vec![0usize; self.writers];
                for owner in self.owner.values() {
                    load[*owner] += 1;
                }
                let owner = (0..self.writers)
                    .min_by_key(|writer| load[*writer])
                    .unwrap_or(0);
                self.owner.insert(partition, owner);
                owner
            })
            .collect()
    }

    /// Answers with each partition's owner, which no longer owns it.
    fn revoke(&mut self, partitions: &[i32]) -> Vec<Option<usize>> {
        partitions.iter().map(|p| self.owner.remove(p)).collect()
    }

    fn owner(&self, partition: i32) -> Option<usize> {
        self.owner.get(&partition).copied()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn partitions_spread_over_the_writers_and_stay_with_their_owner() {
        let mut routes = Routes::new(2);
        assert_eq!(routes.assign([0, 1, 2]), vec![0, 1, 0]);
        // Assigned again (an eager rebalance lists them all): nothing moves.
        assert_eq!(routes.assign([2, 1, 0, 3]), vec![0, 1, 0, 1]);
        assert_eq!(routes.revoke(&[0, 2, 7]), vec![Some(0), Some(0), None]);
        assert_eq!(routes.owner(0), None);
        // The writer left with the fewest takes the next ones.
        assert_eq!(routes.assign([4, 5]), vec![0, 0]);
        assert_eq!(routes.owner(3), Some(1));
    }

    #[test]
    fn an_instance_given_every_third_partition_still_uses_every_writer() {
        let mut routes = Routes::new(3);
        assert_eq!(routes.assign([0, 3, 6, 9, 12, 15]), vec![0, 1, 2, 0, 1, 2]);
    }
}

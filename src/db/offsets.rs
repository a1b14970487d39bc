//! The stored offsets of a consumer group, read where they are stored: with the rows.

use super::DbError;
use super::connect::{Timeouts, connect, within};
use crate::offsets::{StoredOffset, StoredOffsets};

/// Where the offsets of one flush go: the group and topic they belong to.
#[derive(Debug, Clone)]
pub struct OffsetScope {
    pub group: String,
    pub topic: String,
}

/// The stored next offset of `partition`.
pub(super) async fn stored_offset(
    client: &impl tokio_postgres::GenericClient,
    scope: &OffsetScope,
    partition: i32,
) -> Result<StoredOffset, tokio_postgres::Error> {
    let next = client
        .query_opt(
            "SELECT next_offset FROM kafka_offsets
             WHERE consumer_group = $1 AND topic = $2 AND partition = $3",
            &[&scope.group, &scope.topic, &partition],
        )
        .await?
        .map(|row| row.get(0));
    Ok(StoredOffset::new(partition, next))
}

/// Reads the stored offsets of a consumer group's partitions, each time on a connection of its
/// own, on a thread of its own: it is called from librdkafka's rebalance callback, which must
/// not return before the offsets are known.
pub struct OffsetReader {
    pub url: String,
    pub timeouts: Timeouts,
    pub scope: OffsetScope,
}

impl StoredOffsets for OffsetReader {
    fn read(&self, partitions: &[i32]) -> Result<Vec<StoredOffset>, String> {
        let url = self.url.clone();
        let timeouts = self.timeouts;
        let scope = self.scope.clone();
        let partitions = partitions.to_vec();
        std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .map_err(|e| DbError::Internal(e.to_string()))?;
            runtime.block_on(async {
                let client = connect(&url, &timeouts).await?;
                let mut offsets = Vec::with_capacity(partitions.len());
                for partition in partitions {
                    let stored = within(
                        timeouts.statement,
                        "the offset lookup",
                        stored_offset(&client, &scope, partition),
                    )
                    .await?;
                    offsets.push(stored);
                }
                Ok(offsets)
            })
        })
        .join()
        .unwrap_or_else(|_| Err(DbError::Internal("offset lookup thread died".into())))
        .map_err(|e| e.to_string())
    }
}

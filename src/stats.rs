//! Counters shared by the actors and read by the HTTP server. actix exposes no mailbox length,
//! so each sender counts what it enqueues and each handler what it finished; the difference is
//! the mailbox depth.

use std::collections::BTreeMap;
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use chrono::{DateTime, Utc};
use serde::Serialize;

use crate::domain::Reason;

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
    Size,
    Time,
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

/// What the consumer knows of one assigned partition.
#[derive(Debug, Clone, Default, Serialize)]
pub struct PartitionReport {
    /// Next offset whose rows are committed to the database and the offset to Kafka.
    pub committed_offset: Option<i64>,
    pub high_watermark: Option<i64>,
    pub lag: Option<i64>,
}

/// Everything `/status` reports, updated by the actors as they work.
#[derive(Debug, Default)]
pub struct Stats {
    pub consumer: ActorStats,
    pub validator: ActorStats,
    pub writer: ActorStats,
    rejected: [AtomicU64; Reason::ALL.len()],
    pub rows_buffered: AtomicU64,
    pub rows_written: AtomicU64,
    pub flushes_by_size: AtomicU64,
    pub flushes_by_time: AtomicU64,
    pub flushes_on_shutdown: AtomicU64,
    pub last_flush: Mutex<Option<FlushReport>>,
    /// True while the consumer holds its partitions paused because the validator is full.
    pub consumer_paused: AtomicBool,
    /// True once the consumer has joined its group.
    pub consumer_joined: AtomicBool,
    pub partitions: Mutex<BTreeMap<i32, PartitionReport>>,
    /// Last database failure, cleared by the next successful write.
    pub database_error: Mutex<Option<String>>,
    pub database_connected: AtomicBool,
    pub storage: Mutex<Option<String>>,
}

impl Stats {
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
}

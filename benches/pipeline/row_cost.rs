//! The service's own work a row, with no broker and no database: `BENCH_ROW_COST=N` runs it
//! over the preload's N messages and stops. Timings on a shared machine vary from run to run;
//! the instructions a row do not, so the mode is meant to run under callgrind, counting only
//! [`pass`]:
//!
//! ```text
//! BENCH_ROW_COST=100000 valgrind --tool=callgrind --toggle-collect='*row_cost*pass*' \
//!     target/release/deps/pipeline-HASH
//! ```
//!
//! The pass does what the service does between the broker's payload and the COPY stream: the
//! consumer packs a chunk's payloads into one buffer, the validator parses and checks each into
//! a metric, the writer encodes the rows of a batch for binary `COPY`, and the batch is dropped
//! once written. Sizes are the service's defaults (`CONSUMER_CHUNK_MAX`, `BATCH_MAX_ROWS`).

use std::time::Instant;

use bytes::{Bytes, BytesMut};
use panopticon::db::{COPY_PIECE_BYTES, encode_copy_row};
use panopticon::domain::{NAMES_MAX_BYTES, Names, Rules, ValidMetric};

use crate::preload::Messages;
use crate::step;

const CHUNK_MAX: usize = 5_000;
const BATCH_MAX_ROWS: usize = 10_000;

/// Runs the pass over `count` messages of `pods` pods and prints rows, time and rows a second.
pub fn run(count: usize, pods: u32) -> anyhow::Result<()> {
    let messages = Messages::generate(count, pods);
    step(&format!(
        "row cost: {count} messages, {pods} pods, chunks of {CHUNK_MAX}, batches of {BATCH_MAX_ROWS}"
    ));
    let started = Instant::now();
    let (rows, bytes) = pass(&messages);
    let secs = started.elapsed().as_secs_f64();
    anyhow::ensure!(rows == count, "{} of {count} messages were valid", rows);
    step(&format!(
        "row cost: {rows} rows, {bytes} bytes of COPY data, {secs:.3} s, {:.2} µs a row",
        secs * 1e6 / rows as f64
    ));
    Ok(())
}

/// Every message through consumer, validator and writer; answers the rows and COPY bytes.
#[inline(never)]
fn pass(messages: &Messages) -> (usize, usize) {
    let rules = Rules {
        max_future_skew_ms: 300_000,
        max_age_ms: None,
    };
    let now_ms = crate::now_ms();
    let mut rows = 0;
    let mut copied = 0;
    let mut names = Names::new(NAMES_MAX_BYTES);
    let mut batch: Vec<(ValidMetric, i64)> = Vec::with_capacity(BATCH_MAX_ROWS);
    let mut copy = Copy::new();
    let mut chunk: Vec<u8> = Vec::new();
    let mut ranges: Vec<(usize, usize)> = Vec::new();
    for first in (0..messages.index.len()).step_by(CHUNK_MAX) {
        chunk.clear();
        ranges.clear();
        for i in first..(first + CHUNK_MAX).min(messages.index.len()) {
            let start = chunk.len();
            chunk.extend_from_slice(messages.payload(i));
            ranges.push((start, chunk.len()));
        }
        for (offset, &(start, end)) in ranges.iter().enumerate() {
            let payload = &chunk[start..end];
            if let Ok(metric) = ValidMetric::parse_with(payload, &rules, now_ms, &mut names) {
                batch.push((metric, (first + offset) as i64));
            }
        }
        if batch.len() >= BATCH_MAX_ROWS {
            rows += batch.len();
            copied += copy.rows(&batch);
            batch.clear();
        }
    }
    rows += batch.len();
    copied += copy.rows(&batch);
    (rows, copied)
}

/// Binary COPY encoding as the writer does it.
struct Copy {
    buf: BytesMut,
}

impl Copy {
    fn new() -> Copy {
        Copy {
            buf: BytesMut::new(),
        }
    }

    /// Encodes `batch`, the pieces handed to the connection dropped; answers the bytes.
    fn rows(&mut self, batch: &[(ValidMetric, i64)]) -> usize {
        let mut sent = 0;
        let mut send = |piece: Bytes| sent += piece.len();
        for (row, _) in batch {
            encode_copy_row(&mut self.buf, row);
            if self.buf.len() >= COPY_PIECE_BYTES {
                send(self.buf.split().freeze());
            }
        }
        send(self.buf.split().freeze());
        sent
    }
}

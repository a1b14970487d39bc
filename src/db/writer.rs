//! The batch writer's connection: its statements, prepared once, and one batch a transaction
//! (binary COPY straight in, or after a collision through staging; the fenced offset moves; the
//! pending range of the minute summaries).

use std::future::Future;

use bytes::{BufMut, Bytes, BytesMut};
use futures_util::{SinkExt, pin_mut};
use tokio_postgres::error::SqlState;
use tokio_postgres::types::ToSql;
use tokio_postgres::{Client, Statement};

use crate::domain::ValidMetric;
use crate::offsets::{OffsetAdvance, StoredOffset};

use super::offsets::{OffsetScope, stored_offset};
use super::{DbError, Timeouts, connect, summaries, within};

/// A row the writer stores: a metric, perhaps with where it was consumed.
pub trait AsMetric {
    fn metric(&self) -> &ValidMetric;
}

impl AsMetric for ValidMetric {
    fn metric(&self) -> &ValidMetric {
        self
    }
}

impl<T> AsMetric for (ValidMetric, T) {
    fn metric(&self) -> &ValidMetric {
        &self.0
    }
}

/// What a write did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WriteOutcome {
    /// Committed; `inserted` rows were new, the rest were already stored.
    Stored { inserted: u64 },
    /// Nothing committed: the stored offset of a partition was not the expected one but
    /// this.
    Fenced(StoredOffset),
}

const STAGING_TABLE: &str = "CREATE TEMP TABLE incoming_metrics
    (LIKE system_metrics INCLUDING DEFAULTS) ON COMMIT DELETE ROWS";
const DIRECT_COPY_STATEMENT: &str = "COPY system_metrics (time, service, pod_name, cpu, memory, namespace, node_name) FROM STDIN (FORMAT binary)";
const COPY_STATEMENT: &str = "COPY incoming_metrics (time, service, pod_name, cpu, memory, namespace, node_name) FROM STDIN (FORMAT binary)";
const MERGE_STATEMENT: &str =
    "INSERT INTO system_metrics (time, service, pod_name, cpu, memory, namespace, node_name)
    SELECT time, service, pod_name, cpu, memory, namespace, node_name FROM incoming_metrics
    ON CONFLICT (pod_name, time, namespace, service) DO NOTHING";
/// Moves every partition of a flush in one statement and answers with those that moved: an
/// existing offset only from the expected value, a missing one only if still missing.
const ADVANCE_STATEMENT: &str = "WITH moves AS (
        SELECT * FROM unnest($3::int4[], $4::int8[], $5::int8[]) AS m (partition, expected, next)
    ), updated AS (
        UPDATE kafka_offsets o SET next_offset = m.next, updated_at = now()
        FROM moves m
        WHERE o.consumer_group = $1 AND o.topic = $2 AND o.partition = m.partition
          AND o.next_offset = m.expected
        RETURNING o.partition
    ), inserted AS (
        INSERT INTO kafka_offsets (consumer_group, topic, partition, next_offset)
        SELECT $1, $2, m.partition, m.next FROM moves m WHERE m.expected IS NULL
        ON CONFLICT DO NOTHING
        RETURNING partition
    )
    SELECT partition FROM updated UNION ALL SELECT partition FROM inserted";
/// The start of a binary COPY stream: its signature, no flags, no header extension.
const COPY_HEADER: &[u8] = b"PGCOPY\n\xff\r\n\0\0\0\0\0\0\0\0\0";
/// How much COPY data is encoded before it is handed to the connection: big enough that the
/// hand-over costs little a row, small enough that encoding overlaps the sending.
pub const COPY_PIECE_BYTES: usize = 64 * 1024;
/// Microseconds from the Unix epoch to PostgreSQL's, 2000-01-01 00:00 UTC.
const POSTGRES_EPOCH_MICROS: i64 = 946_684_800_000_000;

/// The batch writer's connection: its session-local staging table and its statements,
/// prepared once.
pub struct Writer {
    client: Client,
    direct_copy: Statement,
    staging_copy: Statement,
    merge: Statement,
    advance: Statement,
    /// Adds a batch's time range to the pending ranges of the minute summaries.
    log_pending: Statement,
    /// The server's session behind this connection, so that a later connection can end it.
    session: Session,
    timeouts: Timeouts,
    /// Set when a round trip went unanswered: the connection is given up, whatever state the
    /// server is in.
    abandoned: bool,
    /// Set when the server refused a COPY before it began: the connection is out of step
    /// ([`DbError::CopyRefused`]) and is dropped rather than used again.
    out_of_step: bool,
}

/// A server session (backend process) of the writer, told apart from a later one that reuses
/// its process id by its start time.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Session {
    pid: i32,
    started: f64,
}

impl Session {
    /// The server's process id, for logs.
    pub fn pid(&self) -> i32 {
        self.pid
    }
}

impl Writer {
    /// Opens the connection (its driver task runs on the current runtime) and prepares it.
    pub async fn connect(url: &str, timeouts: &Timeouts) -> Result<Writer, DbError> {
        let client = connect(url, timeouts).await?;
        let limit = timeouts.statement;
        within(limit, "the set-up", client.batch_execute(STAGING_TABLE)).await?;
        let session = within(
            limit,
            "the set-up",
            client.query_one(
                "SELECT pid, extract(epoch FROM backend_start)::float8 FROM pg_stat_activity
                 WHERE pid = pg_backend_pid()",
                &[],
            ),
        )
        .await?;
        let prepare = |sql| within(limit, "the set-up", client.prepare(sql));
        Ok(Writer {
            direct_copy: prepare(DIRECT_COPY_STATEMENT).await?,
            staging_copy: prepare(COPY_STATEMENT).await?,
            merge: prepare(MERGE_STATEMENT).await?,
            advance: prepare(ADVANCE_STATEMENT).await?,
            log_pending: prepare(summaries::LOG_PENDING).await?,
            session: Session {
                pid: session.get(0),
                started: session.get(1),
            },
            timeouts: *timeouts,
            abandoned: false,
            out_of_step: false,
            client,
        })
    }

    /// Whether the connection is closed, was given up or is out of step: a new one is needed.
    pub fn is_closed(&self) -> bool {
        self.abandoned || self.out_of_step || self.client.is_closed()
    }

    /// Whether the connection was given up because the database stopped answering.
    pub fn is_abandoned(&self) -> bool {
        self.abandoned
    }

    pub fn session(&self) -> Session {
        self.session
    }

    /// Ends a session of an abandoned connection if the server still runs it. The server may
    /// not have noticed that the client is gone (it waits for the rest of a COPY, or for the
    /// commit, holding its locks: the rows of the batch in the unique index), and the same
    /// batch written again on this connection would wait for it. Answers whether it was
    /// running.
    pub async fn end_session(&mut self, stale: Session) -> Result<bool, DbError> {
        let ended = self
            .round_trip(
                "ending the abandoned session",
                self.client.query_opt(
                    "SELECT pg_terminate_backend(pid) FROM pg_stat_activity
                     WHERE pid = $1 AND extract(epoch FROM backend_start)::float8 = $2",
                    &[&stale.pid, &stale.started],
                ),
            )
            .await;
        if matches!(ended, Err(DbError::Timeout { .. })) {
            self.abandoned = true;
        }
        Ok(ended?.is_some_and(|row| row.get::<_, bool>(0)))
    }

    /// Stores `rows` and advances the partitions' stored offsets, in one transaction: either
    /// all of it is committed or none. Rows go by binary COPY straight into `system_metrics`;
    /// if one of them is stored already, the transaction is rolled back and the batch goes
    /// instead through the session-local staging table into `system_metrics`, skipping those
    /// stored, since COPY itself cannot skip conflicts.
    ///
    /// A round trip that goes unanswered within the statement timeout abandons the connection
    /// ([`Writer::is_closed`]); whether the transaction was committed is then unknown, and
    /// writing the batch again is safe: its offset moves are fenced, so a commit that did
    /// happen makes the retry [`WriteOutcome::Fenced`] instead of storing the rows twice.
    pub async fn write_batch(
        &mut self,
        rows: &[impl AsMetric],
        scope: &OffsetScope,
        advances: &[OffsetAdvance],
    ) -> Result<WriteOutcome, DbError> {
        let outcome = match self.write(rows, scope, advances, false).await {
            Err(e) if e.code() == Some(&SqlState::UNIQUE_VIOLATION) => {
                // Most batches hold no metric stored before; one that does (a redelivery)
                // goes the slower way.
                self.rollback().await;
                self.write(rows, scope, advances, true).await
            }
            outcome => outcome,
        };
        let outcome = match outcome {
            Ok(WriteOutcome::Stored { inserted }) => self
                .round_trip("the commit", self.client.batch_execute("COMMIT"))
                .await
                .map(|()| WriteOutcome::Stored { inserted }),
            Ok(fenced) => {
                self.rollback().await;
                Ok(fenced)
            }
            // An unanswered connection is given up as it is; its server session, if it still
            // runs, is ended by the next one (see `end_session`).
            Err(e @ DbError::Timeout { .. }) => Err(e),
            // Nothing more is sent on a connection out of step; the server ends its
            // transaction when the connection is dropped.
            Err(e @ DbError::CopyRefused(_)) => {
                self.out_of_step = true;
                Err(e)
            }
            Err(e) => {
                self.rollback().await;
                Err(e)
            }
        };
        if matches!(outcome, Err(DbError::Timeout { .. })) {
            self.abandoned = true;
        }
        outcome
    }

    /// One round trip, bounded by the statement timeout.
    async fn round_trip<T>(
        &self,
        what: &'static str,
        round_trip: impl Future<Output = Result<T, tokio_postgres::Error>>,
    ) -> Result<T, DbError> {
        within(self.timeouts.statement, what, round_trip).await
    }

    /// Everything of [`Writer::write_batch`] but the commit, in a transaction left open.
    async fn write(
        &self,
        rows: &[impl AsMetric],
        scope: &OffsetScope,
        advances: &[OffsetAdvance],
        staged: bool,
    ) -> Result<WriteOutcome, DbError> {
        let client = &self.client;
        // Sent together: the server starts the COPY right after BEGIN, with no round trip
        // between them.
        let begin = client.batch_execute("BEGIN");
        let mut inserted = 0;
        if rows.is_empty() {
            self.round_trip("BEGIN", begin).await?;
        } else {
            let statement = if staged {
                &self.staging_copy
            } else {
                &self.direct_copy
            };
            let copy = async {
                let (begun, copied) =
                    futures_util::join!(begin, copy_rows(client, statement, rows));
                begun?;
                copied
            };
            inserted = within(self.timeouts.statement, "the COPY", copy).await?;
            if staged {
                inserted = self
                    .round_trip("the merge", client.execute(&self.merge, &[]))
                    .await?;
            }
        }
        // The minutes of the rows stored are pending from this same transaction on, so a
        // reader never takes their summaries for exact once it commits. The range goes with
        // the offset moves, pipelined: no round trip of its own.
        let pending = (inserted > 0)
            .then(|| summaries::time_range(rows))
            .flatten();
        let log_pending = async {
            match &pending {
                Some((from, to)) => client.execute(&self.log_pending, &[from, to]).await,
                None => Ok(0),
            }
        };
        if advances.is_empty() {
            self.round_trip("the pending range", log_pending).await?;
            return Ok(WriteOutcome::Stored { inserted });
        }
        let partitions: Vec<i32> = advances.iter().map(|a| a.partition).collect();
        let expected: Vec<Option<i64>> = advances.iter().map(|a| a.expected).collect();
        let next: Vec<i64> = advances.iter().map(|a| a.next).collect();
        let moves: [&(dyn ToSql + Sync); 5] =
            [&scope.group, &scope.topic, &partitions, &expected, &next];
        let advance = client.query(&self.advance, &moves);
        let both = async {
            let (moved, logged) = futures_util::join!(advance, log_pending);
            let moved = moved?;
            logged?;
            Ok::<_, tokio_postgres::Error>(moved)
        };
        let moved: Vec<i32> = self
            .round_trip("the offset update", both)
            .await?
            .iter()
            .map(|row| row.get(0))
            .collect();
        if let Some(fenced) = partitions.iter().find(|p| !moved.contains(p)) {
            let stored = self
                .round_trip("the offset lookup", stored_offset(client, scope, *fenced))
                .await?;
            return Ok(WriteOutcome::Fenced(stored));
        }
        Ok(WriteOutcome::Stored { inserted })
    }

    /// Ends a failed or fenced transaction; a broken connection shows in [`Writer::is_closed`].
    async fn rollback(&mut self) {
        match self
            .round_trip("the rollback", self.client.batch_execute("ROLLBACK"))
            .await
        {
            Ok(()) => {}
            Err(e) => {
                log::debug!("rollback failed: {e}");
                if matches!(e, DbError::Timeout { .. }) {
                    self.abandoned = true;
                }
            }
        }
    }
}

/// Binary COPY of `rows` by `statement`; answers with the number of rows copied.
async fn copy_rows(
    client: &Client,
    statement: &Statement,
    rows: &[impl AsMetric],
) -> Result<u64, DbError> {
    let sink = client
        .copy_in::<_, Bytes>(statement)
        .await
        .map_err(DbError::CopyRefused)?;
    pin_mut!(sink);
    let mut buf = BytesMut::with_capacity(COPY_PIECE_BYTES.min(rows.len() * 128 + 32));
    buf.put_slice(COPY_HEADER);
    for row in rows {
        encode_copy_row(&mut buf, row.metric());
        if buf.len() >= COPY_PIECE_BYTES {
            sink.send(buf.split().freeze()).await?;
        }
    }
    // The trailer: a row of -1 columns.
    buf.put_i16(-1);
    sink.send(buf.split().freeze()).await?;
    Ok(sink.as_mut().finish().await?)
}

/// Appends `row` to a binary COPY stream in the column order of the COPY statements (time,
/// service, pod_name, cpu, memory, namespace, node_name): each column its length, then its
/// value as PostgreSQL's binary format has it (timestamptz: microseconds since 2000-01-01;
/// float8: big-endian IEEE 754; text: its UTF-8 bytes), written straight into the buffer.
pub fn encode_copy_row(buf: &mut BytesMut, row: &ValidMetric) {
    buf.reserve(
        2 + 7 * 4
            + 3 * 8
            + row.service().len()
            + row.pod_name().len()
            + row.namespace().len()
            + row.node_name().len(),
    );
    buf.put_i16(7);
    buf.put_i32(8);
    buf.put_i64(row.time().timestamp_micros() - POSTGRES_EPOCH_MICROS);
    put_text(buf, row.service());
    put_text(buf, row.pod_name());
    buf.put_i32(8);
    buf.put_f64(row.cpu());
    buf.put_i32(8);
    buf.put_f64(row.memory());
    put_text(buf, row.namespace());
    put_text(buf, row.node_name());
}

/// A text column: names are at most [`crate::domain::MAX_NAME_CHARS`] characters, so the
/// length fits.
fn put_text(buf: &mut BytesMut, text: &str) {
    buf.put_i32(text.len() as i32);
    buf.put_slice(text.as_bytes());
}

#[cfg(test)]
mod tests {
    use tokio_postgres::types::{ToSql, Type};

    use super::*;
    use crate::domain::{Rules, ValidMetric};

    /// The row as tokio-postgres' own encoders write it, the way its `BinaryCopyInWriter` does.
    fn encoded_by_tokio_postgres(row: &ValidMetric) -> BytesMut {
        let time = row.time();
        let values: [(&(dyn ToSql + Sync), Type); 7] = [
            (&time, Type::TIMESTAMPTZ),
            (&row.service(), Type::TEXT),
            (&row.pod_name(), Type::TEXT),
            (&row.cpu(), Type::FLOAT8),
            (&row.memory(), Type::FLOAT8),
            (&row.namespace(), Type::TEXT),
            (&row.node_name(), Type::TEXT),
        ];
        let mut buf = BytesMut::new();
        buf.put_i16(7);
        for (value, ty) in values {
            let at = buf.len();
            buf.put_i32(0);
            value.to_sql_checked(&ty, &mut buf).unwrap();
            let len = (buf.len() - at - 4) as i32;
            buf[at..at + 4].copy_from_slice(&len.to_be_bytes());
        }
        buf
    }

    #[test]
    fn a_row_is_encoded_as_tokio_postgres_encodes_it() {
        let rules = Rules {
            max_future_skew_ms: i64::MAX / 4,
            max_age_ms: None,
        };
        for (time_ms, pod, cpu) in [
            (0_i64, "p", "0"),
            (1, "pod-\\u00e9-1", "100"),
            (946_684_799_999, "before-2000", "0.1"),
            (1_730_707_200_123, "test-pod-123", "78.5"),
            (253_402_300_799_999, "year-9999", "33.333333333333336"),
        ] {
            let payload = format!(
                r#"{{"timestamp":{time_ms},"service":"s","podName":"{pod}","namespace":"default","nodeName":"n","cpu":{cpu},"memory":1e3}}"#
            );
            let row = ValidMetric::parse(payload.as_bytes(), &rules, 0).unwrap();
            let mut ours = BytesMut::new();
            encode_copy_row(&mut ours, &row);
            assert_eq!(ours, encoded_by_tokio_postgres(&row), "{payload}");
        }
    }
}

//! Everything that talks to PostgreSQL: connecting, migrating, and the batch insert path.
//! Only the batch writer writes rows, through [`Writer`].

use std::time::Duration;

use diesel::connection::SimpleConnection;
use diesel_async::AsyncPgConnection;
use diesel_async::async_connection_wrapper::AsyncConnectionWrapper;
use diesel_migrations::{EmbeddedMigrations, MigrationHarness, embed_migrations};
use futures_util::pin_mut;
use tokio_postgres::binary_copy::BinaryCopyInWriter;
use tokio_postgres::error::SqlState;
use tokio_postgres::types::{ToSql, Type};
use tokio_postgres::{Client, Connection, Socket, Statement};

use crate::config::redact_url;
use crate::domain::ValidMetric;

pub mod queries;
pub mod timescale;
pub mod tls;

pub const MIGRATIONS: EmbeddedMigrations = embed_migrations!("migrations");

/// Any number that fits in a bigint; the same for every Panopticon, so that instances
/// starting together migrate one after the other.
const MIGRATION_LOCK_KEY: i64 = 0x5041_4e4f_5054_4943;

#[derive(Debug, thiserror::Error)]
pub enum DbError {
    #[error("database URL is malformed: {0}")]
    BadUrl(String),
    #[error("cannot connect to the database at {url}: {}", describe(.source))]
    Connect {
        url: String,
        source: tokio_postgres::Error,
    },
    #[error(
        "the database server's certificate does not verify (sslmode={mode}) at {url}: {reason}; connection refused"
    )]
    Certificate {
        url: String,
        mode: &'static str,
        reason: String,
    },
    #[error(
        "the database server at {url} requires TLS but DATABASE_URL says sslmode=disable: {}", describe(.source)
    )]
    TlsRequired {
        url: String,
        source: tokio_postgres::Error,
    },
    #[error("migrations failed on {url}: {message}")]
    Migrate { url: String, message: String },
    #[error("{}", describe(.0))]
    Query(#[from] tokio_postgres::Error),
    #[error("{0}")]
    Internal(String),
}

impl DbError {
    /// Whether retrying the same thing later may succeed: the database is unreachable,
    /// restarting or timing out, rather than refusing the data.
    pub fn is_transient(&self) -> bool {
        match self {
            DbError::BadUrl(_) => false,
            DbError::Internal(_) => true,
            DbError::Connect { .. }
            | DbError::Certificate { .. }
            | DbError::TlsRequired { .. }
            | DbError::Migrate { .. } => true,
            DbError::Query(e) => is_transient(e),
        }
    }
}

/// Transient: the connection is gone, or the server says it is shutting down, out of
/// resources, or cancelled the statement. Data errors (class 22, 23) are not.
pub fn is_transient(error: &tokio_postgres::Error) -> bool {
    if error.is_closed() {
        return true;
    }
    match error.code() {
        None => true,
        Some(code) => {
            let class = &code.code()[..2];
            matches!(class, "08" | "53" | "57" | "58" | "40")
        }
    }
}

/// The server's own message where there is one ("db error" says nothing); otherwise the error
/// with its causes, which tokio-postgres leaves out of its own message ("error performing TLS
/// handshake" says nothing either).
pub fn describe(error: &tokio_postgres::Error) -> String {
    match error.as_db_error() {
        Some(db) => {
            let mut text = format!(
                "{}: {} (SQLSTATE {})",
                db.severity(),
                db.message(),
                db.code().code()
            );
            if let Some(detail) = db.detail() {
                text.push_str(&format!("; {detail}"));
            }
            text
        }
        None => {
            let mut text = error.to_string();
            let mut cause = std::error::Error::source(error);
            while let Some(inner) = cause {
                let more = inner.to_string();
                if !text.contains(&more) {
                    text.push_str(": ");
                    text.push_str(&more);
                }
                cause = inner.source();
            }
            text
        }
    }
}

/// Checks the URL and the certificate files it names without connecting, so that a mistake
/// is a configuration error.
pub fn check_url(url: &str) -> Result<(), DbError> {
    tls::Target::parse(url).map(|_| ())
}

/// Opens a connection as the URL says, TLS included; the caller drives the connection. Every
/// connection of the service is opened here.
async fn open(
    url: &str,
) -> Result<
    (
        Client,
        Connection<Socket, postgres_openssl::TlsStream<Socket>>,
    ),
    DbError,
> {
    let target = tls::Target::parse(url)?;
    let mut config = target.config.clone();
    config.connect_timeout(Duration::from_secs(5));
    config.application_name("panopticon");
    config
        .connect(target.tls.clone())
        .await
        .map_err(|source| target.connect_error(source))
}

/// Opens a connection for the batch writer; its driver task runs on the current runtime.
pub async fn connect(url: &str) -> Result<Client, DbError> {
    let (client, connection) = open(url).await?;
    tokio::spawn(async move {
        if let Err(e) = connection.await {
            log::debug!("database connection closed: {e}");
        }
    });
    Ok(client)
}

/// A diesel connection (migrations, the REST API's pool), opened like every other.
pub async fn connect_diesel(url: &str) -> diesel::ConnectionResult<AsyncPgConnection> {
    let (client, connection) = open(url)
        .await
        .map_err(|e| diesel::ConnectionError::BadConnection(e.to_string()))?;
    AsyncPgConnection::try_from_client_and_connection(client, connection).await
}

/// Applies the embedded migrations under an advisory lock, so that several instances may
/// start at once. Runs on a thread of its own: diesel's migration harness is synchronous.
pub async fn migrate(url: &str) -> Result<(), DbError> {
    let url = url.to_owned();
    let (tx, rx) = tokio::sync::oneshot::channel();
    std::thread::spawn(move || {
        let _ = tx.send(migrate_blocking(&url));
    });
    rx.await.unwrap_or_else(|_| {
        Err(DbError::Migrate {
            url: String::new(),
            message: "migration thread died".into(),
        })
    })
}

fn migrate_blocking(url: &str) -> Result<(), DbError> {
    let failed = |message: String| DbError::Migrate {
        url: redact_url(url),
        message,
    };
    // The synchronous wrapper blocks on the runtime it is created in; a multi-threaded one
    // keeps driving the connection meanwhile.
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .map_err(|e| failed(e.to_string()))?;
    let _entered = runtime.enter();
    let connection = runtime.block_on(async {
        let (client, connection) = open(url).await?;
        AsyncPgConnection::try_from_client_and_connection(client, connection)
            .await
            .map_err(|e| failed(e.to_string()))
    })?;
    let mut conn = AsyncConnectionWrapper::<AsyncPgConnection>::from(connection);
    conn.batch_execute(&format!("SELECT pg_advisory_lock({MIGRATION_LOCK_KEY})"))
        .map_err(|e| failed(e.to_string()))?;
    let result = conn
        .run_pending_migrations(MIGRATIONS)
        .map(|applied| {
            for version in applied {
                log::info!("applied migration {version}");
            }
        })
        .map_err(|e| failed(e.to_string()));
    let _ = conn.batch_execute(&format!("SELECT pg_advisory_unlock({MIGRATION_LOCK_KEY})"));
    result
}

/// Where rows go: a TimescaleDB hypertable or a plain PostgreSQL table.
#[derive(Debug, Clone)]
pub struct Storage {
    pub hypertable: bool,
    /// For the log and `/status`.
    pub description: String,
}

/// Says whether rows go to a TimescaleDB hypertable or a plain PostgreSQL table.
pub async fn describe_storage(client: &Client) -> Result<Storage, DbError> {
    let row = client
        .query_one(
            "SELECT (SELECT extversion FROM pg_extension WHERE extname = 'timescaledb'),
                    to_regclass('timescaledb_information.hypertables') IS NOT NULL",
            &[],
        )
        .await?;
    let version: Option<String> = row.get(0);
    let Some(version) = version else {
        return Ok(Storage {
            hypertable: false,
            description: "plain PostgreSQL table (timescaledb extension not available)".into(),
        });
    };
    let hypertable: bool = client
        .query_one(
            "SELECT EXISTS (SELECT 1 FROM timescaledb_information.hypertables
                            WHERE hypertable_name = 'system_metrics')",
            &[],
        )
        .await?
        .get(0);
    let description = if hypertable {
        format!("TimescaleDB {version} hypertable")
    } else {
        format!("plain PostgreSQL table (TimescaleDB {version} present, not a hypertable)")
    };
    Ok(Storage {
        hypertable,
        description,
    })
}

/// Where the offsets of one flush go: the group and topic they belong to.
#[derive(Debug, Clone)]
pub struct OffsetScope {
    pub group: String,
    pub topic: String,
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

/// What a write did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WriteOutcome {
    /// Committed; `inserted` rows were new, the rest were already stored.
    Stored { inserted: u64 },
    /// Nothing committed: the stored offset of `partition` was not the expected one but
    /// `stored`.
    Fenced { partition: i32, stored: Option<i64> },
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
const COPY_TYPES: [Type; 7] = [
    Type::TIMESTAMPTZ,
    Type::TEXT,
    Type::TEXT,
    Type::FLOAT8,
    Type::FLOAT8,
    Type::TEXT,
    Type::TEXT,
];

/// The batch writer's connection: its session-local staging table and its statements,
/// prepared once.
pub struct Writer {
    client: Client,
    direct_copy: Statement,
    staging_copy: Statement,
    merge: Statement,
    advance: Statement,
}

impl Writer {
    /// Opens the connection (its driver task runs on the current runtime) and prepares it.
    pub async fn connect(url: &str) -> Result<Writer, DbError> {
        let client = connect(url).await?;
        client.batch_execute(STAGING_TABLE).await?;
        Ok(Writer {
            direct_copy: client.prepare(DIRECT_COPY_STATEMENT).await?,
            staging_copy: client.prepare(COPY_STATEMENT).await?,
            merge: client.prepare(MERGE_STATEMENT).await?,
            advance: client.prepare(ADVANCE_STATEMENT).await?,
            client,
        })
    }

    pub fn is_closed(&self) -> bool {
        self.client.is_closed()
    }

    /// Stores `rows` and advances the partitions' stored offsets, in one transaction: either
    /// all of it is committed or none. Rows go by binary COPY straight into `system_metrics`;
    /// if one of them is stored already, the transaction is rolled back and the batch goes
    /// instead through the session-local staging table into `system_metrics`, skipping those
    /// stored, since COPY itself cannot skip conflicts.
    pub async fn write_batch(
        &mut self,
        rows: &[ValidMetric],
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
        match outcome {
            Ok(WriteOutcome::Stored { inserted }) => {
                self.client.batch_execute("COMMIT").await?;
                Ok(WriteOutcome::Stored { inserted })
            }
            Ok(fenced) => {
                self.rollback().await;
                Ok(fenced)
            }
            Err(e) => {
                self.rollback().await;
                Err(e.into())
            }
        }
    }

    /// Everything of [`Writer::write_batch`] but the commit, in a transaction left open.
    async fn write(
        &self,
        rows: &[ValidMetric],
        scope: &OffsetScope,
        advances: &[OffsetAdvance],
        staged: bool,
    ) -> Result<WriteOutcome, tokio_postgres::Error> {
        let client = &self.client;
        // Sent together: the server starts the COPY right after BEGIN, with no round trip
        // between them.
        let begin = client.batch_execute("BEGIN");
        let mut inserted = 0;
        if rows.is_empty() {
            begin.await?;
        } else {
            let statement = if staged {
                &self.staging_copy
            } else {
                &self.direct_copy
            };
            let (begun, copied) = futures_util::join!(begin, copy_rows(client, statement, rows));
            begun?;
            inserted = copied?;
            if staged {
                inserted = client.execute(&self.merge, &[]).await?;
            }
        }
        if advances.is_empty() {
            return Ok(WriteOutcome::Stored { inserted });
        }
        let partitions: Vec<i32> = advances.iter().map(|a| a.partition).collect();
        let expected: Vec<Option<i64>> = advances.iter().map(|a| a.expected).collect();
        let next: Vec<i64> = advances.iter().map(|a| a.next).collect();
        let moved: Vec<i32> = client
            .query(
                &self.advance,
                &[&scope.group, &scope.topic, &partitions, &expected, &next],
            )
            .await?
            .iter()
            .map(|row| row.get(0))
            .collect();
        if let Some(fenced) = partitions.iter().find(|p| !moved.contains(p)) {
            let stored = stored_offset(client, scope, *fenced).await?;
            return Ok(WriteOutcome::Fenced {
                partition: *fenced,
                stored,
            });
        }
        Ok(WriteOutcome::Stored { inserted })
    }

    /// Ends a failed or fenced transaction; a broken connection shows in [`Writer::is_closed`].
    async fn rollback(&self) {
        if let Err(e) = self.client.batch_execute("ROLLBACK").await {
            log::debug!("rollback failed: {e}");
        }
    }
}

/// Binary COPY of `rows` by `statement`; answers with the number of rows copied.
async fn copy_rows(
    client: &Client,
    statement: &Statement,
    rows: &[ValidMetric],
) -> Result<u64, tokio_postgres::Error> {
    let sink = client.copy_in(statement).await?;
    let writer = BinaryCopyInWriter::new(sink, &COPY_TYPES);
    pin_mut!(writer);
    for row in rows {
        let time = row.time();
        let values: [&(dyn ToSql + Sync); 7] = [
            &time,
            &row.service(),
            &row.pod_name(),
            &row.cpu(),
            &row.memory(),
            &row.namespace(),
            &row.node_name(),
        ];
        writer.as_mut().write(&values).await?;
    }
    writer.finish().await
}

async fn stored_offset(
    client: &impl tokio_postgres::GenericClient,
    scope: &OffsetScope,
    partition: i32,
) -> Result<Option<i64>, tokio_postgres::Error> {
    Ok(client
        .query_opt(
            "SELECT next_offset FROM kafka_offsets
             WHERE consumer_group = $1 AND topic = $2 AND partition = $3",
            &[&scope.group, &scope.topic, &partition],
        )
        .await?
        .map(|row| row.get(0)))
}

/// The stored next offsets of `partitions` (`None`: nothing stored yet), read on a connection
/// of its own. Runs on a thread of its own so it can be called from librdkafka's rebalance
/// callback, which must not return before the offsets are known.
pub fn stored_offsets_blocking(
    url: &str,
    scope: &OffsetScope,
    partitions: &[i32],
) -> Result<Vec<(i32, Option<i64>)>, DbError> {
    let url = url.to_owned();
    let scope = scope.clone();
    let partitions = partitions.to_vec();
    std::thread::spawn(move || {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(|e| DbError::Internal(e.to_string()))?;
        runtime.block_on(async {
            let client = connect(&url).await?;
            let mut offsets = Vec::with_capacity(partitions.len());
            for partition in partitions {
                offsets.push((partition, stored_offset(&client, &scope, partition).await?));
            }
            Ok(offsets)
        })
    })
    .join()
    .unwrap_or_else(|_| Err(DbError::Internal("offset lookup thread died".into())))
}

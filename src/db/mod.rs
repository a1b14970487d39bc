//! Everything that talks to PostgreSQL: connecting, migrating, and the batch insert path.
//! Only the batch writer writes rows, through [`Writer`].

use std::future::Future;
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
use crate::offsets::{OffsetAdvance, StoredOffsets};

pub mod queries;
pub mod summaries;
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
    /// No answer in time: the connection may be dead without being closed (a firewall or NAT
    /// dropping packets, a server failing over), so it is given up.
    #[error("the database did not answer {what} within {} ms", .limit.as_millis())]
    Timeout { what: &'static str, limit: Duration },
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
            DbError::Timeout { .. } => true,
        }
    }

    /// The SQLSTATE of an error the server sent.
    fn code(&self) -> Option<&SqlState> {
        match self {
            DbError::Query(e) => e.code(),
            _ => None,
        }
    }
}

/// How long the service waits on the database. TCP keep-alive alone would take two hours to
/// notice a connection that died silently (Linux's default), and a query waits for its answer
/// as long as the connection lives, so every round trip has a bound of its own.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Timeouts {
    /// Connecting: TCP, TLS, authentication and the start-up exchange.
    pub connect: Duration,
    /// One round trip on an open connection: a statement, a COPY, a commit.
    pub statement: Duration,
    /// A connection silent this long is probed by TCP keep-alive, every third of it after, and
    /// closed by the kernel after three unanswered probes.
    pub keepalive: Duration,
}

impl Default for Timeouts {
    fn default() -> Timeouts {
        Timeouts {
            connect: Duration::from_secs(5),
            statement: Duration::from_secs(30),
            keepalive: Duration::from_secs(10),
        }
    }
}

impl Timeouts {
    /// Applies the network bounds to a connection's configuration: the TCP connect, keep-alive
    /// probes of an idle connection, and how long sent data may stay unacknowledged before the
    /// kernel gives the connection up.
    pub fn apply(&self, config: &mut tokio_postgres::Config) {
        config.connect_timeout(self.connect);
        config.keepalives(true);
        config.keepalives_idle(self.keepalive);
        config.keepalives_interval((self.keepalive / 3).max(Duration::from_secs(1)));
        config.keepalives_retries(3);
        config.tcp_user_timeout(self.statement);
    }
}

/// Waits at most `limit` for one round trip; past it the connection must be given up, since
/// the answer may still come later and belong to nothing.
pub async fn within<T, E: Into<DbError>>(
    limit: Duration,
    what: &'static str,
    round_trip: impl Future<Output = Result<T, E>>,
) -> Result<T, DbError> {
    match tokio::time::timeout(limit, round_trip).await {
        Ok(result) => result.map_err(Into::into),
        Err(_) => Err(DbError::Timeout { what, limit }),
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
    timeouts: &Timeouts,
) -> Result<
    (
        Client,
        Connection<Socket, postgres_openssl::TlsStream<Socket>>,
    ),
    DbError,
> {
    let target = tls::Target::parse(url)?;
    let mut config = target.config.clone();
    timeouts.apply(&mut config);
    config.application_name("panopticon");
    // The connect timeout bounds only the TCP connect; a server that accepts and then says
    // nothing would hold the start-up exchange forever.
    let connecting = async {
        config
            .connect(target.tls.clone())
            .await
            .map_err(|source| target.connect_error(source))
    };
    within(timeouts.connect, "the connection", connecting).await
}

/// Opens a connection bounded by `timeouts`; its driver task runs on the current runtime.
pub async fn connect(url: &str, timeouts: &Timeouts) -> Result<Client, DbError> {
    let (client, connection) = open(url, timeouts).await?;
    tokio::spawn(async move {
        if let Err(e) = connection.await {
            log::debug!("database connection closed: {e}");
        }
    });
    Ok(client)
}

/// A diesel connection (migrations, the REST API's pool), opened like every other.
pub async fn connect_diesel(
    url: &str,
    timeouts: Timeouts,
) -> diesel::ConnectionResult<AsyncPgConnection> {
    let (client, connection) = open(url, &timeouts)
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
        // Migrations may rightly take long: only the connect and keep-alive bound them.
        let (client, connection) = open(url, &Timeouts::default()).await?;
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

/// Says whether rows go to a TimescaleDB hypertable or a plain PostgreSQL table, and why a
/// plain table where the server has TimescaleDB.
pub async fn describe_storage(client: &Client) -> Result<Storage, DbError> {
    let server = timescale::ServerState::read(client).await?;
    let plain = |why: String| Storage {
        hypertable: false,
        description: format!("plain PostgreSQL table ({why})"),
    };
    let Some(available) = &server.available else {
        return Ok(plain("timescaledb extension not available".into()));
    };
    if !server.preloaded {
        return Ok(plain(format!(
            "TimescaleDB {available} installed but not in shared_preload_libraries"
        )));
    }
    let Some(version) = &server.created else {
        return Ok(plain(format!(
            "TimescaleDB {available} available, extension not created"
        )));
    };
    Ok(if server.hypertable {
        Storage {
            hypertable: true,
            description: format!("TimescaleDB {version} hypertable"),
        }
    } else {
        plain(format!("TimescaleDB {version} present, not a hypertable"))
    })
}

/// Where the offsets of one flush go: the group and topic they belong to.
#[derive(Debug, Clone)]
pub struct OffsetScope {
    pub group: String,
    pub topic: String,
}

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
    /// Adds a batch's time range to the pending ranges of the minute summaries.
    log_pending: Statement,
    /// The server's session behind this connection, so that a later connection can end it.
    session: Session,
    timeouts: Timeouts,
    /// Set when a round trip went unanswered: the connection is given up, whatever state the
    /// server is in.
    abandoned: bool,
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
            client,
        })
    }

    /// Whether the connection is closed or was given up: a new one is needed.
    pub fn is_closed(&self) -> bool {
        self.abandoned || self.client.is_closed()
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
            inserted = self.round_trip("the COPY", copy).await?;
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
            return Ok(WriteOutcome::Fenced {
                partition: *fenced,
                stored,
            });
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
) -> Result<u64, tokio_postgres::Error> {
    let sink = client.copy_in(statement).await?;
    let writer = BinaryCopyInWriter::new(sink, &COPY_TYPES);
    pin_mut!(writer);
    for row in rows {
        let row = row.metric();
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

/// Reads the stored offsets of a consumer group's partitions, each time on a connection of its
/// own, on a thread of its own: it is called from librdkafka's rebalance callback, which must
/// not return before the offsets are known.
pub struct OffsetReader {
    pub url: String,
    pub timeouts: Timeouts,
    pub scope: OffsetScope,
}

impl StoredOffsets for OffsetReader {
    fn read(&self, partitions: &[i32]) -> Result<Vec<(i32, Option<i64>)>, String> {
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
                    offsets.push((partition, stored));
                }
                Ok(offsets)
            })
        })
        .join()
        .unwrap_or_else(|_| Err(DbError::Internal("offset lookup thread died".into())))
        .map_err(|e| e.to_string())
    }
}

//! Everything that talks to PostgreSQL: connecting, migrating, and the batch insert path.
//! Only the batch writer calls [`write_batch`].

use std::str::FromStr;
use std::time::Duration;

use diesel::Connection;
use diesel::connection::SimpleConnection;
use diesel_async::AsyncPgConnection;
use diesel_async::async_connection_wrapper::AsyncConnectionWrapper;
use diesel_migrations::{EmbeddedMigrations, MigrationHarness, embed_migrations};
use futures_util::pin_mut;
use tokio_postgres::binary_copy::BinaryCopyInWriter;
use tokio_postgres::types::{ToSql, Type};
use tokio_postgres::{Client, NoTls};

use crate::config::redact_url;
use crate::domain::ValidMetric;

pub mod queries;
pub mod timescale;

pub const MIGRATIONS: EmbeddedMigrations = embed_migrations!("migrations");

/// Any number that fits in a bigint; the same for every Panopticon, so that instances
/// starting together migrate one after the other.
const MIGRATION_LOCK_KEY: i64 = 0x5041_4e4f_5054_4943;

#[derive(Debug, thiserror::Error)]
pub enum DbError {
    #[error("database URL is malformed: {0}")]
    BadUrl(String),
    #[error("cannot connect to the database at {url}: {source}")]
    Connect {
        url: String,
        source: tokio_postgres::Error,
    },
    #[error("migrations failed on {url}: {message}")]
    Migrate { url: String, message: String },
    #[error(transparent)]
    Query(#[from] tokio_postgres::Error),
}

impl DbError {
    /// Whether retrying the same thing later may succeed: the database is unreachable,
    /// restarting or timing out, rather than refusing the data.
    pub fn is_transient(&self) -> bool {
        match self {
            DbError::BadUrl(_) => false,
            DbError::Connect { .. } | DbError::Migrate { .. } => true,
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

/// Checks the URL without connecting, so a malformed one is a configuration error.
pub fn check_url(url: &str) -> Result<(), DbError> {
    tokio_postgres::Config::from_str(url)
        .map(|_| ())
        .map_err(|e| DbError::BadUrl(format!("{} ({e})", redact_url(url))))
}

/// Opens a connection for the batch writer; its driver task runs on the current runtime.
pub async fn connect(url: &str) -> Result<Client, DbError> {
    let config = tokio_postgres::Config::from_str(url)
        .map_err(|e| DbError::BadUrl(format!("{} ({e})", redact_url(url))))?;
    let mut config = config;
    config.connect_timeout(Duration::from_secs(5));
    config.application_name("panopticon");
    let (client, connection) = config
        .connect(NoTls)
        .await
        .map_err(|source| DbError::Connect {
            url: redact_url(url),
            source,
        })?;
    tokio::spawn(async move {
        if let Err(e) = connection.await {
            log::debug!("database connection closed: {e}");
        }
    });
    Ok(client)
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
    let mut conn = AsyncConnectionWrapper::<AsyncPgConnection>::establish(url)
        .map_err(|e| failed(e.to_string()))?;
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

const COPY_STATEMENT: &str = "COPY system_metrics (time, service, pod_name, cpu, memory, namespace, node_name) FROM STDIN (FORMAT binary)";
const COPY_TYPES: [Type; 7] = [
    Type::TIMESTAMPTZ,
    Type::TEXT,
    Type::TEXT,
    Type::FLOAT8,
    Type::FLOAT8,
    Type::TEXT,
    Type::TEXT,
];

/// Stores `rows` and advances each partition's stored offset to `next_offsets`, in one
/// transaction: either all of it is committed or none.
pub async fn write_batch(
    client: &mut Client,
    rows: &[ValidMetric],
    scope: &OffsetScope,
    next_offsets: &[(i32, i64)],
) -> Result<(), DbError> {
    let tx = client.transaction().await?;
    if !rows.is_empty() {
        let sink = tx.copy_in(COPY_STATEMENT).await?;
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
        writer.finish().await?;
    }
    if !next_offsets.is_empty() {
        let partitions: Vec<i32> = next_offsets.iter().map(|(p, _)| *p).collect();
        let offsets: Vec<i64> = next_offsets.iter().map(|(_, o)| *o).collect();
        tx.execute(
            "INSERT INTO kafka_offsets (consumer_group, topic, partition, next_offset)
             SELECT $1, $2, p, o FROM unnest($3::int4[], $4::int8[]) AS t(p, o)
             ON CONFLICT (consumer_group, topic, partition)
             DO UPDATE SET next_offset = EXCLUDED.next_offset, updated_at = now()",
            &[&scope.group, &scope.topic, &partitions, &offsets],
        )
        .await?;
    }
    tx.commit().await?;
    Ok(())
}

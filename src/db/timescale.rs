//! TimescaleDB at start-up: adopting it where it became usable after `system_metrics` was
//! made a plain table ([`adopt`]), and, where `system_metrics` is a hypertable, its lifecycle
//! ([`set_up`]): compression of old chunks, retention, and a 1-minute continuous aggregate
//! that the series API reads where it covers a request. On plain PostgreSQL none of this runs.
//!
//! This is done by the service rather than by a migration because TimescaleDB refuses to
//! create a continuous aggregate inside a transaction, and a migration that must also succeed
//! on plain PostgreSQL needs a `DO` block, which is one; and because the ages are settings.

use std::time::Duration;

use tokio_postgres::Client;
use tokio_postgres::error::SqlState;

use crate::config::{PolicyAge, TimescaleSettings};
use crate::db::{DbError, Storage, summaries};

/// Name of the continuous aggregate.
pub(crate) const AGGREGATE: &str = "system_metrics_1m";

const LOCK_KEY: i64 = 0x5041_4e4f_5054_4944;

/// The statement that turns a plain `system_metrics` holding rows into a hypertable; the
/// service runs it itself only on an empty table, since it rewrites every row under a lock.
pub(crate) const CONVERT_STATEMENT: &str = "SELECT create_hypertable('system_metrics', 'time', \
     chunk_time_interval => INTERVAL '1 day', migrate_data => true, create_default_indexes => false)";

/// What the server offers of TimescaleDB.
#[derive(Debug, Clone, Default)]
pub(crate) struct ServerState {
    /// Version of the installed extension package, if any.
    pub available: Option<String>,
    /// Whether `shared_preload_libraries` lists it: without that, `CREATE EXTENSION` ends the
    /// connection with FATAL "extension must be preloaded". A user who may not read that
    /// setting sees instead whether the preloaded library registered its own settings.
    pub preloaded: bool,
    /// Version of the extension created in this database, if it is.
    pub created: Option<String>,
    /// Whether `system_metrics` is a hypertable.
    pub hypertable: bool,
}

impl ServerState {
    pub(crate) async fn read(client: &Client) -> Result<ServerState, DbError> {
        let row = client
            .query_one(
                r#"SELECT (SELECT default_version FROM pg_available_extensions WHERE name = 'timescaledb'),
                          coalesce((SELECT setting ~ '(^|[\s,"/])timescaledb($|[\s,"])' FROM pg_settings
                                    WHERE name = 'shared_preload_libraries'),
                                   EXISTS (SELECT 1 FROM pg_settings
                                           WHERE name = 'timescaledb.max_background_workers'
                                             AND vartype = 'integer')),
                          (SELECT extversion FROM pg_extension WHERE extname = 'timescaledb'),
                          to_regclass('timescaledb_information.hypertables') IS NOT NULL"#,
                &[],
            )
            .await?;
        let mut state = ServerState {
            available: row.get(0),
            preloaded: row.get(1),
            created: row.get(2),
            hypertable: false,
        };
        if state.created.is_some() && row.get::<_, bool>(3) {
            state.hypertable = client
                .query_one(
                    "SELECT EXISTS (SELECT 1 FROM timescaledb_information.hypertables
                                    WHERE hypertable_name = 'system_metrics')",
                    &[],
                )
                .await?
                .get(0);
        }
        Ok(state)
    }
}

/// Makes `system_metrics` a hypertable where TimescaleDB became usable after the table was
/// made plain (installed or preloaded later): an empty table is converted, one holding rows is
/// left as it is with a WARN naming the statement that converts it. Where TimescaleDB is
/// installed but not preloaded, says so in one WARN line with the fix. Runs under the
/// lifecycle's advisory lock, so instances starting together convert once. Answers with the
/// server's state as it is afterwards, for [`super::storage`] to say where rows go.
pub(crate) async fn adopt(client: &Client) -> Result<ServerState, DbError> {
    let state = ServerState::read(client).await?;
    let Some(available) = &state.available else {
        return Ok(state);
    };
    if state.hypertable {
        return Ok(state);
    }
    if !state.preloaded {
        log::warn!(
            "TimescaleDB {available} is installed on the database server but not loaded, so system_metrics stays a plain PostgreSQL table: \
             add shared_preload_libraries = 'timescaledb' to postgresql.conf (or run timescaledb-tune) and restart PostgreSQL to use it"
        );
        return Ok(state);
    }
    client
        .execute("SELECT pg_advisory_lock($1)", &[&LOCK_KEY])
        .await?;
    let result = convert_if_empty(client, state).await;
    let _ = client
        .execute("SELECT pg_advisory_unlock($1)", &[&LOCK_KEY])
        .await;
    result
}

async fn convert_if_empty(client: &Client, before: ServerState) -> Result<ServerState, DbError> {
    if let Err(e) = client
        .batch_execute("CREATE EXTENSION IF NOT EXISTS timescaledb")
        .await
    {
        log::warn!(
            "TimescaleDB is loaded but its extension cannot be created, so system_metrics stays a plain PostgreSQL table: {}; \
             run CREATE EXTENSION timescaledb as a superuser to use it",
            DbError::from(e)
        );
        return Ok(before);
    }
    // Read again: another instance may have converted it while this one waited for the lock.
    let mut state = ServerState::read(client).await?;
    if state.hypertable {
        return Ok(state);
    }
    let empty: bool = client
        .query_one("SELECT NOT EXISTS (SELECT 1 FROM system_metrics)", &[])
        .await?
        .get(0);
    if !empty {
        log::warn!(
            "system_metrics is a plain PostgreSQL table holding rows although TimescaleDB is now available; it stays plain. \
             To convert it, which rewrites every row and locks the table meanwhile, run: {CONVERT_STATEMENT}; \
             (older TimescaleDB versions refuse it while the table has transition-table triggers: first run {})",
            summaries::DROP_REFUSED_TRIGGERS
        );
        return Ok(state);
    }
    let convert = "SELECT create_hypertable('system_metrics', 'time', \
         chunk_time_interval => INTERVAL '1 day', create_default_indexes => false)";
    let converted = match client.batch_execute(convert).await {
        // Older TimescaleDB versions refuse a table with the summaries' transition-table
        // triggers: they go, in the same transaction, so that a failed conversion leaves the
        // plain table with them.
        Err(e) if e.code() == Some(&SqlState::FEATURE_NOT_SUPPORTED) => {
            let again = format!(
                "BEGIN; {}; {convert}; COMMIT",
                summaries::DROP_REFUSED_TRIGGERS
            );
            let converted = client.batch_execute(&again).await;
            if converted.is_err() {
                let _ = client.batch_execute("ROLLBACK").await;
            }
            converted
        }
        other => other,
    };
    match converted {
        Ok(()) => {
            log::info!(
                "system_metrics converted to a TimescaleDB hypertable (it was an empty plain table)"
            );
            state.hypertable = true;
        }
        Err(e) => log::warn!(
            "system_metrics stays a plain PostgreSQL table: converting it failed: {}",
            DbError::from(e)
        ),
    }
    Ok(state)
}

/// What was set up; a step that failed is logged and left out.
#[derive(Debug, Default, Clone, Copy)]
struct Lifecycle {
    continuous_aggregate: bool,
}

/// Sets the lifecycle up where rows go to a hypertable, waiting for it at most `limit` (it
/// waits for the advisory lock, which another instance may hold); answers with the storage
/// as the REST API may query it. A lifecycle skipped or failed leaves the hypertable without
/// its minute aggregate.
pub(crate) async fn set_up(
    client: &Client,
    storage: Storage,
    settings: &TimescaleSettings,
    limit: Duration,
) -> Storage {
    if !storage.is_hypertable() {
        return storage;
    }
    let lifecycle = tokio::time::timeout(limit, apply(client, settings))
        .await
        .unwrap_or_else(|_| {
            log::warn!(
                "TimescaleDB lifecycle skipped: the database did not answer within {} ms",
                limit.as_millis()
            );
            Lifecycle::default()
        });
    Storage::Hypertable {
        minute_aggregate: lifecycle.continuous_aggregate,
    }
}

/// The age past which a metric would be stored, acknowledged, then deleted by the retention
/// job, which drops whole chunks older than its window: `None` where no job runs.
pub(crate) fn retention_ms(storage: Storage, settings: &TimescaleSettings) -> Option<i64> {
    match settings.retention.0 {
        Some(seconds) if storage.is_hypertable() => Some(seconds.saturating_mul(1000)),
        _ => None,
    }
}

/// Applies the policies. Safe to run from several instances at once (advisory lock) and
/// again at every start (each step replaces what the previous start left).
async fn apply(client: &Client, settings: &TimescaleSettings) -> Lifecycle {
    let chunk_interval_secs = settings.chunk_interval_secs;
    if let Err(e) = client
        .execute("SELECT pg_advisory_lock($1)", &[&LOCK_KEY])
        .await
    {
        log::warn!("TimescaleDB lifecycle skipped: {e}");
        return Lifecycle::default();
    }
    let mut lifecycle = Lifecycle::default();
    step(
        client,
        &format!("chunk interval ({chunk_interval_secs} s)"),
        &[chunk_interval_sql(chunk_interval_secs)],
    )
    .await;
    step(
        client,
        "compression",
        &compression_sql(settings.compress_after),
    )
    .await;
    step(client, "retention", &retention_sql(settings.retention)).await;
    lifecycle.continuous_aggregate = step(
        client,
        "continuous aggregate",
        &[
            format!(
                "CREATE MATERIALIZED VIEW IF NOT EXISTS {AGGREGATE}
             WITH (timescaledb.continuous, timescaledb.materialized_only = false) AS
             SELECT time_bucket(INTERVAL '1 minute', time) AS bucket,
                    service, pod_name, namespace, node_name,
                    sum(cpu) AS cpu_sum, min(cpu) AS cpu_min, max(cpu) AS cpu_max,
                    sum(memory) AS memory_sum, min(memory) AS memory_min, max(memory) AS memory_max,
                    count(*) AS samples
             FROM system_metrics
             GROUP BY 1, 2, 3, 4, 5
             WITH NO DATA"
            ),
            format!(
                "SELECT add_continuous_aggregate_policy('{AGGREGATE}',
                 start_offset => INTERVAL '3 hours', end_offset => INTERVAL '1 minute',
                 schedule_interval => INTERVAL '1 minute', if_not_exists => true)"
            ),
        ],
    )
    .await;
    let _ = client
        .execute("SELECT pg_advisory_unlock($1)", &[&LOCK_KEY])
        .await;
    lifecycle
}

/// Sets the span of the chunks made from now on; those already made keep theirs.
fn chunk_interval_sql(seconds: i64) -> String {
    format!("SELECT set_chunk_time_interval('system_metrics', INTERVAL '{seconds} seconds')")
}

fn compression_sql(age: PolicyAge) -> Vec<String> {
    let mut sql =
        vec!["SELECT remove_compression_policy('system_metrics', if_exists => true)".to_owned()];
    if let Some(seconds) = age.0 {
        // Settings cannot change once chunks are compressed; set them only the first time.
        sql.push(
            "DO $$ BEGIN
                 IF NOT (SELECT compression_enabled FROM timescaledb_information.hypertables
                         WHERE hypertable_name = 'system_metrics') THEN
                     ALTER TABLE system_metrics SET (timescaledb.compress,
                         timescaledb.compress_segmentby = 'namespace, pod_name',
                         timescaledb.compress_orderby = 'time DESC');
                 END IF;
             END $$"
                .to_owned(),
        );
        sql.push(format!(
            "SELECT add_compression_policy('system_metrics', INTERVAL '{seconds} seconds')"
        ));
    }
    sql
}

fn retention_sql(age: PolicyAge) -> Vec<String> {
    let mut sql =
        vec!["SELECT remove_retention_policy('system_metrics', if_exists => true)".to_owned()];
    if let Some(seconds) = age.0 {
        sql.push(format!(
            "SELECT add_retention_policy('system_metrics', INTERVAL '{seconds} seconds')"
        ));
    }
    sql
}

/// Runs the statements of one step in order; answers whether all succeeded.
async fn step(client: &Client, name: &str, statements: &[String]) -> bool {
    for statement in statements {
        if let Err(e) = client.batch_execute(statement).await {
            log::warn!("TimescaleDB {name} not set up: {e}");
            return false;
        }
    }
    log::info!("TimescaleDB {name} set up");
    true
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn off_removes_the_policy_and_adds_none() {
        assert_eq!(retention_sql(PolicyAge(None)).len(), 1);
        let sql = retention_sql(PolicyAge(Some(30 * 86_400)));
        assert!(sql[1].contains("INTERVAL '2592000 seconds'"), "{sql:?}");
        assert_eq!(compression_sql(PolicyAge(None)).len(), 1);
        assert_eq!(compression_sql(PolicyAge(Some(3600))).len(), 3);
    }

    #[test]
    fn the_chunk_interval_is_given_in_seconds() {
        assert_eq!(
            chunk_interval_sql(3600),
            "SELECT set_chunk_time_interval('system_metrics', INTERVAL '3600 seconds')"
        );
    }
}

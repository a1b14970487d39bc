//! The schema: migrations embedded in the binary, applied at start-up.

use diesel::connection::SimpleConnection;
use diesel_async::AsyncPgConnection;
use diesel_async::async_connection_wrapper::AsyncConnectionWrapper;
use diesel_migrations::{EmbeddedMigrations, MigrationHarness, embed_migrations};

use super::DbError;
use super::connect::{Timeouts, open};
use crate::secret::redact_url;

pub const MIGRATIONS: EmbeddedMigrations = embed_migrations!("migrations");

/// Any number that fits in a bigint; the same for every Panopticon, so that instances
/// starting together migrate one after the other.
const MIGRATION_LOCK_KEY: i64 = 0x5041_4e4f_5054_4943;
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

//! Where rows go, as the server's TimescaleDB state decides, and preparing it at start-up.

use tokio_postgres::Client;

use super::connect::{Timeouts, connect, within};
use super::{DbError, migrate, timescale};

/// Where rows go, and what that offers the REST API's series queries. Known once the database
/// is connected; until then, and on plain PostgreSQL, [`Storage::Table`].
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum Storage {
    /// A plain PostgreSQL table.
    #[default]
    Table,
    /// A TimescaleDB hypertable, and whether its 1-minute continuous aggregate exists.
    Hypertable { minute_aggregate: bool },
}

impl Storage {
    pub fn is_hypertable(self) -> bool {
        matches!(self, Storage::Hypertable { .. })
    }
}

/// The storage found, and why it is that one: for the log and `/status`.
#[derive(Debug, Clone)]
pub struct Found {
    pub storage: Storage,
    pub description: String,
}

/// Migrates, connects, makes `system_metrics` a hypertable where TimescaleDB became usable
/// since ([`timescale::adopt`]), and says where rows go. Answers with the connection, for the
/// lifecycle to be applied over ([`timescale::set_up`]).
pub async fn prepare(url: &str, timeouts: &Timeouts) -> Result<(Client, Found), DbError> {
    migrate(url).await?;
    let client = connect(url, timeouts).await?;
    // Bounded: it waits for the lifecycle's advisory lock, which another instance may hold.
    within(
        timeouts.statement,
        "the TimescaleDB check",
        timescale::adopt(&client),
    )
    .await?;
    let found = within(
        timeouts.statement,
        "the storage check",
        describe_storage(&client),
    )
    .await?;
    Ok((client, found))
}

/// Says whether rows go to a TimescaleDB hypertable or a plain PostgreSQL table, and why a
/// plain table where the server has TimescaleDB. Whether the hypertable's minute aggregate
/// exists is known only once the lifecycle is set up.
async fn describe_storage(client: &Client) -> Result<Found, DbError> {
    let server = timescale::ServerState::read(client).await?;
    let plain = |why: String| Found {
        storage: Storage::Table,
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
        Found {
            storage: Storage::Hypertable {
                minute_aggregate: false,
            },
            description: format!("TimescaleDB {version} hypertable"),
        }
    } else {
        plain(format!("TimescaleDB {version} present, not a hypertable"))
    })
}

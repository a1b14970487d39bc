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
    let server = within(
        timeouts.statement,
        "the TimescaleDB check",
        timescale::adopt(&client),
    )
    .await?;
    Ok((client, describe_storage(&server)))
}

/// Says whether rows go to a TimescaleDB hypertable or a plain PostgreSQL table, and why a
/// plain table where the server has TimescaleDB. Whether the hypertable's minute aggregate
/// exists is known only once the lifecycle is set up.
fn describe_storage(server: &timescale::ServerState) -> Found {
    let plain = |why: String| Found {
        storage: Storage::Table,
        description: format!("plain PostgreSQL table ({why})"),
    };
    let Some(available) = &server.available else {
        return plain("timescaledb extension not available".into());
    };
    if !server.preloaded {
        return plain(format!(
            "TimescaleDB {available} installed but not in shared_preload_libraries"
        ));
    }
    let Some(version) = &server.created else {
        return plain(format!(
            "TimescaleDB {available} available, extension not created"
        ));
    };
    if server.hypertable {
        Found {
            storage: Storage::Hypertable {
                minute_aggregate: false,
            },
            description: format!("TimescaleDB {version} hypertable"),
        }
    } else {
        plain(format!("TimescaleDB {version} present, not a hypertable"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use timescale::ServerState;

    #[test]
    fn the_storage_and_its_reason_follow_the_servers_state() {
        let state =
            |available: Option<&str>, preloaded, created: Option<&str>, hypertable| ServerState {
                available: available.map(str::to_owned),
                preloaded,
                created: created.map(str::to_owned),
                hypertable,
            };
        let cases = [
            (
                state(None, false, None, false),
                Storage::Table,
                "plain PostgreSQL table (timescaledb extension not available)",
            ),
            (
                state(Some("2.26.4"), false, None, false),
                Storage::Table,
                "plain PostgreSQL table (TimescaleDB 2.26.4 installed but not in shared_preload_libraries)",
            ),
            (
                state(Some("2.26.4"), true, None, false),
                Storage::Table,
                "plain PostgreSQL table (TimescaleDB 2.26.4 available, extension not created)",
            ),
            (
                state(Some("2.26.4"), true, Some("2.26.3"), false),
                Storage::Table,
                "plain PostgreSQL table (TimescaleDB 2.26.3 present, not a hypertable)",
            ),
            (
                state(Some("2.26.4"), true, Some("2.26.3"), true),
                Storage::Hypertable {
                    minute_aggregate: false,
                },
                "TimescaleDB 2.26.3 hypertable",
            ),
        ];
        for (server, storage, description) in cases {
            let found = describe_storage(&server);
            assert_eq!(found.storage, storage, "{server:?}");
            assert_eq!(found.description, description, "{server:?}");
        }
    }
}

//! Where rows go, as the server's TimescaleDB state decides.

use tokio_postgres::Client;

use super::{DbError, timescale};

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

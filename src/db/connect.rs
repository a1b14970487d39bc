//! Opening connections, and the bounds on every round trip made over them.

use std::future::Future;
use std::time::Duration;

use diesel_async::AsyncPgConnection;
use tokio_postgres::{Client, Connection, Socket};

use super::DbError;
use super::tls;
use crate::config::DatabaseSettings;

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

/// The bounds the settings give.
impl From<&DatabaseSettings> for Timeouts {
    fn from(settings: &DatabaseSettings) -> Timeouts {
        Timeouts {
            connect: Duration::from_millis(settings.connect_timeout_ms),
            statement: Duration::from_millis(settings.statement_timeout_ms),
            keepalive: Duration::from_millis(settings.keepalive_ms),
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

/// Checks the URL and the certificate files it names without connecting, so that a mistake
/// is a configuration error.
pub fn check_url(url: &str) -> Result<(), DbError> {
    tls::Target::parse(url).map(|_| ())
}

/// Opens a connection as the URL says, TLS included; the caller drives the connection. Every
/// connection of the service is opened here.
pub(super) async fn open(
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
